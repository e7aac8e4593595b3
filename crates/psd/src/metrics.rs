//! What psd counts for `/metrics`: kept in atomics where it happens, read
//! by a `prometheus-client` collector at scrape time.
//!
//! A request adds to its application's counters through the
//! [`AppMetrics`] its mount holds: no map lookup and no lock on the hot
//! path (the per-application map is touched when a configuration is
//! routed, a worker starts, or a scrape runs). Gauges that describe the
//! sessions (how many in each state, their state bytes) are computed when
//! scraped, from the registry.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use crate::session::AppKey;
use crate::store::{Answer, Condition, SessionRecord, Space, Store, Value, Written};

/// Upper bounds of the request duration buckets, in seconds.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Worker starts: from a fork-and-exec to a slow interpreter.
const SPAWN_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// State store operations: memory, an fsync, a Redis round trip.
const STORE_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A histogram of durations in fixed buckets, lock-free.
struct Histogram {
    bounds: &'static [f64],
    /// Upper bounds in nanoseconds, for the comparison on the hot path.
    bounds_ns: Vec<u64>,
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            bounds_ns: bounds.iter().map(|b| (b * 1e9) as u64).collect(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self
            .bounds_ns
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Sum in seconds, count, and each bucket's own count (the encoder
    /// makes them cumulative), as the encoder wants.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, count) in self.counts.iter().enumerate() {
            let count = count.load(Relaxed);
            total += count;
            buckets.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), count));
        }
        (self.sum_ns.load(Relaxed) as f64 / 1e9, total, buckets)
    }

    fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// Why a worker process stopped: `psd_worker_exits_total{cause}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitCause {
    /// It exited by itself: a crash, a limit, php-cgi's request count.
    Exited,
    /// Its session was idle for `SessionTimeout`.
    Idle,
    /// Its place went to a new session under `MaxSessions`.
    Evicted,
    /// An operator stopped it (`stop`, `drain`).
    Stopped,
    /// Its session ended (reaped, past its lifetime, an operator's `end`).
    Ended,
    /// psd shut down.
    Shutdown,
}

impl ExitCause {
    const ALL: [ExitCause; 6] = [
        ExitCause::Exited,
        ExitCause::Idle,
        ExitCause::Evicted,
        ExitCause::Stopped,
        ExitCause::Ended,
        ExitCause::Shutdown,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ExitCause::Exited => "exited",
            ExitCause::Idle => "idle",
            ExitCause::Evicted => "evicted",
            ExitCause::Stopped => "stopped",
            ExitCause::Ended => "ended",
            ExitCause::Shutdown => "shutdown",
        }
    }
}

/// Status codes psd counts one by one; anything else counts as its class.
const STATUSES: std::ops::Range<u16> = 100..600;

/// One application's counters.
pub(crate) struct AppMetrics {
    /// The `app` label: the `<Location>` prefix, with its virtual host.
    label: Arc<str>,
    /// Requests answered, by status code (index: code - 100).
    requests: Vec<AtomicU64>,
    duration: Histogram,
    spawns: AtomicU64,
    spawn_failures: AtomicU64,
    spawn_duration: Histogram,
    exits: [AtomicU64; ExitCause::ALL.len()],
    /// Requests counted at the last [`Metrics::sample_rates`].
    sampled: AtomicU64,
    /// Requests per second over recent sample periods, oldest first.
    rates: Mutex<std::collections::VecDeque<f64>>,
}

