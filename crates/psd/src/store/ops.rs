//! What the store's operations mean, written once over a sorted key-value
//! map ([`Kv`]): the memory store applies them to a `BTreeMap`, the
//! embedded one to a redb table inside its write transaction.
//!
//! One keyspace, by prefix:
//! - `r NUL app NUL key`: a session's record (JSON);
//! - `v NUL space NUL key`: a value, its 8-byte version first;
//! - `z NUL space`: the bytes a space holds (for `MaxSessionState`);
//! - `c`: the last version handed out (versions are the values' ETags and
//!   never repeat, so a deleted and re-created value never matches an old one).

use super::{Condition, Refused, SessionRecord, Space, StoreError, Value, Written};

/// A sorted map of byte strings, read inside one transaction.
pub(super) trait KvRead {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
}

/// The same, written.
pub(super) trait Kv: KvRead {
    fn insert(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    fn remove(&mut self, key: &str) -> Result<bool, StoreError>;
}

pub(super) fn record_key(app: &str, key: &str) -> String {
    format!("r\0{app}\0{key}")
}

fn space_prefix(space: &Space) -> String {
    match space {
        Space::Session { app, key } => format!("s\0{app}\0{key}\0"),
        Space::Shared { app } => format!("a\0{app}\0"),
    }
}

fn value_key(space: &Space, key: &str) -> String {
    format!("v\0{}{key}", space_prefix(space))
}

fn size_key(space: &Space) -> String {
    format!("z\0{}", space_prefix(space))
}

fn decode_value(bytes: &[u8]) -> Value {
    let (version, data) = bytes.split_at(8.min(bytes.len()));
    let mut be = [0u8; 8];
    be[..version.len()].copy_from_slice(version);
    Value {
        version: u64::from_be_bytes(be),
        data: data.to_vec(),
    }
}

fn u64_at(kv: &impl KvRead, key: &str) -> Result<u64, StoreError> {
    Ok(kv
        .get(key)?
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

pub(super) fn session(
    kv: &impl KvRead,
    app: &str,
    key: &str,
) -> Result<Option<SessionRecord>, StoreError> {
    match kv.get(&record_key(app, key))? {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        None => Ok(None),
    }
}

pub(super) fn save(kv: &mut impl Kv, record: &SessionRecord) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(record)?;
    kv.insert(&record_key(&record.app, &record.key), &bytes)
}

/// Deletes a session's record and every value of its space.
pub(super) fn forget(kv: &mut impl Kv, app: &str, key: &str) -> Result<bool, StoreError> {
    let space = Space::Session {
        app: app.into(),
        key: key.into(),
    };
    for (key, _) in kv.scan(&format!("v\0{}", space_prefix(&space)))? {
        kv.remove(&key)?;
    }
    kv.remove(&size_key(&space))?;
    kv.remove(&record_key(app, key))
}

/// Forgets every session whose record meets `gone`; returns how many.
/// A record that cannot be read is left where it is.
fn forget_where(
    kv: &mut impl Kv,
    gone: impl Fn(&SessionRecord) -> bool,
) -> Result<usize, StoreError> {
    let mut doomed = vec![];
    for (_, bytes) in kv.scan("r\0")? {
        if let Ok(r) = serde_json::from_slice::<SessionRecord>(&bytes) {
            if gone(&r) {
                doomed.push((r.app, r.key));
            }
        }
    }
    for (app, key) in &doomed {
        forget(kv, app, key)?;
    }
    Ok(doomed.len())
}

pub(super) fn sessions(kv: &impl KvRead) -> Result<Vec<SessionRecord>, StoreError> {
    Ok(kv
        .scan("r\0")?
        .iter()
        .filter_map(|(_, bytes)| serde_json::from_slice(bytes).ok())
        .collect())
}

pub(super) fn purge_expired(kv: &mut impl Kv, now: u64) -> Result<usize, StoreError> {
    forget_where(kv, |r| r.expired_at(now))
}

/// Ends every session whose application is not one of `apps` (its
/// `<Location>` is gone); the applications' shared values stay.
pub(super) fn retain_apps(kv: &mut impl Kv, apps: &[String]) -> Result<usize, StoreError> {
    forget_where(kv, |r| !apps.contains(&r.app))
}

pub(super) fn value(
    kv: &impl KvRead,
    space: &Space,
    key: &str,
) -> Result<Option<Value>, StoreError> {
    Ok(kv.get(&value_key(space, key))?.map(|b| decode_value(&b)))
}

/// The keys of a space with their values' sizes, in key order.
pub(super) fn keys(kv: &impl KvRead, space: &Space) -> Result<Vec<(String, u64)>, StoreError> {
    let prefix = format!("v\0{}", space_prefix(space));
    Ok(kv
        .scan(&prefix)?
        .into_iter()
        .map(|(k, v)| {
            (
                k[prefix.len()..].to_string(),
                v.len().saturating_sub(8) as u64,
            )
        })
        .collect())
}

/// The bytes of all values in a space.
pub(super) fn size(kv: &impl KvRead, space: &Space) -> Result<u64, StoreError> {
    Ok(keys(kv, space)?.iter().map(|(_, size)| size).sum())
}

fn check(current: Option<&Value>, when: Condition) -> bool {
    match when {
        Condition::Always => true,
        Condition::Absent => current.is_none(),
        Condition::Present => current.is_some(),
        Condition::Version(v) => current.is_some_and(|c| c.version == v),
    }
}

/// Writes `data` under `key` if `when` holds and the space stays within
/// `limit` bytes.
pub(super) fn put(
    kv: &mut impl Kv,
    space: &Space,
    key: &str,
    data: &[u8],
    when: Condition,
    limit: u64,
) -> Result<Written, StoreError> {
    let current = value(kv, space, key)?;
    if !check(current.as_ref(), when) {
        return Ok(Written::Refused(Refused::Precondition));
    }
    let old = current.as_ref().map_or(0, |c| c.data.len() as u64);
    let total = u64_at(kv, &size_key(space))?;
    let next_total = total - old.min(total) + data.len() as u64;
    if next_total > limit {
        return Ok(Written::Refused(Refused::TooLarge));
    }
    let version = u64_at(kv, "c")? + 1;
    kv.insert("c", &version.to_be_bytes())?;
    let mut bytes = Vec::with_capacity(8 + data.len());
    bytes.extend_from_slice(&version.to_be_bytes());
    bytes.extend_from_slice(data);
    kv.insert(&value_key(space, key), &bytes)?;
    kv.insert(&size_key(space), &next_total.to_be_bytes())?;
    Ok(match current {
        Some(_) => Written::Replaced(version),
        None => Written::Created(version),
    })
}

/// Deletes `key` if `when` holds. `Replaced(0)`: it was there.
pub(super) fn delete(
    kv: &mut impl Kv,
    space: &Space,
    key: &str,
    when: Condition,
) -> Result<Written, StoreError> {
    let current = value(kv, space, key)?;
    if !check(current.as_ref(), when) {
        return Ok(Written::Refused(Refused::Precondition));
    }
    let Some(current) = current else {
        return Ok(Written::Refused(Refused::Missing));
    };
    let total = u64_at(kv, &size_key(space))?;
    let left = total.saturating_sub(current.data.len() as u64);
    kv.insert(&size_key(space), &left.to_be_bytes())?;
    kv.remove(&value_key(space, key))?;
    Ok(Written::Replaced(current.version))
}

/// Adds `n` to the decimal integer under `key` (0 when absent); the new
/// value is written as decimal text.
pub(super) fn add(
    kv: &mut impl Kv,
    space: &Space,
    key: &str,
    n: i64,
    limit: u64,
) -> Result<(Written, i64), StoreError> {
    let current = value(kv, space, key)?;
    let before = match &current {
        None => 0,
        Some(v) => match std::str::from_utf8(&v.data)
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
        {
            Some(x) => x,
            None => return Ok((Written::Refused(Refused::NotANumber), 0)),
        },
    };
    let Some(after) = before.checked_add(n) else {
        return Ok((Written::Refused(Refused::NotANumber), before));
    };
    let written = put(
        kv,
        space,
        key,
        after.to_string().as_bytes(),
        Condition::Always,
        limit,
    )?;
    Ok((written, after))
}
