//! A long-poll chat in the style of Continuity's `eg/chat-ajax-push.pl`.
//!
//! Sessions are keyed by cookie *and path*, so each browser holds three
//! independent sessions: the page (`/`), the push stream (`/pushstream`) and
//! the sender (`/send`). A push-stream request waits — its session task
//! simply awaits news — while the same browser's `/send` requests are served
//! by another session. Every push-stream session remembers, in a local
//! variable, which messages it has already delivered.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use psd::app::{html, text, App, Request, Session};
use tokio::sync::watch;

/// Messages kept, newest first (the original kept 16).
const KEEP: usize = 16;
/// A push-stream request is answered after this long even without news, so
/// that no proxy in between gives up on it.
const LONG_POLL: Duration = Duration::from_secs(25);

/// What all sessions share: the last messages and a counter of them.
struct Room {
    messages: Mutex<VecDeque<String>>,
    posted: watch::Sender<u64>,
}

impl Room {
    fn log(&self) -> String {
        let messages = self.messages.lock().expect("room lock");
        messages.iter().cloned().collect::<Vec<_>>().join("<br>")
    }
}

/// The chat application; mount it with `SessionKey cookie psd_sid path`.
pub fn app() -> App {
    let room = Arc::new(Room {
        messages: Mutex::new(VecDeque::new()),
        posted: watch::channel(0).0,
    });
    App::new(move |mut session| {
        let room = room.clone();
        async move {
            let Some(first) = session.next().await else {
                return;
            };
            match first.path() {
                "/pushstream" => push_stream(&room, &mut session, first).await,
                "/send" => sender(&room, &mut session, first).await,
                _ => page(&mut session, first).await,
            }
        }
    })
}

/// Waits for news, sends the whole log, waits for the next request.
async fn push_stream(room: &Room, session: &mut Session, mut request: Request) {
    let mut news = room.posted.subscribe();
    news.mark_unchanged();
    loop {
        let _ = tokio::time::timeout(LONG_POLL, news.changed()).await;
        news.mark_unchanged();
        request.respond(html(room.log()));
        match session.next().await {
            Some(next) => request = next,
            None => return,
        }
    }
}

async fn sender(room: &Room, session: &mut Session, mut request: Request) {
    loop {
        let name = request.param("username").unwrap_or("anonymous");
        if let Some(message) = request.param("message").filter(|m| !m.is_empty()) {
            let mut messages = room.messages.lock().expect("room lock");
            messages.push_front(format!("{}: {}", escape(name), escape(message)));
            messages.truncate(KEEP);
            drop(messages);
            room.posted.send_modify(|n| *n += 1);
        }
        request.respond(text("Got it!"));
        match session.next().await {
            Some(next) => request = next,
            None => return,
        }
    }
}

async fn page(session: &mut Session, mut request: Request) {
    loop {
        request.respond(html(PAGE));
        match session.next().await {
            Some(next) => request = next,
            None => return,
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const PAGE: &str = r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Chat!</title></head>
<body>
<form id="f">
  <input type="text" id="username" size="10" placeholder="name">
  <input type="text" id="message" size="50" placeholder="message">
  <input type="submit" value="Send">
</form>
<div id="log">-- no messages yet --</div>
<script>
async function poll() {
  for (;;) {
    try {
      const r = await fetch("pushstream", { credentials: "same-origin" });
      if (r.ok) document.getElementById("log").innerHTML = await r.text();
    } catch (e) { await new Promise(ok => setTimeout(ok, 1000)); }
  }
}
document.getElementById("f").onsubmit = async (e) => {
  e.preventDefault();
  const body = new URLSearchParams({
    username: document.getElementById("username").value,
    message: document.getElementById("message").value,
  });
  await fetch("send", { method: "POST", body, credentials: "same-origin" });
  document.getElementById("message").value = "";
};
poll();
</script>
</body></html>
"#;
