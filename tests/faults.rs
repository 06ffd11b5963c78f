//! Load and fault tests of kennel-proxy (issue 14, item 2): floods, resets, vanishing clients, a
//! policy file torn under load, fd exhaustion, and the memory cost of idle tunnels; and of the
//! daemon: its state directory full, the Docker engine restarting under it (simulated: see that
//! test). Every test asserts what a user sees (statuses, closed connections, metrics, access log,
//! API errors).
//!
//! Traffic goes to loopback only. Every loop is bounded in count and in time. Heavy sizes run with
//! `KENNEL_HEAVY_TESTS=1`; the default sizes keep the module well under a minute.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kennel_test_support::origin;
use kennel_test_support::proxy_harness::{TestProxy, connect_tunnel, raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn heavy() -> bool {
    std::env::var_os("KENNEL_HEAVY_TESTS").is_some_and(|v| v == "1")
}

fn policy(ports: &[u16], hosts: &[&str], extra: &str) -> String {
    format!(
        "[defaults]\nports = {ports:?}\n[allow]\nhosts = {hosts:?}\ncidrs = [\"127.0.0.0/8\"]\n{extra}\n"
    )
}

/// Raise this process's RLIMIT_NOFILE to at least `want` (the tests run as root in CI and here,
/// so the hard limit may be raised too; otherwise up to the hard limit).
fn raise_nofile(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= want {
        return;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard)).is_err() {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Status code and body of one `GET url` sent through the proxy at `proxy` with
/// `Connection: close`, all within `within`.
async fn get(proxy: SocketAddr, url: &str, within: Duration) -> anyhow::Result<(u16, Vec<u8>)> {
    let host = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .unwrap_or_default()
        .to_string();
    let req = format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let out = tokio::time::timeout(within, async {
        let mut s = TcpStream::connect(proxy).await?;
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    })
    .await
    .map_err(|_| anyhow::anyhow!("GET {url}: no complete answer within {within:?}"))??;
    let status = out
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("GET {url}: not an HTTP response: {out:?}"))?;
    let body = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| out[i + 4..].to_vec())
        .unwrap_or_default();
    Ok((status, body))
}

/// Wait (≤ `within`) until `metric` of `proxy` equals `want`; returns the last value seen.
async fn wait_metric(proxy: &TestProxy, metric: &str, want: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let v = proxy.metric(metric).await.expect("read /metrics");
        if v == want || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Close `s` with a TCP reset instead of a FIN (SO_LINGER 0): a peer that crashed or vanished.
fn reset_on_close(s: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt::Linger};
    let zero = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(&s.as_fd(), Linger, &zero).expect("SO_LINGER 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_flood_does_not_starve_normal_clients() {
    let flood = if heavy() { 1000 } else { 200 };
    raise_nofile(4 * flood + 1024);
    let o = origin::http(origin::loopback().await, "busy");
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["origin.test"], ""),
        &[("origin.test", LO)],
        |c| c.limits.header_timeout_ms = 2_000,
    )
    .await
    .expect("start the proxy");
    let addr = proxy.proxy.proxy_addr();
    let baseline = proxy
        .metric("kennel_proxy_connections_active")
        .await
        .expect("metrics");

    // The flood: each client sends the start of a head, then one byte a second, and records when
    // the proxy closed it. Bounded: at most 8 bytes (8 s) per client.
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..flood {
        slow.spawn(async move {
            let started = Instant::now();
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(b"GET http://origin.test/ HTTP/1.1\r\nX-Slow: ")
                .await?;
            for _ in 0..8 {
                let mut b = [0u8; 256];
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Ok(Some(started.elapsed())),
                    Ok(Ok(_)) | Err(_) => {}
                }
                if s.write_all(b"a").await.is_err() {
                    return Ok(Some(started.elapsed()));
                }
            }
            Ok::<_, std::io::Error>(None)
        });
    }

    // Normal clients, while the flood is on: 4 workers × 10 requests, each answered within 2 s.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = format!("http://origin.test:{p}/");
    let mut normal = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = url.clone();
        normal.spawn(async move {
            let mut worst = Duration::ZERO;
            for _ in 0..10 {
                let t = Instant::now();
                let (status, _) = get(addr, &url, Duration::from_secs(2)).await?;
                anyhow::ensure!(status == 200, "normal client got {status}");
                worst = worst.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<_, anyhow::Error>(worst)
        });
    }
    while let Some(r) = normal.join_next().await {
        let worst = r
            .expect("worker task")
            .expect("normal client served during the flood");
        eprintln!("slowest normal request during the flood: {worst:?}");
    }

    // Every slow client was closed by the header timeout (2 s), not left hanging.
    let mut closed = Vec::new();
    while let Some(r) = slow.join_next().await {
        let r = r.expect("flood task").expect("flood client connects");
        closed.push(r.expect("a slowloris client was never closed"));
    }
    let late = closed.iter().max().copied().unwrap_or_default();
    assert!(
        late < Duration::from_secs(5),
        "slow clients closed after up to {late:?}"
    );
    assert_eq!(
        wait_metric(
            &proxy,
            "kennel_proxy_connections_active",
            baseline,
            Duration::from_secs(5)
        )
        .await,
        baseline,
        "connections back to baseline"
    );
    assert_eq!(o.hits(), 40, "only the normal requests reached the origin");
}

/// An origin that answers `GET` with a 200 announcing 1 MB, sends 10 kB of it, then resets.
fn resetting_origin(listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                    .await;
                let _ = s.write_all(&[b'x'; 10_000]).await;
                let _ = s.flush().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                reset_on_close(&s);
            });
        }
    })
}

