//! Tests of the real `kennel-proxy` binary: start-up output, config errors, SIGTERM drain, and
//! an accept loop that survives fd exhaustion. Only loopback is used.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_kennel-proxy");

/// Kills the child if a test fails half-way.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the binary; return it and a channel of its stderr lines.
fn start(args: &[&str], pre: Option<&str>) -> (Proc, mpsc::Receiver<String>) {
    let mut cmd = match pre {
        // Run through sh to apply a resource limit first (`ulimit -n`).
        Some(pre) => {
            let mut c = Command::new("sh");
            let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
            c.args(["-c", &format!("{pre}; exec {BIN} {}", quoted.join(" "))]);
            c
        }
        None => {
            let mut c = Command::new(BIN);
            c.args(args);
            c
        }
    };
    let mut child = cmd
        .env("KENNEL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kennel-proxy");
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Proc(child), rx)
}

/// Wait (≤ 10 s) for a stderr line containing `needle`; returns it and everything seen.
fn wait_line(rx: &mpsc::Receiver<String>, needle: &str) -> (String, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                if l.contains(needle) {
                    return (l, seen);
                }
                seen.push(l);
            }
            Err(_) => break,
        }
    }
    panic!("no line containing {needle:?} on stderr; saw {seen:#?}");
}

fn listen_addr(line: &str) -> SocketAddr {
    line.rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

fn wait_exit(p: &mut Proc, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = p.0.try_wait().expect("try_wait") {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "kennel-proxy did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sig(p: &Proc, s: i32) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(p.0.id()).expect("pid fits in i32"));
    let signal = nix::sys::signal::Signal::try_from(s).expect("a valid signal number");
    nix::sys::signal::kill(pid, signal).expect("signal our own child");
}

/// Echo server on loopback (std threads).
fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut r = s.try_clone().expect("clone");
                let mut w = s;
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

fn write_config(dir: &Path, echo_port: u16, extra: &str) -> std::path::PathBuf {
    std::fs::write(
        dir.join("policy.toml"),
        format!("[defaults]\nports = [{echo_port}]\n[allow]\nhosts = [\"echo.test\"]\ncidrs = [\"127.0.0.0/8\"]\n"),
    )
    .expect("write policy");
    let cfg = dir.join("kennel-proxy.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nplaintext_tunnel_ports = [{echo_port}]\n[policy]\nfile = \"policy.toml\"\n[access_log]\ndestination = \"off\"\n[resolver]\nstatic_only = true\nhosts = {{ \"echo.test\" = [\"127.0.0.1\"] }}\n{extra}"
        ),
    )
    .expect("write config");
    cfg
}

fn tunnel(proxy: SocketAddr, authority: &str) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(proxy)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\n\r\n").as_bytes())?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            break;
        }
        head.push(b[0]);
    }
    if head.starts_with(b"HTTP/1.1 200") {
        Ok(s)
    } else {
        Err(std::io::Error::other(
            String::from_utf8_lossy(&head).to_string(),
        ))
    }
}

fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).expect("write");
    let mut b = vec![0u8; msg.len()];
    s.read_exact(&mut b).expect("read echo");
    assert_eq!(b, msg);
}

