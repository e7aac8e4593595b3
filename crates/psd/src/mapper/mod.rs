//! Which session a request belongs to.
//!
//! A [`Mapper`] looks at a request (a [`Hit`]) and names the key of its
//! session, as Continuity's mapper does in `get_session_id_from_hit`; for a
//! request that names no live session it assigns a new one. The built-in
//! strategy, [`SessionKey`], combines the parts of the `SessionKey`
//! directive in order: a psd-issued id from a cookie or query parameter, the
//! path under the `<Location>`, the client address. Applications using psd
//! as a library can supply their own `Mapper`; ids still come only from
//! [`Ids`], so a client can never choose one.
//!
//! This module never creates or finds sessions itself: the registry calls
//! the mapper and owns what the keys point to.

mod book;
pub mod client;
mod id;

use std::net::IpAddr;
use std::sync::Arc;

use http::header::COOKIE;
use http::{HeaderMap, Method, Uri};

pub use book::IdBook;
pub use client::Cidr;
pub(crate) use id::create_secret;
pub use id::{valid_node_name, Signer};

/// What a request presents to the mapper.
pub struct Hit<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    /// The request path under the `<Location>` prefix (`/` at least).
    pub path: &'a str,
    /// The client's address (after `TrustedProxy`).
    pub client: IpAddr,
    /// Query parameters, then urlencoded form fields if the mapper asked for them.
    pub params: &'a [(String, String)],
    /// The user the request authenticated as (`AuthType`), if any: a
    /// session belongs to its user, and no other user's request reaches it.
    pub user: Option<&'a str>,
}

/// What a verified id allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    /// GET and HEAD only; the worker sees `PSD_ACCESS=read-only`.
    ReadOnly,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::ReadWrite => "read-write",
            Access::ReadOnly => "read-only",
        }
    }
}

/// An id a client presented, verified.
#[derive(Debug, Clone)]
pub struct Presented {
    /// The read-write id of the session(s) it names.
    pub id: Arc<str>,
    /// The id exactly as the client holds it (a read-only id stays one).
    pub token: Arc<str>,
    pub access: Access,
}

/// The session a request names.
#[derive(Debug, Clone)]
pub struct Mapped {
    /// The registry key; equal keys are the same session.
    pub key: String,
    /// The id the client presented, if the key has an id part.
    pub presented: Option<Presented>,
}

impl Mapped {
    /// The key in `user`'s own key space: under `AuthType`, sessions
    /// belong to a user, and another user's request with the same id (or
    /// address, or path) maps to a session of its own.
    pub(crate) fn for_user(mut self, user: Option<&str>) -> Mapped {
        if let Some(user) = user {
            self.key = user_key(user, &self.key);
        }
        self
    }
}

/// What an application's ids are signed for: the application, and under
/// `AuthType` its user too, so that one user's id does not verify for
/// another (no id of a session is ever reused across users).
pub(crate) fn id_scope<'a>(app: &'a str, user: Option<&str>) -> std::borrow::Cow<'a, str> {
    match user {
        None => std::borrow::Cow::Borrowed(app),
        Some(user) => std::borrow::Cow::Owned(format!("{app}\0user={user}")),
    }
}

/// `user:key`: user names never hold `:` (htpasswd's separator).
fn user_key(user: &str, key: &str) -> String {
    format!("{user}:{key}")
}

/// A new session for a request that named none.
#[derive(Debug, Clone)]
pub struct Assigned {
    pub key: String,
    /// The session's id: `PSD_SESSION_ID`, and what the client is given.
    pub id: Arc<str>,
    /// Send `Set-Cookie` with this cookie name.
    pub cookie: Option<String>,
    /// Answer `303 See Other` to the same URL with this parameter added.
    pub query: Option<String>,
}

impl Assigned {
    /// See [`Mapped::for_user`].
    pub(crate) fn for_user(mut self, user: Option<&str>) -> Assigned {
        if let Some(user) = user {
            self.key = user_key(user, &self.key);
        }
        self
    }
}

/// Issues and verifies the ids of one application for a mapper; backed
/// by the registry.
pub struct Ids<'a> {
    pub(crate) book: &'a IdBook,
    /// The application's identity: its ids are valid here only.
    pub(crate) app: &'a str,
}

impl<'a> Ids<'a> {
    pub fn new(book: &'a IdBook, app: &'a str) -> Self {
        Ids { book, app }
    }

    /// Verifies a presented id: a read-write id names itself; a read-only id
    /// names the read-write id it was handed out for, while that lives.
    pub fn verify(&self, token: &str) -> Option<Presented> {
        self.book.verify(self.app, token)
    }

