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
mod ops;
mod redis;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;

pub use embedded::Embedded;
pub use memory::Memory;
pub use redis::Redis;

/// Where `StateStore` says session records live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// `DataDir/state.redb`.
    Embedded,
    Memory,
    /// `redis://HOST:PORT/DB`.
    Redis(String),
}

/// A session as the store keeps it: enough to resume it anywhere.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionRecord {
    /// The application's identity ([`crate::session::AppKey`]'s encoding).
    pub app: String,
    /// The session's key: its read-write id, and with `path` or `ip` parts
    /// in `SessionKey`, those too (one id can name several sessions).
    pub key: String,
    /// The read-write session id.
    pub id: String,
    /// Milliseconds since the Unix epoch.
    pub created: u64,
    pub last_active: u64,
    /// When `SessionLifetime` ends it, whatever it is doing.
    pub expires: u64,
    /// The `NodeName` of the psd that last ran it.
    pub node: String,
    /// The user it belongs to (`AuthType`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
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

/// The longest key.
const MAX_KEY: usize = 200;

/// Whether `key` is a valid key: `[A-Za-z0-9._~-]`, 1–200 bytes, `/`
/// inside (not first, not last, never two in a row).
pub(crate) fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY
        && !key.starts_with('/')
        && !key.ends_with('/')
        && !key.contains("//")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~-/".contains(&b))
}

/// Whose values: one session's, or one application's (shared by all its
/// sessions).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Space {
    /// By the session's key (see [`SessionRecord::key`]).
    Session {
        app: String,
        key: String,
    },
    Shared {
        app: String,
    },
}

/// A stored value and its version (its `ETag`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub version: u64,
    pub data: Vec<u8>,
}

/// When a write may happen: compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Always,
    /// `If-None-Match: *`.
    Absent,
    /// `If-Match: *`.
    Present,
    /// `If-Match: ETAG`.
    Version(u64),
}

/// Why a write did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its condition does not hold (412).
    Precondition,
    /// The space would exceed its limit (413).
    TooLarge,
    /// Nothing to delete (404).
    Missing,
    /// `add` on a value that is not a decimal integer, or an overflow (409).
    NotANumber,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// A new value, with its version.
    Created(u64),
    /// A value replaced (or deleted), with the new (or deleted) version.
    Replaced(u64),
    Refused(Refused),
}

pub(crate) type Answer<T> = BoxFuture<'static, Result<T, StoreError>>;

/// The answer to a write handed to a store's writer (`queued`: whether the
/// writer took it), which sends its result on `rx`.
fn when_written<T: Send + 'static>(
    queued: bool,
    rx: tokio::sync::oneshot::Receiver<Result<T, StoreError>>,
) -> Answer<T> {
    Box::pin(async move {
        if !queued {
            return Err(StoreError::Closed);
        }
        rx.await.unwrap_or(Err(StoreError::Closed))
    })
}

