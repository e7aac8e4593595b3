//! End to end through a real psd and real FastCGI workers (Perl's FCGI,
//! Python's flup, the Rust example), with curl as the browser.

mod common;

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn perl_counter() -> PathBuf {
    repo().join("examples/counter-perl/counter.pl")
}

/// The Perl counter at `/`, configured in code.
fn perl_location() -> psd::config::LocationConfig {
    use psd::config::{Handler, LocationConfig, Protocol, WorkerCommand};
    let mut location = LocationConfig::new("/");
    location.handler = Some(Handler::Process(WorkerCommand {
        protocol: Protocol::FastCgi,
        program: perl_counter(),
        args: vec![],
    }));
    location
}

fn misbehave() -> PathBuf {
    test_worker("misbehave.pl")
}

/// Two browsers: separate counts and workers; each keeps its own worker.
fn two_jars_keep_separate_sessions(worker: PathBuf) {
    let d = Daemon::start(&location("/counter", &worker, ""));
    let (a, b) = (Client::with_jar(&d.dir, "a"), Client::with_jar(&d.dir, "b"));
    let url = d.url("/counter/");
    let a1 = a.get(&url);
    let a2 = a.get(&url);
    let b1 = b.get(&url);
    let a3 = a.get(&url);
    assert_eq!(a1.status, 200, "{a1:?}\n{}", d.log_text());
    assert_eq!((a1.count(), a2.count(), a3.count()), (1, 2, 3));
    assert_eq!(b1.count(), 1, "the second jar starts its own count");
    assert_eq!(a1.pid(), a3.pid(), "one jar keeps its worker");
    assert_ne!(a1.pid(), b1.pid(), "each session has its own worker");
    assert_eq!(a1.field("session"), a3.field("session"));
}

#[test]
fn perl_fcgi_workers_keep_one_process_per_session() {
    two_jars_keep_separate_sessions(perl_counter());
}

#[test]
fn python_flup_workers_keep_one_process_per_session() {
    two_jars_keep_separate_sessions(repo().join("examples/counter-python/counter.py"));
}

#[test]
fn rust_workers_keep_one_process_per_session() {
    two_jars_keep_separate_sessions(rust_counter());
}

/// libfcgi (under Perl's FCGI and C workers alike) keeps a connection only
/// when a request's last record reached it in the read that completed the
/// PARAMS: a trailing empty STDIN read later is taken as the start of the
/// next request, a protocol error, and the worker closes the connection. psd
/// writes a body-less request in one piece, so one connection serves them all.
#[test]
fn a_libfcgi_worker_keeps_its_connection_from_request_to_request() {
    // The normal scheduling policy: a worker woken by the first write runs
    // at once, which is what made split writes reach it in two reads.
    let conf = format!(
        "Listen 127.0.0.1:0\n{}",
        location(
            "/counter",
            &perl_counter(),
            "WorkerSchedulingPolicy other\n"
        )
    );
    let d = Daemon::start_logging(&conf, "psd=debug");
    let a = Client::with_jar(&d.dir, "a");
    let url = d.url("/counter/");
    for n in 1..=40 {
        assert_eq!(a.get(&url).count(), n, "{}", d.log_text());
    }
    let log = d.log_text();
    assert!(
        !log.contains("retrying on a new one"),
        "the worker closed kept connections:\n{log}"
    );
}

#[test]
fn on_one_thread_a_slow_request_holds_up_no_other_session() {
    let sleepy = test_worker("sleepy.py");
    let d = Daemon::start(&format!("Threads 1\n{}", location("/", &sleepy, "")));
    let (a, b) = (Client::with_jar(&d.dir, "a"), Client::with_jar(&d.dir, "b"));
    assert_eq!(a.get(&d.url("/")).status, 200, "{}", d.log_text());
    assert_eq!(b.get(&d.url("/")).status, 200);
    let slow = {
        let url = d.url("/?ms=3000");
        thread::spawn(move || a.get(&url))
    };
    thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(b.get(&d.url("/")).status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the other session waited: {:?}",
        started.elapsed()
    );
    assert_eq!(slow.join().unwrap().status, 200);
}

