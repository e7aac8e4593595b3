//! An HTTP/1.1 upstream: a server psd forwards requests to, as a reverse
//! proxy. An `http` worker is one ([`super::proxy`]); a peer node of a
//! cluster will be another.
//!
//! It owns the kept-alive connection pool (a request that finds a kept
//! connection closed before it went out goes again on a fresh one), the
//! rewriting of headers on the way in (hop-by-hop headers out, the
//! `X-Forwarded-*` and psd's session headers set) and on the way out (the
//! prefix put back into `Location` and cookie paths), and the WebSocket
//! tunnel. It never starts or stops a process, and never decides which
//! session a request belongs to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Activity, RequestMeta};
use crate::body::{BoxError, Limited};

/// RFC 9110 §7.6.1: the headers that concern one hop only. The one list:
/// every protocol's responses and the proxied requests are cleaned by it.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
];

/// Whether a header concerns one hop only (lower-case name).
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// Headers a client may not send on to a worker: psd sets them.
const SET_BY_PSD: [&str; 8] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-prefix",
    "forwarded",
    "x-psd-session-id",
    "x-psd-access",
    "x-remote-user",
];

/// A connection to the upstream, and whether it carried a request before.
pub(crate) struct Pooled {
    sender: SendRequest<Limited>,
    reused: bool,
}

/// Where an upstream listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Address {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A connection to an [`Address`], whichever kind.
pub(crate) trait Stream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}

