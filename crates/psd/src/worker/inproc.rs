//! An in-process worker: the application's session future, run as a task.
//!
//! Requests reach the task through a channel that [`crate::app::Session::next`]
//! reads; the answer comes back on a oneshot. The request body is read whole
//! (up to `MaxRequestBody`) before the application sees it, so parameters of
//! urlencoded forms are there as in Continuity.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};
use tokio::time::timeout;

use super::Job;
use crate::app::{decode_params, App, Request, Session, SessionFuture};
use crate::body;
use crate::config::LocationConfig;
use crate::error::Error;

/// Requests that may wait for the task to take them.
const QUEUE_DEPTH: usize = 16;

/// Requests on their way to a session task: a plain queue and a wake-up.
/// (A channel would allocate a block of 32 slots for every session.)
pub(crate) struct Inbox {
    queue: Mutex<VecDeque<Box<Request>>>,
    ready: Notify,
    closed: AtomicBool,
}

impl Inbox {
    fn new() -> Arc<Inbox> {
        Arc::new(Inbox {
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
        })
    }

    fn push(&self, request: Box<Request>) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Worker("the session's task has ended".into()));
        }
        let mut queue = self.queue.lock().expect("inbox lock");
        if queue.len() >= QUEUE_DEPTH {
            return Err(Error::SessionBusy);
        }
        queue.push_back(request);
        drop(queue);
        self.ready.notify_one();
        Ok(())
    }

    /// The next request; `None` once the session has ended.
    pub(crate) async fn pop(&self) -> Option<Box<Request>> {
        loop {
            let ready = self.ready.notified();
            if let Some(request) = self.queue.lock().expect("inbox lock").pop_front() {
                return Some(request);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            ready.await;
        }
    }

    /// Ends the session for the application: `next()` gives `None`.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }
}

/// The way into a running session task.
#[derive(Clone)]
pub(crate) struct Task {
    inbox: Arc<Inbox>,
    /// Ends the session; its task then drops the application's future.
    end: Arc<Notify>,
    session_id: Arc<str>,
    location: Arc<LocationConfig>,
}

impl Task {
    /// A new session of `app`: the way in, and the application's future,
    /// which the session's own task runs.
    pub fn new(
        session_id: &Arc<str>,
        location: &Arc<LocationConfig>,
        app: &App,
        end: Arc<Notify>,
    ) -> (Task, SessionFuture) {
        let inbox = Inbox::new();
        let main = app.start(Session::new(session_id.clone(), false, inbox.clone()));
        let task = Task {
            inbox,
            end,
            session_id: session_id.clone(),
            location: location.clone(),
        };
        (task, main)
    }

    pub async fn serve(self, job: Job) {
        let Job {
            request,
            reply,
            meta,
        } = job;
        let result = self.exchange(request, &meta).await;
        if let Err(e) = &result {
            tracing::info!(session = %self.session_id, "request failed: {e}");
        }
        let _ = reply.send(result.map(|r| r.map(body::full)));
    }

    async fn exchange(
        &self,
        request: http::Request<crate::body::RequestBody>,
        meta: &super::RequestMeta,
    ) -> Result<http::Response<Bytes>, Error> {
        let limit = self.location.max_request_body;
        let (parts, body) = request.into_parts();
        let body = body::read_all(body, limit).await?;
        let (reply, answer) = oneshot::channel();
        let request = Request {
            params: decode_params(&parts.uri, &parts.headers, &body),
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body,
            session_id: meta.session_id.clone(),
            access: meta.access,
            client: meta.client,
            reply,
        };
        self.inbox.push(Box::new(request))?;
        match timeout(self.location.request_timeout, answer).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(Error::Worker(
                "the application dropped the request without answering".into(),
            )),
            Err(_) => {
                // Like a hung process, a task that does not answer is ended.
                self.end.notify_one();
                Err(Error::Timeout(self.location.request_timeout))
            }
        }
    }

    /// Ends the session.
    pub fn stop(&self) {
        self.end.notify_one();
    }

    /// Tells the application its session has ended.
    pub fn close(&self) {
        self.inbox.close();
    }
}
