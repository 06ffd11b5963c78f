//! One-tunnel throughput on loopback: direct vs through kennel-proxy (CONNECT), both directions.
//! Bounded in time (about 2 s per measurement). Run with:
//! `cargo run --release -p kennel-proxy --example tunnel_throughput [relay-buffer-bytes]`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kennel_proxy::ProxyConfig;
use kennel_proxy::config::{AccessLogSettings, LogDestination};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECS: f64 = 2.0;
const CHUNK: usize = 256 * 1024;

/// Origin: `u` = read and discard; `d` = write as fast as possible. First byte selects.
async fn origin() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut mode = [0u8; 1];
                if s.read_exact(&mut mode).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; CHUNK];
                if mode[0] == b'u' {
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                } else {
                    while s.write_all(&buf).await.is_ok() {}
                }
            });
        }
    });
    Ok(addr)
}

async fn measure(mut s: TcpStream, up: bool) -> anyhow::Result<f64> {
    s.write_all(if up { b"u" } else { b"d" }).await?;
    let mut buf = vec![0u8; CHUNK];
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed().as_secs_f64() < SECS {
        if up {
            s.write_all(&buf).await?;
            n += CHUNK as u64;
        } else {
            let r = s.read(&mut buf).await?;
            anyhow::ensure!(r > 0, "origin closed");
            n += r as u64;
        }
    }
    Ok(n as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
}

async fn via_proxy(proxy: SocketAddr, origin: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(proxy).await?;
    s.set_nodelay(true)?;
    s.write_all(format!("CONNECT bench.test:{} HTTP/1.1\r\n\r\n", origin.port()).as_bytes())
        .await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        anyhow::ensure!(s.read(&mut b).await? == 1, "proxy closed");
        head.push(b[0]);
    }
    anyhow::ensure!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    Ok(s)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = origin().await?;
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[defaults]\nports = [{}]\n[allow]\nhosts = [\"bench.test\"]\ncidrs = [\"127.0.0.0/8\"]\n",
            o.port()
        ),
    )?;
    let mut cfg = ProxyConfig {
        listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        admin: None,
        access_log: AccessLogSettings {
            destination: LogDestination::Off,
            ..Default::default()
        },
        require_sni: false,
        ..Default::default()
    };
    cfg.policy.file = Some(policy);
    if let Some(b) = std::env::args().nth(1) {
        cfg.limits.buffer_bytes = b.parse()?;
    }
    let bufsize = cfg.limits.buffer_bytes;
    cfg.resolver.static_only = true;
    cfg.resolver
        .hosts
        .insert("bench.test".into(), vec!["127.0.0.1".parse()?]);
    let proxy = kennel_proxy::spawn(cfg).await?;
    let p = proxy.proxy_addr();

    println!(
        "one tunnel, loopback, {SECS} s per run, {} KiB writes, proxy relay buffer {} KiB",
        CHUNK / 1024,
        bufsize / 1024
    );
    for (label, up) in [
        ("upload (client -> origin)", true),
        ("download (origin -> client)", false),
    ] {
        let direct = measure(TcpStream::connect(o).await?, up).await?;
        let proxied = measure(via_proxy(p, o).await?, up).await?;
        println!(
            "{label:28} direct {direct:6.2} Gbit/s   via kennel-proxy {proxied:6.2} Gbit/s   ({:.0} %)",
            proxied / direct * 100.0
        );
    }
    tokio::time::timeout(Duration::from_secs(5), proxy.shutdown())
        .await
        .ok();
    Ok(())
}
