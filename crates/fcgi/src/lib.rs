//! The FastCGI 1.0 record codec: bytes in, records out, and back.
//!
//! This crate owns the wire format only (records, name-value pairs, the
//! fixed-size bodies of `BEGIN_REQUEST` and `END_REQUEST`). It never touches a
//! socket, never allocates per byte, and never panics on input: whatever a
//! worker writes is either a record, "incomplete" (`Ok(None)`), or a
//! [`DecodeError`]. Both sides of the protocol are here, so the same code
//! serves psd (the web server side) and the example workers (the application
//! side).
//!
//! Layout:
//! - [`Header`], [`RecordType`]: the 8-byte record header;
//! - [`decode`]: take one whole record off the front of a buffer;
//! - [`encode_record`], [`encode_stream`], [`encode_params`], …: append records;
//! - [`NameValueIter`], [`encode_name_value`]: the name-value pair encoding.

use bytes::{Buf, BufMut, Bytes};

/// Re-exported so users of this crate need no direct `bytes` dependency.
pub use bytes::BytesMut;

/// The only protocol version there is.
pub const VERSION_1: u8 = 1;
/// Size of a record header.
pub const HEADER_LEN: usize = 8;
/// The largest content one record can carry.
pub const MAX_CONTENT_LEN: usize = 0xffff;
/// The request id that management records (`GET_VALUES`, …) use.
pub const NULL_REQUEST_ID: u16 = 0;
/// `FCGI_KEEP_CONN`: the application keeps the connection open after the request.
pub const KEEP_CONN: u8 = 1;
/// The `FCGI_RESPONDER` role, the one web servers use.
pub const ROLE_RESPONDER: u16 = 1;

/// The type byte of a record. Unknown types are kept, not rejected, so that a
/// newer peer cannot make the decoder fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    BeginRequest,
    AbortRequest,
    EndRequest,
    Params,
    Stdin,
    Stdout,
    Stderr,
    Data,
    GetValues,
    GetValuesResult,
    UnknownType,
    Other(u8),
}

impl RecordType {
    pub fn from_u8(byte: u8) -> Self {
        match byte {
            1 => Self::BeginRequest,
            2 => Self::AbortRequest,
            3 => Self::EndRequest,
            4 => Self::Params,
            5 => Self::Stdin,
            6 => Self::Stdout,
            7 => Self::Stderr,
            8 => Self::Data,
            9 => Self::GetValues,
            10 => Self::GetValuesResult,
            11 => Self::UnknownType,
            other => Self::Other(other),
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            Self::BeginRequest => 1,
            Self::AbortRequest => 2,
            Self::EndRequest => 3,
            Self::Params => 4,
            Self::Stdin => 5,
            Self::Stdout => 6,
            Self::Stderr => 7,
            Self::Data => 8,
            Self::GetValues => 9,
            Self::GetValuesResult => 10,
            Self::UnknownType => 11,
            Self::Other(other) => other,
        }
    }
}

/// A record header as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub kind: RecordType,
    pub request_id: u16,
    pub content_len: u16,
    pub padding_len: u8,
}

impl Header {
    /// Reads a header from exactly [`HEADER_LEN`] bytes, or `None` if fewer are given.
    pub fn parse(bytes: &[u8]) -> Option<Header> {
        let b: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header {
            version: b[0],
            kind: RecordType::from_u8(b[1]),
            request_id: u16::from_be_bytes([b[2], b[3]]),
            content_len: u16::from_be_bytes([b[4], b[5]]),
            padding_len: b[6],
        })
    }

    /// Total size of the record this header starts.
    pub fn record_len(&self) -> usize {
        HEADER_LEN + self.content_len as usize + self.padding_len as usize
    }
}

/// One decoded record; `content` excludes padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordType,
    pub request_id: u16,
    pub content: Bytes,
}

