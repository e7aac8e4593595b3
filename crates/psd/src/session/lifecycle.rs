//! One session's life, as one task: a [`Supervisor`] that owns a worker
//! process, or a [`Continuation`] that runs an in-process application.
//!
//! ```text
//!            first request                  SessionTimeout (idle)
//!  Dormant ───────────────▶ Starting ─▶ Running ────────────────▶ Dormant
//!     ▲                                   │      operator's stop     │
//!     └──────── worker exits ◀────────────┘                          │
//!  ended (reaped, past SessionLifetime, an operator's end), shutdown,
//!  in-process task ended, never used for SessionTimeout ─▶ Stopping ─▶ Gone
//! ```
//!
//! Every change of state goes through the task's one `transition()`, which
//! also updates the session's [`Record`] (what the admin API reads). While
//! the session runs, requests mostly reach the worker through its [`Door`]
//! without this task; what comes through its queue is the first request
//! (which starts the worker), requests that had to wait for their turn, and
//! requests to a dormant session. The door counts requests in flight on
//! both paths, so with the default `WorkerConcurrency 1` a session's
//! requests never overlap and keep their order. A dormant session (worker
//! stopped after an idle timeout, a crash, an eviction or an operator's
//! stop) keeps its id and starts a fresh worker with `PSD_RESUMED=1` on its
//! next request; it holds no live-session slot while dormant. A session
//! that never got a worker (a query-mode redirect nobody followed, a worker
//! that failed to start) ends after `SessionTimeout`. A [`Continuation`]
//! is one task that runs the application's future itself, and ends with
//! it: on idle timeout, being ended, shutdown, or a request it did not
//! answer in time.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

use super::door::{Admitted, Door, Turn};
use super::info::{Phase, Record};
use super::{AppKey, Grant, Orders, Registry, Slot};
use crate::app::SessionFuture;
use crate::config::LocationConfig;
use crate::error::Error;
use crate::metrics::ExitCause;
use crate::store::{Space, StoreError};
use crate::worker::{Activity, Job, Spawn, Worker};

/// How long a taken spare's replacement waits for the first request's
/// answer (a long poll may take much longer) before it starts anyway.
const REFILL_AFTER_AT_MOST: Duration = Duration::from_millis(250);

/// What both kinds of session task hold: who they are, and their ties to
/// the registry.
pub(super) struct Core {
    pub id: Arc<str>,
    pub key: Arc<str>,
    pub app: AppKey,
    pub serial: u64,
    pub record: Arc<Record>,
    pub location: Arc<LocationConfig>,
    pub registry: Arc<Registry>,
    pub door: Arc<Door>,
    pub orders: Arc<Orders>,
    /// Dropped when the task ends; the registry waits for all of them.
    pub _alive: mpsc::Sender<()>,
}

/// How long a session's end waits for the store to delete its record.
const FORGET_WAIT: Duration = Duration::from_secs(2);

/// What becomes of a session's record when its task ends.
#[derive(Clone, Copy)]
enum Fate {
    /// It stays in the store: psd is shutting down, and the session resumes
    /// when psd is back.
    Keep,
    /// The session is over: its id names nothing any more.
    Forget,
}
use Fate::{Forget, Keep};

impl Core {
    /// Writes the session's record to the store, without waiting for the
    /// write (the store keeps one session's writes in order).
    fn save(&self) {
        let (_, idle, _) = self.door.activity();
        let record = self.record.stored_as(
            &self.key,
            &self.id,
            self.record.last_active(idle),
            self.location.session_lifetime,
            &self.registry.node,
        );
        self.record.mark_stored();
        self.acknowledged(self.registry.store.save(record), "saving");
    }

