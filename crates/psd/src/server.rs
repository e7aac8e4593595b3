//! The listener: HTTP/1.1 connections in, requests routed to sessions.
//!
//! [`Server`] is the daemon: it prepares `DataDir`, accepts connections on
//! the given listeners, maps each request to its `<Location>` and session,
//! waits for the session's answer, answers psd's own URLs under
//! `PREFIX/.psd/`, and on shutdown stops accepting, drains in-flight
//! requests (bounded) and stops every session. This module owns sockets and
//! HTTP; it never touches a worker directly.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, SET_COOKIE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::access_log::{self, AccessLog};
use crate::body::{self, Body};
use crate::config::{self, Config, Handler, LocationConfig};
use crate::error::Error;
use crate::mapper::{self, client, Access, Hit, IdBook, Ids, Signer};
use crate::session::{Registry, Target};
use crate::worker::{Job, RequestMeta};

/// TCP keepalive on client connections: a peer that vanished without a FIN
/// (its WebSocket tunnel idle) is noticed after about this plus 3 × 10 s.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;
/// A TLS client must finish its handshake within this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for draining in-flight requests at shutdown.
const MAX_DRAIN: Duration = Duration::from_secs(30);
/// `sun_path` is 108 bytes on Linux, including the final NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Per-location facts computed once, not per request.
struct Mount {
    /// The location's identity across reloads: its virtual host and prefix.
    key: Arc<str>,
    config: Arc<LocationConfig>,
    /// The prefix as taken off paths: empty for `/`.
    mount: Arc<str>,
    app: Arc<str>,
    script_filename: Arc<str>,
    document_root: Arc<str>,
}

/// What lives as long as the daemon: the sessions, and the current routing.
struct Shared {
    registry: Arc<Registry>,
    /// Where request bodies too large for memory are received.
    spool: std::path::PathBuf,
    routing: std::sync::RwLock<Arc<Routing>>,
    /// The local address of each listener, by position (for TLS on reload).
    listeners: std::sync::Mutex<Vec<SocketAddr>>,
}

/// Everything derived from one configuration; a reload swaps it whole.
/// Sessions keep the `LocationConfig` they started with.
struct Routing {
    config: Config,
    mounts: Vec<Mount>,
    /// Locations of the main server, the fallback for every host.
    main_locations: Vec<usize>,
    /// `ServerName` of the main server and of each virtual host.
    main_name: Option<Arc<str>>,
    vhost_names: Vec<Option<Arc<str>>>,
    /// The TLS acceptor of each https listener, by position.
    tls: Vec<Option<tokio_rustls::TlsAcceptor>>,
}

impl Shared {
    fn routing(&self) -> Arc<Routing> {
        self.routing.read().expect("routing lock").clone()
    }
}

/// How the client addressed a request: scheme, host and prefix, as a
/// trusted proxy reports them or as the connection shows them.
struct View {
    https: bool,
    host: Option<Arc<str>>,
    /// `SCRIPT_NAME` as the client sees it (outer prefix, then the mount).
    script_name: Arc<str>,
    server_name: Option<Arc<str>>,
}

impl View {
    /// The path cookies of this location are set for.
    fn cookie_path(&self) -> &str {
        if self.script_name.is_empty() {
            "/"
        } else {
            &self.script_name
        }
    }
}

/// What a request's connection says about it.
#[derive(Clone, Copy)]
struct Conn {
    remote: SocketAddr,
    local: SocketAddr,
    https: bool,
}

/// A prepared daemon: `DataDir` ready, secret loaded, nothing listening yet.
pub struct Server {
    shared: Arc<Shared>,
}

/// A handle on the sessions of a running [`Server`].
#[derive(Clone)]
pub struct Sessions {
    registry: Arc<Registry>,
}

impl Sessions {
    /// Sessions that exist now, with or without a running worker.
    pub fn count(&self) -> usize {
        self.registry.count()
    }

