//! Strict HTTP/1.x request-head reading and parsing, and request-body decoding.
//!
//! Why not hyper's server: hyper 1 accepts `Content-Length` + `Transfer-Encoding` (it drops the
//! length and uses chunked) and accepts duplicate identical `Content-Length` headers. A proxy that
//! forwards such a request to an origin with a different interpretation is a request-smuggling
//! vector, so kennel reads the head itself (httparse, which already rejects obs-fold in requests)
//! and refuses every ambiguous framing with 400 before anything is forwarded. The origin side
//! (`origin.rs`) uses the same body decoder for responses.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Most headers accepted in one request.
pub const MAX_HEADERS: usize = 128;

/// Why a request head was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The head exceeded the size limit or had too many header lines (→ 431).
    #[error("request head larger than {0} bytes or with too many header lines")]
    TooLarge(usize),
    /// The head is malformed or its framing is ambiguous (→ 400).
    #[error("{0}")]
    Bad(&'static str),
    /// The client did not send a complete head in time (connection closed, no response).
    #[error("request head not received within the header timeout")]
    Timeout,
    /// The client closed the connection before a complete head (clean if no bytes were sent).
    #[error("client closed the connection")]
    Closed {
        /// No byte of a new request had arrived.
        clean: bool,
    },
    /// Reading from the client failed (the OS error is kept as the source).
    #[error("reading the request head failed: {0}")]
    Io(#[source] std::io::Error),
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed, validated request head. The text parts (method, target, header names) are ranges
/// of one string and the header values ranges of one copy of the head's bytes: parsing a head
/// costs three allocations however many headers it has (one string and one vector per header
/// line before), and the header values sent on share that buffer instead of being copied.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// The head as received, request line to the empty line (the values are taken from it;
    /// they may hold bytes that are not UTF-8).
    raw: Bytes,
    /// Method, target and header names, one after the other (httparse returned them as `&str`;
    /// kept as a `String` so they are not checked for UTF-8 again at every look-up).
    text: String,
    /// Range of `text`.
    method: std::ops::Range<usize>,
    /// Range of `text`.
    target: std::ops::Range<usize>,
    /// Header lines in order: (name as sent: range of `text`, value: range of `raw`).
    headers: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Body framing.
    pub framing: Framing,
    /// The client wants the connection kept open after this request.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
}

impl RequestHead {
    fn text(&self, r: &std::ops::Range<usize>) -> &str {
        // The ranges are those of whole `&str`s pushed onto `text`, so they are in bounds and
        // on character boundaries; `get` keeps a mistake from being a panic.
        self.text.get(r.clone()).unwrap_or_default()
    }

    /// The method, as sent.
    pub fn method(&self) -> &str {
        self.text(&self.method)
    }

    /// The request target, as sent.
    pub fn target(&self) -> &str {
        self.text(&self.target)
    }

    /// Length of the head as received, request line to the empty line.
    pub fn head_len(&self) -> usize {
        self.raw.len()
    }

    /// Header lines in order: name as sent, raw value.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> + '_ {
        self.headers
            .iter()
            .map(|(n, v)| (self.text(n), &self.raw[v.clone()]))
    }

    /// Header lines in order, each value as a slice of the head's buffer (no copy).
    pub fn shared_headers(&self) -> impl Iterator<Item = (&str, Bytes)> + '_ {
        self.headers
            .iter()
            .map(|(n, v)| (self.text(n), self.raw.slice(v.clone())))
    }

    /// First value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Number of lines of a header.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
}

