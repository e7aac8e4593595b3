//! Who may reach an application: `AuthType Basic` with an htpasswd file
//! and `Require`, checked before any session is looked up or created, so a
//! client that has not authenticated never causes a spawn.
//!
//! - [`UserFile`]: an htpasswd file (bcrypt, SHA-512/256 crypt, Apache
//!   MD5), read again when it changes; plaintext, unsalted SHA-1 and DES
//!   crypt are refused at `psd check`.
//! - [`Gate`]: one `<Location>`'s check, with a cache of verified
//!   credentials (a warm session does not pay bcrypt per request) and a
//!   limit on failed attempts per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, Request, Response};
use sha2::{Digest, Sha256};

use crate::body::{self, Body, Limited};
use crate::config::{LocationConfig, Require};
use crate::worker::upstream::{strip_hop_by_hop, Address, Upstream};

/// Failed logins one address may make per [`FAILURE_WINDOW`]; past it, 429.
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses whose failures are remembered at most (a flood of addresses
/// forgets the oldest windows first).
const MAX_TRACKED: usize = 65_536;
/// How long a verified user and password are believed without hashing
/// again, and how many such pairs are kept.
const CACHE_TTL: Duration = Duration::from_secs(600);
const CACHE_MAX: usize = 16_384;
/// How often the user file's modification time is looked at.
const RECHECK: Duration = Duration::from_secs(1);
/// Credentials longer than this are refused unread.
const MAX_CREDENTIALS: usize = 4096;

/// A password hash psd accepts, by its scheme.
fn scheme(hash: &str) -> Result<&'static str, &'static str> {
    let known = [
        ("$2y$", "bcrypt"),
        ("$2b$", "bcrypt"),
        ("$2a$", "bcrypt"),
        ("$6$", "SHA-512 crypt"),
        ("$5$", "SHA-256 crypt"),
        ("$apr1$", "Apache MD5"),
    ];
    if let Some((_, name)) = known.iter().find(|(p, _)| hash.starts_with(p)) {
        return Ok(name);
    }
    Err(if hash.starts_with("{SHA}") {
        "unsalted SHA-1 ({SHA}) is refused: use htpasswd -B (bcrypt)"
    } else if hash.len() == 13 && !hash.starts_with('$') {
        "DES crypt is refused (8 characters of password at most): use htpasswd -B (bcrypt)"
    } else {
        "not a password hash psd accepts (a plaintext password?): use htpasswd -B (bcrypt), -5 (SHA-512) or -m (MD5)"
    })
}

/// An htpasswd file, parsed.
#[derive(Debug, Clone)]
pub struct UserFile {
    users: HashMap<String, String>,
}

impl UserFile {
    /// Reads and checks `path`: one `user:hash` a line, `#` comments.
    pub fn load(path: &Path) -> Result<UserFile, Vec<psd_conf::Error>> {
        let at = |line: usize| psd_conf::Location {
            file: path.into(),
            line,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![psd_conf::Error::new(
                &at(0),
                format!("AuthUserFile {}: {e}", path.display()),
            )]
        })?;
        let mut users = HashMap::new();
        let mut errors = vec![];
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                errors.push(psd_conf::Error::new(&at(i + 1), "expected user:hash"));
                continue;
            };
            match scheme(hash) {
                Ok(_) if user.is_empty() => {
                    errors.push(psd_conf::Error::new(&at(i + 1), "empty user name"))
                }
                Ok(_) => {
                    users.insert(user.to_string(), hash.to_string());
                }
                Err(why) => errors.push(psd_conf::Error::new(
                    &at(i + 1),
                    format!("user '{user}': {why}"),
                )),
            }
        }
        match errors.is_empty() {
            true => Ok(UserFile { users }),
            false => Err(errors),
        }
    }

    /// Whether `password` is `user`'s. Slow on purpose (bcrypt): call it off
    /// the async threads.
    fn verify(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(hash) => crypt3_rs::unix::verify(password, hash),
            None => {
                // The same work for an unknown user: no timing oracle for names.
                let _ = crypt3_rs::unix::verify(password, DUMMY_BCRYPT);
                false
            }
        }
    }
}

/// A bcrypt hash (cost 5, htpasswd -B's) of nothing anyone knows,
/// verified for unknown users.
const DUMMY_BCRYPT: &str = "$2y$05$vVmYz0f4C8X3nRV4rsNZfe/Ak3cHAAMgktRyySs3/BhH4w6HdGw92";

/// The user file as last read, and when to look at it again.
struct Loaded {
    file: Arc<UserFile>,
    modified: Option<SystemTime>,
    checked: Instant,
    /// Bumped at each reload: cached credentials of an older one are void.
    generation: u64,
}

/// A user and password found right: the user, when, and under which
/// version of the user file.
type Verified = (Arc<str>, Instant, u64);