/// Bytes that cannot be FastCGI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported FastCGI version {0}")]
    Version(u8),
    #[error("{kind} record body is {len} bytes, expected {expected}")]
    BodyLength {
        kind: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("name-value pair runs past the end of its record")]
    TruncatedPair,
}

/// Takes one whole record off the front of `buf`. `Ok(None)` means more bytes
/// are needed; `buf` is left untouched in that case.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Record>, DecodeError> {
    let Some(header) = Header::parse(buf) else {
        return Ok(None);
    };
    if header.version != VERSION_1 {
        return Err(DecodeError::Version(header.version));
    }
    if buf.len() < header.record_len() {
        buf.reserve(header.record_len() - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let content = buf.split_to(header.content_len as usize).freeze();
    buf.advance(header.padding_len as usize);
    Ok(Some(Record {
        kind: header.kind,
        request_id: header.request_id,
        content,
    }))
}

/// Appends one record. `content` must fit in one record; callers with more
/// use [`encode_stream`]. Content is padded to a multiple of 8 bytes, as the
/// specification recommends.
///
/// # Panics
/// If `content` is longer than [`MAX_CONTENT_LEN`]: that is a bug in the
/// caller, never something the peer can cause.
pub fn encode_record(buf: &mut BytesMut, kind: RecordType, request_id: u16, content: &[u8]) {
    assert!(content.len() <= MAX_CONTENT_LEN, "record content too long");
    let padding = (8 - content.len() % 8) % 8;
    buf.reserve(HEADER_LEN + content.len() + padding);
    buf.put_u8(VERSION_1);
    buf.put_u8(kind.as_u8());
    buf.put_u16(request_id);
    buf.put_u16(content.len() as u16);
    buf.put_u8(padding as u8);
    buf.put_u8(0);
    buf.put_slice(content);
    buf.put_bytes(0, padding);
}

/// Appends `data` as as many records of a stream type (`STDIN`, `STDOUT`,
/// `PARAMS`, …) as needed. Empty `data` appends nothing: the end of a stream
/// is written with [`encode_end_of_stream`].
pub fn encode_stream(buf: &mut BytesMut, kind: RecordType, request_id: u16, data: &[u8]) {
    for chunk in data.chunks(MAX_CONTENT_LEN) {
        encode_record(buf, kind, request_id, chunk);
    }
}

/// Appends the empty record that closes a stream.
pub fn encode_end_of_stream(buf: &mut BytesMut, kind: RecordType, request_id: u16) {
    encode_record(buf, kind, request_id, &[]);
}

/// Appends a `BEGIN_REQUEST` record.
pub fn encode_begin_request(buf: &mut BytesMut, request_id: u16, role: u16, flags: u8) {
    let r = role.to_be_bytes();
    encode_record(
        buf,
        RecordType::BeginRequest,
        request_id,
        &[r[0], r[1], flags, 0, 0, 0, 0, 0],
    );
}

/// Appends the whole `PARAMS` stream for `pairs`, including its end.
pub fn encode_params<'a, I>(buf: &mut BytesMut, request_id: u16, pairs: I)
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let mut body = BytesMut::new();
    for (name, value) in pairs {
        encode_name_value(&mut body, name, value);
    }
    encode_stream(buf, RecordType::Params, request_id, &body);
    encode_end_of_stream(buf, RecordType::Params, request_id);
}

/// Appends an `END_REQUEST` record.
pub fn encode_end_request(buf: &mut BytesMut, request_id: u16, end: EndRequest) {
    let s = end.app_status.to_be_bytes();
    encode_record(
        buf,
        RecordType::EndRequest,
        request_id,
        &[s[0], s[1], s[2], s[3], end.protocol_status, 0, 0, 0],
    );
}

/// The body of a `BEGIN_REQUEST` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeginRequest {
    pub role: u16,
    pub flags: u8,
}

