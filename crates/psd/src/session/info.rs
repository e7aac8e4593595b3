//! What psd knows about each session, in one record: the admin API, metrics
//! and the state store all read it, and only the session's lifecycle
//! ([`super::lifecycle`]) changes its state.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::config::VirtualHost;

/// An application's identity: the host it is mounted on and its prefix.
/// It stays the same across reloads and restarts, so a session id signed
/// for it, and a record stored under it, stay valid.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AppKey(Arc<str>);

impl AppKey {
    /// The identity of the `<Location prefix>` of `vhost` (the main server
    /// when `None`).
    ///
    /// The encoding is part of every session id's MAC and of every stored
    /// record's key: changing it ends every existing session. A unit test
    /// pins it.
    pub fn new(vhost: Option<&VirtualHost>, prefix: &str) -> AppKey {
        AppKey(
            match vhost {
                Some(v) => {
                    let ip = v.ip.map_or("*".to_string(), |ip| ip.to_string());
                    let name = v.host.server_name.as_deref().unwrap_or("");
                    format!("{ip}:{} {name} {prefix}", v.port)
                }
                None => format!("main {prefix}"),
            }
            .into(),
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identity as a stored record names it.
    pub(crate) fn from_stored(name: &str) -> AppKey {
        AppKey(name.into())
    }
}

impl fmt::Display for AppKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AppKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppKey({:?})", &*self.0)
    }
}

/// A session's public name: a short hash of its application and key, so
/// that operators can name a session without holding its id (which is the
/// user's credential).
///
/// Its hex digits are kept inline: every live session has one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle([u8; Handle::LEN]);

impl Handle {
    /// Hex characters of the hash kept: 64 bits.
    const LEN: usize = 16;

    pub(crate) fn of(app: &AppKey, key: &str) -> Handle {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hash = Sha256::new();
        hash.update(app.as_str().as_bytes());
        hash.update([0]);
        hash.update(key.as_bytes());
        let digest = hash.finalize();
        let mut hex = [0u8; Self::LEN];
        for (pair, byte) in hex.chunks_exact_mut(2).zip(digest.iter()) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
        Handle(hex)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle({})", self.as_str())
    }
}

/// Where a session is in its life (DESIGN.md's admin states, plus the
/// moment of ending).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Its worker is starting.
    Starting,
    /// Its worker runs and no request is in it.
    Idle,
    /// A request is in it.
    Busy,
    /// No worker: before the first request, or after the worker stopped
    /// (idle timeout, crash, eviction, `stop`). The next request starts one.
    Dormant,
    /// It is ending; it will be gone in a moment.
    Stopping,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Starting => "starting",
            SessionState::Idle => "idle",
            SessionState::Busy => "busy",
            SessionState::Dormant => "dormant",
            SessionState::Stopping => "stopping",
        }
    }
}

/// One session, as the admin API shows it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub handle: Handle,
    pub app: AppKey,
    pub state: SessionState,
    pub created: SystemTime,
    /// When its last request ended (or it was created).
    pub last_active: SystemTime,
    pub requests: u64,
    /// The user it belongs to (`AuthType`), if any.
    pub user: Option<Arc<str>>,
    /// The worker process, while one runs.
    pub pid: Option<u32>,
    /// The address that created it.
    pub client: IpAddr,
}

/// The lifecycle's side of a session's record: what only its transitions
/// change. The door keeps the per-request side (requests, last activity)
/// where the requests already pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Dormant,
    Starting,
    Running,
    Stopping,
}

/// A session's record: fixed at creation, but for its phase, its worker's
/// pid, and whether the state store has it.
pub(crate) struct Record {
    pub handle: Handle,
    pub app: AppKey,
    pub created: SystemTime,
    pub client: IpAddr,
    /// The user it belongs to (`AuthType`, a trusted proxy's `X-Remote-User`).
    pub user: Option<Arc<str>>,
    now: Mutex<Now>,
}

