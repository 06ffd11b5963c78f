//! Builder over `kennel_proxy::spawn` for tests: a temp policy dir, static hosts, access log in a
//! file, and helpers to drive real clients (curl, raw sockets) and read logs and metrics.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use kennel_proxy::config::{AccessLogSettings, LogDestination};
use kennel_proxy::{ProxyConfig, RunningProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A proxy running in the test process.
pub struct TestProxy {
    /// Temp dir holding policy.toml and access.log.
    pub dir: tempfile::TempDir,
    /// The running proxy.
    pub proxy: RunningProxy,
    /// Path of the policy file.
    pub policy_path: PathBuf,
    /// Path of the access log.
    pub log_path: PathBuf,
}

impl TestProxy {
    /// Start with `policy` (TOML text), static `hosts`, and a config tweak. DNS is disabled
    /// (`static_only`), listeners are ephemeral loopback ports.
    pub async fn start(
        policy: &str,
        hosts: &[(&str, IpAddr)],
        tweak: impl FnOnce(&mut ProxyConfig),
    ) -> anyhow::Result<TestProxy> {
        crate::wait::trace_init();
        let dir = tempfile::tempdir()?;
        let policy_path = dir.path().join("policy.toml");
        std::fs::write(&policy_path, policy)?;
        let log_path = dir.path().join("access.log");
        let mut cfg = ProxyConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            access_log: AccessLogSettings {
                destination: LogDestination::File {
                    file: log_path.clone(),
                },
                ..Default::default()
            },
            ..Default::default()
        };
        cfg.policy.file = Some(policy_path.clone());
        cfg.policy.watch_debounce_ms = Some(50);
        cfg.resolver.static_only = true;
        for (h, ip) in hosts {
            cfg.resolver
                .hosts
                .entry(h.to_string())
                .or_default()
                .push(*ip);
        }
        tweak(&mut cfg);
        let proxy = kennel_proxy::spawn(cfg).await?;
        Ok(TestProxy {
            dir,
            proxy,
            policy_path,
            log_path,
        })
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.proxy.proxy_addr())
    }

    /// All access-log records so far.
    pub fn log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Wait (≤ 5 s) for an access-log record matching `pred`.
    pub async fn wait_log(
        &self,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        crate::wait::eventually(Duration::from_secs(5), || {
            let found = self.log().into_iter().find(|r| pred(r));
            async move { Ok(found) }
        })
        .await
        .map_err(|e| anyhow::anyhow!("no matching access-log record ({e}) in: {:#?}", self.log()))
    }

    /// Sends `GET url` (absolute form) through the proxy; returns (status, head and body text).
    /// Status 0 when the proxy closed without an answer.
    pub async fn get(&self, url: &str) -> anyhow::Result<(u16, String)> {
        let host = url
            .split_once("://")
            .map_or(url, |(_, r)| r)
            .split('/')
            .next()
            .unwrap_or_default();
        let resp = raw(
            self.proxy.proxy_addr(),
            format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let status = resp.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok((status, resp))
    }

    /// Opens a CONNECT tunnel to `authority` through the proxy ([`connect_tunnel`]).
    pub async fn connect(&self, authority: &str) -> anyhow::Result<TcpStream> {
        connect_tunnel(self.proxy.proxy_addr(), authority).await
    }

    /// Replace the policy file atomically (write + rename, as editors do).
    pub fn write_policy(&self, text: &str) -> anyhow::Result<()> {
        let tmp = self.dir.path().join(".policy.toml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.policy_path)?;
        Ok(())
    }

    /// GET a path on the admin listener; returns (status, body).
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let addr = self
            .proxy
            .admin_addr()
            .ok_or_else(|| anyhow::anyhow!("admin disabled"))?;
        let resp = raw(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let status = resp.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// Value of one metrics line (exact series text before the value), or 0.
    pub async fn metric(&self, series: &str) -> anyhow::Result<u64> {
        let (_, text) = self.admin_get("/metrics").await?;
        Ok(text
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .unwrap_or(0))
    }
}

/// Result of running curl.
#[derive(Debug)]
pub struct CurlOut {
    /// Exit code.
    pub code: i32,
    /// Stdout.
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
}

/// Run the real curl with `args` (proxy variables cleared, 20 s max).
pub async fn curl(args: &[&str]) -> anyhow::Result<CurlOut> {
    let out = tokio::process::Command::new("curl")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .await?;
    Ok(CurlOut {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    })
}

/// Send `request` bytes to `addr` and read until EOF (≤ 5 s).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).to_string())
}

/// Open a CONNECT tunnel to `authority` through the proxy; returns the stream after a `200`,
/// or the proxy's full response text as the error.
pub async fn connect_tunnel(proxy: SocketAddr, authority: &str) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(proxy).await?;
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    // Read the response head byte by byte so no tunnel payload is consumed.
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await??;
        if n == 0 {
            break;
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    if text.starts_with("HTTP/1.1 200") {
        Ok(s)
    } else {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest)).await;
        anyhow::bail!("{text}{}", String::from_utf8_lossy(&rest))
    }
}
