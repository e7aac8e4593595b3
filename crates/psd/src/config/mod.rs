//! What the directives mean: the parsed tree of `psd-conf` becomes a
//! validated [`Config`] with real types.
//!
//! Every directive is defined once, in [`DIRECTIVES`]: its name, where it may
//! appear, its syntax, its default and the function that applies it. The
//! validator and the reference documentation both read that table. This
//! module never opens a socket or starts a process; it only says what the
//! operator asked for, or `FILE:LINE: message` for each thing that is wrong.
//!
//! Hosts follow Apache: the main server is the default host; each
//! `<VirtualHost ADDR:PORT>` is a host of its own, chosen by listener, then
//! by TLS server name or `Host` header. Locations form one list that hosts
//! index into; a location outside every `<VirtualHost>` belongs to the main
//! server and is the fallback for all hosts.

mod directives;
mod values;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use psd_conf::{Error, Location};

pub use directives::{reference, Apply, Directive, Reload, Scope, DIRECTIVES};
pub use values::{duration, size};

use crate::app::App;
use crate::mapper::{Cidr, Mapper, SessionKey};

/// The whole daemon configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server_root: PathBuf,
    pub listen: Vec<Listen>,
    pub data_dir: PathBuf,
    pub session_secret: Option<PathBuf>,
    pub max_sessions: usize,
    pub request_header_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// `MaxSpawnRate`: new workers per second.
    pub max_spawn_rate: u32,
    /// `Threads`: the threads that run psd's event loop (`None`: one per core).
    pub threads: Option<usize>,
    pub trusted_proxies: Vec<Cidr>,
    pub error_log: Option<PathBuf>,
    /// `None`: no access log; `Some(None)`: stderr; `Some(Some(path))`: a file.
    pub access_log: Option<Option<PathBuf>>,
    pub pid_file: Option<PathBuf>,
    pub log_level: String,
    pub log_format: LogFormat,
    /// `AdminListen`: off when `None`.
    pub admin_listen: Option<AdminListen>,
    /// `AdminToken`; `DataDir/admin-token` when `None`.
    pub admin_token: Option<PathBuf>,
    /// The file this configuration was loaded from (what a reload reads).
    pub file: Option<PathBuf>,
    pub node_name: String,
    /// `StateStore`.
    pub state_store: crate::store::StoreKind,
    /// The main server: the host of every request no virtual host takes.
    pub main: Host,
    pub vhosts: Vec<VirtualHost>,
    pub locations: Vec<LocationConfig>,
    /// The directives read only at start ([`Reload::Restart`]), with their
    /// arguments as written, in order: what a reload compares.
    pub read_at_start: Vec<(&'static str, Vec<String>)>,
}

/// One `Require` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Require {
    ValidUser,
    User(Vec<String>),
    Ip(Vec<Cidr>),
}

/// `LogFormat`: how the error log is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    /// One JSON object a line.
    Json,
}

/// `AdminListen`: where the admin API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl AdminListen {
    /// `ADDR:PORT`, `PORT` (on 127.0.0.1), or `unix:PATH`.
    pub fn parse(v: &str) -> Result<AdminListen, String> {
        if let Some(path) = v.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path".into());
            }
            return Ok(AdminListen::Unix(path.into()));
        }
        if let Ok(port) = v.parse::<u16>() {
            return Ok(AdminListen::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        v.parse()
            .map(AdminListen::Tcp)
            .map_err(|_| format!("'{v}' is not ADDR:PORT, PORT or unix:PATH"))
    }
}

impl std::fmt::Display for AdminListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminListen::Tcp(addr) => write!(f, "http://{addr}"),
            AdminListen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// One `Listen` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub https: bool,
    pub at: Option<Location>,
}

/// Names and TLS settings of the main server or a virtual host.
#[derive(Debug, Clone, Default)]
pub struct Host {
    pub server_name: Option<String>,
    pub aliases: Vec<String>,
    pub ssl_engine: Option<bool>,
    pub certificate: Option<(PathBuf, Location)>,
    pub certificate_key: Option<(PathBuf, Location)>,
    /// Indices into [`Config::locations`] (virtual hosts only).
    pub locations: Vec<usize>,
}

/// `<VirtualHost ADDR:PORT>`.
#[derive(Debug, Clone)]
pub struct VirtualHost {
    /// `None` for `*` (any address of the port).
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub host: Host,
    pub at: Location,
}

