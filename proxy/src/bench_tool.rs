//! `kennel-proxy bench origin|client`: the two ends of `kennel bench ENV`.
//!
//! The proxy image doubles as the benchmark image, so `kennel bench` needs nothing beyond what
//! every environment already has. The daemon starts `bench origin` on the environment's egress
//! network and runs `bench client` twice: in the sandbox's network namespace through the proxy,
//! and on the egress network directly. Both ends are bounded: the origin exits after
//! `--max-secs`, the client caps its byte count, connection count and time, and talks only to
//! the addresses it is given (the daemon gives it its own containers' addresses).
//!
//! ```text
//! kennel-proxy bench origin --listen IP:PORT [--max-secs S]
//! kennel-proxy bench client --target IP:PORT [--proxy IP:PORT] [--bytes N] [--secs S]
//!                           [--max-conns N] [--clients N]
//! ```
//!
//! The client prints one JSON line ([`Report`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest download one client run may ask for.
pub const MAX_BYTES: u64 = 4 << 30;
/// Longest connection-rate phase.
pub const MAX_SECS: f64 = 30.0;
/// Most connections one connection-rate phase makes.
pub const MAX_CONNS: u64 = 1_000_000;
/// Most concurrent connection loops.
pub const MAX_CLIENTS: usize = 64;
/// Longest origin lifetime (a backstop: the daemon removes it long before).
pub const MAX_ORIGIN_SECS: u64 = 3600;
/// Hard cap on a whole client run, whatever the arguments say.
const CLIENT_DEADLINE: Duration = Duration::from_secs(150);
/// The origin's write size.
const CHUNK: usize = 256 << 10;
/// Body size of the connection-rate requests.
const SMALL: u64 = 64;

/// What one client run measured (printed as one JSON line).
#[derive(Debug, Serialize)]
pub struct Report {
    /// `proxy` (CONNECT tunnels through `--proxy`) or `direct`.
    pub path: &'static str,
    /// Bytes downloaded on the one throughput stream.
    pub bytes: u64,
    /// Seconds the download took (from connect to the last byte).
    pub download_secs: f64,
    /// Throughput in MB/s (10^6 bytes per second).
    pub mb_per_s: f64,
    /// Connections completed in the rate phase (each: connect, CONNECT when proxied, small
    /// GET, close).
    pub connections: u64,
    /// Seconds the rate phase took.
    pub connect_secs: f64,
    /// Completed connections per second.
    pub connections_per_s: f64,
    /// Failed connections in the rate phase.
    pub errors: u64,
}

/// Entry point for `kennel-proxy bench ARGS..` (`args` excludes `bench`).
pub fn main(args: &[String]) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    match args.first().map(String::as_str) {
        Some("origin") => {
            let o = OriginArgs::parse(&args[1..])?;
            rt.block_on(origin(o))
        }
        Some("client") => {
            let c = ClientArgs::parse(&args[1..])?;
            let report = rt.block_on(async {
                tokio::time::timeout(CLIENT_DEADLINE, client(&c))
                    .await
                    .with_context(|| {
                        format!("the run exceeded its time bound of {CLIENT_DEADLINE:?}")
                    })?
            })?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        other => bail!(
            "usage: kennel-proxy bench origin|client ...; got {:?}",
            other.unwrap_or("")
        ),
    }
}

fn value<'a>(it: &mut std::slice::Iter<'a, String>, flag: &str) -> anyhow::Result<&'a str> {
    it.next()
        .map(String::as_str)
        .with_context(|| format!("{flag} needs a value"))
}

/// `bench origin` arguments.
#[derive(Debug)]
struct OriginArgs {
    listen: SocketAddr,
    max_secs: u64,
}

impl OriginArgs {
    fn parse(args: &[String]) -> anyhow::Result<OriginArgs> {
        let mut listen = None;
        let mut max_secs = 600;
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let v = value(&mut it, k)?;
            match k.as_str() {
                "--listen" => {
                    listen = Some(v.parse().with_context(|| format!("--listen {v:?}"))?);
                }
                "--max-secs" => {
                    max_secs = v.parse().with_context(|| format!("--max-secs {v:?}"))?;
                    ensure!(
                        (1..=MAX_ORIGIN_SECS).contains(&max_secs),
                        "--max-secs must be 1..={MAX_ORIGIN_SECS}"
                    );
                }
                _ => bail!("bench origin: unknown option {k}"),
            }
        }
        Ok(OriginArgs {
            listen: listen.context("bench origin needs --listen IP:PORT")?,
            max_secs,
        })
    }
}

/// `bench client` arguments.
#[derive(Debug, Clone)]
struct ClientArgs {
    target: SocketAddr,
    proxy: Option<SocketAddr>,
    bytes: u64,
    secs: f64,
    max_conns: u64,
    clients: usize,
}