#[tokio::test]
async fn origin_reset_mid_body_is_an_error_for_that_client_only() {
    let l = origin::loopback().await;
    let rp = l.local_addr().expect("addr").port();
    let reset = resetting_origin(l);
    let good = origin::http(origin::loopback().await, "good");
    let gp = good.addr.port();
    let proxy = TestProxy::start(
        &policy(&[rp, gp], &["reset.test", "good.test"], ""),
        &[("reset.test", LO), ("good.test", LO)],
        |_| {},
    )
    .await
    .expect("start the proxy");
    let addr = proxy.proxy.proxy_addr();

    for round in 0..3 {
        // The client sees the response start and then a connection that ends short of the
        // announced length (an error for any HTTP client), never a complete-looking response.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET http://reset.test:{rp}/big HTTP/1.1\r\nHost: reset.test:{rp}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("send");
        let mut out = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        assert!(
            r.is_ok(),
            "round {round}: connection left open after the reset"
        );
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "round {round}: {text:.200}"
        );
        let body = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| out.len() - i - 4)
            .unwrap_or(0);
        assert!(
            body < 1_000_000,
            "round {round}: a truncated body was completed ({body} bytes)"
        );

        // The proxy keeps serving others.
        let (status, _) = get(
            addr,
            &format!("http://good.test:{gp}/"),
            Duration::from_secs(5),
        )
        .await
        .expect("good origin through the proxy");
        assert_eq!(status, 200, "round {round}");
    }
    // The access log says the request failed at the origin, mid-body.
    let rec = proxy
        .wait_log(|r| r["host"] == "reset.test" && !r["error"].is_null())
        .await
        .expect("access-log record of the reset");
    assert_eq!(rec["reason"], "origin_error", "{rec}");
    assert!(
        rec["error"].as_str().unwrap_or_default().contains("body"),
        "{rec}"
    );
    reset.abort();
}

