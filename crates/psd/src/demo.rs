//! The built-in demo: a port of Continuity's `eg/counter.pl`.
//!
//! Each browser (cookie) has its own count, kept in a local variable of its
//! session task. `++` and `--` change it; going below zero first asks "Do you
//! really want to GO NEGATIVE?" and keeps asking until Yes or No is chosen.
//! Each change is also written to the session's state, so the count
//! survives an idle timeout and a restart of psd: a resumed session reads
//! it back. An action is answered with a redirect to the page (a reload
//! shows the count, it does not repeat the click), and a read-only viewer
//! (`/.psd/share`) sees the count but cannot change it. The page says what
//! psd is doing for this visitor; it is one self-contained HTML page.

use std::path::PathBuf;
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::app::{html, Access, App, Request, Session, State};
use crate::config::{Config, Listen, LocationConfig};

/// What `psd serve` runs without a configuration file.
pub fn config() -> Config {
    Config {
        listen: vec![Listen {
            addr: Config::DEFAULT_LISTEN
                .parse()
                .expect("valid default address"),
            https: false,
            at: None,
        }],
        data_dir: PathBuf::from("psd-data"),
        locations: vec![LocationConfig::in_process("/", counter())],
        ..Config::default()
    }
}

/// What one session's page shows besides the count.
struct Visit {
    /// When the session began (kept in its state once it has a count).
    since: u64,
    /// Whether `since` is in the state already.
    since_kept: bool,
    resumed: bool,
    requests: u64,
}

/// The counter application.
pub fn counter() -> App {
    App::new(|mut session: Session| async move {
        let state = session.state();
        let resumed = session.resumed();
        let (mut count, since) = match resumed {
            true => (
                state.number("count").await.unwrap_or(0),
                state.number("since").await.map_or(now(), |s| s as u64),
            ),
            false => (0, now()),
        };
        let mut visit = Visit {
            since,
            since_kept: resumed,
            resumed,
            requests: 0,
        };
        while let Some(mut request) = session.next().await {
            visit.requests += 1;
            let add = match request.param("option") {
                // A link `?option=++` arrives as two spaces once form-decoded.
                Some("++" | "  ") => 1,
                Some("--") => -1,
                // A stray Yes/No (a reload of an answered prompt) changes nothing.
                Some(_) => 0,
                None => {
                    let shown = page(count, &visit, request.access());
                    request.respond(html(shown));
                    continue;
                }
            };
            if request.access() == Access::ReadOnly {
                request.respond(read_only(count, &visit));
                continue;
            }
            let mut add = add;
            if count >= 0 && count + add < 0 {
                let Some((answer, choice)) = prompt(&mut session, request, &mut visit).await else {
                    return;
                };
                request = answer;
                if choice == "No" {
                    add = 0;
                }
            }
            if add != 0 {
                count += add;
                keep(&state, count, &mut visit).await;
            }
            let back = back_to_page(&request);
            request.respond(back);
        }
    })
}

/// Writes the count (and, the first time, when the session began).
async fn keep(state: &State, count: i64, visit: &mut Visit) {
    let mut result = state.put("count", count.to_string()).await.map(drop);
    if result.is_ok() && !visit.since_kept {
        result = state.put("since", visit.since.to_string()).await.map(drop);
        visit.since_kept = result.is_ok();
    }
    if let Err(e) = result {
        // The page still shows it; it is lost if psd stops.
        tracing::warn!("the demo could not keep its count: {e}");
    }
}

/// Asks until the owner picks Yes or No; returns the request carrying the
/// answer, still to be answered, and the choice. Viewers meanwhile see the
/// count.
async fn prompt(
    session: &mut Session,
    mut request: Request,
    visit: &mut Visit,
) -> Option<(Request, &'static str)> {
    loop {
        request.respond(html(document(
            "<section class=\"card ask\">\n<h1>Do you really want to GO NEGATIVE?</h1>\n\
             <p class=\"buttons\"><a href=\"?option=Yes\" class=\"button\">Yes</a> \
             <a href=\"?option=No\" class=\"button quiet\">No</a></p>\n</section>\n",
        )));
        loop {
            request = session.next().await?;
            visit.requests += 1;
            if request.access() == Access::ReadWrite {
                break;
            }
            request.respond(html(document(
                "<section class=\"card\"><p>The owner of this session is being asked \
                 something. Reload in a moment.</p></section>\n",
            )));
        }
        match request.param("option") {
            Some("Yes") => return Some((request, "Yes")),
            Some("No") => return Some((request, "No")),
            _ => continue,
        }
    }
}

