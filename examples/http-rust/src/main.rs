//! A psd `http` worker in Rust: takes its listening socket from fd 3
//! (systemd socket activation, as psd passes it) or binds PORT, answers
//! every request with its pid and per-session count, and echoes WebSocket
//! messages. Small and fast, so benchmarks measure psd, not the worker.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

fn listener() -> std::io::Result<std::net::TcpListener> {
    let activated = std::env::var("LISTEN_FDS").as_deref() == Ok("1")
        && std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    let listener = if activated {
        inherited_listener()
    } else {
        let port = std::env::var("PORT").unwrap_or_else(|_| "8000".into());
        std::net::TcpListener::bind(format!("127.0.0.1:{port}"))?
    };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The listening socket psd passed as fd 3 (systemd's SD_LISTEN_FDS_START).
#[allow(unsafe_code)]
fn inherited_listener() -> std::net::TcpListener {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: LISTEN_FDS=1 with LISTEN_PID equal to our pid means fd 3 was
    // handed to this process as its listening socket, open and owned by
    // nobody else here; it is taken exactly once, at start-up.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    std::net::TcpListener::from(fd)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener()?)?;
    let count = Arc::new(AtomicU64::new(0));
    eprintln!("http-worker {} ready", std::process::id());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let count = count.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, count.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn answer(
    mut req: Request<Incoming>,
    count: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
    {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(io) = upgrade.await else { return };
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
            while let Some(Ok(message)) = ws.next().await {
                if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                    break;
                }
            }
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        response.headers_mut().insert(
            "sec-websocket-accept",
            HeaderValue::from_str(&key).expect("base64"),
        );
        return Ok(response);
    }
    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
    let body = format!("pid={} count={n}\n", std::process::id());
    Ok(Response::new(Full::new(Bytes::from(body))))
}
