//! The origin side of plain-HTTP forwarding (absolute-form requests, and HTTP inside CONNECT
//! tunnels): one HTTP/1.1 exchange at a time on a connection kennel holds itself, written and
//! read in the request's own task.
//!
//! Why not hyper's client (used until session 7): it drives every connection in a task of its
//! own and hands each request and response across a channel and a oneshot, so a keep-alive
//! request cost two task wake-ups, a `Request` and a `Response` with their header maps, and
//! hyper's head encoding and parsing on top of kennel's own; that was the largest piece of the
//! user-space time between kennel and a minimal relay (benches/README.md, "where the keep-alive
//! gap to floor is"). What the origin side needs is small and is written here: one write of the
//! request head, the request body streamed as it comes, the response head parsed by httparse
//! (as the request side is), the body decoded by the request side's decoder, and whether the
//! connection can carry another request.

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering::Relaxed};
use std::task::Context;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::dial::Conn;
use crate::head::{BodyError, BodyReader, Framing, RequestHead, trim};
use crate::log::Ended;
use crate::respond::Failure;

/// Largest response head read from an origin (hyper's client buffer limit before).
const MAX_RESPONSE_HEAD: usize = 1 << 20;
/// Most header lines in a response head.
const MAX_RESPONSE_HEADERS: usize = 128;
/// Most informational (1xx) responses skipped before the final one: an origin that sends them
/// forever would otherwise hold the request forever while looking busy.
const MAX_INFORMATIONAL: usize = 32;
/// Largest head plus first body piece sent to the client in one write (a typical page of small
/// responses; bigger bodies are not worth a copy to save one syscall).
const COALESCE_MAX: usize = 16 * 1024;

/// Hop-by-hop headers never forwarded in either direction (plus whatever `Connection` lists).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether a header named `name` is hop-by-hop, given the tokens of the message's `Connection`
/// headers.
fn is_hop(name: &[u8], listed: &[&[u8]]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
        || listed.iter().any(|l| name.eq_ignore_ascii_case(l))
}

/// The non-empty tokens of the `Connection` (and `Proxy-Connection`) header values among
/// `headers`.
fn connection_tokens<'a>(headers: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Vec<&'a [u8]> {
    headers
        .filter(|(n, _)| {
            n.eq_ignore_ascii_case(b"connection") || n.eq_ignore_ascii_case(b"proxy-connection")
        })
        .flat_map(|(_, v)| v.split(|b| *b == b',').map(trim))
        .filter(|t| !t.is_empty())
        .collect()
}

/// A connection to an origin (or to an HTTP upstream proxy) and the bytes read from it that
/// were not used yet.
pub struct OriginConn {
    io: Conn,
    buf: BytesMut,
}

impl OriginConn {
    /// A fresh connection.
    pub fn new(io: Conn) -> OriginConn {
        OriginConn {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can carry another request: the origin has not closed it and
    /// sent nothing unasked. Never waits; costs no syscall while the connection has had no event
    /// since its last read came back empty.
    pub fn is_reusable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        match &mut self.io {
            Conn::Tcp(tcp) => {
                matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Conn::Upstream(io) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut rb = ReadBuf::new(&mut probe);
                Pin::new(io).poll_read(&mut cx, &mut rb).is_pending()
            }
        }
    }

    /// The connection and what was read from it past the last response (after a `101`, the
    /// first bytes of the switched protocol).
    pub fn into_parts(self) -> (Conn, BytesMut) {
        (self.io, self.buf)
    }
}

/// A parsed response head. Everything is a range of one buffer holding the head as received.
pub struct ResponseHead {
    raw: Bytes,
    /// Status code (100–999).
    pub status: u16,
    reason: Range<usize>,
    /// Header lines in order: (name, value), ranges of `raw`.
    headers: Vec<(Range<usize>, Range<usize>)>,
    /// The body's framing; `None`: delimited by the origin closing the connection.
    pub body: Option<Framing>,
    /// `Transfer-Encoding` was sent (the body is decoded, and re-framed for the client).
    pub transfer_encoded: bool,
    /// `Content-Length` was sent and applies (no `Transfer-Encoding`).
    pub has_length: bool,
    /// The origin keeps the connection open after this response.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// Header lines in order: name and value as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.headers
            .iter()
            .map(|(n, v)| (&self.raw[n.clone()], &self.raw[v.clone()]))
    }

    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The reason phrase as sent.
    pub fn reason(&self) -> &[u8] {
        &self.raw[self.reason.clone()]
    }
}

/// Why no usable response head came from the origin.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// Not a byte of a response arrived: the connection was closed or failed first (on a
    /// reused connection: the origin had closed it).
    #[error("origin closed the connection without a response{}", .0.as_ref().map(|e| format!(" ({e})")).unwrap_or_default())]
    NoResponse(Option<io::Error>),
    /// The response head is malformed, too large, or was cut short.
    #[error("invalid response head from the origin: {0}")]
    Malformed(String),
    /// Reading the response head failed after part of it had arrived.
    #[error("reading the response head from the origin: {0}")]
    Io(io::Error),
}

