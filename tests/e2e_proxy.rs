//! kennel-proxy end to end: real curl / raw sockets through an in-process proxy to the project's
//! own origins on loopback (allowed via `cidrs = ["127.0.0.0/8"]` where the case is not about
//! the address guard) or inside a test network namespace on documentation addresses.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use kennel_test_support::netns::{self, Netns};
use kennel_test_support::origin;
use kennel_test_support::proxy_harness::{TestProxy, connect_tunnel, curl, raw};
use kennel_test_support::tls::{TestCa, client_hello, server_config};
use kennel_test_support::wait::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn policy(ports: &[u16], hosts: &[&str], extra: &str) -> String {
    format!(
        "[defaults]\nports = {ports:?}\n[allow]\nhosts = {hosts:?}\ncidrs = [\"127.0.0.0/8\"]\n{extra}\n"
    )
}

/// An echo origin on loopback and a proxy allowing `echo.test` on its port, with plain bytes
/// in tunnels to that port opted in (`plaintext_tunnel_ports`) and `tweak` applied. Returns the
/// origin (keep it alive), its port and the proxy.
async fn echo_behind_proxy(
    tweak: impl FnOnce(&mut kennel_proxy::ProxyConfig),
) -> (origin::Origin, u16, TestProxy) {
    let o = origin::echo(origin::loopback().await);
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["echo.test"], ""),
        &[("echo.test", LO)],
        |c| {
            c.plaintext_tunnel_ports = vec![p];
            tweak(c);
        },
    )
    .await
    .expect("start the proxy");
    (o, p, proxy)
}

async fn code(proxy: &TestProxy, url: &str) -> String {
    curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-x",
        &proxy.url(),
        url,
    ])
    .await
    .expect("run curl")
    .stdout
}

#[tokio::test]
async fn http_allowed_and_denied_through_curl_with_log_and_metrics() {
    let o = origin::http(origin::loopback().await, "one");
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["origin.test"], ""),
        &[("origin.test", LO), ("evil.test", LO)],
        |_| {},
    )
    .await
    .unwrap();

    let ok = curl(&[
        "-x",
        &proxy.url(),
        &format!("http://origin.test:{p}/hello?x=1"),
    ])
    .await
    .unwrap();
    assert_eq!(
        ok.stdout,
        format!("origin one: GET /hello?x=1 host=origin.test:{p} body=0\n"),
        "{ok:?}"
    );

    let denied = curl(&["-i", "-x", &proxy.url(), &format!("http://evil.test:{p}/")])
        .await
        .unwrap();
    assert!(denied.stdout.starts_with("HTTP/1.1 403"), "{denied:?}");
    assert!(
        denied
            .stdout
            .to_ascii_lowercase()
            .contains("x-kennel-deny-reason: not_in_allowlist"),
        "{denied:?}"
    );
    let want = format!(
        "kennel: egress to evil.test:{p} denied (not in allowlist). To allow it, add \"evil.test\" to hosts in the [allow] table of {}.",
        proxy.policy_path.display()
    );
    assert!(denied.stdout.contains(&want), "{}", denied.stdout);
    assert_eq!(o.hits(), 1, "the denied request never reached the origin");

    let rec = proxy
        .wait_log(|r| r["host"] == "origin.test")
        .await
        .unwrap();
    assert_eq!(rec["method"], "GET");
    assert_eq!(rec["port"], p);
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["reason"], "allowed_by_rule");
    assert_eq!(rec["rule"], format!("{}:4", proxy.policy_path.display()));
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["resolved"], format!("127.0.0.1:{p}"));
    assert_eq!(rec["upstream"], "direct");
    assert!(rec["bytes_down"].as_u64().unwrap() > 0);
    assert!(rec["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(rec["time"].as_str().unwrap().ends_with('Z'));
    assert!(rec["duration_ms"].is_u64());
    let rec = proxy.wait_log(|r| r["host"] == "evil.test").await.unwrap();
    assert_eq!(
        (
            rec["decision"].as_str(),
            rec["reason"].as_str(),
            rec["status"].as_u64()
        ),
        (Some("deny"), Some("not_in_allowlist"), Some(403))
    );

    assert_eq!(proxy.metric("kennel_proxy_decisions_total{kind=\"http\",decision=\"allow\",reason=\"allowed_by_rule\"}").await.unwrap(), 1);
    assert_eq!(proxy.metric("kennel_proxy_decisions_total{kind=\"http\",decision=\"deny\",reason=\"not_in_allowlist\"}").await.unwrap(), 1);
    assert!(
        proxy
            .metric("kennel_proxy_bytes_total{direction=\"down\"}")
            .await
            .unwrap()
            > 0
    );
    let rule_series = format!(
        "kennel_proxy_rule_allowed_bytes_total{{rule=\"{}:4\"}}",
        proxy.policy_path.display()
    );
    assert!(proxy.metric(&rule_series).await.unwrap() > 0);
    assert!(
        proxy
            .metric("kennel_proxy_connections_total")
            .await
            .unwrap()
            >= 2
    );
    let (s, body) = proxy.admin_get("/policy").await.unwrap();
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["generation"], 1);
    assert_eq!(v["counts"]["allow_patterns"], 1);
    assert_eq!(proxy.admin_get("/healthz").await.unwrap().0, 200);
    assert_eq!(proxy.admin_get("/readyz").await.unwrap().0, 200);
}

#[tokio::test]
async fn https_connect_through_curl_and_sni_mismatch_refused() {
    let ca = TestCa::new().unwrap();
    let o = origin::https(
        origin::loopback().await,
        "tls",
        server_config(ca.leaf(&["tls.test", "other.test"]).unwrap()).unwrap(),
    );
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["tls.test", "other.test"], ""),
        &[("tls.test", LO), ("other.test", LO)],
        |_| {},
    )
    .await
    .unwrap();
    let ca_path = ca.write_pem(proxy.dir.path()).unwrap();

    let ok = curl(&[
        "--cacert",
        ca_path.to_str().unwrap(),
        "-x",
        &proxy.url(),
        &format!("https://tls.test:{p}/secure"),
    ])
    .await
    .unwrap();
    assert_eq!(
        ok.stdout,
        format!("origin tls: GET /secure host=tls.test:{p} body=0\n"),
        "{ok:?}"
    );
    let rec = proxy
        .wait_log(|r| r["method"] == "CONNECT" && r["sni"] == "tls.test")
        .await
        .unwrap();
    assert_eq!(
        (rec["status"].as_u64(), rec["decision"].as_str()),
        (Some(200), Some("allow"))
    );
    assert!(rec["bytes_up"].as_u64().unwrap() > 0 && rec["bytes_down"].as_u64().unwrap() > 0);

    // CONNECT to tls.test but a ClientHello for other.test: refused even though both are allowed.
    let tunnel = connect_tunnel(proxy.proxy.proxy_addr(), &format!("tls.test:{p}"))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(ca.client_config().unwrap());
    let sn = rustls::pki_types::ServerName::try_from("other.test").unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), tls.connect(sn, tunnel))
        .await
        .unwrap();
    assert!(
        r.is_err(),
        "handshake through a mismatched tunnel must fail"
    );
    let rec = proxy
        .wait_log(|r| r["reason"] == "sni_mismatch")
        .await
        .unwrap();
    assert_eq!(
        (rec["decision"].as_str(), rec["sni"].as_str()),
        (Some("deny"), Some("other.test"))
    );
    assert_eq!(proxy.metric("kennel_proxy_decisions_total{kind=\"connect\",decision=\"deny\",reason=\"sni_mismatch\"}").await.unwrap(), 1);
}

