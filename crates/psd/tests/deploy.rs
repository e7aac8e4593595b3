//! What an operator deploys: HTTPS (HTTP/1.1 and HTTP/2, TLS 1.2 and 1.3)
//! beside plain HTTP, virtual hosts told apart by SNI, the access log, and
//! reload on SIGHUP — with curl, certificates from `psd cert`, real workers.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn counter() -> PathBuf {
    repo().join("examples/counter-perl/counter.pl")
}

/// `psd cert --host …` into `dir`; returns (cert, key).
fn cert(dir: &Path, hosts: &[&str]) -> (PathBuf, PathBuf) {
    let mut cmd = Command::new(PSD);
    cmd.arg("cert");
    for host in hosts {
        cmd.args(["--host", host]);
    }
    let out = cmd.arg("--out").arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hint = String::from_utf8_lossy(&out.stdout);
    assert!(
        hint.contains("curl --cacert"),
        "psd cert explains how to trust it: {hint}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the key is private");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

#[test]
fn https_with_http2_and_http11_beside_plain_http_serve_one_app() {
    let certs = TempDir::new("certs");
    let (cert, key) = cert(&certs.0, &["localhost", "127.0.0.1"]);
    let (tls_port, http_port) = (free_port(), free_port());
    let d = Daemon::start_raw(&format!(
        "Listen 127.0.0.1:{tls_port} https\nListen 127.0.0.1:{http_port}\n\
         SSLCertificateFile {}\nSSLCertificateKeyFile {}\n{}",
        cert.display(),
        key.display(),
        location("/app", &counter(), "")
    ));
    let c = Client::with_jar(&d.dir, "c");
    let url = format!("https://localhost:{tls_port}/app/");
    let ca = cert.to_str().unwrap();
    let h1 = c.request(&url, &["--cacert", ca, "--http1.1"]);
    assert_eq!(
        (h1.status, h1.version.as_str()),
        (200, "HTTP/1.1"),
        "{h1:?}\n{}",
        d.log_text()
    );
    assert_eq!(h1.field("scheme").as_deref(), Some("https"));
    assert_eq!(h1.field("https").as_deref(), Some("on"));
    let cookie = h1.header("set-cookie").unwrap();
    assert!(cookie.split("; ").any(|a| a == "Secure"), "{cookie}");

    let h2 = c.request(&url, &["--cacert", ca, "--http2"]);
    assert_eq!((h2.status, h2.version.as_str()), (200, "HTTP/2"));
    assert_eq!(
        (h2.pid(), h2.count()),
        (h1.pid(), 2),
        "one session across HTTP/1.1 and HTTP/2"
    );
    for tls in [
        ["--tlsv1.2", "--tls-max", "1.2"],
        ["--tlsv1.3", "--tls-max", "1.3"],
    ] {
        let r = Client::anonymous().request(&url, &["--cacert", ca, tls[0], tls[1], tls[2]]);
        assert_eq!(r.status, 200, "{tls:?}");
    }

    let plain = Client::anonymous().get(&format!("http://127.0.0.1:{http_port}/app/"));
    assert_eq!(plain.status, 200);
    assert_eq!(
        (
            plain.field("scheme").as_deref(),
            plain.field("https").as_deref()
        ),
        (Some("http"), Some("off"))
    );
    assert!(!plain.header("set-cookie").unwrap().contains("Secure"));
}

#[test]
fn two_virtual_hosts_on_one_https_listener_are_told_apart_by_sni() {
    let (certs_a, certs_b) = (TempDir::new("cert-a"), TempDir::new("cert-b"));
    let (cert_a, key_a) = cert(&certs_a.0, &["a.test"]);
    let (cert_b, key_b) = cert(&certs_b.0, &["b.test", "*.b.test"]);
    let stdio = repo().join("examples/stdio-python/worker.py");
    let port = free_port();
    let d = Daemon::start_raw(&format!(
        "Listen 127.0.0.1:{port} https\n\
         <VirtualHost *:{port}>\n  ServerName a.test\n  SSLEngine on\n  SSLCertificateFile {}\n  SSLCertificateKeyFile {}\n{}</VirtualHost>\n\
         <VirtualHost *:{port}>\n  ServerName b.test\n  ServerAlias *.b.test\n  SSLCertificateFile {}\n  SSLCertificateKeyFile {}\n{}</VirtualHost>\n",
        cert_a.display(),
        key_a.display(),
        location("/", &counter(), ""),
        cert_b.display(),
        key_b.display(),
        location_proto("/", "stdio", &stdio, ""),
    ));
    let get = |name: &str, ca: &Path| {
        Client::anonymous().request(
            &format!("https://{name}:{port}/"),
            &[
                "--resolve",
                &format!("{name}:{port}:127.0.0.1"),
                "--cacert",
                ca.to_str().unwrap(),
            ],
        )
    };
    let a = get("a.test", &cert_a);
    assert!(
        a.body.starts_with("pid=") && a.body.contains("count=1"),
        "a.test is the FastCGI counter: {a:?}\n{}",
        d.log_text()
    );
    let b = get("b.test", &cert_b);
    assert!(
        b.body.contains("GET /"),
        "b.test is the stdio worker: {b:?}"
    );
    let alias = get("www.b.test", &cert_b);
    assert!(
        alias.body.contains("GET /"),
        "the alias reaches b.test: {alias:?}"
    );

    // Each name got its own certificate: b.test's does not verify as a.test's.
    let wrong = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--resolve",
            &format!("b.test:{port}:127.0.0.1"),
            "--cacert",
        ])
        .arg(&cert_a)
        .arg(format!("https://b.test:{port}/"))
        .status()
        .unwrap();
    assert!(!wrong.success(), "SNI chose b.test's certificate");

    // An unknown name gets the listener's default: the first virtual host.
    let other = Client::anonymous().request(
        &format!("https://c.test:{port}/"),
        &["--resolve", &format!("c.test:{port}:127.0.0.1"), "-k"],
    );
    assert!(other.body.starts_with("pid="), "{other:?}");
}