#[test]
fn workers_run_under_sched_batch_unless_configured_otherwise() {
    fn policy(pid: u32) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields = &stat[stat.rfind(')').unwrap() + 2..];
        fields.split(' ').nth(38).unwrap().parse().unwrap()
    }
    const SCHED_OTHER: i32 = 0;
    const SCHED_BATCH: i32 = 3;
    const SCHED_IDLE: i32 = 5;
    let d = Daemon::start(&format!(
        "{}{}{}",
        location("/batch", &perl_counter(), ""),
        location("/other", &perl_counter(), "WorkerSchedulingPolicy other\n"),
        location("/idle", &perl_counter(), "WorkerSchedulingPolicy IDLE\n"),
    ));
    let a = Client::with_jar(&d.dir, "a");
    let pid = |path: &str| a.get(&d.url(path)).pid();
    assert_eq!(policy(pid("/batch/")), SCHED_BATCH);
    assert_eq!(policy(pid("/other/")), SCHED_OTHER);
    assert_eq!(policy(pid("/idle/")), SCHED_IDLE);
}

/// Each live worker costs psd one descriptor (its stderr pipe); kept
/// connections get what the open-file limit leaves, and a session without
/// one connects again. 300 sessions under a limit of 500 descriptors: with
/// three per worker (pipe, pidfd, kept connection), or two, some would be
/// refused.
#[test]
fn more_workers_than_three_descriptors_each_allow_all_keep_answering() {
    let d = Daemon::start_with_file_limit(
        &location(
            "/",
            &rust_counter(),
            "MaxSessionsPerClient 1000\nSessionTimeout 5m\n",
        ),
        500,
    );
    let jars: Vec<Client> = (0..300)
        .map(|i| Client::with_jar(&d.dir, &format!("j{i}")))
        .collect();
    let url = d.url("/");
    let url = &url;
    thread::scope(|s| {
        for chunk in jars.chunks(50) {
            s.spawn(move || {
                for jar in chunk {
                    let first = jar.get(url);
                    assert_eq!(first.status, 200, "{first:?}");
                }
            });
        }
    });
    let mut pids = std::collections::HashSet::new();
    for jar in &jars {
        let again = jar.get(url);
        assert_eq!(again.count(), 2, "{again:?}");
        pids.insert(again.pid());
    }
    assert_eq!(pids.len(), 300, "one worker per session");
}

#[test]
fn cgi_variables_and_request_body_reach_the_worker() {
    let d = Daemon::start(&location("/app", &perl_counter(), ""));
    let r = Client::anonymous().request(
        &d.url("/app/some/path?x=1"),
        &["--data-binary", "0123456789"],
    );
    assert_eq!(r.field("script").as_deref(), Some("/app"));
    assert_eq!(r.field("path").as_deref(), Some("/some/path"));
    assert_eq!(r.field("body").as_deref(), Some("10"));
    let session = r.field("session").unwrap();
    assert!(
        r.header("set-cookie").unwrap().contains(&session),
        "worker sees the id the client got"
    );
}

#[test]
fn set_cookie_is_http_only_same_site_lax_with_the_location_path() {
    let d = Daemon::start(&location("/app", &perl_counter(), ""));
    let r = Client::anonymous().get(&d.url("/app/"));
    let cookie = r
        .header("set-cookie")
        .expect("a new session sets its cookie");
    assert!(cookie.starts_with("psd_sid=psd."), "{cookie}");
    for attribute in ["Path=/app", "HttpOnly", "SameSite=Lax"] {
        assert!(
            cookie.split("; ").any(|a| a == attribute),
            "{attribute} missing in {cookie}"
        );
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP: no Secure attribute"
    );
}

