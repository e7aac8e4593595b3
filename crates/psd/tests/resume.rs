//! Sessions that outlive their worker and psd itself: records in the state
//! store, read back on the registry's miss path. Real psd processes,
//! stopped with SIGTERM or killed with SIGKILL, and the Perl counter.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

fn perl_counter() -> PathBuf {
    repo().join("examples/counter-perl/counter.pl")
}

/// A first request, psd stopped by `signal` and started again, a second
/// request from the same browser: both answers.
fn across_a_restart(config: &str, signal: &str) -> (Reply, Reply, Daemon) {
    let mut d = Daemon::start(config);
    let c = Client::with_jar(&d.dir, "c");
    let before = c.get(&d.url("/"));
    assert_eq!(before.status, 200, "{}", d.log_text());
    d.signal(signal);
    d.restart();
    let after = c.get(&d.url("/"));
    assert_eq!(after.status, 200, "{}", d.log_text());
    (before, after, d)
}

fn assert_resumed(before: &Reply, after: &Reply) {
    assert_eq!(before.field("resumed").as_deref(), Some("0"));
    assert_eq!(after.field("session"), before.field("session"), "same id");
    assert_eq!(after.field("resumed").as_deref(), Some("1"));
    assert!(after.header("set-cookie").is_none(), "no new id handed out");
    assert_ne!(after.pid(), before.pid());
}

#[test]
fn a_session_resumes_after_psd_is_stopped_and_started() {
    let (before, after, _) = across_a_restart(&location("/", &perl_counter(), ""), "TERM");
    assert_resumed(&before, &after);
}

#[test]
fn a_session_resumes_after_psd_is_killed() {
    let (before, after, _) = across_a_restart(&location("/", &perl_counter(), ""), "KILL");
    assert_resumed(&before, &after);
}

#[test]
fn with_state_store_memory_nothing_survives_a_restart() {
    let config = format!("StateStore memory\n{}", location("/", &perl_counter(), ""));
    let (before, after, _) = across_a_restart(&config, "TERM");
    assert_ne!(after.field("session"), before.field("session"));
    assert_eq!(after.field("resumed").as_deref(), Some("0"));
    assert!(after.header("set-cookie").is_some());
}

#[test]
fn session_lifetime_counts_across_a_restart() {
    let mut d = Daemon::start(&location("/", &perl_counter(), "SessionLifetime 2s"));
    let c = Client::with_jar(&d.dir, "c");
    let before = c.get(&d.url("/"));
    d.signal("TERM");
    std::thread::sleep(Duration::from_millis(2_500));
    d.restart();
    let after = c.get(&d.url("/"));
    assert_ne!(after.field("session"), before.field("session"));
    assert_eq!(after.field("resumed").as_deref(), Some("0"));
}

#[test]
fn on_timeout_restart_gives_the_old_id_a_new_session() {
    let d = Daemon::start(&location(
        "/",
        &perl_counter(),
        "SessionTimeout 1s\nOnTimeout restart",
    ));
    let c = Client::with_jar(&d.dir, "c");
    let first = c.get(&d.url("/"));
    let pid = first.pid();
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)),
        "worker {pid} still running after its idle timeout"
    );
    let again = c.get(&d.url("/"));
    assert_ne!(again.field("session"), first.field("session"));
    assert_eq!(again.field("resumed").as_deref(), Some("0"));
    assert_eq!(again.count(), 1);
}

/// A store file psd cannot read must not be replaced by an empty one.
#[test]
fn a_corrupt_store_file_stops_psd_from_starting_and_names_the_file() {
    let dir = TempDir::new("corrupt");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let store = data.join("state.redb");
    std::fs::write(&store, vec![0x5a; 8192]).unwrap();
    let config = dir.join("psd.conf");
    std::fs::write(
        &config,
        format!(
            "Listen 127.0.0.1:0\nDataDir {}\n{}",
            data.display(),
            location("/", &perl_counter(), "")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(PSD)
        .args(["serve", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&store.display().to_string()), "{stderr}");
    assert_eq!(
        std::fs::read(&store).unwrap(),
        vec![0x5a; 8192],
        "left as it was"
    );
}