#[tokio::test]
async fn pattern_kinds_and_port_rules() {
    let o1 = origin::http(origin::loopback().await, "a");
    let o2 = origin::http(origin::loopback().await, "b");
    let (p1, p2) = (o1.addr.port(), o2.addr.port());
    let names = [
        "exact.test",
        "x.exact.test",
        "a.wild.test",
        "wild.test",
        "suffix.test",
        "a.b.suffix.test",
        "other.test",
        "ported.test",
    ];
    let hosts: Vec<(&str, IpAddr)> = names.iter().map(|n| (*n, LO)).collect();
    let extra = format!("[[rule]]\nhosts = [\"ported.test\"]\nports = [{p2}]\n");
    let proxy = TestProxy::start(
        &policy(
            &[p1],
            &["exact.test", "*.wild.test", ".suffix.test"],
            &extra,
        ),
        &hosts,
        |_| {},
    )
    .await
    .unwrap();
    for (host, want) in [
        ("exact.test", "200"),
        ("x.exact.test", "403"),
        ("a.wild.test", "200"),
        ("wild.test", "403"),
        ("suffix.test", "200"),
        ("a.b.suffix.test", "200"),
        ("other.test", "403"),
        ("EXACT.test.", "200"),
    ] {
        assert_eq!(
            code(&proxy, &format!("http://{host}:{p1}/")).await,
            want,
            "{host}"
        );
    }
    // Port rules: the default ports do not include p2; the [[rule]] allows ported.test on p2 only.
    assert_eq!(
        code(&proxy, &format!("http://exact.test:{p2}/")).await,
        "403"
    );
    assert_eq!(
        code(&proxy, &format!("http://ported.test:{p2}/")).await,
        "200"
    );
    let rec = proxy
        .wait_log(|r| r["host"] == "exact.test" && r["port"] == p2)
        .await
        .unwrap();
    assert_eq!(rec["reason"], "port_not_allowed");
}

