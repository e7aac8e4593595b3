//! The login example (examples/login): an application that logs its users
//! in itself, and the three client scripts that use it from outside a
//! browser (curl with a cookie jar, Perl's LWP with HTTP::Cookies, Python's
//! requests.Session), run against a real psd.

mod common;

use std::process::Command;

use common::*;

/// psd serving examples/login at /app, with a user file made by htpasswd.
fn start() -> Daemon {
    let dir = TempDir::new("login-users");
    let users = dir.0.join("users.htpasswd");
    htpasswd(&users, "-B", "ann", "ann-pw");
    // The daemon's own folder outlives this one: keep the file there.
    let d = Daemon::start(&format!(
        "<Location /app>\n  Worker fastcgi {}\n  SetEnv LOGIN_USERS {}\n</Location>\n",
        repo().join("examples/login/login.pl").display(),
        std::path::Path::new("users.htpasswd").display()
    ));
    std::fs::copy(&users, d.dir.join("users.htpasswd")).unwrap();
    d
}

fn run(program: &str, args: &[&str]) -> String {
    let script = repo().join("examples/login/clients").join(program);
    let out = Command::new(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_three_client_scripts_log_in_count_and_log_out() {
    let d = start();
    let base = d.url("/app");
    for script in ["login.sh", "login.pl", "login.py"] {
        let out = run(script, &[&base, "ann", "ann-pw"]);
        assert_eq!(
            out, "logged in as ann\ncount=1\ncount=2\ncount=3\nlogged out\nthe session is gone\n",
            "{script}"
        );
    }
    assert!(d.log_text().contains("the worker ended its session"));
}

#[test]
fn a_wrong_password_gets_the_form_again_and_logout_ends_the_session() {
    let d = start();
    let c = Client::with_jar(&d.dir, "c");
    let form = c.get(&d.url("/app/"));
    assert!(form.body.contains("login form"), "{form:?}");
    let wrong = c.request(&d.url("/app/login"), &["-d", "user=ann&password=nope"]);
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("Wrong user name or password"));
    let right = c.request(&d.url("/app/login"), &["-d", "user=ann&password=ann-pw"]);
    assert_eq!(right.status, 303);
    let page = c.get(&d.url("/app/"));
    assert_eq!(page.field("user").as_deref(), Some("ann"));
    let pid: u32 = page.field("pid").unwrap().parse().unwrap();
    let out = c.request(&d.url("/app/logout"), &["-X", "POST"]);
    assert_eq!(out.body, "logged out\n");
    assert!(
        out.header("set-cookie").unwrap().contains("Max-Age=0"),
        "the cookie is expired"
    );
    assert!(
        eventually(std::time::Duration::from_secs(5), || !std::path::Path::new(
            &format!("/proc/{pid}")
        )
        .exists()),
        "the worker stops with its session"
    );
    // Logged out: the form again, from a new session.
    assert!(c.get(&d.url("/app/")).body.contains("login form"));
}