    /// Deletes the session's record, and waits (a little) until the store
    /// has: the session leaves the registry only then, or a request that
    /// comes at once would find the record still there and resume the
    /// session it should not.
    async fn forget(&self) {
        let write = self.registry.store.forget(self.app.as_str(), &self.key);
        match tokio::time::timeout(FORGET_WAIT, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(session = %self.record.handle, "state store: deleting the session's record: {e}")
            }
            Err(_) => {
                tracing::warn!(session = %self.record.handle, "state store: deleting the session's record takes longer than {FORGET_WAIT:?}")
            }
        }
    }

    fn acknowledged(&self, write: BoxFuture<'static, Result<(), StoreError>>, doing: &'static str) {
        let session = self.record.handle;
        tokio::spawn(async move {
            if let Err(e) = write.await {
                tracing::warn!(%session, "state store: {doing} the session's record: {e}");
            }
        });
    }

    /// The one place a session changes state: its record (what the admin
    /// API reads) follows.
    fn transition(&self, from: &mut Phase, to: Phase, pid: Option<u32>) {
        if *from != to {
            tracing::debug!(session = %self.record.handle, ?pid, "{from:?} -> {to:?}");
            *from = to;
        }
        self.record.set(to, pid);
    }

    /// Counts a worker of this session gone, for `/metrics`.
    fn exit(&self, cause: ExitCause) {
        self.registry.metrics.app(&self.app).exit(cause);
    }

    /// Leaves the registry: the id names nothing from now on.
    fn leave(&self) {
        self.registry.remove(&self.app, &self.key, self.serial);
    }
}

/// A process session's task: starts, watches and stops its worker.
pub(super) struct Supervisor {
    pub core: Core,
    /// The address that created the session; its slots count against it.
    pub client: IpAddr,
    /// Held while a worker runs.
    pub slot: Option<Slot>,
    /// Whether the session existed before this process knew it (found in
    /// the directory): its first worker is a resumed one.
    pub resumed: bool,
}

/// A session that has served one request and no second is stopped this
/// soon (unless `SessionTimeout` is shorter): most are visits that never
/// come back, and a flood of them must not hold workers for the whole
/// `SessionTimeout`. Its id stays valid; a second request resumes it.
const FIRST_VISIT_TIMEOUT: Duration = Duration::from_secs(60);

struct Life {
    phase: Phase,
    activity: Arc<Activity>,
    worker: Option<Worker>,
    /// When a WebSocket tunnel was last seen active.
    tunnel_active: Instant,
    /// Whether a worker has run for this session before.
    resumed: bool,
    /// The state API token of the running worker.
    grant: Option<Box<str>>,
}

impl Supervisor {
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Box<Admitted>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let session_timeout = self.core.location.session_timeout;
        let grace = self.core.location.worker_stop_timeout;
        let mut life = Life {
            phase: Phase::Dormant,
            activity: Activity::new(),
            worker: None,
            tunnel_active: Instant::now(),
            resumed: self.resumed,
            grant: None,
        };
        tracing::debug!(session = %self.core.record.handle, app = %self.core.app, resumed = life.resumed, "session created");

        self.core.save();
        let (fate, reason) = loop {
            let door = &self.core.door;
            let timeout = if door.served() <= 1 {
                session_timeout.min(FIRST_VISIT_TIMEOUT)
            } else {
                session_timeout
            };
            let has_worker = life.worker.is_some();
            let gone = life.worker.as_ref().map(Worker::gone);
            let idle_end = door.idle_check(timeout, life.tunnel_active);
            let never_used = !has_worker && !life.resumed;
            let orders = self.core.orders.clone();
            tokio::select! {
                _ = shutdown.changed() => break (Keep, "psd is shutting down"),
                () = orders.end.notified() => break (Forget, "ended (reaped, past SessionLifetime, or by an operator)"),
                _ = async move { gone.expect("guarded").await }, if has_worker => {
                    // Its exit status is logged where it is reaped.
                    let exits = self.core.registry.worker_exits.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    tracing::info!(session = %self.core.record.handle, exits, "the worker exited by itself ({exits} so far); the session's next request starts a new one (PSD_RESUMED=1)");
                    self.core.exit(ExitCause::Exited);
                    door.set_worker(None);
                    life.worker = None;
                    self.slot = None;
                    self.transition(&mut life, Phase::Dormant);
                }
                _ = sleep_until(idle_end), if has_worker => {
                    // An open WebSocket, or traffic on one, is activity too.
                    let tunnel = life.activity.last();
                    if tunnel > life.tunnel_active {
                        life.tunnel_active = tunnel;
                        continue;
                    }
                    let Some(worker) = door.take_if_idle_for(timeout) else {
                        // A request is in flight, or one came meanwhile.
                        continue;
                    };
                    if !self.core.location.resume_on_timeout {
                        life.worker = Some(worker);
                        break (Forget, "idle for SessionTimeout (OnTimeout restart)");
                    }
                    tracing::info!(session = %self.core.record.handle, "idle for {timeout:?}: stopping the worker");
                    self.stop_worker(&mut life, worker, grace, ExitCause::Idle).await;
                }
                _ = sleep_until(idle_end), if never_used => break (Forget, "never used within SessionTimeout"),
                () = orders.evict.notified(), if has_worker => {
                    if let Some(worker) = door.take_if_idle_for(super::EVICT_MIN_IDLE) {
                        self.stop_worker(&mut life, worker, grace, ExitCause::Evicted).await;
                    }
                }
                () = orders.stop_worker.notified() => {
                    if let Some(worker) = door.set_worker(None).or(life.worker.take()) {
                        tracing::info!(session = %self.core.record.handle, "stopped by an operator; the session stays");
                        self.stop_worker(&mut life, worker, grace, ExitCause::Stopped).await;
                    }
                }
                job = requests.recv() => match job {
                    Some(admitted) => {
                        let Admitted { job, turn } = *admitted;
                        self.accept(&mut life, job, turn).await;
                    }
                    None => break (Keep, "its queue closed"),
                },
            }
        };