    /// Whether a live session uses this read-write id.
    pub fn in_use(&self, id: &str) -> bool {
        self.book.in_use(id)
    }

    /// A new, signed, never-issued id.
    pub fn issue(&self) -> Arc<str> {
        self.book.issue(self.app)
    }
}

/// Maps requests to sessions. Implementations must be cheap: this runs on
/// every request, outside any session.
pub trait Mapper: Send + Sync + std::fmt::Debug + 'static {
    /// Continuity's `get_session_id_from_hit`: the session this request
    /// names, or `None` if it names none (no id, or none that verifies).
    fn get_session_id_from_hit(&self, hit: &Hit<'_>, ids: &Ids<'_>) -> Option<Mapped>;

    /// A new session for a request whose key named no live session.
    fn assign_session_id(&self, hit: &Hit<'_>, ids: &Ids<'_>) -> Assigned;

    /// Whether [`Hit::params`] must include the fields of urlencoded POST
    /// bodies (psd then reads such bodies before mapping).
    fn reads_form_fields(&self) -> bool {
        false
    }

    /// The cookie that carries ids, if any (used to hand out read-only ids).
    fn cookie_name(&self) -> Option<&str> {
        None
    }

    /// The query parameter that carries ids, if any.
    fn query_name(&self) -> Option<&str> {
        None
    }
}

/// One part of a `SessionKey` directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Cookie(String),
    Query(String),
    Path,
    Ip,
}

/// The built-in mapper: the parts of `SessionKey`, combined in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKey {
    parts: Vec<Part>,
}

impl Default for SessionKey {
    fn default() -> Self {
        SessionKey {
            parts: vec![Part::Cookie("psd_sid".into())],
        }
    }
}

impl SessionKey {
    /// Parses the arguments of a `SessionKey` directive.
    pub fn parse(args: &[String]) -> Result<SessionKey, String> {
        let mut parts = vec![];
        let mut words = args.iter();
        while let Some(word) = words.next() {
            let mut name = |kind: &str| {
                let name = words
                    .next()
                    .ok_or_else(|| format!("'{kind}' needs a NAME"))?;
                if name.is_empty() || !name.bytes().all(is_token_byte) {
                    return Err(format!("'{name}' is not a valid {kind} name"));
                }
                Ok(name.clone())
            };
            let part = match word.to_ascii_lowercase().as_str() {
                "cookie" => Part::Cookie(name("cookie")?),
                "query" => Part::Query(name("query")?),
                "path" => Part::Path,
                "ip" => Part::Ip,
                other => {
                    return Err(format!(
                        "unknown part '{other}' (expected cookie NAME, query NAME, path or ip)"
                    ))
                }
            };
            if parts
                .iter()
                .any(|p| std::mem::discriminant(p) == std::mem::discriminant(&part))
            {
                return Err(format!("'{word}' given twice"));
            }
            parts.push(part);
        }
        if parts.is_empty() {
            return Err("expected one or more of: cookie NAME, query NAME, path, ip".into());
        }
        Ok(SessionKey { parts })
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    fn has_id_part(&self) -> bool {
        self.cookie_name().is_some() || self.query_name().is_some()
    }

    /// The ids this request carries, cookie first (Continuity's order).
    fn candidates<'h>(&'h self, hit: &'h Hit<'_>) -> impl Iterator<Item = &'h str> + 'h {
        let cookies = self
            .cookie_name()
            .into_iter()
            .flat_map(move |name| cookie_values(hit.headers, name));
        let queries = self.query_name().into_iter().flat_map(move |name| {
            hit.params
                .iter()
                .filter(move |(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        });
        cookies.chain(queries)
    }

    /// The key for this hit with a given id part.
    fn key(&self, hit: &Hit<'_>, id: Option<&str>) -> String {
        let mut key = String::new();
        for part in &self.parts {
            match part {
                Part::Cookie(_) | Part::Query(_) => {
                    if !key.contains("id=") {
                        key.push_str("id=");
                        key.push_str(id.unwrap_or_default());
                        key.push('\n');
                    }
                }
                Part::Path => {
                    key.push_str("path=");
                    key.push_str(hit.path);
                    key.push('\n');
                }
                Part::Ip => {
                    key.push_str("ip=");
                    key.push_str(&hit.client.to_string());
                    key.push('\n');
                }
            }
        }
        key
    }
}

impl Mapper for SessionKey {
    fn get_session_id_from_hit(&self, hit: &Hit<'_>, ids: &Ids<'_>) -> Option<Mapped> {
        if !self.has_id_part() {
            return Some(Mapped {
                key: self.key(hit, None),
                presented: None,
            });
        }
        // Several ids can be present (cookies for different paths): prefer
        // one whose session lives.
        let mut verified = self.candidates(hit).filter_map(|c| ids.verify(c));
        let first = verified.next()?;
        let chosen = if ids.in_use(&first.id) {
            first
        } else {
            verified.find(|p| ids.in_use(&p.id)).unwrap_or(first)
        };
        Some(Mapped {
            key: self.key(hit, Some(&chosen.id)),
            presented: Some(chosen),
        })
    }

    fn assign_session_id(&self, hit: &Hit<'_>, ids: &Ids<'_>) -> Assigned {
        // With path or ip parts, one read-write id can name several sessions
        // (Continuity's path sessions): a new path under a live id keeps it.
        let reused = self
            .candidates(hit)
            .filter_map(|c| ids.verify(c))
            .find(|p| p.access == Access::ReadWrite && ids.in_use(&p.id))
            .map(|p| p.id);
        let fresh = reused.is_none();
        let id = reused.unwrap_or_else(|| ids.issue());
        Assigned {
            key: self.key(hit, self.has_id_part().then_some(&*id)),
            cookie: self.cookie_name().filter(|_| fresh).map(str::to_string),
            query: self.query_name().filter(|_| fresh).map(str::to_string),
            id,
        }
    }

    fn reads_form_fields(&self) -> bool {
        self.query_name().is_some()
    }

    fn cookie_name(&self) -> Option<&str> {
        self.parts.iter().find_map(|p| match p {
            Part::Cookie(name) => Some(name.as_str()),
            _ => None,
        })
    }

    fn query_name(&self) -> Option<&str> {
        self.parts.iter().find_map(|p| match p {
            Part::Query(name) => Some(name.as_str()),
            _ => None,
        })
    }
}

/// Every value of cookie `name` in the request, in order. Several can be
/// present (cookies set for different paths).
pub fn cookie_values<'a>(
    headers: &'a HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"'))
        })
}

