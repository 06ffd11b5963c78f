//! Plain HTTP/1.x inside a CONNECT tunnel (`curl -p`, `ws://` WebSockets through a proxy, the
//! runtimes that tunnel plain HTTP with CONNECT).
//!
//! A tunnel whose first bytes are neither TLS nor on a `plaintext_tunnel_ports` port used to be
//! refused outright (`not_tls`): nothing ties plaintext bytes to the CONNECT host, and a request
//! inside the tunnel can carry any `Host` header, which shared front ends route by. When the
//! first bytes are an HTTP/1.x request line, the tunnel is served as an HTTP connection instead,
//! request by request, which closes that hole:
//!
//! - every request's `Host` (and an absolute-form target) must name the CONNECT host and port:
//!   missing or unparsable → 400, another destination → 403 (`host_mismatch`); the refused
//!   request is never forwarded and the tunnel is closed after the refusal;
//! - the requests go, in order, over one connection to the address the CONNECT admitted (the
//!   forward path's head parser, header filtering, body streaming and response writer);
//! - each request gets its own access-log line (kind `http`), like a forwarded request;
//! - after a `101 Switching Protocols` answer to a request that asked for an `Upgrade`
//!   (WebSocket), the connection is relayed as is until either side closes.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use kennel_policy::{Decision, Target, Upstream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::dial::Conn;
use crate::forward;
use crate::head::{self, HeadError, RequestHead, trim};
use crate::log::{self, Access, Ended, Kind, Outcome};
use crate::origin::{self, ClientSide, OriginConn};
use crate::respond::{self, Failure};

/// Whether `buf` starts with an HTTP/1.x request line: `Some(true)` when a complete request
/// line parses (method, target, `HTTP/1.0` or `HTTP/1.1`), `Some(false)` when the bytes cannot
/// be one, `None` when more bytes are needed. Only the request line decides: a request with a
/// malformed header is still HTTP (and is answered 400 by the head parser).
pub fn looks_like_http(buf: &[u8]) -> Option<bool> {
    let mut b = buf;
    // RFC 9112 §2.2: empty lines before a request line are tolerated (as by the head parser).
    while let Some(rest) = b.strip_prefix(b"\r\n") {
        b = rest;
    }
    let mut headers = [httparse::EMPTY_HEADER; 1];
    let mut req = httparse::Request::new(&mut headers);
    match b.iter().position(|&c| c == b'\n') {
        None => match req.parse(b) {
            Ok(_) => None,
            Err(_) => Some(false),
        },
        Some(nl) => {
            // The request line alone, followed by the end of the head.
            let mut line = b[..=nl].to_vec();
            line.extend_from_slice(b"\r\n");
            Some(matches!(
                req.parse(&line),
                Ok(httparse::Status::Complete(_))
            ))
        }
    }
}

/// Read more client bytes into `buf` until [`looks_like_http`] decides, within `max` bytes and
/// `timeout`. A client that stops, closes or sends too much without a request line is not HTTP.
pub async fn sniff<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max: usize,
    timeout: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = looks_like_http(buf) {
            return v;
        }
        if buf.len() >= max {
            return false;
        }
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return false,
        }
    }
}