impl AppMetrics {
    fn new(label: Arc<str>) -> AppMetrics {
        AppMetrics {
            label,
            requests: STATUSES.map(|_| AtomicU64::new(0)).collect(),
            duration: Histogram::new(REQUEST_BUCKETS),
            spawns: AtomicU64::new(0),
            spawn_failures: AtomicU64::new(0),
            spawn_duration: Histogram::new(SPAWN_BUCKETS),
            exits: Default::default(),
            sampled: AtomicU64::new(0),
            rates: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// A request answered with `status` after `took` (to its response head).
    pub fn request(&self, status: u16, took: Duration) {
        let i = usize::from(status.clamp(STATUSES.start, STATUSES.end - 1) - STATUSES.start);
        self.requests[i].fetch_add(1, Relaxed);
        self.duration.observe(took);
    }

    /// A worker started in `took`, or failed to.
    pub fn spawn(&self, took: Duration, ok: bool) {
        if ok {
            self.spawns.fetch_add(1, Relaxed);
            self.spawn_duration.observe(took);
        } else {
            self.spawn_failures.fetch_add(1, Relaxed);
        }
    }

    pub fn exit(&self, cause: ExitCause) {
        self.exits[cause as usize].fetch_add(1, Relaxed);
    }

    /// Requests answered so far, all statuses.
    pub fn requests_total(&self) -> u64 {
        self.duration.count()
    }

    /// Workers started so far.
    pub fn spawns_total(&self) -> u64 {
        self.spawns.load(Relaxed)
    }

    /// Requests per second over the recent sample periods, oldest first.
    pub fn rates(&self) -> Vec<f64> {
        self.rates
            .lock()
            .expect("rates lock")
            .iter()
            .copied()
            .collect()
    }
}

/// Samples of the request rate kept per application (at [`RATE_PERIOD`],
/// ten minutes).
pub(crate) const RATE_SAMPLES: usize = 120;
pub(crate) const RATE_PERIOD: Duration = Duration::from_secs(5);

/// State store operations timed, in `op` label order.
const STORE_OPS: [&str; 13] = [
    "session", "save", "forget", "purge", "retain", "get", "keys", "put", "delete", "add", "ready",
    "sizes", "sessions",
];

/// Everything psd counts.
pub(crate) struct Metrics {
    apps: Mutex<HashMap<AppKey, Arc<AppMetrics>>>,
    /// Requests that matched no `<Location>` (404s).
    unrouted: Arc<AppMetrics>,
    store: Vec<Histogram>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics {
            apps: Mutex::new(HashMap::new()),
            unrouted: Arc::new(AppMetrics::new("".into())),
            store: STORE_OPS
                .iter()
                .map(|_| Histogram::new(STORE_BUCKETS))
                .collect(),
        })
    }

    /// The counters of `app` (made on first use; they outlive reloads).
    pub fn app(&self, app: &AppKey) -> Arc<AppMetrics> {
        let mut apps = self.apps.lock().expect("metrics lock");
        apps.entry(app.clone())
            .or_insert_with(|| Arc::new(AppMetrics::new(app.as_str().into())))
            .clone()
    }

    /// The counters of requests no application took.
    pub fn unrouted(&self) -> &Arc<AppMetrics> {
        &self.unrouted
    }

    /// Every application counted so far, by label.
    pub fn apps(&self) -> Vec<Arc<AppMetrics>> {
        let mut apps: Vec<_> = self
            .apps
            .lock()
            .expect("metrics lock")
            .values()
            .cloned()
            .collect();
        apps.sort_by(|a, b| a.label.cmp(&b.label));
        apps
    }

    /// Takes one request-rate sample per application; `period` is the time
    /// since the last one.
    pub fn sample_rates(&self, period: Duration) {
        for app in self.apps() {
            let total = app.requests_total();
            let before = app.sampled.swap(total, Relaxed);
            let rate = total.saturating_sub(before) as f64 / period.as_secs_f64().max(1e-3);
            let mut rates = app.rates.lock().expect("rates lock");
            if rates.len() == RATE_SAMPLES {
                rates.pop_front();
            }
            rates.push_back(rate);
        }
    }

    /// Wraps `store` so that each operation's latency is observed.
    pub fn timed(self: &Arc<Self>, store: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(Timed {
            inner: store,
            metrics: self.clone(),
        })
    }

    /// The exposition, in the OpenMetrics text format.
    pub fn encode(self: &Arc<Self>, sessions: SessionGauges) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Scrape {
            metrics: self.clone(),
            sessions,
        }));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Gauges computed from the registry at scrape time.
#[derive(Debug, Default)]
pub(crate) struct SessionGauges {
    /// Sessions by application and state.
    pub sessions: Vec<(String, &'static str, u64)>,
    /// State bytes of live sessions, by application.
    pub state_bytes: Vec<(String, u64)>,
    pub max_sessions: u64,
    pub worker_rss_bytes: u64,
}

struct Scrape {
    metrics: Arc<Metrics>,
    sessions: SessionGauges,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

type Labels = Vec<(&'static str, String)>;

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, u64)],
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        metric
            .encode_family(labels)?
            .encode_counter::<Labels, _, u64>(v, None)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, i64)],
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        match labels.is_empty() {
            true => metric.encode_gauge(v)?,
            false => metric.encode_family(labels)?.encode_gauge(v)?,
        }
    }
    Ok(())
}

