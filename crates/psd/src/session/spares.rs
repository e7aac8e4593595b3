//! `SpareWorkers N`: workers started ahead of their session, so that a new
//! session of a slow-starting application (a Python data app, R Shiny)
//! opens in the time of a warm request.
//!
//! Each application with spares has a pool. A spare is started without a
//! session: no `PSD_SESSION_ID` in its environment (it learns its session
//! from each request: the FastCGI param, `X-Psd-Session-Id`, the stdio
//! `session` field), and a `PSD_STATE_URL` whose capability names no space
//! until a session takes the worker; then it is bound to that session's.
//! A new session takes a spare instead of starting a worker (a resumed one
//! starts its own, which learns `PSD_RESUMED=1`), and the pool refills in
//! the background, through the same `MaxSpawnRate` turns as any spawn, and
//! only while spares and live workers together stay within `MaxSessions`.
//! A reload restarts an application's spares with its new settings.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::{AppKey, Grant, Registry};
use crate::config::LocationConfig;
use crate::store::Space;
use crate::worker::{Activity, Spawn, Worker};

/// A worker started ahead, with what a session takes over from it.
pub(crate) struct Spare {
    pub worker: Worker,
    pub activity: Arc<Activity>,
    /// Its state API token (bound to a session when taken).
    pub grant: Option<Box<str>>,
    /// `WorkerStopTimeout` of its application, should it be discarded.
    grace: std::time::Duration,
}

struct Pool {
    location: Arc<LocationConfig>,
    ready: VecDeque<Spare>,
    starting: usize,
}

/// The pools, per application.
#[derive(Default)]
pub(crate) struct Spares {
    pools: Mutex<HashMap<AppKey, Pool>>,
}

impl Spares {
    /// Spares and spares being started, across all applications.
    fn held(&self) -> usize {
        let pools = self.pools.lock().expect("spares lock");
        pools.values().map(|p| p.ready.len() + p.starting).sum()
    }
}

/// The label a spare goes by in logs until a session takes it.
const SPARE: &str = "spare";

impl Registry {
    /// Keeps `SpareWorkers` started for each of `apps` (those with none
    /// configured are left out), and stops the spares of every other
    /// application, and of an application whose settings changed.
    pub(crate) fn keep_spares(self: &Arc<Self>, apps: Vec<(AppKey, Arc<LocationConfig>)>) {
        let mut stale = vec![];
        {
            let mut pools = self.spares.pools.lock().expect("spares lock");
            pools.retain(|app, pool| {
                let keep = apps
                    .iter()
                    .any(|(a, l)| a == app && Arc::ptr_eq(l, &pool.location));
                if !keep {
                    stale.extend(pool.ready.drain(..));
                }
                keep
            });
            for (app, location) in &apps {
                pools.entry(app.clone()).or_insert_with(|| Pool {
                    location: location.clone(),
                    ready: VecDeque::new(),
                    starting: 0,
                });
            }
        }
        self.discard(stale);
        for (app, _) in apps {
            self.refill(&app);
        }
    }

    /// A started worker for a new session of `app`, if one is ready; its
    /// state URL now names `session`. With none ready, the pool refills at
    /// once; a taken one is replaced by the caller's [`Self::refill`], once
    /// its first request is answered.
    pub(crate) fn take_spare(self: &Arc<Self>, app: &AppKey, session: Space) -> Option<Spare> {
        let spare = {
            let mut pools = self.spares.pools.lock().expect("spares lock");
            let pool = pools.get_mut(app)?;
            // One that exited while waiting is no use.
            pool.ready.retain(|s| !s.worker.has_exited());
            pool.ready.pop_front()
        };
        if let Some(spare) = &spare {
            if let Some(token) = &spare.grant {
                self.grants.bind(token, session);
            }
        }
        if spare.is_none() {
            self.refill(app);
        }
        spare
    }

    /// Stops every spare (psd is shutting down).
    pub(crate) fn stop_spares(&self) {
        let stale: Vec<Spare> = {
            let mut pools = self.spares.pools.lock().expect("spares lock");
            pools.drain().flat_map(|(_, p)| p.ready).collect()
        };
        self.discard(stale);
    }

    fn discard(&self, spares: Vec<Spare>) {
        for spare in spares {
            if let Some(token) = &spare.grant {
                self.grants.revoke(token);
            }
            tokio::spawn(spare.worker.stop(spare.grace));
        }
    }

    /// Starts spares for `app` until its pool is full, within `MaxSessions`.
    pub(crate) fn refill(self: &Arc<Self>, app: &AppKey) {
        loop {
            let location = {
                let mut pools = self.spares.pools.lock().expect("spares lock");
                let Some(pool) = pools.get_mut(app) else {
                    return;
                };
                if pool.ready.len() + pool.starting >= pool.location.spare_workers {
                    return;
                }
                pool.starting += 1;
                pool.location.clone()
            };
            // Live workers hold a slot each; spares must leave room for them.
            if self.spares.held() > self.slots.live.available_permits() {
                self.started(app, &location, None);
                return;
            }
            let registry = self.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let spare = registry.start_spare(&app, &location).await;
                registry.started(&app, &location, spare);
            });
        }
    }

    async fn start_spare(&self, app: &AppKey, location: &Arc<LocationConfig>) -> Option<Spare> {
        if *self.shutdown.borrow() || self.spawn_turn().await.is_err() {
            return None;
        }
        let urls = self.grants.mint(Grant {
            session: None,
            shared: Space::Shared {
                app: app.as_str().into(),
            },
            limit: location.max_session_state,
        });
        let activity = Activity::new();
        let label: Arc<str> = SPARE.into();
        let asked = std::time::Instant::now();
        let started = Worker::start(Spawn {
            session_id: &label,
            label: &label,
            spare: true,
            location,
            resumed: false,
            state_urls: urls.as_ref().map(|u| (u.state.as_str(), u.shared.as_str())),
            run_dir: &self.run_dir,
            processes: &self.processes,
            activity: &activity,
        })
        .await;
        (self.metrics.app(app)).spawn(asked.elapsed(), started.is_ok());
        match started {
            Ok(worker) => Some(Spare {
                worker,
                activity,
                grant: urls.map(|u| u.token.into()),
                grace: location.worker_stop_timeout,
            }),
            Err(e) => {
                if let Some(urls) = urls {
                    self.grants.revoke(&urls.token);
                }
                tracing::warn!("spare worker: {e}");
                None
            }
        }
    }

    /// A spare has started (or failed to): into its pool, if the pool is
    /// still the one it was started for.
    fn started(&self, app: &AppKey, location: &Arc<LocationConfig>, spare: Option<Spare>) {
        let mut pools = self.spares.pools.lock().expect("spares lock");
        let pool = pools
            .get_mut(app)
            .filter(|p| Arc::ptr_eq(&p.location, location));
        match (pool, spare) {
            (Some(pool), Some(spare)) => {
                pool.starting -= 1;
                pool.ready.push_back(spare);
            }
            (Some(pool), None) => pool.starting -= 1,
            (None, Some(spare)) => {
                drop(pools);
                self.discard(vec![spare]);
            }
            (None, None) => {}
        }
    }
}
