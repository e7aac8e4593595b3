//! The `psd` command: parses the command line, loads the configuration, sets
//! up logging and calls [`psd::run`].

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use psd::Config;
use tokio::net::TcpListener;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "psd",
    version,
    about = "Persistent session daemon: a long-lived worker for every user session"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run in the foreground. Without -c: ./psd.conf if present, else the built-in demo on 127.0.0.1:8080.
    Serve {
        /// Configuration file
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Parse and validate a configuration file: "Syntax OK", or FILE:LINE: message for each error.
    Check {
        /// Configuration file
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// List, show, stop (keep state) and end sessions through the admin API.
    Sessions {
        #[command(subcommand)]
        action: Option<SessionsAction>,
        /// Configuration file with AdminListen (and AdminToken); default ./psd.conf
        #[arg(short, long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        /// The admin API's address, instead of -c: http://ADDR:PORT or unix:PATH
        #[arg(long, value_name = "URL", global = true)]
        admin: Option<String>,
        /// File holding the admin token (with --admin)
        #[arg(long, value_name = "FILE", global = true)]
        token: Option<PathBuf>,
        /// Print the API's JSON instead of a table
        #[arg(long, global = true)]
        json: bool,
    },
    /// Write a self-signed certificate and key (cert.pem, key.pem) for development.
    Cert {
        /// A DNS name or IP address the certificate is for; repeatable
        #[arg(long = "host", value_name = "NAME", required = true)]
        hosts: Vec<String>,
        /// Folder for cert.pem and key.pem
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum SessionsAction {
    /// Every session (the default)
    List {
        /// Only this application: its <Location> prefix, or its full name
        #[arg(long)]
        app: Option<String>,
        /// Only sessions in this state: starting, idle, busy, dormant, stopping
        #[arg(long)]
        state: Option<String>,
    },
    /// One session, in detail
    Show { handle: String },
    /// Stop the session's worker; its state stays and its next request resumes it
    Stop { handle: String },
    /// End the session: its worker stops and its state is deleted
    End { handle: String },
    /// Stop every worker, keeping each session's state (each resumes at its next request)
    Drain,
}

fn sessions(
    action: Option<SessionsAction>,
    config: Option<PathBuf>,
    admin: Option<String>,
    token: Option<PathBuf>,
    json: bool,
) -> ExitCode {
    use psd::admin::client::{self, Action, Target};
    let action = match action.unwrap_or(SessionsAction::List {
        app: None,
        state: None,
    }) {
        SessionsAction::List { app, state } => Action::List { app, state },
        SessionsAction::Show { handle } => Action::Show(handle),
        SessionsAction::Stop { handle } => Action::Stop(handle),
        SessionsAction::End { handle } => Action::End(handle),
        SessionsAction::Drain => Action::Drain,
    };
    let outcome = Target::find(config.as_deref(), admin.as_deref(), token.as_deref())
        .and_then(|target| client::run(&target, &action, json));
    match outcome {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("psd sessions: {}", failure.message);
            ExitCode::from(if failure.usage { 2 } else { 1 })
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Sessions {
            action,
            config,
            admin,
            token,
            json,
        } => sessions(action, config, admin, token, json),
        Command::Check { config } => match Config::load(&config) {
            Ok(config) => {
                let missing = config.missing_programs();
                for e in &missing {
                    eprintln!("{e}");
                }
                if !missing.is_empty() {
                    return ExitCode::FAILURE;
                }
                println!("Syntax OK");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Cert { hosts, out } => match psd::tls::write_self_signed(&hosts, &out) {
            Ok(()) => {
                let cert = out.join("cert.pem");
                println!(
                    "wrote {} and {} (mode 0600) for {}",
                    cert.display(),
                    out.join("key.pem").display(),
                    hosts.join(", ")
                );
                println!();
                println!("Use them in psd.conf:");
                println!("    Listen 127.0.0.1:8443 https");
                println!("    SSLCertificateFile {}", cert.display());
                println!(
                    "    SSLCertificateKeyFile {}",
                    out.join("key.pem").display()
                );
                println!();
                println!(
                    "Trust it with curl:     curl --cacert {} https://{}:8443/",
                    cert.display(),
                    hosts[0]
                );
                println!(
                    "Trust it in a browser:  import {} as a certificate authority",
                    cert.display()
                );
                println!("                        (Firefox: Settings > Certificates > Authorities > Import;");
                println!("                        Chromium: chrome://settings/certificates > Authorities),");
                println!("                        or accept the warning once for this host.");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("psd cert: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => match serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("psd: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let path = path.or_else(|| Path::new("psd.conf").exists().then(|| "psd.conf".into()));
    let config = match &path {
        Some(path) => Config::load(path).map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("configuration has errors:\n{}", lines.join("\n"))
        })?,
        None => psd::demo::config(),
    };
    init_logging(&config)?;
    raise_fd_limit();
    let runtime = match config.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()?;
    runtime.block_on(async {
        // Handlers first: a signal that comes right after psd says it is
        // ready must not find the default action (exit without cleanup).
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate())?;
        let int = signal(SignalKind::interrupt())?;
        let hup = signal(SignalKind::hangup())?;
        let mut inherited = inherited_listeners();
        let mut listeners = vec![];
        for listen in &config.listen {
            let listener = match take_inherited(&mut inherited, listen.addr) {
                Some(listener) => listener,
                None => TcpListener::bind(listen.addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", listen.addr))?,
            };
            listeners.push(listener);
        }
        for (addr, _) in &inherited {
            tracing::warn!(
                "socket {addr} from systemd (LISTEN_FDS) matches no Listen line: not used"
            );
        }
        // Ready means: the pid file is there and the listeners are bound;
        // only then does psd say where it listens.
        let pid_file = config.pid_file.clone();
        if let Some(path) = &pid_file {
            std::fs::write(path, format!("{}\n", std::process::id()))
                .map_err(|e| anyhow::anyhow!("PidFile {}: {e}", path.display()))?;
        }
        for e in config.missing_programs() {
            tracing::warn!("{e} (its sessions get 502 until it is there)");
        }
        for (listen, listener) in config.listen.iter().zip(&listeners) {
            let scheme = if listen.https { "https" } else { "http" };
            tracing::info!("listening on {scheme}://{}", listener.local_addr()?);
        }
        match &path {
            Some(path) => tracing::info!(config = %path.display(), "psd started"),
            None => tracing::info!("psd started with the built-in demo (no psd.conf here)"),
        }
        let server = psd::Server::new(config)?;
        tokio::spawn(reload_on_sighup(hup, path.clone(), server.reloader()));
        psd::systemd::ready();
        if let Some(every) = psd::systemd::watchdog_interval() {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    psd::systemd::notify("WATCHDOG=1");
                }
            });
        }
        let result = server.run(listeners, shutdown_signal(term, int)).await;
        if let Some(path) = &pid_file {
            let _ = std::fs::remove_file(path);
        }
        result
    })
}

async fn shutdown_signal(
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    psd::systemd::stopping();
}

/// SIGHUP: re-read the configuration file; a broken one changes nothing.
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    path: Option<PathBuf>,
    reloader: psd::Reloader,
) {
    while hup.recv().await.is_some() {
        let Some(path) = &path else {
            tracing::warn!(
                "SIGHUP received: the built-in demo has no configuration file to reload"
            );
            continue;
        };
        tracing::info!(config = %path.display(), "SIGHUP received: reloading");
        psd::systemd::reloading();
        match Config::load(path) {
            Ok(config) => {
                if let Err(e) = reloader.reload(config) {
                    tracing::error!("reload failed: {e:#}; the running configuration stays");
                }
            }
            Err(errors) => {
                for e in errors {
                    tracing::error!("reload failed: {e}");
                }
                tracing::error!("the running configuration stays");
            }
        }
        // Serving again, with the new configuration or the old one.
        psd::systemd::ready();
    }
}

/// Listening TCP sockets handed over by systemd socket activation
/// (`LISTEN_PID`, `LISTEN_FDS`, from fd 3), with their addresses: a
/// `psd.socket` unit keeps them open while psd restarts, so no connection
/// is refused meanwhile. Close-on-exec from now on: workers never inherit them.
fn inherited_listeners() -> Vec<(std::net::SocketAddr, std::net::TcpListener)> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut found = vec![];
    for i in 0..fds.len() {
        match fds.take_tcp_listener(i) {
            Ok(Some(listener)) => {
                use nix::fcntl::{fcntl, FcntlArg, FdFlag};
                let _ = fcntl(&listener, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
                match listener.local_addr() {
                    Ok(addr) => found.push((addr, listener)),
                    Err(e) => tracing::warn!("socket {i} from systemd (LISTEN_FDS): {e}"),
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("socket {i} from systemd (LISTEN_FDS) is not a TCP listener: {e}")
            }
        }
    }
    found
}

/// The inherited socket bound to `addr`, made a tokio listener.
fn take_inherited(
    inherited: &mut Vec<(std::net::SocketAddr, std::net::TcpListener)>,
    addr: std::net::SocketAddr,
) -> Option<TcpListener> {
    let i = inherited.iter().position(|(a, _)| *a == addr)?;
    let (_, listener) = inherited.remove(i);
    listener.set_nonblocking(true).ok()?;
    let listener = TcpListener::from_std(listener).ok()?;
    tracing::info!("Listen {addr}: the socket systemd handed over (LISTEN_FDS)");
    Some(listener)
}

/// Every process session costs psd a few descriptors (connection, stderr
/// pipe, process handle): take the whole hard limit, as nginx's
/// `worker_rlimit_nofile` lets operators do; as root, raise the hard limit
/// to the kernel's `fs.nr_open` first, as systemd's `LimitNOFILE` would.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|n| n.trim().parse::<u64>().ok())
        .filter(|&n| n > hard && nix::unistd::geteuid().is_root());
    let target = match ceiling {
        Some(n) if setrlimit(Resource::RLIMIT_NOFILE, n, n).is_ok() => n,
        _ if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() => hard,
        _ => soft,
    };
    if target != soft {
        tracing::debug!("open file limit raised from {soft} to {target}");
    }
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let (writer, ansi) = match &config.error_log {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("ErrorLog {}: {e}", path.display()))?;
            (BoxMakeWriter::new(std::sync::Mutex::new(file)), false)
        }
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        ),
    };
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match config.log_format {
        psd::config::LogFormat::Text => log.with_ansi(ansi).init(),
        // One object a line; the fields (session, app, pid) at its top level.
        psd::config::LogFormat::Json => log
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    Ok(())
}
