//! Regression tests for what a hostile test of psd found: workers that lie
//! about their responses, clients that break off or stall, floods, and
//! paths and ids crafted to reach what they should not. Each test is named
//! after the defect it guards against.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use common::*;

fn liar() -> PathBuf {
    test_worker("liar.pl")
}

/// One HTTP/1.1 response read off a raw connection, framed by its own
/// `Content-Length` the way a client (or a front proxy reusing the
/// connection) frames it.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A kept-alive connection to psd.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Conn {
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, raw: &str) {
        self.reader.get_mut().write_all(raw.as_bytes()).unwrap();
    }

    fn get(&mut self, path: &str) -> Option<Raw> {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
        self.read(false)
    }

    /// The next response; `None` when the connection closed first.
    fn read(&mut self, head_only: bool) -> Option<Raw> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let status = line.split_whitespace().nth(1)?.parse().ok()?;
        let mut headers = vec![];
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).ok()?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':')?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut raw = Raw {
            status,
            headers,
            body: vec![],
        };
        if head_only {
            return Some(raw);
        }
        if let Some(len) = raw.header("content-length") {
            let mut body = vec![0; len.parse().unwrap()];
            self.reader.read_exact(&mut body).ok()?;
            raw.body = body;
        } else if raw.header("transfer-encoding").is_some() {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size).ok()?;
                let size = usize::from_str_radix(size.trim(), 16).ok()?;
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk).ok()?;
                if size == 0 {
                    break;
                }
                raw.body.extend_from_slice(&chunk[..size]);
            }
        }
        Some(raw)
    }

    /// Whether the peer has closed the connection (within `limit`).
    fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let mut buf = [0u8; 1024];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            self.reader.get_ref().set_read_timeout(Some(left)).unwrap();
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
                Err(_) => return true,
            }
        }
    }
}

fn liar_daemon(extra: &str) -> Daemon {
    Daemon::start(&location("/c", &liar(), &format!("SessionKey ip\n{extra}")))
}

/// Response splitting: a worker that wrote more than its `Content-Length`
/// got the surplus onto the client's kept-alive connection, where it was
/// read as the answer to the next request.
#[test]
fn response_splitting_surplus_bytes_never_reach_the_next_response() {
    let d = liar_daemon("");
    let mut conn = Conn::open(d.port);
    let first = conn.get("/c/long").expect("an answer");
    assert_eq!((first.status, &first.body[..]), (200, &b"hello"[..]));
    let next = conn.get("/c/").expect("the connection still works");
    assert_eq!(next.status, 200, "{next:?}");
    let body = String::from_utf8_lossy(&next.body);
    assert!(
        body.starts_with("pid="),
        "the next answer is its own: {body:?}"
    );
    assert!(d.log_text().contains("more than its Content-Length"));
}

/// A body shorter than its `Content-Length` must not leave the client
/// waiting on a kept-alive connection for bytes that never come: the
/// connection is closed.
#[test]
fn response_splitting_short_body_closes_the_connection() {
    let d = liar_daemon("");
    let mut conn = Conn::open(d.port);
    // hyper may send the head and the 3 bytes, or nothing at all; either
    // way the connection ends and no byte of another response follows.
    if let Some(head) = conn.get_head_of("/c/short") {
        assert_eq!(head.header("content-length"), Some("100"));
        let mut rest = vec![];
        let _ = conn.reader.read_to_end(&mut rest);
        assert!(rest.len() < 100, "{rest:?}");
    }
    assert!(conn.closed_within(Duration::from_secs(5)));
    let fresh = Conn::open(d.port).get("/c/").unwrap();
    assert_eq!(fresh.status, 200, "the session goes on");
}

/// `Status: 999` is not a status a client can be sent: 502.
#[test]
fn response_splitting_invalid_status_is_bad_gateway() {
    let d = liar_daemon("");
    let mut conn = Conn::open(d.port);
    assert_eq!(conn.get("/c/status").unwrap().status, 502);
    assert_eq!(conn.get("/c/").unwrap().status, 200);
}