#[test]
fn forged_tampered_and_foreign_ids_get_a_new_session_and_a_new_id() {
    let d = Daemon::start(&location("/", &perl_counter(), ""));
    let other = Daemon::start(&location("/", &perl_counter(), ""));
    let url = d.url("/");
    let owner = Client::with_jar(&d.dir, "owner");
    let first = owner.get(&url);
    owner.get(&url);
    let id = first.field("session").unwrap();
    let foreign = Client::anonymous()
        .get(&other.url("/"))
        .field("session")
        .unwrap();

    let mut tampered = id.clone().into_bytes();
    let i = id.find('.').unwrap() + 5;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let unsigned = format!("{}.AAAAAAAAAAAAAAAAAAAAAA", id.rsplit_once('.').unwrap().0);
    for presented in [
        tampered.as_str(),
        foreign.as_str(),
        &unsigned,
        "garbage",
        "",
        "psd..x",
    ] {
        let r = Client::anonymous().request(&url, &["-H", &format!("Cookie: psd_sid={presented}")]);
        let new_id = r.field("session").unwrap();
        assert_eq!(
            r.count(),
            1,
            "{presented:?} must not reach an existing session"
        );
        assert_ne!(r.pid(), first.pid());
        assert_ne!(new_id, id);
        assert_ne!(new_id, presented);
        let cookie = r.header("set-cookie").expect("a new id is issued");
        assert!(cookie.contains(&new_id));
    }
    assert_eq!(owner.get(&url).count(), 3, "the real session is untouched");
}

#[test]
fn idle_timeout_stops_the_worker_and_the_session_resumes_with_a_new_one() {
    let d = Daemon::start(&location("/", &perl_counter(), "SessionTimeout 1s"));
    let c = Client::with_jar(&d.dir, "c");
    let first = c.get(&d.url("/"));
    let pid = first.pid();
    assert!(alive(pid));
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)),
        "worker {pid} still running after its idle timeout"
    );
    let again = c.get(&d.url("/"));
    assert_ne!(again.pid(), pid);
    assert_eq!(
        again.field("session"),
        first.field("session"),
        "same session id resumes"
    );
    assert_eq!(again.field("resumed").as_deref(), Some("1"));
    assert_eq!(
        again.count(),
        2,
        "the new process reads the count from the session's state"
    );
}

#[test]
fn a_worker_that_dies_mid_request_gives_502_and_the_next_request_a_new_worker() {
    let d = Daemon::start(&location("/", &misbehave(), ""));
    let c = Client::with_jar(&d.dir, "c");
    let before = c.get(&d.url("/ok"));
    let crash = c.get(&d.url("/crash"));
    assert_eq!(crash.status, 502, "{crash:?}");
    assert!(
        !crash.body.contains("misbehave"),
        "no internals in error bodies"
    );
    assert!(eventually(Duration::from_secs(5), || !alive(before.pid())));
    let after = c.get(&d.url("/ok"));
    assert_eq!(after.status, 200);
    assert_ne!(after.pid(), before.pid());
    assert_eq!(after.field("session"), before.field("session"));
}

