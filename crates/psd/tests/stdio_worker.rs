//! `Worker stdio`: JSON lines through a real psd to Python workers: state,
//! garbage, binary bodies, streaming, and WebSockets terminated by psd.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

fn tester() -> PathBuf {
    test_worker("stdio-test.py")
}

#[test]
fn the_example_stdio_worker_keeps_its_session() {
    let d = Daemon::start(&location_proto(
        "/json",
        "stdio",
        &repo().join("examples/stdio-python/worker.py"),
        "",
    ));
    let (a, b) = (Client::with_jar(&d.dir, "a"), Client::with_jar(&d.dir, "b"));
    let a1 = a.get(&d.url("/json/x"));
    let a2 = a.get(&d.url("/json/x"));
    let b1 = b.get(&d.url("/json/"));
    assert_eq!(a1.status, 200, "{a1:?}\n{}", d.log_text());
    assert!(a1.body.ends_with("GET /x\n"), "{}", a1.body);
    assert_eq!((a1.count(), a2.count(), b1.count()), (1, 2, 1));
    assert_eq!(a1.pid(), a2.pid());
    assert_ne!(a1.pid(), b1.pid());
}

#[test]
fn garbage_or_a_wrong_id_from_a_stdio_worker_fails_that_request_only() {
    let d = Daemon::start(&location_proto(
        "/",
        "stdio",
        &tester(),
        "RequestTimeout 5s",
    ));
    let c = Client::with_jar(&d.dir, "c");
    let first = c.get(&d.url("/"));
    for bad in ["/garbage", "/unknown"] {
        let r = c.get(&d.url(bad));
        assert_eq!(r.status, 502, "{bad}: {r:?}");
        assert!(!r.body.contains("json"), "no worker output in error bodies");
        let next = c.get(&d.url("/"));
        assert_eq!(next.status, 200, "after {bad}");
        assert_eq!(next.pid(), first.pid(), "the worker carries on");
    }
    assert!(
        d.log_text().contains("not a JSON object"),
        "garbage is logged"
    );
    assert!(
        d.log_text().contains("unknown request"),
        "wrong ids are logged"
    );
}

#[test]
fn stdio_bodies_travel_as_text_or_base64() {
    let d = Daemon::start(&location_proto("/", "stdio", &tester(), ""));
    let c = Client::anonymous();
    let text = c.request(&d.url("/echo"), &["--data-binary", "héllo"]);
    assert_eq!(text.body, "POST héllo");
    let bytes = d.dir.join("bytes.bin");
    std::fs::write(&bytes, [0xffu8, 0xfe, 0x00, 0x01]).unwrap();
    let raw = c.request(
        &d.url("/echo"),
        &["--data-binary", &format!("@{}", bytes.display())],
    );
    assert_eq!(
        raw.body, "POST fffe0001",
        "non-UTF-8 bodies go as body_base64"
    );
    let out = std::process::Command::new("curl")
        .args(["-s", &d.url("/binary")])
        .output()
        .unwrap();
    assert_eq!(out.stdout, (0u8..=255).collect::<Vec<_>>());
    let big = "y".repeat(3 << 20);
    let file = d.dir.join("big.txt");
    std::fs::write(&file, &big).unwrap();
    let large = c.request(
        &d.url("/echo"),
        &["--data-binary", &format!("@{}", file.display())],
    );
    assert_eq!(
        large.body.len(),
        "POST ".len() + big.len(),
        "large bodies work"
    );
}

#[test]
fn a_stdio_workers_streamed_response_arrives_as_written() {
    let d = Daemon::start(&location_proto("/", "stdio", &tester(), ""));
    let times = arrival_times(d.port, "/stream?lines=3&ms=600", &["line 1 ", "line 3 "]);
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
fn a_hung_stdio_worker_gives_504_and_is_replaced() {
    let dir = TempDir::new("stdio-hang");
    let script = dir.join("hang.sh");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 3600\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let d = Daemon::start(&location_proto("/", "stdio", &script, "RequestTimeout 1s"));
    assert_eq!(Client::anonymous().get(&d.url("/")).status, 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psd_terminates_websockets_for_stdio_workers_one_message_a_line() {
    let d = Daemon::start(&location_proto("/ws", "stdio", &tester(), ""));
    let url = format!("ws://127.0.0.1:{}/ws/", d.port);
    let (mut socket, response) =
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
    socket.send(Message::text("hello")).await.unwrap();
    let first = socket.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(first.starts_with("#1 hello pid="), "{first}");
    socket.send(Message::text("again")).await.unwrap();
    let second = socket.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(second.starts_with("#2 again"), "{second}");

    // Plain requests of the same session reach the same process meanwhile.
    let pid = first.rsplit("pid=").next().unwrap().to_string();
    let cookie_for_curl = cookie.clone();
    let url_http = d.url("/ws/");
    let plain = tokio::task::spawn_blocking(move || {
        Client::anonymous().request(&url_http, &["-H", &format!("Cookie: {cookie_for_curl}")])
    })
    .await
    .unwrap();
    assert_eq!(plain.field("pid"), Some(pid.clone()));

    let mut other = url.into_client_request().unwrap();
    other
        .headers_mut()
        .insert("cookie", cookie.parse().unwrap());
    let (mut second_tab, _) = tokio_tungstenite::connect_async(other).await.unwrap();
    second_tab.send(Message::text("tab two")).await.unwrap();
    let reply = second_tab
        .next()
        .await
        .unwrap()
        .unwrap()
        .into_text()
        .unwrap();
    assert_eq!(
        reply,
        format!("#3 tab two pid={pid}"),
        "one session, one worker, two sockets"
    );
    socket.close(None).await.unwrap();
}
