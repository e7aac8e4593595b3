//! The benchmark harness (bench/run.py) at tiny sizes, so it cannot rot:
//! every row must run to the end against the real peers (nginx,
//! spawn-fcgi, fcgiwrap, HAProxy, redis-server, h2load) without a failed
//! request; and bench/cpu_split.py, bench/busy_split.py and
//! bench/neighbours.py likewise.

mod common;

use std::process::Command;

use common::repo;

/// Runs a bench script from the repository's root and checks that it
/// succeeded and printed a table line for each of `lines` (`| line |`).
fn bench(script: &str, args: &[&str], lines: &[&str]) {
    let out = Command::new("python3")
        .arg(repo().join(script))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script}: {stdout}\n{stderr}");
    for line in lines {
        assert!(
            stdout.contains(&format!("| {line} |")),
            "{script}: {line} missing:\n{stdout}"
        );
    }
}

#[test]
fn the_benchmark_harness_runs_every_row() {
    bench(
        "bench/run.py",
        &["--smoke"],
        &[
            "warm sessions",
            "routed vs direct",
            "CGI acceleration",
            "new sessions",
            "scale",
            "http proxy",
            "TLS",
            "stateful app",
            "slow start",
            "busy machine",
        ],
    );
    // On the debug binaries the smoke run built.
    bench(
        "bench/cpu_split.py",
        &["--rounds", "1", "--seconds", "1", "--profile", "debug"],
        &["direct", "nginx 1", "psd Threads 1"],
    );
    bench(
        "bench/busy_split.py",
        &[
            "--rounds",
            "1",
            "--seconds",
            "1",
            "--sessions",
            "8",
            "--policies",
            "batch",
            "--profile",
            "debug",
        ],
        &[
            "batch quiet psd",
            "batch quiet nginx",
            "batch busy psd",
            "batch busy nginx",
        ],
    );
    bench(
        "bench/neighbours.py",
        &[
            "--rounds",
            "1",
            "--seconds",
            "1",
            "--burners",
            "1",
            "--policies",
            "batch",
            "--profile",
            "debug",
        ],
        &["batch quiet", "batch computing"],
    );
}