#[test]
fn sigterm_stops_accepting_drains_live_tunnel_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = echo();
    let cfg = write_config(dir.path(), e.port(), "[limits]\ndrain_timeout_ms = 20000\n");
    let (mut p, rx) = start(&["--config", cfg.to_str().expect("utf8")], None);
    let (line, _) = wait_line(&rx, "listening on");
    let addr = listen_addr(&line);
    let auth = format!("echo.test:{}", e.port());
    let mut t = tunnel(addr, &auth).expect("tunnel");
    roundtrip(&mut t, b"before\n");

    sig(&p, libc::SIGTERM);
    wait_line(&rx, "shutting down");
    // New connections are refused once the listener is closed …
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // … while the live tunnel keeps working and the process waits for it.
    roundtrip(&mut t, b"during drain\n");
    assert!(
        p.0.try_wait().expect("try_wait").is_none(),
        "exited before the live tunnel finished"
    );
    t.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    let _ = t.read_to_end(&mut rest);
    let status = wait_exit(&mut p, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[test]
fn drain_deadline_closes_remaining_tunnels_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = echo();
    let cfg = write_config(dir.path(), e.port(), "[limits]\ndrain_timeout_ms = 300\n");
    let (mut p, rx) = start(&["--config", cfg.to_str().expect("utf8")], None);
    let addr = listen_addr(&wait_line(&rx, "listening on").0);
    let mut t = tunnel(addr, &format!("echo.test:{}", e.port())).expect("tunnel");
    roundtrip(&mut t, b"x\n");
    sig(&p, libc::SIGINT);
    let status = wait_exit(&mut p, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    let mut b = [0u8; 8];
    assert!(
        matches!(t.read(&mut b), Ok(0) | Err(_)),
        "tunnel left open after exit"
    );
}

#[test]
fn no_arguments_listens_on_8888_with_the_embedded_policy() {
    // Only when the default ports are free on this machine (another kennel-proxy may run).
    for port in [8888, 9901] {
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            eprintln!("skipping: 127.0.0.1:{port} is in use");
            return;
        }
    }
    let (mut p, rx) = start(&[], None);
    let (line, _) = wait_line(&rx, "listening on");
    assert!(line.ends_with("listening on 127.0.0.1:8888"), "{line}");
    let (policy, _) = wait_line(&rx, "policy in force");
    assert!(policy.contains("embedded default policy"), "{policy}");
    // A host outside the embedded default list is denied with the explanation.
    let mut s = TcpStream::connect("127.0.0.1:8888").expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"CONNECT evil.example:443 HTTP/1.1\r\n\r\n")
        .expect("write");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(
        resp.contains("kennel: egress to evil.example:443 denied (not in allowlist)"),
        "{resp}"
    );
    sig(&p, libc::SIGTERM);
    assert_eq!(wait_exit(&mut p, Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn config_errors_name_file_line_and_key_and_exit_nonzero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "listen = [\"127.0.0.1:0\"]\n\n[limits]\nheader_timeout = 5\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().expect("utf8")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:4:", cfg.display())), "{err}");
    assert!(err.contains("header_timeout"), "{err}");

    std::fs::write(
        &cfg,
        "listen = [\"127.0.0.1:0\"]\n[policy]\nfile = \"missing.toml\"\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().expect("utf8"), "--check"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn accept_loop_survives_fd_exhaustion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = echo();
    let cfg = write_config(dir.path(), e.port(), "");
    // 64 fds: a few dozen tunnels (2 fds each in the proxy) exhaust them.
    let (mut p, rx) = start(
        &["--config", cfg.to_str().expect("utf8")],
        Some("ulimit -n 64"),
    );
    let addr = listen_addr(&wait_line(&rx, "listening on").0);
    let auth = format!("echo.test:{}", e.port());
    // Idle client connections cost the proxy one fd each: 80 of them exhaust its 64.
    let held: Vec<TcpStream> = (0..80)
        .map(|_| TcpStream::connect(addr).expect("connect (backlog)"))
        .collect();
    wait_line(&rx, "accept failed");
    // Free the fds: the proxy must serve again (bounded retries while it backs off).
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut t) = tunnel(addr, &auth) {
            roundtrip(&mut t, b"alive\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "proxy did not recover after fds were freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(p.0.try_wait().expect("try_wait").is_none(), "proxy died");
    sig(&p, libc::SIGTERM);
    assert_eq!(wait_exit(&mut p, Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn sighup_reloads_the_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = echo();
    let cfg = write_config(
        dir.path(),
        e.port(),
        "", // watch stays on, but the edit below is checked right after SIGHUP
    );
    let text = std::fs::read_to_string(&cfg)
        .expect("read")
        .replace("[policy]\n", "[policy]\nwatch = false\n");
    std::fs::write(&cfg, text).expect("write");
    let (mut p, rx) = start(&["--config", cfg.to_str().expect("utf8")], None);
    let addr = listen_addr(&wait_line(&rx, "listening on").0);
    let auth = format!("echo.test:{}", e.port());
    let mut t = tunnel(addr, &auth).expect("tunnel");
    roundtrip(&mut t, b"1\n");
    // Revoke echo.test and SIGHUP: the live tunnel is closed and new ones are denied.
    std::fs::write(
        dir.path().join("policy.toml"),
        format!("[defaults]\nports = [{}]\n[allow]\nhosts = [\"other.test\"]\ncidrs = [\"127.0.0.0/8\"]\n", e.port()),
    )
    .expect("write policy");
    sig(&p, libc::SIGHUP);
    wait_line(&rx, "SIGHUP: policy in force");
    let mut b = [0u8; 4];
    assert!(
        matches!(t.read(&mut b), Ok(0) | Err(_)),
        "revoked tunnel still open"
    );
    let denied = tunnel(addr, &auth).expect_err("denied after reload");
    assert!(denied.to_string().starts_with("HTTP/1.1 403"), "{denied}");
    sig(&p, libc::SIGTERM);
    assert_eq!(wait_exit(&mut p, Duration::from_secs(10)).code(), Some(0));
}

/// Runs `kennel-proxy --check` (embedded policy) with exactly the log variables given.
fn check_with_log_env(vars: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--check")
        .env_remove("KENNEL_LOG")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("run kennel-proxy --check")
}

/// Issue 9 item 7: the proxy containers were given `RUST_LOG`, which the proxy ignored; both
/// names must work, `KENNEL_LOG` winning.
#[test]
fn rust_log_is_honoured_as_an_alias_and_kennel_log_wins() {
    let debug_line = "loading configuration";
    let out = check_with_log_env(&[("RUST_LOG", "debug")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(debug_line), "RUST_LOG=debug ignored: {err}");

    let out = check_with_log_env(&[("KENNEL_LOG", "debug")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(debug_line), "KENNEL_LOG=debug ignored: {err}");

    let out = check_with_log_env(&[("KENNEL_LOG", "warn"), ("RUST_LOG", "debug")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains(debug_line),
        "RUST_LOG won over KENNEL_LOG: {err}"
    );

    let out = check_with_log_env(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains(debug_line), "default is not info: {err}");
}

/// Issue 15: the three binaries share one subscriber set-up; an invalid filter is reported
/// naming the binary and the variable, and the default applies (no silent fallback, no exit).
#[test]
fn invalid_log_filter_is_reported_and_the_default_applies() {
    let out = check_with_log_env(&[("KENNEL_LOG", "kennel_proxy=[")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "kennel-proxy: warning: KENNEL_LOG=\"kennel_proxy=[\" is not a valid log filter"
        ),
        "{err}"
    );
    assert!(err.contains("; using info"), "{err}");
    assert!(!err.contains("loading configuration"), "not info: {err}");
}

/// Issue 9 item 7: log lines piped to a file or `docker logs` carried ANSI colour codes.
#[test]
fn piped_stderr_carries_no_ansi_escape_codes() {
    let out = check_with_log_env(&[("KENNEL_LOG", "debug")]);
    assert!(!out.stderr.is_empty(), "nothing logged: {out:?}");
    assert!(
        !out.stderr.contains(&0x1b),
        "ESC in piped stderr: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The serving path too (its INFO lines were the coloured ones).
    let dir = tempfile::tempdir().expect("tempdir");
    let e = echo();
    let cfg = write_config(dir.path(), e.port(), "");
    let (p, rx) = start(&["--config", cfg.to_str().expect("utf8")], None);
    let (line, seen) = wait_line(&rx, "listening on");
    for l in seen.iter().chain([&line]) {
        assert!(!l.contains('\u{1b}'), "ESC in piped stderr: {l:?}");
    }
    drop(p); // kills it
}

/// Issue 9 item 10: `--check` said nothing about where traffic goes; it prints the upstream
/// routes (never their credentials) and the legacy variables it applied, with their origin.
#[test]
fn check_prints_upstream_routes_without_credentials_and_the_legacy_variables_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("policy.toml"),
        "[allow]\nhosts = [\"a.example\"]\n[upstream]\ndefault = \"http://alice:s3cret@127.0.0.1:3128\"\n[[upstream.route]]\nhosts = [\".corp.example\"]\ncidrs = [\"10.0.0.0/8\"]\nvia = \"socks5h://bob:hunter2@127.0.0.1:1080\"\n",
    )
    .expect("write policy");
    std::fs::write(
        dir.path().join(".env"),
        "UPSTREAM_SOCKS5=127.0.0.1:8900\nNO_UPSTREAM=intranet.lan\nUSER_WHITELIST_DOMAINS=extra.example\n",
    )
    .expect("write .env");
    let cfg = dir.path().join("kennel-proxy.toml");
    std::fs::write(
        &cfg,
        "listen = [\"127.0.0.1:0\"]\n[policy]\nfile = \"policy.toml\"\ndotenv = \".env\"\n[access_log]\ndestination = \"off\"\n",
    )
    .expect("write config");
    let mut cmd = Command::new(BIN);
    cmd.args(["--config", cfg.to_str().expect("utf8"), "--check"]);
    for v in [
        "UPSTREAM_SOCKS5",
        "UPSTREAM_PROXY",
        "UPSTREAM_PROXY_TYPE",
        "UPSTREAM_PROXY_HOST",
        "UPSTREAM_PROXY_PORT",
        "NO_UPSTREAM",
        "USER_WHITELIST_DOMAINS",
    ] {
        cmd.env_remove(v);
    }
    // From the process environment, under the .env file's UPSTREAM_SOCKS5.
    let out = cmd
        .env("UPSTREAM_HTTP", "127.0.0.1:3129")
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let env_file = dir.path().join(".env");
    let env_file = env_file.display();
    for want in [
        "upstream default: http://127.0.0.1:3128".to_string(),
        "upstream route: .corp.example, 10.0.0.0/8 -> socks5h://127.0.0.1:1080".to_string(),
        "upstream route: .intranet.lan -> direct".to_string(),
        format!(
            "legacy: UPSTREAM_SOCKS5 ({env_file}:1): default upstream socks5h://127.0.0.1:8900 (not applied: the policy sets [upstream] default)"
        ),
        "legacy: UPSTREAM_HTTP (environment): ignored: UPSTREAM_SOCKS5".to_string(),
        format!("legacy: NO_UPSTREAM ({env_file}:2): direct (no upstream) for .intranet.lan"),
        format!("legacy: USER_WHITELIST_DOMAINS ({env_file}:3): allowed: .extra.example"),
    ] {
        assert!(stdout.contains(&want), "missing {want:?} in:\n{stdout}");
    }
    for secret in ["alice", "s3cret", "bob", "hunter2"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} printed:\n{stdout}{stderr}"
        );
    }
    // The ignored UPSTREAM_HTTP is also a warning on stderr.
    assert!(
        stderr.contains("$UPSTREAM_HTTP: warning: UPSTREAM_HTTP is ignored"),
        "{stderr}"
    );
}

/// A supervisor (systemd, the daemon, a test) may send SIGTERM as soon as the proxy says where it
/// listens. The handlers must already be installed then, or the default action kills the process
/// without draining and without exit code 0 (found by the issue-9 session, which saw it die from
/// the signal).
#[test]
fn sigterm_right_after_the_listening_line_is_a_clean_shutdown() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = echo();
        let cfg = write_config(dir.path(), e.port(), "");
        let (mut p, rx) = start(&["--config", cfg.to_str().expect("utf8")], None);
        wait_line(&rx, "listening on");
        sig(&p, libc::SIGTERM);
        let status = wait_exit(&mut p, Duration::from_secs(10));
        assert_eq!(status.code(), Some(0), "exit status {status:?}");
    }
}

/// Pinned to one CPU (taskset, or a container limited to one) the proxy runs on the
/// current-thread scheduler, and everything a run needs still works on it: tunnels, and the
/// SIGTERM drain with a live tunnel. With more CPUs it keeps the multi-thread scheduler.
#[test]
fn on_one_cpu_the_proxy_runs_on_the_current_thread_scheduler() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = echo();
    let cfg = write_config(dir.path(), e.port(), "[limits]\ndrain_timeout_ms = 20000\n");
    let cfg = cfg.to_str().expect("utf8");
    // Affinity is inherited across exec: pin the shell, then it becomes the proxy.
    let (mut p, rx) = start(&["--config", cfg], Some("taskset -cp 0 $$ >/dev/null"));
    let (line, seen) = wait_line(&rx, "listening on");
    assert!(
        seen.iter()
            .any(|l| l.contains("runtime") && l.contains("current-thread") && l.contains("cpus=1")),
        "{seen:?}"
    );
    let addr = listen_addr(&line);
    let mut t = tunnel(addr, &format!("echo.test:{}", e.port())).expect("tunnel");
    roundtrip(&mut t, b"one cpu\n");
    sig(&p, libc::SIGTERM);
    wait_line(&rx, "shutting down");
    roundtrip(&mut t, b"during drain\n");
    t.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    let _ = t.read_to_end(&mut rest);
    let status = wait_exit(&mut p, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");

    if std::thread::available_parallelism().is_ok_and(|n| n.get() > 1) {
        let (_p, rx) = start(&["--config", cfg], None);
        let (_, seen) = wait_line(&rx, "listening on");
        assert!(
            seen.iter()
                .any(|l| l.contains("runtime") && l.contains("multi-thread")),
            "{seen:?}"
        );
    }
}