/// The access-log record of a response cut by an origin reset states what the client got: the
/// 200 head it was sent and the body bytes relayed before the reset.
#[tokio::test]
async fn origin_reset_mid_body_is_logged_as_what_the_client_saw() {
    let l = origin::loopback().await;
    let rp = l.local_addr().expect("addr").port();
    let reset = resetting_origin(l);
    let proxy = TestProxy::start(
        &policy(&[rp], &["reset.test"], ""),
        &[("reset.test", LO)],
        |_| {},
    )
    .await
    .expect("start the proxy");
    let mut s = TcpStream::connect(proxy.proxy.proxy_addr())
        .await
        .expect("connect");
    s.write_all(
        format!("GET http://reset.test:{rp}/big HTTP/1.1\r\nHost: reset.test:{rp}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("send");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let body = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| out.len() - i - 4)
        .unwrap_or(0);
    assert!(out.starts_with(b"HTTP/1.1 200"), "client saw the 200 head");
    let rec = proxy
        .wait_log(|r| r["host"] == "reset.test")
        .await
        .expect("access-log record");
    assert_eq!(rec["status"], 200, "{rec}");
    assert_eq!(rec["bytes_down"].as_u64(), Some(body as u64), "{rec}");
    reset.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_tunnel_returns_connections_to_baseline() {
    let o = origin::echo(origin::loopback().await);
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["echo.test"], ""),
        &[("echo.test", LO)],
        |c| c.plaintext_tunnel_ports = vec![p],
    )
    .await
    .expect("start the proxy");
    let addr = proxy.proxy.proxy_addr();
    let baseline = proxy
        .metric("kennel_proxy_connections_active")
        .await
        .expect("metrics");

    let n = 60;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        set.spawn(async move {
            let mut t = connect_tunnel(addr, &format!("echo.test:{p}")).await?;
            t.write_all(b"hello\n").await?;
            let mut b = [0u8; 6];
            tokio::time::timeout(Duration::from_secs(5), t.read_exact(&mut b)).await??;
            // Mid-transfer: 256 KiB on their way (the echo sends them back, unread).
            let chunk = vec![b'z'; 64 * 1024];
            for _ in 0..4 {
                let _ = tokio::time::timeout(Duration::from_millis(200), t.write_all(&chunk)).await;
            }
            // Half vanish with a reset (a killed process), half with a plain close.
            if i % 2 == 0 {
                reset_on_close(&t);
            }
            drop(t);
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("client task").expect("tunnel before vanishing");
    }
    assert_eq!(
        wait_metric(
            &proxy,
            "kennel_proxy_connections_active",
            baseline,
            Duration::from_secs(5)
        )
        .await,
        baseline,
        "connection count back to baseline"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proxy.proxy.shared().registry.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(proxy.proxy.shared().registry.len(), 0, "tunnels left open");
    // And the proxy still tunnels.
    let mut t = connect_tunnel(addr, &format!("echo.test:{p}"))
        .await
        .expect("tunnel after the vanishing clients");
    t.write_all(b"again\n").await.expect("write");
    let mut b = [0u8; 6];
    t.read_exact(&mut b).await.expect("echo");
    assert_eq!(&b, b"again\n");
}

/// Old and new policies for the reload test: `keep.test` is always allowed, `trap.test` always
/// denied (by a `[deny]` at the END of the file, so a policy read only half-way would allow it),
/// `old.test` only by the old one, `new.test` only by the new one.
fn torn_policy(port: u16, allowed: &str) -> String {
    format!(
        "[defaults]\nports = [{port}]\n[allow]\nhosts = [\".test\"]\ncidrs = [\"127.0.0.0/8\"]\n[deny]\nhosts = [\"{}\", \"trap.test\"]\n",
        if allowed == "old.test" {
            "new.test"
        } else {
            "old.test"
        }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_file_torn_while_clients_request_is_never_half_read() {
    let clients = if heavy() { 100 } else { 50 };
    raise_nofile(4096);
    let o = origin::http(origin::loopback().await, "any");
    let p = o.addr.port();
    let hosts: Vec<(&str, IpAddr)> = ["keep.test", "old.test", "new.test", "trap.test"]
        .into_iter()
        .map(|h| (h, LO))
        .collect();
    let proxy = TestProxy::start(&torn_policy(p, "old.test"), &hosts, |_| {})
        .await
        .expect("start the proxy");
    let addr = proxy.proxy.proxy_addr();
    let failed = "kennel_proxy_reloads_total{result=\"failed\"}";

    // Clients: each asks for all four hosts in turn until told to stop (bounded: ≤ 200 rounds).
    // A response is acceptable if the old or the new policy gives it; anything else is a request
    // decided by a policy that was neither.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let revoked = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (stop, served, revoked) = (stop.clone(), served.clone(), revoked.clone());
        set.spawn(async move {
            let mut bad = Vec::new();
            for round in 0..200 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let host = ["keep.test", "old.test", "new.test", "trap.test"][(c + round) % 4];
                let status =
                    match get(addr, &format!("http://{host}:{p}/"), Duration::from_secs(5)).await {
                        Ok((s, _)) => s,
                        // A request to old.test in flight when the new policy revokes it is
                        // closed without an answer (revocation closes live connections): that is
                        // the new policy's answer, not a torn one.
                        Err(_) if host == "old.test" => {
                            revoked.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        Err(e) => {
                            bad.push(format!("{host}: {e}"));
                            continue;
                        }
                    };
                served.fetch_add(1, Ordering::SeqCst);
                let ok = match host {
                    "keep.test" => status == 200,
                    "trap.test" => status == 403,
                    _ => status == 200 || status == 403,
                };
                if !ok {
                    bad.push(format!("{host}: {status}"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            bad
        });
    }

    // Until a failed reload is counted (≤ 5 s), then check that the old policy is still in force.
    async fn failed_and_old_kept(proxy: &TestProxy, failed: &str, before: u64, p: u16, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while proxy.metric(failed).await.expect("metrics") <= before {
            assert!(
                Instant::now() < deadline,
                "{what}: no failed reload counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let addr = proxy.proxy.proxy_addr();
        for (host, want) in [("old.test", 200), ("new.test", 403)] {
            let (status, _) = get(addr, &format!("http://{host}:{p}/"), Duration::from_secs(5))
                .await
                .expect("request after the edit");
            assert_eq!(status, want, "{what}: {host} (old policy not kept)");
        }
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = proxy.policy_path.clone();
    let full_new = torn_policy(p, "new.test");
    // 1. Written in place, half-way (cut inside the deny list) and left like that.
    let before = proxy.metric(failed).await.expect("metrics");
    let half = &full_new[..full_new.find("trap").expect("deny list")];
    std::fs::write(&path, half).expect("write half");
    failed_and_old_kept(&proxy, failed, before, p, "half-written").await;
    // 2. Replaced by garbage.
    let before = proxy.metric(failed).await.expect("metrics");
    std::fs::write(&path, b"\x00\xff[allow\nhosts = = \"\xfe\n").expect("write garbage");
    failed_and_old_kept(&proxy, failed, before, p, "garbage").await;
    // 3. Deleted.
    let before = proxy.metric(failed).await.expect("metrics");
    std::fs::remove_file(&path).expect("delete");
    failed_and_old_kept(&proxy, failed, before, p, "deleted").await;
    // 4. Recreated in place (create, then the content in two writes a moment apart).
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&path).expect("recreate");
        let (a, b) = full_new.split_at(full_new.len() / 2);
        f.write_all(a.as_bytes()).expect("write");
        f.sync_all().expect("sync");
        tokio::time::sleep(Duration::from_millis(10)).await;
        f.write_all(b.as_bytes()).expect("write");
    }
    // The new policy takes effect (≤ 5 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, _) = get(
            addr,
            &format!("http://new.test:{p}/"),
            Duration::from_secs(5),
        )
        .await
        .expect("request");
        if s == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "new policy never took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, _) = get(
        addr,
        &format!("http://old.test:{p}/"),
        Duration::from_secs(5),
    )
    .await
    .expect("request");
    assert_eq!(s, 403, "old.test under the new policy");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);

    let mut bad = Vec::new();
    while let Some(r) = set.join_next().await {
        bad.extend(r.expect("client task"));
    }
    eprintln!(
        "{} answers, {} in-flight old.test requests closed by the revocation",
        served.load(Ordering::SeqCst),
        revoked.load(Ordering::SeqCst)
    );
    assert!(
        bad.is_empty(),
        "{} of {} answers came from neither policy: {:?}",
        bad.len(),
        served.load(Ordering::SeqCst),
        &bad[..bad.len().min(20)]
    );
    assert!(
        served.load(Ordering::SeqCst) >= clients as u64,
        "clients were hardly served"
    );
    assert!(proxy.metric(failed).await.expect("metrics") >= 3);
}

/// A policy file truncated to zero bytes (`: > policy.toml`, or an editor that truncates and then
/// dies before writing) is a torn file, not a new policy: the old one stays in force.
#[tokio::test]
async fn policy_file_truncated_to_zero_bytes_keeps_the_old_policy() {
    let o = origin::http(origin::loopback().await, "any");
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &torn_policy(p, "old.test"),
        &[("keep.test", LO), ("old.test", LO)],
        |_| {},
    )
    .await
    .expect("start the proxy");
    let addr = proxy.proxy.proxy_addr();
    std::fs::File::create(&proxy.policy_path).expect("truncate");
    // Long enough for the watcher (50 ms debounce) to have read it several times.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    for host in ["keep.test", "old.test"] {
        let (status, _) = get(addr, &format!("http://{host}:{p}/"), Duration::from_secs(5))
            .await
            .expect("request");
        assert_eq!(
            status,
            200,
            "{host} after truncation (generation {}): {:?}",
            proxy.proxy.store().generation(),
            proxy.log().last()
        );
    }
}

/// The `kennel-proxy` binary: `$KENNEL_PROXY_BIN`, else built next to this test binary
/// (`cargo build -p kennel-proxy`, a no-op when it is fresh; bounded to 10 minutes).
fn proxy_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("KENNEL_PROXY_BIN") {
            return PathBuf::from(p);
        }
        // target/<profile>/deps/tests-HASH → target/<profile>/kennel-proxy
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary in target/<profile>/deps");
        let bin = dir.join("kennel-proxy");
        let mut cmd = Command::new(env!("CARGO"));
        // A clean environment: the test runner's variables (CARGO_*, OUT_DIR …) would change
        // build-script fingerprints and make cargo rebuild dependencies on every alternation.
        cmd.env_clear();
        for var in [
            "PATH",
            "HOME",
            "CARGO_HOME",
            "RUSTUP_HOME",
            "RUSTUP_TOOLCHAIN",
            "CARGO_TARGET_DIR",
            "RUSTFLAGS",
        ] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        cmd.args(["build", "-q", "-p", "kennel-proxy", "--bin", "kennel-proxy"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let mut child = cmd.spawn().expect("run cargo build");
        let deadline = Instant::now() + Duration::from_secs(600);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for cargo") {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(
            status.is_some_and(|s| s.success()) || bin.is_file(),
            "could not build kennel-proxy (set KENNEL_PROXY_BIN)"
        );
        bin
    })
    .clone()
}

/// A `kennel-proxy` process started through `sh -c 'ulimit -n N; exec …'`; killed on drop.
struct ProxyProcess {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
    lines: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ProxyProcess {
    /// Start with `nofile` as its fd limit, `policy` as its policy file and `extra` appended to
    /// its config; waits (≤ 30 s) until it prints its proxy and admin addresses.
    fn start(nofile: u64, policy: &str, extra: &str) -> ProxyProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("policy.toml"), policy).expect("write policy");
        let cfg = dir.path().join("kennel-proxy.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\n{extra}\n[policy]\nfile = \"policy.toml\"\n[access_log]\ndestination = \"off\"\n"
            ),
        )
        .expect("write config");
        let script = format!(
            "ulimit -n {nofile} && exec '{}' --config '{}'",
            proxy_bin().display(),
            cfg.display()
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .env("KENNEL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kennel-proxy");
        let err = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = ProxyProcess {
            child,
            proxy: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            lines,
            _dir: dir,
        };
        let addr_of = |line: &str| -> SocketAddr {
            line.split_whitespace()
                .last()
                .map(|a| a.trim_start_matches("http://").trim_end_matches('/'))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no address in {line:?}"))
        };
        p.proxy = addr_of(&p.wait_line("listening on"));
        p.admin = addr_of(&p.wait_line("admin (metrics"));
        p
    }

    /// Wait (≤ 30 s) for a stderr line containing `needle`.
    fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        panic!("no line with {needle:?} from kennel-proxy; saw: {seen:#?}")
    }

    /// One metrics series of the process's admin endpoint, or 0.
    async fn metric(&self, series: &str) -> anyhow::Result<u64> {
        let text = raw(
            self.admin,
            b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        )
        .await?;
        anyhow::ensure!(text.starts_with("HTTP/1.1 200"), "metrics: {text:.200}");
        Ok(text
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .unwrap_or(0))
    }

    /// Resident memory of the process in KiB (`VmRSS` of /proc/<pid>/status).
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_then_recovery_in_the_proxy_binary() {
    fd_exhaustion(false).await;
}

/// A tunnel that was open (and idle) before the proxy ran out of fds, used during the shortage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tunnel_keeps_working_while_fds_are_exhausted() {
    fd_exhaustion(true).await;
}

