//! Regressions in the proxy data path (issue 9, items 2–6). Real sockets and real curl, loopback
//! only: where a case is about a public address it is covered by the crate's unit tests, and the
//! end-to-end test here uses a loopback address allowed by `cidrs`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use kennel_test_support::origin;
use kennel_test_support::proxy_harness::{TestProxy, connect_tunnel, curl, raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn policy(ports: &[u16], hosts: &[&str], extra: &str) -> String {
    format!(
        "[defaults]\nports = {ports:?}\n[allow]\nhosts = {hosts:?}\ncidrs = [\"127.0.0.0/8\"]\n{extra}\n"
    )
}

/// Issue 9, item 2: a reload that adds a `[deny] cidrs` entry covering the checked address of a
/// live tunnel closes it, although the name is still allowed and `cidrs` still allows the range.
/// (Revocation had its own copy of the address guard; the public-address case, which that copy
/// got wrong, is `kennel_proxy::admit`'s unit test: tests may only reach loopback.)
#[tokio::test]
async fn reload_adding_a_deny_cidr_closes_a_live_tunnel_to_that_address() {
    let o = origin::echo(origin::loopback().await);
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["echo.test"], ""),
        &[("echo.test", LO)],
        |c| c.plaintext_tunnel_ports = vec![p],
    )
    .await
    .expect("start the proxy");
    let mut t = connect_tunnel(proxy.proxy.proxy_addr(), &format!("echo.test:{p}"))
        .await
        .expect("tunnel");
    t.write_all(b"ping\n").await.expect("write");
    let mut b = [0u8; 5];
    t.read_exact(&mut b).await.expect("echo");

    proxy
        .write_policy(&policy(
            &[p],
            &["echo.test"],
            "[deny]\ncidrs = [\"127.0.0.1/32\"]",
        ))
        .expect("write policy");
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(2), t.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "tunnel still open after the deny cidr was added: {r:?}"
    );
    let rec = proxy
        .wait_log(|r| r["reason"] == "revoked")
        .await
        .expect("revoked record");
    assert_eq!(rec["host"], "echo.test", "{rec}");
    // A new tunnel is refused the same way, by the same admission check.
    let err = connect_tunnel(proxy.proxy.proxy_addr(), &format!("echo.test:{p}"))
        .await
        .expect_err("new tunnel refused");
    assert!(
        err.to_string()
            .contains("X-Kennel-Deny-Reason: address_not_allowed"),
        "{err}"
    );
}

/// Issue 9, item 3: an allowed name whose address the guard refuses answered 502, which agents
/// read as "try again". It is a denial: 403 with the explanatory body and the deny reason. A
/// real origin failure stays a 502.
#[tokio::test]
async fn refused_address_is_a_403_denial_not_a_gateway_error() {
    let o = origin::http(origin::loopback().await, "guarded");
    let p = o.addr.port();
    let closed = origin::loopback().await.local_addr().expect("addr").port();
    let pol = format!(
        "[defaults]\nports = [{p}, {closed}]\n[allow]\nhosts = [\"loop.test\", \"closed.test\"]\n[[rule]]\ncidrs = [\"127.0.0.2/32\"]\n"
    );
    let proxy = TestProxy::start(
        &pol,
        &[
            ("loop.test", LO),
            ("closed.test", "127.0.0.2".parse().expect("ip")),
        ],
        |_| {},
    )
    .await
    .expect("start the proxy");
    let out = curl(&["-i", "-x", &proxy.url(), &format!("http://loop.test:{p}/")])
        .await
        .expect("curl");
    assert!(out.stdout.starts_with("HTTP/1.1 403"), "{out:?}");
    assert!(
        out.stdout
            .contains("X-Kennel-Deny-Reason: address_not_allowed"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("it resolves to 127.0.0.1, a loopback address"),
        "{out:?}"
    );
    let resp = raw(
        proxy.proxy.proxy_addr(),
        format!("CONNECT loop.test:{p} HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await
    .expect("raw");
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(
        resp.contains("X-Kennel-Deny-Reason: address_not_allowed"),
        "{resp}"
    );
    assert_eq!(o.hits(), 0);
    let rec = proxy
        .wait_log(|r| r["host"] == "loop.test" && r["method"] == "GET")
        .await
        .expect("record");
    assert_eq!(
        (rec["status"].as_u64(), rec["decision"].as_str()),
        (Some(403), Some("deny")),
        "{rec}"
    );
    // Nothing listens on `closed`: the origin failed, a gateway error.
    let out = curl(&[
        "-i",
        "-x",
        &proxy.url(),
        &format!("http://closed.test:{closed}/"),
    ])
    .await
    .expect("curl");
    assert!(out.stdout.starts_with("HTTP/1.1 502"), "{out:?}");
}

/// Issue 9, item 4: a chunk size that overflows (21 hex digits) or is not hex was found only
/// after the head had been forwarded, and the request ended as a 502. The client's framing is
/// the problem: 400 `bad_request`, and a first chunk line that is already buffered is checked
/// before anything goes out.
#[tokio::test]
async fn malformed_chunk_size_is_a_400_not_a_502() {
    let o = origin::http(origin::loopback().await, "chunks");
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["origin.test"], ""),
        &[("origin.test", LO)],
        |_| {},
    )
    .await
    .expect("start the proxy");
    let head = format!(
        "POST http://origin.test:{p}/ HTTP/1.1\r\nHost: origin.test:{p}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    for first in [
        "100000000000000000000\r\nhello\r\n0\r\n\r\n",
        "zz\r\nhello\r\n0\r\n\r\n",
        "5 x\r\nhello\r\n0\r\n\r\n",
        "fffffffffffffffffffff",
    ] {
        let resp = raw(
            proxy.proxy.proxy_addr(),
            format!("{head}{first}").as_bytes(),
        )
        .await
        .expect("raw");
        assert!(resp.starts_with("HTTP/1.1 400"), "{first:?} -> {resp}");
        assert!(resp.contains("X-Kennel-Error: bad_request"), "{resp}");
    }
    assert_eq!(o.hits(), 0, "no malformed body was forwarded");

    // A bad chunk line that arrives after the request went out: still the client's 400.
    let mut s = tokio::net::TcpStream::connect(proxy.proxy.proxy_addr())
        .await
        .expect("connect");
    s.write_all(format!("{head}5\r\nhello\r\n").as_bytes())
        .await
        .expect("write");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while o.hits() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "request not forwarded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.write_all(b"100000000000000000000\r\nx\r\n0\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let resp = String::from_utf8_lossy(&out);
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("X-Kennel-Error: bad_request"), "{resp}");
    let rec = proxy
        .wait_log(|r| r["status"] == 400 && r["host"] == "origin.test")
        .await
        .expect("record");
    assert_eq!(rec["reason"], "bad_request", "{rec}");
}

