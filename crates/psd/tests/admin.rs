//! The admin side against a running psd: the REST API, `psd sessions`, the
//! dashboard in a real browser, `/metrics` checked by Prometheus' own
//! `promtool`, and JSON logs. Sessions are created with curl against real
//! FastCGI workers (Perl's FCGI), and acted on through the API.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A daemon with the admin API on a free loopback port, an access log, and
/// the Perl FastCGI counter at `/counter`.
fn start(extra: &str) -> (Daemon, String) {
    let counter = repo().join("examples/counter-perl/counter.pl");
    let daemon = Daemon::start(&format!(
        "AdminListen 127.0.0.1:{}\nAccessLog access.log\n\
         <Location /counter>\n  Worker fastcgi {}\n</Location>\n{extra}",
        free_port(),
        counter.display()
    ));
    let url = admin_url(&daemon);
    (daemon, url)
}

/// Where psd said its admin API listens.
fn admin_url(daemon: &Daemon) -> String {
    let mut url = None;
    eventually(Duration::from_secs(10), || {
        url = daemon.log_text().lines().find_map(|l| {
            let rest = l.split("admin API, dashboard and /metrics on ").nth(1)?;
            Some(rest.split(['"', ' ']).next()?.to_string())
        });
        url.is_some()
    });
    url.expect("psd did not say where the admin API listens")
}

fn token(daemon: &Daemon) -> String {
    std::fs::read_to_string(daemon.dir.join("data/admin-token"))
        .unwrap()
        .trim()
        .to_string()
}

/// An admin API call with the token; the reply and its JSON.
fn api(daemon: &Daemon, url: &str, method: &str, path: &str) -> (Reply, Value) {
    let auth = format!("Authorization: Bearer {}", token(daemon));
    let reply = Client::anonymous().request(&format!("{url}{path}"), &["-X", method, "-H", &auth]);
    let json = serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {reply:?}"));
    (reply, json)
}

fn sessions(daemon: &Daemon, url: &str, query: &str) -> Vec<Value> {
    let (reply, json) = api(daemon, url, "GET", &format!("/api/sessions{query}"));
    assert_eq!(reply.status, 200, "{reply:?}");
    json["sessions"].as_array().unwrap().clone()
}

fn handle_with(list: &[Value], requests: u64) -> String {
    list.iter()
        .find(|s| s["requests"] == requests)
        .unwrap_or_else(|| panic!("no session with {requests} requests in {list:?}"))["handle"]
        .as_str()
        .unwrap()
        .to_string()
}