/// The fields of one Combined Log Format line plus psd's two, or `None`.
fn parse_clf(line: &str) -> Option<Vec<String>> {
    let (host, rest) = line.split_once(" - - [")?;
    let (time, rest) = rest.split_once("] \"")?;
    let (request, rest) = rest.split_once("\" ")?;
    let mut words = rest.splitn(3, ' ');
    let status = words.next()?;
    let bytes = words.next()?;
    let rest = words.next()?.strip_prefix('"')?;
    let (referer, rest) = rest.split_once("\" \"")?;
    let (agent, rest) = rest.split_once("\" ")?;
    let (session, upstream) = rest.split_once(' ')?;
    let valid = time.len() == 26
        && time.ends_with(" +0000")
        && request.split(' ').count() == 3
        && status.len() == 3
        && status.bytes().all(|b| b.is_ascii_digit())
        && (bytes == "-" || bytes.bytes().all(|b| b.is_ascii_digit()))
        && (upstream == "-" || upstream.parse::<f64>().is_ok());
    valid.then(|| {
        [
            host, time, request, status, bytes, referer, agent, session, upstream,
        ]
        .map(String::from)
        .to_vec()
    })
}

#[test]
fn access_log_lines_parse_as_combined_log_format() {
    let log = TempDir::new("access");
    let path = log.join("access.log");
    let d = Daemon::start(&format!(
        "AccessLog {}\n{}",
        path.display(),
        location("/app", &counter(), "")
    ));
    let c = Client::with_jar(&d.dir, "c");
    let first = c.request(
        &d.url("/app/x?y=1"),
        &["-H", "Referer: http://example.com/", "-A", "test-agent/1.0"],
    );
    c.get(&d.url("/app/x"));
    Client::anonymous().get(&d.url("/nowhere"));
    let session = first.field("session").unwrap();
    assert!(eventually(std::time::Duration::from_secs(5), || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .count()
            == 3
    }));
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<Vec<String>> = text
        .lines()
        .map(|l| parse_clf(l).unwrap_or_else(|| panic!("not CLF: {l}")))
        .collect();
    assert_eq!(lines[0][0], "127.0.0.1");
    assert_eq!(lines[0][2], "GET /app/x?y=1 HTTP/1.1");
    assert_eq!(lines[0][3], "200");
    assert_eq!(lines[0][4], first.body.len().to_string(), "bytes sent");
    assert_eq!(
        (lines[0][5].as_str(), lines[0][6].as_str()),
        ("http://example.com/", "test-agent/1.0")
    );
    // The session's handle: never its id, the user's credential.
    let handle = &lines[0][7];
    assert_eq!(handle.len(), 16, "{handle}");
    assert!(handle.bytes().all(|b| b.is_ascii_hexdigit()), "{handle}");
    assert!(!text.contains(&session), "the id is in the access log");
    assert!(lines[0][8].parse::<f64>().unwrap() < 5.0);
    assert_eq!(&lines[1][7], handle, "the same session");
    assert_eq!(
        (
            lines[2][3].as_str(),
            lines[2][7].as_str(),
            lines[2][8].as_str()
        ),
        ("404", "-", "-")
    );
}

