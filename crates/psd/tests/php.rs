//! One php-cgi (Debian's) per session serving a whole multi-file PHP app
//! under `DocumentRoot`: scripts picked by path, `PATH_INFO` split off as
//! nginx's `fastcgi_split_path_info` does, nothing outside the root.

mod common;

use common::*;

fn php_app() -> String {
    format!(
        "<Location /app>\n  Worker fastcgi php-cgi\n  DocumentRoot {}\n  SetEnv PHP_FCGI_MAX_REQUESTS 0\n</Location>\n",
        test_worker("php").display()
    )
}

#[test]
fn one_php_cgi_per_session_serves_a_multi_file_app() {
    let d = Daemon::start(&php_app());
    let (a, b) = (Client::with_jar(&d.dir, "a"), Client::with_jar(&d.dir, "b"));
    let a1 = a.get(&d.url("/app/"));
    assert_eq!(a1.status, 200, "{a1:?}\n{}", d.log_text());
    let a2 = a.get(&d.url("/app/index.php"));
    let b1 = b.get(&d.url("/app/"));
    assert_eq!(
        (a1.count(), a2.count(), b1.count()),
        (1, 2, 1),
        "counts per session"
    );
    assert_eq!(a1.pid(), a2.pid(), "the session keeps its php-cgi");
    assert_ne!(a1.pid(), b1.pid(), "one php-cgi per session");
    assert_eq!(a1.field("script").as_deref(), Some("/app/index.php"));
    assert_eq!(a1.field("file").as_deref(), Some("index.php"));

    let about = a.get(&d.url("/app/about.php/items/3"));
    assert_eq!(about.status, 200);
    assert_eq!(about.pid(), a1.pid(), "another script, the same process");
    assert_eq!(about.field("script").as_deref(), Some("/app/about.php"));
    assert_eq!(about.field("info").as_deref(), Some("/items/3"));
}

#[test]
fn paths_outside_the_document_root_or_naming_nothing_get_404() {
    let d = Daemon::start(&php_app());
    let c = Client::with_jar(&d.dir, "c");
    for path in [
        "/app/../Cargo.toml",
        "/app/%2e%2e/php.rs",
        "/app/lib/../../php.rs",
        "/app/nothing.php",
        "/app/lib/",
    ] {
        let r = c.request(&d.url(path), &["--path-as-is"]);
        assert_eq!(r.status, 404, "{path}: {r:?}");
    }
    assert!(
        !d.log_text().contains("worker started"),
        "no php-cgi was started for a 404"
    );
}

/// php-cgi ends itself after `PHP_FCGI_MAX_REQUESTS` (500 by default): psd
/// logs and counts the exit, and the session goes on with a new php-cgi
/// and its state (the count is in the store, not in PHP).
#[test]
fn a_php_cgi_that_exits_by_itself_is_logged_and_its_session_goes_on() {
    let d = Daemon::start(&php_app().replace("PHP_FCGI_MAX_REQUESTS 0", "PHP_FCGI_MAX_REQUESTS 2"));
    let c = Client::with_jar(&d.dir, "c");
    let first = c.get(&d.url("/app/"));
    assert_eq!(c.get(&d.url("/app/")).pid(), first.pid());
    assert!(
        eventually(std::time::Duration::from_secs(3), || d
            .log_text()
            .contains("the worker exited by itself (1 so far)")),
        "{}",
        d.log_text()
    );
    let third = c.get(&d.url("/app/"));
    assert_eq!(third.status, 200, "{}", d.log_text());
    assert_ne!(third.pid(), first.pid(), "a new php-cgi");
    assert_eq!(third.count(), 3, "the count came through the store");
}
