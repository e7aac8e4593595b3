//! A `stdio` worker process: one JSON object a line in each direction.
//!
//! psd writes `{"id":N,"method":…,"path":…,"query":…,"headers":[[k,v]…],
//! "body":…}` (or `body_base64` for bytes that are not UTF-8) to the
//! worker's stdin, plus `session`, `access` and `client`; the worker answers
//! `{"id":N,"status":…,"headers":[[k,v]…],"body":…}` on stdout. Two
//! extensions, both optional:
//!
//! - streaming: a head line with `"stream":true` and no body, then lines
//!   `{"id":N,"body":…}` sent to the client as they come, then `{"id":N,"end":true}`;
//! - WebSocket: psd terminates the WebSocket itself and relays one message
//!   a line, as websocketd does but bound to the session:
//!   `{"ws":W,"event":"open","path":…}`, `{"ws":W,"message":…}` (or
//!   `message_base64`) and `{"ws":W,"event":"close"}` from psd;
//!   `{"ws":W,"message":…}` and `{"ws":W,"close":true}` from the worker.
//!
//! A line that is not JSON, or names an id nobody waits for, is logged
//! (once in a while, however many there are) and fails the requests then
//! waiting (502); the worker itself carries on. A line over
//! [`MAX_LINE`] bytes, or the end of its stdout, ends the worker.
//!
//! Nothing a client does can stop psd reading the worker's stdout: a
//! WebSocket client too slow for its messages is closed, a
//! message over [`MAX_WS_MESSAGE`] closes its socket (1009), and
//! `RequestTimeout` bounds writing a request to stdin as well as waiting
//! for its answer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::process::{self, WorkerProcess};
use super::{is_websocket, Activity, Job, JobParts, RequestMeta, Spawn};
use crate::body::{self, Body, BoxError};
use crate::config::{LocationConfig, WorkerCommand};
use crate::error::{Cause, Error};

/// The longest line psd reads from a worker: a larger response streams.
const MAX_LINE: usize = 16 << 20;
/// The largest WebSocket message psd relays, as for http workers' tunnels.
const MAX_WS_MESSAGE: usize = 1 << 20;
/// Messages from the worker waiting for one WebSocket client; a client
/// further behind is closed.
const WS_BACKLOG: usize = 256;
/// How long a closing WebSocket may take to send what it has left.
const WS_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How often psd pings a WebSocket client; two silent intervals close it.
const WS_PING_INTERVAL: Duration = Duration::from_secs(20);
/// Ids of failed requests remembered, so their late answers are not garbage.
const FORGET_AFTER: usize = 64;

type Reply = oneshot::Sender<Result<Response<Body>, Error>>;

/// A request waiting for its answer.
enum Pending {
    Head {
        reply: Reply,
        done: oneshot::Sender<()>,
    },
    Streaming {
        body: mpsc::Sender<Result<Bytes, BoxError>>,
        done: oneshot::Sender<()>,
    },
}

#[derive(Default)]
struct State {
    pending: HashMap<u64, Pending>,
    sockets: HashMap<u64, mpsc::Sender<Message>>,
    failed: HashSet<u64>,
    failed_order: VecDeque<u64>,
}

/// What the reader of a worker's stdout needs besides the shared state.
struct Reader {
    state: Arc<Mutex<State>>,
    session: Arc<str>,
    pid: u32,
    /// How long a streamed response may wait for its client.
    patience: Duration,
    /// Warnings about the worker's output, rate-limited.
    warnings: crate::connection::Throttle,
}

impl State {
    /// Remembers that request `id` has ended: the worker's late lines for
    /// it are dropped quietly.
    fn forget(&mut self, id: u64) {
        self.failed.insert(id);
        self.failed_order.push_back(id);
        while self.failed_order.len() > FORGET_AFTER {
            if let Some(old) = self.failed_order.pop_front() {
                self.failed.remove(&old);
            }
        }
    }

    /// Fails every waiting request with 502: what the worker wrote cannot
    /// be matched to one of them.
    fn fail_all(&mut self, why: &str) {
        let pending: Vec<_> = self.pending.drain().collect();
        for (id, pending) in pending {
            self.forget(id);
            match pending {
                Pending::Head { reply, .. } => {
                    let _ = reply.send(Err(Error::Worker(why.to_string().into())));
                }
                Pending::Streaming { body, .. } => {
                    let _ = body.try_send(Err(why.to_string().into()));
                }
            }
        }
    }
}

