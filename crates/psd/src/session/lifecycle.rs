//! One session's life, as one task that owns its worker and its queue.
//!
//! ```text
//!            first request                 SessionTimeout (idle)
//!  Dormant ───────────────▶ Starting ─▶ Idle ⇄ Busy ────────────▶ Dormant
//!     ▲                                   │                          │
//!     └──────── worker exits ◀────────────┘                          │
//!  reaped or past SessionLifetime (the registry's sweep), shutdown,
//!  in-process task ended, never used for SessionTimeout ─▶ Stopping ─▶ Gone
//! ```
//!
//! Requests are taken from the queue only while fewer than
//! `WorkerConcurrency` are in flight, so with the default of 1 a session's
//! requests never overlap and keep their order. A dormant session (worker
//! stopped after an idle timeout or a crash) keeps its id and starts a fresh
//! worker with `PSD_RESUMED=1` on its next request; it holds no
//! live-session slot while dormant. A session that never got a worker (a
//! query-mode redirect nobody followed, a worker that failed to start) ends
//! after `SessionTimeout`. In-process sessions cannot outlive their task, so
//! for them an idle timeout ends the session.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use super::{Registry, Slot};
use crate::config::{Handler, LocationConfig};
use crate::error::Error;
use crate::worker::{Activity, Job, Spawn, Worker};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No worker: before the first request, or after the worker stopped.
    Dormant,
    Starting,
    Idle,
    Busy,
    Stopping,
}

pub(super) struct Session {
    pub id: Arc<str>,
    pub key: String,
    pub location_key: Arc<str>,
    pub serial: u64,
    /// The address that created the session; its slots count against it.
    pub client: IpAddr,
    pub location: Arc<LocationConfig>,
    pub registry: Arc<Registry>,
    /// Held while a worker runs.
    pub slot: Option<Slot>,
    pub stop: Arc<Notify>,
    /// Dropped when this task ends; the registry waits for all of them.
    pub _alive: mpsc::Sender<()>,
}

struct Life {
    state: State,
    activity: Arc<Activity>,
    worker: Option<Worker>,
    in_flight: JoinSet<()>,
    last_active: Instant,
    /// Whether a worker has run for this session before.
    resumed: bool,
}

impl Session {
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Box<Job>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let in_process = matches!(self.location.handler, Some(Handler::InProcess(_)));
        let concurrency = self.location.worker_concurrency;
        let mut life = Life {
            state: State::Dormant,
            activity: Activity::new(),
            worker: None,
            in_flight: JoinSet::new(),
            last_active: Instant::now(),
            resumed: false,
        };
        tracing::debug!(session = %self.id, app = %self.location.prefix, "session created");

        let reason = loop {
            let idle = life.in_flight.is_empty();
            let has_worker = life.worker.is_some();
            let gone = life.worker.as_ref().map(Worker::gone);
            let idle_end = life.last_active + self.location.session_timeout;
            let never_used = !has_worker && !life.resumed;
            tokio::select! {
                _ = shutdown.changed() => break "psd is shutting down",
                _ = self.stop.notified() => break "reaped by age (SessionLifetime or reap)",
                Some(_) = life.in_flight.join_next(), if !idle => {
                    life.last_active = Instant::now();
                    if life.in_flight.is_empty() && life.worker.is_some() {
                        self.transition(&mut life, State::Idle);
                    }
                }
                _ = async move { gone.expect("guarded").await }, if has_worker => {
                    life.worker = None;
                    self.slot = None;
                    if in_process {
                        break "the application's session task ended";
                    }
                    self.transition(&mut life, State::Dormant);
                }
                _ = sleep_until(idle_end), if idle && has_worker => {
                    // An open WebSocket, or traffic on one, is activity too.
                    let last = life.activity.last();
                    if last > life.last_active {
                        life.last_active = last;
                        continue;
                    }
                    if in_process {
                        break "SessionTimeout reached";
                    }
                    tracing::info!(session = %self.id, "idle for {:?}: stopping the worker", self.location.session_timeout);
                    if let Some(worker) = life.worker.take() {
                        Box::pin(worker.stop(self.location.worker_stop_timeout)).await;
                    }
                    self.slot = None;
                    self.transition(&mut life, State::Dormant);
                }
                _ = sleep_until(idle_end), if idle && never_used => break "never used within SessionTimeout",
                job = requests.recv(), if life.in_flight.len() < concurrency => match job {
                    Some(job) => {
                        let Some(serve) = self.accept(&mut life, job).await else { continue };
                        if concurrency > 1 {
                            life.in_flight.spawn(serve);
                            continue;
                        }
                        // One request at a time: serve it here rather than in
                        // a task of its own (one hop less per request), still
                        // answering shutdown and reaping meanwhile. Boxed, so
                        // that the exchange does not size every idle session.
                        let serve = Box::pin(serve);
                        tokio::select! {
                            _ = serve => {}
                            _ = shutdown.changed() => break "psd is shutting down",
                            _ = self.stop.notified() => break "reaped by age (SessionLifetime or reap)",
                        }
                        life.last_active = Instant::now();
                        if life.worker.is_some() {
                            self.transition(&mut life, State::Idle);
                        }
                    }
                    None => break "its queue closed",
                },
            }
        };

