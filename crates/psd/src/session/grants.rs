//! Capabilities for the state API: each running worker gets an unguessable
//! token, in `PSD_STATE_URL` and `PSD_SHARED_URL`, that names its session's
//! space and its application's, and that dies with the worker.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use crate::store::Space;

/// What a token lets its holder reach.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    /// The session's own values; `None` for a spare worker that no
    /// session has taken yet.
    pub session: Option<Space>,
    /// The application's values, shared by all its sessions.
    pub shared: Space,
    /// `MaxSessionState`: bytes a space may hold.
    pub limit: u64,
}

#[derive(Default)]
pub(crate) struct Grants {
    /// The state API's base URL, `http://127.0.0.1:PORT`, once it listens.
    base: OnceLock<String>,
    live: Mutex<HashMap<String, Grant>>,
}

/// The URLs a worker is given, and the token they carry.
pub(crate) struct Urls {
    pub token: String,
    pub state: String,
    pub shared: String,
}

impl Grants {
    /// Sets where the state API listens; before, workers get no URLs.
    pub fn listening_at(&self, base: String) {
        let _ = self.base.set(base);
    }

    /// A new token for `grant`, with its URLs; `None` without a listener.
    pub fn mint(&self, grant: Grant) -> Option<Urls> {
        let base = self.base.get()?;
        let token = format!(
            "{}{}",
            crate::worker::process::random_hex(),
            crate::worker::process::random_hex()
        );
        let urls = Urls {
            state: format!("{base}/{token}/state/"),
            shared: format!("{base}/{token}/shared/"),
            token: token.clone(),
        };
        self.live.lock().expect("grants lock").insert(token, grant);
        Some(urls)
    }

    /// The grant a token carries while its worker lives.
    pub fn get(&self, token: &str) -> Option<Grant> {
        self.live.lock().expect("grants lock").get(token).cloned()
    }

    /// Gives a spare worker's token its session.
    pub fn bind(&self, token: &str, session: Space) {
        if let Some(grant) = self.live.lock().expect("grants lock").get_mut(token) {
            grant.session = Some(session);
        }
    }

    pub fn revoke(&self, token: &str) {
        self.live.lock().expect("grants lock").remove(token);
    }
}