/// What a request may do, as far as access control goes.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// On, as this user (`None`: allowed by address, without credentials).
    Allow(Option<Arc<str>>),
    /// On (`AuthForward`), as this user, with these headers of the answer.
    Forwarded(Option<Arc<str>>, Vec<(HeaderName, HeaderValue)>),
    /// `AuthForward`'s answer, for the client as it is.
    Answer(Response<Body>),
    /// The `AuthForward` server could not be asked (502).
    Unavailable,
    /// 401 with a challenge: no credentials, or wrong ones.
    Challenge,
    /// 403: authenticated, but `Require` names others; or an address no
    /// `Require ip` admits.
    Forbidden,
    /// 429: too many failed logins from this address; retry after this.
    Throttled(Duration),
}

/// One `<Location>`'s access control.
pub(crate) struct Gate {
    /// `AuthForward`, or why its URL cannot be used (its requests get 502).
    forward: Option<Result<Forward, String>>,
    realm: String,
    require: Vec<Require>,
    path: Option<PathBuf>,
    loaded: Mutex<Option<Loaded>>,
    /// Verified credentials: key = SHA-256(salt, user, password).
    cache: Mutex<HashMap<[u8; 32], Verified>>,
    salt: [u8; 16],
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Gate {
    /// The gate of `location`, if it has any access control.
    pub fn of(location: &LocationConfig) -> Option<Arc<Gate>> {
        let forward = location.auth_forward.as_ref().map(|(url, headers)| {
            Forward::new(url, headers).map_err(|e| {
                let why = format!("AuthForward {url}: {e}");
                tracing::error!("{why}; its requests get 502");
                why
            })
        });
        if location.require.is_empty() && forward.is_none() {
            return None;
        }
        let mut salt = [0u8; 16];
        let _ = getrandom::fill(&mut salt);
        let gate = Gate {
            forward,
            realm: location
                .auth_name
                .clone()
                .unwrap_or_else(|| location.prefix.clone()),
            require: location.require.clone(),
            path: location.auth_user_file.clone(),
            loaded: Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            salt,
            failures: Mutex::new(HashMap::new()),
        };
        Some(Arc::new(gate))
    }

    /// The `WWW-Authenticate` challenge.
    pub fn challenge(&self) -> String {
        format!("Basic realm=\"{}\", charset=\"UTF-8\"", self.realm)
    }

    fn wants_users(&self) -> bool {
        self.require
            .iter()
            .any(|r| matches!(r, Require::ValidUser | Require::User(_)))
    }

    fn admits_user(&self, user: &str) -> bool {
        self.require.iter().any(|r| match r {
            Require::ValidUser => true,
            Require::User(names) => names.iter().any(|n| n == user),
            Require::Ip(_) => false,
        })
    }

    /// Checks a request from `client`: by `AuthForward`, or by its
    /// `Authorization` header and `Require`.
    pub async fn check(&self, client: IpAddr, head: &http::request::Parts, https: bool) -> Verdict {
        match &self.forward {
            Some(Ok(forward)) => forward.ask(client, head, https).await,
            Some(Err(why)) => {
                tracing::warn!("{why}");
                Verdict::Unavailable
            }
            None => {
                let authorization = head.headers.get(AUTHORIZATION).map(HeaderValue::as_bytes);
                self.basic(client, authorization).await
            }
        }
    }

    async fn basic(&self, client: IpAddr, authorization: Option<&[u8]>) -> Verdict {
        let by_address = self.require.iter().any(|r| match r {
            Require::Ip(ranges) => ranges.iter().any(|c| c.contains(client)),
            _ => false,
        });
        if by_address {
            return Verdict::Allow(None);
        }
        if !self.wants_users() {
            return Verdict::Forbidden;
        }
        if let Some(wait) = self.throttled(client) {
            return Verdict::Throttled(wait);
        }
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            return Verdict::Challenge;
        };
        let Some((file, generation)) = self.users() else {
            return Verdict::Challenge;
        };
        let key = self.cache_key(&user, &password);
        let cached = {
            let cache = self.cache.lock().expect("auth cache lock");
            cache.get(&key).and_then(|(u, at, g)| {
                (*g == generation && at.elapsed() < CACHE_TTL).then(|| u.clone())
            })
        };
        let user = match cached {
            Some(user) => user,
            None => {
                let (name, pass) = (user.clone(), password);
                let verified = tokio::task::spawn_blocking(move || file.verify(&name, &pass))
                    .await
                    .unwrap_or(false);
                if !verified {
                    let n = self.failed(client);
                    tracing::warn!(%client, user = %user, failures = n, "authentication failed");
                    return Verdict::Challenge;
                }
                let user: Arc<str> = user.into();
                let mut cache = self.cache.lock().expect("auth cache lock");
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(key, (user.clone(), Instant::now(), generation));
                user
            }
        };
        match self.admits_user(&user) {
            true => Verdict::Allow(Some(user)),
            false => Verdict::Forbidden,
        }
    }

