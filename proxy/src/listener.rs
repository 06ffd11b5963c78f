//! Accept loop (connection cap, survives fd exhaustion), per-connection request loop, graceful
//! drain (mini-redis).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Shared;
use crate::head::{self, HeadError};
use crate::log::{self, Access, Kind, Outcome};
use crate::respond::{self, Failure};

/// Shutdown and accounting handles shared by the accept loops and connections.
#[derive(Clone)]
pub struct Control {
    /// Cancelled when shutdown begins: stop accepting, close idle keep-alive connections.
    pub drain: CancellationToken,
    /// Cancelled at the drain deadline: close everything.
    pub hard_stop: CancellationToken,
    /// Tracks accept loops and connections.
    pub tracker: TaskTracker,
    /// Connection slots.
    pub slots: Arc<Semaphore>,
}

impl Control {
    /// New handles with `max` connection slots.
    pub fn new(max: usize) -> Control {
        Control {
            drain: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            slots: Arc::new(Semaphore::new(max)),
        }
    }
}

/// Bind a listener with SO_REUSEADDR, IPV6_V6ONLY for v6, and a deep backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    TcpListener::from_std(sock.into())
}

/// Accept until drain. Errors (EMFILE, ENFILE, ENOBUFS …) are counted and backed off from; the
/// loop keeps serving.
pub async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, ctl: Control) {
    let mut backoff = Duration::from_millis(5);
    // TCP_NODELAY set once on the listener is inherited by every accepted socket on Linux,
    // which saves a setsockopt per connection. Whether it held is checked on the first
    // accepted socket; where it does not, each connection sets it itself.
    let mut nodelay = if socket2::SockRef::from(&listener)
        .set_tcp_nodelay(true)
        .is_ok()
    {
        NoDelay::Unchecked
    } else {
        NoDelay::PerConnection
    };
    loop {
        let permit = tokio::select! {
            p = ctl.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = ctl.drain.cancelled() => return,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = ctl.drain.cancelled() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff = Duration::from_millis(5);
                nodelay = nodelay.apply(&tcp);
                shared
                    .metrics
                    .connections_total
                    .fetch_add(1, Ordering::Relaxed);
                shared
                    .metrics
                    .connections_active
                    .fetch_add(1, Ordering::Relaxed);
                let (s, c) = (shared.clone(), ctl.clone());
                ctl.tracker.spawn(async move {
                    tokio::select! {
                        _ = connection(&s, tcp, peer, &c) => {}
                        // The connection sees hard_stop itself and logs; this is the backstop.
                        _ = async {
                            c.hard_stop.cancelled().await;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        } => {}
                    }
                    s.metrics.connections_active.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            Err(e) => {
                shared
                    .metrics
                    .accept_errors_total
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!("accept failed (backing off {backoff:?}): {e}");
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = ctl.drain.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// How accepted sockets get TCP_NODELAY (small responses and the `200` of a CONNECT must not
/// wait for an ACK).
#[derive(Clone, Copy)]
enum NoDelay {
    /// Set on the listener; not yet seen whether accepted sockets inherit it.
    Unchecked,
    /// Accepted sockets inherit it from the listener.
    Inherited,
    /// Each accepted socket must set it.
    PerConnection,
}

impl NoDelay {
    fn apply(self, tcp: &TcpStream) -> NoDelay {
        match self {
            NoDelay::Inherited => NoDelay::Inherited,
            NoDelay::Unchecked if tcp.nodelay().unwrap_or(false) => NoDelay::Inherited,
            NoDelay::Unchecked | NoDelay::PerConnection => {
                let _ = tcp.set_nodelay(true);
                NoDelay::PerConnection
            }
        }
    }
}

/// Serve one client connection: read heads, dispatch CONNECT or forward, until close.
async fn connection(shared: &Shared, mut tcp: TcpStream, peer: SocketAddr, ctl: &Control) {
    let reg = shared.registry.register();
    let mut buf = BytesMut::with_capacity(8192);
    let Some(head) = next_head(shared, &mut tcp, &mut buf, peer, ctl, &reg, true).await else {
        return;
    };
    if head.method().eq_ignore_ascii_case("CONNECT") {
        return tunnel(shared, tcp, buf, head, peer, ctl, &reg).await;
    }
    // Boxed once per connection, not per request: inline, the request state would make every
    // connection task that large, idle tunnels included; boxed per request, every keep-alive
    // request paid for an allocation and a copy of that state (the profile's largest memmove).
    Box::pin(requests(shared, tcp, buf, head, peer, ctl, &reg)).await;
}

/// Forward `head` and every request after it on this connection, until close. A CONNECT after
/// forwarded requests turns the rest of the connection into a tunnel.
async fn requests(
    shared: &Shared,
    mut tcp: TcpStream,
    mut buf: BytesMut,
    mut head: head::RequestHead,
    peer: SocketAddr,
    ctl: &Control,
    reg: &crate::tunnels::Registration<'_>,
) {
    loop {
        let next = tokio::select! {
            n = crate::forward::handle(shared, &mut tcp, &mut buf, head, peer, reg) => n,
            _ = reg.cancel.cancelled() => {
                shared.metrics.revoked_total.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if matches!(next, crate::forward::Next::Close) || ctl.drain.is_cancelled() {
            let _ = tcp.shutdown().await;
            return;
        }
        head = match next_head(shared, &mut tcp, &mut buf, peer, ctl, reg, false).await {
            Some(h) => h,
            None => return,
        };
        if head.method().eq_ignore_ascii_case("CONNECT") {
            return tunnel(shared, tcp, buf, head, peer, ctl, reg).await;
        }
    }
}

/// The rest of the connection is the tunnel `head` asks for. Boxed: the connection task's own
/// state stays small, and a tunnel holds only the CONNECT state, not room for the request loop's.
async fn tunnel(
    shared: &Shared,
    tcp: TcpStream,
    buf: BytesMut,
    head: head::RequestHead,
    peer: SocketAddr,
    ctl: &Control,
    reg: &crate::tunnels::Registration<'_>,
) {
    Box::pin(crate::connect::handle(
        shared,
        tcp,
        buf,
        head,
        peer,
        reg,
        &ctl.hard_stop,
    ))
    .await
}

/// The next request head on this connection (`first`: the connection's first, which gets the
/// header timeout; later ones wait up to the idle timeout for their first byte). `None`: the
/// connection is done (closed, timed out, draining, revoked, or a malformed head, which has
/// been answered and logged).
async fn next_head(
    shared: &Shared,
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
    peer: SocketAddr,
    ctl: &Control,
    reg: &crate::tunnels::Registration<'_>,
    first: bool,
) -> Option<head::RequestHead> {
    let limits = &shared.config.limits;
    let first_wait = if first {
        limits.header_timeout()
    } else {
        limits.idle_timeout()
    };
    let read = head::read_head(
        tcp,
        buf,
        limits.max_head_bytes,
        first_wait,
        limits.header_timeout(),
    );
    let r = tokio::select! {
        r = read => r,
        _ = ctl.drain.cancelled() => return None,
        _ = reg.cancel.cancelled() => return None,
    };
    match r {
        Ok(h) => Some(h),
        Err(HeadError::Closed { .. }) | Err(HeadError::Io(_)) => None,
        Err(HeadError::Timeout) => {
            tracing::debug!(client = %peer, "request head timeout, closing");
            None
        }
        Err(e) => {
            let f = match e {
                HeadError::TooLarge(_) => Failure::HeadTooLarge,
                other => Failure::BadRequest(other.to_string()),
            };
            respond::refuse(shared, tcp, None, &f).await;
            respond::linger_close(tcp).await;
            // No head, so no method, target or route: those fields stay empty.
            let mut rec = Access::new(Kind::Http, peer, "");
            rec.upstream = None;
            log::finish(shared, rec, Outcome::Failed(f));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every accepted socket ends up with TCP_NODELAY, with one setsockopt on the listener
    /// instead of one per connection where the kernel passes it on (Linux does). Loopback only.
    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let l = bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        socket2::SockRef::from(&l)
            .set_tcp_nodelay(true)
            .expect("listener nodelay");
        let addr = l.local_addr().expect("addr");
        let mut mode = NoDelay::Unchecked;
        for _ in 0..2 {
            let _c = TcpStream::connect(addr).await.expect("connect");
            let (tcp, _) = l.accept().await.expect("accept");
            mode = mode.apply(&tcp);
            assert!(
                tcp.nodelay().expect("getsockopt"),
                "accepted without nodelay"
            );
        }
        assert!(matches!(mode, NoDelay::Inherited), "Linux passes it on");
    }
}
