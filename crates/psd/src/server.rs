//! The listener: HTTP/1.1 connections in, requests routed to sessions.
//!
//! [`run`] is the daemon: it prepares `DataDir`, accepts connections on the
//! given listeners, maps each request to its `<Location>` and session, waits
//! for the session's answer, and on shutdown stops accepting, drains
//! in-flight requests (bounded) and stops every session. This module owns
//! sockets and HTTP; it never touches a worker directly.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http::header::{CONTENT_LENGTH, SET_COOKIE};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::body::Body;
use crate::config::{Config, Handler, LocationConfig};
use crate::error::Error;
use crate::mapper::{self, Signer};
use crate::session::{Registry, Routed};
use crate::worker::{Job, RequestMeta};

/// Upper bound for draining in-flight requests at shutdown.
const MAX_DRAIN: Duration = Duration::from_secs(30);
/// `sun_path` is 108 bytes on Linux, including the final NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Per-location facts computed once, not per request.
struct Mount {
    config: Arc<LocationConfig>,
    script_name: Arc<str>,
    app: Arc<str>,
    script_filename: Arc<str>,
    document_root: Arc<str>,
}

struct Shared {
    config: Config,
    mounts: Vec<Mount>,
    registry: Arc<Registry>,
    server_name: Option<Arc<str>>,
}

/// Runs the daemon on `listeners` until `shutdown` resolves, then drains and
/// stops every session. Returns once no worker is left.
pub async fn run(
    listeners: Vec<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let shared = Arc::new(prepare(config)?);
    let (conn_tx, mut conns) = mpsc::channel::<(TcpStream, SocketAddr, SocketAddr)>(64);
    let mut acceptors = tokio::task::JoinSet::new();
    for listener in listeners {
        let conn_tx = conn_tx.clone();
        acceptors.spawn(async move {
            let local = listener.local_addr().ok();
            loop {
                match listener.accept().await {
                    Ok((stream, remote)) => {
                        let local = stream.local_addr().ok().or(local);
                        let Some(local) = local else { continue };
                        if conn_tx.send((stream, remote, local)).await.is_err() {
                            return;
                        }
                    }
                    // EMFILE and friends: back off instead of spinning.
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    drop(conn_tx);

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(shared.config.request_header_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            conn = conns.recv() => {
                let Some((stream, remote, local)) = conn else { break };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let service = service_fn(move |request| {
                    let shared = shared.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(&shared, request, remote, local).await) }
                });
                let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(%remote, "connection: {e}");
                    }
                });
            }
        }
    }

    tracing::info!("shutting down: no new connections, draining requests");
    acceptors.shutdown().await;
    let drain = shared
        .mounts
        .iter()
        .map(|m| m.config.request_timeout)
        .max()
        .unwrap_or_default()
        .min(MAX_DRAIN);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after {drain:?}; stopping anyway");
    }
    shared.registry.shutdown().await;
    tracing::info!("all sessions stopped");
    Ok(())
}

/// DataDir, the secret, the worker socket folder and the registry.
fn prepare(config: Config) -> anyhow::Result<Shared> {
    use std::os::unix::fs::DirBuilderExt;
    let run_dir = config.data_dir.join("run");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&run_dir)
        .with_context(|| format!("creating {}", run_dir.display()))?;
    let socket_len = run_dir.as_os_str().len() + "/0123456789abcdef.sock".len();
    if socket_len > MAX_SOCKET_PATH {
        anyhow::bail!(
            "DataDir {} is too long for worker sockets (a Unix socket path is at most {MAX_SOCKET_PATH} bytes)",
            config.data_dir.display()
        );
    }
    remove_stale_sockets(&run_dir);
    let secret = config
        .session_secret
        .clone()
        .unwrap_or_else(|| config.data_dir.join("secret"));
    let signer = Signer::load_or_create(&secret, &config.node_name)
        .with_context(|| format!("session secret {}", secret.display()))?;
    let registry = Registry::new(signer, config.max_sessions, run_dir);
    let mounts = config
        .locations
        .iter()
        .map(|l| Mount {
            config: Arc::new(l.clone()),
            script_name: if l.prefix == "/" {
                "".into()
            } else {
                l.prefix.as_str().into()
            },
            app: l.prefix.as_str().into(),
            script_filename: match &l.handler {
                Some(Handler::Process(c)) => c.program.to_string_lossy().into(),
                _ => "".into(),
            },
            document_root: l
                .working_directory
                .as_deref()
                .unwrap_or(Path::new(""))
                .to_string_lossy()
                .into(),
        })
        .collect();
    Ok(Shared {
        server_name: config.server_name.as_deref().map(Arc::from),
        config,
        mounts,
        registry,
    })
}

/// Sockets left by a psd that was killed; no worker listens on them any more.
fn remove_stale_sockets(run_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.path().extension().is_some_and(|e| e == "sock") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

async fn handle(
    shared: &Shared,
    request: Request<Incoming>,
    remote: SocketAddr,
    local: SocketAddr,
) -> Response<Body> {
    let path = request.uri().path();
    let Some(index) = shared.config.route(path) else {
        return Error::NotFound.to_response();
    };
    let mount = &shared.mounts[index];
    let location = &mount.config;
    let under = path.strip_prefix(&*mount.script_name).unwrap_or(path);
    if under == "/.psd" || under.starts_with("/.psd/") {
        return Error::NotFound.to_response();
    }
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > location.max_request_body) {
        return Error::BodyTooLarge {
            limit: location.max_request_body,
        }
        .to_response();
    }

    let ids: Vec<String> = mapper::cookie_values(request.headers(), &location.session_cookie)
        .map(str::to_string)
        .collect();
    let (reply, answer) = oneshot::channel();
    let job = Job {
        request,
        meta: RequestMeta {
            remote,
            local,
            server_name: shared.server_name.clone(),
            script_name: mount.script_name.clone(),
            app: mount.app.clone(),
            script_filename: mount.script_filename.clone(),
            document_root: mount.document_root.clone(),
            session_id: "".into(),
        },
        reply,
    };
    let routed = match shared
        .registry
        .route(index, location, ids.iter().map(String::as_str), job)
    {
        Ok(routed) => routed,
        Err(e) => {
            tracing::warn!(%remote, "{e}");
            return e.to_response();
        }
    };
    let mut response = match answer.await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => e.to_response(),
        Err(_) => Error::Worker("the session ended before answering".into()).to_response(),
    };
    if let Routed::New(id) = routed {
        let cookie = mapper::set_cookie(&location.session_cookie, &id, &location.prefix);
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(SET_COOKIE, value);
        }
    }
    response
}
