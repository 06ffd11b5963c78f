//! Reaching a destination: resolve → guard every address → connect to a *checked* address
//! (never resolving twice), or hand over to the upstream dialer for non-direct routes.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use kennel_policy::{Host, Policy, Target, Upstream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::Shared;
use crate::respond::Failure;
use crate::upstream::{BoxedIo, HttpHop, UpstreamError};

/// A connection to a destination (directly or through an upstream proxy).
pub enum Conn {
    /// Direct TCP.
    Tcp(TcpStream),
    /// Through an upstream proxy.
    Upstream(BoxedIo),
}

/// A dialed destination.
pub struct Dialed {
    /// The connection.
    pub conn: Conn,
    /// The checked address connected to (or given to a `socks5://` upstream).
    pub resolved: Option<SocketAddr>,
    /// For plain-HTTP forwarding: how to write the request on this connection.
    pub hop: HttpHop,
}

/// What the route for a target is, after the guard (before any connect).
pub struct Route {
    /// The upstream (Direct or not).
    pub upstream: Upstream,
    /// Checked addresses to connect to (Direct) or to give a `socks5://` upstream.
    pub addrs: Vec<SocketAddr>,
}

impl Route {
    /// Keys under which a reusable connection for this route may be pooled: one per checked
    /// address for direct routes (a connection is only ever reused for an address that was
    /// checked for *this* request), else one key per upstream + target.
    pub fn pool_keys<'a>(
        &'a self,
        target: &'a Target,
    ) -> impl Iterator<Item = (PoolKey, Option<SocketAddr>)> + 'a {
        let direct = matches!(self.upstream, Upstream::Direct);
        let via = (!direct).then(|| {
            (
                PoolKey::Via(upstream_key(&self.upstream, target)),
                self.addrs.first().copied(),
            )
        });
        let addrs = if direct { &self.addrs[..] } else { &[] };
        addrs
            .iter()
            .map(|a| (PoolKey::Addr(*a), Some(*a)))
            .chain(via)
    }

    /// Key to pool a connection under, given the address it actually reached.
    pub fn pool_key_for(&self, target: &Target, reached: Option<SocketAddr>) -> PoolKey {
        match (&self.upstream, reached) {
            (Upstream::Direct, Some(a)) => PoolKey::Addr(a),
            (up, _) => PoolKey::Via(upstream_key(up, target)),
        }
    }
}

/// What a pooled origin connection is keyed by: the checked address of a direct connection (a
/// lookup builds no string), or upstream + credentials hash + target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PoolKey {
    /// A direct connection to this checked address.
    Addr(SocketAddr),
    /// Through an upstream: [`upstream_key`].
    Via(String),
}

/// Pool key of a connection through upstream `up` to `target`. `Upstream`'s Display omits the
/// credentials, so a hash of them is part of the key: routes to the same upstream with different
/// credentials must never share a connection (it was authenticated as someone else). The hash
/// stays in memory; it is never logged.
fn upstream_key(up: &Upstream, target: &Target) -> String {
    use std::hash::{Hash, Hasher};
    let creds = match up.credentials() {
        Some(c) => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&c.username, &c.password).hash(&mut h);
            format!("{:016x}", h.finish())
        }
        None => "-".to_string(),
    };
    format!("{up}|{creds}|{target}")
}

/// Decide how to reach `target`, resolve it, and admit it with every address that will be used
/// ([`crate::admit::check`]).
pub async fn route(shared: &Shared, policy: &Policy, target: &Target) -> Result<Route, Failure> {
    let upstream = policy.upstream_for(&target.host).clone();
    let needs_local_dns = match &upstream {
        Upstream::Direct => true,
        Upstream::Socks5 { remote_dns, .. } => !remote_dns,
        Upstream::Http { .. } => false,
    };
    let ips: Vec<IpAddr> = if needs_local_dns {
        shared
            .resolver
            .resolve(&target.host)
            .await
            .map_err(Failure::Dns)?
    } else if let Host::Ip(ip) = target.host {
        // The name is sent to the upstream, but an IP literal is still checked here.
        vec![ip]
    } else {
        Vec::new()
    };
    // The admission check again, now with every address this route will use.
    crate::admit::check(policy, target, &ips)?;
    let addrs = if needs_local_dns {
        ips.into_iter()
            .map(|ip| SocketAddr::new(ip, target.port))
            .collect()
    } else {
        Vec::new()
    };
    Ok(Route { upstream, addrs })
}