/// Session records and the values of session and shared spaces, durable or
/// not.
///
/// Writes are queued when called, in call order; their futures only wait
/// for the write to be as durable as the store makes anything. A caller
/// may send a write off without awaiting it and still keep its writes in
/// order.
pub trait Store: Send + Sync + 'static {
    /// The record of the session with `key` in `app`, if any.
    fn session(&self, app: &str, key: &str) -> Answer<Option<SessionRecord>>;

    /// Creates or replaces a record.
    fn save(&self, record: SessionRecord) -> Answer<()>;

    /// Deletes a session's record and all its values: its id names nothing
    /// any more.
    fn forget(&self, app: &str, key: &str) -> Answer<()>;

    /// Every session record, in no particular order (the admin API lists
    /// the sessions that are only in the store). Unreadable ones are left out.
    fn sessions(&self) -> Answer<Vec<SessionRecord>>;

    /// Deletes every session past its lifetime at `now`; returns how many.
    fn purge_expired(&self, now: u64) -> Answer<usize>;

    /// Deletes every session of an application not in `apps` (its
    /// `<Location>` was removed); returns how many. Shared values stay.
    fn retain_apps(&self, apps: Vec<String>) -> Answer<usize>;

    fn value(&self, space: &Space, key: &str) -> Answer<Option<Value>>;

    /// The keys of a space, with their values' sizes, in key order.
    fn keys(&self, space: &Space) -> Answer<Vec<(String, u64)>>;

    /// Writes a value if `when` holds and the space stays within `limit`
    /// bytes in all.
    fn put(
        &self,
        space: &Space,
        key: &str,
        data: Vec<u8>,
        when: Condition,
        limit: u64,
    ) -> Answer<Written>;

    fn delete(&self, space: &Space, key: &str, when: Condition) -> Answer<Written>;

    /// Adds `n` to a decimal integer value (0 when absent), atomically;
    /// the outcome and the new number.
    fn add(&self, space: &Space, key: &str, n: i64, limit: u64) -> Answer<(Written, i64)>;

    /// The bytes of values in each space, in order: what the admin API
    /// shows for many sessions at once. Stores that can read them in one
    /// go (one transaction) do.
    fn sizes(&self, spaces: Vec<Space>) -> Answer<Vec<u64>> {
        use futures_util::StreamExt as _;
        let reads: Vec<_> = spaces.iter().map(|space| self.keys(space)).collect();
        Box::pin(async move {
            let mut sizes = Vec::with_capacity(reads.len());
            let mut answers = futures_util::stream::iter(reads).buffered(64);
            while let Some(keys) = answers.next().await {
                sizes.push(keys?.iter().map(|(_, size)| size).sum());
            }
            Ok(sizes)
        })
    }

    /// Finishes the writes queued so far and lets go of the store (its file,
    /// its connection); everything after fails with [`StoreError::Closed`].
    fn close(&self) {}

    /// Whether the store can be used now: a store that was found down
    /// (Redis gone) is asked again; the registry answers 503 meanwhile.
    fn ready(&self) -> Answer<()> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Opens the store `kind` for `data_dir`. An embedded store that cannot be
