//! Upstream chaining (issue 5) against real upstream proxies started by the tests on loopback:
//! microsocks, dante, tinyproxy, squid, `ssh -D` to a local sshd, and a TLS front for
//! `https://` upstreams. First the `UpstreamDialer` on its own, then end to end through the
//! proxy with curl.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use kennel_policy::{Credentials, Target, Upstream};
use kennel_proxy::ProxyConfig;
use kennel_proxy::upstream::{BoxedIo, HttpHop, UpstreamDialer, UpstreamError, UpstreamSettings};
use kennel_test_support::proxy_harness::{TestProxy, connect_tunnel, curl};
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
async fn dialer_keeps_bytes_the_upstream_sent_with_its_connect_reply() {
    // A server-speaks-first target (SSH) behind an HTTP upstream: the banner can arrive in the
    // same segment as the `200`; it must be the first thing read from the tunnel.
    let fake = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = fake.local_addr().expect("addr");
    let serve = tokio::spawn(async move {
        let (mut s, _) = fake.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut b).await.expect("read CONNECT");
            assert!(n == 1, "client closed before the end of its CONNECT head");
            head.push(b[0]);
        }
        s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-fake\r\n")
            .await
            .expect("write");
        let mut echo = [0u8; 5];
        s.read_exact(&mut echo).await.expect("read client bytes");
        s.write_all(&echo).await.expect("echo");
        String::from_utf8_lossy(&head).into_owned()
    });
    let mut io = dialer()
        .open_tunnel(
            &http_up(addr, false, creds("u", "p")),
            &target("git.example:22"),
            None,
        )
        .await
        .expect("tunnel");
    let mut banner = [0u8; 14];
    tokio::time::timeout(IO_TIMEOUT, io.read_exact(&mut banner))
        .await
        .expect("the banner sent with the 200 is readable from the tunnel")
        .expect("banner");
    assert_eq!(&banner, b"SSH-2.0-fake\r\n");
    io.write_all(b"hello").await.expect("write");
    let mut back = [0u8; 5];
    io.read_exact(&mut back).await.expect("echo");
    assert_eq!(&back, b"hello");
    let head = serve.await.expect("fake upstream");
    assert!(
        head.starts_with("CONNECT git.example:22 HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\nProxy-Authorization: Basic dTpw\r\n"),
        "{head}"
    );
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

// ------------------------------------------------------------------------------------------
// End to end: curl → kennel-proxy → real upstream → origin

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Names kennel's static hosts map resolves to 127.0.0.1 (kennel never sends DNS in tests).
/// `far.kennel.test` is deliberately absent: only the upstreams' private hosts file knows it.
const KENNEL_HOSTS: &[&str] = &[
    "origin.kennel.test",
    "near.kennel.test",
    "localhost",
    "a.via-socks.kennel.test",
    "a.via-http.kennel.test",
    "evil.kennel.test",
];

/// Origins (plain and TLS) plus a proxy whose policy allows every test name but
/// `evil.kennel.test`, on the origins' ports, with `upstream` as its `[upstream]` section.
struct Chain {
    proxy: TestProxy,
    http: Origin,
    https: Origin,
    ca: TestCa,
}

fn chain_policy(ports: [u16; 2], upstream: &str) -> String {
    format!(
        "[defaults]\nports = [{}, {}]\n[allow]\nhosts = [\"origin.kennel.test\", \"near.kennel.test\", \
         \"far.kennel.test\", \"localhost\", \".via-socks.kennel.test\", \".via-http.kennel.test\"]\n\
         cidrs = [\"127.0.0.0/8\"]\n{upstream}\n",
        ports[0], ports[1]
    )
}

impl Chain {
    async fn start(upstream: &str) -> Chain {
        Chain::start_with(upstream, |_| {}).await
    }

