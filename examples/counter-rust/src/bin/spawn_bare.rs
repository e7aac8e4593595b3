//! The bare cost of a new FastCGI session without psd: spawn the worker
//! with a listening socket at fd 0, send one request, read the answer, kill
//! it. N times, sequentially; prints p50/p99 time to first answer and rate.
//!
//!     spawn-bare WORKER [N]

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::Instant;

use psd_fcgi::{self as fcgi, RecordType};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let worker = args.get(1).expect("usage: spawn-bare WORKER [N]");
    let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(200);
    let dir = std::env::temp_dir().join(format!("spawn-bare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut times = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let path = dir.join(format!("{i}.sock"));
        let t = Instant::now();
        let listener = UnixListener::bind(&path).expect("bind");
        let mut child = Command::new(worker)
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the worker");
        let mut conn = UnixStream::connect(&path).expect("connect");
        let mut out = fcgi::BytesMut::new();
        fcgi::encode_begin_request(&mut out, 1, fcgi::ROLE_RESPONDER, 0);
        let params: [(&[u8], &[u8]); 2] =
            [(b"REQUEST_METHOD", b"GET"), (b"PSD_SESSION_ID", b"bare")];
        fcgi::encode_params(&mut out, 1, params);
        fcgi::encode_end_of_stream(&mut out, RecordType::Stdin, 1);
        conn.write_all(&out).expect("write");
        let mut buf = fcgi::BytesMut::new();
        let mut chunk = [0u8; 4096];
        'answer: loop {
            let got = conn.read(&mut chunk).expect("read");
            assert!(got > 0, "worker closed before answering");
            buf.extend_from_slice(&chunk[..got]);
            while let Some(record) = fcgi::decode(&mut buf).expect("FastCGI") {
                if record.kind == RecordType::Stdout {
                    break 'answer;
                }
            }
        }
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&path);
    }
    let total = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "n={n} p50_ms={:.3} p99_ms={:.3} per_s={:.0}",
        pct(0.5),
        pct(0.99),
        n as f64 / total
    );
}
