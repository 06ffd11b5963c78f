//! Load generator and origin for `benches/run.sh`: every scenario of the proxy comparison
//! table, against a proxy (kennel, Tinyproxy, Squid) or directly against the origin.
//!
//! Loopback only: the origin binds 127.0.0.1, the client refuses any other address, and every
//! loop is bounded in count and time. Each run prints one line: `<value> <unit>`.
//!
//! ```text
//! loadgen origin PORT
//! loadgen download  --origin PORT [--proxy PORT] --conns N --bytes BYTES [--pids PID,..] [--load-pids PID,..]
//! loadgen tunnel-rate --origin PORT [--proxy PORT] --clients N --secs S [--pids PID,..] [--load-pids PID,..]
//! loadgen tunnel-latency --origin PORT [--proxy PORT] --clients N --secs S [--rate PER_SEC]
//! loadgen forward-rate --origin PORT [--proxy PORT] --clients N --secs S [--extra-headers N] [--pids PID,..] [--load-pids PID,..]
//! loadgen relay PORT [--spin]
//! loadgen floor PORT --origin PORT
//! loadgen denied-rate --proxy PORT --clients N --secs S
//! loadgen idle --origin PORT --proxy PORT --tunnels N --pids PID[,PID..]
//! ```
//!
//! `relay` is a reference point, not a proxy to compare features with: the simplest splice relay
//! (it answers `CONNECT 127.0.0.1:PORT` and nothing else, and gives each direction of a tunnel
//! its own thread blocked in `splice(2)` through a 1 MiB pipe; no event loop, no policy, no
//! accounting). Measured, it is not a ceiling: kennel's event loop moves more per second.
//! `relay --spin` is the closer one: the download direction never sleeps (non-blocking splice
//! tried again at once, the CPU only given up to another runnable thread), so no wake-up of the
//! relay's CPU is ever waited for; what it cannot move, no relay on that CPU moves, whatever it
//! is willing to burn. `forward-rate` without `--proxy` sends origin-form GETs straight to the origin
//! on kept-alive connections: the most requests the load generator and origin manage on their
//! CPU, i.e. the ceiling of the proxied keep-alive rows.
//!
//! `floor` is the other reference point: the least a proxy on an event loop has to do for the
//! rate rows, with the same socket calls a real proxy makes and nothing else. It answers any
//! `CONNECT` with a tunnel to the origin (read/write copy; for a small GET that is as many calls
//! as splice) and any absolute-form request by passing its bytes unchanged to one origin
//! connection per client connection and the response back (framing: the head's end and
//! `Content-Length`, all this origin sends). No policy, no header rewriting, no pool, no
//! accounting, one thread. What a proxy pays beyond `floor` is its own code; what `floor`
//! pays is the kernel's and the runtime's share that no proxy of this design avoids.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The one host everything talks to.
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Origin write / client read size: large, so the direct baseline is not syscall-bound.
const CHUNK: usize = 1 << 20;
/// Body size of the "small GET" scenarios.
const SMALL: u64 = 64;
/// Hard cap on any single run, whatever the arguments say.
const MAX_RUN: Duration = Duration::from_secs(120);
/// The denied CONNECT target: an IP literal outside the allowlist, so no proxy resolves a
/// name (no DNS) and nothing can leave loopback even if a proxy did dial it.
const DENIED: &str = "127.0.0.9:9";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().cloned() else {
        bail!("usage: loadgen origin|download|tunnel-rate|forward-rate|denied-rate|idle ...");
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to build the runtime")?;
    if cmd == "origin" {
        let port: u16 = args
            .get(1)
            .context("origin PORT")?
            .parse()
            .context("port")?;
        return rt.block_on(origin(port));
    }
    if cmd == "floor" {
        let port: u16 = args.get(1).context("floor PORT")?.parse().context("port")?;
        let opts = Opts::parse(&args[2..])?;
        return rt.block_on(floor::serve(port, opts.origin()?));
    }
    if cmd == "relay" {
        let port: u16 = args.get(1).context("relay PORT")?.parse().context("port")?;
        let spin = match args.get(2).map(String::as_str) {
            None => false,
            Some("--spin") => true,
            Some(other) => bail!("relay PORT [--spin]: unexpected {other:?}"),
        };
        return minimal::relay(port, spin);
    }
    let opts = Opts::parse(&args[1..])?;
    let line = rt.block_on(async {
        tokio::time::timeout(MAX_RUN, run(&cmd, &opts))
            .await
            .context("the run exceeded its time bound")?
    })?;
    println!("{line}");
    Ok(())
}

