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
use http_body_util::BodyExt;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use psd_fcgi::{self as fcgi, EndRequest, RecordType};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{timeout, Instant};

use super::{cgi, Job, Spawn};
use crate::body::{self, Body, BoxError, RequestBody};
use crate::config::{LocationConfig, WorkerCommand};
use crate::error::Error;

/// psd sends one request at a time on each connection, always with this id.
const REQUEST_ID: u16 = 1;
/// Response chunks buffered between the worker and a slow client.
const BODY_CHANNEL_DEPTH: usize = 16;

/// A running FastCGI worker process.
pub(crate) struct Process {
    pid: u32,
    socket: PathBuf,
    session_id: Arc<str>,
    location: Arc<LocationConfig>,
    /// Connections that finished a request with the worker keeping them open.
    idle: Mutex<Vec<UnixStream>>,
    done: watch::Receiver<bool>,
}

type Reply = Option<oneshot::Sender<Result<Response<Body>, Error>>>;

impl Process {
    pub async fn start(spawn: &Spawn<'_>, command: &WorkerCommand) -> Result<Arc<Process>, Error> {
        let location = spawn.location;
        let socket = spawn.run_dir.join(format!("{}.sock", random_hex()));
        let listener = std::os::unix::net::UnixListener::bind(&socket)
            .map_err(|e| Error::WorkerStart(format!("binding {}: {e}", socket.display())))?;
        let listener: OwnedFd = listener.into();

        let mut cmd = tokio::process::Command::new(&command.program);
        cmd.args(&command.args)
            .stdin(Stdio::from(listener))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .envs(
                location
                    .pass_env
                    .iter()
                    .filter_map(|name| Some((name, std::env::var_os(name)?))),
            )
            .envs(location.set_env.iter().map(|(k, v)| (k, v)))
            .env("PSD_SESSION_ID", &**spawn.session_id)
            .env("PSD_APP", &location.prefix)
            .env("PSD_RESUMED", if spawn.resumed { "1" } else { "0" })
            // Its own process group: a terminal's ^C reaches psd only, and a
            // stop reaches the worker's own children too.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &location.working_directory {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().map_err(|e| {
            let _ = std::fs::remove_file(&socket);
            Error::WorkerStart(format!("{}: {e}", command.program.display()))
        })?;
        let pid = child.id().unwrap_or_default();
        let session_id = spawn.session_id.clone();

        if let Some(stderr) = child.stderr.take() {
            let session = session_id.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(session = %session, pid, "worker: {line}");
                }
            });
        }
        let (done_tx, done) = watch::channel(false);
        {
            let session = session_id.clone();
            let socket = socket.clone();
            tokio::spawn(async move {
                match child.wait().await {
                    Ok(status) => tracing::info!(session = %session, pid, %status, "worker exited"),
                    Err(e) => tracing::warn!(session = %session, pid, "waiting for worker: {e}"),
                }
                let _ = std::fs::remove_file(&socket);
                let _ = done_tx.send(true);
            });
        }

        let process = Arc::new(Process {
            pid,
            socket,
            session_id,
            location: location.clone(),
            idle: Mutex::new(vec![]),
            done,
        });
        let ready = async {
            tokio::select! {
                probed = process.probe() => probed.map_err(|e| format!("FastCGI probe failed: {e}")),
                _ = super::wait_gone(process.done()) => Err("exited before it was ready".into()),
            }
        };
        match timeout(location.worker_start_timeout, ready).await {
            Ok(Ok(conn)) => {
                process.checkin(conn);
                tracing::info!(session = %process.session_id, pid, program = %command.program.display(), "worker started");
                Ok(process)
            }
            Ok(Err(why)) => {
                process.kill();
                Err(Error::WorkerStart(format!(
                    "{}: {why}",
                    command.program.display()
                )))
            }
            Err(_) => {
                process.kill();
                Err(Error::WorkerStart(format!(
                    "{}: not ready within WorkerStartTimeout ({:?})",
                    command.program.display(),
                    location.worker_start_timeout
                )))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn done(&self) -> watch::Receiver<bool> {
        self.done.clone()
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

    /// An open connection: an idle one the worker kept, or a new one.
    async fn checkout(&self) -> io::Result<UnixStream> {
        loop {
            let conn = self.idle.lock().expect("idle list lock").pop();
            match conn {
                Some(conn) if still_open(&conn) => return Ok(conn),
                Some(_) => continue,
                None => return UnixStream::connect(&self.socket).await,
            }
        }
    }

    fn checkin(&self, conn: UnixStream) {
        self.idle.lock().expect("idle list lock").push(conn);
    }

    /// Serves one request and answers through `job.reply`. A worker that
    /// breaks the protocol, closes mid-request or misses a deadline is killed
    /// here, so the session starts a fresh one for its next request.
    pub async fn serve(self: Arc<Self>, job: Job) {
        let Job {
            request,
            meta,
            reply,
        } = job;
        let mut reply = Some(reply);
        let (parts, body) = request.into_parts();
        let params = cgi::params(&parts, &meta);
        match self.exchange(&params, body, &mut reply).await {
            Ok(Some(conn)) => self.checkin(conn),
            Ok(None) => {}
            Err(e) => {
                if e.condemns_worker() {
                    tracing::warn!(session = %self.session_id, pid = self.pid, "{e}; replacing the worker");
                    self.kill();
                } else {
                    tracing::info!(session = %self.session_id, pid = self.pid, "request failed: {e}");
                }
                if let Some(reply) = reply.take() {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    /// Runs one request on one connection. Returns the connection if it can
    /// carry another request.
    async fn exchange(
        &self,
        params: &[(String, Vec<u8>)],
        body: RequestBody,
        reply: &mut Reply,
    ) -> Result<Option<UnixStream>, Error> {
        let started = Instant::now();
        let mut conn = self
            .checkout()
            .await
            .map_err(|e| Error::Worker(format!("connecting to worker: {e}")))?;
        let mut head = BytesMut::with_capacity(1024);
        fcgi::encode_begin_request(&mut head, REQUEST_ID, fcgi::ROLE_RESPONDER, fcgi::KEEP_CONN);
        fcgi::encode_params(
            &mut head,
            REQUEST_ID,
            params.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())),
        );

        let written = {
            let (mut rd, mut wr) = conn.split();
            let write = send_request(&mut wr, head, body, self.location.max_request_body);
            let read = self.read_response(&mut rd, reply, started);
            tokio::pin!(write, read);
            let mut written = false;
            loop {
                tokio::select! {
                    w = &mut write, if !written => {
                        w?;
                        written = true;
                    }
                    r = &mut read => {
                        r?;
                        break written;
                    }
                }
            }
        };
        // A worker that answered before reading the whole body leaves the
        // connection in an unknown state: it is not reused.
        Ok(written.then_some(conn))
    }

    async fn read_response(
        &self,
        rd: &mut tokio::net::unix::ReadHalf<'_>,
        reply: &mut Reply,
        started: Instant,
    ) -> Result<(), Error> {
        let timeout_after = self.location.request_timeout;
        let head_deadline = started + timeout_after;
        let mut buf = BytesMut::with_capacity(8192);
        let mut head = BytesMut::new();
        let mut body_tx: Option<mpsc::Sender<Result<Bytes, BoxError>>> = None;
        let mut client_gone = false;
        loop {
            while let Some(record) = fcgi::decode(&mut buf)
                .map_err(|e| Error::Worker(format!("FastCGI protocol error: {e}")))?
            {
                if record.request_id != REQUEST_ID {
                    if record.request_id == fcgi::NULL_REQUEST_ID {
                        continue;
                    }
                    return Err(Error::Worker(format!(
                        "record for unknown request id {}",
                        record.request_id
                    )));
                }
                match record.kind {
                    RecordType::Stdout => match &body_tx {
                        Some(tx) => {
                            if !client_gone
                                && !record.content.is_empty()
                                && tx.send(Ok(record.content)).await.is_err()
                            {
                                // Keep reading to the end so the connection stays usable.
                                client_gone = true;
                            }
                        }
                        None => {
                            head.extend_from_slice(&record.content);
                            if let Some(tx) = self.try_respond(&mut head, reply).await? {
                                body_tx = Some(tx);
                            }
                        }
                    },
                    RecordType::Stderr => {
                        let text = String::from_utf8_lossy(&record.content);
                        for line in text.lines().filter(|l| !l.is_empty()) {
                            tracing::info!(session = %self.session_id, pid = self.pid, "worker: {line}");
                        }
                    }
                    RecordType::EndRequest => {
                        let end = EndRequest::parse(&record.content)
                            .map_err(|e| Error::Worker(format!("FastCGI protocol error: {e}")))?;
                        if body_tx.is_none() {
                            let why = match end.protocol_status {
                                EndRequest::OVERLOADED => "worker is overloaded".into(),
                                EndRequest::CANT_MPX_CONN => "worker refused the connection".into(),
                                _ if head.is_empty() => {
                                    "worker ended the request without a response".into()
                                }
                                _ => format!(
                                    "response ended inside its headers ({} bytes)",
                                    head.len()
                                ),
                            };
                            return Err(Error::Worker(why));
                        }
                        return Ok(());
                    }
                    _ => {}
                }
            }
            let wait = match body_tx {
                None => head_deadline.saturating_duration_since(Instant::now()),
                Some(_) => timeout_after,
            };
            let failure = match timeout(wait, rd.read_buf(&mut buf)).await {
                Ok(Ok(0)) => Error::Worker("worker closed the connection mid-request".into()),
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => Error::Worker(format!("reading from worker: {e}")),
                Err(_) => Error::Timeout(timeout_after),
            };
            if let Some(tx) = body_tx {
                // The head is already sent: abort the body so the client sees
                // a truncated response rather than a complete-looking one.
                let _ = tx.send(Err(failure.to_string().into())).await;
            }
            return Err(failure);
        }
    }

    /// Once the whole head is in, sends the response to the client and returns
    /// the channel that feeds its body.
    async fn try_respond(
        &self,
        head: &mut BytesMut,
        reply: &mut Reply,
    ) -> Result<Option<mpsc::Sender<Result<Bytes, BoxError>>>, Error> {
        let Some((head_len, body_start)) = cgi::head_end(head) else {
            if head.len() > cgi::MAX_HEAD_LEN {
                return Err(Error::Worker("response head larger than 64 KiB".into()));
            }
            return Ok(None);
        };
        let parsed = cgi::parse_head(&head[..head_len])
            .map_err(|e| Error::Worker(format!("invalid CGI response: {e}")))?;
        let rest = head.split_off(body_start).freeze();
        let (tx, body) = body::channel(BODY_CHANNEL_DEPTH);
        let mut response = Response::new(body);
        *response.status_mut() = parsed.status;
        *response.headers_mut() = parsed.headers;
        if let Some(reply) = reply.take() {
            let _ = reply.send(Ok(response));
        }
        if !rest.is_empty() {
            let _ = tx.send(Ok(rest)).await;
        }
        Ok(Some(tx))
    }

    /// SIGKILL to the worker's process group, at once.
    pub fn kill(&self) {
        signal_group(self.pid, Signal::SIGKILL);
    }

    /// SIGTERM, then SIGKILL if the worker is still there after `grace`.
    pub async fn stop(&self, grace: Duration) {
        self.idle.lock().expect("idle list lock").clear();
        signal_group(self.pid, Signal::SIGTERM);
        if timeout(grace, super::wait_gone(self.done())).await.is_err() {
            tracing::warn!(session = %self.session_id, pid = self.pid, "worker ignored SIGTERM for {grace:?}; killing it");
            signal_group(self.pid, Signal::SIGKILL);
            super::wait_gone(self.done()).await;
        }
        // Whatever the worker left in its group goes too.
        signal_group(self.pid, Signal::SIGKILL);
    }
}

/// BEGIN_REQUEST and PARAMS, then the body as STDIN records as it arrives.
async fn send_request(
    wr: &mut tokio::net::unix::WriteHalf<'_>,
    head: BytesMut,
    mut body: RequestBody,
    limit: u64,
) -> Result<(), Error> {
    let worker_io = |e: io::Error| Error::Worker(format!("writing to worker: {e}"));
    wr.write_all(&head).await.map_err(worker_io)?;
    let mut sent: u64 = 0;
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::BadRequest(format!("reading request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        sent += data.len() as u64;
        if sent > limit {
            return Err(Error::BodyTooLarge { limit });
        }
        out.clear();
        fcgi::encode_stream(&mut out, RecordType::Stdin, REQUEST_ID, &data);
        wr.write_all(&out).await.map_err(worker_io)?;
    }
    out.clear();
    fcgi::encode_end_of_stream(&mut out, RecordType::Stdin, REQUEST_ID);
    wr.write_all(&out).await.map_err(worker_io)
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

fn signal_group(pid: u32, signal: Signal) {
    if pid > 0 {
        // ESRCH (already gone) is the normal case after an exit.
        let _ = killpg(Pid::from_raw(pid as i32), signal);
    }
}

fn random_hex() -> String {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).expect("the OS random number generator failed");
    raw.iter().map(|b| format!("{b:02x}")).collect()
}
