//! The real `kennel-supervisord` binary: socket mode and group, systemd notifications
//! (`READY=1`, `STOPPING=1`), the API answering, and a clean exit on SIGTERM.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should just fail the test

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("notification");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The daemon needs a Docker engine to start. Without one: skip (and say why), or fail under CI=true.
fn docker_answers(test: &str) -> bool {
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    let path = host
        .strip_prefix("unix://")
        .unwrap_or("/var/run/docker.sock")
        .to_string();
    let ok = UnixStream::connect(&path).is_ok();
    if !ok {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "{test}: CI=true requires a Docker engine at {path}");
        eprintln!("SKIPPED {test}: no Docker engine at {path}");
    }
    ok
}

#[test]
fn daemon_binary_notifies_systemd_serves_and_stops_on_sigterm() {
    if !docker_answers("daemon_binary_notifies_systemd_serves_and_stops_on_sigterm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/kennel.sock");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_kennel-supervisord"))
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args([
            "--allow-group",
            "100",
            "--proxy-image",
            "kennel-proxy:unused",
        ])
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("KENNEL_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    assert!(recv(&notify).contains("READY=1"));
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "socket mode");
    assert_eq!(meta.gid(), 100, "socket group = first --allow-group");
    let state_mode = std::fs::metadata(dir.path().join("state"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(state_mode & 0o777, 0o700, "state dir mode");

    let mut conn = UnixStream::connect(&socket).unwrap();
    conn.write_all(b"GET /v1/version HTTP/1.1\r\nHost: kennel\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"api\":\"v1\""), "{resp}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    assert!(recv(&notify).contains("STOPPING=1"));
    let mut status = None;
    wait_for("the daemon to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        status.unwrap().success(),
        "exit status {status:?}: {stderr}"
    );
    assert!(stderr.contains("SIGTERM: shutting down"), "{stderr}");
    assert!(!socket.exists(), "socket removed on exit");
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kennel.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kennel-supervisord"))
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--proxy-image", "kennel-proxy:unused"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another kennel-supervisord is already listening on"),
        "{err}"
    );
}

#[test]
fn an_unknown_allowed_group_is_a_clear_start_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kennel-supervisord"))
        .arg("--socket")
        .arg(dir.path().join("k.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--allow-group", "no-such-group-kennel"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown group \"no-such-group-kennel\""),
        "{err}"
    );
}

/// systemd may send SIGTERM at any moment after start, also while the daemon still reconciles
/// with the engine. The handlers were installed only when the shutdown future was first polled
/// (after reconcile and READY), so an early SIGTERM killed the daemon undrained and left its
/// socket behind. Now they are installed before the socket exists.
#[test]
fn sigterm_while_reconciling_is_a_clean_shutdown() {
    if !docker_answers("sigterm_while_reconciling_is_a_clean_shutdown") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kennel.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kennel-supervisord"))
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--proxy-image", "kennel-proxy:unused"])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("KENNEL_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Signal the moment the socket exists: reconcile (an engine round trip) follows it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the socket"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let mut status = None;
    wait_for("the daemon to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.unwrap().code(), Some(0), "{status:?}: {stderr}");
    assert!(!socket.exists(), "socket removed on exit");
}

/// Under systemd (`WATCHDOG_USEC` set, `WATCHDOG_PID` = the daemon), the real binary pings
/// `WATCHDOG=1` every half of the timeout; for another process's `WATCHDOG_PID` it does not.
#[test]
fn daemon_binary_feeds_the_systemd_watchdog() {
    if !docker_answers("daemon_binary_feeds_the_systemd_watchdog") {
        return;
    }
    for (for_us, label) in [(true, "WATCHDOG_PID unset"), (false, "WATCHDOG_PID=1")] {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("kennel.sock");
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kennel-supervisord"));
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--proxy-image", "kennel-proxy:unused"])
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "200000")
            .env_remove("KENNEL_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if for_us {
            cmd.env_remove("WATCHDOG_PID");
        } else {
            // systemd sets it to the main process; a child inheriting it must not ping.
            cmd.env("WATCHDOG_PID", "1");
        }
        let mut child = cmd.spawn().unwrap();
        assert!(recv(&notify).contains("READY=1"), "{label}");
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut pings = 0;
        let window = Instant::now() + Duration::from_millis(1000);
        let mut buf = [0u8; 256];
        while Instant::now() < window {
            if let Ok(n) = notify.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1")
            {
                pings += 1;
            }
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
            nix::sys::signal::SIGTERM,
        )
        .unwrap();
        let mut status = None;
        wait_for("the daemon to exit", || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        if for_us {
            // Every 100 ms for a second, give or take scheduling on a busy machine.
            assert!(pings >= 5, "{label}: {pings} pings in 1 s");
        } else {
            assert_eq!(pings, 0, "{label}");
        }
    }
}
