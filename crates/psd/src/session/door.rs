//! The door into a session: turns, and the fast path of every request.
//!
//! A request first waits for its turn: `WorkerConcurrency` turns per
//! session, handed out strictly in arrival order, so with the default of 1 a
//! session's requests never overlap and keep their order. With its turn, a
//! request to a running worker is served by the task of the connection that
//! brought it — no hand-off to the session's task and back, which on a
//! loaded machine was a thread wake-up each way. A request that finds no
//! worker (the first one, or one to a dormant session) goes with its turn
//! to the session's task ([`super::lifecycle`]), which starts the worker.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Response;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::body::Body;
use crate::error::Error;
use crate::worker::{Job, Worker};

/// Requests that may wait for their turn in one session before new ones get 503.
const MAX_WAITING: usize = 256;

/// A request that waits this long for its session's turn is logged (once a
/// session): the application may need a higher `WorkerConcurrency`.
const LONG_WAIT: Duration = Duration::from_secs(5);

/// How often a session past its idle time looks again while a request is
/// still in it.
const BUSY_RECHECK: Duration = Duration::from_secs(1);

pub(crate) struct Door {
    turns: Semaphore,
    concurrency: usize,
    waiting: AtomicUsize,
    /// Whether a long wait for a turn was logged.
    warned: std::sync::atomic::AtomicBool,
    state: Mutex<State>,
}

struct State {
    /// The session's worker while it can take requests.
    worker: Option<Worker>,
    /// When the last request left (or the session began).
    last_active: Instant,
    /// Requests the session has served.
    served: u64,
    /// Chosen to give its worker's place to a new session.
    evicting: bool,
}

/// A request's turn in the session; given back on drop.
pub(crate) struct Turn(Arc<Door>);

impl Drop for Turn {
    fn drop(&mut self) {
        {
            let mut state = self.0.state.lock().expect("door lock");
            state.last_active = Instant::now();
            state.served += 1;
        }
        self.0.turns.add_permits(1);
    }
}

/// A request that found no running worker, on its way to the session's
/// task with its turn.
pub(crate) struct Admitted {
    pub job: Job,
    pub turn: Turn,
}

impl Door {
    pub fn new(concurrency: usize) -> Arc<Door> {
        Arc::new(Door {
            turns: Semaphore::new(concurrency),
            concurrency,
            waiting: AtomicUsize::new(0),
            warned: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(State {
                worker: None,
                last_active: Instant::now(),
                served: 0,
                evicting: false,
            }),
        })
    }

    /// Waits for the request's turn, then serves it on the running worker
    /// in the calling task, or hands it to the session's task (`queue`)
    /// when there is no worker. Returns the answer either way.
    pub async fn call(
        self: &Arc<Self>,
        queue: Option<&mpsc::Sender<Box<Admitted>>>,
        job: Job,
        answer: oneshot::Receiver<Result<Response<Body>, Error>>,
    ) -> Result<Response<Body>, Error> {
        let turn = self.turn().await?;
        let worker = self.state.lock().expect("door lock").worker.clone();
        let Some(worker) = worker else {
            // An in-process session without its application has ended.
            let queue = queue.ok_or(Error::ShuttingDown)?;
            if let Err(e) = queue.try_send(Box::new(Admitted { job, turn })) {
                return Err(match e {
                    mpsc::error::TrySendError::Full(_) => Error::SessionBusy,
                    // The session ended between lookup and send; the client retries.
                    mpsc::error::TrySendError::Closed(_) => Error::ShuttingDown,
                });
            }
            return unanswered(answer.await);
        };
        // The worker's future is made inside the boxed one: made outside
        // and moved in, it would be held twice over (once captured, once
        // awaited), and the box copied at twice its size.
        let serving = worker.clone();
        let mut exchange = Exchange {
            run: Some(Box::pin(async move {
                let job = serving.serve(job).await?;
                Some(Admitted { job, turn })
            })),
        };
        let answered = exchange.answer(answer, self, &worker, queue).await;
        match (answered, exchange.run.take()) {
            // The rest of the exchange (the worker's end of the response
            // body) goes with the body, polled by whoever sends it: no task
            // of its own per request.
            (Ok(response), Some(rest)) => {
                Ok(response.map(|body| Body::new(Tailed::new(body, rest))))
            }
            (answered, rest) => {
                exchange.run = rest;
                answered
            }
        }
    }

