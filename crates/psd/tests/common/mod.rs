//! Shared helpers for the integration tests: a real `psd` process on a free
//! loopback port with its own DataDir, and curl as the client (cookie jars
//! included), so everything crosses real sockets and real processes.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const PSD: &str = env!("CARGO_BIN_EXE_psd");

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "psd-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The repository's root folder.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Path of a test worker under `crates/psd/tests/workers`.
pub fn test_worker(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workers")
        .join(name)
}

/// A running `psd serve` with its log collected.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub dir: TempDir,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts psd with `body` as its configuration, after a `Listen` on a free
    /// loopback port and a private `DataDir`.
    pub fn start(body: &str) -> Daemon {
        Daemon::start_raw(&format!("Listen 127.0.0.1:0\n{body}"))
    }

    /// Starts psd with `body` (which has its own `Listen` lines) after a
    /// private `DataDir`; `port` is the first listener's.
    pub fn start_raw(body: &str) -> Daemon {
        Daemon::start_logging(body, "info")
    }

    /// [`Daemon::start_raw`] with `RUST_LOG` set to `filter`.
    pub fn start_logging(body: &str, filter: &str) -> Daemon {
        Daemon::start_with(body, filter, None)
    }

    /// [`Daemon::start`] under an open-file limit of `nofile` (soft and hard).
    pub fn start_with_file_limit(body: &str, nofile: u32) -> Daemon {
        Daemon::start_with(&format!("Listen 127.0.0.1:0\n{body}"), "info", Some(nofile))
    }

    fn start_with(body: &str, filter: &str, nofile: Option<u32>) -> Daemon {
        let dir = TempDir::new("d");
        let config = dir.join("psd.conf");
        std::fs::write(
            &config,
            format!("DataDir {}\n{body}", dir.join("data").display()),
        )
        .unwrap();
        let (child, port, log) = launch(&config, filter, nofile);
        Daemon {
            child,
            port,
            dir,
            log,
        }
    }

    /// Starts psd again with the same configuration and `DataDir`, once the
    /// previous one has exited (after `signal`, say); on a new port.
    pub fn restart(&mut self) {
        self.wait_exit(Duration::from_secs(10));
        let (child, port, log) = launch(&self.config_path(), "info", None);
        self.child = child;
        self.port = port;
        self.log = log;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to psd.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `limit` for psd to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "psd did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The configuration file psd was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("psd.conf")
    }

    /// Rewrites the configuration (keeping its DataDir) and sends SIGHUP;
    /// returns once psd logged the outcome (`reloaded` or `failed`).
    pub fn reload(&self, body: &str) -> bool {
        let before = self.log.lock().unwrap().len();
        std::fs::write(
            self.config_path(),
            format!("DataDir {}\n{body}", self.dir.join("data").display()),
        )
        .unwrap();
        self.signal("HUP");
        let mut outcome = None;
        eventually(Duration::from_secs(10), || {
            let log = self.log.lock().unwrap();
            outcome = log[before..].iter().find_map(|l| {
                if l.contains("configuration reloaded") {
                    Some(true)
                } else if l.contains("the running configuration stays") {
                    Some(false)
                } else {
                    None
                }
            });
            outcome.is_some()
        });
        outcome.expect("psd reported no reload outcome")
    }
}

/// Adds `user` with `password` to the htpasswd file `file`, hashed with
/// `flag` (`-B` bcrypt, `-5` SHA-512, `-2` SHA-256, `-m` Apache MD5).
pub fn htpasswd(file: &std::path::Path, flag: &str, user: &str, password: &str) {
    let mut cmd = Command::new("htpasswd");
    if !file.exists() {
        cmd.arg("-c");
    }
    let out = cmd
        .args(["-b", flag])
        .arg(file)
        .args([user, password])
        .output()
        .expect("htpasswd (Debian's apache2-utils; scripts/install-test-deps.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A port that was free a moment ago, for configurations that need one.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Spawns `psd serve -c config` and waits for its first listener: the
/// process, the port and its collected log.
fn launch(
    config: &Path,
    filter: &str,
    nofile: Option<u32>,
) -> (Child, u16, Arc<Mutex<Vec<String>>>) {
    let mut command = match nofile {
        None => Command::new(PSD),
        Some(n) => {
            let mut sh = Command::new("sh");
            sh.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\"")])
                .arg(PSD);
            sh
        }
    };
    let mut child = command
        .args(["serve", "-c"])
        .arg(config)
        .env("RUST_LOG", filter)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psd");
    let log = Arc::new(Mutex::new(vec![]));
    let (port_tx, port_rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                // The URL ends the text (or, in a JSON log line, its message).
                let url = rest.split(['"', ' ']).next().unwrap_or("");
                let port = url.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                let _ = port_tx.send(port.unwrap());
            }
            sink.lock().unwrap().push(line);
        }
    });
    match port_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(port) => (child, port, log),
        Err(_) => {
            let _ = child.kill();
            panic!("psd did not start: {:?}", log.lock().unwrap());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill").arg(self.pid().to_string()).status();
            let _ = self.wait_exit_quietly(Duration::from_secs(10));
        }
    }
}