/// Parse a complete response head at the start of `buf` (consumed on success); `Ok(None)` when
/// more bytes are needed. `head_request`: the request was `HEAD` (no body follows whatever the
/// headers say).
pub fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<ResponseHead>, OriginError> {
    let bad = |what: String| OriginError::Malformed(what);
    let mut lines = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut lines);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(bad(format!(
                "more than {MAX_RESPONSE_HEADERS} header lines"
            )));
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    if status < 100 {
        return Err(bad(format!("status code {status}")));
    }
    let base: &[u8] = buf;
    let in_head = |part: &[u8]| {
        crate::head::range_in(base, len, part).ok_or_else(|| bad("header outside the head".into()))
    };
    let reason = in_head(resp.reason.unwrap_or_default().as_bytes())?;
    let headers = resp
        .headers
        .iter()
        .map(|h| Ok((in_head(h.name.as_bytes())?, in_head(h.value)?)))
        .collect::<Result<Vec<_>, OriginError>>()?;
    let version = resp.version.unwrap_or(1);
    // Split off, not copied: the head lives only while the response is written, and the
    // buffer takes its space back once it is gone.
    let raw = buf.split_to(len).freeze();
    let mut head = ResponseHead {
        raw,
        status,
        reason,
        headers,
        body: Some(Framing::None),
        transfer_encoded: false,
        has_length: false,
        keep_alive: false,
    };
    frame(&mut head, version, head_request)?;
    Ok(Some(head))
}

/// Set the body framing and reuse of a parsed head (RFC 9112 §6.3).
fn frame(head: &mut ResponseHead, version: u8, head_request: bool) -> Result<(), OriginError> {
    // Whether the last transfer coding is chunked; `None` without Transfer-Encoding.
    let te_chunked = head
        .values("transfer-encoding")
        .flat_map(|v| v.split(|b| *b == b',').map(trim))
        .filter(|t| !t.is_empty())
        .last()
        .map(|last| last.eq_ignore_ascii_case(b"chunked"));
    head.transfer_encoded = te_chunked.is_some();
    let mut length = None;
    for v in head.values("content-length") {
        for tok in v.split(|b| *b == b',').map(trim) {
            let n = (!tok.is_empty() && tok.len() <= 18 && tok.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(tok).ok()?.parse::<u64>().ok())
                .flatten();
            match (n, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => {
                    return Err(OriginError::Malformed(format!(
                        "invalid Content-Length {:?}",
                        String::from_utf8_lossy(v)
                    )));
                }
            }
        }
    }
    head.has_length = length.is_some() && !head.transfer_encoded;
    let no_body = head_request || matches!(head.status, 100..=199 | 204 | 304);
    head.body = if no_body {
        Some(Framing::None)
    } else if let Some(chunked) = te_chunked {
        // Chunked last: decoded here. Any other final coding: the body ends when the origin
        // closes the connection.
        chunked.then_some(Framing::Chunked)
    } else {
        match length {
            Some(0) => Some(Framing::None),
            Some(n) => Some(Framing::Length(n)),
            None => None,
        }
    };
    let tokens = connection_tokens(head.headers());
    let close = tokens.iter().any(|t| t.eq_ignore_ascii_case(b"close"));
    let keep = tokens.iter().any(|t| t.eq_ignore_ascii_case(b"keep-alive"));
    // Both Transfer-Encoding and Content-Length: the encoding wins (as in hyper and the RFC), but
    // the connection is not used again (the message may be a smuggling attempt).
    let ambiguous = head.transfer_encoded && length.is_some();
    head.keep_alive = !close && (version == 1 || keep) && !ambiguous && head.body.is_some();
    Ok(())
}

/// Read the final response head from `io` (after `buf`'s bytes), skipping informational (1xx)
/// responses; a `101` is final only when `upgrading`.
pub async fn read_response_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    head_request: bool,
    upgrading: bool,
) -> Result<ResponseHead, OriginError> {
    let mut answered = !buf.is_empty();
    let mut informational = 0;
    loop {
        if !buf.is_empty() {
            if let Some(head) = parse_response(buf, head_request)? {
                match head.status {
                    101 if upgrading => return Ok(head),
                    101 => {
                        return Err(OriginError::Malformed(
                            "101 Switching Protocols to a request that asked for no upgrade".into(),
                        ));
                    }
                    100..=199 if informational < MAX_INFORMATIONAL => {
                        informational += 1;
                        continue;
                    }
                    100..=199 => {
                        return Err(OriginError::Malformed(format!(
                            "more than {MAX_INFORMATIONAL} informational (1xx) responses"
                        )));
                    }
                    _ => return Ok(head),
                }
            }
            if buf.len() >= MAX_RESPONSE_HEAD {
                return Err(OriginError::Malformed(format!(
                    "head larger than {MAX_RESPONSE_HEAD} bytes"
                )));
            }
        }
        buf.reserve(8192);
        match io.read_buf(buf).await {
            Ok(0) if !answered => return Err(OriginError::NoResponse(None)),
            Ok(0) => {
                return Err(OriginError::Malformed(
                    "connection closed in the middle of the head".into(),
                ));
            }
            Ok(_) => answered = true,
            Err(e) if !answered => return Err(OriginError::NoResponse(Some(e))),
            Err(e) => return Err(OriginError::Io(e)),
        }
    }
}

