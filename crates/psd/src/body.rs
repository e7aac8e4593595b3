//! Bodies: responses whole or streamed from a worker as it writes, and
//! requests streamed from the client or, when the mapper had to read form
//! fields first, already read.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;

use crate::error::Cause;

/// Any error a body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response psd sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// The body of a request on its way to a worker.
pub type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

/// A request body read from the client as the worker takes it.
pub fn streamed<B>(incoming: B) -> RequestBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    incoming.map_err(Into::into).boxed_unsync()
}

/// A request body that was already read whole.
pub fn buffered(bytes: Bytes) -> RequestBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Reads a request body whole, refusing more than `limit` bytes.
pub(crate) async fn read_all(mut body: RequestBody, limit: u64) -> Result<Bytes, crate::Error> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| crate::Error::BadRequest(Cause::new("reading request body", e)))?;
        if let Ok(data) = frame.into_data() {
            if (out.len() + data.len()) as u64 > limit {
                return Err(crate::Error::BodyTooLarge { limit });
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// Request bodies up to this size are received in memory; larger ones go
/// to a temp file (nginx's `client_body_buffer_size` is 8–16K; psd's
/// sessions see more form posts than file uploads).
pub(crate) const MEMORY_BODY: usize = 64 * 1024;

/// A request body received whole before its request goes to a session.
pub(crate) enum Received {
    Memory(Bytes),
    /// Spooled to an unlinked temp file, rewound.
    File(tokio::fs::File, u64),
}

/// A request body psd holds whole in memory, kept beside the request (in
/// its extensions) so that a worker that turns out dead can be sent the
/// same request again: the body it streams is spent once sent.
#[derive(Clone)]
pub(crate) struct Replay(pub Bytes);

impl Received {
    /// The body's bytes, when they are in memory.
    pub fn replay(&self) -> Option<Replay> {
        match self {
            Received::Memory(bytes) => Some(Replay(bytes.clone())),
            Received::File(..) => None,
        }
    }

    pub fn len(&self) -> u64 {
        match self {
            Received::Memory(bytes) => bytes.len() as u64,
            Received::File(_, len) => *len,
        }
    }

    pub fn into_body(self) -> RequestBody {
        match self {
            Received::Memory(bytes) => buffered(bytes),
            Received::File(file, left) => FileBody { file, left }.boxed_unsync(),
        }
    }
}

/// Receives a request body whole (`RequestBuffering on`): in memory up to
/// [`MEMORY_BODY`], then in a temp file in `spool`. A client that sends
/// nothing for `idle` gets 408, one that breaks off its body 400, one that
/// sends more than `limit` 413; none of it reaches a session.
pub(crate) async fn receive(
    mut body: RequestBody,
    limit: u64,
    spool: &std::path::Path,
    idle: std::time::Duration,
) -> Result<Received, crate::Error> {
    use tokio::io::AsyncWriteExt;
    let mut memory = bytes::BytesMut::new();
    let mut file: Option<tokio::fs::File> = None;
    let mut len: u64 = 0;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(crate::Error::ClientTimeout),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(crate::Error::BadRequest(Cause::new(
                    "reading request body",
                    e,
                )))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len() as u64;
        if len > limit {
            return Err(crate::Error::BodyTooLarge { limit });
        }
        let spool_io = |e: std::io::Error| {
            crate::Error::Internal(Cause::new(
                format!("spooling a request body to {}", spool.display()),
                e,
            ))
        };
        if file.is_none() && memory.len() + data.len() > MEMORY_BODY {
            let mut spooled = tokio::fs::File::from_std(temp_file(spool).map_err(spool_io)?);
            spooled.write_all(&memory).await.map_err(spool_io)?;
            memory = bytes::BytesMut::new();
            file = Some(spooled);
        }
        match file.as_mut() {
            Some(f) => f.write_all(&data).await.map_err(spool_io)?,
            None => memory.extend_from_slice(&data),
        }
    }
    match file {
        None => Ok(Received::Memory(memory.freeze())),
        Some(mut f) => {
            use tokio::io::AsyncSeekExt;
            let rewound = async {
                f.flush().await?;
                f.seek(std::io::SeekFrom::Start(0)).await
            };
            rewound.await.map_err(|e| {
                crate::Error::Internal(Cause::new("rewinding a spooled request body", e))
            })?;
            Ok(Received::File(f, len))
        }
    }
}

/// A new file in `dir`, open for reading and writing, with no name left
/// (removed at once): nothing stays behind, whatever happens to psd.
fn temp_file(dir: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = crate::worker::process::random_hex();
    let path = dir.join(format!("body-{name}.tmp"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// A spooled request body, read back as the worker takes it.
struct FileBody {
    file: tokio::fs::File,
    left: u64,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let mut chunk = vec![0u8; self.left.min(MEMORY_BODY as u64) as usize];
        let mut buf = tokio::io::ReadBuf::new(&mut chunk);
        std::task::ready!(tokio::io::AsyncRead::poll_read(
            Pin::new(&mut self.file),
            cx,
            &mut buf
        ))?;
        let n = buf.filled().len();
        if n == 0 {
            return Poll::Ready(Some(Err("spooled request body ended early".into())));
        }
        chunk.truncate(n);
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// A body that is all there at once.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body fed by a channel: each `Ok` chunk is sent as it arrives, an `Err`
/// aborts the response (the client sees a truncated body, never a wrong one).
pub fn channel(capacity: usize) -> (mpsc::Sender<Result<Bytes, BoxError>>, Body) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, ChannelBody { rx }.boxed())
}

struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|r| r.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The marker error of a request body over `MaxRequestBody`.
#[derive(Debug)]
pub(crate) struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body over MaxRequestBody")
    }
}

impl std::error::Error for TooLarge {}

/// The marker error of a request body the client broke off.
#[derive(Debug)]
pub(crate) struct ClientBody(BoxError);

impl std::fmt::Display for ClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client's request body failed: {}", self.0)
    }
}