    async fn start_with(upstream: &str, tweak: impl FnOnce(&mut ProxyConfig)) -> Chain {
        let ca = TestCa::new();
        let http = Origin::http().await;
        let https = Origin::tls(&ca).await;
        let hosts: Vec<(&str, IpAddr)> = KENNEL_HOSTS.iter().map(|h| (*h, LO)).collect();
        let proxy = TestProxy::start(
            &chain_policy([http.port(), https.port()], upstream),
            &hosts,
            tweak,
        )
        .await
        .expect("start proxy");
        Chain {
            proxy,
            http,
            https,
            ca,
        }
    }

    /// Plain-HTTP GET through the proxy: (status, body).
    async fn get(&self, host: &str, path: &str) -> (String, String) {
        let url = format!("http://{host}:{}{path}", self.http.port());
        let out = curl(&["-w", "\n%{http_code}", "-x", &self.proxy.url(), &url])
            .await
            .expect("run curl");
        let (body, status) = out.stdout.rsplit_once('\n').unwrap_or(("", ""));
        (status.to_string(), body.to_string())
    }

    /// HTTPS GET through the proxy (CONNECT): (CONNECT status, HTTP status, body).
    async fn get_tls(&self, host: &str, path: &str) -> (String, String, String) {
        let url = format!("https://{host}:{}{path}", self.https.port());
        let ca = self.ca.ca_path().display().to_string();
        let out = curl(&[
            "-w",
            "\n%{http_connect} %{http_code}",
            "--cacert",
            &ca,
            "-x",
            &self.proxy.url(),
            &url,
        ])
        .await
        .expect("run curl");
        let (body, codes) = out.stdout.rsplit_once('\n').unwrap_or(("", ""));
        let (connect, code) = codes.split_once(' ').unwrap_or(("", ""));
        (connect.to_string(), code.to_string(), body.to_string())
    }

    /// The proxy's error response to a raw CONNECT (the body curl does not show).
    async fn connect_error(&self, authority: &str) -> String {
        match connect_tunnel(self.proxy.proxy.proxy_addr(), authority).await {
            Ok(_) => panic!("CONNECT {authority} unexpectedly succeeded"),
            Err(e) => e.to_string(),
        }
    }

    /// Asserts one HTTP and one HTTPS request reach the origins through the chain, and that
    /// the access log names `upstream_shown` (never credentials).
    async fn assert_reaches_origins(&self, host: &str, upstream_shown: &str) {
        let (status, body) = self.get(host, "/plain").await;
        assert_eq!(status, "200", "plain HTTP via {upstream_shown}: {body}");
        assert_eq!(body, origin_body("/plain"));
        let (connect, status, body) = self.get_tls(host, "/tls").await;
        assert_eq!(
            (connect.as_str(), status.as_str()),
            ("200", "200"),
            "HTTPS via {upstream_shown}: {body}"
        );
        assert_eq!(body, origin_body("/tls"));
        let rec = self
            .proxy
            .wait_log(|r| r["port"] == self.https.port() && r["status"] == 200)
            .await
            .expect("access-log record of the tunnel");
        assert_eq!(rec["upstream"], upstream_shown, "{rec}");
    }

    /// A denied host is refused by kennel (403) for HTTP and HTTPS and never reaches `up`:
    /// after the denials one allowed tunnel is made, and the upstream must have logged exactly
    /// that one new connection.
    async fn assert_denied_never_reaches(&self, up: &UpstreamProxy, allowed_host: &str) {
        let before = up.connections();
        let (status, body) = self.get("evil.kennel.test", "/x").await;
        assert_eq!(status, "403", "{body}");
        assert!(body.contains("evil.kennel.test"), "{body}");
        let (connect, _, _) = self.get_tls("evil.kennel.test", "/x").await;
        assert_eq!(connect, "403");
        let (connect, status, _) = self.get_tls(allowed_host, "/sync").await;
        assert_eq!((connect.as_str(), status.as_str()), ("200", "200"));
        let after = up.wait_connections(before + 1).await;
        assert_eq!(
            after,
            before + 1,
            "denied requests reached the upstream:\n{}",
            up.log_text()
        );
    }
}