#[tokio::test]
async fn ip_literals_in_every_spelling_are_denied() {
    let o = origin::http(origin::loopback().await, "ip");
    let p = o.addr.port();
    // No cidrs: IP literals can only be allowed by a cidrs entry.
    let pol = format!("[defaults]\nports = [{p}]\n[allow]\nhosts = [\"origin.test\"]\n");
    let proxy = TestProxy::start(&pol, &[], |_| {}).await.unwrap();
    for lit in [
        "127.0.0.1",
        "2130706433",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "0x7f.1",
        "127.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
    ] {
        let resp = raw(
            proxy.proxy.proxy_addr(),
            format!("CONNECT {lit}:{p} HTTP/1.1\r\nHost: {lit}:{p}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        assert!(resp.starts_with("HTTP/1.1 403"), "{lit}: {resp}");
        assert!(
            resp.contains("X-Kennel-Deny-Reason: ip_literal_not_allowed"),
            "{lit}: {resp}"
        );
        let resp = raw(
            proxy.proxy.proxy_addr(),
            format!(
                "GET http://{lit}:{p}/ HTTP/1.1\r\nHost: {lit}:{p}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        assert!(resp.starts_with("HTTP/1.1 403"), "{lit}: {resp}");
    }
    assert_eq!(
        code(&proxy, &format!("http://2130706433:{p}/")).await,
        "403"
    );
    assert_eq!(o.hits(), 0);
}

#[tokio::test]
async fn name_resolving_to_private_address_is_denied() {
    let o = origin::http(origin::loopback().await, "private");
    let p = o.addr.port();
    let pol = format!(
        "[defaults]\nports = [{p}]\n[allow]\nhosts = [\"internal.test\", \"loop.test\", \"mixed.test\"]\n"
    );
    let hosts = [
        ("internal.test", "10.1.2.3".parse().unwrap()),
        ("loop.test", LO),
        ("mixed.test", "8.8.8.8".parse().unwrap()),
        ("mixed.test", LO),
    ];
    let proxy = TestProxy::start(&pol, &hosts, |_| {}).await.unwrap();
    for (host, ip) in [
        ("internal.test", "10.1.2.3"),
        ("loop.test", "127.0.0.1"),
        ("mixed.test", "127.0.0.1"),
    ] {
        let out = curl(&["-i", "-x", &proxy.url(), &format!("http://{host}:{p}/")])
            .await
            .unwrap();
        assert!(out.stdout.starts_with("HTTP/1.1 403"), "{host}: {out:?}");
        assert!(
            out.stdout
                .contains("X-Kennel-Deny-Reason: address_not_allowed"),
            "{out:?}"
        );
        assert!(
            out.stdout.contains(&format!("it resolves to {ip}")),
            "{out:?}"
        );
        let resp = raw(
            proxy.proxy.proxy_addr(),
            format!("CONNECT {host}:{p} HTTP/1.1\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        assert!(resp.starts_with("HTTP/1.1 403"), "{host}: {resp}");
    }
    assert_eq!(o.hits(), 0);
    let rec = proxy
        .wait_log(|r| r["host"] == "internal.test")
        .await
        .unwrap();
    assert_eq!(
        (rec["decision"].as_str(), rec["reason"].as_str()),
        (Some("deny"), Some("address_not_allowed"))
    );
}

#[tokio::test]
async fn keep_alive_second_request_to_denied_host_is_denied() {
    let o = origin::http(origin::loopback().await, "ka");
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["origin.test"], ""),
        &[("origin.test", LO), ("evil.test", LO)],
        |_| {},
    )
    .await
    .unwrap();
    let out = curl(&[
        "-w",
        "%{http_code} %{num_connects}\n",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-x",
        &proxy.url(),
        &format!("http://origin.test:{p}/"),
        &format!("http://evil.test:{p}/"),
    ])
    .await
    .unwrap();
    // Same connection (second transfer made no new connect), second request denied.
    assert_eq!(out.stdout, "200 1\n403 0\n", "{out:?}");
    assert_eq!(o.hits(), 1);
    let log = proxy.log();
    assert_eq!(log.len(), 2);
    assert_eq!(
        log[0]["client"], log[1]["client"],
        "both requests on one client connection"
    );
}

/// A client may send a CONNECT on a connection that already carried forwarded requests (the
/// request loop of a kept-alive connection hands the rest of it to the tunnel): the tunnel works,
/// and a CONNECT to a denied host there is refused like on a new connection.
#[tokio::test]
async fn connect_after_forwarded_requests_on_one_connection_is_a_tunnel() {
    let o = origin::http(origin::loopback().await, "mixed");
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["origin.test"], ""),
        &[("origin.test", LO), ("evil.test", LO)],
        |_| {},
    )
    .await
    .unwrap();
    for (connect_to, allowed) in [("origin.test", true), ("evil.test", false)] {
        let mut s = tokio::net::TcpStream::connect(proxy.proxy.proxy_addr())
            .await
            .unwrap();
        // The Host header's spelling may differ from the target's (case): same destination.
        for host in ["origin.test", "ORIGIN.Test"] {
            let get = format!("GET http://origin.test:{p}/a HTTP/1.1\r\nHost: {host}:{p}\r\n\r\n");
            s.write_all(get.as_bytes()).await.unwrap();
            let r = read_response(&mut s).await;
            assert!(
                r.starts_with("HTTP/1.1 200") && r.contains("origin mixed: GET /a"),
                "{r}"
            );
        }
        s.write_all(
            format!("CONNECT {connect_to}:{p} HTTP/1.1\r\nHost: {connect_to}:{p}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let r = read_response(&mut s).await;
        if !allowed {
            assert!(r.starts_with("HTTP/1.1 403"), "{r}");
            continue;
        }
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        // Inside the tunnel: origin-form, straight to the origin.
        s.write_all(format!("GET /b HTTP/1.1\r\nHost: origin.test:{p}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let r = read_response(&mut s).await;
        assert!(r.contains("origin mixed: GET /b"), "{r}");
    }
    assert_eq!(
        o.hits(),
        5,
        "four forwarded GETs and one through the tunnel"
    );
}

#[tokio::test]
async fn framing_attacks_and_host_mismatch_get_400_and_never_reach_the_origin() {
    let o = origin::http(origin::loopback().await, "smuggle");
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["origin.test", "evil.test"], ""),
        &[("origin.test", LO), ("evil.test", LO)],
        |_| {},
    )
    .await
    .unwrap();
    let a = proxy.proxy.proxy_addr();
    let u = format!("http://origin.test:{p}/");
    for req in [
        format!(
            "POST {u} HTTP/1.1\r\nHost: origin.test:{p}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST {u} HTTP/1.1\r\nHost: origin.test:{p}\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST {u} HTTP/1.1\r\nHost: origin.test:{p}\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"
        ),
        format!(
            "POST {u} HTTP/1.1\r\nHost: origin.test:{p}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"
        ),
        format!("GET {u} HTTP/1.1\r\nHost: origin.test:{p}\r\nX-Folded: a\r\n b\r\n\r\n"),
        format!("GET {u} HTTP/1.1\r\nHost: evil.test:{p}\r\n\r\n"),
        format!("GET {u} HTTP/1.1\r\nHost: origin.test\r\n\r\n"),
        "GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n".to_string(),
    ] {
        let resp = raw(a, req.as_bytes()).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 400"), "{req:?} -> {resp}");
    }
    let resp = raw(a, b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(resp.contains("this is a forward proxy"), "{resp}");
    assert_eq!(o.hits(), 0, "nothing ambiguous was forwarded");
    // A well-formed chunked POST is forwarded with its body.
    let out = curl(&[
        "-x",
        &proxy.url(),
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        "hello",
        &u,
    ])
    .await
    .unwrap();
    assert_eq!(
        out.stdout,
        format!("origin smuggle: POST / host=origin.test:{p} body=5\n"),
        "{out:?}"
    );
}

#[tokio::test]
async fn oversized_head_gets_431() {
    let proxy = TestProxy::start(
        &policy(&[80], &["origin.test"], ""),
        &[("origin.test", LO)],
        |c| c.limits.max_head_bytes = 8192,
    )
    .await
    .unwrap();
    let big = format!("X-Big: {}", "a".repeat(10_000));
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &big,
        "-x",
        &proxy.url(),
        "http://origin.test/",
    ])
    .await
    .unwrap();
    assert_eq!(out.stdout, "431", "{out:?}");
    proxy
        .wait_log(|r| r["reason"] == "head_too_large" && r["status"] == 431)
        .await
        .unwrap();
}

#[tokio::test]
async fn slowloris_is_closed_after_the_header_timeout_while_others_are_served() {
    let o = origin::http(origin::loopback().await, "busy");
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["origin.test"], ""),
        &[("origin.test", LO)],
        |c| c.limits.header_timeout_ms = 500,
    )
    .await
    .unwrap();
    let mut slow = tokio::net::TcpStream::connect(proxy.proxy.proxy_addr())
        .await
        .unwrap();
    slow.write_all(b"GET http://origin.test/ HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    // Another client is served while the slow one dangles.
    assert_eq!(
        code(&proxy, &format!("http://origin.test:{p}/")).await,
        "200"
    );
    // The slow client trickles bytes but never completes the head: the proxy closes it.
    let mut closed = false;
    for _ in 0..100 {
        if slow.write_all(b"a").await.is_err() {
            closed = true;
            break;
        }
        let mut b = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "slow client still connected after 10 s");
    assert_eq!(
        code(&proxy, &format!("http://origin.test:{p}/")).await,
        "200"
    );
}

/// Raise the soft RLIMIT_NOFILE to the hard limit (a test process may hold ~3,000 fds here).
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_thousand_concurrent_tunnels() {
    raise_nofile();
    let (o, p, proxy) = echo_behind_proxy(|_| {}).await;
    let addr = proxy.proxy.proxy_addr();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        set.spawn(async move { connect_tunnel(addr, &format!("echo.test:{p}")).await });
    }
    let mut tunnels = Vec::new();
    while let Some(r) = set.join_next().await {
        tunnels.push(r.unwrap().unwrap());
    }
    assert_eq!(tunnels.len(), 1000);
    assert_eq!(
        proxy.proxy.shared().registry.len(),
        1000,
        "all 1000 tunnels open at once"
    );
    let mut set = tokio::task::JoinSet::new();
    for (i, mut t) in tunnels.into_iter().enumerate() {
        set.spawn(async move {
            let msg = format!("ping {i}\n");
            t.write_all(msg.as_bytes()).await?;
            let mut b = vec![0u8; msg.len()];
            tokio::time::timeout(Duration::from_secs(20), t.read_exact(&mut b)).await??;
            anyhow::ensure!(b == msg.as_bytes());
            Ok::<_, anyhow::Error>(())
        });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
        ok += 1;
    }
    assert_eq!(ok, 1000);
    assert_eq!(o.hits(), 1000);
}

#[tokio::test]
async fn revocation_closes_a_live_tunnel_within_one_second_and_invalid_edit_keeps_policy() {
    let o = origin::echo(origin::loopback().await);
    let p = o.addr.port();
    let keep = origin::http(origin::loopback().await, "keep");
    let kp = keep.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p, kp], &["echo.test", "keep.test"], ""),
        &[("echo.test", LO), ("keep.test", LO)],
        |c| c.plaintext_tunnel_ports = vec![p],
    )
    .await
    .unwrap();

    // An invalid edit keeps the old policy.
    proxy
        .write_policy("[allow]\nhosts = [\"unterminated\n")
        .unwrap();
    eventually(Duration::from_secs(5), || async {
        let failed = proxy
            .metric("kennel_proxy_reloads_total{result=\"failed\"}")
            .await?;
        Ok((failed > 0).then_some(()))
    })
    .await
    .expect("invalid edit noticed");
    assert_eq!(
        code(&proxy, &format!("http://keep.test:{kp}/")).await,
        "200"
    );
    assert_eq!(proxy.proxy.store().generation(), 1);

    let mut t = connect_tunnel(proxy.proxy.proxy_addr(), &format!("echo.test:{p}"))
        .await
        .unwrap();
    t.write_all(b"before\n").await.unwrap();
    let mut b = [0u8; 7];
    t.read_exact(&mut b).await.unwrap();

    // Revoke echo.test: the live tunnel is closed within 1 s of the edit.
    proxy
        .write_policy(&policy(&[p, kp], &["keep.test"], ""))
        .unwrap();
    let edited = tokio::time::Instant::now();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(1), t.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "tunnel still open {:?} after the edit: {r:?}",
        edited.elapsed()
    );
    let rec = proxy.wait_log(|r| r["reason"] == "revoked").await.unwrap();
    assert_eq!(
        (rec["host"].as_str(), rec["decision"].as_str()),
        (Some("echo.test"), Some("deny"))
    );
    assert_eq!(proxy.metric("kennel_proxy_revoked_total").await.unwrap(), 1);
    assert_eq!(
        proxy
            .metric("kennel_proxy_reloads_total{result=\"ok\"}")
            .await
            .unwrap(),
        1
    );
    // Refused by the reloaded policy (403 with its reason), not by a proxy that went away.
    let refused = proxy
        .connect(&format!("echo.test:{p}"))
        .await
        .expect_err("the revoked destination must be refused")
        .to_string();
    assert!(refused.starts_with("HTTP/1.1 403 "), "{refused}");
    assert!(
        refused.contains("X-Kennel-Deny-Reason: not_in_allowlist\r\n"),
        "{refused}"
    );
    assert_eq!(
        code(&proxy, &format!("http://keep.test:{kp}/")).await,
        "200"
    );
}

#[tokio::test]
async fn report_mode_allows_and_logs_would_deny() {
    let o = origin::http(origin::loopback().await, "rep");
    let p = o.addr.port();
    let pol = format!("mode = \"report\"\n{}", policy(&[p], &["origin.test"], ""));
    let proxy = TestProxy::start(&pol, &[("other.test", LO)], |_| {})
        .await
        .unwrap();
    assert_eq!(
        code(&proxy, &format!("http://other.test:{p}/")).await,
        "200"
    );
    let rec = proxy.wait_log(|r| r["host"] == "other.test").await.unwrap();
    assert_eq!(
        (rec["decision"].as_str(), rec["reason"].as_str()),
        (Some("would_deny"), Some("not_in_allowlist"))
    );
}