#[test]
fn a_worker_that_dies_before_answering_gives_502() {
    // The worker exits right after start-up: it never answers the request.
    let dir = TempDir::new("exit");
    let script = dir.join("exit.pl");
    std::fs::write(
        &script,
        "#!/usr/bin/perl\nuse FCGI; my $r = FCGI::Request(); $r->Accept(); exit 1;\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let d = Daemon::start(&location("/", &script, ""));
    let r = Client::anonymous().get(&d.url("/"));
    assert_eq!(r.status, 502, "{r:?}");
    assert!(!r.body.contains("exit.pl"), "no internals in error bodies");
}

#[test]
fn a_missing_program_gives_502_and_psd_carries_on() {
    let good = perl_counter();
    let config = format!(
        "{}{}",
        location("/missing", &PathBuf::from("/nonexistent/worker"), ""),
        location("/ok", &good, "")
    );
    let d = Daemon::start(&config);
    let r = Client::anonymous().get(&d.url("/missing/"));
    assert_eq!(r.status, 502);
    assert_eq!(Client::anonymous().get(&d.url("/ok/")).status, 200);
}

#[test]
fn a_hung_worker_gives_504_at_request_timeout_and_is_replaced() {
    let d = Daemon::start(&location("/", &misbehave(), "RequestTimeout 1s"));
    let c = Client::with_jar(&d.dir, "c");
    let before = c.get(&d.url("/ok"));
    let started = Instant::now();
    let hung = c.get(&d.url("/hang"));
    let waited = started.elapsed();
    assert_eq!(hung.status, 504, "{hung:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || !alive(before.pid())),
        "hung worker killed"
    );
    let after = c.get(&d.url("/ok"));
    assert_eq!(after.status, 200);
    assert_ne!(after.pid(), before.pid());
}

#[test]
fn bodies_over_max_request_body_get_413() {
    let d = Daemon::start(&location("/", &perl_counter(), "MaxRequestBody 1K"));
    let big = "x".repeat(4096);
    let c = Client::anonymous();
    let declared = c.request(&d.url("/"), &["--data-binary", &big]);
    assert_eq!(declared.status, 413);
    let chunked = c.request(
        &d.url("/"),
        &["-H", "Transfer-Encoding: chunked", "--data-binary", &big],
    );
    assert_eq!(chunked.status, 413, "a streamed body is counted too");
    let small = c.request(&d.url("/"), &["--data-binary", "small"]);
    assert_eq!(small.status, 200);
    assert_eq!(small.field("body").as_deref(), Some("5"));
}

#[test]
fn max_sessions_gives_503_with_retry_after_and_old_sessions_go_on() {
    let d = Daemon::start(&format!(
        "MaxSessions 2\n{}",
        location("/", &perl_counter(), "")
    ));
    let (a, b, c) = (
        Client::with_jar(&d.dir, "a"),
        Client::with_jar(&d.dir, "b"),
        Client::with_jar(&d.dir, "c"),
    );
    assert_eq!(a.get(&d.url("/")).status, 200);
    assert_eq!(b.get(&d.url("/")).status, 200);
    let refused = c.get(&d.url("/"));
    assert_eq!(refused.status, 503);
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    assert_eq!(
        a.get(&d.url("/")).count(),
        2,
        "live sessions are unaffected"
    );
}

#[test]
fn requests_to_one_session_never_overlap_but_sessions_run_in_parallel() {
    let d = Daemon::start(&location("/", &misbehave(), ""));
    let url = d.url("/slow?ms=400");
    let shared = Client::with_jar(&d.dir, "shared");
    shared.get(&d.url("/ok"));
    let jar = d.dir.join("shared.jar");
    let same: Vec<Reply> = thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| Client::anonymous().request(&url, &["-b", jar.to_str().unwrap()])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut spans: Vec<(f64, f64)> = same
        .iter()
        .map(|r| {
            (
                r.field("start")
                    .unwrap_or_else(|| panic!("{r:?}"))
                    .parse()
                    .unwrap(),
                r.field("end")
                    .unwrap_or_else(|| panic!("{r:?}"))
                    .parse()
                    .unwrap(),
            )
        })
        .collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "requests of one session overlapped: {spans:?}"
        );
    }
    assert_eq!(
        same.iter()
            .map(Reply::pid)
            .collect::<std::collections::HashSet<_>>()
            .len(),
        1
    );

    let started = Instant::now();
    let parallel: Vec<Reply> = thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| Client::anonymous().get(&url)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(parallel.iter().all(|r| r.status == 200));
    assert!(
        started.elapsed() < Duration::from_millis(1150),
        "separate sessions must run in parallel: {:?}",
        started.elapsed()
    );
}

