//! Upstream chaining (issue 5) against real upstream proxies started by the tests on loopback:
//! microsocks, dante, tinyproxy, squid, `ssh -D` to a local sshd, and a TLS front for
//! `https://` upstreams. First the `UpstreamDialer` on its own, then end to end through the
//! proxy with curl.

use std::net::SocketAddr;
use std::time::Duration;

use kennel_policy::{Credentials, Target, Upstream};
use kennel_proxy::upstream::{BoxedIo, HttpHop, UpstreamDialer, UpstreamError, UpstreamSettings};
use kennel_test_support::upstreams::{
    Origin, TestCa, TlsFront, UPSTREAM_ONLY_NAME, UpstreamProxy, free_port, hermetic_dns,
    origin_body,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn dialer() -> UpstreamDialer {
    UpstreamDialer::new(&UpstreamSettings::default()).expect("dialer")
}

fn dialer_with_ca(ca: &TestCa) -> UpstreamDialer {
    UpstreamDialer::new(&UpstreamSettings {
        ca_file: Some(ca.ca_path()),
        ..UpstreamSettings::default()
    })
    .expect("dialer with CA file")
}

fn creds(u: &str, p: &str) -> Option<Credentials> {
    Some(Credentials {
        username: u.into(),
        password: p.into(),
    })
}

fn socks(up: &UpstreamProxy, remote_dns: bool, credentials: Option<Credentials>) -> Upstream {
    Upstream::Socks5 {
        host: "127.0.0.1".into(),
        port: up.addr().port(),
        credentials,
        remote_dns,
    }
}

fn http_up(addr: SocketAddr, tls: bool, credentials: Option<Credentials>) -> Upstream {
    Upstream::Http {
        host: if tls {
            "localhost".into()
        } else {
            addr.ip().to_string()
        },
        port: addr.port(),
        credentials,
        tls,
    }
}

fn target(s: &str) -> Target {
    Target::parse_authority(s).expect("valid authority")
}

/// Sends an origin-form GET over `io` (`Connection: close`) and returns the whole response.
async fn get_over(mut io: BoxedIo, host: &str, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    io.write_all(req.as_bytes()).await.expect("write request");
    read_all(io).await
}

async fn read_all(mut io: BoxedIo) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, io.read_to_end(&mut out))
        .await
        .expect("response within the I/O timeout")
        .expect("read response");
    String::from_utf8_lossy(&out).into_owned()
}

fn expect_err<T>(r: Result<T, UpstreamError>, what: &str) -> UpstreamError {
    match r {
        Ok(_) => panic!("{what}: expected an upstream error, got a connection"),
        Err(e) => e,
    }
}

// ------------------------------------------------------------------------------------------
// The dialer against real upstreams

