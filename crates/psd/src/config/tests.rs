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
    let main = c.main_locations();
    let route = |path| longest_match(&c.locations, &main, path);
    assert_eq!(route("/app/x"), Some(1));
    assert_eq!(route("/app"), Some(1));
    assert_eq!(route("/apples"), Some(0));
    assert!(prefix_matches("/", "/anything"));
}

/// Regression test: a reload that changed `NodeName` was ignored without a
/// word, because the list of restart-only directives was kept by hand.
#[test]
fn a_reload_names_every_changed_directive_that_needs_a_restart() {
    let base = "Listen 127.0.0.1:8080\nNodeName a\nMaxSessions 10\n<Location />\nWorker fastcgi /bin/true\n</Location>\n";
    let old = load(base).unwrap();
    let same = load(base).unwrap();
    assert!(old.needs_restart(&same).is_empty());
    let changed = load(
        &base
            .replace("NodeName a", "NodeName b")
            .replace("MaxSessions 10", "MaxSessions 11"),
    )
    .unwrap();
    assert_eq!(old.needs_restart(&changed), ["NodeName", "MaxSessions"]);
    // Location directives and reloadable server ones are not listed.
    let reloadable = load(
        &base
            .replace(
                "Listen 127.0.0.1:8080",
                "Listen 127.0.0.1:8080\nMaxConnections 5",
            )
            .replace("/bin/true", "/bin/false"),
    )
    .unwrap();
    assert!(old.needs_restart(&reloadable).is_empty());
    // Every directive says what a reload does with it.
    for d in crate::config::DIRECTIVES {
        if d.scope == crate::config::Scope::Location {
            assert_ne!(d.reload, crate::config::Reload::Restart, "{}", d.name);
        }
    }
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

mod fuzz {
    //! The config language fed hostile text: every input is a `Config` or
    //! `file:line` errors, never a panic or a hang. A long run:
    //! `PROPTEST_CASES=100000 cargo test -p psd --release fuzz_`.
    use super::*;
    use proptest::prelude::*;

    /// Lines made of real directive names, sections, quotes, continuations
    /// and junk, so that the parser's deeper paths are reached.
    fn config_text() -> impl Strategy<Value = String> {
        let word = prop_oneof![
            Just("Listen".to_string()),
            Just("<Location".to_string()),
            Just("</Location>".to_string()),
            Just("<VirtualHost".to_string()),
            Just("</VirtualHost>".to_string()),
            Just("Worker".to_string()),
            Just("fastcgi".to_string()),
            Just("SessionKey".to_string()),
            Just("MaxSessions".to_string()),
            Just("RequestTimeout".to_string()),
            Just("MaxRequestBody".to_string()),
            Just("RequestBuffering".to_string()),
            Just("Include".to_string()),
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just(">".to_string()),
            Just("#".to_string()),
            "[a-z0-9/:.*?]{0,12}",
            any::<String>(),
        ];
        proptest::collection::vec(proptest::collection::vec(word, 0..6), 0..30).prop_map(|lines| {
            lines
                .into_iter()
                .map(|l| l.join(" "))
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    proptest! {
        #[test]
        fn fuzz_config_never_panics(text in config_text()) {
            let parsed = psd_conf::parse_str(&text, Path::new("t.conf"), Path::new("/nonexistent"));
            for e in &parsed.errors {
                prop_assert!(e.to_string().starts_with("t.conf:") || e.to_string().contains(".conf"));
            }
            let _ = Config::from_nodes(&parsed.nodes, Path::new("/nonexistent"));
        }
    }
}

#[test]
fn threads_are_a_count_or_auto() {
    let threads = |line: &str| {
        load(&format!(
            "{line}\n<Location />\nWorker fastcgi a\n</Location>\n"
        ))
    };
    assert_eq!(threads("").unwrap().threads, None);
    assert_eq!(threads("Threads auto").unwrap().threads, None);
    assert_eq!(threads("Threads 1").unwrap().threads, Some(1));
    assert_eq!(threads("Threads 8").unwrap().threads, Some(8));
    assert_eq!(
        threads("Threads 0").unwrap_err(),
        ["t.conf:1: Threads: '0' is not a positive whole number"]
    );
}