/// One `<Location>`: an application mounted at a path prefix.
#[derive(Debug, Clone)]
pub struct LocationConfig {
    /// Normalised: starts with `/`, no trailing `/` except for the root.
    pub prefix: String,
    pub handler: Option<Handler>,
    /// Maps requests to sessions: the `SessionKey` parts, or a custom mapper.
    pub mapper: Arc<dyn Mapper>,
    pub max_sessions_per_client: usize,
    pub session_timeout: Duration,
    pub session_lifetime: Duration,
    pub request_timeout: Duration,
    pub worker_start_timeout: Duration,
    pub worker_stop_timeout: Duration,
    /// `WorkerConcurrency`; `None`: the protocol's default (see
    /// [`LocationConfig::concurrency`]).
    pub worker_concurrency: Option<usize>,
    /// `WorkerListen`: how an `http` worker gets its socket.
    pub worker_listen: WorkerListen,
    /// `WorkerReady`: the path an `http` worker must answer (< 500) before
    /// it counts as started.
    pub worker_ready: Option<String>,
    pub scheduling: SchedulingPolicy,
    pub max_request_body: u64,
    /// `RequestBuffering`: receive the whole body before the request takes
    /// the session's turn.
    pub request_buffering: bool,
    /// `OnTimeout resume` (true) or `restart`.
    pub resume_on_timeout: bool,
    /// `MaxSessionState`: bytes one session's (or the application's shared)
    /// values may hold.
    pub max_session_state: u64,
    /// `ClientState`: what clients may do with their state by URL.
    pub client_state: ClientState,
    /// `AuthType Basic`.
    pub auth_basic: bool,
    /// `AuthName`: the realm.
    pub auth_name: Option<String>,
    /// `AuthUserFile`, resolved against ServerRoot.
    pub auth_user_file: Option<PathBuf>,
    /// `Require` lines: any one suffices.
    pub require: Vec<Require>,
    /// `AuthForward URL [HEADER…]`.
    pub auth_forward: Option<(String, Vec<String>)>,
    pub set_env: Vec<(String, String)>,
    pub pass_env: Vec<String>,
    pub working_directory: Option<PathBuf>,
    /// `SpareWorkers`: workers kept started ahead of their session.
    pub spare_workers: usize,
    /// `RLimitCPU`, `RLimitMEM`, `RLimitNPROC`, `RLimitNOFILE`.
    pub rlimits: Vec<RLimit>,
    /// `DocumentRoot`: script-per-file FastCGI servers (php-cgi) get the
    /// script under it that the path names.
    pub document_root: Option<PathBuf>,
    /// `DirectoryIndex`: the script a path naming a directory runs.
    pub directory_index: Vec<String>,
    /// `User`: name, uid and primary gid, looked up when the config is read.
    pub user: Option<(String, u32, u32)>,
    /// `Group`: name and gid.
    pub group: Option<(String, u32)>,
    /// Where the section was written, for later error messages.
    pub at: Option<Location>,
}

/// The CPU scheduling policy worker processes run under (`sched(7)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulingPolicy {
    /// `SCHED_OTHER`: the normal policy.
    Other,
    /// `SCHED_BATCH`: a worker woken by a request does not preempt the task
    /// that woke it (psd), so psd finishes what it has ready first.
    Batch,
    /// `SCHED_IDLE`: runs only when nothing else wants the CPU.
    Idle,
}

/// `ClientState`: whether clients reach `PREFIX/.psd/state/` and
/// `PREFIX/.psd/shared/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    Off,
    /// Their own session's values, and the shared ones, read only.
    Read,
    /// Their own session's values read and written (not with a read-only
    /// id); the shared ones read only.
    Write,
}

/// What serves a location's sessions.
#[derive(Debug, Clone)]
pub enum Handler {
    /// A program started once per session.
    Process(WorkerCommand),
    /// An async task per session, in this process.
    InProcess(App),
}

/// `Worker PROTOCOL COMMAND [ARGS…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCommand {
    pub protocol: Protocol,
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// A resource limit on each worker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RLimit {
    pub resource: Resource,
    /// Seconds, bytes or a count; `u64::MAX` is unlimited.
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// CPU seconds (`RLIMIT_CPU`): SIGXCPU at the soft limit.
    Cpu,
    /// Address space in bytes (`RLIMIT_AS`).
    Mem,
    /// Processes of the worker's user (`RLIMIT_NPROC`).
    Nproc,
    /// Open files (`RLIMIT_NOFILE`).
    Nofile,
}

