//! A counter as an in-process application with limits high enough for
//! scale benchmarks: `scale ADDR [SESSIONS]` serves until SIGTERM.
//! `bench/run.py` drives it with a million new sessions and reads psd's RSS.

use std::time::Duration;

use psd::app::{text, App};
use psd::config::{Config, LocationConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    let sessions: usize = std::env::args()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000_000);
    // The smallest Continuity-style counter, so that what is measured is
    // psd's own cost of a session. (The demo counter's session future holds
    // the last request across awaits: about 1.1 KB of its own.)
    let app = App::new(|mut session| async move {
        let mut count = 0u64;
        while let Some(request) = session.next().await {
            count += 1;
            request.respond(text(format!("count={count}\n")));
        }
    });
    let mut counter = LocationConfig::in_process("/", app);
    counter.max_sessions_per_client = sessions;
    counter.session_timeout = Duration::from_secs(3600);
    let data = std::env::temp_dir().join(format!("psd-scale-{}", std::process::id()));
    let config = Config {
        data_dir: data.clone(),
        max_sessions: sessions,
        locations: vec![counter],
        ..Config::default()
    };
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("scale listening on http://{}", listener.local_addr()?);
    let result = psd::run(vec![listener], config, async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal");
        term.recv().await;
    })
    .await;
    let _ = std::fs::remove_dir_all(data);
    result
}