    /// Continuity's `reap($age)`: ends every session created more than
    /// `age` ago, stopping its worker. Returns how many were ended.
    pub fn reap(&self, age: Duration) -> usize {
        self.registry.reap(age)
    }
}

/// Applies a new configuration to a running [`Server`] (what SIGHUP does).
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
}

impl Reloader {
    /// New requests follow `config` from now on; live sessions keep their
    /// worker and the settings they started with, and in-flight requests
    /// finish. Settings bound at start (listeners, DataDir, the secret,
    /// MaxSessions, logs) need a restart: a change to them is logged and
    /// otherwise ignored. On error nothing changes.
    pub fn reload(&self, config: Config) -> anyhow::Result<()> {
        let current = self.shared.routing();
        let old = &current.config;
        let listen = |c: &Config| {
            c.listen
                .iter()
                .map(|l| (l.addr, l.https))
                .collect::<Vec<_>>()
        };
        let fixed = [
            ("Listen", listen(old) != listen(&config)),
            ("DataDir", old.data_dir != config.data_dir),
            ("SessionSecret", old.session_secret != config.session_secret),
            ("MaxSessions", old.max_sessions != config.max_sessions),
            (
                "RequestHeaderTimeout",
                old.request_header_timeout != config.request_header_timeout,
            ),
            (
                "KeepAliveTimeout",
                old.keep_alive_timeout != config.keep_alive_timeout,
            ),
            ("MaxSpawnRate", old.max_spawn_rate != config.max_spawn_rate),
            ("AccessLog", old.access_log != config.access_log),
            ("ErrorLog", old.error_log != config.error_log),
            ("LogLevel", old.log_level != config.log_level),
            ("PidFile", old.pid_file != config.pid_file),
        ];
        for (directive, _) in fixed.iter().filter(|(_, changed)| *changed) {
            tracing::warn!("{directive} changed: it takes effect only after a restart");
        }
        let addrs = self
            .shared
            .listeners
            .lock()
            .expect("listeners lock")
            .clone();
        let next = routing(config, &addrs)?;
        *self.shared.routing.write().expect("routing lock") = Arc::new(next);
        tracing::info!("configuration reloaded");
        Ok(())
    }
}

/// Runs the daemon on `listeners` until `shutdown` resolves, then drains and
/// stops every session. Returns once no worker is left.
pub async fn run(
    listeners: Vec<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    Server::new(config)?.run(listeners, shutdown).await
}

impl Server {
    /// Prepares `DataDir` (mode 0700), the session secret and the registry.
    pub fn new(config: Config) -> anyhow::Result<Server> {
        Ok(Server {
            shared: Arc::new(prepare(config)?),
        })
    }