/// The request head sent to the origin for the client's `head`: request line with `target`
/// (origin-form, or absolute-form to an upstream proxy), the client's header lines as sent
/// except the hop-by-hop ones, `Expect` (answered by kennel) and `Host`; then `Host: host`, the
/// `extra` lines, and the framing of the body as kennel sends it.
pub fn request_head(
    head: &RequestHead,
    target: &str,
    host: &str,
    extra: &[(&str, &[u8])],
) -> Vec<u8> {
    let listed = connection_tokens(head.headers().map(|(n, v)| (n.as_bytes(), v)));
    let mut out = Vec::with_capacity(head.head_len() + host.len() + 64);
    out.extend_from_slice(head.method().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in head.headers() {
        let n = name.as_bytes();
        // Content-Length too: kennel writes the framing it sends below.
        if is_hop(n, &listed)
            || n.eq_ignore_ascii_case(b"expect")
            || n.eq_ignore_ascii_case(b"host")
            || n.eq_ignore_ascii_case(b"content-length")
        {
            continue;
        }
        header_line(&mut out, n, value);
    }
    header_line(&mut out, b"Host", host.as_bytes());
    for (name, value) in extra {
        header_line(&mut out, name.as_bytes(), value);
    }
    match head.framing {
        Framing::Length(n) => header_line(
            &mut out,
            b"Content-Length",
            itoa::Buffer::new().format(n).as_bytes(),
        ),
        Framing::Chunked => header_line(&mut out, b"Transfer-Encoding", b"chunked"),
        // A POST or PUT without a body says so (some origins answer 411 otherwise).
        Framing::None
            if ["POST", "PUT", "PATCH"]
                .iter()
                .any(|m| head.method().eq_ignore_ascii_case(m)) =>
        {
            header_line(&mut out, b"Content-Length", b"0")
        }
        Framing::None => {}
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What the client side of one exchange is and wants.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide {
    /// The request's body framing (as the client sent it).
    pub framing: Framing,
    /// The request is `HEAD`.
    pub head_request: bool,
    /// The client speaks HTTP/1.1 (else 1.0).
    pub v11: bool,
    /// The client wants its connection kept open.
    pub keep_alive: bool,
    /// The request asked for a protocol switch the caller will relay (HTTP inside a tunnel): a
    /// `101` answer is final and its `Connection`/`Upgrade` headers are passed on.
    pub upgrading: bool,
}

impl ClientSide {
    /// The client side of forwarding `head` (`upgrading`: see the field).
    pub fn of(head: &RequestHead, upgrading: bool) -> ClientSide {
        ClientSide {
            framing: head.framing,
            head_request: head.method().eq_ignore_ascii_case("HEAD"),
            v11: head.version == 1,
            keep_alive: head.keep_alive,
            upgrading,
        }
    }
}

/// A response written to the client.
#[derive(Debug)]
pub struct Written {
    /// The origin's status code.
    pub status: u16,
    /// Body bytes sent to the client.
    pub down: u64,
    /// The origin connection can carry another request.
    pub origin_keep: bool,
    /// The client connection can carry another request.
    pub client_keep: bool,
    /// Why the body was cut short after the head went out (the client got part of it).
    pub cut: Option<String>,
    /// A `101` the caller asked for: relay the connections as they are from here.
    pub switched: bool,
}

/// How far the response to the client got (read by [`exchange`] when the request body fails).
/// Atomics only because the task's future must be `Send`; one task reads and writes them.
#[derive(Default)]
struct Progress {
    /// A byte of a response came from the origin.
    answered: AtomicBool,
    /// The head went to the client with this status (0: not yet).
    status: AtomicU16,
    /// Body bytes sent to the client.
    down: AtomicU64,
}

/// Why streaming the request body to the origin stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    /// The client's body is malformed or the client went away mid-body.
    #[error(transparent)]
    Client(BodyError),
    /// The origin connection stopped taking the body.
    #[error("origin stopped reading the request body")]
    OriginStopped,
}

/// One exchange's result.
pub struct Exchanged {
    /// The response written, or why there is none (nothing was written to the client then).
    pub result: Result<Written, Failure>,
    /// Request body bytes taken from the client.
    pub up: u64,
    /// How the request body pump ended (`None`: it had not finished when the response did).
    pub pump_done: Option<Result<(), PumpError>>,
    /// Nothing of a response arrived and no request body was sent: the request can be repeated
    /// on another connection.
    pub retryable: bool,
}

/// Send one request (`request_head`, then the client's body read from `client` after the bytes
/// already in `client_buf`) to `origin` and write its response to `client`. `check` sees the
/// response head before anything goes to the client and can refuse it (an upstream proxy's 407).
pub async fn exchange(
    client: &mut TcpStream,
    client_buf: &mut BytesMut,
    origin: &mut OriginConn,
    request_head: &[u8],
    side: ClientSide,
    bufsize: usize,
    check: impl FnOnce(&ResponseHead) -> Result<(), Failure>,
) -> Exchanged {
    let progress = Progress::default();
    if let Err(e) = origin.io.write_all(request_head).await {
        return Exchanged {
            result: Err(Failure::Origin(
                OriginError::NoResponse(Some(e)).to_string(),
            )),
            up: 0,
            pump_done: None,
            retryable: side.framing == Framing::None,
        };
    }
    let (mut crd, mut cwr) = client.split();
    if side.framing == Framing::None {
        let result = respond(
            &mut origin.io,
            &mut origin.buf,
            &mut cwr,
            side,
            bufsize,
            check,
            &progress,
        )
        .await;
        let retryable = result.is_err() && !progress.answered.load(Relaxed);
        return Exchanged {
            result,
            up: 0,
            pump_done: Some(Ok(())),
            retryable,
        };
    }
    // The body goes up while the response comes down: an origin may answer (413, 401) before it
    // has read the whole body.
    let up = AtomicU64::new(0);
    let (mut ord, mut owr) = tokio::io::split(&mut origin.io);
    let pump = pump_body(&mut crd, client_buf, side.framing, &mut owr, bufsize, &up);
    let response = respond(
        &mut ord,
        &mut origin.buf,
        &mut cwr,
        side,
        bufsize,
        check,
        &progress,
    );
    tokio::pin!(pump);
    tokio::pin!(response);
    let mut pump_done: Option<Result<(), PumpError>> = None;
    let result = loop {
        tokio::select! {
            r = &mut pump, if pump_done.is_none() => {
                if let Err(PumpError::Client(e)) = &r {
                    // The client's body is malformed or cut: the origin would wait for the rest
                    // forever. Before the response head went out this is the client's 400;
                    // after, the response is cut where it is.
                    let result = match progress.status.load(Relaxed) {
                        0 => Err(Failure::BadRequest(e.to_string())),
                        // Logged from the pump's error (`exchange_end`).
                        status => Ok(Written {
                            status,
                            down: progress.down.load(Relaxed),
                            origin_keep: false,
                            client_keep: false,
                            cut: None,
                            switched: false,
                        }),
                    };
                    pump_done = Some(r);
                    break result;
                }
                pump_done = Some(r);
            }
            r = &mut response => break r,
        }
    };
    Exchanged {
        result,
        up: up.load(Relaxed),
        pump_done,
        retryable: false,
    }
}

/// After a response was written: whether the whole request body was taken (the client
/// connection can carry another request), and how the request ended for the access log.
pub fn exchange_end(
    pump_done: &Option<Result<(), PumpError>>,
    framing: Framing,
    cut: Option<String>,
) -> (bool, Ended) {
    let body_ok = matches!(pump_done, Some(Ok(()))) || framing == Framing::None;
    let ended = match (pump_done, cut) {
        // The client already has the head and part of the body: what is logged is what it
        // got.
        (_, Some(why)) => Ended::OriginError(why),
        (Some(Err(e)), None) => Ended::Error(e.to_string()),
        _ => Ended::Done,
    };
    (body_ok, ended)
}

/// Stream the client's request body (decoded per `framing`) to the origin, framed as
/// [`request_head`] announced it.
async fn pump_body<R, W>(
    client: &mut R,
    buf: &mut BytesMut,
    framing: Framing,
    origin: &mut W,
    bufsize: usize,
    up: &AtomicU64,
) -> Result<(), PumpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let chunked = framing == Framing::Chunked;
    let mut reader = BodyReader::new(framing);
    let stopped = |_| PumpError::OriginStopped;
    while let Some(data) = reader
        .next(client, buf, bufsize)
        .await
        .map_err(PumpError::Client)?
    {
        if data.is_empty() {
            continue;
        }
        up.fetch_add(data.len() as u64, Relaxed);
        if chunked {
            write_chunk(origin, &data).await.map_err(stopped)?;
        } else {
            origin.write_all(&data).await.map_err(stopped)?;
        }
    }
    if chunked {
        origin.write_all(b"0\r\n\r\n").await.map_err(stopped)?;
    }
    origin.flush().await.map_err(stopped)
}

/// Write `data` as one chunk of a chunked body: size line, data and CRLF in one vectored
/// write where the stream takes those (a TCP socket does), not three sends per chunk.
async fn write_chunk<W: AsyncWrite + Unpin>(w: &mut W, data: &Bytes) -> io::Result<()> {
    use bytes::Buf;
    let mut line = Vec::with_capacity(20);
    chunk_line(&mut line, data.len());
    let mut chunk = Bytes::from(line).chain(data.clone()).chain(&b"\r\n"[..]);
    w.write_all_buf(&mut chunk).await
}

fn chunk_line(out: &mut Vec<u8>, len: usize) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{len:x}\r\n");
}