        self.transition(&mut life, State::Stopping);
        self.registry
            .remove(&self.location_key, &self.key, self.serial);
        requests.close();
        while let Ok(job) = requests.try_recv() {
            let _ = job.reply.send(Err(Error::ShuttingDown));
        }
        life.in_flight.shutdown().await;
        if let Some(worker) = life.worker.take() {
            Box::pin(worker.stop(self.location.worker_stop_timeout)).await;
        }
        tracing::info!(session = %self.id, "session ended: {reason}");
    }

    /// Starts a worker if there is none; returns the future that serves the
    /// job on it (`None` when the job was already answered with an error).
    async fn accept(
        &mut self,
        life: &mut Life,
        job: Box<Job>,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        if life.worker.is_none() {
            if self.slot.is_none() {
                match self
                    .registry
                    .slots
                    .acquire(self.client, self.location.max_sessions_per_client)
                {
                    Ok(slot) => self.slot = Some(slot),
                    Err(e) => {
                        let _ = job.reply.send(Err(e));
                        return None;
                    }
                }
            }
            self.transition(life, State::Starting);
            // Boxed: starting is rare, and awaiting it inline would size every
            // session's task for it for its whole life.
            let started = Box::pin(Worker::start(Spawn {
                session_id: &self.id,
                location: &self.location,
                resumed: life.resumed,
                run_dir: &self.registry.run_dir,
                activity: &life.activity,
            }))
            .await;
            match started {
                Ok(worker) => {
                    life.worker = Some(worker);
                    life.resumed = true;
                }
                Err(e) => {
                    tracing::warn!(session = %self.id, "{e}");
                    self.slot = None;
                    self.transition(life, State::Dormant);
                    let _ = job.reply.send(Err(e));
                    return None;
                }
            }
        }
        self.transition(life, State::Busy);
        Some(life.worker.as_ref().expect("started above").serve(*job))
    }

    /// The one place a session changes state.
    fn transition(&self, life: &mut Life, to: State) {
        if life.state != to {
            let pid = life.worker.as_ref().and_then(Worker::pid);
            tracing::debug!(session = %self.id, ?pid, "{:?} -> {:?}", life.state, to);
            life.state = to;
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every session's task is as large as this future, for its whole life:
    /// a regression test that awaiting something big inline (worker start
    /// was one) does not come back. Measured 1,416 bytes in a debug build.
    #[test]
    fn a_session_task_stays_small() {
        fn size_of_future<F: std::future::Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let registry = crate::session::Registry::new(
                crate::mapper::IdBook::new(crate::mapper::Signer::new("n", b"0123456789abcdef")),
                10,
                std::env::temp_dir(),
            );
            let (_queue, requests) = tokio::sync::mpsc::channel(1);
            let (alive, _) = tokio::sync::mpsc::channel(1);
            let session = super::Session {
                id: "x".into(),
                key: "k".into(),
                location_key: "l".into(),
                serial: 0,
                client: "127.0.0.1".parse().unwrap(),
                location: std::sync::Arc::new(crate::config::LocationConfig::new("/")),
                registry,
                slot: None,
                stop: std::sync::Arc::new(tokio::sync::Notify::new()),
                _alive: alive,
            };
            let run = session.run(requests, tokio::sync::watch::channel(false).1);
            let size = size_of_future(&run);
            assert!(size <= 1600, "Session::run is {size} bytes");
        });
    }
}