/// Check one request inside a tunnel to `target`: it must not be a CONNECT, must carry exactly
/// one `Host` header naming `target` (no port = 80, the `http` default), and its request target
/// must be origin-form, `*` (OPTIONS), or an absolute `http://` URL naming `target`. Returns the
/// path to send to the origin.
pub fn check_request(head: &RequestHead, target: &Target) -> Result<String, Failure> {
    if head.method().eq_ignore_ascii_case("CONNECT") {
        return Err(Failure::BadRequest(
            "CONNECT inside a CONNECT tunnel".into(),
        ));
    }
    let host = match head.header_count("host") {
        1 => head.header("host").map(trim).unwrap_or_default(),
        0 => {
            return Err(Failure::BadRequest(format!(
                "request inside the tunnel to {target} without a Host header"
            )));
        }
        _ => return Err(Failure::BadRequest("more than one Host header".into())),
    };
    let host = std::str::from_utf8(host)
        .map_err(|_| Failure::BadRequest("Host header is not UTF-8".into()))?;
    let (h, p) = forward::split_host_header(host);
    let port = match p {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| Failure::BadRequest(format!("invalid port in Host header {host:?}")))?,
    };
    let named = Target::from_host_port(h, port)
        .map_err(|e| Failure::BadRequest(format!("invalid Host header {host:?}: {e}")))?;
    if &named != target {
        return Err(Failure::TunnelHostMismatch {
            what: "Host header",
            named: host.to_string(),
            target: target.to_string(),
        });
    }
    let t = head.target();
    if t.starts_with('/') {
        return Ok(t.to_string());
    }
    if t == "*" && head.method().eq_ignore_ascii_case("OPTIONS") {
        return Ok(t.to_string());
    }
    if t.get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
    {
        let (named, path) = Target::parse_absolute_uri(t)
            .map_err(|e| Failure::BadRequest(format!("invalid request target {t:?}: {e}")))?;
        if &named != target {
            return Err(Failure::TunnelHostMismatch {
                what: "request target",
                named: t.to_string(),
                target: target.to_string(),
            });
        }
        return Ok(path);
    }
    Err(Failure::BadRequest(format!(
        "invalid request target {t:?} inside a tunnel (origin-form /path expected)"
    )))
}

/// The request asks for a protocol switch: an `Upgrade` header that `Connection` lists.
fn wants_upgrade(head: &RequestHead) -> Option<&[u8]> {
    let listed = head
        .headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(|b| *b == b','))
        .any(|t| trim(t).eq_ignore_ascii_case(b"upgrade"));
    if listed { head.header("upgrade") } else { None }
}

/// The tunnel's facts each request's access-log line repeats.
pub struct Tunnel<'a> {
    /// The CONNECT target (admitted).
    pub target: &'a Target,
    /// The CONNECT's admission decision.
    pub decision: Option<Decision>,
    /// The route's upstream.
    pub upstream: Option<Upstream>,
    /// The checked address the tunnel is connected to.
    pub resolved: Option<SocketAddr>,
    /// The client.
    pub peer: SocketAddr,
    /// Cancelled when a reload revokes the destination.
    pub revoked: &'a CancellationToken,
    /// Cancelled at the drain deadline.
    pub hard_stop: &'a CancellationToken,
}

/// What the tunnel carried, for the CONNECT's own access-log line.
#[derive(Debug)]
pub struct Served {
    /// Bytes client → destination (request bodies, then the upgraded stream).
    pub up: u64,
    /// Bytes destination → client (response bodies, then the upgraded stream).
    pub down: u64,
    /// How the tunnel ended.
    pub end: Ended,
}

/// Serve the tunnel as an HTTP/1.x connection: `buf` holds the client's first bytes (a request
/// line, see [`sniff`]), `origin` the connection to the admitted address.
pub async fn serve(
    shared: &Shared,
    client: &mut TcpStream,
    mut buf: BytesMut,
    origin: Conn,
    cx: Tunnel<'_>,
) -> Served {
    let mut served = Served {
        up: 0,
        down: 0,
        end: Ended::Done,
    };
    let mut origin = OriginConn::new(origin);
    let limits = &shared.config.limits;
    let mut first = true;
    loop {
        let first_wait = if first {
            limits.header_timeout()
        } else {
            limits.idle_timeout()
        };
        first = false;
        let read = head::read_head(
            client,
            &mut buf,
            limits.max_head_bytes,
            first_wait,
            limits.header_timeout(),
        );
        let r = tokio::select! {
            r = read => r,
            _ = cx.revoked.cancelled() => { served.end = Ended::Revoked; return served; }
            _ = cx.hard_stop.cancelled() => { served.end = Ended::Shutdown; return served; }
        };
        let head = match r {
            Ok(h) => h,
            Err(HeadError::Closed { .. }) => return served,
            Err(HeadError::Timeout) => {
                served.end = Ended::Idle;
                return served;
            }
            Err(HeadError::Io(e)) => {
                served.end = Ended::Error(e.to_string());
                return served;
            }
            Err(e) => {
                let f = match e {
                    HeadError::TooLarge(_) => Failure::HeadTooLarge,
                    other => Failure::BadRequest(other.to_string()),
                };
                refuse(shared, client, &cx, record(&cx, ""), f).await;
                return served;
            }
        };
        let rec = record(&cx, head.method());
        let path = match check_request(&head, cx.target) {
            Ok(p) => p,
            Err(f) => {
                refuse(shared, client, &cx, rec, f).await;
                return served;
            }
        };
        let one = tokio::select! {
            r = Box::pin(request(shared, client, &mut buf, &head, &path, &mut origin, rec)) => r,
            _ = cx.revoked.cancelled() => { served.end = Ended::Revoked; return served; }
            _ = cx.hard_stop.cancelled() => { served.end = Ended::Shutdown; return served; }
        };
        served.up += one.up;
        served.down += one.down;
        match one.next {
            Next::Another => {}
            Next::Close => return served,
            Next::Upgraded => {
                // What the origin sent after its 101 is the switched protocol's first bytes.
                let (stream, early) = origin.into_parts();
                if !early.is_empty() {
                    if let Err(e) = client.write_all(&early).await {
                        served.end = Ended::Error(format!("client: {e}"));
                        return served;
                    }
                    served.down += early.len() as u64;
                }
                let relay = crate::relay::Limits {
                    idle: limits.idle_timeout(),
                    buffer_bytes: limits.buffer_bytes,
                    revoked: cx.revoked,
                    hard_stop: cx.hard_stop,
                };
                let out = crate::relay::tunnel(client, stream, buf, &relay).await;
                let rule = cx.decision.as_ref().and_then(|d| d.rule.as_ref());
                shared.metrics.add_bytes(out.up, out.down, rule);
                served.up += out.up;
                served.down += out.down;
                served.end = out.end.into();
                return served;
            }
        }
    }
}