/// Read the response head from the origin and write the response to the client: the head
/// re-written (hop-by-hop headers dropped, framing for this client), the body decoded and
/// re-framed. Once the head is out an origin failure cannot become an error response any more
/// (the client would read it as body): the body just ends, the client connection is closed, and
/// the cause is returned for the log.
async fn respond<R, W>(
    origin: &mut R,
    obuf: &mut BytesMut,
    client: &mut W,
    side: ClientSide,
    bufsize: usize,
    check: impl FnOnce(&ResponseHead) -> Result<(), Failure>,
    progress: &Progress,
) -> Result<Written, Failure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let resp = match read_response_head(origin, obuf, side.head_request, side.upgrading).await {
        Ok(r) => r,
        Err(e) => {
            progress
                .answered
                .store(!matches!(e, OriginError::NoResponse(_)), Relaxed);
            return Err(Failure::Origin(e.to_string()));
        }
    };
    progress.answered.store(true, Relaxed);
    check(&resp)?;
    let switched = side.upgrading && resp.status == 101;
    let no_body = side.head_request || matches!(resp.status, 100..=199 | 204 | 304);
    let chunked = !no_body && !resp.has_length && side.v11;
    let close_delimited = !no_body && !resp.has_length && !side.v11;
    let client_keep = side.keep_alive && !close_delimited && !switched;

    let listed = connection_tokens(resp.headers());
    let mut out = Vec::with_capacity(resp.raw.len() + 64);
    out.extend_from_slice(if side.v11 { b"HTTP/1.1 " } else { b"HTTP/1.0 " });
    out.extend_from_slice(itoa::Buffer::new().format(resp.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason());
    out.extend_from_slice(b"\r\n");
    for (name, value) in resp.headers() {
        let switch_header = switched
            && (name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"upgrade"));
        let stale_length = resp.transfer_encoded && name.eq_ignore_ascii_case(b"content-length");
        if !switch_header && (is_hop(name, &listed) || stale_length) {
            continue;
        }
        header_line(&mut out, name, value);
    }
    if chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if switched {
        // The Connection: upgrade of the 101 itself was passed on above.
    } else if !client_keep {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if !side.v11 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let werr = Failure::ClientGone;

    let mut reader = BodyReader::response(if no_body || switched {
        Some(Framing::None)
    } else {
        resp.body
    });
    let mut down = 0u64;
    // A small response usually arrives in one read: its body (or first piece) goes out in the
    // same write as the head, one send instead of two per keep-alive request. Only bytes already
    // read are taken, so a slow or streaming body (long poll, server-sent events) still gets its
    // head at once.
    let mut carried = None;
    let bodiless = no_body || switched || resp.body == Some(Framing::None);
    if (bodiless || !obuf.is_empty())
        && let Some(first) =
            futures_util::FutureExt::now_or_never(reader.next(origin, obuf, bufsize))
    {
        match first {
            Ok(Some(data)) if out.len() + data.len() + 32 <= COALESCE_MAX => {
                down += data.len() as u64;
                frame_into(&mut out, &data, chunked);
            }
            other => carried = Some(other),
        }
    }
    client.write_all(&out).await.map_err(werr)?;
    progress.status.store(resp.status, Relaxed);
    progress.down.store(down, Relaxed);

    loop {
        let piece = match carried.take() {
            Some(p) => p,
            None => reader.next(origin, obuf, bufsize).await,
        };
        let data = match piece {
            Ok(Some(data)) => data,
            Ok(None) => break,
            Err(e) => {
                let _ = client.flush().await;
                let why = format!("origin: reading the response body: {}", e.0);
                return Ok(Written {
                    status: resp.status,
                    down,
                    origin_keep: false,
                    client_keep: false,
                    cut: Some(why),
                    switched: false,
                });
            }
        };
        if data.is_empty() {
            continue;
        }
        down += data.len() as u64;
        progress.down.store(down, Relaxed);
        if chunked {
            write_chunk(client, &data).await.map_err(werr)?;
        } else {
            client.write_all(&data).await.map_err(werr)?;
        }
    }
    if chunked {
        client.write_all(b"0\r\n\r\n").await.map_err(werr)?;
    }
    client.flush().await.map_err(werr)?;
    Ok(Written {
        status: resp.status,
        down,
        // Bytes past the response that nobody asked for: the connection is out of step.
        origin_keep: resp.keep_alive && !switched && obuf.is_empty(),
        client_keep,
        cut: None,
        switched,
    })
}

