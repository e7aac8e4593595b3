//! A worker process, whatever protocol it speaks: how it is started (its
//! environment, its own process group, its stderr into the log), how its
//! exit is noticed at once, and how it is stopped (SIGTERM, then SIGKILL for
//! the whole group). The protocol modules decide what its stdin, stdout and
//! extra descriptors are.

use std::collections::HashMap;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, watch};
use tokio::time::timeout;

use super::Spawn;
use crate::error::{Cause, Error};

/// psd's worker processes as a whole: their exits, noticed without holding
/// a descriptor for each, and the descriptors they do hold.
///
/// tokio would wait for each child through a pidfd, one more open file per
/// live worker on top of its stderr pipe and its kept connection; with a
/// 20,000-file limit that capped psd at 6,662 workers. Instead the children
/// are kept in one table, and every `SIGCHLD` has each of them asked
/// (`waitpid` with `WNOHANG`, by pid, so no other code's children are
/// touched) whether it has exited.
pub(crate) struct ProcessTable {
    children: Mutex<HashMap<u32, Watched>>,
    reaping: AtomicBool,
    /// The open-file limit psd runs under.
    fd_limit: usize,
    /// Live workers: each holds psd's end of its stderr pipe.
    live: AtomicUsize,
    /// Kept idle FastCGI connections, across all workers.
    kept: AtomicUsize,
    /// The pipe to the reaper, a helper that outlives psd only to kill the
    /// process groups of workers psd leaves behind.
    reaper: Mutex<Option<std::process::ChildStdin>>,
}

/// The reaper: a Perl one-liner (perl-base is essential on Debian) that
/// keeps the set of live worker process groups psd tells it about (`+ PGID`,
/// `- PGID` a line), and when its input ends — psd exited, however it died,
/// SIGKILL included — kills the groups still in it. `PR_SET_PDEATHSIG`
/// would not do: it fires when the thread that spawned a child exits, and
/// it costs the spawn its `posix_spawn` fast path.
const REAPER: &str = r#"
$SIG{$_} = "IGNORE" for qw(INT TERM HUP PIPE);
my %live;
while (<STDIN>) {
    my ($sign, $pgid) = split;
    next unless defined $pgid && $pgid =~ /^[1-9][0-9]*$/;
    if ($sign eq "+") { $live{$pgid} = 1 } else { delete $live{$pgid} }
}
kill "KILL", map { -$_ } keys %live;
"#;

struct Watched {
    child: Child,
    exited: Option<oneshot::Sender<io::Result<ExitStatus>>>,
}

impl Watched {
    fn exited(&mut self, status: io::Result<ExitStatus>) {
        if let Some(exited) = self.exited.take() {
            let _ = exited.send(status);
        }
    }
}

/// Descriptors left for clients, listeners, logs and connections in use
/// when deciding whether another idle connection may be kept.
const FD_RESERVE: usize = 512;