/// Command-line options (all optional until a scenario needs them).
#[derive(Default)]
struct Opts {
    origin: Option<u16>,
    proxy: Option<u16>,
    conns: usize,
    bytes: u64,
    secs: f64,
    tunnels: usize,
    pids: Vec<u32>,
    /// The load side besides this process (the origin): rate runs report the load CPU's time
    /// per operation, loadgen's own included.
    load_pids: Vec<u32>,
    /// `tunnel-latency` at a fixed offered rate (tunnels per second over all clients) instead
    /// of as fast as the proxy answers.
    rate: Option<f64>,
    /// `forward-rate`: this many of [`CLIENT_HEADERS`] after `Host` (a real client's request,
    /// where the benchmark's default is the smallest valid one).
    extra_headers: usize,
}

/// Header lines a package manager or browser sends besides `Host` (for `--extra-headers`).
const CLIENT_HEADERS: [&str; 8] = [
    "User-Agent: pip/24.0 {\"ci\":null,\"cpu\":\"x86_64\",\"implementation\":{\"name\":\"CPython\",\"version\":\"3.11.2\"}}",
    "Accept: application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01",
    "Accept-Encoding: gzip, deflate",
    "Accept-Language: en-US,en;q=0.9",
    "Cache-Control: max-age=0",
    "X-Request-Id: 6f1c2b9e-3d4a-4e8f-9b7c-1a2b3c4d5e6f",
    "If-None-Match: \"5d41402abc4b2a76b9719d911017c592\"",
    "Proxy-Connection: keep-alive",
];

impl Opts {
    fn parse(args: &[String]) -> anyhow::Result<Opts> {
        let mut o = Opts {
            conns: 1,
            secs: 2.0,
            ..Default::default()
        };
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let v = it.next().with_context(|| format!("{k} needs a value"))?;
            match k.as_str() {
                "--origin" => o.origin = Some(v.parse()?),
                "--proxy" => o.proxy = Some(v.parse()?),
                "--conns" | "--clients" => o.conns = v.parse()?,
                "--bytes" => o.bytes = parse_size(v)?,
                "--secs" => o.secs = v.parse::<f64>()?.min(30.0),
                "--tunnels" => o.tunnels = v.parse()?,
                "--pids" => o.pids = parse_pids(v)?,
                "--load-pids" => o.load_pids = parse_pids(v)?,
                "--rate" => {
                    let r: f64 = v.parse().context("--rate")?;
                    ensure!(
                        r > 0.0 && r <= 100_000.0,
                        "--rate must be in 1..=100000 per second"
                    );
                    o.rate = Some(r);
                }
                "--extra-headers" => {
                    o.extra_headers = v.parse().context("--extra-headers")?;
                    ensure!(
                        o.extra_headers <= CLIENT_HEADERS.len(),
                        "--extra-headers must be at most {}",
                        CLIENT_HEADERS.len()
                    );
                }
                _ => bail!("unknown option {k}"),
            }
        }
        Ok(o)
    }
    fn origin(&self) -> anyhow::Result<u16> {
        self.origin.context("--origin PORT is required")
    }
}

fn parse_pids(v: &str) -> anyhow::Result<Vec<u32>> {
    v.split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("invalid PID list {v:?}"))
}

