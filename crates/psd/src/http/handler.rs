//! One request in, one response out: the request is checked, routed to its
//! `<Location>`, its body received (per `RequestBuffering`), its session
//! found or created, and it goes as a job through the session's door; the
//! answer is framed ([`body::frame`]) whatever the worker wrote.
//!
//! [`handle`] takes a `Request<B>` for any body type and no socket: the
//! listener gives it hyper's `Incoming`, a unit test a `String`. It never
//! touches a worker and never holds a lock across an `.await`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST, LOCATION, SET_COOKIE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use tokio::sync::oneshot;

use super::{own_urls, Mount, Shared};
use crate::access_log::{self, AccessLog};
use crate::auth::Verdict;
use crate::body::{self, Body, BoxError};
use crate::config;
use crate::error::{Error, Side};
use crate::mapper::{self, client, Access, Hit};
use crate::metrics::AppMetrics;
use crate::session::Target;
use crate::worker::{JobParts, RequestMeta};

/// What a request's connection says about it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnInfo {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub https: bool,
}

/// How the client addressed a request: scheme, host and prefix, as a
/// trusted proxy reports them or as the connection shows them.
pub(super) struct View {
    pub https: bool,
    pub host: Option<Arc<str>>,
    /// `SCRIPT_NAME` as the client sees it (outer prefix, then the mount).
    pub script_name: Arc<str>,
    pub server_name: Option<Arc<str>>,
}

impl View {
    /// The path cookies of this location are set for.
    fn cookie_path(&self) -> &str {
        if self.script_name.is_empty() {
            "/"
        } else {
            &self.script_name
        }
    }
}

/// Answers one request; with an access log, logs it once its body is sent.
pub(crate) async fn handle<B>(
    shared: &Shared,
    log: Option<&AccessLog>,
    request: Request<B>,
    conn: ConnInfo,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let started = std::time::Instant::now();
    let mut trace = Trace::default();
    let Some(log) = log else {
        let response = respond(shared, request, conn, &mut trace).await;
        trace.count(shared, &response, started);
        return response;
    };
    let mut entry = access_log::Entry::new(&request);
    let response = respond(shared, request, conn, &mut trace).await;
    trace.count(shared, &response, started);
    entry.client = trace.client;
    entry.session = trace.session;
    entry.upstream = trace.upstream;
    entry.finish(log, response)
}

/// What handling a request learned, for the access log.
#[derive(Default)]
struct Trace {
    client: Option<IpAddr>,
    session: Option<crate::session::Handle>,
    upstream: Option<Duration>,
    /// The counters of the application that took the request.
    app: Option<Arc<AppMetrics>>,
}

impl Trace {
    /// Counts the request in `/metrics`, as answered now.
    fn count(&self, shared: &Shared, response: &Response<Body>, started: std::time::Instant) {
        let app = match &self.app {
            Some(app) => app,
            None => shared.registry.metrics.unrouted(),
        };
        app.request(response.status().as_u16(), started.elapsed());
    }
}