impl ProcessTable {
    pub fn new() -> Arc<ProcessTable> {
        let fd_limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| {
                usize::try_from(soft).unwrap_or(usize::MAX)
            });
        Arc::new(ProcessTable {
            children: Mutex::new(HashMap::new()),
            reaping: AtomicBool::new(false),
            fd_limit,
            live: AtomicUsize::new(0),
            kept: AtomicUsize::new(0),
            reaper: Mutex::new(None),
        })
    }

    /// Starts the reaper, in a process group of its own (a terminal's ^C
    /// must not take it down with psd, before psd has stopped its workers).
    fn start_reaper(&self) {
        let started = Command::new("perl")
            .args(["-e", REAPER])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        match started {
            Ok(mut child) => {
                *self.reaper.lock().expect("reaper lock") = child.stdin.take();
                // It exits when psd does; nobody waits for it but init.
                std::mem::forget(child);
            }
            Err(e) => tracing::warn!(
                "cannot start the worker reaper (perl): {e}; if psd is killed, its workers live on"
            ),
        }
    }

    /// Tells the reaper that process group `pgid` is live (`+`) or gone (`-`).
    fn tell_reaper(&self, sign: char, pgid: u32) {
        use std::io::Write;
        let mut reaper = self.reaper.lock().expect("reaper lock");
        if let Some(pipe) = reaper.as_mut() {
            if pipe
                .write_all(format!("{sign} {pgid}\n").as_bytes())
                .is_err()
            {
                tracing::warn!("the worker reaper is gone; if psd is killed, its workers live on");
                *reaper = None;
            }
        }
    }

    /// Starts listening for `SIGCHLD` (once), before the first child exists.
    fn reap_from_now(self: &Arc<Self>) -> io::Result<()> {
        if self.reaping.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.start_reaper();
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(stream) => stream,
            Err(e) => {
                self.reaping.store(false, Ordering::Release);
                return Err(e);
            }
        };
        let workers: Weak<ProcessTable> = Arc::downgrade(self);
        tokio::spawn(async move {
            while sigchld.recv().await.is_some() {
                let Some(workers) = workers.upgrade() else {
                    break;
                };
                workers.reap();
            }
        });
        Ok(())
    }

    /// Puts `child` in the table; the receiver gets its exit status.
    fn watch(&self, child: Child) -> oneshot::Receiver<io::Result<ExitStatus>> {
        let (exited, status) = oneshot::channel();
        let pid = child.id();
        let watched = Watched {
            child,
            exited: Some(exited),
        };
        self.children
            .lock()
            .expect("children lock")
            .insert(pid, watched);
        // It may have exited before it was in the table, its SIGCHLD seen
        // with nothing to find.
        self.reap();
        status
    }

    /// Collects every exited child. `waitid(WNOWAIT)` names an exited
    /// child without collecting it, so each exit costs one look; only a
    /// child psd did not start (psd used as a library) makes it ask each of
    /// its own in turn.
    fn reap(&self) {
        use nix::sys::wait::{waitid, Id, WaitPidFlag};
        let mut children = self.children.lock().expect("children lock");
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        loop {
            let Some(pid) = waitid(Id::All, flags).ok().and_then(|s| s.pid()) else {
                return;
            };
            let Some(mut watched) = children.remove(&(pid.as_raw() as u32)) else {
                break;
            };
            match watched.child.try_wait() {
                Ok(None) => {
                    children.insert(watched.child.id(), watched);
                    break;
                }
                status => watched.exited(status.map(|s| s.expect("matched above"))),
            }
        }
        children.retain(|_, watched| match watched.child.try_wait() {
            Ok(None) => true,
            status => {
                watched.exited(status.map(|s| s.expect("matched above")));
                false
            }
        });
    }

    /// Whether one more idle connection may be kept open: live workers'
    /// pipes and kept connections stay clear of the open-file limit, so a
    /// session that must connect again costs a connect, not a refusal.
    pub fn keep_connection(&self) -> bool {
        let held = self.live.load(Ordering::Relaxed) + self.kept.load(Ordering::Relaxed);
        if held + FD_RESERVE >= self.fd_limit {
            return false;
        }
        self.kept.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// An idle connection was taken for a request, or closed.
    pub fn release_connections(&self, n: usize) {
        self.kept.fetch_sub(n, Ordering::Relaxed);
    }
}

/// How long a worker whose socket failed is given to be seen exiting.
const DEATH_NOTICE: Duration = Duration::from_secs(1);

/// The read buffer for a worker's stderr.
const STDERR_BUFFER: usize = 512;

/// A running child process; the handle does not own it (the exit watcher does).
pub(crate) struct WorkerProcess {
    pid: u32,
    session: Arc<str>,
    done: watch::Receiver<bool>,
}