    fn cache_key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// The user file, read again if it changed; `None` if it cannot be
    /// read at all (nobody gets in).
    fn users(&self) -> Option<(Arc<UserFile>, u64)> {
        let path = self.path.as_ref()?;
        let mut loaded = self.loaded.lock().expect("auth file lock");
        let stale = loaded
            .as_ref()
            .is_none_or(|l| l.checked.elapsed() >= RECHECK);
        if stale {
            let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            let changed = loaded.as_ref().is_none_or(|l| l.modified != modified);
            if changed {
                match UserFile::load(path) {
                    Ok(file) => {
                        let generation = loaded.as_ref().map_or(0, |l| l.generation + 1);
                        if loaded.is_some() {
                            tracing::info!(file = %path.display(), "AuthUserFile changed: read again");
                        }
                        *loaded = Some(Loaded {
                            file: Arc::new(file),
                            modified,
                            checked: Instant::now(),
                            generation,
                        });
                    }
                    Err(errors) => {
                        for e in &errors {
                            tracing::error!("{e}; the last good version stays");
                        }
                        if let Some(l) = loaded.as_mut() {
                            (l.modified, l.checked) = (modified, Instant::now());
                        }
                    }
                }
            } else if let Some(l) = loaded.as_mut() {
                l.checked = Instant::now();
            }
        }
        loaded.as_ref().map(|l| (l.file.clone(), l.generation))
    }

    /// How long `client` must wait, if it has failed too often lately.
    fn throttled(&self, client: IpAddr) -> Option<Duration> {
        let failures = self.failures.lock().expect("auth failures lock");
        let (n, since) = failures.get(&client)?;
        let left = FAILURE_WINDOW.checked_sub(since.elapsed())?;
        (*n >= MAX_FAILURES).then_some(left)
    }

    /// Counts a failed login of `client`; how many in its window.
    fn failed(&self, client: IpAddr) -> u32 {
        let mut failures = self.failures.lock().expect("auth failures lock");
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
            if failures.len() >= MAX_TRACKED {
                failures.clear();
            }
        }
        let entry = failures.entry(client).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
        entry.0
    }
}

/// How long an `AuthForward` server has to answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of its answer's body passed on to a client.
const FORWARD_BODY_MAX: u64 = 64 * 1024;
/// Headers of the forward server's 2xx answer that name the user.
const USER_HEADERS: [&str; 4] = [
    "x-remote-user",
    "remote-user",
    "x-auth-request-user",
    "x-forwarded-user",
];

/// `AuthForward URL [HEADER…]`: an HTTP server that decides.
struct Forward {
    upstream: Upstream,
    path: String,
    authority: String,
    copy: Vec<HeaderName>,
}

impl Forward {
    fn new(url: &str, headers: &[String]) -> Result<Forward, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
        let authority = uri.authority().ok_or("no host")?.to_string();
        let port = uri.port_u16().unwrap_or(80);
        let host = uri.host().ok_or("no host")?.trim_matches(['[', ']']);
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .map_err(|e| format!("{host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}: no address"))?;
        let copy = headers
            .iter()
            .map(|h| HeaderName::from_bytes(h.as_bytes()).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        Ok(Forward {
            upstream: Upstream::new(Address::Tcp(addr), "auth".into(), 64),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
            authority,
            copy,
        })
    }

