//! Absolute-form HTTP forwarding: every request is decided again, hop-by-hop headers are
//! stripped, bodies are streamed, and origin connections (`origin.rs`) are pooled by the
//! checked address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use kennel_policy::Target;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::Shared;
use crate::dial::{self, PoolKey};
use crate::head::{Framing, RequestHead, trim};
use crate::log::{self, Access, Ended, Kind, Outcome};
use crate::origin::{self, ClientSide, OriginConn};
use crate::respond::{self, Failure, Side};
use crate::tunnels::Registration;
use crate::upstream::HttpHop;

struct Idle {
    since: tokio::time::Instant,
    conn: OriginConn,
    hop: HttpHop,
}

/// A pooled origin connection and how requests are written on it.
type Pooled = (OriginConn, HttpHop);

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
    fn checkout(&self, key: &PoolKey) -> Option<Pooled> {
        while let Some(mut i) = self.pop(key) {
            if i.since.elapsed() < POOL_IDLE && i.conn.is_reusable() {
                return Some((i.conn, i.hop));
            }
        }
        None
    }

    fn put(&self, key: PoolKey, conn: OriginConn, hop: HttpHop) {
        let mut m = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let v = m.entry(key).or_default();
        if v.len() < POOL_PER_KEY {
            v.push(Idle {
                since: tokio::time::Instant::now(),
                conn,
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
    let (mut conn, hop, resolved, reused) = origin_connection(shared, &route, &target).await?;
    rec.resolved = resolved;
    reg.set_target(&target, resolved.map(|a| a.ip()));
    if let Some(d) = crate::admit::recheck(shared, generation, &target, resolved) {
        return Err(d);
    }
    if head.expect_continue {
        client
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(Failure::ClientGone)?;
    }
    let (mut hop, mut resolved, mut reused) = (hop, resolved, reused);
    let done = loop {
        let done = send(
            shared,
            client,
            buf,
            &mut conn,
            &hop,
            head,
            &path,
            &host_value,
            &route,
        )
        .await;
        if !(done.retryable && reused) {
            break done;
        }
        // A pooled connection the origin had closed as the request went out: once more on a
        // fresh one (nothing of the request body was taken, nothing reached the client).
        if let Err(e) = &done.result {
            tracing::debug!("retrying on a fresh origin connection: {e}");
        }
        (conn, hop, resolved) = Box::pin(open(shared, &route, &target)).await?;
        reused = false;
    };
    rec.bytes_up = done.up;
    let written = done.result?;
    rec.status = written.status;
    rec.bytes_down = written.down;
    shared
        .metrics
        .add_bytes(rec.bytes_up, rec.bytes_down, rec.rule());
    let (body_ok, ended) = origin::exchange_end(&done.pump_done, head.framing, written.cut);
    if written.origin_keep && body_ok {
        shared
            .pool
            .put(route.pool_key_for(&target, resolved), conn, hop);
    }
    let next = if written.client_keep && body_ok {
        Next::KeepAlive
    } else {
        Next::Close
    };
    Ok((next, ended))
}

/// Send the request on `conn` (reached via `hop`) and write the response to the client.
#[allow(clippy::too_many_arguments)]
async fn send(
    shared: &Shared,
    client: &mut TcpStream,
    buf: &mut BytesMut,
    conn: &mut OriginConn,
    hop: &HttpHop,
    head: &RequestHead,
    path: &str,
    host_value: &str,
    route: &dial::Route,
) -> origin::Exchanged {
    let side = ClientSide::of(head, false);
    let request = request_head_for(head, hop, path, host_value);
    // Through an HTTP upstream, its own refusals (407) are the upstream's failure, not the
    // origin's answer: 502 naming the upstream, as for tunnels.
    let check = |resp: &origin::ResponseHead| match hop {
        HttpHop::Proxy { .. } => {
            crate::upstream::check_proxy_response(&route.upstream, resp.status).map_err(|e| {
                shared.metrics.upstream_failure(e.kind());
                dial::upstream_failure(&e)
            })
        }
        HttpHop::Origin => Ok(()),
    };
    let bufsize = shared.config.limits.buffer_bytes;
    origin::exchange(client, buf, conn, &request, side, bufsize, check).await
}

/// The request head for `hop`: origin-form to the origin, absolute-form with the upstream's
/// credentials to an HTTP upstream proxy.
fn request_head_for(head: &RequestHead, hop: &HttpHop, path: &str, host_value: &str) -> Vec<u8> {
    match hop {
        HttpHop::Origin => origin::request_head(head, path, host_value, &[]),
        HttpHop::Proxy { authorization } => {
            let url = format!("http://{host_value}{path}");
            let auth: Vec<(&str, &[u8])> = authorization
                .iter()
                .map(|a| ("Proxy-Authorization", a.as_bytes()))
                .collect();
            origin::request_head(head, &url, host_value, &auth)
        }
    }
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

fn has_body(head: &RequestHead) -> bool {
    head.framing != Framing::None
}

/// A connection to the origin for `route`: a pooled one for a checked address of this request
/// (`reused`), else a new one.
async fn origin_connection(
    shared: &Shared,
    route: &dial::Route,
    target: &Target,
) -> Result<(OriginConn, HttpHop, Option<SocketAddr>, bool), Failure> {
    for (k, addr) in route.pool_keys(target) {
        if let Some((s, hop)) = shared.pool.checkout(&k) {
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
) -> Result<(OriginConn, HttpHop, Option<SocketAddr>), Failure> {
    let dialed = dial::connect(shared, route, target, true).await?;
    Ok((OriginConn::new(dialed.conn), dialed.hop, dialed.resolved))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