/// What [`launch`] hands back besides the process.
pub(crate) struct Launched {
    pub proc: WorkerProcess,
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
        .env("PSD_APP", &location.prefix)
        .env("PSD_RESUMED", if spawn.resumed { "1" } else { "0" })
        // Its own process group: a terminal's ^C reaches psd only, and a
        // stop reaches the worker's own children too.
        .process_group(0);
    if !spawn.spare {
        cmd.env("PSD_SESSION_ID", &**spawn.session_id);
    }
    if let Some((state, shared)) = spawn.state_urls {
        cmd.env("PSD_STATE_URL", state)
            .env("PSD_SHARED_URL", shared);
    }
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
    let session = spawn.label;
    let table = spawn.processes;
    let failed = |e: io::Error| {
        if let Some(path) = &cleanup {
            let _ = std::fs::remove_file(path);
        }
        Error::WorkerStart(Cause::new(program.display().to_string(), e))
    };
    table.reap_from_now().map_err(&failed)?;
    let mut child = cmd.spawn().map_err(&failed)?;
    let pid = child.id();
    // Set from here rather than between fork and exec, which would cost the
    // spawn its posix_spawn fast path; the worker has barely started.
    if let Err(e) = super::sched::set_policy(pid, spawn.location.scheduling) {
        tracing::warn!(session = %session, pid, "setting the scheduling policy: {e}");
    }
    if let Err(e) = super::limits::apply(pid, &spawn.location.rlimits) {
        tracing::warn!(session = %session, pid, "setting resource limits: {e}");
    }
    let stdin = child.stdin.take().map(ChildStdin::from_std).transpose();
    let stdout = child.stdout.take().map(ChildStdout::from_std).transpose();
    let stderr = child.stderr.take().map(ChildStderr::from_std).transpose();
    let exited = table.watch(child);
    table.tell_reaper('+', pid);
    let (stdin, stdout, stderr) = match (stdin, stdout, stderr) {
        (Ok(stdin), Ok(stdout), Ok(stderr)) => (stdin, stdout, stderr),
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => {
            signal_group(pid, Signal::SIGKILL);
            return Err(failed(e));
        }
    };
    table.live.fetch_add(1, Ordering::Relaxed);
    if let Some(stderr) = stderr {
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
        let table = table.clone();
        let location = spawn.location.clone();
        tokio::spawn(async move {
            match exited.await {
                Ok(Ok(status)) => match super::limits::blame(&status, &location.rlimits) {
                    Some(limit) => {
                        tracing::warn!(session = %session, pid, %status, "worker exited: ended by {limit}")
                    }
                    None => tracing::info!(session = %session, pid, %status, "worker exited"),
                },
                Ok(Err(e)) => tracing::warn!(session = %session, pid, "waiting for worker: {e}"),
                Err(_) => {
                    tracing::warn!(session = %session, pid, "psd stopped watching the worker")
                }
            }
            // Whatever the worker left in its group (its children) goes with it.
            signal_group(pid, Signal::SIGKILL);
            table.tell_reaper('-', pid);
            table.live.fetch_sub(1, Ordering::Relaxed);
            if let Some(path) = cleanup {
                let _ = std::fs::remove_file(path);
            }
            let _ = done_tx.send(true);
        });
    }
    Ok(Launched {
        proc: WorkerProcess {
            pid,
            session: session.clone(),
            done,
        },
        stdin,
        stdout,
    })
}

impl WorkerProcess {
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
        Err(Error::WorkerStart(
            format!("{}: {why}", program.display()).into(),
        ))
    }

    /// Whether the worker is dead, now that its socket failed us (`why`):
    /// its sockets close a moment before psd hears of its exit, so it is
    /// given [`DEATH_NOTICE`] to be seen exiting. If it is, nothing of the
    /// request reached it, and the request goes to a new worker.
    pub async fn found_dead(&self, why: &(dyn std::fmt::Display + Sync)) -> bool {
        if timeout(DEATH_NOTICE, super::wait_gone(self.done()))
            .await
            .is_err()
        {
            return false;
        }
        tracing::debug!(session = %self.session, pid = self.pid, "worker is gone ({why}); the request goes to a new one");
        true
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

/// SIGKILL to process group `pid` (a worker and whatever it started).
pub(crate) fn kill_group(pid: u32) {
    signal_group(pid, Signal::SIGKILL);
}

fn signal_group(pid: u32, signal: Signal) {
    if pid > 0 {
        // ESRCH (already gone) is the normal case after an exit.
        let _ = killpg(Pid::from_raw(pid as i32), signal);
    }
}

/// 64 random bits as hex, for socket and temp file names.
pub(crate) fn random_hex() -> String {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).expect("the OS random number generator failed");
    raw.iter().map(|b| format!("{b:02x}")).collect()
}
