//! `StateStore embedded`: one redb file, durable, with group commit.
//!
//! Writes go to one writer thread through a channel. It takes every write
//! waiting, applies them all in one transaction and commits once (one
//! fsync), then answers each: under load, many writes share an fsync; alone,
//! a write is committed at once. A write is answered only once committed, so
//! whatever was answered survives a kill -9 of psd. Reads run beside it on
//! the blocking pool, each in its own read transaction. What each operation
//! means is in [`super::ops`].

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use futures_util::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::ops::{self, Kv, KvRead};
use super::{Condition, SessionRecord, Space, Store, StoreError, Value, Written};

/// The one table: see [`super::ops`] for its keyspace.
const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("psd");

/// Writes applied in one commit at most. `PSD_STORE_MAX_BATCH=1` turns
/// group commit off (one fsync per write), for benchmarks.
const MAX_BATCH: usize = 1024;

fn max_batch() -> usize {
    std::env::var("PSD_STORE_MAX_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(MAX_BATCH)
}

/// Called once the batch's commit is known: `Ok` or why it failed.
type Deliver = Box<dyn FnOnce(Result<(), String>) + Send>;
/// One write: applied inside the batch's transaction, it keeps its result
/// and returns how to deliver it.
type Job = Box<dyn for<'t> FnOnce(&mut TableKv<'t>) -> Deliver + Send>;

pub struct Embedded {
    /// `None` once closed.
    db: Mutex<Option<Arc<Database>>>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    commits: Arc<AtomicU64>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The write transaction's table as a [`Kv`]; remembers whether redb
/// failed anywhere, which dooms the whole batch.
struct TableKv<'t> {
    table: redb::Table<'t, &'static str, &'static [u8]>,
    failed: Option<String>,
}

impl TableKv<'_> {
    fn note<T>(&mut self, r: Result<T, redb::StorageError>) -> Result<T, StoreError> {
        r.map_err(|e| {
            self.failed.get_or_insert_with(|| e.to_string());
            backend(e)
        })
    }
}

fn scan_table(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<(String, Vec<u8>)>, redb::StorageError> {
    let mut out = vec![];
    for entry in table.range(prefix..)? {
        let (k, v) = entry?;
        if !k.value().starts_with(prefix) {
            break;
        }
        out.push((k.value().to_string(), v.value().to_vec()));
    }
    Ok(out)
}

impl KvRead for TableKv<'_> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .table
            .get(key)
            .map_err(backend)?
            .map(|v| v.value().to_vec()))
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        scan_table(&self.table, prefix).map_err(backend)
    }
}

impl Kv for TableKv<'_> {
    fn insert(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let r = self.table.insert(key, value).map(drop);
        self.note(r)
    }

    fn remove(&mut self, key: &str) -> Result<bool, StoreError> {
        let r = self.table.remove(key).map(|old| old.is_some());
        self.note(r)
    }
}

/// A read transaction's table as a [`KvRead`].
struct ReadKv(redb::ReadOnlyTable<&'static str, &'static [u8]>);

impl KvRead for ReadKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .0
            .get(key)
            .map_err(backend)?
            .map(|v| v.value().to_vec()))
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        scan_table(&self.0, prefix).map_err(backend)
    }
}

impl Embedded {
    /// Opens or creates the store file at `path`.
    pub fn open(path: &Path) -> Result<Embedded, StoreError> {
        let db = Database::create(path).map_err(backend)?;
        // The table exists from the start, so reads never race its creation.
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(TABLE).map_err(backend)?;
        txn.commit().map_err(backend)?;
        let db = Arc::new(db);
        let (jobs, queue) = mpsc::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let writer = std::thread::Builder::new()
            .name("psd-store".into())
            .spawn({
                let db = db.clone();
                let commits = commits.clone();
                move || write_loop(&db, &queue, &commits, max_batch())
            })
            .map_err(backend)?;
        Ok(Embedded {
            db: Mutex::new(Some(db)),
            jobs: Mutex::new(Some(jobs)),
            writer: Mutex::new(Some(writer)),
            commits,
        })
    }

    /// Commits so far: fewer than writes when writes shared them.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Queues `f` for the writer now; the future answers once committed.
    fn write<T: Send + 'static>(
        &self,
        f: impl for<'t> FnOnce(&mut TableKv<'t>) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |kv| {
            let result = f(kv);
            Box::new(move |committed: Result<(), String>| {
                let _ = tx.send(committed.map_err(StoreError::Backend).and(result));
            })
        });
        let sent = self
            .jobs
            .lock()
            .expect("store lock")
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok());
        super::when_written(sent, rx)
    }

    /// Runs `f` in a read transaction on the blocking pool.
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadKv) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let db = self.db.lock().expect("store lock").clone();
        Box::pin(async move {
            let db = db.ok_or(StoreError::Closed)?;
            tokio::task::spawn_blocking(move || {
                let txn = db.begin_read().map_err(backend)?;
                let table = txn.open_table(TABLE).map_err(backend)?;
                f(&ReadKv(table))
            })
            .await
            .map_err(backend)?
        })
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop(db: &Database, queue: &mpsc::Receiver<Job>, commits: &AtomicU64, max_batch: usize) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match queue.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let (delivers, outcome) = apply(db, batch);
        if outcome.is_ok() {
            commits.fetch_add(1, Ordering::Relaxed);
        } else if let Err(e) = &outcome {
            tracing::error!("state store: a commit failed: {e}");
        }
        for deliver in delivers {
            deliver(outcome.clone());
        }
    }
}

