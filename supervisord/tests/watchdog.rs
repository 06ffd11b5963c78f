//! systemd's watchdog is fed by the daemon's accept loop: pings arrive on a fake
//! `NOTIFY_SOCKET` while the loop turns, stop while it is stuck, and resume when it turns again.
//!
//! The loop is driven with `block_on` on a thread of its own, as `kennel-supervisord`'s main
//! thread drives it, while the runtime's worker threads stay free: a ping sent from a separate
//! timer task would keep arriving from a worker while the loop is stuck.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should just fail the test

use std::future::Future;
use std::os::unix::net::UnixDatagram;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use kennel_container::fake::FakeBackend;
use kennel_supervisord::auth::Authorizer;
use kennel_supervisord::daemon::{self, Watchdog};
use kennel_supervisord::registry::{Daemon, FixedProxyImage};
use kennel_supervisord::state::StateDir;

/// The shutdown future handed to the loop (the loop polls it on every turn). While `frozen`
/// it blocks the thread polling it — a stand-in for any blocking call made on the loop's thread.
struct Gate {
    frozen: Arc<(Mutex<bool>, Condvar)>,
    blocked: Arc<AtomicBool>,
    stop: tokio::sync::oneshot::Receiver<()>,
}

impl Future for Gate {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let (lock, cvar) = &*self.frozen;
        let mut frozen = lock.lock().unwrap();
        while *frozen {
            self.blocked.store(true, Ordering::SeqCst);
            frozen = cvar.wait(frozen).unwrap();
        }
        drop(frozen);
        self.blocked.store(false, Ordering::SeqCst);
        Pin::new(&mut self.stop).poll(cx).map(|_| ())
    }
}

/// Datagrams received within `window`.
fn pings_within(sock: &UnixDatagram, window: Duration) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return got;
        }
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return got;
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

fn drain(sock: &UnixDatagram) {
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    while sock.recv(&mut buf).is_ok() {}
    sock.set_nonblocking(false).unwrap();
}

#[test]
fn the_accept_loop_feeds_the_watchdog_and_a_stuck_loop_stops_the_pings() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let daemon = Daemon::new(
        Arc::new(FakeBackend::new()),
        Arc::new(FixedProxyImage("kennel-proxy:test".into())),
        StateDir::open(&dir.path().join("state")).unwrap(),
        Authorizer::new(0, [], []),
    );
    let socket = dir.path().join("kennel.sock");
    let listener = rt
        .block_on(async { daemon::bind_socket(&socket, None) })
        .unwrap();
    let frozen = Arc::new((Mutex::new(false), Condvar::new()));
    let blocked = Arc::new(AtomicBool::new(false));
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let gate = Gate {
        frozen: frozen.clone(),
        blocked: blocked.clone(),
        stop: stopped,
    };
    let every = Duration::from_millis(50);
    let handle = rt.handle().clone();
    let main_loop = std::thread::spawn(move || {
        handle.block_on(daemon::run_watched(
            listener,
            daemon,
            gate,
            Some(Watchdog::new(&notify_path, every)),
        ));
    });

    // Turning: a ping every 50 ms.
    let turning = pings_within(&notify, Duration::from_millis(600));
    assert!(
        turning.len() >= 5,
        "pings while the loop turns: {turning:?}"
    );
    assert!(turning.iter().all(|p| p == "WATCHDOG=1\n"), "{turning:?}");

    // Stuck: the next turn blocks its thread; no ping may arrive however long it lasts.
    *frozen.0.lock().unwrap() = true;
    // A client arriving wakes the loop too (it would without a watchdog tick).
    let _client = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !blocked.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the loop never polled its shutdown future"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drain(&notify);
    let stuck = pings_within(&notify, Duration::from_millis(600));
    assert!(
        stuck.is_empty(),
        "{} pings while the accept loop was stuck (fed by something else than the loop)",
        stuck.len()
    );

    // Turning again: pings resume.
    *frozen.0.lock().unwrap() = false;
    frozen.1.notify_all();
    let resumed = pings_within(&notify, Duration::from_millis(600));
    assert!(
        resumed.len() >= 3,
        "pings after the loop resumed: {resumed:?}"
    );

    stop.send(()).unwrap();
    main_loop.join().unwrap();
    // Stopped: no more pings.
    drain(&notify);
    assert!(pings_within(&notify, Duration::from_millis(200)).is_empty());
}

#[test]
fn an_abstract_notify_socket_is_pinged_too() {
    // systemd passes `@…` for abstract sockets.
    let name = format!("kennel-watchdog-test-{}", std::process::id());
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    Watchdog::new(format!("@{name}"), Duration::from_secs(1)).ping();
    let got = pings_within(&sock, Duration::from_secs(2));
    assert_eq!(got, vec!["WATCHDOG=1\n".to_string()]);
}