impl Resource {
    pub fn directive(self) -> &'static str {
        match self {
            Resource::Cpu => "RLimitCPU",
            Resource::Mem => "RLimitMEM",
            Resource::Nproc => "RLimitNPROC",
            Resource::Nofile => "RLimitNOFILE",
        }
    }
}

/// `WorkerListen`: how an `http` worker comes to listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerListen {
    /// psd's listening TCP socket as fd 3 (systemd socket activation).
    Inherit,
    /// The program binds `PORT` (`{port}` in its arguments) itself.
    Port,
    /// The program binds the Unix socket `PSD_SOCKET` (`{socket}`).
    Unix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    FastCgi,
    Http,
    Stdio,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_root: PathBuf::from("."),
            listen: vec![],
            data_dir: PathBuf::from("psd-data"),
            session_secret: None,
            max_sessions: 1000,
            request_header_timeout: Duration::from_secs(20),
            keep_alive_timeout: Duration::from_secs(15),
            max_connections: 10_000,
            max_connections_per_client: 256,
            max_spawn_rate: 64,
            threads: None,
            trusted_proxies: vec![],
            error_log: None,
            access_log: None,
            pid_file: None,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            admin_listen: None,
            admin_token: None,
            file: None,
            node_name: "psd".into(),
            state_store: crate::store::StoreKind::Embedded,
            main: Host::default(),
            vhosts: vec![],
            locations: vec![],
            read_at_start: vec![],
        }
    }
}

impl LocationConfig {
    /// A location with every directive at its default.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: normalize_prefix(prefix),
            handler: None,
            mapper: Arc::new(SessionKey::default()),
            max_sessions_per_client: 50,
            session_timeout: Duration::from_secs(15 * 60),
            session_lifetime: Duration::from_secs(24 * 3600),
            request_timeout: Duration::from_secs(60),
            worker_start_timeout: Duration::from_secs(10),
            worker_stop_timeout: Duration::from_secs(3),
            worker_concurrency: None,
            worker_listen: WorkerListen::Inherit,
            worker_ready: None,
            scheduling: SchedulingPolicy::Batch,
            max_request_body: 10 << 20,
            request_buffering: true,
            resume_on_timeout: true,
            max_session_state: 10 * 1024 * 1024,
            client_state: ClientState::Off,
            auth_basic: false,
            auth_name: None,
            auth_user_file: None,
            require: vec![],
            auth_forward: None,
            set_env: vec![],
            pass_env: vec![],
            working_directory: None,
            spare_workers: 0,
            rlimits: vec![],
            document_root: None,
            directory_index: vec!["index.php".into(), "index.html".into()],
            user: None,
            group: None,
            at: None,
        }
    }

    /// Requests one session handles at once: `WorkerConcurrency`, else 16
    /// for `http` workers (HTTP servers take concurrent requests
    /// themselves) and 1 for the others (FastCGI and JSON-lines workers
    /// answer one request after another, and in-process applications are
    /// written as one conversation).
    pub fn concurrency(&self) -> usize {
        self.worker_concurrency.unwrap_or(match &self.handler {
            Some(Handler::Process(WorkerCommand {
                protocol: Protocol::Http,
                ..
            })) => 16,
            _ => 1,
        })
    }

    /// An in-process application at `prefix`, every directive at its default.
    pub fn in_process(prefix: &str, app: App) -> Self {
        Self {
            handler: Some(Handler::InProcess(app)),
            ..Self::new(prefix)
        }
    }
}

