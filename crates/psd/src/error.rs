//! The one place where failures become HTTP responses.
//!
//! Every failing step of a request is a variant here, saying who failed: the
//! client (4xx), a worker (502/504), or psd's own limits (503). Clients get a
//! short plain-text message; the cause, with any worker detail, goes to the
//! log only. Nothing here ever includes a worker's stderr or a backtrace.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{self, Body};

/// Why a request was not answered by its session.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no application is mounted at this path")]
    NotFound,
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("client sent a bad request: {0}")]
    BadRequest(String),
    #[error("client sent nothing for too long")]
    ClientTimeout,
    /// psd itself failed (a temp file could not be written, say).
    #[error("psd failed: {0}")]
    Internal(String),
    #[error("MaxSessions ({0}) reached")]
    TooManySessions(usize),
    #[error("MaxSessionsPerClient ({0}) reached")]
    TooManySessionsForClient(usize),
    #[error("a read-only session id allows only GET and HEAD")]
    ReadOnly,
    #[error("MaxSpawnRate reached: too many new workers at once")]
    SpawnRateExceeded,
    #[error("too many requests queued for one session")]
    SessionBusy,
    #[error("psd is shutting down")]
    ShuttingDown,
    #[error("worker failed to start: {0}")]
    WorkerStart(String),
    #[error("worker failed: {0}")]
    Worker(String),
    /// The worker is sound but this one answer cannot be sent (an invalid
    /// status or header): 502, and the worker stays.
    #[error("worker sent an invalid response: {0}")]
    BadResponse(String),
    #[error("worker did not answer within {0:?}")]
    Timeout(Duration),
}

/// Seconds a client is asked to wait before retrying after a 503.
const RETRY_AFTER_SECS: &str = "5";

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::ReadOnly => StatusCode::FORBIDDEN,
            Error::TooManySessions(_)
            | Error::TooManySessionsForClient(_)
            | Error::SessionBusy
            | Error::SpawnRateExceeded
            | Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Error::WorkerStart(_) | Error::Worker(_) | Error::BadResponse(_) => {
                StatusCode::BAD_GATEWAY
            }
            Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whether the worker that produced this error must be replaced.
    pub fn condemns_worker(&self) -> bool {
        matches!(self, Error::Worker(_) | Error::Timeout(_))
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
            Error::SessionBusy => {
                "Service Unavailable: too many requests queued for this session\n"
            }
            Error::ShuttingDown => "Service Unavailable: server is shutting down\n",
            Error::SpawnRateExceeded => {
                "Service Unavailable: too many new sessions at once, try again shortly\n"
            }
            Error::WorkerStart(_) => "Bad Gateway: the session's worker failed to start\n",
            Error::Worker(_) | Error::BadResponse(_) => {
                "Bad Gateway: the session's worker failed\n"
            }
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
        response
    }
}
