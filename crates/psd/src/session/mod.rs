//! The session registry: which sessions exist, and the door into each one.
//!
//! Per application ([`AppKey`]), a plain map from session key (what the
//! mapper derives from a request) to that session's entry, behind a short
//! lock never held across `.await`. Resolving a request is a lookup in that
//! map (the hit path, no await); a miss goes through an async step —
//! the [`Directory`] (store, cluster) for an id it does not hold, then
//! creation — outside the lock. A running session's requests go through its
//! `Door` straight to the worker, in the task of the connection that
//! brought them; everything else about a session — starting and stopping
//! its worker, its timers, its `Record` — belongs to that session's own
//! task (`lifecycle`). Beside the map: the `IdBook` (which ids are live,
//! and the read-only ids handed out for them) and the live-session slots
//! that enforce `MaxSessions` and `MaxSessionsPerClient`. [`Sessions`] is
//! the public handle on all of it: count, list, stop, end.

mod directory;
mod door;
mod expiry;
mod grants;
mod info;
mod lifecycle;
mod spares;
mod state;

pub use directory::{Directory, Found, InMemory, Stored};
pub(crate) use door::{Admitted, Door};
pub(crate) use grants::{Grant, Grants};
pub use info::{AppKey, Handle, SessionInfo, SessionState};
pub(crate) use state::StateLink;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::{Handler, LocationConfig};
use crate::error::Error;
use crate::mapper::client::{Held, PerClient};
use crate::mapper::{Access, Assigned, Hit, IdBook, Ids, Mapped};
use crate::store::Store;
use crate::worker::{inproc, process, Worker};
use info::{Phase, Record};

/// Requests that may wait, with their turns, for a session's worker to start.
const SESSION_QUEUE_DEPTH: usize = 256;

/// Under `MaxSessions` pressure, a session that has served at most this
/// many requests and been idle this long gives its worker's place to a new
/// session: its worker stops, the session stays (dormant) and resumes on
/// its next request. A flood of one-request sessions cannot lock new users
/// out, and no session in real use is touched.
const EVICT_MAX_SERVED: u64 = 1;
const EVICT_MIN_IDLE: Duration = Duration::from_secs(2);

/// How long a new session may wait for a place freed by eviction, or for
/// its turn under `MaxSpawnRate`.
const PLACE_WAIT: Duration = Duration::from_secs(2);

/// Every live session of the daemon.
pub(crate) struct Registry {
    /// One map per application, by its identity, which stays the same
    /// across configuration reloads.
    sessions: Mutex<HashMap<AppKey, HashMap<Arc<str>, Entry>>>,
    pub(crate) ids: IdBook,
    directory: Arc<dyn Directory>,
    /// Where process sessions' records are written as they change, and
    /// their values kept.
    pub(crate) store: Arc<dyn Store>,
    /// `NodeName`, written into records.
    node: Arc<str>,
    /// The state API's capabilities, one per running worker.
    pub(crate) grants: Grants,
    /// `SpareWorkers`: workers started ahead, per application.
    spares: spares::Spares,
    /// Workers that exited by themselves (not stopped by psd), since start.
    pub(crate) worker_exits: AtomicU64,
    /// What `/metrics` shows.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// `MaxSessions`.
    pub(crate) max_sessions: usize,
    slots: Slots,
    run_dir: PathBuf,
    processes: Arc<process::ProcessTable>,
    serial: AtomicU64,
    spawns: SpawnRate,
    /// The shortest `SessionLifetime` of any session created so far, in
    /// milliseconds: how often [`expiry`] looks.
    shortest_lifetime: AtomicU64,
    lifetime_shortened: Notify,
    shutdown: watch::Sender<bool>,
    /// Each session task holds a clone of this sender; shutdown takes the
    /// registry's own, so the receiver ends exactly when the last session has.
    alive: Mutex<Option<mpsc::Sender<()>>>,
    all_ended: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

struct Entry {
    serial: u64,
    id: Arc<str>,
    record: Arc<Record>,
    /// The session task's queue (process sessions only).
    queue: Option<mpsc::Sender<Box<Admitted>>>,
    door: Arc<Door>,
    created: Instant,
    expires: Instant,
    orders: Arc<Orders>,
}

/// What the registry may tell a session's task to do.
#[derive(Default)]
pub(crate) struct Orders {
    /// End the session (reaped, past its lifetime, ended by an operator).
    pub end: Notify,
    /// Stop the worker to make room for a new session, if still idle.
    pub evict: Notify,
    /// Stop the worker now and stay dormant (an operator's `stop`; in
    /// process, also a request the task did not answer in time).
    pub stop_worker: Notify,
}

/// Where a request goes.
pub(crate) struct Target {
    /// Jobs are boxed: a channel allocates its first block of 32 slots
    /// at once, and an unboxed `Job` would make that block ~16 KiB a session.
    /// To the session's task, for requests that find no worker.
    pub queue: Option<mpsc::Sender<Box<Admitted>>>,
    /// The fast path to a running worker.
    pub door: Arc<Door>,
    /// The id as the client holds it: a read-only id stays read-only.
    pub token: Arc<str>,
    /// The session's name in logs and the admin API (never the id).
    pub handle: Handle,
    pub access: Access,
    /// Set when the request created the session.
    pub assigned: Option<Assigned>,
}

impl Entry {
    fn target(&self, token: Arc<str>, access: Access) -> Target {
        Target {
            queue: self.queue.clone(),
            door: self.door.clone(),
            token,
            handle: self.record.handle,
            access,
            assigned: None,
        }
    }

