//! psd as a library: in-process, Continuity-style applications served by
//! `psd::run` on a real socket, with curl as the browser.

mod common;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use psd::app::{text, App, Condition, State, StateError};
use psd::config::LocationConfig;

/// A GET that follows the demo's redirect after an action, as a browser does.
fn follow(c: &Client, url: &str) -> Reply {
    c.request(url, &["-L"])
}

fn counts(body: &str) -> String {
    if body.contains("GO NEGATIVE?") {
        "GO NEGATIVE?".into()
    } else {
        body.split("Count: ")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .unwrap_or("?")
            .to_string()
    }
}

async fn with_demo<F, Fut>(test: F)
where
    F: FnOnce(String, TempDir) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = TempDir::new("demo");
    let (base, stop, server) = serve(
        &dir,
        vec![LocationConfig::in_process("/", psd::demo::counter())],
        100,
    )
    .await;
    test(base, dir).await;
    drop(stop);
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_counter_goes_negative_only_after_asking() {
    with_demo(|base, dir| async move {
        let seen = blocking(move || {
            let c = Client::with_jar(&dir, "browser");
            ["", "++", "++", "--", "--", "--", "Yes"]
                .iter()
                .map(|option| {
                    let url = format!("{base}/?option={}", option.replace('+', "%2B"));
                    counts(&follow(&c, &url).body)
                })
                .collect::<Vec<_>>()
        })
        .await;
        assert_eq!(seen, ["0", "1", "2", "1", "0", "GO NEGATIVE?", "-1"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prompt_keeps_asking_and_no_keeps_zero() {
    with_demo(|base, dir| async move {
        let seen = blocking(move || {
            let c = Client::with_jar(&dir, "browser");
            // `++` typed literally in a URL arrives as two spaces; it must count too.
            ["++", "--", "--", "", "No", "--"]
                .iter()
                .map(|option| counts(&follow(&c, &format!("{base}/?option={option}")).body))
                .collect::<Vec<_>>()
        })
        .await;
        assert_eq!(
            seen,
            [
                "1",
                "0",
                "GO NEGATIVE?",
                "GO NEGATIVE?",
                "0",
                "GO NEGATIVE?"
            ]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_keep_separate_counts() {
    with_demo(|base, dir| async move {
        let seen = blocking(move || {
            let (a, b) = (Client::with_jar(&dir, "a"), Client::with_jar(&dir, "b"));
            let up = format!("{base}/?option=%2B%2B");
            vec![
                counts(&follow(&a, &up).body),
                counts(&follow(&a, &up).body),
                counts(&follow(&b, &up).body),
                counts(&follow(&a, &up).body),
                counts(&follow(&b, &format!("{base}/")).body),
            ]
        })
        .await;
        assert_eq!(seen, ["1", "2", "1", "3", "1"]);
    })
    .await;
}

/// An app whose sessions end themselves, panic, or never answer, on request.
fn moody() -> App {
    App::new(|mut session| async move {
        let mut n = 0;
        while let Some(request) = session.next().await {
            n += 1;
            match request.path() {
                "/panic" => panic!("asked to panic"),
                "/quit" => return,
                "/drop" => drop(request),
                "/hang" => std::future::pending::<()>().await,
                _ => request.respond(text(format!("n={n} id={}", session.id()))),
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_session_task_gives_502_or_504_and_then_a_fresh_session() {
    let dir = TempDir::new("moody");
    let mut location = LocationConfig::in_process("/", moody());
    location.request_timeout = Duration::from_millis(500);
    let (base, stop, server) = serve(&dir, vec![location], 100).await;
    let jar_dir = TempDir::new("moody-jar");
    let results = blocking(move || {
        let c = Client::with_jar(&jar_dir, "c");
        let mut out = vec![];
        for path in [
            "/", "/", "/drop", "/", "/panic", "/", "/hang", "/", "/quit", "/",
        ] {
            let r = c.get(&format!("{base}{path}"));
            out.push((path, r.status, r.field("n")));
        }
        out
    })
    .await;
    let expected = [
        ("/", 200, Some("1")),
        ("/", 200, Some("2")),
        ("/drop", 502, None),
        ("/", 200, Some("4")),
        ("/panic", 502, None),
        ("/", 200, Some("1")),
        ("/hang", 504, None),
        ("/", 200, Some("1")),
        ("/quit", 502, None),
        ("/", 200, Some("1")),
    ];
    let got: Vec<_> = results
        .iter()
        .map(|(p, s, n)| (*p, *s, n.as_deref()))
        .collect();
    assert_eq!(got, expected);
    drop(stop);
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_sessions_share_max_sessions_and_idle_timeouts() {
    let dir = TempDir::new("limits");
    let mut location = LocationConfig::in_process("/", moody());
    location.session_timeout = Duration::from_millis(300);
    let (base, stop, server) = serve(&dir, vec![location], 1).await;
    let jar_dir = TempDir::new("limits-jar");
    let (first, refused, after_idle) = blocking(move || {
        let a = Client::with_jar(&jar_dir, "a");
        let first = a.get(&format!("{base}/"));
        let refused = Client::anonymous().get(&format!("{base}/"));
        std::thread::sleep(Duration::from_millis(900));
        let after_idle = Client::anonymous().get(&format!("{base}/"));
        (first, refused, after_idle)
    })
    .await;
    assert_eq!(first.status, 200);
    assert_eq!(refused.status, 503);
    assert!(refused.header("retry-after").is_some());
    assert_eq!(
        after_idle.status, 200,
        "the idle session ended and freed its slot"
    );
    drop(stop);
    server.await.unwrap().unwrap();
}

/// A custom mapper: one session per `X-Tenant` header value. The key is the
/// mapper's to choose; the id is still one psd issued.
#[derive(Debug)]
struct ByTenant;

impl psd::mapper::Mapper for ByTenant {
    fn get_session_id_from_hit(
        &self,
        hit: &psd::mapper::Hit<'_>,
        _: &psd::mapper::Ids<'_>,
    ) -> Option<psd::mapper::Mapped> {
        let tenant = hit.headers.get("x-tenant")?.to_str().ok()?;
        Some(psd::mapper::Mapped {
            key: format!("tenant={tenant}"),
            presented: None,
        })
    }

    fn assign_session_id(
        &self,
        hit: &psd::mapper::Hit<'_>,
        ids: &psd::mapper::Ids<'_>,
    ) -> psd::mapper::Assigned {
        let tenant = hit
            .headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        psd::mapper::Assigned {
            key: format!("tenant={tenant}"),
            id: ids.issue(),
            cookie: None,
            query: None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_mapper_decides_the_session_key() {
    let dir = TempDir::new("custom");
    let mut location = LocationConfig::in_process("/", moody());
    location.mapper = std::sync::Arc::new(ByTenant);
    let (base, stop, server) = serve(&dir, vec![location], 100).await;
    let seen = blocking(move || {
        let as_tenant = |t: &str| {
            Client::anonymous().request(&format!("{base}/"), &["-H", &format!("X-Tenant: {t}")])
        };
        [
            as_tenant("acme"),
            as_tenant("acme"),
            as_tenant("globex"),
            as_tenant("acme"),
        ]
        .map(|r| {
            (
                r.field("n").unwrap(),
                r.field("id").unwrap(),
                r.header("set-cookie").is_some(),
            )
        })
    })
    .await;
    assert_eq!(
        [&*seen[0].0, &*seen[1].0, &*seen[2].0, &*seen[3].0],
        ["1", "2", "1", "3"]
    );
    assert_eq!(seen[0].1, seen[3].1);
    assert_ne!(seen[0].1, seen[2].1);
    assert!(
        seen[0].1.starts_with("psd."),
        "ids are psd's: {}",
        seen[0].1
    );
    assert!(seen.iter().all(|s| !s.2), "this mapper hands out no cookie");
    drop(stop);
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_counter_keeps_its_count_across_a_restart() {
    let dir = TempDir::new("demo-restart");
    let jars = TempDir::new("demo-restart-jar");
    let demo = || vec![LocationConfig::in_process("/", psd::demo::counter())];
    let (base, stop, server) = serve(&dir, demo(), 100).await;
    let c = Client::with_jar(&jars, "browser");
    let (before, c) = blocking(move || {
        let seen = ["", "++", "++", "++"]
            .iter()
            .map(|o| counts(&follow(&c, &format!("{base}/?option={}", o.replace('+', "%2B"))).body))
            .collect::<Vec<_>>();
        (seen, c)
    })
    .await;
    assert_eq!(before, ["0", "1", "2", "3"]);
    drop(stop);
    server.await.unwrap().unwrap();

    // The same DataDir, a new server: the browser's id names its session.
    let (base, stop, server) = serve(&dir, demo(), 100).await;
    let other = Client::with_jar(&jars, "other");
    let after = blocking(move || {
        (
            counts(&follow(&c, &format!("{base}/?option=%2B%2B")).body),
            counts(&follow(&other, &format!("{base}/?option=%2B%2B")).body),
        )
    })
    .await;
    assert_eq!(after, ("4".into(), "1".into()), "(resumed, a new browser)");
    drop(stop);
    server.await.unwrap().unwrap();
}

/// An app that counts in its state, and hands its `State` out so that the
/// test can try it once the session has ended.
fn keeper(stash: Arc<Mutex<Option<State>>>) -> App {
    App::new(move |mut session| {
        let stash = stash.clone();
        async move {
            let state = session.state();
            *stash.lock().unwrap() = Some(state.clone());
            let mut n = match session.resumed() {
                true => state.number("n").await.unwrap_or(-100),
                false => 0,
            };
            while let Some(request) = session.next().await {
                if request.path() == "/quit" {
                    request.respond(text("bye"));
                    return;
                }
                n += 1;
                state.put("n", n.to_string()).await.unwrap();
                let resumed = u8::from(session.resumed());
                request.respond(text(format!("n={n} resumed={resumed}")));
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_session_resumes_with_its_state_after_an_idle_timeout() {
    for resume in [true, false] {
        let dir = TempDir::new("keeper");
        let stash = Arc::new(Mutex::new(None));
        let mut location = LocationConfig::in_process("/", keeper(stash.clone()));
        location.session_timeout = Duration::from_millis(300);
        location.resume_on_timeout = resume;
        let (base, stop, server) = serve(&dir, vec![location], 100).await;
        let client = Arc::new(Client::with_jar(&dir, "c"));
        let get = move |path: &'static str| {
            let (base, client) = (base.clone(), client.clone());
            async move {
                blocking(move || {
                    let r = client.get(&format!("{base}{path}"));
                    let n = r.field("n").unwrap_or_default();
                    (n, r.field("resumed").unwrap_or_default(), r.body)
                })
                .await
            }
        };
        let pair = |(n, resumed, _): (String, String, String)| (n, resumed);
        assert_eq!(pair(get("/").await), ("1".into(), "0".into()));
        assert_eq!(pair(get("/").await), ("2".into(), "0".into()));
        tokio::time::sleep(Duration::from_millis(900)).await;
        let expected = match resume {
            true => ("3".into(), "1".into()),
            false => ("1".into(), "0".into()),
        };
        assert_eq!(pair(get("/").await), expected, "OnTimeout resume: {resume}");

        // An application that returns ends its session: state and all.
        assert_eq!(get("/quit").await.2, "bye");
        let stale = stash.lock().unwrap().take().unwrap();
        assert_eq!(stale.put("n", "7").await, Err(StateError::Ended));
        assert_eq!(pair(get("/").await), ("1".into(), "0".into()));
        drop(stop);
        server.await.unwrap().unwrap();
    }
}

/// Runs the state calls of a session on its first request and answers
/// their outcomes, one a line.
fn state_rules() -> App {
    App::new(|mut session| async move {
        let Some(request) = session.next().await else {
            return;
        };
        let s = session.state();
        let mut out = vec![];
        out.push(format!("{:?}", s.put("a", "1").await.is_ok()));
        let v = s.get("a").await.unwrap().unwrap();
        out.push(String::from_utf8_lossy(&v.data).into_owned());
        let swap = s.put_if("a", "2", Condition::Version(v.version)).await;
        out.push(format!("{:?}", swap.is_ok()));
        out.push(format!(
            "{:?}",
            s.put_if("a", "3", Condition::Version(v.version)).await
        ));
        out.push(format!("{:?}", s.put_if("a", "3", Condition::Absent).await));
        out.push(format!("{:?}", s.add("a", 5).await));
        out.push(format!("{:?}", s.put("t", "x").await.is_ok()));
        out.push(format!("{:?}", s.add("t", 1).await));
        out.push(format!("{:?}", s.put("big", vec![0u8; 2000]).await));
        out.push(format!("{:?}", s.get("a//b").await));
        out.push(format!("{:?}", s.keys().await));
        out.push(format!("{:?}", s.delete("t").await));
        out.push(format!("{:?}", s.delete("t").await));
        out.push(format!("{:?}", s.get("t").await));
        out.push(format!("{:?}", session.shared().add("visits", 1).await));
        request.respond(text(out.join("\n")));
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_in_process_keeps_the_state_api_rules() {
    let dir = TempDir::new("state-rules");
    let mut location = LocationConfig::in_process("/", state_rules());
    location.max_session_state = 1000;
    let (base, stop, server) = serve(&dir, vec![location], 100).await;
    let bodies = blocking(move || {
        let first = Client::anonymous().get(&format!("{base}/")).body;
        let second = Client::anonymous().get(&format!("{base}/")).body;
        (first, second)
    })
    .await;
    let expected = [
        "true",
        "1",
        "true",
        "Err(Precondition)",
        "Err(Precondition)",
        "Ok(7)",
        "true",
        "Err(NotANumber)",
        "Err(TooLarge)",
        "Err(InvalidKey)",
        r#"Ok([("a", 1), ("t", 1)])"#,
        "Ok(())",
        "Err(Missing)",
        "Ok(None)",
        "Ok(1)",
    ];
    assert_eq!(bodies.0.lines().collect::<Vec<_>>(), expected);
    assert_eq!(
        bodies.1.lines().last(),
        Some("Ok(2)"),
        "the shared space is the application's"
    );
    drop(stop);
    server.await.unwrap().unwrap();
}

/// The demo answers an action with a redirect (a reload shows the count, it
/// does not click again), refuses actions from a read-only viewer, and
/// `/.psd/share` without a session says there is none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_redirects_after_actions_and_viewers_only_watch() {
    with_demo(|base, dir| async move {
        blocking(move || {
            let owner = Client::with_jar(&dir, "owner");
            let acted = owner.get(&format!("{base}/?option=%2B%2B"));
            assert_eq!(acted.status, 303);
            assert_eq!(acted.header("location"), Some("/"));
            let page = owner.get(&format!("{base}/"));
            assert_eq!(counts(&page.body), "1");
            assert_eq!(
                counts(&owner.get(&format!("{base}/")).body),
                "1",
                "a reload does not act"
            );
            assert!(page.body.contains("What psd is doing for you"));

            let share = owner.get(&format!("{base}/.psd/share"));
            let link = share_link(&share);
            let viewer = Client::with_jar(&dir, "viewer");
            viewer.request(&format!("{base}{link}"), &["-L"]);
            let watched = viewer.get(&format!("{base}/"));
            assert_eq!(counts(&watched.body), "1");
            assert!(watched.body.contains("read-only link"));
            assert!(
                !watched.body.contains("?option=++"),
                "no buttons for a viewer"
            );
            let refused = viewer.get(&format!("{base}/?option=%2B%2B"));
            assert_eq!(refused.status, 403);
            assert_eq!(
                counts(&owner.get(&format!("{base}/")).body),
                "1",
                "unchanged"
            );

            let nobody = Client::anonymous().get(&format!("{base}/.psd/share"));
            assert_eq!(nobody.status, 404);
            assert!(
                nobody.body.contains("no session to share"),
                "{}",
                nobody.body
            );
        })
        .await;
    })
    .await;
}

/// The demo page in headless Chromium at a desktop and a phone width: the
/// ++ links work as a browser follows them, and the page is no wider than
/// the screen. `PSD_SCREENSHOTS=DIR` keeps the screenshots (the README's
/// come from `PSD_SCREENSHOTS=docs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_works_in_chromium_at_desktop_and_phone_widths() {
    with_demo(|base, dir| async move {
        let out = std::env::var("PSD_SCREENSHOTS")
            .map(|d| repo().join(d))
            .unwrap_or_else(|_| dir.join(""));
        let script = repo().join("crates/psd/tests/browser/demo_page.py");
        let report = blocking(move || {
            std::process::Command::new("python3")
                .arg(script)
                .arg(&base)
                .arg(&out)
                .output()
                .unwrap()
        })
        .await;
        let stdout = String::from_utf8_lossy(&report.stdout);
        assert!(
            report.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&report.stderr)
        );
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        for width in ["desktop", "phone"] {
            let seen = &report[width];
            assert_eq!(seen["count"], "Count: 2", "{width}: {seen}");
            assert!(
                seen["scroll_width"].as_u64() <= seen["inner_width"].as_u64(),
                "{width}: wider than the screen: {seen}"
            );
            let png = std::fs::read(seen["screenshot"].as_str().unwrap()).unwrap();
            assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{width}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_session_knows_its_user() {
    let dir = TempDir::new("inproc-user");
    let users = dir.join("users");
    htpasswd(&users, "-B", "ann", "ann-pw");
    let app = App::new(|mut session| async move {
        while let Some(request) = session.next().await {
            let user = request.user().unwrap_or("-").to_string();
            request.respond(text(format!("user={user}")));
        }
    });
    let mut location = LocationConfig::in_process("/", app);
    location.auth_basic = true;
    location.auth_user_file = Some(users);
    location.require = vec![psd::config::Require::ValidUser];
    let (base, stop, server) = serve(&dir, vec![location], 100).await;
    let (anonymous, ann) = blocking(move || {
        let url = format!("{base}/");
        (
            Client::anonymous().get(&url).status,
            Client::anonymous()
                .request(&url, &["-u", "ann:ann-pw"])
                .body,
        )
    })
    .await;
    assert_eq!(anonymous, 401);
    assert_eq!(ann, "user=ann");
    drop(stop);
    server.await.unwrap().unwrap();
}
