//! `psd sessions …`: the admin API from the command line. It finds the API
//! through `-c FILE` (its `AdminListen` and `AdminToken`) or `--admin URL
//! --token FILE`, and prints an aligned table, or the API's JSON with
//! `--json`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::{format_bytes, format_duration};
use crate::config::{AdminListen, Config};

/// How long the client waits for psd.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What to ask.
#[derive(Debug, Clone)]
pub enum Action {
    List {
        app: Option<String>,
        state: Option<String>,
    },
    Show(String),
    Stop(String),
    End(String),
    Drain,
}

/// Where the admin API is, and its token.
pub struct Target {
    pub at: AdminListen,
    pub token: String,
}

/// Why the client could not do what it was asked; `usage` errors exit 2.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub usage: bool,
}

impl Failure {
    fn runtime(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            usage: false,
        }
    }
}

impl Target {
    /// From `--admin URL --token FILE`, or else the configuration file
    /// (`-c FILE`, or `./psd.conf`).
    pub fn find(
        config: Option<&Path>,
        admin: Option<&str>,
        token: Option<&Path>,
    ) -> Result<Target, Failure> {
        if let Some(url) = admin {
            let Some(token) = token else {
                return Err(Failure {
                    message: "--admin needs --token FILE".into(),
                    usage: true,
                });
            };
            let at = parse_url(url).map_err(|message| Failure {
                message,
                usage: true,
            })?;
            return Ok(Target {
                at,
                token: read_token(token)?,
            });
        }
        let path = match config {
            Some(path) => path.to_path_buf(),
            None if Path::new("psd.conf").exists() => PathBuf::from("psd.conf"),
            None => {
                return Err(Failure {
                    message: "no ./psd.conf here: give -c FILE, or --admin URL --token FILE".into(),
                    usage: true,
                })
            }
        };
        let config = Config::load(&path).map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            Failure::runtime(lines.join("\n"))
        })?;
        let Some(at) = config.admin_listen.clone() else {
            return Err(Failure::runtime(format!(
                "{} has no AdminListen: the admin API is off",
                path.display()
            )));
        };
        Ok(Target {
            at,
            token: read_token(&config.admin_token_path())?,
        })
    }
}

/// `http://HOST:PORT` (or `HOST:PORT`) or `unix:PATH`.
fn parse_url(url: &str) -> Result<AdminListen, String> {
    if url.starts_with("unix:") {
        return AdminListen::parse(url);
    }
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    rest.parse()
        .map(AdminListen::Tcp)
        .map_err(|_| format!("--admin {url}: expected http://ADDR:PORT or unix:PATH"))
}

fn read_token(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_string())
        .map_err(|e| Failure::runtime(format!("admin token {}: {e}", path.display())))
}

/// Runs `action` against `target`; what to print on stdout.
pub fn run(target: &Target, action: &Action, as_json: bool) -> Result<String, Failure> {
    let (method, path) = match action {
        Action::List { app, state } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            if let Some(app) = app {
                query.append_pair("app", app);
            }
            if let Some(state) = state {
                query.append_pair("state", state);
            }
            let query = query.finish();
            (Method::GET, format!("/api/sessions?{query}"))
        }
        Action::Show(h) => (Method::GET, format!("/api/sessions/{}", encode(h))),
        Action::Stop(h) => (Method::POST, format!("/api/sessions/{}/stop", encode(h))),
        Action::End(h) => (Method::DELETE, format!("/api/sessions/{}", encode(h))),
        Action::Drain => (Method::POST, "/api/drain".to_string()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::runtime(e.to_string()))?;
    let (status, body) = runtime
        .block_on(async {
            tokio::time::timeout(TIMEOUT, call(target, method, &path))
                .await
                .unwrap_or_else(|_| Err(format!("no answer from {} within {TIMEOUT:?}", target.at)))
        })
        .map_err(Failure::runtime)?;
    let value: Value = serde_json::from_slice(&body).map_err(|_| {
        Failure::runtime(format!(
            "{} answered {status} with something that is not JSON",
            target.at
        ))
    })?;
    if !status.is_success() {
        let message = value["error"].as_str().unwrap_or("request failed");
        return Err(Failure::runtime(format!("{message} ({status})")));
    }
    if as_json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&value).expect("JSON values serialize")
        ));
    }
    Ok(match action {
        Action::List { .. } => table(value["sessions"].as_array().map_or(&[][..], Vec::as_slice)),
        Action::Show(_) => details(&value),
        Action::Stop(h) => match value["state"].as_str() {
            Some("ended") => format!("session {h} had stored nothing and ended\n"),
            Some(state) => format!("session {h} stopped ({state}); its state is kept\n"),
            None => format!("session {h} stopped\n"),
        },
        Action::End(h) => format!("session {h} ended; its state is deleted\n"),
        Action::Drain => format!(
            "{} workers stopped; their sessions resume at their next request\n",
            value["stopped"]
        ),
    })
}

