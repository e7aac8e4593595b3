//! The benchmark harness (bench/run.py) at tiny sizes, so it cannot rot:
//! every row must run to the end against the real peers (nginx,
//! spawn-fcgi, fcgiwrap, HAProxy, redis-server, h2load) without a failed
//! request.

mod common;

use std::process::Command;

use common::repo;

#[test]
fn the_benchmark_harness_runs_every_row() {
    let out = Command::new("python3")
        .arg(repo().join("bench/run.py"))
        .args(["--smoke"])
        .current_dir(repo())
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for row in [
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
    ] {
        assert!(
            stdout.contains(&format!("| {row} |")),
            "row {row} missing:\n{stdout}"
        );
    }
}
