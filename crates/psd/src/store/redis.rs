//! `StateStore redis://HOST:PORT/DB`: records and values in a Redis server,
//! so that several psd nodes can share them (the cluster's store).
//!
//! Each operation is one command or one Lua script, so it is atomic in
//! Redis; a write answered by Redis is acknowledged. Writes go through one
//! task in call order (the trait's promise), reads go straight. The
//! connection is made on first use and remade by itself after Redis went
//! away; while it is down, [`Store::ready`] says so and the registry answers
//! requests that need the store with 503.
//!
//! Keys: `psd:records` (a hash, `app NUL key` → the record as JSON),
//! `psd:expiry` (a sorted set of the same members by expiry), and for each
//! space (see [`super::ops`] for its name) `psd:v:SPACE` (values),
//! `psd:e:SPACE` (their versions) and `psd:z:SPACE` (its bytes); `psd:c`
//! hands out versions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot, OnceCell};

use super::{Condition, Refused, SessionRecord, Space, Store, StoreError, Value, Written};

const RECORDS: &str = "psd:records";
const EXPIRY: &str = "psd:expiry";
const COUNTER: &str = "psd:c";

/// Deletes one session (ARGV[1], `app NUL key`) and its space.
const FORGET_ONE: &str = r#"
local function forget(m)
  redis.call('HDEL', KEYS[1], m)
  redis.call('ZREM', KEYS[2], m)
  local s = 's\0' .. m .. '\0'
  redis.call('DEL', 'psd:v:' .. s, 'psd:e:' .. s, 'psd:z:' .. s)
end
"#;

const FORGET: &str = r#"forget(ARGV[1]) return 1"#;

const PURGE: &str = r#"
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, m in ipairs(gone) do forget(m) end
return #gone
"#;

const RETAIN: &str = r#"
local keep = {}
for i = 1, #ARGV do keep[ARGV[i]] = true end
local n = 0
for _, m in ipairs(redis.call('HKEYS', KEYS[1])) do
  local app = string.match(m, '^([^%z]*)')
  if not keep[app] then forget(m) n = n + 1 end
end
return n
"#;

/// Checks a condition against the current version `cur` (false if absent).
const CHECK: &str = r#"
local function holds(cur, kind, want)
  if kind == 'absent' then return not cur end
  if kind == 'present' then return cur and true or false end
  if kind == 'version' then return cur == want end
  return true
end
local function store(field, data, limit)
  local old = redis.call('HSTRLEN', KEYS[1], field)
  local total = tonumber(redis.call('GET', KEYS[3]) or '0')
  local after = total - old + string.len(data)
  if after > tonumber(limit) then return nil end
  local v = redis.call('INCR', KEYS[4])
  redis.call('HSET', KEYS[1], field, data)
  redis.call('HSET', KEYS[2], field, v)
  redis.call('SET', KEYS[3], after)
  return v
end
"#;

/// PUT: ARGV = field, data, condition kind, wanted version, limit.
/// {1|2, version} created/replaced, {3} precondition, {4} too large.
const PUT: &str = r#"
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if not holds(cur, ARGV[3], ARGV[4]) then return {3, 0} end
local v = store(ARGV[1], ARGV[2], ARGV[5])
if not v then return {4, 0} end
if cur then return {2, v} end
return {1, v}
"#;