/// The proxy binary with 64 fds: exhausted by idle clients, then freed. With `use_live`, a tunnel
/// opened before the shortage must carry bytes during it.
async fn fd_exhaustion(use_live: bool) {
    let o = origin::echo(origin::loopback().await);
    let p = o.addr.port();
    let http = origin::http(origin::loopback().await, "web");
    let hp = http.addr.port();
    let proc = tokio::task::spawn_blocking(move || {
        ProxyProcess::start(
            64,
            &policy(&[p, hp], &["echo.test", "web.test"], ""),
            &format!(
                "plaintext_tunnel_ports = [{p}]\n[resolver]\nstatic_only = true\nhosts = {{ \"echo.test\" = [\"127.0.0.1\"], \"web.test\" = [\"127.0.0.1\"] }}"
            ),
        )
    })
    .await
    .expect("start task");
    let addr = proc.proxy;
    let auth = format!("echo.test:{p}");

    // A live tunnel from before the exhaustion.
    let mut old = connect_tunnel(addr, &auth).await.expect("first tunnel");
    // Idle clients cost the proxy one fd each (until their header timeout): 80 of them exhaust
    // its 64; the ones it cannot accept wait in the listen backlog.
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(TcpStream::connect(addr).await.expect("connect (backlog)"));
    }
    let proc = tokio::task::spawn_blocking(move || {
        proc.wait_line("accept failed");
        proc
    })
    .await
    .expect("wait task");
    // The tunnel opened before keeps working while the proxy is out of fds.
    if use_live {
        old.write_all(b"during\n").await.expect("write");
        let mut b = [0u8; 7];
        tokio::time::timeout(Duration::from_secs(5), old.read_exact(&mut b))
            .await
            .expect("tunnel answers during exhaustion")
            .expect("echo");
        assert_eq!(&b, b"during\n");
    }

    // Free the fds: the proxy serves again (bounded retries while its accept loop backs off).
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match get(
            addr,
            &format!("http://web.test:{hp}/"),
            Duration::from_secs(2),
        )
        .await
        {
            Ok((200, _)) => break,
            other => assert!(
                Instant::now() < deadline,
                "proxy did not recover after fds were freed: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut t = connect_tunnel(addr, &auth)
        .await
        .expect("tunnel after recovery");
    t.write_all(b"after\n").await.expect("write");
    let mut b = [0u8; 6];
    t.read_exact(&mut b).await.expect("echo");
    assert_eq!(&b, b"after\n");
    assert!(
        proc.metric("kennel_proxy_accept_errors_total")
            .await
            .expect("metrics")
            > 0,
        "accept errors are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnels_stay_under_ten_kib_each() {
    let wanted: usize = if heavy() { 10_000 } else { 2_000 };
    // The proxy spends 2 fds per tunnel and cannot go above the hard RLIMIT_NOFILE it inherits
    // (raising it needs CAP_SYS_RESOURCE, which a container may not have): cap the count there.
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, h)| h)
        .unwrap_or(4096);
    let n = wanted.min(usize::try_from(hard.saturating_sub(1024) / 2).unwrap_or(wanted));
    if n < wanted {
        eprintln!("{wanted} tunnels asked for, {n} possible under the hard fd limit {hard}");
    }
    // This process holds one client socket per tunnel; the origins below hold none.
    raise_nofile(n as u64 + 2048);
    // Origins that never accept: the kernel completes each handshake into the listen backlog
    // (≤ somaxconn, so ≤ 3,000 per listener), the proxy's tunnel is up, and this process spends no
    // fd on the origin side. Idle tunnels need nothing more.
    let per = 3_000;
    let mut listeners = Vec::new();
    for _ in 0..n.div_ceil(per) {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::from((LO, 0))).expect("bind");
        listeners.push(sock.listen(4096).expect("listen"));
    }
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect();
    let pol = policy(&ports, &["idle.test"], "");
    let extra = format!(
        "plaintext_tunnel_ports = {ports:?}\n[limits]\nmax_connections = {}\n[resolver]\nstatic_only = true\nhosts = {{ \"idle.test\" = [\"127.0.0.1\"] }}",
        n + 100
    );
    let nofile = (2 * n as u64 + 1024).min(hard);
    let proc = tokio::task::spawn_blocking(move || ProxyProcess::start(nofile, &pol, &extra))
        .await
        .expect("start task");
    let addr = proc.proxy;

    // Warm up (first tunnels, first metrics) so one-time allocations are in the baseline.
    let mut warm = Vec::new();
    for port in &ports {
        warm.push(
            connect_tunnel(addr, &format!("idle.test:{port}"))
                .await
                .expect("warm-up tunnel"),
        );
    }
    proc.metric("kennel_proxy_connections_active")
        .await
        .expect("metrics");
    let base = proc.rss_kib();

    // Open n tunnels, 200 at a time (bounded in count and time).
    let started = Instant::now();
    let mut tunnels = Vec::with_capacity(n);
    let sem = Arc::new(tokio::sync::Semaphore::new(200));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let port = ports[i % ports.len()];
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            tokio::time::timeout(
                Duration::from_secs(30),
                connect_tunnel(addr, &format!("idle.test:{port}")),
            )
            .await?
        });
    }
    while let Some(r) = set.join_next().await {
        tunnels.push(r.expect("tunnel task").expect("tunnel opens"));
    }
    eprintln!("{n} tunnels opened in {:?}", started.elapsed());
    let active = proc
        .metric("kennel_proxy_connections_active")
        .await
        .expect("metrics");
    assert_eq!(active, (n + warm.len()) as u64, "every tunnel open at once");
    let rss = proc.rss_kib();
    let per_tunnel = (rss.saturating_sub(base) * 1024) / n as u64;
    eprintln!("RSS {base} KiB → {rss} KiB with {n} idle tunnels: {per_tunnel} bytes each");
    assert!(
        per_tunnel <= 10 * 1024,
        "{per_tunnel} bytes per idle tunnel (> 10 KiB); RSS {base} → {rss} KiB"
    );
    drop(tunnels);
    drop(warm);
    drop(listeners);
}

