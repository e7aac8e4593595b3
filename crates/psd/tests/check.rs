//! `psd check -c FILE`: "Syntax OK" and exit 0, or FILE:LINE: message for
//! every error and exit 1, like `apachectl configtest`.

mod common;

use std::process::Command;

use common::*;

fn check(text: &str) -> (i32, String, String, std::path::PathBuf, TempDir) {
    let dir = TempDir::new("check");
    let path = dir.join("psd.conf");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(PSD)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path,
        dir,
    )
}

#[test]
fn every_example_config_is_valid() {
    for example in [
        "counter-perl",
        "cgi-perl",
        "counter-python",
        "counter-rust",
        "http-python",
        "http-rust",
        "websocket-python",
        "stdio-python",
        "slowprint-perl",
        "terminal",
    ] {
        let path = repo().join("examples").join(example).join("psd.conf");
        let out = Command::new(PSD)
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{example}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "Syntax OK\n");
    }
}

#[test]
fn a_good_config_says_syntax_ok() {
    let (code, stdout, _, _, _dir) = check(
        "# comment\nListen 127.0.0.1:8080\nMaxSessions 10\n<Location /app>\n  Worker fastcgi /bin/true\n  \
         SessionTimeout 10m\n  MaxRequestBody 2M\n</Location>\n",
    );
    assert_eq!(code, 0);
    assert_eq!(stdout, "Syntax OK\n");
}

#[test]
fn a_broken_config_lists_every_error_with_file_and_line() {
    let (code, stdout, stderr, path, _dir) = check(
        "Listen nowhere\nFrobnicate on\n<Location /app>\n  Worker fastcgi /bin/true\n  SessionTimeout soon\n  \
         MaxSessions 3\n</Location>\n<Location /b>\n</Location>\n<Location /c>\n",
    );
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    let file = path.display().to_string();
    for (line, message) in [
        (1, "Listen: 'nowhere' is not an ADDR:PORT"),
        (2, "unknown directive 'Frobnicate'"),
        (5, "SessionTimeout: 'soon' is not a duration"),
        (6, "MaxSessions is not allowed in <Location>"),
        (10, "<Location> is never closed"),
    ] {
        let expected = format!("{file}:{line}: {message}");
        assert!(
            stderr.lines().any(|l| l.starts_with(&expected)),
            "missing {expected:?} in\n{stderr}"
        );
    }
}

#[test]
fn semantic_errors_point_at_their_section() {
    let (code, _, stderr, path, _dir) = check("<Location /b>\n</Location>\n");
    assert_eq!(code, 1);
    assert_eq!(
        stderr.trim(),
        format!(
            "{}:1: <Location /b> has no Worker directive",
            path.display()
        )
    );
}

#[test]
fn a_missing_include_is_an_error_at_the_include_line() {
    let (code, _, stderr, path, _dir) = check("MaxSessions 5\nInclude conf.d/missing.conf\n");
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with(&format!("{}:2: Include:", path.display())),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_a_broken_config_with_exit_1() {
    let dir = TempDir::new("serve-bad");
    let path = dir.join("psd.conf");
    std::fs::write(&path, "Bogus\n").unwrap();
    let out = Command::new(PSD)
        .args(["serve", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains(&format!("{}:1: unknown directive", path.display())));
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let bad = Command::new(PSD).arg("frobnicate").output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    for args in [&["--help"][..], &["serve", "--help"], &["check", "--help"]] {
        let out = Command::new(PSD).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
    }
}

/// 1.1 million `<Location>` blocks did not parse in 30 s (40,000 took
/// 1.5 s): duplicate prefixes were looked for in a list. 100,000 now take
/// well under a second even in a debug build; with the list they took 12 s
/// in a release build.
#[test]
fn many_locations_check_in_linear_time() {
    let mut text = String::from("Listen 127.0.0.1:0\n");
    for i in 0..100_000 {
        text.push_str(&format!(
            "<Location /l{i}>\n  Worker fastcgi /bin/true\n</Location>\n"
        ));
    }
    let started = std::time::Instant::now();
    let (code, out, err, _, _dir) = check(&text);
    assert_eq!((code, out.trim()), (0, "Syntax OK"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_worker_program_that_is_missing_or_not_executable_is_an_error_at_its_section() {
    let dir = TempDir::new("check-programs");
    std::fs::write(dir.join("plain.txt"), "not a program").unwrap();
    let path = dir.join("psd.conf");
    std::fs::write(
        &path,
        "<Location /a>\n  Worker fastcgi lib/missing.pl\n</Location>\n\
         <Location /b>\n  Worker fastcgi plain.txt\n</Location>\n\
         <Location /c>\n  Worker http no-such-program-anywhere\n</Location>\n\
         <Location /d>\n  Worker fastcgi /bin/true\n</Location>\n",
    )
    .unwrap();
    let out = Command::new(PSD)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let file = path.display();
    let expected = [
        format!(
            "{file}:1: <Location /a>: Worker program {} does not exist",
            dir.join("lib/missing.pl").display()
        ),
        format!(
            "{file}:4: <Location /b>: Worker program {} is not an executable file",
            dir.join("plain.txt").display()
        ),
        format!(
            "{file}:7: <Location /c>: Worker program {} does not exist",
            dir.join("no-such-program-anywhere").display()
        ),
    ];
    assert_eq!(stderr.lines().collect::<Vec<_>>(), expected);
}

/// The first five minutes: psd started before its worker program was put
/// in place warns, serves 502, and finds the program once it is there.
#[test]
fn a_worker_program_added_after_start_is_found_without_a_reload() {
    let d = Daemon::start("<Location />\n  Worker fastcgi counter.pl\n</Location>\n");
    assert!(
        d.log_text().contains("Worker program") && d.log_text().contains("does not exist"),
        "{}",
        d.log_text()
    );
    let c = Client::anonymous();
    assert_eq!(c.get(&d.url("/")).status, 502);
    let program = d.dir.join("counter.pl");
    std::fs::write(
        &program,
        "#!/usr/bin/perl\nuse FCGI;\nmy $r = FCGI::Request();\n\
         while ($r->Accept() >= 0) { print \"Content-Type: text/plain\\r\\n\\r\\nhello\\n\" }\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = c.get(&d.url("/"));
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello\n"),
        "{}",
        d.log_text()
    );
}
