//! Access control against a running psd: `AuthType Basic` with htpasswd
//! files made by Apache's own `htpasswd`, `Require`, the limit on failed
//! logins, and sessions that belong to their user. Clients are curl; the
//! worker is the Perl FastCGI counter (it prints `user=$REMOTE_USER`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn counter() -> String {
    repo()
        .join("examples/counter-perl/counter.pl")
        .display()
        .to_string()
}

/// psd with the counter at /counter behind `auth` (directives).
fn start(auth: &str) -> Daemon {
    Daemon::start(&format!(
        "<Location /counter>\n  Worker fastcgi {}\n{auth}</Location>\n",
        counter()
    ))
}

fn users_file(daemon_dir: &TempDir) -> std::path::PathBuf {
    let file = daemon_dir.join("users");
    htpasswd(&file, "-B", "ann", "ann-pw");
    htpasswd(&file, "-5", "bob", "bob-pw");
    htpasswd(&file, "-2", "cy", "cy-pw");
    htpasswd(&file, "-m", "dee", "dee-pw");
    htpasswd(&file, "-B", "eve", "eve-pw");
    file
}

fn as_user(user: &str, password: &str) -> [String; 2] {
    ["-u".into(), format!("{user}:{password}")]
}

/// Counter workers psd has started (its children running counter.pl).
fn workers(daemon: &Daemon) -> usize {
    let out = Command::new("pgrep")
        .args(["-f", "-P", &daemon.pid().to_string(), "counter.pl"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn basic_auth_comes_before_any_session_and_accepts_each_hash_format() {
    let dir = TempDir::new("auth");
    let file = users_file(&dir);
    let d = start(&format!(
        "  AuthType Basic\n  AuthName \"Team counter\"\n  AuthUserFile {}\n  Require user ann bob cy dee\n",
        file.display()
    ));
    let url = d.url("/counter/");
    // No credentials, a wrong password, an unknown user: 401 and a challenge.
    let anonymous = Client::anonymous().get(&url);
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert_eq!(
        anonymous.header("www-authenticate"),
        Some("Basic realm=\"Team counter\", charset=\"UTF-8\"")
    );
    assert!(anonymous.header("set-cookie").is_none(), "no session");
    for (user, password) in [("ann", "wrong"), ("nobody", "ann-pw"), ("ann", "")] {
        let r = Client::anonymous().request(
            &url,
            &as_user(user, password).each_ref().map(String::as_str),
        );
        assert_eq!(r.status, 401, "{user}:{password}");
    }
    assert_eq!(
        workers(&d),
        0,
        "an unauthenticated client never causes a spawn"
    );

    // Each hash format; the worker learns the user, never the password.
    for user in ["ann", "bob", "cy", "dee"] {
        let password = format!("{user}-pw");
        let c = Client::with_jar(&d.dir, user);
        let r = c.request(
            &url,
            &as_user(user, &password).each_ref().map(String::as_str),
        );
        assert_eq!(r.status, 200, "{user}: {r:?}");
        assert_eq!(r.field("user").as_deref(), Some(user));
        assert_eq!(
            r.field("authorization").as_deref(),
            Some("-"),
            "the password reached the worker"
        );
        let again = c.request(
            &url,
            &as_user(user, &password).each_ref().map(String::as_str),
        );
        assert_eq!(
            (again.count(), again.pid()),
            (2, r.pid()),
            "{user}: the same session"
        );
    }
    // A valid user that Require does not name: 403, no session.
    let eve = Client::anonymous().request(
        &url,
        &as_user("eve", "eve-pw").each_ref().map(String::as_str),
    );
    assert_eq!(eve.status, 403, "{eve:?}");
    assert_eq!(workers(&d), 4);
    // psd's own URLs are behind the gate too.
    assert_eq!(
        Client::anonymous()
            .get(&d.url("/counter/.psd/share"))
            .status,
        401
    );
}

#[test]
fn failed_logins_are_limited_per_address_and_others_still_get_in() {
    let dir = TempDir::new("auth-limit");
    let file = users_file(&dir);
    let d = start(&format!(
        "  AuthType Basic\n  AuthUserFile {}\n  Require valid-user\n",
        file.display()
    ));
    let url = d.url("/counter/");
    // 200 wrong passwords from 127.0.0.1, in one curl.
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "%{http_code}\\n", "-u", "ann:guess"]);
    for _ in 0..200 {
        cmd.args(["-o", "/dev/null", &url]);
    }
    let out = cmd.output().unwrap();
    let codes: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(codes.len(), 200);
    let unauthorized = codes.iter().filter(|c| *c == "401").count();
    let throttled = codes.iter().filter(|c| *c == "429").count();
    assert_eq!((unauthorized, throttled), (10, 190), "{codes:?}");
    assert!(codes[..10].iter().all(|c| c == "401"));
    // While throttled, even the right password from that address waits.
    let r = Client::anonymous().request(&url, &["-u", "ann:ann-pw"]);
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Another address is not held back.
    let other =
        Client::anonymous().request(&url, &["-u", "ann:ann-pw", "--interface", "127.0.0.2"]);
    assert_eq!(other.status, 200, "{other:?}");
    assert_eq!(other.field("user").as_deref(), Some("ann"));
    assert!(
        d.log_text().contains("authentication failed"),
        "failures are logged"
    );
}

#[test]
fn a_session_belongs_to_its_user() {
    let dir = TempDir::new("auth-owner");
    let file = users_file(&dir);
    let admin = free_port();
    let d = Daemon::start(&format!(
        "AdminListen 127.0.0.1:{admin}\n<Location /counter>\n  Worker fastcgi {}\n  AuthType Basic\n  AuthUserFile {}\n  Require valid-user\n</Location>\n",
        counter(),
        file.display()
    ));
    let url = d.url("/counter/");
    let ann = Client::with_jar(&d.dir, "ann");
    let first = ann.request(&url, &["-u", "ann:ann-pw"]);
    let second = ann.request(&url, &["-u", "ann:ann-pw"]);
    assert_eq!((first.count(), second.count()), (1, 2));
    let ann_id = first.field("session").unwrap();

    // Bob presents Ann's session cookie with his own credentials.
    let cookie = format!("Cookie: psd_sid={ann_id}");
    let bob = Client::anonymous().request(&url, &["-u", "bob:bob-pw", "-H", &cookie]);
    assert_eq!(bob.status, 200);
    assert_eq!(bob.field("user").as_deref(), Some("bob"));
    assert_eq!(bob.count(), 1, "a session of Bob's own: {bob:?}");
    assert_ne!(bob.pid(), first.pid());
    let bob_id = bob.field("session").unwrap();
    assert_ne!(bob_id, ann_id, "the old id is not reused");
    assert!(bob.header("set-cookie").unwrap().contains(&bob_id));
    // Ann's session is untouched.
    let third = ann.request(&url, &["-u", "ann:ann-pw"]);
    assert_eq!((third.count(), third.pid()), (3, first.pid()));
    // The admin API says whose each session is.
    let out = Command::new(PSD)
        .args(["sessions", "--json", "-c"])
        .arg(d.config_path())
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut users: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["user"].as_str().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, ["ann", "bob"], "{list}");
}

