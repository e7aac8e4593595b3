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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { config } => match Config::load(&config) {
            Ok(_) => {
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut listeners = vec![];
        for listen in &config.listen {
            let listener = TcpListener::bind(listen.addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", listen.addr))?;
            tracing::info!("listening on http://{}", listener.local_addr()?);
            listeners.push(listener);
        }
        match &path {
            Some(path) => tracing::info!(config = %path.display(), "psd started"),
            None => tracing::info!("psd started with the built-in demo (no psd.conf here)"),
        }
        psd::run(listeners, config, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return tracing::info!("SIGTERM received"),
            _ = int.recv() => return tracing::info!("SIGINT received"),
            // SIGHUP's default action would end every session; an operator
            // sending it expects a reload, which this version cannot do yet.
            _ = hup.recv() => tracing::warn!("SIGHUP received: configuration reload is not supported by this version; carrying on unchanged"),
        }
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .init();
    Ok(())
}
