//! Request paths as psd routes them: percent-decoded, dot-segments removed
//! (RFC 3986 §5.2.4), then encoded again one canonical way.
//!
//! Locations, psd's own `/.psd/` URLs and the mapper's `path` part all
//! match the normalised path, and workers receive it, so
//! `/c/%2e%2e/%2e%2e/etc/passwd` cannot climb out of a location and
//! `/c/%2e%70%73%64/share` is psd's `/.psd/share`, never the application's.
//! A NUL byte, a segment that climbs above the root, or bytes that are not
//! UTF-8 once decoded make the request a 400. This module owns only that
//! transformation; it never decides where a path leads.

use std::borrow::Cow;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

/// Bytes encoded again in a normalised path: what may not appear raw in a
/// path (RFC 3986 §3.3), and `%` itself.
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    Nul,
    AboveRoot,
    NotUtf8,
    Relative,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::Nul => "NUL byte in the path",
            PathError::AboveRoot => "path climbs above the root",
            PathError::NotUtf8 => "path is not UTF-8 once decoded",
            PathError::Relative => "path does not start with '/'",
        })
    }
}

/// A normalised path: `decoded` for matching, `encoded` for the request
/// line a worker sees.
#[derive(Debug, PartialEq, Eq)]
pub struct Normal<'a> {
    pub decoded: Cow<'a, str>,
    pub encoded: Cow<'a, str>,
}

/// Normalises an origin-form path as it came on the request line. Paths
/// with nothing to do (the usual case) are borrowed, not copied.
pub fn normalize(raw: &str) -> Result<Normal<'_>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::Relative);
    }
    if !raw.contains('%') && !has_dot_segment(raw) {
        return Ok(Normal {
            decoded: Cow::Borrowed(raw),
            encoded: Cow::Borrowed(raw),
        });
    }
    let bytes: Cow<'_, [u8]> = percent_decode_str(raw).into();
    if bytes.contains(&0) {
        return Err(PathError::Nul);
    }
    let decoded = std::str::from_utf8(&bytes).map_err(|_| PathError::NotUtf8)?;
    let decoded = remove_dot_segments(decoded)?;
    let encoded = utf8_percent_encode(&decoded, PATH).to_string();
    Ok(Normal {
        decoded: Cow::Owned(decoded),
        encoded: Cow::Owned(encoded),
    })
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

/// RFC 3986 §5.2.4 on an absolute path, except that `..` at the root is an
/// error rather than ignored: no client has a reason to send one.
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." => {
                if *segment == ".." && out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                // A final dot-segment names a directory: keep its slash.
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    Ok(format!("/{}", out.join("/")))
}

/// The rest of `path` after a `<Location>` prefix (`prefix` as taken off
/// paths: empty for `/`), as it is: empty when the path is the prefix
/// itself (CGI's `PATH_INFO`). A path outside the prefix stays whole.
pub(crate) fn after_prefix<'a>(prefix: &str, path: &'a str) -> &'a str {
    path.strip_prefix(prefix).unwrap_or(path)
}

/// The path an application sees under its prefix: `/` at least.
pub(crate) fn under<'a>(prefix: &str, path: &'a str) -> &'a str {
    match after_prefix(prefix, path) {
        "" => "/",
        under => under,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(raw: &str) -> Result<String, PathError> {
        normalize(raw).map(|n| n.decoded.into_owned())
    }

    #[test]
    fn plain_paths_are_borrowed_as_they_are() {
        let n = normalize("/app/a/b.html").unwrap();
        assert!(matches!(n.decoded, Cow::Borrowed(_)));
        assert_eq!(n.encoded, "/app/a/b.html");
    }

    #[test]
    fn dot_segments_go_encoded_or_not() {
        assert_eq!(decoded("/c/a/../b").unwrap(), "/c/b");
        assert_eq!(decoded("/c/./a/.").unwrap(), "/c/a/");
        assert_eq!(decoded("/c/a/..").unwrap(), "/c/");
        assert_eq!(decoded("/c/%2e%70%73%64/share").unwrap(), "/c/.psd/share");
        assert_eq!(decoded("/c/x/%2E%2E/y").unwrap(), "/c/y");
        assert_eq!(decoded("/c/a%2F..%2F..%2Fz").unwrap(), "/z");
        assert_eq!(decoded("/c/...").unwrap(), "/c/...");
    }

    #[test]
    fn nul_climbing_and_bad_bytes_are_refused() {
        assert_eq!(
            decoded("/c/%2e%2e/%2e%2e/etc/passwd"),
            Err(PathError::AboveRoot)
        );
        assert_eq!(decoded("/.."), Err(PathError::AboveRoot));
        assert_eq!(decoded("/c/a%00b"), Err(PathError::Nul));
        assert_eq!(decoded("/c/%ff"), Err(PathError::NotUtf8));
        assert_eq!(decoded("c"), Err(PathError::Relative));
    }

    #[test]
    fn the_encoded_form_decodes_back_to_the_decoded_one() {
        let n = normalize("/c/a%20b/%3F/%25/../d%C3%A9").unwrap();
        assert_eq!(n.decoded, "/c/a b/?/dé");
        assert_eq!(n.encoded, "/c/a%20b/%3F/d%C3%A9");
        let again: Vec<u8> = percent_decode_str(&n.encoded).collect();
        assert_eq!(again, n.decoded.as_bytes());
    }
}

#[cfg(test)]
mod fuzz {
    //! Path normalisation fed hostile paths. A long run:
    //! `PROPTEST_CASES=1000000 cargo test -p psd --release fuzz_`.
    use super::*;
    use proptest::prelude::*;

    fn hostile_path() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            Just("..".to_string()),
            Just(".".to_string()),
            Just("%2e%2e".to_string()),
            Just("%2E".to_string()),
            Just("%2f".to_string()),
            Just("%00".to_string()),
            Just("%".to_string()),
            Just(".psd".to_string()),
            Just("%2e%70%73%64".to_string()),
            Just("".to_string()),
            "[a-zA-Z0-9%._~-]{0,8}",
        ];
        proptest::collection::vec(segment, 0..12).prop_map(|s| format!("/{}", s.join("/")))
    }

    proptest! {
        #[test]
        fn fuzz_normalised_paths_never_climb_and_are_canonical(raw in hostile_path()) {
            let Ok(n) = normalize(&raw) else { return Ok(()) };
            prop_assert!(n.decoded.starts_with('/'));
            prop_assert!(!n.decoded.contains('\0'));
            prop_assert!(!n.decoded.split('/').any(|s| s == "." || s == ".."));
            let again: Vec<u8> = percent_decode_str(&n.encoded).collect();
            prop_assert_eq!(again, n.decoded.as_bytes().to_vec());
            let twice = normalize(&n.encoded).unwrap();
            prop_assert_eq!(twice.decoded, n.decoded.clone());
        }

        #[test]
        fn fuzz_normalize_never_panics(raw in any::<String>()) {
            let _ = normalize(&raw);
        }
    }
}
