//! The session registry: which sessions exist, and the door into each one.
//!
//! Per `<Location>`, a plain map from session key (what the mapper derives
//! from a request) to that session's door and queue, behind a short lock
//! never held across `.await`. Resolving a request only finds or creates the
//! session. A running session's requests go through its [`Door`] straight to
//! the worker, in the task of the connection that brought them; everything
//! else about a session — starting and stopping its worker, its timers — belongs
//! to that session's own task ([`lifecycle`]). Beside the map: the `IdBook` (which ids are live, and
//! the read-only ids handed out for them) and the live-session slots that
//! enforce `MaxSessions` and `MaxSessionsPerClient`.

mod door;
mod lifecycle;

pub(crate) use door::{Admitted, Door};

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::{Handler, LocationConfig};
use crate::error::Error;
use crate::mapper::client::{Held, PerClient};
use crate::mapper::{Access, Assigned, Hit, IdBook, Ids, Mapper};
use crate::worker::{inproc, process, Worker};

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
    /// One map per `<Location>`, by its identity (virtual host and prefix),
    /// which stays the same across configuration reloads.
    sessions: Mutex<HashMap<Arc<str>, HashMap<String, Entry>>>,
    pub(crate) ids: IdBook,
    slots: Slots,
    run_dir: PathBuf,
    workers: Arc<process::Workers>,
    serial: AtomicU64,
    spawns: SpawnRate,
    shutdown: watch::Sender<bool>,
    /// Each session task holds a clone of this sender; shutdown takes the
    /// registry's own, so the receiver ends exactly when the last session has.
    alive: Mutex<Option<mpsc::Sender<()>>>,
    all_ended: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

struct Entry {
    serial: u64,
    id: Arc<str>,
    /// The session task's queue (process sessions only).
    queue: Option<mpsc::Sender<Box<Admitted>>>,
    door: Arc<Door>,
    created: Instant,
    expires: Instant,
    /// Tells the session task to end (reaped, or past its lifetime).
    stop: Arc<Notify>,
    /// Tells the session task to stop its worker for a new session.
    evict: Arc<Notify>,
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
    pub access: Access,
    /// Set when the request created the session.
    pub assigned: Option<Assigned>,
}

impl Registry {
    pub fn new(
        ids: IdBook,
        max_sessions: usize,
        max_spawn_rate: u32,
        run_dir: PathBuf,
    ) -> Arc<Registry> {
        let (alive, all_ended) = mpsc::channel(1);
        Arc::new(Registry {
            sessions: Mutex::new(HashMap::new()),
            ids,
            slots: Slots {
                live: Arc::new(Semaphore::new(max_sessions)),
                max: max_sessions,
                per_client: Arc::new(PerClient::default()),
            },
            run_dir,
            workers: process::Workers::new(),
            serial: AtomicU64::new(0),
            spawns: SpawnRate::new(max_spawn_rate),
            shutdown: watch::channel(false).0,
            alive: Mutex::new(Some(alive)),
            all_ended: tokio::sync::Mutex::new(all_ended),
        })
    }

    /// The live session this request names, if any.
    fn find(&self, location: &str, mapper: &dyn Mapper, hit: &Hit<'_>) -> Option<Target> {
        let ids = Ids::new(&self.ids, location);
        let mapped = mapper.get_session_id_from_hit(hit, &ids)?;
        let sessions = self.sessions.lock().expect("registry lock");
        let entry = sessions.get(location)?.get(&mapped.key)?;
        let (token, access) = match mapped.presented {
            Some(p) => (p.token, p.access),
            None => (entry.id.clone(), Access::ReadWrite),
        };
        Some(Target {
            queue: entry.queue.clone(),
            door: entry.door.clone(),
            token,
            access,
            assigned: None,
        })
    }