#[tokio::test]
async fn e2e_microsocks_socks5h_chain() {
    let up = UpstreamProxy::microsocks(None).await;
    let url = up.url("socks5h");
    let c = Chain::start(&format!("[upstream]\ndefault = \"{url}\"\n")).await;
    c.assert_reaches_origins("localhost", &url).await;
    // socks5h: the upstream got the name, not an address.
    up.wait_log_contains(&format!("connected to localhost:{}", c.https.port()))
        .await;
    c.assert_denied_never_reaches(&up, "localhost").await;
}

#[tokio::test]
async fn e2e_dante_socks5_chain_sends_the_checked_ip() {
    let up = UpstreamProxy::dante().await;
    let url = up.url("socks5");
    let c = Chain::start(&format!("[upstream]\ndefault = \"{url}\"\n")).await;
    c.assert_reaches_origins("origin.kennel.test", &url).await;
    up.wait_log_contains(&format!("127.0.0.1.{}", c.https.port()))
        .await;
    c.assert_denied_never_reaches(&up, "origin.kennel.test")
        .await;
}

#[tokio::test]
async fn e2e_ssh_dynamic_forward_from_legacy_upstream_socks5() {
    // The seeds' setup: `ssh -D` + UPSTREAM_SOCKS5=host:port in .devcontainer/.env, which
    // behaves as socks5h (DNS at the far end of the tunnel).
    let up = UpstreamProxy::ssh_dynamic().await;
    let env_dir = tempfile::tempdir().expect("tempdir");
    let dotenv = env_dir.path().join(".env");
    std::fs::write(
        &dotenv,
        format!(
            "# the seeds' .devcontainer/.env\nUPSTREAM_SOCKS5={}\nNO_UPSTREAM=origin.kennel.test\n",
            up.addr()
        ),
    )
    .expect("write .env");
    let c = Chain::start_with("", |cfg| cfg.policy.dotenv = Some(dotenv.clone())).await;
    c.assert_reaches_origins("localhost", &up.url("socks5h"))
        .await;
    up.wait_log_contains(&format!(
        "listening port {} for localhost port {}",
        up.addr().port(),
        c.https.port()
    ))
    .await;
    c.assert_denied_never_reaches(&up, "localhost").await;
    // NO_UPSTREAM domains bypass the tunnel.
    let before = up.connections();
    let (status, body) = c.get("origin.kennel.test", "/no-upstream").await;
    assert_eq!(status, "200", "{body}");
    let rec = c
        .proxy
        .wait_log(|r| r["host"] == "origin.kennel.test" && r["status"] == 200)
        .await
        .expect("access-log record");
    assert_eq!(rec["upstream"], "direct", "{rec}");
    assert_eq!(up.connections(), before, "{}", up.log_text());
}

#[tokio::test]
async fn e2e_tinyproxy_http_upstream_chain() {
    let up = UpstreamProxy::tinyproxy(None).await;
    let url = up.url("http");
    let c = Chain::start(&format!("[upstream]\ndefault = \"{url}\"\n")).await;
    c.assert_reaches_origins("localhost", &url).await;
    // Plain HTTP went to the upstream in absolute form, CONNECT carried the name.
    up.wait_log_contains(&format!("GET http://localhost:{}/plain", c.http.port()))
        .await;
    up.wait_log_contains(&format!("CONNECT localhost:{}", c.https.port()))
        .await;
    c.assert_denied_never_reaches(&up, "localhost").await;
}