impl std::error::Error for ClientBody {}

/// Whether `e` or any error under it is a `T`.
pub(crate) fn caused_by<T: std::error::Error + 'static>(e: &BoxError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(err) = source {
        if err.is::<T>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A request body on its way to a worker: fails with [`TooLarge`] past
/// `limit`, and marks the client's own failures [`ClientBody`], so that
/// neither is taken for the worker's.
pub(crate) struct Limited {
    inner: RequestBody,
    left: u64,
}

impl Limited {
    pub fn new(inner: RequestBody, limit: u64) -> Limited {
        Limited { inner, left: limit }
    }
}

impl http_body::Body for Limited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let frame = frame.map(|f| f.map_err(|e| Box::new(ClientBody(e)) as BoxError));
        if let Some(Ok(frame)) = &frame {
            if let Some(data) = frame.data_ref() {
                let len = data.len() as u64;
                if len > self.left {
                    return Poll::Ready(Some(Err(Box::new(TooLarge))));
                }
                self.left -= len;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body that fails once its source has been silent for `idle` (a worker
/// that stops writing mid-response). The clock runs only while the body
/// waits: a body whose frames are there when asked for (most responses,
/// read whole with their head) never arms a timer.
pub(crate) struct IdleTimeout<B> {
    inner: B,
    idle: std::time::Duration,
    /// Set when the body first waits, reset when it waits again after a frame.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the deadline counts from the current wait.
    armed: bool,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: std::time::Duration) -> IdleTimeout<B> {
        IdleTimeout {
            inner,
            idle,
            deadline: None,
            armed: false,
        }
    }
}

impl<B> http_body::Body for IdleTimeout<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use std::future::Future;
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if !this.armed {
                    // The silence starts now.
                    let until = tokio::time::Instant::now() + this.idle;
                    match &mut this.deadline {
                        Some(deadline) => deadline.as_mut().reset(until),
                        None => this.deadline = Some(Box::pin(tokio::time::sleep_until(until))),
                    }
                    this.armed = true;
                }
                let deadline = this.deadline.as_mut().expect("armed above");
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err("went silent mid-body".into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body that counts the bytes it passes on and calls `done` with their
/// number once: at its end, at an error, or when it is dropped unfinished.
pub(crate) struct OnEnd<B, F: FnOnce(u64)> {
    inner: B,
    sent: u64,
    done: Option<F>,
}

impl<B, F: FnOnce(u64)> OnEnd<B, F> {
    pub fn new(inner: B, done: F) -> OnEnd<B, F> {
        OnEnd {
            inner,
            sent: 0,
            done: Some(done),
        }
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.sent);
        }
    }
}

impl<B, F> http_body::Body for OnEnd<B, F>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    F: FnOnce(u64) + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    self.sent += data.len() as u64;
                }
            }
            _ => self.finish(),
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B, F: FnOnce(u64)> Drop for OnEnd<B, F> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Frames a worker's response before it reaches the client: psd, not the
/// worker, decides where a response ends, so a worker's bytes can never
/// become the start of the next response on a kept-alive connection
/// (response splitting).
///
/// - A status a client cannot be sent (outside 200–599; 101 but to a
///   WebSocket upgrade psd relayed) is the worker's error: 502.
/// - With `Content-Length`, the client gets exactly that many bytes: a
///   surplus is cut off (and logged), a short body ends the response with
///   an error, which closes the connection, as nginx does.
/// - A response to HEAD, and 204/304, carries no body whatever the worker
///   wrote (CGI scripts write one for HEAD; HTTP/2 refuses it).
pub(crate) fn frame(
    response: http::Response<Body>,
    head_request: bool,
    upgrade: bool,
    session: crate::session::Handle,
) -> Result<http::Response<Body>, crate::Error> {
    use http::StatusCode;
    let status = response.status();
    if status == StatusCode::SWITCHING_PROTOCOLS && upgrade {
        return Ok(response);
    }
    if !final_status(status) {
        return Err(crate::Error::BadResponse(
            format!("invalid status {status}").into(),
        ));
    }
    let declared = content_length(response.headers())?;
    let (mut parts, body) = response.into_parts();
    if status == StatusCode::NO_CONTENT {
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(http::Response::from_parts(parts, full(Bytes::new())));
    }
    let Some(declared) = declared else {
        return Ok(http::Response::from_parts(parts, body));
    };
    if http_body::Body::size_hint(&body).exact() == Some(declared) {
        return Ok(http::Response::from_parts(parts, body));
    }
    let framed = Framed {
        inner: Some(body),
        left: declared,
        session,
    };
    Ok(http::Response::from_parts(parts, framed.boxed()))
}