    /// The session this request names, or a new one. A missing, malformed,
    /// forged or unknown id never reaches an existing session.
    pub fn resolve(
        self: &Arc<Self>,
        location_key: &Arc<str>,
        location: &Arc<LocationConfig>,
        hit: &Hit<'_>,
    ) -> Result<Target, Error> {
        let mapper = &*location.mapper;
        if let Some(target) = self.find(location_key, mapper, hit) {
            return Ok(target);
        }
        let Some(alive) = self.alive.lock().expect("registry lock").clone() else {
            return Err(Error::ShuttingDown);
        };
        let in_process = matches!(location.handler, Some(Handler::InProcess(_)));
        let slot = match self
            .slots
            .acquire(hit.client, location.max_sessions_per_client)
        {
            Ok(slot) => Some(slot),
            // A process session may take the place of an idle one-request
            // session; its task waits for the place to come free.
            Err(Error::TooManySessions(_)) if !in_process && self.evict_one() => None,
            Err(e) => return Err(e),
        };
        let assigned = mapper.assign_session_id(hit, &Ids::new(&self.ids, location_key));
        let stop = Arc::new(Notify::new());
        let evict = Arc::new(Notify::new());
        let door = Door::new(location.worker_concurrency);
        // Process sessions have a task that starts their worker, fed by a
        // queue; an in-process session's task is the application itself.
        let (queue, requests, app) = match &location.handler {
            Some(Handler::InProcess(app)) => {
                let (task, main) = inproc::Task::new(&assigned.id, location, app, stop.clone());
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
        {
            let mut sessions = self.sessions.lock().expect("registry lock");
            let sessions = sessions.entry(location_key.clone()).or_default();
            // Another request may have created this key meanwhile: join it.
            if let Some(entry) = sessions.get(&assigned.key) {
                return Ok(Target {
                    queue: entry.queue.clone(),
                    door: entry.door.clone(),
                    token: entry.id.clone(),
                    access: Access::ReadWrite,
                    assigned: None,
                });
            }
            sessions.insert(
                assigned.key.clone(),
                Entry {
                    serial,
                    id: assigned.id.clone(),
                    queue: queue.clone(),
                    door: door.clone(),
                    created: now,
                    expires: now + location.session_lifetime,
                    stop: stop.clone(),
                    evict: evict.clone(),
                },
            );
            self.ids.acquire(&assigned.id);
        }
        if *self.shutdown.borrow() {
            stop.notify_one();
        }
        match (requests, app) {
            (_, Some(main)) => {
                tokio::spawn(
                    lifecycle::InProcess {
                        id: assigned.id.clone(),
                        key: assigned.key.clone(),
                        location_key: location_key.clone(),
                        serial,
                        location: location.clone(),
                        registry: self.clone(),
                        door: door.clone(),
                        _slot: slot.expect("in-process sessions never wait for a place"),
                        end: stop,
                        _alive: alive,
                    }
                    .run(main),
                );
            }
            (Some(requests), None) => {
                tokio::spawn(
                    lifecycle::Session {
                        id: assigned.id.clone(),
                        key: assigned.key.clone(),
                        location_key: location_key.clone(),
                        serial,
                        client: hit.client,
                        location: location.clone(),
                        registry: self.clone(),
                        door: door.clone(),
                        slot,
                        stop,
                        evict,
                        _alive: alive,
                    }
                    .run(requests, self.shutdown.subscribe()),
                );
            }
            (None, None) => unreachable!("every session has a queue or an application"),
        }
        Ok(Target {
            queue,
            door,
            token: assigned.id.clone(),
            access: Access::ReadWrite,
            assigned: Some(assigned),
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
        entry.evict.notify_one();
        tracing::info!(session = %entry.id, "MaxSessions reached: stopping a one-request session idle for {idle:?} to admit a new one");
        true
    }

    /// Waits until a worker may be started under `MaxSpawnRate`.
    pub(crate) async fn spawn_turn(&self) -> Result<(), Error> {
        self.spawns.turn().await
    }

    /// Removes a session's entry, if it is still this session's.
    fn remove(&self, location: &str, key: &str, serial: u64) {
        let mut sessions = self.sessions.lock().expect("registry lock");
        let Some(map) = sessions.get_mut(location) else {
            return;
        };
        if map.get(key).is_some_and(|e| e.serial == serial) {
            let entry = map.remove(key).expect("just found");
            self.ids.release(&entry.id);
        }
    }

    /// Continuity's `reap($age)`: ends every session older than `age`.
    /// Returns how many were told to end.
    pub fn reap(&self, age: Duration) -> usize {
        self.stop_where(|e| e.created.elapsed() >= age)
    }

    /// Ends every session past its `SessionLifetime`.
    pub fn expire(&self) -> usize {
        let now = Instant::now();
        self.stop_where(|e| e.expires <= now)
    }

    fn stop_where(&self, pred: impl Fn(&Entry) -> bool) -> usize {
        let sessions = self.sessions.lock().expect("registry lock");
        let mut n = 0;
        for entry in sessions
            .values()
            .flat_map(HashMap::values)
            .filter(|e| pred(e))
        {
            entry.stop.notify_one();
            n += 1;
        }
        n
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

    /// Stops every session (and so every worker) and waits until all are gone.
    pub async fn shutdown(&self) {
        // `send_replace`: the flag must be set even with no receiver.
        self.shutdown.send_replace(true);
        drop(self.alive.lock().expect("registry lock").take());
        // In-process sessions (those without a queue) listen only to their
        // `stop`; one created while this runs sees the flag set above instead.
        self.stop_where(|e| e.queue.is_none());
        let mut all_ended = self.all_ended.lock().await;
        while all_ended.recv().await.is_some() {}
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
        tokio::time::sleep_until(ready_at).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spawns_are_paced_after_a_burst_and_refused_past_the_wait() {
        let rate = SpawnRate::new(10);
        let began = Instant::now();
        for _ in 0..10 {
            rate.turn().await.unwrap();
        }
        assert!(
            began.elapsed() < Duration::from_millis(200),
            "a burst goes at once"
        );
        for _ in 0..20 {
            rate.turn().await.unwrap();
        }
        assert!(
            began.elapsed() >= Duration::from_secs(1),
            "then 10 a second"
        );
        // Starts that only reserve their turn (their sleep cut short) fill
        // the bounded wait; beyond it, starts are refused.
        let mut refused = 0;
        for _ in 0..40 {
            if let Ok(Err(Error::SpawnRateExceeded)) =
                tokio::time::timeout(Duration::ZERO, rate.turn()).await
            {
                refused += 1;
            }
        }
        assert!((15..=25).contains(&refused), "{refused} refused");
    }
}