impl Address {
    /// A new connection (TCP without Nagle's delay).
    pub async fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(match self {
            Address::Tcp(addr) => {
                let stream = TcpStream::connect(addr).await?;
                let _ = stream.set_nodelay(true);
                Box::new(stream)
            }
            Address::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        })
    }

    /// The name the upstream goes by in `Host` and in its own absolute
    /// URLs: its address, or `localhost` for a Unix socket (as nginx and
    /// gunicorn have it).
    pub fn host(&self) -> String {
        match self {
            Address::Tcp(addr) => addr.to_string(),
            Address::Unix(_) => "localhost".into(),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(addr) => write!(f, "{addr}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// One upstream address with its kept-alive connections.
pub(crate) struct Upstream {
    address: Address,
    host: String,
    /// Who the connections are for, in logs (a session id).
    label: Arc<str>,
    max_idle: usize,
    idle: Mutex<Vec<SendRequest<Limited>>>,
}

impl Upstream {
    pub fn new(address: Address, label: Arc<str>, max_idle: usize) -> Upstream {
        Upstream {
            host: address.host(),
            address,
            label,
            max_idle,
            idle: Mutex::new(vec![]),
        }
    }

    /// See [`Address::host`].
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Closes the kept connections.
    pub fn close_idle(&self) {
        self.idle.lock().expect("idle list lock").clear();
    }

    /// A kept connection ready for a request, else a new one. A WebSocket
    /// upgrade always gets a new one (it leaves the pool for good).
    pub async fn connection(&self, upgrades: bool) -> Result<Pooled, BoxError> {
        if !upgrades {
            if let Some(sender) = self.checkout() {
                return Ok(Pooled {
                    sender,
                    reused: true,
                });
            }
        }
        Ok(Pooled {
            // Boxed: connecting is the rare path, and its handshake future
            // would size every request's future.
            sender: Box::pin(self.connect(upgrades)).await?,
            reused: false,
        })
    }

    /// Opens a connection ahead of the first request and keeps it (a
    /// spare worker's: its first request then finds a connection the worker
    /// has accepted already). A failure is left to that request.
    pub async fn preconnect(&self) {
        match self.connect(false).await {
            Ok(sender) => self.give_back(sender),
            Err(e) => tracing::debug!(session = %self.label, "connecting ahead: {e}"),
        }
    }

    /// Sends `request` on `conn`: the response head, and the connection to
    /// [`give_back`](Self::give_back) once the body has been read. A kept
    /// connection the upstream closed before the request went out
    /// ([`crate::error::Retry::ReusedConnection`]) is replaced by a fresh
    /// one, once.
    pub async fn send(
        &self,
        mut conn: Pooled,
        request: Request<Limited>,
    ) -> Result<(Response<Incoming>, SendRequest<Limited>), BoxError> {
        match conn.sender.try_send_request(request).await {
            Ok(response) => Ok((response, conn.sender)),
            Err(mut e) => match e.take_message() {
                Some(request) if conn.reused => {
                    tracing::debug!(session = %self.label, "kept connection closed: {}; sending again", e.error());
                    // Boxed, as in `connection`.
                    Box::pin(async move {
                        let mut sender = self.connect(false).await?;
                        let response = sender.send_request(request).await?;
                        Ok((response, sender))
                    })
                    .await
                }
                _ => Err(e.into_error().into()),
            },
        }
    }

    /// Keeps a connection whose exchange is complete for the next request.
    pub fn give_back(&self, sender: SendRequest<Limited>) {
        let mut idle = self.idle.lock().expect("idle list lock");
        if idle.len() < self.max_idle {
            idle.push(sender);
        }
    }

    fn checkout(&self) -> Option<SendRequest<Limited>> {
        let mut idle = self.idle.lock().expect("idle list lock");
        idle.retain(|s| !s.is_closed());
        let ready = idle.iter().position(|s| s.is_ready())?;
        Some(idle.swap_remove(ready))
    }

    async fn connect(&self, upgrades: bool) -> Result<SendRequest<Limited>, BoxError> {
        let stream = self.address.connect().await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        let label = self.label.clone();
        tokio::spawn(async move {
            let result = if upgrades {
                conn.with_upgrades().await
            } else {
                conn.await
            };
            if let Err(e) = result {
                tracing::debug!(session = %label, "upstream connection: {e}");
            }
        });
        Ok(sender)
    }
}

/// The request as the upstream gets it: path under the prefix, hop-by-hop
/// headers removed, `X-Forwarded-*` and psd's session headers set, `Host`
/// kept (or the upstream's address when the client sent none).
pub(crate) fn forward<B>(
    request: Request<B>,
    meta: &RequestMeta,
    websocket: bool,
    upstream: &str,
) -> Request<B> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path();
    let under = crate::path::under(&meta.prefix, path);
    // An origin-form target under no prefix goes on as it came (no copy).
    let unchanged = under.len() == path.len()
        && parts.uri.scheme().is_none()
        && parts.uri.authority().is_none();
    if !unchanged {
        let target = match parts.uri.query() {
            Some(q) => format!("{under}?{q}"),
            None => under.to_string(),
        };
        parts.uri = target.parse().unwrap_or_else(|_| Uri::from_static("/"));
    }
    parts.version = http::Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers, websocket);
    // One pass over the few headers a request has, rather than a hashed
    // look-up of each name psd sets.
    if headers
        .keys()
        .any(|name| SET_BY_PSD.contains(&name.as_str()))
    {
        for name in SET_BY_PSD {
            headers.remove(name);
        }
    }
    let has_host = headers.contains_key(header::HOST);
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if meta.https { "https" } else { "http" }),
    );
    headers.insert(X_PSD_ACCESS, HeaderValue::from_static(meta.access.as_str()));
    // The address written on the stack: one allocation (the value's), not two.
    let mut ip = [0u8; 45];
    let free = {
        let mut rest = &mut ip[..];
        let _ = std::io::Write::write_fmt(&mut rest, format_args!("{}", meta.client));
        rest.len()
    };
    if let Ok(v) = HeaderValue::from_bytes(&ip[..ip.len() - free]) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    let mut set = |name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    if !meta.script_name.is_empty() {
        set(X_FORWARDED_PREFIX, &meta.script_name);
    }
    set(X_PSD_SESSION_ID, &meta.session_id);
    if let Some(user) = meta.user.as_deref() {
        set(X_REMOTE_USER, user);
    }
    if let Some(host) = meta.host.as_deref() {
        set(X_FORWARDED_HOST, host);
    }
    if !has_host {
        set(header::HOST, upstream);
    }
    Request::from_parts(parts, body)
}

