//! `cargo run -p psd --example chat [ADDR]`, then open http://127.0.0.1:8081/
//! in two browsers. psd as a library: an in-process application with
//! cookie + path sessions.

mod app;

use std::sync::Arc;
use std::time::Duration;

use psd::config::{Config, LocationConfig};
use psd::mapper::SessionKey;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt::init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".into());
    let mut chat = LocationConfig::in_process("/", app::app());
    chat.mapper = Arc::new(
        SessionKey::parse(&["cookie".into(), "psd_sid".into(), "path".into()])
            .map_err(anyhow::Error::msg)?,
    );
    chat.request_timeout = Duration::from_secs(60);
    let config = Config {
        data_dir: "psd-data".into(),
        locations: vec![chat],
        ..Config::default()
    };
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("chat on http://{}/", listener.local_addr()?);
    psd::run(vec![listener], config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