    /// A handle that applies new configurations to this server once it runs.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            shared: self.shared.clone(),
        }
    }

    pub fn sessions(&self) -> Sessions {
        Sessions {
            registry: self.shared.registry.clone(),
        }
    }

    /// Serves until `shutdown` resolves; see [`run`].
    pub async fn run(
        self,
        listeners: Vec<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let shared = self.shared;
        let addrs = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<std::io::Result<Vec<_>>>()?;
        *shared.listeners.lock().expect("listeners lock") = addrs.clone();
        let first = routing(shared.routing().config.clone(), &addrs)?;
        *shared.routing.write().expect("routing lock") = Arc::new(first);
        let routing = shared.routing();
        let access_log = match &routing.config.access_log {
            None => None,
            Some(path) => Some(
                AccessLog::open(path.as_deref()).with_context(|| match path {
                    Some(path) => format!("AccessLog {}", path.display()),
                    None => "AccessLog".into(),
                })?,
            ),
        };
        let (conn_tx, mut conns) = mpsc::channel::<Accepted>(64);
        let mut background = tokio::task::JoinSet::new();
        // Listeners pair with `Listen` lines by position; extra ones are http.
        for (i, listener) in listeners.into_iter().enumerate() {
            let https = routing.config.listen.get(i).is_some_and(|l| l.https);
            background.spawn(accept(listener, https.then_some(i), conn_tx.clone()));
        }
        drop(conn_tx);
        background.spawn(sweep(shared.clone()));

        let census = crate::connection::Census::new();
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
        // Every connection holds a clone of `open`; once shutdown drops ours,
        // `drained` ends exactly when the last connection has.
        let (draining, drain) = watch::channel(false);
        let (open, mut drained) = mpsc::channel::<()>(1);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                conn = conns.recv() => {
                    let Some((stream, remote, local, https)) = conn else { break };
                    let accepted = tokio::time::Instant::now();
                    let current = shared.routing();
                    let config = &current.config;
                    let trusted = config.trusted_proxies.iter().any(|c| c.contains(remote.ip()));
                    let per_peer = (!trusted).then_some(config.max_connections_per_client);
                    let idle = crate::connection::Idle::new(accepted);
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
                    let conn = Conn { remote, local, https: tls.is_some() };
                    let shared = shared.clone();
                    let log = access_log.clone();
                    let http = http.clone();
                    let mut drain = drain.clone();
                    let open = open.clone();
                    tokio::spawn(async move {
                        let place = crate::connection::Place::new(counted);
                        let watch = idle.clone();
                        let service = service_fn(move |mut request: Request<Incoming>| {
                            let shared = shared.clone();
                            let log = log.clone();
                            let in_flight = idle.enter();
                            // A WebSocket keeps the connection's place for as
                            // long as its tunnel lasts.
                            if crate::worker::is_websocket(request.headers()) {
                                request.extensions_mut().insert(place.clone());
                            }
                            async move {
                                let response = handle(&shared, log.as_ref(), request, conn).await;
                                Ok::<_, std::convert::Infallible>(response.map(|b| crate::connection::hold(b, in_flight)))
                            }
                        });
                        let idle = watch.expired(limits.first, limits.between);
                        let result = match tls {
                            None => serve(&http, TokioIo::new(stream), service, &mut drain, idle).await,
                            Some(tls) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                                Ok(Ok(stream)) => serve(&http, TokioIo::new(stream), service, &mut drain, idle).await,
                                Ok(Err(e)) => Err(format!("TLS handshake: {e}").into()),
                                Err(_) => Err("TLS handshake timed out".into()),
                            },
                        };
                        if let Err(e) = result {
                            tracing::debug!(%remote, "connection: {e}");
                        }
                        drop(open);
                    });
                }
            }
        }

        tracing::info!("shutting down: no new connections, draining requests");
        background.shutdown().await;
        let drain = shared
            .routing()
            .mounts
            .iter()
            .map(|m| m.config.request_timeout)
            .max()
            .unwrap_or_default()
            .min(MAX_DRAIN);
        let _ = draining.send(true);
        drop(open);
        if tokio::time::timeout(drain, async { while drained.recv().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!("requests still running after {drain:?}; stopping anyway");
        }
        shared.registry.shutdown().await;
        tracing::info!("all sessions stopped");
        Ok(())
    }
}

/// Back-off after a failed accept (out of file descriptors, say).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// An accepted connection: stream, peer, local address, and the index of
/// its listener if that is an https one.
type Accepted = (TcpStream, SocketAddr, SocketAddr, Option<usize>);