#[test]
fn require_ip_admits_an_address_without_credentials() {
    let dir = TempDir::new("auth-ip");
    let file = users_file(&dir);
    let d = start(&format!(
        "  AuthType Basic\n  AuthUserFile {}\n  Require ip 127.0.0.2/32\n  Require valid-user\n",
        file.display()
    ));
    let url = d.url("/counter/");
    let inside = Client::anonymous().request(&url, &["--interface", "127.0.0.2"]);
    assert_eq!(inside.status, 200, "{inside:?}");
    assert_eq!(inside.field("user").as_deref(), Some("-"));
    assert_eq!(Client::anonymous().get(&url).status, 401);
    // Only an address range: everyone else is turned away.
    let d = start("  Require ip 127.0.0.2\n");
    assert_eq!(Client::anonymous().get(&d.url("/counter/")).status, 403);
    let inside = Client::anonymous().request(&d.url("/counter/"), &["--interface", "127.0.0.2"]);
    assert_eq!(inside.status, 200);
}

#[test]
fn the_user_file_is_read_again_when_it_changes() {
    let dir = TempDir::new("auth-reload");
    let file = users_file(&dir);
    let d = start(&format!(
        "  AuthType Basic\n  AuthUserFile {}\n  Require valid-user\n",
        file.display()
    ));
    let url = d.url("/counter/");
    assert_eq!(
        Client::anonymous()
            .request(&url, &["-u", "fay:fay-pw"])
            .status,
        401
    );
    htpasswd(&file, "-B", "fay", "fay-pw");
    // psd looks at the file at most once a second (and each wrong try counts
    // against this address: ask once, after that).
    std::thread::sleep(Duration::from_millis(1500));
    let r = Client::anonymous().request(&url, &["-u", "fay:fay-pw"]);
    assert_eq!(r.status, 200, "{}", d.log_text());
    // A broken version is logged; the last good one stays.
    std::fs::write(&file, "fay:plaintext\n").unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        Client::anonymous()
            .request(&url, &["-u", "fay:fay-pw"])
            .status,
        200
    );
    assert!(
        d.log_text().contains("the last good version stays"),
        "{}",
        d.log_text()
    );
}