/// Where `PATH` finds an executable named `name`.
fn in_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Config {
    /// Worker programs that are not there (yet) or cannot be run, as
    /// `file:line: message`: `psd check` fails on them, `psd serve` warns
    /// and starts (each spawn looks again, so a program deployed after
    /// psd started is found).
    pub fn missing_programs(&self) -> Vec<Error> {
        let mut missing = vec![];
        for location in &self.locations {
            let Some(Handler::Process(command)) = &location.handler else {
                continue;
            };
            let program = &command.program;
            let problem = if program.components().count() == 1 {
                in_path(program)
                    .is_none()
                    .then(|| format!("{} is not in PATH", program.display()))
            } else if !program.exists() {
                Some(format!("{} does not exist", program.display()))
            } else if !is_executable(program) {
                Some(format!("{} is not an executable file", program.display()))
            } else {
                None
            };
            if let Some(problem) = problem {
                missing.push(Error::new(
                    &at(&location.at),
                    format!("<Location {}>: Worker program {problem}", location.prefix),
                ));
            }
        }
        missing
    }

    /// The address psd listens on when no `Listen` is given.
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:8080";

    /// Reads, parses and validates a configuration file. On failure, every
    /// syntax and validation error is returned, in file and line order.
    pub fn load(path: &Path) -> Result<Config, Vec<Error>> {
        let parsed = psd_conf::parse_file(path);
        let parent = path.parent().unwrap_or(Path::new("."));
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let root = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
        let validated = Config::from_nodes(&parsed.nodes, &root).map(|mut c| {
            c.file = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
            c
        });
        if parsed.errors.is_empty() {
            return validated;
        }
        let mut errors = parsed.errors;
        errors.extend(validated.err().unwrap_or_default());
        errors.sort_by(|a, b| (&a.at.file, a.at.line).cmp(&(&b.at.file, b.at.line)));
        errors.dedup();
        Err(errors)
    }

    /// Validates a parsed tree; `root` is the default `ServerRoot`.
    pub fn from_nodes(nodes: &[psd_conf::Node], root: &Path) -> Result<Config, Vec<Error>> {
        let mut config = Config {
            server_root: root.to_path_buf(),
            ..Config::default()
        };
        let mut errors = directives::apply_all(&mut config, nodes);
        config.finish(&mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            errors.sort_by(|a, b| (&a.at.file, a.at.line).cmp(&(&b.at.file, b.at.line)));
            Err(errors)
        }
    }

    /// Resolves relative paths against `ServerRoot` and checks what needs the
    /// whole file to be known.
    fn finish(&mut self, errors: &mut Vec<Error>) {
        if self.listen.is_empty() {
            self.listen.push(Listen {
                addr: Self::DEFAULT_LISTEN.parse().expect("valid default address"),
                https: false,
                at: None,
            });
        }
        let root = self.server_root.clone();
        self.data_dir = root.join(&self.data_dir);
        if let Some(AdminListen::Unix(path)) = &mut self.admin_listen {
            *path = root.join(&*path);
        }
        for path in [
            &mut self.session_secret,
            &mut self.error_log,
            &mut self.pid_file,
            &mut self.admin_token,
        ]
        .into_iter()
        .flatten()
        {
            *path = root.join(&*path);
        }
        if let Some(Some(path)) = &mut self.access_log {
            *path = root.join(&*path);
        }
        for host in
            std::iter::once(&mut self.main).chain(self.vhosts.iter_mut().map(|v| &mut v.host))
        {
            for (path, _) in [&mut host.certificate, &mut host.certificate_key]
                .into_iter()
                .flatten()
            {
                *path = root.join(&*path);
            }
        }
        self.check_locations(errors);
        self.check_hosts(errors);
    }

    fn check_locations(&mut self, errors: &mut Vec<Error>) {
        let root = self.server_root.clone();
        let main = self.main_locations();
        let mut groups: Vec<Vec<usize>> = self
            .vhosts
            .iter()
            .map(|v| v.host.locations.clone())
            .collect();
        groups.push(main);
        for group in groups {
            // A set: 1.1 million locations took longer than 30 s with a list.
            let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
            for &i in &group {
                let location = &self.locations[i];
                if !seen.insert(location.prefix.as_str()) {
                    errors.push(Error::new(
                        &at(&location.at),
                        format!(
                            "<Location {}> is defined twice for this host",
                            location.prefix
                        ),
                    ));
                }
            }
        }
        for location in &mut self.locations {
            check_auth(location, &root, errors);
            match &mut location.handler {
                None => errors.push(Error::new(
                    &at(&location.at),
                    format!("<Location {}> has no Worker directive", location.prefix),
                )),
                Some(Handler::Process(command)) => {
                    // A path with a slash is relative to ServerRoot; a bare
                    // name is a file beside the config if there is one, else
                    // looked up in PATH (at each spawn), else the file
                    // beside the config it will be once it is there.
                    let beside = root.join(&command.program);
                    if command.program.components().count() > 1
                        || beside.is_file()
                        || in_path(&command.program).is_none()
                    {
                        command.program = beside;
                    }
                    let http_only = [
                        (
                            location.worker_listen != WorkerListen::Inherit,
                            "WorkerListen",
                        ),
                        (location.worker_ready.is_some(), "WorkerReady"),
                    ];
                    for (_, name) in http_only.iter().filter(|(set, _)| *set) {
                        if command.protocol != Protocol::Http {
                            errors.push(Error::new(
                                &at(&location.at),
                                format!(
                                    "<Location {}>: {name} applies to http workers only",
                                    location.prefix
                                ),
                            ));
                        }
                    }
                    if let Some(dir) = &mut location.document_root {
                        let joined = root.join(&*dir);
                        if command.protocol != Protocol::FastCgi {
                            errors.push(Error::new(
                                &at(&location.at),
                                format!(
                                    "<Location {}>: DocumentRoot applies to fastcgi workers only",
                                    location.prefix
                                ),
                            ));
                        }
                        // Canonical: a script is checked to be under it.
                        match joined.canonicalize() {
                            Ok(real) if real.is_dir() => *dir = real,
                            _ => errors.push(Error::new(
                                &at(&location.at),
                                format!("DocumentRoot {} is not a directory", joined.display()),
                            )),
                        }
                    }
                }
                Some(Handler::InProcess(_)) => {}
            }
            location.working_directory = Some(match &location.working_directory {
                Some(dir) => root.join(dir),
                None => root.clone(),
            });
        }
    }

    /// Every virtual host needs a listener; every https listener a
    /// certificate for its default host; every certificate must load.
    fn check_hosts(&self, errors: &mut Vec<Error>) {
        for vhost in &self.vhosts {
            let listener = self.listen.iter().find(|l| vhost.serves(l.addr));
            match (listener, vhost.host.ssl_engine) {
                (None, _) => errors.push(Error::new(
                    &vhost.at,
                    format!(
                        "<VirtualHost> has no Listen on port {} to be reached through",
                        vhost.port
                    ),
                )),
                (Some(l), Some(true)) if !l.https => errors.push(Error::new(
                    &vhost.at,
                    format!("SSLEngine on, but Listen {} is not https", l.addr),
                )),
                (Some(l), Some(false)) if l.https => errors.push(Error::new(
                    &vhost.at,
                    format!("SSLEngine off, but Listen {} is https", l.addr),
                )),
                _ => {}
            }
        }
        for listen in self.listen.iter().filter(|l| l.https) {
            let first = self
                .vhosts
                .iter()
                .find(|v| v.serves(listen.addr))
                .map(|v| &v.host);
            let has_pair = |h: &Host| h.certificate.is_some() && h.certificate_key.is_some();
            if !first.is_some_and(has_pair) && !has_pair(&self.main) {
                errors.push(Error::new(
                    &at(&listen.at),
                    format!(
                        "https listener {} needs SSLCertificateFile and SSLCertificateKeyFile \
                         (in the server config or its first <VirtualHost>)",
                        listen.addr
                    ),
                ));
            }
        }
        for host in std::iter::once(&self.main).chain(self.vhosts.iter().map(|v| &v.host)) {
            match (&host.certificate, &host.certificate_key) {
                (Some((cert, cert_at)), Some((key, _))) => {
                    if let Err(e) = crate::tls::load_pair(cert, key) {
                        errors.push(Error::new(cert_at, e));
                    }
                }
                (Some((_, at)), None) => errors.push(Error::new(
                    at,
                    "SSLCertificateFile without SSLCertificateKeyFile",
                )),
                (None, Some((_, at))) => errors.push(Error::new(
                    at,
                    "SSLCertificateKeyFile without SSLCertificateFile",
                )),
                (None, None) => {}
            }
        }
    }

    /// Locations of the main server: those in no `<VirtualHost>`.
    /// The directives read only at start whose values differ in `next`,
    /// each named once: a reload to `next` cannot apply them.
    /// `AdminToken`, or its default `DataDir/admin-token`.
    pub fn admin_token_path(&self) -> PathBuf {
        self.admin_token
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin-token"))
    }

    pub fn needs_restart(&self, next: &Config) -> Vec<&'static str> {
        let written = |c: &Config, name: &str| -> Vec<Vec<String>> {
            c.read_at_start
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, args)| args.clone())
                .collect()
        };
        DIRECTIVES
            .iter()
            .filter(|d| d.reload == Reload::Restart)
            .map(|d| d.name)
            .filter(|name| written(self, name) != written(next, name))
            .collect()
    }

    pub fn main_locations(&self) -> Vec<usize> {
        let vhost_of = self.vhost_of_locations();
        (0..self.locations.len())
            .filter(|&i| vhost_of[i].is_none())
            .collect()
    }

    /// For each location, the virtual host it belongs to (none: the main
    /// server's), in one pass.
    pub fn vhost_of_locations(&self) -> Vec<Option<usize>> {
        let mut of = vec![None; self.locations.len()];
        for (v, vhost) in self.vhosts.iter().enumerate() {
            for &i in &vhost.host.locations {
                if let Some(slot) = of.get_mut(i) {
                    slot.get_or_insert(v);
                }
            }
        }
        of
    }

    /// The virtual host for a request that arrived on `local` for `name`
    /// (SNI or `Host`, without port): the first whose address matches and
    /// whose name or alias does, else the first whose address matches (the
    /// listener's default), else none (the main server).
    pub fn select_host(&self, local: SocketAddr, name: Option<&str>) -> Option<usize> {
        let mut on_listener = self
            .vhosts
            .iter()
            .enumerate()
            .filter(|(_, v)| v.serves(local));
        let first = on_listener.clone().next().map(|(i, _)| i);
        name.and_then(|name| {
            on_listener
                .find(|(_, v)| v.host.answers_to(name))
                .map(|(i, _)| i)
        })
        .or(first)
    }
}

