//! The admin side: the REST API, the dashboard and `/metrics`, on
//! `AdminListen` only (TCP or a Unix socket), never on a public listener.
//!
//! Every request but `GET /health` and `GET /metrics` needs the token of
//! `AdminToken`, as `Authorization: Bearer TOKEN` or, for the dashboard, the
//! HttpOnly cookie its login form sets. Sessions are named by their handle,
//! never by their id (the user's credential).
//!
//! - [`api`]: `/api/…`, JSON in and out;
//! - [`page`]: the dashboard at `/`, server-rendered HTML;
//! - [`client`]: `psd sessions …`, the command-line client of the API.

mod api;
pub mod client;
mod page;
mod procfs;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::{self, Body};
use crate::config::AdminListen;
use crate::http::Shared;

/// The cookie that carries the token for the dashboard.
const COOKIE_NAME: &str = "psd_admin";
/// Request bodies the admin side reads (the login form) are small.
const MAX_BODY: u64 = 4096;

/// What the admin side serves from.
pub(crate) struct Admin {
    pub shared: Arc<Shared>,
    /// SHA-256 of the token: compared in constant time, whatever the length
    /// of what a client sends.
    token_hash: [u8; 32],
}

impl Admin {
    pub fn new(shared: Arc<Shared>, token: &str) -> Admin {
        Admin {
            shared,
            token_hash: Sha256::digest(token.as_bytes()).into(),
        }
    }

    fn is_token(&self, presented: &str) -> bool {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        hash.ct_eq(&self.token_hash).into()
    }

    /// How the request proves it may act: a bearer token (API clients) or
    /// the dashboard's cookie; `None` if it does not.
    fn authorized<B>(&self, request: &Request<B>) -> Option<Proof> {
        let headers = request.headers();
        if let Some(bearer) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            return self.is_token(bearer.trim()).then_some(Proof::Bearer);
        }
        let cookie = headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(name, _)| *name == COOKIE_NAME)?
            .1;
        self.is_token(cookie).then_some(Proof::Cookie)
    }
}

/// How a request was authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proof {
    Bearer,
    /// The dashboard's cookie: its forms must come from the dashboard.
    Cookie,
}

/// The admin token in `path`, created (random, mode 0600) if missing.
pub(crate) fn load_or_create_token(path: &Path) -> io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.len() < 16 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: an admin token needs at least 16 characters",
                        path.display()
                    ),
                ));
            }
            Ok(token)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let bytes = crate::mapper::create_secret(path)?;
            Ok(String::from_utf8(bytes).expect("hex digits"))
        }
        Err(e) => Err(e),
    }
}

/// The admin listener, bound.
pub(crate) enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