/// A request's access-log record, with the tunnel's admission.
fn record<'h>(cx: &Tunnel<'_>, method: &'h str) -> Access<'h> {
    let mut rec = Access::new(Kind::Http, cx.peer, method);
    rec.target = Some(cx.target.clone());
    rec.admitted = cx.decision.clone();
    rec.upstream = cx.upstream.clone();
    rec.resolved = cx.resolved;
    rec
}

/// Answer a refused request, close the tunnel's client side and log the request.
async fn refuse(
    shared: &Shared,
    client: &mut TcpStream,
    cx: &Tunnel<'_>,
    rec: Access<'_>,
    f: Failure,
) {
    respond::refuse(shared, client, Some(cx.target), &f).await;
    respond::linger_close(client).await;
    log::finish(shared, rec, Outcome::Failed(f));
}

/// After one request.
enum Next {
    /// The connection can carry another request.
    Another,
    /// Close the tunnel.
    Close,
    /// `101 Switching Protocols`: relay the connections as they are.
    Upgraded,
}

struct OneRequest {
    up: u64,
    down: u64,
    next: Next,
}

/// Forward one checked request over the tunnel's origin connection and write the response;
/// logs the request.
async fn request(
    shared: &Shared,
    client: &mut TcpStream,
    buf: &mut BytesMut,
    head: &RequestHead,
    path: &str,
    origin: &mut OriginConn,
    mut rec: Access<'_>,
) -> OneRequest {
    let target = rec.target.clone();
    match exchange(shared, client, buf, head, path, origin, &mut rec).await {
        Ok((one, ended)) => {
            shared
                .metrics
                .add_bytes(rec.bytes_up, rec.bytes_down, rec.rule());
            log::finish(shared, rec, Outcome::Ended(ended));
            one
        }
        Err(f) => {
            let (up, down) = (rec.bytes_up, rec.bytes_down);
            respond::refuse(shared, client, target.as_ref(), &f).await;
            respond::linger_close(client).await;
            log::finish(shared, rec, Outcome::Failed(f));
            OneRequest {
                up,
                down,
                next: Next::Close,
            }
        }
    }
}

