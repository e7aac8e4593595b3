//! CGI/1.1 (RFC 3875) in both directions: the meta-variables a request
//! becomes, and the response head (`Status:`, `Location:`, headers) a worker
//! writes back. Pure functions over bytes; no I/O.

use std::os::unix::ffi::OsStrExt;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::RequestMeta;
use crate::config::strip_port;

/// The largest response head psd accepts from a worker.
pub const MAX_HEAD_LEN: usize = 64 * 1024;

/// The meta-variables of one request, encoded as FastCGI name-value pairs
/// (the body of its PARAMS stream), straight into one buffer.
/// `worker` adds what belongs to the worker rather than the request (its
/// state API URLs): FastCGI libraries replace the process environment with
/// each request's variables, so these must come with every request.
pub fn params(parts: &Parts, meta: &RequestMeta, worker: &[(&str, std::sync::Arc<str>)]) -> Bytes {
    let path = parts.uri.path();
    let path_info = crate::path::after_prefix(&meta.prefix, path);
    let path_info: Vec<u8> = percent_encoding::percent_decode_str(path_info).collect();
    let request_uri = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or(path);
    let server_name = meta
        .host
        .as_deref()
        .or(meta.server_name.as_deref())
        .map(|h| strip_port(h).to_string())
        .unwrap_or_else(|| meta.local.ip().to_string());
    let server_port = meta
        .host
        .as_deref()
        .and_then(|h| h.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(meta.local.port());
    let scheme: &[u8] = if meta.https { b"https" } else { b"http" };

    let mut out = BytesMut::with_capacity(1024);
    let mut put =
        |name: &str, value: &[u8]| psd_fcgi::encode_name_value(&mut out, name.as_bytes(), value);
    put("GATEWAY_INTERFACE", b"CGI/1.1");
    put(
        "SERVER_SOFTWARE",
        concat!("psd/", env!("CARGO_PKG_VERSION")).as_bytes(),
    );
    put("SERVER_PROTOCOL", version(parts.version).as_bytes());
    put("SERVER_NAME", server_name.as_bytes());
    put("SERVER_ADDR", meta.local.ip().to_string().as_bytes());
    put("SERVER_PORT", server_port.to_string().as_bytes());
    put("REMOTE_ADDR", meta.client.to_string().as_bytes());
    if let Some(port) = meta.client_port {
        put("REMOTE_PORT", port.to_string().as_bytes());
    }
    put("REQUEST_SCHEME", scheme);
    if meta.https {
        put("HTTPS", b"on");
    }
    put("REQUEST_METHOD", parts.method.as_str().as_bytes());
    put("REQUEST_URI", request_uri.as_bytes());
    put("QUERY_STRING", parts.uri.query().unwrap_or("").as_bytes());
    match &meta.script {
        // `DocumentRoot`: the script the path names, and what follows it.
        Some(script) => {
            let filename = script.filename.as_os_str().as_bytes();
            put(
                "SCRIPT_NAME",
                format!("{}{}", meta.script_name, script.name).as_bytes(),
            );
            put("PATH_INFO", &script.path_info);
            if !script.path_info.is_empty() {
                put(
                    "PATH_TRANSLATED",
                    &[meta.document_root.as_bytes(), &script.path_info].concat(),
                );
            }
            put("SCRIPT_FILENAME", filename);
            put("DOCUMENT_ROOT", meta.document_root.as_bytes());
            // php-cgi's cgi.force_redirect runs nothing without it.
            put("REDIRECT_STATUS", b"200");
        }
        None => {
            put("SCRIPT_NAME", meta.script_name.as_bytes());
            put("PATH_INFO", &path_info);
            put("SCRIPT_FILENAME", meta.script_filename.as_bytes());
            put("DOCUMENT_ROOT", meta.document_root.as_bytes());
        }
    }
    put("PSD_SESSION_ID", meta.session_id.as_bytes());
    if let Some(user) = meta.user.as_deref() {
        put("REMOTE_USER", user.as_bytes());
    }
    put("PSD_APP", meta.app.as_bytes());
    put("PSD_ACCESS", meta.access.as_str().as_bytes());
    if let Some(param) = &meta.session_param {
        put("PSD_SESSION_PARAM", param.as_bytes());
    }
    for (name, value) in worker {
        put(name, value.as_bytes());
    }
    if let Some(v) = parts.headers.get(CONTENT_TYPE) {
        put("CONTENT_TYPE", v.as_bytes());
    }
    if let Some(v) = parts.headers.get(CONTENT_LENGTH) {
        put("CONTENT_LENGTH", v.as_bytes());
    }
    let mut var = String::with_capacity(64);
    for name in parts.headers.keys() {
        // CONTENT_* are above; HTTP_PROXY would let a client set a worker's
        // outbound proxy ("httpoxy"), so it is never passed.
        if name == CONTENT_TYPE || name == CONTENT_LENGTH || name.as_str() == "proxy" {
            continue;
        }
        let separator: &[u8] = if name == http::header::COOKIE {
            b"; "
        } else {
            b", "
        };
        var.clear();
        var.push_str("HTTP_");
        var.extend(name.as_str().chars().map(|c| match c {
            '-' => '_',
            c => c.to_ascii_uppercase(),
        }));
        let mut values = parts.headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(only), None) => put(&var, only.as_bytes()),
            _ => {
                let mut joined = Vec::new();
                for (i, v) in parts.headers.get_all(name).iter().enumerate() {
                    if i > 0 {
                        joined.extend_from_slice(separator);
                    }
                    joined.extend_from_slice(v.as_bytes());
                }
                put(&var, &joined);
            }
        }
    }
    out.freeze()
}