#[tokio::test]
async fn guard_with_origin_in_a_network_namespace_on_a_documentation_address() {
    if let Some(why) = netns::unavailable() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {why}"
        );
        eprintln!("skipping: {why}");
        return;
    }
    let ns = Netns::create().unwrap();
    let o = origin::http(ns.bind(0).unwrap(), "ns");
    let p = o.addr.port();
    let nsip = IpAddr::V4(ns.ns_ip);
    let base = format!("[defaults]\nports = [{p}]\n[allow]\nhosts = [\"public.test\"]\n");
    let proxy = TestProxy::start(&base, &[("public.test", nsip)], |_| {})
        .await
        .unwrap();
    // 192.0.2.x / 198.51.100.x / 203.0.113.x are documentation addresses: not public.
    let out = curl(&[
        "-i",
        "-x",
        &proxy.url(),
        &format!("http://public.test:{p}/"),
    ])
    .await
    .unwrap();
    assert!(
        out.stdout.starts_with("HTTP/1.1 403") && out.stdout.contains("address_not_allowed"),
        "{out:?}"
    );
    assert_eq!(code(&proxy, &format!("http://{nsip}:{p}/")).await, "403");
    assert_eq!(o.hits(), 0);
    // Allow exactly that address: the name goes through, connected to the checked address.
    proxy
        .write_policy(&format!("{base}cidrs = [\"{nsip}/32\"]\n"))
        .unwrap();
    assert!(matches!(
        proxy.proxy.reload(),
        kennel_policy::reload::ReloadEvent::Reloaded { .. }
            | kennel_policy::reload::ReloadEvent::Unchanged
    ));
    let out = curl(&["-x", &proxy.url(), &format!("http://public.test:{p}/ns")])
        .await
        .unwrap();
    assert_eq!(
        out.stdout,
        format!("origin ns: GET /ns host=public.test:{p} body=0\n"),
        "{out:?}"
    );
    let rec = proxy
        .wait_log(|r| r["host"] == "public.test" && r["status"] == 200)
        .await
        .unwrap();
    assert_eq!(rec["resolved"], format!("{nsip}:{p}"));
}

#[tokio::test]
async fn tunnel_half_close_delivers_everything_both_ways() {
    let (_o, p, proxy) = echo_behind_proxy(|_| {}).await;
    let t = connect_tunnel(proxy.proxy.proxy_addr(), &format!("echo.test:{p}"))
        .await
        .unwrap();
    let (mut r, mut w) = t.into_split();
    let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let expect = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        // Half-close: the echo origin sees EOF, finishes echoing, then closes its side.
        w.shutdown().await.unwrap();
        w
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let _w = writer.await.unwrap();
    assert_eq!(got.len(), expect.len());
    assert!(got == expect);
    let rec = proxy.wait_log(|r| r["method"] == "CONNECT").await.unwrap();
    assert_eq!(rec["bytes_up"].as_u64(), Some(expect.len() as u64));
    assert_eq!(rec["bytes_down"].as_u64(), Some(expect.len() as u64));
}

#[tokio::test]
async fn idle_tunnel_is_closed_after_the_idle_timeout() {
    let (_o, p, proxy) = echo_behind_proxy(|c| c.limits.idle_timeout_ms = 300).await;
    let mut t = connect_tunnel(proxy.proxy.proxy_addr(), &format!("echo.test:{p}"))
        .await
        .unwrap();
    t.write_all(b"hi").await.unwrap();
    let mut b = [0u8; 2];
    t.read_exact(&mut b).await.unwrap();
    let mut rest = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(5), t.read(&mut rest))
        .await
        .unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    let rec = proxy.wait_log(|r| r["method"] == "CONNECT").await.unwrap();
    assert_eq!(rec["error"], "closed after the idle timeout");
}

#[tokio::test]
async fn connect_refused_is_502_and_blackholed_destination_is_504() {
    let closed = {
        let l = origin::loopback().await;
        l.local_addr().unwrap().port()
    };
    let proxy = TestProxy::start(
        &policy(&[closed], &["closed.test"], ""),
        &[("closed.test", LO)],
        |c| c.limits.connect_timeout_ms = 300,
    )
    .await
    .unwrap();
    let out = curl(&[
        "-i",
        "-x",
        &proxy.url(),
        &format!("http://closed.test:{closed}/"),
    ])
    .await
    .unwrap();
    assert!(out.stdout.starts_with("HTTP/1.1 502"), "{out:?}");
    assert!(
        out.stdout.contains("X-Kennel-Error: connect_failed") && out.stdout.contains("refused"),
        "{out:?}"
    );

    if let Some(why) = netns::unavailable() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {why}"
        );
        eprintln!("skipping the 504 half: {why}");
        return;
    }
    let ns = Netns::create().unwrap();
    ns.drop_tcp(9).unwrap();
    let hole = IpAddr::V4(ns.ns_ip);
    let pol = format!(
        "[defaults]\nports = [9]\n[allow]\nhosts = [\"hole.test\"]\ncidrs = [\"{hole}/32\"]\n"
    );
    let proxy = TestProxy::start(&pol, &[("hole.test", hole)], |c| {
        c.limits.connect_timeout_ms = 300
    })
    .await
    .unwrap();
    let resp = raw(
        proxy.proxy.proxy_addr(),
        b"CONNECT hole.test:9 HTTP/1.1\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(resp.starts_with("HTTP/1.1 504"), "{resp}");
    let rec = proxy.wait_log(|r| r["host"] == "hole.test").await.unwrap();
    assert_eq!(
        (rec["reason"].as_str(), rec["status"].as_u64()),
        (Some("connect_timeout"), Some(504))
    );
}

#[tokio::test]
async fn connection_limit_holds_extra_clients_until_a_slot_frees() {
    let (_o, p, proxy) = echo_behind_proxy(|c| c.limits.max_connections = 2).await;
    let addr = proxy.proxy.proxy_addr();
    let auth = format!("echo.test:{p}");
    let t1 = connect_tunnel(addr, &auth).await.unwrap();
    let _t2 = connect_tunnel(addr, &auth).await.unwrap();
    let a2 = auth.clone();
    let third = tokio::spawn(async move { connect_tunnel(addr, &a2).await });
    // While two tunnels are open the third is not served …
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !third.is_finished(),
        "third client served beyond max_connections"
    );
    assert_eq!(
        proxy
            .metric("kennel_proxy_connections_active")
            .await
            .unwrap(),
        2
    );
    // … and is served as soon as one closes.
    drop(t1);
    let mut t3 = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    t3.write_all(b"ok").await.unwrap();
    let mut b = [0u8; 2];
    t3.read_exact(&mut b).await.unwrap();
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let o = origin::http(origin::loopback().await, "hop");
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["origin.test"], ""),
        &[("origin.test", LO)],
        |_| {},
    )
    .await
    .unwrap();
    let out = curl(&[
        "-i",
        "-x",
        &proxy.url(),
        "-H",
        "Connection: keep-alive, X-Secret",
        "-H",
        "X-Secret: 1",
        "-H",
        "Proxy-Authorization: Basic Zm9vOmJhcg==",
        "-H",
        "Keep-Alive: timeout=9",
        "-H",
        "TE: trailers",
        "-H",
        "Upgrade: websocket",
        "-H",
        "X-Keep: yes",
        &format!("http://origin.test:{p}/headers"),
    ])
    .await
    .unwrap();
    let (head, body) = out.stdout.split_once("\r\n\r\n").unwrap();
    assert!(body.contains("x-keep: yes"), "{body}");
    assert!(body.contains(&format!("host: origin.test:{p}")), "{body}");
    for gone in [
        "x-secret",
        "proxy-authorization",
        "keep-alive",
        "te:",
        "upgrade",
        "connection",
    ] {
        assert!(!body.contains(gone), "{gone} forwarded: {body}");
    }
    assert!(
        !head.to_ascii_lowercase().contains("keep-alive: timeout=5"),
        "origin's Keep-Alive leaked: {head}"
    );
    // Header names reach the client as the origin wrote them (any case).
    assert!(
        head.to_ascii_lowercase().contains("x-origin: hop"),
        "{head}"
    );
}