fn parse_size(s: &str) -> anyhow::Result<u64> {
    let (n, mult) = match s.as_bytes().last() {
        Some(b'K') => (&s[..s.len() - 1], 1 << 10),
        Some(b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    Ok(n.parse::<u64>()? * mult)
}

async fn run(cmd: &str, o: &Opts) -> anyhow::Result<String> {
    match cmd {
        "download" => download(o).await,
        "tunnel-rate" => rate(o, Kind::Tunnel).await,
        "tunnel-latency" => latency(o).await,
        "forward-rate" => rate(o, Kind::Forward).await,
        "denied-rate" => rate(o, Kind::Denied).await,
        "idle" => idle(o).await,
        _ => bail!("unknown scenario {cmd}"),
    }
}

// ---------------------------------------------------------------------------------- origin

/// HTTP/1.1 origin on 127.0.0.1:`port`: `GET /N` answers N bytes, keep-alive.
async fn origin(port: u16) -> anyhow::Result<()> {
    let l = TcpListener::bind((LOOPBACK, port))
        .await
        .with_context(|| format!("failed to bind 127.0.0.1:{port}"))?;
    let body: &'static [u8] = Box::leak(vec![b'k'; CHUNK].into_boxed_slice());
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
}

async fn serve(mut s: TcpStream, body: &[u8]) -> anyhow::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let Some(head) = read_head(&mut s, &mut buf).await? else {
            return Ok(());
        };
        let path = head
            .split(' ')
            .nth(1)
            .context("request line")?
            .rsplit('/')
            .next()
            .unwrap_or("");
        let n: u64 = path.parse().unwrap_or(SMALL);
        s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").as_bytes())
            .await?;
        let mut left = n;
        while left > 0 {
            let k = left.min(body.len() as u64) as usize;
            s.write_all(&body[..k]).await?;
            left -= k as u64;
        }
    }
}

/// Read one head (up to the blank line) into a string; bytes after it stay in `buf`.
/// `None` on a clean EOF before any byte.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Option<String>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Ok(Some(head));
        }
        ensure!(buf.len() < 64 * 1024, "head too large");
        let mut tmp = [0u8; 4096];
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            ensure!(buf.is_empty(), "EOF inside a head");
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

