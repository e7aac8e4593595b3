//! What the directives mean: the parsed tree of `psd-conf` becomes a
//! validated [`Config`] with real types.
//!
//! Every directive is defined once, in [`DIRECTIVES`]: its name, where it may
//! appear, its syntax, its default and the function that applies it. The
//! validator and the reference documentation both read that table. This
//! module never opens a socket or starts a process; it only says what the
//! operator asked for, or `FILE:LINE: message` for each thing that is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use psd_conf::{Error, Location, Node};

use crate::app::App;
use crate::mapper::{Cidr, Mapper, SessionKey};

/// The whole daemon configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server_root: PathBuf,
    pub listen: Vec<Listen>,
    pub server_name: Option<String>,
    pub data_dir: PathBuf,
    pub session_secret: Option<PathBuf>,
    pub max_sessions: usize,
    pub request_header_timeout: Duration,
    pub trusted_proxies: Vec<Cidr>,
    pub error_log: Option<PathBuf>,
    pub log_level: String,
    pub node_name: String,
    pub locations: Vec<LocationConfig>,
}

/// One `Listen` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub https: bool,
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
    pub worker_concurrency: usize,
    pub max_request_body: u64,
    pub set_env: Vec<(String, String)>,
    pub pass_env: Vec<String>,
    pub working_directory: Option<PathBuf>,
    /// Where the section was written, for later error messages.
    pub at: Option<Location>,
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
            server_name: None,
            data_dir: PathBuf::from("psd-data"),
            session_secret: None,
            max_sessions: 1000,
            request_header_timeout: Duration::from_secs(20),
            trusted_proxies: vec![],
            error_log: None,
            log_level: "info".into(),
            node_name: "psd".into(),
            locations: vec![],
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
            worker_concurrency: 1,
            max_request_body: 10 << 20,
            set_env: vec![],
            pass_env: vec![],
            working_directory: None,
            at: None,
        }
    }

    /// An in-process application at `prefix`, every directive at its default.
    pub fn in_process(prefix: &str, app: App) -> Self {
        Self {
            handler: Some(Handler::InProcess(app)),
            ..Self::new(prefix)
        }
    }
}

impl Config {
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
        let validated = Config::from_nodes(&parsed.nodes, &root);
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
    pub fn from_nodes(nodes: &[Node], root: &Path) -> Result<Config, Vec<Error>> {
        let mut config = Config {
            server_root: root.to_path_buf(),
            ..Config::default()
        };
        let mut errors = vec![];
        for node in nodes {
            if let Err(e) = apply(&mut config, None, node, Scope::Server) {
                errors.extend(e);
            }
        }
        config.finish(&mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
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
            });
        }
        let root = self.server_root.clone();
        self.data_dir = root.join(&self.data_dir);
        if let Some(secret) = &mut self.session_secret {
            *secret = root.join(&*secret);
        }
        if let Some(log) = &mut self.error_log {
            *log = root.join(&*log);
        }
        let mut seen: Vec<&str> = vec![];
        for location in &mut self.locations {
            let at = location.at.clone().unwrap_or_else(|| Location {
                file: Path::new("-").into(),
                line: 0,
            });
            if seen.contains(&location.prefix.as_str()) {
                errors.push(Error::new(
                    &at,
                    format!("<Location {}> is defined twice", location.prefix),
                ));
            }
            seen.push(&location.prefix);
            match &mut location.handler {
                None => errors.push(Error::new(
                    &at,
                    format!("<Location {}> has no Worker directive", location.prefix),
                )),
                Some(Handler::Process(command)) => {
                    // A path with a slash is relative to ServerRoot; a bare
                    // name is a file beside the config if there is one, else
                    // looked up in PATH.
                    let beside = root.join(&command.program);
                    if command.program.components().count() > 1 || beside.is_file() {
                        command.program = beside;
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

    /// The location that serves `path`: the longest prefix that matches on a
    /// path-segment boundary.
    pub fn route(&self, path: &str) -> Option<usize> {
        self.locations
            .iter()
            .enumerate()
            .filter(|(_, l)| prefix_matches(&l.prefix, path))
            .max_by_key(|(_, l)| l.prefix.len())
            .map(|(i, _)| i)
    }
}

/// Whether `prefix` (normalised) covers `path`: `/app` covers `/app` and
/// `/app/x`, never `/apples`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
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

/// Where a directive may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Server,
    Location,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Server => "server config",
            Scope::Location => "<Location>",
        }
    }
}

