//! An HTTP worker process: socket activation, proxying, WebSocket tunnels.
//!
//! psd binds a TCP socket on 127.0.0.1 and passes it, listening, as fd 3
//! with `LISTEN_FDS=1`, `LISTEN_PID`, `LISTEN_FDNAMES=http` (systemd's
//! protocol) and `PORT`. A `/bin/sh` trampoline moves the socket from fd 0
//! to fd 3 and sets `LISTEN_PID` to its own pid before `exec`ing the program,
//! so the pid is the worker's. Requests are proxied over kept-alive HTTP/1.1
//! connections with the `<Location>` prefix taken off the path (and put back
//! into `Location` and cookie paths of responses); an `Upgrade: websocket`
//! request becomes a byte tunnel between client and worker.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::time::{timeout, Instant, Sleep};

use super::process::{self, WorkerProcess};
use super::{is_websocket, Activity, Job, RequestMeta, Spawn};
use crate::body::{BoxError, RequestBody};
use crate::config::{LocationConfig, WorkerCommand};
use crate::error::{Cause, Error};

/// Moves the listening socket from fd 0 to fd 3 and exports LISTEN_PID as
/// the pid that then becomes the program's.
const TRAMPOLINE: &str = r#"exec 3<&0 0</dev/null; export LISTEN_PID=$$; exec "$0" "$@""#;

pub(crate) struct HttpWorker {
    proc: WorkerProcess,
    addr: SocketAddr,
    session_id: Arc<str>,
    location: Arc<LocationConfig>,
    activity: Arc<Activity>,
    idle: Mutex<Vec<SendRequest<LimitedBody>>>,
}

impl HttpWorker {
    pub async fn start(
        spawn: &Spawn<'_>,
        command: &WorkerCommand,
    ) -> Result<Arc<HttpWorker>, Error> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::WorkerStart(Cause::new("binding a worker port", e)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::WorkerStart(Cause::new("worker port", e)))?;
        let listener: OwnedFd = listener.into();
        let mut args = vec![
            "-c".to_string(),
            TRAMPOLINE.to_string(),
            command.program.to_string_lossy().into_owned(),
        ];
        args.extend(command.args.iter().cloned());
        let mut cmd = process::command(spawn, Path::new("/bin/sh"), &args);
        cmd.stdin(Stdio::from(listener))
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", "http")
            .env("PORT", addr.port().to_string());
        let launched = process::launch(cmd, spawn, &command.program, None)?;
        let process = Arc::new(HttpWorker {
            proc: launched.proc,
            addr,
            session_id: spawn.session_id.clone(),
            location: spawn.location.clone(),
            activity: spawn.activity.clone(),
            idle: Mutex::new(vec![]),
        });
        // The socket listens already, so a connection is queued even before
        // the program accepts; a program that exits at once is caught here.
        let probe = async {
            TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        };
        process
            .proc
            .await_ready(spawn.location.worker_start_timeout, &command.program, probe)
            .await?;
        tracing::info!(session = %process.session_id, pid = process.pid(), port = addr.port(), program = %command.program.display(), "worker started");
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn done(&self) -> watch::Receiver<bool> {
        self.proc.done()
    }

    pub async fn stop(&self, grace: Duration) {
        self.idle.lock().expect("idle list lock").clear();
        self.proc.stop(grace).await;
    }