pub(crate) struct StdioWorker {
    proc: WorkerProcess,
    label: Arc<str>,
    location: Arc<LocationConfig>,
    activity: Arc<Activity>,
    stdin: tokio::sync::Mutex<ChildStdin>,
    state: Arc<Mutex<State>>,
    next_id: AtomicU64,
}

impl StdioWorker {
    pub async fn start(
        spawn: &Spawn<'_>,
        command: &WorkerCommand,
    ) -> Result<Arc<StdioWorker>, Error> {
        let mut cmd = process::command(spawn, &command.program, &command.args);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let launched = process::launch(cmd, spawn, &command.program, None)?;
        let (Some(stdin), Some(stdout)) = (launched.stdin, launched.stdout) else {
            launched.proc.kill();
            return Err(Error::WorkerStart("no pipes to the worker".into()));
        };
        let state = Arc::new(Mutex::new(State::default()));
        let reader = Reader {
            state: state.clone(),
            session: spawn.label.clone(),
            pid: launched.proc.pid(),
            patience: spawn.location.request_timeout,
            warnings: crate::connection::Throttle::new(Duration::from_secs(10)),
        };
        tokio::spawn(read_lines(stdout, reader));
        tracing::info!(session = %spawn.label, app = %spawn.location.prefix, pid = launched.proc.pid(), program = %command.program.display(), "worker started");
        Ok(Arc::new(StdioWorker {
            proc: launched.proc,
            label: spawn.label.clone(),
            location: spawn.location.clone(),
            activity: spawn.activity.clone(),
            stdin: tokio::sync::Mutex::new(stdin),
            state,
            next_id: AtomicU64::new(1),
        }))
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn done(&self) -> watch::Receiver<bool> {
        self.proc.done()
    }

    pub async fn stop(&self, grace: Duration) {
        self.proc.stop(grace).await;
    }

    async fn write_line(&self, value: &Value) -> Result<(), Error> {
        let mut line = serde_json::to_vec(value)
            .map_err(|e| Error::Worker(Cause::new("encoding a request", e)))?;
        line.push(b'\n');
        let mut stdin = self.stdin.lock().await;
        stdin
            .write_all(&line)
            .await
            .map_err(|e| Error::Worker(Cause::new("writing to the worker's stdin", e)))
    }

    pub async fn serve(self: Arc<Self>, job: Job) {
        let JobParts {
            request,
            meta,
            reply,
        } = *job;
        if is_websocket(request.headers()) {
            return self.websocket(request, &meta, reply).await;
        }
        let (parts, body) = request.into_parts();
        let body = match body::read_all(body, self.location.max_request_body).await {
            Ok(body) => body,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut line = request_fields(&parts, &meta);
        line.insert("id".into(), json!(id));
        match std::str::from_utf8(&body) {
            Ok(text) => line.insert("body".into(), json!(text)),
            Err(_) => line.insert("body_base64".into(), json!(BASE64.encode(&body))),
        };
        let (answered, answer) = oneshot::channel();
        let (done, finished) = oneshot::channel();
        self.state.lock().expect("stdio state lock").pending.insert(
            id,
            Pending::Head {
                reply: answered,
                done,
            },
        );
        let limit = self.location.request_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        // Writing is bounded too: a worker that stopped reading its stdin
        // must not hold the request past RequestTimeout.
        let written = tokio::time::timeout_at(deadline, self.write_line(&Value::Object(line)))
            .await
            .unwrap_or(Err(Error::Timeout(limit)));
        if let Err(e) = written {
            self.state
                .lock()
                .expect("stdio state lock")
                .pending
                .remove(&id);
            self.fail(reply, e);
            return;
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(response)) => {
                let _ = reply.send(response);
                // A streamed response keeps the request in flight until it ends.
                let _ = finished.await;
            }
            Ok(Err(_)) => self.fail(reply, Error::Worker("the worker's output ended".into())),
            Err(_) => {
                self.state
                    .lock()
                    .expect("stdio state lock")
                    .pending
                    .remove(&id);
                self.fail(reply, Error::Timeout(limit));
            }
        }
    }

    fn fail(&self, reply: Reply, e: Error) {
        if e.condemns_worker() {
            tracing::warn!(session = %self.label, pid = self.pid(), "{e}; replacing the worker");
            self.proc.kill();
        } else {
            tracing::warn!(session = %self.label, pid = self.pid(), "{e}");
        }
        let _ = reply.send(Err(e));
    }

    /// Answers the upgrade itself and relays messages as lines.
    async fn websocket(
        self: &Arc<Self>,
        mut request: http::Request<crate::body::RequestBody>,
        meta: &RequestMeta,
        reply: Reply,
    ) {
        let key = match check_upgrade(&request) {
            Ok(key) => key,
            Err((status, why)) => {
                let mut refusal = Response::new(body::full(format!("{why}\n")));
                *refusal.status_mut() = status;
                if status == StatusCode::UPGRADE_REQUIRED {
                    refusal
                        .headers_mut()
                        .insert("sec-websocket-version", HeaderValue::from_static("13"));
                }
                let _ = reply.send(Ok(refusal));
                return;
            }
        };
        let upgrade = hyper::upgrade::on(&mut request);
        let place = request
            .extensions()
            .get::<crate::connection::Place>()
            .cloned();
        let (parts, _) = request.into_parts();
        let mut response = Response::new(body::full(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(v) = HeaderValue::from_str(&key) {
            headers.insert("sec-websocket-accept", v);
        }
        let _ = reply.send(Ok(response));

        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut open = request_fields(&parts, meta);
        open.insert("ws".into(), json!(id));
        open.insert("event".into(), json!("open"));
        let process = self.clone();
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let config = WebSocketConfig::default()
                .max_message_size(Some(MAX_WS_MESSAGE))
                .max_frame_size(Some(MAX_WS_MESSAGE));
            let ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            let (to_client, outgoing) = mpsc::channel(WS_BACKLOG);
            process
                .state
                .lock()
                .expect("stdio state lock")
                .sockets
                .insert(id, to_client);
            let _open = process.activity.open();
            let _place = place;
            if process.write_line(&Value::Object(open)).await.is_ok() {
                process.relay(id, ws, outgoing).await;
            }
            process
                .state
                .lock()
                .expect("stdio state lock")
                .sockets
                .remove(&id);
            let _ = process
                .write_line(&json!({"ws": id, "event": "close"}))
                .await;
        });
    }

    /// Relays one WebSocket's messages both ways until either side ends
    /// it. The two directions run apart: a client that does not read never
    /// stops its messages reaching the worker, nor the reverse.
    async fn relay(
        &self,
        id: u64,
        ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
        mut outgoing: mpsc::Receiver<Message>,
    ) {
        let (mut sink, mut stream) = ws.split();
        let heard = AtomicBool::new(true);
        let too_large = AtomicBool::new(false);
        let up = async {
            while let Some(frame) = stream.next().await {
                heard.store(true, Ordering::Relaxed);
                self.activity.touch();
                let line = match frame {
                    Ok(Message::Text(text)) => json!({"ws": id, "message": text.as_str()}),
                    Ok(Message::Binary(bytes)) => {
                        json!({"ws": id, "message_base64": BASE64.encode(&bytes)})
                    }
                    Ok(Message::Close(_)) => break,
                    Err(WsError::Capacity(_)) => {
                        too_large.store(true, Ordering::Relaxed);
                        break;
                    }
                    Err(_) => break,
                    Ok(_) => continue,
                };
                if self.write_line(&line).await.is_err() {
                    break;
                }
            }
        };
        let down = async {
            let mut ping = tokio::time::interval(WS_PING_INTERVAL);
            ping.tick().await;
            let mut silent_ticks = 0;
            loop {
                tokio::select! {
                    message = outgoing.recv() => {
                        let Some(message) = message else { break };
                        self.activity.touch();
                        let closing = matches!(message, Message::Close(_));
                        if sink.send(message).await.is_err() || closing {
                            break;
                        }
                    }
                    _ = ping.tick() => {
                        silent_ticks = if heard.swap(false, Ordering::Relaxed) { 0 } else { silent_ticks + 1 };
                        if silent_ticks >= 2 || sink.send(Message::Ping(Bytes::new())).await.is_err() {
                            tracing::info!(session = %self.label, "WebSocket peer silent; closing");
                            break;
                        }
                    }
                }
            }
            sink
        };
        tokio::pin!(up, down);
        let sink = tokio::select! {
            () = &mut up => None,
            sink = &mut down => Some(sink),
        };
        if let Some(mut sink) = sink {
            let _ = sink.close().await;
            return;
        }
        // `down` still owns the sink: end its queue, so it stops, then
        // finish with a close frame.
        self.state
            .lock()
            .expect("stdio state lock")
            .sockets
            .remove(&id);
        // A client that does not read cannot hold the relay open.
        let Ok(mut sink) = tokio::time::timeout(WS_CLOSE_GRACE, down).await else {
            return;
        };
        if too_large.load(Ordering::Relaxed) {
            let frame = CloseFrame {
                code: CloseCode::Size,
                reason: "message too large".into(),
            };
            let _ = sink.send(Message::Close(Some(frame))).await;
        }
        let _ = sink.close().await;
    }
}

/// RFC 6455 §4.2.1: what a WebSocket opening handshake must be. Returns
/// the `Sec-WebSocket-Accept` value, or the status that refuses it
/// (400, or 426 to be answered with the version psd speaks) and why.
fn check_upgrade(
    request: &http::Request<crate::body::RequestBody>,
) -> Result<String, (StatusCode, &'static str)> {
    if request.method() != http::Method::GET || request.version() != http::Version::HTTP_11 {
        return Err((
            StatusCode::BAD_REQUEST,
            "a WebSocket opens with GET over HTTP/1.1",
        ));
    }
    let headers = request.headers();
    let mut versions = headers.get_all("sec-websocket-version").iter();
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.as_bytes() == b"13" => {}
        _ => return Err((StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only")),
    }
    let mut keys = headers.get_all("sec-websocket-key").iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) => key,
        _ => return Err((StatusCode::BAD_REQUEST, "one Sec-WebSocket-Key expected")),
    };
    if !BASE64.decode(key.as_bytes()).is_ok_and(|k| k.len() == 16) {
        return Err((
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ));
    }
    Ok(derive_accept_key(key.as_bytes()))
}