type ServerFn = fn(&mut Config, &[String]) -> Result<(), String>;
type LocationFn = fn(&mut LocationConfig, &[String]) -> Result<(), String>;

/// How a directive changes the configuration.
#[derive(Clone, Copy)]
pub enum Apply {
    Server(ServerFn),
    Location(LocationFn),
    /// A section that holds other directives.
    Section,
}

/// The one definition of a directive.
pub struct Directive {
    pub name: &'static str,
    pub scope: Scope,
    pub syntax: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    pub apply: Apply,
}

/// Every directive psd knows, in the order the reference lists them.
pub const DIRECTIVES: &[Directive] = &[
    Directive {
        name: "ServerRoot",
        scope: Scope::Server,
        syntax: "ServerRoot DIR",
        default: "the config file's folder",
        help: "Base for relative paths.",
        apply: Apply::Server(|c, a| {
            c.server_root = c.server_root.join(one(a)?);
            Ok(())
        }),
    },
    Directive {
        name: "Listen",
        scope: Scope::Server,
        syntax: "Listen ADDR:PORT [http]",
        default: "127.0.0.1:8080 http",
        help: "A listener; repeatable. Port 0 picks a free port.",
        apply: Apply::Server(|c, a| {
            let (addr, proto) = match a {
                [addr] => (addr, "http"),
                [addr, proto] => (addr, proto.as_str()),
                _ => return Err("expected ADDR:PORT [http]".into()),
            };
            let addr: SocketAddr = addr
                .parse()
                .map_err(|_| format!("'{addr}' is not an ADDR:PORT (use 0.0.0.0:PORT or [::]:PORT for every address)"))?;
            match proto.to_ascii_lowercase().as_str() {
                "http" => {}
                "https" => return Err("https listeners are not supported by this version yet".into()),
                other => return Err(format!("unknown protocol '{other}', expected http")),
            }
            c.listen.push(Listen { addr, https: false });
            Ok(())
        }),
    },
    Directive {
        name: "ServerName",
        scope: Scope::Server,
        syntax: "ServerName HOST[:PORT]",
        default: "the first Listen address",
        help: "Name used in redirects and SERVER_NAME.",
        apply: Apply::Server(|c, a| {
            c.server_name = Some(one(a)?.to_string());
            Ok(())
        }),
    },
    Directive {
        name: "DataDir",
        scope: Scope::Server,
        syntax: "DataDir DIR",
        default: "psd-data",
        help: "psd's own state: the generated session secret and worker sockets. Created with mode 0700.",
        apply: Apply::Server(|c, a| {
            c.data_dir = PathBuf::from(one(a)?);
            Ok(())
        }),
    },
    Directive {
        name: "SessionSecret",
        scope: Scope::Server,
        syntax: "SessionSecret FILE",
        default: "DataDir/secret",
        help: "HMAC key for session ids; created with mode 0600 if missing.",
        apply: Apply::Server(|c, a| {
            c.session_secret = Some(PathBuf::from(one(a)?));
            Ok(())
        }),
    },
    Directive {
        name: "MaxSessions",
        scope: Scope::Server,
        syntax: "MaxSessions N",
        default: "1000",
        help: "Live sessions across all applications; new sessions beyond it get 503 with Retry-After.",
        apply: Apply::Server(|c, a| {
            c.max_sessions = positive(one(a)?)?;
            Ok(())
        }),
    },
    Directive {
        name: "TrustedProxy",
        scope: Scope::Server,
        syntax: "TrustedProxy CIDR…",
        default: "none",
        help: "Peers whose Forwarded / X-Forwarded-For headers are believed; the client is the rightmost untrusted address they forward. Headers from other peers are ignored.",
        apply: Apply::Server(|c, a| {
            if a.is_empty() {
                return Err("expected one or more addresses or CIDR ranges".into());
            }
            for cidr in a {
                c.trusted_proxies.push(cidr.parse()?);
            }
            Ok(())
        }),
    },
    Directive {
        name: "RequestHeaderTimeout",
        scope: Scope::Server,
        syntax: "RequestHeaderTimeout DURATION",
        default: "20s",
        help: "A client must send a whole request head within this time, or its connection is closed (nginx's client_header_timeout).",
        apply: Apply::Server(|c, a| {
            c.request_header_timeout = duration(one(a)?)?;
            Ok(())
        }),
    },
    Directive {
        name: "ErrorLog",
        scope: Scope::Server,
        syntax: "ErrorLog FILE|-",
        default: "- (stderr)",
        help: "Where psd's log and workers' stderr go.",
        apply: Apply::Server(|c, a| {
            let v = one(a)?;
            c.error_log = (v != "-").then(|| PathBuf::from(v));
            Ok(())
        }),
    },
    Directive {
        name: "LogLevel",
        scope: Scope::Server,
        syntax: "LogLevel error|warn|info|debug|trace",
        default: "info",
        help: "Least severe level logged. Apache's crit/alert/emerg count as error, notice as info.",
        apply: Apply::Server(|c, a| {
            let level = match one(a)?.to_ascii_lowercase().as_str() {
                "emerg" | "alert" | "crit" | "error" => "error",
                "warn" => "warn",
                "notice" | "info" => "info",
                "debug" => "debug",
                "trace" | "trace1" | "trace2" | "trace3" | "trace4" | "trace5" | "trace6"
                | "trace7" | "trace8" => "trace",
                other => return Err(format!("unknown log level '{other}'")),
            };
            c.log_level = level.into();
            Ok(())
        }),
    },
    Directive {
        name: "Location",
        scope: Scope::Server,
        syntax: "<Location /PATH> … </Location>",
        default: "",
        help: "Mounts one application at a path prefix. The prefix is SCRIPT_NAME, the rest of the path PATH_INFO.",
        apply: Apply::Section,
    },
    Directive {
        name: "Worker",
        scope: Scope::Location,
        syntax: "Worker fastcgi|http|stdio COMMAND [ARGS…]",
        default: "required",
        help: "The program run once per session. fastcgi: fd 0 is a listening Unix socket. http: fd 3 is a listening TCP socket on 127.0.0.1 (LISTEN_FDS=1, LISTEN_PID, LISTEN_FDNAMES=http, PORT). stdio: one JSON object a line on stdin and stdout.",
        apply: Apply::Location(|l, a| {
            let [protocol, program, args @ ..] = a else {
                return Err("expected Worker PROTOCOL COMMAND [ARGS…]".into());
            };
            let protocol = match protocol.to_ascii_lowercase().as_str() {
                "fastcgi" => Protocol::FastCgi,
                "http" => Protocol::Http,
                "stdio" => Protocol::Stdio,
                _ => return Err(format!("unknown worker protocol '{protocol}', expected fastcgi, http or stdio")),
            };
            l.handler = Some(Handler::Process(WorkerCommand {
                protocol,
                program: PathBuf::from(program),
                args: args.to_vec(),
            }));
            Ok(())
        }),
    },
    Directive {
        name: "SessionKey",
        scope: Scope::Location,
        syntax: "SessionKey PART…",
        default: "cookie psd_sid",
        help: "What maps a request to its session, combined in order: `cookie NAME` or `query NAME` (a psd-issued, signed id; the cookie wins when both are present), `path` (the path under the Location: one session per path), `ip` (the client address).",
        apply: Apply::Location(|l, a| {
            l.mapper = Arc::new(SessionKey::parse(a)?);
            Ok(())
        }),
    },
    Directive {
        name: "MaxSessionsPerClient",
        scope: Scope::Location,
        syntax: "MaxSessionsPerClient N",
        default: "50",
        help: "Live sessions one client address may hold; beyond it new sessions get 503 with Retry-After.",
        apply: Apply::Location(|l, a| {
            l.max_sessions_per_client = positive(one(a)?)?;
            Ok(())
        }),
    },
    Directive {
        name: "SessionTimeout",
        scope: Scope::Location,
        syntax: "SessionTimeout DURATION",
        default: "15m",
        help: "Idle time after which the worker is stopped; the session resumes with a new worker on its next request.",
        apply: Apply::Location(|l, a| {
            l.session_timeout = duration(one(a)?)?;
            Ok(())
        }),
    },
    Directive {
        name: "SessionLifetime",
        scope: Scope::Location,
        syntax: "SessionLifetime DURATION",
        default: "24h",
        help: "After this the session is gone, busy or not; its id is no longer accepted.",
        apply: Apply::Location(|l, a| {
            l.session_lifetime = duration(one(a)?)?;
            Ok(())
        }),
    },
    Directive {
        name: "RequestTimeout",
        scope: Scope::Location,
        syntax: "RequestTimeout DURATION",
        default: "60s",
        help: "A worker that has not answered by then (or goes silent that long mid-response): 504, and the worker is replaced.",
        apply: Apply::Location(|l, a| {
            l.request_timeout = duration(one(a)?)?;
            Ok(())
        }),
    },
    Directive {
        name: "WorkerStartTimeout",
        scope: Scope::Location,
        syntax: "WorkerStartTimeout DURATION",
        default: "10s",
        help: "Deadline for a new worker to start answering FastCGI.",
        apply: Apply::Location(|l, a| {
            l.worker_start_timeout = duration(one(a)?)?;
            Ok(())
        }),
    },
    Directive {
        name: "WorkerStopTimeout",
        scope: Scope::Location,
        syntax: "WorkerStopTimeout DURATION",
        default: "3s",
        help: "Grace between SIGTERM and SIGKILL when a worker is stopped.",
        apply: Apply::Location(|l, a| {
            l.worker_stop_timeout = duration(one(a)?)?;
            Ok(())
        }),
    },
    Directive {
        name: "WorkerConcurrency",
        scope: Scope::Location,
        syntax: "WorkerConcurrency N",
        default: "1",
        help: "Requests one session handles at once; 1 means strictly one after another.",
        apply: Apply::Location(|l, a| {
            l.worker_concurrency = positive(one(a)?)?;
            Ok(())
        }),
    },
    Directive {
        name: "MaxRequestBody",
        scope: Scope::Location,
        syntax: "MaxRequestBody SIZE",
        default: "10M",
        help: "Larger request bodies get 413.",
        apply: Apply::Location(|l, a| {
            l.max_request_body = size(one(a)?)?;
            Ok(())
        }),
    },
    Directive {
        name: "SetEnv",
        scope: Scope::Location,
        syntax: "SetEnv NAME VALUE",
        default: "",
        help: "Sets a variable in the worker's environment.",
        apply: Apply::Location(|l, a| match a {
            [name, value] => {
                env_name(name)?;
                l.set_env.push((name.clone(), value.clone()));
                Ok(())
            }
            _ => Err("expected SetEnv NAME VALUE".into()),
        }),
    },
    Directive {
        name: "PassEnv",
        scope: Scope::Location,
        syntax: "PassEnv NAME…",
        default: "",
        help: "Passes psd's own variables to the worker. Workers start with only PATH and psd's variables otherwise.",
        apply: Apply::Location(|l, a| {
            if a.is_empty() {
                return Err("expected PassEnv NAME…".into());
            }
            for name in a {
                env_name(name)?;
                l.pass_env.push(name.clone());
            }
            Ok(())
        }),
    },
    Directive {
        name: "WorkingDirectory",
        scope: Scope::Location,
        syntax: "WorkingDirectory DIR",
        default: "ServerRoot",
        help: "The worker's current directory.",
        apply: Apply::Location(|l, a| {
            l.working_directory = Some(PathBuf::from(one(a)?));
            Ok(())
        }),
    },
];