/// Read one request head into `buf` (which may already hold pipelined bytes), within `timeout`
/// and `max` bytes. On success the head's bytes are consumed from `buf`; what follows stays.
/// `first_byte_timeout` bounds the wait for the first byte (keep-alive idle); the rest of the head
/// must arrive within `timeout` of the first byte.
pub async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max: usize,
    first_byte_timeout: Duration,
    timeout: Duration,
) -> Result<RequestHead, HeadError> {
    if buf.is_empty() {
        let n = match tokio::time::timeout(first_byte_timeout, read_more(io, buf)).await {
            Ok(r) => r?,
            Err(_) => return Err(HeadError::Timeout),
        };
        if n == 0 {
            return Err(HeadError::Closed { clean: true });
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(head) = try_parse(buf, max)? {
            return Ok(head);
        }
        if buf.len() >= max {
            return Err(HeadError::TooLarge(max));
        }
        let n = match tokio::time::timeout_at(deadline, read_more(io, buf)).await {
            Ok(r) => r?,
            Err(_) => return Err(HeadError::Timeout),
        };
        if n == 0 {
            return Err(HeadError::Closed { clean: false });
        }
    }
}

async fn read_more<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
) -> Result<usize, HeadError> {
    buf.reserve(8192);
    io.read_buf(buf).await.map_err(HeadError::Io)
}

/// Parse a complete head at the start of `buf`; `Ok(None)` when more bytes are needed.
pub fn try_parse(buf: &mut BytesMut, max: usize) -> Result<Option<RequestHead>, HeadError> {
    // Tolerate (RFC 9112 §2.2) empty lines before a request line.
    while buf.starts_with(b"\r\n") {
        buf.advance(2);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge(max)),
        Err(httparse::Error::Version) => return Err(HeadError::Bad("unsupported HTTP version")),
        Err(httparse::Error::HeaderName) | Err(httparse::Error::HeaderValue) => {
            return Err(HeadError::Bad(
                "malformed header line (obs-fold and whitespace before the colon are refused)",
            ));
        }
        Err(_) => return Err(HeadError::Bad("malformed request line or header")),
    };
    if len > max {
        return Err(HeadError::TooLarge(max));
    }
    let base: &[u8] = buf;
    let in_buf =
        |part: &[u8]| range_in(base, len, part).ok_or(HeadError::Bad("malformed header line"));
    let method_str = req.method.unwrap_or_default();
    let target_str = req.path.unwrap_or_default();
    let names: usize = req.headers.iter().map(|h| h.name.len()).sum();
    let mut text = String::with_capacity(method_str.len() + target_str.len() + names);
    let mut push = |part: &str| {
        let start = text.len();
        text.push_str(part);
        start..text.len()
    };
    let method = push(method_str);
    let target = push(target_str);
    let headers: Vec<_> = req
        .headers
        .iter()
        .map(|h| Ok((push(h.name), in_buf(h.value)?)))
        .collect::<Result<_, HeadError>>()?;
    let version = req.version.unwrap_or(1);
    // A copy, not a split of `buf`: a split would share `buf`'s allocation, and `buf` could
    // not take its space back for the next read while this head lives.
    let raw = Bytes::copy_from_slice(&buf[..len]);
    buf.advance(len);

    let mut head = RequestHead {
        raw,
        text,
        method,
        target,
        version,
        headers,
        framing: Framing::None,
        keep_alive: version == 1,
        expect_continue: false,
    };
    validate(&mut head)?;
    Ok(Some(head))
}

