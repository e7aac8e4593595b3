//! The admin REST API, JSON in and out:
//! - `GET /api/sessions?app=&state=&node=`, `GET /api/sessions/H`;
//! - `POST /api/sessions/H/stop` (the worker stops, the state stays),
//!   `DELETE /api/sessions/H` (the session ends, its state is deleted);
//! - `GET /api/apps`, `POST /api/reload`, `POST /api/drain`;
//! - `GET /health` and `GET /metrics` (no token).
//!
//! `stop`, `end` and `drain` answer once done (bounded), so that a script
//! can act on the answer; each may be repeated.

use std::time::{Duration, Instant, SystemTime};

use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::{json, Value};

use super::procfs::{self, Usage};
use super::{error, json, Admin};
use crate::body::{self, Body};
use crate::config::{Handler, Protocol};
use crate::metrics::SessionGauges;
use crate::session::{AppKey, Handle, SessionInfo, SessionState, Sessions};
use crate::store::Space;

/// How long `stop` / `end` wait for the session to be stopped / gone,
/// beyond the application's `WorkerStopTimeout`.
const ORDER_WAIT: Duration = Duration::from_secs(5);

/// One session as the API and the dashboard show it.
pub(super) struct View {
    pub info: SessionInfo,
    pub usage: Option<Usage>,
    /// `None` when the store could not be asked.
    pub state_bytes: Option<u64>,
    /// For a session only in the store (not requested since psd started):
    /// the node its record names. Its requests and client are not known.
    pub stored_on: Option<String>,
}

/// A session in the API's JSON (fields in this order).
#[derive(Serialize)]
pub(super) struct SessionJson<'a> {
    handle: &'a str,
    app: &'a str,
    node: &'a str,
    user: Option<&'a str>,
    state: &'static str,
    created: String,
    last_active: String,
    age_seconds: f64,
    idle_seconds: f64,
    requests: Option<u64>,
    client: Option<String>,
    worker: Option<WorkerJson>,
    state_bytes: Option<u64>,
}

#[derive(Serialize)]
struct WorkerJson {
    pid: u32,
    rss_bytes: Option<u64>,
    cpu_seconds: Option<f64>,
}

impl View {
    pub fn to_json<'a>(&'a self, node: &'a str) -> SessionJson<'a> {
        let now = SystemTime::now();
        let since = |t: SystemTime| now.duration_since(t).unwrap_or_default().as_secs_f64();
        SessionJson {
            handle: self.info.handle.as_str(),
            app: self.info.app.as_str(),
            node: self.stored_on.as_deref().unwrap_or(node),
            user: self.info.user.as_deref(),
            state: self.info.state.as_str(),
            created: iso8601(self.info.created),
            last_active: iso8601(self.info.last_active),
            age_seconds: round(since(self.info.created)),
            idle_seconds: round(since(self.info.last_active)),
            requests: self.stored_on.is_none().then_some(self.info.requests),
            client: self
                .stored_on
                .is_none()
                .then(|| self.info.client.to_string()),
            worker: self.info.pid.map(|pid| WorkerJson {
                pid,
                rss_bytes: self.usage.map(|u| u.rss_bytes),
                cpu_seconds: self.usage.map(|u| (u.cpu_seconds * 100.0).round() / 100.0),
            }),
            state_bytes: self.state_bytes,
        }
    }
}

fn round(seconds: f64) -> f64 {
    (seconds * 10.0).round() / 10.0
}

/// `2026-11-23T20:41:07.123Z`.
pub(super) fn iso8601(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Which sessions a listing shows.
#[derive(Default)]
pub(super) struct Filter {
    /// An application's key (`main /app`) or its `<Location>` prefix.
    pub app: Option<String>,
    pub state: Option<String>,
    pub node: Option<String>,
}

impl Filter {
    pub fn from_query(query: Option<&str>) -> Filter {
        let mut filter = Filter::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let v = Some(v.into_owned()).filter(|v| !v.is_empty());
            match &*k {
                "app" => filter.app = v,
                "state" => filter.state = v,
                "node" => filter.node = v,
                _ => {}
            }
        }
        filter
    }

    fn admits(&self, info: &SessionInfo, node: &str) -> bool {
        let app = info.app.as_str();
        self.app
            .as_deref()
            .is_none_or(|want| app == want || app.rsplit(' ').next() == Some(want))
            && self
                .state
                .as_deref()
                .is_none_or(|want| info.state.as_str() == want)
            && self.node.as_deref().is_none_or(|want| want == node)
    }
}

