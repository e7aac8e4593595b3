//! The daemon as a whole: `DataDir`, the session secret, the open-file
//! limit, and the order of things at start, reload and shutdown.
//!
//! [`Server`] wires the listener (`http`) to the session registry
//! ([`crate::session`]); [`run`] is what `main` and the integration tests
//! call. This module never parses a request and never touches a worker.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::access_log::AccessLog;
use crate::config::{Config, Handler};
use crate::http::Shared;
use crate::mapper::{IdBook, Signer};
use crate::session::{Directory, Registry, Sessions, Stored};

/// `sun_path` is 108 bytes on Linux, including the final NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Descriptors psd must hold per live process session: the worker's stderr
/// pipe. (Kept connections to workers use what the limit leaves; a session
/// without one connects for each request.)
const FDS_PER_PROCESS_SESSION: u64 = 1;

/// A prepared daemon: `DataDir` ready, secret loaded, nothing listening yet.
pub struct Server {
    shared: Arc<Shared>,
}

/// Applies a new configuration to a running [`Server`] (what SIGHUP does).
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
}

impl Reloader {
    pub(crate) fn of(shared: Arc<Shared>) -> Reloader {
        Reloader { shared }
    }

    /// New requests follow `config` from now on; live sessions keep their
    /// worker and the settings they started with, and in-flight requests
    /// finish. Settings bound at start (listeners, DataDir, the secret,
    /// MaxSessions, logs) need a restart: a change to them is logged and
    /// otherwise ignored. On error nothing changes.
    pub fn reload(&self, config: Config) -> anyhow::Result<()> {
        let current = self.shared.routing();
        for directive in current.config.needs_restart(&config) {
            tracing::warn!("{directive} changed: it takes effect only after a restart");
        }
        drop(current);
        self.shared.route(config, None)?;
        tracing::info!("configuration reloaded");
        // Sessions of removed locations end (outside a runtime, at the next start).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let apps = self.shared.apps();
            let registry = self.shared.registry.clone();
            let _guard = runtime.enter();
            registry.keep_spares(self.shared.spare_apps());
            runtime.spawn(async move { registry.retain_apps(&apps).await });
        }
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
    /// Sessions live in memory only.
    pub fn new(config: Config) -> anyhow::Result<Server> {
        Server::prepare(config, None)
    }

    /// Like [`Server::new`], with `directory` asked about every valid
    /// session id that names no session in memory (a store, a cluster).
    pub fn with_directory(config: Config, directory: Arc<dyn Directory>) -> anyhow::Result<Server> {
        Server::prepare(config, Some(directory))
    }

    fn prepare(config: Config, directory: Option<Arc<dyn Directory>>) -> anyhow::Result<Server> {
        Ok(Server {
            shared: Arc::new(prepare(config, directory)?),
        })
    }

    /// A handle that applies new configurations to this server once it runs.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            shared: self.shared.clone(),
        }
    }

    /// A handle on the sessions: count, list, stop, end.
    pub fn sessions(&self) -> Sessions {
        Sessions::new(self.shared.registry.clone())
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
        shared.route(shared.routing().config.clone(), Some(addrs))?;
        shared.registry.retain_apps(&shared.apps()).await;
        let access_log = match &shared.routing().config.access_log {
            None => None,
            Some(path) => Some(
                AccessLog::open(path.as_deref()).with_context(|| match path {
                    Some(path) => format!("AccessLog {}", path.display()),
                    None => "AccessLog".into(),
                })?,
            ),
        };
        let state_listener = crate::http::state_api::bind(&shared.registry)
            .await
            .context("binding the state API on 127.0.0.1")?;
        // After the state API: spares get their URLs at start.
        shared.registry.keep_spares(shared.spare_apps());
        let state_api = tokio::spawn(crate::http::state_api::serve(
            shared.registry.clone(),
            state_listener,
        ));
        let admin = match &shared.routing().config.admin_listen {
            Some(at) => Some(tokio::spawn(crate::admin::serve(
                admin_for(&shared)?,
                crate::admin::Listener::bind(at)
                    .await
                    .with_context(|| format!("AdminListen {at}"))?
                    .logged(),
            ))),
            None => None,
        };
        let expiry = tokio::spawn(shared.registry.clone().expire_sessions());
        crate::http::listener::serve(shared.clone(), listeners, access_log, shutdown).await;
        expiry.abort();
        if let Some(admin) = &admin {
            admin.abort();
        }
        shared.registry.shutdown().await;
        state_api.abort();
        let _ = state_api.await;
        let _ = expiry.await;
        // Records written at shutdown are committed before `run` returns.
        shared.registry.store.close();
        tracing::info!("all sessions stopped");
        Ok(())
    }
}

/// DataDir, the secret, the worker socket folder, the state store and the
/// registry; the store's records answer the registry's misses unless
/// `directory` is given.
fn prepare(config: Config, directory: Option<Arc<dyn Directory>>) -> anyhow::Result<Shared> {
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
    if !nix::unistd::geteuid().is_root() {
        for location in config
            .locations
            .iter()
            .filter(|l| l.user.is_some() || l.group.is_some())
        {
            tracing::warn!(location = %location.prefix, "User/Group ignored: psd is not running as root");
        }
    }
    let secret = config
        .session_secret
        .clone()
        .unwrap_or_else(|| config.data_dir.join("secret"));
    let signer = Signer::load_or_create(&secret, &config.node_name)
        .with_context(|| format!("session secret {}", secret.display()))?;
    let metrics = crate::metrics::Metrics::new();
    let store = metrics.timed(crate::store::open(&config.state_store, &config.data_dir)?);
    let directory = directory.unwrap_or_else(|| Arc::new(Stored(store.clone())));
    let registry = Registry::new(
        IdBook::new(signer),
        directory,
        store,
        metrics,
        &config.node_name,
        (config.max_sessions, config.max_spawn_rate),
        run_dir.clone(),
    );
    Shared::new(registry, run_dir, config)
}

/// The admin side of `shared`, with its token (created if missing).
fn admin_for(shared: &Arc<Shared>) -> anyhow::Result<Arc<crate::admin::Admin>> {
    let path = shared.routing().config.admin_token_path();
    let token = crate::admin::load_or_create_token(&path)
        .with_context(|| format!("AdminToken {}", path.display()))?;
    Ok(Arc::new(crate::admin::Admin::new(shared.clone(), &token)))
}

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
