//! An HTTP worker process: how it listens, and the session's upstream.
//!
//! With `WorkerListen inherit`, psd binds a TCP socket on 127.0.0.1 and
//! passes it, listening, as fd 3 with `LISTEN_FDS=1`, `LISTEN_PID`,
//! `LISTEN_FDNAMES=http` (systemd's protocol) and `PORT`. A `/bin/sh`
//! trampoline moves the socket from fd 0 to fd 3 and sets `LISTEN_PID` to
//! its own pid before `exec`ing the program, so the pid is the worker's.
//! With `port` the program binds `PORT` itself, with `unix` the Unix
//! socket `PSD_SOCKET`; [`super::listen`] decides when it is ready.
//! Requests go to it through an [`Upstream`]:
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
use tokio::sync::{oneshot, watch};
use tokio::time::timeout;

use super::listen;
use super::process::{self, WorkerProcess};
use super::upstream::{self, Address, Upstream};
use super::{is_websocket, Activity, Job, JobParts, Spawn};
use crate::body::{caused_by, ClientBody, IdleTimeout, Limited, OnEnd, TooLarge};
use crate::config::{LocationConfig, WorkerCommand, WorkerListen};
use crate::error::{Cause, Error};

/// The command's arguments with `{port}` and `{socket}` filled in.
fn with_placeholders(args: &[String], port: &str, socket: &str) -> Vec<String> {
    args.iter()
        .map(|a| a.replace("{port}", port).replace("{socket}", socket))
        .collect()
}

/// Moves the listening socket from fd 0 to fd 3 and exports LISTEN_PID as
/// the pid that then becomes the program's.
const TRAMPOLINE: &str = r#"exec 3<&0 0</dev/null; export LISTEN_PID=$$; exec "$0" "$@""#;

pub(crate) struct HttpWorker {
    proc: WorkerProcess,
    upstream: Upstream,
    label: Arc<str>,
    location: Arc<LocationConfig>,
    activity: Arc<Activity>,
}

impl HttpWorker {
    pub async fn start(
        spawn: &Spawn<'_>,
        command: &WorkerCommand,
    ) -> Result<Arc<HttpWorker>, Error> {
        let location = spawn.location;
        let bind_failed = |e| Error::WorkerStart(Cause::new("binding a worker port", e));
        // How it listens: the command, its address, psd's copy of an
        // inherited socket, a socket file to remove after it.
        let (cmd, address, inherited, cleanup) = match location.worker_listen {
            WorkerListen::Inherit => {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(bind_failed)?;
                let addr = listener.local_addr().map_err(bind_failed)?;
                let listener: OwnedFd = listener.into();
                let ours = listener.try_clone().map_err(bind_failed)?;
                let mut args = vec![
                    "-c".to_string(),
                    TRAMPOLINE.to_string(),
                    command.program.to_string_lossy().into_owned(),
                ];
                args.extend(with_placeholders(
                    &command.args,
                    &addr.port().to_string(),
                    "",
                ));
                let mut cmd = process::command(spawn, Path::new("/bin/sh"), &args);
                cmd.stdin(Stdio::from(listener))
                    .env("LISTEN_FDS", "1")
                    .env("LISTEN_FDNAMES", "http")
                    .env("PORT", addr.port().to_string());
                (cmd, Address::Tcp(addr), Some(ours), None)
            }
            WorkerListen::Port => {
                let port = listen::free_port().map_err(bind_failed)?;
                let args = with_placeholders(&command.args, &port.to_string(), "");
                let mut cmd = process::command(spawn, &command.program, &args);
                cmd.env("PORT", port.to_string());
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                (cmd, Address::Tcp(addr), None, None)
            }
            WorkerListen::Unix => {
                let path = spawn
                    .run_dir
                    .join(format!("http-{}.sock", process::random_hex()));
                let socket = path.to_string_lossy().into_owned();
                let args = with_placeholders(&command.args, "", &socket);
                let mut cmd = process::command(spawn, &command.program, &args);
                cmd.env("PSD_SOCKET", &socket);
                (cmd, Address::Unix(path.clone()), None, Some(path))
            }
        };
        let launched = process::launch(cmd, spawn, &command.program, cleanup)?;
        let process = Arc::new(HttpWorker {
            proc: launched.proc,
            upstream: Upstream::new(address.clone(), spawn.label.clone(), location.concurrency()),
            label: spawn.label.clone(),
            location: location.clone(),
            activity: spawn.activity.clone(),
        });
        let probe = async {
            listen::accepting(&address, inherited.as_ref()).await?;
            match &location.worker_ready {
                Some(path) => listen::answering(&address, path).await,
                None => Ok(()),
            }
        };
        process
            .proc
            .await_ready(location.worker_start_timeout, &command.program, probe)
            .await?;
        tracing::info!(session = %process.label, app = %spawn.location.prefix, pid = process.pid(), %address, program = %command.program.display(), "worker started");
        if spawn.spare {
            process.upstream.preconnect().await;
        }
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
        let JobParts {
            mut request,
            meta,
            reply,
        } = *job;
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut request));
        let place = request
            .extensions()
            .get::<crate::connection::Place>()
            .cloned();
        let limit = self.location.max_request_body;
        let request = request.map(|body| Limited::new(body, limit));
        let outgoing = upstream::forward(request, &meta, websocket, self.upstream.host());
        let result = match conn {
            Ok(conn) => {
                // A worker whose process exits fails its requests at once,
                // even if something of it still holds the socket open.
                let exchange = async {
                    tokio::select! {
                        sent = self.upstream.send(conn, outgoing) => sent,
                        () = super::wait_gone(self.proc.done()) => {
                            Err("the worker exited with the request pending".into())
                        }
                    }
                };
                timeout(self.location.request_timeout, exchange).await
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
                    tracing::warn!(session = %self.label, pid = self.pid(), "{e}; replacing the worker");
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
                self.label.clone(),
                place,
            );
            return None;
        }

        let (mut parts, body) = response.into_parts();
        upstream::strip_hop_by_hop(&mut parts.headers, false);
        upstream::rewrite_for_prefix(&mut parts.headers, &meta.script_name, self.upstream.host());
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