/// A SOCKS5 upstream (microsocks) killed while a tunnel through it streams: the client's tunnel
/// ends (no hang), the next request through the dead upstream is a quick 502 naming it, and the
/// proxy's connection count returns to baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_proxy_dying_mid_transfer_ends_the_tunnel_and_then_502s() {
    use kennel_test_support::upstreams::UpstreamProxy;
    let o = origin::http(origin::loopback().await, "big");
    let p = o.addr.port();
    let mut up = UpstreamProxy::microsocks(None).await;
    let via = up.url("socks5");
    let proxy = TestProxy::start(
        &policy(
            &[p],
            &["echo.test"],
            &format!("[upstream]\ndefault = \"{via}\"\n"),
        ),
        &[("echo.test", LO)],
        |c| c.plaintext_tunnel_ports = vec![p],
    )
    .await
    .expect("start the proxy");
    let addr = proxy.proxy.proxy_addr();
    let baseline = proxy
        .metric("kennel_proxy_connections_active")
        .await
        .expect("metrics");

    // A download inside the tunnel (one direction only: microsocks relays each connection with
    // blocking writes, so saturating both directions at once would deadlock the upstream itself).
    let mut t = connect_tunnel(addr, &format!("echo.test:{p}"))
        .await
        .expect("tunnel through the upstream");
    t.write_all(b"GET /bytes/33554432 HTTP/1.1\r\nHost: echo.test\r\n\r\n")
        .await
        .expect("request inside the tunnel");
    // Read (bounded: ≤ 32 MiB, ≤ 10 s) and kill the upstream after the first MiB.
    let mut got = 0usize;
    let mut killed = false;
    let mut buf = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match t.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
            if !killed && got > 1 << 20 {
                up.stop();
                killed = true;
            }
        }
    })
    .await;
    assert!(killed, "the transfer never reached 1 MiB ({got} bytes)");
    assert!(
        ended.is_ok(),
        "tunnel still open 10 s after the upstream died"
    );
    assert!(
        got < 32 << 20,
        "the whole download arrived: the upstream died too late"
    );
    // The client closes its end (the proxy keeps a half-closed tunnel until it does).
    drop(t);

    // The next tunnel and the next request through the dead upstream fail fast, naming it.
    let t0 = Instant::now();
    let err = connect_tunnel(addr, &format!("echo.test:{p}"))
        .await
        .expect_err("tunnel through a dead upstream");
    assert!(err.to_string().starts_with("HTTP/1.1 502"), "{err}");
    let (status, body) = get(
        addr,
        &format!("http://echo.test:{p}/"),
        Duration::from_secs(5),
    )
    .await
    .expect("request through a dead upstream");
    assert_eq!(status, 502);
    assert!(
        String::from_utf8_lossy(&body).contains("upstream"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(
        wait_metric(
            &proxy,
            "kennel_proxy_connections_active",
            baseline,
            Duration::from_secs(5)
        )
        .await,
        baseline,
        "connections back to baseline"
    );
}

/// An origin (a compromised allowed domain) that answers with `raw_response` to every request.
fn raw_origin(
    listener: tokio::net::TcpListener,
    raw_response: &'static [u8],
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let _ = s.write_all(raw_response).await;
                let _ = s.shutdown().await;
            });
        }
    })
}

