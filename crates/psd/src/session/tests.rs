//! Unit tests of the registry, with helpers the other session tests share.

use std::sync::atomic::AtomicUsize;

use http::{HeaderMap, HeaderValue, Method, Uri};

use super::*;
use crate::mapper::Signer;

/// A registry with no store, as `psd serve` has.
pub(crate) fn registry(max_sessions: usize) -> Arc<Registry> {
    registry_with(max_sessions, Arc::new(InMemory))
}

fn registry_with(max_sessions: usize, directory: Arc<dyn Directory>) -> Arc<Registry> {
    Registry::new(
        IdBook::new(Signer::new("n", b"0123456789abcdef")),
        directory,
        Arc::new(crate::store::Memory::default()),
        crate::metrics::Metrics::new(),
        "n",
        (max_sessions, 64),
        std::env::temp_dir(),
    )
}

/// An in-process session of `app` that nobody runs: the way in, and the
/// application's future.
pub(crate) fn in_process_task(
    registry: Arc<Registry>,
    location: &Arc<LocationConfig>,
    app: &crate::app::App,
    orders: Arc<Orders>,
) -> (inproc::Task, crate::app::SessionFuture) {
    let record = info::Record::new(
        &AppKey::new(None, "/"),
        "x",
        "127.0.0.1".parse().unwrap(),
        info::Phase::Running,
        std::time::SystemTime::now(),
        None,
    );
    let link = StateLink {
        registry,
        record,
        id: "x".into(),
        key: "x".into(),
        location: location.clone(),
    };
    inproc::Task::new(link, false, app, orders)
}

/// What a [`Hit`] borrows.
pub(crate) struct Parts {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    path: String,
}

impl Parts {
    pub(crate) fn hit<'a>(&'a self, params: &'a [(String, String)]) -> Hit<'a> {
        Hit {
            method: &self.method,
            uri: &self.uri,
            headers: &self.headers,
            path: &self.path,
            client: "127.0.0.1".parse().unwrap(),
            params,
            user: None,
        }
    }
}

/// A GET of `path`, with the session cookie `psd_sid=ID` if given.
pub(crate) fn hit(path: &str, id: Option<&str>) -> (Parts, Vec<(String, String)>) {
    let mut headers = HeaderMap::new();
    if let Some(id) = id {
        headers.insert(
            http::header::COOKIE,
            HeaderValue::from_str(&format!("psd_sid={id}")).unwrap(),
        );
    }
    let parts = Parts {
        method: Method::GET,
        uri: path.parse().unwrap(),
        headers,
        path: path.into(),
    };
    (parts, vec![])
}

fn demo() -> (AppKey, Arc<LocationConfig>) {
    (
        AppKey::new(None, "/"),
        Arc::new(LocationConfig::in_process("/", crate::demo::counter())),
    )
}

/// Whether `done` holds within a second.
async fn eventually(done: impl Fn() -> bool) -> bool {
    for _ in 0..100 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

/// A directory that knows one dormant session, and counts its lookups.
struct OneDormant {
    id: Mutex<Option<Arc<str>>>,
    lookups: AtomicUsize,
}

impl Directory for OneDormant {
    fn find<'a>(
        &'a self,
        _app: &'a AppKey,
        key: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Found, Error>> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let known = self
            .id
            .lock()
            .unwrap()
            .as_deref()
            .is_some_and(|id| key.contains(id));
        Box::pin(async move {
            tokio::task::yield_now().await;
            Ok(if known {
                Found::Dormant {
                    created: SystemTime::now(),
                }
            } else {
                Found::Nowhere
            })
        })
    }
}

#[tokio::test]
async fn a_valid_id_that_memory_lacks_is_resumed_when_the_directory_knows_it() {
    let directory = Arc::new(OneDormant {
        id: Mutex::new(None),
        lookups: AtomicUsize::new(0),
    });
    let registry = registry_with(10, directory.clone());
    let (app, location) = demo();
    let dormant = registry.ids.issue(app.as_str());
    *directory.id.lock().unwrap() = Some(dormant.clone());

    let (parts, params) = hit("/", Some(&dormant));
    let target = registry
        .resolve(&app, &location, &parts.hit(&params))
        .await
        .unwrap();
    assert_eq!(target.token, dormant, "the session keeps its id");
    assert!(target.assigned.is_none(), "no new id is handed out");
    assert_eq!(directory.lookups.load(Ordering::Relaxed), 1);

    // The hit path never asks the directory.
    let again = registry
        .resolve(&app, &location, &parts.hit(&params))
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&again.door, &target.door));
    assert_eq!(directory.lookups.load(Ordering::Relaxed), 1);

    // A valid id the directory does not know gets a new session and id.
    let unknown = registry.ids.issue(app.as_str());
    let (parts, params) = hit("/", Some(&unknown));
    let fresh = registry
        .resolve(&app, &location, &parts.hit(&params))
        .await
        .unwrap();
    assert_ne!(fresh.token, unknown);
    assert!(fresh.assigned.is_some());
    assert_eq!(directory.lookups.load(Ordering::Relaxed), 2);
    assert_eq!(registry.count(), 2);
}