fn status(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Read a response body of `n` bytes (some may already be in `buf`) into a scratch buffer.
async fn read_body(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    scratch: &mut [u8],
    n: u64,
) -> anyhow::Result<()> {
    let have = (buf.len() as u64).min(n);
    buf.drain(..have as usize);
    let mut left = n - have;
    while left > 0 {
        let k = (left as usize).min(scratch.len());
        let r = s.read(&mut scratch[..k]).await?;
        ensure!(r > 0, "EOF with {left} body bytes missing");
        left -= r as u64;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------- client

async fn connect(port: u16) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(SocketAddr::from((LOOPBACK, port))).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A stream to the origin: directly, or through a CONNECT tunnel of the proxy.
async fn open(o: &Opts, buf: &mut Vec<u8>) -> anyhow::Result<TcpStream> {
    let origin = o.origin()?;
    let Some(proxy) = o.proxy else {
        return connect(origin).await;
    };
    let mut s = connect(proxy).await?;
    s.write_all(
        format!("CONNECT 127.0.0.1:{origin} HTTP/1.1\r\nHost: 127.0.0.1:{origin}\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let head = read_head(&mut s, buf).await?.context("proxy closed")?;
    ensure!(status(&head) == 200, "CONNECT refused: {head}");
    // Squid and Tinyproxy send no body with the 200; anything after the head is tunnel data.
    Ok(s)
}

/// `conns` parallel downloads of `bytes` each; MB/s (10^6 bytes/s) over the whole run.
async fn download(o: &Opts) -> anyhow::Result<String> {
    ensure!(o.bytes > 0, "--bytes");
    let cpu0 = if o.pids.is_empty() {
        None
    } else {
        Some(cpu_ticks(&o.pids)?)
    };
    let load = LoadCpu::start(o)?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..o.conns.max(1) {
        let opts = Opts {
            origin: o.origin,
            proxy: o.proxy,
            ..Default::default()
        };
        let bytes = o.bytes;
        tasks.push(tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut s = open(&opts, &mut buf).await?;
            s.write_all(format!("GET /{bytes} HTTP/1.1\r\nHost: origin\r\n\r\n").as_bytes())
                .await?;
            let head = read_head(&mut s, &mut buf).await?.context("no response")?;
            ensure!(content_length(&head) == Some(bytes), "bad response: {head}");
            let mut scratch = vec![0u8; 256 << 10];
            read_body(&mut s, &mut buf, &mut scratch, bytes).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    let total = o.bytes as f64 * o.conns.max(1) as f64;
    let mut line = format!("{:.0} MB/s", total / start.elapsed().as_secs_f64() / 1e6);
    if let Some(c0) = cpu0 {
        // The proxy's own CPU per GiB relayed: unlike MB/s this barely depends on how much of
        // the shared machine the other processes took during the run.
        let used = cpu_ticks(&o.pids)?.saturating_sub(c0) as f64 / 100.0;
        line += &format!(" {:.3} cpu-s/GiB", used / (total / (1u64 << 30) as f64));
    }
    if let Some(l) = load {
        // The same for the load side (client and origin): a stream that costs the load CPU
        // more per byte through a proxy cannot be as fast as the direct one once it is busy.
        line += &format!(
            " {:.3} load-s/GiB",
            l.secs()? / (total / (1u64 << 30) as f64)
        );
    }
    Ok(line)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// New connection (+ CONNECT when proxied), `GET /64`, close.
    Tunnel,
    /// Absolute-form `GET` on a kept-alive proxy connection (reconnects if the proxy closes).
    Forward,
    /// `CONNECT` to a denied target: read the refusal, close.
    Denied,
}

/// `clients` loops for `secs` each; completed operations per second.
async fn rate(o: &Opts, kind: Kind) -> anyhow::Result<String> {
    let busy = Busy::start(&o.pids)?;
    let load = LoadCpu::start(o)?;
    let until = Instant::now() + Duration::from_secs_f64(o.secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..o.conns.max(1) {
        let opts = Opts {
            origin: o.origin,
            proxy: o.proxy,
            extra_headers: o.extra_headers,
            ..Default::default()
        };
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut errors = 0u64;
            let mut kept: Option<(TcpStream, Vec<u8>)> = None;
            while Instant::now() < until && errors < 1000 {
                let r = match kind {
                    Kind::Tunnel => tunnel_once(&opts).await,
                    Kind::Denied => denied_once(&opts).await,
                    Kind::Forward => forward_once(&opts, &mut kept).await,
                };
                match r {
                    Ok(()) => done += 1,
                    Err(_) => {
                        errors += 1;
                        kept = None;
                    }
                }
            }
            (done, errors)
        }));
    }
    let (mut done, mut errors) = (0, 0);
    for t in tasks {
        let (d, e) = t.await?;
        done += d;
        errors += e;
    }
    ensure!(
        errors * 100 <= done.max(1),
        "{errors} errors for {done} completions"
    );
    let secs = start.elapsed().as_secs_f64();
    // The load CPU's time per operation: with the load CPU saturated, 10^6 / this is the most
    // operations per second this load side can drive through that proxy.
    let load = match load {
        Some(l) => format!(" {:.1} load-us", l.secs()? * 1e6 / done.max(1) as f64),
        None => String::new(),
    };
    Ok(format!(
        "{:.0} /s{}{load}",
        done as f64 / secs,
        busy.end(secs)?
    ))
}

/// Most samples one latency run keeps (a bound on memory, far above what 30 s can produce).
const MAX_SAMPLES: usize = 1_000_000;

/// `clients` loops for `secs` each, like `tunnel-rate`; each iteration times the tunnel setup
/// (TCP connect + CONNECT until its `200` head is read; directly: the TCP connect) and then
/// does the small GET and closes. Prints the 99th percentile in µs, and the median.
async fn latency(o: &Opts) -> anyhow::Result<String> {
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(o.secs);
    let clients = o.conns.max(1);
    // Paced (`--rate`): client c starts its k-th tunnel at start + (k * clients + c) / rate; a
    // client still busy with its previous tunnel at that moment counts the latency from it, so
    // a proxy that falls behind is charged for the wait (no coordinated omission). Every proxy then sees the same offered load;
    // in a closed loop a faster proxy is also given more concurrent work.
    let period = o.rate.map(|r| Duration::from_secs_f64(clients as f64 / r));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let first = period.map(|p| start + p.mul_f64(c as f64 / clients as f64));
        let opts = Opts {
            origin: o.origin,
            proxy: o.proxy,
            ..Default::default()
        };
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0u64;
            let mut k = 0u32;
            while Instant::now() < until && errors < 1000 && samples.len() < MAX_SAMPLES {
                let t0 = match (first, period) {
                    (Some(f), Some(p)) => {
                        let at = f + p * k;
                        k += 1;
                        if Instant::now() < at {
                            // On time: start when the timer fires (its millisecond
                            // granularity is the load generator's, not the proxy's).
                            tokio::time::sleep_until(at.into()).await;
                            Instant::now()
                        } else {
                            // Behind because the previous tunnel took too long: the wait
                            // counts.
                            at
                        }
                    }
                    _ => Instant::now(),
                };
                let mut buf = Vec::new();
                let r = match open(&opts, &mut buf).await {
                    Ok(s) => {
                        samples.push(t0.elapsed());
                        small_get(s, buf).await
                    }
                    Err(e) => Err(e),
                };
                if r.is_err() {
                    errors += 1;
                }
            }
            (samples, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (s, e) = t.await?;
        all.extend(s);
        errors += e;
    }
    ensure!(!all.is_empty(), "no tunnel was set up");
    ensure!(
        errors * 100 <= all.len() as u64,
        "{errors} errors for {} tunnels",
        all.len()
    );
    all.sort_unstable();
    let pct = |p: usize| all[(all.len() * p / 100).min(all.len() - 1)].as_secs_f64() * 1e6;
    Ok(format!(
        "{:.0} us-p99 p50={:.0}us n={}",
        pct(99),
        pct(50),
        all.len()
    ))
}

async fn tunnel_once(o: &Opts) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    let s = open(o, &mut buf).await?;
    small_get(s, buf).await
}

/// `GET /64` on an open stream (to the origin, directly or tunnelled), body read to its end.
async fn small_get(mut s: TcpStream, mut buf: Vec<u8>) -> anyhow::Result<()> {
    s.write_all(format!("GET /{SMALL} HTTP/1.1\r\nHost: origin\r\n\r\n").as_bytes())
        .await?;
    let head = read_head(&mut s, &mut buf).await?.context("no response")?;
    let mut scratch = [0u8; 1024];
    read_body(
        &mut s,
        &mut buf,
        &mut scratch,
        content_length(&head).unwrap_or(0),
    )
    .await
}

async fn denied_once(o: &Opts) -> anyhow::Result<()> {
    let mut s = connect(o.proxy.context("--proxy")?).await?;
    s.write_all(format!("CONNECT {DENIED} HTTP/1.1\r\nHost: {DENIED}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    let head = read_head(&mut s, &mut buf).await?.context("no response")?;
    ensure!((400..500).contains(&status(&head)), "not refused: {head}");
    if let Some(n) = content_length(&head) {
        let mut scratch = [0u8; 4096];
        read_body(&mut s, &mut buf, &mut scratch, n).await?;
    }
    Ok(())
}

/// One absolute-form GET, on the kept connection if there is one. A proxy without keep-alive
/// (Tinyproxy) closes after each response without saying so: a failure on a reused connection
/// is retried once on a new one (that reconnect is part of the measured cost).
async fn forward_once(o: &Opts, kept: &mut Option<(TcpStream, Vec<u8>)>) -> anyhow::Result<()> {
    if let Some(k) = kept.take()
        && forward_on(o, k, kept).await.is_ok()
    {
        return Ok(());
    }
    // Without a proxy: straight to the origin (origin-form), the ceiling of this scenario.
    let s = connect(o.proxy.unwrap_or(o.origin()?)).await?;
    forward_on(o, (s, Vec::new()), kept).await
}

async fn forward_on(
    o: &Opts,
    (mut s, mut buf): (TcpStream, Vec<u8>),
    kept: &mut Option<(TcpStream, Vec<u8>)>,
) -> anyhow::Result<()> {
    let origin = o.origin()?;
    let target = if o.proxy.is_some() {
        format!("http://127.0.0.1:{origin}/{SMALL}")
    } else {
        format!("/{SMALL}")
    };
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{origin}\r\n");
    for h in &CLIENT_HEADERS[..o.extra_headers] {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let head = read_head(&mut s, &mut buf).await?.context("no response")?;
    ensure!(status(&head) == 200, "{head}");
    let mut scratch = [0u8; 1024];
    read_body(
        &mut s,
        &mut buf,
        &mut scratch,
        content_length(&head).unwrap_or(0),
    )
    .await?;
    let closes = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        (l.starts_with("connection:") || l.starts_with("proxy-connection:")) && l.contains("close")
    });
    if !closes {
        *kept = Some((s, buf));
    }
    Ok(())
}

/// How busy the proxy's CPU was during a rate run (`--pids`): when the proxy is well below 100 %
/// while its rate is below direct, the limit is on the load generator's and origin's CPU, not
/// in the proxy.
struct Busy<'a> {
    pids: &'a [u32],
    ticks: Option<u64>,
}

impl<'a> Busy<'a> {
    fn start(pids: &'a [u32]) -> anyhow::Result<Busy<'a>> {
        let ticks = if pids.is_empty() {
            None
        } else {
            Some(cpu_ticks(pids)?)
        };
        Ok(Busy { pids, ticks })
    }
    /// ` N %cpu` (the proxy's CPU seconds per second of the run, in percent), or nothing.
    fn end(&self, secs: f64) -> anyhow::Result<String> {
        let Some(t0) = self.ticks else {
            return Ok(String::new());
        };
        let used = cpu_ticks(self.pids)?.saturating_sub(t0) as f64 / 100.0;
        Ok(format!(" {:.0} %cpu", used / secs * 100.0))
    }
}

/// CPU time of the load side: this process and `--load-pids` (the origin).
struct LoadCpu {
    pids: Vec<u32>,
    ticks: u64,
}

impl LoadCpu {
    /// `None` without `--load-pids`.
    fn start(o: &Opts) -> anyhow::Result<Option<LoadCpu>> {
        if o.load_pids.is_empty() {
            return Ok(None);
        }
        let pids: Vec<u32> = o
            .load_pids
            .iter()
            .copied()
            .chain([std::process::id()])
            .collect();
        let ticks = cpu_ticks(&pids)?;
        Ok(Some(LoadCpu { pids, ticks }))
    }

    /// CPU seconds used since `start` (clock ticks are 10 ms).
    fn secs(&self) -> anyhow::Result<f64> {
        Ok(cpu_ticks(&self.pids)?.saturating_sub(self.ticks) as f64 / 100.0)
    }
}

/// Sum of user + system CPU time of `pids`, in clock ticks (USER_HZ = 100 on Linux).
fn cpu_ticks(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("failed to read /proc/{pid}/stat"))?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').context("stat format")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        total += f.get(11).context("utime")?.parse::<u64>()?
            + f.get(12).context("stime")?.parse::<u64>()?;
    }
    Ok(total)
}

/// Sum of VmRSS over `pids`, in KiB.
fn rss_kib(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("failed to read /proc/{pid}/status"))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS")?;
        total += line
            .split_whitespace()
            .nth(1)
            .context("VmRSS value")?
            .parse::<u64>()?;
    }
    Ok(total)
}

/// Hold `tunnels` idle tunnels (each carried one small request first, so the relay is in its
/// steady state); RSS growth of `pids` per tunnel, in KiB.
async fn idle(o: &Opts) -> anyhow::Result<String> {
    ensure!(!o.pids.is_empty(), "--pids");
    ensure!(o.tunnels > 0 && o.tunnels <= 20_000, "--tunnels 1..=20000");
    let before = rss_kib(&o.pids)?;
    let mut held = Vec::with_capacity(o.tunnels);
    // Open in waves of 64 so no proxy's listen backlog overflows.
    while held.len() < o.tunnels {
        let wave = (o.tunnels - held.len()).min(64);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..wave {
            let opts = Opts {
                origin: o.origin,
                proxy: o.proxy,
                ..Default::default()
            };
            set.spawn(async move {
                let mut buf = Vec::new();
                let mut s = open(&opts, &mut buf).await?;
                s.write_all(format!("GET /{SMALL} HTTP/1.1\r\nHost: origin\r\n\r\n").as_bytes())
                    .await?;
                let head = read_head(&mut s, &mut buf).await?.context("no response")?;
                let mut scratch = [0u8; 1024];
                read_body(
                    &mut s,
                    &mut buf,
                    &mut scratch,
                    content_length(&head).unwrap_or(0),
                )
                .await?;
                anyhow::Ok(s)
            });
        }
        while let Some(r) = set.join_next().await {
            held.push(r??);
        }
    }
    // Let the proxy settle (freed request buffers, pooled pipes back).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = rss_kib(&o.pids)?;
    let per = (after.saturating_sub(before)) as f64 / o.tunnels as f64;
    drop(held);
    Ok(format!("{per:.1} KiB ({before} -> {after} KiB)"))
}

/// The floor proxy of the rate rows (see the module comment).
mod floor {
    use anyhow::{Context, ensure};
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::{LOOPBACK, connect, content_length, read_head};

    pub async fn serve(port: u16, origin: u16) -> anyhow::Result<()> {
        let l = TcpListener::bind((LOOPBACK, port))
            .await
            .with_context(|| format!("failed to bind 127.0.0.1:{port}"))?;
        loop {
            let Ok((c, _)) = l.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let _ = client(c, origin).await;
            });
        }
    }

    async fn client(mut c: TcpStream, origin: u16) -> anyhow::Result<()> {
        c.set_nodelay(true)?;
        let mut buf = Vec::with_capacity(4096);
        let mut up: Option<(TcpStream, Vec<u8>)> = None;
        loop {
            let Some(head) = read_head(&mut c, &mut buf).await? else {
                return Ok(());
            };
            if head.starts_with("CONNECT ") {
                let mut o = connect(origin).await?;
                c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await?;
                if !buf.is_empty() {
                    o.write_all(&buf).await?;
                }
                tokio::io::copy_bidirectional(&mut c, &mut o).await?;
                return Ok(());
            }
            ensure!(
                content_length(&head).unwrap_or(0) == 0,
                "request bodies are not relayed"
            );
            let (o, obuf) = match &mut up {
                Some(u) => u,
                None => up.insert((connect(origin).await?, Vec::with_capacity(4096))),
            };
            let mut req = head.into_bytes();
            req.extend_from_slice(b"\r\n\r\n");
            o.write_all(&req).await?;
            let resp = read_head(o, obuf).await?.context("origin closed")?;
            let n = content_length(&resp).unwrap_or(0) as usize;
            let mut out = resp.into_bytes();
            out.extend_from_slice(b"\r\n\r\n");
            while obuf.len() < n {
                let mut tmp = [0u8; 4096];
                let k = tokio::io::AsyncReadExt::read(o, &mut tmp).await?;
                ensure!(k > 0, "origin closed inside a body");
                obuf.extend_from_slice(&tmp[..k]);
            }
            out.extend(obuf.drain(..n));
            c.write_all(&out).await?;
        }
    }
}

