//! `StateStore embedded`: one redb file, durable, with group commit.
//!
//! Writes go to one writer thread through a channel. It takes every write
//! waiting, applies them all in one transaction and commits once (one
//! fsync), then answers each: under load, many writes share an fsync; alone,
//! a write is committed at once. A write is answered only once committed, so
//! whatever was answered survives a kill -9 of psd. Reads run beside it on
//! the blocking pool, each in its own read transaction.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use futures_util::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::{SessionRecord, Store, StoreError};

/// Session records by `app NUL id`, as JSON.
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");

/// Writes applied in one commit at most.
const MAX_BATCH: usize = 1024;

enum Op {
    Save(SessionRecord),
    Forget(String, String),
    Purge(u64),
}

struct Write {
    op: Op,
    done: oneshot::Sender<Result<usize, StoreError>>,
}

pub struct Embedded {
    db: Arc<Database>,
    writes: Mutex<Option<mpsc::Sender<Write>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    commits: Arc<AtomicU64>,
}

fn key(app: &str, id: &str) -> String {
    format!("{app}\0{id}")
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl Embedded {
    /// Opens or creates the store file at `path`.
    pub fn open(path: &Path) -> Result<Embedded, StoreError> {
        let db = Database::create(path).map_err(backend)?;
        // The table exists from the start, so reads never race its creation.
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(SESSIONS).map_err(backend)?;
        txn.commit().map_err(backend)?;
        let db = Arc::new(db);
        let (writes, queue) = mpsc::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let writer = std::thread::Builder::new()
            .name("psd-store".into())
            .spawn({
                let db = db.clone();
                let commits = commits.clone();
                move || write_loop(&db, &queue, &commits)
            })
            .map_err(backend)?;
        Ok(Embedded {
            db,
            writes: Mutex::new(Some(writes)),
            writer: Mutex::new(Some(writer)),
            commits,
        })
    }

    /// Commits so far: fewer than writes when writes shared them.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn write(&self, op: Op) -> BoxFuture<'static, Result<usize, StoreError>> {
        let (done, answer) = oneshot::channel();
        let sent = self
            .writes
            .lock()
            .expect("store lock")
            .as_ref()
            .map(|w| w.send(Write { op, done }).is_ok());
        Box::pin(async move {
            if sent != Some(true) {
                return Err(StoreError::Closed);
            }
            answer.await.unwrap_or(Err(StoreError::Closed))
        })
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        // The writer finishes what was sent, then closes the file.
        drop(self.writes.lock().expect("store lock").take());
        if let Some(writer) = self.writer.lock().expect("store lock").take() {
            let _ = writer.join();
        }
    }
}

fn write_loop(db: &Database, queue: &mpsc::Receiver<Write>, commits: &AtomicU64) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        match apply(db, &batch) {
            Ok(results) => {
                commits.fetch_add(1, Ordering::Relaxed);
                for (write, result) in batch.into_iter().zip(results) {
                    let _ = write.done.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::error!("state store: a commit failed: {e}");
                for write in batch {
                    let _ = write.done.send(Err(backend(&e)));
                }
            }
        }
    }
}

/// Applies a batch in one transaction; the result of each write.
fn apply(db: &Database, batch: &[Write]) -> Result<Vec<usize>, redb::Error> {
    let txn = db.begin_write()?;
    let mut results = Vec::with_capacity(batch.len());
    {
        let mut table = txn.open_table(SESSIONS)?;
        for write in batch {
            results.push(match &write.op {
                Op::Save(record) => {
                    let value = serde_json::to_vec(record).expect("records serialize");
                    table.insert(key(&record.app, &record.id).as_str(), value.as_slice())?;
                    1
                }
                Op::Forget(app, id) => usize::from(table.remove(key(app, id).as_str())?.is_some()),
                Op::Purge(now) => {
                    let mut expired = vec![];
                    for entry in table.iter()? {
                        let (k, v) = entry?;
                        let record: Result<SessionRecord, _> = serde_json::from_slice(v.value());
                        if record.map_or(true, |r| r.expired_at(*now)) {
                            expired.push(k.value().to_string());
                        }
                    }
                    for k in &expired {
                        table.remove(k.as_str())?;
                    }
                    expired.len()
                }
            });
        }
    }
    txn.commit()?;
    Ok(results)
}

impl Store for Embedded {
    fn session<'a>(
        &'a self,
        app: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>> {
        let db = self.db.clone();
        let key = key(app, id);
        Box::pin(async move {
            let bytes = tokio::task::spawn_blocking(move || -> Result<_, redb::Error> {
                let txn = db.begin_read()?;
                let table = txn.open_table(SESSIONS)?;
                Ok(table.get(key.as_str())?.map(|v| v.value().to_vec()))
            })
            .await
            .map_err(backend)?
            .map_err(backend)?;
            Ok(match bytes {
                Some(bytes) => Some(serde_json::from_slice(&bytes)?),
                None => None,
            })
        })
    }

    fn save(&self, record: SessionRecord) -> BoxFuture<'static, Result<(), StoreError>> {
        let write = self.write(Op::Save(record));
        Box::pin(async move { write.await.map(drop) })
    }

    fn forget(&self, app: &str, id: &str) -> BoxFuture<'static, Result<(), StoreError>> {
        let write = self.write(Op::Forget(app.into(), id.into()));
        Box::pin(async move { write.await.map(drop) })
    }

    fn purge_expired(&self, now: u64) -> BoxFuture<'static, Result<usize, StoreError>> {
        self.write(Op::Purge(now))
    }
}
