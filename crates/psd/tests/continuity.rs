//! Ports of Continuity's own tests (t/01_counter.t,
//! t/02_counter_multi_session.t, t/05_query_session.t, t/06_params.t) against
//! in-process applications, and the counter pair against a Perl FastCGI
//! worker too; plus Continuity's `reap($age)`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use psd::app::{html, App};
use psd::config::LocationConfig;
use psd::mapper::SessionKey;

/// t/01_counter.t: one browser clicks through the counter.
fn counter_single(base: &str, dir: &TempDir) {
    let mut mech = Browser::open(dir, "one", &format!("{base}/"));
    assert!(mech.contains("Count: 0"), "initial count");
    for expected in ["Count: 1", "Count: 2", "Count: 3"] {
        mech.follow("++");
        assert!(mech.contains(expected), "{expected}: {}", mech.page.body);
    }
    mech.follow("--");
    assert!(mech.contains("Count: 2"));
}

/// t/02_counter_multi_session.t: two browsers, each its own count.
fn counter_multi_session(base: &str, dir: &TempDir) {
    let mut mech1 = Browser::open(dir, "mech1", &format!("{base}/"));
    assert!(mech1.contains("Count: 0"), "Initial count");
    mech1.follow("++");
    assert!(mech1.contains("Count: 1"), "Updated count");

    let mut mech2 = Browser::open(dir, "mech2", &format!("{base}/"));
    assert!(mech2.contains("Count: 0"), "(2) Initial count");
    for _ in 0..5 {
        mech2.follow("++");
    }
    assert!(mech2.contains("Count: 5"), "(2) Updated count");

    mech1.follow("++");
    assert!(mech1.contains("Count: 2"));
    mech1.follow("--");
    assert!(mech1.contains("Count: 1"));
    mech1.follow("--");
    assert!(mech1.contains("Count: 0"));
    mech1.follow("--");
    assert!(mech1.contains("GO NEGATIVE"), "Go Negative Check");

    for _ in 0..3 {
        mech2.follow("++");
    }
    assert!(mech2.contains("Count: 8"), "(2) Updated count");

    mech1.follow("Yes");
    assert!(mech1.contains("Count: -1"), "Lets go negative!");
}

