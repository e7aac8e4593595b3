//! psd under systemd: `sd_notify` to a fake `NOTIFY_SOCKET` (a Unix datagram
//! socket this test binds), and the example unit checked by
//! `systemd-analyze verify`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The next notification, within a few seconds.
fn next(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn psd_tells_systemd_ready_reloading_and_stopping() {
    let dir = TempDir::new("notify");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let config = dir.join("psd.conf");
    std::fs::write(
        &config,
        format!(
            "Listen 127.0.0.1:0\nDataDir {}\n<Location />\n  Worker fastcgi /bin/true\n</Location>\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let mut psd = Command::new(PSD)
        .args(["serve", "-c"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = psd.id().to_string();
    // WATCHDOG_PID is not set: the watchdog is psd's to feed.
    let ready = next(&socket);
    assert_eq!(ready, format!("READY=1\nMAINPID={pid}"));
    assert_eq!(next(&socket), "WATCHDOG=1", "fed at half of WATCHDOG_USEC");

    let kill = |signal: &str| {
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    };
    kill("-HUP");
    let mut seen = vec![];
    while !seen.iter().any(|m: &String| m.starts_with("READY=1")) {
        let message = next(&socket);
        if message != "WATCHDOG=1" {
            seen.push(message);
        }
    }
    assert!(
        seen[0].starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{seen:?}"
    );
    assert_eq!(seen.len(), 2, "RELOADING, then READY: {seen:?}");

    kill("-TERM");
    let stopping = loop {
        let message = next(&socket);
        if message != "WATCHDOG=1" {
            break message;
        }
    };
    assert_eq!(stopping, "STOPPING=1");
    assert!(psd.wait().unwrap().success());
}

#[test]
fn the_example_unit_passes_systemd_analyze_verify() {
    let unit = repo().join("examples/deploy/psd.service");
    let dir = TempDir::new("unit");
    // verify wants the unit's ExecStart to exist: a copy naming this build.
    let text = std::fs::read_to_string(&unit)
        .unwrap()
        .replace("/usr/local/bin/psd", PSD);
    let copy = dir.join("psd.service");
    std::fs::write(&copy, text).unwrap();
    // The optional socket unit, beside the service it activates.
    let socket = dir.join("psd.socket");
    std::fs::copy(repo().join("examples/deploy/psd.socket"), &socket).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .arg(&socket)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Complaints about the machine (no running systemd in a container) are
    // not about the unit; anything naming psd.service is.
    let about_unit: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("psd.service") || l.contains("psd.socket"))
        .collect();
    assert!(about_unit.is_empty(), "{stderr}");
}

/// Socket activation: `systemd-socket-activate` (systemd's own tool) binds
/// the port and hands the socket to psd as fd 3 with `LISTEN_FDS`, as a
/// `psd.socket` unit would. psd serves on that socket instead of binding its
/// own, and the connection that woke it up is answered.
#[test]
fn psd_serves_on_the_socket_systemd_hands_it() {
    let port = free_port();
    let dir = TempDir::new("activate");
    let config = dir.join("psd.conf");
    std::fs::write(
        &config,
        format!(
            "Listen 127.0.0.1:{port}\nDataDir {}\n<Location /counter>\n  Worker fastcgi {}\n</Location>\n",
            dir.join("data").display(),
            repo().join("examples/counter-perl/counter.pl").display()
        ),
    )
    .unwrap();
    let log = dir.join("psd.log");
    let mut activate = Command::new("systemd-socket-activate")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(PSD)
        .args(["serve", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The socket exists before psd runs: the first connection starts it.
    assert!(eventually(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    let reply = Client::anonymous().get(&format!("http://127.0.0.1:{port}/counter/"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.count(), 1);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!(
            "Listen 127.0.0.1:{port}: the socket systemd handed over"
        )),
        "{text}"
    );
    // psd (systemd-socket-activate execs it: the same pid) serves on fd 3;
    // its worker did not inherit that socket.
    let fd3 = std::fs::read_link(format!("/proc/{}/fd/3", activate.id())).unwrap();
    assert!(fd3.to_string_lossy().starts_with("socket:"), "{fd3:?}");
    let worker_fds: Vec<_> = std::fs::read_dir(format!("/proc/{}/fd", reply.pid()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect();
    assert!(
        !worker_fds.contains(&fd3),
        "the worker holds psd's listening socket: {worker_fds:?}"
    );
    Command::new("kill")
        .args(["-TERM", &activate.id().to_string()])
        .status()
        .unwrap();
    assert!(activate.wait().unwrap().success());
}