#[tokio::test]
async fn dialer_microsocks_socks5_sends_ip_and_socks5h_sends_name() {
    let origin = Origin::http().await;
    let up = UpstreamProxy::microsocks(None).await;
    let d = dialer();

    // socks5://: kennel resolved + guarded the name; the upstream gets the checked IP.
    let t = target(&format!("origin.kennel.test:{}", origin.port()));
    let io = d
        .open_tunnel(&socks(&up, false, None), &t, Some(origin.addr()))
        .await
        .expect("socks5 tunnel");
    let resp = get_over(io, "origin.kennel.test", "/via-socks5").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with(&origin_body("/via-socks5")), "{resp}");
    up.wait_log_contains(&format!("connected to 127.0.0.1:{}", origin.port()))
        .await;

    // socks5h://: the name goes to the upstream, which resolves it.
    let t = target(&format!("localhost:{}", origin.port()));
    let io = d
        .open_tunnel(&socks(&up, true, None), &t, None)
        .await
        .expect("socks5h tunnel");
    let resp = get_over(io, "localhost", "/via-socks5h").await;
    assert!(resp.ends_with(&origin_body("/via-socks5h")), "{resp}");
    up.wait_log_contains(&format!("connected to localhost:{}", origin.port()))
        .await;
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn dialer_microsocks_username_password() {
    let origin = Origin::http().await;
    let up = UpstreamProxy::microsocks(Some(("alice", "correct-horse"))).await;
    let d = dialer();
    let t = target(&format!("127.0.0.1:{}", origin.port()));

    let io = d
        .open_tunnel(&socks(&up, true, creds("alice", "correct-horse")), &t, None)
        .await
        .expect("tunnel with the right credentials");
    let resp = get_over(io, "127.0.0.1", "/authed").await;
    assert!(resp.ends_with(&origin_body("/authed")), "{resp}");

    let e = expect_err(
        d.open_tunnel(&socks(&up, true, creds("alice", "wrong-battery")), &t, None)
            .await,
        "wrong password",
    );
    assert_eq!(e.kind(), "auth_rejected", "{e}");
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!(
            "upstream socks5h://127.0.0.1:{}: authentication rejected",
            up.addr().port()
        )),
        "{shown}"
    );
    assert!(!shown.contains("wrong-battery") && !format!("{e:?}").contains("wrong-battery"));

    let e = expect_err(
        d.open_tunnel(&socks(&up, true, None), &t, None).await,
        "no credentials",
    );
    assert_eq!(e.kind(), "auth_rejected", "{e}");
    assert_eq!(
        origin.hits(),
        1,
        "rejected tunnels must not reach the origin"
    );
}

#[tokio::test]
async fn dialer_dante_tunnel_and_refused_target() {
    let origin = Origin::http().await;
    let up = UpstreamProxy::dante().await;
    let d = dialer();

    let t = target(&format!("localhost:{}", origin.port()));
    let io = d
        .open_tunnel(&socks(&up, true, None), &t, None)
        .await
        .expect("dante socks5h tunnel");
    let resp = get_over(io, "localhost", "/dante").await;
    assert!(resp.ends_with(&origin_body("/dante")), "{resp}");

    let closed = free_port();
    let t = target(&format!("127.0.0.1:{closed}"));
    let e = expect_err(
        d.open_tunnel(&socks(&up, false, None), &t, None).await,
        "closed target port",
    );
    assert_eq!(e.kind(), "target_refused", "{e}");
    assert!(e.to_string().contains("connection refused"), "{e}");
}

#[tokio::test]
async fn dialer_ssh_dynamic_forward() {
    let origin = Origin::http().await;
    let up = UpstreamProxy::ssh_dynamic().await;
    let d = dialer();

    let t = target(&format!("localhost:{}", origin.port()));
    let io = d
        .open_tunnel(&socks(&up, true, None), &t, None)
        .await
        .expect("ssh -D socks5h tunnel");
    let resp = get_over(io, "localhost", "/through-ssh").await;
    assert!(resp.ends_with(&origin_body("/through-ssh")), "{resp}");

    let t = target(&format!("origin.kennel.test:{}", origin.port()));
    let io = d
        .open_tunnel(&socks(&up, false, None), &t, Some(origin.addr()))
        .await
        .expect("ssh -D socks5 tunnel with the checked IP");
    let resp = get_over(io, "origin.kennel.test", "/through-ssh-ip").await;
    assert!(resp.ends_with(&origin_body("/through-ssh-ip")), "{resp}");
    up.wait_connections(2).await;

    // sshd cannot connect: ssh closes the SOCKS connection without a reply.
    let t = target(&format!("127.0.0.1:{}", free_port()));
    let e = expect_err(
        d.open_tunnel(&socks(&up, true, None), &t, None).await,
        "closed target port behind ssh -D",
    );
    assert_eq!(e.kind(), "target_refused", "{e}");
}

