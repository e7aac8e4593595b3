//! `StateStore memory`: records in a map; nothing survives psd.

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::future::BoxFuture;

use super::{SessionRecord, Store, StoreError};

#[derive(Default)]
pub struct Memory {
    records: Mutex<HashMap<(String, String), SessionRecord>>,
}

impl Store for Memory {
    fn session<'a>(
        &'a self,
        app: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>> {
        let found = self
            .records
            .lock()
            .expect("store lock")
            .get(&(app.to_string(), id.to_string()))
            .cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn save(&self, record: SessionRecord) -> BoxFuture<'static, Result<(), StoreError>> {
        self.records
            .lock()
            .expect("store lock")
            .insert((record.app.clone(), record.id.clone()), record);
        Box::pin(std::future::ready(Ok(())))
    }

    fn forget(&self, app: &str, id: &str) -> BoxFuture<'static, Result<(), StoreError>> {
        self.records
            .lock()
            .expect("store lock")
            .remove(&(app.to_string(), id.to_string()));
        Box::pin(std::future::ready(Ok(())))
    }

    fn purge_expired(&self, now: u64) -> BoxFuture<'static, Result<usize, StoreError>> {
        let mut records = self.records.lock().expect("store lock");
        let before = records.len();
        records.retain(|_, r| !r.expired_at(now));
        let purged = before - records.len();
        Box::pin(std::future::ready(Ok(purged)))
    }
}