impl BeginRequest {
    pub fn parse(content: &[u8]) -> Result<Self, DecodeError> {
        match content {
            [r0, r1, flags, _, _, _, _, _] => Ok(Self {
                role: u16::from_be_bytes([*r0, *r1]),
                flags: *flags,
            }),
            _ => Err(DecodeError::BodyLength {
                kind: "BEGIN_REQUEST",
                len: content.len(),
                expected: 8,
            }),
        }
    }

    pub fn keep_conn(&self) -> bool {
        self.flags & KEEP_CONN != 0
    }
}

/// The body of an `END_REQUEST` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndRequest {
    pub app_status: u32,
    pub protocol_status: u8,
}

impl EndRequest {
    pub const REQUEST_COMPLETE: u8 = 0;
    pub const CANT_MPX_CONN: u8 = 1;
    pub const OVERLOADED: u8 = 2;
    pub const UNKNOWN_ROLE: u8 = 3;

    pub fn parse(content: &[u8]) -> Result<Self, DecodeError> {
        match content {
            [s0, s1, s2, s3, status, _, _, _] => Ok(Self {
                app_status: u32::from_be_bytes([*s0, *s1, *s2, *s3]),
                protocol_status: *status,
            }),
            _ => Err(DecodeError::BodyLength {
                kind: "END_REQUEST",
                len: content.len(),
                expected: 8,
            }),
        }
    }
}

/// Appends one name-value pair in FastCGI's length-prefixed encoding.
pub fn encode_name_value(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    put_length(buf, name.len());
    put_length(buf, value.len());
    buf.put_slice(name);
    buf.put_slice(value);
}

fn put_length(buf: &mut BytesMut, len: usize) {
    if len < 0x80 {
        buf.put_u8(len as u8);
    } else {
        // Lengths above 2^31 cannot be encoded; nothing psd sends comes close.
        buf.put_u32((len as u32) | 0x8000_0000);
    }
}

/// Iterates over the name-value pairs of a complete `PARAMS` or
/// `GET_VALUES(_RESULT)` body. A pair that runs past the end yields one
/// [`DecodeError::TruncatedPair`] and then the iterator stops.
pub struct NameValueIter<'a> {
    rest: &'a [u8],
}

impl<'a> NameValueIter<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        Self { rest: body }
    }

    fn length(&mut self) -> Option<usize> {
        let (&first, _) = self.rest.split_first()?;
        if first & 0x80 == 0 {
            self.rest = &self.rest[1..];
            Some(first as usize)
        } else {
            let b: [u8; 4] = self.rest.get(..4)?.try_into().ok()?;
            self.rest = &self.rest[4..];
            Some((u32::from_be_bytes(b) & 0x7fff_ffff) as usize)
        }
    }

    fn pair(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        let name_len = self.length()?;
        let value_len = self.length()?;
        let name = self.rest.get(..name_len)?;
        let value = self.rest.get(name_len..name_len.checked_add(value_len)?)?;
        self.rest = &self.rest[name_len + value_len..];
        Some((name, value))
    }
}