#[tokio::test]
async fn forged_and_foreign_ids_never_reach_a_session_or_the_directory() {
    let directory = Arc::new(OneDormant {
        id: Mutex::new(None),
        lookups: AtomicUsize::new(0),
    });
    let registry = registry_with(10, directory.clone());
    let (app, location) = demo();
    let (parts, params) = hit("/", None);
    let first = registry
        .resolve(&app, &location, &parts.hit(&params))
        .await
        .unwrap();
    let forged = format!("{}x", first.token);
    let other_app = registry.ids.issue("main /other");
    for id in [forged.as_str(), other_app.as_ref(), "garbage"] {
        let (parts, params) = hit("/", Some(id));
        let target = registry
            .resolve(&app, &location, &parts.hit(&params))
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&target.door, &first.door), "{id}");
        assert!(target.assigned.is_some(), "{id}");
    }
    assert_eq!(directory.lookups.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn sessions_are_listed_found_by_handle_and_ended() {
    let registry = registry(10);
    let sessions = Sessions::new(registry.clone());
    let (app, location) = demo();
    let mut tokens = vec![];
    for _ in 0..3 {
        let (parts, params) = hit("/", None);
        let target = registry
            .resolve(&app, &location, &parts.hit(&params))
            .await
            .unwrap();
        tokens.push(target.token);
    }
    let list = sessions.list();
    assert_eq!(list.len(), 3);
    for info in &list {
        assert_eq!(info.app, app);
        assert_eq!(info.state, SessionState::Idle);
        assert_eq!(info.requests, 0);
        assert!(info.created <= SystemTime::now());
        assert!(tokens.iter().all(|t| !info.handle.as_str().contains(&**t)));
    }
    let handle = list[0].handle;
    assert_eq!(sessions.get(handle.as_str()).unwrap().handle, handle);
    assert!(sessions.get("0000000000000000").is_none());
    assert!(!sessions.end("0000000000000000"));

    assert!(sessions.end(handle.as_str()));
    assert!(eventually(|| sessions.count() == 2).await);
    assert!(sessions.get(handle.as_str()).is_none());
    // Ending again is harmless; stopping an in-process session ends it.
    assert!(!sessions.end(handle.as_str()));
    let other = sessions.list()[0].handle;
    assert!(sessions.stop(other.as_str()));
    assert!(eventually(|| sessions.count() == 1).await);
}

#[tokio::test]
async fn max_sessions_refuses_in_process_sessions_beyond_it() {
    let registry = registry(2);
    let (app, location) = demo();
    for _ in 0..2 {
        let (parts, params) = hit("/", None);
        registry
            .resolve(&app, &location, &parts.hit(&params))
            .await
            .unwrap();
    }
    let (parts, params) = hit("/", None);
    let refused = registry.resolve(&app, &location, &parts.hit(&params)).await;
    assert!(matches!(refused, Err(Error::TooManySessions(2))));
}

/// On the real clock: a timer, even one due now, fires at the timer wheel's
/// next millisecond tick, which every new session paid before.
#[tokio::test]
async fn a_start_within_the_burst_waits_for_no_timer() {
    let rate = SpawnRate::new(100);
    let began = std::time::Instant::now();
    for _ in 0..50 {
        rate.turn().await.unwrap();
    }
    assert!(
        began.elapsed() < Duration::from_millis(10),
        "50 starts within the burst took {:?}",
        began.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn spawns_are_paced_after_a_burst_and_refused_past_the_wait() {
    let rate = SpawnRate::new(10);
    let began = Instant::now();
    for _ in 0..10 {
        rate.turn().await.unwrap();
    }
    assert!(
        began.elapsed() < Duration::from_millis(200),
        "a burst goes at once"
    );
    for _ in 0..20 {
        rate.turn().await.unwrap();
    }
    assert!(
        began.elapsed() >= Duration::from_secs(1),
        "then 10 a second"
    );
    // Starts that only reserve their turn (their sleep cut short) fill
    // the bounded wait; beyond it, starts are refused.
    let mut refused = 0;
    for _ in 0..40 {
        if let Ok(Err(Error::SpawnRateExceeded)) =
            tokio::time::timeout(Duration::ZERO, rate.turn()).await
        {
            refused += 1;
        }
    }
    assert!((15..=25).contains(&refused), "{refused} refused");
}
