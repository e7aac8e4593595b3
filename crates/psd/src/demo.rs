//! The built-in demo: a port of Continuity's `eg/counter.pl`.
//!
//! Each browser (cookie) has its own count, kept in a local variable of its
//! session task. `++` and `--` change it; going below zero first asks "Do you
//! really want to GO NEGATIVE?" and keeps asking until Yes or No is chosen.
//! Each change is also written to the session's state, so the count
//! survives an idle timeout and a restart of psd: a resumed session reads
//! it back.

use std::path::PathBuf;

use crate::app::{html, App, Request, Session};
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

/// The counter application.
pub fn counter() -> App {
    App::new(|mut session: Session| async move {
        let state = session.state();
        let mut count: i64 = match session.resumed() {
            true => state.number("count").await.unwrap_or(0),
            false => 0,
        };
        let Some(mut request) = session.next().await else {
            return;
        };
        loop {
            let mut add = match request.param("option") {
                // A link `?option=++` arrives as two spaces once form-decoded.
                Some("++" | "  ") => 1,
                Some("--") => -1,
                _ => 0,
            };
            if count >= 0 && count + add < 0 {
                let Some((answer, choice)) = prompt(&mut session, request).await else {
                    return;
                };
                request = answer;
                if choice == "No" {
                    add = 0;
                }
            }
            count += add;
            if add != 0 {
                if let Err(e) = state.put("count", count.to_string()).await {
                    // The page still shows it; it is lost if psd stops.
                    tracing::warn!(session = %session.id(), "the demo could not keep its count: {e}");
                }
            }
            let answer = if count == 42 {
                "<h1>The Answer to Life, The Universe, and Everything</h1>\n"
            } else {
                ""
            };
            request.respond(html(page(&format!(
                "Count: {count}<br>\n<a href=\"?option=++\">++</a> &nbsp;&nbsp; \
                 <a href=\"?option=--\">--</a><br>\n{answer}"
            ))));
            request = match session.next().await {
                Some(next) => next,
                None => return,
            };
        }
    })
}

/// Asks until the user picks Yes or No; returns the request carrying the
/// answer, still to be answered, and the choice.
async fn prompt(session: &mut Session, mut request: Request) -> Option<(Request, &'static str)> {
    loop {
        request.respond(html(page(
            "Do you really want to GO NEGATIVE?<br>\n\
             <a href=\"?option=Yes\">Yes</a><br>\n<a href=\"?option=No\">No</a><br>\n",
        )));
        request = session.next().await?;
        match request.param("option") {
            Some("Yes") => return Some((request, "Yes")),
            Some("No") => return Some((request, "No")),
            _ => continue,
        }
    }
}

fn page(body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>psd counter</title></head>\n\
         <body>\n{body}</body></html>\n"
    )
}