/// The exchange with the worker outlives a client that gave up on it: the
/// worker finishes its request undisturbed (no broken pipe) and the
/// session's next request waits for it rather than overlapping it, even on a
/// worker that would take both at once (flup, multithreaded).
#[test]
fn a_client_leaving_mid_request_does_not_let_the_next_one_overlap() {
    let d = Daemon::start(&location("/", &test_worker("sleepy.py"), ""));
    let a = Client::with_jar(&d.dir, "a");
    let first = a.get(&d.url("/?ms=0"));
    assert_eq!(first.status, 200, "{first:?}");
    let gave_up = std::process::Command::new("curl")
        // HTTP/2: the server drops a stream the client resets at once.
        .args(["-s", "-o", "/dev/null", "--http2-prior-knowledge"])
        .args(["--max-time", "0.2", "-b"])
        .arg(d.dir.join("a.jar"))
        .arg(d.url("/?ms=900"))
        .status()
        .unwrap();
    assert!(!gave_up.success(), "curl should have given up");
    let asked = Instant::now();
    let next = a.get(&d.url("/?ms=0"));
    assert_eq!(next.status, 200, "{next:?}\n{}", d.log_text());
    assert_eq!(next.pid(), first.pid(), "the worker was lost");
    assert!(
        asked.elapsed() >= Duration::from_millis(400),
        "the next request overlapped the abandoned one: answered after {:?}",
        asked.elapsed()
    );
}

#[test]
fn a_worker_ignoring_sigterm_is_killed_after_worker_stop_timeout() {
    let d = Daemon::start(&location(
        "/",
        &misbehave(),
        "SetEnv IGNORE_TERM 1\nSessionTimeout 1s\nWorkerStopTimeout 1s",
    ));
    let pid = Client::anonymous().get(&d.url("/ok")).pid();
    assert!(alive(pid));
    assert!(
        eventually(Duration::from_secs(6), || !alive(pid)),
        "SIGKILL follows the ignored SIGTERM"
    );
    // The log line is written before the kill, but read by another thread.
    assert!(
        eventually(Duration::from_secs(2), || d
            .log_text()
            .contains("ignored SIGTERM")),
        "{}",
        d.log_text()
    );
}

#[test]
fn unknown_paths_get_404_and_psd_urls_are_never_passed_to_workers() {
    let d = Daemon::start(&location("/app", &perl_counter(), ""));
    assert_eq!(Client::anonymous().get(&d.url("/elsewhere")).status, 404);
    assert_eq!(Client::anonymous().get(&d.url("/apples")).status, 404);
    assert_eq!(
        Client::anonymous().get(&d.url("/app/.psd/state")).status,
        404
    );
    assert_eq!(Client::anonymous().get(&d.url("/app/x")).status, 200);
}

