//! Workers: what actually answers a session's requests.
//!
//! A worker is a process speaking FastCGI ([`fastcgi`]), HTTP ([`proxy`],
//! through an [`upstream`]) or JSON lines ([`stdio`]), or an async task in
//! this process ([`inproc`]). All four offer the same operations to the
//! session that owns them: start, serve one request, notice when they are
//! gone, and stop. [`process`] is what the three process kinds share:
//! spawning, the process table, stopping. This module never decides *when*
//! to start or stop a worker (the session's lifecycle does) and never sees
//! other sessions.

pub(crate) mod cgi;
pub(crate) mod fastcgi;
pub(crate) mod inproc;
pub(crate) mod limits;
pub(crate) mod listen;
pub(crate) mod process;
pub(crate) mod proxy;
pub(crate) mod sched;
pub(crate) mod script;
pub(crate) mod stdio;
pub(crate) mod upstream;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Response;
use tokio::sync::{oneshot, watch};

use crate::body::{Body, RequestBody};
use crate::config::{Handler, LocationConfig, Protocol};
use crate::error::Error;
use crate::mapper::Access;

/// One request on its way to a session, with the channel for its answer.
/// Boxed: a job passes through several futures on its way to the worker,
/// and each move of its ~470 bytes was a copy.
pub(crate) type Job = Box<JobParts>;

/// What a [`Job`] holds.
pub(crate) struct JobParts {
    pub request: http::Request<RequestBody>,
    pub meta: RequestMeta,
    pub reply: oneshot::Sender<Result<Response<Body>, Error>>,
}

/// What a worker needs to know about a request besides the request itself.
#[derive(Debug, Clone)]
pub(crate) struct RequestMeta {
    /// The client's address (after `TrustedProxy`).
    pub client: IpAddr,
    /// The peer's port, when the peer is the client.
    pub client_port: Option<u16>,
    pub local: SocketAddr,
    /// Whether the client used HTTPS (to psd, or to a trusted proxy before it).
    pub https: bool,
    /// The host the client addressed, as `Host` (or `:authority`, or a trusted
    /// proxy's `X-Forwarded-Host`) gave it, port included if any.
    pub host: Option<Arc<str>>,
    /// The host's `ServerName`.
    pub server_name: Option<Arc<str>>,
    /// The `<Location>` prefix as taken off paths: empty for `/`.
    pub prefix: Arc<str>,
    /// `SCRIPT_NAME` as the client sees it: a trusted proxy's
    /// `X-Forwarded-Prefix`, then the mount.
    pub script_name: Arc<str>,
    pub app: Arc<str>,
    pub script_filename: Arc<str>,
    pub document_root: Arc<str>,
    /// With `DocumentRoot`: the script the path names.
    pub script: Option<Arc<script::Script>>,
    /// The id as the client presented it (a read-only id stays one).
    pub session_id: Arc<str>,
    pub access: Access,
    /// The query parameter that carries ids, for workers that write links.
    pub session_param: Option<Arc<str>>,
    /// The authenticated user (`AuthType`, or a trusted proxy's
    /// `X-Remote-User`): `REMOTE_USER`, `X-Remote-User`, `user`.
    pub user: Option<Arc<str>>,
}

/// Everything a new worker is started with.
pub(crate) struct Spawn<'a> {
    pub session_id: &'a Arc<str>,
    /// What logs call the session: its handle, never its id.
    pub label: &'a Arc<str>,
    /// Started ahead, with no session yet (`SpareWorkers`): no
    /// `PSD_SESSION_ID` in its environment; `session_id` is a label.
    pub spare: bool,
    pub location: &'a Arc<LocationConfig>,
    pub resumed: bool,
    /// `PSD_STATE_URL` and `PSD_SHARED_URL`, when the state API listens.
    pub state_urls: Option<(&'a str, &'a str)>,
    pub run_dir: &'a PathBuf,
    pub processes: &'a Arc<process::ProcessTable>,
    pub activity: &'a Arc<Activity>,
}

