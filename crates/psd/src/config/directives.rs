//! The one definition of every directive: name, scope, syntax, default,
//! help, and the function that applies it. The validator and the generated
//! reference page (`docs/config.md`) both read [`DIRECTIVES`].

use std::path::PathBuf;
use std::sync::Arc;

use psd_conf::{Error, Location, Node};

use super::values::{duration, env_name, listen_addr, on_off, one, positive, size};
use super::{
    AdminListen, Config, Handler, Host, Listen, LocationConfig, LogFormat, Protocol, RLimit,
    Resource, SchedulingPolicy, VirtualHost, WorkerCommand, WorkerListen,
};
use crate::mapper::SessionKey;

/// Where a directive may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Top level only.
    Server,
    /// Top level (the main server) or inside `<VirtualHost>`.
    Host,
    Location,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Server => "server config",
            Scope::Host => "server config or <VirtualHost>",
            Scope::Location => "<Location>",
        }
    }
}

type ServerFn = fn(&mut Config, &[String], &Location) -> Result<(), String>;
type HostFn = fn(&mut Host, &[String], &Location) -> Result<(), String>;
type LocationFn = fn(&mut LocationConfig, &[String]) -> Result<(), String>;

/// How a directive changes the configuration.
#[derive(Clone, Copy)]
pub enum Apply {
    Server(ServerFn),
    Host(HostFn),
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
    /// What a reload (SIGHUP) does with a change to it.
    pub reload: Reload,
    pub apply: Apply,
}

/// What a configuration reload does with a changed directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Requests after the reload follow the new value.
    Requests,
    /// New sessions get the new value; live ones keep the one they started with.
    NewSessions,
    /// Read once at start: a change is logged and waits for a restart.
    Restart,
}

impl Reload {
    fn describe(self) -> &'static str {
        match self {
            Reload::Requests => "yes",
            Reload::NewSessions => "new sessions",
            Reload::Restart => "restart",
        }
    }
}