/// The Rust example's side of the protocol against libfcgi's own client:
/// `cgi-fcgi -start` gives it a listening socket at fd 0 just as psd does.
#[test]
fn the_rust_worker_interoperates_with_libfcgi_cgi_fcgi() {
    use std::process::{Command, Stdio};
    let dir = TempDir::new("cgi-fcgi");
    let socket = dir.join("app.sock");
    let worker = rust_counter();
    let started = Command::new("cgi-fcgi")
        .args(["-start", "-connect"])
        .arg(&socket)
        .arg(&worker)
        .status()
        .expect("cgi-fcgi (libfcgi-bin) is installed by scripts/install-test-deps.sh");
    assert!(started.success());
    let request = |body: &str| {
        let mut child = Command::new("cgi-fcgi")
            .args(["-bind", "-connect"])
            .arg(&socket)
            .env("REQUEST_METHOD", "POST")
            .env("CONTENT_LENGTH", body.len().to_string())
            .env("PSD_SESSION_ID", "sid-1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };
    let first = request("hello");
    let second = request("");
    let pid = |s: &str| {
        s.split("pid=")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .map(str::to_string)
    };
    let _ = Command::new("kill")
        .arg(pid(&first).unwrap_or_default())
        .status();
    assert!(
        first.starts_with("Content-Type: text/plain\r\n\r\n"),
        "{first:?}"
    );
    assert!(
        first.contains("count=1") && first.contains("body=5") && first.contains("session=sid-1"),
        "{first:?}"
    );
    assert!(second.contains("count=2"), "{second:?}");
    assert_eq!(pid(&first), pid(&second));
}

#[test]
fn a_client_that_never_finishes_its_request_head_is_cut_off() {
    use std::io::{Read, Write};
    let d = Daemon::start(&format!(
        "RequestHeaderTimeout 500ms\n{}",
        location("/", &perl_counter(), "")
    ));
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(
        Client::anonymous().get(&d.url("/")).status,
        200,
        "others are served meanwhile"
    );
}

#[test]
fn session_lifetime_ends_a_session_even_while_it_is_used() {
    let d = Daemon::start(&location("/", &perl_counter(), "SessionLifetime 1s"));
    let c = Client::with_jar(&d.dir, "c");
    let first = c.get(&d.url("/"));
    assert!(eventually(Duration::from_secs(5), || !alive(first.pid())));
    let later = c.get(&d.url("/"));
    assert_ne!(
        later.field("session"),
        first.field("session"),
        "an expired id is never accepted again"
    );
    assert_eq!(later.field("resumed").as_deref(), Some("0"));
    assert!(later.header("set-cookie").is_some());
}

#[test]
fn worker_stderr_is_logged_line_by_line_with_the_session_handle() {
    let d = Daemon::start(&location("/", &perl_counter(), ""));
    let r = Client::anonymous().get(&d.url("/"));
    let session = r.field("session").unwrap();
    let pid = r.pid();
    let mut line = None;
    assert!(
        eventually(Duration::from_secs(5), || {
            line = d
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(&format!("worker: counter.pl {pid} started")))
                .cloned();
            line.is_some()
        }),
        "{}",
        d.log_text()
    );
    let line = line.unwrap();
    // Tagged with the session's handle (16 hex digits), never its id.
    let handle = line.split("session=").nth(1).unwrap_or("")[..16].to_string();
    assert!(handle.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
    assert!(!d.log_text().contains(&session), "the id is in the log");
}

#[test]
fn worker_concurrency_lets_one_session_run_requests_side_by_side() {
    let d = Daemon::start(&location(
        "/",
        &test_worker("sleepy.py"),
        "WorkerConcurrency 3",
    ));
    let c = Client::with_jar(&d.dir, "c");
    let first = c.get(&d.url("/"));
    let jar = d.dir.join("c.jar");
    let url = d.url("/?ms=500");
    let started = Instant::now();
    let replies: Vec<Reply> = thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| Client::anonymous().request(&url, &["-b", jar.to_str().unwrap()])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    assert!(
        replies.iter().all(|r| r.pid() == first.pid()),
        "one worker served them all"
    );
}

/// psd's peak resident memory, from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn request_bodies_are_streamed_to_the_worker_not_buffered_whole() {
    let d = Daemon::start(&location("/", &perl_counter(), "MaxRequestBody 100M"));
    let upload = d.dir.join("upload.bin");
    let size = 64 << 20;
    std::fs::write(&upload, vec![b'x'; size]).unwrap();
    let before = peak_rss_kib(d.pid());
    let r =
        Client::anonymous().request(&d.url("/"), &["-X", "POST", "-T", upload.to_str().unwrap()]);
    assert_eq!(r.field("body"), Some(size.to_string()), "{r:?}");
    let grown = peak_rss_kib(d.pid()).saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "psd's peak RSS grew by {grown} KiB for a 64 MiB body"
    );
}

