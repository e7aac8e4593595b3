//! The one place where failures become HTTP responses.
//!
//! Every failing step of a request is a variant here. Each says who failed
//! ([`Side`]: the client, a worker, psd itself, the state store, a peer
//! node) and whether the request may be tried again ([`Retry`]); what lies
//! under it is a [`Cause`], kept as the error's source. Clients get a short
//! plain-text message; the cause, with any worker detail, goes to the log
//! only. Nothing here ever includes a worker's stderr or a backtrace.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{self, Body, BoxError};

/// Why a request was not answered by its session.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no application is mounted at this path")]
    NotFound,
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("client sent a bad request: {0}")]
    BadRequest(#[source] Cause),
    #[error("client sent nothing for too long")]
    ClientTimeout,
    /// psd itself failed (a temp file could not be written, say).
    #[error("psd failed: {0}")]
    Internal(#[source] Cause),
    #[error("MaxSessions ({0}) reached")]
    TooManySessions(usize),
    #[error("MaxSessionsPerClient ({0}) reached")]
    TooManySessionsForClient(usize),
    #[error("a read-only session id allows only GET and HEAD")]
    ReadOnly,
    /// `AuthType`: no credentials, or wrong ones; the challenge to send.
    #[error("not authenticated")]
    Unauthorized { challenge: String },
    /// `Require` admits neither this user nor this address.
    #[error("Require does not admit this client")]
    Forbidden,
    /// Too many failed logins from the client's address; retry after this.
    #[error("too many failed logins from this address")]
    TooManyLogins(Duration),
    /// The `AuthForward` service did not answer.
    #[error("the AuthForward service did not answer")]
    AuthUnavailable,
    #[error("MaxSpawnRate reached: too many new workers at once")]
    SpawnRateExceeded,
    #[error("too many requests queued for one session")]
    SessionBusy,
    #[error("psd is shutting down")]
    ShuttingDown,
    #[error("worker failed to start: {0}")]
    WorkerStart(#[source] Cause),
    /// The connection to a worker failed (connect, write, read, closed)
    /// before an answer: on a kept connection the worker may just have
    /// closed it, so the request may go again on a fresh one.
    #[error("connection to the worker failed: {0}")]
    WorkerConnection(#[source] Cause),
    #[error("worker failed: {0}")]
    Worker(#[source] Cause),
    /// The worker is sound but this one answer cannot be sent (an invalid
    /// status or header): 502, and the worker stays.
    #[error("worker sent an invalid response: {0}")]
    BadResponse(#[source] Cause),
    #[error("worker did not answer within {0:?}")]
    Timeout(Duration),
    /// The session store could not be read or written.
    #[error("session store failed: {0}")]
    Store(#[source] Cause),
}

/// Who failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The request itself: 4xx.
    Client,
    /// The session's worker: 502/504.
    Worker,
    /// psd, or one of its limits: 500/503.
    Psd,
    /// The state store: 503.
    Store,
    /// Another server psd relies on: a cluster node, the `AuthForward` service.
    Peer,
}

/// Whether a failed request may be tried again, as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Never: it may have had effects, or it would fail again.
    Never,
    /// Once on a fresh connection, if it failed on a kept one before
    /// anything came back: the other end may have closed it meanwhile.
    ReusedConnection,
}

/// What lies under an error: what psd was doing, and what it met.
#[derive(Debug)]
pub struct Cause {
    doing: Cow<'static, str>,
    source: Option<BoxError>,
}

impl Cause {
    /// `doing` failed with `source`.
    pub fn new(doing: impl Into<Cow<'static, str>>, source: impl Into<BoxError>) -> Cause {
        Cause {
            doing: doing.into(),
            source: Some(source.into()),
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.doing),
            None => f.write_str(&self.doing),
        }
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

impl From<&'static str> for Cause {
    fn from(doing: &'static str) -> Cause {
        Cause {
            doing: doing.into(),
            source: None,
        }
    }
}

impl From<String> for Cause {
    fn from(doing: String) -> Cause {
        Cause {
            doing: doing.into(),
            source: None,
        }
    }
}

/// Seconds a client is asked to wait before retrying after a 503.
const RETRY_AFTER_SECS: &str = "5";

impl Error {
    /// Who failed.
    pub fn side(&self) -> Side {
        match self {
            Error::NotFound
            | Error::BodyTooLarge { .. }
            | Error::BadRequest(_)
            | Error::ClientTimeout
            | Error::ReadOnly
            | Error::Unauthorized { .. }
            | Error::Forbidden
            | Error::TooManyLogins(_)
            | Error::TooManySessionsForClient(_) => Side::Client,
            Error::AuthUnavailable => Side::Peer,
            Error::Internal(_)
            | Error::TooManySessions(_)
            | Error::SpawnRateExceeded
            | Error::SessionBusy
            | Error::ShuttingDown => Side::Psd,
            Error::WorkerStart(_)
            | Error::WorkerConnection(_)
            | Error::Worker(_)
            | Error::BadResponse(_)
            | Error::Timeout(_) => Side::Worker,
            Error::Store(_) => Side::Store,
        }
    }

    /// Whether the request may be tried again.
    pub fn retry(&self) -> Retry {
        match self {
            Error::WorkerConnection(_) => Retry::ReusedConnection,
            _ => Retry::Never,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::ReadOnly | Error::Forbidden => StatusCode::FORBIDDEN,
            Error::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Error::TooManyLogins(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::AuthUnavailable => StatusCode::BAD_GATEWAY,
            Error::TooManySessions(_)
            | Error::TooManySessionsForClient(_)
            | Error::SessionBusy
            | Error::SpawnRateExceeded
            | Error::ShuttingDown
            | Error::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::WorkerStart(_)
            | Error::WorkerConnection(_)
            | Error::Worker(_)
            | Error::BadResponse(_) => StatusCode::BAD_GATEWAY,
            Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whether the worker that produced this error must be replaced.
    pub fn condemns_worker(&self) -> bool {
        matches!(
            self,
            Error::Worker(_) | Error::WorkerConnection(_) | Error::Timeout(_)
        )
    }

    /// What the client sees: status, a one-line message, and `Retry-After` on 503.
    pub fn to_response(&self) -> Response<Body> {
        let status = self.status();
        let message = match self {
            Error::NotFound => "Not Found: no application is mounted at this path\n",
            Error::BodyTooLarge { .. } => "Payload Too Large\n",
            Error::BadRequest(_) => "Bad Request\n",
            Error::ClientTimeout => "Request Timeout\n",
            Error::Internal(_) => "Internal Server Error\n",
            Error::TooManySessions(_) => {
                "Service Unavailable: too many sessions, try again later\n"
            }
            Error::TooManySessionsForClient(_) => {
                "Service Unavailable: too many sessions from your address, try again later\n"
            }
            Error::ReadOnly => "Forbidden: this session link is read-only\n",
            Error::Unauthorized { .. } => "Unauthorized: log in first\n",
            Error::Forbidden => "Forbidden\n",
            Error::TooManyLogins(_) => {
                "Too Many Requests: too many failed logins from your address; try again later\n"
            }
            Error::AuthUnavailable => "Bad Gateway: the authentication service did not answer\n",
            Error::SessionBusy => {
                "Service Unavailable: too many requests queued for this session\n"
            }
            Error::ShuttingDown => "Service Unavailable: server is shutting down\n",
            Error::SpawnRateExceeded => {
                "Service Unavailable: too many new sessions at once, try again shortly\n"
            }
            Error::WorkerStart(_) => "Bad Gateway: the session's worker failed to start\n",
            Error::Worker(_) | Error::WorkerConnection(_) | Error::BadResponse(_) => {
                "Bad Gateway: the session's worker failed\n"
            }
            Error::Store(_) => "Service Unavailable: session store unavailable, try again later\n",
            Error::Timeout(_) => "Gateway Timeout: the session's worker did not answer in time\n",
        };
        let mut response = Response::new(body::full(Bytes::from_static(message.as_bytes())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        match self {
            Error::Unauthorized { challenge } => {
                if let Ok(v) = HeaderValue::from_str(challenge) {
                    headers.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            Error::TooManyLogins(wait) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(wait.as_secs().max(1)),
                );
            }
            _ => {}
        }
        response
    }
}