    fn info(&self) -> SessionInfo {
        let (phase, pid) = self.record.phase();
        let (requests, idle_for, busy) = self.door.activity();
        SessionInfo {
            handle: self.record.handle,
            app: self.record.app.clone(),
            state: match phase {
                Phase::Dormant => SessionState::Dormant,
                Phase::Starting => SessionState::Starting,
                Phase::Running if busy => SessionState::Busy,
                Phase::Running => SessionState::Idle,
                Phase::Stopping => SessionState::Stopping,
            },
            created: self.record.created,
            last_active: self.record.last_active(idle_for),
            requests,
            pid,
            client: self.record.client,
            user: self.record.user.clone(),
        }
    }
}

/// A session about to be created.
struct New {
    /// The same allocation as `id` when the key is the id alone.
    key: Arc<str>,
    id: Arc<str>,
    /// How the client holds the id, for a resumed session.
    presented: Option<(Arc<str>, Access)>,
    /// When it was first created: now, or (resumed) what the directory says.
    created: SystemTime,
    /// Whether it existed before (the directory found it).
    resumed: bool,
    assigned: Option<Assigned>,
    /// The user it belongs to.
    user: Option<Arc<str>>,
}

/// A session key as the registry keeps it: the id's own allocation when it
/// is the id alone (no `path` or `ip` parts in `SessionKey`), as it mostly is.
fn shared_key(key: String, id: &Arc<str>) -> Arc<str> {
    match *key == **id {
        true => id.clone(),
        false => key.into(),
    }
}

impl Registry {
    /// `limits` are `MaxSessions` and `MaxSpawnRate`.
    pub fn new(
        ids: IdBook,
        directory: Arc<dyn Directory>,
        store: Arc<dyn Store>,
        metrics: Arc<crate::metrics::Metrics>,
        node: &str,
        (max_sessions, max_spawn_rate): (usize, u32),
        run_dir: PathBuf,
    ) -> Arc<Registry> {
        let (alive, all_ended) = mpsc::channel(1);
        Arc::new(Registry {
            sessions: Mutex::new(HashMap::new()),
            ids,
            directory,
            store,
            node: node.into(),
            grants: Grants::default(),
            spares: spares::Spares::default(),
            worker_exits: AtomicU64::new(0),
            metrics,
            max_sessions,
            slots: Slots {
                live: Arc::new(Semaphore::new(max_sessions)),
                max: max_sessions,
                per_client: Arc::new(PerClient::default()),
            },
            run_dir,
            processes: process::ProcessTable::new(),
            serial: AtomicU64::new(0),
            spawns: SpawnRate::new(max_spawn_rate),
            shortest_lifetime: AtomicU64::new(u64::MAX),
            lifetime_shortened: Notify::new(),
            shutdown: watch::channel(false).0,
            alive: Mutex::new(Some(alive)),
            all_ended: tokio::sync::Mutex::new(all_ended),
        })
    }