/// Issue 9, item 6: the access log lives in the watched policy directory (as it does in this
/// harness). With an invalid policy every log line re-triggered a reload that failed again and
/// was logged and counted, every debounce period, forever. Only a change of a policy source
/// reloads, and a still-invalid policy is reported once.
#[tokio::test]
async fn writes_next_to_an_invalid_policy_do_not_reload_it_again() {
    let o = origin::http(origin::loopback().await, "quiet");
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["origin.test"], ""),
        &[("origin.test", LO)],
        |_| {},
    )
    .await
    .expect("start the proxy");
    let failed = "kennel_proxy_reloads_total{result=\"failed\"}";
    proxy
        .write_policy("[allow]\nhosts = [\"unterminated\n")
        .expect("write policy");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while proxy.metric(failed).await.expect("metric") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "invalid edit not noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Ten requests, each writing an access-log line into the watched directory, spread over
    // several debounce periods (50 ms).
    for _ in 0..10 {
        let out = curl(&["-x", &proxy.url(), &format!("http://origin.test:{p}/")])
            .await
            .expect("curl");
        assert!(out.stdout.starts_with("origin quiet"), "{out:?}");
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        proxy.metric(failed).await.expect("metric"),
        1,
        "the unchanged invalid policy was re-read and reported again"
    );
    // Fixing the policy still reloads.
    proxy
        .write_policy(&policy(&[p], &["origin.test", "other.test"], ""))
        .expect("write policy");
    let ok = "kennel_proxy_reloads_total{result=\"ok\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while proxy.metric(ok).await.expect("metric") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fixed policy not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 13, item 5: a tunnel waiting for the client's ClientHello (SNI check) that is revoked by
/// a reload was logged as `client_error`, as if the client had failed. It is a revocation:
/// `deny`/`revoked`, counted in `kennel_proxy_revoked_total`, closed within 1 s.
#[tokio::test]
async fn revocation_during_the_client_hello_wait_is_logged_as_revoked() {
    let o = origin::echo(origin::loopback().await);
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["echo.test", "keep.test"], ""),
        &[("echo.test", LO)],
        |_| {},
    )
    .await
    .expect("start the proxy");
    // Not a plaintext port: the proxy waits for a ClientHello the client never sends.
    let mut t = connect_tunnel(proxy.proxy.proxy_addr(), &format!("echo.test:{p}"))
        .await
        .expect("tunnel");
    proxy
        .write_policy(&policy(&[p], &["keep.test"], ""))
        .expect("write policy");
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(2), t.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "tunnel still open after the revocation: {r:?}"
    );
    let rec = proxy
        .wait_log(|r| r["host"] == "echo.test")
        .await
        .expect("record");
    assert_eq!(
        (rec["decision"].as_str(), rec["reason"].as_str()),
        (Some("deny"), Some("revoked")),
        "{rec}"
    );
    assert_eq!(rec["status"], 200, "{rec}");
    assert_eq!(
        proxy
            .metric("kennel_proxy_revoked_total")
            .await
            .expect("metric"),
        1
    );
}

/// Issue 13, item 5: a tunnel still waiting for the ClientHello at the drain deadline was logged
/// as `client_error`. It is closed by shutdown: the decision and reason stay those of the
/// admission, and `error` says shutdown, as for an established tunnel.
#[tokio::test]
async fn shutdown_during_the_client_hello_wait_is_logged_as_shutdown() {
    let o = origin::echo(origin::loopback().await);
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["echo.test"], ""),
        &[("echo.test", LO)],
        |c| c.limits.drain_timeout_ms = 100,
    )
    .await
    .expect("start the proxy");
    let _t = connect_tunnel(proxy.proxy.proxy_addr(), &format!("echo.test:{p}"))
        .await
        .expect("tunnel");
    let TestProxy {
        dir: _dir,
        proxy: running,
        log_path,
        ..
    } = proxy;
    tokio::time::timeout(Duration::from_secs(5), running.shutdown())
        .await
        .expect("shutdown within the drain deadline + 1 s");
    let log = std::fs::read_to_string(&log_path).expect("access log");
    let rec: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|r: &serde_json::Value| r["host"] == "echo.test")
        .unwrap_or_else(|| panic!("no record for the tunnel in {log}"));
    assert_eq!(
        (rec["decision"].as_str(), rec["reason"].as_str()),
        (Some("allow"), Some("allowed_by_rule")),
        "{rec}"
    );
    assert_eq!(
        rec["error"], "closed by shutdown after the drain deadline",
        "{rec}"
    );
}