/// The configuration reference (`docs/config.md`), generated from
/// [`DIRECTIVES`] so that it cannot drift from what the parser accepts.
pub fn reference() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the directive table in `crates/psd/src/config.rs`; a test fails when \
         this page is stale (regenerate with `PSD_BLESS=1 cargo test -p psd reference`).\n\n\
         One directive a line, case-insensitive names, `#` comments, `\"quoted values\"`, `\\` \
         line continuation, `<Section arg> … </Section>` blocks, and `Include path/glob` \
         anywhere. Relative paths are relative to `ServerRoot` (default: the config file's \
         folder). Durations: `30s`, `15m`, `2h`, `1d`, `250ms` or a bare number of seconds. \
         Sizes: `512`, `64K`, `8M`, `1G`. An unknown directive, a bad value or a directive in \
         the wrong section is an error with file and line; `psd check -c FILE` lists them all.\n",
    );
    for scope in [Scope::Server, Scope::Location] {
        out.push_str(&format!(
            "\n## {}\n\n| directive | meaning | default |\n| --- | --- | --- |\n",
            match scope {
                Scope::Server => "Server config",
                Scope::Location => "Inside `<Location /PATH>`",
            }
        ));
        for d in DIRECTIVES.iter().filter(|d| d.scope == scope) {
            let default = if d.default.is_empty() {
                "—"
            } else {
                d.default
            };
            out.push_str(&format!(
                "| `{}` | {} | {} |\n",
                d.syntax.replace('|', "\\|"),
                d.help,
                default
            ));
        }
    }
    out
}

