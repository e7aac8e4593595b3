//! A psd worker in Rust: a per-session counter speaking FastCGI on fd 0.
//!
//! Deliberately plain: blocking std I/O, one connection at a time, with the
//! record codec from `psd-fcgi`. It answers `FCGI_GET_VALUES`, honours
//! `FCGI_KEEP_CONN`, and reads the request body (`STDIN`) before answering.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};

use psd_fcgi::{self as fcgi, BeginRequest, EndRequest, RecordType};

struct Counter {
    count: u64,
    pid: u32,
    resumed: String,
}

fn main() -> io::Result<()> {
    // fd 0 is the listening socket psd made for this session.
    let listener = UnixListener::from(io::stdin().as_fd().try_clone_to_owned()?);
    let mut counter = Counter {
        count: 0,
        pid: std::process::id(),
        resumed: std::env::var("PSD_RESUMED").unwrap_or_else(|_| "0".into()),
    };
    eprintln!("counter-fcgi {} started", counter.pid);
    for conn in listener.incoming() {
        if let Err(e) = serve(conn?, &mut counter) {
            eprintln!("connection failed: {e}");
        }
    }
    Ok(())
}

/// Serves requests on one connection until the web server closes it.
fn serve(mut conn: UnixStream, counter: &mut Counter) -> io::Result<()> {
    let mut buf = fcgi::BytesMut::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut begin: Option<(u16, BeginRequest)> = None;
    let mut params = Vec::new();
    let mut body_len = 0usize;
    loop {
        while let Some(record) = fcgi::decode(&mut buf).map_err(io::Error::other)? {
            let mut out = fcgi::BytesMut::new();
            match record.kind {
                RecordType::GetValues => {
                    let mut values = fcgi::BytesMut::new();
                    fcgi::encode_name_value(&mut values, b"FCGI_MPXS_CONNS", b"0");
                    fcgi::encode_name_value(&mut values, b"FCGI_MAX_CONNS", b"1");
                    fcgi::encode_name_value(&mut values, b"FCGI_MAX_REQS", b"1");
                    fcgi::encode_record(&mut out, RecordType::GetValuesResult, 0, &values);
                }
                RecordType::BeginRequest => {
                    let b = BeginRequest::parse(&record.content).map_err(io::Error::other)?;
                    begin = Some((record.request_id, b));
                    params.clear();
                    body_len = 0;
                }
                RecordType::Params => params.extend_from_slice(&record.content),
                RecordType::Stdin if !record.content.is_empty() => body_len += record.content.len(),
                RecordType::Stdin => {
                    let Some((id, b)) = begin.take() else {
                        continue;
                    };
                    counter.count += 1;
                    let session = fcgi::NameValueIter::new(&params)
                        .filter_map(Result::ok)
                        .find(|(k, _)| *k == b"PSD_SESSION_ID")
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default();
                    let text = format!(
                        "Content-Type: text/plain\r\n\r\npid={} count={} resumed={} body={body_len} session={session}\n",
                        counter.pid, counter.count, counter.resumed
                    );
                    fcgi::encode_stream(&mut out, RecordType::Stdout, id, text.as_bytes());
                    fcgi::encode_end_of_stream(&mut out, RecordType::Stdout, id);
                    let end = EndRequest {
                        app_status: 0,
                        protocol_status: EndRequest::REQUEST_COMPLETE,
                    };
                    fcgi::encode_end_request(&mut out, id, end);
                    conn.write_all(&out)?;
                    if !b.keep_conn() {
                        return Ok(());
                    }
                    continue;
                }
                RecordType::AbortRequest => {
                    begin = None;
                    let end = EndRequest {
                        app_status: 1,
                        protocol_status: EndRequest::REQUEST_COMPLETE,
                    };
                    fcgi::encode_end_request(&mut out, record.request_id, end);
                }
                _ => {}
            }
            conn.write_all(&out)?;
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