fn version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    }
}

/// Where the head ends: (length of the head, offset where the body starts).
/// Accepts `\r\n\r\n` and the bare `\n\n` that many CGI scripts write.
pub fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(pos) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + pos;
        let rest = &buf[nl + 1..];
        if rest.starts_with(b"\n") {
            return Some((nl, nl + 2));
        }
        if rest.starts_with(b"\r\n") {
            return Some((nl, nl + 3));
        }
        i = nl + 1;
    }
    None
}

/// A parsed CGI response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// Parses the header lines of a CGI response. `Status:` sets the status;
/// `Location:` without `Status:` means 302; hop-by-hop headers are dropped.
pub fn parse_head(head: &[u8]) -> Result<Head, String> {
    let mut status = None;
    let mut headers = HeaderMap::new();
    for raw in head.split(|&b| b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        let colon = line.iter().position(|&b| b == b':').ok_or_else(|| {
            format!(
                "header line without ':': {:?}",
                String::from_utf8_lossy(line)
            )
        })?;
        let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| {
            format!(
                "invalid header name {:?}",
                String::from_utf8_lossy(&line[..colon])
            )
        })?;
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii())
            .map_err(|_| format!("invalid value for header {name}"))?;
        match name.as_str() {
            "status" => {
                // `Status: 404 Not Found`: three digits, then a space or nothing;
                // only codes a client can be sent as a final answer.
                let text = value.as_bytes();
                let code = text
                    .split(|&b| b == b' ')
                    .next()
                    .filter(|c| c.len() == 3)
                    .and_then(|c| StatusCode::from_bytes(c).ok())
                    .filter(|&c| crate::body::final_status(c))
                    .ok_or_else(|| format!("invalid Status: {:?}", value))?;
                status = Some(code);
            }
            hop if super::upstream::is_hop_by_hop(hop) => {}
            _ => {
                headers.append(name, value);
            }
        }
    }
    let status = status.unwrap_or(if headers.contains_key(http::header::LOCATION) {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    Ok(Head { status, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_handles_both_line_endings() {
        assert_eq!(head_end(b"A: b\r\n\r\nbody"), Some((5, 8)));
        assert_eq!(head_end(b"A: b\n\nbody"), Some((4, 6)));
        assert_eq!(head_end(b"A: b\r\nC: d\r\n"), None);
        assert_eq!(head_end(b"\r\n\r\n"), Some((1, 4)));
    }

    #[test]
    fn status_location_and_hop_by_hop() {
        let head = parse_head(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nConnection: close\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2").unwrap();
        assert_eq!(head.status, StatusCode::NOT_FOUND);
        assert!(!head.headers.contains_key("connection"));
        assert_eq!(head.headers.get_all("set-cookie").iter().count(), 2);
        let redirect = parse_head(b"Location: http://x/").unwrap();
        assert_eq!(redirect.status, StatusCode::FOUND);
        assert!(parse_head(b"garbage").is_err());
        for bad in ["abc", "999", "2000 OK", "100 Continue", "42"] {
            assert!(
                parse_head(format!("Status: {bad}").as_bytes()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn ports_are_stripped_from_host_names() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }

    mod fuzz {
        //! The CGI response head of a hostile worker. A long run:
        //! `PROPTEST_CASES=1000000 cargo test -p psd --release fuzz_`.
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn fuzz_cgi_heads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
                if let Some((len, start)) = head_end(&bytes) {
                    prop_assert!(len <= start && start <= bytes.len());
                    if let Ok(head) = parse_head(&bytes[..len]) {
                        prop_assert!((200..=599).contains(&head.status.as_u16()));
                    }
                }
                let _ = parse_head(&bytes);
            }

            #[test]
            fn fuzz_cgi_header_lines_never_panic(lines in proptest::collection::vec(
                prop_oneof![
                    "Status: [0-9]{0,4}[ a-zA-Z]{0,8}",
                    "Content-Length: [0-9, ]{0,8}",
                    "Location: [ -~]{0,20}",
                    "[A-Za-z-]{1,10}: [ -~]{0,20}",
                    "[ -~]{0,20}",
                ], 0..8)) {
                let _ = parse_head(lines.join("\r\n").as_bytes());
            }
        }
    }
}