/// opened (unreadable, corrupt) is an error naming its file: psd never
/// starts over silently with an empty one.
pub fn open(kind: &StoreKind, data_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match kind {
        StoreKind::Memory => Arc::new(Memory::default()),
        StoreKind::Redis(url) => {
            Arc::new(Redis::open(url).map_err(|e| anyhow::anyhow!("StateStore {url}: {e}"))?)
        }
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
            key: id.into(),
            id: id.into(),
            created: 1,
            last_active: 2,
            expires,
            node: "n".into(),
            user: None,
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
        assert_eq!(store.session("a", "x").await.unwrap(), Some(later.clone()));
        let mut all = store.sessions().await.unwrap();
        all.sort_by(|x, y| x.app.cmp(&y.app));
        assert_eq!(all, vec![later, record("b", "x", 300)], "every record");
        assert_eq!(store.purge_expired(250).await.unwrap(), 1);
        store.save(record("gone", "y", u64::MAX)).await.unwrap();
        assert_eq!(
            store
                .retain_apps(vec!["a".into(), "b".into()])
                .await
                .unwrap(),
            1
        );
        assert_eq!(store.session("gone", "y").await.unwrap(), None);
        assert_eq!(store.session("a", "x").await.unwrap(), None);
        assert!(store.session("b", "x").await.unwrap().is_some());
        store.forget("b", "x").await.unwrap();
        store.forget("b", "x").await.unwrap();
        assert_eq!(store.session("b", "x").await.unwrap(), None);
        values(store).await;
    }

    /// Values: versions, compare-and-set, limits, add, and what forgetting
    /// a session takes with it.
    async fn values(store: &dyn Store) {
        let mine = Space::Session {
            app: "a".into(),
            key: "x".into(),
        };
        let shared = Space::Shared { app: "a".into() };
        let put = |space: &Space, key: &str, data: &str, when| {
            store.put(space, key, data.as_bytes().to_vec(), when, 10)
        };
        let Written::Created(v1) = put(&mine, "k", "one", Condition::Absent).await.unwrap() else {
            panic!("created")
        };
        assert_eq!(
            put(&mine, "k", "again", Condition::Absent).await.unwrap(),
            Written::Refused(Refused::Precondition)
        );
        let got = store.value(&mine, "k").await.unwrap().unwrap();
        assert_eq!((got.version, &got.data[..]), (v1, &b"one"[..]));
        let Written::Replaced(v2) = put(&mine, "k", "two", Condition::Version(v1))
            .await
            .unwrap()
        else {
            panic!("replaced")
        };
        assert!(v2 > v1);
        assert_eq!(
            put(&mine, "k", "three", Condition::Version(v1))
                .await
                .unwrap(),
            Written::Refused(Refused::Precondition),
            "a stale ETag loses"
        );
        assert_eq!(
            put(&mine, "big", "12345678", Condition::Always)
                .await
                .unwrap(),
            Written::Refused(Refused::TooLarge),
            "3 + 8 bytes is over the limit of 10"
        );
        assert!(matches!(
            put(&mine, "big", "1234567", Condition::Always)
                .await
                .unwrap(),
            Written::Created(_)
        ));
        assert_eq!(
            store.keys(&mine).await.unwrap(),
            [("big".to_string(), 7), ("k".to_string(), 3)]
        );
        assert!(
            store.value(&shared, "k").await.unwrap().is_none(),
            "spaces are apart"
        );
        assert!(matches!(
            store.delete(&mine, "big", Condition::Always).await.unwrap(),
            Written::Replaced(_)
        ));
        assert_eq!(
            store.delete(&mine, "big", Condition::Always).await.unwrap(),
            Written::Refused(Refused::Missing)
        );
        for _ in 0..3 {
            store.add(&shared, "n", 2, 10).await.unwrap();
        }
        assert_eq!(store.add(&shared, "n", -1, 10).await.unwrap().1, 5);
        assert_eq!(store.value(&shared, "n").await.unwrap().unwrap().data, b"5");
        assert_eq!(
            store.add(&mine, "k", 1, 10).await.unwrap().0,
            Written::Refused(Refused::NotANumber)
        );
        store.save(record("a", "x", u64::MAX)).await.unwrap();
        store.forget("a", "x").await.unwrap();
        assert!(
            store.keys(&mine).await.unwrap().is_empty(),
            "gone with the session"
        );
        assert!(
            matches!(
                put(&mine, "k", "0123456789", Condition::Always)
                    .await
                    .unwrap(),
                Written::Created(_)
            ),
            "its bytes are free again"
        );
        let keys = store.keys(&mine).await.unwrap();
        let total: u64 = keys.iter().map(|(_, n)| n).sum();
        let nobody = Space::Session {
            app: "a".into(),
            key: "nobody".into(),
        };
        assert_eq!(
            store
                .sizes(vec![mine.clone(), nobody, shared.clone()])
                .await
                .unwrap(),
            vec![total, 0, store.keys(&shared).await.unwrap()[0].1],
            "sizes of many spaces at once, in order"
        );
        store.forget("a", "x").await.unwrap();
        assert_eq!(
            store.keys(&shared).await.unwrap().len(),
            1,
            "shared values stay"
        );
    }

    #[tokio::test]
    async fn the_memory_store_keeps_records() {
        behaves(&Memory::default()).await;
    }

    /// One record that does not parse is that session lost (its id gets a
    /// new session, the record goes), not the store down for it.
    #[tokio::test]
    async fn an_unreadable_record_is_an_unknown_session_and_is_deleted() {
        use crate::session::{AppKey, Directory, Found, Stored};
        let memory = Arc::new(Memory::default());
        let app = AppKey::new(None, "/");
        let key = ops::record_key(app.as_str(), "x");
        memory.raw(|m| m.insert(key.clone(), b"{junk".to_vec()));
        assert!(matches!(
            memory.session(app.as_str(), "x").await,
            Err(StoreError::Corrupt(_))
        ));
        let found = Stored(memory.clone()).find(&app, "x").await.unwrap();
        assert_eq!(found, Found::Nowhere);
        assert!(!memory.raw(|m| m.contains_key(&key)));
    }

    /// A `redis-server` of this test's own on a free loopback port, killed
    /// by pid when dropped.
    pub(crate) struct RedisServer {
        child: std::process::Child,
        pub url: String,
    }

    impl RedisServer {
        pub(crate) fn start() -> RedisServer {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server (scripts/install-test-deps.sh installs it)");
            for _ in 0..200 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            RedisServer {
                child,
                url: format!("redis://127.0.0.1:{port}/0"),
            }
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[tokio::test]
    async fn the_redis_store_keeps_records_and_values() {
        let server = RedisServer::start();
        let store = Redis::open(&server.url).unwrap();
        behaves(&store).await;
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