#[tokio::test]
async fn e2e_squid_basic_auth_with_credentials_from_a_file() {
    let up = UpstreamProxy::squid("carol", "from-a-file").await;
    let creds_dir = tempfile::tempdir().expect("tempdir");
    let creds_file = creds_dir.path().join("squid-creds.txt");
    std::fs::write(&creds_file, "carol:from-a-file\n").expect("write creds");
    let url = up.url("http");
    let c = Chain::start(&format!(
        "[upstream]\ndefault = \"{url}\"\ndefault_credentials = {{ file = \"{}\" }}\n",
        creds_file.display()
    ))
    .await;
    c.assert_reaches_origins("localhost", &url).await;
    up.wait_log_contains(&format!(
        "GET http://localhost:{}/plain carol",
        c.http.port()
    ))
    .await;
    c.assert_denied_never_reaches(&up, "localhost").await;
    let (_, policy) = c.proxy.admin_get("/policy").await.expect("GET /policy");
    assert!(!policy.contains("from-a-file"), "{policy}");
}

#[tokio::test]
async fn e2e_https_upstream_with_configured_ca() {
    let up = UpstreamProxy::tinyproxy(None).await;
    let ca_for_front = TestCa::new();
    let front = TlsFront::start(up.addr(), &ca_for_front).await;
    let url = format!("https://localhost:{}", front.addr().port());
    let ca_path = ca_for_front.ca_path();
    let c = Chain::start_with(&format!("[upstream]\ndefault = \"{url}\"\n"), |cfg| {
        cfg.upstream.ca_file = Some(ca_path.clone());
    })
    .await;
    c.assert_reaches_origins("localhost", &url).await;
}

#[tokio::test]
async fn e2e_wrong_credentials_give_502_naming_the_upstream() {
    let socks_up = UpstreamProxy::microsocks(Some(("dave", "right-pass"))).await;
    let squid_up = UpstreamProxy::squid("erin", "right-pass").await;
    let socks_url = socks_up.url("socks5h");
    let http_url = squid_up.url("http");
    let c = Chain::start(&format!(
        "[upstream]\ndefault = \"socks5h://dave:wrong-pass@{}\"\n\
         [[upstream.route]]\nhosts = [\".via-http.kennel.test\"]\nvia = \"http://erin:wrong-pass@{}\"\n",
        socks_up.addr(),
        squid_up.addr()
    ))
    .await;

    let (status, body) = c.get("localhost", "/x").await;
    assert_eq!(status, "502", "{body}");
    assert!(body.contains(&format!("upstream {socks_url}")), "{body}");
    assert!(body.contains("authentication rejected"), "{body}");
    assert!(
        !body.contains("wrong-pass") && !body.contains("dave"),
        "{body}"
    );

    let err = c
        .connect_error(&format!("localhost:{}", c.https.port()))
        .await;
    assert!(err.starts_with("HTTP/1.1 502"), "{err}");
    assert!(err.contains("authentication rejected"), "{err}");

    let err = c
        .connect_error(&format!("a.via-http.kennel.test:{}", c.https.port()))
        .await;
    assert!(err.starts_with("HTTP/1.1 502"), "{err}");
    assert!(err.contains(&format!("upstream {http_url}")), "{err}");
    assert!(err.contains("407"), "{err}");
    assert!(!err.contains("wrong-pass"), "{err}");

    let rec = c
        .proxy
        .wait_log(|r| {
            r["reason"] == "upstream_auth_rejected" && r["host"] == "a.via-http.kennel.test"
        })
        .await
        .expect("access-log record of the rejected upstream");
    assert_eq!(rec["upstream"], http_url, "{rec}");
    let log = std::fs::read_to_string(&c.proxy.log_path).expect("access log");
    assert!(!log.contains("wrong-pass"), "{log}");
    let (_, policy) = c.proxy.admin_get("/policy").await.expect("GET /policy");
    assert!(!policy.contains("wrong-pass"), "{policy}");
    let (_, metrics) = c.proxy.admin_get("/metrics").await.expect("GET /metrics");
    assert!(!metrics.contains("wrong-pass"), "{metrics}");
    let n = c
        .proxy
        .metric("kennel_proxy_upstream_failures_total{kind=\"auth_rejected\"}")
        .await
        .expect("metrics");
    assert!(n >= 3, "auth_rejected failures counted: {n}");
    assert_eq!(c.http.hits() + c.https.hits(), 0);
}

