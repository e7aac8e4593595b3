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

/// Five requests, psd stopped by `signal` and started again, a sixth
/// request from the same browser: the fifth answer and the sixth.
fn across_a_restart(config: &str, signal: &str) -> (Reply, Reply, Daemon) {
    let mut d = Daemon::start(config);
    let c = Client::with_jar(&d.dir, "c");
    let mut before = c.get(&d.url("/"));
    for _ in 0..4 {
        before = c.get(&d.url("/"));
    }
    assert_eq!(before.status, 200, "{}", d.log_text());
    d.signal(signal);
    d.restart();
    let after = c.get(&d.url("/"));
    assert_eq!(after.status, 200, "{}", d.log_text());
    (before, after, d)
}

fn assert_resumed(before: &Reply, after: &Reply) {
    assert_eq!(before.field("resumed").as_deref(), Some("0"));
    assert_eq!(before.count(), 5);
    assert_eq!(
        after.count(),
        6,
        "the count comes back from the session's state"
    );
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
fn read_only_ids_still_work_after_psd_is_killed() {
    let mut d = Daemon::start(&location("/", &perl_counter(), ""));
    let owner = Client::with_jar(&d.dir, "owner");
    let first = owner.get(&d.url("/"));
    let link = share_link(&owner.get(&d.url("/.psd/share")));
    let read_only = link.split("id=").nth(1).unwrap().to_string();
    let viewer = Client::with_jar(&d.dir, "viewer");
    assert_eq!(viewer.get(&d.url(&link)).status, 303);
    assert_eq!(viewer.get(&d.url("/")).count(), 2);
    d.signal("KILL");
    d.restart();

    let seen = viewer.get(&d.url("/"));
    assert_eq!(seen.status, 200, "{}", d.log_text());
    assert_eq!(
        (seen.count(), seen.field("resumed").as_deref()),
        (3, Some("1")),
        "the viewer resumed the owner's session"
    );
    assert_eq!(seen.field("access").as_deref(), Some("read-only"));
    assert_eq!(seen.field("session"), Some(read_only));
    assert_eq!(viewer.request(&d.url("/"), &["--data", "x=1"]).status, 403);
    let again = owner.get(&d.url("/"));
    assert_eq!(
        (again.count(), again.field("access").as_deref()),
        (4, Some("read-write"))
    );
    assert_eq!(again.field("session"), first.field("session"));
    assert_eq!(
        share_link(&owner.get(&d.url("/.psd/share"))),
        link,
        "the same read-only id as before the restart"
    );
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

/// `curl` with a method and extra arguments, against a state API URL.
fn call(method: &str, url: &str, extra: &[&str]) -> Reply {
    let mut args = vec!["-X", method];
    args.extend_from_slice(extra);
    Client::anonymous().request(url, &args)
}

#[test]
fn the_state_api_does_compare_and_set_limits_and_dies_with_the_worker() {
    let d = Daemon::start(&location(
        "/",
        &perl_counter(),
        "MaxSessionState 64\nSessionTimeout 2s",
    ));
    let c = Client::with_jar(&d.dir, "c");
    let first = c.get(&d.url("/"));
    let state = first.field("state").unwrap();
    assert!(state.starts_with("http://127.0.0.1:"), "{state}");

    // The worker wrote its count; the list shows it with its size.
    let list = Client::anonymous().get(&state);
    assert_eq!(list.status, 200);
    assert!(
        list.body.contains(r#"{"key":"count","size":1}"#),
        "{}",
        list.body
    );

    // Two writers with the same ETag: one wins, the other gets 412.
    let got = Client::anonymous().get(&format!("{state}note"));
    assert_eq!(got.status, 404);
    let created = call(
        "PUT",
        &format!("{state}note"),
        &["-H", "If-None-Match: *", "-d", "a"],
    );
    assert_eq!(created.status, 201);
    let etag = created.header("etag").unwrap().to_string();
    let one = call(
        "PUT",
        &format!("{state}note"),
        &["-H", &format!("If-Match: {etag}"), "-d", "b"],
    );
    let two = call(
        "PUT",
        &format!("{state}note"),
        &["-H", &format!("If-Match: {etag}"), "-d", "c"],
    );
    assert_eq!((one.status, two.status), (204, 412));
    let again = call(
        "PUT",
        &format!("{state}note"),
        &["-H", "If-None-Match: *", "-d", "d"],
    );
    assert_eq!(again.status, 412);
    let read = Client::anonymous().get(&format!("{state}note"));
    assert_eq!((read.status, read.body.as_str()), (200, "b"));

    // Past MaxSessionState: 413, and nothing written.
    let big = "x".repeat(100);
    assert_eq!(
        call("PUT", &format!("{state}big"), &["-d", &big]).status,
        413
    );
    assert_eq!(Client::anonymous().get(&format!("{state}big")).status, 404);
    assert_eq!(
        call("PUT", &format!("{state}bad//key"), &["-d", "x"]).status,
        400
    );

    // Once the worker stops (SessionTimeout), its URL is refused.
    let pid = first.pid();
    assert!(eventually(Duration::from_secs(10), || !alive(pid)));
    assert_eq!(Client::anonymous().get(&format!("{state}note")).status, 404);
    assert_eq!(
        call("PUT", &format!("{state}note"), &["-d", "z"]).status,
        404
    );
    // The session resumes with what it had, under a new URL.
    let resumed = c.get(&d.url("/"));
    let fresh = resumed.field("state").unwrap();
    assert_ne!(fresh, state);
    assert_eq!(Client::anonymous().get(&format!("{fresh}note")).body, "b");
}

#[test]
fn add_on_the_shared_space_from_twenty_sessions_sums_exactly() {
    let d = Daemon::start(&location("/", &perl_counter(), ""));
    let shared: Vec<String> = (0..20)
        .map(|_| {
            Client::anonymous()
                .get(&d.url("/"))
                .field("shared")
                .unwrap()
        })
        .collect();
    assert_eq!(
        shared
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        20,
        "a URL per worker"
    );
    let threads: Vec<_> = shared
        .iter()
        .cloned()
        .map(|url| {
            std::thread::spawn(move || {
                for _ in 0..10 {
                    assert_eq!(call("POST", &format!("{url}hits?add=1"), &[]).status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total = Client::anonymous().get(&format!("{}hits", shared[0]));
    assert_eq!(total.body, "200");
}

#[test]
fn client_state_decides_what_clients_reach_by_url() {
    let off = Daemon::start(&location("/", &perl_counter(), ""));
    let c = Client::with_jar(&off.dir, "c");
    c.get(&off.url("/"));
    assert_eq!(
        c.get(&off.url("/.psd/state/count")).status,
        404,
        "off by default"
    );

    let d = Daemon::start(&location("/", &perl_counter(), "ClientState write"));
    let c = Client::with_jar(&d.dir, "c");
    c.get(&d.url("/"));
    c.get(&d.url("/"));
    let count = c.get(&d.url("/.psd/state/count"));
    assert_eq!((count.status, count.body.as_str()), (200, "2"));
    assert_eq!(
        c.request(&d.url("/.psd/state/mine"), &["-X", "PUT", "-d", "v"])
            .status,
        201
    );
    assert_eq!(c.get(&d.url("/.psd/state/mine")).body, "v");
    assert_eq!(
        c.request(&d.url("/.psd/shared/x"), &["-X", "PUT", "-d", "v"])
            .status,
        403,
        "shared values are read only for clients"
    );
    assert_eq!(
        Client::anonymous().get(&d.url("/.psd/state/count")).status,
        404,
        "no id, no state"
    );

    let r = Daemon::start(&location("/", &perl_counter(), "ClientState read"));
    let c = Client::with_jar(&r.dir, "c");
    c.get(&r.url("/"));
    assert_eq!(c.get(&r.url("/.psd/state/count")).body, "1");
    assert_eq!(
        c.request(&r.url("/.psd/state/count"), &["-X", "PUT", "-d", "9"])
            .status,
        403
    );
}

/// Every write answered 2xx survives a kill -9 of psd in the middle of a
/// burst of writes: writes are answered only once committed.
#[test]
fn acknowledged_state_writes_survive_a_kill_in_the_middle_of_a_burst() {
    let mut d = Daemon::start(&location("/", &perl_counter(), ""));
    let c = Client::with_jar(&d.dir, "c");
    let state = c.get(&d.url("/")).field("state").unwrap();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let state = state.clone();
            std::thread::spawn(move || {
                let mut acknowledged = vec![];
                for i in 0.. {
                    let key = format!("w{w}-{i}");
                    let reply = std::process::Command::new("curl")
                        .args([
                            "-s",
                            "-o",
                            "/dev/null",
                            "-w",
                            "%{http_code}",
                            "--max-time",
                            "5",
                        ])
                        .args(["-X", "PUT", "-d", &key])
                        .arg(format!("{state}{key}"))
                        .output()
                        .unwrap();
                    if String::from_utf8_lossy(&reply.stdout) == "201" {
                        acknowledged.push(key);
                    } else {
                        return acknowledged;
                    }
                }
                unreachable!()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    d.signal("KILL");
    let acknowledged: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        acknowledged.len() > 20,
        "only {} writes before the kill",
        acknowledged.len()
    );
    d.restart();
    let fresh = c.get(&d.url("/")).field("state").unwrap();
    let list = Client::anonymous().get(&fresh).body;
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|k| !list.contains(&format!("\"key\":\"{k}\"")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost: {missing:?}",
        missing.len(),
        acknowledged.len()
    );
}

/// A `<Location>` removed by a reload takes its sessions with it; one
/// removed across a restart leaves no session to resume when it comes back.
#[test]
fn sessions_of_a_removed_location_end() {
    let both = format!(
        "Listen 127.0.0.1:0\n{}{}",
        location("/a", &perl_counter(), ""),
        location("/b", &perl_counter(), "")
    );
    let only_a = format!(
        "Listen 127.0.0.1:0\n{}",
        location("/a", &perl_counter(), "")
    );
    let mut d = Daemon::start_raw(&both);
    let c = Client::with_jar(&d.dir, "c");
    let b = c.get(&d.url("/b/"));
    let a = c.get(&d.url("/a/"));
    assert!(d.reload(&only_a));
    assert!(
        eventually(Duration::from_secs(10), || !alive(b.pid())),
        "the removed location's worker still runs"
    );
    assert!(alive(a.pid()), "the other location's session goes on");

    // /a's session goes away while psd is down; /a comes back after it.
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(10));
    std::fs::write(
        d.config_path(),
        format!(
            "DataDir {}\nListen 127.0.0.1:0\n{}",
            d.dir.join("data").display(),
            location("/b", &perl_counter(), "")
        ),
    )
    .unwrap();
    d.restart();
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(10));
    std::fs::write(
        d.config_path(),
        format!("DataDir {}\n{both}", d.dir.join("data").display()),
    )
    .unwrap();
    d.restart();
    let again = c.get(&d.url("/a/"));
    assert_ne!(again.field("session"), a.field("session"));
    assert_eq!(again.field("resumed").as_deref(), Some("0"));
    assert_eq!(again.count(), 1, "its state went with it");
}

#[test]
fn the_python_counter_resumes_its_count_too() {
    let python = repo().join("examples/counter-python/counter.py");
    let (before, after, _) = across_a_restart(&location("/", &python, ""), "TERM");
    assert_resumed(&before, &after);
}

/// A `redis-server` of the test's own on a free loopback port, on `port`
/// (0: a free one), stopped by pid when dropped.
struct RedisServer {
    child: std::process::Child,
    port: u16,
}

impl RedisServer {
    fn start(port: u16) -> RedisServer {
        let port = if port == 0 { free_port() } else { port };
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/install-test-deps.sh installs it)");
        assert!(eventually(Duration::from_secs(5), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }));
        RedisServer { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_session_resumes_from_redis_after_psd_is_killed() {
    let redis = RedisServer::start(0);
    let config = format!(
        "StateStore {}\n{}",
        redis.url(),
        location("/", &perl_counter(), "")
    );
    let (before, after, _) = across_a_restart(&config, "KILL");
    assert_resumed(&before, &after);
}

/// With Redis gone, requests that need a new session get 503 with
/// Retry-After, live sessions go on, and psd reconnects by itself when
/// Redis is back.
#[test]
fn redis_down_refuses_new_sessions_and_spares_live_ones() {
    let redis = RedisServer::start(0);
    let port = redis.port;
    // A worker that keeps nothing in the store.
    let liar = repo().join("crates/psd/tests/workers/liar.pl");
    let d = Daemon::start(&format!(
        "StateStore {}\n{}",
        redis.url(),
        location("/", &liar, "")
    ));
    let live = Client::with_jar(&d.dir, "live");
    assert_eq!(live.get(&d.url("/")).status, 200);
    drop(redis);
    assert_eq!(live.get(&d.url("/")).status, 200, "a live session goes on");
    // The first failure marks the store down; from then on new sessions wait.
    let mut refused = None;
    assert!(eventually(Duration::from_secs(10), || {
        let r = Client::anonymous().get(&d.url("/"));
        let done = r.status == 503;
        refused = Some(r);
        done
    }));
    let refused = refused.unwrap();
    assert!(refused.header("retry-after").is_some());
    assert_eq!(live.get(&d.url("/")).status, 200, "still going");
    let _back = RedisServer::start(port);
    assert!(
        eventually(Duration::from_secs(15), || Client::anonymous()
            .get(&d.url("/"))
            .status
            == 200),
        "psd did not reconnect: {}",
        d.log_text()
    );
}

#[test]
fn the_rust_counter_resumes_its_count_too() {
    let (before, after, _) = across_a_restart(&location("/", &rust_counter(), ""), "TERM");
    assert_resumed(&before, &after);
}

/// A CGI.pm script through PSD::CGI: each request's parameters are its own,
/// and the count in the session's state survives a restart.
#[test]
fn a_cgi_pm_script_keeps_its_count_and_never_sees_old_parameters() {
    let script = repo().join("examples/cgi-perl/counter.pl");
    let mut d = Daemon::start(&location("/", &script, ""));
    let c = Client::with_jar(&d.dir, "c");
    let first = c.get(&d.url("/?name=ann"));
    assert_eq!(
        (first.count(), first.field("name").as_deref()),
        (1, Some("ann")),
        "{}",
        d.log_text()
    );
    let second = c.get(&d.url("/"));
    assert_eq!(
        (second.count(), second.field("name").as_deref()),
        (2, Some("-")),
        "no old parameter"
    );
    d.signal("TERM");
    d.restart();
    let third = c.get(&d.url("/?name=bob"));
    assert_eq!(
        (third.count(), third.field("name").as_deref()),
        (3, Some("bob"))
    );
    assert_eq!(third.field("resumed").as_deref(), Some("1"));
}