async fn respond<B>(
    shared: &Shared,
    mut request: Request<B>,
    conn: ConnInfo,
    trace: &mut Trace,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if let Err(e) = strict(&request) {
        return Error::BadRequest(e.into()).to_response();
    }
    // HTTP/2 carries the host as :authority, HTTP/1.1's absolute-form in the
    // request target, which then wins over Host (RFC 9112 §3.2.2); workers
    // want a Host header either way.
    if request.version() != http::Version::HTTP_2 || !request.headers().contains_key(HOST) {
        if let Some(v) = request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            request.headers_mut().insert(HOST, v);
        }
    }
    let routing = shared.routing();
    let trusted = &routing.config.trusted_proxies;
    let forwarded = client::forwarded(conn.remote.ip(), request.headers(), trusted);
    let client = client::client_addr(conn.remote.ip(), request.headers(), trusted);
    trace.client = Some(client);
    let host_header = request
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let vhost = routing
        .config
        .select_host(conn.local, host_header.as_deref().map(config::strip_port));
    let normal = match crate::path::normalize(request.uri().path()) {
        Ok(normal) => normal,
        Err(e) => return Error::BadRequest(e.to_string().into()).to_response(),
    };
    let path = &*normal.decoded;
    let Some(mount) = routing.mount_for(vhost, path) else {
        return Error::NotFound.to_response();
    };
    trace.app = Some(mount.metrics.clone());
    let location = &mount.config;
    let under = crate::path::under(&mount.prefix, path).to_string();
    // Workers see the normalised path, encoded one canonical way.
    if let std::borrow::Cow::Owned(encoded) = normal.encoded {
        let target = match request.uri().query() {
            Some(q) => format!("{encoded}?{q}"),
            None => encoded,
        };
        match target.parse() {
            Ok(uri) => *request.uri_mut() = uri,
            Err(_) => return Error::BadRequest("unparsable path".into()).to_response(),
        }
    }
    // Only a trusted proxy may say who the user is (nginx auth_request, an
    // SSO proxy); psd says it to workers.
    let proxy_user: Option<Arc<str>> = match client::trusts(trusted, conn.remote.ip()) {
        true => request
            .headers()
            .get(X_REMOTE_USER)
            .and_then(|v| v.to_str().ok())
            .filter(|u| !u.is_empty() && !u.contains(':'))
            .map(Arc::from),
        false => {
            request.headers_mut().remove(X_REMOTE_USER);
            None
        }
    };
    // Access control comes before any session is looked up or created.
    let user: Option<Arc<str>> = match &mount.gate {
        None => proxy_user,
        Some(gate) => {
            let (mut head, body) = request.into_parts();
            // Boxed: only locations with access control pay for its future.
            let https = forwarded.https.unwrap_or(conn.https);
            let verdict = Box::pin(gate.check(client, &head, https)).await;
            let user = match verdict {
                Verdict::Allow(user) => {
                    if user.is_some() {
                        // The password is psd's business, not the worker's.
                        head.headers.remove(AUTHORIZATION);
                    }
                    user
                }
                Verdict::Forwarded(user, copied) => {
                    for (name, _) in &copied {
                        head.headers.remove(name);
                    }
                    for (name, value) in copied {
                        head.headers.append(name, value);
                    }
                    user
                }
                Verdict::Answer(answer) => return answer,
                Verdict::Challenge => {
                    let challenge = gate.challenge();
                    return Error::Unauthorized { challenge }.to_response();
                }
                Verdict::Forbidden => return Error::Forbidden.to_response(),
                Verdict::Throttled(wait) => return Error::TooManyLogins(wait).to_response(),
                Verdict::Unavailable => return Error::AuthUnavailable.to_response(),
            };
            request = Request::from_parts(head, body);
            user
        }
    };
    let view = View {
        https: forwarded.https.unwrap_or(conn.https),
        host: forwarded.host.or(host_header).map(Arc::from),
        script_name: match &forwarded.prefix {
            Some(outer) => format!("{outer}{}", mount.prefix).into(),
            None => mount.prefix.clone(),
        },
        server_name: match vhost {
            Some(v) => routing.vhost_names[v].clone(),
            None => routing.main_name.clone(),
        },
    };
    if under == "/.psd" || under.starts_with("/.psd/") {
        let own = under.strip_prefix("/.psd/").and_then(|r| r.split_once('/'));
        if let Some((space @ ("state" | "shared"), key)) = own {
            let key = key.to_string();
            let answer = own_urls::state(
                shared,
                mount,
                request,
                space == "shared",
                &key,
                client,
                user.as_deref(),
            );
            // Boxed: rare, and it would size every request's future.
            return Box::pin(answer).await;
        }
        return own_urls::answer(
            shared,
            mount,
            &request,
            &under,
            client,
            user.as_deref(),
            &view,
        );
    }
    // A script-per-file server runs the script the path names, or nothing.
    let script = match &location.document_root {
        Some(root) => match crate::worker::script::find(root, &location.directory_index, &under) {
            Some(script) => Some(Arc::new(script)),
            None => return Error::NotFound.to_response(),
        },
        None => None,
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > location.max_request_body) {
        return Error::BodyTooLarge {
            limit: location.max_request_body,
        }
        .to_response();
    }

    let (mut parts, incoming) = request.into_parts();
    let mut params = mapper::params(parts.uri.query(), None);
    let form = parts.method == Method::POST && mapper::is_form(&parts.headers);
    let body = if location.mapper.reads_form_fields() && form {
        match body::read_all(body::streamed(incoming), location.max_request_body).await {
            Ok(bytes) => {
                params.extend(mapper::params(None, Some(&bytes)));
                set_length(&mut parts.headers, bytes.len() as u64);
                parts.extensions.insert(body::Replay(bytes.clone()));
                body::buffered(bytes)
            }
            Err(e) => return e.to_response(),
        }
    } else if location.request_buffering && !incoming.is_end_stream() {
        // Received before the request takes the session's turn: a slow or
        // broken upload holds up nobody but its own client.
        let received = body::receive(
            body::streamed(incoming),
            location.max_request_body,
            &shared.spool,
            location.request_timeout,
        )
        .await;
        match received {
            Ok(received) => {
                set_length(&mut parts.headers, received.len());
                if let Some(replay) = received.replay() {
                    parts.extensions.insert(replay);
                }
                received.into_body()
            }
            Err(e) => {
                if let Error::Internal(_) = e {
                    tracing::error!("{e}");
                }
                return e.to_response();
            }
        }
    } else {
        body::streamed(incoming)
    };
    let hit = Hit {
        method: &parts.method,
        uri: &parts.uri,
        headers: &parts.headers,
        path: &under,
        client,
        params: &params,
        user: user.as_deref(),
    };
    let target = match shared.registry.resolve(&mount.app, location, &hit).await {
        Ok(target) => target,
        Err(e) => {
            match e.side() {
                Side::Client => tracing::info!(%client, "{e}"),
                _ => tracing::warn!(%client, "{e}"),
            }
            return e.to_response();
        }
    };
    if target.access == Access::ReadOnly && !matches!(parts.method, Method::GET | Method::HEAD) {
        return Error::ReadOnly.to_response();
    }
    if let Some(redirect) = query_redirect(&target, &parts.uri, &under, &view) {
        return redirect;
    }

    let head_request = parts.method == Method::HEAD;
    let upgrade = crate::worker::is_websocket(&parts.headers);
    let (reply, answer) = oneshot::channel();
    let job = Box::new(JobParts {
        request: Request::from_parts(parts, body),
        meta: meta(mount, &target, client, conn, &view, script, user),
        reply,
    });
    trace.session = Some(target.handle);
    let asked = tokio::time::Instant::now();
    let answer = target.door.call(target.queue.as_ref(), job, answer).await;
    trace.upstream = Some(asked.elapsed());
    let framed = answer.and_then(|r| body::frame(r, head_request, upgrade, target.handle));
    let mut response = framed.unwrap_or_else(|e| {
        if let Error::BadResponse(_) = e {
            tracing::warn!(session = %target.handle, "{e}");
        }
        e.to_response()
    });
    if let Some(cookie) = target.assigned.as_ref().and_then(|a| a.cookie.as_deref()) {
        set_cookie(&mut response, cookie, &target.token, &view);
    }
    if response.headers_mut().remove(END_SESSION).is_some() {
        return end_after(shared, mount, &target, &view, response);
    }
    response
}