impl Daemon {
    fn wait_exit_quietly(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

/// One HTTP response as curl saw it.
#[derive(Debug)]
pub struct Reply {
    /// The URL curl ended at (after redirects, with `-L`).
    pub url: String,
    /// `HTTP/1.1`, `HTTP/2`, … as the status line says.
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A `key=value` field of the test workers' one-line bodies.
    pub fn field(&self, key: &str) -> Option<String> {
        self.body
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_string))
    }

    pub fn pid(&self) -> u32 {
        self.field("pid")
            .unwrap_or_else(|| panic!("no pid in {self:?}"))
            .parse()
            .unwrap()
    }

    pub fn count(&self) -> i64 {
        self.field("count").unwrap().parse().unwrap()
    }
}

/// curl with an optional cookie jar.
pub struct Client {
    jar: Option<PathBuf>,
}

impl Client {
    /// A client that keeps cookies in its own jar file.
    pub fn with_jar(dir: &TempDir, name: &str) -> Client {
        Client {
            jar: Some(dir.join(&format!("{name}.jar"))),
        }
    }

    /// A client without cookies.
    pub fn anonymous() -> Client {
        Client { jar: None }
    }

    pub fn get(&self, url: &str) -> Reply {
        self.request(url, &[])
    }

    /// Runs curl with extra arguments; times out after 30 s.
    pub fn request(&self, url: &str, extra: &[&str]) -> Reply {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-S",
            "-i",
            "--max-time",
            "30",
            "-w",
            "%{stderr}%{url_effective}",
        ]);
        if let Some(jar) = &self.jar {
            cmd.arg("-b").arg(jar).arg("-c").arg(jar);
        }
        cmd.args(extra).arg(url);
        let out = cmd.output().expect("curl");
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut reply = parse_reply(&String::from_utf8_lossy(&out.stdout));
        reply.url = String::from_utf8_lossy(&out.stderr).trim().to_string();
        reply
    }
}

fn parse_reply(text: &str) -> Reply {
    let (mut head, mut body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    // With -L, every response of the redirect chain is in the output.
    while body.starts_with("HTTP/") {
        (head, body) = body.split_once("\r\n\r\n").unwrap_or((body, ""));
    }
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let version = status_line
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let status = Some(status_line)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply {
        url: String::new(),
        version,
        status,
        headers,
        body: body.to_string(),
    }
}

/// A browser in the style of Test::WWW::Mechanize: follows redirects and
/// links by their text, keeping its cookies.
pub struct Browser {
    client: Client,
    pub page: Reply,
}

impl Browser {
    pub fn open(dir: &TempDir, name: &str, url: &str) -> Browser {
        let client = Client::with_jar(dir, name);
        let page = client.request(url, &["-L"]);
        Browser { client, page }
    }

    pub fn get(&mut self, url: &str) -> &Reply {
        self.page = self.client.request(url, &["-L"]);
        &self.page
    }

    /// Follows the first `<a href="…">text</a>` of the current page.
    pub fn follow(&mut self, text: &str) -> &Reply {
        let href = self
            .links()
            .into_iter()
            .find(|(_, t)| t == text)
            .unwrap_or_else(|| panic!("no link {text:?} on {}: {}", self.page.url, self.page.body))
            .0;
        let url = resolve(&self.page.url, &href);
        self.get(&url)
    }

    /// Every link of the current page: (href, text).
    pub fn links(&self) -> Vec<(String, String)> {
        self.page
            .body
            .split("<a href=\"")
            .skip(1)
            .filter_map(|rest| {
                let (href, rest) = rest.split_once('"')?;
                let text = rest.split_once('>')?.1.split_once("</a>")?.0;
                Some((href.replace("&amp;", "&"), text.to_string()))
            })
            .collect()
    }

    pub fn contains(&self, text: &str) -> bool {
        self.page.body.contains(text)
    }
}

/// Resolves a link against the page it is on.
pub fn resolve(base: &str, href: &str) -> String {
    if href.starts_with("http://") || href.starts_with("https://") {
        return href.to_string();
    }
    let origin_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|i| base[i..].find('/').map(|j| i + j))
        .unwrap_or(base.len());
    let (origin, path) = base.split_at(origin_end);
    let path = path.split('?').next().unwrap_or("/");
    if href.starts_with('/') {
        format!("{origin}{href}")
    } else if href.starts_with('?') {
        format!("{origin}{path}{href}")
    } else {
        let dir = &path[..path.rfind('/').map(|i| i + 1).unwrap_or(0)];
        format!("{origin}{dir}{href}")
    }
}

