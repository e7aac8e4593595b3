//! An HTTP worker process: socket activation, and the session's upstream.
//!
//! psd binds a TCP socket on 127.0.0.1 and passes it, listening, as fd 3
//! with `LISTEN_FDS=1`, `LISTEN_PID`, `LISTEN_FDNAMES=http` (systemd's
//! protocol) and `PORT`. A `/bin/sh` trampoline moves the socket from fd 0
//! to fd 3 and sets `LISTEN_PID` to its own pid before `exec`ing the program,
//! so the pid is the worker's. Requests go to it through an [`Upstream`]:
//! kept-alive HTTP/1.1 connections, headers rewritten, the `<Location>`
//! prefix taken off the path (and put back into `Location` and cookie
//! paths of responses); an `Upgrade: websocket` request becomes a byte
//! tunnel between client and worker.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::time::timeout;

use super::process::{self, WorkerProcess};
use super::upstream::{self, Upstream};
use super::{is_websocket, Activity, Job, Spawn};
use crate::body::{caused_by, ClientBody, IdleTimeout, Limited, OnEnd, TooLarge};
use crate::config::{LocationConfig, WorkerCommand};
use crate::error::{Cause, Error};

/// Moves the listening socket from fd 0 to fd 3 and exports LISTEN_PID as
/// the pid that then becomes the program's.
const TRAMPOLINE: &str = r#"exec 3<&0 0</dev/null; export LISTEN_PID=$$; exec "$0" "$@""#;

pub(crate) struct HttpWorker {
    proc: WorkerProcess,
    upstream: Upstream,
    session_id: Arc<str>,
    location: Arc<LocationConfig>,
    activity: Arc<Activity>,
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
            upstream: Upstream::new(
                addr,
                spawn.session_id.clone(),
                spawn.location.worker_concurrency,
            ),
            session_id: spawn.session_id.clone(),
            location: spawn.location.clone(),
            activity: spawn.activity.clone(),
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
        self.upstream.close_idle();
        self.proc.stop(grace).await;
    }

    /// Proxies one request; the future ends when the response body has been
    /// sent (or abandoned), so a session's requests never overlap. A worker
    /// found dead before the request was sent gives the job back.
    pub async fn serve(self: Arc<Self>, job: Job) -> Option<Job> {
        let websocket = is_websocket(job.request.headers());
        // The connection first, so that a dead worker is found out with the
        // job still whole.
        let conn = match self.upstream.connection(websocket).await {
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
        let request = request.map(|body| Limited::new(body, limit));
        let outgoing = upstream::forward(request, &meta, websocket, self.upstream.addr());
        let result = match conn {
            Ok(conn) => {
                timeout(
                    self.location.request_timeout,
                    self.upstream.send(conn, outgoing),
                )
                .await
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
            Ok(Err(e)) => Err(Error::WorkerConnection(Cause::new("proxying to worker", e))),
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
            upstream::tunnel(
                client,
                worker,
                self.activity.clone(),
                self.session_id.clone(),
                place,
            );
            return None;
        }

        let (mut parts, body) = response.into_parts();
        upstream::strip_hop_by_hop(&mut parts.headers, false);
        upstream::rewrite_for_prefix(&mut parts.headers, &meta.script_name, self.upstream.addr());
        let (done, finished) = oneshot::channel::<()>();
        // The worker may not go silent mid-body for longer than RequestTimeout.
        let body = OnEnd::new(
            IdleTimeout::new(body, self.location.request_timeout),
            |_| {
                drop(done);
            },
        );
        let _ = reply.send(Ok(Response::from_parts(parts, body.boxed())));
        let _ = finished.await;
        // Only now can the connection carry another request.
        self.upstream.give_back(sender);
        None
    }
}
