//! A worker process, whatever protocol it speaks: how it is started (its
//! environment, its own process group, its stderr into the log), how its
//! exit is noticed at once, and how it is stopped (SIGTERM, then SIGKILL for
//! the whole group). The protocol modules decide what its stdin, stdout and
//! extra descriptors are.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout, Command};
use tokio::sync::watch;
use tokio::time::timeout;

use super::Spawn;
use crate::error::Error;

/// The read buffer for a worker's stderr.
const STDERR_BUFFER: usize = 512;

/// A running child process; the handle does not own it (the exit watcher does).
pub(crate) struct Proc {
    pid: u32,
    session: Arc<str>,
    done: watch::Receiver<bool>,
}

/// What [`launch`] hands back besides the process.
pub(crate) struct Launched {
    pub proc: Proc,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
}

/// The command for a session's worker: a clean environment (`PATH`,
/// `PassEnv`, `SetEnv`, psd's variables), the working directory, its own
/// process group, stderr piped to the log, stdin and stdout closed unless
/// the caller says otherwise.
pub(crate) fn command(spawn: &Spawn<'_>, program: &Path, args: &[String]) -> Command {
    let location = spawn.location;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
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
    // User and Group apply when psd runs as root, as in Apache; the standard
    // library drops supplementary groups when it changes the uid.
    if nix::unistd::geteuid().is_root() {
        if let Some((_, uid, primary)) = &location.user {
            cmd.uid(*uid).gid(*primary);
        }
        if let Some((_, gid)) = &location.group {
            cmd.gid(*gid);
        }
    }
    cmd
}

/// Spawns `cmd` under the location's scheduling policy, logs its stderr
/// line by line with the session id, and watches for its exit; `cleanup` is
/// removed once it has exited.
pub(crate) fn launch(
    mut cmd: Command,
    spawn: &Spawn<'_>,
    program: &Path,
    cleanup: Option<PathBuf>,
) -> Result<Launched, Error> {
    let session = spawn.session_id;
    let mut child = cmd.spawn().map_err(|e| {
        if let Some(path) = &cleanup {
            let _ = std::fs::remove_file(path);
        }
        Error::WorkerStart(format!("{}: {e}", program.display()))
    })?;
    let pid = child.id().unwrap_or_default();
    // Set from here rather than between fork and exec, which would cost the
    // spawn its posix_spawn fast path; the worker has barely started.
    if let Err(e) = super::sched::set_policy(pid, spawn.location.scheduling) {
        tracing::warn!(session = %session, pid, "setting the scheduling policy: {e}");
    }
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    if let Some(stderr) = child.stderr.take() {
        let session = session.clone();
        tokio::spawn(async move {
            // A small buffer: every live worker has one, and longer lines
            // are still read whole (they just take more reads).
            let mut lines = BufReader::with_capacity(STDERR_BUFFER, stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(session = %session, pid, "worker: {line}");
            }
        });
    }
    let (done_tx, done) = watch::channel(false);
    {
        let session = session.clone();
        tokio::spawn(async move {
            match child.wait().await {
                Ok(status) => tracing::info!(session = %session, pid, %status, "worker exited"),
                Err(e) => tracing::warn!(session = %session, pid, "waiting for worker: {e}"),
            }
            if let Some(path) = cleanup {
                let _ = std::fs::remove_file(path);
            }
            let _ = done_tx.send(true);
        });
    }
    Ok(Launched {
        proc: Proc {
            pid,
            session: session.clone(),
            done,
        },
        stdin,
        stdout,
    })
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn done(&self) -> watch::Receiver<bool> {
        self.done.clone()
    }

    /// Waits until `probe` shows the worker answering, racing its exit, for
    /// at most `limit` (`WorkerStartTimeout`); on failure the worker is
    /// killed and the error says why.
    pub async fn await_ready<T>(
        &self,
        limit: Duration,
        program: &Path,
        probe: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, Error> {
        let ready = async {
            tokio::select! {
                answered = probe => answered,
                _ = super::wait_gone(self.done()) => Err("exited before it was ready".into()),
            }
        };
        let why = match timeout(limit, ready).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(why)) => why,
            Err(_) => format!("not ready within WorkerStartTimeout ({limit:?})"),
        };
        self.kill();
        Err(Error::WorkerStart(format!("{}: {why}", program.display())))
    }

    /// SIGKILL to the worker's process group, at once.
    pub fn kill(&self) {
        signal_group(self.pid, Signal::SIGKILL);
    }

    /// SIGTERM, then SIGKILL if the worker is still there after `grace`.
    pub async fn stop(&self, grace: Duration) {
        signal_group(self.pid, Signal::SIGTERM);
        if timeout(grace, super::wait_gone(self.done())).await.is_err() {
            tracing::warn!(session = %self.session, pid = self.pid, "worker ignored SIGTERM for {grace:?}; killing it");
            signal_group(self.pid, Signal::SIGKILL);
            super::wait_gone(self.done()).await;
        }
        // Whatever the worker left in its group goes too.
        signal_group(self.pid, Signal::SIGKILL);
    }
}

fn signal_group(pid: u32, signal: Signal) {
    if pid > 0 {
        // ESRCH (already gone) is the normal case after an exit.
        let _ = killpg(Pid::from_raw(pid as i32), signal);
    }
}

/// 64 random bits as hex, for socket names.
pub(crate) fn random_hex() -> String {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).expect("the OS random number generator failed");
    raw.iter().map(|b| format!("{b:02x}")).collect()
}
