//! Sockets: accepting connections (plain or TLS), holding each to its
//! limits (`MaxConnections`, `MaxConnectionsPerClient`,
//! `RequestHeaderTimeout`, `KeepAliveTimeout`), serving it with hyper
//! (HTTP/1.1, HTTP/2), and draining at shutdown. Every request goes to
//! [`handler::handle`]; this module never looks inside one.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::handler::{self, ConnInfo};
use super::Shared;
use crate::access_log::AccessLog;
use crate::body::Body;
use crate::connection::{Census, Idle, Place, Throttle};

/// TCP keepalive on client connections: a peer that vanished without a FIN
/// (its WebSocket tunnel idle) is noticed after about this plus 3 × 10 s.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;
/// A TLS client must finish its handshake within this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for draining in-flight requests at shutdown.
const MAX_DRAIN: Duration = Duration::from_secs(30);
/// Back-off after a failed accept (out of file descriptors, say).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long an idle connection gets to close gracefully (HTTP/2 GOAWAY)
/// before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// An accepted connection: stream, peer, local address, and the index of
/// its listener if that is an https one.
type Accepted = (TcpStream, SocketAddr, SocketAddr, Option<usize>);

/// How long a connection may hold its place with no request in flight.
#[derive(Clone, Copy)]
struct Limits {
    /// `RequestHeaderTimeout`, from accept.
    first: Duration,
    /// `KeepAliveTimeout`, from the last response.
    between: Duration,
}

/// Serves `listeners` until `shutdown` resolves; then stops accepting and
/// waits (bounded by the longest `RequestTimeout`, at most [`MAX_DRAIN`])
/// for the requests in flight. Listeners pair with `Listen` lines by
/// position; extra ones are plain http.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    access_log: Option<AccessLog>,
    shutdown: impl Future<Output = ()>,
) {
    let routing = shared.routing();
    let (conn_tx, mut conns) = mpsc::channel::<Accepted>(64);
    let mut accepting = tokio::task::JoinSet::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let https = routing.config.listen.get(i).is_some_and(|l| l.https);
        accepting.spawn(accept(listener, https.then_some(i), conn_tx.clone()));
    }
    drop(conn_tx);

    let census = Census::new();
    let limits = Limits {
        first: routing.config.request_header_timeout,
        between: routing.config.keep_alive_timeout,
    };
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(routing.config.request_header_timeout)
        .keep_alive(true);
    let http = Arc::new(http);
    drop(routing);
    // Every connection holds a clone of `open`; once shutdown drops ours,
    // `drained` ends exactly when the last connection has.
    let (draining, drain) = watch::channel(false);
    let (open, mut drained) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let (stream, remote, local, https) = tokio::select! {
            _ = &mut shutdown => break,
            conn = conns.recv() => match conn {
                Some(conn) => conn,
                None => break,
            },
        };
        let idle = Idle::new(tokio::time::Instant::now());
        let current = shared.routing();
        let config = &current.config;
        let trusted = config
            .trusted_proxies
            .iter()
            .any(|c| c.contains(remote.ip()));
        let per_peer = (!trusted).then_some(config.max_connections_per_client);
        let Ok(counted) = census.admit(remote.ip(), &idle, config.max_connections, per_peer) else {
            continue;
        };
        // The current acceptor: a reload may have changed certificates.
        let tls = https.and_then(|i| current.tls.get(i).cloned().flatten());
        drop(current);
        if https.is_some() && tls.is_none() {
            continue;
        }
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo {
            remote,
            local,
            https: tls.is_some(),
        };
        let shared = shared.clone();
        let log = access_log.clone();
        let http = http.clone();
        let mut drain = drain.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let place = Place::new(counted);
            let watch = idle.clone();
            let service = service_fn(move |mut request: Request<Incoming>| {
                let shared = shared.clone();
                let log = log.clone();
                let in_flight = idle.enter();
                // A WebSocket keeps the connection's place for as long as
                // its tunnel lasts.
                if crate::worker::is_websocket(request.headers()) {
                    request.extensions_mut().insert(place.clone());
                }
                async move {
                    let response = handler::handle(&shared, log.as_ref(), request, conn).await;
                    Ok::<_, std::convert::Infallible>(
                        response.map(|b| crate::connection::hold(b, in_flight)),
                    )
                }
            });
            let idle = watch.expired(limits.first, limits.between);
            let result = match tls {
                None => {
                    serve_connection(&http, TokioIo::new(stream), service, &mut drain, idle).await
                }
                Some(tls) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(&http, TokioIo::new(stream), service, &mut drain, idle)
                                .await
                        }
                        Ok(Err(e)) => Err(format!("TLS handshake: {e}").into()),
                        Err(_) => Err("TLS handshake timed out".into()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%remote, "connection: {e}");
            }
            drop(open);
        });
    }

    tracing::info!("shutting down: no new connections, draining requests");
    accepting.shutdown().await;
    let bound = shared
        .routing()
        .mounts
        .iter()
        .map(|m| m.config.request_timeout)
        .max()
        .unwrap_or_default()
        .min(MAX_DRAIN);
    let _ = draining.send(true);
    drop(open);
    if tokio::time::timeout(bound, async { while drained.recv().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("requests still running after {bound:?}; stopping anyway");
    }
}

async fn accept(listener: TcpListener, https: Option<usize>, conns: mpsc::Sender<Accepted>) {
    let local = listener.local_addr().ok();
    let failures = Throttle::new(Duration::from_secs(10));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let Some(local) = stream.local_addr().ok().or(local) else {
                    continue;
                };
                if conns.send((stream, remote, local, https)).await.is_err() {
                    return;
                }
            }
            // EMFILE and friends: back off instead of spinning, longer while
            // it lasts, and say so when it starts (a few times per period at
            // most) rather than at every failure.
            Err(e) => {
                let starts = backoff == ACCEPT_BACKOFF_MIN;
                if let Some(more) = starts.then(|| failures.allow()).flatten() {
                    tracing::warn!(
                        "accept failed: {e}; backing off up to {ACCEPT_BACKOFF_MAX:?} while it lasts \
                         ({more} earlier runs of failures not logged)"
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Serves one connection (HTTP/1.1 or HTTP/2) until it ends; once draining
/// starts, or once `idle` resolves (no request for too long), finishes the
/// requests in progress and closes.
async fn serve_connection<I, S>(
    http: &hyper_util::server::conn::auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    drain: &mut watch::Receiver<bool>,
    idle: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = http.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        _ = async { drop(drain.wait_for(|&d| d).await) } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = idle => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(IDLE_CLOSE_GRACE, connection).await {
                Ok(result) => result,
                Err(_) => Err("idle connection closed".into()),
            }
        }
    }
}
