//! In-process applications: a session is an async task, in the style of
//! Perl's Continuity.
//!
//! The application is a function from a [`Session`] to a future. psd starts
//! that future on a session's first request; the code then awaits
//! [`Session::next`], answers each [`Request`] with [`Request::respond`], and
//! keeps its local variables between requests, so the code reads like a
//! conversation with one user. The same mapper, queue, timeouts and limits
//! apply as for worker processes. This module owns the types the application
//! sees; how requests reach the task is `worker::inproc`'s business.
//!
//! ```no_run
//! use psd::app::{html, App};
//! let counter = App::new(|mut session| async move {
//!     let mut count = 0;
//!     while let Some(request) = session.next().await {
//!         if request.param("add").is_some() {
//!             count += 1;
//!         }
//!         request.respond(html(format!("Count: {count} <a href='?add'>++</a>")));
//!     }
//! });
//! # drop(counter);
//! ```

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use tokio::sync::oneshot;

use futures_util::future::BoxFuture;

use crate::store::{self, Refused, Space, Store, StoreError, Written};
use crate::worker::inproc::Link;

pub use crate::mapper::Access;
pub use crate::store::{Condition, Value};

pub(crate) type SessionFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An application whose sessions are tasks in this process.
#[derive(Clone)]
pub struct App {
    main: Arc<dyn Fn(Session) -> SessionFuture + Send + Sync>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("App(..)")
    }
}

impl App {
    /// `main` runs once per session; when its future ends, so does the session.
    pub fn new<F, Fut>(main: F) -> Self
    where
        F: Fn(Session) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            main: Arc::new(move |session| Box::pin(main(session))),
        }
    }

    pub(crate) fn start(&self, session: Session) -> SessionFuture {
        (self.main)(session)
    }
}

/// One user's session, as its task sees it.
pub struct Session {
    link: Arc<Link>,
    resumed: bool,
}

impl Session {
    pub(crate) fn new(link: Arc<Link>, resumed: bool) -> Self {
        Self { link, resumed }
    }

    /// The session id, as the client holds it.
    pub fn id(&self) -> &str {
        &self.link.state.id
    }

    /// Whether this session existed before (its task ended after an idle
    /// timeout, a stop, a panic, or a psd restart) and is running again:
    /// what it kept in [`Session::state`] is there.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// This session's values in the state store: what a worker process
    /// reaches at `PSD_STATE_URL`, with the same rules.
    pub fn state(&self) -> State {
        State {
            link: self.link.clone(),
            shared: false,
        }
    }

    /// The application's values, shared by all its sessions: a worker
    /// process's `PSD_SHARED_URL`.
    pub fn shared(&self) -> State {
        State {
            link: self.link.clone(),
            shared: true,
        }
    }

    /// Waits for the next request routed to this session. psd ends a
    /// session (idle timeout, lifetime, reaping, shutdown) by dropping its
    /// future, as a task is cancelled, so code waiting here simply stops;
    /// `None` means the session has ended and the task should return.
    pub async fn next(&mut self) -> Option<Request> {
        self.link.inbox.pop().await.map(|request| *request)
    }
}

/// Named values in the state store, which outlive the session's task (and
/// psd, with `StateStore embedded` or `redis://`): a session's own, or its
/// application's shared ones. Keys are `[A-Za-z0-9._~-]`, `/` inside,
/// 1–200 bytes. A write that returns `Ok` is as durable as the store makes
/// anything (with `embedded`, fsync'd). Once the session has ended, every
/// call gives [`StateError::Ended`].
///
/// ```no_run
/// use psd::app::{text, App};
/// let counter = App::new(|mut session| async move {
///     let state = session.state();
///     let mut count: i64 = match session.resumed() {
///         true => state.number("count").await.unwrap_or(0),
///         false => 0,
///     };
///     while let Some(request) = session.next().await {
///         count += 1;
///         if state.put("count", count.to_string()).await.is_err() {
///             // The store is down: the count is only in memory for now.
///         }
///         request.respond(text(format!("{count}\n")));
///     }
/// });
/// # drop(counter);
/// ```
#[derive(Clone)]
pub struct State {
    link: Arc<Link>,
    shared: bool,
}

/// Why a state call did nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("invalid key")]
    InvalidKey,
    #[error("the condition does not hold")]
    Precondition,
    #[error("the space would exceed MaxSessionState")]
    TooLarge,
    #[error("the value is not an integer")]
    NotANumber,
    #[error("no such value")]
    Missing,
    #[error("the session has ended")]
    Ended,
    #[error("state store: {0}")]
    Store(String),
}

impl From<Refused> for StateError {
    fn from(why: Refused) -> Self {
        match why {
            Refused::Precondition => StateError::Precondition,
            Refused::TooLarge => StateError::TooLarge,
            Refused::Missing => StateError::Missing,
            Refused::NotANumber => StateError::NotANumber,
        }
    }
}

impl From<StoreError> for StateError {
    fn from(e: StoreError) -> Self {
        StateError::Store(e.to_string())
    }
}

impl State {
    /// Queues one store call (see [`StateLink::call`]), then waits for it.
    async fn call<T>(
        &self,
        key: Option<&str>,
        writes: bool,
        call: impl FnOnce(&dyn Store, &Space, u64) -> BoxFuture<'static, Result<T, StoreError>>,
    ) -> Result<T, StateError> {
        if key.is_some_and(|k| !store::valid_key(k)) {
            return Err(StateError::InvalidKey);
        }
        let link = &self.link.state;
        let space = link.space(self.shared);
        let limit = link.location.max_session_state;
        let writes_own = writes && !self.shared;
        let answer = link
            .call(writes_own, |store| call(store, &space, limit))
            .map_err(|_| StateError::Ended)?;
        Ok(answer.await?)
    }