    /// The live session `mapped` names, if any: the hit path, one lookup
    /// under the lock.
    fn find(&self, app: &AppKey, mapped: &Mapped) -> Option<Target> {
        let sessions = self.sessions.lock().expect("registry lock");
        let entry = sessions.get(app)?.get(mapped.key.as_str())?;
        Some(match &mapped.presented {
            Some(p) => entry.target(p.token.clone(), p.access),
            None => entry.target(entry.id.clone(), Access::ReadWrite),
        })
    }

    /// The session this request names, or a new one. A missing, malformed,
    /// forged or unknown id never reaches an existing session; a valid id
    /// with no session in memory is first looked up in the [`Directory`].
    pub async fn resolve(
        self: &Arc<Self>,
        app: &AppKey,
        location: &Arc<LocationConfig>,
        hit: &Hit<'_>,
    ) -> Result<Target, Error> {
        let scope = crate::mapper::id_scope(app.as_str(), hit.user);
        let ids = Ids::new(&self.ids, &scope);
        let mapped = location
            .mapper
            .get_session_id_from_hit(hit, &ids)
            .map(|m| m.for_user(hit.user));
        if let Some(target) = mapped.as_ref().and_then(|m| self.find(app, m)) {
            return Ok(target);
        }
        // Boxed: the miss is rare, and the hit path's future stays small.
        Box::pin(self.miss(app, location, hit, mapped)).await
    }

    /// `find → directory → create`, for a request that named no session in
    /// memory.
    async fn miss(
        self: &Arc<Self>,
        app: &AppKey,
        location: &Arc<LocationConfig>,
        hit: &Hit<'_>,
        mapped: Option<Mapped>,
    ) -> Result<Target, Error> {
        // Every session here will be written to the store: without one, none.
        self.store.ready().await.map_err(|e| {
            Error::Store(crate::error::Cause::new(
                "the state store is unreachable",
                e,
            ))
        })?;
        if let Some(Mapped {
            key,
            presented: Some(presented),
        }) = mapped
        {
            let found = match self.ids.in_use(&presented.id) {
                true => Found::Nowhere,
                false => self.directory.find(app, &key).await?,
            };
            if let Found::Dormant { created } = found {
                return self.create(
                    app,
                    location,
                    hit.client,
                    New {
                        key: shared_key(key, &presented.id),
                        id: presented.id,
                        presented: Some((presented.token, presented.access)),
                        created,
                        resumed: true,
                        assigned: None,
                        user: hit.user.map(Arc::from),
                    },
                );
            }
        }
        let assigned = location
            .mapper
            .assign_session_id(
                hit,
                &Ids::new(&self.ids, &crate::mapper::id_scope(app.as_str(), hit.user)),
            )
            .for_user(hit.user);
        self.create(
            app,
            location,
            hit.client,
            New {
                key: shared_key(assigned.key.clone(), &assigned.id),
                id: assigned.id.clone(),
                presented: None,
                created: SystemTime::now(),
                resumed: false,
                assigned: Some(assigned),
                user: hit.user.map(Arc::from),
            },
        )
    }