#[tokio::test]
async fn dialer_tinyproxy_connect_and_absolute_form() {
    let origin = Origin::http().await;
    let up = UpstreamProxy::tinyproxy(None).await;
    let d = dialer();
    let upstream = http_up(up.addr(), false, None);
    let t = target(&format!("localhost:{}", origin.port()));

    let io = d
        .open_tunnel(&upstream, &t, None)
        .await
        .expect("CONNECT tunnel");
    let resp = get_over(io, "localhost", "/tunnelled").await;
    assert!(resp.ends_with(&origin_body("/tunnelled")), "{resp}");
    up.wait_log_contains(&format!("CONNECT localhost:{}", origin.port()))
        .await;

    let (mut io, hop) = d
        .open_http(&upstream, &t, None)
        .await
        .expect("proxy connection");
    assert_eq!(
        hop,
        HttpHop::Proxy {
            authorization: None
        }
    );
    let req = format!(
        "GET http://localhost:{}/forwarded HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
        origin.port(),
        origin.port()
    );
    io.write_all(req.as_bytes()).await.expect("write");
    let resp = read_all(io).await;
    assert!(resp.ends_with(&origin_body("/forwarded")), "{resp}");

    let t = target(&format!("127.0.0.1:{}", free_port()));
    let e = expect_err(d.open_tunnel(&upstream, &t, None).await, "closed port");
    assert_eq!(e.kind(), "target_refused", "{e}");
    assert!(e.to_string().contains("refused CONNECT 127.0.0.1:"), "{e}");
}

#[tokio::test]
async fn dialer_squid_basic_auth() {
    let origin = Origin::http().await;
    let up = UpstreamProxy::squid("bob", "squid-pass").await;
    let d = dialer();
    let t = target(&format!("127.0.0.1:{}", origin.port()));

    let good = http_up(up.addr(), false, creds("bob", "squid-pass"));
    let io = d
        .open_tunnel(&good, &t, None)
        .await
        .expect("authenticated CONNECT");
    let resp = get_over(io, "127.0.0.1", "/squid-tunnel").await;
    assert!(resp.ends_with(&origin_body("/squid-tunnel")), "{resp}");

    let (mut io, hop) = d
        .open_http(&good, &t, None)
        .await
        .expect("proxy connection");
    let HttpHop::Proxy {
        authorization: Some(auth),
    } = hop
    else {
        panic!("an HTTP upstream with credentials must give a Proxy-Authorization value");
    };
    assert!(auth.starts_with("Basic "));
    let req = format!(
        "GET http://127.0.0.1:{p}/squid-forward HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nProxy-Authorization: {auth}\r\nConnection: close\r\n\r\n",
        p = origin.port()
    );
    io.write_all(req.as_bytes()).await.expect("write");
    let resp = read_all(io).await;
    assert!(resp.ends_with(&origin_body("/squid-forward")), "{resp}");

    let bad = http_up(up.addr(), false, creds("bob", "not-the-pass"));
    let e = expect_err(d.open_tunnel(&bad, &t, None).await, "wrong password");
    assert_eq!(e.kind(), "auth_rejected", "{e}");
    assert!(e.to_string().contains("407"), "{e}");
    assert!(!e.to_string().contains("not-the-pass"));

    let none = http_up(up.addr(), false, None);
    let e = expect_err(d.open_tunnel(&none, &t, None).await, "no credentials");
    assert_eq!(e.kind(), "auth_rejected", "{e}");

    let t = target(&format!("127.0.0.1:{}", free_port()));
    let e = expect_err(d.open_tunnel(&good, &t, None).await, "closed port");
    assert_eq!(e.kind(), "target_refused", "{e}");
    assert!(e.to_string().contains("503"), "{e}");
}