    async fn turn(self: &Arc<Self>) -> Result<Turn, Error> {
        if let Ok(permit) = self.turns.try_acquire() {
            permit.forget();
            return Ok(Turn(self.clone()));
        }
        let _waiting = Waiting::enter(&self.waiting).ok_or(Error::SessionBusy)?;
        // Boxed: waiting is the slow path, and its timer would size every
        // request's future.
        Box::pin(self.wait_for_turn()).await;
        Ok(Turn(self.clone()))
    }

    /// Waits for a turn; says so once per session when a request has waited
    /// [`LONG_WAIT`] (a long poll holding the only turn, say).
    async fn wait_for_turn(&self) {
        let mut acquire = std::pin::pin!(self.turns.acquire());
        let acquired = match tokio::time::timeout(LONG_WAIT, &mut acquire).await {
            Ok(acquired) => acquired,
            Err(_) => {
                if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        concurrency = self.concurrency,
                        "a request has waited {LONG_WAIT:?} for its session's turn while another request of the session held it (WorkerConcurrency {}); an application that serves one user's requests side by side (long polls, a web terminal) needs a higher WorkerConcurrency",
                        self.concurrency
                    );
                }
                acquire.await
            }
        };
        // The semaphore is never closed.
        acquired.expect("turns stay open").forget();
    }

    /// Opens the fast path to `worker`, or closes it (`None`); returns the
    /// worker it replaces.
    pub fn set_worker(&self, worker: Option<Worker>) -> Option<Worker> {
        let mut state = self.state.lock().expect("door lock");
        state.evicting = false;
        std::mem::replace(&mut state.worker, worker)
    }

    /// Whether no request holds a turn.
    fn quiet(&self) -> bool {
        self.turns.available_permits() == self.concurrency
    }

    /// Requests served so far, how long since the last one ended (or the
    /// session began), and whether one is in the session now.
    pub fn activity(&self) -> (u64, Duration, bool) {
        let state = self.state.lock().expect("door lock");
        (state.served, state.last_active.elapsed(), !self.quiet())
    }

    /// Requests the session has served so far.
    pub fn served(&self) -> u64 {
        self.state.lock().expect("door lock").served
    }

    /// How long the session has been idle, if it may give its worker's
    /// place to a new session: it has a worker, no request in it, has
    /// served at most `max_served` requests, has been idle at least
    /// `min_idle`, and is not already chosen.
    pub fn evictable(&self, min_idle: Duration, max_served: u64) -> Option<Duration> {
        let state = self.state.lock().expect("door lock");
        let idle = state.last_active.elapsed();
        (state.worker.is_some()
            && !state.evicting
            && self.quiet()
            && state.served <= max_served
            && idle >= min_idle)
            .then_some(idle)
    }

    /// Marks the session as chosen for eviction.
    pub fn choose_for_eviction(&self) {
        self.state.lock().expect("door lock").evicting = true;
    }

    /// Closes the fast path to `dead`, if it is still the session's worker.
    fn forget_worker(&self, dead: &Worker) {
        let mut state = self.state.lock().expect("door lock");
        if state.worker.as_ref().and_then(Worker::pid) == dead.pid() {
            state.worker = None;
        }
    }

    /// Takes the worker if no request has been in the session for `idle`
    /// and none is in it now; requests that come meanwhile find no worker.
    pub fn take_if_idle_for(&self, idle: Duration) -> Option<Worker> {
        let mut state = self.state.lock().expect("door lock");
        if self.quiet() && state.last_active + idle <= Instant::now() {
            state.worker.take()
        } else {
            None
        }
    }

    /// When the session's task should next look whether it has been idle
    /// for `idle`: that long after its last activity (or `also_active`,
    /// activity the door does not see), or, while a request (a long poll,
    /// say) is in the session, again in a while.
    pub fn idle_check(&self, idle: Duration, also_active: Instant) -> Instant {
        let state = self.state.lock().expect("door lock");
        if !self.quiet() {
            Instant::now() + idle.min(BUSY_RECHECK)
        } else {
            state.last_active.max(also_active) + idle
        }
    }
}

/// Counts a request waiting for its turn, also when it is cancelled.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Option<Waiting<'a>> {
        if count.fetch_add(1, Ordering::Relaxed) >= MAX_WAITING {
            count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Waiting(count))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn unanswered(
    answer: Result<Result<Response<Body>, Error>, oneshot::error::RecvError>,
) -> Result<Response<Body>, Error> {
    answer.unwrap_or_else(|_| Err(Error::Worker("the session ended before answering".into())))
}