/// Append body `data` to `out`, as a chunk when `chunked`.
fn frame_into(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if !chunked {
        out.extend_from_slice(data);
    } else if !data.is_empty() {
        chunk_line(out, data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// Records every write the response writer makes, with when it was made.
    #[derive(Default)]
    struct Writes(Vec<(Instant, Vec<u8>)>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.0.push((Instant::now(), b.to_vec()));
            std::task::Poll::Ready(Ok(b.len()))
        }
        // Like a socket: a vectored write is one write.
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> std::task::Poll<io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = all.len();
            self.0.push((Instant::now(), all));
            std::task::Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    impl Writes {
        fn all(&self) -> String {
            String::from_utf8_lossy(
                &self
                    .0
                    .iter()
                    .flat_map(|(_, b)| b.clone())
                    .collect::<Vec<_>>(),
            )
            .into_owned()
        }
    }

    /// A loopback origin that writes `parts` `gap` apart as soon as it is connected to, then
    /// closes the connection (`then_close`) or holds it until the other side closes (bounded);
    /// returns the connection to it and when the first part went out.
    async fn origin_sending(
        parts: &'static [&'static [u8]],
        gap: Duration,
        then_close: bool,
    ) -> (TcpStream, tokio::task::JoinHandle<Instant>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let origin = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let first = Instant::now();
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(gap).await;
                }
                s.write_all(p).await.unwrap();
            }
            if then_close {
                return first;
            }
            let mut sink = [0u8; 64];
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut sink)).await;
            first
        });
        (TcpStream::connect(addr).await.unwrap(), origin)
    }

    const V11_KEEP: ClientSide = ClientSide {
        framing: Framing::None,
        head_request: false,
        v11: true,
        keep_alive: true,
        upgrading: false,
    };

    /// The response to a request with `side`, read from `origin`, as the client got it.
    async fn written(
        origin: &mut TcpStream,
        side: ClientSide,
    ) -> (Result<Written, Failure>, Writes, BytesMut) {
        let mut w = Writes::default();
        let mut obuf = BytesMut::new();
        let r = respond(
            origin,
            &mut obuf,
            &mut w,
            side,
            65536,
            |_| Ok(()),
            &Progress::default(),
        )
        .await;
        (r, w, obuf)
    }

    fn parsed(raw: &str, head_request: bool) -> Result<Option<ResponseHead>, OriginError> {
        parse_response(&mut BytesMut::from(raw.as_bytes()), head_request)
    }

    fn head_of(raw: &str) -> ResponseHead {
        parsed(raw, false).expect("valid").expect("complete")
    }

    #[tokio::test]
    async fn a_small_response_goes_to_the_client_in_one_write() {
        let (mut o, _origin) = origin_sending(
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"],
            Duration::ZERO,
            false,
        )
        .await;
        let (r, w, obuf) = written(&mut o, V11_KEEP).await;
        let r = r.unwrap();
        assert_eq!(
            (
                r.status,
                r.down,
                r.origin_keep,
                r.client_keep,
                r.cut,
                r.switched
            ),
            (200, 5, true, true, None, false)
        );
        assert_eq!(w.0.len(), 1, "head and body in one write: {:?}", w.0);
        assert_eq!(
            w.all(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
            "header lines as the origin wrote them"
        );
        assert!(obuf.is_empty());
    }

    #[tokio::test]
    async fn a_slow_body_does_not_hold_back_the_head() {
        // Server-sent events, long polls: the head must reach the client before the first
        // body bytes exist.
        let gap = Duration::from_millis(400);
        let (mut o, origin) = origin_sending(
            &[
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"6\r\ndata:1\r\n0\r\n\r\n",
            ],
            gap, true).await;
        let (r, w, _) = written(&mut o, V11_KEEP).await;
        let r = r.unwrap();
        assert_eq!((r.status, r.down, r.origin_keep), (200, 6, true));
        let sent = origin.await.unwrap();
        let (at, head) = &w.0[0];
        let head = String::from_utf8_lossy(head);
        assert!(
            head.ends_with("Transfer-Encoding: chunked\r\n\r\n"),
            "{head}"
        );
        assert!(
            at.duration_since(sent) < gap / 2,
            "the head waited {:?} for the body",
            at.duration_since(sent)
        );
        // The chunk (size line, data, CRLF) in one write, then the last chunk.
        assert_eq!(w.0.len(), 3, "{:?}", w.0);
        assert_eq!(&w.0[1].1[..], b"6\r\ndata:1\r\n");
        assert!(
            w.all().ends_with("\r\n\r\n6\r\ndata:1\r\n0\r\n\r\n"),
            "{}",
            w.all()
        );
    }

    #[tokio::test]
    async fn a_body_until_close_is_chunked_for_http11_and_close_delimited_for_http10() {
        for (v11, want_tail, want_keep) in [
            (
                true,
                "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                true,
            ),
            (false, "Connection: close\r\n\r\nhello", false),
        ] {
            let (mut o, _origin) = origin_sending(
                &[b"HTTP/1.0 200 OK\r\nX: y\r\n\r\nhello"],
                Duration::ZERO,
                true,
            )
            .await;
            // The origin closes: that ends the body.
            let side = ClientSide { v11, ..V11_KEEP };
            let (r, w, _) = written(&mut o, side).await;
            let r = r.unwrap();
            assert_eq!(
                (r.down, r.origin_keep, r.client_keep),
                (5, false, want_keep)
            );
            assert!(w.all().ends_with(want_tail), "{}", w.all());
        }
    }

    #[tokio::test]
    async fn hop_by_hop_response_headers_are_dropped_and_a_stale_length_with_them() {
        let (mut o, _origin) = origin_sending(
            &[b"HTTP/1.1 200 OK\r\nConnection: X-Secret, keep-alive\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\nX-Kept: 2\r\n\r\n2\r\nhi\r\n0\r\n\r\n"],
            Duration::ZERO, false).await;
        let (r, w, _) = written(&mut o, V11_KEEP).await;
        let r = r.unwrap();
        // Both framings: the encoding wins, and the connection is not used again.
        assert_eq!((r.down, r.origin_keep), (2, false));
        assert_eq!(
            w.all(),
            "HTTP/1.1 200 OK\r\nX-Kept: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_body_cut_short_by_the_origin_is_reported_not_padded() {
        let (mut o, _origin) = origin_sending(
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"],
            Duration::ZERO,
            true,
        )
        .await;
        let (r, w, _) = written(&mut o, V11_KEEP).await;
        let r = r.unwrap();
        assert_eq!((r.down, r.origin_keep, r.client_keep), (5, false, false));
        assert_eq!(
            r.cut.as_deref(),
            Some("origin: reading the response body: origin closed the connection mid-body")
        );
        assert!(w.all().ends_with("\r\n\r\nhello"), "{}", w.all());
    }

    #[tokio::test]
    async fn informational_responses_are_skipped_and_an_unasked_101_is_refused() {
        let (mut o, _origin) = origin_sending(
            &[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"],
            Duration::ZERO, false).await;
        let (r, w, _) = written(&mut o, V11_KEEP).await;
        assert_eq!(r.unwrap().status, 204);
        assert_eq!(w.all(), "HTTP/1.1 204 No Content\r\n\r\n");

        let (mut o, _origin) = origin_sending(
            &[b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"],
            Duration::ZERO, false).await;
        let (r, w, _) = written(&mut o, V11_KEEP).await;
        assert!(
            matches!(&r, Err(Failure::Origin(m)) if m.contains("asked for no upgrade")),
            "{:?}",
            r.err()
        );
        assert!(w.0.is_empty(), "nothing reaches the client");

        // Asked for: final, its Connection and Upgrade passed on, the bytes after it kept.
        let (mut o, _origin) = origin_sending(
            &[b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi"],
            Duration::ZERO, false).await;
        let side = ClientSide {
            upgrading: true,
            ..V11_KEEP
        };
        let (r, w, obuf) = written(&mut o, side).await;
        let r = r.unwrap();
        assert!(r.switched && !r.origin_keep && !r.client_keep);
        assert_eq!(
            w.all(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        );
        assert_eq!(&obuf[..], b"\x81\x02hi");
    }

    #[tokio::test]
    async fn an_origin_out_of_step_or_stuck_in_informational_responses_is_not_followed() {
        // Bytes after the response: the connection is not used again.
        let (mut o, _origin) = origin_sending(
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"],
            Duration::ZERO,
            false,
        )
        .await;
        let (r, w, _) = written(&mut o, V11_KEEP).await;
        let r = r.unwrap();
        assert_eq!((r.down, r.origin_keep, r.client_keep), (2, false, true));
        assert!(w.all().ends_with("\r\n\r\nok"), "{}", w.all());

        // One more informational response than is followed (leaked: the origin task wants
        // 'static parts; a test process).
        let endless: &'static [u8] = "HTTP/1.1 102 Processing\r\n\r\n"
            .repeat(MAX_INFORMATIONAL + 1)
            .leak()
            .as_bytes();
        let parts: &'static [&'static [u8]] = Box::leak(Box::new([endless]));
        let (mut o, _origin) = origin_sending(parts, Duration::ZERO, false).await;
        let (r, w, _) = written(&mut o, V11_KEEP).await;
        assert!(
            matches!(&r, Err(Failure::Origin(m)) if m.contains("informational")),
            "{:?}",
            r.err()
        );
        assert!(w.0.is_empty());
    }

    #[tokio::test]
    async fn no_response_at_all_is_told_apart_from_a_broken_one() {
        let (mut o, _origin) = origin_sending(&[], Duration::ZERO, true).await;
        let mut obuf = BytesMut::new();
        let e = read_response_head(&mut o, &mut obuf, false, false)
            .await
            .err();
        assert!(matches!(e, Some(OriginError::NoResponse(_))), "{e:?}");

        let (mut o, _origin) =
            origin_sending(&[b"HTTP/1.1 200 OK\r\nContent-"], Duration::ZERO, true).await;
        let e = read_response_head(&mut o, &mut obuf, false, false)
            .await
            .err();
        assert!(matches!(e, Some(OriginError::Malformed(_))), "{e:?}");
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let h = head_of("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(
            (h.body, h.keep_alive, h.has_length),
            (Some(Framing::Length(7)), true, true)
        );
        // Repeated equal lengths are one length; different ones are an error.
        let h = head_of("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(h.body, Some(Framing::Length(7)));
        for bad in ["7, 8", "-1", "0x10", "", "99999999999999999999"] {
            let e = parsed(
                &format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n"),
                false,
            );
            assert!(matches!(e, Err(OriginError::Malformed(_))), "{bad:?}");
        }
        let h = head_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!((h.body, h.keep_alive), (Some(Framing::Chunked), true));
        // Chunked not last: the body runs to the close.
        let h = head_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert_eq!((h.body, h.keep_alive), (None, false));
        let h = head_of("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.body, h.keep_alive), (None, false));
        // HTTP/1.0 keeps the connection only when it says so; 1.1 unless it says close.
        assert!(!head_of("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").keep_alive);
        assert!(
            head_of("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n")
                .keep_alive
        );
        assert!(
            !head_of("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n")
                .keep_alive
        );
        // No body whatever the headers say: HEAD, 204, 304.
        let h = parsed("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!((h.body, h.keep_alive), (Some(Framing::None), true));
        for status in ["204 No Content", "304 Not Modified"] {
            let h = head_of(&format!("HTTP/1.1 {status}\r\nContent-Length: 7\r\n\r\n"));
            assert_eq!(
                (h.body, h.keep_alive),
                (Some(Framing::None), true),
                "{status}"
            );
        }
    }

    #[test]
    fn malformed_response_heads_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
            "HTTP/1.1 099 Low\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "SSH-2.0-x\r\n\r\n",
        ] {
            assert!(
                matches!(parsed(raw, false), Err(OriginError::Malformed(_))),
                "{raw:?}"
            );
        }
        let many: String = (0..=MAX_RESPONSE_HEADERS)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let e = parsed(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), false).err();
        assert!(
            matches!(&e, Some(OriginError::Malformed(m)) if m.contains("header lines")),
            "{e:?}"
        );
        assert!(
            parsed("HTTP/1.1 200 OK\r\nX: a\r\n", false)
                .unwrap()
                .is_none(),
            "partial"
        );
    }

    fn request(raw: &str) -> RequestHead {
        let mut b = BytesMut::from(raw.as_bytes());
        crate::head::try_parse(&mut b, 65536).unwrap().unwrap()
    }

    #[test]
    fn the_origin_gets_the_request_without_hop_by_hop_headers_and_with_kennels_host_and_framing() {
        let head = request(
            "POST http://a.test/x HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nProxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nExpect: 100-continue\r\nX-Case: MiXeD\r\nContent-Length: 3\r\n\r\n",
        );
        let out = request_head(
            &head,
            "/x",
            "a.test",
            &[("Proxy-Authorization", b"Basic dXA=")],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /x HTTP/1.1\r\nX-Case: MiXeD\r\nHost: a.test\r\nProxy-Authorization: Basic dXA=\r\nContent-Length: 3\r\n\r\n"
        );
        let head = request("POST http://a.test/ HTTP/1.0\r\n\r\n");
        assert_eq!(
            String::from_utf8(request_head(&head, "/", "a.test", &[])).unwrap(),
            "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\r\n"
        );
        let head = request("PUT http://a.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(
            String::from_utf8(request_head(&head, "/", "a.test", &[])).unwrap(),
            "PUT / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        let head = request("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n");
        assert_eq!(
            String::from_utf8(request_head(&head, "/", "a.test", &[])).unwrap(),
            "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn an_idle_connection_is_reusable_until_the_origin_closes_it_or_sends_unasked() {
        for (parts, closes, want) in [
            (&[][..], false, true),
            (&[][..], true, false),
            (
                &[&b"HTTP/1.1 408 Request Timeout\r\n\r\n"[..]][..],
                false,
                false,
            ),
        ] {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let mut conn = OriginConn::new(Conn::Tcp(TcpStream::connect(addr).await.unwrap()));
            let (mut s, _) = l.accept().await.unwrap();
            for p in parts {
                s.write_all(p).await.unwrap();
            }
            if closes {
                drop(s);
            } else {
                s.flush().await.unwrap();
                std::mem::forget(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    drop(s);
                }));
            }
            // Bounded wait for what the origin did to reach this side.
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut got = conn.is_reusable();
            while got != want && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
                got = conn.is_reusable();
            }
            assert_eq!(got, want, "closes {closes}, sent {parts:?}");
            // The answer stays (an idle open connection is not made unusable by asking).
            if want {
                assert!(conn.is_reusable());
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn response_head_parser_is_total(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048), head_request in proptest::prelude::any::<bool>()) {
            let mut b = BytesMut::from(&bytes[..]);
            let _ = parse_response(&mut b, head_request);
        }
    }
}
