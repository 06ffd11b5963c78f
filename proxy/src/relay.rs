//! Relaying a tunnel's bytes once it is admitted (after the ClientHello check, or at once for
//! `plaintext_tunnel_ports`).
//!
//! Direct tunnels (TCP on both sides) are relayed with `splice(2)` through a pipe per direction:
//! the bytes go socket → pipe → socket inside the kernel and are never copied into user space,
//! which is what made the copy loop cost 60 % of a direct stream's throughput (two extra copies
//! per byte on a machine where the sender and the receiver compete for the same CPUs).
//!
//! Pipes are not owned by a tunnel: a direction leases one from a small process-wide pool only
//! while it has bytes to move, and returns it (empty) as soon as its source has nothing to read.
//! An idle tunnel therefore holds no buffer at all, neither in user space nor in the kernel
//! (an empty pipe still costs two file descriptors and ~1 KiB of kernel state, and unprivileged
//! users only get `fs.pipe-user-pages-soft` pages of pipes before new pipes shrink to 8 KiB).
//!
//! Tunnels through an upstream proxy (SOCKS5 / HTTP / TLS streams behind a trait object) use the
//! copy loop of `tokio::io::copy_bidirectional`: there is no file descriptor to splice from.
//!
//! Both paths keep the same semantics: the bytes the ClientHello peek already read are written
//! first; an EOF on one side becomes a write shutdown on the other (half-close), and the relay
//! ends when both directions are done, on an error, after the idle timeout, on revocation or on
//! the shutdown deadline. Byte counts are the bytes written to the destination (`up`) and read
//! from it (`down`).

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dial::{Conn, Metered};

/// How a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Both directions reached EOF.
    Done,
    /// Nothing moved for the idle timeout.
    Idle,
    /// The destination was revoked by a policy reload.
    Revoked,
    /// The proxy's drain deadline passed.
    Shutdown,
    /// A read or write failed (the message says which).
    Error(String),
}

/// What bounds a relay.
pub struct Limits<'a> {
    /// Close after this long without a byte in either direction.
    pub idle: Duration,
    /// Buffer size per direction of the copy loop, in bytes; with splice, the pipe capacity
    /// asked for (never less than 256 KiB, see `MIN_PIPE`).
    pub buffer_bytes: usize,
    /// Cancelled when the destination is revoked.
    pub revoked: &'a CancellationToken,
    /// Cancelled at the shutdown deadline.
    pub hard_stop: &'a CancellationToken,
}

/// The result of a relay.
#[derive(Debug)]
pub struct Outcome {
    /// Why it ended.
    pub end: End,
    /// Bytes written to the destination (including the buffered prefix).
    pub up: u64,
    /// Bytes read from the destination.
    pub down: u64,
    /// True when the bytes went through `splice(2)` (false: the copy loop).
    pub spliced: bool,
}

/// Relay between `client` and `origin` until the tunnel ends; `prefix` holds client bytes
/// already read (the ClientHello) that go to the origin first.
pub async fn tunnel(
    client: &mut TcpStream,
    origin: Conn,
    prefix: BytesMut,
    limits: &Limits<'_>,
) -> Outcome {
    match origin {
        #[cfg(target_os = "linux")]
        Conn::Tcp(origin) => splice::tunnel(client, origin, prefix, limits).await,
        origin => copy(client, origin, prefix, limits).await,
    }
}

/// Pipes leased right now by spliced tunnels, process-wide. An idle tunnel holds none: a
/// direction leases a pipe only while it has bytes to move.
pub fn pipes_leased() -> usize {
    #[cfg(target_os = "linux")]
    return splice::LEASED.load(Ordering::Relaxed);
    #[cfg(not(target_os = "linux"))]
    return 0;
}