/// The minimal relay (see the module comment): blocking threads and splice(2), nothing else.
mod minimal {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::fd::{AsFd, OwnedFd};

    use anyhow::{Context, ensure};
    use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

    use super::LOOPBACK;

    /// Pipe capacity per direction (the largest kennel can be configured to use).
    const PIPE: usize = 1 << 20;

    /// Serves `CONNECT 127.0.0.1:PORT` on `port`. `spin`: the download direction never sleeps
    /// (see the module's `relay --spin`).
    pub fn relay(port: u16, spin: bool) -> anyhow::Result<()> {
        let l = TcpListener::bind((LOOPBACK, port))
            .with_context(|| format!("failed to bind 127.0.0.1:{port}"))?;
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            std::thread::spawn(move || {
                if let Err(e) = serve(c, spin) {
                    eprintln!("relay: {e:#}");
                }
            });
        }
        Ok(())
    }

    fn serve(mut c: TcpStream, spin: bool) -> anyhow::Result<()> {
        c.set_nodelay(true)?;
        // The client sends nothing after its CONNECT head before the 200, so a byte-wise read
        // cannot swallow tunnel data.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            ensure!(head.len() < 4096, "head too large");
            if c.read(&mut b)? == 0 {
                // A port probe (run.sh's wait_port) or a client that gave up: nothing to relay.
                return Ok(());
            }
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        let port: u16 = head
            .strip_prefix("CONNECT 127.0.0.1:")
            .and_then(|r| r.split(' ').next())
            .context("only CONNECT 127.0.0.1:PORT is relayed")?
            .parse()?;
        let o = TcpStream::connect((LOOPBACK, port))?;
        o.set_nodelay(true)?;
        c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
        // Non-blocking sockets for the spinning relay (both directions share the file
        // descriptions, so the upload direction waits in poll(2) instead of in splice).
        c.set_nonblocking(spin)?;
        o.set_nonblocking(spin)?;
        let (c2, o2) = (c.try_clone()?, o.try_clone()?);
        let up = std::thread::spawn(move || pump(&c2, &o2, Wait::Poll));
        pump(&o, &c, if spin { Wait::Spin } else { Wait::Poll })?;
        up.join()
            .map_err(|_| anyhow::anyhow!("up thread panicked"))??;
        Ok(())
    }

    /// What a direction does when its socket is not ready (only non-blocking sockets are ever
    /// not ready; blocking ones wait inside splice).
    #[derive(Clone, Copy)]
    enum Wait {
        /// Sleep in poll(2) until the socket is ready.
        Poll,
        /// Try again at once, only giving the CPU to another runnable thread (another tunnel's).
        Spin,
    }

    fn wait(fd: &TcpStream, events: PollFlags, how: Wait) -> anyhow::Result<()> {
        match how {
            Wait::Spin => std::thread::yield_now(),
            Wait::Poll => {
                let mut fds = [PollFd::new(fd.as_fd(), events)];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    fn pump(src: &TcpStream, dst: &TcpStream, how: Wait) -> anyhow::Result<()> {
        let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        // Refused above fs.pipe-max-size: the default pipe is still a relay, only slower.
        let _ = fcntl(&r, FcntlArg::F_SETPIPE_SZ(PIPE as i32));
        // Not SPLICE_F_MORE: it tells TCP more data follows, so the tail of each splice waits
        // in the socket for the next one (measured: 0.50× direct with it, ~0.75× without).
        let f = SpliceFFlags::SPLICE_F_MOVE;
        loop {
            let mut n = match splice(src, None, &w, None, PIPE, f) {
                Ok(n) => n,
                Err(nix::errno::Errno::EAGAIN) => {
                    wait(src, PollFlags::POLLIN, how)?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                let _ = dst.shutdown(Shutdown::Write);
                return Ok(());
            }
            while n > 0 {
                match splice(&r, None, dst, None, n, f) {
                    Ok(m) => {
                        ensure!(m > 0, "splice wrote 0");
                        n -= m;
                    }
                    Err(nix::errno::Errno::EAGAIN) => wait(dst, PollFlags::POLLOUT, how)?,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}