/// What every line about a request says: method, path under the prefix,
/// query, headers, and who is asking.
fn request_fields(parts: &http::request::Parts, meta: &RequestMeta) -> Map<String, Value> {
    let path = parts.uri.path();
    let under = crate::path::under(&meta.prefix, path);
    let headers: Vec<Value> = parts
        .headers
        .iter()
        .map(|(k, v)| json!([k.as_str(), String::from_utf8_lossy(v.as_bytes())]))
        .collect();
    let mut fields = Map::new();
    fields.insert("method".into(), json!(parts.method.as_str()));
    fields.insert("path".into(), json!(under));
    fields.insert("query".into(), json!(parts.uri.query().unwrap_or("")));
    fields.insert("headers".into(), Value::Array(headers));
    fields.insert("session".into(), json!(&*meta.session_id));
    if let Some(user) = meta.user.as_deref() {
        fields.insert("user".into(), json!(user));
    }
    fields.insert("access".into(), json!(meta.access.as_str()));
    fields.insert("client".into(), json!(meta.client.to_string()));
    fields
}

/// Reads the worker's stdout a line at a time and routes each line, never
/// waiting on a client for longer than a request may take. The end of
/// stdout, or a line over [`MAX_LINE`], is the worker's end: it is killed
/// (its group too), and the session starts a new one.
async fn read_lines(stdout: ChildStdout, reader: Reader) {
    let mut lines = BufReader::new(stdout);
    let mut line = Vec::new();
    let why = loop {
        line.clear();
        let read = (&mut lines)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) | Err(_) => break "the worker closed its stdout",
            Ok(_) if line.len() > MAX_LINE => break "the worker wrote a line over 16 MiB",
            Ok(_) => reader.route(&line).await,
        }
    };
    drop(line);
    tracing::warn!(session = %reader.session, pid = reader.pid, "{why}; ending the worker");
    reader.state.lock().expect("stdio state lock").fail_all(why);
    process::kill_group(reader.pid);
}