/// An exchange's work; it hands back a request its worker never got (the
/// worker was dead), with its turn.
type Run = Pin<Box<dyn Future<Output = Option<Admitted>> + Send>>;

/// An exchange run by the task that asked for it, until its answer is
/// there. Whatever is left (a response body still streaming, or all of it
/// when the asking task is cancelled because its client went away) goes on
/// in a task of its own, so a worker is never cut off mid-request and the
/// session's next request still waits for it.
struct Exchange {
    run: Option<Run>,
}

impl Exchange {
    async fn answer(
        &mut self,
        answer: oneshot::Receiver<Result<Response<Body>, Error>>,
        door: &Door,
        worker: &Worker,
        queue: Option<&mpsc::Sender<Box<Admitted>>>,
    ) -> Result<Response<Body>, Error> {
        let run = self.run.as_mut().expect("set until dropped");
        tokio::pin!(answer);
        tokio::select! {
            biased;
            undelivered = run => {
                self.run = None;
                if let Some(admitted) = undelivered {
                    // The worker was dead before the request reached it:
                    // the session's task starts a fresh one for it.
                    door.forget_worker(worker);
                    let refused = match queue {
                        Some(queue) => queue.try_send(Box::new(admitted)).err().map(|e| e.into_inner()),
                        None => Some(Box::new(admitted)),
                    };
                    if let Some(refused) = refused {
                        let _ = refused.job.reply.send(Err(Error::Worker("the worker died".into())));
                    }
                }
                unanswered(answer.await)
            }
            answered = &mut answer => unanswered(answered),
        }
    }
}

/// A response body with the rest of its exchange: the rest is polled
/// before each frame (it may be what produces them) and once more at the
/// end, when it can usually finish (a proxied response's connection goes
/// back to the pool, the session's turn passes on). Whatever is left when
/// the body is dropped — its client went away, or the body was never read
/// to its end — goes on in a task of its own, as [`Exchange`]'s does.
struct Tailed {
    body: Option<Body>,
    /// In a mutex only for `Sync` (a response body must be); reached
    /// through `get_mut`, it is never locked.
    rest: Mutex<Option<Run>>,
}

impl Tailed {
    fn new(body: Body, rest: Run) -> Tailed {
        Tailed {
            body: Some(body),
            rest: Mutex::new(Some(rest)),
        }
    }