/// Every directive psd knows, in the order the reference lists them.
pub const DIRECTIVES: &[Directive] = &[
    Directive {
        name: "ServerRoot",
        scope: Scope::Server,
        reload: Reload::Restart,
        syntax: "ServerRoot DIR",
        default: "the config file's folder",
        help: "Base for relative paths.",
        apply: Apply::Server(|c, a, _| {
            c.server_root = c.server_root.join(one(a)?);
            Ok(())
        }),
    },
    Directive {
        name: "Listen",
        scope: Scope::Server,
        reload: Reload::Restart,
        syntax: "Listen [ADDR:]PORT [http|https]",
        default: "127.0.0.1:8080 http",
        help: "A listener; repeatable. A bare PORT listens on every address; port 0 picks a free port. https listeners serve TLS 1.2/1.3 with HTTP/2 and HTTP/1.1 (ALPN).",
        apply: Apply::Server(|c, a, at| {
            let (addr, proto) = match a {
                [addr] => (addr, "http"),
                [addr, proto] => (addr, proto.as_str()),
                _ => return Err("expected [ADDR:]PORT [http|https]".into()),
            };
            let https = match proto.to_ascii_lowercase().as_str() {
                "http" => false,
                "https" => true,
                other => return Err(format!("unknown protocol '{other}', expected http or https")),
            };
            c.listen.push(Listen {
                addr: listen_addr(addr)?,
                https,
                at: Some(at.clone()),
            });
            Ok(())
        }),
    },
    Directive {
        name: "ServerName",
        scope: Scope::Host,
        reload: Reload::Requests,
        syntax: "ServerName HOST[:PORT]",
        default: "the Host header, else the listener's address",
        help: "The host's name: chooses the virtual host (with ServerAlias) and is SERVER_NAME when a request has no Host header.",
        apply: Apply::Host(|h, a, _| {
            h.server_name = Some(one(a)?.to_string());
            Ok(())
        }),
    },
    Directive {
        name: "ServerAlias",
        scope: Scope::Host,
        reload: Reload::Requests,
        syntax: "ServerAlias NAME…",
        default: "",
        help: "Other names of the host; `*` matches any run of characters (`*.example.com`).",
        apply: Apply::Host(|h, a, _| {
            if a.is_empty() {
                return Err("expected one or more names".into());
            }
            h.aliases.extend(a.iter().cloned());
            Ok(())
        }),
    },
    Directive {
        name: "SSLEngine",
        scope: Scope::Host,
        reload: Reload::Requests,
        syntax: "SSLEngine on|off",
        default: "as the listener",
        help: "Says whether the host is reached over TLS; checked against its Listen.",
        apply: Apply::Host(|h, a, _| {
            h.ssl_engine = Some(on_off(one(a)?)?);
            Ok(())
        }),
    },
    Directive {
        name: "SSLCertificateFile",
        scope: Scope::Host,
        reload: Reload::Requests,
        syntax: "SSLCertificateFile FILE",
        default: "—",
        help: "PEM certificate chain of the host (the server config's serves https listeners without a virtual host of their own).",
        apply: Apply::Host(|h, a, at| {
            h.certificate = Some((PathBuf::from(one(a)?), at.clone()));
            Ok(())
        }),
    },
    Directive {
        name: "SSLCertificateKeyFile",
        scope: Scope::Host,
        reload: Reload::Requests,
        syntax: "SSLCertificateKeyFile FILE",
        default: "—",
        help: "PEM private key (PKCS#8, PKCS#1 or SEC1) for SSLCertificateFile.",
        apply: Apply::Host(|h, a, at| {
            h.certificate_key = Some((PathBuf::from(one(a)?), at.clone()));
            Ok(())
        }),
    },
    Directive {
        name: "VirtualHost",
        scope: Scope::Server,
        reload: Reload::Requests,
        syntax: "<VirtualHost ADDR:PORT> … </VirtualHost>",
        default: "",
        help: "A host of its own on a listener: ServerName, ServerAlias, SSL directives and <Location> blocks. Chosen by listener, then TLS server name or Host header; the first on a listener is its default.",
        apply: Apply::Section,
    },
    Directive {
        name: "DataDir",
        scope: Scope::Server,
        reload: Reload::Restart,
        syntax: "DataDir DIR",
        default: "psd-data",
        help: "psd's own state: the generated session secret and worker sockets. Created with mode 0700.",
        apply: Apply::Server(|c, a, _| {
            c.data_dir = PathBuf::from(one(a)?);
            Ok(())
        }),
    },
    Directive {
        name: "SessionSecret",
        scope: Scope::Server,
        reload: Reload::Restart,
        syntax: "SessionSecret FILE",
        default: "DataDir/secret",
        help: "HMAC key for session ids; created with mode 0600 if missing.",
        apply: Apply::Server(|c, a, _| {
            c.session_secret = Some(PathBuf::from(one(a)?));
            Ok(())
        }),
    },
    Directive {
        name: "NodeName",
        scope: Scope::Server,
        reload: Reload::Restart,
        syntax: "NodeName NAME",
        default: "psd",
        help: "This instance's name, the first part of every session id it issues (letters, digits, `-`). A front proxy can route a session to its node by it.",
        apply: Apply::Server(|c, a, _| {
            let name = one(a)?;
            if !crate::mapper::valid_node_name(name) {
                return Err(format!("'{name}': use letters, digits and '-' (at most 64)"));
            }
            c.node_name = name.to_string();
            Ok(())
        }),
    },
    Directive {
        name: "StateStore",
        scope: Scope::Server,
        reload: Reload::Restart,
        syntax: "StateStore embedded|memory|redis://HOST:PORT/DB",
        default: "embedded",
        help: "Where session records live. embedded: `DataDir/state.redb`, written durably (writes batched into shared commits); a session whose worker stopped, or that outlived a restart of psd (SIGTERM or kill -9), resumes with its id and `PSD_RESUMED=1` until its SessionLifetime. A store file psd cannot read stops psd from starting, naming the file. memory: nothing survives psd. redis://: a Redis server (several psd nodes can share it); psd connects on first use and again by itself after Redis went away, and while it is unreachable, requests that need a new or dormant session get 503.",
        apply: Apply::Server(|c, a, _| {
            let value = one(a)?;
            c.state_store = match value.to_ascii_lowercase().as_str() {
                "embedded" => crate::store::StoreKind::Embedded,
                "memory" => crate::store::StoreKind::Memory,
                url if url.starts_with("redis://") => {
                    redis_url_ok(value)?;
                    crate::store::StoreKind::Redis(value.to_string())
                }
                other => {
                    return Err(format!(
                        "'{other}': expected embedded, memory or redis://HOST:PORT/DB"
                    ))
                }
            };
            Ok(())
        }),
    },
    Directive {
        name: "MaxSessions",
        scope: Scope::Server,
        reload: Reload::Restart,
        syntax: "MaxSessions N",
        default: "1000",
        help: "Sessions with a live worker or task, across all applications. When they are all taken, a new session takes the place of a process session that served only one request and has been idle 2 s (its worker stops; its id stays valid and resumes it), so a flood of one-request sessions cannot lock new users out; with no such session, new sessions get 503 with Retry-After.",
        apply: Apply::Server(|c, a, _| {
            c.max_sessions = positive(one(a)?)?;
            Ok(())
        }),
    },
    Directive {
        name: "TrustedProxy",
        scope: Scope::Server,
        reload: Reload::Requests,
        syntax: "TrustedProxy CIDR…",
        default: "none",
        help: "Peers whose Forwarded / X-Forwarded-For headers are believed; the client is the rightmost untrusted address they forward. Headers from other peers are ignored.",
        apply: Apply::Server(|c, a, _| {
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
        reload: Reload::Restart,
        syntax: "RequestHeaderTimeout DURATION",
        default: "20s",
        help: "From accept until a connection's first request head is in (TLS handshake included), and from its first byte for any later one; a connection that sends nothing, or too slowly, is closed (nginx's client_header_timeout).",
        apply: Apply::Server(|c, a, _| {
            c.request_header_timeout = duration(one(a)?)?;
            Ok(())
        }),
    },
    Directive {
        name: "KeepAliveTimeout",
        scope: Scope::Server,
        reload: Reload::Restart,
        syntax: "KeepAliveTimeout DURATION",
        default: "15s",
        help: "How long a kept-alive HTTP/1.1 connection, or an HTTP/2 connection with no stream open, may sit idle after its last response before it is closed (Apache's KeepAliveTimeout). Its next request head must be in within this time too.",
        apply: Apply::Server(|c, a, _| {
            c.keep_alive_timeout = duration(one(a)?)?;
            Ok(())
        }),
    },
    Directive {
        name: "MaxConnections",
        scope: Scope::Server,
        reload: Reload::Requests,
        syntax: "MaxConnections N",
        default: "10000",
        help: "Open client connections psd holds at once. At the limit, a new connection takes the place of the oldest one that has had no request in flight for a second (as Apache's event MPM closes idle keep-alive connections), else it is closed at accept. Keep it below the open-file limit, with room for workers.",
        apply: Apply::Server(|c, a, _| {
            c.max_connections = positive(one(a)?)?;
            Ok(())
        }),
    },
    Directive {
        name: "MaxConnectionsPerClient",
        scope: Scope::Server,
        reload: Reload::Requests,
        syntax: "MaxConnectionsPerClient N",
        default: "256",
        help: "Open connections from one peer address (nginx's limit_conn); beyond it that peer's new connections are closed at accept. TrustedProxy peers are exempt.",
        apply: Apply::Server(|c, a, _| {
            c.max_connections_per_client = positive(one(a)?)?;
            Ok(())
        }),
    },
    Directive {
        name: "MaxSpawnRate",
        scope: Scope::Server,
        reload: Reload::Restart,
        syntax: "MaxSpawnRate N",
        default: "64",
        help: "New worker processes started per second, across all applications (php-fpm's pm.max_spawn_rate), with a burst of up to N at once. A new session beyond it waits up to 2 s for its turn, then gets 503 with Retry-After.",
        apply: Apply::Server(|c, a, _| {
            c.max_spawn_rate = u32::try_from(positive(one(a)?)?).map_err(|_| "too large".to_string())?;
            Ok(())
        }),
    },
    Directive {
        name: "Threads",
        scope: Scope::Server,
        reload: Reload::Restart,
        syntax: "Threads N|auto",
        default: "auto",
        help: "Threads that run psd's event loop: connections, routing, proxying (nginx's worker_processes). `auto` is one per CPU core. With 1, psd runs on one thread with no hand-offs between threads: the least CPU per request, for a small machine shared with its workers, or to compare with an nginx of one worker process.",
        apply: Apply::Server(|c, a, _| {
            c.threads = match one(a)? {
                v if v.eq_ignore_ascii_case("auto") => None,
                v => Some(positive(v)?),
            };
            Ok(())
        }),
    },
    Directive {
        name: "ErrorLog",
        scope: Scope::Server,
        reload: Reload::Restart,
        syntax: "ErrorLog FILE|-",
        default: "- (stderr)",
        help: "Where psd's log and workers' stderr go.",
        apply: Apply::Server(|c, a, _| {
            let v = one(a)?;
            c.error_log = (v != "-").then(|| PathBuf::from(v));
            Ok(())
        }),
    },
    Directive {
        name: "AccessLog",
        scope: Scope::Server,
        reload: Reload::Restart,
        syntax: "AccessLog FILE|-",
        default: "off",
        help: "One line per request in Apache's Combined Log Format, then the session's handle (never its id) and the upstream time in seconds (`-` is stderr).",
        apply: Apply::Server(|c, a, _| {
            let v = one(a)?;
            c.access_log = Some((v != "-").then(|| PathBuf::from(v)));
            Ok(())
        }),
    },
    Directive {
        name: "PidFile",
        scope: Scope::Server,
        reload: Reload::Restart,
        syntax: "PidFile FILE",
        default: "none",
        help: "psd writes its pid here at start and removes it at exit.",
        apply: Apply::Server(|c, a, _| {
            c.pid_file = Some(PathBuf::from(one(a)?));
            Ok(())
        }),
    },
    Directive {
        name: "LogFormat",
        scope: Scope::Server,
        reload: Reload::Restart,
        syntax: "LogFormat text|json",
        default: "text",
        help: "The error log's format: a line of text, or one JSON object a line (timestamp, level, message, and the fields: session handle, app, worker pid), for a log shipper.",
        apply: Apply::Server(|c, a, _| {
            c.log_format = match one(a)?.to_ascii_lowercase().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => return Err(format!("unknown log format '{other}' (text or json)")),
            };
            Ok(())
        }),
    },
    Directive {
        name: "AdminListen",
        scope: Scope::Server,
        reload: Reload::Restart,
        syntax: "AdminListen ADDR:PORT|PORT|unix:PATH",
        default: "off",
        help: "Where the admin API, the dashboard and /metrics listen: a TCP address (a bare port is 127.0.0.1:PORT) or a Unix socket. Never one of the Listen addresses; the public listeners never answer admin paths.",
        apply: Apply::Server(|c, a, _| {
            c.admin_listen = Some(AdminListen::parse(one(a)?)?);
            Ok(())
        }),
    },
    Directive {
        name: "AdminToken",
        scope: Scope::Server,
        reload: Reload::Restart,
        syntax: "AdminToken FILE",
        default: "DataDir/admin-token",
        help: "The bearer token the admin API asks for (every request but GET /health and GET /metrics); created with a random token and mode 0600 if missing.",
        apply: Apply::Server(|c, a, _| {
            c.admin_token = Some(PathBuf::from(one(a)?));
            Ok(())
        }),
    },
    Directive {
        name: "LogLevel",
        scope: Scope::Server,
        reload: Reload::Restart,
        syntax: "LogLevel error|warn|info|debug|trace",
        default: "info",
        help: "Least severe level logged. Apache's crit/alert/emerg count as error, notice as info.",
        apply: Apply::Server(|c, a, _| {
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
        scope: Scope::Host,
        reload: Reload::Requests,
        syntax: "<Location /PATH> … </Location>",
        default: "",
        help: "Mounts one application at a path prefix. The prefix is SCRIPT_NAME, the rest of the path PATH_INFO.",
        apply: Apply::Section,
    },
    Directive {
        name: "Worker",
        scope: Scope::Location,
        reload: Reload::NewSessions,
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
        reload: Reload::Requests,
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
        reload: Reload::Requests,
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
        reload: Reload::NewSessions,
        syntax: "SessionTimeout DURATION",
        default: "15m",
        help: "Idle time after which the worker is stopped; the session resumes with a new worker on its next request. A session that has served only one request is stopped after at most 60 s idle.",
        apply: Apply::Location(|l, a| {
            l.session_timeout = duration(one(a)?)?;
            Ok(())
        }),
    },
    Directive {
        name: "SessionLifetime",
        scope: Scope::Location,
        reload: Reload::NewSessions,
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
        reload: Reload::NewSessions,
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
        reload: Reload::NewSessions,
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
        reload: Reload::NewSessions,
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
        reload: Reload::NewSessions,
        syntax: "WorkerConcurrency N",
        default: "1 (fastcgi, stdio, in-process), 16 (http)",
        help: "Requests one session handles at once; 1 means strictly one after another. HTTP workers serve concurrent requests themselves (a web terminal's long poll and its keystrokes, say), so they default to 16.",
        apply: Apply::Location(|l, a| {
            l.worker_concurrency = Some(positive(one(a)?)?);
            Ok(())
        }),
    },
    Directive {
        name: "WorkerListen",
        scope: Scope::Location,
        reload: Reload::NewSessions,
        syntax: "WorkerListen inherit|port|unix",
        default: "inherit",
        help: "http workers only. inherit: psd's listening TCP socket on 127.0.0.1 as fd 3 (LISTEN_FDS=1, LISTEN_PID: systemd socket activation). port: psd picks a free loopback port, sets PORT and replaces {port} in the arguments; the program binds it (Node, Flask, Streamlit, Shiny, Jupyter). unix: the same with a Unix socket path in PSD_SOCKET and {socket} (gunicorn, uvicorn). The worker counts as started once it accepts connections (and answers WorkerReady).",
        apply: Apply::Location(|l, a| {
            l.worker_listen = match one(a)?.to_ascii_lowercase().as_str() {
                "inherit" => WorkerListen::Inherit,
                "port" => WorkerListen::Port,
                "unix" => WorkerListen::Unix,
                other => return Err(format!("unknown WorkerListen '{other}', expected inherit, port or unix")),
            };
            Ok(())
        }),
    },
    Directive {
        name: "WorkerReady",
        scope: Scope::Location,
        reload: Reload::NewSessions,
        syntax: "WorkerReady PATH",
        default: "—",
        help: "http workers only: the worker counts as started once GET PATH answers with a status below 500 (until then, and without it, once it accepts connections), within WorkerStartTimeout.",
        apply: Apply::Location(|l, a| {
            let path = one(a)?;
            if !path.starts_with('/') {
                return Err(format!("WorkerReady '{path}' must be a path starting with /"));
            }
            l.worker_ready = Some(path.to_string());
            Ok(())
        }),
    },
    Directive {
        name: "WorkerSchedulingPolicy",
        scope: Scope::Location,
        reload: Reload::NewSessions,
        syntax: "WorkerSchedulingPolicy batch|other|idle",
        default: "batch",
        help: "CPU scheduling policy of worker processes, as systemd's `CPUSchedulingPolicy`. \
               With `batch` a worker woken by a request does not preempt psd, which finishes \
               the work it has ready first: far fewer context switches under load, and no \
               difference when a CPU is free; but a batch worker does not preempt other \
               CPU-bound programs either, so on a shared machine choose `other`, the normal \
               policy. `idle` runs workers only when nothing else wants the CPU.",
        apply: Apply::Location(|l, a| {
            l.scheduling = match one(a)?.to_ascii_lowercase().as_str() {
                "batch" => SchedulingPolicy::Batch,
                "other" => SchedulingPolicy::Other,
                "idle" => SchedulingPolicy::Idle,
                v => return Err(format!("unknown scheduling policy {v:?}: expected batch, other or idle")),
            };
            Ok(())
        }),
    },
    Directive {
        name: "RLimitCPU",
        scope: Scope::Location,
        reload: Reload::NewSessions,
        syntax: "RLimitCPU SECONDS|max [SECONDS|max]",
        default: "none",
        help: "CPU seconds a worker process may use, as Apache's: the soft limit (SIGXCPU ends it; the hard limit defaults to one second more), then the hard limit. Its client gets 502, the log names the limit.",
        apply: Apply::Location(|l, a| rlimit(l, Resource::Cpu, a)),
    },
    Directive {
        name: "RLimitMEM",
        scope: Scope::Location,
        reload: Reload::NewSessions,
        syntax: "RLimitMEM SIZE|max [SIZE|max]",
        default: "none",
        help: "Address space of a worker process (RLIMIT_AS), soft and hard (default: the same), in bytes or with K, M, G.",
        apply: Apply::Location(|l, a| rlimit(l, Resource::Mem, a)),
    },
    Directive {
        name: "RLimitNPROC",
        scope: Scope::Location,
        reload: Reload::NewSessions,
        syntax: "RLimitNPROC N|max [N|max]",
        default: "none",
        help: "Processes the worker's user may have (RLIMIT_NPROC), soft and hard (default: the same).",
        apply: Apply::Location(|l, a| rlimit(l, Resource::Nproc, a)),
    },
    Directive {
        name: "RLimitNOFILE",
        scope: Scope::Location,
        reload: Reload::NewSessions,
        syntax: "RLimitNOFILE N|max [N|max]",
        default: "none",
        help: "Open files of a worker process (RLIMIT_NOFILE), soft and hard (default: the same).",
        apply: Apply::Location(|l, a| rlimit(l, Resource::Nofile, a)),
    },
    Directive {
        name: "SpareWorkers",
        scope: Scope::Location,
        reload: Reload::NewSessions,
        syntax: "SpareWorkers N",
        default: "0",
        help: "Worker processes kept started ahead, not yet bound to a session; a new session takes one instead of waiting for a start (a resumed session starts its own). A spare learns its session from each request (PSD_SESSION_ID param, X-Psd-Session-Id, the stdio session field) and its PSD_STATE_URL names the session it is given. Refilled in the background; spares and live workers together stay within MaxSessions.",
        apply: Apply::Location(|l, a| {
            l.spare_workers = one(a)?
                .parse()
                .map_err(|_| "expected a whole number".to_string())?;
            Ok(())
        }),
    },
    Directive {
        name: "DocumentRoot",
        scope: Scope::Location,
        reload: Reload::NewSessions,
        syntax: "DocumentRoot DIR",
        default: "—",
        help: "fastcgi workers that run one script per request (php-cgi): the path under the Location names a file under DIR, as in Apache and nginx's fastcgi_split_path_info. SCRIPT_FILENAME is that file, SCRIPT_NAME the Location prefix plus its path, PATH_INFO what follows it (/app/shop/cart.php/items → cart.php, /items); a directory runs its DirectoryIndex. Paths that name nothing, or would leave DIR (.., symlinks out), get 404. REDIRECT_STATUS=200 is set for php-cgi's cgi.force_redirect.",
        apply: Apply::Location(|l, a| {
            l.document_root = Some(PathBuf::from(one(a)?));
            Ok(())
        }),
    },
    Directive {
        name: "DirectoryIndex",
        scope: Scope::Location,
        reload: Reload::NewSessions,
        syntax: "DirectoryIndex FILE…",
        default: "index.php index.html",
        help: "With DocumentRoot: the files tried, in order, for a path that names a directory.",
        apply: Apply::Location(|l, a| {
            if a.is_empty() || a.iter().any(|f| f.contains('/') || f == ".." || f == ".") {
                return Err("expected DirectoryIndex FILE… (names, not paths)".into());
            }
            l.directory_index = a.to_vec();
            Ok(())
        }),
    },
    Directive {
        name: "MaxRequestBody",
        scope: Scope::Location,
        reload: Reload::Requests,
        syntax: "MaxRequestBody SIZE",
        default: "10M",
        help: "Larger request bodies get 413.",
        apply: Apply::Location(|l, a| {
            l.max_request_body = size(one(a)?)?;
            Ok(())
        }),
    },
    Directive {
        name: "OnTimeout",
        scope: Scope::Location,
        reload: Reload::NewSessions,
        syntax: "OnTimeout resume|restart",
        default: "resume",
        help: "What SessionTimeout (idle) does. resume: the worker stops and the session stays, dormant, until SessionLifetime: its next request starts a worker with `PSD_RESUMED=1` under the same id. restart: the session ends (its record deleted); the old id then gets a new session.",
        apply: Apply::Location(|l, a| {
            l.resume_on_timeout = match one(a)?.to_ascii_lowercase().as_str() {
                "resume" => true,
                "restart" => false,
                other => return Err(format!("'{other}': expected resume or restart")),
            };
            Ok(())
        }),
    },
    Directive {
        name: "MaxSessionState",
        scope: Scope::Location,
        reload: Reload::NewSessions,
        syntax: "MaxSessionState SIZE",
        default: "10M",
        help: "Bytes one session's values may hold in all (and the application's shared values, likewise): a write past it gets 413.",
        apply: Apply::Location(|l, a| {
            l.max_session_state = size(one(a)?)?;
            Ok(())
        }),
    },
    Directive {
        name: "AuthType",
        scope: Scope::Location,
        reload: Reload::Requests,
        syntax: "AuthType Basic",
        default: "none",
        help: "HTTP Basic authentication, as Apache's mod_auth_basic, checked before any session is looked up or created: no session, no worker for a client that has not authenticated. Needs AuthUserFile and a Require naming users.",
        apply: Apply::Location(|l, a| {
            match one(a)?.to_ascii_lowercase().as_str() {
                "basic" => l.auth_basic = true,
                "none" => l.auth_basic = false,
                other => return Err(format!("'{other}': psd supports AuthType Basic")),
            }
            Ok(())
        }),
    },
    Directive {
        name: "AuthName",
        scope: Scope::Location,
        reload: Reload::Requests,
        syntax: "AuthName TEXT",
        default: "the <Location> prefix",
        help: "The realm a browser shows when it asks for a user name and password.",
        apply: Apply::Location(|l, a| {
            let name = one(a)?;
            if name.contains(['"', '\\']) || name.chars().any(char::is_control) {
                return Err("AuthName may not hold quotes, backslashes or control characters".into());
            }
            l.auth_name = Some(name.to_string());
            Ok(())
        }),
    },
    Directive {
        name: "AuthUserFile",
        scope: Scope::Location,
        reload: Reload::Requests,
        syntax: "AuthUserFile FILE",
        default: "none",
        help: "An htpasswd file (`htpasswd -B`: bcrypt; `-5`/`-2`: SHA-512/SHA-256 crypt; `-m`: Apache MD5). Plaintext, unsalted SHA-1 and DES crypt lines are refused. Read again when it changes (checked at most once a second) and on SIGHUP; a broken new version is logged and the last good one kept.",
        apply: Apply::Location(|l, a| {
            l.auth_user_file = Some(PathBuf::from(one(a)?));
            Ok(())
        }),
    },
    Directive {
        name: "AuthForward",
        scope: Scope::Location,
        reload: Reload::Requests,
        syntax: "AuthForward URL [HEADER…]",
        default: "none",
        help: "Forward authentication (nginx's auth_request, Traefik's ForwardAuth), before any session is touched: psd asks URL (http://HOST:PORT/PATH) with the request's method and headers, no body, plus X-Forwarded-Method, -Uri, -Host, -Proto, -For. A 2xx answer lets the request through, with the named HEADERs of that answer copied onto it (the client's own of those names are dropped); its X-Remote-User, Remote-User, X-Auth-Request-User or X-Forwarded-User names the session's user. Any other answer goes back to the client as it is (an SSO's 302 to its login page, a 401). Not with AuthType or Require.",
        apply: Apply::Location(|l, a| {
            let (url, headers) = a.split_first().ok_or("expected URL [HEADER…]")?;
            let uri: http::Uri = url.parse().map_err(|_| format!("'{url}' is not a URL"))?;
            if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                return Err(format!("'{url}': expected http://HOST:PORT/PATH"));
            }
            for h in headers {
                http::HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("'{h}' is not a header name"))?;
            }
            l.auth_forward = Some((url.to_string(), headers.to_vec()));
            Ok(())
        }),
    },
    Directive {
        name: "Require",
        scope: Scope::Location,
        reload: Reload::Requests,
        syntax: "Require valid-user|user NAME…|ip CIDR…",
        default: "none",
        help: "Who may reach the application; several Require lines: any one suffices (Apache's implicit RequireAny). `valid-user`: any user of AuthUserFile; `user NAME…`: those users only (others get 403); `ip CIDR…`: clients from these addresses, without credentials. Failed logins are limited per client address: after 10 within a minute, 429 with Retry-After until the minute is over.",
        apply: Apply::Location(|l, a| {
            let (kind, rest) = a.split_first().ok_or("expected valid-user, user NAME… or ip CIDR…")?;
            let require = match kind.to_ascii_lowercase().as_str() {
                "valid-user" if rest.is_empty() => super::Require::ValidUser,
                "valid-user" => return Err("valid-user takes no arguments".into()),
                "user" if !rest.is_empty() => super::Require::User(rest.to_vec()),
                "ip" if !rest.is_empty() => super::Require::Ip(
                    rest.iter().map(|c| c.parse()).collect::<Result<_, _>>()?,
                ),
                "user" | "ip" => return Err(format!("Require {kind} needs at least one value")),
                other => {
                    return Err(format!(
                        "Require {other}: psd supports valid-user, user NAME… and ip CIDR…"
                    ))
                }
            };
            l.require.push(require);
            Ok(())
        }),
    },
    Directive {
        name: "ClientState",
        scope: Scope::Location,
        reload: Reload::Requests,
        syntax: "ClientState off|read|write",
        default: "off",
        help: "Whether clients reach their own session's values at `PREFIX/.psd/state/KEY` (found by their session id; `write` lets a read-write id PUT, DELETE and `POST ?add=N`; a read-only id only reads) and the application's shared values at `PREFIX/.psd/shared/KEY` (read only). off: both answer 404.",
        apply: Apply::Location(|l, a| {
            l.client_state = match one(a)?.to_ascii_lowercase().as_str() {
                "off" => super::ClientState::Off,
                "read" => super::ClientState::Read,
                "write" => super::ClientState::Write,
                other => return Err(format!("'{other}': expected off, read or write")),
            };
            Ok(())
        }),
    },
    Directive {
        name: "RequestBuffering",
        scope: Scope::Location,
        reload: Reload::Requests,
        syntax: "RequestBuffering on|off",
        default: "on",
        help: "on: psd receives the whole request body (in memory up to 64K, then in an unlinked temp file under DataDir) before the request takes the session's turn, as nginx's proxy_request_buffering; a slow or broken upload then costs only its own client (a body that stalls for RequestTimeout gets 408, one broken off 400), and workers get CONTENT_LENGTH even for chunked uploads. off: the body streams to the worker as it arrives (streaming uploads); a client that breaks off its body fails its own request with 400 and the worker stays.",
        apply: Apply::Location(|l, a| {
            l.request_buffering = on_off(one(a)?)?;
            Ok(())
        }),
    },
    Directive {
        name: "SetEnv",
        scope: Scope::Location,
        reload: Reload::NewSessions,
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
        reload: Reload::NewSessions,
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
        reload: Reload::NewSessions,
        syntax: "WorkingDirectory DIR",
        default: "ServerRoot",
        help: "The worker's current directory.",
        apply: Apply::Location(|l, a| {
            l.working_directory = Some(PathBuf::from(one(a)?));
            Ok(())
        }),
    },
    Directive {
        name: "User",
        scope: Scope::Location,
        reload: Reload::NewSessions,
        syntax: "User NAME",
        default: "psd's user",
        help: "The user workers run as, when psd runs as root (ignored with a warning otherwise).",
        apply: Apply::Location(|l, a| {
            let name = one(a)?;
            let user = nix::unistd::User::from_name(name)
                .map_err(|e| format!("looking up user '{name}': {e}"))?
                .ok_or_else(|| format!("no user '{name}' on this system"))?;
            l.user = Some((name.to_string(), user.uid.as_raw(), user.gid.as_raw()));
            Ok(())
        }),
    },
    Directive {
        name: "Group",
        scope: Scope::Location,
        reload: Reload::NewSessions,
        syntax: "Group NAME",
        default: "User's primary group",
        help: "The group workers run as, when psd runs as root.",
        apply: Apply::Location(|l, a| {
            let name = one(a)?;
            let group = nix::unistd::Group::from_name(name)
                .map_err(|e| format!("looking up group '{name}': {e}"))?
                .ok_or_else(|| format!("no group '{name}' on this system"))?;
            l.group = Some((name.to_string(), group.gid.as_raw()));
            Ok(())
        }),
    },
];

/// The configuration reference (`docs/config.md`), generated from
/// [`DIRECTIVES`] so that it cannot drift from what the parser accepts.
pub fn reference() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the directive table in `crates/psd/src/config/directives.rs`; a test fails when \
         this page is stale (regenerate with `PSD_BLESS=1 cargo test -p psd reference`).\n\n\
         One directive a line, case-insensitive names, `#` comments, `\"quoted values\"`, `\\` \
         line continuation, `<Section arg> … </Section>` blocks, and `Include path/glob` \
         anywhere. Relative paths are relative to `ServerRoot` (default: the config file's \
         folder). Durations: `30s`, `15m`, `2h`, `1d`, `250ms` or a bare number of seconds. \
         Sizes: `512`, `64K`, `8M`, `1G`. An unknown directive, a bad value or a directive in \
         the wrong section is an error with file and line; `psd check -c FILE` lists them all.\n\n\
         The *reload* column says what SIGHUP does with a changed value: *yes*, requests \
         after the reload follow it; *new sessions*, sessions started after the reload get \
         it and live ones keep theirs; *restart*, it is logged and waits for a restart.\n",
    );
    for scope in [Scope::Server, Scope::Host, Scope::Location] {
        out.push_str(&format!(
            "\n## {}\n\n| directive | meaning | default | reload |\n| --- | --- | --- | --- |\n",
            match scope {
                Scope::Server => "Server config",
                Scope::Host => "Server config or `<VirtualHost>`",
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
                "| `{}` | {} | {} | {} |\n",
                d.syntax.replace('|', "\\|"),
                d.help,
                default,
                d.reload.describe(),
            ));
        }
    }
    out
}

