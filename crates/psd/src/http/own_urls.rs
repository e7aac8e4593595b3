//! psd's own URLs under `PREFIX/.psd/`; applications never see them.
//!
//! - `share`: a read-write session gets a link that carries its read-only id;
//! - `join?id=ID`: sets the cookie to a read-only id and redirects to the app;
//! - `state/KEY`, `shared/KEY`: the client's session's values and the
//!   application's, as `ClientState` allows ([`super::state_api`]).
//!
//! Nothing here creates a session or reaches a worker.

use std::net::IpAddr;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};

use super::handler::{redirect, set_cookie, View};
use super::{Mount, Shared};
use bytes::Bytes;

use super::state_api::{self, Allowed};
use crate::body::{self, Body, BoxError};
use crate::config::ClientState;
use crate::error::Error;
use crate::mapper::{self, Access, Hit, Ids, Mapped};
use crate::store::Space;

/// `PREFIX/.psd/state/KEY` and `PREFIX/.psd/shared/KEY`: the values of the
/// session the client's id names (which must exist, live or dormant), and
/// the application's shared ones.
pub(super) async fn state<B>(
    shared: &Shared,
    mount: &Mount,
    request: Request<B>,
    shared_space: bool,
    key: &str,
    client: IpAddr,
    user: Option<&str>,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let location = &mount.config;
    if location.client_state == ClientState::Off {
        return Error::NotFound.to_response();
    }
    let ids = &shared.registry.ids;
    let app = mount.app.as_str();
    let mapped = session_at_root(shared, mount, &request, client, user);
    let Some((session_key, presented)) = mapped.and_then(|m| Some((m.key, m.presented?))) else {
        return Error::NotFound.to_response();
    };
    let store = &*shared.registry.store;
    // An id in use is some user's session; under AuthType, it must be this user's.
    let live = match user {
        None => ids.in_use(&presented.id),
        Some(_) => shared.registry.has(&mount.app, &session_key),
    };
    let known = live || matches!(store.session(app, &session_key).await, Ok(Some(_)));
    if !known {
        return Error::NotFound.to_response();
    }
    let (space, allowed) = if shared_space {
        (Space::Shared { app: app.into() }, Allowed::Read)
    } else {
        let writes =
            location.client_state == ClientState::Write && presented.access == Access::ReadWrite;
        (
            Space::Session {
                app: app.into(),
                key: session_key,
            },
            if writes {
                Allowed::ReadWrite
            } else {
                Allowed::Read
            },
        )
    };
    state_api::answer(
        store,
        &space,
        key,
        allowed,
        location.max_session_state,
        request,
    )
    .await
}

/// The session a request's id names, as if it were for the application's
/// root: psd's own URLs are about the id, not about a path under it.
fn session_at_root<B>(
    shared: &Shared,
    mount: &Mount,
    request: &Request<B>,
    client: IpAddr,
    user: Option<&str>,
) -> Option<Mapped> {
    let params = mapper::params(request.uri().query(), None);
    let hit = Hit {
        method: request.method(),
        uri: request.uri(),
        headers: request.headers(),
        path: "/",
        client,
        params: &params,
        user,
    };
    let scope = mapper::id_scope(mount.app.as_str(), user);
    let ids = Ids::new(&shared.registry.ids, &scope);
    mount
        .config
        .mapper
        .get_session_id_from_hit(&hit, &ids)
        .map(|m| m.for_user(user))
}

/// 404 with a sentence that says why.
fn not_found(why: &str) -> Response<Body> {
    let mut response = Response::new(body::full(format!("{why}\n")));
    *response.status_mut() = http::StatusCode::NOT_FOUND;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub(super) fn answer<B>(
    shared: &Shared,
    mount: &Mount,
    request: &Request<B>,
    under: &str,
    client: IpAddr,
    user: Option<&str>,
    view: &View,
) -> Response<Body> {
    let mapper = &*mount.config.mapper;
    let ids = &shared.registry.ids;
    let scope = mapper::id_scope(mount.app.as_str(), user);
    let app = &*scope;
    let params = mapper::params(request.uri().query(), None);
    let base = format!("{}/", view.script_name);
    match under {
        "/.psd/share" => {
            // Sharing is of the id: with `path` parts, the read-only id
            // reaches every path's session of it, as the read-write id does.
            let presented = session_at_root(shared, mount, request, client, user)
                .and_then(|mapped| mapped.presented);
            let read_only = match presented {
                Some(p) if p.access == Access::ReadOnly => return Error::ReadOnly.to_response(),
                Some(p) => ids.share(app, &p.id),
                None => None,
            };
            let Some(read_only) = read_only else {
                return not_found(
                    "Not Found: no session to share. Open the application first; \
                     this link then shares the session your browser has.",
                );
            };
            let link = match (mapper.query_name(), mapper.cookie_name()) {
                (Some(q), _) => mapper::with_param(&base, None, q, &read_only),
                (None, Some(_)) => format!("{base}.psd/join?id={read_only}"),
                (None, None) => return Error::NotFound.to_response(),
            };
            let mut response = Response::new(body::full(format!(
                "<!DOCTYPE html>\n<p>Read-only link to this session: <a href=\"{link}\">{link}</a></p>\n"
            )));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
        "/.psd/join" => {
            let token = params
                .iter()
                .find(|(k, _)| k == "id")
                .map(|(_, v)| v.as_str());
            let valid = token.and_then(|t| ids.verify(app, t));
            match (valid, mapper.cookie_name()) {
                (Some(p), Some(cookie)) if p.access == Access::ReadOnly => {
                    let mut response = redirect(&base);
                    set_cookie(&mut response, cookie, &p.token, view);
                    response
                }
                _ => Error::NotFound.to_response(),
            }
        }
        _ => Error::NotFound.to_response(),
    }
}
