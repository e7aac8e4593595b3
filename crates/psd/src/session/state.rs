//! An in-process session's tie to the state store: what
//! [`crate::app::State`] reads and writes through.
//!
//! A process session's record is written when the session is created; an
//! in-process one's only when its application first writes a value (or
//! when it resumes, as its record is there already). A million sessions
//! that keep nothing cost the store nothing, and one that kept nothing has
//! nothing to resume. The record's write is queued before the value's, so
//! the store never holds values of a session it does not know (nothing
//! would ever purge them). Once the session is ending, its tie refuses
//! every call, as a stopped worker's state URLs do.

use std::sync::Arc;
use std::time::SystemTime;

use super::info::Record;
use super::Registry;
use crate::config::LocationConfig;
use crate::store::{Space, Store};

pub(crate) struct StateLink {
    pub registry: Arc<Registry>,
    pub record: Arc<Record>,
    pub id: Arc<str>,
    /// The session's key (see [`crate::store::SessionRecord::key`]).
    pub key: Arc<str>,
    /// The session's `<Location>`, as it was when the session started.
    pub location: Arc<LocationConfig>,
}

/// The session has ended: its state is out of its reach.
pub(crate) struct Ended;

impl StateLink {
    /// This session's space (`shared`: its application's).
    pub fn space(&self, shared: bool) -> Space {
        let app = self.record.app.as_str().into();
        match shared {
            false => Space::Session {
                app,
                key: self.key.to_string(),
            },
            true => Space::Shared { app },
        }
    }

    /// Runs `call` on the store while the session lives; a write to the
    /// session's own space first has the session's record written.
    /// `call` queues its operation (the store queues at call time), so the
    /// session's end, and its record's deletion, come after it.
    pub fn call<T>(
        &self,
        writes_own: bool,
        call: impl FnOnce(&dyn Store) -> T,
    ) -> Result<T, Ended> {
        let store = &*self.registry.store;
        self.record
            .while_alive(|stored| {
                if writes_own && !*stored {
                    *stored = true;
                    let record = self.record.stored_as(
                        &self.key,
                        &self.id,
                        SystemTime::now(),
                        self.location.session_lifetime,
                        &self.registry.node,
                    );
                    // Queued now, before the value; a failure shows in the
                    // value's own write.
                    drop(store.save(record));
                }
                call(store)
            })
            .ok_or(Ended)
    }
}
