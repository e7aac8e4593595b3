//! `DocumentRoot`: which script a request runs on a script-per-file FastCGI
//! server (php-cgi), and what follows it.
//!
//! As Apache does, the path under the `<Location>` is walked segment by
//! segment under the document root until a segment names a regular file:
//! that file is the script (`SCRIPT_FILENAME`, its path `SCRIPT_NAME`), the
//! rest of the path is `PATH_INFO` — what nginx's `fastcgi_split_path_info`
//! makes of `/cart.php/items`. A path that ends on a directory runs its
//! `DirectoryIndex`. Nothing outside the root is ever named: `.` and `..`
//! segments (encoded or not) and NUL bytes are refused, and a script that
//! resolves (through symlinks) outside the root is too.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The script a request runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Script {
    /// Its path under the root, from `/` (decoded).
    pub name: String,
    pub filename: PathBuf,
    /// What follows the script in the path (decoded), possibly empty.
    pub path_info: Vec<u8>,
}

/// The script `under` (the request path under the `<Location>`, as sent)
/// names below `root` (canonical), or `None` (404).
pub(crate) fn find(root: &Path, index: &[String], under: &str) -> Option<Script> {
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(under).collect();
    if decoded.contains(&0) {
        return None;
    }
    let mut path = root.to_path_buf();
    let mut end = 0;
    while end < decoded.len() {
        // One segment: from after this `/` to the next.
        let start = end + 1;
        let stop = decoded[start..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(decoded.len(), |i| start + i);
        let segment = &decoded[start..stop];
        end = stop;
        match segment {
            b"" => continue,
            b"." | b".." => return None,
            _ => {}
        }
        path.push(OsStr::from_bytes(segment));
        let meta = std::fs::metadata(&path).ok()?;
        if meta.is_file() {
            return within(root, path, &decoded[..stop], decoded[stop..].to_vec());
        }
        if !meta.is_dir() {
            return None;
        }
    }
    let dir = decoded.strip_suffix(b"/").unwrap_or(&decoded);
    index.iter().find_map(|file| {
        let candidate = path.join(file);
        if !candidate.is_file() {
            return None;
        }
        let name = [dir, b"/", file.as_bytes()].concat();
        within(root, candidate, &name, vec![])
    })
}

/// The script, if `filename` really is under `root`.
fn within(root: &Path, filename: PathBuf, name: &[u8], path_info: Vec<u8>) -> Option<Script> {
    let real = filename.canonicalize().ok()?;
    if !real.starts_with(root) {
        return None;
    }
    let name = String::from_utf8_lossy(name);
    Some(Script {
        name: match name.starts_with('/') {
            true => name.into_owned(),
            false => format!("/{name}"),
        },
        filename,
        path_info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("psd-script-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root/shop")).unwrap();
        std::fs::write(dir.join("root/index.php"), "").unwrap();
        std::fs::write(dir.join("root/shop/cart.php"), "").unwrap();
        std::fs::write(dir.join("root/shop/index.html"), "").unwrap();
        std::fs::write(dir.join("secret.php"), "").unwrap();
        std::os::unix::fs::symlink(dir.join("secret.php"), dir.join("root/out.php")).unwrap();
        dir.join("root").canonicalize().unwrap()
    }

    #[test]
    fn paths_split_into_script_and_path_info_and_never_leave_the_root() {
        let root = tree();
        let index = ["index.php".to_string(), "index.html".to_string()];
        let find = |under: &str| {
            find(&root, &index, under).map(|s| {
                let file = s
                    .filename
                    .strip_prefix(&root)
                    .unwrap()
                    .display()
                    .to_string();
                (s.name, file, String::from_utf8(s.path_info).unwrap())
            })
        };
        let found =
            |name: &str, file: &str, info: &str| Some((name.into(), file.into(), info.into()));
        assert_eq!(
            find("/shop/cart.php"),
            found("/shop/cart.php", "shop/cart.php", "")
        );
        assert_eq!(
            find("/shop/cart.php/items/3/"),
            found("/shop/cart.php", "shop/cart.php", "/items/3/")
        );
        assert_eq!(find("/"), found("/index.php", "index.php", ""));
        assert_eq!(find(""), found("/index.php", "index.php", ""));
        assert_eq!(
            find("/shop/"),
            found("/shop/index.html", "shop/index.html", "")
        );
        assert_eq!(
            find("/shop"),
            found("/shop/index.html", "shop/index.html", "")
        );
        assert_eq!(
            find("/sh%6fp/cart.php"),
            found("/shop/cart.php", "shop/cart.php", "")
        );
        for refused in [
            "/nothing.php",
            "/shop/nothing/x",
            "/../secret.php",
            "/shop/../../secret.php",
            "/%2e%2e/secret.php",
            "/shop/%2E%2E/index.php",
            "/./index.php",
            "/out.php",
            "/index.php%00.txt",
        ] {
            assert_eq!(find(refused), None, "{refused}");
        }
        std::fs::remove_dir_all(root.parent().unwrap()).unwrap();
    }
}