fn validate(head: &mut RequestHead) -> Result<(), HeadError> {
    let cl_count = head.header_count("content-length");
    let te_count = head.header_count("transfer-encoding");
    if cl_count > 1 {
        return Err(HeadError::Bad("duplicate Content-Length header"));
    }
    if cl_count == 1 && te_count > 0 {
        return Err(HeadError::Bad(
            "both Content-Length and Transfer-Encoding (ambiguous framing)",
        ));
    }
    if te_count > 1 {
        return Err(HeadError::Bad("more than one Transfer-Encoding header"));
    }
    if te_count == 1 {
        if head.version == 0 {
            return Err(HeadError::Bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        let te = head.header("transfer-encoding").unwrap_or_default();
        if !trim(te).eq_ignore_ascii_case(b"chunked") {
            return Err(HeadError::Bad(
                "Transfer-Encoding other than plain \"chunked\"",
            ));
        }
        head.framing = Framing::Chunked;
    } else if cl_count == 1 {
        let v = trim(head.header("content-length").unwrap_or_default());
        if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::Bad("invalid Content-Length"));
        }
        let n: u64 = std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(HeadError::Bad("invalid Content-Length"))?;
        head.framing = if n == 0 {
            Framing::None
        } else {
            Framing::Length(n)
        };
    }
    if head.header_count("host") > 1 {
        return Err(HeadError::Bad("more than one Host header"));
    }
    let mut close = false;
    let mut keep = false;
    let mut expect_continue = false;
    for (n, v) in head.headers() {
        if n.eq_ignore_ascii_case("connection") || n.eq_ignore_ascii_case("proxy-connection") {
            for tok in v.split(|b| *b == b',') {
                let tok = trim(tok);
                close |= tok.eq_ignore_ascii_case(b"close");
                keep |= tok.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        if n.eq_ignore_ascii_case("expect") && trim(v).eq_ignore_ascii_case(b"100-continue") {
            expect_continue = true;
        }
    }
    head.expect_continue = expect_continue;
    head.keep_alive = !close && (head.version == 1 || keep);
    Ok(())
}

/// The range of `part` within the first `len` bytes of `base`, for a slice httparse returned
/// while parsing `base`. A non-empty part is a slice of `base` itself (httparse has no other
/// storage); an empty one may point anywhere, and any empty range stands for it. Checked all
/// the same: a part outside the head is `None`, never an out-of-bounds slice later.
pub(crate) fn range_in(base: &[u8], len: usize, part: &[u8]) -> Option<std::ops::Range<usize>> {
    if part.is_empty() {
        return Some(0..0);
    }
    (part.as_ptr() as usize)
        .checked_sub(base.as_ptr() as usize)
        .and_then(|start| Some(start..start.checked_add(part.len())?))
        .filter(|r| r.end <= len)
}

/// Trim ASCII whitespace.
pub fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// Incremental body decoder over a stream (`buf` holds bytes already read): request bodies from
/// the client, response bodies from the origin.
pub struct BodyReader {
    state: BodyState,
    /// Which side the stream is, for the messages ("client" or "origin").
    peer: &'static str,
}

enum BodyState {
    Length(u64),
    /// A response body delimited by the origin closing the connection.
    UntilClose,
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    Done,
}

/// A malformed body (bad chunk framing) or a peer that went away mid-body.
#[derive(Debug, thiserror::Error)]
#[error("request body: {0}")]
pub struct BodyError(pub String);

impl BodyReader {
    /// A decoder for a request body with the given framing.
    pub fn new(framing: Framing) -> BodyReader {
        BodyReader {
            state: BodyState::for_framing(framing),
            peer: "client",
        }
    }

    /// A decoder for a response body: with the given framing, or (`None`) until the origin
    /// closes the connection.
    pub fn response(framing: Option<Framing>) -> BodyReader {
        BodyReader {
            state: framing.map_or(BodyState::UntilClose, BodyState::for_framing),
            peer: "origin",
        }
    }

    /// Next piece of decoded body data; `None` at the end of the body.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        buf: &mut BytesMut,
        max_chunk: usize,
    ) -> Result<Option<Bytes>, BodyError> {
        let peer = self.peer;
        loop {
            match self.state {
                BodyState::Done => return Ok(None),
                BodyState::UntilClose => {
                    if buf.is_empty() {
                        buf.reserve(max_chunk.max(8192));
                        let n = io
                            .read_buf(buf)
                            .await
                            .map_err(|e| BodyError(e.to_string()))?;
                        if n == 0 {
                            self.state = BodyState::Done;
                            return Ok(None);
                        }
                    }
                    return Ok(Some(buf.split().freeze()));
                }
                BodyState::Length(0) => {
                    self.state = BodyState::Done;
                    return Ok(None);
                }
                BodyState::Length(n) | BodyState::ChunkData(n) => {
                    if buf.is_empty() {
                        fill(io, buf, max_chunk, peer).await?;
                    }
                    let take = (n.min(buf.len() as u64)) as usize;
                    let data = buf.split_to(take).freeze();
                    let left = n - take as u64;
                    self.state = match self.state {
                        BodyState::Length(_) => BodyState::Length(left),
                        _ if left == 0 => BodyState::ChunkDataEnd,
                        _ => BodyState::ChunkData(left),
                    };
                    return Ok(Some(data));
                }
                BodyState::ChunkSize => {
                    let line = read_line(io, buf, MAX_CHUNK_LINE, peer).await?;
                    let n = chunk_size(&line)?;
                    self.state = if n == 0 {
                        BodyState::Trailers
                    } else {
                        BodyState::ChunkData(n)
                    };
                }
                BodyState::ChunkDataEnd => {
                    let line = read_line(io, buf, 2, peer).await?;
                    if !line.is_empty() {
                        return Err(BodyError("chunk data not followed by CRLF".into()));
                    }
                    self.state = BodyState::ChunkSize;
                }
                BodyState::Trailers => {
                    // Trailers are read and dropped (kennel does not forward them).
                    let line = read_line(io, buf, 8192, peer).await?;
                    if line.is_empty() {
                        self.state = BodyState::Done;
                    }
                }
            }
        }
    }
}

/// Longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Most hex digits in a chunk size: 15 digits always fit in a u64 (16 may overflow it).
const MAX_CHUNK_DIGITS: usize = 15;

/// The size on a chunk-size line (without its CRLF); extensions after `;` are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let size = line
        .split(|b| *b == b';')
        .next()
        .map(trim)
        .unwrap_or_default();
    if size.is_empty() || size.len() > MAX_CHUNK_DIGITS || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err(BodyError("invalid chunk size".into()));
    }
    // All hex digits, at most 15 of them: always valid UTF-8 and never overflows.
    std::str::from_utf8(size)
        .ok()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or_else(|| BodyError("invalid chunk size".into()))
}

