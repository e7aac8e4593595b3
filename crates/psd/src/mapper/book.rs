//! Which ids are live, and the read-only ids handed out for them.
//!
//! An id is live while at least one session uses it (with `path` or `ip`
//! parts, one id can name several sessions). A read-only id is issued for a
//! live read-write id on request, signed with the read-only key, and is
//! forgotten when its read-write id stops being live: read-only ids die with
//! their sessions and can never be turned into the read-write id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Access, Presented, Signer};

/// The live ids of one daemon; the registry keeps it current.
pub struct IdBook {
    signer: Signer,
    read_only: Signer,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Sessions per live read-write id.
    uses: HashMap<Arc<str>, usize>,
    /// Read-only id → read-write id, and back.
    rw_of: HashMap<Arc<str>, Arc<str>>,
    ro_of: HashMap<Arc<str>, Arc<str>>,
}

impl IdBook {
    pub fn new(signer: Signer) -> IdBook {
        IdBook {
            read_only: signer.read_only(),
            signer,
            state: Mutex::default(),
        }
    }

    pub fn issue(&self, app: &str) -> Arc<str> {
        self.signer.issue(app).into()
    }

    /// The session `token` names in application `app`, if it is one of
    /// app's ids: a read-write id, or a live read-only id.
    pub fn verify(&self, app: &str, token: &str) -> Option<Presented> {
        if self.signer.verify(app, token) {
            let id: Arc<str> = token.into();
            return Some(Presented {
                token: id.clone(),
                id,
                access: Access::ReadWrite,
            });
        }
        if self.read_only.verify(app, token) {
            let state = self.state.lock().expect("id book lock");
            let (token, id) = state.rw_of.get_key_value(token)?;
            return Some(Presented {
                id: id.clone(),
                token: token.clone(),
                access: Access::ReadOnly,
            });
        }
        None
    }

    pub fn in_use(&self, id: &str) -> bool {
        self.state
            .lock()
            .expect("id book lock")
            .uses
            .contains_key(id)
    }

    /// The read-only id for a live read-write id of `app` (the same one
    /// each time).
    pub fn share(&self, app: &str, id: &str) -> Option<Arc<str>> {
        let mut state = self.state.lock().expect("id book lock");
        let (id, _) = state.uses.get_key_value(id)?;
        let id = id.clone();
        if let Some(ro) = state.ro_of.get(&id) {
            return Some(ro.clone());
        }
        let ro: Arc<str> = self.read_only.issue(app).into();
        state.ro_of.insert(id.clone(), ro.clone());
        state.rw_of.insert(ro.clone(), id);
        Some(ro)
    }

    pub(crate) fn acquire(&self, id: &Arc<str>) {
        *self
            .state
            .lock()
            .expect("id book lock")
            .uses
            .entry(id.clone())
            .or_default() += 1;
    }

    pub(crate) fn release(&self, id: &str) {
        let mut state = self.state.lock().expect("id book lock");
        let Some(n) = state.uses.get_mut(id) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            state.uses.remove(id);
            if let Some(ro) = state.ro_of.remove(id) {
                state.rw_of.remove(&ro);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_ids_live_and_die_with_their_session() {
        let book = IdBook::new(Signer::new("n", b"0123456789abcdef0123456789abcdef"));
        let id = book.issue("a");
        assert!(
            book.share("a", &id).is_none(),
            "only live ids can be shared"
        );
        book.acquire(&id);
        book.acquire(&id);
        let ro = book.share("a", &id).unwrap();
        assert_eq!(
            book.share("a", &id).unwrap(),
            ro,
            "one read-only id per session"
        );
        let seen = book.verify("a", &ro).unwrap();
        assert_eq!(
            (seen.access, &*seen.id, &*seen.token),
            (Access::ReadOnly, &*id, &*ro)
        );
        assert_eq!(book.verify("a", &id).unwrap().access, Access::ReadWrite);
        book.release(&id);
        assert!(
            book.verify("a", &ro).is_some(),
            "still one session on the id"
        );
        book.release(&id);
        assert!(
            book.verify("a", &ro).is_none(),
            "gone with the last session"
        );
        assert!(!book.in_use(&id));
    }
}
