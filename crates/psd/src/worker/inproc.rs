//! An in-process worker: the application's session future, run as a task.
//!
//! Requests reach the task through a channel that [`crate::app::Session::next`]
//! reads; the answer comes back on a oneshot. The request body is read whole
//! (up to `MaxRequestBody`) before the application sees it, so parameters of
//! urlencoded forms are there as in Continuity.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::timeout;

use super::{Job, Spawn};
use crate::app::{decode_params, App, Request, Session};
use crate::body;
use crate::config::LocationConfig;
use crate::error::Error;

/// Requests that may wait for the task to take them.
const QUEUE_DEPTH: usize = 16;

/// A running session task.
#[derive(Clone)]
pub(crate) struct Task {
    /// Boxed for the same reason as the session queue: a small first block.
    requests: mpsc::Sender<Box<Request>>,
    abort: AbortHandle,
    done: watch::Receiver<bool>,
    session_id: Arc<str>,
    location: Arc<LocationConfig>,
}

impl Task {
    pub fn start(spawn: &Spawn<'_>, app: &App) -> Task {
        let (requests, rx) = mpsc::channel(QUEUE_DEPTH);
        let session = Session::new(spawn.session_id.clone(), spawn.resumed, rx);
        let (done_tx, done) = watch::channel(false);
        let main = app.start(session);
        // The task owns the sender: when it ends, returns, panics or is
        // aborted, the sender goes and `done` tells the session so.
        let handle = tokio::spawn(async move {
            let _done = done_tx;
            main.await;
        });
        let abort = handle.abort_handle();
        let session_id = spawn.session_id.clone();
        Task {
            requests,
            abort,
            done,
            session_id,
            location: spawn.location.clone(),
        }
    }

    pub fn done(&self) -> watch::Receiver<bool> {
        self.done.clone()
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
        self.requests
            .send(Box::new(request))
            .await
            .map_err(|_| Error::Worker("the session's task has ended".into()))?;
        match timeout(self.location.request_timeout, answer).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(Error::Worker(
                "the application dropped the request without answering".into(),
            )),
            Err(_) => {
                // Like a hung process, a task that does not answer is replaced.
                self.abort.abort();
                Err(Error::Timeout(self.location.request_timeout))
            }
        }
    }

    pub async fn stop(self) {
        self.abort.abort();
        super::wait_gone(self.done.clone()).await;
    }
}