/// The sessions `filter` admits, with their workers' usage and state sizes,
/// most recently active first.
///
/// With `stored`, sessions that are only in the store (dormant since a
/// restart, or another node's) are listed too.
pub(super) async fn sessions(admin: &Admin, filter: &Filter, stored: bool) -> Vec<View> {
    let registry = &admin.shared.registry;
    let node = registry.node().to_string();
    let in_memory = registry.list_with_spaces();
    let mut found: Vec<(SessionInfo, Space, Option<String>)> = vec![];
    if stored {
        let live: std::collections::HashSet<&Space> = in_memory.iter().map(|(_, s)| s).collect();
        for record in stored_sessions(admin).await {
            let (info, space) = dormant(&record);
            if !live.contains(&space) && filter.admits(&info, &record.node) {
                found.push((info, space, Some(record.node)));
            }
        }
    }
    found.extend(
        in_memory
            .into_iter()
            .filter(|(info, _)| filter.admits(info, &node))
            .map(|(info, space)| (info, space, None)),
    );
    found.sort_by_key(|(info, ..)| std::cmp::Reverse(info.last_active));
    let mut infos = Vec::with_capacity(found.len());
    let mut spaces = Vec::with_capacity(found.len());
    let mut nodes = Vec::with_capacity(found.len());
    for (info, space, stored_on) in found {
        infos.push(info);
        spaces.push(space);
        nodes.push(stored_on);
    }
    let pids: Vec<Option<u32>> = infos.iter().map(|info| info.pid).collect();
    let (usage, sizes) = tokio::join!(usage_of(pids), registry.store.sizes(spaces));
    let sizes = match sizes {
        Ok(sizes) => sizes.into_iter().map(Some).collect(),
        Err(e) => {
            tracing::warn!("admin API: state sizes: {e}");
            vec![None; infos.len()]
        }
    };
    infos
        .into_iter()
        .zip(usage)
        .zip(sizes)
        .zip(nodes)
        .map(|(((info, usage), state_bytes), stored_on)| View {
            info,
            usage,
            state_bytes,
            stored_on,
        })
        .collect()
}

/// The session records in the store that are not past their lifetime.
async fn stored_sessions(admin: &Admin) -> Vec<crate::store::SessionRecord> {
    match admin.shared.registry.store.sessions().await {
        Ok(mut records) => {
            let now = crate::store::unix_ms(SystemTime::now());
            records.retain(|r| !r.expired_at(now));
            records
        }
        Err(e) => {
            tracing::warn!("admin API: listing stored sessions: {e}");
            vec![]
        }
    }
}

/// A session known only by its stored record: dormant.
fn dormant(record: &crate::store::SessionRecord) -> (SessionInfo, Space) {
    let app = AppKey::from_stored(&record.app);
    let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    let info = SessionInfo {
        handle: Handle::of(&app, &record.key),
        app,
        state: SessionState::Dormant,
        created: at(record.created),
        last_active: at(record.last_active),
        requests: 0,
        pid: None,
        client: std::net::Ipv4Addr::UNSPECIFIED.into(),
        user: record.user.as_deref().map(std::sync::Arc::from),
    };
    let space = Space::Session {
        app: record.app.clone(),
        key: record.key.clone(),
    };
    (info, space)
}

/// The stored-only session `handle` names, with its record.
async fn stored_one(admin: &Admin, handle: &str) -> Option<crate::store::SessionRecord> {
    stored_sessions(admin)
        .await
        .into_iter()
        .find(|r| dormant(r).0.handle.as_str() == handle)
}