#[tokio::test]
async fn origin_connections_are_pooled_across_client_connections() {
    let o = origin::http(origin::loopback().await, "pool");
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["origin.test", "alias.test"], ""),
        &[("origin.test", LO), ("alias.test", LO)],
        |_| {},
    )
    .await
    .unwrap();
    for host in ["origin.test", "origin.test", "alias.test"] {
        assert_eq!(code(&proxy, &format!("http://{host}:{p}/")).await, "200");
    }
    assert_eq!(o.hits(), 3);
    assert_eq!(
        o.conns(),
        1,
        "three requests from three clients over one pooled origin connection"
    );
}

/// An origin may close a pooled connection at any time. One it closed while idle is not used
/// again (a request with a body could not be repeated), and one it closes as a request arrives
/// costs the client nothing: a request without a body goes again on a fresh connection.
#[tokio::test]
async fn pooled_origin_connections_the_origin_closed_are_not_the_clients_problem() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = origin::loopback().await;
    let p = l.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    // Every connection answers its first request and keeps the connection; the first one then
    // closes it while idle, the others close it on the next request without an answer.
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let n = counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut b = [0u8; 4096];
                while !String::from_utf8_lossy(&req).contains("\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => req.extend_from_slice(&b[..k]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                if n == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
            });
        }
    });
    let proxy = TestProxy::start(
        &policy(&[p], &["origin.test"], ""),
        &[("origin.test", LO)],
        |_| {},
    )
    .await
    .unwrap();
    let url = format!("http://origin.test:{p}/");
    assert_eq!(code(&proxy, &url).await, "200");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let post = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-x",
        &proxy.url(),
        "-d",
        "body",
        &url,
    ])
    .await
    .unwrap();
    assert_eq!(
        post.stdout, "200",
        "POST after the origin closed the idle connection"
    );
    assert_eq!(
        code(&proxy, &url).await,
        "200",
        "GET the origin drops unanswered"
    );
    assert_eq!(conns.load(Ordering::SeqCst), 3);
    server.abort();
}

#[tokio::test]
async fn chunked_responses_head_and_http10_clients() {
    let o = origin::http(origin::loopback().await, "misc");
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["origin.test"], ""),
        &[("origin.test", LO)],
        |_| {},
    )
    .await
    .unwrap();
    let u = format!("http://origin.test:{p}");
    let out = curl(&["-x", &proxy.url(), &format!("{u}/chunked")])
        .await
        .unwrap();
    assert_eq!(out.stdout, "chunk-one\nchunk-two\n", "{out:?}");
    let out = curl(&["--http1.0", "-x", &proxy.url(), &format!("{u}/chunked")])
        .await
        .unwrap();
    assert_eq!(out.stdout, "chunk-one\nchunk-two\n", "{out:?}");
    let out = curl(&["-I", "-x", &proxy.url(), &format!("{u}/bytes/1234")])
        .await
        .unwrap();
    assert!(
        out.stdout.starts_with("HTTP/1.1 200")
            && out
                .stdout
                .to_ascii_lowercase()
                .contains("content-length: 1234"),
        "{out:?}"
    );
    let out = curl(&[
        "-x",
        &proxy.url(),
        &format!("{u}/bytes/3000000"),
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
    ])
    .await
    .unwrap();
    assert_eq!(out.stdout, "3000000");
    let out = curl(&[
        "-x",
        &proxy.url(),
        "--data-binary",
        "@-",
        &format!("{u}/post"),
    ])
    .await
    .unwrap();
    assert!(out.stdout.starts_with("origin misc: POST /post"), "{out:?}");
}

#[tokio::test]
async fn keep_alive_connection_to_a_revoked_host_is_closed_on_reload() {
    let o = origin::http(origin::loopback().await, "ka");
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["origin.test", "other.test"], ""),
        &[("origin.test", LO)],
        |_| {},
    )
    .await
    .unwrap();
    let mut s = tokio::net::TcpStream::connect(proxy.proxy.proxy_addr())
        .await
        .unwrap();
    s.write_all(
        format!("GET http://origin.test:{p}/ HTTP/1.1\r\nHost: origin.test:{p}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let want = format!("origin ka: GET / host=origin.test:{p} body=0\n");
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !String::from_utf8_lossy(&got).ends_with(&want) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&b[..n]);
    }
    proxy
        .write_policy(&policy(&[p], &["other.test"], ""))
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "keep-alive connection still open after revocation: {r:?}"
    );
}

#[tokio::test]
async fn upstream_failure_is_502_named_and_counted() {
    let dead = {
        let l = origin::loopback().await;
        l.local_addr().unwrap().port()
    };
    let o = origin::http(origin::loopback().await, "up");
    let p = o.addr.port();
    let extra = format!("[upstream]\ndefault = \"socks5://127.0.0.1:{dead}\"\n");
    let proxy = TestProxy::start(
        &policy(&[p], &["origin.test"], &extra),
        &[("origin.test", LO)],
        |c| c.limits.connect_timeout_ms = 2000,
    )
    .await
    .unwrap();
    let out = curl(&[
        "-i",
        "-x",
        &proxy.url(),
        &format!("http://origin.test:{p}/"),
    ])
    .await
    .unwrap();
    assert!(out.stdout.starts_with("HTTP/1.1 502"), "{out:?}");
    let rec = proxy
        .wait_log(|r| r["host"] == "origin.test")
        .await
        .unwrap();
    assert_eq!(rec["upstream"], format!("socks5://127.0.0.1:{dead}"));
    assert_eq!(
        rec["resolved"],
        format!("127.0.0.1:{p}"),
        "socks5:// gets the checked address"
    );
    assert!(
        rec["reason"].as_str().unwrap().starts_with("upstream_"),
        "{rec}"
    );
    let (_, metrics) = proxy.admin_get("/metrics").await.unwrap();
    assert!(
        metrics.contains("kennel_proxy_upstream_failures_total{kind="),
        "{metrics}"
    );
    assert_eq!(o.hits(), 0);
}

#[tokio::test]
async fn listens_on_ipv4_and_ipv6_at_once() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipping: no IPv6 loopback here");
        return;
    }
    let o = origin::http(origin::loopback().await, "dual");
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["origin.test"], ""),
        &[("origin.test", LO)],
        |c| {
            c.listen = vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()];
        },
    )
    .await
    .unwrap();
    assert_eq!(proxy.proxy.proxy_addrs().len(), 2);
    for a in proxy.proxy.proxy_addrs() {
        let out = curl(&[
            "-x",
            &format!("http://{a}"),
            &format!("http://origin.test:{p}/"),
        ])
        .await
        .unwrap();
        assert_eq!(
            out.stdout,
            format!("origin dual: GET / host=origin.test:{p} body=0\n"),
            "{a}: {out:?}"
        );
    }
}

