//! Absolute-form HTTP forwarding: every request is decided again, hop-by-hop headers are
//! stripped, bodies are streamed, and origin connections (hyper client) are pooled by the
//! checked address.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use kennel_policy::Target;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::Shared;
use crate::dial::{self, PoolKey};
use crate::head::{BodyReader, Framing, RequestHead, trim};
use crate::log::{self, Access, Ended, Kind, Outcome};
use crate::respond::{self, Failure, Side};
use crate::tunnels::Registration;
use crate::upstream::HttpHop;

/// Request body streamed from the client to hyper's client connection.
pub struct ChanBody {
    rx: Option<mpsc::Receiver<Result<Bytes, io::Error>>>,
    len: Option<u64>,
}

impl ChanBody {
    fn empty() -> ChanBody {
        ChanBody {
            rx: None,
            len: Some(0),
        }
    }
}

impl Body for ChanBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.rx.as_mut() {
            None => Poll::Ready(None),
            Some(rx) => match rx.poll_recv(cx) {
                Poll::Ready(Some(r)) => Poll::Ready(Some(r.map(Frame::data))),
                Poll::Ready(None) => {
                    self.rx = None;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

struct Idle {
    since: tokio::time::Instant,
    sender: SendRequest<ChanBody>,
    hop: HttpHop,
}

/// A pooled origin connection and how requests are written on it.
type Pooled = (SendRequest<ChanBody>, HttpHop);

/// Idle origin connections keyed by checked address (or upstream + target).
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
}

/// Longest time an origin connection stays idle in the pool.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Most idle connections kept per key.
const POOL_PER_KEY: usize = 32;

impl Pool {
    /// The most recently parked connection under `key`, if any (the lock is not held across
    /// an await).
    fn pop(&self, key: &PoolKey) -> Option<Idle> {
        let mut m = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let v = m.get_mut(key)?;
        let idle = v.pop();
        if v.is_empty() {
            m.remove(key);
        }
        idle
    }

    /// A live idle connection under `key`: most recently used first (the likeliest to be still
    /// open); expired or closed ones met on the way are dropped. Bounded: each turn removes one.
    async fn checkout(&self, key: &PoolKey) -> Option<Pooled> {
        while let Some(i) = self.pop(key) {
            if i.since.elapsed() >= POOL_IDLE || i.sender.is_closed() {
                continue;
            }
            let mut sender = i.sender;
            if sender.ready().await.is_ok() {
                return Some((sender, i.hop));
            }
        }
        None
    }

    fn put(&self, key: PoolKey, sender: SendRequest<ChanBody>, hop: HttpHop) {
        let mut m = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let v = m.entry(key).or_default();
        if v.len() < POOL_PER_KEY {
            v.push(Idle {
                since: tokio::time::Instant::now(),
                sender,
                hop,
            });
        }
    }

    /// Number of idle pooled connections (for tests).
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }
}

/// Hop-by-hop headers never forwarded (plus whatever `Connection` lists).
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

fn connection_listed(head: &RequestHead) -> Vec<String> {
    head.headers()
        .filter(|(n, _)| {
            n.eq_ignore_ascii_case("connection") || n.eq_ignore_ascii_case("proxy-connection")
        })
        .flat_map(|(_, v)| {
            v.split(|b| *b == b',')
                .map(|t| String::from_utf8_lossy(trim(t)).to_ascii_lowercase())
        })
        .filter(|t| !t.is_empty())
        .collect()
}

fn is_hop(name: &str, listed: &[String]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || listed.iter().any(|l| name.eq_ignore_ascii_case(l))
}

/// Split "host[:port]" of a Host header.
pub(crate) fn split_host_header(v: &str) -> (&str, Option<&str>) {
    if let Some(rest) = v.strip_prefix('[') {
        match rest.find(']') {
            Some(i) => {
                let host = &v[..i + 2];
                let port = rest[i + 1..].strip_prefix(':');
                (host, port)
            }
            None => (v, None),
        }
    } else {
        match v.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (v, None),
        }
    }
}