/// A compromised origin's ambiguous response framing is never handed to the client as is: the
/// client gets either a 502 or a response with exactly one framing (never both Content-Length
/// and Transfer-Encoding, never two Content-Lengths).
#[tokio::test]
async fn ambiguous_response_framing_from_an_origin_is_not_relayed_as_is() {
    let cases: [(&str, &'static [u8]); 3] = [
        (
            "cl+te",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "two cl",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 12\r\n\r\nhello world!",
        ),
        (
            "bad cl",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
        ),
    ];
    for (name, resp) in cases {
        let l = origin::loopback().await;
        let port = l.local_addr().expect("addr").port();
        let task = raw_origin(l, resp);
        let proxy = TestProxy::start(
            &policy(&[port], &["evil.test"], ""),
            &[("evil.test", LO)],
            |_| {},
        )
        .await
        .expect("start the proxy");
        let out = raw(
            proxy.proxy.proxy_addr(),
            format!("GET http://evil.test:{port}/ HTTP/1.1\r\nHost: evil.test:{port}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("request");
        let head = out
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let cls = head.matches("\r\ncontent-length:").count();
        let tes = head.matches("\r\ntransfer-encoding:").count();
        eprintln!("{name}: {head:?}");
        assert!(
            head.starts_with("http/1.1 502") || (cls + tes == 1),
            "{name}: the client got ambiguous framing: {out:?}"
        );
        task.abort();
    }
}

/// A tmpfs of `size` mounted at `dir` (this process is root in CI and here); unmounted on drop.
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    /// Mount it, or say why not (not root, no CAP_SYS_ADMIN in a container).
    fn mount(dir: &Path, size: &str) -> Result<SmallFs, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount tmpfs on {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallFs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy: the daemon under test may still hold a file open when a failing test unwinds.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Every path under `dir` whose name ends in `.tmp` (a write that was left half-done).
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.to_string_lossy().ends_with(".tmp") {
                out.push(p);
            }
        }
    }
    out
}

/// Issue 14 item 2: the daemon's state directory runs out of space. Creating an environment
/// then fails with an error naming the state path and the cause; nothing is left half-written
/// (no partial environment directory, no temporary file, the existing environment's record
/// unchanged); the daemon keeps serving reads (list, inspect, exec) while the disk is full, and
/// creates work again once space is freed. The state directory is a 1 MiB tmpfs; the engine is
/// the in-memory backend (the failure is the daemon's, before any container is created).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_state_directory_full_is_a_clear_error_with_nothing_half_written() {
    use kennel_cli::client::Client;
    use kennel_container::fake::FakeBackend;
    use kennel_container::spec::{EnvSpec, SpecOverrides};
    use kennel_supervisord::api::types::{CreateEnv, EnvInfo, ExecRequest};
    use kennel_supervisord::auth::Authorizer;
    use kennel_supervisord::registry::{Daemon, FixedProxyImage};
    use kennel_supervisord::state::StateDir;

    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let _fs = match SmallFs::mount(&state, "1m") {
        Ok(fs) => fs,
        Err(why) if std::env::var_os("CI").is_some_and(|v| v == "true") => {
            panic!("CI=true: this fault test needs a tmpfs: {why}")
        }
        Err(why) => {
            eprintln!("skipping: {why}");
            return;
        }
    };
    let fake = FakeBackend::new();
    let daemon = Daemon::new(
        Arc::new(fake.clone()),
        Arc::new(FixedProxyImage("kennel-proxy:test".into())),
        StateDir::open(&state).expect("state dir"),
        Authorizer::new(0, [], []),
    );
    let socket = tmp.path().join("kennel.sock");
    let listener = kennel_supervisord::daemon::bind_socket(&socket, None).expect("bind");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(kennel_supervisord::daemon::run(listener, daemon, async {
        let _ = stopped.await;
    }));
    let client = Client::new(&socket);
    let workspace = tempfile::tempdir().expect("workspace");
    let request = |name: &str| {
        let spec = EnvSpec::from_workspace(
            workspace.path(),
            &SpecOverrides {
                name: Some(name.into()),
                workspace: Some(workspace.path().to_path_buf()),
                ..Default::default()
            },
        )
        .expect("spec");
        CreateEnv {
            spec: (&spec).into(),
            project_whitelist: Some("example.org\n".into()),
        }
    };
    let _: EnvInfo = client
        .post("/envs", &request("kept"))
        .await
        .expect("create with space left");
    let kept_record = std::fs::read(state.join("envs/kept/spec.json")).expect("record");

    // Fill the file system (bounded: 1 MiB in 16 KiB writes).
    let filler = state.join("filler");
    let mut f = std::fs::File::create(&filler).expect("filler");
    let chunk = vec![0u8; 16 * 1024];
    let mut full = false;
    for _ in 0..256 {
        if let Err(e) = std::io::Write::write_all(&mut f, &chunk) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            full = true;
            break;
        }
    }
    drop(f);
    assert!(full, "the tmpfs filled up");

    let err = client
        .post::<_, EnvInfo>("/envs", &request("second"))
        .await
        .expect_err("create on a full state directory fails");
    let msg = err.to_string();
    assert!(msg.contains("No space left on device"), "{msg}");
    assert!(
        msg.contains(&state.display().to_string()),
        "names the path: {msg}"
    );
    assert!(
        !state.join("envs/second").exists(),
        "no partial environment state"
    );
    assert_eq!(
        temp_files(&state),
        Vec::<PathBuf>::new(),
        "no half-written file"
    );
    assert!(
        fake.plan("second").is_none(),
        "nothing was created in the engine"
    );
    assert_eq!(
        std::fs::read(state.join("envs/kept/spec.json")).expect("record"),
        kept_record,
        "the existing record is untouched"
    );

    // Reads keep working while the disk is full.
    let list: Vec<EnvInfo> = client.get("/envs").await.expect("list");
    let names: Vec<&str> = list.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["kept"]);
    let info: EnvInfo = client.get("/envs/kept").await.expect("inspect");
    assert_eq!(info.state, "running");
    let req = ExecRequest {
        cmd: vec!["echo".into(), "alive".into()],
        ..Default::default()
    };
    let (mut out, mut errout) = (Vec::new(), Vec::new());
    let code = client
        .exec("kept", &req, None, &mut out, &mut errout)
        .await
        .expect("exec while full");
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&errout));

    // Space freed: creating works again.
    std::fs::remove_file(&filler).expect("free space");
    let _: EnvInfo = client
        .post("/envs", &request("second"))
        .await
        .expect("create after space was freed");
    assert!(state.join("envs/second/spec.json").is_file());
    let _ = stop.send(());
    served.await.expect("daemon task");
}

