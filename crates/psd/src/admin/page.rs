//! The dashboard: one server-rendered page (maud), its live part fetched
//! again every two seconds by a few lines of script, forms for stop and
//! end (confirmed in the browser first), and a login form that trades the
//! admin token for an HttpOnly cookie. Everything it needs is in the page:
//! no framework, no CDN.

use std::time::SystemTime;

use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::api::{self, AppView, Filter, Stopped, View};
use super::{format_bytes, format_duration, small_body, Admin, COOKIE_NAME};
use crate::body::{self, Body};
use crate::session::SessionState;

/// Rows the sessions table shows at most; filters narrow the rest.
const MAX_ROWS: usize = 500;
/// How often the page fetches its live part again.
const REFRESH_MS: u64 = 2000;

const STYLE: &str = r#"
:root{--bg:#f5f6f8;--card:#fff;--text:#1d232b;--muted:#687385;--line:#e3e6eb;--accent:#2f6fde;
--idle:#1f9d55;--busy:#d98b00;--starting:#2f6fde;--dormant:#8a94a3;--stopping:#c93c37}
@media (prefers-color-scheme:dark){:root{--bg:#14171c;--card:#1c2128;--text:#e6e9ee;--muted:#98a2b3;
--line:#2d343e;--accent:#6ea1ff}}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);color:var(--text)}
header{display:flex;align-items:center;gap:16px;padding:12px 24px;background:var(--card);border-bottom:1px solid var(--line);flex-wrap:wrap}
header h1{font-size:18px;margin:0;letter-spacing:.02em}
header h1 span{color:var(--accent)}
header .facts{color:var(--muted);display:flex;gap:16px;flex-wrap:wrap;flex:1}
header .facts b{color:var(--text)}
main{padding:20px 24px;max-width:1400px;margin:0 auto}
h2{font-size:15px;margin:24px 0 10px;color:var(--muted);text-transform:uppercase;letter-spacing:.06em}
.apps{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:14px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px;min-width:0}
.card .top{display:flex;justify-content:space-between;align-items:baseline;gap:8px}
.card .prefix{font-weight:600;font-size:16px}
.card .kind{font-size:12px;color:var(--muted);border:1px solid var(--line);border-radius:99px;padding:1px 8px}
.card .cmd{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;color:var(--muted);margin:4px 0 10px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.chips{display:flex;gap:6px;flex-wrap:wrap;margin-bottom:8px}
.chip{font-size:12px;border-radius:99px;padding:1px 8px;background:var(--bg)}
.chip i{display:inline-block;width:8px;height:8px;border-radius:50%;margin-right:5px}
.rate{display:flex;align-items:flex-end;justify-content:space-between;gap:10px}
.rate .num{font-size:22px;font-weight:600}
.rate .num small{font-size:12px;color:var(--muted);font-weight:400}
.rate svg{flex:1;max-width:200px;height:40px}
.rate polyline{fill:none;stroke:var(--accent);stroke-width:1.5}
.rate polygon{fill:var(--accent);opacity:.12}
.muted{color:var(--muted)}
.filters{display:flex;gap:8px;align-items:center;flex-wrap:wrap;margin-bottom:10px}
select,input,button{font:inherit;color:inherit}
select,input[type=password]{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:5px 8px}
.table{background:var(--card);border:1px solid var(--line);border-radius:10px;overflow-x:auto}
table{border-collapse:collapse;width:100%;min-width:880px}
th,td{text-align:left;padding:8px 12px;border-bottom:1px solid var(--line);white-space:nowrap}
th{font-size:12px;color:var(--muted);font-weight:600;text-transform:uppercase;letter-spacing:.04em}
tr:last-child td{border-bottom:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,monospace}
.badge{display:inline-flex;align-items:center;gap:6px;font-size:12.5px}
.badge i{width:8px;height:8px;border-radius:50%}
.s-idle{background:var(--idle)}.s-busy{background:var(--busy)}.s-starting{background:var(--starting)}
.s-dormant{background:var(--dormant)}.s-stopping{background:var(--stopping)}
td.actions{display:flex;gap:6px}
td.actions form{margin:0}
button{border:1px solid var(--line);background:var(--card);border-radius:6px;padding:3px 10px;cursor:pointer}
button:hover{border-color:var(--accent)}
button.danger{color:var(--stopping);border-color:color-mix(in srgb,var(--stopping) 40%,var(--line))}
button.danger:hover{background:var(--stopping);color:#fff}
.notice{background:color-mix(in srgb,var(--accent) 10%,var(--card));border:1px solid color-mix(in srgb,var(--accent) 35%,var(--line));border-radius:8px;padding:8px 12px;margin-bottom:8px}
.empty{padding:28px;text-align:center;color:var(--muted)}
.login{max-width:420px;margin:12vh auto;padding:28px}
.login h1{margin:0 0 4px;font-size:22px}
.login form{display:flex;flex-direction:column;gap:10px;margin-top:16px}
.login input{width:100%;padding:9px 10px}
.login button{padding:8px;background:var(--accent);color:#fff;border-color:var(--accent)}
.error{color:var(--stopping)}
.rate line{stroke:var(--line);stroke-width:1}
@media (max-width:640px){header{padding:10px 14px;gap:8px}header .facts{order:3;flex-basis:100%;gap:10px;font-size:12.5px}
main{padding:12px 14px}.apps{grid-template-columns:minmax(0,1fr)}
th.wide,td.wide{display:none}table{min-width:0}th,td{padding:7px 8px}}
"#;

/// Re-fetches the live part every two seconds, keeping the filters; stops
/// while the tab is hidden.
const SCRIPT: &str = r#"
(function(){
  var live=document.getElementById('live');
  function refresh(){
    if(document.hidden){return;}
    fetch('/?part=live&'+location.search.replace(/^\?/,'').replace(/(^|&)notice=[^&]*/,''),{credentials:'same-origin'})
      .then(function(r){if(r.status===401){location.reload();}return r.ok?r.text():null;})
      .then(function(t){if(t!==null){live.innerHTML=t;}})
      .catch(function(){});
  }
  setInterval(refresh,REFRESH);
})();
"#;

fn page(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body { (content) }
        }
    }
}

fn html_response(status: StatusCode, markup: Markup) -> Response<Body> {
    let mut response = Response::new(body::full(markup.into_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; img-src 'self'",
        ),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    response
}

/// The login form; `problem` is shown above it.
pub(super) fn login_form(status: StatusCode, problem: Option<&str>) -> Response<Body> {
    let content = html! {
        div.card.login {
            h1 { "psd " span.muted { "admin" } }
            p.muted { "Enter the admin token: the contents of the " code { "AdminToken" }
                " file (by default " code { "DataDir/admin-token" } ")." }
            @if let Some(problem) = problem { p.error { (problem) } }
            form method="post" action="/login" {
                input type="password" name="token" placeholder="Admin token" autocomplete="current-password" autofocus required;
                button type="submit" { "Sign in" }
            }
        }
    };
    html_response(status, page("psd admin: sign in", content))
}

/// A page with one message and a way back.
pub(super) fn message(status: StatusCode, text: &str) -> Response<Body> {
    let content = html! {
        div.card.login { p { (text) } p { a href="/" { "Back to the dashboard" } } }
    };
    html_response(status, page("psd admin", content))
}

pub(super) fn favicon() -> Response<Body> {
    let mut response = Response::new(body::full(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

fn see_other(to: &str) -> Response<Body> {
    let mut response = Response::new(body::full(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        response.headers_mut().insert(LOCATION, v);
    }
    response
}

/// `POST /login`: a right token becomes the dashboard's cookie.
pub(super) async fn login(admin: &Admin, request: Request<Incoming>) -> Response<Body> {
    let Some(form) = small_body(request).await else {
        return login_form(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("That form is too large."),
        );
    };
    let token = form_urlencoded::parse(&form)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    if !admin.is_token(&token) {
        tracing::warn!("admin dashboard: sign-in with a wrong token");
        return login_form(
            StatusCode::UNAUTHORIZED,
            Some("That is not the admin token."),
        );
    }
    with_cookie(see_other("/"), &token, "")
}

/// `response` setting the dashboard's cookie to `value` (HttpOnly,
/// SameSite=Strict), with `extra` attributes.
fn with_cookie(mut response: Response<Body>, value: &str, extra: &str) -> Response<Body> {
    let cookie = format!("{COOKIE_NAME}={value}; Path=/; HttpOnly; SameSite=Strict{extra}");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(SET_COOKIE, v);
    }
    response
}

/// The dashboard's own paths, for an authorized request.
pub(super) async fn answer(
    admin: &Admin,
    request: Request<Incoming>,
    path: &str,
) -> Response<Body> {
    let post = request.method() == http::Method::POST;
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (post, parts.as_slice()) {
        (false, [""]) => {
            let query = request.uri().query().unwrap_or("");
            let filter = Filter::from_query(Some(query));
            let notice = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "notice")
                .map(|(_, v)| v.into_owned());
            let live = live(admin, &filter, notice.as_deref()).await;
            if form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == "part" && v == "live") {
                return html_response(StatusCode::OK, live);
            }
            html_response(StatusCode::OK, dashboard(admin, &filter, live))
        }
        (true, ["logout"]) => with_cookie(see_other("/"), "", "; Max-Age=0"),
        (true, ["sessions", handle, "stop"]) => {
            let notice = match api::stop(admin, handle).await {
                Stopped::Now(_) => format!("Session {handle} stopped; its state is kept."),
                Stopped::Gone => format!("Session {handle} had stored nothing and ended."),
                Stopped::Missing => format!("No session {handle} (it may have ended)."),
            };
            back(&notice)
        }
        (true, ["sessions", handle, "end"]) => {
            let notice = match api::end(admin, handle).await {
                true => format!("Session {handle} ended; its state is deleted."),
                false => format!("No session {handle} (it may have ended)."),
            };
            back(&notice)
        }
        _ => message(StatusCode::NOT_FOUND, "There is nothing here."),
    }
}

fn back(notice: &str) -> Response<Body> {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("notice", notice)
        .finish();
    see_other(&format!("/?{query}"))
}

fn dashboard(admin: &Admin, filter: &Filter, live: Markup) -> Markup {
    let registry = &admin.shared.registry;
    let apps = admin.shared.apps();
    let content = html! {
        header {
            h1 { "psd" span { " admin" } }
            div.facts {
                span { "node " b { (registry.node()) } }
                span { "MaxSessions " b { (registry.max_sessions) } }
                span { "worker exits " b { (registry.worker_exits.load(std::sync::atomic::Ordering::Relaxed)) } }
                span { a href="/metrics" { "/metrics" } }
            }
            form method="post" action="/logout" { button type="submit" { "Sign out" } }
        }
        main {
            form.filters method="get" action="/" {
                label { "Application " select name="app" {
                    option value="" { "all" }
                    @for app in &apps {
                        @let prefix = app.as_str().rsplit(' ').next().unwrap_or("");
                        option value=(app.as_str()) selected[filter.app.as_deref() == Some(app.as_str()) || filter.app.as_deref() == Some(prefix)] { (app.as_str()) }
                    }
                } }
                label { "State " select name="state" {
                    option value="" { "all" }
                    @for state in ["starting", "idle", "busy", "dormant", "stopping"] {
                        option value=(state) selected[filter.state.as_deref() == Some(state)] { (state) }
                    }
                } }
                button type="submit" { "Filter" }
            }
            div #live { (live) }
        }
        noscript { meta http-equiv="refresh" content="10"; }
        script { (PreEscaped(SCRIPT.replace("REFRESH", &REFRESH_MS.to_string()))) }
    };
    page("psd admin", content)
}

/// The part of the page that changes: applications and sessions.
async fn live(admin: &Admin, filter: &Filter, notice: Option<&str>) -> Markup {
    let apps = api::apps(admin);
    let views = api::sessions(admin, filter, true).await;
    let shown = &views[..views.len().min(MAX_ROWS)];
    html! {
        @if let Some(notice) = notice { div.notice role="status" { (notice) } }
        h2 { "Applications" }
        div.apps {
            @for app in &apps { (app_card(app)) }
        }
        h2 { "Sessions " span.muted { "(" (views.len()) ")" } }
        div.table {
            @if views.is_empty() {
                div.empty { "No sessions" @if filter.app.is_some() || filter.state.is_some() { " match these filters" } "." }
            } @else {
                table {
                    thead { tr {
                        th { "Handle" } th { "Application" } th { "State" }
                        th.num.wide { "Age" } th.num { "Idle" } th.num { "Requests" }
                        th.num.wide { "Worker pid" } th.num { "Memory" } th.num.wide { "CPU" }
                        th.num.wide { "State" } th.wide { "Client" } th { "" }
                    } }
                    tbody {
                        @for view in shown { (session_row(view)) }
                    }
                }
            }
        }
        @if views.len() > shown.len() {
            p.muted { "Showing the " (shown.len()) " most recently active of " (views.len()) " sessions; filter to see others." }
        }
    }
}

fn app_card(app: &AppView) -> Markup {
    let rate = app.rates.last().copied().unwrap_or(0.0);
    html! {
        div.card {
            div.top {
                span.prefix { (app.prefix) }
                span.kind { (app.kind) }
            }
            div.cmd title=(app.command) { @if app.command.is_empty() { "in this process" } @else { (app.command) } }
            div.chips {
                @for (state, n) in &app.by_state {
                    @if *n > 0 || matches!(state, SessionState::Idle | SessionState::Busy) {
                        span.chip { i class={ "s-" (state.as_str()) } {} (n) " " (state.as_str()) }
                    }
                }
            }
            div.rate {
                div {
                    div.num { (format_rate(rate)) " " small { "req/s" } }
                    div.muted { (plural(app.requests, "request")) " · " (plural(app.spawns, "worker")) " started" }
                }
                (sparkline(&app.rates))
            }
        }
    }
}

/// The request rate of the last ten minutes as a small SVG chart.
fn sparkline(rates: &[f64]) -> Markup {
    const W: f64 = 200.0;
    const H: f64 = 40.0;
    let n = crate::metrics::RATE_SAMPLES;
    let max = rates.iter().copied().fold(0.0, f64::max).max(1.0);
    let step = W / (n - 1) as f64;
    let offset = n.saturating_sub(rates.len());
    let points: Vec<String> = rates
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let x = (offset + i) as f64 * step;
            let y = H - 2.0 - r / max * (H - 4.0);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let line = points.join(" ");
    let area = match (points.first(), points.last()) {
        (Some(_), Some(_)) => {
            let x0 = offset as f64 * step;
            format!("{x0:.1},{H} {line} {W:.1},{H}")
        }
        _ => String::new(),
    };
    html! {
        svg viewBox={ "0 0 " (W) " " (H) } preserveAspectRatio="none" role="img"
            aria-label={ "request rate, last 10 minutes, peak " (format_rate(max)) " req/s" } {
            line x1="0" y1=(H - 0.5) x2=(W) y2=(H - 0.5) {}
            @if !points.is_empty() {
                polygon points=(area) {}
                polyline points=(line) {}
            }
        }
    }
}

fn session_row(view: &View) -> Markup {
    let info = &view.info;
    let handle = info.handle.as_str();
    let now = SystemTime::now();
    let age = now.duration_since(info.created).unwrap_or_default();
    let idle = now.duration_since(info.last_active).unwrap_or_default();
    let prefix = info.app.as_str().rsplit(' ').next().unwrap_or("");
    html! {
        tr data-handle=(handle) {
            td { code { (handle) } }
            td title=(info.app.as_str()) { (prefix) @if let Some(user) = &info.user { " " span.muted { "· " (user) } } }
            td { span.badge { i class={ "s-" (info.state.as_str()) } {} (info.state.as_str()) } }
            td.num.wide title=(api::iso8601(info.created)) { (format_duration(age)) }
            td.num title=(api::iso8601(info.last_active)) { (format_duration(idle)) }
            td.num { @if view.stored_on.is_none() { (info.requests) } @else { span.muted title="only in the store since psd started" { "–" } } }
            td.num.wide { @if let Some(pid) = info.pid { (pid) } @else { span.muted { "–" } } }
            td.num { @if let Some(u) = view.usage { (format_bytes(u.rss_bytes)) } @else { span.muted { "–" } } }
            td.num.wide { @if let Some(u) = view.usage { (format!("{:.2} s", u.cpu_seconds)) } @else { span.muted { "–" } } }
            td.num.wide { @if let Some(b) = view.state_bytes { (format_bytes(b)) } @else { span.muted { "?" } } }
            td.wide { @if view.stored_on.is_none() { (info.client) } @else { span.muted { "in the store" } } }
            td.actions {
                @if info.pid.is_some() {
                    form method="post" action={ "/sessions/" (handle) "/stop" }
                        onsubmit={ "return confirm('Stop the worker of session " (handle) "? Its state is kept; its next request starts a new worker.')" } {
                        button type="submit" title="Stop the worker, keep the state" { "Stop" }
                    }
                }
                form method="post" action={ "/sessions/" (handle) "/end" }
                    onsubmit={ "return confirm('End session " (handle) "? Its worker stops and its state is deleted.')" } {
                    button.danger type="submit" title="End the session, delete its state" { "End" }
                }
            }
        }
    }
}

fn plural(n: u64, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    }
}

fn format_rate(rate: f64) -> String {
    match rate {
        r if r >= 100.0 => format!("{r:.0}"),
        r if r >= 10.0 => format!("{r:.1}"),
        r => format!("{r:.2}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sparkline_scales_to_its_peak() {
        let svg = sparkline(&[0.0, 5.0, 10.0]).into_string();
        assert!(svg.contains("<polyline"), "{svg}");
        assert!(svg.contains("peak 10.0 req/s"), "{svg}");
        let empty = sparkline(&[]).into_string();
        assert!(!empty.contains("polyline"));
    }
}
