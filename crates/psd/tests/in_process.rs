//! psd as a library: in-process, Continuity-style applications served by
//! `psd::run` on a real socket, with curl as the browser.

mod common;

use std::future::Future;
use std::time::Duration;

use common::*;
use psd::app::{text, App};
use psd::config::LocationConfig;

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
                    counts(&c.get(&url).body)
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
                .map(|option| counts(&c.get(&format!("{base}/?option={option}")).body))
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
                counts(&a.get(&up).body),
                counts(&a.get(&up).body),
                counts(&b.get(&up).body),
                counts(&a.get(&up).body),
                counts(&b.get(&format!("{base}/")).body),
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