#[tokio::test]
async fn readyz_reports_draining_while_a_tunnel_finishes() {
    let (_o, p, proxy) = echo_behind_proxy(|_| {}).await;
    let mut t = connect_tunnel(proxy.proxy.proxy_addr(), &format!("echo.test:{p}"))
        .await
        .unwrap();
    let admin = proxy.proxy.admin_addr().unwrap();
    let TestProxy {
        proxy: running,
        dir: _dir,
        ..
    } = proxy;
    let draining = tokio::spawn(running.shutdown());
    eventually(Duration::from_secs(5), || async {
        let r = raw(admin, b"GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n").await?;
        Ok(r.starts_with("HTTP/1.1 503").then_some(()))
    })
    .await
    .expect("/readyz reports draining");
    // The live tunnel still works during the drain; closing it ends the shutdown.
    t.write_all(b"still here").await.unwrap();
    let mut b = [0u8; 10];
    t.read_exact(&mut b).await.unwrap();
    drop(t);
    tokio::time::timeout(Duration::from_secs(5), draining)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn tls_without_sni_is_refused_unless_require_sni_is_off() {
    let ca = TestCa::new().unwrap();
    let o = origin::https(
        origin::loopback().await,
        "nosni",
        server_config(ca.leaf(&["tls.test", "127.0.0.1"]).unwrap()).unwrap(),
    );
    let p = o.addr.port();
    for require_sni in [true, false] {
        let proxy = TestProxy::start(&policy(&[p], &["tls.test"], ""), &[("tls.test", LO)], |c| {
            c.require_sni = require_sni
        })
        .await
        .unwrap();
        let tunnel = connect_tunnel(proxy.proxy.proxy_addr(), &format!("tls.test:{p}"))
            .await
            .unwrap();
        // An IP-address server name makes rustls send no SNI at all.
        let sn = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let tls = tokio_rustls::TlsConnector::from(ca.client_config().unwrap());
        let r = tokio::time::timeout(Duration::from_secs(5), tls.connect(sn, tunnel))
            .await
            .unwrap();
        if require_sni {
            assert!(r.is_err(), "handshake without SNI must fail");
            let rec = proxy
                .wait_log(|r| r["reason"] == "sni_missing")
                .await
                .unwrap();
            assert_eq!(rec["decision"], "deny");
        } else {
            let mut s = r.expect("handshake allowed with require_sni = false");
            s.write_all(
                format!("GET / HTTP/1.1\r\nHost: tls.test:{p}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
            assert!(out.contains("origin nosni: GET /"), "{out}");
        }
    }
}

#[tokio::test]
async fn names_resolved_over_dns_are_guarded_and_dialed_at_the_checked_address() {
    let o = origin::http(origin::loopback().await, "dns");
    let p = o.addr.port();
    let dns = origin::dns(vec![
        ("good.test", LO),
        ("private.test", "10.9.8.7".parse().unwrap()),
        ("metadata.test", "169.254.169.254".parse().unwrap()),
        ("mapped.test", "::ffff:127.0.0.1".parse().unwrap()),
    ])
    .await;
    let pol = format!(
        "[defaults]\nports = [{p}]\n[allow]\nhosts = [\"good.test\", \"private.test\", \"metadata.test\", \"mapped.test\", \"missing.test\"]\ncidrs = [\"127.0.0.0/8\"]\n"
    );
    let proxy = TestProxy::start(&pol, &[], |c| {
        c.resolver.static_only = false;
        c.resolver.nameservers = vec![dns.addr];
    })
    .await
    .unwrap();
    let out = curl(&["-x", &proxy.url(), &format!("http://good.test:{p}/")])
        .await
        .unwrap();
    assert_eq!(
        out.stdout,
        format!("origin dns: GET / host=good.test:{p} body=0\n"),
        "{out:?}"
    );
    assert!(dns.hits() > 0, "the name was resolved over DNS");
    for (host, why) in [
        ("private.test", "10.9.8.7"),
        ("metadata.test", "169.254.169.254"),
    ] {
        let out = curl(&["-i", "-x", &proxy.url(), &format!("http://{host}:{p}/")])
            .await
            .unwrap();
        assert!(
            out.stdout.starts_with("HTTP/1.1 403") && out.stdout.contains(why),
            "{host}: {out:?}"
        );
        assert!(
            out.stdout
                .contains("X-Kennel-Deny-Reason: address_not_allowed"),
            "{out:?}"
        );
    }
    let out = curl(&[
        "-i",
        "-x",
        &proxy.url(),
        &format!("http://missing.test:{p}/"),
    ])
    .await
    .unwrap();
    assert!(
        out.stdout.starts_with("HTTP/1.1 502") && out.stdout.contains("dns_failure"),
        "{out:?}"
    );
    assert_eq!(o.hits(), 1);
}

#[tokio::test]
async fn server_first_protocols_work_through_a_tunnel_with_require_sni() {
    let o = origin::banner(origin::loopback().await, "220 smtp.test ready\r\n");
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["smtp.test"], ""),
        &[("smtp.test", LO)],
        |c| {
            c.require_sni = true;
            // A server-first protocol is not TLS: its port must be opted in.
            c.plaintext_tunnel_ports = vec![p];
        },
    )
    .await
    .unwrap();
    let mut t = connect_tunnel(proxy.proxy.proxy_addr(), &format!("smtp.test:{p}"))
        .await
        .unwrap();
    // The client sends nothing before the server's greeting arrives.
    let mut b = vec![0u8; 21];
    tokio::time::timeout(Duration::from_secs(5), t.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b, b"220 smtp.test ready\r\n");
    t.write_all(b"EHLO x\r\n").await.unwrap();
    let mut e = vec![0u8; 8];
    t.read_exact(&mut e).await.unwrap();
    assert_eq!(e, b"EHLO x\r\n");
}

/// Regression (security review, HIGH): a plaintext request inside a CONNECT tunnel to an allowed
/// name could carry any `Host` header, and shared front ends route by it. Plain HTTP inside a
/// tunnel is served request by request (issue 14), and a request whose `Host` names another
/// host is refused with 403 and never reaches the origin; other non-TLS first bytes are refused
/// (`not_tls`) unless their port is in `plaintext_tunnel_ports`.
#[tokio::test]
async fn plaintext_http_inside_a_connect_tunnel_is_refused_by_default() {
    let o = origin::http(origin::loopback().await, "front");
    let p = o.addr.port();
    let smtp = origin::banner(origin::loopback().await, "220 smtp.test ready\r\n");
    let sp = smtp.addr.port();
    let pol = policy(&[p, sp], &["www.front.test", "smtp.test"], "");
    let hosts = [("www.front.test", LO), ("smtp.test", LO)];
    let proxy = TestProxy::start(&pol, &hosts, |_| {}).await.unwrap();
    let mut t = connect_tunnel(proxy.proxy.proxy_addr(), &format!("www.front.test:{p}"))
        .await
        .unwrap();
    t.write_all(b"GET / HTTP/1.1\r\nHost: attacker.front.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), t.read_to_string(&mut out))
        .await
        .expect("the tunnel is closed");
    assert!(out.starts_with("HTTP/1.1 403 "), "{out}");
    assert!(
        out.contains("X-Kennel-Deny-Reason: host_mismatch\r\n"),
        "{out}"
    );
    let rec = proxy
        .wait_log(|r| r["reason"] == "host_mismatch" && r["host"] == "www.front.test")
        .await
        .unwrap();
    assert_eq!(rec["decision"], "deny");
    assert_eq!(rec["status"], 403);
    assert_eq!(o.hits(), 0, "the request never reached the origin");
    assert_eq!(
        proxy
            .metric("kennel_proxy_decisions_total{kind=\"http\",decision=\"deny\",reason=\"host_mismatch\"}")
            .await
            .unwrap(),
        1
    );

    // Non-HTTP plaintext from the client stays refused.
    let mut t = connect_tunnel(proxy.proxy.proxy_addr(), &format!("www.front.test:{p}"))
        .await
        .unwrap();
    t.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut out))
        .await
        .expect("the tunnel is closed");
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    proxy
        .wait_log(|r| r["reason"] == "not_tls" && r["host"] == "www.front.test")
        .await
        .unwrap();
    assert_eq!(
        proxy
            .metric("kennel_proxy_decisions_total{kind=\"connect\",decision=\"deny\",reason=\"not_tls\"}")
            .await
            .unwrap(),
        1
    );
    assert_eq!(o.hits(), 0);

    // A destination that speaks first is not TLS either: refused unless opted in.
    let mut t = connect_tunnel(proxy.proxy.proxy_addr(), &format!("smtp.test:{sp}"))
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut out))
        .await
        .expect("the tunnel is closed");
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    proxy
        .wait_log(|r| r["reason"] == "not_tls" && r["host"] == "smtp.test")
        .await
        .unwrap();

    // With the port opted in, the same request goes through.
    let proxy = TestProxy::start(&pol, &hosts, |c| c.plaintext_tunnel_ports = vec![p])
        .await
        .unwrap();
    let mut t = connect_tunnel(proxy.proxy.proxy_addr(), &format!("www.front.test:{p}"))
        .await
        .unwrap();
    t.write_all(b"GET / HTTP/1.1\r\nHost: www.front.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), t.read_to_string(&mut out)).await;
    assert!(out.contains("origin front: GET /"), "{out}");
    assert_eq!(o.hits(), 1);
}

