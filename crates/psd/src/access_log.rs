//! The access log: one line per request in Apache's Combined Log Format,
//! then the session id and the upstream time in seconds:
//!
//! ```text
//! 127.0.0.1 - - [22/Nov/2026:15:58:29 +0000] "GET /app/ HTTP/1.1" 200 123 "-" "curl/7.88.1" psd.AbC.XyZ 0.012
//! ```
//!
//! A line is written when the response body has been sent (so its size is
//! what was sent), by one task that owns the file; requests only hand it a
//! line. This module never looks inside a body.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use crate::body::Body;

/// Where access lines go.
#[derive(Clone)]
pub(crate) struct AccessLog {
    lines: mpsc::UnboundedSender<String>,
}

impl AccessLog {
    /// Opens the log (`None`: stderr) and starts its writer.
    pub fn open(path: Option<&Path>) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn Write + Send> = match path {
            Some(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => Box::new(std::io::stderr()),
        };
        let (lines, mut rx) = mpsc::unbounded_channel::<String>();
        tokio::task::spawn_blocking(move || {
            while let Some(line) = rx.blocking_recv() {
                let mut batch = line;
                while let Ok(more) = rx.try_recv() {
                    batch.push_str(&more);
                }
                if out
                    .write_all(batch.as_bytes())
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(AccessLog { lines })
    }
}

/// What is known of a request before it is answered.
pub(crate) struct Entry {
    request_line: String,
    referer: String,
    user_agent: String,
    time: SystemTime,
    /// Filled in while the request is handled.
    pub client: Option<std::net::IpAddr>,
    /// The session's handle, never its id.
    pub session: Option<crate::session::Handle>,
    pub upstream: Option<Duration>,
}

impl Entry {
    pub fn new<B>(request: &Request<B>) -> Entry {
        let target = request
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        Entry {
            request_line: format!(
                "{} {} {:?}",
                request.method(),
                escape(target),
                request.version()
            ),
            referer: header(request.headers(), "referer"),
            user_agent: header(request.headers(), "user-agent"),
            time: SystemTime::now(),
            client: None,
            session: None,
            upstream: None,
        }
    }

    /// Wraps the response so that its line is logged once the body is sent.
    pub fn finish(self, log: &AccessLog, response: Response<Body>) -> Response<Body> {
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let log = log.clone();
        let counted = crate::body::OnEnd::new(body, move |sent| {
            let _ = log.lines.send(self.line(status, sent));
        });
        Response::from_parts(parts, counted.boxed())
    }

    fn line(&self, status: u16, sent: u64) -> String {
        let bytes = if sent == 0 {
            "-".to_string()
        } else {
            sent.to_string()
        };
        let upstream = self
            .upstream
            .map_or("-".into(), |d| format!("{:.3}", d.as_secs_f64()));
        format!(
            "{} - - [{}] \"{}\" {status} {bytes} \"{}\" \"{}\" {} {upstream}\n",
            self.client.map_or("-".into(), |c| c.to_string()),
            clf_time(self.time),
            self.request_line,
            self.referer,
            self.user_agent,
            self.session.as_ref().map_or("-", |h| h.as_str()),
        )
    }
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| escape(&String::from_utf8_lossy(v.as_bytes())))
        .unwrap_or_else(|| "-".into())
}

/// Quotes and control characters escaped, as Apache does.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `22/Nov/2026:15:58:29 +0000` (UTC).
fn clf_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_common_log_format() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_362_176);
        assert_eq!(clf_time(t), "22/Nov/2026:15:42:56 +0000");
        assert_eq!(clf_time(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn lines_escape_quotes_and_controls() {
        let request = Request::builder()
            .uri("/a?q=%22x%22")
            .header("user-agent", "evil\"agent\t")
            .body(())
            .unwrap();
        let mut entry = Entry::new(&request);
        entry.client = Some("127.0.0.1".parse().unwrap());
        let handle = crate::session::Handle::of(&crate::session::AppKey::new(None, "/"), "k");
        entry.session = Some(handle);
        entry.upstream = Some(Duration::from_millis(12));
        let line = entry.line(200, 42);
        assert!(
            line.contains(
                &format!("\"GET /a?q=%22x%22 HTTP/1.1\" 200 42 \"-\" \"evil\\\"agent\\x09\" {handle} 0.012\n")
            ),
            "{line}"
        );
    }
}