/// Traffic a session has outside its requests (WebSocket tunnels), so that
/// an open WebSocket keeps the session from going idle.
pub(crate) struct Activity {
    open: AtomicUsize,
    last: Mutex<tokio::time::Instant>,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            open: AtomicUsize::new(0),
            last: Mutex::new(tokio::time::Instant::now()),
        })
    }

    pub fn touch(&self) {
        *self.last.lock().expect("activity lock") = tokio::time::Instant::now();
    }

    /// Marks a long-lived exchange (a tunnel) open until the guard drops.
    pub fn open(self: &Arc<Self>) -> OpenGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.touch();
        OpenGuard(self.clone())
    }

    /// When the session was last active: now while anything is open.
    pub fn last(&self) -> tokio::time::Instant {
        if self.open.load(Ordering::Relaxed) > 0 {
            tokio::time::Instant::now()
        } else {
            *self.last.lock().expect("activity lock")
        }
    }
}

pub(crate) struct OpenGuard(Arc<Activity>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running worker; clones share it.
#[derive(Clone)]
pub(crate) enum Worker {
    FastCgi(Arc<fastcgi::FastCgiWorker>),
    Http(Arc<proxy::HttpWorker>),
    Stdio(Arc<stdio::StdioWorker>),
    InProcess(inproc::Task),
}

impl Worker {
    /// Starts the location's worker and waits until it is ready to answer.
    pub async fn start(spawn: Spawn<'_>) -> Result<Worker, Error> {
        match spawn
            .location
            .handler
            .as_ref()
            .expect("validated locations have a handler")
        {
            Handler::Process(command) => match command.protocol {
                Protocol::FastCgi => fastcgi::FastCgiWorker::start(&spawn, command)
                    .await
                    .map(Worker::FastCgi),
                Protocol::Http => proxy::HttpWorker::start(&spawn, command)
                    .await
                    .map(Worker::Http),
                Protocol::Stdio => stdio::StdioWorker::start(&spawn, command)
                    .await
                    .map(Worker::Stdio),
            },
            // The registry starts those with the session itself.
            Handler::InProcess(_) => Err(Error::WorkerStart(
                "in-process sessions start with their session".into(),
            )),
        }
    }

    /// The future that serves one request to completion (including streaming
    /// the response body), answering through `job.reply`. It gives the job
    /// back untouched when the worker turned out to be dead before any of
    /// it was sent (killed, say): the session then starts a fresh worker
    /// for it instead of answering 502.
    pub fn serve(&self, job: Job) -> impl Future<Output = Option<Job>> + Send + 'static {
        let worker = self.clone();
        async move {
            match worker {
                Worker::FastCgi(p) => p.serve(job).await,
                Worker::Http(p) => p.serve(job).await,
                Worker::Stdio(p) => {
                    p.serve(job).await;
                    None
                }
                Worker::InProcess(t) => {
                    t.serve(job).await;
                    None
                }
            }
        }
    }

    /// Whether the worker process is known to have exited.
    pub fn has_exited(&self) -> bool {
        match self {
            Worker::FastCgi(p) => *p.done().borrow(),
            Worker::Http(p) => *p.done().borrow(),
            Worker::Stdio(p) => *p.done().borrow(),
            Worker::InProcess(_) => false,
        }
    }

    /// Resolves once the worker process has exited (for any reason); never
    /// for an in-process task, whose end is its session's end.
    pub fn gone(&self) -> impl Future<Output = ()> + Send + 'static {
        let done = match self {
            Worker::FastCgi(p) => Some(p.done()),
            Worker::Http(p) => Some(p.done()),
            Worker::Stdio(p) => Some(p.done()),
            Worker::InProcess(_) => None,
        };
        async move {
            match done {
                Some(done) => wait_gone(done).await,
                None => std::future::pending().await,
            }
        }
    }

    /// Stops the worker: SIGTERM, then SIGKILL after `grace` (processes), or
    /// cancellation (tasks). Returns once it is gone.
    pub async fn stop(self, grace: Duration) {
        match self {
            Worker::FastCgi(p) => p.stop(grace).await,
            Worker::Http(p) => p.stop(grace).await,
            Worker::Stdio(p) => p.stop(grace).await,
            Worker::InProcess(t) => t.stop(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        match self {
            Worker::FastCgi(p) => Some(p.pid()),
            Worker::Http(p) => Some(p.pid()),
            Worker::Stdio(p) => Some(p.pid()),
            Worker::InProcess(_) => None,
        }
    }
}

/// Whether a request asks to become a WebSocket.
pub(crate) fn is_websocket(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

async fn wait_gone(mut done: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means the worker is.
    let _ = done.wait_for(|&gone| gone).await;
}