/// Regression (security review, LOW): readiness of the destination socket (an EOF, a reset or a
/// spurious wake-up) is not "the destination spoke first"; only bytes are. A destination that
/// closes without a word ends the tunnel and is not taken for a server-first protocol.
#[tokio::test]
async fn destination_closing_without_bytes_is_not_taken_for_a_server_first_protocol() {
    let l = origin::loopback().await;
    let p = l.local_addr().unwrap().port();
    let closer = tokio::spawn(async move {
        // Accept one connection and close it at once (FIN, no bytes).
        let (s, _) = l.accept().await.unwrap();
        drop(s);
    });
    let proxy = TestProxy::start(
        &policy(&[p], &["closer.test"], ""),
        &[("closer.test", LO)],
        |_| {},
    )
    .await
    .unwrap();
    let mut t = connect_tunnel(proxy.proxy.proxy_addr(), &format!("closer.test:{p}"))
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut out))
        .await
        .expect("the tunnel is closed");
    closer.await.unwrap();
    let rec = proxy
        .wait_log(|r| r["host"] == "closer.test")
        .await
        .unwrap();
    assert_ne!(rec["reason"], "not_tls", "{rec}");
    assert_eq!(rec["decision"], "allow", "{rec}");
    assert_eq!(
        rec["error"], "the destination closed before the client sent anything",
        "{rec}"
    );
}

/// Regression (security review, MEDIUM): with Encrypted Client Hello the SNI kennel sees is only
/// the public cover name; the real destination is hidden. Such hellos are refused (`sni_ech`)
/// unless `allow_ech = true`.
#[tokio::test]
async fn client_hello_with_ech_is_refused_unless_allow_ech() {
    let o = origin::echo(origin::loopback().await);
    let p = o.addr.port();
    let pol = policy(&[p], &["cover.test"], "");
    for allow_ech in [false, true] {
        let proxy = TestProxy::start(&pol, &[("cover.test", LO)], |c| c.allow_ech = allow_ech)
            .await
            .unwrap();
        // Control: the same hello without ECH passes (the echo origin sends it back).
        for ech in [false, true] {
            let hello = client_hello("cover.test", ech);
            let mut t = connect_tunnel(proxy.proxy.proxy_addr(), &format!("cover.test:{p}"))
                .await
                .unwrap();
            t.write_all(&hello).await.unwrap();
            let mut back = vec![0u8; hello.len()];
            let r = tokio::time::timeout(Duration::from_secs(5), t.read_exact(&mut back))
                .await
                .expect("tunnel answered or closed");
            if ech && !allow_ech {
                assert!(r.is_err(), "an ECH hello must not pass");
                let rec = proxy.wait_log(|r| r["reason"] == "sni_ech").await.unwrap();
                assert_eq!(rec["decision"], "deny");
                assert_eq!(rec["sni"], "cover.test");
            } else {
                r.expect("hello relayed");
                assert_eq!(back, hello, "ech={ech} allow_ech={allow_ech}");
            }
        }
    }
}

/// Regression (security review): a 407 from an HTTP upstream on plain-HTTP forwarding reached
/// the client raw. It is the upstream's failure: 502 naming the upstream, counted.
#[tokio::test]
async fn http_upstream_407_on_forwarding_is_a_502_naming_the_upstream() {
    let up = origin::loopback().await;
    let up_port = up.local_addr().unwrap().port();
    // A fake HTTP proxy that demands authentication on every request (bounded: 5 connections).
    let fake = tokio::spawn(async move {
        for _ in 0..5 {
            let Ok((mut s, _)) = up.accept().await else {
                return;
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
                    .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"fake\"\r\nContent-Length: 11\r\n\r\nlog in here")
                    .await;
            });
        }
    });
    let o = origin::http(origin::loopback().await, "behind");
    let p = o.addr.port();
    let extra = format!("[upstream]\ndefault = \"http://127.0.0.1:{up_port}\"\n");
    let proxy = TestProxy::start(
        &policy(&[p], &["origin.test"], &extra),
        &[("origin.test", LO)],
        |_| {},
    )
    .await
    .unwrap();
    let out = curl(&[
        "-i",
        "-x",
        &proxy.url(),
        &format!("http://origin.test:{p}/"),
    ])
    .await
    .unwrap();
    assert!(out.stdout.starts_with("HTTP/1.1 502"), "{out:?}");
    assert!(
        out.stdout.contains(&format!("127.0.0.1:{up_port}")),
        "the body names the upstream: {out:?}"
    );
    assert!(!out.stdout.contains("log in here"), "{out:?}");
    let rec = proxy
        .wait_log(|r| r["host"] == "origin.test")
        .await
        .unwrap();
    assert_eq!(rec["status"], 502, "{rec}");
    assert_eq!(rec["reason"], "upstream_auth_rejected", "{rec}");
    assert_eq!(
        proxy
            .metric("kennel_proxy_upstream_failures_total{kind=\"auth_rejected\"}")
            .await
            .unwrap(),
        1
    );
    fake.abort();
}

/// Environments run the proxy in a container where the policy lives at /etc/kennel; a deny
/// message must name the file the person can edit on the host (`[policy] shown_as`), for plain
/// HTTP and for CONNECT alike.
#[tokio::test]
async fn deny_messages_name_the_policy_as_configured_in_shown_as() {
    let proxy = TestProxy::start(&policy(&[80, 443], &["origin.test"], ""), &[], |cfg| {
        cfg.policy.shown_as = Some("/var/lib/kennel/envs/demo/policy/policy.toml".into());
    })
    .await
    .unwrap();
    let want = "To allow it, add \"evil.test\" to hosts in the [allow] table of /var/lib/kennel/envs/demo/policy/policy.toml.";

    let (status, http) = proxy.get("http://evil.test/").await.unwrap();
    assert_eq!(status, 403, "{http}");
    assert!(http.contains(want), "{http}");
    assert!(
        !http.contains(&proxy.policy_path.display().to_string()),
        "{http}"
    );

    let connect = proxy
        .connect("evil.test:443")
        .await
        .expect_err("denied")
        .to_string();
    assert!(connect.starts_with("HTTP/1.1 403"), "{connect}");
    assert!(connect.contains(want), "{connect}");
}

