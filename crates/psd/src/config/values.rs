//! Values of directives: durations, sizes, addresses, names.

use std::net::SocketAddr;
use std::time::Duration;

pub(super) fn one(args: &[String]) -> Result<&str, String> {
    match args {
        [value] => Ok(value),
        [] => Err("missing value".into()),
        _ => Err(format!("expected one value, got {}", args.len())),
    }
}

pub(super) fn positive(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("'{value}' is not a positive whole number")),
    }
}

/// `30s`, `15m`, `2h`, `1d`, `250ms`, or a bare number of seconds.
pub fn duration(value: &str) -> Result<Duration, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let bad = || format!("'{value}' is not a duration (use 30s, 15m, 2h, 1d or seconds)");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit.to_ascii_lowercase().as_str() {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    n.checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(bad)
}

/// `512`, `64K`, `8M`, `1G` (powers of 1024).
/// `on` or `off`, in any case.
pub fn on_off(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("'{other}': expected on or off")),
    }
}

pub fn size(value: &str) -> Result<u64, String> {
    let bad = || format!("'{value}' is not a size (use 512, 64K, 8M or 1G)");
    let (number, shift) = match value.as_bytes().last().map(u8::to_ascii_uppercase) {
        Some(b'K') => (&value[..value.len() - 1], 10),
        Some(b'M') => (&value[..value.len() - 1], 20),
        Some(b'G') => (&value[..value.len() - 1], 30),
        _ => (value, 0),
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

pub(super) fn env_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!("'{name}' is not a valid environment variable name"))
    }
}

/// `ADDR:PORT`, `[V6]:PORT`, or Apache's bare `PORT` (every address).
pub(super) fn listen_addr(value: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    value
        .parse()
        .map_err(|_| format!("'{value}' is not an ADDR:PORT or PORT (use 0.0.0.0:PORT or [::]:PORT for every address)"))
}