/// The `Set-Cookie` value that hands a session id to a browser; `Secure`
/// when the client came over HTTPS.
pub fn set_cookie(name: &str, id: &str, path: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={id}; Path={path}; HttpOnly; SameSite=Lax{secure}")
}

/// `path?query` with `name=id` in place of any `name` parameter.
pub fn with_param(path: &str, query: Option<&str>, name: &str, id: &str) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    if let Some(q) = query {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            if k != name {
                out.append_pair(&k, &v);
            }
        }
    }
    out.append_pair(name, id);
    format!("{path}?{}", out.finish())
}

/// The parameters of a query string, then of an urlencoded form body: the
/// one parser of both, for the mapper and for in-process applications.
pub fn params(query: Option<&str>, form: Option<&[u8]>) -> Vec<(String, String)> {
    let query = query.map(str::as_bytes).unwrap_or_default();
    form_urlencoded::parse(query)
        .chain(form_urlencoded::parse(form.unwrap_or_default()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Whether a request's body is an urlencoded form.
pub fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// RFC 6265 `token` characters.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn cookie_values_finds_every_occurrence() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; psd_sid=x; b=2"));
        h.append(COOKIE, HeaderValue::from_static("psd_sid=\"y\""));
        let got: Vec<_> = cookie_values(&h, "psd_sid").collect();
        assert_eq!(got, ["x", "y"]);
    }

    #[test]
    fn session_key_parts_parse_in_order() {
        let words = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let key = SessionKey::parse(&words("cookie sid path ip")).unwrap();
        assert_eq!(
            key.parts(),
            [Part::Cookie("sid".into()), Part::Path, Part::Ip]
        );
        assert!(SessionKey::parse(&words("cookie")).is_err());
        assert!(SessionKey::parse(&words("path path")).is_err());
        assert!(SessionKey::parse(&words("header x")).is_err());
        assert!(SessionKey::parse(&words("query a;b")).is_err());
        assert!(SessionKey::parse(&[]).is_err());
    }

    #[test]
    fn with_param_replaces_and_keeps_other_parameters() {
        assert_eq!(
            with_param("/app/x", Some("a=1&sid=forged&b=two+words"), "sid", "ID"),
            "/app/x?a=1&b=two+words&sid=ID"
        );
        assert_eq!(with_param("/", None, "sid", "ID"), "/?sid=ID");
    }
}