/// `/proc` usage of each pid, read on blocking threads in parallel (a
/// `/proc/PID/stat` read costs the kernel some microseconds; 10,000 add up).
async fn usage_of(pids: Vec<Option<u32>>) -> Vec<Option<Usage>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = pids.len().div_ceil(threads).max(256);
    let reads: Vec<_> = pids
        .chunks(chunk)
        .map(|pids| {
            let pids = pids.to_vec();
            tokio::task::spawn_blocking(move || {
                pids.into_iter()
                    .map(|pid| pid.and_then(procfs::usage))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut usage = Vec::with_capacity(pids.len());
    for (read, pids) in reads.into_iter().zip(pids.chunks(chunk)) {
        match read.await {
            Ok(part) => usage.extend(part),
            Err(_) => usage.extend(pids.iter().map(|_| None)),
        }
    }
    usage
}

/// One application, as `GET /api/apps` and the dashboard show it.
pub(super) struct AppView {
    pub app: String,
    pub prefix: String,
    pub kind: &'static str,
    pub command: String,
    pub by_state: [(SessionState, usize); 5],
    pub requests: u64,
    /// Requests per second, recent samples, oldest first.
    pub rates: Vec<f64>,
    pub spawns: u64,
    pub session_timeout: Duration,
    pub concurrency: usize,
    pub spare_workers: usize,
}

const STATES: [SessionState; 5] = [
    SessionState::Starting,
    SessionState::Idle,
    SessionState::Busy,
    SessionState::Dormant,
    SessionState::Stopping,
];

pub(super) fn apps(admin: &Admin) -> Vec<AppView> {
    let routing = admin.shared.routing();
    let sessions = admin.shared.registry.list();
    routing
        .mounts
        .iter()
        .map(|mount| {
            let config = &mount.config;
            let (kind, command) = match &config.handler {
                Some(Handler::Process(c)) => (
                    match c.protocol {
                        Protocol::FastCgi => "fastcgi",
                        Protocol::Http => "http",
                        Protocol::Stdio => "stdio",
                    },
                    std::iter::once(c.program.display().to_string())
                        .chain(c.args.iter().cloned())
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                Some(Handler::InProcess(_)) => ("in-process", String::new()),
                None => ("none", String::new()),
            };
            let mine = sessions.iter().filter(|s| s.app == mount.app);
            let mut by_state = STATES.map(|s| (s, 0));
            for s in mine {
                if let Some(slot) = by_state.iter_mut().find(|(state, _)| *state == s.state) {
                    slot.1 += 1;
                }
            }
            AppView {
                app: mount.app.as_str().to_string(),
                prefix: config.prefix.clone(),
                kind,
                command,
                by_state,
                requests: mount.metrics.requests_total(),
                rates: mount.metrics.rates(),
                spawns: mount.metrics.spawns_total(),
                session_timeout: config.session_timeout,
                concurrency: config.concurrency(),
                spare_workers: config.spare_workers,
            }
        })
        .collect()
}

impl AppView {
    fn to_json(&self) -> Value {
        let sessions: serde_json::Map<String, Value> = self
            .by_state
            .iter()
            .map(|(state, n)| (state.as_str().to_string(), json!(n)))
            .collect();
        json!({
            "app": self.app,
            "prefix": self.prefix,
            "kind": self.kind,
            "command": self.command,
            "sessions": sessions,
            "requests": self.requests,
            "request_rate": self.rates.last().copied().unwrap_or(0.0),
            "spawns": self.spawns,
            "session_timeout_seconds": self.session_timeout.as_secs(),
            "worker_concurrency": self.concurrency,
            "spare_workers": self.spare_workers,
        })
    }
}

/// `GET /health`: psd answers, and how many sessions it has.
pub(super) fn health(admin: &Admin) -> Response<Body> {
    json(
        StatusCode::OK,
        &json!({ "status": "ok", "sessions": admin.shared.registry.count() }),
    )
}

/// `GET /metrics`: OpenMetrics to a scraper that asks for it (Prometheus
/// does), else the Prometheus text format.
pub(super) async fn metrics(admin: &Admin, request: &Request<Incoming>) -> Response<Body> {
    let views = sessions(admin, &Filter::default(), false).await;
    let mut gauges = SessionGauges {
        max_sessions: admin.shared.registry.max_sessions as u64,
        ..SessionGauges::default()
    };
    let mut by_app_state = std::collections::BTreeMap::<(String, &'static str), u64>::new();
    let mut bytes = std::collections::BTreeMap::<String, u64>::new();
    for app in admin.shared.apps() {
        for state in STATES {
            by_app_state.insert((app.as_str().to_string(), state.as_str()), 0);
        }
        bytes.insert(app.as_str().to_string(), 0);
    }
    for view in &views {
        let app = view.info.app.as_str().to_string();
        *by_app_state
            .entry((app.clone(), view.info.state.as_str()))
            .or_default() += 1;
        *bytes.entry(app).or_default() += view.state_bytes.unwrap_or(0);
        gauges.worker_rss_bytes += view.usage.map_or(0, |u| u.rss_bytes);
    }
    gauges.sessions = by_app_state
        .into_iter()
        .map(|((app, state), n)| (app, state, n))
        .collect();
    gauges.state_bytes = bytes.into_iter().collect();
    let open = admin.shared.registry.metrics.encode(gauges);
    let wants_openmetrics = request
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (text, kind) = match wants_openmetrics {
        true => (
            open,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        false => (
            crate::metrics::prometheus_text(&open),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
    };
    let mut response = Response::new(body::full(text));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    response
}

/// `/api/…`, for an authorized request.
pub(super) async fn answer(
    admin: &Admin,
    request: Request<Incoming>,
    path: &str,
) -> Response<Body> {
    let method = request.method().clone();
    let rest = path.trim_start_matches("/api/");
    let parts: Vec<&str> = rest.split('/').collect();
    let node = admin.shared.registry.node().to_string();
    match (&method, parts.as_slice()) {
        (&Method::GET, ["sessions"]) => {
            let filter = Filter::from_query(request.uri().query());
            if let Some(state) = &filter.state {
                if !STATES.iter().any(|s| s.as_str() == state) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!(
                            "unknown state '{state}': starting, idle, busy, dormant or stopping"
                        ),
                    );
                }
            }
            let views = sessions(admin, &filter, true).await;
            #[derive(Serialize)]
            struct List<'a> {
                sessions: Vec<SessionJson<'a>>,
            }
            let sessions = views.iter().map(|v| v.to_json(&node)).collect();
            json(StatusCode::OK, &List { sessions })
        }
        (&Method::GET, ["sessions", handle]) => match one(admin, handle).await {
            Some(view) => json(StatusCode::OK, &view.to_json(&node)),
            None => no_such_session(handle),
        },
        (&Method::POST, ["sessions", handle, "stop"]) => match stop(admin, handle).await {
            Stopped::Now(view) => json(StatusCode::OK, &view.to_json(&node)),
            Stopped::Gone => json(
                StatusCode::OK,
                &json!({ "handle": handle, "state": "ended", "note": "an in-process session that stored nothing ends when stopped" }),
            ),
            Stopped::Missing => no_such_session(handle),
        },
        (&Method::DELETE, ["sessions", handle]) => match end(admin, handle).await {
            true => json(StatusCode::OK, &json!({ "handle": handle, "ended": true })),
            false => no_such_session(handle),
        },
        (&Method::GET, ["apps"]) => {
            let list: Vec<Value> = apps(admin).iter().map(AppView::to_json).collect();
            json(StatusCode::OK, &json!({ "apps": list }))
        }
        (&Method::POST, ["reload"]) => reload(admin),
        (&Method::POST, ["drain"]) => {
            let stopped = drain(admin).await;
            json(StatusCode::OK, &json!({ "stopped": stopped }))
        }
        (
            _,
            ["sessions"]
            | ["sessions", _]
            | ["sessions", _, "stop"]
            | ["apps"]
            | ["reload"]
            | ["drain"],
        ) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{method} is not allowed on {path}"),
        ),
        _ => error(StatusCode::NOT_FOUND, &format!("no such API: {path}")),
    }
}

fn no_such_session(handle: &str) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        &format!("no session with handle '{handle}' (it may have ended)"),
    )
}

/// The session `handle` names, with its worker's usage and state size.
pub(super) async fn one(admin: &Admin, handle: &str) -> Option<View> {
    let registry = &admin.shared.registry;
    let (info, space, stored_on) = match registry.one_with_space(handle) {
        Some((info, space)) => (info, space, None),
        None => {
            let record = stored_one(admin, handle).await?;
            let (info, space) = dormant(&record);
            (info, space, Some(record.node))
        }
    };
    let usage = info.pid.and_then(procfs::usage);
    let state_bytes = registry
        .store
        .keys(&space)
        .await
        .ok()
        .map(|keys| keys.iter().map(|(_, size)| size).sum());
    Some(View {
        info,
        usage,
        state_bytes,
        stored_on,
    })
}

fn sessions_handle(admin: &Admin) -> Sessions {
    Sessions::new(admin.shared.registry.clone())
}

/// What `stop` found.
pub(super) enum Stopped {
    /// No session has that handle.
    Missing,
    /// An in-process session that stored nothing: it ended with its task.
    Gone,
    /// Stopped (dormant), as it is now.
    Now(View),
}

/// Stops the session's worker and waits until it has stopped.
pub(super) async fn stop(admin: &Admin, handle: &str) -> Stopped {
    let sessions = sessions_handle(admin);
    if !sessions.stop(handle) {
        // Only in the store: dormant already.
        return match one(admin, handle).await {
            Some(view) => Stopped::Now(view),
            None => Stopped::Missing,
        };
    }
    // An in-process session with nothing stored ends with its task.
    settle(admin, || stopped(&sessions, handle)).await;
    match one(admin, handle).await {
        Some(view) => Stopped::Now(view),
        None => Stopped::Gone,
    }
}

/// Ends the session and waits until it is gone; whether it existed.
pub(super) async fn end(admin: &Admin, handle: &str) -> bool {
    let sessions = sessions_handle(admin);
    if !sessions.end(handle) {
        // Only in the store: its record and values are deleted there.
        let Some(record) = stored_one(admin, handle).await else {
            return false;
        };
        let store = &admin.shared.registry.store;
        if let Err(e) = store.forget(&record.app, &record.key).await {
            tracing::warn!(session = handle, "admin API: ending a stored session: {e}");
            return false;
        }
        tracing::info!(session = handle, app = %record.app, "session ended by an operator (it was only in the store)");
        return true;
    }
    settle(admin, || sessions.get(handle).is_none()).await;
    true
}

/// Whether the session `handle` has no worker any more (dormant, or gone).
fn stopped(sessions: &Sessions, handle: &str) -> bool {
    sessions
        .get(handle)
        .is_none_or(|s| matches!(s.state, SessionState::Dormant))
}

/// Waits until `done` holds, looking every 10 ms, for at most the longest
/// `WorkerStopTimeout` of the applications and [`ORDER_WAIT`] more.
async fn settle(admin: &Admin, done: impl Fn() -> bool) {
    let stop_timeout = admin
        .shared
        .routing()
        .mounts
        .iter()
        .map(|m| m.config.worker_stop_timeout)
        .max()
        .unwrap_or_default();
    let deadline = Instant::now() + ORDER_WAIT + stop_timeout;
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stops every running worker, keeping each session's state (each resumes
/// at its next request); returns how many were running.
pub(super) async fn drain(admin: &Admin) -> usize {
    let sessions = sessions_handle(admin);
    let running: Vec<Handle> = sessions
        .list()
        .into_iter()
        .filter(|s| !matches!(s.state, SessionState::Dormant | SessionState::Stopping))
        .map(|s| s.handle)
        .collect();
    for handle in &running {
        sessions.stop(handle.as_str());
    }
    settle(admin, || {
        running.iter().all(|h| stopped(&sessions, h.as_str()))
    })
    .await;
    tracing::info!("drain: {} workers stopped by an operator", running.len());
    running.len()
}

/// `POST /api/reload`: what SIGHUP does.
fn reload(admin: &Admin) -> Response<Body> {
    let Some(file) = admin.shared.routing().config.file.clone() else {
        return error(
            StatusCode::CONFLICT,
            "psd runs without a configuration file (the built-in demo): nothing to reload",
        );
    };
    crate::systemd::reloading();
    let outcome = match crate::config::Config::load(&file) {
        Ok(config) => match crate::daemon::Reloader::of(admin.shared.clone()).reload(config) {
            Ok(()) => json(
                StatusCode::OK,
                &json!({ "reloaded": true, "config": file.display().to_string() }),
            ),
            Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, &format!("{e:#}")),
        },
        Err(errors) => {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            tracing::error!("reload through the admin API failed: {}", lines.join("; "));
            json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({ "error": "the configuration has errors; the running one stays", "errors": lines }),
            )
        }
    };
    crate::systemd::ready();
    outcome
}