/// Whether `url` is one the Redis client accepts.
fn redis_url_ok(url: &str) -> Result<(), String> {
    crate::store::Redis::open(url)
        .map(drop)
        .map_err(|e| format!("'{url}': {e}"))
}

fn find(name: &str) -> Option<&'static Directive> {
    DIRECTIVES
        .iter()
        .find(|d| d.name.eq_ignore_ascii_case(name))
}

/// Applies one node in `scope`; `location` is the section being filled.
/// Applies the top-level nodes; returns every error.
pub(super) fn apply_all(config: &mut Config, nodes: &[Node]) -> Vec<Error> {
    let mut errors = vec![];
    for node in nodes {
        if let Err(e) = apply(config, None, None, node) {
            errors.extend(e);
        }
    }
    errors
}

/// Applies one node: at the top (`vhost` and `location` `None`), inside the
/// virtual host `vhost`, or inside `location`.
fn apply(
    config: &mut Config,
    vhost: Option<usize>,
    location: Option<&mut LocationConfig>,
    node: &Node,
) -> Result<(), Vec<Error>> {
    let err = |message: String| vec![Error::new(&node.at, message)];
    let Some(directive) = find(&node.name) else {
        return Err(err(format!("unknown directive '{}'", node.name)));
    };
    let here = match (&location, vhost) {
        (Some(_), _) => Scope::Location,
        (None, Some(_)) => Scope::Host,
        (None, None) => Scope::Server,
    };
    let allowed =
        directive.scope == here || (directive.scope == Scope::Host && here == Scope::Server);
    if !allowed {
        return Err(err(format!(
            "{} is not allowed in {} (it belongs in {})",
            directive.name,
            here.name(),
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
    if here == Scope::Server && directive.reload == Reload::Restart {
        config
            .read_at_start
            .push((directive.name, node.args.clone()));
    }
    match directive.apply {
        Apply::Server(f) => with_name(f(config, &node.args, &node.at)),
        Apply::Host(f) => {
            let host = match vhost {
                Some(i) => &mut config.vhosts[i].host,
                None => &mut config.main,
            };
            with_name(f(host, &node.args, &node.at))
        }
        Apply::Location(f) => with_name(f(location.expect("scope checked above"), &node.args)),
        Apply::Section if directive.name == "VirtualHost" => {
            let [addr] = &node.args[..] else {
                return Err(err("<VirtualHost> takes one ADDR:PORT".into()));
            };
            let (ip, port) =
                vhost_addr(addr).map_err(|m| err(format!("<VirtualHost {addr}>: {m}")))?;
            config.vhosts.push(VirtualHost {
                ip,
                port,
                host: Host::default(),
                at: node.at.clone(),
            });
            let index = config.vhosts.len() - 1;
            children(config, Some(index), None, node)
        }
        Apply::Section => {
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
            let result = children(config, vhost, Some(&mut location), node);
            config.locations.push(location);
            if let Some(i) = vhost {
                let index = config.locations.len() - 1;
                config.vhosts[i].host.locations.push(index);
            }
            result
        }
    }
}

fn children(
    config: &mut Config,
    vhost: Option<usize>,
    mut location: Option<&mut LocationConfig>,
    node: &Node,
) -> Result<(), Vec<Error>> {
    let mut errors = vec![];
    for child in node.children.iter().flatten() {
        if let Err(e) = apply(config, vhost, location.as_deref_mut(), child) {
            errors.extend(e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// `*:PORT`, `_default_:PORT`, `IP:PORT`, `[V6]:PORT`.
fn vhost_addr(value: &str) -> Result<(Option<std::net::IpAddr>, u16), String> {
    let (host, port) = value.rsplit_once(':').ok_or("expected ADDR:PORT")?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("'{port}' is not a port"))?;
    let ip = match host {
        "*" | "_default_" => None,
        host => Some(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| format!("'{host}' is not an IP address or *"))?,
        ),
    };
    Ok((ip, port))
}

/// `RLimit… SOFT [HARD]`: `max` is unlimited; sizes take K, M, G. Without
/// HARD, it is SOFT (for CPU, a second more, so that SIGXCPU, which names
/// the limit, comes before SIGKILL).
fn rlimit(l: &mut LocationConfig, resource: Resource, args: &[String]) -> Result<(), String> {
    let value = |text: &str| -> Result<u64, String> {
        match text {
            "max" | "unlimited" => Ok(u64::MAX),
            _ if resource == Resource::Mem => size(text),
            _ => text
                .parse::<u64>()
                .map_err(|_| format!("'{text}' is not a whole number or max")),
        }
    };
    let (soft, hard) = match args {
        [soft] => {
            let soft = value(soft)?;
            let hard = match resource {
                Resource::Cpu => soft.saturating_add(1),
                _ => soft,
            };
            (soft, hard)
        }
        [soft, hard] => (value(soft)?, value(hard)?),
        _ => return Err(format!("expected {} SOFT [HARD]", resource.directive())),
    };
    if soft > hard {
        return Err(format!(
            "the soft limit {soft} is above the hard limit {hard}"
        ));
    }
    l.rlimits.retain(|r| r.resource != resource);
    l.rlimits.push(RLimit {
        resource,
        soft,
        hard,
    });
    Ok(())
}
