//! The front-end recipes of `examples/deploy`: nginx end to end (client →
//! nginx with TLS → two psd nodes → worker), Apache and HAProxy through their
//! own configuration checks.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

fn recipe(name: &str) -> std::path::PathBuf {
    repo().join("examples/deploy").join(name)
}

/// A psd node behind the proxy, serving the standard-library http app.
fn node(name: &str, port: u16) -> Daemon {
    Daemon::start_raw(&format!(
        "Listen 127.0.0.1:{port}\nNodeName {name}\nTrustedProxy 127.0.0.1\n{}",
        location_proto(
            "/app",
            "http",
            &repo().join("examples/http-python/app.py"),
            ""
        )
    ))
}

/// nginx in the foreground; stopped on drop.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers, then itself. A SIGKILL to
        // the master alone left its workers running, still listening.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let stopped = eventually(Duration::from_secs(10), || {
            matches!(self.0.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn nginx(dir: &Path, conf: &str, port: u16) -> Nginx {
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("/usr/sbin/nginx")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(format!("{}/", dir.display()))
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nginx is installed by scripts/install-test-deps.sh");
    let nginx = Nginx(child);
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "nginx did not start: {}",
        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
    );
    nginx
}

#[test]
fn the_nginx_recipe_keeps_sessions_on_their_node_with_prefix_and_scheme_right() {
    let dir = TempDir::new("nginx");
    let out = Command::new(PSD)
        .args(["cert", "--host", "localhost", "--out"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(out.status.success());
    let (front, port_a, port_b) = (free_port(), free_port(), free_port());
    let (a, b) = (node("node-a", port_a), node("node-b", port_b));
    let conf = std::fs::read_to_string(recipe("nginx.conf"))
        .unwrap()
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{port_a}"))
        .replace("127.0.0.1:8082", &format!("127.0.0.1:{port_b}"))
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{front}"));
    let _nginx = nginx(&dir.0, &conf, front);
    let ca = dir.join("cert.pem");
    let url = |path: &str| format!("https://localhost:{front}{path}");

    let mut nodes = std::collections::HashSet::new();
    for i in 0..12 {
        let c = Client::with_jar(&dir, &format!("client{i}"));
        let agent = format!("client-{i}");
        let get = |path: &str| {
            c.request(
                &url(path),
                &["--cacert", ca.to_str().unwrap(), "-A", &agent],
            )
        };
        let first = get("/outer/app/");
        assert_eq!(
            first.status,
            200,
            "{first:?}\n{}\n{}",
            a.log_text(),
            b.log_text()
        );
        let cookie = first.header("set-cookie").unwrap().to_string();
        assert!(
            cookie.contains("Path=/outer/app;") && cookie.contains("Secure"),
            "{cookie}"
        );
        let session = first.field("session").unwrap();
        nodes.insert(session.split('.').next().unwrap().to_string());
        let second = get("/outer/app/x");
        assert_eq!(
            (second.pid(), second.count()),
            (first.pid(), 2),
            "the session stays on its node"
        );
        assert_eq!(second.field("path").as_deref(), Some("/x"));
        assert_eq!(second.field("prefix").as_deref(), Some("/outer/app"));
        assert_eq!(second.field("proto").as_deref(), Some("https"));
        assert_eq!(second.field("host"), Some(format!("localhost:{front}")));
        if i == 0 {
            let redirect = get("/outer/app/redirect");
            assert_eq!(redirect.status, 302);
            assert_eq!(
                redirect.header("location"),
                Some("/outer/app/done"),
                "prefix right in the worker's redirect"
            );
        }
    }
    assert_eq!(nodes.len(), 2, "sessions spread over both nodes: {nodes:?}");
}

#[test]
fn the_apache_recipe_passes_apachectl_configtest() {
    let out = Command::new("/usr/sbin/apache2ctl")
        .args(["-t", "-f"])
        .arg(recipe("apache.conf"))
        .output()
        .expect("apache2 is installed by scripts/install-test-deps.sh");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("Syntax OK"), "{text}");
}

#[test]
fn the_haproxy_recipe_passes_haproxy_check() {
    let out = Command::new("/usr/sbin/haproxy")
        .args(["-c", "-f"])
        .arg(recipe("haproxy.cfg"))
        .output()
        .expect("haproxy is installed by scripts/install-test-deps.sh");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