#[test]
fn sighup_applies_a_new_config_and_keeps_live_sessions_and_rejects_a_broken_one() {
    let port = free_port();
    let listen = format!("Listen 127.0.0.1:{port}\n");
    let d = Daemon::start_raw(&format!("{listen}{}", location("/app", &counter(), "")));
    let old = Client::with_jar(&d.dir, "old");
    let before = old.get(&d.url("/app/"));
    assert_eq!(before.count(), 1);

    let continuity = repo().join("examples/counter-perl/continuity-counter.pl");
    let stdio = repo().join("examples/stdio-python/worker.py");
    let changed = format!(
        "{listen}{}{}",
        location("/app", &continuity, ""),
        location_proto("/new", "stdio", &stdio, "")
    );
    assert!(d.reload(&changed), "{}", d.log_text());
    let kept = old.get(&d.url("/app/"));
    assert_eq!(
        (kept.pid(), kept.count()),
        (before.pid(), 2),
        "a live session keeps its worker and state"
    );
    let fresh = Client::anonymous().get(&d.url("/app/"));
    assert!(
        fresh.body.contains("Count: 0"),
        "a new session gets the new app: {fresh:?}"
    );
    assert!(
        Client::anonymous()
            .get(&d.url("/new/"))
            .body
            .contains("GET /"),
        "a new location answers"
    );

    assert!(
        !d.reload(&format!("{listen}Bogus directive\n")),
        "a broken file is rejected"
    );
    let file = d.config_path().display().to_string();
    assert!(
        d.log_text().contains(&format!(
            "reload failed: {file}:3: unknown directive 'Bogus'"
        )),
        "{}",
        d.log_text()
    );
    assert!(
        Client::anonymous()
            .get(&d.url("/new/"))
            .body
            .contains("GET /"),
        "the running config stays"
    );
    assert_eq!(old.get(&d.url("/app/")).count(), 3);
}

#[test]
fn check_reports_each_class_of_error_with_file_and_line() {
    let dir = TempDir::new("check-classes");
    let path = dir.join("psd.conf");
    std::fs::write(
        &path,
        "Frobnicate on\nListen 127.0.0.1:9443 https\nSSLCertificateFile /nonexistent/cert.pem\n\
         SSLCertificateKeyFile /nonexistent/key.pem\n<VirtualHost *:9999>\n  ServerName x.test\n</VirtualHost>\n\
         <Location /a>\n  Worker fastcgi /bin/true\n  ServerAlias nope\n  SessionTimeout forever\n  User no-such-user-here\n</Location>\n",
    )
    .unwrap();
    let out = Command::new(PSD)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for (line, message) in [
        (1, "unknown directive 'Frobnicate'"),
        (3, "cannot read certificate /nonexistent/cert.pem"),
        (5, "<VirtualHost> has no Listen on port 9999"),
        (10, "ServerAlias is not allowed in <Location>"),
        (11, "SessionTimeout: 'forever' is not a duration"),
        (12, "User: no user 'no-such-user-here'"),
    ] {
        let expected = format!("{file}:{line}: {message}");
        assert!(
            stderr.lines().any(|l| l.starts_with(&expected)),
            "missing {expected:?} in\n{stderr}"
        );
    }
}
