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

use super::{Job, JobParts};
use crate::app::{decode_params, App, Request, Session, SessionFuture};
use crate::body;
use crate::error::Error;
use crate::session::{Orders, StateLink};

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
    fn new() -> Inbox {
        Inbox {
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
        }
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

/// What the two sides of an in-process session share, in one allocation:
/// its requests, and its tie to the state store.
pub(crate) struct Link {
    pub inbox: Inbox,
    pub state: StateLink,
}

/// The way into a running session task.
#[derive(Clone)]
pub(crate) struct Task {
    link: Arc<Link>,
    /// Stops the session's task, which then drops the application's future.
    orders: Arc<Orders>,
}

impl Task {
    /// A session of `app` (`resumed`: one that existed before): the way in,
    /// and the application's future, which the session's own task runs.
    pub fn new(
        state: StateLink,
        resumed: bool,
        app: &App,
        orders: Arc<Orders>,
    ) -> (Task, SessionFuture) {
        let link = Arc::new(Link {
            inbox: Inbox::new(),
            state,
        });
        let main = app.start(Session::new(link.clone(), resumed));
        (Task { link, orders }, main)
    }

    pub async fn serve(self, job: Job) {
        let JobParts {
            request,
            reply,
            meta,
        } = *job;
        let result = self.exchange(request, &meta).await;
        if let Err(e) = &result {
            tracing::info!(session = %self.link.state.record.handle, "request failed: {e}");
        }
        let _ = reply.send(result.map(|r| r.map(body::full)));
    }

    async fn exchange(
        &self,
        request: http::Request<crate::body::RequestBody>,
        meta: &super::RequestMeta,
    ) -> Result<http::Response<Bytes>, Error> {
        let location = &self.link.state.location;
        let limit = location.max_request_body;
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
            user: meta.user.clone(),
            access: meta.access,
            client: meta.client,
            reply,
        };
        self.link.inbox.push(Box::new(request))?;
        match timeout(location.request_timeout, answer).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(Error::Worker(
                "the application dropped the request without answering".into(),
            )),
            Err(_) => {
                // Like a hung process, a task that does not answer is
                // stopped; what it stored stays for its next request.
                self.stop();
                Err(Error::Timeout(location.request_timeout))
            }
        }
    }

    /// Stops the session's task (it resumes if it stored anything).
    pub fn stop(&self) {
        self.orders.stop_worker.notify_one();
    }

    /// Tells the application its session has ended.
    pub fn close(&self) {
        self.link.inbox.close();
    }
}