fn find(name: &str) -> Option<&'static Directive> {
    DIRECTIVES
        .iter()
        .find(|d| d.name.eq_ignore_ascii_case(name))
}

/// Applies one node in `scope`; `location` is the section being filled.
fn apply(
    config: &mut Config,
    location: Option<&mut LocationConfig>,
    node: &Node,
    scope: Scope,
) -> Result<(), Vec<Error>> {
    let err = |message: String| vec![Error::new(&node.at, message)];
    let Some(directive) = find(&node.name) else {
        return Err(err(format!("unknown directive '{}'", node.name)));
    };
    if directive.scope != scope {
        return Err(err(format!(
            "{} is not allowed in {} (it belongs in {})",
            directive.name,
            scope.name(),
            directive.scope.name()
        )));
    }
    let is_section = matches!(directive.apply, Apply::Section);
    if is_section != node.children.is_some() {
        return Err(err(if is_section {
            format!(
                "{} must be written as a <{}> section",
                directive.name, directive.name
            )
        } else {
            format!("{} is a directive, not a section", directive.name)
        }));
    }
    let with_name = |r: Result<(), String>| r.map_err(|m| err(format!("{}: {m}", directive.name)));
    match (directive.apply, location) {
        (Apply::Server(f), _) => with_name(f(config, &node.args)),
        (Apply::Location(f), Some(location)) => with_name(f(location, &node.args)),
        (Apply::Location(_), None) => unreachable!("scope checked above"),
        (Apply::Section, _) => {
            let [prefix] = &node.args[..] else {
                return Err(err("<Location> takes exactly one path".into()));
            };
            if !prefix.starts_with('/') {
                return Err(err(format!(
                    "<Location {prefix}>: the path must start with /"
                )));
            }
            let mut location = LocationConfig::new(prefix);
            location.at = Some(node.at.clone());
            let mut errors = vec![];
            for child in node.children.iter().flatten() {
                if let Err(e) = apply(config, Some(&mut location), child, Scope::Location) {
                    errors.extend(e);
                }
            }
            config.locations.push(location);
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors)
            }
        }
    }
}

