//! Client connections as a resource: how many psd holds, from whom, and
//! how long one may hold a place while it asks for nothing.
//!
//! [`Census`] counts open connections overall (`MaxConnections`) and per
//! peer address (`MaxConnectionsPerClient`) and refuses new ones beyond
//! them at accept. [`Idle`] tracks one connection's requests in flight: a
//! connection with none is closed `RequestHeaderTimeout` after accept
//! (a client that never sends a byte, over plain HTTP, h2c or TLS) or
//! `KeepAliveTimeout` after its last response (an idle keep-alive or
//! HTTP/2 connection). hyper's own header timer bounds a request head once
//! its first byte is in. At `MaxConnections`, a new connection takes the
//! place of the oldest one with no request in flight, as Apache's event
//! MPM closes idle keep-alive connections under pressure: a flood of silent
//! connections cannot keep real clients out. This module never reads or
//! writes a byte of HTTP.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::body::Body;
use crate::mapper::client::{Held, PerClient};

/// Open connections, overall and per peer.
pub(crate) struct Census {
    open: AtomicUsize,
    per_peer: Arc<PerClient>,
    refusals: Throttle,
    /// Connections in the order they came: where an idle one to close is
    /// looked for when all places are taken.
    arrivals: Mutex<std::collections::VecDeque<std::sync::Weak<Idle>>>,
}

/// Connections looked at for one that can be closed, per new connection.
const EVICTION_SCAN: usize = 64;
/// A connection is closed to make room only once it has been idle this
/// long: a real client sends its request within milliseconds.
const EVICT_AFTER: Duration = Duration::from_secs(1);

/// Why a connection was refused at accept.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Total(usize),
    Peer(usize),
}

/// A counted connection; uncounted on drop.
pub(crate) struct Counted {
    census: Arc<Census>,
    _peer: Option<Held>,
}

impl Census {
    pub fn new() -> Arc<Census> {
        Arc::new(Census {
            open: AtomicUsize::new(0),
            per_peer: Arc::new(PerClient::default()),
            refusals: Throttle::new(Duration::from_secs(10)),
            arrivals: Mutex::new(std::collections::VecDeque::new()),
        })
    }