impl Reader {
    /// Logs what is wrong with the worker's output, at most once in a while.
    fn warn(&self, what: std::fmt::Arguments<'_>) {
        if let Some(held_back) = self.warnings.allow() {
            tracing::warn!(session = %self.session, pid = self.pid, "{what} ({held_back} similar warnings not logged)");
        }
    }

    async fn route(&self, line: &[u8]) {
        let line = line.trim_ascii();
        if line.is_empty() {
            return;
        }
        let state = &*self.state;
        let garbage = |why: String| {
            self.warn(format_args!(
                "worker wrote {why}: {:?}",
                String::from_utf8_lossy(&line[..line.len().min(200)])
            ));
            state.lock().expect("stdio state lock").fail_all(&why);
        };
        let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(line) else {
            return garbage("a line that is not a JSON object".into());
        };
        if let Some(ws) = object.get("ws").and_then(Value::as_u64) {
            return self.to_socket(ws, &object);
        }
        let Some(id) = object.get("id").and_then(Value::as_u64) else {
            return garbage("a line without an id".into());
        };
        let pending = state.lock().expect("stdio state lock").pending.remove(&id);
        match pending {
            None if state.lock().expect("stdio state lock").failed.contains(&id) => {
                tracing::trace!(session = %self.session, "late answer to ended request {id} dropped");
            }
            None => garbage(format!("an answer to unknown request {id}")),
            Some(Pending::Head { reply, done }) => match head(&object) {
                Err(why) => {
                    self.warn(format_args!("worker answered request {id} with {why}"));
                    let _ = reply.send(Err(Error::BadResponse(why.into())));
                }
                Ok((response, false)) => {
                    let _ = reply.send(Ok(response.map(body::full)));
                    drop(done);
                }
                Ok((response, true)) => {
                    let (tx, streamed) = body::channel(16);
                    let (parts, first) = response.into_parts();
                    if !first.is_empty() {
                        let _ = tx.try_send(Ok(first));
                    }
                    let _ = reply.send(Ok(Response::from_parts(parts, streamed)));
                    state
                        .lock()
                        .expect("stdio state lock")
                        .pending
                        .insert(id, Pending::Streaming { body: tx, done });
                }
            },
            Some(Pending::Streaming { body, done }) => {
                if object.get("end").and_then(Value::as_bool) == Some(true) {
                    drop(done);
                    return;
                }
                let delivered = match chunk(&object) {
                    Ok(bytes) => matches!(
                        timeout(self.patience, body.send(Ok(bytes))).await,
                        Ok(Ok(()))
                    ),
                    Err(why) => {
                        let _ = body.try_send(Err(why.into()));
                        false
                    }
                };
                let mut state = state.lock().expect("stdio state lock");
                if delivered {
                    state.pending.insert(id, Pending::Streaming { body, done });
                } else {
                    // A bad chunk, or a client that went away (or stopped
                    // reading for a whole RequestTimeout): the request ends
                    // here and gives the session its turn back; the worker's
                    // later lines for it are dropped.
                    drop(done);
                    state.forget(id);
                }
            }
        }
    }