    /// Creates the session `new` and its task, or joins the one another
    /// request created under the same key meanwhile.
    fn create(
        self: &Arc<Self>,
        app: &AppKey,
        location: &Arc<LocationConfig>,
        client: IpAddr,
        new: New,
    ) -> Result<Target, Error> {
        let Some(alive) = self.alive.lock().expect("registry lock").clone() else {
            return Err(Error::ShuttingDown);
        };
        let in_process = matches!(location.handler, Some(Handler::InProcess(_)));
        let slot = match self.slots.acquire(client, location.max_sessions_per_client) {
            Ok(slot) => Some(slot),
            // A process session may take the place of an idle one-request
            // session; its task waits for the place to come free.
            Err(Error::TooManySessions(_)) if !in_process && self.evict_one() => None,
            Err(e) => return Err(e),
        };
        let orders = Arc::new(Orders::default());
        let door = Door::new(location.concurrency());
        let phase = match location.handler {
            Some(Handler::InProcess(_)) => Phase::Running,
            _ => Phase::Dormant,
        };
        let record = Record::new(app, &new.key, client, phase, new.created, new.user);
        let handle = record.handle;
        if new.resumed {
            record.mark_stored();
        }
        // Process sessions have a task that starts their worker, fed by a
        // queue; an in-process session's task is the application itself.
        let (queue, requests, main) = match &location.handler {
            Some(Handler::InProcess(application)) => {
                let link = StateLink {
                    registry: self.clone(),
                    record: record.clone(),
                    id: new.id.clone(),
                    key: new.key.clone(),
                    location: location.clone(),
                };
                let (task, main) =
                    inproc::Task::new(link, new.resumed, application, orders.clone());
                door.set_worker(Some(Worker::InProcess(task)));
                (None, None, Some(main))
            }
            _ => {
                let (queue, requests) = mpsc::channel(SESSION_QUEUE_DEPTH);
                (Some(queue), Some(requests), None)
            }
        };
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let (token, access) = new
            .presented
            .clone()
            .unwrap_or((new.id.clone(), Access::ReadWrite));
        {
            let mut sessions = self.sessions.lock().expect("registry lock");
            let sessions = sessions.entry(app.clone()).or_default();
            if let Some(entry) = sessions.get(&new.key) {
                return Ok(entry.target(token, access));
            }
            sessions.insert(
                new.key.clone(),
                Entry {
                    serial,
                    id: new.id.clone(),
                    record: record.clone(),
                    queue: queue.clone(),
                    door: door.clone(),
                    created: now,
                    expires: now
                        + location
                            .session_lifetime
                            .saturating_sub(new.created.elapsed().unwrap_or_default()),
                    orders: orders.clone(),
                },
            );
            self.ids.acquire(&new.id);
        }
        self.note_lifetime(location.session_lifetime);
        if *self.shutdown.borrow() {
            orders.end.notify_one();
        }
        let core = lifecycle::Core {
            id: new.id.clone(),
            key: new.key,
            app: app.clone(),
            serial,
            record,
            location: location.clone(),
            registry: self.clone(),
            door: door.clone(),
            orders,
            _alive: alive,
        };
        match (requests, main) {
            (_, Some(main)) => {
                let slot = slot.expect("in-process sessions never wait for a place");
                tokio::spawn(lifecycle::Continuation { core, _slot: slot }.run(main));
            }
            (Some(requests), None) => {
                let supervisor = lifecycle::Supervisor {
                    core,
                    client,
                    slot,
                    resumed: new.resumed,
                };
                tokio::spawn(supervisor.run(requests, self.shutdown.subscribe()));
            }
            (None, None) => unreachable!("every session has a queue or an application"),
        }
        Ok(Target {
            queue,
            door,
            token,
            handle,
            access,
            assigned: new.assigned,
        })
    }

    /// Under `MaxSessions` pressure: tells the longest-idle session that
    /// may be evicted to stop its worker. Returns whether there was one.
    fn evict_one(&self) -> bool {
        let sessions = self.sessions.lock().expect("registry lock");
        let victim = sessions
            .values()
            .flat_map(HashMap::values)
            .filter(|e| e.queue.is_some())
            .filter_map(|e| Some((e.door.evictable(EVICT_MIN_IDLE, EVICT_MAX_SERVED)?, e)))
            .max_by_key(|(idle, _)| *idle);
        let Some((idle, entry)) = victim else {
            return false;
        };
        entry.door.choose_for_eviction();
        entry.orders.evict.notify_one();
        tracing::info!(session = %entry.record.handle, "MaxSessions reached: stopping a one-request session idle for {idle:?} to admit a new one");
        true
    }

    /// Waits until a worker may be started under `MaxSpawnRate`.
    pub(crate) async fn spawn_turn(&self) -> Result<(), Error> {
        self.spawns.turn().await
    }

    /// Removes a session's entry, if it is still this session's.
    fn remove(&self, app: &AppKey, key: &str, serial: u64) {
        let mut sessions = self.sessions.lock().expect("registry lock");
        let Some(map) = sessions.get_mut(app) else {
            return;
        };
        if map.get(key).is_some_and(|e| e.serial == serial) {
            let entry = map.remove(key).expect("just found");
            self.ids.release(&entry.id);
        }
    }

    fn note_lifetime(&self, lifetime: Duration) {
        let ms = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
        if self.shortest_lifetime.fetch_min(ms, Ordering::Relaxed) > ms {
            self.lifetime_shortened.notify_one();
        }
    }

    /// Continuity's `reap($age)`: ends every session older than `age`.
    /// Returns how many were told to end.
    pub fn reap(&self, age: Duration) -> usize {
        self.end_where(|e| e.created.elapsed() >= age)
    }

    /// Ends every session past its `SessionLifetime`.
    pub fn expire(&self) -> usize {
        let now = Instant::now();
        self.end_where(|e| e.expires <= now)
    }