    /// Counts a new connection from `peer`, unless a limit is reached;
    /// `per_peer_max` is `None` for peers exempt from it (trusted proxies).
    pub fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
        idle: &Arc<Idle>,
        max: usize,
        per_peer_max: Option<usize>,
    ) -> Result<Counted, Refused> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= max && !self.evict_idle() {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(self.refused(Refused::Total(max), peer));
        }
        let mut counted = Counted {
            census: self.clone(),
            _peer: None,
        };
        if let Some(limit) = per_peer_max {
            let Some(held) = self.per_peer.take(peer, limit) else {
                drop(counted);
                return Err(self.refused(Refused::Peer(limit), peer));
            };
            counted._peer = Some(held);
        }
        let mut arrivals = self.arrivals.lock().expect("census lock");
        // Closed connections leave dead entries; sweep them now and then.
        if arrivals.len() > 2 * self.open.load(Ordering::Relaxed) + 1024 {
            arrivals.retain(|w| w.strong_count() > 0);
        }
        arrivals.push_back(Arc::downgrade(idle));
        Ok(counted)
    }

    /// Closes the oldest connection with no request in flight, if one is
    /// found among the next few; the new connection takes its place.
    fn evict_idle(&self) -> bool {
        let mut arrivals = self.arrivals.lock().expect("census lock");
        for _ in 0..EVICTION_SCAN {
            let Some(weak) = arrivals.pop_front() else {
                return false;
            };
            let Some(idle) = weak.upgrade() else {
                continue;
            };
            if idle.idle_for() >= EVICT_AFTER && !idle.evicted.swap(true, Ordering::Relaxed) {
                idle.close.notify_one();
                return true;
            }
            arrivals.push_back(weak);
        }
        false
    }

    fn refused(&self, why: Refused, peer: IpAddr) -> Refused {
        if let Some(more) = self.refusals.allow() {
            let what = match why {
                Refused::Total(n) => format!("MaxConnections ({n})"),
                Refused::Peer(n) => format!("MaxConnectionsPerClient ({n}) for {peer}"),
            };
            tracing::warn!("connection refused: {what} reached ({more} more refusals not logged)");
        }
        why
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// A connection's place in the census, shared with a WebSocket tunnel
/// that outlives the HTTP connection it came on (hyper hands the socket
/// off): the place is given back when both are gone.
#[derive(Clone)]
pub(crate) struct Place(#[allow(dead_code)] Arc<Counted>);

impl Place {
    pub fn new(counted: Counted) -> Place {
        Place(Arc::new(counted))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.census.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection's requests in flight, and since when it has had none.
pub(crate) struct Idle {
    in_flight: AtomicUsize,
    /// Told to close for a new connection at `MaxConnections`.
    close: tokio::sync::Notify,
    evicted: std::sync::atomic::AtomicBool,
    /// Milliseconds from `start` to when the last request ended.
    idle_since: AtomicU64,
    served: AtomicUsize,
    start: Instant,
}

impl Idle {
    pub fn new(accepted: Instant) -> Arc<Idle> {
        Arc::new(Idle {
            in_flight: AtomicUsize::new(0),
            close: tokio::sync::Notify::new(),
            evicted: std::sync::atomic::AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            served: AtomicUsize::new(0),
            start: accepted,
        })
    }

    /// How long the connection has had no request in flight (zero while
    /// one is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        self.idle_since().elapsed()
    }

    /// When the last request ended (or the connection was accepted).
    fn idle_since(&self) -> Instant {
        self.start + Duration::from_millis(self.idle_since.load(Ordering::Relaxed))
    }

    /// A request arrived; it is in flight until the guard drops (with its
    /// response body, once sent).
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves when the connection has had no request in flight for its
    /// limit (`first` before any request, `between` after one), or when it
    /// is closed to make room.
    pub async fn expired(&self, first: Duration, between: Duration) {
        tokio::select! {
            () = self.close.notified() => {}
            () = self.timed_out(first, between) => {}
        }
    }

    async fn timed_out(&self, first: Duration, between: Duration) {
        loop {
            if self.in_flight.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(between.max(Duration::from_millis(100))).await;
                continue;
            }
            let limit = if self.served.load(Ordering::Relaxed) == 0 {
                first
            } else {
                between
            };
            let deadline = self.idle_since() + limit;
            if Instant::now() >= deadline {
                return;
            }
            // A request may come and go meanwhile: the loop looks again.
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A request in flight on its connection.
pub(crate) struct InFlight(Arc<Idle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let idle = &self.0;
        let ms = idle.start.elapsed().as_millis() as u64;
        idle.idle_since.store(ms, Ordering::Relaxed);
        idle.served.fetch_add(1, Ordering::Relaxed);
        idle.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request in flight until it is sent or
/// dropped: the guard lives in the body's (never called) error mapping,
/// which keeps the body's length and end as they are.
pub(crate) fn hold(body: Body, in_flight: InFlight) -> Body {
    use http_body_util::BodyExt;
    body.map_err(move |e| {
        let _held = &in_flight;
        e
    })
    .boxed()
}

/// Lets a repeated log line through a few times per period, counting the
/// rest: a flood of them costs a counter, not the disk.
pub(crate) struct Throttle {
    every: Duration,
    /// When the current period began, and the lines let through in it.
    window: Mutex<Option<(std::time::Instant, u32)>>,
    suppressed: AtomicU64,
}

/// Lines let through per period.
const THROTTLE_BURST: u32 = 5;

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            window: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were
    /// held back before it.
    pub fn allow(&self) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut window = self.window.lock().expect("throttle lock");
        match &mut *window {
            Some((began, n)) if now.duration_since(*began) < self.every => {
                if *n >= THROTTLE_BURST {
                    self.suppressed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                *n += 1;
            }
            _ => *window = Some((now, 1)),
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_overall_and_per_peer() {
        let census = Census::new();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let busy = || {
            let idle = Idle::new(Instant::now());
            std::mem::forget(idle.enter());
            idle
        };
        let (i1, i2, i3, i4) = (busy(), busy(), busy(), busy());
        let a1 = census.admit(a, &i1, 3, Some(2)).unwrap();
        let _a2 = census.admit(a, &i2, 3, Some(2)).unwrap();
        assert_eq!(
            census.admit(a, &i3, 3, Some(2)).err(),
            Some(Refused::Peer(2))
        );
        let _b1 = census.admit(b, &i3, 3, Some(2)).unwrap();
        assert_eq!(
            census.admit(b, &i4, 3, None).err(),
            Some(Refused::Total(3)),
            "no idle connection to close"
        );
        drop(a1);
        assert_eq!(census.open(), 2);
        assert!(
            census.admit(a, &i4, 3, Some(2)).is_ok(),
            "a place came free"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_limit_the_oldest_idle_connection_makes_room() {
        let census = Census::new();
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let silent = Idle::new(Instant::now());
        let busy = Idle::new(Instant::now());
        let _request = busy.enter();
        let _s = census.admit(peer, &silent, 2, None).unwrap();
        let _b = census.admit(peer, &busy, 2, None).unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        let newcomer = Idle::new(Instant::now());
        assert!(census.admit(peer, &newcomer, 2, None).is_ok());
        let closed = tokio::time::timeout(
            Duration::from_secs(1),
            silent.expired(Duration::from_secs(60), Duration::from_secs(60)),
        )
        .await;
        assert!(closed.is_ok(), "the silent connection was told to close");
        let another = Idle::new(Instant::now());
        assert!(
            census.admit(peer, &another, 2, None).is_err(),
            "the busy one is not taken, nor the newcomer, not yet idle a second"
        );
    }

    #[test]
    fn throttle_lets_a_few_lines_through_per_period() {
        let t = Throttle::new(Duration::from_secs(60));
        for _ in 0..THROTTLE_BURST {
            assert_eq!(t.allow(), Some(0));
        }
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_expire_and_busy_ones_do_not() {
        let idle = Idle::new(Instant::now());
        let first = Duration::from_secs(20);
        let between = Duration::from_secs(15);
        let began = Instant::now();
        idle.expired(first, between).await;
        assert_eq!(began.elapsed(), first, "silent from accept");

        let idle = Idle::new(Instant::now());
        let request = idle.enter();
        let watch = tokio::spawn({
            let idle = idle.clone();
            async move { idle.expired(first, between).await }
        });
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!watch.is_finished(), "a long request keeps its connection");
        drop(request);
        let ended = Instant::now();
        watch.await.unwrap();
        assert!(ended.elapsed() >= between, "then the keep-alive timeout");
    }
}
