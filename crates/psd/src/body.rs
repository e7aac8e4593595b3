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

/// Any error a body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response psd sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// The body of a request on its way to a worker.
pub type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

/// A request body read from the client as the worker takes it.
pub fn streamed(incoming: hyper::body::Incoming) -> RequestBody {
    incoming.map_err(BoxError::from).boxed_unsync()
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
            frame.map_err(|e| crate::Error::BadRequest(format!("reading request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if (out.len() + data.len()) as u64 > limit {
                return Err(crate::Error::BodyTooLarge { limit });
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
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