#[test]
fn psd_check_refuses_plaintext_and_weak_htpasswd_lines_and_half_configurations() {
    let dir = TempDir::new("auth-check");
    let file = dir.join("users");
    htpasswd(&file, "-B", "ann", "ann-pw");
    htpasswd(&file, "-p", "plain", "secret");
    htpasswd(&file, "-s", "sha", "secret");
    let config = dir.join("psd.conf");
    std::fs::write(
        &config,
        format!(
            "<Location /a>\n  Worker fastcgi {c}\n  AuthType Basic\n  AuthUserFile users\n  Require valid-user\n</Location>\n\
             <Location /b>\n  Worker fastcgi {c}\n  Require valid-user\n</Location>\n\
             <Location /c>\n  Worker fastcgi {c}\n  AuthType Basic\n  Require user ann\n</Location>\n",
            c = counter()
        ),
    )
    .unwrap();
    let out = Command::new(PSD)
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let users = file.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{users}:2: user 'plain': not a password hash psd accepts (a plaintext password?)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{users}:3: user 'sha': unsalted SHA-1")),
        "{stderr}"
    );
    assert!(
        stderr.contains("<Location /b>: Require valid-user / user needs AuthType Basic"),
        "{stderr}"
    );
    assert!(
        stderr.contains("<Location /c>: AuthType Basic needs AuthUserFile"),
        "{stderr}"
    );
}

/// The test suite's own forward-auth server, on a free port.
struct ForwardAuth {
    child: std::process::Child,
    port: u16,
}

impl ForwardAuth {
    fn start() -> ForwardAuth {
        let port = free_port();
        let child = Command::new("python3")
            .arg(test_worker("forward_auth.py"))
            .arg(port.to_string())
            .spawn()
            .unwrap();
        assert!(eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }));
        ForwardAuth { child, port }
    }
}

impl Drop for ForwardAuth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn forward_auth_allows_denies_and_redirects_before_any_session() {
    let sso = ForwardAuth::start();
    let d = start(&format!(
        "  AuthForward http://127.0.0.1:{}/verify X-Remote-Groups\n",
        sso.port
    ));
    let url = d.url("/counter/page?x=1");
    // No token: the SSO's redirect to its login page, as it sent it.
    let redirect = Client::anonymous().get(&url);
    assert_eq!(redirect.status, 302, "{redirect:?}");
    assert_eq!(
        redirect.header("location"),
        Some("http://sso.example/login?rd=%2Fcounter%2Fpage%3Fx%3D1")
    );
    assert_eq!(redirect.body, "log in first\n");
    assert_eq!(
        redirect.header("x-seen"),
        Some("GET GET /counter/page?x=1 0")
    );
    // A bad token: its 401 and challenge.
    let denied = Client::anonymous().request(&url, &["-H", "X-Token: bad"]);
    assert_eq!(denied.status, 401);
    assert_eq!(
        denied.header("www-authenticate"),
        Some("Bearer realm=\"sso\"")
    );
    // The SSO is asked with the request's method, never its body.
    let posted = Client::anonymous().request(&url, &["-H", "X-Token: bad", "-d", "secret=1"]);
    assert_eq!(
        posted.header("x-seen"),
        Some("POST POST /counter/page?x=1 0")
    );
    assert_eq!(workers(&d), 0, "nobody got in: no worker");

    // A good one: through, as the user the SSO named, with its groups; the
    // client's own X-Remote-Groups is not believed. The SSO saw the request's
    // method and URI, and no body.
    let c = Client::with_jar(&d.dir, "ann");
    let ok = c.request(
        &url,
        &[
            "-H",
            "X-Token: good",
            "-H",
            "X-Remote-Groups: root",
            "-d",
            "a=1",
        ],
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.field("user").as_deref(), Some("ann"));
    assert_eq!(
        ok.field("body").as_deref(),
        Some("3"),
        "the worker still gets the body"
    );
    assert_eq!(c.request(&url, &["-H", "X-Token: good"]).count(), 2);
    assert_eq!(workers(&d), 1);
}

#[test]
fn forward_auth_headers_reach_an_http_worker_and_a_dead_sso_is_502() {
    let sso = ForwardAuth::start();
    let d = Daemon::start(&format!(
        "<Location /app>\n  Worker http python3 {}\n  AuthForward http://127.0.0.1:{}/verify X-Remote-Groups\n</Location>\n",
        repo().join("examples/http-python/app.py").display(),
        sso.port
    ));
    let r = Client::anonymous().request(
        &d.url("/app/headers"),
        &["-H", "X-Token: good", "-H", "X-Remote-User: mallory"],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.field("user").as_deref(),
        Some("ann"),
        "not the client's own X-Remote-User"
    );
    assert_eq!(r.field("groups").as_deref(), Some("admins"));
    drop(sso);
    let r = Client::anonymous().request(&d.url("/app/"), &["-H", "X-Token: good"]);
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("authentication service"), "{r:?}");
}

#[test]
fn a_stdio_worker_gets_the_user_in_its_request() {
    let dir = TempDir::new("auth-stdio");
    let file = users_file(&dir);
    let d = Daemon::start(&format!(
        "<Location /s>\n  Worker stdio python3 {}\n  AuthType Basic\n  AuthUserFile {}\n  Require valid-user\n</Location>\n",
        test_worker("stdio-test.py").display(),
        file.display()
    ));
    let r = Client::anonymous().request(&d.url("/s/"), &["-u", "cy:cy-pw"]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.field("user").as_deref(), Some("cy"));
}