/// A stand-in for the Docker engine's API socket: a relay from a socket of the test's own to
/// the real engine's. Stopping it drops every live API connection and removes the socket, as an
/// engine that goes down does; starting it again is the engine coming back.
struct EngineRelay {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl EngineRelay {
    /// The real engine's socket (`DOCKER_HOST=unix://…` honoured, as the daemon does).
    fn engine_socket() -> PathBuf {
        std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
    }

    fn start(path: &Path) -> EngineRelay {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).expect("bind the relay socket");
        let engine = Self::engine_socket();
        let task = tokio::spawn(async move {
            // Dropped with the task: aborting the task aborts every relayed connection.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let engine = engine.clone();
                conns.spawn(async move {
                    if let Ok(mut e) = tokio::net::UnixStream::connect(&engine).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut e).await;
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        EngineRelay {
            path: path.to_path_buf(),
            task,
        }
    }

    fn stop(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Issue 14 item 2, Docker engine restart while an environment runs — simulated, because the
/// engine on a developer machine or CI runner is shared (other engineers' environments, tests
/// running in parallel) and restarting it would break them. What an engine restart without
/// live-restore does to kennel is reproduced with the test's own objects only:
///
/// - the daemon talks to the engine through a relay socket (`EngineRelay`) that the test stops
///   (every API connection drops, the socket disappears) and starts again;
/// - meanwhile the environment's containers lose their processes (SIGKILL to each container's
///   init, as the engine's shutdown does), and the engine brings them back through the restart
///   policy kennel gives them (`unless-stopped`), as a restarted engine does at start-up.
///
/// Asserted: while the engine is away the daemon answers with an error (no hang, no crash) and
/// creates nothing; once it is back the daemon reconnects by itself, the environment is listed
/// as running, exec works, its proxy answers again, and no container of the environment was
/// duplicated (same container ids, same count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_engine_restart_simulated_environment_comes_back_nothing_duplicated() {
    use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions};
    use kennel_cli::client::Client;
    use kennel_cli::commands::up::{UpArgs, build_request};
    use kennel_container::DockerBackend;
    use kennel_supervisord::api::types::EnvInfo;
    use kennel_test_support::docker::{EnvGuard, engine, proxy_binary, test_image, unique_env};

    let test = "docker_engine_restart_simulated_environment_comes_back_nothing_duplicated";
    let Some(real) = engine(test).await else {
        return;
    };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&real).await;
    let name = unique_env("fault-engine");
    let _guard = EnvGuard::new(&name);
    let dir = tempfile::tempdir().expect("tempdir");
    let relay_path = dir.path().join("engine.sock");
    let relay = EngineRelay::start(&relay_path);
    let docker = bollard::Docker::connect_with_unix(
        relay_path.to_str().expect("utf-8 path"),
        60,
        bollard::API_DEFAULT_VERSION,
    )
    .expect("client on the relay")
    .negotiate_version()
    .await
    .expect("engine through the relay");
    let backend = DockerBackend::from_docker(docker);
    let socket = dir.path().join("kennel.sock");
    let state = dir.path().join("state");
    let daemon = crate::e2e_supervisor::RunningDaemon::start(&backend, &proxy_bin, &socket, &state);
    let client = Client::new(&socket);

    let ws = tempfile::tempdir().expect("workspace");
    kennel_test_support::docker::share_dir(ws.path(), 1001, 2000, 0o770);
    std::fs::write(
        ws.path().join("kennel.toml"),
        format!("name = \"{name}\"\nimage = \"{image}\"\ncommand = [\"/bin/busybox\", \"sleep\", \"3600\"]\n"),
    )
    .expect("kennel.toml");
    let req = build_request(&UpArgs {
        spec: None,
        learn: None,
        name: None,
        image: None,
        workspace: Some(ws.path().into()),
        ..Default::default()
    })
    .expect("spec");
    let _: EnvInfo = client.post("/envs", &req).await.expect("create");
    let (out, _, code) = crate::e2e_supervisor::exec(&client, &name, "echo before").await;
    assert_eq!((out.as_str(), code), ("before\n", 0));

    let ids = || async {
        let mut filters = std::collections::HashMap::new();
        filters.insert("label".to_string(), vec![format!("dev.kennel.env={name}")]);
        let mut ids: Vec<String> = real
            .docker()
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .expect("list containers")
            .into_iter()
            .filter_map(|c| c.id)
            .collect();
        ids.sort();
        ids
    };
    let before = ids().await;
    assert!(before.len() >= 2, "sandbox and proxy: {before:?}");

    // The engine goes away: API connections drop, the containers' processes die.
    relay.stop();
    for id in &before {
        let pid = real
            .docker()
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .expect("inspect")
            .state
            .and_then(|s| s.pid)
            .filter(|p| *p > 0)
            .expect("a running container has a pid");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill");
        // The engine notices the death asynchronously: until it has, its list still says
        // "running" for the old process, and the daemon would be reading a stale state rather
        // than coming back from an outage (the race this test lost once the daemon's own
        // reconnect became fast).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = real
                .docker()
                .inspect_container(id, None::<InspectContainerOptions>)
                .await
                .expect("inspect")
                .state
                .and_then(|s| s.pid)
                .unwrap_or(0);
            if now != i64::from(pid.as_raw()) {
                break;
            }
            assert!(Instant::now() < deadline, "the engine never saw {id} die");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let down = tokio::time::timeout(Duration::from_secs(30), client.get::<Vec<EnvInfo>>("/envs"))
        .await
        .expect("the daemon answers while the engine is away");
    let err = down.expect_err("no listing without an engine");
    eprintln!("while the engine is away: {err}");
    assert!(
        err.to_string().contains("Docker engine"),
        "says what is wrong: {err}"
    );
    let again = tokio::time::timeout(
        Duration::from_secs(30),
        client.post::<_, EnvInfo>("/envs", &req),
    )
    .await
    .expect("the daemon answers while the engine is away");
    assert!(
        again.is_err(),
        "nothing is created while the engine is away"
    );

    // The engine is back: the daemon reconnects without being told, the environment runs again.
    let relay = EngineRelay::start(&relay_path);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ok = match client.get::<EnvInfo>(&format!("/envs/{name}")).await {
            Ok(info) if info.state == "running" => {
                // A container the engine is restarting (its restart policy) refuses execs for
                // a moment: not back yet, try again.
                let req = kennel_supervisord::api::types::ExecRequest {
                    cmd: vec!["/bin/sh".into(), "-c".into(), "echo after".into()],
                    ..Default::default()
                };
                let (mut out, mut err) = (Vec::new(), Vec::new());
                let code = client.exec(&name, &req, None, &mut out, &mut err).await;
                matches!(code, Ok(0)) && out == b"after\n"
            }
            _ => false,
        };
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the environment did not come back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut status = String::new();
    for _ in 0..100 {
        let (out, _, _) = crate::e2e_supervisor::exec(
            &client,
            &name,
            "curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://not-allowed.kennel-test/",
        )
        .await;
        status = out;
        if status == "403" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, "403", "the environment's proxy answers again");
    let list: Vec<EnvInfo> = client.get("/envs").await.expect("list");
    assert_eq!(
        list.iter().filter(|e| e.name == name).count(),
        1,
        "listed once: {list:?}"
    );
    assert_eq!(ids().await, before, "the same containers, none duplicated");
    let _: kennel_supervisord::api::types::Removed =
        client.delete(&format!("/envs/{name}")).await.expect("down");
    daemon.stop().await;
    relay.stop();
}