    /// A message for WebSocket `ws`, queued without waiting: a client too
    /// far behind is closed rather than let stop the worker's output.
    fn to_socket(&self, ws: u64, object: &Map<String, Value>) {
        let message = if object.get("close").and_then(Value::as_bool) == Some(true) {
            Some(Message::Close(None))
        } else if let Some(text) = object.get("message").and_then(Value::as_str) {
            Some(Message::text(text))
        } else {
            object
                .get("message_base64")
                .and_then(Value::as_str)
                .and_then(|b| BASE64.decode(b).ok())
                .map(Message::binary)
        };
        let mut state = self.state.lock().expect("stdio state lock");
        let (Some(socket), Some(message)) = (state.sockets.get(&ws), message) else {
            tracing::debug!(session = %self.session, "message for WebSocket {ws} dropped");
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = socket.try_send(message) {
            self.warn(format_args!(
                "WebSocket {ws} is not reading its messages; closing it"
            ));
            state.sockets.remove(&ws);
        }
    }
}

/// A head line: status, headers, body; and whether a stream follows.
fn head(object: &Map<String, Value>) -> Result<(Response<Bytes>, bool), String> {
    let status = match object.get("status") {
        None => StatusCode::OK,
        Some(v) => v
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .and_then(|n| StatusCode::from_u16(n).ok())
            .filter(|&s| body::final_status(s))
            .ok_or_else(|| format!("invalid status {v}"))?,
    };
    let mut response = Response::new(chunk(object)?);
    *response.status_mut() = status;
    for pair in object
        .get("headers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(name), Some(value)) = (
            pair.get(0).and_then(Value::as_str),
            pair.get(1).and_then(Value::as_str),
        ) else {
            return Err(format!("invalid header {pair}"));
        };
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name}"))?;
        if !super::upstream::is_hop_by_hop(name.as_str()) {
            response.headers_mut().append(name, value);
        }
    }
    let streaming = object.get("stream").and_then(Value::as_bool) == Some(true);
    Ok((response, streaming))
}