    fn end_where(&self, pred: impl Fn(&Entry) -> bool) -> usize {
        let sessions = self.sessions.lock().expect("registry lock");
        let mut n = 0;
        for entry in sessions
            .values()
            .flat_map(HashMap::values)
            .filter(|e| pred(e))
        {
            entry.orders.end.notify_one();
            n += 1;
        }
        n
    }

    /// Ends the sessions of every application not in `apps` (their
    /// `<Location>` is gone), live and stored; returns how many were live.
    pub async fn retain_apps(&self, apps: &[AppKey]) -> usize {
        let ended = self.end_where(|e| !apps.contains(&e.record.app));
        let names = apps.iter().map(|a| a.as_str().to_string()).collect();
        match self.store.retain_apps(names).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("{n} stored sessions of removed locations ended"),
            Err(e) => tracing::warn!("state store: ending sessions of removed locations: {e}"),
        }
        if ended > 0 {
            tracing::info!("{ended} sessions of removed locations ended");
        }
        ended
    }

    /// Sessions in the registry, with or without a running worker.
    pub fn count(&self) -> usize {
        self.sessions
            .lock()
            .expect("registry lock")
            .values()
            .map(HashMap::len)
            .sum()
    }

    /// Every session, as the admin API shows them.
    pub fn list(&self) -> Vec<SessionInfo> {
        let sessions = self.sessions.lock().expect("registry lock");
        sessions
            .values()
            .flat_map(HashMap::values)
            .map(Entry::info)
            .collect()
    }

    /// Every session with its state space, for the admin API to size.
    pub(crate) fn list_with_spaces(&self) -> Vec<(SessionInfo, crate::store::Space)> {
        let sessions = self.sessions.lock().expect("registry lock");
        let mut all = Vec::with_capacity(sessions.values().map(HashMap::len).sum());
        for (app, entries) in sessions.iter() {
            for (key, entry) in entries {
                let space = crate::store::Space::Session {
                    app: app.as_str().into(),
                    key: key.to_string(),
                };
                all.push((entry.info(), space));
            }
        }
        all
    }

    /// The session named by `handle`, with its state space.
    pub(crate) fn one_with_space(
        &self,
        handle: &str,
    ) -> Option<(SessionInfo, crate::store::Space)> {
        let sessions = self.sessions.lock().expect("registry lock");
        sessions.iter().find_map(|(app, entries)| {
            let (key, entry) = entries
                .iter()
                .find(|(_, e)| e.record.handle.as_str() == handle)?;
            let space = crate::store::Space::Session {
                app: app.as_str().into(),
                key: key.to_string(),
            };
            Some((entry.info(), space))
        })
    }

    /// Whether a session with `key` of `app` is in memory.
    pub(crate) fn has(&self, app: &AppKey, key: &str) -> bool {
        let sessions = self.sessions.lock().expect("registry lock");
        sessions.get(app).is_some_and(|m| m.contains_key(key))
    }

    /// This node's name (`NodeName`).
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// Runs `f` on the session named by `handle`, under the lock.
    fn with_handle<T>(&self, handle: &str, f: impl FnOnce(&Entry) -> T) -> Option<T> {
        let sessions = self.sessions.lock().expect("registry lock");
        let entry = sessions
            .values()
            .flat_map(HashMap::values)
            .find(|e| e.record.handle.as_str() == handle)?;
        Some(f(entry))
    }

    /// Stops all sessions (and so every worker) and waits until all are gone.
    pub async fn shutdown(&self) {
        // `send_replace`: the flag must be set even with no receiver.
        self.shutdown.send_replace(true);
        self.stop_spares();
        drop(self.alive.lock().expect("registry lock").take());
        // In-process sessions (those without a queue) listen only to their
        // orders; one created while this runs sees the flag set above instead.
        self.end_where(|e| e.queue.is_none());
        let mut all_ended = self.all_ended.lock().await;
        while all_ended.recv().await.is_some() {}
    }
}

/// A handle on the sessions of a running server: what the admin API, and
/// applications using psd as a library, may see and do.
#[derive(Clone)]
pub struct Sessions {
    registry: Arc<Registry>,
}

impl Sessions {
    pub(crate) fn new(registry: Arc<Registry>) -> Sessions {
        Sessions { registry }
    }

    /// Sessions that exist now, with or without a running worker.
    pub fn count(&self) -> usize {
        self.registry.count()
    }