/// Outcome of one forwarded request.
pub enum Next {
    /// The client connection can carry another request.
    KeepAlive,
    /// Close the client connection.
    Close,
}

/// Forward one request. Writes the response (or the error response) to the client.
// Debug level: at the default info level an info span would format its fields on every
// request, with nothing inside it logging at info.
#[tracing::instrument(level = "debug", skip_all, fields(client = %peer, method = %head.method()))]
pub async fn handle(
    shared: &Shared,
    client: &mut TcpStream,
    buf: &mut BytesMut,
    head: RequestHead,
    peer: SocketAddr,
    reg: &Registration<'_>,
) -> Next {
    let mut rec = Access::new(Kind::Http, peer, head.method());
    rec.unparsed = Some(head.target());
    let (next, outcome) = match forward(shared, client, buf, &head, reg, &mut rec).await {
        Ok((next, ended)) => (next, Outcome::Ended(ended)),
        Err(f) => {
            // A denied request without a body leaves the connection usable: keep it open
            // (every following request is admitted again).
            let keep = !has_body(&head) && head.keep_alive && f.side() == Side::Policy;
            if keep {
                let policy = shared.store.current();
                let resp = f.response_for(
                    rec.target.as_ref(),
                    shared.policy_shown_as(&policy).as_deref(),
                    shared.kennel_env(),
                );
                let resp = String::from_utf8_lossy(&resp).replacen("Connection: close\r\n", "", 1);
                let _ = client.write_all(resp.as_bytes()).await;
            } else {
                respond::refuse(shared, client, rec.target.as_ref(), &f).await;
                respond::linger_close(client).await;
            }
            let next = if keep { Next::KeepAlive } else { Next::Close };
            (next, Outcome::Failed(f))
        }
    };
    log::finish(shared, rec, outcome);
    next
}

