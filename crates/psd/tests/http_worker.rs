//! `Worker http`: socket activation, proxying with the prefix handled,
//! streaming, long polls beside other paths, and WebSocket tunnels, through a
//! real psd to Python workers (standard library, and PyPI's websockets).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

fn app() -> PathBuf {
    repo().join("examples/http-python/app.py")
}

#[test]
fn a_stdlib_http_worker_keeps_its_session_and_gets_forwarded_headers() {
    let d = Daemon::start(&location_proto("/app", "http", &app(), ""));
    let (a, b) = (Client::with_jar(&d.dir, "a"), Client::with_jar(&d.dir, "b"));
    let a1 = a.get(&d.url("/app/x?y=1"));
    let a2 = a.get(&d.url("/app/x"));
    let b1 = b.get(&d.url("/app/"));
    assert_eq!(a1.status, 200, "{a1:?}\n{}", d.log_text());
    assert_eq!((a1.count(), a2.count(), b1.count()), (1, 2, 1));
    assert_eq!(a1.pid(), a2.pid(), "one process per session, kept");
    assert_ne!(a1.pid(), b1.pid());
    assert_eq!(
        a1.field("path").as_deref(),
        Some("/x"),
        "the prefix is taken off"
    );
    assert_eq!(a1.field("xff").as_deref(), Some("127.0.0.1"));
    assert_eq!(a1.field("proto").as_deref(), Some("http"));
    assert_eq!(a1.field("host"), Some(format!("127.0.0.1:{}", d.port)));
    assert_eq!(a1.field("prefix").as_deref(), Some("/app"));
    assert_eq!(a1.field("access").as_deref(), Some("read-write"));
    let cookie = a1.header("set-cookie").unwrap();
    assert!(cookie.contains(&a1.field("session").unwrap()));
    // A client cannot feed the worker its own forwarding headers.
    let spoofed = a.request(
        &d.url("/app/"),
        &[
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "-H",
            "X-Psd-Access: read-write",
        ],
    );
    assert_eq!(spoofed.field("xff").as_deref(), Some("127.0.0.1"));
}

#[test]
fn the_rust_http_worker_takes_its_socket_from_fd_3() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = std::process::Command::new(cargo)
        .args(["build", "--quiet", "-p", "http-worker"])
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(built.success());
    let worker = PathBuf::from(PSD).with_file_name("http-worker");
    let d = Daemon::start(&location_proto("/app", "http", &worker, ""));
    let c = Client::with_jar(&d.dir, "c");
    let (one, two) = (c.get(&d.url("/app/")), c.get(&d.url("/app/")));
    assert_eq!(
        (one.count(), two.count()),
        (1, 2),
        "{one:?}\n{}",
        d.log_text()
    );
    assert_eq!(one.pid(), two.pid());
}

#[test]
fn redirects_and_cookie_paths_get_the_prefix_back() {
    let d = Daemon::start(&location_proto("/app", "http", &app(), ""));
    let c = Client::with_jar(&d.dir, "c");
    let redirect = c.get(&d.url("/app/redirect"));
    assert_eq!(redirect.status, 302);
    assert_eq!(redirect.header("location"), Some("/app/done"));
    let cookie = c.get(&d.url("/app/cookie"));
    assert!(
        cookie
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("set-cookie") && v == "theme=dark; Path=/app/"),
        "{cookie:?}"
    );
}

#[test]
fn bodies_reach_the_http_worker_and_max_request_body_applies() {
    let d = Daemon::start(&location_proto(
        "/app",
        "http",
        &app(),
        "MaxRequestBody 64K",
    ));
    let c = Client::with_jar(&d.dir, "c");
    let ok = c.request(
        &d.url("/app/upload"),
        &["--data-binary", &"x".repeat(50_000)],
    );
    assert_eq!(ok.field("body").as_deref(), Some("50000"));
    let chunked = c.request(
        &d.url("/app/upload"),
        &[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &"x".repeat(100_000),
        ],
    );
    assert_eq!(chunked.status, 413, "{chunked:?}");
    assert_eq!(c.get(&d.url("/app/")).status, 200, "the worker survives");
}

#[test]
fn a_missing_or_crashing_http_program_gives_502() {
    let d = Daemon::start(&location_proto(
        "/app",
        "http",
        &PathBuf::from("/nonexistent/app"),
        "",
    ));
    assert_eq!(Client::anonymous().get(&d.url("/app/")).status, 502);
}

fn streams_as_written(config: &str, path: &str) {
    let d = Daemon::start(config);
    let times = arrival_times(d.port, path, &["line 1 ", "line 3 "]);
    // Three lines 600 ms apart: the first arrives long before the last.
    assert!(
        times[0] < Duration::from_millis(500),
        "first line after {:?}",
        times[0]
    );
    assert!(
        times[1] >= Duration::from_millis(1100),
        "last line after {:?}",
        times[1]
    );
}