    /// The value and its version (an `ETag`), or `None`.
    pub async fn get(&self, key: &str) -> Result<Option<Value>, StateError> {
        let key_ = key.to_string();
        self.call(Some(key), false, move |s, space, _| s.value(space, &key_))
            .await
    }

    /// A value that holds a decimal integer (as [`State::add`] keeps them).
    pub async fn number(&self, key: &str) -> Result<i64, StateError> {
        let value = self.get(key).await?.ok_or(StateError::Missing)?;
        std::str::from_utf8(&value.data)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or(StateError::NotANumber)
    }

    /// The keys, with the sizes of their values, in key order.
    pub async fn keys(&self) -> Result<Vec<(String, u64)>, StateError> {
        self.call(None, false, |s, space, _| s.keys(space)).await
    }

    /// Writes a value; returns its new version.
    pub async fn put(&self, key: &str, data: impl Into<Vec<u8>>) -> Result<u64, StateError> {
        self.put_if(key, data, Condition::Always).await
    }

    /// Writes a value if `when` holds (compare-and-set: `Version(v)` from a
    /// [`State::get`], or `Absent`); returns its new version.
    pub async fn put_if(
        &self,
        key: &str,
        data: impl Into<Vec<u8>>,
        when: Condition,
    ) -> Result<u64, StateError> {
        let (key_, data) = (key.to_string(), data.into());
        let written = self
            .call(Some(key), true, move |s, space, limit| {
                s.put(space, &key_, data, when, limit)
            })
            .await?;
        version(written)
    }

    /// Deletes a value; `Err(Missing)` if there was none.
    pub async fn delete(&self, key: &str) -> Result<(), StateError> {
        self.delete_if(key, Condition::Always).await
    }

    /// Deletes a value if `when` holds.
    pub async fn delete_if(&self, key: &str, when: Condition) -> Result<(), StateError> {
        let key_ = key.to_string();
        let written = self
            .call(Some(key), true, move |s, space, _| {
                s.delete(space, &key_, when)
            })
            .await?;
        version(written).map(drop)
    }

    /// Adds `n` to an integer value (0 when absent), atomically; returns
    /// the sum.
    pub async fn add(&self, key: &str, n: i64) -> Result<i64, StateError> {
        let key_ = key.to_string();
        let (written, sum) = self
            .call(Some(key), true, move |s, space, limit| {
                s.add(space, &key_, n, limit)
            })
            .await?;
        version(written).map(|_| sum)
    }
}

fn version(written: Written) -> Result<u64, StateError> {
    match written {
        Written::Created(v) | Written::Replaced(v) => Ok(v),
        Written::Refused(why) => Err(why.into()),
    }
}

/// One request, with its body already read and its parameters decoded.
pub struct Request {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) params: Vec<(String, String)>,
    pub(crate) session_id: Arc<str>,
    pub(crate) user: Option<Arc<str>>,
    pub(crate) access: Access,
    pub(crate) client: IpAddr,
    pub(crate) reply: oneshot::Sender<Response<Bytes>>,
}

impl Request {
    pub fn method(&self) -> &Method {
        &self.method
    }

    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    pub fn path(&self) -> &str {
        self.uri.path()
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The session id as this client holds it: for a read-only viewer, the
    /// read-only id. Write this into links, never [`Session::id`].
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The user the request authenticated as (`AuthType Basic`, or a
    /// trusted proxy's `X-Remote-User`); a session only ever sees its own.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Whether this request may change the session.
    pub fn access(&self) -> Access {
        self.access
    }

    /// The client's address (after `TrustedProxy`).
    pub fn client(&self) -> IpAddr {
        self.client
    }

    /// The first value of a query or urlencoded form parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a parameter, in order (query first, then form body).
    pub fn params_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.params
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every parameter, in order.
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// Answers the request. Dropping a request unanswered gives the client a 502.
    pub fn respond(self, response: Response<Bytes>) {
        // The client may have gone away; the session carries on regardless.
        let _ = self.reply.send(response);
    }
}

/// Query parameters, then urlencoded form parameters of the body.
pub(crate) fn decode_params(uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Vec<(String, String)> {
    let form = crate::mapper::is_form(headers).then_some(body);
    crate::mapper::params(uri.query(), form)
}

/// A `200 OK` HTML page.
pub fn html(body: impl Into<Bytes>) -> Response<Bytes> {
    with_type(StatusCode::OK, "text/html; charset=utf-8", body.into())
}

/// A `200 OK` plain-text page.
pub fn text(body: impl Into<Bytes>) -> Response<Bytes> {
    with_type(StatusCode::OK, "text/plain; charset=utf-8", body.into())
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Bytes> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameters_keep_every_value_in_order() {
        let uri: Uri = "/x?favorite=red&favorite=green&n=%2B%2B".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let params = decode_params(&uri, &headers, b"favorite=blue&x=a+b");
        let favorites: Vec<_> = params
            .iter()
            .filter(|(k, _)| k == "favorite")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(favorites, ["red", "green", "blue"]);
        assert!(params.contains(&("n".into(), "++".into())));
        assert!(params.contains(&("x".into(), "a b".into())));
    }
}
