//! One session's life, as one task that owns its worker.
//!
//! ```text
//!            first request                  SessionTimeout (idle)
//!  Dormant ───────────────▶ Starting ─▶ Running ────────────────▶ Dormant
//!     ▲                                   │                          │
//!     └──────── worker exits ◀────────────┘                          │
//!  reaped or past SessionLifetime (the registry's sweep), shutdown,
//!  in-process task ended, never used for SessionTimeout ─▶ Stopping ─▶ Gone
//! ```
//!
//! While the session runs, requests mostly reach the worker through its
//! [`Door`] without this task; what comes through its queue is the first
//! request (which starts the worker), requests that had to wait for their
//! turn, and requests to a dormant session. The door counts requests in
//! flight on both paths, so with the default `WorkerConcurrency 1` a
//! session's requests never overlap and keep their order. A dormant session
//! (worker stopped after an idle timeout or a crash) keeps its id and starts
//! a fresh worker with `PSD_RESUMED=1` on its next request; it holds no
//! live-session slot while dormant. A session that never got a worker (a
//! query-mode redirect nobody followed, a worker that failed to start) ends
//! after `SessionTimeout`. An in-process session ([`InProcess`]) is one task
//! that runs the application's future itself, and ends with it: on idle
//! timeout, reaping, shutdown, or a request it did not answer in time.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{sleep_until, Instant};

use super::door::{Admitted, Door, Turn};
use super::{Registry, Slot};
use crate::app::SessionFuture;
use crate::config::LocationConfig;
use crate::error::Error;
use crate::worker::{Activity, Job, Spawn, Worker};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No worker: before the first request, or after the worker stopped.
    Dormant,
    Starting,
    Running,
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
    pub door: Arc<Door>,
    /// Held while a worker runs.
    pub slot: Option<Slot>,
    pub stop: Arc<Notify>,
    /// The registry's request to stop the worker for a new session.
    pub evict: Arc<Notify>,
    /// Dropped when this task ends; the registry waits for all of them.
    pub _alive: mpsc::Sender<()>,
}

/// A session that has served one request and no second is stopped this
/// soon (unless `SessionTimeout` is shorter): most are visits that never
/// come back, and a flood of them must not hold workers for the whole
/// `SessionTimeout`. Its id stays valid; a second request resumes it.
const FIRST_VISIT_TIMEOUT: Duration = Duration::from_secs(60);

struct Life {
    state: State,
    activity: Arc<Activity>,
    worker: Option<Worker>,
    /// When a WebSocket tunnel was last seen active.
    tunnel_active: Instant,
    /// Whether a worker has run for this session before.
    resumed: bool,
}

impl Session {
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Box<Admitted>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let session_timeout = self.location.session_timeout;
        let mut life = Life {
            state: State::Dormant,
            activity: Activity::new(),
            worker: None,
            tunnel_active: Instant::now(),
            resumed: false,
        };
        tracing::debug!(session = %self.id, app = %self.location.prefix, "session created");

        let reason = loop {
            let timeout = if self.door.served() <= 1 {
                session_timeout.min(FIRST_VISIT_TIMEOUT)
            } else {
                session_timeout
            };
            let has_worker = life.worker.is_some();
            let gone = life.worker.as_ref().map(Worker::gone);
            let idle_end = self.door.idle_check(timeout, life.tunnel_active);
            let never_used = !has_worker && !life.resumed;
            tokio::select! {
                _ = shutdown.changed() => break "psd is shutting down",
                _ = self.stop.notified() => break "reaped by age (SessionLifetime or reap)",
                _ = async move { gone.expect("guarded").await }, if has_worker => {
                    self.door.set_worker(None);
                    life.worker = None;
                    self.slot = None;
                    self.transition(&mut life, State::Dormant);
                }
                _ = sleep_until(idle_end), if has_worker => {
                    // An open WebSocket, or traffic on one, is activity too.
                    let tunnel = life.activity.last();
                    if tunnel > life.tunnel_active {
                        life.tunnel_active = tunnel;
                        continue;
                    }
                    let Some(worker) = self.door.take_if_idle_for(timeout) else {
                        // A request is in flight, or one came meanwhile.
                        continue;
                    };
                    tracing::info!(session = %self.id, "idle for {timeout:?}: stopping the worker");
                    life.worker = None;
                    Box::pin(worker.stop(self.location.worker_stop_timeout)).await;
                    self.slot = None;
                    self.transition(&mut life, State::Dormant);
                }
                _ = sleep_until(idle_end), if never_used => break "never used within SessionTimeout",
                () = self.evict.notified(), if has_worker => {
                    let Some(worker) = self.door.take_if_idle_for(super::EVICT_MIN_IDLE) else {
                        continue;
                    };
                    life.worker = None;
                    Box::pin(worker.stop(self.location.worker_stop_timeout)).await;
                    self.slot = None;
                    self.transition(&mut life, State::Dormant);
                }
                job = requests.recv() => match job {
                    Some(admitted) => {
                        let Admitted { job, turn } = *admitted;
                        self.accept(&mut life, job, turn).await;
                    }
                    None => break "its queue closed",
                },
            }
        };

