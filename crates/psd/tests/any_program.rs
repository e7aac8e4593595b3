//! Programs nobody here wrote as session workers, started the way they
//! start: Node and Python's `http.server` binding `$PORT` themselves,
//! gunicorn binding a Unix socket; and what psd does when a worker never
//! listens, or exits with a request pending.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn worker(name: &str) -> String {
    test_worker(name).display().to_string()
}

/// Two browsers: each gets a process of its own that keeps its count.
fn two_sessions_two_processes(d: &Daemon, path: &str) {
    let (a, b) = (Client::with_jar(&d.dir, "a"), Client::with_jar(&d.dir, "b"));
    let a1 = a.get(&d.url(path));
    assert_eq!(a1.status, 200, "{a1:?}\n{}", d.log_text());
    let a2 = a.get(&d.url(path));
    let b1 = b.get(&d.url(path));
    assert_eq!((a1.count(), a2.count(), b1.count()), (1, 2, 1));
    assert_eq!(a1.pid(), a2.pid(), "the session keeps its process");
    assert_ne!(a1.pid(), b1.pid(), "one process per session");
    assert_eq!(a1.field("session"), a2.field("session"));
    assert_ne!(a1.field("session"), b1.field("session"));
}

#[test]
fn node_binding_port_itself_is_a_worker() {
    let d = Daemon::start(&format!(
        "<Location />\n  Worker http node {}\n  WorkerListen port\n</Location>\n",
        worker("port_counter.js")
    ));
    two_sessions_two_processes(&d, "/x");
}

#[test]
fn gunicorn_on_a_unix_socket_is_a_worker() {
    let d = Daemon::start(&format!(
        "<Location /py>\n  Worker http python3 -m gunicorn --bind unix:{{socket}} --workers 1 --chdir {} wsgi_counter:app\n  WorkerListen unix\n</Location>\n",
        test_worker("").display()
    ));
    two_sessions_two_processes(&d, "/py/x");
    let r = Client::with_jar(&d.dir, "a").get(&d.url("/py/deep/path"));
    assert_eq!(r.field("path").as_deref(), Some("/deep/path"));
}

#[test]
fn python_http_server_serves_its_directory_per_session() {
    let d = Daemon::start(&format!(
        "<Location />\n  Worker http python3 -m http.server --bind 127.0.0.1 {{port}}\n  WorkerListen port\n  WorkingDirectory {}\n  WorkerReady /\n</Location>\n",
        test_worker("").display()
    ));
    let (a, b) = (Client::with_jar(&d.dir, "a"), Client::with_jar(&d.dir, "b"));
    let ra = a.get(&d.url("/port_counter.js"));
    assert_eq!(ra.status, 200, "{ra:?}\n{}", d.log_text());
    assert!(ra.body.contains("process.env.PORT"));
    assert_eq!(b.get(&d.url("/wsgi_counter.py")).status, 200);
    let servers = Command::new("pgrep")
        .args(["-f", "-P", &d.pid().to_string(), "http.server"])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&servers.stdout).lines().count();
    assert_eq!(pids, 2, "one http.server per session");
}

/// `python3 -m http.server` binds port 8000 and never takes a connection
/// from the socket psd hands it: that is a worker that never became ready,
/// and its client hears so at WorkerStartTimeout, not RequestTimeout.
#[test]
fn a_worker_that_never_listens_gives_502_at_worker_start_timeout() {
    for (listen, program) in [
        ("inherit", "python3 -m http.server --bind 127.0.0.1 0"),
        ("port", "sleep 30"),
        ("unix", "sleep 30"),
    ] {
        let d = Daemon::start(&format!(
            "<Location />\n  Worker http {program}\n  WorkerListen {listen}\n  WorkerStartTimeout 1s\n  RequestTimeout 30s\n</Location>\n"
        ));
        let started = Instant::now();
        let r = Client::anonymous().get(&d.url("/"));
        let took = started.elapsed();
        assert_eq!(r.status, 502, "{listen}: {r:?}");
        // At the 1 s WorkerStartTimeout, not at the 30 s RequestTimeout: the
        // upper bound leaves room for a loaded machine (a CI run once took
        // 2.5 s here) while still telling the two apart.
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(10),
            "{listen}: 502 after {took:?}, not at WorkerStartTimeout"
        );
        // psd logs it before it answers; the log is read from its pipe meanwhile.
        assert!(
            eventually(Duration::from_secs(5), || d
                .log_text()
                .contains("not ready within WorkerStartTimeout")),
            "{listen}: {}",
            d.log_text()
        );
    }
}

