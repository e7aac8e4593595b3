//! WebSocket load: C connections, each sending N messages and awaiting each
//! echo before the next; prints round trips per second.
//!
//!     ws-load URL [CONNECTIONS] [MESSAGES] [COOKIE]

use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .expect("usage: ws-load URL [CONNECTIONS] [MESSAGES] [COOKIE]")
        .clone();
    let connections: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let messages: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let cookie = args.get(4).cloned();
    let mut sockets = Vec::new();
    for _ in 0..connections {
        let mut request = url.as_str().into_client_request().expect("a ws:// URL");
        if let Some(cookie) = &cookie {
            request
                .headers_mut()
                .insert("cookie", cookie.parse().expect("a cookie header value"));
        }
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connect");
        sockets.push(socket);
    }
    let started = Instant::now();
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            tokio::spawn(async move {
                for i in 0..messages {
                    socket
                        .send(Message::text(format!("message {i}")))
                        .await
                        .expect("send");
                    match socket.next().await {
                        Some(Ok(_)) => {}
                        other => panic!("no echo: {other:?}"),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("connection task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = connections * messages;
    println!(
        "{total} round trips over {connections} connections in {elapsed:.2} s: {:.0} msgs/s",
        total as f64 / elapsed
    );
}