#[tokio::test]
async fn dialer_https_upstream_verifies_its_certificate() {
    let ca = TestCa::new();
    let origin = Origin::tls(&ca).await;
    let up = UpstreamProxy::tinyproxy(None).await;
    let front = TlsFront::start(up.addr(), &ca).await;
    let upstream = http_up(front.addr(), true, None);
    let t = target(&format!("localhost:{}", origin.port()));

    // Trusted through the CA file: TLS to the upstream, CONNECT, then TLS to the origin inside.
    let io = dialer_with_ca(&ca)
        .open_tunnel(&upstream, &t, None)
        .await
        .expect("https upstream tunnel");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let tls = tokio_rustls::TlsConnector::from(ca.client_config())
        .connect(name, io)
        .await
        .expect("TLS to the origin through the https upstream");
    let resp = get_over(Box::new(tls), "localhost", "/https-upstream").await;
    assert!(resp.ends_with(&origin_body("/https-upstream")), "{resp}");

    // Not trusted with the system roots only.
    let e = expect_err(
        dialer().open_tunnel(&upstream, &t, None).await,
        "untrusted upstream",
    );
    assert_eq!(e.kind(), "tls", "{e}");
    assert!(
        e.to_string().contains(&format!(
            "upstream https://localhost:{}",
            front.addr().port()
        )),
        "{e}"
    );
}

#[tokio::test]
async fn dialer_upstream_down_timeout_and_garbage() {
    let t = target("origin.kennel.test:443");
    let checked: SocketAddr = "127.0.0.1:443".parse().expect("addr");

    // Nothing listens: unreachable.
    let down = Upstream::Socks5 {
        host: "127.0.0.1".into(),
        port: free_port(),
        credentials: None,
        remote_dns: false,
    };
    let e = expect_err(dialer().open_tunnel(&down, &t, Some(checked)).await, "down");
    assert_eq!(e.kind(), "unreachable", "{e}");
    assert!(!e.is_timeout());

    // Accepts but never answers: timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let quick = UpstreamDialer::new(&UpstreamSettings {
        connect_timeout: Duration::from_millis(300),
        ca_file: None,
    })
    .expect("dialer");
    let e = expect_err(
        quick
            .open_tunnel(&http_up(silent_addr, false, None), &t, None)
            .await,
        "silent upstream",
    );
    assert!(e.is_timeout(), "{e}");
    assert_eq!(e.kind(), "timeout");

    // Answers something that is not HTTP: protocol.
    let liar = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let liar_addr = liar.local_addr().expect("addr");
    let lie = tokio::spawn(async move {
        while let Ok((mut s, _)) = liar.accept().await {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
        }
    });
    let e = expect_err(
        dialer()
            .open_tunnel(&http_up(liar_addr, false, None), &t, None)
            .await,
        "non-HTTP upstream",
    );
    assert_eq!(e.kind(), "protocol", "{e}");
    hold.abort();
    lie.abort();
}

#[tokio::test]
async fn dialer_socks5h_name_only_the_upstream_knows() {
    if !hermetic_dns() {
        eprintln!(
            "SKIPPED dialer_socks5h_name_only_the_upstream_knows: cannot give the upstream a \
             private hosts file (needs `unshare -m`, i.e. root), and resolving unknown names \
             would query a real DNS server"
        );
        return;
    }
    let origin = Origin::http().await;
    let up = UpstreamProxy::microsocks(None).await;
    let t = target(&format!("{UPSTREAM_ONLY_NAME}:{}", origin.port()));
    let io = dialer()
        .open_tunnel(&socks(&up, true, None), &t, None)
        .await
        .expect("socks5h: the upstream resolves the name");
    let resp = get_over(io, UPSTREAM_ONLY_NAME, "/far").await;
    assert!(resp.ends_with(&origin_body("/far")), "{resp}");

    // A name the upstream cannot resolve (its resolver is 127.0.0.1, where nothing answers).
    let t = target(&format!("near.kennel.test:{}", origin.port()));
    let e = expect_err(
        dialer()
            .open_tunnel(&socks(&up, true, None), &t, None)
            .await,
        "name unknown to the upstream",
    );
    assert_eq!(e.kind(), "target_refused", "{e}");
}