/// A worker's response header that ends its session once the response is
/// sent (a logout): the worker stops, the state is deleted, the id names
/// nothing, and the client's cookie is expired.
const END_SESSION: &str = "x-psd-end-session";

fn end_after(
    shared: &Shared,
    mount: &Mount,
    target: &Target,
    view: &View,
    mut response: Response<Body>,
) -> Response<Body> {
    if target.access == Access::ReadOnly {
        tracing::info!(session = %target.handle, "a read-only viewer's request asked to end the session: ignored");
        return response;
    }
    if let Some(cookie) = mount.config.mapper.cookie_name() {
        let expired = format!(
            "{}; Max-Age=0",
            mapper::set_cookie(cookie, "", view.cookie_path(), view.https)
        );
        if let Ok(v) = HeaderValue::from_str(&expired) {
            response.headers_mut().append(SET_COOKIE, v);
        }
    }
    let sessions = crate::Sessions::new(shared.registry.clone());
    let handle = target.handle;
    tracing::info!(session = %handle, "the worker ended its session (X-PSD-End-Session)");
    let (parts, body) = response.into_parts();
    let body = body::OnEnd::new(body, move |_| {
        sessions.end(handle.as_str());
    });
    Response::from_parts(parts, http_body_util::BodyExt::boxed(body))
}