struct Now {
    phase: Phase,
    pid: Option<u32>,
    /// Whether the store holds the session's record: always for a process
    /// session; for an in-process one, once resumed or once its application
    /// has written a value (one with nothing stored has nothing to resume).
    stored: bool,
}

impl Record {
    /// A new session's record; it starts in `phase` (`Dormant` for a
    /// process session, `Running` for an in-process one).
    pub fn new(
        app: &AppKey,
        key: &str,
        client: IpAddr,
        phase: Phase,
        created: SystemTime,
        user: Option<Arc<str>>,
    ) -> Arc<Record> {
        Arc::new(Record {
            handle: Handle::of(app, key),
            app: app.clone(),
            created,
            client,
            user,
            now: Mutex::new(Now {
                phase,
                pid: None,
                stored: false,
            }),
        })
    }

    /// Only the lifecycle's `transition()` calls this.
    pub fn set(&self, phase: Phase, pid: Option<u32>) {
        let mut now = self.now.lock().expect("record lock");
        (now.phase, now.pid) = (phase, pid);
    }

    pub fn phase(&self) -> (Phase, Option<u32>) {
        let now = self.now.lock().expect("record lock");
        (now.phase, now.pid)
    }

    pub fn stored(&self) -> bool {
        self.now.lock().expect("record lock").stored
    }

    pub fn mark_stored(&self) {
        self.now.lock().expect("record lock").stored = true;
    }

    /// Runs `f` unless the session is ending, holding off its end (and
    /// the store writes that come with it) until `f` returns; `f` learns
    /// whether the store has the session, and may say it has now.
    pub fn while_alive<T>(&self, f: impl FnOnce(&mut bool) -> T) -> Option<T> {
        let mut now = self.now.lock().expect("record lock");
        (now.phase != Phase::Stopping).then(|| f(&mut now.stored))
    }

    /// The session as the state store keeps it, last active at `last_active`.
    pub fn stored_as(
        &self,
        key: &str,
        id: &str,
        last_active: SystemTime,
        lifetime: Duration,
        node: &str,
    ) -> crate::store::SessionRecord {
        use crate::store::unix_ms;
        crate::store::SessionRecord {
            app: self.app.as_str().into(),
            key: key.into(),
            id: id.into(),
            created: unix_ms(self.created),
            last_active: unix_ms(last_active),
            expires: unix_ms(self.created + lifetime),
            node: node.into(),
            user: self.user.as_deref().map(String::from),
        }
    }

    /// When the session was last active, as wall-clock time, from how long
    /// it has been idle (the door keeps that on a monotonic clock).
    pub fn last_active(&self, idle: Duration) -> SystemTime {
        SystemTime::now()
            .checked_sub(idle)
            .unwrap_or(self.created)
            .max(self.created)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored sessions and issued ids depend on this encoding: a change
    /// here would orphan them all.
    #[test]
    fn app_keys_keep_their_encoding() {
        assert_eq!(AppKey::new(None, "/app").as_str(), "main /app");
        let vhost = VirtualHost {
            ip: None,
            port: 8080,
            host: crate::config::Host {
                server_name: Some("a.example".into()),
                ..Default::default()
            },
            at: psd_conf::Location {
                file: std::path::Path::new("t.conf").into(),
                line: 1,
            },
        };
        assert_eq!(
            AppKey::new(Some(&vhost), "/").as_str(),
            "*:8080 a.example /"
        );
    }

    #[test]
    fn handles_are_short_stable_and_do_not_show_the_id() {
        let app = AppKey::new(None, "/");
        let h = Handle::of(&app, "id=SECRET\n");
        assert_eq!(h.as_str().len(), 16);
        assert_eq!(h, Handle::of(&app, "id=SECRET\n"));
        assert_ne!(h, Handle::of(&AppKey::new(None, "/x"), "id=SECRET\n"));
        assert!(!h.as_str().contains("SECRET"));
    }
}
