//! psd, the persistent session daemon: every user session gets its own
//! long-lived worker, and each request is routed to it.
//!
//! # Layout
//! A request travels through the modules in this order:
//! - `http`: the listener (sockets, TLS, HTTP/1.1 and HTTP/2, limits,
//!   draining), the handler (a `Request<B>` to a job or an error) and psd's
//!   own URLs under `PREFIX/.psd/`;
//! - [`mapper`]: which session a request belongs to; signed session ids;
//! - [`session`]: the registry of sessions, the door into each, each
//!   session's lifecycle and record, and [`Sessions`], the handle on them;
//! - `worker`: what answers a session's requests — FastCGI, HTTP and
//!   JSON-lines (stdio) processes, and in-process tasks;
//! - [`store`]: what outlives a worker and psd — session records and values
//!   (embedded redb, Redis, or memory), read on the registry's miss path and
//!   over the state API;
//! - [`error`]: who failed, whether to retry, and the status a client sees.
//!
//! Around them: [`daemon`] ([`Server`], [`run`]: DataDir, the secret, start,
//! reload, shutdown), [`config`] (the directives), [`app`] (the API for
//! in-process, Continuity-style applications and their state), [`demo`]
//! (the built-in counter), [`admin`] (the admin API, the dashboard and
//! `psd sessions`), `metrics` (what `/metrics` counts), [`systemd`]
//! (`sd_notify`), [`body`] (request and response bodies) and `connection`
//! (per-connection limits).

mod access_log;
pub mod admin;
pub mod app;
pub mod auth;
pub mod body;
pub mod config;
mod connection;
pub mod daemon;
pub mod demo;
pub mod error;
mod http;
pub mod mapper;
mod metrics;
mod path;
pub mod session;
pub mod store;
pub mod systemd;
pub mod tls;
mod worker;

pub use app::App;
pub use config::Config;
pub use daemon::{run, Reloader, Server};
pub use error::Error;
pub use session::{SessionInfo, SessionState, Sessions};
