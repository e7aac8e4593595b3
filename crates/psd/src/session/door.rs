//! The door into a running session: the fast path of every request.
//!
//! While a session has a worker and room for another request, the task of
//! the connection that brought the request runs the exchange with the worker
//! itself: no hand-off to the session's task and back, which on a loaded
//! machine was a thread wake-up each way. Everything else — the first
//! request (which starts the worker), requests that must wait their turn,
//! and requests to a dormant session — goes through the session's queue to
//! its task ([`super::lifecycle`]), which also admits its jobs through this
//! door. The door keeps the one count of requests in flight, so
//! `WorkerConcurrency` holds across both paths, and keeps them in arrival
//! order: once one request waits in the queue, later ones queue behind it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Response;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use crate::body::Body;
use crate::error::Error;
use crate::worker::{Job, Worker};

pub(crate) struct Door {
    state: Mutex<State>,
    concurrency: usize,
    /// Wakes the session's task when a request leaves.
    left: Notify,
}

struct State {
    /// The session's worker while it can take requests.
    worker: Option<Worker>,
    in_flight: usize,
    /// Jobs sent to the session's queue and not yet admitted.
    queued: usize,
    /// When the last request left (or the session began).
    last_active: Instant,
}

/// A request inside the session; leaving (on drop) frees its place.
pub(crate) struct Ticket(Arc<Door>);

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().expect("door lock");
        state.in_flight -= 1;
        state.last_active = Instant::now();
        drop(state);
        self.0.left.notify_one();
    }
}

impl Door {
    pub fn new(concurrency: usize) -> Arc<Door> {
        Arc::new(Door {
            state: Mutex::new(State {
                worker: None,
                in_flight: 0,
                queued: 0,
                last_active: Instant::now(),
            }),
            concurrency,
            left: Notify::new(),
        })
    }

    /// Serves `job` on the session's worker in the calling task if the
    /// session has a worker, room, and nobody waiting before it; otherwise
    /// puts it in the session's queue. Returns the answer either way.
    pub async fn call(
        self: &Arc<Self>,
        queue: &mpsc::Sender<Box<Job>>,
        job: Job,
        answer: oneshot::Receiver<Result<Response<Body>, Error>>,
    ) -> Result<Response<Body>, Error> {
        let admitted = {
            let mut state = self.state.lock().expect("door lock");
            let room = state.in_flight < self.concurrency && state.queued == 0;
            match state.worker.clone().filter(|_| room) {
                Some(worker) => {
                    state.in_flight += 1;
                    Some(worker)
                }
                None => {
                    state.queued += 1;
                    None
                }
            }
        };
        let Some(worker) = admitted else {
            if let Err(e) = queue.try_send(Box::new(job)) {
                self.state.lock().expect("door lock").queued -= 1;
                return Err(match e {
                    mpsc::error::TrySendError::Full(_) => Error::SessionBusy,
                    // The session ended between lookup and send; the client retries.
                    mpsc::error::TrySendError::Closed(_) => Error::ShuttingDown,
                });
            }
            return unanswered(answer.await);
        };
        let ticket = Ticket(self.clone());
        let serve = worker.serve(job);
        let exchange = Exchange {
            run: Some(Box::pin(async move {
                serve.await;
                drop(ticket);
            })),
        };
        exchange.answer(answer).await
    }

    /// For the session's task: a job from its queue enters once there is
    /// room. Returns its ticket and the worker (if one is running).
    pub async fn admit(self: &Arc<Self>) -> (Ticket, Option<Worker>) {
        loop {
            let left = self.left.notified();
            {
                let mut state = self.state.lock().expect("door lock");
                if state.in_flight < self.concurrency {
                    state.in_flight += 1;
                    state.queued -= 1;
                    return (Ticket(self.clone()), state.worker.clone());
                }
            }
            left.await;
        }
    }

    /// Opens the fast path to `worker`, or closes it (`None`).
    pub fn set_worker(&self, worker: Option<Worker>) {
        self.state.lock().expect("door lock").worker = worker;
    }

    /// Takes the worker if no request has been in the session for `idle`;
    /// the fast path is closed from then on.
    pub fn take_if_idle_for(&self, idle: Duration) -> Option<Worker> {
        let mut state = self.state.lock().expect("door lock");
        let quiet = state.in_flight == 0 && state.queued == 0;
        if quiet && state.last_active + idle <= Instant::now() {
            state.worker.take()
        } else {
            None
        }
    }

    /// When the session was last active, and whether a request is in it now.
    pub fn activity(&self) -> (Instant, bool) {
        let state = self.state.lock().expect("door lock");
        (state.last_active, state.in_flight > 0)
    }

    /// Resolves when a request leaves the session.
    pub fn left(&self) -> impl Future<Output = ()> + '_ {
        self.left.notified()
    }
}

fn unanswered(
    answer: Result<Result<Response<Body>, Error>, oneshot::error::RecvError>,
) -> Result<Response<Body>, Error> {
    answer.unwrap_or_else(|_| Err(Error::Worker("the session ended before answering".into())))
}

type Run = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An exchange run by the task that asked for it, until its answer is
/// there. Whatever is left (a response body still streaming, or all of it
/// when the asking task is cancelled because its client went away) goes on
/// in a task of its own, so a worker is never cut off mid-request.
struct Exchange {
    run: Option<Run>,
}

impl Exchange {
    async fn answer(
        mut self,
        answer: oneshot::Receiver<Result<Response<Body>, Error>>,
    ) -> Result<Response<Body>, Error> {
        let run = self.run.as_mut().expect("set until dropped");
        tokio::pin!(answer);
        tokio::select! {
            biased;
            () = run => {
                self.run = None;
                unanswered(answer.await)
            }
            answered = &mut answer => unanswered(answered),
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(run) = self.run.take() {
            tokio::spawn(run);
        }
    }
}