/// The idle deadline: resolves once `idle` has passed since the last activity recorded in
/// `last` (milliseconds since `epoch`). One timer per tunnel, re-armed only when it fires.
async fn idle_watchdog(epoch: Instant, last: &AtomicU64, idle: Duration) {
    loop {
        let deadline = epoch + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// The copy-loop relay (any stream type).
pub async fn copy(
    client: &mut TcpStream,
    origin: Conn,
    prefix: BytesMut,
    limits: &Limits<'_>,
) -> Outcome {
    let mut origin = Metered::new(origin);
    let (up, down) = (origin.up.clone(), origin.down.clone());
    let end = copy_inner(client, &mut origin, prefix, limits).await;
    Outcome {
        end,
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        spliced: false,
    }
}

async fn copy_inner(
    client: &mut TcpStream,
    origin: &mut Metered<Conn>,
    prefix: BytesMut,
    limits: &Limits<'_>,
) -> End {
    let (epoch, last) = origin.clock();
    let relay = async {
        if !prefix.is_empty() && origin.write_all(&prefix).await.is_err() {
            return End::Error(
                "writing the buffered client bytes to the destination failed".into(),
            );
        }
        drop(prefix);
        let n = limits.buffer_bytes;
        match tokio::io::copy_bidirectional_with_sizes(client, origin, n, n).await {
            Ok(_) => End::Done,
            Err(e) => End::Error(e.to_string()),
        }
    };
    tokio::select! {
        e = relay => e,
        _ = idle_watchdog(epoch, &last, limits.idle) => End::Idle,
        _ = limits.revoked.cancelled() => End::Revoked,
        _ = limits.hard_stop.cancelled() => End::Shutdown,
    }
}

/// Shared byte counter + activity clock of one direction pair.
struct Meter {
    epoch: Instant,
    last: AtomicU64,
}

impl Meter {
    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

#[cfg(target_os = "linux")]
mod splice {
    use std::os::fd::OwnedFd;
    use std::sync::Mutex;

    use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl};
    use tokio::io::Interest;

    use super::*;

    /// The kernel's default pipe capacity (16 pages); asking for it costs a syscall for nothing.
    const DEFAULT_PIPE: usize = 64 * 1024;
    /// Smallest pipe a tunnel gets, whatever `limits.buffer_bytes` says. A pipe holds 16 page
    /// references by default, and one loopback/TCP skb fragment takes a slot even when it is
    /// small, so a 64 KiB pipe often moves far less than 64 KiB per splice: measured on the
    /// 1 GiB download, 64 KiB pipes cost ~1.4x the proxy CPU per byte of 1 MiB pipes, 256 KiB
    /// ~1.15x (benches/README.md). Pooled pipes cost nothing while a tunnel is idle, so the size
    /// is not multiplied by the number of tunnels. 256 KiB rather than 1 MiB because an
    /// unprivileged user's pipes may hold `fs.pipe-user-pages-soft` = 16,384 pages in all before
    /// new pipes shrink to 8 KiB: with 256 KiB pipes that is 256 pipes in flight (or in the
    /// pool), with 1 MiB only 64. `limits.buffer_bytes` above 256 KiB asks for bigger pipes.
    const MIN_PIPE: usize = 256 * 1024;
    /// Empty pipes kept for reuse. Leasing one per burst instead of creating it saves two
    /// syscalls (pipe2 + close) on every wake-up of a busy tunnel; the cap bounds what idle
    /// pipes cost after a burst of many tunnels: two fds each, and their capacity counts
    /// against the user's pipe budget (32 × 64 pages = 2,048 of the 16,384 pages that
    /// `fs.pipe-user-pages-soft` gives the proxy's unprivileged uid, which every proxy
    /// container on the host shares).
    const POOL_MAX: usize = 32;

    /// Empty pipes ready for reuse.
    static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());
    /// Pipes currently leased by a tunnel direction (bytes in flight, or about to be).
    pub(super) static LEASED: AtomicUsize = AtomicUsize::new(0);

    /// A pipe: read end, write end, capacity.
    struct Pipe {
        r: OwnedFd,
        w: OwnedFd,
        cap: usize,
    }

    impl Pipe {
        /// A non-blocking pipe with (about) `want` bytes of capacity. When the kernel refuses
        /// the size (above `fs.pipe-max-size`, or the user is over `fs.pipe-user-pages-soft`)
        /// the pipe keeps what it has: a smaller pipe only means more wake-ups.
        fn new(want: usize) -> io::Result<Pipe> {
            let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
            let size = |r: &OwnedFd| fcntl(r, FcntlArg::F_GETPIPE_SZ);
            let cap = if want == DEFAULT_PIPE {
                size(&r)
            } else {
                let want = i32::try_from(want).unwrap_or(i32::MAX);
                fcntl(&r, FcntlArg::F_SETPIPE_SZ(want)).or_else(|_| size(&r))
            }?;
            Ok(Pipe {
                r,
                w,
                cap: usize::try_from(cap).unwrap_or(DEFAULT_PIPE).max(4096),
            })
        }
    }

    fn pool() -> std::sync::MutexGuard<'static, Vec<Pipe>> {
        POOL.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A direction's pipe while it has bytes in flight. An empty pipe goes back to the pool;
    /// a pipe still holding bytes (tunnel cancelled mid-transfer) is closed, never reused, so
    /// one tunnel's bytes cannot leak into another.
    struct Lease {
        pipe: Option<Pipe>,
        filled: usize,
        want: usize,
    }

    impl Lease {
        fn get(&mut self) -> io::Result<&Pipe> {
            if self.pipe.is_none() {
                let pooled = pool().pop();
                self.pipe = Some(match pooled {
                    Some(p) => p,
                    None => Pipe::new(self.want)?,
                });
                LEASED.fetch_add(1, Ordering::Relaxed);
            }
            // The branch above just filled `self.pipe` (or returned the error).
            self.pipe
                .as_ref()
                .ok_or_else(|| io::Error::other("no pipe"))
        }

        fn release(&mut self) {
            if self.filled == 0
                && let Some(p) = self.pipe.take()
            {
                LEASED.fetch_sub(1, Ordering::Relaxed);
                let mut pool = pool();
                // A pipe the kernel shrank below the default (the uid is over
                // pipe-user-pages-soft) is not kept: the next lease may get a full-sized one.
                // One that merely could not grow past the default (a size above
                // fs.pipe-max-size) is kept, or every burst would create a pipe.
                if pool.len() < POOL_MAX && p.cap >= self.want.min(DEFAULT_PIPE) {
                    pool.push(p);
                }
            }
        }
    }

    impl Drop for Lease {
        fn drop(&mut self) {
            self.release();
            if self.pipe.take().is_some() {
                // Still holding bytes (cancelled mid-transfer): closed, not pooled.
                LEASED.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// splice(2) into a socket whose peer is gone raises SIGPIPE (unlike `send`, which std calls
    /// with MSG_NOSIGNAL); the Rust runtime ignores SIGPIPE in every Rust binary before `main`,
    /// so this surfaces as an `EPIPE` error that ends the relay.
    ///
    /// SPLICE_F_NONBLOCK: the pipe side never blocks (the sockets are non-blocking already, and
    /// readiness comes from tokio). SPLICE_F_MOVE: move pages rather than copy where possible.
    fn flags() -> SpliceFFlags {
        SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE
    }

    /// Move bytes from `src` to `dst` until EOF on `src` (then shut down `dst`'s write side).
    /// `count` grows by the bytes moved; `count_on_read` counts them as they leave `src`
    /// (bytes read from the destination) instead of as they reach `dst`.
    async fn pump(
        src: &TcpStream,
        dst: &TcpStream,
        want: usize,
        count: &AtomicU64,
        count_on_read: bool,
        meter: &Meter,
    ) -> io::Result<()> {
        let mut lease = Lease {
            pipe: None,
            filled: 0,
            want,
        };
        loop {
            src.readable().await?;
            let pipe = match lease.get() {
                Ok(pipe) => pipe,
                // No pipe to be had (the process or the system is out of file descriptors): move
                // this burst through user space instead of resetting a live tunnel. The next
                // burst tries for a pipe again.
                // Boxed: a rare path whose state would otherwise size every idle tunnel.
                Err(e) if is_out_of_fds(&e) => {
                    match Box::pin(copy_burst(src, dst, count, meter)).await? {
                        Burst::Eof => return shutdown_write(dst),
                        Burst::Moved => continue,
                    }
                }
                Err(e) => return Err(e),
            };
            let (w, cap) = (&pipe.w, pipe.cap);
            let moved = src.try_io(Interest::READABLE, || {
                Ok(nix::fcntl::splice(src, None, w, None, cap, flags())?)
            });
            let n = match moved {
                Ok(0) => {
                    drop(lease);
                    return shutdown_write(dst);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Nothing to read: the pipe is empty, give it back while we wait.
                    lease.release();
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            lease.filled = n;
            if count_on_read {
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            meter.touch();
            while lease.filled > 0 {
                dst.writable().await?;
                let filled = lease.filled;
                let r = &lease.get()?.r;
                match dst.try_io(Interest::WRITABLE, || {
                    Ok(nix::fcntl::splice(r, None, dst, None, filled, flags())?)
                }) {
                    // With bytes in the pipe, 0 would mean no progress: fail instead of
                    // spinning on a writable socket.
                    Ok(0) => {
                        return Err(io::Error::new(io::ErrorKind::WriteZero, "splice wrote 0"));
                    }
                    Ok(n) => {
                        lease.filled -= n;
                        if !count_on_read {
                            count.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        meter.touch();
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// EMFILE (the process's limit) or ENFILE (the system's): creating a pipe failed for want
    /// of file descriptors, not because anything is wrong with the tunnel.
    fn is_out_of_fds(e: &io::Error) -> bool {
        matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
    }

    /// What [`copy_burst`] did.
    enum Burst {
        /// `src` reached EOF.
        Eof,
        /// Bytes were moved, or there was nothing to read after all.
        Moved,
    }

    /// The fallback of [`pump`] when no pipe can be created: one read of up to 16 KiB from
    /// `src` into a buffer that lives only for this burst, written to `dst` in full. Both byte
    /// counts see the bytes at once (read and written are the same bytes here).
    async fn copy_burst(
        src: &TcpStream,
        dst: &TcpStream,
        count: &AtomicU64,
        meter: &Meter,
    ) -> io::Result<Burst> {
        let mut buf = vec![0u8; 16 * 1024];
        let n = match src.try_read(&mut buf) {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(Burst::Moved);
            }
            Err(e) => return Err(e),
        };
        meter.touch();
        let mut sent = 0;
        while sent < n {
            dst.writable().await?;
            match dst.try_write(&buf[sent..n]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0")),
                Ok(w) => {
                    sent += w;
                    meter.touch();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(Burst::Moved)
    }

    /// Half-close: the other side sent EOF, pass it on. A peer that is already gone
    /// (`ENOTCONN`) is not an error: the other direction will see it.
    fn shutdown_write(s: &TcpStream) -> io::Result<()> {
        match socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            r => r,
        }
    }

    pub(super) async fn tunnel(
        client: &mut TcpStream,
        mut origin: TcpStream,
        prefix: BytesMut,
        limits: &Limits<'_>,
    ) -> Outcome {
        let up = AtomicU64::new(0);
        let down = AtomicU64::new(0);
        let meter = Meter {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        };
        let relay = async {
            if !prefix.is_empty() {
                if origin.write_all(&prefix).await.is_err() {
                    return End::Error(
                        "writing the buffered client bytes to the destination failed".into(),
                    );
                }
                up.fetch_add(prefix.len() as u64, Ordering::Relaxed);
            }
            drop(prefix);
            let (c, o) = (&*client, &origin);
            let want = limits.buffer_bytes.max(MIN_PIPE);
            match tokio::try_join!(
                pump(c, o, want, &up, false, &meter),
                pump(o, c, want, &down, true, &meter),
            ) {
                Ok(_) => End::Done,
                Err(e) => End::Error(e.to_string()),
            }
        };
        let end = tokio::select! {
            e = relay => e,
            _ = idle_watchdog(meter.epoch, &meter.last, limits.idle) => End::Idle,
            _ = limits.revoked.cancelled() => End::Revoked,
            _ = limits.hard_stop.cancelled() => End::Shutdown,
        };
        Outcome {
            end,
            up: up.load(Ordering::Relaxed),
            down: down.load(Ordering::Relaxed),
            spliced: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// Which relay path a test drives.
    #[derive(Clone, Copy, Debug)]
    enum Path {
        /// `Conn::Tcp`: splice on Linux.
        Splice,
        /// `Conn::Upstream`: the copy loop.
        Copy,
    }

    const PATHS: [Path; 2] = [Path::Splice, Path::Copy];

    /// A connected loopback pair.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    struct Tokens {
        revoked: CancellationToken,
        hard_stop: CancellationToken,
    }

    impl Tokens {
        fn new() -> Self {
            Tokens {
                revoked: CancellationToken::new(),
                hard_stop: CancellationToken::new(),
            }
        }
    }

    /// Start a relay: returns the application's client end, the application's origin end and
    /// the relay task.
    async fn start(
        path: Path,
        prefix: &[u8],
        buffer_bytes: usize,
        idle: Duration,
        tokens: &Tokens,
    ) -> (TcpStream, TcpStream, tokio::task::JoinHandle<Outcome>) {
        let (app_client, mut proxy_client) = pair().await;
        let (proxy_origin, app_origin) = pair().await;
        let conn = match path {
            Path::Splice => Conn::Tcp(proxy_origin),
            Path::Copy => Conn::Upstream(Box::new(proxy_origin)),
        };
        let prefix = BytesMut::from(prefix);
        let (revoked, hard_stop) = (tokens.revoked.clone(), tokens.hard_stop.clone());
        let task = tokio::spawn(async move {
            let limits = Limits {
                idle,
                buffer_bytes,
                revoked: &revoked,
                hard_stop: &hard_stop,
            };
            tunnel(&mut proxy_client, conn, prefix, &limits).await
        });
        (app_client, app_origin, task)
    }

    const LONG: Duration = Duration::from_secs(30);

    async fn done(task: tokio::task::JoinHandle<Outcome>) -> Outcome {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the relay ends in time")
            .expect("the relay task does not panic")
    }

    fn check_path(path: Path, out: &Outcome) {
        assert_eq!(
            out.spliced,
            matches!(path, Path::Splice) && cfg!(target_os = "linux")
        );
    }

    #[tokio::test]
    async fn half_close_client_first_then_origin() {
        for path in PATHS {
            let t = Tokens::new();
            let (mut c, mut o, task) = start(path, b"", 65536, LONG, &t).await;
            c.write_all(b"request").await.expect("write");
            c.shutdown().await.expect("shutdown");
            let mut got = Vec::new();
            o.read_to_end(&mut got).await.expect("origin reads to EOF");
            assert_eq!(got, b"request", "{path:?}");
            // The client's write side is closed, its read side still open.
            o.write_all(b"response!").await.expect("write");
            o.shutdown().await.expect("shutdown");
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.expect("client reads to EOF");
            assert_eq!(got, b"response!", "{path:?}");
            let out = done(task).await;
            assert_eq!(out.end, End::Done, "{path:?}");
            assert_eq!((out.up, out.down), (7, 9), "{path:?}");
            check_path(path, &out);
        }
    }

    #[tokio::test]
    async fn half_close_origin_first_then_client() {
        for path in PATHS {
            let t = Tokens::new();
            let (mut c, mut o, task) = start(path, b"", 65536, LONG, &t).await;
            o.write_all(b"banner").await.expect("write");
            o.shutdown().await.expect("shutdown");
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.expect("client reads to EOF");
            assert_eq!(got, b"banner", "{path:?}");
            c.write_all(b"late upload").await.expect("write");
            c.shutdown().await.expect("shutdown");
            let mut got = Vec::new();
            o.read_to_end(&mut got).await.expect("origin reads to EOF");
            assert_eq!(got, b"late upload", "{path:?}");
            let out = done(task).await;
            assert_eq!(out.end, End::Done, "{path:?}");
            assert_eq!((out.up, out.down), (11, 6), "{path:?}");
        }
    }

    /// Deterministic bytes (xorshift) and an FNV-1a checksum over them.
    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn fnv(data: &[u8]) -> u64 {
        data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        })
    }

    /// Write `data` in odd-sized pieces, then shut down; read everything the peer sends.
    async fn send_and_receive(mut s: TcpStream, data: Vec<u8>) -> Vec<u8> {
        let (mut r, mut w) = s.split();
        let send = async {
            for piece in data.chunks(100_003) {
                w.write_all(piece).await.expect("write");
            }
            w.shutdown().await.expect("shutdown");
        };
        let recv = async {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.expect("read");
            got
        };
        tokio::join!(send, recv).1
    }

    #[tokio::test]
    async fn large_transfer_both_ways_keeps_every_byte_and_counts_them() {
        const LEN: usize = 8 << 20;
        for (path, pipe) in [
            (Path::Splice, 65536),
            (Path::Splice, 1 << 20),
            (Path::Splice, 4096),
            (Path::Copy, 65536),
        ] {
            let t = Tokens::new();
            let prefix = b"prefix-bytes".as_slice();
            let (c, o, task) = start(path, prefix, pipe, LONG, &t).await;
            let up = pattern(1, LEN);
            let down = pattern(2, LEN);
            let (sum_up, sum_down) = (fnv(&[prefix, &up].concat()), fnv(&down));
            let (at_client, at_origin) =
                tokio::join!(send_and_receive(c, up), send_and_receive(o, down));
            assert_eq!(at_origin.len(), LEN + prefix.len(), "{path:?} {pipe}");
            assert_eq!(fnv(&at_origin), sum_up, "{path:?} {pipe}");
            assert_eq!(at_client.len(), LEN, "{path:?} {pipe}");
            assert_eq!(fnv(&at_client), sum_down, "{path:?} {pipe}");
            let out = done(task).await;
            assert_eq!(out.end, End::Done);
            assert_eq!(out.up, (LEN + prefix.len()) as u64, "{path:?} {pipe}");
            assert_eq!(out.down, LEN as u64, "{path:?} {pipe}");
            check_path(path, &out);
        }
    }

    #[tokio::test]
    async fn buffered_prefix_reaches_the_origin_first() {
        for path in PATHS {
            let t = Tokens::new();
            let (mut c, mut o, task) = start(path, b"hello ", 65536, LONG, &t).await;
            c.write_all(b"world").await.expect("write");
            c.shutdown().await.expect("shutdown");
            let mut got = Vec::new();
            o.read_to_end(&mut got).await.expect("read");
            assert_eq!(got, b"hello world", "{path:?}");
            drop(o);
            let out = done(task).await;
            assert_eq!(out.up, 11, "{path:?}");
        }
    }

    /// The origin streams without end; cancelling ends the relay promptly (revocation must close
    /// a live tunnel within a second) and closes the client's connection.
    #[tokio::test]
    async fn cancellation_mid_transfer_ends_the_relay() {
        for path in PATHS {
            for revoke in [true, false] {
                let t = Tokens::new();
                let (mut c, mut o, task) = start(path, b"", 65536, LONG, &t).await;
                let stream = tokio::spawn(async move {
                    let chunk = vec![7u8; 1 << 16];
                    // Bounded: stops when the relay closes the connection, or after 1 GiB.
                    for _ in 0..(1 << 14) {
                        if o.write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                });
                let mut buf = vec![0u8; 1 << 16];
                let mut seen = 0;
                while seen < 4 << 20 {
                    seen += c.read(&mut buf).await.expect("read");
                }
                let cancelled = Instant::now();
                if revoke {
                    t.revoked.cancel();
                } else {
                    t.hard_stop.cancel();
                }
                let out = done(task).await;
                assert!(cancelled.elapsed() < Duration::from_secs(1), "{path:?}");
                let want = if revoke { End::Revoked } else { End::Shutdown };
                assert_eq!(out.end, want, "{path:?}");
                assert!(out.down >= 4 << 20, "{path:?}: {}", out.down);
                // The client sees the end of the stream (after what was already in flight).
                let drained = tokio::time::timeout(Duration::from_secs(5), async {
                    loop {
                        match c.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                });
                drained.await.expect("the client connection is closed");
                stream.abort();
            }
        }
    }

    #[tokio::test]
    async fn idle_tunnel_is_closed_after_the_idle_timeout() {
        for path in PATHS {
            let t = Tokens::new();
            let idle = Duration::from_millis(300);
            let (mut c, mut o, task) = start(path, b"", 65536, idle, &t).await;
            // Activity postpones the deadline.
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                c.write_all(b"x").await.expect("write");
                let mut one = [0u8; 1];
                o.read_exact(&mut one).await.expect("read");
            }
            let quiet = Instant::now();
            let out = done(task).await;
            assert_eq!(out.end, End::Idle, "{path:?}");
            let waited = quiet.elapsed();
            assert!(waited >= Duration::from_millis(250), "{path:?} {waited:?}");
            assert_eq!(out.up, 3);
        }
    }

    /// Item 2 of issue 13: an idle tunnel holds no pipe. After traffic both ways, once both
    /// sides are quiet, no pipe is leased although the tunnel is still open; the next bytes
    /// lease one again. (The count is process-wide; nextest runs each test in its own process.)
    #[tokio::test]
    async fn idle_spliced_tunnel_holds_no_pipe() {
        let t = Tokens::new();
        let (mut c, mut o, task) = start(Path::Splice, b"", 65536, LONG, &t).await;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..3 {
            c.write_all(&buf).await.expect("write");
            o.read_exact(&mut buf).await.expect("read");
            o.write_all(&buf).await.expect("write");
            c.read_exact(&mut buf).await.expect("read");
        }
        let quiet = Instant::now() + Duration::from_secs(20);
        while pipes_leased() > 0 {
            assert!(
                Instant::now() < quiet,
                "{} pipes still leased",
                pipes_leased()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!task.is_finished(), "the tunnel is still open");
        c.write_all(b"again").await.expect("write");
        let mut five = [0u8; 5];
        o.read_exact(&mut five).await.expect("read");
        assert_eq!(&five, b"again");
        drop((c, o));
        let out = done(task).await;
        assert!(out.spliced == cfg!(target_os = "linux"));
    }

    /// A reset from one side ends the relay with an error instead of hanging.
    #[tokio::test]
    async fn reset_by_the_origin_ends_the_relay() {
        for path in PATHS {
            let t = Tokens::new();
            let (_c, o, task) = start(path, b"", 65536, LONG, &t).await;
            socket2::SockRef::from(&o)
                .set_linger(Some(Duration::ZERO))
                .expect("linger");
            drop(o);
            let out = done(task).await;
            assert!(
                matches!(out.end, End::Error(_) | End::Done),
                "{path:?} {:?}",
                out.end
            );
        }
    }
}