/// The header a trusted proxy (or psd, to an http worker) names the user in.
const X_REMOTE_USER: &str = "x-remote-user";

/// What the worker learns about a request besides the request itself.
fn meta(
    mount: &Mount,
    target: &Target,
    client: IpAddr,
    conn: ConnInfo,
    view: &View,
    script: Option<Arc<crate::worker::script::Script>>,
    user: Option<Arc<str>>,
) -> RequestMeta {
    RequestMeta {
        script,
        client,
        client_port: (client == conn.remote.ip()).then_some(conn.remote.port()),
        local: conn.local,
        https: view.https,
        host: view.host.clone(),
        server_name: view.server_name.clone(),
        prefix: mount.prefix.clone(),
        script_name: view.script_name.clone(),
        app: mount.name.clone(),
        script_filename: mount.script_filename.clone(),
        document_root: mount.document_root.clone(),
        session_id: target.token.clone(),
        access: target.access,
        session_param: mount.session_param.clone(),
        user,
    }
}

/// The longest method name psd accepts; the registered ones are at most 17.
const MAX_METHOD_LEN: usize = 32;

/// What RFC 9112 §3.2 requires of a request before it is routed: one
/// `Host` (and in HTTP/1.1, at least one), and a method of sane length.
fn strict<B>(request: &Request<B>) -> Result<(), &'static str> {
    let mut hosts = request.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err("more than one Host header"),
        (None, None) if request.version() == http::Version::HTTP_11 => {
            return Err("HTTP/1.1 request without Host")
        }
        _ => {}
    }
    if request.method().as_str().len() > MAX_METHOD_LEN {
        return Err("method name too long");
    }
    Ok(())
}

/// Query mode: a new session is announced by `303 See Other` to the same URL
/// with the id added (a POST becomes a GET, as browsers do with 303).
fn query_redirect(
    target: &Target,
    uri: &http::Uri,
    under: &str,
    view: &View,
) -> Option<Response<Body>> {
    let assigned = target.assigned.as_ref()?;
    let param = assigned.query.as_deref()?;
    let path = format!("{}{under}", view.script_name);
    let mut response = redirect(&mapper::with_param(&path, uri.query(), param, &assigned.id));
    if let Some(cookie) = assigned.cookie.as_deref() {
        set_cookie(&mut response, cookie, &assigned.id, view);
    }
    Some(response)
}