    fn rest(&mut self) -> &mut Option<Run> {
        self.rest
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Polls the rest once; forgets it when it is done.
    fn advance(&mut self, cx: &mut std::task::Context<'_>) {
        let rest = self.rest();
        if let Some(run) = rest {
            // An answered request is no longer handed back.
            if run.as_mut().poll(cx).is_ready() {
                *rest = None;
            }
        }
    }
}

impl http_body::Body for Tailed {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = &mut *self;
        this.advance(cx);
        let Some(body) = &mut this.body else {
            return std::task::Poll::Ready(None);
        };
        let frame = Pin::new(body).poll_frame(cx);
        if let std::task::Poll::Ready(None) = frame {
            this.advance(cx);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.as_ref().map_or_else(
            || http_body::SizeHint::with_exact(0),
            http_body::Body::size_hint,
        )
    }
}

impl Drop for Tailed {
    fn drop(&mut self) {
        // The body first: its end is often what the rest waits for.
        drop(self.body.take());
        let Some(mut rest) = self.rest().take() else {
            return;
        };
        // Not while unwinding: a panic in the rest would then abort psd.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if std::thread::panicking() || rest.as_mut().poll(&mut cx).is_pending() {
            drop(Exchange { run: Some(rest) });
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // Outside a runtime (it is being torn down) there is nothing to
        // finish the exchange for.
        if let (Some(run), Ok(runtime)) = (self.run.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(run);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::config::LocationConfig;

    /// A worker for the door to hold: an in-process task nobody runs.
    fn worker() -> Worker {
        let app = crate::demo::counter();
        let location = Arc::new(LocationConfig::in_process("/", app.clone()));
        let registry = crate::session::tests::registry(10);
        let (task, _main) =
            crate::session::tests::in_process_task(registry, &location, &app, Arc::default());
        Worker::InProcess(task)
    }

    #[tokio::test(start_paused = true)]
    async fn turns_go_one_at_a_time_in_arrival_order() {
        let door = Door::new(1);
        let first = door.turn().await.unwrap();
        let order = Arc::new(Mutex::new(vec![]));
        let mut waiting = vec![];
        for i in 0..3 {
            let (door, order) = (door.clone(), order.clone());
            waiting.push(tokio::spawn(async move {
                let turn = door.turn().await.unwrap();
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(turn);
            }));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            order.lock().unwrap().is_empty(),
            "nobody overtakes the turn held"
        );
        drop(first);
        for task in waiting {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
        assert_eq!(door.served(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_with_too_many_waiting_is_busy() {
        let door = Door::new(1);
        let _held = door.turn().await.unwrap();
        let mut waiting = vec![];
        for _ in 0..MAX_WAITING {
            let door = door.clone();
            waiting.push(tokio::spawn(async move { door.turn().await.map(drop) }));
        }
        while door.waiting.load(Ordering::Relaxed) < MAX_WAITING {
            tokio::task::yield_now().await;
        }
        assert!(matches!(door.turn().await, Err(Error::SessionBusy)));
        for task in &waiting {
            task.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_worker_is_taken_only_after_the_idle_time_with_no_request_in() {
        let door = Door::new(2);
        door.set_worker(Some(worker()));
        let turn = door.turn().await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            door.take_if_idle_for(Duration::from_secs(10)).is_none(),
            "a request is in"
        );
        let check = door.idle_check(Duration::from_secs(10), Instant::now());
        assert_eq!(
            check - Instant::now(),
            Duration::from_secs(1),
            "busy: look again soon"
        );
        drop(turn);
        assert!(
            door.take_if_idle_for(Duration::from_secs(10)).is_none(),
            "just active"
        );
        let check = door.idle_check(Duration::from_secs(10), Instant::now());
        assert_eq!(check - Instant::now(), Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(door.take_if_idle_for(Duration::from_secs(10)).is_some());
        assert!(
            door.take_if_idle_for(Duration::from_secs(10)).is_none(),
            "taken once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_an_idle_one_request_session_may_be_evicted_and_only_once() {
        let door = Door::new(1);
        let min_idle = Duration::from_secs(2);
        assert!(door.evictable(min_idle, 1).is_none(), "no worker");
        door.set_worker(Some(worker()));
        drop(door.turn().await.unwrap());
        assert!(
            door.evictable(min_idle, 1).is_none(),
            "not idle long enough"
        );
        tokio::time::sleep(min_idle).await;
        assert_eq!(door.evictable(min_idle, 1), Some(min_idle));
        door.choose_for_eviction();
        assert!(door.evictable(min_idle, 1).is_none(), "chosen already");
        door.set_worker(Some(worker()));
        drop(door.turn().await.unwrap());
        tokio::time::sleep(min_idle).await;
        assert!(
            door.evictable(min_idle, 1).is_none(),
            "served two: in real use"
        );
    }
}

#[cfg(test)]
mod tailed {
    use std::sync::atomic::AtomicBool;

    use http_body_util::BodyExt;

    use super::*;

    /// A rest that waits for `until`, then says it ran.
    fn rest(until: oneshot::Receiver<()>) -> (Run, Arc<AtomicBool>) {
        let ran = Arc::new(AtomicBool::new(false));
        let said = ran.clone();
        let run: Run = Box::pin(async move {
            let _ = until.await;
            said.store(true, Ordering::SeqCst);
            None
        });
        (run, ran)
    }

    #[tokio::test]
    async fn the_rest_of_an_exchange_finishes_as_its_body_ends() {
        // As a proxied response: the rest waits for the body's end.
        let (end, until) = oneshot::channel();
        let body = Body::new(crate::body::OnEnd::new(
            crate::body::full("hello"),
            move |_| drop(end),
        ));
        let (run, ran) = rest(until);
        let mut tailed = Tailed::new(body, run);
        let mut got = vec![];
        while let Some(frame) = tailed.frame().await {
            got.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert_eq!(got, b"hello");
        assert!(
            ran.load(Ordering::SeqCst),
            "finished with the body, by its reader"
        );
        assert!(tailed.rest().is_none());
    }

    #[tokio::test]
    async fn a_rest_still_waiting_when_its_body_is_dropped_goes_on_by_itself() {
        let (go, until) = oneshot::channel();
        let (run, ran) = rest(until);
        let mut tailed = Tailed::new(crate::body::full("unread"), run);
        let first = tailed.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "unread");
        // The client went away mid-body.
        drop(tailed);
        assert!(!ran.load(Ordering::SeqCst));
        go.send(()).unwrap();
        for _ in 0..100 {
            if ran.load(Ordering::SeqCst) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the rest never ran after its body was dropped");
    }
}