fn encode(handle: &str) -> String {
    percent_encoding::utf8_percent_encode(handle, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn call(target: &Target, method: Method, path: &str) -> Result<(StatusCode, Bytes), String> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "psd-admin")
        .header("authorization", format!("Bearer {}", target.token))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let unreachable =
        |e: std::io::Error| format!("cannot reach the admin API at {}: {e}", target.at);
    match &target.at {
        AdminListen::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(unreachable)?;
            exchange(stream, request).await
        }
        AdminListen::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(unreachable)?;
            exchange(stream, request).await
        }
    }
}

async fn exchange<S>(
    stream: S,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

fn seconds(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |s| {
        format_duration(Duration::from_secs_f64(s.max(0.0)))
    })
}

fn bytes_of(v: &Value) -> String {
    v.as_u64().map_or("-".into(), format_bytes)
}

/// The sessions as an aligned table, one line each.
fn table(sessions: &[Value]) -> String {
    let header = [
        "HANDLE",
        "APP",
        "STATE",
        "AGE",
        "IDLE",
        "REQUESTS",
        "PID",
        "RSS",
        "STATE BYTES",
    ];
    let rows: Vec<[String; 9]> = sessions
        .iter()
        .map(|s| {
            let worker = &s["worker"];
            [
                s["handle"].as_str().unwrap_or("").to_string(),
                s["app"].as_str().unwrap_or("").to_string(),
                s["state"].as_str().unwrap_or("").to_string(),
                seconds(&s["age_seconds"]),
                seconds(&s["idle_seconds"]),
                s["requests"].to_string(),
                worker["pid"].as_u64().map_or("-".into(), |p| p.to_string()),
                bytes_of(&worker["rss_bytes"]),
                bytes_of(&s["state_bytes"]),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // Numbers are right-aligned: age, idle, requests, pid, rss, state bytes.
    let right = [false, false, false, true, true, true, true, true, true];
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            if i > 0 {
                out.push_str("  ");
            }
            match right[i] {
                true => out.push_str(&format!("{}{cell}", " ".repeat(pad))),
                false if i + 1 == cells.len() => out.push_str(cell),
                false => out.push_str(&format!("{cell}{}", " ".repeat(pad))),
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(&header.map(String::from));
    for row in &rows {
        out.push_str(&line(row));
    }
    if rows.is_empty() {
        out.push_str("(no sessions)\n");
    }
    out
}

/// One session, a field a line.
fn details(s: &Value) -> String {
    let worker = &s["worker"];
    let fields = [
        ("handle", s["handle"].as_str().unwrap_or("").to_string()),
        ("app", s["app"].as_str().unwrap_or("").to_string()),
        ("node", s["node"].as_str().unwrap_or("").to_string()),
        ("user", s["user"].as_str().unwrap_or("-").to_string()),
        ("state", s["state"].as_str().unwrap_or("").to_string()),
        ("created", s["created"].as_str().unwrap_or("").to_string()),
        (
            "last active",
            s["last_active"].as_str().unwrap_or("").to_string(),
        ),
        ("age", seconds(&s["age_seconds"])),
        ("idle", seconds(&s["idle_seconds"])),
        ("requests", s["requests"].to_string()),
        ("client", s["client"].as_str().unwrap_or("").to_string()),
        (
            "worker pid",
            worker["pid"]
                .as_u64()
                .map_or("- (no worker running)".into(), |p| p.to_string()),
        ),
        ("worker rss", bytes_of(&worker["rss_bytes"])),
        (
            "worker cpu",
            worker["cpu_seconds"]
                .as_f64()
                .map_or("-".into(), |c| format!("{c:.2} s")),
        ),
        ("state bytes", bytes_of(&s["state_bytes"])),
    ];
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    fields
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls_parse() {
        assert_eq!(
            parse_url("http://127.0.0.1:9090/"),
            Ok(AdminListen::Tcp("127.0.0.1:9090".parse().unwrap()))
        );
        assert_eq!(
            parse_url("127.0.0.1:9"),
            Ok(AdminListen::Tcp("127.0.0.1:9".parse().unwrap()))
        );
        assert_eq!(
            parse_url("unix:/run/a.sock"),
            Ok(AdminListen::Unix("/run/a.sock".into()))
        );
        assert!(parse_url("https://example.com").is_err());
    }

    #[test]
    fn the_table_is_aligned() {
        let sessions: Vec<Value> = serde_json::from_str(
            r#"[{"handle":"aaaa","app":"main /","state":"idle","age_seconds":65,"idle_seconds":2,
                 "requests":3,"worker":{"pid":42,"rss_bytes":2097152},"state_bytes":10},
                {"handle":"bbbbbbbb","app":"main /x","state":"dormant","age_seconds":1,"idle_seconds":1,
                 "requests":12,"worker":null,"state_bytes":null}]"#,
        )
        .unwrap();
        let text = table(&sessions);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("HANDLE    APP      STATE"), "{text}");
        assert!(lines[1].contains("1m 5s"), "{text}");
        assert!(lines[1].contains("2.0 MiB"), "{text}");
        let pos = |l: &str, what: &str| l.find(what).unwrap() + what.len();
        assert_eq!(pos(lines[1], " 3"), pos(lines[2], "12"), "{text}");
    }
}
