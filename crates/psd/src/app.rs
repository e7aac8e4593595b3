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

use crate::worker::inproc::Inbox;

pub use crate::mapper::Access;

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
    id: Arc<str>,
    resumed: bool,
    requests: Arc<Inbox>,
}

impl Session {
    pub(crate) fn new(id: Arc<str>, resumed: bool, requests: Arc<Inbox>) -> Self {
        Self {
            id,
            resumed,
            requests,
        }
    }

    /// The session id, as the client holds it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this session existed before and its task was started again.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Waits for the next request routed to this session. psd ends a
    /// session (idle timeout, lifetime, reaping, shutdown) by dropping its
    /// future, as a task is cancelled, so code waiting here simply stops;
    /// `None` means the session has ended and the task should return.
    pub async fn next(&mut self) -> Option<Request> {
        self.requests.pop().await.map(|request| *request)
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