async fn in_process(
    app: App,
    key: Option<SessionKey>,
    test: impl FnOnce(String, TempDir) + Send + 'static,
) {
    let dir = TempDir::new("continuity");
    let mut location = LocationConfig::in_process("/", app);
    if let Some(key) = key {
        location.mapper = Arc::new(key);
    }
    let (base, stop, server) = serve(&dir, vec![location], 100).await;
    blocking(move || test(base, dir)).await;
    drop(stop);
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_counter_in_process() {
    in_process(psd::demo::counter(), None, |base, dir| {
        counter_single(&base, &dir)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t02_counter_multi_session_in_process() {
    in_process(psd::demo::counter(), None, |base, dir| {
        counter_multi_session(&base, &dir)
    })
    .await;
}

#[test]
fn t01_and_t02_counter_against_the_perl_fastcgi_worker() {
    let worker = repo().join("examples/counter-perl/continuity-counter.pl");
    let d = Daemon::start(&location("/", &worker, ""));
    counter_single(&d.url(""), &d.dir);
    counter_multi_session(&d.url(""), &d.dir);
}

/// Continuity's eg/query_session.pl: the session id travels in links and
/// forms, not cookies.
fn query_session() -> App {
    App::new(|mut session| async move {
        let mut visits = 0;
        while let Some(request) = session.next().await {
            visits += 1;
            let id = request.session_id().to_string();
            request.respond(html(format!(
                "<p>Visit {visits} of session {id}</p>\n\
                 <a href=\"?sid={id}\">Click here to continue</a>\n\
                 <form method=\"post\" action=\"/\"><input type=\"hidden\" name=\"sid\" value=\"{id}\">\
                 <input type=\"submit\" value=\"Click here to continue\"></form>\n\
                 <a href=\"/?fresh=1\">Click here to get a new one</a>\n"
            )));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t05_query_session() {
    let key = SessionKey::parse(&["query".into(), "sid".into()]).unwrap();
    in_process(query_session(), Some(key), |base, dir| {
        let mut mech = Browser::open(&dir, "q", &format!("{base}/"));
        assert!(
            mech.page.url.contains("sid=psd."),
            "redirected to a URL with the id: {}",
            mech.page.url
        );
        assert!(mech.contains("Visit 1 of session"));
        let id = mech.page.url.split("sid=").nth(1).unwrap().to_string();
        mech.follow("Click here to continue");
        assert!(
            mech.contains(&format!("Visit 2 of session {id}")),
            "Link-based (GET) query"
        );
        // Clicking the form's button: a POST carrying the id in its body.
        let posted = Client::with_jar(&dir, "q")
            .request(&format!("{base}/"), &["--data", &format!("sid={id}")]);
        assert!(
            posted.body.contains(&format!("Visit 3 of session {id}")),
            "Form-based (POST) query: {}",
            posted.body
        );
        mech.follow("Click here to get a new one");
        assert!(mech.contains("Visit 1 of session"), "Begin again");
        assert!(!mech.contains(&id));
    })
    .await;
}

/// t/06_params.t: every value of a repeated parameter reaches the application.
fn params_echo() -> App {
    App::new(|mut session| async move {
        while let Some(request) = session.next().await {
            let favorites: Vec<&str> = request.params_named("favorite").collect();
            let body = format!(
                "favorites={} name={}",
                favorites.join(","),
                request.param("name").unwrap_or("")
            );
            request.respond(psd::app::text(body));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t06_params() {
    in_process(params_echo(), None, |base, dir| {
        let c = Client::with_jar(&dir, "p");
        let get = c.get(&format!(
            "{base}/?favorite=red&favorite=green&name=Ann+Lee&favorite=blue"
        ));
        assert_eq!(get.body, "favorites=red,green,blue name=Ann Lee");
        let post = c.request(
            &format!("{base}/?favorite=red"),
            &["--data", "favorite=green&favorite=blue%20sky&name=Bo"],
        );
        assert_eq!(
            post.body, "favorites=red,green,blue sky name=Bo",
            "query first, then the form body"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reap_ends_sessions_older_than_an_age() {
    let dir = TempDir::new("reap");
    let (base, stop, server, sessions) = serve_with_handle(
        &dir,
        vec![LocationConfig::in_process("/", params_echo())],
        100,
    )
    .await;
    let jars = TempDir::new("reap-jars");
    let base2 = base.clone();
    let old_ids = blocking(move || {
        ["a", "b"].map(|name| {
            Client::with_jar(&jars, name)
                .get(&format!("{base2}/"))
                .header("set-cookie")
                .unwrap()
                .to_string()
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let young = blocking({
        let base = base.clone();
        move || {
            Client::anonymous()
                .get(&format!("{base}/"))
                .header("set-cookie")
                .unwrap()
                .to_string()
        }
    })
    .await;
    assert_eq!(sessions.count(), 3);
    assert_eq!(
        sessions.reap(Duration::from_millis(200)),
        2,
        "only the two older sessions"
    );
    let count = sessions.clone();
    assert!(
        blocking(move || eventually(Duration::from_secs(5), || count.count() == 1)).await,
        "reaped sessions end"
    );
    let again = blocking(move || {
        let old = old_ids[0].split(';').next().unwrap().to_string();
        Client::anonymous().request(&format!("{base}/"), &["-H", &format!("Cookie: {old}")])
    })
    .await;
    assert!(
        again.header("set-cookie").is_some(),
        "a reaped id is unknown: new session"
    );
    assert_ne!(again.header("set-cookie").unwrap(), young);
    drop(stop);
    server.await.unwrap().unwrap();
}
