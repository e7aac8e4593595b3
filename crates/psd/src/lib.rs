//! psd, the persistent session daemon: every user session gets its own
//! long-lived worker, and each request is routed to it.
//!
//! # Layout
//! A request travels through the modules in this order:
//! - `server`: listeners and HTTP/1.1; [`Server`] and [`run`] are the daemon;
//! - [`mapper`]: which session a request belongs to; signed session ids;
//! - `session`: the registry of sessions and each session's lifecycle;
//! - `worker`: FastCGI processes and in-process tasks that answer requests;
//! - [`error`]: how a failure becomes a status code.
//!
//! Around them: [`config`] (the directives), [`app`] (the API for in-process,
//! Continuity-style applications), [`demo`] (the built-in counter), and
//! [`body`] (response bodies).

mod access_log;
pub mod app;
pub mod body;
pub mod config;
mod connection;
pub mod demo;
pub mod error;
pub mod mapper;
mod path;
mod server;
mod session;
pub mod tls;
mod worker;

pub use app::App;
pub use config::Config;
pub use error::Error;
pub use server::{run, Reloader, Server, Sessions};
