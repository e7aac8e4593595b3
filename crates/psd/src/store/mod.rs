//! The state store: what must outlive a worker, and psd itself.
//!
//! Behind one trait, [`Store`], chosen by `StateStore`: `embedded` (a redb
//! file in `DataDir`, durable, writes batched into shared commits) or
//! `memory` (nothing survives psd). It holds one [`SessionRecord`] per
//! session id; the registry's [`crate::session::Directory`] reads them on
//! its miss path, and the session lifecycle writes them on its transitions,
//! never on a request's hot path. This module never sees a request or a
//! worker.

mod embedded;
mod memory;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;

pub use embedded::Embedded;
pub use memory::Memory;

/// Where `StateStore` says session records live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// `DataDir/state.redb`.
    Embedded,
    Memory,
}

/// A session as the store keeps it: enough to resume it anywhere.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionRecord {
    /// The application's identity ([`crate::session::AppKey`]'s encoding).
    pub app: String,
    /// The read-write session id.
    pub id: String,
    /// Milliseconds since the Unix epoch.
    pub created: u64,
    pub last_active: u64,
    /// When `SessionLifetime` ends it, whatever it is doing.
    pub expires: u64,
    /// The `NodeName` of the psd that last ran it.
    pub node: String,
}

impl SessionRecord {
    pub fn expired_at(&self, now: u64) -> bool {
        self.expires <= now
    }
}

/// Milliseconds since the Unix epoch, as records keep time.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Backend(String),
    #[error("stored record is unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("the store's writer has stopped")]
    Closed,
}

/// Session records, durable or not.
pub trait Store: Send + Sync + 'static {
    /// The record of session `id` of `app`, if any.
    fn session<'a>(
        &'a self,
        app: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>>;

    /// Creates or replaces a record.
    ///
    /// Writes are queued when called, in call order; the future only waits
    /// for the write to be as durable as the store makes anything, so a
    /// caller may send it off without awaiting and still keep its writes
    /// in order.
    fn save(&self, record: SessionRecord) -> BoxFuture<'static, Result<(), StoreError>>;

    /// Deletes a session's record: its id names nothing any more.
    fn forget(&self, app: &str, id: &str) -> BoxFuture<'static, Result<(), StoreError>>;

    /// Deletes every record past its lifetime at `now`; returns how many.
    fn purge_expired(&self, now: u64) -> BoxFuture<'static, Result<usize, StoreError>>;
}

/// Opens the store `kind` for `data_dir`. An embedded store that cannot be
/// opened (unreadable, corrupt) is an error naming its file: psd never
/// starts over silently with an empty one.
pub fn open(kind: &StoreKind, data_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match kind {
        StoreKind::Memory => Arc::new(Memory::default()),
        StoreKind::Embedded => {
            let path = data_dir.join("state.redb");
            let store = Embedded::open(&path).map_err(|e| {
                anyhow::anyhow!("state store {}: {e} (StateStore embedded)", path.display())
            })?;
            Arc::new(store)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(app: &str, id: &str, expires: u64) -> SessionRecord {
        SessionRecord {
            app: app.into(),
            id: id.into(),
            created: 1,
            last_active: 2,
            expires,
            node: "n".into(),
        }
    }

    /// What every store must do.
    async fn behaves(store: &dyn Store) {
        assert_eq!(store.session("a", "x").await.unwrap(), None);
        store.save(record("a", "x", 100)).await.unwrap();
        store.save(record("b", "x", 300)).await.unwrap();
        assert_eq!(
            store.session("a", "x").await.unwrap(),
            Some(record("a", "x", 100))
        );
        assert_eq!(
            store.session("a", "y").await.unwrap(),
            None,
            "ids are per app"
        );
        let mut later = record("a", "x", 200);
        later.last_active = 50;
        store.save(later.clone()).await.unwrap();
        assert_eq!(store.session("a", "x").await.unwrap(), Some(later));
        assert_eq!(store.purge_expired(250).await.unwrap(), 1);
        assert_eq!(store.session("a", "x").await.unwrap(), None);
        assert!(store.session("b", "x").await.unwrap().is_some());
        store.forget("b", "x").await.unwrap();
        store.forget("b", "x").await.unwrap();
        assert_eq!(store.session("b", "x").await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_memory_store_keeps_records() {
        behaves(&Memory::default()).await;
    }

    #[tokio::test]
    async fn the_embedded_store_keeps_records_across_reopening() {
        let dir = std::env::temp_dir().join(format!("psd-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.redb");
        let _ = std::fs::remove_file(&path);
        {
            let store = Embedded::open(&path).unwrap();
            behaves(&store).await;
            store.save(record("a", "kept", u64::MAX)).await.unwrap();
        }
        let store = Embedded::open(&path).unwrap();
        assert!(store.session("a", "kept").await.unwrap().is_some());
        drop(store);
        std::fs::write(&path, b"not a database at all").unwrap();
        let err = open(&StoreKind::Embedded, &dir).err().unwrap().to_string();
        assert!(err.contains("state.redb"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Writes from many tasks at once share commits, and every one that
    /// was answered is there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_all_land() {
        let dir = std::env::temp_dir().join(format!("psd-store-many-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.redb");
        let _ = std::fs::remove_file(&path);
        let store = Arc::new(Embedded::open(&path).unwrap());
        let mut tasks = vec![];
        for i in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .save(record("a", &i.to_string(), u64::MAX))
                    .await
                    .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for i in 0..200 {
            assert!(store.session("a", &i.to_string()).await.unwrap().is_some());
        }
        assert!(
            store.commits() < 200,
            "{} commits for 200 writes",
            store.commits()
        );
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