/// Whether `status` can be sent to a client as a final answer: 1xx are
/// interim (101 only ever for an upgrade psd relays), 6xx and up do not exist.
pub(crate) fn final_status(status: http::StatusCode) -> bool {
    (200..=599).contains(&status.as_u16())
}

/// The one `Content-Length` of a response: repeated values must agree
/// (RFC 9110 §8.6), anything else is the worker's error.
fn content_length(headers: &http::HeaderMap) -> Result<Option<u64>, crate::Error> {
    let mut found = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            let n = std::str::from_utf8(part)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    crate::Error::BadResponse(
                        format!(
                            "invalid Content-Length {:?}",
                            String::from_utf8_lossy(value.as_bytes())
                        )
                        .into(),
                    )
                })?;
            if found.is_some_and(|f| f != n) {
                return Err(crate::Error::BadResponse(
                    "conflicting Content-Length".into(),
                ));
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// A body held to its declared length.
struct Framed {
    /// Dropped once the declared length is sent: the worker's producer
    /// sees the client gone, and stops.
    inner: Option<Body>,
    left: u64,
    session: crate::session::Handle,
}

impl http_body::Body for Framed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let data = loop {
            let Some(inner) = self.inner.as_mut() else {
                return Poll::Ready(None);
            };
            match std::task::ready!(Pin::new(inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => break Some(Ok(data)),
                    // Trailers have no place after a Content-Length body.
                    Err(_) => continue,
                },
                Some(Err(e)) => break Some(Err(e)),
                None => break None,
            }
        };
        match data {
            Some(Ok(mut data)) => {
                let len = data.len() as u64;
                if len > self.left {
                    tracing::warn!(
                        session = %self.session,
                        "worker wrote more than its Content-Length; the surplus is dropped"
                    );
                    data.truncate(self.left as usize);
                }
                self.left -= data.len() as u64;
                if self.left == 0 {
                    self.inner = None;
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(e)) => {
                self.inner = None;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                self.inner = None;
                if self.left == 0 {
                    return Poll::Ready(None);
                }
                tracing::warn!(
                    session = %self.session,
                    missing = self.left,
                    "worker's response ended before its Content-Length; closing the connection"
                );
                Poll::Ready(Some(Err("response shorter than its Content-Length".into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod fuzz {
    //! Response framing against a hostile worker: whatever `Content-Length`
    //! it declares and however many bytes it writes, the client never gets
    //! more than declared, and a complete response is exactly as long as
    //! declared. A long run: `PROPTEST_CASES=100000 cargo test -p psd --release fuzz_`.
    use super::*;
    use proptest::prelude::*;

    fn declared() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            (0u64..300).prop_map(|n| Some(n.to_string())),
            (0u64..300).prop_map(|n| Some(format!("{n}, {n}"))),
            (0u64..300, 0u64..300).prop_map(|(a, b)| Some(format!("{a},{b}"))),
            "[0-9a-z +-]{0,6}".prop_map(Some),
        ]
    }

    proptest! {
        #[test]
        fn fuzz_framing_never_sends_more_than_declared(
            declared in declared(),
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..6),
            status in 100u16..1000,
            head in any::<bool>(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (tx, body) = channel(8);
            for c in &chunks {
                tx.try_send(Ok(Bytes::from(c.clone()))).unwrap();
            }
            drop(tx);
            let mut response = http::Response::new(body);
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            if let Some(d) = &declared {
                if let Ok(v) = http::HeaderValue::from_str(d) {
                    response.headers_mut().insert(http::header::CONTENT_LENGTH, v);
                }
            }
            let session = crate::session::Handle::of(&crate::session::AppKey::new(None, "/"), "s");
            let Ok(framed) = frame(response, head, false, session) else { return Ok(()) };
            let limit = http_body::Body::size_hint(framed.body()).upper();
            let collected = rt
                .block_on(async { framed.into_body().collect().await })
                .map(|c| c.to_bytes().len() as u64);
            if let (Some(limit), Ok(n)) = (limit, &collected) {
                prop_assert!(*n <= limit);
            }
            let exact = declared.as_deref().and_then(|d| d.parse::<u64>().ok());
            if let (Some(d), Ok(n), false) = (exact, collected, head) {
                prop_assert!(n == d || status == 204 || status == 304, "{} vs {}", n, d);
            }
        }
    }
}

#[cfg(test)]
mod idle_timeout {
    use super::*;
    use std::time::Duration;

    /// A body fed by a channel: frames when sent, pending in between.
    struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

    impl http_body::Body for Fed {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_fails_only_after_a_silence_as_long_as_the_limit() {
        let (feed, rx) = tokio::sync::mpsc::channel(4);
        let mut body = IdleTimeout::new(Fed(rx), Duration::from_secs(10));
        let writer = tokio::spawn(async move {
            // Frames 6 s apart: never 10 s of silence.
            for _ in 0..4 {
                feed.send(Bytes::from_static(b"x")).await.unwrap();
                tokio::time::sleep(Duration::from_secs(6)).await;
            }
            // Then silence, the sender kept open.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(feed);
        });
        let started = tokio::time::Instant::now();
        for _ in 0..4 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        let silent = tokio::time::Instant::now();
        let failed = body.frame().await.unwrap();
        assert!(failed.is_err(), "the worker went silent");
        assert_eq!(silent.elapsed(), Duration::from_secs(10));
        assert!(started.elapsed() >= Duration::from_secs(28));
        writer.abort();
    }
}