async fn forward<'h>(
    shared: &Shared,
    client: &mut TcpStream,
    buf: &mut BytesMut,
    head: &'h RequestHead,
    reg: &Registration<'_>,
    rec: &mut Access<'h>,
) -> Result<(Next, Ended), Failure> {
    if head.target().starts_with('/') || head.target() == "*" {
        rec.unparsed = None;
        return Err(Failure::NotProxyRequest);
    }
    let (target, path) = Target::parse_absolute_uri(head.target()).map_err(|e| {
        Failure::BadRequest(format!("invalid request target {:?}: {e}", head.target()))
    })?;
    rec.target = Some(target.clone());
    rec.unparsed = None;
    if !head
        .target()
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
    {
        return Err(Failure::BadRequest(
            "only http:// URLs can be forwarded; use CONNECT for https".into(),
        ));
    }
    // The request target's authority as written: a Host header with the same text names the
    // same destination without being parsed again (the usual case).
    let authority = head
        .target()
        .get(7..)
        .map(|r| &r[..r.find(['/', '?', '#']).unwrap_or(r.len())]);
    if let Some(h) = head.header("host")
        && !authority.is_some_and(|a| a.as_bytes().eq_ignore_ascii_case(trim(h)))
    {
        // Borrowed for a valid header (the usual case): no copy per request.
        let hv = String::from_utf8_lossy(trim(h));
        let (hh, hp) = split_host_header(&hv);
        let port = match hp {
            None => Some(80),
            Some(p) => p.parse::<u16>().ok(),
        };
        let same = port
            .and_then(|p| Target::from_host_port(hh, p).ok())
            .is_some_and(|t| t == target);
        if !same {
            return Err(Failure::HostMismatch {
                host: hv.into_owned(),
                target: target.to_string(),
            });
        }
    }
    // The client's framing is checked before anything goes out: a malformed first chunk line
    // that is already buffered is a 400 here, not a broken exchange with the origin later.
    if head.framing == Framing::Chunked {
        crate::head::check_first_chunk_line(buf).map_err(|e| Failure::BadRequest(e.to_string()))?;
    }
    let generation = shared.store.generation();
    let policy = shared.store.current();
    let (decision, route) = crate::admit::admit(shared, &policy, &target).await?;
    rec.admitted(decision, &route);

    let host_value = host_header(&target);
    let headers = outgoing_headers(head, &host_value)?;
    let method = http::Method::from_bytes(head.method().as_bytes())
        .map_err(|_| Failure::BadRequest(format!("invalid method {:?}", head.method())))?;

    let (sender, hop, mut resolved, reused) = origin_connection(shared, &route, &target).await?;
    rec.resolved = resolved;
    reg.set_target(&target, resolved.map(|a| a.ip()));
    if let Some(d) = crate::admit::recheck(shared, generation, &target, resolved) {
        return Err(d);
    }

    // `headers` is moved into the first request; the rare retry on a fresh connection builds
    // them again rather than every request paying for a copy.
    let build = |body: ChanBody,
                 hop: &HttpHop,
                 headers: http::HeaderMap|
     -> Result<http::Request<ChanBody>, Failure> {
        let uri = match hop {
            HttpHop::Origin => path.clone(),
            HttpHop::Proxy { .. } => format!("http://{}{}", host_value, path),
        };
        let mut req = http::Request::builder()
            .method(method.clone())
            .uri(uri)
            .body(body)
            // Method and target were validated above: a request kennel cannot assemble from
            // them is kennel's failure, not the client's.
            .map_err(|e| Failure::Internal(format!("cannot build the origin request: {e}")))?;
        *req.headers_mut() = headers;
        if let HttpHop::Proxy {
            authorization: Some(a),
        } = hop
            && let Ok(v) = HeaderValue::from_str(a)
        {
            req.headers_mut()
                .insert(http::header::PROXY_AUTHORIZATION, v);
        }
        Ok(req)
    };

    if head.expect_continue {
        client
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(Failure::ClientGone)?;
    }

    let (mut rd, mut wr) = client.split();
    let (tx, body) = request_body(head.framing);
    let req = build(body, &hop, headers)?;
    let client_v11 = head.version == 1;
    let is_head = method == http::Method::HEAD;
    let exchange = async {
        let mut sender = sender;
        let mut via_proxy = matches!(hop, HttpHop::Proxy { .. });
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) if reused && !has_body(head) => {
                // A pooled connection the origin had closed: retry once on a fresh one.
                tracing::debug!("retrying on a fresh origin connection: {e}");
                let (s, hop2, r2) = Box::pin(open(shared, &route, &target)).await?;
                sender = s;
                resolved = r2;
                via_proxy = matches!(hop2, HttpHop::Proxy { .. });
                sender
                    .send_request(build(
                        ChanBody::empty(),
                        &hop2,
                        outgoing_headers(head, &host_value)?,
                    )?)
                    .await
                    .map_err(|e| Failure::Origin(e.to_string()))?
            }
            Err(e) => return Err(Failure::Origin(e.to_string())),
        };
        // Through an HTTP upstream, its own refusals (407) are the upstream's failure, not the
        // origin's answer: 502 naming the upstream, as for tunnels.
        if via_proxy
            && let Err(e) =
                crate::upstream::check_proxy_response(&route.upstream, resp.status().as_u16())
        {
            shared.metrics.upstream_failure(e.kind());
            return Err(dial::upstream_failure(&e));
        }
        let r = write_response(&mut wr, resp, client_v11, head.keep_alive, is_head, false).await?;
        Ok::<_, Failure>((r, sender, resolved))
    };
    let bufsize = shared.config.limits.buffer_bytes;
    let (result, up, pump_done) =
        drive_exchange(&mut rd, buf, head.framing, tx, bufsize, exchange).await;
    rec.bytes_up = up;
    let ((status, down, origin_keep, client_keep, cut), sender, resolved) = result?;
    rec.status = status;
    rec.bytes_down = down;
    shared
        .metrics
        .add_bytes(rec.bytes_up, rec.bytes_down, rec.rule());
    let (body_ok, ended) = exchange_end(&pump_done, head.framing, cut);
    if origin_keep && body_ok && !sender.is_closed() {
        shared
            .pool
            .put(route.pool_key_for(&target, resolved), sender, hop.clone());
    }
    let next = if client_keep && body_ok {
        Next::KeepAlive
    } else {
        Next::Close
    };
    Ok((next, ended))
}

