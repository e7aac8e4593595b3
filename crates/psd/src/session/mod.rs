//! The session registry: which sessions exist, and the door into each one.
//!
//! The registry is a plain map from session id to the sender of that
//! session's queue, behind a short lock that is never held across `.await`.
//! Routing a request only finds (or creates) the session and drops the job
//! into its queue, as Continuity's mapper does; everything else about a
//! session — its worker, its timers, its order of requests — belongs to that
//! session's own task ([`lifecycle`]).

mod lifecycle;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch, Semaphore};

use crate::config::LocationConfig;
use crate::error::Error;
use crate::mapper::Signer;
use crate::worker::Job;

/// Requests that may wait in one session's queue before new ones get 503.
const SESSION_QUEUE_DEPTH: usize = 256;

/// Every live session of the daemon.
pub(crate) struct Registry {
    sessions: Mutex<HashMap<Arc<str>, Entry>>,
    pub(crate) signer: Signer,
    /// One permit per session that holds a running worker (`MaxSessions`).
    live: Arc<Semaphore>,
    max_sessions: usize,
    run_dir: PathBuf,
    shutdown: watch::Sender<bool>,
    /// Each session task holds a clone of this sender; shutdown takes the
    /// registry's own, so the receiver ends exactly when the last session has.
    alive: Mutex<Option<mpsc::Sender<()>>>,
    all_ended: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

struct Entry {
    location: usize,
    queue: mpsc::Sender<Job>,
}

/// Where a routed request went.
pub(crate) enum Routed {
    Existing,
    /// A new session was created; the client must be told its id.
    New(Arc<str>),
}

impl Registry {
    pub fn new(signer: Signer, max_sessions: usize, run_dir: PathBuf) -> Arc<Registry> {
        let (alive, all_ended) = mpsc::channel(1);
        Arc::new(Registry {
            sessions: Mutex::new(HashMap::new()),
            signer,
            live: Arc::new(Semaphore::new(max_sessions)),
            max_sessions,
            run_dir,
            shutdown: watch::channel(false).0,
            alive: Mutex::new(Some(alive)),
            all_ended: tokio::sync::Mutex::new(all_ended),
        })
    }

    /// Sends `job` to the session named by the first of `ids` that is valid
    /// and live for this location, or to a new session. A missing, malformed,
    /// forged or unknown id never reaches an existing session.
    pub fn route<'a>(
        self: &Arc<Self>,
        location_index: usize,
        location: &Arc<LocationConfig>,
        ids: impl Iterator<Item = &'a str>,
        job: Job,
    ) -> Result<Routed, Error> {
        let mut job = job;
        for id in ids {
            if !self.signer.verify(id) {
                continue;
            }
            let queue = {
                let sessions = self.sessions.lock().expect("registry lock");
                match sessions.get(id) {
                    Some(entry) if entry.location == location_index => entry.queue.clone(),
                    _ => continue,
                }
            };
            match queue.try_send(job) {
                Ok(()) => return Ok(Routed::Existing),
                Err(mpsc::error::TrySendError::Full(_)) => return Err(Error::SessionBusy),
                // The session ended between lookup and send: treat the id as unknown.
                Err(mpsc::error::TrySendError::Closed(j)) => job = j,
            }
        }
        let Some(alive) = self.alive.lock().expect("registry lock").clone() else {
            return Err(Error::ShuttingDown);
        };
        let Ok(permit) = self.live.clone().try_acquire_owned() else {
            return Err(Error::TooManySessions(self.max_sessions));
        };
        let id: Arc<str> = self.signer.issue().into();
        let (queue, requests) = mpsc::channel(SESSION_QUEUE_DEPTH);
        queue
            .try_send(job)
            .unwrap_or_else(|_| unreachable!("a new queue has room"));
        self.sessions.lock().expect("registry lock").insert(
            id.clone(),
            Entry {
                location: location_index,
                queue,
            },
        );
        tokio::spawn(
            lifecycle::Session {
                id: id.clone(),
                location: location.clone(),
                registry: self.clone(),
                permit: Some(permit),
                _alive: alive,
            }
            .run(requests, self.shutdown.subscribe()),
        );
        Ok(Routed::New(id))
    }

    fn remove(&self, id: &str) {
        self.sessions.lock().expect("registry lock").remove(id);
    }

    /// Stops every session (and so every worker) and waits until all are gone.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        drop(self.alive.lock().expect("registry lock").take());
        let mut all_ended = self.all_ended.lock().await;
        while all_ended.recv().await.is_some() {}
    }
}
