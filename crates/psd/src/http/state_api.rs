//! The state API: a space's values over plain HTTP, so that a worker in any
//! language reaches them with its standard library.
//!
//! Workers use it on an internal listener on 127.0.0.1 ([`serve`]), through
//! the capability URLs in `PSD_STATE_URL` and `PSD_SHARED_URL`; clients use
//! it under `PREFIX/.psd/state/` and `PREFIX/.psd/shared/` as `ClientState`
//! allows ([`super::own_urls`]). Both go through [`answer`]:
//! - `GET BASE` → the keys, with their sizes, as JSON;
//! - `GET BASE/KEY` → the value with its `ETag`, or 404;
//! - `PUT BASE/KEY` → 201 (created) or 204 (replaced), with `If-Match: ETAG`
//!   or `If-None-Match: *` for compare-and-set (412 when it fails), 413 past
//!   `MaxSessionState`;
//! - `DELETE BASE/KEY` → 204, 404 or 412;
//! - `POST BASE/KEY?add=N` → adds N to an integer value and answers the sum
//!   (409 for a value that is not one).
//!
//! A write answered 2xx is committed (with `StateStore embedded`, on disk).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, ETAG, IF_MATCH, IF_NONE_MATCH};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::body::{self, Body, BoxError};
use crate::error::{Cause, Error};
use crate::session::Registry;
use crate::store::{valid_key, Condition, Refused, Space, Store, Written};

/// What a caller may do with a space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allowed {
    Read,
    ReadWrite,
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(body::full(format!("{text}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header")
}

/// `If-Match` / `If-None-Match` as a store condition; `None` for one no
/// version can meet.
fn condition(headers: &http::HeaderMap) -> Option<Condition> {
    if let Some(v) = headers.get(IF_NONE_MATCH) {
        return (v.as_bytes() == b"*").then_some(Condition::Absent);
    }
    let Some(v) = headers.get(IF_MATCH) else {
        return Some(Condition::Always);
    };
    let text = v.to_str().ok()?.trim();
    if text == "*" {
        return Some(Condition::Present);
    }
    text.trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
        .map(Condition::Version)
}

fn store_failed(e: crate::store::StoreError) -> Response<Body> {
    let e = Error::Store(Cause::new("the state API", e));
    tracing::warn!("{e}");
    e.to_response()
}

fn refused(why: Refused) -> Response<Body> {
    match why {
        Refused::Precondition => plain(StatusCode::PRECONDITION_FAILED, "Precondition Failed"),
        Refused::TooLarge => plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Payload Too Large: MaxSessionState",
        ),
        Refused::Missing => plain(StatusCode::NOT_FOUND, "Not Found"),
        Refused::NotANumber => plain(
            StatusCode::CONFLICT,
            "Conflict: the value is not an integer",
        ),
    }
}

/// Answers one state API request for `key` (empty: the space itself) of
/// `space`.
pub(crate) async fn answer<B>(
    store: &dyn Store,
    space: &Space,
    key: &str,
    allowed: Allowed,
    limit: u64,
    request: Request<B>,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let method = request.method().clone();
    if key.is_empty() {
        if method != Method::GET && method != Method::HEAD {
            return not_allowed("GET, HEAD");
        }
        return match store.keys(space).await {
            Ok(keys) => {
                let list: Vec<_> = keys
                    .into_iter()
                    .map(|(key, size)| serde_json::json!({ "key": key, "size": size }))
                    .collect();
                let mut response =
                    Response::new(body::full(serde_json::to_vec(&list).unwrap_or_default()));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                response
            }
            Err(e) => store_failed(e),
        };
    }
    if !valid_key(key) {
        return plain(StatusCode::BAD_REQUEST, "Bad Request: invalid key");
    }
    let writes = matches!(method, Method::PUT | Method::DELETE | Method::POST);
    if writes && allowed == Allowed::Read {
        return plain(StatusCode::FORBIDDEN, "Forbidden: read only");
    }
    let Some(when) = condition(request.headers()) else {
        return refused(Refused::Precondition);
    };
    match method {
        Method::GET | Method::HEAD => match store.value(space, key).await {
            Ok(Some(value)) => {
                let mut response = Response::new(body::full(value.data));
                let headers = response.headers_mut();
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                headers.insert(ETAG, etag(value.version));
                response
            }
            Ok(None) => plain(StatusCode::NOT_FOUND, "Not Found"),
            Err(e) => store_failed(e),
        },
        Method::PUT => {
            let data = match body::read_all(body::streamed(request.into_body()), limit).await {
                Ok(data) => data,
                Err(Error::BodyTooLarge { .. }) => return refused(Refused::TooLarge),
                Err(e) => return e.to_response(),
            };
            match store.put(space, key, data.to_vec(), when, limit).await {
                Ok(Written::Created(v)) => with_etag(StatusCode::CREATED, v),
                Ok(Written::Replaced(v)) => with_etag(StatusCode::NO_CONTENT, v),
                Ok(Written::Refused(why)) => refused(why),
                Err(e) => store_failed(e),
            }
        }
        Method::DELETE => match store.delete(space, key, when).await {
            Ok(Written::Refused(why)) => refused(why),
            Ok(_) => plain(StatusCode::NO_CONTENT, ""),
            Err(e) => store_failed(e),
        },
        Method::POST => {
            let params = crate::mapper::params(request.uri().query(), None);
            let Some(n) = params
                .iter()
                .find(|(k, _)| k == "add")
                .and_then(|(_, v)| v.parse::<i64>().ok())
            else {
                return plain(StatusCode::BAD_REQUEST, "Bad Request: POST takes ?add=N");
            };
            match store.add(space, key, n, limit).await {
                Ok((Written::Refused(why), _)) => refused(why),
                Ok((Written::Created(v) | Written::Replaced(v), sum)) => {
                    let mut response = plain(StatusCode::OK, &sum.to_string());
                    response.headers_mut().insert(ETAG, etag(v));
                    response
                }
                Err(e) => store_failed(e),
            }
        }
        _ => not_allowed("GET, HEAD, PUT, DELETE, POST"),
    }
}