fn histogram<'h>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (Labels, &'h Histogram)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in samples {
        let (sum, count, buckets) = h.snapshot();
        metric
            .encode_family(&labels)?
            .encode_histogram::<Labels>(sum, count, &buckets, None)?;
    }
    Ok(())
}

fn app_label(app: &AppMetrics) -> Labels {
    vec![("app", app.label.to_string())]
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut apps = self.metrics.apps();
        let routed = apps.len();
        apps.push(self.metrics.unrouted.clone());
        let mut requests = vec![];
        for app in &apps {
            for (i, n) in app.requests.iter().enumerate() {
                let n = n.load(Relaxed);
                if n > 0 {
                    let mut labels = app_label(app);
                    labels.push(("status", (STATUSES.start + i as u16).to_string()));
                    requests.push((labels, n));
                }
            }
        }
        counter(
            &mut encoder,
            "psd_requests",
            "Requests answered, by application and status code (app=\"\": no <Location> matched).",
            &requests,
        )?;
        histogram(
            &mut encoder,
            "psd_request_duration_seconds",
            "Time from a request's arrival to its response head, by application.",
            apps.iter().map(|a| (app_label(a), &a.duration)),
        )?;
        let apps = &apps[..routed];
        let sessions: Vec<_> = self
            .sessions
            .sessions
            .iter()
            .map(|(app, state, n)| {
                let labels = vec![("app", app.clone()), ("state", state.to_string())];
                (labels, *n as i64)
            })
            .collect();
        gauge(
            &mut encoder,
            "psd_sessions",
            "Sessions in memory, by application and state (starting, idle, busy, dormant, stopping).",
            &sessions,
        )?;
        gauge(
            &mut encoder,
            "psd_max_sessions",
            "MaxSessions: sessions with a live worker or task this node admits.",
            &[(vec![], self.sessions.max_sessions as i64)],
        )?;
        gauge(
            &mut encoder,
            "psd_worker_resident_bytes",
            "Resident memory of all session workers (from /proc).",
            &[(vec![], self.sessions.worker_rss_bytes as i64)],
        )?;
        let spawns: Vec<_> = apps
            .iter()
            .map(|a| (app_label(a), a.spawns.load(Relaxed)))
            .collect();
        counter(
            &mut encoder,
            "psd_spawns",
            "Worker processes started, by application (spare workers included).",
            &spawns,
        )?;
        let failures: Vec<_> = apps
            .iter()
            .map(|a| (app_label(a), a.spawn_failures.load(Relaxed)))
            .collect();
        counter(
            &mut encoder,
            "psd_spawn_failures",
            "Worker processes that failed to start, by application.",
            &failures,
        )?;
        histogram(
            &mut encoder,
            "psd_spawn_duration_seconds",
            "Time for a worker to start and become ready, by application.",
            apps.iter().map(|a| (app_label(a), &a.spawn_duration)),
        )?;
        let mut exits = vec![];
        for app in apps {
            for cause in ExitCause::ALL {
                let mut labels = app_label(app);
                labels.push(("cause", cause.as_str().to_string()));
                exits.push((labels, app.exits[cause as usize].load(Relaxed)));
            }
        }
        counter(
            &mut encoder,
            "psd_worker_exits",
            "Worker processes gone, by application and cause (exited by itself, idle, evicted, stopped by an operator, session ended, shutdown).",
            &exits,
        )?;
        let bytes: Vec<_> = self
            .sessions
            .state_bytes
            .iter()
            .map(|(app, n)| (vec![("app", app.clone())], *n as i64))
            .collect();
        gauge(
            &mut encoder,
            "psd_state_bytes",
            "Bytes of state kept by the sessions in memory, by application.",
            &bytes,
        )?;
        histogram(
            &mut encoder,
            "psd_store_operation_duration_seconds",
            "State store operation latency, by operation.",
            STORE_OPS
                .iter()
                .zip(&self.metrics.store)
                .map(|(op, h)| (vec![("op", op.to_string())], h)),
        )
    }
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition, for
/// scrapers that do not ask for OpenMetrics (`promtool check metrics`,
/// older Prometheus servers): counters are named with their `_total`
/// suffix in `HELP` and `TYPE`, and there is no `# EOF`.
pub(crate) fn prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = meta {
            let name = rest.split(' ').next().unwrap_or("");
            if counters.contains(&name) {
                let _ = writeln!(out, "{prefix}{name}_total{}", &rest[name.len()..]);
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A store whose operations are timed into `psd_store_operation_duration_seconds`.
struct Timed {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl Timed {
    fn time<T: Send + 'static>(&self, op: usize, answer: Answer<T>) -> Answer<T> {
        let metrics = self.metrics.clone();
        let started = std::time::Instant::now();
        Box::pin(async move {
            let result = answer.await;
            metrics.store[op].observe(started.elapsed());
            result
        })
    }
}

impl Store for Timed {
    fn session(&self, app: &str, key: &str) -> Answer<Option<SessionRecord>> {
        self.time(0, self.inner.session(app, key))
    }
    fn save(&self, record: SessionRecord) -> Answer<()> {
        self.time(1, self.inner.save(record))
    }
    fn forget(&self, app: &str, key: &str) -> Answer<()> {
        self.time(2, self.inner.forget(app, key))
    }
    fn purge_expired(&self, now: u64) -> Answer<usize> {
        self.time(3, self.inner.purge_expired(now))
    }
    fn retain_apps(&self, apps: Vec<String>) -> Answer<usize> {
        self.time(4, self.inner.retain_apps(apps))
    }
    fn value(&self, space: &Space, key: &str) -> Answer<Option<Value>> {
        self.time(5, self.inner.value(space, key))
    }
    fn keys(&self, space: &Space) -> Answer<Vec<(String, u64)>> {
        self.time(6, self.inner.keys(space))
    }
    fn put(
        &self,
        space: &Space,
        key: &str,
        data: Vec<u8>,
        when: Condition,
        limit: u64,
    ) -> Answer<Written> {
        self.time(7, self.inner.put(space, key, data, when, limit))
    }
    fn delete(&self, space: &Space, key: &str, when: Condition) -> Answer<Written> {
        self.time(8, self.inner.delete(space, key, when))
    }
    fn add(&self, space: &Space, key: &str, n: i64, limit: u64) -> Answer<(Written, i64)> {
        self.time(9, self.inner.add(space, key, n, limit))
    }
    fn close(&self) {
        self.inner.close()
    }
    fn ready(&self) -> Answer<()> {
        self.time(10, self.inner.ready())
    }
    fn sizes(&self, spaces: Vec<Space>) -> Answer<Vec<u64>> {
        self.time(11, self.inner.sizes(spaces))
    }
    fn sessions(&self) -> Answer<Vec<SessionRecord>> {
        self.time(12, self.inner.sessions())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_an_infinite_bucket() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(2));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 2.0055).abs() < 1e-9, "{sum}");
        assert_eq!(buckets, vec![(0.001, 1), (0.01, 1), (f64::INFINITY, 1)]);
    }

    #[test]
    fn the_prometheus_text_names_counters_with_their_suffix() {
        let metrics = Metrics::new();
        let app = metrics.app(&AppKey::new(None, "/app"));
        app.request(200, Duration::from_millis(1));
        app.request(200, Duration::from_millis(1));
        app.request(502, Duration::from_millis(1));
        let open = metrics.encode(SessionGauges::default());
        assert!(open.contains("# TYPE psd_requests counter\n"), "{open}");
        assert!(open.ends_with("# EOF\n"));
        let text = prometheus_text(&open);
        assert!(
            text.contains("# TYPE psd_requests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP psd_requests_total Requests"),
            "{text}"
        );
        assert!(text.contains("psd_requests_total{app=\"main /app\",status=\"200\"} 2\n"));
        assert!(text.contains("psd_requests_total{app=\"main /app\",status=\"502\"} 1\n"));
        assert!(text.contains("# TYPE psd_request_duration_seconds histogram\n"));
        assert!(
            text.contains(
                "psd_request_duration_seconds_bucket{le=\"0.001\",app=\"main /app\"} 3\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("psd_request_duration_seconds_bucket{le=\"+Inf\",app=\"main /app\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("psd_max_sessions 0\n"), "{text}");
        assert!(!text.contains("# EOF"));
    }
}