fn process_exists(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn the_admin_api_lists_stops_and_ends_sessions_by_handle() {
    let (daemon, url) = start("");
    let a = Client::with_jar(&daemon.dir, "a");
    let b = Client::with_jar(&daemon.dir, "b");
    let mut ids = vec![];
    for _ in 0..3 {
        let r = a.get(&daemon.url("/counter/"));
        ids.push(r.field("session").unwrap());
    }
    let first_b = b.get(&daemon.url("/counter/"));
    ids.push(first_b.field("session").unwrap());
    let mut answers = String::new();

    // No token, a wrong one: 401, JSON, and a challenge.
    for auth in [None, Some("Authorization: Bearer not-the-token")] {
        let extra: Vec<&str> = auth.iter().flat_map(|h| ["-H", *h]).collect();
        let r = Client::anonymous().request(&format!("{url}/api/sessions"), &extra);
        assert_eq!(r.status, 401, "{r:?}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"psd admin\"")
        );
        let err: Value = serde_json::from_str(&r.body).unwrap();
        assert!(err["error"].as_str().unwrap().contains("token"), "{err}");
    }
    // Health needs no token.
    let health = Client::anonymous().get(&format!("{url}/health"));
    assert_eq!(health.status, 200);
    assert!(health.body.contains("\"sessions\": 2"), "{health:?}");

    // List: both sessions, named by handle, with their workers.
    let list = sessions(&daemon, &url, "");
    answers.push_str(&serde_json::to_string(&list).unwrap());
    assert_eq!(list.len(), 2, "{list:?}");
    let ha = handle_with(&list, 3);
    let hb = handle_with(&list, 1);
    for s in &list {
        assert_eq!(s["app"], "main /counter");
        assert_eq!(s["node"], "psd");
        assert_eq!(s["state"], "idle");
        assert_eq!(s["client"], "127.0.0.1");
        assert_eq!(s["handle"].as_str().unwrap().len(), 16);
        let pid = s["worker"]["pid"].as_u64().unwrap();
        assert!(process_exists(pid));
        assert!(
            s["worker"]["rss_bytes"].as_u64().unwrap() > 1_000_000,
            "{s}"
        );
        assert!(s["worker"]["cpu_seconds"].as_f64().unwrap() >= 0.0);
        assert!(
            s["state_bytes"].as_u64().unwrap() > 0,
            "the counter stores its count: {s}"
        );
        assert!(s["created"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(
        first_b.pid() as u64,
        list.iter().find(|s| s["handle"] == hb.as_str()).unwrap()["worker"]["pid"]
    );

    // Filters.
    assert_eq!(sessions(&daemon, &url, "?app=/counter").len(), 2);
    assert_eq!(sessions(&daemon, &url, "?app=main%20/counter").len(), 2);
    assert_eq!(sessions(&daemon, &url, "?app=/other").len(), 0);
    assert_eq!(sessions(&daemon, &url, "?state=busy").len(), 0);
    assert_eq!(sessions(&daemon, &url, "?node=elsewhere").len(), 0);
    let (bad, err) = api(&daemon, &url, "GET", "/api/sessions?state=sleepy");
    assert_eq!(bad.status, 400);
    assert!(err["error"].as_str().unwrap().contains("unknown state"));

    // Show, and an unknown handle.
    let (r, one) = api(&daemon, &url, "GET", &format!("/api/sessions/{ha}"));
    assert_eq!(r.status, 200);
    assert_eq!(one["requests"], 3);
    answers.push_str(&r.body);
    let (r, err) = api(&daemon, &url, "GET", "/api/sessions/0000000000000000");
    assert_eq!(r.status, 404);
    assert!(
        err["error"].as_str().unwrap().contains("no session"),
        "{err}"
    );
    let (r, _) = api(&daemon, &url, "POST", "/api/sessions/0000000000000000/stop");
    assert_eq!(r.status, 404);
    let (r, _) = api(&daemon, &url, "DELETE", "/api/sessions/0000000000000000");
    assert_eq!(r.status, 404);
    let (r, _) = api(&daemon, &url, "PUT", "/api/sessions");
    assert_eq!(r.status, 405);
    let (r, _) = api(&daemon, &url, "GET", "/api/nothing");
    assert_eq!(r.status, 404);

    // Stop A: its worker is gone, its state stays, its next request resumes.
    let pid_a = one["worker"]["pid"].as_u64().unwrap();
    let (r, stopped) = api(&daemon, &url, "POST", &format!("/api/sessions/{ha}/stop"));
    assert_eq!(r.status, 200, "{r:?}");
    answers.push_str(&r.body);
    assert_eq!(stopped["state"], "dormant", "{stopped}");
    assert!(stopped["worker"].is_null());
    assert!(stopped["state_bytes"].as_u64().unwrap() > 0);
    assert!(eventually(Duration::from_secs(5), || !process_exists(
        pid_a
    )));
    // Stopping again changes nothing.
    let (r, again) = api(&daemon, &url, "POST", &format!("/api/sessions/{ha}/stop"));
    assert_eq!((r.status, again["state"].as_str()), (200, Some("dormant")));
    let resumed = a.get(&daemon.url("/counter/"));
    assert_eq!(resumed.count(), 4, "{resumed:?}");
    assert_eq!(resumed.field("resumed").as_deref(), Some("1"));
    assert_ne!(resumed.pid() as u64, pid_a);

    // End B: gone, its id names nothing, its next request is a new session.
    let (r, ended) = api(&daemon, &url, "DELETE", &format!("/api/sessions/{hb}"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(ended["ended"], true);
    assert!(eventually(Duration::from_secs(5), || !process_exists(
        first_b.pid() as u64
    )));
    let (r, _) = api(&daemon, &url, "GET", &format!("/api/sessions/{hb}"));
    assert_eq!(r.status, 404);
    let (r, _) = api(&daemon, &url, "DELETE", &format!("/api/sessions/{hb}"));
    assert_eq!(r.status, 404, "ending again: no such session");
    let fresh = b.get(&daemon.url("/counter/"));
    assert_eq!(fresh.count(), 1, "{fresh:?}");
    assert_eq!(fresh.field("resumed").as_deref(), Some("0"));
    ids.push(fresh.field("session").unwrap());

    // Apps.
    let (r, apps) = api(&daemon, &url, "GET", "/api/apps");
    assert_eq!(r.status, 200);
    let app = &apps["apps"][0];
    assert_eq!(app["prefix"], "/counter");
    assert_eq!(app["kind"], "fastcgi");
    assert_eq!(app["requests"], 6);
    assert_eq!(app["sessions"]["idle"], 2, "{app}");

    // Drain: every worker stops, each session keeps its state.
    let (r, drained) = api(&daemon, &url, "POST", "/api/drain");
    assert_eq!(r.status, 200);
    assert_eq!(drained["stopped"], 2, "{drained}");
    assert!(sessions(&daemon, &url, "")
        .iter()
        .all(|s| s["state"] == "dormant"));
    let (_, drained) = api(&daemon, &url, "POST", "/api/drain");
    assert_eq!(drained["stopped"], 0, "draining again stops nothing");
    assert_eq!(a.get(&daemon.url("/counter/")).count(), 5);

    // Reload: what SIGHUP does; a broken file changes nothing.
    let (r, reloaded) = api(&daemon, &url, "POST", "/api/reload");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(reloaded["reloaded"], true);
    let config = std::fs::read_to_string(daemon.config_path()).unwrap();
    std::fs::write(
        daemon.config_path(),
        format!("{config}\nBogusDirective 1\n"),
    )
    .unwrap();
    let (r, failed) = api(&daemon, &url, "POST", "/api/reload");
    assert_eq!(r.status, 422, "{r:?}");
    assert!(
        failed["errors"][0]
            .as_str()
            .unwrap()
            .contains("BogusDirective"),
        "{failed}"
    );
    assert_eq!(a.get(&daemon.url("/counter/")).count(), 6);

    // The public listener has no admin paths.
    for path in ["/api/sessions", "/metrics", "/health", "/"] {
        assert_eq!(
            Client::anonymous().get(&daemon.url(path)).status,
            404,
            "{path}"
        );
    }

    // No id in any admin answer, in psd's log or in its access log.
    let access = std::fs::read_to_string(daemon.dir.join("access.log")).unwrap();
    assert!(
        access.contains(&ha),
        "the access log names sessions by handle"
    );
    let log = daemon.log_text();
    assert!(log.contains(&ha), "{log}");
    for id in &ids {
        assert!(id.len() > 30, "{id}");
        assert!(
            !answers.contains(id.as_str()),
            "an admin answer holds the id {id}"
        );
        assert!(!log.contains(id.as_str()), "psd's log holds the id {id}");
        assert!(
            !access.contains(id.as_str()),
            "the access log holds the id {id}"
        );
    }
}

fn psd_sessions(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(PSD)
        .arg("sessions")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn psd_sessions_lists_shows_stops_and_ends_the_sessions_a_test_created() {
    let (daemon, url) = start("");
    let a = Client::with_jar(&daemon.dir, "a");
    let b = Client::with_jar(&daemon.dir, "b");
    for _ in 0..2 {
        a.get(&daemon.url("/counter/"));
    }
    b.get(&daemon.url("/counter/"));
    let config = daemon.config_path();
    let config = config.to_str().unwrap();

    let (code, table, err) = psd_sessions(&["-c", config]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("HANDLE"), "{table}");
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.contains("main /counter") && l.contains("idle")),
        "{table}"
    );
    // Columns line up: every row's REQUESTS column ends where its header does.
    let end = lines[0].find("REQUESTS").unwrap() + "REQUESTS".len();
    for row in &lines[1..] {
        assert!(row[..end].ends_with(['1', '2']), "{table}");
    }

    let (code, json, _) = psd_sessions(&["list", "-c", config, "--json"]);
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&json).unwrap();
    let list = list["sessions"].as_array().unwrap().clone();
    let ha = handle_with(&list, 2);
    let hb = handle_with(&list, 1);

    // --admin URL --token FILE instead of -c.
    let token_file = daemon.dir.join("data/admin-token");
    let token_file = token_file.to_str().unwrap();
    let (code, shown, err) = psd_sessions(&["show", &ha, "--admin", &url, "--token", token_file]);
    assert_eq!(code, 0, "{err}");
    assert!(shown.contains(&format!("handle       {ha}")), "{shown}");
    assert!(shown.contains("requests     2"), "{shown}");

    let (code, out, _) = psd_sessions(&["stop", &ha, "-c", config]);
    assert_eq!(
        (code, out.trim()),
        (
            0,
            format!("session {ha} stopped (dormant); its state is kept").as_str()
        )
    );
    let (code, out, _) = psd_sessions(&["end", &hb, "-c", config]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = psd_sessions(&["list", "--state", "dormant", "-c", config]);
    assert_eq!(code, 0);
    assert!(out.contains(&ha) && !out.contains(&hb), "{out}");

    // Exit codes: 1 for what psd refuses or cannot do, 2 for usage.
    let (code, _, err) = psd_sessions(&["show", &hb, "-c", config]);
    assert_eq!(code, 1, "an ended session: {err}");
    assert!(err.contains("no session with handle"), "{err}");
    let (code, _, err) = psd_sessions(&["show", "-c", config]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = psd_sessions(&["list", "--admin", &url]);
    assert_eq!(code, 2, "--admin without --token: {err}");
    let wrong = daemon.dir.join("wrong-token");
    std::fs::write(&wrong, "0123456789abcdef0123\n").unwrap();
    let (code, _, err) =
        psd_sessions(&["list", "--admin", &url, "--token", wrong.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = psd_sessions(&[
        "list",
        "--admin",
        "http://127.0.0.1:1",
        "--token",
        token_file,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the admin API"), "{err}");
    let no_admin = daemon.dir.join("plain.conf");
    std::fs::write(&no_admin, "Listen 127.0.0.1:1\n").unwrap();
    let (code, _, err) = psd_sessions(&["-c", no_admin.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("has no AdminListen"), "{err}");
}

/// The value of the sample `name` (its labels as written) in a Prometheus
/// text exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_pass_promtool_and_count_what_the_test_did() {
    let (daemon, url) = start("");
    let a = Client::with_jar(&daemon.dir, "a");
    for _ in 0..5 {
        assert_eq!(a.get(&daemon.url("/counter/")).status, 200);
    }
    for _ in 0..2 {
        assert_eq!(Client::anonymous().get(&daemon.url("/nowhere")).status, 404);
    }
    let handle = sessions(&daemon, &url, "")[0]["handle"]
        .as_str()
        .unwrap()
        .to_string();
    api(
        &daemon,
        &url,
        "POST",
        &format!("/api/sessions/{handle}/stop"),
    );

    let scrape = Client::anonymous().get(&format!("{url}/metrics"));
    assert_eq!(scrape.status, 200, "/metrics needs no token");
    assert_eq!(
        scrape.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = scrape.body;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/install-test-deps.sh)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let app = "app=\"main /counter\"";
    assert_eq!(
        sample(
            &text,
            &format!("psd_requests_total{{{app},status=\"200\"}}")
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "psd_requests_total{app=\"\",status=\"404\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("psd_request_duration_seconds_count{{{app}}}")
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("psd_request_duration_seconds_bucket{{le=\"+Inf\",{app}}}")
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(&text, &format!("psd_spawns_total{{{app}}}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, &format!("psd_spawn_duration_seconds_count{{{app}}}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, &format!("psd_sessions{{{app},state=\"dormant\"}}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, &format!("psd_sessions{{{app},state=\"idle\"}}")),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("psd_worker_exits_total{{{app},cause=\"stopped\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("psd_worker_exits_total{{{app},cause=\"exited\"}}")
        ),
        Some(0.0)
    );
    assert!(
        sample(&text, &format!("psd_state_bytes{{{app}}}")).unwrap() > 0.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "psd_store_operation_duration_seconds_count{op=\"save\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(sample(&text, "psd_max_sessions"), Some(1000.0));

    // A scraper that asks for OpenMetrics gets it.
    let open = Client::anonymous().request(
        &format!("{url}/metrics"),
        &[
            "-H",
            "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        ],
    );
    assert!(open
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(open.body.ends_with("# EOF\n"));
    assert!(open.body.contains("# TYPE psd_requests counter\n"));
}

#[test]
fn the_dashboard_signs_in_lists_and_ends_a_session_in_chromium() {
    let (daemon, url) = start(
        // A command line longer than a phone is wide (as a CI checkout's
        // path can be): the card must cut it, not widen the page.
        "<Location /other>\n  Worker fastcgi {COUNTER} --an-argument-the-counter-ignores-that-is-wider-than-a-phone\n</Location>\n"
            .replace(
                "{COUNTER}",
                repo()
                    .join("examples/counter-python/counter.py")
                    .to_str()
                    .unwrap(),
            )
            .as_str(),
    );
    let a = Client::with_jar(&daemon.dir, "a");
    let b = Client::with_jar(&daemon.dir, "b");
    let c = Client::with_jar(&daemon.dir, "c");
    for _ in 0..3 {
        a.get(&daemon.url("/counter/"));
    }
    b.get(&daemon.url("/counter/"));
    c.get(&daemon.url("/other/"));
    let list = sessions(&daemon, &url, "");
    assert_eq!(list.len(), 3);
    let to_end = handle_with(&list, 3);
    let others: Vec<String> = list
        .iter()
        .map(|s| s["handle"].as_str().unwrap().to_string())
        .filter(|h| *h != to_end)
        .collect();
    let out = std::env::var("PSD_SCREENSHOTS")
        .map(|d| repo().join(d))
        .unwrap_or_else(|_| daemon.dir.0.clone());
    let script = repo().join("crates/psd/tests/browser/admin_dashboard.py");
    let run = Command::new("timeout")
        .arg("180")
        .arg("python3")
        .arg(script)
        .arg(&url)
        .arg(daemon.dir.join("data/admin-token"))
        .arg(&out)
        .arg(&to_end)
        .args(&others)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let seen: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(seen["login_form"], true, "{seen}");
    assert_eq!(
        seen["apps"],
        serde_json::json!(["/counter", "/other"]),
        "{seen}"
    );
    assert_eq!(seen["sparklines"], 2);
    assert!(
        seen["confirm"].as_str().unwrap().contains(&to_end),
        "{seen}"
    );
    assert!(seen["notice"].as_str().unwrap().contains("ended"), "{seen}");
    let after: Vec<&str> = seen["listed_after"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        !after.contains(&to_end.as_str()) && others.iter().all(|h| after.contains(&h.as_str())),
        "{seen}"
    );
    for (scroll, width) in [("desktop_scroll_width", 1280), ("phone_scroll_width", 390)] {
        assert!(
            seen[scroll].as_u64().unwrap() <= width,
            "wider than the screen: {seen}"
        );
    }
    for shot in ["admin-desktop.png", "admin-phone.png"] {
        let png = std::fs::read(out.join(shot)).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{shot}");
    }
    // Checked through the API: the session the browser ended is gone.
    let (r, _) = api(&daemon, &url, "GET", &format!("/api/sessions/{to_end}"));
    assert_eq!(r.status, 404);
    assert_eq!(a.get(&daemon.url("/counter/")).count(), 1, "a new session");
    assert_eq!(sessions(&daemon, &url, "").len(), 3);
}

#[test]
fn a_dashboard_form_from_another_site_is_refused() {
    let (daemon, url) = start("");
    let a = Client::with_jar(&daemon.dir, "a");
    a.get(&daemon.url("/counter/"));
    let handle = sessions(&daemon, &url, "")[0]["handle"]
        .as_str()
        .unwrap()
        .to_string();
    let cookie = format!("Cookie: psd_admin={}", token(&daemon));
    let forged = Client::anonymous().request(
        &format!("{url}/sessions/{handle}/end"),
        &[
            "-X",
            "POST",
            "-H",
            &cookie,
            "-H",
            "Origin: http://evil.example",
        ],
    );
    assert_eq!(forged.status, 403, "{forged:?}");
    assert_eq!(sessions(&daemon, &url, "").len(), 1);
    // A wrong token at the login form: 401 and the form again.
    let login = Client::anonymous().request(&format!("{url}/login"), &["-d", "token=nope"]);
    assert_eq!(login.status, 401);
    assert!(login.body.contains("That is not the admin token"));
    // The right one: a cookie that is HttpOnly and SameSite=Strict.
    let login = Client::anonymous().request(
        &format!("{url}/login"),
        &["-d", &format!("token={}", token(&daemon))],
    );
    assert_eq!(login.status, 303);
    let set = login.header("set-cookie").unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    // Without a cookie the dashboard is the sign-in form.
    let page = Client::anonymous().get(&format!("{url}/"));
    assert_eq!(page.status, 401);
    assert!(page.body.contains("name=\"token\""));
}

#[test]
fn the_admin_api_listens_on_a_private_unix_socket() {
    let dir = TempDir::new("admin-unix");
    let socket = dir.join("admin.sock");
    let (daemon, _) = {
        let counter = repo().join("examples/counter-perl/counter.pl");
        let daemon = Daemon::start(&format!(
            "AdminListen unix:{}\n<Location /counter>\n  Worker fastcgi {}\n</Location>\n",
            socket.display(),
            counter.display()
        ));
        (daemon, ())
    };
    admin_url(&daemon);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    Client::with_jar(&daemon.dir, "a").get(&daemon.url("/counter/"));
    let token_file = daemon.dir.join("data/admin-token");
    let admin = format!("unix:{}", socket.display());
    let (code, out, err) =
        psd_sessions(&["--admin", &admin, "--token", token_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("main /counter"), "{out}");
    let mut daemon = daemon;
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
    assert!(!socket.exists(), "the socket is removed at exit");
}

#[test]
fn json_logs_carry_the_session_handle_app_and_pid_and_never_the_id() {
    let (daemon, url) = start("LogFormat json\n");
    let a = Client::with_jar(&daemon.dir, "a");
    let id = a.get(&daemon.url("/counter/")).field("session").unwrap();
    let handle = sessions(&daemon, &url, "")[0]["handle"]
        .as_str()
        .unwrap()
        .to_string();
    api(&daemon, &url, "DELETE", &format!("/api/sessions/{handle}"));
    assert!(eventually(Duration::from_secs(5), || daemon
        .log_text()
        .contains("session ended")));
    let log = daemon.log_text();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let started = lines
        .iter()
        .find(|l| l["message"] == "worker started")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(started["session"], handle.as_str(), "{started}");
    assert_eq!(started["app"], "/counter");
    assert!(started["pid"].as_u64().unwrap() > 1);
    assert_eq!(started["level"], "INFO");
    assert!(started["timestamp"].is_string());
    let ended = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("session ended")
        })
        .unwrap();
    assert_eq!(ended["session"], handle.as_str());
    assert!(!log.contains(&id), "the id is in the log");
}

#[test]
fn sessions_only_in_the_store_after_a_restart_are_listed_dormant_and_can_be_ended() {
    let (mut daemon, url) = start("");
    let a = Client::with_jar(&daemon.dir, "a");
    let b = Client::with_jar(&daemon.dir, "b");
    for _ in 0..3 {
        a.get(&daemon.url("/counter/"));
    }
    b.get(&daemon.url("/counter/"));
    let before = sessions(&daemon, &url, "");
    let ha = handle_with(&before, 3);
    let hb = handle_with(&before, 1);

    daemon.signal("TERM");
    daemon.restart();
    let url = admin_url(&daemon);
    // Nothing requested since the restart: both are in the store only.
    let listed = sessions(&daemon, &url, "");
    assert_eq!(listed.len(), 2, "{listed:?}");
    for s in &listed {
        assert_eq!(s["state"], "dormant");
        assert_eq!(s["node"], "psd");
        assert!(
            s["requests"].is_null() && s["client"].is_null() && s["worker"].is_null(),
            "{s}"
        );
        assert!(s["state_bytes"].as_u64().unwrap() > 0, "{s}");
    }
    let (r, shown) = api(&daemon, &url, "GET", &format!("/api/sessions/{ha}"));
    assert_eq!(r.status, 200);
    assert_eq!(shown["app"], "main /counter");
    let (r, stopped) = api(&daemon, &url, "POST", &format!("/api/sessions/{ha}/stop"));
    assert_eq!(
        (r.status, stopped["state"].as_str()),
        (200, Some("dormant"))
    );
    assert_eq!(sessions(&daemon, &url, "?state=idle").len(), 0);

    // A resumes at its request and is then in memory; B is ended from the store.
    let resumed = a.get(&daemon.url("/counter/"));
    assert_eq!(
        (resumed.count(), resumed.field("resumed").as_deref()),
        (4, Some("1"))
    );
    let (r, _) = api(&daemon, &url, "DELETE", &format!("/api/sessions/{hb}"));
    assert_eq!(r.status, 200, "{r:?}");
    let (r, _) = api(&daemon, &url, "GET", &format!("/api/sessions/{hb}"));
    assert_eq!(r.status, 404);
    let listed = sessions(&daemon, &url, "");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0]["handle"].as_str(), listed[0]["requests"].as_u64()),
        (Some(ha.as_str()), Some(1))
    );
    let fresh = b.get(&daemon.url("/counter/"));
    assert_eq!(
        (fresh.count(), fresh.field("resumed").as_deref()),
        (1, Some("0"))
    );
}