impl Listener {
    /// Binds `AdminListen`; a stale Unix socket file is replaced, and the new
    /// one is private to psd's user (mode 0600).
    pub async fn bind(at: &AdminListen) -> io::Result<Listener> {
        match at {
            AdminListen::Tcp(addr) => Ok(Listener::Tcp(tokio::net::TcpListener::bind(addr).await?)),
            AdminListen::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    use std::os::unix::fs::FileTypeExt;
                    if meta.file_type().is_socket() {
                        std::fs::remove_file(path)?;
                    }
                }
                let listener = tokio::net::UnixListener::bind(path)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                Ok(Listener::Unix(listener, path.clone()))
            }
        }
    }

    /// Says where it listens, in the log.
    pub fn logged(self) -> Listener {
        tracing::info!("admin API, dashboard and /metrics on {}", self.url());
        self
    }

    /// Where it listens, as `psd sessions --admin` takes it.
    pub fn url(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(addr) => format!("http://{addr}"),
                Err(_) => "http://?".into(),
            },
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Serves the admin side on `listener` until the task is dropped; samples
/// the request rates the dashboard draws meanwhile.
pub(crate) async fn serve(admin: Arc<Admin>, listener: Listener) {
    let metrics = admin.shared.registry.metrics.clone();
    let sampler = tokio::spawn(async move {
        let period = crate::metrics::RATE_PERIOD;
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            tick.tick().await;
            metrics.sample_rates(period);
        }
    });
    let _sampler = AbortOnDrop(sampler);
    loop {
        match &listener {
            Listener::Tcp(l) => match l.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    connection(admin.clone(), stream);
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            },
            Listener::Unix(l, _) => match l.accept().await {
                Ok((stream, _)) => connection(admin.clone(), stream),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            },
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn connection<S>(admin: Arc<Admin>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let admin = admin.clone();
            async move { Ok::<_, std::convert::Infallible>(route(&admin, request).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(std::time::Duration::from_secs(20))
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades()
            .await;
    });
}

async fn route(admin: &Admin, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    match (method.as_str(), path.as_str()) {
        ("GET" | "HEAD", "/health") => return api::health(admin),
        ("GET" | "HEAD", "/metrics") => return api::metrics(admin, &request).await,
        ("GET" | "HEAD", "/favicon.ico") => return page::favicon(),
        ("POST", "/login") => return page::login(admin, request).await,
        _ => {}
    }
    let Some(proof) = admin.authorized(&request) else {
        return match path.starts_with("/api/") {
            true => unauthorized(),
            false => page::login_form(StatusCode::UNAUTHORIZED, None),
        };
    };
    if path.starts_with("/api/") {
        return api::answer(admin, request, &path).await;
    }
    if proof == Proof::Cookie && method == http::Method::POST && !same_origin(&request) {
        return page::message(StatusCode::FORBIDDEN, "This form came from another site.");
    }
    page::answer(admin, request, &path).await
}

/// A dashboard form post comes from the dashboard: its `Origin`, when the
/// browser sends one, names the host the request is for.
fn same_origin<B>(request: &Request<B>) -> bool {
    let headers = request.headers();
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return true;
    };
    let host = headers.get(http::header::HOST).map(HeaderValue::as_bytes);
    let origin = origin.as_bytes();
    let origin_host = origin
        .strip_prefix(b"http://")
        .or_else(|| origin.strip_prefix(b"https://"));
    origin_host.is_some() && origin_host == host
}

/// A JSON answer.
fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    text.push('\n');
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A JSON error: `{"error": message}`.
fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

fn unauthorized() -> Response<Body> {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong token: send Authorization: Bearer TOKEN (the AdminToken file)",
    );
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"psd admin\""),
    );
    response
}

/// The body of a small request, or `None` past [`MAX_BODY`].
async fn small_body(request: Request<Incoming>) -> Option<bytes::Bytes> {
    body::read_all(body::streamed(request.into_body()), MAX_BODY)
        .await
        .ok()
}

/// `5s`, `2m 5s`, `2h 1m`, `1d 1h`.
pub(crate) fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// `512 B`, `3.5 MiB`.
pub(crate) fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_well() {
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m 5s");
        assert_eq!(format_duration(Duration::from_secs(7300)), "2h 1m");
        assert_eq!(format_duration(Duration::from_secs(90000)), "1d 1h");
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(3 * 1024 * 1024 + 512 * 1024), "3.5 MiB");
    }

    #[test]
    fn admin_listen_takes_three_forms() {
        assert_eq!(
            AdminListen::parse("9090"),
            Ok(AdminListen::Tcp("127.0.0.1:9090".parse().unwrap()))
        );
        assert_eq!(
            AdminListen::parse("[::1]:9"),
            Ok(AdminListen::Tcp("[::1]:9".parse().unwrap()))
        );
        assert_eq!(
            AdminListen::parse("unix:/run/psd/admin.sock"),
            Ok(AdminListen::Unix("/run/psd/admin.sock".into()))
        );
        assert!(AdminListen::parse("unix:").is_err());
        assert!(AdminListen::parse("localhost").is_err());
    }

    #[test]
    fn a_missing_token_file_is_created_private_and_then_reused() {
        let dir = std::env::temp_dir().join(format!("psd-admin-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("admin-token");
        let token = load_or_create_token(&path).unwrap();
        assert_eq!(token.len(), 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create_token(&path).unwrap(), token);
        std::fs::write(&path, "short\n").unwrap();
        assert!(load_or_create_token(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dashboard_forms_must_come_from_the_dashboard() {
        let post = |origin: Option<&str>| {
            let mut r = Request::post("/sessions/x/end").header("host", "127.0.0.1:9090");
            if let Some(o) = origin {
                r = r.header("origin", o);
            }
            same_origin(&r.body(()).unwrap())
        };
        assert!(post(None));
        assert!(post(Some("http://127.0.0.1:9090")));
        assert!(!post(Some("http://evil.example")));
        assert!(!post(Some("null")));
    }
}