#[tokio::test]
async fn e2e_http_upstream_407_on_a_forwarded_request_becomes_502() {
    let squid_up = UpstreamProxy::squid("frank", "right-pass").await;
    let http_url = squid_up.url("http");
    let c = Chain::start(&format!(
        "[upstream]\ndefault = \"http://frank:wrong-pass@{}\"\n",
        squid_up.addr()
    ))
    .await;
    let (status, body) = c.get("localhost", "/x").await;
    assert_eq!(status, "502", "{body}");
    assert!(body.contains(&format!("upstream {http_url}")), "{body}");
    assert!(body.contains("407"), "{body}");
    assert!(!body.contains("wrong-pass"), "{body}");
    let rec = c
        .proxy
        .wait_log(|r| r["reason"] == "upstream_auth_rejected")
        .await
        .expect("access-log record");
    assert_eq!(rec["upstream"], http_url, "{rec}");
}

#[tokio::test]
async fn e2e_upstream_down_gives_502_without_waiting_for_the_timeout() {
    let dead = free_port();
    let c = Chain::start_with(
        &format!("[upstream]\ndefault = \"socks5h://127.0.0.1:{dead}\"\n"),
        // A hang would hit curl's 20 s limit long before this.
        |cfg| cfg.limits.connect_timeout_ms = 120_000,
    )
    .await;
    let (status, body) = c.get("localhost", "/x").await;
    assert_eq!(status, "502", "{body}");
    assert!(
        body.contains(&format!("upstream socks5h://127.0.0.1:{dead}")),
        "{body}"
    );
    assert!(
        body.contains("cannot connect to the upstream proxy"),
        "{body}"
    );
    let err = c
        .connect_error(&format!("localhost:{}", c.https.port()))
        .await;
    assert!(err.starts_with("HTTP/1.1 502"), "{err}");
    let rec = c
        .proxy
        .wait_log(|r| r["reason"] == "upstream_unreachable")
        .await
        .expect("access-log record");
    assert_eq!(rec["status"], 502, "{rec}");
}

#[tokio::test]
async fn e2e_upstream_timeout_gives_504_and_refused_target_502() {
    // An "upstream" that accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let dante = UpstreamProxy::dante().await;
    let closed = free_port();
    let c = Chain::start_with(
        &format!(
            "[upstream]\ndefault = \"socks5h://{silent_addr}\"\n\
             [[upstream.route]]\nhosts = [\".via-socks.kennel.test\"]\nvia = \"{}\"\n",
            dante.url("socks5")
        ),
        |cfg| cfg.limits.connect_timeout_ms = 300,
    )
    .await;

    let (status, body) = c.get("localhost", "/slow").await;
    assert_eq!(status, "504", "{body}");
    assert!(
        body.contains(&format!("upstream socks5h://{silent_addr}")),
        "{body}"
    );
    assert!(body.contains("timed out"), "{body}");
    let rec = c
        .proxy
        .wait_log(|r| r["reason"] == "upstream_timeout")
        .await
        .expect("access-log record");
    assert_eq!(rec["status"], 504, "{rec}");

    // dante is reachable but the target port is closed: the upstream refuses the target.
    let url = format!("http://a.via-socks.kennel.test:{closed}/");
    let out = curl(&["-w", "\n%{http_code}", "-x", &c.proxy.url(), &url])
        .await
        .expect("curl");
    let (body, status) = out.stdout.rsplit_once('\n').unwrap_or(("", ""));
    // The policy only allows the origins' ports: allow the closed one too for this request.
    assert_eq!(status, "403", "port rules come first: {body}");
    c.proxy
        .write_policy(&format!(
            "[defaults]\nports = [{closed}]\n[allow]\nhosts = [\".via-socks.kennel.test\"]\n\
             cidrs = [\"127.0.0.0/8\"]\n[upstream]\ndefault = \"{}\"\n",
            dante.url("socks5")
        ))
        .expect("rewrite policy");
    wait_generation(&c, 2).await;
    let out = curl(&["-w", "\n%{http_code}", "-x", &c.proxy.url(), &url])
        .await
        .expect("curl");
    let (body, status) = out.stdout.rsplit_once('\n').unwrap_or(("", ""));
    assert_eq!(status, "502", "{body}");
    assert!(
        body.contains(&format!("upstream {}", dante.url("socks5"))),
        "{body}"
    );
    assert!(body.contains("connection refused"), "{body}");
    c.proxy
        .wait_log(|r| r["reason"] == "upstream_target_refused")
        .await
        .expect("access-log record");
    hold.abort();
}