async fn accept(listener: TcpListener, https: Option<usize>, conns: mpsc::Sender<Accepted>) {
    let local = listener.local_addr().ok();
    let failures = crate::connection::Throttle::new(Duration::from_secs(10));
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

/// How long a connection may hold its place with no request in flight.
#[derive(Clone, Copy)]
struct Limits {
    /// `RequestHeaderTimeout`, from accept.
    first: Duration,
    /// `KeepAliveTimeout`, from the last response.
    between: Duration,
}

/// How long an idle connection gets to close gracefully (HTTP/2 GOAWAY)
/// before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves one connection (HTTP/1.1 or HTTP/2) until it ends; once draining
/// starts, or once `idle` resolves (no request for too long), finishes the
/// requests in progress and closes.
async fn serve<I, S>(
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

/// Ends sessions past their `SessionLifetime`, checking a few times per the
/// shortest lifetime configured.
async fn sweep(shared: Arc<Shared>) {
    loop {
        let shortest = shared
            .routing()
            .mounts
            .iter()
            .map(|m| m.config.session_lifetime)
            .min()
            .unwrap_or(Duration::from_secs(60));
        tokio::time::sleep((shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(5)))
            .await;
        let ended = shared.registry.expire();
        if ended > 0 {
            tracing::debug!("{ended} sessions reached their SessionLifetime");
        }
    }
}

/// DataDir, the secret, the worker socket folder and the registry.
fn prepare(config: Config) -> anyhow::Result<Shared> {
    let config = config;
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
    warn_if_fds_too_few(&config);
    let runs_as_root = nix::unistd::geteuid().is_root();
    for location in config
        .locations
        .iter()
        .filter(|l| l.user.is_some() || l.group.is_some())
    {
        if !runs_as_root {
            tracing::warn!(location = %location.prefix, "User/Group ignored: psd is not running as root");
        }
    }
    let secret = config
        .session_secret
        .clone()
        .unwrap_or_else(|| config.data_dir.join("secret"));
    let signer = Signer::load_or_create(&secret, &config.node_name)
        .with_context(|| format!("session secret {}", secret.display()))?;
    let registry = Registry::new(
        IdBook::new(signer),
        config.max_sessions,
        config.max_spawn_rate,
        run_dir.clone(),
    );
    Ok(Shared {
        registry,
        spool: run_dir,
        routing: std::sync::RwLock::new(Arc::new(routing(config, &[])?)),
        listeners: std::sync::Mutex::new(vec![]),
    })
}

/// Derives the routing of a configuration; `listeners` are the bound
/// addresses (their https ones get TLS acceptors).
fn routing(config: Config, listeners: &[SocketAddr]) -> anyhow::Result<Routing> {
    let vhost_of_location = config.vhost_of_locations();
    let vhost_of = |i: usize| vhost_of_location[i];
    let mounts = config
        .locations
        .iter()
        .enumerate()
        .map(|(i, l)| Mount {
            key: match vhost_of(i) {
                Some(v) => {
                    let vhost = &config.vhosts[v];
                    let ip = vhost.ip.map_or("*".to_string(), |ip| ip.to_string());
                    let name = vhost.host.server_name.as_deref().unwrap_or("");
                    format!("{ip}:{} {name} {}", vhost.port, l.prefix).into()
                }
                None => format!("main {}", l.prefix).into(),
            },
            config: Arc::new(l.clone()),
            mount: if l.prefix == "/" {
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
    let mut tls = vec![];
    for (i, local) in listeners.iter().enumerate() {
        tls.push(match config.listen.get(i).filter(|l| l.https) {
            Some(_) => Some(tokio_rustls::TlsAcceptor::from(
                crate::tls::server_config(&config, *local).map_err(anyhow::Error::msg)?,
            )),
            None => None,
        });
    }
    let name = |h: &crate::config::Host| h.server_name.as_deref().map(Arc::from);
    Ok(Routing {
        main_locations: config.main_locations(),
        main_name: name(&config.main),
        vhost_names: config.vhosts.iter().map(|v| name(&v.host)).collect(),
        tls,
        config,
        mounts,
    })
}

/// Descriptors psd must hold per live process session: the worker's stderr
/// pipe. (Kept connections to workers use what the limit leaves; a session
/// without one connects for each request.)
const FDS_PER_PROCESS_SESSION: u64 = 1;

/// Says so at start when `MaxSessions` worker processes cannot fit in the
/// open-file limit: beyond it, new workers fail to start (502).
fn warn_if_fds_too_few(config: &Config) {
    let has_processes = config
        .locations
        .iter()
        .any(|l| matches!(l.handler, Some(Handler::Process(_))));
    let Ok((limit, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    else {
        return;
    };
    let needed = config.max_sessions as u64 * FDS_PER_PROCESS_SESSION + 64;
    if has_processes && needed > limit {
        tracing::warn!(
            "MaxSessions {} worker processes need about {needed} open files, but the limit is {limit}: \
             at most about {} can run at once (raise LimitNOFILE / ulimit -n)",
            config.max_sessions,
            limit.saturating_sub(64) / FDS_PER_PROCESS_SESSION
        );
    }
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

/// Answers one request; with an access log, logs it once its body is sent.
async fn handle(
    shared: &Shared,
    log: Option<&AccessLog>,
    request: Request<Incoming>,
    conn: Conn,
) -> Response<Body> {
    let mut trace = Trace::default();
    let Some(log) = log else {
        return respond(shared, request, conn, &mut trace).await;
    };
    let mut entry = access_log::Entry::new(&request);
    let response = respond(shared, request, conn, &mut trace).await;
    entry.client = trace.client;
    entry.session = trace.session;
    entry.upstream = trace.upstream;
    entry.finish(log, response)
}

/// What handling a request learned, for the access log.
#[derive(Default)]
struct Trace {
    client: Option<std::net::IpAddr>,
    session: Option<Arc<str>>,
    upstream: Option<Duration>,
}

async fn respond(
    shared: &Shared,
    mut request: Request<Incoming>,
    conn: Conn,
    trace: &mut Trace,
) -> Response<Body> {
    if let Err(e) = strict(&request) {
        return Error::BadRequest(e.into()).to_response();
    }
    // HTTP/2 carries the host as :authority, HTTP/1.1's absolute-form in the
    // request target, which then wins over Host (RFC 9112 §3.2.2); workers
    // want a Host header either way.
    if request.version() != http::Version::HTTP_2 || !request.headers().contains_key(HOST) {
        if let Some(v) = request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            request.headers_mut().insert(HOST, v);
        }
    }
    let routing = shared.routing();
    let trusted = &routing.config.trusted_proxies;
    let forwarded = client::forwarded(conn.remote.ip(), request.headers(), trusted);
    let client = client::client_addr(conn.remote.ip(), request.headers(), trusted);
    trace.client = Some(client);
    let host_header = request
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let vhost = routing
        .config
        .select_host(conn.local, host_header.as_deref().map(config::strip_port));
    let normal = match crate::path::normalize(request.uri().path()) {
        Ok(normal) => normal,
        Err(e) => return Error::BadRequest(e.to_string()).to_response(),
    };
    let path = &*normal.decoded;
    let in_vhost = vhost.and_then(|v| {
        config::longest_match(
            &routing.config.locations,
            &routing.config.vhosts[v].host.locations,
            path,
        )
    });
    let Some(index) = in_vhost.or_else(|| {
        config::longest_match(&routing.config.locations, &routing.main_locations, path)
    }) else {
        return Error::NotFound.to_response();
    };
    let mount = &routing.mounts[index];
    let location = &mount.config;
    let under = match path.strip_prefix(&*mount.mount).unwrap_or(path) {
        "" => "/".to_string(),
        under => under.to_string(),
    };
    // Workers see the normalised path, encoded one canonical way.
    if let std::borrow::Cow::Owned(encoded) = normal.encoded {
        let target = match request.uri().query() {
            Some(q) => format!("{encoded}?{q}"),
            None => encoded,
        };
        match target.parse() {
            Ok(uri) => *request.uri_mut() = uri,
            Err(_) => return Error::BadRequest("unparsable path".into()).to_response(),
        }
    }
    let view = View {
        https: forwarded.https.unwrap_or(conn.https),
        host: forwarded.host.or(host_header).map(Arc::from),
        script_name: match &forwarded.prefix {
            Some(outer) => format!("{outer}{}", mount.mount).into(),
            None => mount.mount.clone(),
        },
        server_name: match vhost {
            Some(v) => routing.vhost_names[v].clone(),
            None => routing.main_name.clone(),
        },
    };
    if under == "/.psd" || under.starts_with("/.psd/") {
        return psd_url(shared, mount, &request, &under, client, &view);
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

    let (mut parts, incoming) = request.into_parts();
    let mut params = query_params(&parts.uri);
    let body = if location.mapper.reads_form_fields() && is_form(&parts) {
        match body::read_all(body::streamed(incoming), location.max_request_body).await {
            Ok(bytes) => {
                params.extend(form_urlencoded::parse(&bytes).into_owned());
                set_length(&mut parts.headers, bytes.len() as u64);
                body::buffered(bytes)
            }
            Err(e) => return e.to_response(),
        }
    } else if location.request_buffering && !http_body::Body::is_end_stream(&incoming) {
        // Received before the request takes the session's turn: a slow or
        // broken upload holds up nobody but its own client.
        let received = body::receive(
            body::streamed(incoming),
            location.max_request_body,
            &shared.spool,
            location.request_timeout,
        )
        .await;
        match received {
            Ok(received) => {
                set_length(&mut parts.headers, received.len());
                received.into_body()
            }
            Err(e) => {
                if let Error::Internal(_) = e {
                    tracing::error!("{e}");
                }
                return e.to_response();
            }
        }
    } else {
        body::streamed(incoming)
    };
    let hit = Hit {
        method: &parts.method,
        uri: &parts.uri,
        headers: &parts.headers,
        path: &under,
        client,
        params: &params,
    };
    let target = match shared.registry.resolve(&mount.key, location, &hit) {
        Ok(target) => target,
        Err(e) => {
            tracing::warn!(%client, "{e}");
            return e.to_response();
        }
    };
    if target.access == Access::ReadOnly && !matches!(parts.method, Method::GET | Method::HEAD) {
        return Error::ReadOnly.to_response();
    }
    if let Some(redirect) = query_redirect(&target, &parts.uri, &under, &view) {
        return redirect;
    }

    let head_request = parts.method == Method::HEAD;
    let upgrade = crate::worker::is_websocket(&parts.headers);
    let (reply, answer) = oneshot::channel();
    let job = Job {
        request: Request::from_parts(parts, body),
        meta: RequestMeta {
            client,
            client_port: (client == conn.remote.ip()).then_some(conn.remote.port()),
            local: conn.local,
            https: view.https,
            host: view.host.clone(),
            server_name: view.server_name.clone(),
            mount: mount.mount.clone(),
            script_name: view.script_name.clone(),
            app: mount.app.clone(),
            script_filename: mount.script_filename.clone(),
            document_root: mount.document_root.clone(),
            session_id: target.token.clone(),
            access: target.access,
            session_param: location.mapper.query_name().map(Arc::from),
        },
        reply,
    };
    trace.session = Some(target.token.clone());
    let asked = tokio::time::Instant::now();
    let answer = target.door.call(target.queue.as_ref(), job, answer).await;
    trace.upstream = Some(asked.elapsed());
    let framed = answer.and_then(|r| body::frame(r, head_request, upgrade, &target.token));
    let mut response = framed.unwrap_or_else(|e| {
        if let Error::BadResponse(_) = e {
            tracing::warn!(session = %target.token, "{e}");
        }
        e.to_response()
    });
    if let Some(cookie) = target.assigned.as_ref().and_then(|a| a.cookie.as_deref()) {
        set_cookie(&mut response, cookie, &target.token, &view);
    }
    response
}

/// The longest method name psd accepts; the registered ones are at most 17.
const MAX_METHOD_LEN: usize = 32;

/// What RFC 9112 §3.2 requires of a request before it is routed: one
/// `Host` (and in HTTP/1.1, at least one), and a method of sane length.
fn strict<B>(request: &Request<B>) -> Result<(), &'static str> {
    let mut hosts = request.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err("more than one Host header"),
        (None, None) if request.version() == http::Version::HTTP_11 => {
            return Err("HTTP/1.1 request without Host")
        }
        _ => {}
    }
    if request.method().as_str().len() > MAX_METHOD_LEN {
        return Err("method name too long");
    }
    Ok(())
}

/// Query mode: a new session is announced by `303 See Other` to the same URL
/// with the id added (a POST becomes a GET, as browsers do with 303).
fn query_redirect(
    target: &Target,
    uri: &http::Uri,
    under: &str,
    view: &View,
) -> Option<Response<Body>> {
    let assigned = target.assigned.as_ref()?;
    let param = assigned.query.as_deref()?;
    let path = format!("{}{under}", view.script_name);
    let mut response = redirect(&mapper::with_param(&path, uri.query(), param, &assigned.id));
    if let Some(cookie) = assigned.cookie.as_deref() {
        set_cookie(&mut response, cookie, &assigned.id, view);
    }
    Some(response)
}

fn redirect(to: &str) -> Response<Body> {
    let mut response = Response::new(body::full(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

fn set_cookie(response: &mut Response<Body>, name: &str, id: &str, view: &View) {
    if let Ok(value) = HeaderValue::from_str(&mapper::set_cookie(
        name,
        id,
        view.cookie_path(),
        view.https,
    )) {
        response.headers_mut().append(SET_COOKIE, value);
    }
}

/// A received body's length replaces however the client framed it, so
/// workers get `CONTENT_LENGTH` also for chunked uploads.
fn set_length(headers: &mut http::HeaderMap, len: u64) {
    headers.remove(http::header::TRANSFER_ENCODING);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
}

fn query_params(uri: &http::Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn is_form(parts: &http::request::Parts) -> bool {
    parts.method == Method::POST
        && parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// psd's own URLs under `PREFIX/.psd/`; applications never see them.
///
/// - `share`: a read-write session gets a link that carries its read-only id;
/// - `join?id=ID`: sets the cookie to a read-only id and redirects to the app.
fn psd_url(
    shared: &Shared,
    mount: &Mount,
    request: &Request<Incoming>,
    under: &str,
    client: std::net::IpAddr,
    view: &View,
) -> Response<Body> {
    let mapper = &*mount.config.mapper;
    let params = query_params(request.uri());
    let base = format!("{}/", view.script_name);
    match under {
        "/.psd/share" => {
            let hit = Hit {
                method: request.method(),
                uri: request.uri(),
                headers: request.headers(),
                path: "/",
                client,
                params: &params,
            };
            // Sharing is of the id: with `path` parts, the read-only id
            // reaches every path's session of it, as the read-write id does.
            let presented = mapper
                .get_session_id_from_hit(&hit, &Ids::new(&shared.registry.ids, &mount.key))
                .and_then(|mapped| mapped.presented)
                .filter(|p| p.access == Access::ReadWrite)
                .and_then(|p| shared.registry.ids.share(&mount.key, &p.id));
            let Some(read_only) = presented else {
                return Error::ReadOnly.to_response();
            };
            let link = match (mapper.query_name(), mapper.cookie_name()) {
                (Some(q), _) => mapper::with_param(&base, None, q, &read_only),
                (None, Some(_)) => format!("{base}.psd/join?id={read_only}"),
                (None, None) => return Error::NotFound.to_response(),
            };
            let mut response = Response::new(body::full(format!(
                "<!DOCTYPE html>\n<p>Read-only link to this session: <a href=\"{link}\">{link}</a></p>\n"
            )));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
        "/.psd/join" => {
            let token = params
                .iter()
                .find(|(k, _)| k == "id")
                .map(|(_, v)| v.as_str());
            let valid = token.and_then(|t| shared.registry.ids.verify(&mount.key, t));
            match (valid, mapper.cookie_name()) {
                (Some(p), Some(cookie)) if p.access == Access::ReadOnly => {
                    let mut response = redirect(&base);
                    set_cookie(&mut response, cookie, &p.token, view);
                    response
                }
                _ => Error::NotFound.to_response(),
            }
        }
        _ => Error::NotFound.to_response(),
    }
}