/// Check the first chunk-size line of a chunked body as far as it is already buffered
/// (`buf` starts where the body starts), so that a malformed one is refused with 400 before
/// the request goes out rather than found after the head was forwarded. An incomplete line is
/// refused only when what is there can no longer become valid.
pub fn check_first_chunk_line(buf: &[u8]) -> Result<(), BodyError> {
    if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
        return chunk_size(&buf[..pos]).map(|_| ());
    }
    let size = buf.split(|b| *b == b';').next().unwrap_or_default();
    let digits = size.iter().filter(|b| b.is_ascii_hexdigit()).count();
    let stray = size
        .iter()
        .any(|b| !b.is_ascii_hexdigit() && !b.is_ascii_whitespace());
    if stray || digits > MAX_CHUNK_DIGITS || buf.len() > MAX_CHUNK_LINE + 2 {
        return Err(BodyError("invalid chunk size".into()));
    }
    Ok(())
}

impl BodyState {
    fn for_framing(framing: Framing) -> BodyState {
        match framing {
            Framing::None => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::ChunkSize,
        }
    }
}

async fn fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max: usize,
    peer: &str,
) -> Result<(), BodyError> {
    buf.reserve(max.max(8192));
    let n = io
        .read_buf(buf)
        .await
        .map_err(|e| BodyError(e.to_string()))?;
    if n == 0 {
        return Err(BodyError(format!("{peer} closed the connection mid-body")));
    }
    Ok(())
}