/// Whether a process exists (a reaped pid has no /proc entry).
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// The `Location` section for a FastCGI worker at `prefix`, with extra lines.
pub fn location(prefix: &str, worker: &Path, extra: &str) -> String {
    format!(
        "<Location {prefix}>\n    Worker fastcgi {}\n{extra}\n</Location>\n",
        worker.display()
    )
}

/// Serves `locations` in this process through `psd::Server` on a free
/// loopback port. Dropping the returned sender shuts it down.
pub async fn serve(
    dir: &TempDir,
    locations: Vec<psd::config::LocationConfig>,
    max_sessions: usize,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (base, stop, server, _) = serve_with_handle(dir, locations, max_sessions).await;
    (base, stop, server)
}

/// Like [`serve`], also returning the server's session handle.
pub async fn serve_with_handle(
    dir: &TempDir,
    locations: Vec<psd::config::LocationConfig>,
    max_sessions: usize,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
    psd::Sessions,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let config = psd::Config {
        data_dir: dir.join("data"),
        max_sessions,
        locations,
        ..psd::Config::default()
    };
    let server = psd::Server::new(config).unwrap();
    let sessions = server.sessions();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.run(vec![listener], async move {
        let _ = stopped.await;
    }));
    (base, stop, handle, sessions)
}

/// Runs blocking curl calls off the async runtime.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Sends a GET over a raw connection and records, for each marker, how long
/// after sending it first appeared in what arrived.
pub fn arrival_times(port: u16, path: &str, markers: &[&str]) -> Vec<Duration> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let started = Instant::now();
    let mut seen = vec![None; markers.len()];
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.iter().any(Option::is_none) {
        let n = conn.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
        let so_far = String::from_utf8_lossy(&text);
        for (slot, marker) in seen.iter_mut().zip(markers) {
            if slot.is_none() && so_far.contains(marker) {
                *slot = Some(started.elapsed());
            }
        }
    }
    seen.into_iter()
        .zip(markers)
        .map(|(t, m)| {
            t.unwrap_or_else(|| {
                panic!(
                    "{m:?} never arrived in {:?}",
                    String::from_utf8_lossy(&text)
                )
            })
        })
        .collect()
}

/// The `Location` section for a worker of any protocol.
pub fn location_proto(prefix: &str, protocol: &str, worker: &Path, extra: &str) -> String {
    format!(
        "<Location {prefix}>\n    Worker {protocol} {}\n{extra}\n</Location>\n",
        worker.display()
    )
}

/// The Rust example worker, built once if the test run has not built it.
pub fn rust_counter() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--quiet", "-p", "counter-fcgi"])
                .current_dir(repo())
                .status()
                .unwrap();
            assert!(status.success(), "building counter-fcgi");
            PathBuf::from(PSD).with_file_name("counter-fcgi")
        })
        .clone()
}

/// The link `/.psd/share` hands out, from its HTML.
pub fn share_link(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{reply:?}");
    reply
        .body
        .split("href=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string()
}