/// DELETE: ARGV = field, condition kind, wanted version.
const DELETE: &str = r#"
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if not holds(cur, ARGV[2], ARGV[3]) then return {3, 0} end
if not cur then return {5, 0} end
local old = redis.call('HSTRLEN', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('DECRBY', KEYS[3], old)
return {2, tonumber(cur)}
"#;

/// ADD: ARGV = field, n, limit. {code, version, sum}; 6: not a number.
const ADD: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local n = 0
if cur then
  n = tonumber(cur)
  if not n or n ~= math.floor(n) then return {6, 0, 0} end
end
local sum = n + tonumber(ARGV[2])
local existed = redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
local v = store(ARGV[1], string.format('%d', sum), ARGV[3])
if not v then return {4, 0, 0} end
if existed then return {2, v, sum} end
return {1, v, sum}
"#;

/// GET: the value and its version, or nothing.
const GET: &str = r#"
local data = redis.call('HGET', KEYS[1], ARGV[1])
if not data then return {} end
return {data, redis.call('HGET', KEYS[2], ARGV[1])}
"#;

struct Scripts {
    forget: redis::Script,
    purge: redis::Script,
    retain: redis::Script,
    put: redis::Script,
    delete: redis::Script,
    add: redis::Script,
    get: redis::Script,
}

impl Scripts {
    fn new() -> Scripts {
        let with_forget = |s: &str| redis::Script::new(&format!("{FORGET_ONE}{s}"));
        let with_check = |s: &str| redis::Script::new(&format!("{CHECK}{s}"));
        Scripts {
            forget: with_forget(FORGET),
            purge: with_forget(PURGE),
            retain: with_forget(RETAIN),
            put: with_check(PUT),
            delete: with_check(DELETE),
            add: with_check(ADD),
            get: redis::Script::new(GET),
        }
    }
}

type Job = Box<dyn FnOnce(Result<ConnectionManager, StoreError>) -> BoxFuture<'static, ()> + Send>;

struct Shared {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    up: AtomicBool,
    scripts: Scripts,
}

pub struct Redis {
    shared: Arc<Shared>,
    jobs: mpsc::UnboundedSender<Job>,
    /// Taken by the first write, which starts the writer task.
    queue: Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn member(app: &str, key: &str) -> String {
    format!("{app}\0{key}")
}

/// The keys of a space's values, versions and size, and the counter.
fn space_keys(space: &Space) -> [String; 4] {
    let name = match space {
        Space::Session { app, key } => format!("s\0{app}\0{key}\0"),
        Space::Shared { app } => format!("a\0{app}\0"),
    };
    [
        format!("psd:v:{name}"),
        format!("psd:e:{name}"),
        format!("psd:z:{name}"),
        COUNTER.to_string(),
    ]
}

/// `script` invoked on a space's keys (see [`space_keys`]).
fn on_space<'s>(script: &'s redis::Script, keys: &[String; 4]) -> redis::ScriptInvocation<'s> {
    let mut invocation = script.key(&keys[0]);
    invocation.key(&keys[1]).key(&keys[2]).key(&keys[3]);
    invocation
}

fn condition(when: Condition) -> (&'static str, String) {
    match when {
        Condition::Always => ("always", String::new()),
        Condition::Absent => ("absent", String::new()),
        Condition::Present => ("present", String::new()),
        Condition::Version(v) => ("version", v.to_string()),
    }
}

fn written(code: i64, version: u64) -> Written {
    match code {
        1 => Written::Created(version),
        2 => Written::Replaced(version),
        3 => Written::Refused(Refused::Precondition),
        4 => Written::Refused(Refused::TooLarge),
        5 => Written::Refused(Refused::Missing),
        _ => Written::Refused(Refused::NotANumber),
    }
}

impl Shared {
    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let conn = self
            .conn
            .get_or_try_init(|| self.client.get_connection_manager())
            .await
            .map_err(|e| self.failed(e))?;
        Ok(conn.clone())
    }

    /// Notes a failure; connection failures mark the store down.
    fn failed(&self, e: redis::RedisError) -> StoreError {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
        {
            self.up.store(false, Ordering::Relaxed);
        }
        backend(e)
    }

    fn answered<T>(&self, r: redis::RedisResult<T>) -> Result<T, StoreError> {
        match r {
            Ok(v) => {
                self.up.store(true, Ordering::Relaxed);
                Ok(v)
            }
            Err(e) => Err(self.failed(e)),
        }
    }
}

impl Redis {
    /// A store at `url`; it connects on first use.
    pub fn open(url: &str) -> Result<Redis, StoreError> {
        let client = redis::Client::open(url).map_err(backend)?;
        let (jobs, queue) = mpsc::unbounded_channel();
        Ok(Redis {
            shared: Arc::new(Shared {
                client,
                conn: OnceCell::new(),
                up: AtomicBool::new(true),
                scripts: Scripts::new(),
            }),
            jobs,
            queue: Mutex::new(Some(queue)),
        })
    }