fn one(args: &[String]) -> Result<&str, String> {
    match args {
        [value] => Ok(value),
        [] => Err("missing value".into()),
        _ => Err(format!("expected one value, got {}", args.len())),
    }
}

fn positive(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("'{value}' is not a positive whole number")),
    }
}

/// `30s`, `15m`, `2h`, `1d`, `250ms`, or a bare number of seconds.
pub fn duration(value: &str) -> Result<Duration, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let bad = || format!("'{value}' is not a duration (use 30s, 15m, 2h, 1d or seconds)");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit.to_ascii_lowercase().as_str() {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    n.checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(bad)
}

/// `512`, `64K`, `8M`, `1G` (powers of 1024).
pub fn size(value: &str) -> Result<u64, String> {
    let bad = || format!("'{value}' is not a size (use 512, 64K, 8M or 1G)");
    let (number, shift) = match value.as_bytes().last().map(u8::to_ascii_uppercase) {
        Some(b'K') => (&value[..value.len() - 1], 10),
        Some(b'M') => (&value[..value.len() - 1], 20),
        Some(b'G') => (&value[..value.len() - 1], 30),
        _ => (value, 0),
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

fn env_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!("'{name}' is not a valid environment variable name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, Vec<String>> {
        let nodes = psd_conf::parse_str(text, Path::new("t.conf"), Path::new("/srv"))
            .into_result()
            .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        Config::from_nodes(&nodes, Path::new("/srv"))
            .map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_full_location_resolves_to_real_types() {
        let c = load(
            "Listen 127.0.0.1:0\nDataDir data\nMaxSessions 20\n<Location /app/>\n\
             Worker fastcgi bin/counter.pl --x\nSessionKey cookie sid\nSessionTimeout 2m\n\
             RequestTimeout 1500ms\nMaxRequestBody 64K\nSetEnv A b\nPassEnv HOME USER\n</Location>\n",
        )
        .unwrap();
        assert_eq!(c.data_dir, Path::new("/srv/data"));
        assert_eq!(c.max_sessions, 20);
        let l = &c.locations[0];
        assert_eq!(l.prefix, "/app");
        assert_eq!(l.mapper.cookie_name(), Some("sid"));
        assert_eq!(l.session_timeout, Duration::from_secs(120));
        assert_eq!(l.request_timeout, Duration::from_millis(1500));
        assert_eq!(l.max_request_body, 64 * 1024);
        assert_eq!(l.pass_env, ["HOME", "USER"]);
        let Some(Handler::Process(cmd)) = &l.handler else {
            panic!("no worker")
        };
        assert_eq!(cmd.program, Path::new("/srv/bin/counter.pl"));
        assert_eq!(cmd.args, ["--x"]);
    }

    #[test]
    fn every_error_is_reported_with_its_line() {
        let errors = load(
            "Bogus 1\nMaxSessions zero\nSessionTimeout 5m\n<Location /a>\nListen 1.2.3.4:5\n\
             Worker fastcgi x\nSessionTimeout 5 minutes\n</Location>\n<Location /b>\n</Location>\n",
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "t.conf:1: unknown directive 'Bogus'",
                "t.conf:2: MaxSessions: 'zero' is not a positive whole number",
                "t.conf:3: SessionTimeout is not allowed in server config (it belongs in <Location>)",
                "t.conf:5: Listen is not allowed in <Location> (it belongs in server config)",
                "t.conf:7: SessionTimeout: expected one value, got 2",
                "t.conf:9: <Location /b> has no Worker directive",
            ]
        );
    }

    #[test]
    fn routing_takes_the_longest_prefix_on_segment_boundaries() {
        let c = load(
            "<Location />\nWorker fastcgi a\n</Location>\n<Location /app>\nWorker fastcgi b\n</Location>\n",
        )
        .unwrap();
        assert_eq!(c.route("/app/x"), Some(1));
        assert_eq!(c.route("/app"), Some(1));
        assert_eq!(c.route("/apples"), Some(0));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn reference_page_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md");
        let generated = reference();
        if std::env::var_os("PSD_BLESS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/config.md is stale: run PSD_BLESS=1 cargo test -p psd reference"
        );
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(duration("1d"), Ok(Duration::from_secs(86400)));
        assert!(duration("1w").is_err());
        assert!(duration("").is_err());
        assert_eq!(size("8M"), Ok(8 << 20));
        assert_eq!(size("1g"), Ok(1 << 30));
        assert!(size("1T").is_err());
        assert!(size("99999999999G").is_err());
    }
}