    /// Asks the server about the request `head` from `client`.
    async fn ask(&self, client: IpAddr, head: &http::request::Parts, https: bool) -> Verdict {
        let mut request = Request::new(Limited::new(body::buffered(Bytes::new()), 0));
        *request.method_mut() = head.method.clone();
        *request.uri_mut() = match self.path.parse() {
            Ok(uri) => uri,
            Err(_) => return Verdict::Unavailable,
        };
        let headers = request.headers_mut();
        *headers = head.headers.clone();
        // No body goes: nothing that frames or announces one, nor what
        // concerns the client's hop.
        strip_hop_by_hop(headers, false);
        headers.remove(http::header::CONTENT_LENGTH);
        headers.remove(http::header::EXPECT);
        let original_host = head
            .headers
            .get(http::header::HOST)
            .cloned()
            .unwrap_or(HeaderValue::from_static(""));
        let mut set = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        };
        set("x-forwarded-method", head.method.as_str());
        let uri = head.uri.path_and_query().map_or("/", |p| p.as_str());
        set("x-forwarded-uri", uri);
        set("x-original-uri", uri);
        set("x-forwarded-proto", if https { "https" } else { "http" });
        set("x-forwarded-for", &client.to_string());
        set("host", &self.authority);
        headers.insert("x-forwarded-host", original_host);
        let asked = async {
            let conn = self.upstream.connection(false).await?;
            let (response, sender) = self.upstream.send(conn, request).await?;
            let (parts, incoming) = response.into_parts();
            let body = body::read_all(body::streamed(incoming), FORWARD_BODY_MAX)
                .await
                .map_err(|e| -> body::BoxError { e.to_string().into() })?;
            self.upstream.give_back(sender);
            Ok::<_, body::BoxError>((parts, body))
        };
        let (parts, body) = match tokio::time::timeout(FORWARD_TIMEOUT, asked).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                tracing::warn!(%client, "AuthForward: {e}");
                return Verdict::Unavailable;
            }
            Err(_) => {
                tracing::warn!(%client, "AuthForward: no answer within {FORWARD_TIMEOUT:?}");
                return Verdict::Unavailable;
            }
        };
        if parts.status.is_success() {
            let user = USER_HEADERS
                .iter()
                .find_map(|h| parts.headers.get(*h))
                .and_then(|v| v.to_str().ok())
                .filter(|u| !u.is_empty() && !u.contains(':'))
                .map(Arc::from);
            let copied = self
                .copy
                .iter()
                .flat_map(|name| {
                    parts
                        .headers
                        .get_all(name)
                        .iter()
                        .map(move |v| (name.clone(), v.clone()))
                })
                .collect();
            return Verdict::Forwarded(user, copied);
        }
        let mut answer = Response::new(body::full(body));
        *answer.status_mut() = parts.status;
        *answer.headers_mut() = parts.headers;
        // The body was read whole: hyper frames it anew for the client.
        strip_hop_by_hop(answer.headers_mut(), false);
        answer.headers_mut().remove(http::header::CONTENT_LENGTH);
        Verdict::Answer(answer)
    }
}

/// User and password of a `Basic` `Authorization` header.
fn basic_credentials(header: &[u8]) -> Option<(String, String)> {
    if header.len() > MAX_CREDENTIALS {
        return None;
    }
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    (!user.is_empty()).then(|| (user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made with Apache's htpasswd 2.4 (`-nbB`, `-nb5`, `-nb2`, `-nbm`), password "secret".
    const FILE: &str = "\
# users
ann:$2y$05$X8OvXAC2KPMKwR0Ruyp9COco.VHxlT54al/1l8IQdB88qFFYOSq4i
bob:$6$cRx4LqMn/3N.FwUO$oeelP1eypmzco7/82LBLuWAAeGGjmSS9RQ77Ept/mfugCymMycGe0ZZFRlxiutXWdOxBfD5N476atpEB2vXzS0
cy:$5$Gb22hFfZr419tE/I$gh2vhdiBhfs6sqS31iPcndrKoShEp/.GitHCN7vMVJ0
dee:$apr1$du.kPmUJ$1jV8zsgrq.ICrVJ53zyBD0
";
    fn file(text: &str) -> (PathBuf, Result<UserFile, Vec<psd_conf::Error>>) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("psd-htpasswd-{}-{n}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let loaded = UserFile::load(&path);
        (path, loaded)
    }

    #[test]
    fn every_accepted_hash_format_verifies() {
        let (path, loaded) = file(FILE);
        let users = loaded.unwrap();
        for user in ["ann", "bob", "cy", "dee"] {
            assert!(users.verify(user, "secret"), "{user}");
            assert!(!users.verify(user, "Secret"), "{user}");
        }
        assert!(!users.verify("nobody", "secret"));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn weak_or_plaintext_entries_are_errors_with_their_line() {
        let (path, loaded) = file("ok:$apr1$GR6TrZlC$gl0ZbyWlX3KBnxSyCsV9K.\nplain:secret\nsha:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\ndes:D5c0YQEfGPH2o\nnocolon\n");
        let errors: Vec<String> = loaded
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].ends_with(":2: user 'plain': not a password hash psd accepts (a plaintext password?): use htpasswd -B (bcrypt), -5 (SHA-512) or -m (MD5)"), "{errors:?}");
        assert!(
            errors[1].contains(":3: user 'sha': unsalted SHA-1"),
            "{errors:?}"
        );
        assert!(
            errors[2].contains(":4: user 'des': DES crypt"),
            "{errors:?}"
        );
        assert!(errors[3].contains(":5: expected user:hash"), "{errors:?}");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn basic_credentials_parse() {
        let header = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert_eq!(
            basic_credentials(header("ann:se:cret").as_bytes()),
            Some(("ann".into(), "se:cret".into()))
        );
        assert_eq!(basic_credentials(header(":x").as_bytes()), None);
        assert_eq!(basic_credentials(b"Bearer abc"), None);
        assert_eq!(basic_credentials(b"Basic !!!"), None);
        assert_eq!(basic_credentials(&vec![b'a'; MAX_CREDENTIALS + 1]), None);
    }
}