async fn exchange(
    shared: &Shared,
    client: &mut TcpStream,
    buf: &mut BytesMut,
    head: &RequestHead,
    path: &str,
    origin: &mut OriginConn,
    rec: &mut Access<'_>,
) -> Result<(OneRequest, Ended), Failure> {
    let Some(target) = rec.target.clone() else {
        return Err(Failure::BadRequest("no target".into()));
    };
    // The forward path drops hop-by-hop headers; a protocol switch inside the tunnel keeps its
    // own (the connection is relayed as is afterwards).
    let upgrade = wants_upgrade(head);
    let extra: Vec<(&str, &[u8])> = match upgrade {
        Some(proto) => vec![("Upgrade", proto), ("Connection", b"upgrade")],
        None => Vec::new(),
    };
    let request = origin::request_head(head, path, &forward::host_header(&target), &extra);
    if head.expect_continue {
        client
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(Failure::ClientGone)?;
    }
    let side = ClientSide::of(head, upgrade.is_some());
    let bufsize = shared.config.limits.buffer_bytes;
    let done = origin::exchange(client, buf, origin, &request, side, bufsize, |_| Ok(())).await;
    rec.bytes_up = done.up;
    let written = done.result?;
    rec.status = written.status;
    rec.bytes_down = written.down;
    let (body_ok, ended) = origin::exchange_end(&done.pump_done, head.framing, written.cut);
    let next = if written.switched {
        Next::Upgraded
    } else if written.client_keep && written.origin_keep && body_ok {
        Next::Another
    } else {
        // The origin connection is the tunnel's only one: a response that ends it (or a body
        // the client did not finish) ends the tunnel.
        Next::Close
    };
    Ok((
        OneRequest {
            up: done.up,
            down: written.down,
            next,
        },
        ended,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_recognised() {
        assert_eq!(looks_like_http(b""), None);
        assert_eq!(looks_like_http(b"GE"), None);
        assert_eq!(looks_like_http(b"GET / HTTP/1.1\r\n"), Some(true));
        assert_eq!(looks_like_http(b"\r\nGET /x HTTP/1.0\n"), Some(true));
        assert_eq!(
            looks_like_http(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n"),
            Some(true)
        );
        assert_eq!(looks_like_http(b"SSH-2.0-OpenSSH_9.2\r\n"), Some(false));
        assert_eq!(looks_like_http(b"SSH-2.0-OpenSSH_9.2"), None);
        assert_eq!(looks_like_http(b"EHLO x\r\n"), Some(false));
        assert_eq!(looks_like_http(b"GET / HTTP/2.0\r\n"), Some(false));
        assert_eq!(looks_like_http(b"\x00\x01\x02"), Some(false));
    }

    fn head(raw: &str) -> RequestHead {
        let mut b = BytesMut::from(raw.as_bytes());
        head::try_parse(&mut b, 65536).unwrap().unwrap()
    }

    #[test]
    fn host_must_name_the_connect_target() {
        let t = Target::parse_authority("www.front.test:8080").unwrap();
        let ok = |raw: &str| check_request(&head(raw), &t);
        assert_eq!(
            ok("GET /a?b HTTP/1.1\r\nHost: www.front.test:8080\r\n\r\n").unwrap(),
            "/a?b"
        );
        assert_eq!(
            ok("GET / HTTP/1.1\r\nHost: WWW.Front.Test.:8080\r\n\r\n").unwrap(),
            "/"
        );
        assert_eq!(
            ok("GET http://www.front.test:8080/z HTTP/1.1\r\nHost: www.front.test:8080\r\n\r\n")
                .unwrap(),
            "/z"
        );
        let status = |raw: &str| ok(raw).unwrap_err().status();
        // Another host, another port, the default port for another CONNECT port: 403.
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: attacker.front.test:8080\r\n\r\n"),
            403
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: www.front.test:8081\r\n\r\n"),
            403
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: www.front.test\r\n\r\n"),
            403
        );
        assert_eq!(
            status("GET http://evil.test:8080/ HTTP/1.1\r\nHost: www.front.test:8080\r\n\r\n"),
            403
        );
        // Missing, duplicated or unparsable: 400.
        assert_eq!(status("GET / HTTP/1.0\r\n\r\n"), 400);
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: www.front.test:x\r\n\r\n"),
            400
        );
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 400);
        assert_eq!(
            status("CONNECT www.front.test:8080 HTTP/1.1\r\nHost: www.front.test:8080\r\n\r\n"),
            400
        );
        assert_eq!(
            status("GET www.front.test:8080 HTTP/1.1\r\nHost: www.front.test:8080\r\n\r\n"),
            400
        );
        let t80 = Target::parse_authority("plain.test:80").unwrap();
        assert!(check_request(&head("GET / HTTP/1.1\r\nHost: plain.test\r\n\r\n"), &t80).is_ok());
    }
}
