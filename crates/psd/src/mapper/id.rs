//! The ids that name sessions: issuing, verifying, and the secret.
//!
//! A session id is `NODE.RANDOM.MAC`: the node name, 128 bits from the OS
//! CSPRNG (base64url), and HMAC-SHA256 over both with the session secret,
//! truncated to 128 bits. The MAC also covers the application (the
//! `<Location>`'s identity) that issued the id, so an id is valid only
//! there: presented to another application it is unknown. Only psd issues ids; a client can present one but
//! never choose one. This module owns the secret, issuing, verifying (in
//! constant time). Read-only ids have the same shape but are signed with a
//! key derived from the secret for that purpose alone, so neither kind of id
//! verifies as the other; [`ReadOnlyIds`] derives one from a read-write id
//! and back. This module never decides whether a session
//! exists: that is the registry's job.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use aes::cipher::{BlockDecrypt, BlockEncrypt};
use aes::Aes256;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const RANDOM_BYTES: usize = 16;
const MAC_BYTES: usize = 16;
/// Shortest secret accepted from an operator's file.
const MIN_SECRET_BYTES: usize = 16;

/// Issues and verifies session ids with one node name and one secret.
#[derive(Clone)]
pub struct Signer {
    node: String,
    mac: HmacSha256,
}

impl Signer {
    /// The signer for read-only ids: same node, a key derived from this
    /// signer's key for that purpose only.
    pub fn read_only(&self) -> Signer {
        Signer::new(&self.node, &self.subkey(b"psd read-only session ids v1"))
    }

    /// A key for one purpose, derived from the secret.
    fn subkey(&self, purpose: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(purpose);
        mac.finalize().into_bytes().into()
    }

    pub fn new(node: &str, secret: &[u8]) -> Self {
        Self {
            node: node.to_string(),
            mac: HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length"),
        }
    }

    /// Reads the secret at `path`, creating it (mode 0600, 256 random bits as
    /// hex) if it does not exist yet.
    pub fn load_or_create(path: &Path, node: &str) -> io::Result<Self> {
        let secret = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => create_secret(path)?,
            Err(e) => return Err(e),
        };
        let secret = secret.trim_ascii();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "session secret {} is shorter than {MIN_SECRET_BYTES} bytes",
                    path.display()
                ),
            ));
        }
        Ok(Self::new(node, secret))
    }

    /// A new id for application `app`, never issued before (128 random bits).
    pub fn issue(&self, app: &str) -> String {
        let mut random = [0u8; RANDOM_BYTES];
        getrandom::fill(&mut random).expect("the OS random number generator failed");
        self.sign(app, &self.node, &random)
    }

    /// The id `node.random`, signed for `app`.
    fn sign(&self, app: &str, node: &str, random: &[u8; RANDOM_BYTES]) -> String {
        let body = format!("{node}.{}", URL_SAFE_NO_PAD.encode(random));
        let tag = self.tag(app, body.as_bytes());
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Whether `id` is well-formed and was issued for `app` with this secret.
    pub fn verify(&self, app: &str, id: &str) -> bool {
        self.verified(app, id).is_some()
    }

    /// The node and random parts of `id`, if it is well-formed and was
    /// issued for `app` with this secret.
    fn verified<'a>(&self, app: &str, id: &'a str) -> Option<(&'a str, [u8; RANDOM_BYTES])> {
        let (body, tag) = id.rsplit_once('.')?;
        let (node, random) = body.split_once('.')?;
        let random: [u8; RANDOM_BYTES] = URL_SAFE_NO_PAD.decode(random).ok()?.try_into().ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if !valid_node_name(node) || tag.len() != MAC_BYTES {
            return None;
        }
        let mut mac = self.keyed(app);
        mac.update(body.as_bytes());
        mac.verify_truncated_left(&tag).ok()?;
        Some((node, random))
    }

    /// The MAC with the application already in it; a NUL ends the name
    /// (no location prefix holds one).
    fn keyed(&self, app: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(app.as_bytes());
        mac.update(&[0]);
        mac
    }

    fn tag(&self, app: &str, body: &[u8]) -> [u8; MAC_BYTES] {
        let mut mac = self.keyed(app);
        mac.update(body);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; MAC_BYTES];
        tag.copy_from_slice(&full[..MAC_BYTES]);
        tag
    }
}

/// Read-only ids: each read-write id has exactly one, derived from it, from
/// which only the holder of the secret can get back to the read-write id.
///
/// A read-only id is `NODE.SEALED.MAC`: the read-write id's node, its
/// random part encrypted (AES-256, one block, under a key derived from the
/// secret for this alone), and a MAC with the read-only key. It needs no
/// table: it keeps working after a restart, and on every node that shares
/// the secret, for as long as its session exists. What it names is the
/// registry's business, as for any id: once the session has ended, it
/// names nothing.
#[derive(Clone)]
pub struct ReadOnlyIds {
    read_write: Signer,
    read_only: Signer,
    cipher: Aes256,
}

