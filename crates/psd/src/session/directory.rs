//! Where a session that has no entry in this process may still exist: the
//! state store (a dormant session that outlived its worker or a restart),
//! a cluster's directory (a session another node owns).
//!
//! The registry asks its [`Directory`] only on a miss — a request whose id
//! verifies but names no session in memory — and never under its lock; the
//! hit path never awaits. [`InMemory`], the default, knows nothing beyond
//! the registry's own map, which is psd's behaviour without a store.

use futures_util::future::BoxFuture;

use super::AppKey;
use crate::error::Error;

/// What the directory knows of a session id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No such session (never created, ended, or forgotten): the request
    /// gets a new one.
    Nowhere,
    /// The session exists and nobody runs it: it resumes here, with its id,
    /// and its first worker starts with `PSD_RESUMED=1`.
    Dormant,
}

/// The sessions beyond this process's memory.
pub trait Directory: Send + Sync + 'static {
    /// Looks up the read-write session id `id` of `app`, which has no entry
    /// in the registry.
    fn find<'a>(&'a self, app: &'a AppKey, id: &'a str) -> BoxFuture<'a, Result<Found, Error>>;
}

/// No store: a session lives exactly as long as its registry entry.
pub struct InMemory;

impl Directory for InMemory {
    fn find<'a>(&'a self, _app: &'a AppKey, _id: &'a str) -> BoxFuture<'a, Result<Found, Error>> {
        Box::pin(std::future::ready(Ok(Found::Nowhere)))
    }
}
