//! A psd worker in Rust: a per-session counter speaking FastCGI on fd 0.
//!
//! Deliberately plain: blocking std I/O, one connection at a time, with the
//! record codec from `psd-fcgi`. It answers `FCGI_GET_VALUES`, honours
//! `FCGI_KEEP_CONN`, and reads the request body (`STDIN`) before answering.
//! The count is kept in the session's state (`PSD_STATE_URL`, plain HTTP),
//! so a session that resumes goes on counting where it was; with
//! `COUNTER_STATELESS=1` (`SetEnv`) only in memory, as the benchmarks of
//! psd's routing want it (a state write per request is a store benchmark).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};

use psd_fcgi::{self as fcgi, BeginRequest, EndRequest, RecordType};

struct Counter {
    count: u64,
    pid: u32,
    resumed: String,
    state: Option<State>,
}

/// The session's values over psd's state API, with nothing but std: one
/// HTTP/1.1 request per call, `Connection: close`.
struct State {
    /// `127.0.0.1:PORT`.
    host: String,
    /// `/TOKEN/state/`.
    path: String,
}

impl State {
    fn from_env() -> Option<State> {
        let url = std::env::var("PSD_STATE_URL").ok()?;
        let rest = url.strip_prefix("http://")?;
        let slash = rest.find('/')?;
        Some(State {
            host: rest[..slash].to_string(),
            path: rest[slash..].to_string(),
        })
    }

    /// Status and body of `METHOD PATH+key`.
    fn call(&self, method: &str, key: &str, body: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        let mut stream = TcpStream::connect(&self.host)?;
        write!(
            stream,
            "{method} {}{key} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.path,
            self.host,
            body.len()
        )?;
        stream.write_all(body)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let head_end = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| io::Error::other("no response head"))?;
        let status = std::str::from_utf8(&response[..head_end])
            .ok()
            .and_then(|head| head.split(' ').nth(1)?.parse().ok())
            .ok_or_else(|| io::Error::other("no status"))?;
        Ok((status, response.split_off(head_end + 4)))
    }

    fn get(&self, key: &str) -> io::Result<Option<String>> {
        match self.call("GET", key, b"")? {
            (200, body) => Ok(Some(String::from_utf8_lossy(&body).into_owned())),
            (404, _) => Ok(None),
            (status, _) => Err(io::Error::other(format!("GET {key}: {status}"))),
        }
    }

    fn put(&self, key: &str, value: &str) -> io::Result<()> {
        match self.call("PUT", key, value.as_bytes())? {
            (201 | 204, _) => Ok(()),
            (status, _) => Err(io::Error::other(format!("PUT {key}: {status}"))),
        }
    }
}

fn main() -> io::Result<()> {
    // fd 0 is the listening socket psd made for this session.
    let listener = UnixListener::from(io::stdin().as_fd().try_clone_to_owned()?);
    let state = match std::env::var_os("COUNTER_STATELESS") {
        Some(_) => None,
        None => State::from_env(),
    };
    let count = match &state {
        Some(state) => state
            .get("count")?
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        None => 0,
    };
    let mut counter = Counter {
        count,
        pid: std::process::id(),
        resumed: std::env::var("PSD_RESUMED").unwrap_or_else(|_| "0".into()),
        state,
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
                    if let Some(state) = &counter.state {
                        state.put("count", &counter.count.to_string())?;
                    }
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