fn with_etag(status: StatusCode, version: u64) -> Response<Body> {
    let mut response = Response::new(body::full(Bytes::new()));
    *response.status_mut() = status;
    response.headers_mut().insert(ETAG, etag(version));
    response
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// Binds the internal listener on 127.0.0.1 and tells the registry where it
/// is, so that workers started from now on get their URLs.
pub(crate) async fn bind(registry: &Registry) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    registry
        .grants
        .listening_at(format!("http://{}", listener.local_addr()?));
    Ok(listener)
}

/// Serves the workers' state API on `listener` until dropped:
/// `/TOKEN/state/KEY` and `/TOKEN/shared/KEY`. A token that names no
/// running worker gets 404.
pub(crate) async fn serve(registry: Arc<Registry>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let registry = registry.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&registry, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn route(registry: &Registry, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(3, '/');
    let (Some(token), Some(which)) = (parts.next(), parts.next()) else {
        return plain(StatusCode::NOT_FOUND, "Not Found");
    };
    let key = parts.next().unwrap_or("");
    let Some(grant) = registry.grants.get(token) else {
        return plain(
            StatusCode::NOT_FOUND,
            "Not Found: no such capability (its worker has stopped)",
        );
    };
    let space = match (which, &grant.session) {
        ("state", Some(session)) => session,
        ("state", None) => {
            return plain(
                StatusCode::NOT_FOUND,
                "Not Found: this spare worker has no session yet",
            )
        }
        ("shared", _) => &grant.shared,
        _ => return plain(StatusCode::NOT_FOUND, "Not Found"),
    };
    let key = percent_encoding::percent_decode_str(key)
        .decode_utf8_lossy()
        .into_owned();
    answer(
        &*registry.store,
        space,
        &key,
        Allowed::ReadWrite,
        grant.limit,
        request,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        for good in ["a", "count", "a/b", "x.y~z-_", &"k".repeat(200)] {
            assert!(valid_key(good), "{good}");
        }
        for bad in ["", "/a", "a/", "a//b", "a b", "ä", "a?b", &"k".repeat(201)] {
            assert!(!valid_key(bad), "{bad}");
        }
    }

    #[test]
    fn preconditions_parse() {
        let mut h = http::HeaderMap::new();
        assert_eq!(condition(&h), Some(Condition::Always));
        h.insert(IF_MATCH, HeaderValue::from_static("\"7\""));
        assert_eq!(condition(&h), Some(Condition::Version(7)));
        h.insert(IF_MATCH, HeaderValue::from_static("\"x\""));
        assert_eq!(condition(&h), None);
        h.insert(IF_MATCH, HeaderValue::from_static("*"));
        assert_eq!(condition(&h), Some(Condition::Present));
        h.insert(IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert_eq!(condition(&h), Some(Condition::Absent));
    }
}
