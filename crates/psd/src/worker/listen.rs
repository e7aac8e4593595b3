//! How an `http` worker comes to listen (`WorkerListen`), and how psd knows
//! it is ready: not when a socket merely exists, but when the program takes
//! connections off it (and, with `WorkerReady PATH`, answers `GET PATH`
//! below 500).
//!
//! With `inherit`, psd made the listening socket itself, so the kernel
//! queues a connection to it whether or not the program ever accepts one
//! (a program that binds a port of its own instead, say). The probe
//! therefore connects and then watches the socket's accept queue
//! (`TCP_INFO` on a listening socket gives its length) until the program
//! has taken the probe off it. With `port` and `unix`, only the program
//! listens, so a connection that succeeds is the proof.

// One getsockopt(2) call with a struct the kernel fills in.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::sleep;

use super::upstream::Address;

/// How often a probe tries again.
/// The longest wait between looks at a starting worker (`WorkerReady`'s
/// requests: five times it).
const RETRY: Duration = Duration::from_millis(10);
/// The first wait, doubling up to [`RETRY`]: a program ready in a
/// millisecond is not taken for ready ten milliseconds later (its new
/// session waits for it: 12.5 ms p50 with a Rust http worker at a steady
/// 10 ms, 3.6–5.8 ms now), and one that takes seconds is not looked at more
/// often than before.
const FIRST_RETRY: Duration = Duration::from_millis(1);

/// The waits between looks: `FIRST_RETRY`, doubling up to `longest`.
struct Backoff {
    next: Duration,
    longest: Duration,
}

impl Backoff {
    fn new(longest: Duration) -> Backoff {
        Backoff {
            next: FIRST_RETRY.min(longest),
            longest,
        }
    }

    async fn wait(&mut self) {
        sleep(self.next).await;
        self.next = (self.next * 2).min(self.longest);
    }
}

/// Connections waiting in `listener`'s accept queue (Linux: `tcpi_unacked`
/// of a socket in the LISTEN state).
fn accept_queue(listener: &OwnedFd) -> io::Result<u32> {
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a valid, writable tcp_info of `len` bytes, and the
    // descriptor is open for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_unacked)
}

/// A free port on 127.0.0.1 for a program to bind (`WorkerListen port`).
pub(crate) fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Resolves once the worker takes connections at `address`; `inherited` is
/// psd's own copy of the listening socket it handed the worker. Errors
/// name what was last seen.
pub(crate) async fn accepting(
    address: &Address,
    inherited: Option<&OwnedFd>,
) -> Result<(), String> {
    match (address, inherited) {
        (Address::Tcp(addr), Some(listener)) => {
            let _probe = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connecting to its socket: {e}"))?;
            // The probe sits in the queue until the program accepts it.
            let mut backoff = Backoff::new(RETRY);
            loop {
                match accept_queue(listener) {
                    Ok(0) => return Ok(()),
                    Ok(_) => backoff.wait().await,
                    // Not Linux, or not a TCP socket: a connection is all
                    // that can be known.
                    Err(_) => return Ok(()),
                }
            }
        }
        // Only the program listens there: a connection is the proof.
        _ => {
            let mut backoff = Backoff::new(RETRY);
            loop {
                if address.connect().await.is_ok() {
                    return Ok(());
                }
                backoff.wait().await;
            }
        }
    }
}

/// Resolves once `GET path` at `address` answers below 500
/// (`WorkerReady`); the caller's `WorkerStartTimeout` bounds it.
pub(crate) async fn answering(address: &Address, path: &str) -> Result<(), String> {
    let mut backoff = Backoff::new(RETRY * 5);
    loop {
        match get(address, path).await {
            Ok(status) if status.as_u16() < 500 => return Ok(()),
            Ok(status) => tracing::debug!("WorkerReady: GET {path} answered {status}"),
            Err(e) => tracing::debug!("WorkerReady: GET {path}: {e}"),
        }
        backoff.wait().await;
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One `GET path` on a fresh connection: the status.
async fn get(address: &Address, path: &str) -> Result<StatusCode, BoxError> {
    let request = Request::get(path)
        .header(http::header::HOST, address.host())
        .header(http::header::USER_AGENT, "psd (WorkerReady)")
        .body(Empty::<bytes::Bytes>::new())?;
    let stream = address.connect().await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender.send_request(request).await?.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn looks_at_a_starting_worker_come_soon_then_spread_out() {
        let mut backoff = Backoff::new(RETRY);
        let mut waits = vec![];
        for _ in 0..6 {
            let before = tokio::time::Instant::now();
            backoff.wait().await;
            waits.push(before.elapsed().as_millis());
        }
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
    }
}