        self.transition(&mut life, State::Stopping);
        self.door.set_worker(None);
        self.registry
            .remove(&self.location_key, &self.key, self.serial);
        requests.close();
        while let Ok(admitted) = requests.try_recv() {
            let _ = admitted.job.reply.send(Err(Error::ShuttingDown));
        }
        if let Some(worker) = life.worker.take() {
            Box::pin(worker.stop(self.location.worker_stop_timeout)).await;
        }
        tracing::info!(session = %self.id, "session ended: {reason}");
    }

    /// Starts a worker if there is none, then serves the job on it in a task
    /// of its own (its turn ends with it).
    async fn accept(&mut self, life: &mut Life, job: Job, turn: Turn) {
        // A request that found the worker dead may come before its exit is
        // handled above; it gets a new worker (the slot stays held).
        if life.worker.as_ref().is_some_and(Worker::has_exited) {
            self.door.set_worker(None);
            life.worker = None;
        }
        if life.worker.is_none() {
            if self.slot.is_none() {
                // Boxed, as the start below.
                let acquired = Box::pin(self.registry.slots.acquire_waiting(
                    self.client,
                    self.location.max_sessions_per_client,
                    super::PLACE_WAIT + self.location.worker_stop_timeout,
                ))
                .await;
                match acquired {
                    Ok(slot) => self.slot = Some(slot),
                    Err(e) => {
                        let _ = job.reply.send(Err(e));
                        return;
                    }
                }
            }
            if let Err(e) = Box::pin(self.registry.spawn_turn()).await {
                tracing::info!(session = %self.id, "{e}");
                self.slot = None;
                let _ = job.reply.send(Err(e));
                return;
            }
            self.transition(life, State::Starting);
            // Boxed: starting is rare, and awaiting it inline would size every
            // session's task for it for its whole life.
            let started = Box::pin(Worker::start(Spawn {
                session_id: &self.id,
                location: &self.location,
                resumed: life.resumed,
                run_dir: &self.registry.run_dir,
                workers: &self.registry.workers,
                activity: &life.activity,
            }))
            .await;
            match started {
                Ok(worker) => {
                    self.door.set_worker(Some(worker.clone()));
                    life.worker = Some(worker);
                    life.resumed = true;
                    self.transition(life, State::Running);
                }
                Err(e) => {
                    tracing::warn!(session = %self.id, "{e}");
                    self.slot = None;
                    self.transition(life, State::Dormant);
                    let _ = job.reply.send(Err(e));
                    return;
                }
            }
        }
        let serve = life.worker.as_ref().expect("started above").serve(job);
        tokio::spawn(async move {
            if let Some(job) = serve.await {
                let _ = job.reply.send(Err(Error::Worker(
                    "the new worker died before the request reached it".into(),
                )));
            }
            drop(turn);
        });
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

/// An in-process session: the application's future, run by the session's
/// one task with the session's timers around it. There is no worker to
/// start or stop and no queue: requests reach the application through the
/// door, and the session ends with the application's future.
pub(super) struct InProcess {
    pub id: Arc<str>,
    pub key: String,
    pub location_key: Arc<str>,
    pub serial: u64,
    pub location: Arc<LocationConfig>,
    pub registry: Arc<Registry>,
    pub door: Arc<Door>,
    pub _slot: Slot,
    /// Reaping, `SessionLifetime`, or a request the application did not
    /// answer in time.
    pub end: Arc<Notify>,
    pub _alive: mpsc::Sender<()>,
}

impl InProcess {
    /// Runs the application's future until it ends or the session is ended
    /// (`end`: reaping, `SessionLifetime`, shutdown, a request not answered
    /// in time) or idle for `SessionTimeout`. Every session holds this
    /// future for its whole life, so it keeps little state across awaits.
    pub async fn run(self, main: SessionFuture) {
        use futures_util::FutureExt;
        // A panic in the application ends its session, not this task's
        // clean-up (the panic hook has reported it).
        let mut main = std::panic::AssertUnwindSafe(main).catch_unwind();
        let began = Instant::now();
        let reason = loop {
            let timeout = self.location.session_timeout;
            let check = self.door.idle_check(timeout, began);
            tokio::select! {
                ended = &mut main => break match ended {
                    Ok(()) => "the application's session task ended",
                    Err(_) => "the application's session task panicked",
                },
                () = self.end.notified() => break match *self.registry.shutdown.borrow() {
                    true => "psd is shutting down",
                    false => "ended (reaped, SessionLifetime, or a request timed out)",
                },
                () = sleep_until(check) => {
                    if let Some(Worker::InProcess(task)) = self.door.take_if_idle_for(timeout) {
                        task.close();
                        break "SessionTimeout reached";
                    }
                }
            }
        };
        if let Some(Worker::InProcess(task)) = self.door.set_worker(None) {
            task.close();
        }
        self.registry
            .remove(&self.location_key, &self.key, self.serial);
        drop(main);
        tracing::info!(session = %self.id, "session ended: {reason}");
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;

    use tokio::sync::{mpsc, Notify};

    use crate::config::LocationConfig;
    use crate::session::Registry;

    /// The size of the future `make` returns, made inside a runtime with a
    /// fresh registry (what the session structs need to exist).
    fn future_size<F: Future>(make: impl FnOnce(Arc<Registry>) -> F) -> usize {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let registry = Registry::new(
                crate::mapper::IdBook::new(crate::mapper::Signer::new("n", b"0123456789abcdef")),
                10,
                64,
                std::env::temp_dir(),
            );
            std::mem::size_of_val(&make(registry))
        })
    }

    /// Every session's task is as large as this future, for its whole life:
    /// a regression test that awaiting something big inline (worker start
    /// was one) does not come back. Measured 1,416 bytes in a debug build.
    #[test]
    fn a_session_task_stays_small() {
        let size = future_size(|registry| {
            let (_queue, requests) = mpsc::channel(1);
            super::Session {
                id: "x".into(),
                key: "k".into(),
                location_key: "l".into(),
                serial: 0,
                client: "127.0.0.1".parse().unwrap(),
                location: Arc::new(LocationConfig::new("/")),
                registry,
                door: super::Door::new(1),
                slot: None,
                stop: Arc::new(Notify::new()),
                evict: Arc::new(Notify::new()),
                _alive: mpsc::channel(1).0,
            }
            .run(requests, tokio::sync::watch::channel(false).1)
        });
        assert!(size <= 1600, "Session::run is {size} bytes");
    }

    /// A million in-process sessions hold a million of these futures: a
    /// regression test for their size (560 bytes when written).
    #[test]
    fn an_in_process_session_task_stays_small() {
        let size = future_size(|registry| {
            let slot = registry
                .slots
                .acquire("127.0.0.1".parse().unwrap(), 10)
                .unwrap();
            let app = crate::demo::counter();
            let location = Arc::new(LocationConfig::in_process("/", app.clone()));
            let end = Arc::new(Notify::new());
            let (_task, main) =
                crate::worker::inproc::Task::new(&"x".into(), &location, &app, end.clone());
            super::InProcess {
                id: "x".into(),
                key: "k".into(),
                location_key: "l".into(),
                serial: 0,
                location,
                registry,
                door: super::Door::new(1),
                _slot: slot,
                end,
                _alive: mpsc::channel(1).0,
            }
            .run(main)
        });
        assert!(size <= 640, "InProcess::run is {size} bytes");
    }
}
