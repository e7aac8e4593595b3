//! systemd's service notifications (`sd_notify(3)`), for `Type=notify` and
//! `Type=notify-reload` units: `READY=1` once psd serves, `RELOADING=1` (with
//! `MONOTONIC_USEC`) while a SIGHUP reload runs and `READY=1` after it,
//! `STOPPING=1` when it begins to shut down, and `WATCHDOG=1` at half of
//! `WATCHDOG_USEC` when the unit asks for a watchdog. Without
//! `NOTIFY_SOCKET` (not under systemd) every call does nothing.
//!
//! The protocol is one datagram to the Unix socket `NOTIFY_SOCKET` names (a
//! path, or `@name` in the abstract namespace); no library needed.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (newline-separated `KEY=VALUE` lines) to systemd, if psd
/// runs under it. Failures are logged once each and otherwise ignored:
/// notifications must never stop psd from serving.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&socket, state) {
        tracing::warn!("sd_notify {state:?} to {}: {e}", socket.to_string_lossy());
    }
}

fn send(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    let datagram = UnixDatagram::unbound()?;
    let bytes = socket.as_encoded_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            datagram.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            datagram.send_to(state.as_bytes(), socket)?;
        }
    }
    Ok(())
}

/// `READY=1`, with psd's pid.
pub fn ready() {
    notify(&format!("READY=1\nMAINPID={}", std::process::id()));
}

/// `RELOADING=1`, stamped with `CLOCK_MONOTONIC` as `Type=notify-reload`
/// requires.
pub fn reloading() {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| Duration::from(t).as_micros())
        .unwrap_or(0);
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
}

pub fn stopping() {
    notify("STOPPING=1");
}

/// How often to tell the watchdog psd is alive: half of `WATCHDOG_USEC`,
/// when it is set for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let pid = std::env::var("WATCHDOG_PID").ok();
    if pid.is_some_and(|p| p != std::process::id().to_string()) {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