impl ReadOnlyIds {
    pub fn new(read_write: &Signer) -> ReadOnlyIds {
        let key = read_write.subkey(b"psd read-only id sealing v1");
        ReadOnlyIds {
            read_only: read_write.read_only(),
            read_write: read_write.clone(),
            cipher: aes::cipher::KeyInit::new(&key.into()),
        }
    }

    /// The read-only id of the read-write id `id` of `app` (the same one
    /// each time); `None` if `id` is not one.
    pub fn of(&self, app: &str, id: &str) -> Option<String> {
        let (node, random) = self.read_write.verified(app, id)?;
        let mut block = random.into();
        self.cipher.encrypt_block(&mut block);
        Some(self.read_only.sign(app, node, &block.into()))
    }

    /// The read-write id a read-only id of `app` stands for; `None` if
    /// `token` is not a read-only id psd issued.
    pub fn read_write(&self, app: &str, token: &str) -> Option<String> {
        let (node, sealed) = self.read_only.verified(app, token)?;
        let mut block = sealed.into();
        self.cipher.decrypt_block(&mut block);
        Some(self.read_write.sign(app, node, &block.into()))
    }
}

pub(crate) fn create_secret(path: &Path) -> io::Result<Vec<u8>> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| io::Error::other(e.to_string()))?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(hex.as_bytes())?;
    file.write_all(b"\n")?;
    Ok(hex.into_bytes())
}

/// Node names go into ids and cookies: letters, digits and `-` only.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new("node-1", b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn issued_ids_verify_and_differ() {
        let s = signer();
        let a = s.issue("a");
        let b = s.issue("a");
        assert_ne!(a, b);
        assert!(s.verify("a", &a) && s.verify("a", &b));
        assert!(a.starts_with("node-1."));
        assert_eq!(a.split('.').count(), 3);
    }

    #[test]
    fn forged_tampered_and_foreign_ids_fail() {
        let s = signer();
        let id = s.issue("a");
        let other = Signer::new("node-1", b"another secret, another server!!").issue("a");
        assert!(!s.verify("a", &other), "foreign secret");
        let mut tampered = id.clone().into_bytes();
        let i = id.find('.').unwrap() + 3;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        assert!(
            !s.verify("a", std::str::from_utf8(&tampered).unwrap()),
            "tampered random part"
        );
        let renamed = id.replacen("node-1", "node-2", 1);
        assert!(!s.verify("a", &renamed), "node name is covered by the MAC");
        for junk in [
            "",
            ".",
            "..",
            "a.b.c",
            "node-1.AAAA.AAAA",
            &format!("{id}x"),
            &id[..id.len() - 1],
        ] {
            assert!(!s.verify("a", junk), "{junk:?}");
        }
    }

    /// An id issued by one `<Location>` was adopted by another.
    #[test]
    fn an_id_is_bound_to_its_application() {
        let s = signer();
        let id = s.issue("main /one");
        assert!(s.verify("main /one", &id));
        assert!(!s.verify("main /two", &id));
        assert!(!s.verify("main /one\0", &id));
    }

    #[test]
    fn read_only_and_read_write_ids_never_verify_as_each_other() {
        let rw = signer();
        let ro = rw.read_only();
        let (a, b) = (rw.issue("a"), ro.issue("a"));
        assert!(rw.verify("a", &a) && ro.verify("a", &b));
        assert!(!ro.verify("a", &a) && !rw.verify("a", &b));
    }

    #[test]
    fn secret_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("psd-secret-{}", std::process::id()));
        let path = dir.join("secret");
        let a = Signer::load_or_create(&path, "n").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = Signer::load_or_create(&path, "n").unwrap();
        assert!(b.verify("a", &a.issue("a")), "same secret after reload");
        fs::write(&path, "short").unwrap();
        assert!(Signer::load_or_create(&path, "n").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    mod fuzz {
        //! Presented ids and cookies from hostile clients. A long run:
        //! `PROPTEST_CASES=1000000 cargo test -p psd --release fuzz_`.
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn fuzz_no_made_up_id_verifies(id in "[A-Za-z0-9._-]{0,60}", junk in any::<String>()) {
                let s = signer();
                prop_assert!(!s.verify("a", &id));
                prop_assert!(!s.verify("a", &junk));
            }

            #[test]
            fn fuzz_a_tampered_id_never_verifies(flip in 0usize..100, to in any::<u8>()) {
                let s = signer();
                let id = s.issue("a");
                let mut bytes = id.clone().into_bytes();
                let i = flip % bytes.len();
                prop_assume!(bytes[i] != to);
                bytes[i] = to;
                if let Ok(tampered) = String::from_utf8(bytes) {
                    prop_assert!(!s.verify("a", &tampered));
                }
            }

            #[test]
            fn fuzz_cookie_headers_never_panic(value in "[ -~]{0,80}") {
                let mut headers = http::HeaderMap::new();
                if let Ok(v) = http::HeaderValue::from_str(&value) {
                    headers.insert(http::header::COOKIE, v);
                }
                for v in crate::mapper::cookie_values(&headers, "psd_sid") {
                    prop_assert!(value.contains(v));
                }
            }
        }
    }
}