    /// Queues `f` for the writer task now; the future answers with its result.
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(Arc<Shared>, ConnectionManager) -> BoxFuture<'static, Result<T, StoreError>>
            + Send
            + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        if let Some(mut queue) = self.queue.lock().expect("store lock").take() {
            let shared = self.shared.clone();
            tokio::spawn(async move {
                while let Some(job) = queue.recv().await {
                    let conn = shared.connection().await;
                    job(conn).await;
                }
            });
        }
        let (tx, rx) = oneshot::channel();
        let shared = self.shared.clone();
        let job: Job = Box::new(move |conn| {
            Box::pin(async move {
                let result = match conn {
                    Ok(conn) => f(shared, conn).await,
                    Err(e) => Err(e),
                };
                let _ = tx.send(result);
            })
        });
        super::when_written(self.jobs.send(job).is_ok(), rx)
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(Arc<Shared>, ConnectionManager) -> BoxFuture<'static, Result<T, StoreError>>
            + Send
            + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let conn = shared.connection().await?;
            f(shared, conn).await
        })
    }
}

impl Store for Redis {
    fn session(
        &self,
        app: &str,
        key: &str,
    ) -> BoxFuture<'static, Result<Option<SessionRecord>, StoreError>> {
        let m = member(app, key);
        self.read(move |shared, mut conn| {
            Box::pin(async move {
                let json: Option<Vec<u8>> = shared.answered(
                    redis::cmd("HGET")
                        .arg(RECORDS)
                        .arg(&m)
                        .query_async(&mut conn)
                        .await,
                )?;
                Ok(match json {
                    Some(json) => Some(serde_json::from_slice(&json)?),
                    None => None,
                })
            })
        })
    }

    fn save(&self, record: SessionRecord) -> BoxFuture<'static, Result<(), StoreError>> {
        self.write(move |shared, mut conn| {
            Box::pin(async move {
                let m = member(&record.app, &record.key);
                let json = serde_json::to_vec(&record)?;
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("HSET")
                    .arg(RECORDS)
                    .arg(&m)
                    .arg(json)
                    .ignore()
                    .cmd("ZADD")
                    .arg(EXPIRY)
                    .arg(record.expires as f64)
                    .arg(&m)
                    .ignore();
                shared.answered(pipe.query_async::<()>(&mut conn).await)
            })
        })
    }

    fn forget(&self, app: &str, key: &str) -> BoxFuture<'static, Result<(), StoreError>> {
        let m = member(app, key);
        self.write(move |shared, mut conn| {
            Box::pin(async move {
                let r = shared
                    .scripts
                    .forget
                    .key(RECORDS)
                    .key(EXPIRY)
                    .arg(&m)
                    .invoke_async::<i64>(&mut conn)
                    .await;
                shared.answered(r).map(drop)
            })
        })
    }

    fn purge_expired(&self, now: u64) -> BoxFuture<'static, Result<usize, StoreError>> {
        self.write(move |shared, mut conn| {
            Box::pin(async move {
                let r = shared
                    .scripts
                    .purge
                    .key(RECORDS)
                    .key(EXPIRY)
                    .arg(now as f64)
                    .invoke_async::<i64>(&mut conn)
                    .await;
                shared.answered(r).map(|n| n as usize)
            })
        })
    }

    fn sessions(&self) -> BoxFuture<'static, Result<Vec<SessionRecord>, StoreError>> {
        self.read(move |shared, mut conn| {
            Box::pin(async move {
                let all: Vec<Vec<u8>> = shared.answered(
                    redis::cmd("HVALS")
                        .arg(RECORDS)
                        .query_async(&mut conn)
                        .await,
                )?;
                Ok(all
                    .iter()
                    .filter_map(|json| serde_json::from_slice(json).ok())
                    .collect())
            })
        })
    }

    fn retain_apps(&self, apps: Vec<String>) -> BoxFuture<'static, Result<usize, StoreError>> {
        self.write(move |shared, mut conn| {
            Box::pin(async move {
                let mut invocation = shared.scripts.retain.key(RECORDS);
                invocation.key(EXPIRY);
                for app in &apps {
                    invocation.arg(app);
                }
                let r = invocation.invoke_async::<i64>(&mut conn).await;
                shared.answered(r).map(|n| n as usize)
            })
        })
    }

    fn value(
        &self,
        space: &Space,
        key: &str,
    ) -> BoxFuture<'static, Result<Option<Value>, StoreError>> {
        let [values, versions, ..] = space_keys(space);
        let key = key.to_string();
        self.read(move |shared, mut conn| {
            Box::pin(async move {
                let r = shared
                    .scripts
                    .get
                    .key(&values)
                    .key(&versions)
                    .arg(&key)
                    .invoke_async::<Vec<Vec<u8>>>(&mut conn)
                    .await;
                let got = shared.answered(r)?;
                Ok(match got.as_slice() {
                    [data, version] => Some(Value {
                        data: data.clone(),
                        version: std::str::from_utf8(version)
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0),
                    }),
                    _ => None,
                })
            })
        })
    }

    fn keys(&self, space: &Space) -> BoxFuture<'static, Result<Vec<(String, u64)>, StoreError>> {
        let [values, ..] = space_keys(space);
        self.read(move |shared, mut conn| {
            Box::pin(async move {
                let all: Vec<(String, Vec<u8>)> = shared.answered(
                    redis::cmd("HGETALL")
                        .arg(&values)
                        .query_async(&mut conn)
                        .await,
                )?;
                let mut keys: Vec<(String, u64)> =
                    all.into_iter().map(|(k, v)| (k, v.len() as u64)).collect();
                keys.sort();
                Ok(keys)
            })
        })
    }

    fn put(
        &self,
        space: &Space,
        key: &str,
        data: Vec<u8>,
        when: Condition,
        limit: u64,
    ) -> BoxFuture<'static, Result<Written, StoreError>> {
        let keys = space_keys(space);
        let key = key.to_string();
        self.write(move |shared, mut conn| {
            Box::pin(async move {
                let (kind, want) = condition(when);
                let mut invocation = on_space(&shared.scripts.put, &keys);
                invocation
                    .arg(&key)
                    .arg(data)
                    .arg(kind)
                    .arg(want)
                    .arg(limit);
                let (code, version): (i64, u64) =
                    shared.answered(invocation.invoke_async(&mut conn).await)?;
                Ok(written(code, version))
            })
        })
    }

    fn delete(
        &self,
        space: &Space,
        key: &str,
        when: Condition,
    ) -> BoxFuture<'static, Result<Written, StoreError>> {
        let keys = space_keys(space);
        let key = key.to_string();
        self.write(move |shared, mut conn| {
            Box::pin(async move {
                let (kind, want) = condition(when);
                let mut invocation = on_space(&shared.scripts.delete, &keys);
                invocation.arg(&key).arg(kind).arg(want);
                let (code, version): (i64, u64) =
                    shared.answered(invocation.invoke_async(&mut conn).await)?;
                Ok(written(code, version))
            })
        })
    }

    fn add(
        &self,
        space: &Space,
        key: &str,
        n: i64,
        limit: u64,
    ) -> BoxFuture<'static, Result<(Written, i64), StoreError>> {
        let keys = space_keys(space);
        let key = key.to_string();
        self.write(move |shared, mut conn| {
            Box::pin(async move {
                let mut invocation = on_space(&shared.scripts.add, &keys);
                invocation.arg(&key).arg(n).arg(limit);
                let (code, version, sum): (i64, u64, i64) =
                    shared.answered(invocation.invoke_async(&mut conn).await)?;
                Ok((written(code, version), sum))
            })
        })
    }

    fn ready(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        if self.shared.up.load(Ordering::Relaxed) {
            return Box::pin(std::future::ready(Ok(())));
        }
        self.read(|shared, mut conn| {
            Box::pin(async move {
                shared.answered(redis::cmd("PING").query_async::<()>(&mut conn).await)
            })
        })
    }
}