/// What the admin API will be a thin layer on: `Sessions` lists a session
/// with its real worker's pid, `stop` ends the worker and keeps the
/// session (its next request resumes it), `end` ends the session (its id
/// then names nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_stops_and_ends_sessions_by_handle() {
    let dir = TempDir::new("operator");
    let (base, stop, server, sessions) = serve_with_handle(&dir, vec![perl_location()], 10).await;
    let jar = TempDir::new("operator-jar");
    let client = std::sync::Arc::new(Client::with_jar(&jar, "c"));
    let get = |client: std::sync::Arc<Client>, url: String| blocking(move || client.get(&url));

    let first = get(client.clone(), format!("{base}/")).await;
    let list = sessions.list();
    assert_eq!(list.len(), 1);
    let info = &list[0];
    assert_eq!(info.pid, Some(first.pid()));
    assert_eq!(info.state, psd::SessionState::Idle);
    assert_eq!(info.requests, 1);
    assert_eq!(info.app.as_str(), "main /");
    let session = first.field("session").unwrap();
    assert!(!info.handle.as_str().contains(&session));

    assert!(sessions.stop(info.handle.as_str()));
    let pid = first.pid();
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)),
        "worker {pid} still runs"
    );
    assert!(eventually(Duration::from_secs(5), || {
        sessions.get(info.handle.as_str()).map(|i| i.state) == Some(psd::SessionState::Dormant)
    }));
    assert_eq!(sessions.get(info.handle.as_str()).unwrap().pid, None);
    let resumed = get(client.clone(), format!("{base}/")).await;
    assert_eq!(resumed.field("session"), Some(session.clone()));
    assert_eq!(resumed.field("resumed").as_deref(), Some("1"));
    assert_ne!(resumed.pid(), pid);
    assert!(sessions.stop(info.handle.as_str()), "stop is idempotent");

    assert!(sessions.end(info.handle.as_str()));
    assert!(eventually(Duration::from_secs(5), || sessions.count() == 0));
    assert!(!sessions.end(info.handle.as_str()));
    let after = get(client, format!("{base}/")).await;
    assert_ne!(
        after.field("session"),
        Some(session),
        "an ended session's id names nothing"
    );
    assert_eq!(after.field("resumed").as_deref(), Some("0"));

    drop(stop);
    server.await.unwrap().unwrap();
}

/// A directory that says every valid id it is asked about is a dormant
/// session: what a store will say of sessions that outlived psd.
struct EverySessionIsDormant;

impl psd::session::Directory for EverySessionIsDormant {
    fn find<'a>(
        &'a self,
        _app: &'a psd::session::AppKey,
        _id: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<psd::session::Found, psd::Error>> + Send + 'a>,
    > {
        Box::pin(async {
            Ok(psd::session::Found::Dormant {
                created: std::time::SystemTime::now(),
            })
        })
    }
}

/// The registry's miss path, end to end: after a restart, a valid id that
/// no session in memory has goes to the directory, and when it says the
/// session exists, the session comes back with its id and a resumed worker
/// instead of a new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_directory_knows_resumes_after_a_restart() {
    let dir = TempDir::new("directory");
    let jar = TempDir::new("directory-jar");
    let client = std::sync::Arc::new(Client::with_jar(&jar, "c"));
    let mut sessions = vec![];
    for _ in 0..2 {
        let config = psd::Config {
            data_dir: dir.join("data"),
            locations: vec![perl_location()],
            ..psd::Config::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let server =
            psd::Server::with_directory(config, std::sync::Arc::new(EverySessionIsDormant))
                .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(vec![listener], async move {
            let _ = stopped.await;
        }));
        let c = client.clone();
        sessions.push(blocking(move || c.get(&url)).await);
        drop(stop);
        running.await.unwrap().unwrap();
    }
    let (before, after) = (&sessions[0], &sessions[1]);
    assert_eq!(before.field("resumed").as_deref(), Some("0"));
    assert_eq!(
        after.field("session"),
        before.field("session"),
        "same id after the restart"
    );
    assert_eq!(after.field("resumed").as_deref(), Some("1"));
    assert!(after.header("set-cookie").is_none(), "no new id handed out");
}