/// The request body channel for `framing`: the sender the client-side pump feeds (none when
/// there is no body) and the body hyper's client reads.
pub(crate) fn request_body(
    framing: Framing,
) -> (Option<mpsc::Sender<Result<Bytes, io::Error>>>, ChanBody) {
    let len = match framing {
        Framing::None => return (None, ChanBody::empty()),
        Framing::Length(n) => Some(n),
        Framing::Chunked => None,
    };
    let (tx, rx) = mpsc::channel(4);
    (Some(tx), ChanBody { rx: Some(rx), len })
}

/// Run one exchange: stream the client's request body (read from `rd` and the bytes already in
/// `buf`, decoded per `framing`) into `tx` while `exchange` sends the request and writes the
/// response. Returns the exchange's result, the body bytes taken from the client, and how the
/// body pump ended (`None`: it had not finished when the exchange did). Shared by absolute-form
/// forwarding and HTTP inside CONNECT tunnels (`tunnel_http`).
pub(crate) async fn drive_exchange<R, T>(
    rd: &mut R,
    buf: &mut BytesMut,
    framing: Framing,
    tx: Option<mpsc::Sender<Result<Bytes, io::Error>>>,
    bufsize: usize,
    exchange: impl std::future::Future<Output = Result<T, Failure>>,
) -> (Result<T, Failure>, u64, Option<Result<(), PumpError>>)
where
    R: tokio::io::AsyncRead + Unpin,
{
    let up = std::sync::atomic::AtomicU64::new(0);
    let pump = async {
        let Some(tx) = tx else { return Ok(()) };
        let mut reader = BodyReader::new(framing);
        loop {
            match reader.next(rd, buf, bufsize).await {
                Ok(Some(data)) => {
                    up.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    if tx.send(Ok(data)).await.is_err() {
                        return Err(PumpError::OriginStopped);
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                    return Err(PumpError::Client(e));
                }
            }
        }
    };
    tokio::pin!(pump);
    tokio::pin!(exchange);
    let mut pump_done: Option<Result<(), PumpError>> = None;
    let result = loop {
        tokio::select! {
            r = &mut pump, if pump_done.is_none() => pump_done = Some(r),
            r = &mut exchange => break r,
        }
    };
    // The exchange broke because the client's body framing was bad (hyper only saw the body
    // stream fail): that is the client's 400, not an origin error. The pump finishes in the
    // same poll in which it hands the error to the body, so it is always recorded by now.
    let result = match (result, &pump_done) {
        (Err(_), Some(Err(PumpError::Client(e)))) => Err(Failure::BadRequest(e.to_string())),
        (r, _) => r,
    };
    (
        result,
        up.load(std::sync::atomic::Ordering::Relaxed),
        pump_done,
    )
}

/// After a successful exchange: whether the whole request body was taken (the client
/// connection can carry another request), and how the request ended for the access log.
pub(crate) fn exchange_end(
    pump_done: &Option<Result<(), PumpError>>,
    framing: Framing,
    cut: Option<String>,
) -> (bool, Ended) {
    let body_ok = matches!(pump_done, Some(Ok(()))) || matches!(framing, Framing::None);
    let ended = match (pump_done, cut) {
        // The client already has the head and part of the body: what is logged is what it got.
        (_, Some(why)) => Ended::OriginError(why),
        (Some(Err(e)), None) => Ended::Error(e.to_string()),
        _ => Ended::Done,
    };
    (body_ok, ended)
}

/// The Host header sent to the origin: the target, without the port when it is 80.
pub(crate) fn host_header(target: &Target) -> String {
    use kennel_policy::Host;
    match (&target.host, target.port) {
        (Host::Ip(std::net::IpAddr::V6(ip)), 80) => format!("[{ip}]"),
        (Host::Name(name), 80) => name.clone(),
        // Names, the usual case, without the formatting machinery (once per request).
        (Host::Name(name), port) => {
            let mut digits = itoa::Buffer::new();
            let digits = digits.format(port);
            let mut v = String::with_capacity(name.len() + 1 + digits.len());
            v.push_str(name);
            v.push(':');
            v.push_str(digits);
            v
        }
        (h, 80) => display_sized(h),
        _ => display_sized(target),
    }
}

/// `v.to_string()` into a string sized for any host and port at once (to_string grows it a
/// few times for an address).
fn display_sized(v: &dyn std::fmt::Display) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(64);
    // Writing into a String cannot fail.
    let _ = write!(s, "{v}");
    s
}

