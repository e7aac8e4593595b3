//! The long-poll chat example (examples/chat): one request waits for news
//! while other requests of the same browser, on other paths, are served.

mod common;

#[path = "../../../examples/chat/app.rs"]
mod chat;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use psd::config::LocationConfig;
use psd::mapper::SessionKey;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_stream_waits_until_another_client_posts() {
    let dir = TempDir::new("chat");
    let mut location = LocationConfig::in_process("/", chat::app());
    location.mapper =
        Arc::new(SessionKey::parse(&["cookie".into(), "psd_sid".into(), "path".into()]).unwrap());
    let (base, stop, server) = serve(&dir, vec![location], 100).await;
    let jars = TempDir::new("chat-jars");
    blocking(move || {
        let alice = Client::with_jar(&jars, "alice");
        let bob = Client::with_jar(&jars, "bob");
        assert!(alice.get(&format!("{base}/")).body.contains("Chat!"));
        bob.get(&format!("{base}/"));

        std::thread::scope(|s| {
            let waiting = s.spawn(|| {
                let started = Instant::now();
                let reply = alice.get(&format!("{base}/pushstream"));
                (started.elapsed(), reply)
            });
            std::thread::sleep(Duration::from_millis(400));
            assert!(!waiting.is_finished(), "the push stream must wait for news");
            // Alice's own page and sender are other sessions: not blocked.
            assert!(alice.get(&format!("{base}/")).body.contains("Chat!"));
            let sent = bob.request(
                &format!("{base}/send"),
                &["--data", "username=bob&message=hello <world>"],
            );
            assert_eq!(sent.body, "Got it!");
            let (waited, reply) = waiting.join().unwrap();
            assert!(waited >= Duration::from_millis(350), "{waited:?}");
            assert_eq!(reply.body, "bob: hello &lt;world&gt;");
        });

        // The stream session remembers what it delivered: the next poll
        // waits again until there is something new.
        std::thread::scope(|s| {
            let waiting = s.spawn(|| alice.get(&format!("{base}/pushstream")));
            std::thread::sleep(Duration::from_millis(300));
            assert!(!waiting.is_finished());
            alice.request(
                &format!("{base}/send"),
                &["--data", "username=alice&message=hi bob"],
            );
            assert_eq!(
                waiting.join().unwrap().body,
                "alice: hi bob<br>bob: hello &lt;world&gt;"
            );
        });
    })
    .await;
    drop(stop);
    server.await.unwrap().unwrap();
}