impl<'a> Iterator for NameValueIter<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match self.pair() {
            Some(pair) => Some(Ok(pair)),
            None => {
                self.rest = &[];
                Some(Err(DecodeError::TruncatedPair))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn incomplete_header_and_body_leave_the_buffer_alone() {
        let mut full = BytesMut::new();
        encode_record(&mut full, RecordType::Stdout, 7, b"hello");
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(decode(&mut part), Ok(None), "cut at {cut}");
            assert_eq!(part.len(), cut);
        }
        let record = decode(&mut full).unwrap().unwrap();
        assert_eq!(record.kind, RecordType::Stdout);
        assert_eq!(record.request_id, 7);
        assert_eq!(&record.content[..], b"hello");
        assert!(full.is_empty(), "padding consumed too");
    }

    #[test]
    fn wrong_version_is_an_error() {
        let mut buf = BytesMut::from(&[2u8, 6, 0, 1, 0, 0, 0, 0][..]);
        assert_eq!(decode(&mut buf), Err(DecodeError::Version(2)));
    }

    #[test]
    fn long_streams_split_into_max_size_records() {
        let data = vec![b'x'; MAX_CONTENT_LEN * 2 + 10];
        let mut buf = BytesMut::new();
        encode_stream(&mut buf, RecordType::Stdin, 1, &data);
        let mut lens = vec![];
        while let Some(r) = decode(&mut buf).unwrap() {
            lens.push(r.content.len());
        }
        assert_eq!(lens, vec![MAX_CONTENT_LEN, MAX_CONTENT_LEN, 10]);
    }

    #[test]
    fn name_value_lengths_use_one_or_four_bytes() {
        let long = vec![b'v'; 300];
        let mut body = BytesMut::new();
        encode_name_value(&mut body, b"SHORT", b"1");
        encode_name_value(&mut body, b"LONG", &long);
        assert_eq!(body[0], 5);
        let pairs: Vec<_> = NameValueIter::new(&body).collect::<Result<_, _>>().unwrap();
        assert_eq!(pairs[0], (&b"SHORT"[..], &b"1"[..]));
        assert_eq!(pairs[1].1.len(), 300);
    }

    #[test]
    fn truncated_pair_is_reported_once() {
        let mut body = BytesMut::new();
        encode_name_value(&mut body, b"NAME", b"value");
        let cut = &body[..body.len() - 1];
        let items: Vec<_> = NameValueIter::new(cut).collect();
        assert_eq!(items, vec![Err(DecodeError::TruncatedPair)]);
    }

    #[test]
    fn begin_and_end_request_round_trip() {
        let mut buf = BytesMut::new();
        encode_begin_request(&mut buf, 3, ROLE_RESPONDER, KEEP_CONN);
        let end = EndRequest {
            app_status: 0xdead_beef,
            protocol_status: EndRequest::OVERLOADED,
        };
        encode_end_request(&mut buf, 3, end);
        let begin = decode(&mut buf).unwrap().unwrap();
        let begin = BeginRequest::parse(&begin.content).unwrap();
        assert_eq!(begin.role, ROLE_RESPONDER);
        assert!(begin.keep_conn());
        let got = decode(&mut buf).unwrap().unwrap();
        assert_eq!(EndRequest::parse(&got.content), Ok(end));
        assert!(EndRequest::parse(b"short").is_err());
    }

    proptest! {
        #[test]
        fn fuzz_decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(record)) = decode(&mut buf) {
                let _ = EndRequest::parse(&record.content);
                let _ = BeginRequest::parse(&record.content);
                for _ in NameValueIter::new(&record.content) {}
            }
        }

        #[test]
        fn fuzz_records_round_trip(kind in 1u8..=20, id: u16, content in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut buf = BytesMut::new();
            encode_record(&mut buf, RecordType::from_u8(kind), id, &content);
            prop_assert_eq!(buf.len() % 8, 0);
            let record = decode(&mut buf).unwrap().unwrap();
            prop_assert_eq!(record.kind.as_u8(), kind);
            prop_assert_eq!(record.request_id, id);
            prop_assert_eq!(&record.content[..], &content[..]);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn name_value_pairs_round_trip(pairs in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..200), proptest::collection::vec(any::<u8>(), 0..300)), 0..20)) {
            let mut buf = BytesMut::new();
            encode_params(&mut buf, 9, pairs.iter().map(|(n, v)| (&n[..], &v[..])));
            let mut body = BytesMut::new();
            loop {
                let record = decode(&mut buf).unwrap().unwrap();
                prop_assert_eq!(record.kind, RecordType::Params);
                if record.content.is_empty() { break; }
                body.extend_from_slice(&record.content);
            }
            let got: Vec<_> = NameValueIter::new(&body).map(|p| p.map(|(n, v)| (n.to_vec(), v.to_vec()))).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(got, pairs);
        }
    }
}