    /// Proxies one request; the future ends when the response body has been
    /// sent (or abandoned), so a session's requests never overlap. A worker
    /// found dead before the request was sent gives the job back.
    pub async fn serve(self: Arc<Self>, job: Job) -> Option<Job> {
        let websocket = is_websocket(job.request.headers());
        // The connection first, so that a dead worker is found out with the
        // job still whole.
        let sender = match (websocket, self.checkout()) {
            (false, Some(sender)) => Ok(sender),
            _ => self.connect(websocket).await,
        };
        let sender = match sender {
            Err(e) if self.proc.found_dead(&e).await => return Some(job),
            other => other,
        };
        let Job {
            mut request,
            meta,
            reply,
        } = job;
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut request));
        let place = request
            .extensions()
            .get::<crate::connection::Place>()
            .cloned();
        let limit = self.location.max_request_body;
        let outgoing = self.outgoing(request, &meta, websocket, limit);
        let result = match sender {
            Ok(sender) => {
                timeout(self.location.request_timeout, Self::send(sender, outgoing)).await
            }
            Err(e) => Ok(Err(e)),
        };
        let response = match result {
            Err(_) => Err(Error::Timeout(self.location.request_timeout)),
            Ok(Err(e)) if caused_by::<TooLarge>(&e) => Err(Error::BodyTooLarge { limit }),
            // The client broke off its body (`RequestBuffering off`): its
            // request fails, the worker is fine.
            Ok(Err(e)) if caused_by::<ClientBody>(&e) => {
                Err(Error::BadRequest(Cause::new("request body", e)))
            }
            Ok(Err(e)) => Err(Error::Worker(Cause::new("proxying to worker", e))),
            Ok(Ok(response)) => Ok(response),
        };
        let (mut response, sender) = match response {
            Ok(pair) => pair,
            Err(e) => {
                if e.condemns_worker() {
                    tracing::warn!(session = %self.session_id, pid = self.pid(), "{e}; replacing the worker");
                    self.proc.kill();
                }
                let _ = reply.send(Err(e));
                return None;
            }
        };

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let (Some(client), true) = (client_upgrade, websocket) else {
                let _ = reply.send(Err(Error::Worker("unexpected 101 from worker".into())));
                return None;
            };
            let worker = hyper::upgrade::on(&mut response);
            let (parts, _) = response.into_parts();
            let _ = reply.send(Ok(Response::from_parts(
                parts,
                crate::body::full(Bytes::new()),
            )));
            tunnel(
                client,
                worker,
                self.activity.clone(),
                self.session_id.clone(),
                place,
            )
            .await;
            return None;
        }

        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        rewrite_for_prefix(&mut parts.headers, &meta.script_name, self.addr);
        let (done, finished) = oneshot::channel();
        let body = TrackedBody {
            inner: body,
            idle: self.location.request_timeout,
            deadline: Box::pin(tokio::time::sleep(self.location.request_timeout)),
            done: Some(done),
        };
        let _ = reply.send(Ok(Response::from_parts(parts, body.boxed())));
        let _ = finished.await;
        // Only now can the connection carry another request.
        let mut idle = self.idle.lock().expect("idle list lock");
        if idle.len() < self.location.worker_concurrency {
            idle.push(sender);
        }
        None
    }

    /// The request as the worker gets it: path under the prefix, hop-by-hop
    /// headers removed, `X-Forwarded-*` and psd's session headers set.
    fn outgoing(
        &self,
        request: Request<RequestBody>,
        meta: &RequestMeta,
        websocket: bool,
        limit: u64,
    ) -> Request<LimitedBody> {
        let (mut parts, body) = request.into_parts();
        let path = parts.uri.path();
        let under = crate::path::under(&meta.prefix, path);
        let target = match parts.uri.query() {
            Some(q) => format!("{under}?{q}"),
            None => under.to_string(),
        };
        parts.uri = target.parse().unwrap_or_else(|_| Uri::from_static("/"));
        parts.version = http::Version::HTTP_11;
        let headers = &mut parts.headers;
        strip_hop_by_hop(headers, websocket);
        let host = headers.get(header::HOST).cloned();
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-prefix",
            "forwarded",
            "x-psd-session-id",
            "x-psd-access",
        ] {
            headers.remove(name);
        }
        let mut set = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        };
        set("x-forwarded-for", &meta.client.to_string());
        set(
            "x-forwarded-proto",
            if meta.https { "https" } else { "http" },
        );
        if !meta.script_name.is_empty() {
            set("x-forwarded-prefix", &meta.script_name);
        }
        set("x-psd-session-id", &meta.session_id);
        set("x-psd-access", meta.access.as_str());
        if let Some(v) = meta
            .host
            .as_deref()
            .and_then(|h| HeaderValue::from_str(h).ok())
        {
            headers.insert("x-forwarded-host", v);
        }
        if host.is_none() {
            if let Ok(v) = HeaderValue::from_str(&self.addr.to_string()) {
                headers.insert(header::HOST, v);
            }
        }
        Request::from_parts(
            parts,
            LimitedBody {
                inner: body,
                left: limit,
            },
        )
    }

    /// Sends the request on `sender`; returns the response head and the
    /// connection.
    async fn send(
        mut sender: SendRequest<LimitedBody>,
        request: Request<LimitedBody>,
    ) -> Result<(Response<hyper::body::Incoming>, SendRequest<LimitedBody>), BoxError> {
        let response = sender.send_request(request).await?;
        Ok((response, sender))
    }

    /// An idle connection ready for a request, if any.
    fn checkout(&self) -> Option<SendRequest<LimitedBody>> {
        let mut idle = self.idle.lock().expect("idle list lock");
        idle.retain(|s| !s.is_closed());
        let ready = idle.iter().position(|s| s.is_ready())?;
        Some(idle.swap_remove(ready))
    }

    async fn connect(&self, upgrades: bool) -> Result<SendRequest<LimitedBody>, BoxError> {
        let stream = TcpStream::connect(self.addr).await?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        let session = self.session_id.clone();
        tokio::spawn(async move {
            let result = if upgrades {
                conn.with_upgrades().await
            } else {
                conn.await
            };
            if let Err(e) = result {
                tracing::debug!(session = %session, "worker connection: {e}");
            }
        });
        Ok(sender)
    }
}