/// Applies a batch in one transaction and commits it: each job's delivery,
/// and whether the commit happened.
fn apply(db: &Database, batch: Vec<Job>) -> (Vec<Deliver>, Result<(), String>) {
    let txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(e) => {
            let delivers = batch.into_iter().map(|_| -> Deliver { Box::new(|_| {}) });
            // Jobs never run: their senders drop, and each caller learns the
            // store failed (`Closed`).
            return (delivers.collect(), Err(e.to_string()));
        }
    };
    let mut delivers = Vec::with_capacity(batch.len());
    let failed = {
        let table = match txn.open_table(TABLE) {
            Ok(table) => table,
            Err(e) => return (vec![], Err(e.to_string())),
        };
        let mut kv = TableKv {
            table,
            failed: None,
        };
        for job in batch {
            delivers.push(job(&mut kv));
        }
        kv.failed
    };
    let outcome = match failed {
        Some(e) => {
            let _ = txn.abort();
            Err(e)
        }
        None => txn.commit().map_err(|e| e.to_string()),
    };
    (delivers, outcome)
}

impl Store for Embedded {
    fn session(
        &self,
        app: &str,
        id: &str,
    ) -> BoxFuture<'static, Result<Option<SessionRecord>, StoreError>> {
        let (app, id) = (app.to_string(), id.to_string());
        self.read(move |kv| ops::session(kv, &app, &id))
    }

    fn save(&self, record: SessionRecord) -> BoxFuture<'static, Result<(), StoreError>> {
        self.write(move |kv| ops::save(kv, &record))
    }

    fn forget(&self, app: &str, id: &str) -> BoxFuture<'static, Result<(), StoreError>> {
        let (app, id) = (app.to_string(), id.to_string());
        self.write(move |kv| ops::forget(kv, &app, &id).map(drop))
    }

    fn purge_expired(&self, now: u64) -> BoxFuture<'static, Result<usize, StoreError>> {
        self.write(move |kv| ops::purge_expired(kv, now))
    }

    fn retain_apps(&self, apps: Vec<String>) -> BoxFuture<'static, Result<usize, StoreError>> {
        self.write(move |kv| ops::retain_apps(kv, &apps))
    }

    fn sessions(&self) -> BoxFuture<'static, Result<Vec<SessionRecord>, StoreError>> {
        self.read(ops::sessions)
    }

    fn value(
        &self,
        space: &Space,
        key: &str,
    ) -> BoxFuture<'static, Result<Option<Value>, StoreError>> {
        let (space, key) = (space.clone(), key.to_string());
        self.read(move |kv| ops::value(kv, &space, &key))
    }

    fn keys(&self, space: &Space) -> BoxFuture<'static, Result<Vec<(String, u64)>, StoreError>> {
        let space = space.clone();
        self.read(move |kv| ops::keys(kv, &space))
    }

    fn sizes(&self, spaces: Vec<Space>) -> BoxFuture<'static, Result<Vec<u64>, StoreError>> {
        self.read(move |kv| spaces.iter().map(|space| ops::size(kv, space)).collect())
    }

    fn put(
        &self,
        space: &Space,
        key: &str,
        data: Vec<u8>,
        when: Condition,
        limit: u64,
    ) -> BoxFuture<'static, Result<Written, StoreError>> {
        let (space, key) = (space.clone(), key.to_string());
        self.write(move |kv| ops::put(kv, &space, &key, &data, when, limit))
    }

    fn delete(
        &self,
        space: &Space,
        key: &str,
        when: Condition,
    ) -> BoxFuture<'static, Result<Written, StoreError>> {
        let (space, key) = (space.clone(), key.to_string());
        self.write(move |kv| ops::delete(kv, &space, &key, when))
    }

    fn add(
        &self,
        space: &Space,
        key: &str,
        n: i64,
        limit: u64,
    ) -> BoxFuture<'static, Result<(Written, i64), StoreError>> {
        let (space, key) = (space.clone(), key.to_string());
        self.write(move |kv| ops::add(kv, &space, &key, n, limit))
    }

    fn close(&self) {
        // The writer finishes what was sent, then lets go of the file.
        drop(self.jobs.lock().expect("store lock").take());
        if let Some(writer) = self.writer.lock().expect("store lock").take() {
            let _ = writer.join();
        }
        drop(self.db.lock().expect("store lock").take());
    }
}