impl ClientArgs {
    fn parse(args: &[String]) -> anyhow::Result<ClientArgs> {
        let mut c = ClientArgs {
            target: SocketAddr::from(([0, 0, 0, 0], 0)),
            proxy: None,
            bytes: 64 << 20,
            secs: 2.0,
            max_conns: 20_000,
            clients: 4,
        };
        let mut target = None;
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let v = value(&mut it, k)?;
            let bad = || format!("{k} {v:?}");
            match k.as_str() {
                "--target" => target = Some(v.parse().with_context(bad)?),
                "--proxy" => c.proxy = Some(v.parse().with_context(bad)?),
                "--bytes" => c.bytes = v.parse().with_context(bad)?,
                "--secs" => c.secs = v.parse().with_context(bad)?,
                "--max-conns" => c.max_conns = v.parse().with_context(bad)?,
                "--clients" => c.clients = v.parse().with_context(bad)?,
                _ => bail!("bench client: unknown option {k}"),
            }
        }
        c.target = target.context("bench client needs --target IP:PORT")?;
        ensure!(
            (1..=MAX_BYTES).contains(&c.bytes),
            "--bytes must be 1..={MAX_BYTES}"
        );
        ensure!(
            c.secs > 0.0 && c.secs <= MAX_SECS,
            "--secs must be above 0 and at most {MAX_SECS}"
        );
        ensure!(
            (1..=MAX_CONNS).contains(&c.max_conns),
            "--max-conns must be 1..={MAX_CONNS}"
        );
        ensure!(
            (1..=MAX_CLIENTS).contains(&c.clients),
            "--clients must be 1..={MAX_CLIENTS}"
        );
        Ok(c)
    }
}

// ------------------------------------------------------------------------------------ origin

/// HTTP/1.1 origin: `GET /N` answers N bytes (at most [`MAX_BYTES`]), keep-alive. Exits after
/// `max_secs` whatever happens.
async fn origin(o: OriginArgs) -> anyhow::Result<()> {
    let l = TcpListener::bind(o.listen)
        .await
        .with_context(|| format!("failed to bind {}", o.listen))?;
    eprintln!("kennel bench origin listening on {}", o.listen);
    let body: &'static [u8] = Box::leak(vec![b'k'; CHUNK].into_boxed_slice());
    let serve_all = async {
        loop {
            let Ok((s, _)) = l.accept().await else {
                // Out of file descriptors or similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let _ = serve(s, body).await;
            });
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(o.max_secs), serve_all).await;
    eprintln!("kennel bench origin: {} s are up, exiting", o.max_secs);
    Ok(())
}

async fn serve(mut s: TcpStream, body: &[u8]) -> anyhow::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(1024);
    while let Some(head) = read_head(&mut s, &mut buf).await? {
        let n: u64 = head
            .split(' ')
            .nth(1)
            .and_then(|p| p.trim_start_matches('/').parse().ok())
            .unwrap_or(SMALL)
            .min(MAX_BYTES);
        s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").as_bytes())
            .await?;
        let mut left = n;
        while left > 0 {
            let k = left.min(body.len() as u64) as usize;
            s.write_all(&body[..k]).await?;
            left -= k as u64;
        }
    }
    Ok(())
}

/// Reads one head (up to the blank line); bytes after it stay in `buf`. `None` on a clean EOF
/// before any byte.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Option<String>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Ok(Some(head));
        }
        ensure!(buf.len() < 64 * 1024, "response head larger than 64 KiB");
        let mut tmp = [0u8; 4096];
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            ensure!(buf.is_empty(), "connection closed inside a head");
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn content_length(head: &str) -> Option<u64> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

fn status_line(head: &str) -> &str {
    head.lines().next().unwrap_or("")
}

