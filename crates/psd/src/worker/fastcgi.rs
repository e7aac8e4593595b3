//! A FastCGI worker process: spawn, readiness, requests, stop.
//!
//! The process is started with a *listening* Unix socket as fd 0
//! (`FCGI_LISTENSOCK_FILENO`), so any FastCGI library's accept loop works
//! unchanged. It counts as started once it answers an `FCGI_GET_VALUES`
//! probe. Each request is a `RESPONDER` request with `FCGI_KEEP_CONN` on a
//! connection kept open between requests; the request body is streamed to
//! the worker as it arrives and the response streamed back as it is written.
//! This module owns the process, its socket and its connections; it never
//! decides when the process should start or stop.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Response;
use http_body::Body as _;
use http_body_util::BodyExt;
use psd_fcgi::{self as fcgi, EndRequest, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::process::{self, WorkerProcess};
use tokio::time::{timeout, Instant};

use super::{cgi, Job, JobParts, Spawn};
use crate::body::{self, Body, BoxError, RequestBody};
use crate::config::{LocationConfig, WorkerCommand};
use crate::error::{Cause, Error, Retry};

/// psd sends one request at a time on each connection, always with this id.
const REQUEST_ID: u16 = 1;
/// Response chunks buffered between the worker and a slow client.
const BODY_CHANNEL_DEPTH: usize = 16;

/// A running FastCGI worker process.
pub(crate) struct FastCgiWorker {
    proc: WorkerProcess,
    socket: PathBuf,
    label: Arc<str>,
    location: Arc<LocationConfig>,
    /// Connections that finished a request with the worker keeping them open.
    idle: Mutex<Vec<Conn>>,
    /// The budget kept connections count against.
    processes: Arc<process::ProcessTable>,
    /// Variables of the worker sent with every request: its state URLs.
    env: Vec<(&'static str, Arc<str>)>,
}

/// What a worker's environment says about the worker rather than the
/// request, sent with every request too: FastCGI libraries (Perl's FCGI,
/// CGI::Fast, PHP) replace the environment with each request's variables.
fn worker_env(spawn: &Spawn<'_>) -> Vec<(&'static str, Arc<str>)> {
    let mut env = vec![(
        "PSD_RESUMED",
        Arc::from(if spawn.resumed { "1" } else { "0" }),
    )];
    if let Some((state, shared)) = spawn.state_urls {
        env.push(("PSD_STATE_URL", state.into()));
        env.push(("PSD_SHARED_URL", shared.into()));
    }
    env
}

impl Drop for FastCgiWorker {
    fn drop(&mut self) {
        let kept = self.idle.get_mut().map_or(0, |idle| idle.len());
        self.processes.release_connections(kept);
    }
}

/// A connection to the worker, with the buffers it reuses request after
/// request.
struct Conn {
    stream: UnixStream,
    /// What was read from the worker and not yet decoded.
    input: BytesMut,
    /// The request's records on their way out.
    output: BytesMut,
}

/// Buffers that grew past this (a large response or request) are not kept.
const KEPT_BUFFER: usize = 16 * 1024;

impl Conn {
    fn new(stream: UnixStream) -> Conn {
        Conn {
            stream,
            input: BytesMut::with_capacity(4096),
            output: BytesMut::with_capacity(1024),
        }
    }
}

type Reply = Option<oneshot::Sender<Result<Response<Body>, Error>>>;

impl FastCgiWorker {
    pub async fn start(
        spawn: &Spawn<'_>,
        command: &WorkerCommand,
    ) -> Result<Arc<FastCgiWorker>, Error> {
        let location = spawn.location;
        let socket = spawn
            .run_dir
            .join(format!("{}.sock", process::random_hex()));
        let listener = std::os::unix::net::UnixListener::bind(&socket).map_err(|e| {
            Error::WorkerStart(Cause::new(format!("binding {}", socket.display()), e))
        })?;
        let listener: OwnedFd = listener.into();

        let mut cmd = process::command(spawn, &command.program, &command.args);
        cmd.stdin(Stdio::from(listener));
        let launched = process::launch(cmd, spawn, &command.program, Some(socket.clone()))?;
        let pid = launched.proc.pid();

        let process = Arc::new(FastCgiWorker {
            proc: launched.proc,
            socket,
            label: spawn.label.clone(),
            env: worker_env(spawn),
            location: location.clone(),
            idle: Mutex::new(vec![]),
            processes: spawn.processes.clone(),
        });
        let probe = async {
            process
                .probe()
                .await
                .map_err(|e| format!("FastCGI probe failed: {e}"))
        };
        let conn = process
            .proc
            .await_ready(location.worker_start_timeout, &command.program, probe)
            .await?;
        process.checkin(Conn::new(conn));
        tracing::info!(session = %process.label, app = %spawn.location.prefix, pid, program = %command.program.display(), "worker started");
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn done(&self) -> watch::Receiver<bool> {
        self.proc.done()
    }

    /// Asks the worker for `FCGI_MPXS_CONNS`: an answer proves its accept loop
    /// runs. The connection is then kept for the first request.
    async fn probe(&self) -> io::Result<UnixStream> {
        let mut conn = UnixStream::connect(&self.socket).await?;
        let mut body = BytesMut::new();
        fcgi::encode_name_value(&mut body, b"FCGI_MPXS_CONNS", b"");
        let mut out = BytesMut::new();
        fcgi::encode_record(
            &mut out,
            RecordType::GetValues,
            fcgi::NULL_REQUEST_ID,
            &body,
        );
        conn.write_all(&out).await?;
        let mut buf = BytesMut::with_capacity(256);
        loop {
            while let Some(record) = fcgi::decode(&mut buf).map_err(io::Error::other)? {
                if record.kind == RecordType::GetValuesResult {
                    return Ok(conn);
                }
            }
            if conn.read_buf(&mut buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// An open connection: an idle one the worker kept (`true`), or a new one.
    /// A request that can be replayed skips the check that the worker still
    /// holds the kept one (a syscall): if it does not, the request fails with
    /// nothing received and is sent again on a new connection.
    async fn checkout(&self, fresh: bool, replayable: bool) -> io::Result<(Conn, bool)> {
        if !fresh {
            loop {
                let conn = self.idle.lock().expect("idle list lock").pop();
                if conn.is_some() {
                    self.processes.release_connections(1);
                }
                match conn {
                    Some(conn) if replayable || still_open(&conn.stream) => {
                        return Ok((conn, true))
                    }
                    Some(_) => continue,
                    None => break,
                }
            }
        }
        let stream = UnixStream::connect(&self.socket).await?;
        Ok((Conn::new(stream), false))
    }

    /// Keeps `conn` for the next request, unless the descriptors kept
    /// across all workers have reached their budget: then it is closed, and
    /// the session's next request connects again.
    fn checkin(&self, mut conn: Conn) {
        if !self.processes.keep_connection() {
            return;
        }
        if conn.input.capacity() > KEPT_BUFFER || conn.output.capacity() > KEPT_BUFFER {
            conn.input = BytesMut::new();
            conn.output = BytesMut::new();
        }
        conn.input.clear();
        conn.output.clear();
        self.idle.lock().expect("idle list lock").push(conn);
    }

    /// Serves one request and answers through `job.reply`. A worker that
    /// breaks the protocol, closes mid-request or misses a deadline is killed
    /// here, so the session starts a fresh one for its next request. A
    /// worker found dead before anything was sent gives the job back.
    pub async fn serve(self: Arc<Self>, job: Job) -> Option<Job> {
        // A worker may close a kept connection just after psd took it for
        // the next request (libfcgi decides to close only once it finishes a
        // request), or die just then (killed). Nothing reached the worker,
        // so a request is safe to send again, once, on a fresh connection
        // (or, if the worker is dead, to its successor) when psd can send
        // its body again: none, or one it holds in memory.
        let replay = job
            .request
            .extensions()
            .get::<body::Replay>()
            .map(|r| r.0.clone());
        let replayable = job.request.body().is_end_stream() || replay.is_some();
        let again = move || body::buffered(replay.clone().unwrap_or_default());
        // The connection first, so that a dead worker is found out with the
        // job still whole.
        let first = match self.checkout(false, replayable).await {
            Err(e) if self.proc.found_dead(&e).await => return Some(job),
            first => first,
        };
        let JobParts {
            request,
            meta,
            reply,
        } = *job;
        let mut reply = Some(reply);
        let (parts, mut body) = request.into_parts();
        let params = cgi::params(&parts, &meta, &self.env);
        let mut fresh = false;
        let mut conn = Some(first);
        let outcome = loop {
            let attempt = match conn.take() {
                Some(first) => first,
                None => self.checkout(true, replayable).await,
            };
            match self.exchange(&params, body, &mut reply, attempt).await {
                Err(Failure::Stale(e)) if replayable && !fresh => {
                    // Killed while its connection was kept: nothing reached it.
                    if self.proc.found_dead(&e).await {
                        let reply = reply.take()?;
                        let request = http::Request::from_parts(parts, again());
                        return Some(Box::new(JobParts {
                            request,
                            meta,
                            reply,
                        }));
                    }
                    tracing::debug!(session = %self.label, "kept connection was closed ({e}); retrying on a new one");
                    fresh = true;
                    body = again();
                }
                Err(Failure::Stale(e) | Failure::Other(e)) => break Err(e),
                Ok(conn) => break Ok(conn),
            }
        };
        match outcome {
            Ok(Some(conn)) => self.checkin(conn),
            Ok(None) => {}
            Err(e) => {
                if e.condemns_worker() {
                    tracing::warn!(session = %self.label, pid = self.pid(), "{e}; replacing the worker");
                    self.kill();
                } else {
                    tracing::info!(session = %self.label, pid = self.pid(), "request failed: {e}");
                }
                if let Some(reply) = reply.take() {
                    let _ = reply.send(Err(e));
                }
            }
        }
        None
    }

    /// Runs one request on one connection. Returns the connection if it can
    /// carry another request.
    async fn exchange(
        &self,
        params: &[u8],
        body: RequestBody,
        reply: &mut Reply,
        conn: io::Result<(Conn, bool)>,
    ) -> Result<Option<Conn>, Failure> {
        let started = Instant::now();
        let (mut conn, reused) = conn.map_err(|e| {
            Failure::Other(Error::WorkerConnection(Cause::new(
                "connecting to worker",
                e,
            )))
        })?;
        let mut received = false;
        let head = &mut conn.output;
        fcgi::encode_begin_request(head, REQUEST_ID, fcgi::ROLE_RESPONDER, fcgi::KEEP_CONN);
        fcgi::encode_stream(head, RecordType::Params, REQUEST_ID, params);
        fcgi::encode_end_of_stream(head, RecordType::Params, REQUEST_ID);

        let written = {
            let (mut rd, mut wr) = conn.stream.split();
            let result = {
                let write = send_request(
                    &mut wr,
                    &mut conn.output,
                    body,
                    self.location.max_request_body,
                );
                let read =
                    self.read_response(&mut rd, &mut conn.input, reply, started, &mut received);
                tokio::pin!(write, read);
                let mut written = false;
                loop {
                    tokio::select! {
                        w = &mut write, if !written => match w {
                            Ok(()) => written = true,
                            Err(e) => break Err(e),
                        },
                        r = &mut read => break r.map(|complete| written && complete),
                    }
                }
            };
            // Nothing came back on a connection the worker had kept: it
            // closed that connection rather than failing this request.
            match result {
                Err(e) if reused && !received && e.retry() == Retry::ReusedConnection => {
                    return Err(Failure::Stale(e))
                }
                other => other.map_err(Failure::Other)?,
            }
        };
        // A worker that answered before reading the whole body leaves the
        // connection in an unknown state, and one whose client went away
        // was cut off: neither is reused.
        Ok(written.then_some(conn))
    }

    async fn read_response(
        &self,
        rd: &mut tokio::net::unix::ReadHalf<'_>,
        buf: &mut BytesMut,
        reply: &mut Reply,
        started: Instant,
        received: &mut bool,
    ) -> Result<bool, Error> {
        let timeout_after = self.location.request_timeout;
        let head_deadline = started + timeout_after;
        let mut phase = Phase::Head(BytesMut::new());
        loop {
            while let Some(record) = fcgi::decode(buf)
                .map_err(|e| Error::Worker(Cause::new("FastCGI protocol error", e)))?
            {
                if record.request_id != REQUEST_ID {
                    if record.request_id == fcgi::NULL_REQUEST_ID {
                        continue;
                    }
                    return Err(Error::Worker(
                        format!("record for unknown request id {}", record.request_id).into(),
                    ));
                }
                match record.kind {
                    RecordType::Stdout => match &mut phase {
                        Phase::Head(head) => {
                            head.extend_from_slice(&record.content);
                            if let Some(held) = parse_head(head)? {
                                phase = held;
                            }
                        }
                        Phase::Held(_, body) => body.extend_from_slice(&record.content),
                        Phase::Streaming(tx) => {
                            if !record.content.is_empty()
                                && tx.send(Ok(record.content)).await.is_err()
                            {
                                // The client went away: the request is aborted by
                                // closing its connection (nginx does the same), so
                                // a worker streaming without end stops at its next
                                // write instead of holding the session's turn.
                                tracing::debug!(session = %self.label, "client gone mid-response; aborting the request");
                                return Ok(false);
                            }
                        }
                    },
                    RecordType::Stderr => {
                        let text = String::from_utf8_lossy(&record.content);
                        for line in text.lines().filter(|l| !l.is_empty()) {
                            tracing::info!(session = %self.label, pid = self.pid(), "worker: {line}");
                        }
                    }
                    RecordType::EndRequest => {
                        let end = EndRequest::parse(&record.content)
                            .map_err(|e| Error::Worker(Cause::new("FastCGI protocol error", e)))?;
                        return match phase {
                            // The whole response was in what was read: one
                            // body, no channel, no streaming.
                            Phase::Held(head, body) => {
                                send_head(reply, head, body::full(body.freeze()));
                                Ok(true)
                            }
                            Phase::Streaming(_) => Ok(true),
                            Phase::Head(head) => Err(Error::Worker(match end.protocol_status {
                                EndRequest::OVERLOADED => "worker is overloaded".into(),
                                EndRequest::CANT_MPX_CONN => "worker refused the connection".into(),
                                _ if head.is_empty() => {
                                    "worker ended the request without a response".into()
                                }
                                _ => format!(
                                    "response ended inside its headers ({} bytes)",
                                    head.len()
                                )
                                .into(),
                            })),
                        };
                    }
                    _ => {}
                }
            }
            // More must be read: a response whose head is in starts streaming now.
            if matches!(phase, Phase::Held(..)) {
                let Phase::Held(head, held) =
                    std::mem::replace(&mut phase, Phase::Head(BytesMut::new()))
                else {
                    unreachable!("matched above")
                };
                let (tx, streamed) = body::channel(BODY_CHANNEL_DEPTH);
                send_head(reply, head, streamed);
                if !held.is_empty() {
                    let _ = tx.send(Ok(held.freeze())).await;
                }
                phase = Phase::Streaming(tx);
            }
            let wait = match phase {
                Phase::Streaming(_) => timeout_after,
                _ => head_deadline.saturating_duration_since(Instant::now()),
            };
            let failure = match timeout(wait, rd.read_buf(buf)).await {
                Ok(Ok(0)) => {
                    Error::WorkerConnection("worker closed the connection mid-request".into())
                }
                Ok(Ok(_)) => {
                    *received = true;
                    continue;
                }
                Ok(Err(e)) => Error::WorkerConnection(Cause::new("reading from worker", e)),
                Err(_) => Error::Timeout(timeout_after),
            };
            if let Phase::Streaming(tx) = phase {
                // The head is already sent: abort the body so the client sees
                // a truncated response rather than a complete-looking one.
                let _ = tx.send(Err(failure.to_string().into())).await;
            }
            return Err(failure);
        }
    }

    /// Kills the worker at once.
    pub fn kill(&self) {
        self.proc.kill();
    }

    /// SIGTERM, then SIGKILL if the worker is still there after `grace`.
    pub async fn stop(&self, grace: Duration) {
        let closed = self.idle.lock().expect("idle list lock").drain(..).count();
        self.processes.release_connections(closed);
        self.proc.stop(grace).await;
    }
}

/// Where reading a response has got to.
enum Phase {
    /// Collecting the CGI head.
    Head(BytesMut),
    /// Head parsed, body gathered from what was read so far; nothing sent yet.
    Held(cgi::Head, BytesMut),
    /// Head sent; the body follows through this channel.
    Streaming(mpsc::Sender<Result<Bytes, BoxError>>),
}

/// `Held` once `head` holds a whole CGI head, `None` while it does not.
fn parse_head(head: &mut BytesMut) -> Result<Option<Phase>, Error> {
    let Some((head_len, body_start)) = cgi::head_end(head) else {
        if head.len() > cgi::MAX_HEAD_LEN {
            return Err(Error::Worker("response head larger than 64 KiB".into()));
        }
        return Ok(None);
    };
    let parsed = cgi::parse_head(&head[..head_len])
        .map_err(|e| Error::BadResponse(Cause::new("invalid CGI response", e)))?;
    let rest = head.split_off(body_start);
    Ok(Some(Phase::Held(parsed, rest)))
}

fn send_head(reply: &mut Reply, head: cgi::Head, body: Body) {
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    if let Some(reply) = reply.take() {
        let _ = reply.send(Ok(response));
    }
}

/// How one attempt at a request failed.
enum Failure {
    /// A kept connection turned out closed before anything came back.
    Stale(Error),
    Other(Error),
}

/// BEGIN_REQUEST and PARAMS, then the body as STDIN records as it arrives.
async fn send_request(
    wr: &mut tokio::net::unix::WriteHalf<'_>,
    out: &mut BytesMut,
    mut body: RequestBody,
    limit: u64,
) -> Result<(), Error> {
    let worker_io = |e: io::Error| Error::WorkerConnection(Cause::new("writing to worker", e));
    if body.is_end_stream() {
        // No body: the whole request in one write. libfcgi discards what it
        // read past the PARAMS along with the request, but an empty STDIN
        // arriving in a later read stays in the socket and makes the next
        // request on the connection a protocol error: the worker closes it.
        fcgi::encode_end_of_stream(out, RecordType::Stdin, REQUEST_ID);
        return wr.write_all(out).await.map_err(worker_io);
    }
    wr.write_all(out).await.map_err(worker_io)?;
    let mut sent: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::BadRequest(Cause::new("reading request body", e)))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        sent += data.len() as u64;
        if sent > limit {
            return Err(Error::BodyTooLarge { limit });
        }
        out.clear();
        fcgi::encode_stream(out, RecordType::Stdin, REQUEST_ID, &data);
        wr.write_all(out).await.map_err(worker_io)?;
    }
    out.clear();
    fcgi::encode_end_of_stream(out, RecordType::Stdin, REQUEST_ID);
    wr.write_all(out).await.map_err(worker_io)
}

/// Whether the worker still holds its end of an idle connection.
fn still_open(conn: &UnixStream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    let mut byte = [0u8; 1];
    matches!(
        recv(
            conn.as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
        ),
        Err(nix::errno::Errno::EAGAIN)
    )
}
