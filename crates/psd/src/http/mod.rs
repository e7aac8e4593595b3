//! HTTP in front of the sessions: connections in, each request routed to
//! its `<Location>` and session, the answer framed and sent back.
//!
//! - [`listener`]: sockets, TLS, connection limits and timeouts, draining;
//! - [`handler`]: one `Request<B>` to one response (a job for a session, or
//!   an error), with no socket of its own, so tests call it directly;
//! - [`own_urls`]: psd's own URLs under `PREFIX/.psd/`;
//! - [`state_api`]: sessions' values over HTTP, for workers (an internal
//!   listener) and clients (`ClientState`).
//!
//! This module never touches a worker: it hands a job to the session's door
//! and frames what comes back.

pub(crate) mod handler;
pub(crate) mod listener;
mod own_urls;
pub(crate) mod state_api;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::config::{Config, Handler, LocationConfig};
use crate::metrics::{AppMetrics, Metrics};
use crate::session::{AppKey, Registry};

/// What the HTTP side shares across connections: the sessions, and the
/// current routing.
pub(crate) struct Shared {
    pub registry: Arc<Registry>,
    /// Where request bodies too large for memory are received.
    pub spool: PathBuf,
    routing: RwLock<Arc<Routing>>,
    /// The local address of each listener, by position (for TLS on reload).
    listeners: Mutex<Vec<SocketAddr>>,
}

impl Shared {
    pub fn new(registry: Arc<Registry>, spool: PathBuf, config: Config) -> anyhow::Result<Shared> {
        let routing = Routing::new(config, &[], &registry.metrics)?;
        Ok(Shared {
            registry,
            spool,
            routing: RwLock::new(Arc::new(routing)),
            listeners: Mutex::new(vec![]),
        })
    }

    pub fn routing(&self) -> Arc<Routing> {
        self.routing.read().expect("routing lock").clone()
    }

    /// The applications the current configuration mounts.
    pub fn apps(&self) -> Vec<AppKey> {
        self.routing()
            .mounts
            .iter()
            .map(|m| m.app.clone())
            .collect()
    }

    /// The applications that keep `SpareWorkers`, with their settings.
    pub fn spare_apps(&self) -> Vec<(AppKey, Arc<crate::config::LocationConfig>)> {
        self.routing()
            .mounts
            .iter()
            .filter(|m| m.config.spare_workers > 0)
            .filter(|m| matches!(m.config.handler, Some(Handler::Process(_))))
            .map(|m| (m.app.clone(), m.config.clone()))
            .collect()
    }

    /// Routes by `config` from now on; TLS acceptors are made for the
    /// https listeners among `listeners` (the bound addresses), or for
    /// those of the last call when `None`. On error nothing changes.
    pub fn route(&self, config: Config, listeners: Option<Vec<SocketAddr>>) -> anyhow::Result<()> {
        let mut bound = self.listeners.lock().expect("listeners lock");
        let next = Routing::new(
            config,
            listeners.as_deref().unwrap_or(&bound),
            &self.registry.metrics,
        )?;
        if let Some(listeners) = listeners {
            *bound = listeners;
        }
        *self.routing.write().expect("routing lock") = Arc::new(next);
        Ok(())
    }
}

/// One `<Location>` as the handler needs it, computed once per
/// configuration rather than per request.
pub(crate) struct Mount {
    /// The application's identity across reloads and restarts.
    pub app: AppKey,
    pub config: Arc<LocationConfig>,
    /// The prefix as taken off paths: empty for `/`.
    pub prefix: Arc<str>,
    /// The prefix as written (`/` for the root): `PSD_APP`.
    pub name: Arc<str>,
    pub script_filename: Arc<str>,
    pub document_root: Arc<str>,
    /// Its counters for `/metrics`.
    pub metrics: Arc<AppMetrics>,
    /// Its access control (`AuthType`, `Require`), if any.
    pub gate: Option<Arc<crate::auth::Gate>>,
    /// The query parameter that carries the session id, if the mapper reads one.
    pub session_param: Option<Arc<str>>,
}

/// Everything derived from one configuration; a reload swaps it whole.
/// Sessions keep the `LocationConfig` they started with.
pub(crate) struct Routing {
    pub config: Config,
    pub mounts: Vec<Mount>,
    /// Locations of the main server, the fallback for every host.
    pub main_locations: Vec<usize>,
    /// `ServerName` of the main server and of each virtual host.
    pub main_name: Option<Arc<str>>,
    pub vhost_names: Vec<Option<Arc<str>>>,
    /// The TLS acceptor of each https listener, by position.
    pub tls: Vec<Option<tokio_rustls::TlsAcceptor>>,
}

impl Routing {
    /// The routing of `config`; `listeners` are the bound addresses (their
    /// https ones get TLS acceptors).
    fn new(config: Config, listeners: &[SocketAddr], metrics: &Metrics) -> anyhow::Result<Routing> {
        let vhost_of_location = config.vhost_of_locations();
        let mounts = config
            .locations
            .iter()
            .zip(vhost_of_location)
            .map(|(l, vhost)| {
                let app = AppKey::new(vhost.map(|v| &config.vhosts[v]), &l.prefix);
                (app, l)
            })
            .map(|(app, l)| Mount {
                metrics: metrics.app(&app),
                gate: crate::auth::Gate::of(l),
                session_param: l.mapper.query_name().map(Arc::from),
                app,
                config: Arc::new(l.clone()),
                prefix: if l.prefix == "/" {
                    "".into()
                } else {
                    l.prefix.as_str().into()
                },
                name: l.prefix.as_str().into(),
                script_filename: match &l.handler {
                    Some(Handler::Process(c)) => c.program.to_string_lossy().into(),
                    _ => "".into(),
                },
                document_root: l
                    .document_root
                    .as_deref()
                    .or(l.working_directory.as_deref())
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

    /// The mount a request for `path` on `vhost` goes to: the virtual
    /// host's longest matching prefix, else the main server's.
    pub fn mount_for(&self, vhost: Option<usize>, path: &str) -> Option<&Mount> {
        let config = &self.config;
        let in_vhost = vhost.and_then(|v| {
            crate::config::longest_match(&config.locations, &config.vhosts[v].host.locations, path)
        });
        let index = in_vhost.or_else(|| {
            crate::config::longest_match(&config.locations, &self.main_locations, path)
        })?;
        Some(&self.mounts[index])
    }
}