/// HEAD over HTTP/2 reset the stream when a FastCGI worker wrote a body
/// with its HEAD answer, as every CGI script does.
#[test]
fn head_over_http2_drops_the_workers_body() {
    let d = Daemon::start(&location(
        "/counter",
        &repo().join("examples/counter-perl/counter.pl"),
        "",
    ));
    for version in ["--http2-prior-knowledge", "--http1.1"] {
        let reply = Client::anonymous().request(&d.url("/counter/"), &["-I", version]);
        assert_eq!(reply.status, 200, "{version}: {reply:?}");
        assert!(reply.body.is_empty());
    }
}

impl Conn {
    fn get_head_of(&mut self, path: &str) -> Option<Raw> {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
        self.read(true)
    }
}

/// Paths were not normalised: `%2e%2e` climbed out of the location, `%00`
/// cut the path short, and `%2e%70%73%64` reached the application as
/// psd's own `/.psd/`.
#[test]
fn paths_are_normalised_before_routing() {
    let d = liar_daemon("");
    let mut conn = Conn::open(d.port);
    for (path, status) in [
        ("/c/%2e%2e/%2e%2e/etc/passwd", 400),
        ("/c/../../etc/passwd", 400),
        ("/c/a%00b", 400),
        ("/c/x/%2E%2E/", 200),
        ("/c/%2e%70%73%64/join?id=forged", 404),
        // psd's own share URL (no session yet: 404 saying so), not the worker.
        ("/c/x/../.psd/share", 404),
        ("/c%2F..%2Fother", 404),
    ] {
        let reply = conn
            .get(path)
            .unwrap_or_else(|| panic!("{path}: no answer"));
        assert_eq!(reply.status, status, "{path}: {reply:?}");
        if status != 200 {
            let body = String::from_utf8_lossy(&reply.body);
            assert!(!body.contains("pid="), "{path} reached the worker: {body}");
        }
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request needs exactly one Host; an
/// absolute-form target's authority is the host.
#[test]
fn http_strictness_host_and_method() {
    let d = liar_daemon("");
    let ask = |raw: &str| {
        let mut conn = Conn::open(d.port);
        conn.send(raw);
        conn.read(false).map(|r| r.status)
    };
    assert_eq!(ask("GET /c/ HTTP/1.1\r\n\r\n"), Some(400), "no Host");
    assert_eq!(
        ask("GET /c/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        Some(400),
        "two Hosts"
    );
    assert_eq!(
        ask("GET /c/ HTTP/1.0\r\n\r\n"),
        Some(200),
        "HTTP/1.0 may omit it"
    );
    let long = "X".repeat(100);
    assert_eq!(
        ask(&format!("{long} /c/ HTTP/1.1\r\nHost: a\r\n\r\n")),
        Some(400),
        "an unbounded method"
    );
    assert_eq!(
        ask("GET http://t/c/ HTTP/1.1\r\nHost: elsewhere\r\n\r\n"),
        Some(200)
    );
}

/// An id issued by one `<Location>` was adopted by another, whose worker
/// then saw the other application's id.
#[test]
fn an_id_is_not_adopted_across_applications() {
    let counter = repo().join("examples/counter-perl/counter.pl");
    let d = Daemon::start(&format!(
        "{}{}",
        location("/one", &counter, ""),
        location("/two", &counter, "")
    ));
    let one = Client::with_jar(&d.dir, "one").get(&d.url("/one/"));
    let id = one.field("session").unwrap();
    let cookie = format!("Cookie: psd_sid={id}");
    let two = Client::anonymous().request(&d.url("/two/"), &["-H", &cookie]);
    assert_eq!(two.status, 200);
    assert_ne!(two.field("session").unwrap(), id, "/two issued its own id");
    assert!(two.header("set-cookie").is_some());
    let again = Client::anonymous().request(&d.url("/one/"), &["-H", &cookie]);
    assert_eq!(again.count(), 2, "the id still works where it was issued");
}

fn http_python() -> PathBuf {
    repo().join("examples/http-python/app.py")
}

/// Sends a POST that declares `declared` bytes, sends `sent` of them, and
/// closes.
fn aborted_post(port: u16, path: &str, declared: usize, sent: usize) {
    let mut conn = Conn::open(port);
    conn.send(&format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {declared}\r\n\r\n{}",
        "x".repeat(sent)
    ));
    std::thread::sleep(Duration::from_millis(50));
}

/// One client could break a session others use: an aborted request body
/// made psd kill the http worker and lose the session's state (20 of 20
/// tries), with request buffering and without it.
#[test]
fn one_client_aborting_its_body_leaves_the_session_alone() {
    for buffering in ["on", "off"] {
        let d = Daemon::start(&location_proto(
            "/h",
            "http",
            &http_python(),
            &format!("SessionKey ip\nRequestBuffering {buffering}"),
        ));
        let first = Client::anonymous().get(&d.url("/h/"));
        assert_eq!(first.count(), 1, "{first:?}");
        for _ in 0..5 {
            aborted_post(d.port, "/h/", 100_000, 1_000);
        }
        let after = Client::anonymous().get(&d.url("/h/"));
        assert_eq!(
            (after.pid(), after.count()),
            (first.pid(), 2),
            "RequestBuffering {buffering}: the worker and its state survive\n{}",
            d.log_text()
        );
    }
}

/// A body trickled at a byte a second held the session's turn: the owner
/// waited 29 s. Bodies are received before the request takes its turn.
#[test]
fn one_client_trickling_its_body_does_not_hold_the_session() {
    let d = liar_daemon("");
    assert_eq!(Client::anonymous().get(&d.url("/c/")).status, 200);
    let mut trickles: Vec<Conn> = (0..5)
        .map(|_| {
            let mut c = Conn::open(d.port);
            c.send("POST /c/ HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nx");
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let owner = Client::anonymous().get(&d.url("/c/"));
    assert_eq!(owner.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the owner waited {:?}",
        started.elapsed()
    );
    for c in &mut trickles {
        c.send("y");
    }
}

/// A client that left an endless streamed response kept the worker busy
/// and the session blocked; now the worker's request is aborted.
#[test]
fn a_client_leaving_an_endless_stream_frees_the_session() {
    let d = liar_daemon("RequestTimeout 30s");
    let mut conn = Conn::open(d.port);
    let head = conn.get_head_of("/c/stream").unwrap();
    assert_eq!(head.status, 200);
    let mut line = String::new();
    conn.reader.read_line(&mut line).unwrap();
    drop(conn);
    let started = std::time::Instant::now();
    let next = Client::anonymous().get(&d.url("/c/"));
    assert_eq!(next.status, 200, "{next:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the session was held {:?}",
        started.elapsed()
    );
    assert_eq!(next.count(), 2, "the same worker goes on");
}

/// Bodies above the in-memory threshold are spooled and still arrive
/// whole, with a length, also when the client sent them chunked.
#[test]
fn large_and_chunked_bodies_arrive_whole_with_a_length() {
    let d = Daemon::start(&location(
        "/counter",
        &repo().join("examples/counter-perl/counter.pl"),
        "SessionKey ip",
    ));
    let big = d.dir.join("big");
    std::fs::write(&big, vec![b'z'; 300_000]).unwrap();
    let at = format!("@{}", big.display());
    let plain = Client::anonymous().request(&d.url("/counter/"), &["--data-binary", &at]);
    assert_eq!(plain.field("body").as_deref(), Some("300000"), "{plain:?}");
    let chunked = Client::anonymous().request(
        &d.url("/counter/"),
        &["--data-binary", &at, "-H", "Transfer-Encoding: chunked"],
    );
    assert_eq!(
        chunked.field("body").as_deref(),
        Some("300000"),
        "{chunked:?}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(d.dir.join("data/run"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("body-"))
        .collect();
    assert!(leftovers.is_empty(), "spooled bodies leave no files");
}

/// Connections that never sent a byte were held forever (over 180 s), and
/// about 20,000 of them exhausted psd's file descriptors. Plain, h2c (a
/// preface and nothing more) and TLS after its handshake are closed after
/// `RequestHeaderTimeout`; an idle kept-alive connection after
/// `KeepAliveTimeout`; a request that takes longer than both is not cut.
#[test]
fn silent_connections_are_closed_and_busy_ones_are_not() {
    let dir = TempDir::new("silent");
    let status = std::process::Command::new(PSD)
        .args(["cert", "--host", "127.0.0.1", "--out"])
        .arg(&dir.0)
        .output()
        .unwrap()
        .status;
    assert!(status.success());
    let tls_port = free_port();
    let d = Daemon::start(&format!(
        "Listen 127.0.0.1:{tls_port} https\nSSLCertificateFile {}\nSSLCertificateKeyFile {}\n\
         RequestHeaderTimeout 1s\nKeepAliveTimeout 1s\n{}",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display(),
        location(
            "/m",
            &test_worker("misbehave.pl"),
            "SessionKey ip\nRequestTimeout 10s"
        ),
    ));
    let limit = Duration::from_secs(4);

    let mut silent = Conn::open(d.port);
    let mut h2c = Conn::open(d.port);
    h2c.send("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let mut kept = Conn::open(d.port);
    assert_eq!(kept.get("/m/").unwrap().status, 200);
    let started = std::time::Instant::now();
    assert!(silent.closed_within(limit), "a silent connection");
    assert!(h2c.closed_within(limit), "an h2c preface and nothing more");
    assert!(kept.closed_within(limit), "an idle keep-alive connection");
    assert!(started.elapsed() >= Duration::from_millis(500));

    // TLS: handshake with openssl, then say nothing.
    let mut tls = std::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect"])
        .arg(format!("127.0.0.1:{tls_port}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let closed = eventually(limit, || tls.try_wait().unwrap().is_some());
    let _ = tls.kill();
    assert!(closed, "a TLS connection silent after its handshake");

    let mut slow = Conn::open(d.port);
    let reply = slow
        .get("/m/slow?ms=2500")
        .expect("a slow answer is waited for");
    assert_eq!(reply.status, 200);
}

/// `MaxConnectionsPerClient`: one address cannot hold every connection.
#[test]
fn connections_per_client_are_bounded() {
    let d = liar_daemon("");
    let d = {
        drop(d);
        Daemon::start(&format!(
            "MaxConnectionsPerClient 3\n{}",
            location("/c", &liar(), "SessionKey ip")
        ))
    };
    let mut held: Vec<Conn> = (0..3).map(|_| Conn::open(d.port)).collect();
    let mut extra = Conn::open(d.port);
    assert!(
        extra.closed_within(Duration::from_secs(2)),
        "the fourth is refused"
    );
    assert_eq!(held[0].get("/c/").unwrap().status, 200, "the others work");
    held.pop();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(Conn::open(d.port).get("/c/").unwrap().status, 200);
    assert!(d.log_text().contains("MaxConnectionsPerClient (3)"));
}

/// Out of file descriptors, psd logged `accept failed` 1,720 times: it
/// now backs off and says so once in a while, and serves again once
/// connections close.
#[test]
fn out_of_descriptors_accept_backs_off_quietly() {
    let d = Daemon::start_with_file_limit(&location("/c", &liar(), "SessionKey ip"), 64);
    let held: Vec<TcpStream> = (0..150)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", d.port)).ok())
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let failures = d
        .log_text()
        .lines()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert!(
        (1..=3).contains(&failures),
        "{failures} accept failures logged"
    );
    drop(held);
    assert!(
        eventually(Duration::from_secs(10), || {
            Client::anonymous().get(&d.url("/c/")).status == 200
        }),
        "psd serves again"
    );
}

fn worker_pids(d: &Daemon) -> Vec<u32> {
    d.log_text()
        .lines()
        .filter(|l| l.contains("worker started"))
        .filter_map(|l| {
            l.split("pid=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// After kill -9 of psd every worker lived on as an orphan, and a
/// restarted psd started new ones beside them. The reaper kills their
/// process groups (the workers' own children included) when psd dies.
#[test]
fn no_worker_outlives_psd_killed_with_sigkill() {
    let mut d = Daemon::start(&location("/c", &liar(), ""));
    for name in ["a", "b", "c"] {
        assert_eq!(
            Client::with_jar(&d.dir, name).get(&d.url("/c/")).status,
            200
        );
    }
    let pids = worker_pids(&d);
    assert_eq!(pids.len(), 3, "{}", d.log_text());
    assert!(pids.iter().all(|&p| alive(p)));
    d.signal("KILL");
    d.wait_exit(Duration::from_secs(5));
    assert!(
        eventually(Duration::from_secs(5), || pids.iter().all(|&p| !alive(p))),
        "workers outlived psd: {:?}",
        pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
    );
}

/// After kill -9 of a worker, 3–5 % of the next requests got 502: they
/// were sent to the dead worker's socket. They now go to its successor.
#[test]
fn requests_after_a_worker_is_killed_go_to_a_new_one() {
    let d = liar_daemon("");
    let mut last = Client::anonymous().get(&d.url("/c/")).pid();
    for round in 0..6 {
        let killed = std::process::Command::new("kill")
            .args(["-9", &last.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let mut conn = Conn::open(d.port);
        // Requests with a body too: a kept connection is checked before one
        // is sent on it.
        let reply = if round % 2 == 0 {
            conn.get("/c/").unwrap()
        } else {
            conn.send("POST /c/ HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
            conn.read(false).unwrap()
        };
        assert_eq!(reply.status, 200, "{reply:?}\n{}", d.log_text());
        let pid: u32 = String::from_utf8_lossy(&reply.body)
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pid=")?.parse().ok())
            .unwrap();
        assert_ne!(pid, last);
        last = pid;
    }
}

/// A new session from address `ip` (through a trusted proxy): its status.
fn new_session_from(port: u16, ip: &str) -> u16 {
    let mut conn = Conn::open(port);
    conn.send(&format!(
        "GET /c/ HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {ip}\r\nConnection: close\r\n\r\n"
    ));
    conn.read(false).map_or(0, |r| r.status)
}

/// A spawn flood from many addresses (a trusted proxy's X-Forwarded-For)
/// started 500 workers in 1.3 s, and then every new client got 503 until
/// `SessionTimeout`. Now one-request sessions idle for a moment give
/// their places to new users, and sessions in real use keep theirs.
#[test]
fn a_spawn_flood_does_not_lock_new_users_out() {
    let d = Daemon::start(&format!(
        "TrustedProxy 127.0.0.1\nMaxSessions 20\nMaxSpawnRate 200\n{}",
        location("/c", &liar(), "")
    ));
    // A user in real use before the flood: two requests, one cookie jar.
    let regular = Client::with_jar(&d.dir, "regular");
    let first = regular.get(&d.url("/c/"));
    assert_eq!(regular.get(&d.url("/c/")).count(), 2);
    let flood = |from: usize, n: usize| -> Vec<u16> {
        let port = d.port;
        let threads: Vec<_> = (from..from + n)
            .map(|i| {
                std::thread::spawn(move || {
                    new_session_from(port, &format!("10.1.{}.{}", i / 250, i % 250 + 1))
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    };
    let burst = flood(0, 60);
    assert!(burst.contains(&503), "MaxSessions holds: {burst:?}");
    std::thread::sleep(Duration::from_millis(2500));
    // The flood goes on, slower than places are reclaimed (20 places every
    // 2 s), while new users arrive.
    let flooder = {
        let port = d.port;
        std::thread::spawn(move || {
            (100..115)
                .map(|i| {
                    std::thread::sleep(Duration::from_millis(200));
                    new_session_from(port, &format!("10.2.0.{}", i))
                })
                .collect::<Vec<_>>()
        })
    };
    let mut admitted = 0;
    for i in 0..10 {
        let user = Client::with_jar(&d.dir, &format!("user{i}"));
        let url = d.url("/c/");
        let a = user.request(
            &url,
            &["-H", &format!("X-Forwarded-For: 192.0.2.{}", i + 1)],
        );
        if a.status == 200 {
            admitted += 1;
            let b = user.request(
                &url,
                &["-H", &format!("X-Forwarded-For: 192.0.2.{}", i + 1)],
            );
            assert_eq!(
                (b.status, b.pid()),
                (200, a.pid()),
                "the user keeps the worker"
            );
        }
    }
    flooder.join().unwrap();
    assert_eq!(
        admitted,
        10,
        "new users got in during the flood\n{}",
        d.log_text()
    );
    let again = regular.get(&d.url("/c/"));
    assert_eq!(
        (again.pid(), again.count()),
        (first.pid(), 3),
        "a session in real use is never evicted"
    );
}

/// `MaxSpawnRate`: a burst of new sessions beyond the rate waits briefly,
/// then gets 503 with Retry-After; the rest start.
#[test]
fn max_spawn_rate_paces_new_workers() {
    let d = Daemon::start(&format!(
        "TrustedProxy 127.0.0.1\nMaxSpawnRate 5\n{}",
        location("/c", &liar(), "")
    ));
    let port = d.port;
    let started = std::time::Instant::now();
    let threads: Vec<_> = (0..40)
        .map(|i| std::thread::spawn(move || new_session_from(port, &format!("10.3.0.{}", i + 1))))
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let refused = statuses.iter().filter(|&&s| s == 503).count();
    assert_eq!(ok + refused, 40, "{statuses:?}");
    assert!(
        (6..=25).contains(&ok),
        "{ok} started within {:?}",
        started.elapsed()
    );
    assert!(d.log_text().contains("MaxSpawnRate reached"));
}

fn stdio_daemon(extra: &str) -> Daemon {
    Daemon::start(&location_proto(
        "/s",
        "stdio",
        &test_worker("stdio-test.py"),
        &format!("SessionKey ip\n{extra}"),
    ))
}

/// A stdio worker that closed its stdout but kept running failed one
/// request and was kept, so the next waited the whole RequestTimeout.
#[test]
fn a_stdio_worker_closing_stdout_is_ended() {
    let d = stdio_daemon("RequestTimeout 20s");
    let first = Client::anonymous().get(&d.url("/s/"));
    assert_eq!(Client::anonymous().get(&d.url("/s/mute")).status, 502);
    assert!(eventually(Duration::from_secs(5), || !alive(first.pid())));
    let started = std::time::Instant::now();
    let next = Client::anonymous().get(&d.url("/s/"));
    assert_eq!(next.status, 200);
    assert_ne!(next.pid(), first.pid());
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A million lines for unknown ids wrote a WARN each (375 MB of log in
/// seconds); and a line over the limit cost ~200 MB and kept the worker.
#[test]
fn a_stdio_workers_chatter_and_huge_lines_are_bounded() {
    let d = stdio_daemon("");
    let reply = Client::anonymous().get(&d.url("/s/chatter?n=20000"));
    let _ = reply;
    std::thread::sleep(Duration::from_millis(500));
    let warnings = d
        .log_text()
        .lines()
        .filter(|l| l.contains("unknown request"))
        .count();
    assert!((1..=10).contains(&warnings), "{warnings} warnings logged");
    let before = Client::anonymous().get(&d.url("/s/")).pid();
    assert_eq!(Client::anonymous().get(&d.url("/s/huge")).status, 502);
    assert!(
        eventually(Duration::from_secs(5), || !alive(before)),
        "replaced"
    );
    assert_eq!(Client::anonymous().get(&d.url("/s/")).status, 200);
}

/// The stdio relay accepted malformed WebSocket upgrades.
#[test]
fn malformed_websocket_upgrades_are_refused() {
    let d = stdio_daemon("");
    let upgrade = |method: &str, version: &str, keys: &[&str]| {
        let mut conn = Conn::open(d.port);
        let keys: String = keys
            .iter()
            .map(|k| format!("Sec-WebSocket-Key: {k}\r\n"))
            .collect();
        conn.send(&format!(
            "{method} /s/ HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: {version}\r\n{keys}Content-Length: 0\r\n\r\n"
        ));
        conn.read(true).map(|r| {
            (
                r.status,
                r.header("sec-websocket-version").map(String::from),
            )
        })
    };
    let good = "dGhlIHNhbXBsZSBub25jZQ==";
    assert_eq!(upgrade("GET", "13", &["abc"]).unwrap().0, 400, "3-byte key");
    assert_eq!(
        upgrade("GET", "13", &["!!!!notbase64!!!!!!!!!!="])
            .unwrap()
            .0,
        400
    );
    assert_eq!(
        upgrade("GET", "13", &[good, good]).unwrap().0,
        400,
        "two keys"
    );
    assert_eq!(upgrade("POST", "13", &[good]).unwrap().0, 400, "POST");
    for version in ["12", "99999999999"] {
        assert_eq!(
            upgrade("GET", version, &[good]).unwrap(),
            (426, Some("13".to_string())),
            "version {version}"
        );
    }
    assert_eq!(upgrade("GET", "13", &[good]).unwrap().0, 101);
}

/// About 10,000 back-to-back messages from a client that does not read
/// locked the session up for good: the worker blocked writing to psd,
/// and every later request hung past RequestTimeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_flood_does_not_lock_up_the_session() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let d = stdio_daemon("RequestTimeout 5s");
    let url = d.url("/s/");
    let first = blocking({
        let url = url.clone();
        move || Client::anonymous().get(&url)
    })
    .await;
    let ws = format!("ws://127.0.0.1:{}/s/", d.port);
    let (mut socket, _) = tokio_tungstenite::connect_async(ws.into_client_request().unwrap())
        .await
        .unwrap();
    // Send, never read.
    let sender = tokio::spawn(async move {
        for i in 0..10_000 {
            let message = Message::text(format!("message {i} {}", "x".repeat(100)));
            if tokio::time::timeout(Duration::from_secs(5), socket.send(message))
                .await
                .map_or(true, |r| r.is_err())
            {
                break;
            }
        }
        socket
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = std::time::Instant::now();
    let after = blocking(move || Client::anonymous().get(&url)).await;
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(after.pid(), first.pid());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(sender);
}

/// A 60 MB WebSocket message cost psd ~170 MB: messages are limited to
/// 1 MiB and a larger one closes the socket with 1009.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_websocket_message_closes_with_1009() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let d = stdio_daemon("");
    let ws = format!("ws://127.0.0.1:{}/s/", d.port);
    let (mut socket, _) = tokio_tungstenite::connect_async(ws.into_client_request().unwrap())
        .await
        .unwrap();
    let _ = socket.send(Message::binary(vec![0u8; 2 << 20])).await;
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(frame) = socket.next().await {
            if let Ok(Message::Close(frame)) = frame {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(close, Some(1009));
}

/// About 20,000 silent connections exhausted psd's descriptors and kept
/// everyone out. At `MaxConnections` a new connection takes the place of
/// the oldest one idle for a second: real clients still get in.
#[test]
fn a_real_client_gets_in_while_silent_connections_fill_max_connections() {
    let d = Daemon::start(&format!(
        "MaxConnections 20\nMaxConnectionsPerClient 1000\n{}",
        location("/c", &liar(), "SessionKey ip")
    ));
    let mut silent: Vec<Conn> = (0..20).map(|_| Conn::open(d.port)).collect();
    std::thread::sleep(Duration::from_millis(1300));
    let reply = Conn::open(d.port).get("/c/").expect("an answer");
    assert_eq!(reply.status, 200);
    assert!(
        silent[0].closed_within(Duration::from_secs(2)),
        "the oldest made room"
    );
    assert!(
        !silent[19].closed_within(Duration::from_millis(200)),
        "one is enough"
    );
}

/// After kill -9 of a worker, its children in its process group lived on.
#[test]
fn a_killed_workers_children_die_with_it() {
    let dir = TempDir::new("children");
    let wrapper = dir.join("with-child.sh");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nsleep 3600 &\nexec {}\n", liar().display()),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let d = Daemon::start(&location("/c", &wrapper, "SessionKey ip"));
    let pid = Client::anonymous().get(&d.url("/c/")).pid();
    let group = std::process::Command::new("pgrep")
        .args(["-g", &pid.to_string()])
        .output()
        .unwrap();
    let members: Vec<u32> = String::from_utf8_lossy(&group.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(members.len() >= 2, "the worker and its child: {members:?}");
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || members
            .iter()
            .all(|&p| !alive(p))),
        "the worker's group outlived it"
    );
}

/// A WebSocket tunnel outlives the HTTP connection it came on: it keeps
/// that connection's place under `MaxConnections` until it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnels_count_against_max_connections() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let d = Daemon::start(&format!(
        "MaxConnections 3\n{}",
        location_proto(
            "/s",
            "stdio",
            &test_worker("stdio-test.py"),
            "SessionKey ip"
        )
    ));
    let ws = format!("ws://127.0.0.1:{}/s/", d.port);
    let mut tunnels = vec![];
    for _ in 0..3 {
        let (socket, _) =
            tokio_tungstenite::connect_async(ws.clone().into_client_request().unwrap())
                .await
                .unwrap();
        tunnels.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let port = d.port;
    let refused = blocking(move || Conn::open(port).get("/s/").is_none()).await;
    assert!(refused, "three tunnels hold all three places");
    let mut first = tunnels.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = blocking(move || Conn::open(port).get("/s/").map(|r| r.status)).await;
    assert_eq!(status, Some(200), "a closed tunnel gives its place back");
}