/// RFC 9110 §7.6.1: headers for one hop only, and those `Connection` names.
/// A WebSocket upgrade keeps `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, websocket: bool) {
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
    for name in [
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
    ] {
        headers.remove(name);
    }
    if websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
}

/// Puts the `<Location>` prefix back into what the worker wrote without it:
/// `Location` (Apache's ProxyPassReverse) and cookie paths
/// (ProxyPassReverseCookiePath).
fn rewrite_for_prefix(headers: &mut HeaderMap, prefix: &str, worker: SocketAddr) {
    if let Some(location) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
        let own = format!("http://{worker}");
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
        .map(|v| {
            let Ok(text) = v.to_str() else {
                return v.clone();
            };
            let rewritten: Vec<String> = text
                .split(';')
                .map(|attr| {
                    let trimmed = attr.trim_start();
                    match trimmed.get(..5) {
                        Some(k)
                            if k.eq_ignore_ascii_case("path=") && trimmed[5..].starts_with('/') =>
                        {
                            let rest = &trimmed[5..];
                            let joined = if rest == "/" {
                                format!("{prefix}/")
                            } else {
                                format!("{prefix}{rest}")
                            };
                            format!(" Path={joined}")
                        }
                        _ => attr.to_string(),
                    }
                })
                .collect();
            HeaderValue::from_str(rewritten.join(";").trim_start()).unwrap_or_else(|_| v.clone())
        })
        .collect();
    if !cookies.is_empty() {
        headers.remove(header::SET_COOKIE);
        for cookie in cookies {
            headers.append(header::SET_COOKIE, cookie);
        }
    }
}

/// Relays bytes both ways until either side closes; all of it counts as
/// the session's activity.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    worker: hyper::upgrade::OnUpgrade,
    activity: Arc<Activity>,
    session: Arc<str>,
    place: Option<crate::connection::Place>,
) {
    let _open = activity.open();
    tokio::spawn(async move {
        let _place = place;
        let (client, worker) = match tokio::try_join!(client, worker) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(session = %session, "websocket upgrade failed: {e}");
                return;
            }
        };
        let (mut client_rd, mut client_wr) = tokio::io::split(TokioIo::new(client));
        let (mut worker_rd, mut worker_wr) = tokio::io::split(TokioIo::new(worker));
        let up = pump(&mut client_rd, &mut worker_wr, &activity);
        let down = pump(&mut worker_rd, &mut client_wr, &activity);
        // Either side closing ends the tunnel.
        tokio::select! {
            _ = up => {}
            _ = down => {}
        }
        drop(_open);
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

/// The marker error of a request body over `MaxRequestBody`.
#[derive(Debug)]
struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body over MaxRequestBody")
    }
}

impl std::error::Error for TooLarge {}

/// The marker error of a request body the client broke off.
#[derive(Debug)]
struct ClientBody(BoxError);

impl std::fmt::Display for ClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client's request body failed: {}", self.0)
    }
}

impl std::error::Error for ClientBody {}

/// Whether `e` or any error under it is a `T`.
fn caused_by<T: std::error::Error + 'static>(e: &BoxError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(err) = source {
        if err.is::<T>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A request body that fails with [`TooLarge`] past its limit.
pub(crate) struct LimitedBody {
    inner: RequestBody,
    left: u64,
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let frame = frame.map(|f| f.map_err(|e| Box::new(ClientBody(e)) as BoxError));
        if let Some(Ok(frame)) = &frame {
            if let Some(data) = frame.data_ref() {
                let len = data.len() as u64;
                if len > self.left {
                    return Poll::Ready(Some(Err(Box::new(TooLarge))));
                }
                self.left -= len;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that says when it is finished (or dropped), and fails
/// if the worker goes silent for `RequestTimeout` mid-body.
struct TrackedBody {
    inner: hyper::body::Incoming,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    done: Option<oneshot::Sender<()>>,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let idle = self.idle;
                self.deadline.as_mut().reset(Instant::now() + idle);
                if frame.is_none() {
                    self.done.take();
                }
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.done.take();
                    Poll::Ready(Some(Err("worker went silent mid-response".into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future as _;

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
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn locations_and_cookie_paths_get_the_prefix_back() {
        let worker: SocketAddr = "127.0.0.1:4000".parse().unwrap();
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
        rewrite_for_prefix(&mut h, "/app", worker);
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
        rewrite_for_prefix(&mut other, "/app", worker);
        assert_eq!(
            other["location"], "https://elsewhere.example/x",
            "foreign URLs stay"
        );
    }
}