/// `303 See Other` to the page itself: a reload shows, it does not act.
fn back_to_page(request: &Request) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = StatusCode::SEE_OTHER;
    let to = HeaderValue::from_str(request.path()).unwrap_or(HeaderValue::from_static("/"));
    response.headers_mut().insert(header::LOCATION, to);
    response
}

fn read_only(count: i64, visit: &Visit) -> Response<Bytes> {
    let mut response = html(page(count, visit, Access::ReadOnly));
    *response.status_mut() = StatusCode::FORBIDDEN;
    response
}

/// Seconds since the Unix epoch.
fn now() -> u64 {
    crate::store::unix_ms(SystemTime::now()) / 1000
}

/// `2026-11-23 18:50 UTC`.
fn utc(seconds: u64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(seconds as i64) {
        Ok(t) => format!(
            "{}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => "?".into(),
    }
}

fn page(count: i64, visit: &Visit, access: Access) -> String {
    let answer = if count == 42 {
        "<p class=\"answer\">The Answer to Life, The Universe, and Everything</p>\n"
    } else {
        ""
    };
    let (buttons, share) = match access {
        Access::ReadWrite => (
            "<p class=\"buttons\"><a href=\"?option=--\" class=\"button quiet\">--</a> \
             <a href=\"?option=++\" class=\"button\">++</a></p>\n",
            "<a href=\".psd/share\">a read-only link to it</a> (viewers see the count, \
             they cannot change it)",
        ),
        Access::ReadOnly => (
            "<p class=\"note\">You are watching this session through a read-only link: \
             the count is its owner's to change.</p>\n",
            "read-only, so it cannot be shared onwards from here",
        ),
    };
    let resumed = match visit.resumed {
        true => {
            "yes: this session came back with its count after its task had ended (idle \
                 timeout, or a restart of psd)"
        }
        false => "not yet: this is the session's first run",
    };
    document(&format!(
        "<section class=\"card\">\n<p class=\"count\">Count: {count}</p>\n{answer}{buttons}</section>\n\
         <section class=\"about\">\n<h2>What psd is doing for you</h2>\n<dl>\n\
         <dt>Your session</dt><dd>an async task of its own in this psd, since {since}; \
         {requests} requests in this run. Your browser holds its id in a cookie that psd \
         signed: it cannot be guessed or chosen.</dd>\n\
         <dt>Sharing</dt><dd>{share}.</dd>\n\
         <dt>If psd restarts</dt><dd>the count stays: each change is written to psd's state \
         store before this page is shown. Resumed: {resumed}.</dd>\n</dl>\n</section>\n",
        since = utc(visit.since),
        requests = visit.requests,
    ))
}

fn document(body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>psd counter</title>\n<style>{STYLE}</style></head>\n<body>\n\
         <header><strong>psd</strong> <span>persistent session daemon · demo</span></header>\n\
         <main>\n{body}</main>\n\
         <footer>A port of Continuity's <code>eg/counter.pl</code>: every browser its own \
         count, kept by its own session.</footer>\n</body></html>\n"
    )
}

const STYLE: &str = "
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d2433;background:#f3f5f9}
header{padding:14px 24px;background:#1d2433;color:#fff;display:flex;gap:12px;align-items:baseline}
header strong{font-size:20px;letter-spacing:.5px}
header span{color:#b9c2d6;font-size:14px}
main{max-width:680px;margin:32px auto;padding:0 16px}
.card{background:#fff;border-radius:14px;box-shadow:0 1px 3px rgba(0,0,0,.08),0 8px 24px rgba(29,36,51,.06);padding:28px;text-align:center}
.count{margin:4px 0 20px;font-size:56px;font-weight:700;line-height:1.1;font-variant-numeric:tabular-nums}
.answer{color:#8a4b00;font-weight:600}
.buttons{display:flex;gap:12px;justify-content:center;margin:0}
.button{display:inline-block;min-width:96px;padding:12px 20px;border-radius:10px;background:#2f6fed;color:#fff;font-weight:700;font-size:20px;text-decoration:none}
.button.quiet{background:#e7ebf3;color:#1d2433}
.button:focus,.button:hover{outline:3px solid #9bb8f5}
.ask h1{font-size:24px;margin:0 0 20px}
.note{color:#5b6478;margin:0}
.about{margin-top:24px;padding:20px 24px;background:#fff;border-radius:14px;border:1px solid #e3e7ef}
.about h2{font-size:16px;margin:0 0 8px}
dl{margin:0}
dt{font-weight:600;margin-top:10px}
dd{margin:2px 0 0;color:#3d465a}
a{color:#2f6fed}
footer{max-width:680px;margin:0 auto 32px;padding:0 16px;color:#5b6478;font-size:13px}
@media (max-width:480px){.count{font-size:44px}.card{padding:20px}main{margin:16px auto}}
";