    /// Every session.
    pub fn list(&self) -> Vec<SessionInfo> {
        self.registry.list()
    }

    /// The session named by `handle`.
    pub fn get(&self, handle: &str) -> Option<SessionInfo> {
        self.registry.with_handle(handle, Entry::info)
    }

    /// Stops the session's worker; the session stays, dormant, and its next
    /// request starts a new worker (`PSD_RESUMED=1`). An in-process
    /// session's task is its worker: it ends, and the session stays if it
    /// stored anything ([`crate::app::Session::state`]). Returns whether the session exists; stopping a dormant one does
    /// nothing.
    pub fn stop(&self, handle: &str) -> bool {
        self.registry
            .with_handle(handle, |e| e.orders.stop_worker.notify_one())
            .is_some()
    }

    /// Ends the session: its worker stops and its id names nothing any more.
    /// Returns whether the session existed.
    pub fn end(&self, handle: &str) -> bool {
        self.registry
            .with_handle(handle, |e| e.orders.end.notify_one())
            .is_some()
    }

    /// Continuity's `reap($age)`: ends every session created more than
    /// `age` ago, stopping its worker. Returns how many were ended.
    pub fn reap(&self, age: Duration) -> usize {
        self.registry.reap(age)
    }

    /// Worker processes that exited by themselves since psd started (a
    /// crash, php-cgi at `PHP_FCGI_MAX_REQUESTS`, a limit): not stopped by
    /// psd for idleness, eviction, an operator or shutdown.
    pub fn worker_exits(&self) -> u64 {
        self.registry.worker_exits.load(Ordering::Relaxed)
    }
}

/// The live-session slots: one per session with a running worker, counted
/// globally (`MaxSessions`) and per client address (`MaxSessionsPerClient`).
struct Slots {
    live: Arc<Semaphore>,
    max: usize,
    per_client: Arc<PerClient>,
}

/// A held slot; released on drop.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    _client: Held,
}

impl Slots {
    /// A slot, waiting up to `wait` for one to come free (an evicted
    /// session's worker stopping).
    async fn acquire_waiting(
        &self,
        client: IpAddr,
        per_client_max: usize,
        wait: Duration,
    ) -> Result<Slot, Error> {
        let deadline = Instant::now() + wait;
        loop {
            match self.acquire(client, per_client_max) {
                Err(Error::TooManySessions(_)) if Instant::now() < deadline => {
                    let permit =
                        tokio::time::timeout_at(deadline, self.live.clone().acquire_owned()).await;
                    // Given back at once: `acquire` takes it with the per-client count.
                    drop(permit);
                }
                other => return other,
            }
        }
    }

    fn acquire(&self, client: IpAddr, per_client_max: usize) -> Result<Slot, Error> {
        let held = self
            .per_client
            .take(client, per_client_max)
            .ok_or(Error::TooManySessionsForClient(per_client_max))?;
        let permit = self
            .live
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::TooManySessions(self.max))?;
        Ok(Slot {
            _permit: permit,
            _client: held,
        })
    }
}

/// `MaxSpawnRate`: worker starts paced to a rate, with a burst of one
/// second's worth, by a theoretical arrival time (GCRA). A start that would
/// wait longer than [`PLACE_WAIT`] is refused with 503 instead.
struct SpawnRate {
    interval: Duration,
    burst: Duration,
    next: Mutex<Instant>,
}

impl SpawnRate {
    fn new(per_second: u32) -> SpawnRate {
        SpawnRate {
            interval: Duration::from_secs(1) / per_second.max(1),
            burst: Duration::from_secs(1),
            next: Mutex::new(Instant::now()),
        }
    }

    async fn turn(&self) -> Result<(), Error> {
        let ready_at = {
            let mut next = self.next.lock().expect("spawn rate lock");
            let now = Instant::now();
            let due = (*next).max(now);
            let ready_at = due.checked_sub(self.burst).unwrap_or(now).max(now);
            if ready_at > now + PLACE_WAIT {
                return Err(Error::SpawnRateExceeded);
            }
            *next = due + self.interval;
            ready_at
        };
        // Only a start past the burst waits: a timer, even one due now,
        // fires at the timer wheel's next millisecond tick (~0.6 ms added
        // to every new session, measured).
        if ready_at > Instant::now() {
            tokio::time::sleep_until(ready_at).await;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