        self.transition(&mut life, Phase::Stopping);
        self.core.door.set_worker(None);
        match fate {
            Keep => self.core.save(),
            // Boxed: rare, and it would size the task's future for its life.
            Forget => Box::pin(self.core.forget()).await,
        }
        self.core.leave();
        requests.close();
        while let Ok(admitted) = requests.try_recv() {
            let _ = admitted.job.reply.send(Err(Error::ShuttingDown));
        }
        if let Some(worker) = life.worker.take() {
            self.core.exit(match *shutdown.borrow() {
                true => ExitCause::Shutdown,
                false => ExitCause::Ended,
            });
            Box::pin(worker.stop(grace)).await;
        }
        tracing::info!(session = %self.core.record.handle, app = %self.core.app, "session ended: {reason}");
    }

    /// Stops `worker` (taken from the door already) and leaves the session
    /// dormant, its slot given back.
    async fn stop_worker(
        &mut self,
        life: &mut Life,
        worker: Worker,
        grace: std::time::Duration,
        cause: ExitCause,
    ) {
        self.core.exit(cause);
        life.worker = None;
        Box::pin(worker.stop(grace)).await;
        self.slot = None;
        self.transition(life, Phase::Dormant);
        self.core.save();
    }

    /// Starts a worker if there is none, then serves the job on it in a task
    /// of its own (its turn ends with it).
    async fn accept(&mut self, life: &mut Life, job: Job, turn: Turn) {
        let core = &self.core;
        let mut spare_taken = false;
        // A request that found the worker dead may come before its exit is
        // handled above; it gets a new worker (the slot stays held).
        if life.worker.as_ref().is_some_and(Worker::has_exited) {
            core.door.set_worker(None);
            life.worker = None;
        }
        if life.worker.is_none() {
            if self.slot.is_none() {
                // Boxed, as the start below.
                let acquired = Box::pin(core.registry.slots.acquire_waiting(
                    self.client,
                    core.location.max_sessions_per_client,
                    super::PLACE_WAIT + core.location.worker_stop_timeout,
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
            let core = &self.core;
            if let Err(e) = Box::pin(core.registry.spawn_turn()).await {
                tracing::info!(session = %core.record.handle, "{e}");
                self.slot = None;
                let _ = job.reply.send(Err(e));
                return;
            }
            // Boxed: starting is rare, and awaiting it inline would size every
            // session's task for it for its whole life.
            match Box::pin(self.start_worker(life)).await {
                Ok(took_spare) => spare_taken = took_spare,
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                    return;
                }
            }
        }
        // Made inside the task (see `Door::call`).
        let worker = life.worker.clone().expect("started above");
        // The spare's replacement starts once this first request has its
        // answer: a new worker process starting (a Python interpreter, say)
        // would take CPU from the very request the spare was kept for.
        let refill = spare_taken.then(|| (self.core.registry.clone(), self.core.app.clone()));
        tokio::spawn(async move {
            let mut serve = std::pin::pin!(worker.serve(job));
            let undelivered = match refill {
                Some((registry, app)) => {
                    let first = tokio::time::timeout(REFILL_AFTER_AT_MOST, &mut serve).await;
                    registry.refill(&app);
                    match first {
                        Ok(undelivered) => undelivered,
                        Err(_) => serve.await,
                    }
                }
                None => serve.await,
            };
            if let Some(job) = undelivered {
                let _ = job.reply.send(Err(Error::Worker(
                    "the new worker died before the request reached it".into(),
                )));
            }
            drop(turn);
        });
    }

    /// Starts the session's worker, with its state API URLs, or gives it a
    /// spare one (then `Ok(true)`).
    async fn start_worker(&mut self, life: &mut Life) -> Result<bool, Error> {
        self.transition(life, Phase::Starting);
        let core = &self.core;
        let session = Space::Session {
            app: core.app.as_str().into(),
            key: core.key.to_string(),
        };
        // A new session takes a spare worker if its application keeps some.
        let spare = match life.resumed {
            false => core.registry.take_spare(&core.app, session.clone()),
            true => None,
        };
        let took_spare = spare.is_some();
        let worker = match spare {
            Some(spare) => {
                tracing::info!(session = %core.record.handle, pid = ?spare.worker.pid(), "took a spare worker");
                life.activity = spare.activity;
                life.grant = spare.grant;
                spare.worker
            }
            None => {
                let urls = core.registry.grants.mint(Grant {
                    session: Some(session),
                    shared: Space::Shared {
                        app: core.app.as_str().into(),
                    },
                    limit: core.location.max_session_state,
                });
                life.grant = urls.as_ref().map(|u| u.token.as_str().into());
                let label: Arc<str> = core.record.handle.as_str().into();
                let asked = std::time::Instant::now();
                let started = Worker::start(Spawn {
                    session_id: &core.id,
                    label: &label,
                    spare: false,
                    location: &core.location,
                    resumed: life.resumed,
                    state_urls: urls.as_ref().map(|u| (u.state.as_str(), u.shared.as_str())),
                    run_dir: &core.registry.run_dir,
                    processes: &core.registry.processes,
                    activity: &life.activity,
                })
                .await;
                let metrics = core.registry.metrics.app(&core.app);
                metrics.spawn(asked.elapsed(), started.is_ok());
                match started {
                    Ok(worker) => worker,
                    Err(e) => {
                        tracing::warn!(session = %core.record.handle, "{e}");
                        self.slot = None;
                        self.transition(life, Phase::Dormant);
                        return Err(e);
                    }
                }
            }
        };
        core.door.set_worker(Some(worker.clone()));
        life.worker = Some(worker);
        life.resumed = true;
        self.transition(life, Phase::Running);
        Ok(took_spare)
    }

    fn transition(&self, life: &mut Life, to: Phase) {
        let pid = life.worker.as_ref().and_then(Worker::pid);
        // A stopped worker's state URLs stop working.
        if matches!(to, Phase::Dormant | Phase::Stopping) {
            if let Some(token) = life.grant.take() {
                self.core.registry.grants.revoke(&token);
            }
        }
        self.core.transition(&mut life.phase, to, pid);
    }
}

/// Why an in-process session's task stops.
enum Why {
    Returned,
    Panicked,
    Ended,
    Stopped,
    Idle,
}

/// An in-process session: the application's future, run by the session's
/// one task with the session's timers around it — Continuity's continuation.
/// There is no worker to start or stop and no queue: requests reach the
/// application through the door, and the session ends with the
/// application's future.
pub(super) struct Continuation {
    pub core: Core,
    pub _slot: Slot,
}

impl Continuation {
    /// Runs the application's future until it ends or the session is ended
    /// (reaping, `SessionLifetime`, an operator, shutdown, a request not
    /// answered in time) or idle for `SessionTimeout`. Every session holds
    /// this future for its whole life, so it keeps little state across
    /// awaits.
    pub async fn run(self, main: SessionFuture) {
        use futures_util::FutureExt;
        let core = &self.core;
        // A panic in the application ends its session, not this task's
        // clean-up (the panic hook has reported it).
        let mut main = std::panic::AssertUnwindSafe(main).catch_unwind();
        let began = Instant::now();
        let why = loop {
            let timeout = core.location.session_timeout;
            let check = core.door.idle_check(timeout, began);
            tokio::select! {
                ended = &mut main => break match ended {
                    Ok(()) => Why::Returned,
                    Err(_) => Why::Panicked,
                },
                () = core.orders.end.notified() => break Why::Ended,
                () = core.orders.stop_worker.notified() => break Why::Stopped,
                () = sleep_until(check) => {
                    if let Some(Worker::InProcess(task)) = core.door.take_if_idle_for(timeout) {
                        task.close();
                        break Why::Idle;
                    }
                }
            }
        };
        let (fate, reason) = match why {
            Why::Returned => (Forget, "the application's session task ended"),
            // As a crashed worker: the session stays.
            Why::Panicked => (Keep, "the application's session task panicked"),
            Why::Ended if *core.registry.shutdown.borrow() => (Keep, "psd is shutting down"),
            Why::Ended => (
                Forget,
                "ended (reaped, past SessionLifetime, or by an operator)",
            ),
            Why::Stopped => (Keep, "stopped (by an operator, or a request timed out)"),
            Why::Idle if core.location.resume_on_timeout => (Keep, "SessionTimeout reached"),
            Why::Idle => (Forget, "SessionTimeout reached (OnTimeout restart)"),
        };
        core.transition(&mut Phase::Running, Phase::Stopping, None);
        if let Some(Worker::InProcess(task)) = core.door.set_worker(None) {
            task.close();
        }
        // Only a session that stored something has a record to keep; no
        // value can be written from here on.
        if core.record.stored() {
            match fate {
                Keep => core.save(),
                Forget => Box::pin(core.forget()).await,
            }
        }
        core.leave();
        drop(main);
        tracing::info!(session = %core.record.handle, app = %core.app, "session ended: {reason}");
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;

    use tokio::sync::mpsc;

    use crate::config::LocationConfig;
    use crate::session::info::Record;
    use crate::session::{AppKey, Orders, Registry};

    /// The size of the future `make` returns, made inside a runtime with a
    /// fresh registry (what the session structs need to exist).
    fn future_size<F: Future>(make: impl FnOnce(Arc<Registry>) -> F) -> usize {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { std::mem::size_of_val(&make(crate::session::tests::registry(10))) })
    }

    fn core(
        registry: Arc<Registry>,
        location: Arc<LocationConfig>,
        orders: Arc<Orders>,
    ) -> super::Core {
        let app = AppKey::new(None, "/");
        super::Core {
            id: "x".into(),
            key: "k".into(),
            record: Record::new(
                &app,
                "k",
                "127.0.0.1".parse().unwrap(),
                super::Phase::Dormant,
                std::time::SystemTime::now(),
                None,
            ),
            app,
            serial: 0,
            location,
            registry,
            door: super::Door::new(1),
            orders,
            _alive: mpsc::channel(1).0,
        }
    }

    /// Every session's task is as large as this future, for its whole life:
    /// a regression test that awaiting something big inline (worker start
    /// was one) does not come back. Measured 1,416 bytes in a debug build,
    /// 1,608 once the task kept its state API token and its record's fate.
    #[test]
    fn a_session_task_stays_small() {
        let size = future_size(|registry| {
            let (_queue, requests) = mpsc::channel(1);
            let location = Arc::new(LocationConfig::new("/"));
            super::Supervisor {
                core: core(registry, location, Arc::default()),
                client: "127.0.0.1".parse().unwrap(),
                slot: None,
                resumed: false,
            }
            .run(requests, tokio::sync::watch::channel(false).1)
        });
        assert!(size <= 1700, "Supervisor::run is {size} bytes");
    }

    /// A million in-process sessions hold a million of these futures: a
    /// regression test for their size (560 bytes when written; 664 since
    /// it also waits for a stop, which keeps what the session stored).
    #[test]
    fn an_in_process_session_task_stays_small() {
        let size = future_size(|registry| {
            let slot = registry
                .slots
                .acquire("127.0.0.1".parse().unwrap(), 10)
                .unwrap();
            let app = crate::demo::counter();
            let location = Arc::new(LocationConfig::in_process("/", app.clone()));
            let orders = Arc::new(Orders::default());
            let (_task, main) = crate::session::tests::in_process_task(
                registry.clone(),
                &location,
                &app,
                orders.clone(),
            );
            super::Continuation {
                core: core(registry, location, orders),
                _slot: slot,
            }
            .run(main)
        });
        assert!(size <= 700, "Continuation::run is {size} bytes");
    }
}