// The names psd sets, made once (a name from a `&str` is parsed each time).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_PSD_SESSION_ID: HeaderName = HeaderName::from_static("x-psd-session-id");
const X_PSD_ACCESS: HeaderName = HeaderName::from_static("x-psd-access");
const X_REMOTE_USER: HeaderName = HeaderName::from_static("x-remote-user");

/// Removes the hop-by-hop headers and those `Connection` names. A
/// WebSocket upgrade keeps `Connection: upgrade` and `Upgrade: websocket`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, websocket: bool) {
    // Most messages have none: one pass over their names decides.
    if !websocket && !headers.keys().any(|name| is_hop_by_hop(name.as_str())) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(websocket && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
}

/// Puts the `<Location>` prefix back into what the upstream wrote without
/// it: `Location` (Apache's ProxyPassReverse) and cookie paths
/// (ProxyPassReverseCookiePath).
pub(crate) fn rewrite_for_prefix(headers: &mut HeaderMap, prefix: &str, upstream: &str) {
    if let Some(location) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
        let own = format!("http://{upstream}");
        let path = location.strip_prefix(&own).unwrap_or(location);
        if path.starts_with('/') && !path.starts_with("//") {
            if let Ok(v) = HeaderValue::from_str(&format!("{prefix}{path}")) {
                headers.insert(header::LOCATION, v);
            }
        }
    }
    if prefix.is_empty() {
        return;
    }
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| match v.to_str() {
            Ok(text) => HeaderValue::from_str(&cookie_with_prefix(text, prefix))
                .unwrap_or_else(|_| v.clone()),
            Err(_) => v.clone(),
        })
        .collect();
    if !cookies.is_empty() {
        headers.remove(header::SET_COOKIE);
        for cookie in cookies {
            headers.append(header::SET_COOKIE, cookie);
        }
    }
}

/// A `Set-Cookie` value with `prefix` put before its absolute `Path`.
fn cookie_with_prefix(cookie: &str, prefix: &str) -> String {
    let attributes: Vec<String> = cookie
        .split(';')
        .map(|attr| {
            let trimmed = attr.trim_start();
            match trimmed.get(..5) {
                Some(k) if k.eq_ignore_ascii_case("path=") && trimmed[5..].starts_with('/') => {
                    match &trimmed[5..] {
                        "/" => format!(" Path={prefix}/"),
                        rest => format!(" Path={prefix}{rest}"),
                    }
                }
                _ => attr.to_string(),
            }
        })
        .collect();
    attributes.join(";").trim_start().to_string()
}

/// Relays bytes both ways between client and upstream until either side
/// closes, in a task of its own; all of it counts as the session's
/// activity. `keep` (the client connection's place) lives as long.
pub(crate) fn tunnel<K: Send + 'static>(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    activity: Arc<Activity>,
    label: Arc<str>,
    keep: K,
) {
    let open = activity.open();
    tokio::spawn(async move {
        let _keep = keep;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(session = %label, "websocket upgrade failed: {e}");
                return;
            }
        };
        let (mut client_rd, mut client_wr) = tokio::io::split(TokioIo::new(client));
        let (mut upstream_rd, mut upstream_wr) = tokio::io::split(TokioIo::new(upstream));
        let up = pump(&mut client_rd, &mut upstream_wr, &activity);
        let down = pump(&mut upstream_rd, &mut client_wr, &activity);
        // Either side closing ends the tunnel.
        tokio::select! {
            _ = up => {}
            _ = down => {}
        }
        drop(open);
    });
}