#[tokio::test]
async fn e2e_route_selection_by_pattern() {
    let socks_up = UpstreamProxy::dante().await;
    let http_up = UpstreamProxy::tinyproxy(None).await;
    let c = Chain::start(&format!(
        "[upstream]\ndefault = \"direct\"\n\
         [[upstream.route]]\nhosts = [\".via-socks.kennel.test\"]\nvia = \"{}\"\n\
         [[upstream.route]]\nhosts = [\"localhost\"]\nvia = \"{}\"\n",
        socks_up.url("socks5"),
        http_up.url("http")
    ))
    .await;
    let (s0, h0) = (socks_up.connections(), http_up.connections());

    let (status, _) = c.get("a.via-socks.kennel.test", "/socks").await;
    assert_eq!(status, "200");
    socks_up.wait_connections(s0 + 1).await;
    // HTTP upstreams resolve names themselves: use one the upstream's hosts file has.
    let (status, _) = c.get("localhost", "/http").await;
    assert_eq!(status, "200");
    http_up.wait_log_contains("GET http://localhost:").await;
    let (status, _) = c.get("origin.kennel.test", "/direct").await;
    assert_eq!(status, "200");

    let upstream_of = |host: &'static str| {
        let log = c.proxy.log();
        log.into_iter()
            .find(|r| r["host"] == host)
            .map(|r| r["upstream"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(
        upstream_of("a.via-socks.kennel.test"),
        Some(socks_up.url("socks5"))
    );
    assert_eq!(upstream_of("localhost"), Some(http_up.url("http")));
    assert_eq!(
        upstream_of("origin.kennel.test"),
        Some("direct".to_string())
    );
    // The direct request touched neither upstream.
    assert_eq!(socks_up.connections(), s0 + 1);
    assert_eq!(http_up.connections(), h0 + 1);
}

#[tokio::test]
async fn e2e_socks5_vs_socks5h_name_handling() {
    if !hermetic_dns() {
        eprintln!(
            "SKIPPED e2e_socks5_vs_socks5h_name_handling: cannot give the upstream a private \
             hosts file (needs `unshare -m`, i.e. root); unknown names would reach real DNS"
        );
        return;
    }
    let up = UpstreamProxy::microsocks(None).await;
    // near.kennel.test: only kennel's static hosts map knows it. far.kennel.test: only the
    // upstream's hosts file knows it.
    let c = Chain::start(&format!(
        "[upstream]\ndefault = \"direct\"\n\
         [[upstream.route]]\nhosts = [\"near.kennel.test\"]\nvia = \"{s}\"\n\
         [[upstream.route]]\nhosts = [\"far.kennel.test\"]\nvia = \"{h}\"\n",
        s = up.url("socks5"),
        h = up.url("socks5h")
    ))
    .await;
    let (status, body) = c.get("near.kennel.test", "/near").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("200", origin_body("/near").as_str())
    );
    up.wait_log_contains(&format!("connected to 127.0.0.1:{}", c.http.port()))
        .await;
    let (connect, status, _) = c.get_tls(UPSTREAM_ONLY_NAME, "/far").await;
    assert_eq!((connect.as_str(), status.as_str()), ("200", "200"));
    up.wait_log_contains(&format!(
        "connected to {UPSTREAM_ONLY_NAME}:{}",
        c.https.port()
    ))
    .await;

    // Swap the schemes: each name now fails where it cannot be resolved.
    c.proxy
        .write_policy(&chain_policy(
            [c.http.port(), c.https.port()],
            &format!(
                "[upstream]\ndefault = \"direct\"\n\
                 [[upstream.route]]\nhosts = [\"near.kennel.test\"]\nvia = \"{h}\"\n\
                 [[upstream.route]]\nhosts = [\"far.kennel.test\"]\nvia = \"{s}\"\n",
                s = up.url("socks5"),
                h = up.url("socks5h")
            ),
        ))
        .expect("rewrite policy");
    wait_generation(&c, 2).await;
    let (status, body) = c.get("near.kennel.test", "/near").await;
    assert_eq!(
        status, "502",
        "socks5h sends the name, which the upstream cannot resolve: {body}"
    );
    assert!(body.contains(&up.url("socks5h")), "{body}");
    let (status, body) = c.get(UPSTREAM_ONLY_NAME, "/far").await;
    assert_eq!(
        status, "502",
        "socks5 needs kennel to resolve the name: {body}"
    );
}

#[tokio::test]
async fn e2e_ip_literal_denied_by_guard_never_reaches_socks5h_upstream() {
    let up = UpstreamProxy::dante().await;
    let ca = TestCa::new();
    let http = Origin::http().await;
    let _tls = Origin::tls(&ca).await;
    // Only 127.0.0.1 is allowed; 127.0.0.2 is refused even though the upstream resolves names.
    let policy = format!(
        "[defaults]\nports = [{p}]\n[allow]\nhosts = [\"localhost\"]\ncidrs = [\"127.0.0.1/32\"]\n\
         [upstream]\ndefault = \"{u}\"\n",
        p = http.port(),
        u = up.url("socks5h")
    );
    let proxy = TestProxy::start(&policy, &[("localhost", LO)], |_| {})
        .await
        .expect("proxy");
    let before = up.connections();
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-x",
        &proxy.url(),
        &format!("http://127.0.0.2:{}/", http.port()),
    ])
    .await
    .expect("curl");
    assert_eq!(out.stdout, "403", "{out:?}");
    let ok = curl(&[
        "-x",
        &proxy.url(),
        &format!("http://127.0.0.1:{}/ok", http.port()),
    ])
    .await
    .expect("curl");
    assert_eq!(ok.stdout, origin_body("/ok"), "{ok:?}");
    assert_eq!(
        up.wait_connections(before + 1).await,
        before + 1,
        "{}",
        up.log_text()
    );
}