#[test]
fn worker_ready_waits_for_an_answer_below_500() {
    let d = Daemon::start(&format!(
        "<Location />\n  Worker http python3 -m http.server --bind 127.0.0.1 {{port}}\n  WorkerListen port\n  WorkingDirectory {}\n  WorkerReady /no-such-file\n  WorkerStartTimeout 10s\n</Location>\n",
        test_worker("").display()
    ));
    // 404 is below 500: ready.
    let r = Client::anonymous().get(&d.url("/port_counter.js"));
    assert_eq!(r.status, 200, "{}", d.log_text());
}

#[test]
fn a_worker_that_exits_with_a_request_pending_fails_it_at_once() {
    let d = Daemon::start(&format!(
        "<Location />\n  Worker http {}\n  RequestTimeout 30s\n</Location>\n",
        worker("dies_pending.py")
    ));
    let c = Client::with_jar(&d.dir, "c");
    let first = c.get(&d.url("/"));
    assert_eq!(first.status, 200, "{first:?}\n{}", d.log_text());
    let pid = first.pid();
    let started = Instant::now();
    let r = c.get(&d.url("/die"));
    let took = started.elapsed();
    assert_eq!(r.status, 502, "{r:?}");
    assert!(took < Duration::from_secs(1), "502 after {took:?}");
    assert!(
        eventually(Duration::from_secs(2), || {
            let left = Command::new("pgrep")
                .args(["-g", &pid.to_string()])
                .output()
                .unwrap();
            left.stdout.is_empty()
        }),
        "a process of the worker's group lives on"
    );
    let next = c.get(&d.url("/"));
    assert_eq!(next.status, 200, "the next request gets a new worker");
    assert_ne!(next.pid(), pid);
}

#[test]
fn a_worker_over_rlimit_cpu_gives_502_is_logged_and_replaced() {
    let d = Daemon::start(&format!(
        "<Location />\n  Worker http {}\n  RLimitCPU 1\n  RLimitNOFILE 64\n  RequestTimeout 30s\n</Location>\n",
        worker("spin.py")
    ));
    let c = Client::with_jar(&d.dir, "c");
    let first = c.get(&d.url("/"));
    assert_eq!(first.status, 200, "{first:?}\n{}", d.log_text());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", first.pid())).unwrap();
    let line = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap()
    };
    assert_eq!(line("Max cpu time"), "Max cpu time 1 2 seconds");
    assert_eq!(line("Max open files"), "Max open files 64 64 files");
    let started = Instant::now();
    let spun = c.get(&d.url("/spin"));
    assert_eq!(spun.status, 502, "{spun:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(2), || d
            .log_text()
            .contains("ended by RLimitCPU")),
        "{}",
        d.log_text()
    );
    let next = c.get(&d.url("/"));
    assert_eq!(next.status, 200);
    assert_ne!(next.pid(), first.pid(), "a fresh worker");
}

/// shellinabox's protocol: POST `width&height&rooturl` opens a terminal
/// (`{"session":…}`); POST `session&width&height` is a long poll for its
/// output; the same with `keys=HEX` types. One browser's requests go side
/// by side, so they carry its cookie themselves (curl's jar file is not
/// for concurrent use).
struct Terminal {
    url: String,
    cookie: String,
    session: String,
}

impl Terminal {
    fn open(url: String) -> Terminal {
        let opened = Client::anonymous()
            .request(&url, &["-d", &format!("width=80&height=24&rooturl={url}")]);
        assert_eq!(opened.status, 200, "{opened:?}");
        let cookie = opened
            .header("set-cookie")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let json: serde_json::Value = serde_json::from_str(&opened.body).unwrap();
        let session = json["session"].as_str().unwrap().to_string();
        Terminal {
            url,
            cookie,
            session,
        }
    }