/// Read a CRLF-terminated line (without the CRLF), at most `max` bytes long.
async fn read_line<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max: usize,
    peer: &str,
) -> Result<Vec<u8>, BodyError> {
    loop {
        if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf.split_to(pos).to_vec();
            buf.advance(2);
            return Ok(line);
        }
        if buf.len() > max + 2 {
            return Err(BodyError("chunk framing line too long".into()));
        }
        fill(io, buf, 8192, peer).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client connection whose every read fails (reset by the peer).
    struct ResetReader;

    impl AsyncRead for ResetReader {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
        }
    }

    /// Issue 15 item 5: a read error keeps the OS error as its source (it was a string).
    #[tokio::test]
    async fn read_error_keeps_the_os_error() {
        let mut buf = BytesMut::new();
        let t = Duration::from_secs(1);
        let e = read_head(&mut ResetReader, &mut buf, 1024, t, t)
            .await
            .expect_err("read fails");
        assert!(
            matches!(&e, HeadError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionReset),
            "{e:?}"
        );
        let source = std::error::Error::source(&e).expect("source kept");
        assert!(
            source.downcast_ref::<std::io::Error>().is_some(),
            "{source:?}"
        );
    }

    fn parse(s: &str) -> Result<Option<RequestHead>, HeadError> {
        let mut b = BytesMut::from(s.as_bytes());
        try_parse(&mut b, 65536)
    }

    /// The head is kept as one buffer with ranges into it: what the accessors give back must
    /// be exactly the lines as sent, also after empty lines before the request line, and the
    /// bytes that follow the head stay in the buffer.
    #[test]
    fn method_target_and_header_lines_come_back_as_sent() {
        let mut b = BytesMut::from(
            &b"\r\n\r\nPOST http://h.test:8080/p?q=1 HTTP/1.1\r\nHost: h.test:8080\r\nX-Empty:\r\nX-A:  v  w \r\nContent-Length: 3\r\n\r\nabcNEXT"[..],
        );
        let h = try_parse(&mut b, 65536).unwrap().unwrap();
        assert_eq!(h.method(), "POST");
        assert_eq!(h.target(), "http://h.test:8080/p?q=1");
        let lines: Vec<(String, Vec<u8>)> = h
            .headers()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect();
        assert_eq!(
            lines,
            [
                ("Host".to_string(), b"h.test:8080".to_vec()),
                ("X-Empty".to_string(), b"".to_vec()),
                ("X-A".to_string(), b"v  w".to_vec()),
                ("Content-Length".to_string(), b"3".to_vec()),
            ]
        );
        let shared: Vec<Bytes> = h.shared_headers().map(|(_, v)| v).collect();
        assert_eq!(shared[2], &b"v  w"[..]);
        assert_eq!(h.framing, Framing::Length(3));
        assert_eq!(&b[..], b"abcNEXT");
    }

    #[test]
    fn cl_and_te_refused() {
        let e = parse(
            "POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(matches!(e, Err(HeadError::Bad(m)) if m.contains("ambiguous")));
        let e = parse(
            "POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        );
        assert!(matches!(e, Err(HeadError::Bad(_))));
    }

    #[test]
    fn duplicate_cl_refused_even_if_equal() {
        let e = parse(
            "POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        );
        assert!(
            matches!(e, Err(HeadError::Bad("duplicate Content-Length header"))),
            "{e:?}"
        );
    }

    #[test]
    fn obs_fold_refused() {
        let e = parse("GET http://a/ HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n");
        assert!(matches!(e, Err(HeadError::Bad(_))), "{e:?}");
    }

    #[test]
    fn te_variants_refused() {
        for te in ["gzip, chunked", "chunked, chunked", "identity", "xchunked"] {
            let e = parse(&format!(
                "POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n"
            ));
            assert!(matches!(e, Err(HeadError::Bad(_))), "{te}: {e:?}");
        }
        let e = parse("POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n");
        assert!(matches!(e, Err(HeadError::Bad(_))));
    }

    #[test]
    fn partial_then_complete() {
        assert!(
            parse("GET http://a/ HTTP/1.1\r\nHost: a\r\n")
                .unwrap()
                .is_none()
        );
        let h = parse("GET http://a/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.method(), "GET");
        assert!(!h.keep_alive);
        assert_eq!(h.framing, Framing::None);
    }

    #[tokio::test]
    async fn chunked_body_decodes() {
        let mut io: &[u8] = b"";
        let mut buf =
            BytesMut::from(&b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT"[..]);
        let mut r = BodyReader::new(Framing::Chunked);
        let mut out = Vec::new();
        while let Some(b) = r.next(&mut io, &mut buf, 65536).await.unwrap() {
            out.extend_from_slice(&b);
        }
        assert_eq!(out, b"hello world");
        assert_eq!(&buf[..], b"NEXT");
    }

    /// Issue 9, item 4: the first chunk line is checked where it is already buffered.
    #[test]
    fn buffered_first_chunk_line_is_checked_before_forwarding() {
        for ok in [
            &b"5\r\nhello"[..],
            b"5;ext=1\r\n",
            b"fffffffffffffff\r\n",
            b"",
            b"12",
            b"5 ",
        ] {
            assert!(
                check_first_chunk_line(ok).is_ok(),
                "{:?}",
                String::from_utf8_lossy(ok)
            );
        }
        for bad in [
            &b"100000000000000000000\r\nhello"[..],
            b"ffffffffffffffff\r\n",
            b"zz\r\n",
            b"5 x\r\n",
            b"\r\n",
            b"fffffffffffffffffffff",
            b"zz",
        ] {
            assert!(
                check_first_chunk_line(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[tokio::test]
    async fn bad_chunk_refused() {
        let mut io: &[u8] = b"";
        let mut buf = BytesMut::from(&b"zz\r\nhello\r\n"[..]);
        let mut r = BodyReader::new(Framing::Chunked);
        assert!(r.next(&mut io, &mut buf, 65536).await.is_err());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes never panic the head parser, and a parsed head is never ambiguous.
        #[test]
        fn head_parser_total(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut b = BytesMut::from(&bytes[..]);
            if let Ok(Some(h)) = try_parse(&mut b, 65536) {
                prop_assert!(h.header_count("content-length") <= 1);
                prop_assert!(!(h.header_count("content-length") == 1 && h.header_count("transfer-encoding") > 0));
            }
        }

        /// Any request carrying both Content-Length and Transfer-Encoding, in any order and case,
        /// is refused.
        #[test]
        fn cl_te_always_refused(cl in 0u32..100000, te_first in any::<bool>(), upper in any::<bool>()) {
            let (c, t) = if upper { ("CONTENT-LENGTH", "TRANSFER-ENCODING") } else { ("content-length", "transfer-encoding") };
            let hs = if te_first {
                format!("{t}: chunked\r\n{c}: {cl}\r\n")
            } else {
                format!("{c}: {cl}\r\n{t}: chunked\r\n")
            };
            let mut b = BytesMut::from(format!("POST http://a/ HTTP/1.1\r\nHost: a\r\n{hs}\r\n").as_bytes());
            prop_assert!(matches!(try_parse(&mut b, 65536), Err(HeadError::Bad(_))));
        }

        /// The chunked decoder terminates on arbitrary input without panicking: every step
        /// that yields data consumes input (the buffer shrinks and the stream is at its end),
        /// so it reaches the end of the body or an error within `len + 1` steps. (The old test
        /// stopped after 2048 steps whatever happened, so a decoder that looped without
        /// consuming passed it.)
        #[test]
        fn chunked_decoder_total(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            rt.block_on(async {
                let mut io: &[u8] = b"";
                let mut buf = BytesMut::from(&bytes[..]);
                let mut r = BodyReader::new(Framing::Chunked);
                let mut steps = 0usize;
                loop {
                    let before = buf.len();
                    match r.next(&mut io, &mut buf, 65536).await {
                        Ok(Some(_)) => prop_assert!(
                            buf.len() < before,
                            "a step yielded data without consuming input"
                        ),
                        Ok(None) | Err(_) => break,
                    }
                    steps += 1;
                    prop_assert!(steps <= bytes.len() + 1, "{steps} steps for {} bytes", bytes.len());
                }
                Ok(())
            })?;
        }
    }
}
