//! An allocation census of in-process sessions: which heap blocks each new
//! session leaves behind, by size, counted by a global allocator.
//!
//! ```sh
//! cargo run --release -p psd --example census -- 127.0.0.1:8091 100000 &
//! target/release/http-load http://127.0.0.1:8091/ 2000 8 new     # warm up
//! kill -USR1 %1                                                  # first count
//! target/release/http-load http://127.0.0.1:8091/ 100000 16 new
//! kill -USR1 %1                                                  # report, exit
//! ```
//!
//! The application is the smallest Continuity-style counter, so what is
//! counted is psd's own cost of a session.
#![allow(unsafe_code)] // a counting global allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use psd::app::{text, App};
use psd::config::{Config, LocationConfig};

/// Live blocks and bytes by size class: the requested size rounded up to a
/// multiple of 16, up to 4 KiB; the last class holds everything larger.
const CLASSES: usize = 257;
static BLOCKS: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];
static BYTES: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];

fn count(size: usize, sign: i64) {
    let class = size.div_ceil(16).min(CLASSES - 1);
    BLOCKS[class].fetch_add(sign, Ordering::Relaxed);
    BYTES[class].fetch_add(sign * size as i64, Ordering::Relaxed);
}

struct Counting;

// SAFETY: every call is passed on unchanged to the system allocator; the
// counting touches only atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        // SAFETY: the caller's contract for `alloc` is forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout.size(), -1);
        // SAFETY: the caller's contract for `dealloc` is forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout.size(), -1);
        count(new_size, 1);
        // SAFETY: the caller's contract for `realloc` is forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn snapshot() -> Vec<(i64, i64)> {
    (0..CLASSES)
        .map(|i| {
            (
                BLOCKS[i].load(Ordering::Relaxed),
                BYTES[i].load(Ordering::Relaxed),
            )
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8091".into());
    let sessions: i64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let app = App::new(|mut session| async move {
        let mut count = 0u64;
        while let Some(request) = session.next().await {
            count += 1;
            request.respond(text(format!("count={count}\n")));
        }
    });
    let mut location = LocationConfig::in_process("/", app);
    location.max_sessions_per_client = 10_000_000;
    location.session_timeout = Duration::from_secs(3600);
    let data = std::env::temp_dir().join(format!("psd-census-{}", std::process::id()));
    let config = Config {
        data_dir: data.clone(),
        max_sessions: 10_000_000,
        locations: vec![location],
        ..Config::default()
    };
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("census listening on http://{}", listener.local_addr()?);
    let result = psd::run(vec![listener], config, async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = signal(SignalKind::user_defined1()).expect("signal");
        usr1.recv().await;
        let before = snapshot();
        eprintln!("counted; make {sessions} sessions, then send SIGUSR1 again");
        usr1.recv().await;
        let after = snapshot();
        let mut total = 0;
        for (class, (a, b)) in after.iter().zip(&before).enumerate() {
            let (blocks, bytes) = (a.0 - b.0, a.1 - b.1);
            total += bytes;
            if blocks.abs() * 20 > sessions {
                let upto = if class == CLASSES - 1 {
                    "larger".to_string()
                } else {
                    format!("≤ {} B", class * 16)
                };
                eprintln!(
                    "{upto:>8}: {:+.2} blocks, {:+.1} bytes per session",
                    blocks as f64 / sessions as f64,
                    bytes as f64 / sessions as f64
                );
            }
        }
        eprintln!(
            "total: {:.1} bytes requested per session",
            total as f64 / sessions as f64
        );
    })
    .await;
    let _ = std::fs::remove_dir_all(data);
    result
}