#[test]
fn an_http_workers_response_streams_as_it_is_written() {
    streams_as_written(
        &location_proto("/app", "http", &app(), ""),
        "/app/slow?lines=3&ms=600",
    );
}

#[test]
fn a_fastcgi_workers_response_streams_as_it_is_written() {
    let slowprint = repo().join("examples/slowprint-perl/slowprint.pl");
    streams_as_written(
        &location_proto("/slow", "fastcgi", &slowprint, ""),
        "/slow/?lines=3&ms=600",
    );
}

#[test]
fn a_long_poll_waits_while_the_same_user_is_served_on_another_path() {
    let d = Daemon::start(&location_proto(
        "/app",
        "http",
        &app(),
        "SessionKey cookie psd_sid path",
    ));
    let c = Client::with_jar(&d.dir, "c");
    c.get(&d.url("/app/slow"));
    c.get(&d.url("/app/other"));
    let jar = d.dir.join("c.jar");
    std::thread::scope(|s| {
        let poll = s.spawn(|| {
            let started = std::time::Instant::now();
            let r = Client::anonymous().request(
                &d.url("/app/slow?lines=2&ms=1500"),
                &["-b", jar.to_str().unwrap()],
            );
            (started.elapsed(), r)
        });
        std::thread::sleep(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let other =
            Client::anonymous().request(&d.url("/app/other"), &["-b", jar.to_str().unwrap()]);
        assert_eq!(other.count(), 2, "the same user's other path");
        assert!(
            started.elapsed() < Duration::from_millis(700),
            "served while the long poll waits: {:?}",
            started.elapsed()
        );
        let (waited, reply) = poll.join().unwrap();
        assert!(waited >= Duration::from_millis(1400));
        assert!(reply.body.contains("line 2"));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_tunnelled_to_the_sessions_http_worker() {
    let chat = repo().join("examples/websocket-python/chat.py");
    let d = Daemon::start(&location_proto("/chat", "http", &chat, "SessionTimeout 1s"));
    let url = format!("ws://127.0.0.1:{}/chat/", d.port);
    let (mut first, response) =
        tokio_tungstenite::connect_async(url.clone().into_client_request().unwrap())
            .await
            .unwrap();
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    first.send(Message::text("hello")).await.unwrap();
    let reply = first.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(reply.starts_with("#1 hello (session process "), "{reply}");
    let pid = reply
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_end_matches(')')
        .to_string();

    // The idle timeout is 1 s: a WebSocket in use keeps the session alive.
    for i in 2..=4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        first.send(Message::text(format!("msg {i}"))).await.unwrap();
        let reply = first.next().await.unwrap().unwrap().into_text().unwrap();
        assert!(
            reply.starts_with(&format!("#{i} msg {i}")) && reply.contains(&pid),
            "{reply}"
        );
    }

    // The same session over a second connection sees the same conversation.
    let mut again = url.clone().into_client_request().unwrap();
    again
        .headers_mut()
        .insert("cookie", cookie.parse().unwrap());
    let (mut second, _) = tokio_tungstenite::connect_async(again).await.unwrap();
    second
        .send(Message::text("from the second tab"))
        .await
        .unwrap();
    let reply = second.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(
        reply.starts_with("#5 from the second tab") && reply.contains(&pid),
        "{reply}"
    );

    // Another browser: another process, its own history.
    let (mut other, _) = tokio_tungstenite::connect_async(url.into_client_request().unwrap())
        .await
        .unwrap();
    other.send(Message::text("hi")).await.unwrap();
    let reply = other.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(
        reply.starts_with("#1 hi") && !reply.contains(&pid),
        "{reply}"
    );
}

/// An HTTP server takes concurrent requests: by default one session's
/// second request is served while its long poll waits. With
/// `WorkerConcurrency 1` it waits its turn, and psd says why in the log.
#[test]
fn http_workers_serve_a_sessions_requests_side_by_side_by_default() {
    for (concurrency, waits) in [("", false), ("WorkerConcurrency 1", true)] {
        let d = Daemon::start(&location_proto("/app", "http", &app(), concurrency));
        let c = Client::with_jar(&d.dir, "c");
        assert_eq!(c.get(&d.url("/app/")).status, 200);
        std::thread::scope(|s| {
            let poll = s.spawn(|| c.get(&d.url("/app/slow?lines=2&ms=6000")));
            std::thread::sleep(Duration::from_millis(300));
            let started = std::time::Instant::now();
            let other = c.get(&d.url("/app/other"));
            assert_eq!(other.status, 200);
            let waited = started.elapsed() > Duration::from_secs(4);
            assert_eq!(
                waited,
                waits,
                "{concurrency:?}: waited {:?}",
                started.elapsed()
            );
            assert!(poll.join().unwrap().body.contains("line 2"));
        });
        let warned = d.log_text().contains("needs a higher WorkerConcurrency");
        assert_eq!(warned, waits, "{}", d.log_text());
    }
}