/// The request's headers as sent on: hop-by-hop headers (and what `Connection` lists),
/// `Expect` (answered by the proxy) and `Host` dropped; `Host` set to `host_value`.
pub(crate) fn outgoing_headers(
    head: &RequestHead,
    host_value: &str,
) -> Result<http::HeaderMap, Failure> {
    let listed = connection_listed(head);
    let mut headers = http::HeaderMap::with_capacity(head.headers().len() + 1);
    // The values are slices of the head's buffer, not copies.
    for (n, v) in head.shared_headers() {
        if is_hop(n, &listed) || n.eq_ignore_ascii_case("expect") || n.eq_ignore_ascii_case("host")
        {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_maybe_shared(v),
        ) else {
            return Err(Failure::BadRequest(format!("invalid header {n:?}")));
        };
        headers.append(name, value);
    }
    headers.insert(
        http::header::HOST,
        HeaderValue::from_str(host_value).map_err(|_| Failure::BadRequest("bad host".into()))?,
    );
    Ok(headers)
}

/// Why streaming the request body to the origin stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PumpError {
    /// The client's body is malformed or the client went away mid-body.
    #[error(transparent)]
    Client(crate::head::BodyError),
    /// The origin connection stopped taking the body.
    #[error("origin stopped reading the request body")]
    OriginStopped,
}

fn has_body(head: &RequestHead) -> bool {
    head.framing != Framing::None
}

/// A connection to the origin for `route`: a pooled one for a checked address of this request
/// (`reused`), else a new one.
async fn origin_connection(
    shared: &Shared,
    route: &dial::Route,
    target: &Target,
) -> Result<(SendRequest<ChanBody>, HttpHop, Option<SocketAddr>, bool), Failure> {
    for (k, addr) in route.pool_keys(target) {
        if let Some((s, hop)) = shared.pool.checkout(&k).await {
            return Ok((s, hop, addr, true));
        }
    }
    let (s, hop, addr) = Box::pin(open(shared, route, target)).await?;
    Ok((s, hop, addr, false))
}

async fn open(
    shared: &Shared,
    route: &dial::Route,
    target: &Target,
) -> Result<(SendRequest<ChanBody>, HttpHop, Option<SocketAddr>), Failure> {
    let dialed = dial::connect(shared, route, target, true).await?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(1 << 20)
        .handshake(TokioIo::new(dialed.conn))
        .await
        .map_err(|e| Failure::Origin(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("origin connection ended: {e}");
        }
    });
    Ok((sender, dialed.hop, dialed.resolved))
}

/// Largest head plus first body frame sent in one write (a typical page of small responses;
/// bigger bodies are not worth a copy to save one syscall).
const COALESCE_MAX: usize = 16 * 1024;

