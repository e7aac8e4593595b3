//! SIGTERM/SIGINT: stop accepting, drain, stop every worker, exit 0, and
//! leave no process behind.

mod common;

use std::time::Duration;

use common::*;

fn live_sessions_then_signal(signal: &str, sessions: usize) {
    let worker = repo().join("examples/counter-perl/counter.pl");
    let mut d = Daemon::start(&location("/", &worker, ""));
    let pids: Vec<u32> = (0..sessions)
        .map(|_| Client::anonymous().get(&d.url("/")).pid())
        .collect();
    assert!(pids.iter().all(|&p| alive(p)));
    d.signal(signal);
    let status = d.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", d.log_text());
    let left: Vec<u32> = pids.into_iter().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "workers left behind: {left:?}");
    let sockets = std::fs::read_dir(d.dir.join("data/run")).unwrap().count();
    assert_eq!(sockets, 0, "worker sockets removed");
}

#[test]
fn sigterm_with_20_live_sessions_exits_0_and_leaves_no_worker() {
    live_sessions_then_signal("TERM", 20);
}

#[test]
fn sigint_behaves_like_sigterm() {
    live_sessions_then_signal("INT", 3);
}

#[test]
fn an_in_flight_request_finishes_during_shutdown() {
    let worker = test_worker("misbehave.pl");
    let mut d = Daemon::start(&location("/", &worker, ""));
    let url = d.url("/slow?ms=700");
    let request = std::thread::spawn(move || Client::anonymous().get(&url));
    assert!(eventually(Duration::from_secs(5), || d
        .log_text()
        .contains("worker started")));
    std::thread::sleep(Duration::from_millis(150));
    d.signal("TERM");
    let reply = request.join().unwrap();
    assert_eq!(reply.status, 200, "drained, not dropped: {reply:?}");
    assert_eq!(d.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn sighup_does_not_end_the_daemon_or_its_sessions() {
    let worker = repo().join("examples/counter-perl/counter.pl");
    let d = Daemon::start(&location("/", &worker, ""));
    let c = Client::with_jar(&d.dir, "c");
    let before = c.get(&d.url("/"));
    d.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || d
        .log_text()
        .contains("SIGHUP received")));
    let after = c.get(&d.url("/"));
    assert_eq!((after.pid(), after.count()), (before.pid(), 2));
}

#[test]
fn pid_file_holds_psds_pid_while_it_runs() {
    let worker = repo().join("examples/counter-perl/counter.pl");
    let dir = TempDir::new("pidfile");
    let pid_file = dir.join("psd.pid");
    let mut d = Daemon::start(&format!(
        "PidFile {}\n{}",
        pid_file.display(),
        location("/", &worker, "")
    ));
    let written = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(written.trim(), d.pid().to_string());
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(20)).code(), Some(0));
    assert!(!pid_file.exists(), "removed at exit");
}

#[test]
fn workers_run_as_user_and_group_when_psd_is_root() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to change users");
        return;
    }
    // A copy any user can read, in a folder any user can enter.
    let dir = TempDir::new("user");
    let script = dir.join("counter.pl");
    std::fs::copy(repo().join("examples/counter-perl/counter.pl"), &script).unwrap();
    // With the state helper it uses, found through PERL5LIB.
    std::fs::create_dir_all(dir.join("lib/PSD")).unwrap();
    std::fs::copy(
        repo().join("clients/perl/PSD/State.pm"),
        dir.join("lib/PSD/State.pm"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    for folder in ["", "lib", "lib/PSD"] {
        std::fs::set_permissions(dir.join(folder), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(
        dir.join("lib/PSD/State.pm"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a nobody user");
    let d = Daemon::start(&location(
        "/",
        &script,
        &format!(
            "User nobody\nWorkingDirectory {}\nSetEnv PERL5LIB {}",
            dir.0.display(),
            dir.join("lib").display()
        ),
    ));
    let r = Client::anonymous().get(&d.url("/"));
    assert_eq!(
        r.field("uid"),
        Some(nobody.uid.to_string()),
        "{r:?}\n{}",
        d.log_text()
    );
}