/// Issue 14 item 1: `curl -p` (proxytunnel) sends plain HTTP through a CONNECT tunnel. The
/// requests are forwarded to the admitted address over the tunnel's one connection, in order,
/// and each gets its own access-log line like a forwarded request.
#[tokio::test]
async fn curl_proxytunnel_plain_http_through_a_connect_tunnel() {
    let o = origin::http(origin::loopback().await, "front");
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["www.front.test"], ""),
        &[("www.front.test", LO)],
        |c| c.require_sni = true,
    )
    .await
    .unwrap();
    let out = curl(&[
        "-p",
        "-x",
        &proxy.url(),
        &format!("http://www.front.test:{p}/one"),
        "-d",
        "hello",
        &format!("http://www.front.test:{p}/two"),
    ])
    .await
    .unwrap();
    assert_eq!(
        out.stdout,
        format!(
            "origin front: POST /one host=www.front.test:{p} body=5\norigin front: POST /two host=www.front.test:{p} body=5\n"
        ),
        "{out:?}"
    );
    assert_eq!(o.hits(), 2);
    assert_eq!(o.conns(), 1, "both requests went through the one tunnel");
    let line = proxy
        .wait_log(|r| r["method"] == "POST" && r["host"] == "www.front.test")
        .await
        .unwrap();
    assert_eq!(line["decision"], "allow", "{line}");
    assert_eq!(line["reason"], "allowed_by_rule", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["bytes_up"], 5, "{line}");
    assert_eq!(line["port"], p, "{line}");
    let tunnel = proxy
        .wait_log(|r| r["method"] == "CONNECT" && r["host"] == "www.front.test")
        .await
        .unwrap();
    assert_eq!(tunnel["decision"], "allow", "{tunnel}");
    assert_eq!(tunnel["bytes_up"], 10, "{tunnel}");
    let posts = proxy
        .log()
        .iter()
        .filter(|r| r["method"] == "POST" && r["status"] == 200)
        .count();
    assert_eq!(posts, 2);
    assert_eq!(
        proxy
            .metric("kennel_proxy_decisions_total{kind=\"http\",decision=\"allow\",reason=\"allowed_by_rule\"}")
            .await
            .unwrap(),
        2
    );
}

/// Read one HTTP/1.1 response with a Content-Length body from `t`.
async fn read_response(t: &mut tokio::net::TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = t.read(&mut byte).await.expect("read the head");
        assert_eq!(n, 1, "EOF inside a head: {}", String::from_utf8_lossy(&got));
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    t.read_exact(&mut body).await.expect("read the body");
    head + &String::from_utf8_lossy(&body)
}

/// Issue 14 item 1: every request of a tunnel is checked, not only the first. A second request
/// in the same tunnel naming another host (sent after the first response, or pipelined behind
/// it) is refused with 403 and never reaches the origin.
#[tokio::test]
async fn second_request_with_another_host_in_a_tunnel_is_refused_and_not_forwarded() {
    let o = origin::http(origin::loopback().await, "front");
    let p = o.addr.port();
    let proxy = TestProxy::start(
        &policy(&[p], &["www.front.test"], ""),
        &[("www.front.test", LO)],
        |_| {},
    )
    .await
    .unwrap();
    let good = format!("GET /ok HTTP/1.1\r\nHost: www.front.test:{p}\r\n\r\n");
    let bad = format!("GET /steal HTTP/1.1\r\nHost: admin.front.test:{p}\r\n\r\n");

    // One after the other.
    let mut t = connect_tunnel(proxy.proxy.proxy_addr(), &format!("www.front.test:{p}"))
        .await
        .unwrap();
    t.write_all(good.as_bytes()).await.unwrap();
    let first = read_response(&mut t).await;
    assert!(first.starts_with("HTTP/1.1 200 "), "{first}");
    let want = format!("origin front: GET /ok host=www.front.test:{p} body=0\n");
    assert!(first.ends_with(&want), "{first}");
    t.write_all(bad.as_bytes()).await.unwrap();
    let mut rest = String::new();
    tokio::time::timeout(Duration::from_secs(5), t.read_to_string(&mut rest))
        .await
        .expect("the tunnel is closed after the refusal")
        .unwrap();
    assert!(rest.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{rest}");
    assert!(
        rest.contains("X-Kennel-Deny-Reason: host_mismatch"),
        "{rest}"
    );
    assert!(rest.contains("admin.front.test"), "{rest}");
    assert_eq!(o.hits(), 1, "the origin saw only the first request");

    // Pipelined: both in one write.
    let mut t = connect_tunnel(proxy.proxy.proxy_addr(), &format!("www.front.test:{p}"))
        .await
        .unwrap();
    t.write_all(format!("{good}{bad}").as_bytes())
        .await
        .unwrap();
    let first = read_response(&mut t).await;
    assert!(first.starts_with("HTTP/1.1 200 "), "{first}");
    let mut rest = String::new();
    tokio::time::timeout(Duration::from_secs(5), t.read_to_string(&mut rest))
        .await
        .expect("the tunnel is closed after the refusal")
        .unwrap();
    assert!(rest.starts_with("HTTP/1.1 403 "), "{rest}");
    assert_eq!(
        o.hits(),
        2,
        "the pipelined second request was not forwarded"
    );

    // A request without Host: 400, not forwarded.
    let mut t = connect_tunnel(proxy.proxy.proxy_addr(), &format!("www.front.test:{p}"))
        .await
        .unwrap();
    t.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut rest = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), t.read_to_string(&mut rest)).await;
    assert!(rest.starts_with("HTTP/1.1 400 "), "{rest}");
    assert_eq!(o.hits(), 2);
    drop(t);
    // A refusal is logged once the refused client's side is closed (linger_close).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = proxy.log();
        let count = |reason: &str| {
            log.iter()
                .filter(|r| r["reason"] == reason && r["method"] == "GET")
                .count()
        };
        if count("host_mismatch") == 2 && count("bad_request") == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{log:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 14 item 1: a WebSocket client and server (tokio-tungstenite) on loopback exchange
/// messages through a CONNECT tunnel: the upgrade request is checked and forwarded, the `101`
/// is passed on, and the connection is relayed as is afterwards. An upgrade naming another
/// host is refused.
#[tokio::test]
async fn websocket_through_a_connect_tunnel() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let l = origin::loopback().await;
    let p = l.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let acc = accepted.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let acc = acc.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                while let Some(Ok(m)) = ws.next().await {
                    let reply = match m {
                        Message::Text(t) => Message::text(format!("echo: {}", t.as_str())),
                        Message::Binary(b) => {
                            Message::binary(b.iter().rev().copied().collect::<Vec<u8>>())
                        }
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let proxy = TestProxy::start(&policy(&[p], &["ws.test"], ""), &[("ws.test", LO)], |_| {})
        .await
        .unwrap();
    let t = connect_tunnel(proxy.proxy.proxy_addr(), &format!("ws.test:{p}"))
        .await
        .unwrap();
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(format!("ws://ws.test:{p}/chat"), t),
    )
    .await
    .expect("handshake in time")
    .expect("WebSocket handshake through the tunnel");
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        ws.send(Message::text(format!("message {i}")))
            .await
            .unwrap();
        let got = ws.next().await.unwrap().unwrap();
        assert_eq!(got, Message::text(format!("echo: message {i}")));
    }
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    let got = ws.next().await.unwrap().unwrap();
    assert_eq!(
        got.into_data().to_vec(),
        big.iter().rev().copied().collect::<Vec<u8>>()
    );
    ws.close(None).await.unwrap();
    drop(ws);
    let upgrade = proxy
        .wait_log(|r| r["method"] == "GET" && r["host"] == "ws.test")
        .await
        .unwrap();
    assert_eq!(upgrade["status"], 101, "{upgrade}");
    assert_eq!(upgrade["decision"], "allow", "{upgrade}");
    let tunnel = proxy
        .wait_log(|r| r["method"] == "CONNECT" && r["host"] == "ws.test")
        .await
        .unwrap();
    assert!(tunnel["bytes_down"].as_u64().unwrap() > 200_000, "{tunnel}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);

    // An upgrade whose Host names another destination is refused before the origin sees it.
    let t = connect_tunnel(proxy.proxy.proxy_addr(), &format!("ws.test:{p}"))
        .await
        .unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(format!("ws://other.test:{p}/chat"), t),
    )
    .await
    .expect("answered in time");
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("expected a 403, got {other:?}"),
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    server.abort();
}
