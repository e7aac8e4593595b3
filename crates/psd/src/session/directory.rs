//! Where a session that has no entry in this process may still exist: the
//! state store (a dormant session that outlived its worker or a restart),
//! a cluster's directory (a session another node owns).
//!
//! The registry asks its [`Directory`] only on a miss — a request whose id
//! verifies but names no session in memory — and never under its lock; the
//! hit path never awaits. [`Stored`] answers from the state store;
//! [`InMemory`] knows nothing beyond the registry's own map.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;

use super::AppKey;
use crate::error::{Cause, Error};
use crate::store::{unix_ms, Store, StoreError};

/// What the directory knows of a session id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No such session (never created, ended, or forgotten): the request
    /// gets a new one.
    Nowhere,
    /// The session exists and nobody runs it: it resumes here, with its id
    /// and its creation time (its `SessionLifetime` runs from then), and its
    /// first worker starts with `PSD_RESUMED=1`.
    Dormant { created: SystemTime },
}

/// The sessions beyond this process's memory.
pub trait Directory: Send + Sync + 'static {
    /// Looks up the session with `key` in `app` (the mapper's key: its
    /// read-write id, and the other parts of `SessionKey`), which has no
    /// entry in the registry.
    fn find<'a>(&'a self, app: &'a AppKey, key: &'a str) -> BoxFuture<'a, Result<Found, Error>>;
}

/// No store: a session lives exactly as long as its registry entry.
pub struct InMemory;

impl Directory for InMemory {
    fn find<'a>(&'a self, _app: &'a AppKey, _key: &'a str) -> BoxFuture<'a, Result<Found, Error>> {
        Box::pin(std::future::ready(Ok(Found::Nowhere)))
    }
}

/// The state store's records: a session whose record is there, and not past
/// its lifetime, is dormant; one past it is forgotten on the way.
pub struct Stored(pub Arc<dyn Store>);

impl Directory for Stored {
    fn find<'a>(&'a self, app: &'a AppKey, key: &'a str) -> BoxFuture<'a, Result<Found, Error>> {
        Box::pin(async move {
            let record = match self.0.session(app.as_str(), key).await {
                Ok(record) => record,
                // One unreadable record is one session lost, not a store
                // down: its id gets a new session, and the record goes.
                Err(e @ StoreError::Corrupt(_)) => {
                    tracing::warn!(app = %app, "state store: a session record is unreadable and is deleted: {e}");
                    let _ = self.0.forget(app.as_str(), key).await;
                    None
                }
                Err(e) => return Err(Error::Store(Cause::new("reading a session record", e))),
            };
            match record {
                Some(r) if !r.expired_at(unix_ms(SystemTime::now())) => Ok(Found::Dormant {
                    created: UNIX_EPOCH + Duration::from_millis(r.created),
                }),
                Some(_) => {
                    // Past its lifetime: gone, as if the sweep had got to it first.
                    let _ = self.0.forget(app.as_str(), key).await;
                    Ok(Found::Nowhere)
                }
                None => Ok(Found::Nowhere),
            }
        })
    }
}