/// Connect along `route`. `http` = for plain-HTTP forwarding (else a tunnel).
pub async fn connect(
    shared: &Shared,
    route: &Route,
    target: &Target,
    http: bool,
) -> Result<Dialed, Failure> {
    let timeout = shared.config.limits.connect_timeout();
    match &route.upstream {
        Upstream::Direct => {
            let (tcp, addr) = connect_direct(&route.addrs, timeout).await?;
            Ok(Dialed {
                conn: Conn::Tcp(tcp),
                resolved: Some(addr),
                hop: HttpHop::Origin,
            })
        }
        up => {
            let resolved = route.addrs.first().copied();
            let dialer = &shared.dialer;
            let res = if http {
                dialer.open_http(up, target, resolved).await
            } else {
                dialer
                    .open_tunnel(up, target, resolved)
                    .await
                    .map(|io| (io, HttpHop::Origin))
            };
            match res {
                Ok((io, hop)) => Ok(Dialed {
                    conn: Conn::Upstream(io),
                    resolved,
                    hop,
                }),
                Err(e) => {
                    shared.metrics.upstream_failure(e.kind());
                    Err(upstream_failure(&e))
                }
            }
        }
    }
}

/// The failure (502/504 naming the upstream) for an upstream error.
pub(crate) fn upstream_failure(e: &UpstreamError) -> Failure {
    Failure::Upstream {
        kind: e.kind(),
        detail: e.to_string(),
        timeout: e.is_timeout(),
    }
}

/// Try each checked address in order within one overall timeout.
async fn connect_direct(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), Failure> {
    // Only a failure names the addresses: no string is built on the way to a connection.
    let all = || {
        addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let attempt = async {
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok((s, *addr));
                }
                Err(e) => {
                    last = Some(Failure::Connect {
                        addr: addr.to_string(),
                        source: e,
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| Failure::Connect {
            addr: all(),
            source: std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address"),
        }))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(Failure::ConnectTimeout(all())),
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Conn::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            Conn::Upstream($s) => {
                let $s = Pin::new($s);
                $e
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Upstream(s) => s.is_write_vectored(),
        }
    }
}

/// Wraps a stream, counting bytes read (`down`) and written (`up`) and recording activity.
pub struct Metered<S> {
    inner: S,
    /// Bytes written into the stream.
    pub up: Arc<AtomicU64>,
    /// Bytes read from the stream.
    pub down: Arc<AtomicU64>,
    /// Milliseconds since `epoch` of the last read or write.
    pub last: Arc<AtomicU64>,
    epoch: tokio::time::Instant,
}

impl<S> Metered<S> {
    /// Wrap `inner`.
    pub fn new(inner: S) -> Self {
        Metered {
            inner,
            up: Arc::default(),
            down: Arc::default(),
            last: Arc::default(),
            epoch: tokio::time::Instant::now(),
        }
    }
    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    /// The activity clock: last activity = epoch + `last` milliseconds.
    pub fn clock(&self) -> (tokio::time::Instant, Arc<AtomicU64>) {
        (self.epoch, self.last.clone())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.down.fetch_add(n as u64, Ordering::Relaxed);
            this.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            this.up.fetch_add(*n as u64, Ordering::Relaxed);
            this.touch();
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kennel_policy::Credentials;

    fn via(user: &str, pass: &str) -> Route {
        Route {
            upstream: Upstream::Http {
                host: "127.0.0.1".into(),
                port: 3128,
                credentials: Some(Credentials {
                    username: user.into(),
                    password: pass.into(),
                }),
                tls: false,
            },
            addrs: Vec::new(),
        }
    }

    /// Regression: two routes to the same upstream with different credentials must not share
    /// pooled connections.
    #[test]
    fn pool_keys_differ_by_upstream_credentials() {
        let t = Target::parse_authority("origin.test:80").expect("target");
        let key = |r: &Route| r.pool_keys(&t).next().expect("a key").0;
        let alice = via("alice", "one");
        assert_eq!(key(&alice), key(&via("alice", "one")));
        assert_eq!(key(&alice), alice.pool_key_for(&t, None));
        for other in [via("alice", "two"), via("bob", "one")] {
            assert_ne!(key(&alice), key(&other));
            assert_ne!(alice.pool_key_for(&t, None), other.pool_key_for(&t, None));
        }
        let anonymous = Route {
            upstream: Upstream::Http {
                host: "127.0.0.1".into(),
                port: 3128,
                credentials: None,
                tls: false,
            },
            addrs: Vec::new(),
        };
        assert_ne!(key(&alice), key(&anonymous));
        assert!(
            !format!("{:?}", key(&alice)).contains("one"),
            "no password in the key"
        );
    }
}