#[tokio::test]
async fn e2e_hot_reload_switches_the_upstream_for_new_connections() {
    let up = UpstreamProxy::tinyproxy(None).await;
    let c = Chain::start("[upstream]\ndefault = \"direct\"\n").await;
    let before = up.connections();
    let (status, _) = c.get("localhost", "/direct").await;
    assert_eq!(status, "200");
    c.proxy
        .write_policy(&chain_policy(
            [c.http.port(), c.https.port()],
            &format!("[upstream]\ndefault = \"{}\"\n", up.url("http")),
        ))
        .expect("rewrite policy");
    wait_generation(&c, 2).await;
    let (connect, status, _) = c.get_tls("localhost", "/via-upstream").await;
    assert_eq!((connect.as_str(), status.as_str()), ("200", "200"));
    assert_eq!(up.wait_connections(before + 1).await, before + 1);
    let rec = c
        .proxy
        .wait_log(|r| r["port"] == c.https.port())
        .await
        .expect("tunnel record");
    assert_eq!(rec["upstream"], up.url("http"));
}

/// Polls (≤ 10 s) until the proxy runs policy generation `g`.
async fn wait_generation(c: &Chain, g: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.proxy.proxy.store().generation() < g {
        assert!(
            Instant::now() < deadline,
            "policy generation {g} never loaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
