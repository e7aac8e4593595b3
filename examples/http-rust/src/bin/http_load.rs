//! HTTP load with exact counts: N requests over C keep-alive connections,
//! each request either without a cookie (so each one starts a new psd
//! session) or with its connection's own session cookie (warm). Prints
//! requests/s, p50/p99 latency and the number of non-2xx answers.
//!
//!     http-load URL N C [new|warm]

use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url: hyper::Uri = args
        .get(1)
        .expect("usage: http-load URL N C [new|warm]")
        .parse()
        .expect("a URL");
    let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let c: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(4);
    let warm = args.get(4).map(String::as_str) == Some("warm");
    let authority = url.authority().expect("host:port").to_string();
    let started = Instant::now();
    let tasks: Vec<_> = (0..c)
        .map(|i| {
            let share = n / c + usize::from(i < n % c);
            let (url, authority) = (url.clone(), authority.clone());
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(&authority)
                    .await
                    .expect("connect");
                let _ = stream.set_nodelay(true);
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                        .await
                        .expect("handshake");
                tokio::spawn(conn);
                let mut cookie: Option<String> = None;
                let mut times = Vec::with_capacity(share);
                let mut bad = 0usize;
                for _ in 0..share {
                    let mut request = Request::get(url.clone()).header("host", &authority);
                    if let (true, Some(cookie)) = (warm, &cookie) {
                        request = request.header("cookie", cookie);
                    }
                    let t = Instant::now();
                    let response = sender
                        .send_request(request.body(Empty::new()).unwrap())
                        .await
                        .expect("request");
                    if warm && cookie.is_none() {
                        cookie = response
                            .headers()
                            .get("set-cookie")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.split(';').next())
                            .map(str::to_string);
                    }
                    if !response.status().is_success() {
                        bad += 1;
                    }
                    let _ = response.into_body().collect().await;
                    times.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                (times, bad)
            })
        })
        .collect();
    let mut times = Vec::with_capacity(n);
    let mut bad = 0;
    for task in tasks {
        let (t, b) = task.await.expect("connection task");
        times.extend(t);
        bad += b;
    }
    let total = started.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "n={n} per_s={:.0} p50_ms={:.3} p99_ms={:.3} non2xx={bad}",
        n as f64 / total,
        pct(0.5),
        pct(0.99)
    );
}