async fn pump<R, W>(from: &mut R, to: &mut W, activity: &Activity)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                activity.touch();
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn locations_and_cookie_paths_get_the_prefix_back() {
        let upstream = "127.0.0.1:4000";
        let mut h = HeaderMap::new();
        h.insert(
            "location",
            HeaderValue::from_static("http://127.0.0.1:4000/done?x=1"),
        );
        h.append(
            "set-cookie",
            HeaderValue::from_static("a=1; Path=/; HttpOnly"),
        );
        h.append("set-cookie", HeaderValue::from_static("b=2; path=/sub"));
        rewrite_for_prefix(&mut h, "/app", upstream);
        assert_eq!(h["location"], "/app/done?x=1");
        let cookies: Vec<_> = h
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(cookies, ["a=1; Path=/app/; HttpOnly", "b=2; Path=/app/sub"]);
        let mut other = HeaderMap::new();
        other.insert(
            "location",
            HeaderValue::from_static("https://elsewhere.example/x"),
        );
        rewrite_for_prefix(&mut other, "/app", upstream);
        assert_eq!(
            other["location"], "https://elsewhere.example/x",
            "foreign URLs stay"
        );
    }

    /// A kept connection that turns out closed before the request went
    /// out is replaced by a fresh one; a new connection's failure is not
    /// retried.
    #[tokio::test]
    async fn a_request_on_a_dead_kept_connection_goes_again_on_a_fresh_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"fresh"),
                    )))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        let upstream = Upstream::new(Address::Tcp(addr), "test".into(), 4);
        let dead = || async {
            let (io, _peer) = tokio::io::duplex(64);
            let (sender, conn) = http1::handshake(TokioIo::new(io)).await.unwrap();
            drop(conn);
            sender
        };
        let request = || {
            let body = crate::body::buffered(bytes::Bytes::new());
            Request::builder()
                .uri("/")
                .header("host", "x")
                .body(Limited::new(body, 10))
                .unwrap()
        };
        let kept = Pooled {
            sender: dead().await,
            reused: true,
        };
        let (response, _sender) = upstream.send(kept, request()).await.unwrap();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"fresh");

        let new = Pooled {
            sender: dead().await,
            reused: false,
        };
        assert!(upstream.send(new, request()).await.is_err());
    }

    #[test]
    fn forwarded_requests_lose_what_psd_sets_and_get_the_path_under_the_prefix() {
        let request = Request::builder()
            .uri("/app/x?y=1")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-psd-session-id", "forged")
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .body(())
            .unwrap();
        let meta = RequestMeta {
            client: "10.0.0.1".parse().unwrap(),
            client_port: None,
            local: "127.0.0.1:80".parse().unwrap(),
            https: true,
            host: Some("example.org".into()),
            server_name: None,
            prefix: "/app".into(),
            script_name: "/app".into(),
            app: "/app".into(),
            script_filename: "".into(),
            document_root: "".into(),
            script: None,
            session_id: "ID".into(),
            access: crate::mapper::Access::ReadWrite,
            session_param: None,
            user: None,
        };
        let out = forward(request, &meta, false, "127.0.0.1:4000");
        assert_eq!(out.uri(), "/x?y=1");
        let h = out.headers();
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-psd-session-id"], "ID");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "example.org");
        assert_eq!(h["host"], "127.0.0.1:4000");
        assert!(!h.contains_key("x-hop"));

        // Under no prefix the target goes on as it came; the longest
        // address text fits.
        let meta = RequestMeta {
            client: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            prefix: "".into(),
            script_name: "".into(),
            https: false,
            ..meta
        };
        let request = Request::builder().uri("/a/b?c=%20d").body(()).unwrap();
        let out = forward(request, &meta, false, "127.0.0.1:4000");
        assert_eq!(out.uri(), "/a/b?c=%20d");
        let h = out.headers();
        assert_eq!(
            h["x-forwarded-for"],
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-forwarded-prefix"));
        let request = Request::builder()
            .uri("http://elsewhere/a?b")
            .body(())
            .unwrap();
        let out = forward(request, &meta, false, "127.0.0.1:4000");
        assert_eq!(
            out.uri(),
            "/a?b",
            "an absolute-form target loses its scheme and host"
        );
    }
}