impl VirtualHost {
    /// Whether a connection to `local` reaches this virtual host.
    pub fn serves(&self, local: SocketAddr) -> bool {
        self.port == local.port() && self.ip.is_none_or(|ip| ip == local.ip())
    }
}

impl Host {
    /// `ServerName` or a `ServerAlias` (with `*` wildcards) match `name`.
    pub fn answers_to(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        self.server_name
            .iter()
            .map(|n| strip_port(n))
            .chain(self.aliases.iter().map(String::as_str))
            .any(|pattern| host_matches(pattern, name))
    }
}

/// `host:port` → `host`. A bracketed IPv6 literal stays whole; a name whose
/// part after the last `:` is not a port, or an unbracketed IPv6 address, is
/// returned as it is.
pub(crate) fn strip_port(host: &str) -> &str {
    if let Some(end) = host.strip_prefix('[').and_then(|h| h.find(']')) {
        return &host[..end + 2];
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// Case-insensitive; `*` in a pattern matches any run of characters.
fn host_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    match p.split_once('*') {
        None => p == n,
        Some((head, tail)) => {
            n.len() >= head.len() + tail.len() && n.starts_with(head) && n.ends_with(tail)
        }
    }
}

/// `AuthType`, `AuthUserFile` and `Require` fit together, and the user
/// file reads (its own `file:line` for each bad entry).
fn check_auth(location: &mut LocationConfig, root: &Path, errors: &mut Vec<Error>) {
    let here = at(&location.at);
    let prefix = location.prefix.clone();
    let names_users = location
        .require
        .iter()
        .any(|r| matches!(r, Require::ValidUser | Require::User(_)));
    if let Some(file) = &mut location.auth_user_file {
        *file = root.join(&*file);
        if let Err(problems) = crate::auth::UserFile::load(file) {
            errors.extend(problems);
        }
    }
    let mut problem =
        |text: &str| errors.push(Error::new(&here, format!("<Location {prefix}>: {text}")));
    if names_users && !location.auth_basic {
        problem("Require valid-user / user needs AuthType Basic");
    }
    if location.auth_basic && location.auth_user_file.is_none() {
        problem("AuthType Basic needs AuthUserFile");
    }
    if location.auth_basic && !names_users {
        problem("AuthType Basic without Require valid-user or Require user: nobody would be asked to log in");
    }
    if !location.auth_basic && location.auth_user_file.is_some() {
        problem("AuthUserFile without AuthType Basic");
    }
    if location.auth_forward.is_some() && (location.auth_basic || !location.require.is_empty()) {
        problem("AuthForward decides alone: not with AuthType or Require");
    }
}

fn at(location: &Option<Location>) -> Location {
    location.clone().unwrap_or_else(|| Location {
        file: Path::new("-").into(),
        line: 0,
    })
}

/// Whether `prefix` (normalised) covers `path`: `/app` covers `/app` and
/// `/app/x`, never `/apples`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The longest prefix among `candidates` that covers `path`.
pub fn longest_match(
    locations: &[LocationConfig],
    candidates: &[usize],
    path: &str,
) -> Option<usize> {
    candidates
        .iter()
        .copied()
        .filter(|&i| prefix_matches(&locations[i].prefix, path))
        .max_by_key(|&i| locations[i].prefix.len())
}

fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else if trimmed.starts_with('/') {
        trimmed.into()
    } else {
        format!("/{trimmed}")
    }
}

#[cfg(test)]
mod tests;