    /// A long poll (no `keys`), or typing.
    fn post(&self, keys: Option<&str>) -> String {
        let cookie = format!("Cookie: {}", self.cookie);
        let session = format!("session={}", self.session);
        let mut args = vec![
            "-H",
            &cookie,
            "-d",
            "width=80&height=24",
            "--data-urlencode",
            &session,
        ];
        let keys = keys.map(|k| format!("keys={k}"));
        if let Some(keys) = &keys {
            args.extend(["-d", keys]);
        }
        let reply = Client::anonymous().request(&self.url, &args);
        assert_eq!(reply.status, 200, "{reply:?}");
        let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_default();
        json["data"].as_str().unwrap_or_default().to_string()
    }

    /// Types `line` while a long poll waits, and reads until `until` shows.
    fn run(&self, line: &str, until: &str) -> String {
        let keys: String = line.bytes().map(|b| format!("{b:02X}")).collect();
        std::thread::scope(|s| {
            let poll = s.spawn(|| {
                let mut seen = String::new();
                let deadline = Instant::now() + Duration::from_secs(10);
                while !seen.contains(until) && Instant::now() < deadline {
                    seen.push_str(&self.post(None));
                }
                seen
            });
            std::thread::sleep(Duration::from_millis(200));
            self.post(Some(&keys));
            poll.join().unwrap()
        })
    }
}

#[test]
fn shellinabox_gives_each_session_its_own_shell() {
    let d = Daemon::start(
        "<Location /term>\n  Worker http shellinaboxd --disable-ssl --quiet --disable-peer-check \
         --unixdomain-only={socket}:root:root:0600 --service=/:root:root:HOME:/bin/bash\n  \
         WorkerListen unix\n</Location>\n",
    );
    let shells: Vec<String> = (0..2)
        .map(|_| {
            let terminal = Terminal::open(d.url("/term/"));
            let out = terminal.run("echo PSD_$((6*7))_$$\r", "PSD_42_");
            let pid: String = out
                .split("PSD_42_")
                .nth(1)
                .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect())
                .unwrap_or_default();
            assert!(
                !pid.is_empty(),
                "no answer from the shell: {out:?}\n{}",
                d.log_text()
            );
            pid
        })
        .collect();
    assert_ne!(shells[0], shells[1], "two sessions, two shells");
}

/// New sessions of an application that takes 2 s to start, spaced so that
/// the pool refills in between: the time to their first answer.
fn first_answers(spares: usize) -> (Vec<Duration>, Vec<Reply>, Daemon) {
    let d = Daemon::start(&format!(
        "<Location />\n  Worker http {}\n  SpareWorkers {spares}\n</Location>\n",
        worker("slow_start.py")
    ));
    // Time for the pool to fill at start.
    std::thread::sleep(Duration::from_millis(2600));
    let mut times = vec![];
    let mut replies = vec![];
    for i in 0..3 {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(2600));
        }
        let started = Instant::now();
        let r = Client::with_jar(&d.dir, &format!("c{i}")).get(&d.url("/"));
        times.push(started.elapsed());
        assert_eq!(r.status, 200, "{r:?}\n{}", d.log_text());
        replies.push(r);
    }
    (times, replies, d)
}

#[test]
fn spare_workers_open_new_sessions_of_a_slow_app_at_once() {
    let (times, replies, d) = first_answers(2);
    for t in &times {
        assert!(*t < Duration::from_millis(100), "with spares: {times:?}");
    }
    let pids: std::collections::HashSet<_> = replies.iter().map(Reply::pid).collect();
    assert_eq!(pids.len(), 3, "a worker per session");
    for r in &replies {
        // A spare has no session in its environment: it learns it per request.
        assert_eq!(r.field("env_session").as_deref(), Some("none"));
        let cookie = r.header("set-cookie").unwrap();
        assert!(cookie.contains(&r.field("session").unwrap()), "{r:?}");
    }
    // Its state URL names the session that took it.
    let c = Client::with_jar(&d.dir, "c0");
    assert_eq!(
        c.get(&d.url("/state")).field("state").as_deref(),
        Some("201")
    );

    let (times, _, _) = first_answers(0);
    for t in &times {
        assert!(*t > Duration::from_secs(2), "without spares: {times:?}");
    }
}