/// The `body` (text) or `body_base64` (bytes) of a line; empty when absent.
fn chunk(object: &Map<String, Value>) -> Result<Bytes, String> {
    match (object.get("body"), object.get("body_base64")) {
        (Some(Value::String(text)), _) => Ok(Bytes::from(text.clone())),
        (_, Some(Value::String(b64))) => BASE64
            .decode(b64)
            .map(Bytes::from)
            .map_err(|_| "invalid body_base64".to_string()),
        (None | Some(Value::Null), None) => Ok(Bytes::new()),
        _ => Err("body must be a string".into()),
    }
}

use tokio::io::AsyncReadExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn heads_parse_status_headers_and_bodies() {
        let (r, streaming) = head(&object(
            json!({"id": 1, "status": 404, "headers": [["X-A", "1"]], "body": "gone"}),
        ))
        .unwrap();
        assert_eq!(
            (r.status(), &r.headers()["x-a"], &r.body()[..], streaming),
            (
                StatusCode::NOT_FOUND,
                &HeaderValue::from_static("1"),
                &b"gone"[..],
                false
            )
        );
        let (r, _) = head(&object(json!({"id": 1, "body_base64": "AAEC"}))).unwrap();
        assert_eq!(
            (r.status(), &r.body()[..]),
            (StatusCode::OK, &[0u8, 1, 2][..])
        );
        assert!(head(&object(json!({"id": 1, "stream": true}))).unwrap().1);
        for bad in [
            json!({"status": 99}),
            json!({"status": 999}),
            json!({"status": 101}),
            json!({"status": "x"}),
            json!({"headers": [["bad name", "v"]]}),
            json!({"body": 5}),
            json!({"body_base64": "!!"}),
        ] {
            assert!(head(&object(bad.clone())).is_err(), "{bad}");
        }
    }

    mod fuzz {
        //! The JSON-lines reader fed a hostile worker's stdout. A long run:
        //! `PROPTEST_CASES=100000 cargo test -p psd --release fuzz_`.
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                (0u64..5).prop_map(Value::from),
                (90u64..1000).prop_map(Value::from),
                any::<String>().prop_map(Value::from),
                "[A-Za-z0-9+/=!]{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 24, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::vec(
                        (
                            prop_oneof![
                                Just("id".to_string()),
                                Just("ws".to_string()),
                                Just("status".to_string()),
                                Just("headers".to_string()),
                                Just("body".to_string()),
                                Just("body_base64".to_string()),
                                Just("stream".to_string()),
                                Just("end".to_string()),
                                Just("message".to_string()),
                                Just("close".to_string()),
                                "[a-z]{1,5}",
                            ],
                            inner
                        ),
                        0..6
                    )
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                ]
            })
        }

        fn line() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
                proptest::collection::vec(any::<u8>(), 0..200),
            ]
        }

        proptest! {
            #[test]
            fn fuzz_stdio_lines_never_panic(lines in proptest::collection::vec(line(), 1..8)) {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    let state = Arc::new(Mutex::new(State::default()));
                    let reader = Reader {
                        state: state.clone(),
                        session: "s".into(),
                        pid: 0,
                        patience: Duration::from_millis(10),
                        warnings: crate::connection::Throttle::new(Duration::from_secs(10)),
                    };
                    // Requests 1..=3 wait, as they would on a live worker.
                    let mut answers = vec![];
                    for id in 1..=3 {
                        let (reply, answer) = oneshot::channel();
                        let (done, _finished) = oneshot::channel();
                        state.lock().unwrap().pending.insert(id, Pending::Head { reply, done });
                        answers.push(answer);
                    }
                    for line in &lines {
                        reader.route(line).await;
                    }
                });
            }
        }
    }
}
