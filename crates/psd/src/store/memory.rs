//! `StateStore memory`: everything in one sorted map; nothing survives psd.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures_util::future::BoxFuture;

use super::ops::{self, Kv, KvRead};
use super::{Condition, SessionRecord, Space, Store, StoreError, Value, Written};

#[derive(Default)]
pub struct Memory {
    map: Mutex<Map>,
}

#[derive(Default)]
struct Map(BTreeMap<String, Vec<u8>>);

impl KvRead for Map {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.get(key).cloned())
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .0
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl Kv for Map {
    fn insert(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.0.insert(key.to_string(), value.to_vec());
        Ok(())
    }

    fn remove(&mut self, key: &str) -> Result<bool, StoreError> {
        Ok(self.0.remove(key).is_some())
    }
}

impl Memory {
    /// The map itself, for tests that need what no store would write.
    #[cfg(test)]
    pub(super) fn raw<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Vec<u8>>) -> T) -> T {
        f(&mut self.map.lock().expect("store lock").0)
    }

    /// Runs `f` on the map under its lock; the answer, ready.
    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Map) -> Result<T, StoreError>,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let result = f(&mut self.map.lock().expect("store lock"));
        Box::pin(std::future::ready(result))
    }
}

impl Store for Memory {
    fn session(
        &self,
        app: &str,
        id: &str,
    ) -> BoxFuture<'static, Result<Option<SessionRecord>, StoreError>> {
        self.with(|m| ops::session(m, app, id))
    }

    fn save(&self, record: SessionRecord) -> BoxFuture<'static, Result<(), StoreError>> {
        self.with(|m| ops::save(m, &record))
    }

    fn forget(&self, app: &str, id: &str) -> BoxFuture<'static, Result<(), StoreError>> {
        self.with(|m| ops::forget(m, app, id).map(drop))
    }

    fn purge_expired(&self, now: u64) -> BoxFuture<'static, Result<usize, StoreError>> {
        self.with(|m| ops::purge_expired(m, now))
    }

    fn retain_apps(&self, apps: Vec<String>) -> BoxFuture<'static, Result<usize, StoreError>> {
        self.with(|m| ops::retain_apps(m, &apps))
    }

    fn sessions(&self) -> BoxFuture<'static, Result<Vec<SessionRecord>, StoreError>> {
        self.with(|m| ops::sessions(m))
    }

    fn value(
        &self,
        space: &Space,
        key: &str,
    ) -> BoxFuture<'static, Result<Option<Value>, StoreError>> {
        self.with(|m| ops::value(m, space, key))
    }

    fn keys(&self, space: &Space) -> BoxFuture<'static, Result<Vec<(String, u64)>, StoreError>> {
        self.with(|m| ops::keys(m, space))
    }

    fn sizes(&self, spaces: Vec<Space>) -> BoxFuture<'static, Result<Vec<u64>, StoreError>> {
        self.with(|m| spaces.iter().map(|space| ops::size(m, space)).collect())
    }

    fn put(
        &self,
        space: &Space,
        key: &str,
        data: Vec<u8>,
        when: Condition,
        limit: u64,
    ) -> BoxFuture<'static, Result<Written, StoreError>> {
        self.with(|m| ops::put(m, space, key, &data, when, limit))
    }

    fn delete(
        &self,
        space: &Space,
        key: &str,
        when: Condition,
    ) -> BoxFuture<'static, Result<Written, StoreError>> {
        self.with(|m| ops::delete(m, space, key, when))
    }

    fn add(
        &self,
        space: &Space,
        key: &str,
        n: i64,
        limit: u64,
    ) -> BoxFuture<'static, Result<(Written, i64), StoreError>> {
        self.with(|m| ops::add(m, space, key, n, limit))
    }
}