pub(super) fn redirect(to: &str) -> Response<Body> {
    let mut response = Response::new(body::full(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

pub(super) fn set_cookie(response: &mut Response<Body>, name: &str, id: &str, view: &View) {
    if let Ok(value) = HeaderValue::from_str(&mapper::set_cookie(
        name,
        id,
        view.cookie_path(),
        view.https,
    )) {
        response.headers_mut().append(SET_COOKIE, value);
    }
}

/// A received body's length replaces however the client framed it, so
/// workers get `CONTENT_LENGTH` also for chunked uploads.
fn set_length(headers: &mut http::HeaderMap, len: u64) {
    headers.remove(http::header::TRANSFER_ENCODING);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
}

/// The handler without a socket: requests built in memory, answered by the
/// built-in counter as an in-process application.
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::BodyExt;

    use super::*;
    use crate::config::{Config, LocationConfig};

    fn shared(locations: Vec<LocationConfig>) -> Shared {
        let config = Config {
            locations,
            ..Config::default()
        };
        let registry = crate::session::tests::registry(4);
        Shared::new(registry, std::env::temp_dir(), config).unwrap()
    }

    fn counter_at(prefix: &str) -> LocationConfig {
        LocationConfig::in_process(prefix, crate::demo::counter())
    }

    const CONN: ConnInfo = ConnInfo {
        remote: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000),
        local: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080),
        https: false,
    };

    fn get(uri: &str) -> http::request::Builder {
        Request::get(uri).header(HOST, "example.org")
    }

    /// The request's answer: status, headers and the body as text.
    async fn oneshot(
        shared: &Shared,
        request: Request<String>,
    ) -> (StatusCode, http::HeaderMap, String) {
        let response = handle(shared, None, request, CONN).await;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into(),
        )
    }

    /// `name=value` of the response's session cookie.
    fn cookie(headers: &http::HeaderMap) -> String {
        let set = headers[SET_COOKIE].to_str().unwrap();
        set.split(';').next().unwrap().to_string()
    }

    #[tokio::test]
    async fn a_session_is_created_then_found_by_its_cookie() {
        let shared = shared(vec![counter_at("/app")]);
        let (status, headers, _) =
            oneshot(&shared, get("/app/?option=++").body(String::new()).unwrap()).await;
        assert_eq!(
            status,
            StatusCode::SEE_OTHER,
            "the demo redirects after an action"
        );
        let set = headers[SET_COOKIE].to_str().unwrap();
        assert!(set.contains("Path=/app; HttpOnly; SameSite=Lax"), "{set}");
        let request = get("/app/")
            .header("cookie", cookie(&headers))
            .body(String::new())
            .unwrap();
        let (status, headers, body) = oneshot(&shared, request).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("Count: 1"), "{body}");
        assert!(
            !headers.contains_key(SET_COOKIE),
            "no new id for a known session"
        );
        assert_eq!(shared.registry.count(), 1);
    }

    #[tokio::test]
    async fn requests_that_cannot_be_routed_get_their_status_and_no_session() {
        let shared = shared(vec![counter_at("/app")]);
        let cases = [
            (
                get("/other").body(String::new()).unwrap(),
                StatusCode::NOT_FOUND,
            ),
            (
                Request::get("/app/").body(String::new()).unwrap(),
                StatusCode::BAD_REQUEST,
            ),
            (
                get("/app/")
                    .header(HOST, "second.example")
                    .body(String::new())
                    .unwrap(),
                StatusCode::BAD_REQUEST,
            ),
            (
                get("/app/%00").body(String::new()).unwrap(),
                StatusCode::BAD_REQUEST,
            ),
            (
                Request::post("/app/")
                    .header(HOST, "example.org")
                    .header(CONTENT_LENGTH, "99999999999")
                    .body(String::new())
                    .unwrap(),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                get("/app/.psd/nothing").body(String::new()).unwrap(),
                StatusCode::NOT_FOUND,
            ),
        ];
        for (request, want) in cases {
            let what = format!("{} {:?}", request.uri(), request.headers());
            let (status, _, _) = oneshot(&shared, request).await;
            assert_eq!(status, want, "{what}");
        }
        assert_eq!(shared.registry.count(), 0);
    }

    #[tokio::test]
    async fn a_read_only_id_reads_but_may_not_post() {
        let shared = shared(vec![counter_at("/")]);
        let (_, headers, _) = oneshot(&shared, get("/").body(String::new()).unwrap()).await;
        let rw = cookie(&headers);
        let request = get("/.psd/share")
            .header("cookie", &rw)
            .body(String::new())
            .unwrap();
        let (status, _, page) = oneshot(&shared, request).await;
        assert_eq!(status, StatusCode::OK);
        let join = page
            .split("href=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let (status, headers, _) = oneshot(&shared, get(join).body(String::new()).unwrap()).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let ro = cookie(&headers);
        assert_ne!(ro, rw);
        let read = get("/").header("cookie", &ro).body(String::new()).unwrap();
        let (status, _, body) = oneshot(&shared, read).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("Count: 0"), "{body}");
        let write = Request::post("/")
            .header(HOST, "example.org")
            .header("cookie", &ro)
            .body("option=++".to_string())
            .unwrap();
        let (status, _, _) = oneshot(&shared, write).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(shared.registry.count(), 1);
    }

    #[tokio::test]
    async fn query_mode_announces_a_new_session_by_redirect() {
        let mut location = counter_at("/q");
        location.mapper =
            Arc::new(crate::mapper::SessionKey::parse(&["query".into(), "sid".into()]).unwrap());
        let shared = shared(vec![location]);
        let (status, headers, _) =
            oneshot(&shared, get("/q/page?x=1").body(String::new()).unwrap()).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let to = headers[LOCATION].to_str().unwrap();
        assert!(to.starts_with("/q/page?x=1&sid=n."), "{to}");
        let (status, _, body) = oneshot(&shared, get(to).body(String::new()).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(shared.registry.count(), 1);
    }
}
