//! Which ids are live, and the read-only ids handed out for them.
//!
//! An id is live while at least one session uses it (with `path` or `ip`
//! parts, one id can name several sessions). A read-only id is handed out
//! for a live read-write id on request; it is derived from the read-write
//! id ([`ReadOnlyIds`]), so it needs no table here, survives a restart, and
//! names what its read-write id names: once the session has ended,
//! nothing. It can never be turned into the read-write id by a client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::id::ReadOnlyIds;
use super::{Access, Presented, Signer};

/// The live ids of one daemon; the registry keeps it current.
pub struct IdBook {
    signer: Signer,
    read_only: ReadOnlyIds,
    /// Sessions per live read-write id.
    uses: Mutex<HashMap<Arc<str>, usize>>,
}

impl IdBook {
    pub fn new(signer: Signer) -> IdBook {
        IdBook {
            read_only: ReadOnlyIds::new(&signer),
            signer,
            uses: Mutex::default(),
        }
    }

    pub fn issue(&self, app: &str) -> Arc<str> {
        self.signer.issue(app).into()
    }

    /// The session `token` names in application `app`, if it is one of
    /// app's ids: a read-write id, or a read-only id (which stands for its
    /// read-write id, live or not).
    pub fn verify(&self, app: &str, token: &str) -> Option<Presented> {
        if self.signer.verify(app, token) {
            let id: Arc<str> = token.into();
            return Some(Presented {
                token: id.clone(),
                id,
                access: Access::ReadWrite,
            });
        }
        let id = self.read_only.read_write(app, token)?;
        Some(Presented {
            id: id.into(),
            token: token.into(),
            access: Access::ReadOnly,
        })
    }

    pub fn in_use(&self, id: &str) -> bool {
        self.uses.lock().expect("id book lock").contains_key(id)
    }

    /// The read-only id for a live read-write id of `app` (the same one
    /// each time).
    pub fn share(&self, app: &str, id: &str) -> Option<Arc<str>> {
        if !self.in_use(id) {
            return None;
        }
        self.read_only.of(app, id).map(Arc::from)
    }

    pub(crate) fn acquire(&self, id: &Arc<str>) {
        *self
            .uses
            .lock()
            .expect("id book lock")
            .entry(id.clone())
            .or_default() += 1;
    }

    pub(crate) fn release(&self, id: &str) {
        let mut uses = self.uses.lock().expect("id book lock");
        let Some(n) = uses.get_mut(id) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            uses.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Signer {
        Signer::new("n", b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn read_only_ids_are_shared_for_live_ids_and_stand_for_them() {
        let book = IdBook::new(secret());
        let id = book.issue("a");
        assert!(
            book.share("a", &id).is_none(),
            "only live ids can be shared"
        );
        book.acquire(&id);
        let ro = book.share("a", &id).unwrap();
        assert_eq!(
            book.share("a", &id).unwrap(),
            ro,
            "one read-only id per session"
        );
        assert_ne!(ro, id);
        let seen = book.verify("a", &ro).unwrap();
        assert_eq!(
            (seen.access, &*seen.id, &*seen.token),
            (Access::ReadOnly, &*id, &*ro)
        );
        assert_eq!(book.verify("a", &id).unwrap().access, Access::ReadWrite);
        assert!(book.verify("b", &ro).is_none(), "bound to its application");
        book.release(&id);
        assert!(!book.in_use(&id));

        // After a restart: a new book with the same secret, nothing live.
        let again = IdBook::new(secret());
        assert_eq!(&*again.verify("a", &ro).unwrap().id, &*id);
        let other = IdBook::new(Signer::new("n", b"another secret, another server!!"));
        assert!(other.verify("a", &ro).is_none(), "foreign secret");
    }

    #[test]
    fn a_read_only_id_never_reveals_or_becomes_its_read_write_id() {
        let book = IdBook::new(secret());
        let id = book.issue("a");
        book.acquire(&id);
        let ro = book.share("a", &id).unwrap();
        let (id_node, id_rest) = id.split_once('.').unwrap();
        let (ro_node, ro_rest) = ro.split_once('.').unwrap();
        assert_eq!(ro_node, id_node);
        let id_random = id_rest.split('.').next().unwrap();
        assert!(!ro_rest.contains(id_random), "the random part is sealed");
        // Each part of the one swapped into the other verifies as neither.
        let (ro_body, ro_tag) = ro.rsplit_once('.').unwrap();
        let (id_body, id_tag) = id.rsplit_once('.').unwrap();
        for forged in [format!("{ro_body}.{id_tag}"), format!("{id_body}.{ro_tag}")] {
            assert!(book.verify("a", &forged).is_none(), "{forged}");
        }
    }
}