/// Write the origin's response to the client. Returns (status, body bytes, origin connection
/// reusable, client connection reusable, why the body was cut short). Once the head is out an
/// origin failure cannot become an error response any more (the client would read it as body):
/// the body just ends, the connection is closed, and the cause is returned for the log.
/// `upgrading`: the caller relays the connection as is after a `101 Switching Protocols` (HTTP
/// inside a CONNECT tunnel), so a 101's `Connection` and `Upgrade` headers are passed on.
pub(crate) async fn write_response<W: AsyncWrite + Unpin>(
    wr: &mut W,
    resp: http::Response<hyper::body::Incoming>,
    client_v11: bool,
    client_keep: bool,
    is_head: bool,
    upgrading: bool,
) -> Result<(u16, u64, bool, bool, Option<String>), Failure> {
    let status = resp.status().as_u16();
    let switching = upgrading && status == 101;
    let (parts, mut body) = resp.into_parts();
    let no_body = is_head || status == 204 || status == 304 || (100..200).contains(&status);
    // With Transfer-Encoding present the body was de-chunked by hyper and its length is not the
    // Content-Length the origin may also have sent: drop that header and re-frame.
    let te = parts.headers.contains_key(http::header::TRANSFER_ENCODING);
    let cl = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .cloned()
        .filter(|_| !te);
    let origin_close = parts
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| trim(t).eq_ignore_ascii_case(b"close"))
        });
    let chunked = !no_body && cl.is_none() && client_v11;
    let close_delimited = !no_body && cl.is_none() && !client_v11;
    let keep = client_keep && !close_delimited && !switching;

    let listed: Vec<String> = parts
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .map(|t| String::from_utf8_lossy(trim(t)).to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(if client_v11 {
        b"HTTP/1.1 "
    } else {
        b"HTTP/1.0 "
    });
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        let switch_header =
            switching && (name == http::header::CONNECTION || name == http::header::UPGRADE);
        if !switch_header
            && (is_hop(name.as_str(), &listed) || (te && name == http::header::CONTENT_LENGTH))
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if switching {
        // The Connection: upgrade of the 101 itself was passed on above.
    } else if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    } else if !client_v11 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let werr = Failure::ClientGone;

    let mut down = 0u64;
    // A small response usually arrives in one read, and hyper's connection has queued its body
    // by the time the head is handed over: such a body goes out in the same write as the head.
    // One send instead of two per keep-alive request is a syscall fewer here and one wake-up
    // fewer for the client (measured: the keep-alive GET path is two-thirds kernel time, most
    // of it per send). Only a frame that is ready now is taken, so a slow or streaming body
    // (long poll, server-sent events) still gets its head at once.
    let mut carried = None;
    let mut ended = false;
    if !no_body {
        match futures_util::FutureExt::now_or_never(body.frame()) {
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if out.len() + data.len() <= COALESCE_MAX => {
                    down += data.len() as u64;
                    if chunked && !data.is_empty() {
                        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                        out.extend_from_slice(&data);
                        out.extend_from_slice(b"\r\n");
                    } else if !chunked {
                        out.extend_from_slice(&data);
                    }
                }
                Ok(data) => carried = Some(Ok(Frame::data(data))),
                Err(other) => carried = Some(Ok(other)),
            },
            Some(Some(Err(e))) => carried = Some(Err(e)),
            Some(None) => ended = true,
            None => {}
        }
    }
    wr.write_all(&out).await.map_err(werr)?;

    if !no_body {
        while !ended {
            let frame = match carried.take() {
                Some(f) => f,
                None => match body.frame().await {
                    Some(f) => f,
                    None => {
                        ended = true;
                        continue;
                    }
                },
            };
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    let _ = wr.flush().await;
                    let why = format!("origin: reading the response body: {e}");
                    return Ok((status, down, false, false, Some(why)));
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            down += data.len() as u64;
            if chunked {
                wr.write_all(format!("{:x}\r\n", data.len()).as_bytes())
                    .await
                    .map_err(werr)?;
                wr.write_all(&data).await.map_err(werr)?;
                wr.write_all(b"\r\n").await.map_err(werr)?;
            } else {
                wr.write_all(&data).await.map_err(werr)?;
            }
        }
        if chunked {
            wr.write_all(b"0\r\n\r\n").await.map_err(werr)?;
        }
    }
    wr.flush().await.map_err(werr)?;
    Ok((status, down, !origin_close, keep, None))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

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
        ) -> Poll<io::Result<usize>> {
            self.0.push((Instant::now(), b.to_vec()));
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A response from a loopback origin that answers the first request with `parts`, written
    /// one after the other `gap` apart; returns it with the time the first part went out.
    async fn response_from(
        parts: &'static [&'static [u8]],
        gap: Duration,
    ) -> (
        http::Response<hyper::body::Incoming>,
        tokio::task::JoinHandle<Instant>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let origin = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).await.unwrap();
            let first = Instant::now();
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(gap).await;
                }
                s.write_all(p).await.unwrap();
            }
            // Held open until the client side closes (bounded).
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut req)).await;
            first
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, ChanBody>(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/").body(ChanBody::empty()).unwrap();
        (sender.send_request(req).await.unwrap(), origin)
    }

    /// The Host header sent on names the target as the policy saw it: without `:80`, IPv6 in
    /// brackets, every other port written out.
    #[test]
    fn host_header_is_the_normalised_target_without_the_default_port() {
        for (authority, want) in [
            ("Example.COM:80", "example.com"),
            ("example.com:8080", "example.com:8080"),
            ("example.com:65535", "example.com:65535"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("0x7f.1:8080", "127.0.0.1:8080"),
            ("[::1]:80", "[::1]"),
            ("[::1]:443", "[::1]:443"),
        ] {
            let t = Target::parse_authority(authority).expect("valid authority");
            assert_eq!(host_header(&t), want, "{authority}");
        }
    }

    #[tokio::test]
    async fn a_small_response_goes_to_the_client_in_one_write() {
        let (resp, _origin) = response_from(
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"],
            Duration::ZERO,
        )
        .await;
        let mut w = Writes::default();
        let (status, down, origin_keep, keep, cut) =
            write_response(&mut w, resp, true, true, false, false)
                .await
                .unwrap();
        assert_eq!(
            (status, down, origin_keep, keep, cut),
            (200, 5, true, true, None)
        );
        assert_eq!(w.0.len(), 1, "head and body in one write: {:?}", w.0);
        let text = String::from_utf8(w.0[0].1.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("content-length: 5\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nhello"), "{text}");
    }

    #[tokio::test]
    async fn a_slow_body_does_not_hold_back_the_head() {
        // Server-sent events, long polls: the head must reach the client before the first
        // body bytes exist.
        let gap = Duration::from_millis(400);
        let (resp, origin) = response_from(
            &[
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"6\r\ndata:1\r\n0\r\n\r\n",
            ],
            gap,
        )
        .await;
        let mut w = Writes::default();
        let (status, down, ..) = write_response(&mut w, resp, true, true, false, false)
            .await
            .unwrap();
        assert_eq!((status, down), (200, 6));
        let sent = origin.await.unwrap();
        let (at, head) = &w.0[0];
        let head = String::from_utf8_lossy(head);
        assert!(
            head.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{head}"
        );
        assert!(
            at.duration_since(sent) < gap / 2,
            "the head waited {:?} for the body",
            at.duration_since(sent)
        );
        let all: Vec<u8> = w.0.iter().flat_map(|(_, b)| b.clone()).collect();
        assert!(
            String::from_utf8_lossy(&all).ends_with("\r\n\r\n6\r\ndata:1\r\n0\r\n\r\n"),
            "{}",
            String::from_utf8_lossy(&all)
        );
    }
}