fn status(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

// ------------------------------------------------------------------------------------ client

/// A stream to the target: directly, or through a CONNECT tunnel of the proxy.
async fn open(c: &ClientArgs, buf: &mut Vec<u8>) -> anyhow::Result<TcpStream> {
    let Some(proxy) = c.proxy else {
        let s = TcpStream::connect(c.target)
            .await
            .with_context(|| format!("cannot connect to {}", c.target))?;
        s.set_nodelay(true)?;
        return Ok(s);
    };
    let mut s = TcpStream::connect(proxy)
        .await
        .with_context(|| format!("cannot connect to the proxy at {proxy}"))?;
    s.set_nodelay(true)?;
    let t = c.target;
    s.write_all(format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n").as_bytes())
        .await?;
    let head = read_head(&mut s, buf)
        .await?
        .context("the proxy closed the connection before answering CONNECT")?;
    ensure!(
        status(&head) == 200,
        "the proxy refused CONNECT {t}: {}",
        status_line(&head)
    );
    Ok(s)
}

/// `GET /n` on `s`, body read and dropped; the number of body bytes.
async fn get(s: &mut TcpStream, buf: &mut Vec<u8>, n: u64) -> anyhow::Result<u64> {
    s.write_all(format!("GET /{n} HTTP/1.1\r\nHost: bench-origin\r\n\r\n").as_bytes())
        .await?;
    let head = read_head(s, buf).await?.context("no response")?;
    ensure!(
        status(&head) == 200,
        "origin answered {}",
        status_line(&head)
    );
    let len = content_length(&head).context("response without Content-Length")?;
    let have = (buf.len() as u64).min(len);
    buf.drain(..have as usize);
    let mut left = len - have;
    let mut scratch = vec![0u8; if len > SMALL { 256 << 10 } else { 1024 }];
    while left > 0 {
        let k = (left as usize).min(scratch.len());
        let r = s.read(&mut scratch[..k]).await?;
        ensure!(r > 0, "connection closed with {left} body bytes missing");
        left -= r as u64;
    }
    Ok(len)
}

async fn client(c: &ClientArgs) -> anyhow::Result<Report> {
    // Throughput: one stream, one bounded download.
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let mut s = open(c, &mut buf).await?;
    let got = get(&mut s, &mut buf, c.bytes).await?;
    let download_secs = t0.elapsed().as_secs_f64();
    drop(s);

    // Connection rate: `clients` loops, bounded by time and by a shared count.
    // `claimed` bounds the attempts (claimed before each one), `done` counts the completed.
    let claimed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(c.secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..c.clients {
        let c = c.clone();
        let done = done.clone();
        let claimed = claimed.clone();
        tasks.push(tokio::spawn(async move {
            use std::sync::atomic::Ordering;
            let mut errors = 0u64;
            let mut first_error = None;
            while Instant::now() < until
                && errors < 100
                && claimed.fetch_add(1, Ordering::Relaxed) < c.max_conns
            {
                let mut buf = Vec::new();
                let r = async {
                    let mut s = open(&c, &mut buf).await?;
                    get(&mut s, &mut buf, SMALL).await
                }
                .await;
                match r {
                    Ok(_) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (errors, first_error)
        }));
    }
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        let (e, f) = t.await?;
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    let connect_secs = start.elapsed().as_secs_f64();
    let connections = done.load(std::sync::atomic::Ordering::Relaxed);
    if connections == 0 {
        let why = first_error.map_or_else(|| "no error recorded".to_string(), |e| format!("{e:#}"));
        bail!("no connection completed in the rate phase: {why}");
    }
    Ok(Report {
        path: if c.proxy.is_some() { "proxy" } else { "direct" },
        bytes: got,
        download_secs,
        mb_per_s: got as f64 / download_secs / 1e6,
        connections,
        connect_secs,
        connections_per_s: connections as f64 / connect_secs,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn client_arguments_are_bounded_and_named_in_errors() {
        let ok = ClientArgs::parse(&args("--target 127.0.0.1:9 --bytes 1000")).expect("valid");
        assert_eq!(ok.bytes, 1000);
        for (bad, names) in [
            ("--bytes 1", "--target"),
            ("--target 127.0.0.1:9 --bytes 0", "--bytes"),
            ("--target 127.0.0.1:9 --secs 99", "--secs"),
            ("--target 127.0.0.1:9 --clients 0", "--clients"),
            ("--target nope", "--target"),
            ("--target 127.0.0.1:9 --frob 1", "--frob"),
        ] {
            let e = format!("{:#}", ClientArgs::parse(&args(bad)).expect_err(bad));
            assert!(e.contains(names), "{bad}: {e}");
        }
    }

    /// Origin and client on loopback: the client reports what it downloaded and a rate.
    #[test]
    fn client_measures_an_origin_on_loopback() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = l.local_addr().expect("addr");
            drop(l);
            tokio::spawn(origin(OriginArgs {
                listen: addr,
                max_secs: 20,
            }));
            tokio::time::sleep(Duration::from_millis(100)).await;
            let c = ClientArgs::parse(&args(&format!(
                "--target {addr} --bytes 3000000 --secs 0.3 --max-conns 50 --clients 2"
            )))
            .expect("args");
            let r = client(&c).await.expect("run");
            assert_eq!(r.path, "direct");
            assert_eq!(r.bytes, 3_000_000);
            assert!(r.connections > 0 && r.connections <= 50, "{r:?}");
            assert!(r.mb_per_s > 0.0 && r.connections_per_s > 0.0, "{r:?}");
        });
    }
}
