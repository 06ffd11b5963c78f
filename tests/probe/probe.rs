//! kennel test probe: a tiny std-only program put into test images. It attempts network and
//! file operations and reports the outcome on stdout (exit 0 = the operation succeeded, 1 = it
//! failed, 2 = usage error). Compiled by the test support with
//! `rustc -O -C target-feature=+crt-static`, so it runs in a busybox image without libraries.
//! Names are resolved with its own minimal DNS client against /etc/resolv.conf (static glibc
//! cannot use NSS), so a lookup is exactly one query to the container's resolver.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, ExitCode};
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let res = match a.as_slice() {
        ["tcp", host, port] => tcp(host, port, 2000),
        ["tcp", host, port, ms] => tcp(host, port, ms.parse().unwrap_or(2000)),
        ["udp", host, port] => udp(host, port),
        ["udp-echo", port] => udp_echo(port),
        ["dns", name] => dns_cmd(name, None),
        ["dns", name, server] => dns_cmd(name, Some(server)),
        ["write", path] => std::fs::write(path, b"kennel probe\n")
            .map(|()| format!("written {path}"))
            .map_err(|e| format!("cannot write {path}: {e}")),
        ["read", path] => read(path),
        ["spawn", n] => spawn(n.parse().unwrap_or(0)),
        ["alloc", mib, secs] => alloc(mib.parse().unwrap_or(0), secs.parse().unwrap_or(0)),
        _ => {
            eprintln!(
                "usage: probe tcp HOST PORT [MS] | udp HOST PORT | udp-echo PORT | dns NAME [SERVER] | write PATH | read PATH | spawn N"
            );
            return ExitCode::from(2);
        }
    };
    match res {
        Ok(msg) => {
            println!("ok: {msg}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            println!("fail: {msg}");
            ExitCode::from(1)
        }
    }
}

fn resolve(host: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let ips = dns_query(host, None)?;
    ips.first()
        .map(|ip| IpAddr::V4(*ip))
        .ok_or_else(|| format!("{host}: no A record"))
}

fn tcp(host: &str, port: &str, ms: u64) -> Result<String, String> {
    let port: u16 = port.parse().map_err(|_| format!("bad port {port}"))?;
    let ip = resolve(host)?;
    let addr = SocketAddr::new(ip, port);
    TcpStream::connect_timeout(&addr, Duration::from_millis(ms))
        .map(|_| format!("connected to {addr}"))
        .map_err(|e| format!("connect {addr}: {e}"))
}

fn udp(host: &str, port: &str) -> Result<String, String> {
    let port: u16 = port.parse().map_err(|_| format!("bad port {port}"))?;
    let ip = resolve(host)?;
    let addr = SocketAddr::new(ip, port);
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .map_err(|e| e.to_string())?;
    sock.send_to(b"kennel-ping", addr)
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut buf = [0u8; 64];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => Ok(format!(
            "reply from {from}: {}",
            String::from_utf8_lossy(&buf[..n])
        )),
        Err(e) => Err(format!("no reply from {addr}: {e}")),
    }
}

fn udp_echo(port: &str) -> Result<String, String> {
    let sock = UdpSocket::bind(format!("0.0.0.0:{port}")).map_err(|e| format!("bind: {e}"))?;
    let mut buf = [0u8; 512];
    loop {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    }
}

fn read(path: &str) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot stat {path}: {e}"))?;
    if meta.is_dir() {
        let n = std::fs::read_dir(path)
            .map_err(|e| format!("cannot list {path}: {e}"))?
            .count();
        Ok(format!("listed {n} entries in {path}"))
    } else {
        let mut s = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut s))
            .map_err(|e| format!("cannot read {path}: {e}"))?;
        Ok(format!("read {} bytes from {path}", s.len()))
    }
}

/// Allocates `mib` MiB, touches every page (so it is resident, not just reserved), reports, then
/// holds it for `secs` seconds (at most 600) so a stats reading can see it.
fn alloc(mib: usize, secs: u64) -> Result<String, String> {
    let mut v: Vec<u8> = Vec::new();
    v.try_reserve_exact(mib << 20)
        .map_err(|e| format!("cannot allocate {mib} MiB: {e}"))?;
    v.resize(mib << 20, 1);
    for i in (0..v.len()).step_by(4096) {
        v[i] = (i % 251) as u8;
    }
    println!("allocated {mib} MiB");
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs(secs.min(600)));
    Ok(format!("held {mib} MiB ({} checksum)", v.iter().step_by(4096).map(|b| *b as u64).sum::<u64>()))
}

fn spawn(n: usize) -> Result<String, String> {
    let mut children: Vec<Child> = Vec::new();
    let mut err = None;
    for _ in 0..n {
        match Command::new("/bin/busybox").args(["sleep", "30"]).spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                err = Some(e.to_string());
                break;
            }
        }
    }
    let count = children.len();
    for c in &mut children {
        let _ = c.kill();
    }
    for c in &mut children {
        let _ = c.wait();
    }
    match err {
        None => Ok(format!("spawned {count}")),
        Some(e) => Err(format!("spawned {count} then: {e}")),
    }
}

fn nameserver() -> Result<Ipv4Addr, String> {
    let conf =
        std::fs::read_to_string("/etc/resolv.conf").map_err(|e| format!("resolv.conf: {e}"))?;
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|s| s.trim().parse::<Ipv4Addr>().ok())
        .next()
        .ok_or_else(|| "no IPv4 nameserver in /etc/resolv.conf".to_string())
}

fn dns_cmd(name: &str, server: Option<&str>) -> Result<String, String> {
    let server = match server {
        Some(s) => Some(
            s.parse::<Ipv4Addr>()
                .map_err(|_| format!("bad server {s}"))?,
        ),
        None => None,
    };
    let ips = dns_query(name, server)?;
    if ips.is_empty() {
        return Err(format!("{name}: no A record"));
    }
    let list: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
    Ok(format!("{name} = {}", list.join(" ")))
}

/// One A query to the resolver; Ok(addresses) on NOERROR, Err on any failure.
fn dns_query(name: &str, server: Option<Ipv4Addr>) -> Result<Vec<Ipv4Addr>, String> {
    let server = match server {
        Some(s) => s,
        None => nameserver()?,
    };
    let id: u16 = (std::process::id() as u16) ^ 0x5a5a;
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("bad name {name}"));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    let to = SocketAddr::new(IpAddr::V4(server), 53);
    sock.send_to(&q, to)
        .map_err(|e| format!("send to {to}: {e}"))?;
    let mut buf = [0u8; 1500];
    let n = loop {
        let (n, _) = sock
            .recv_from(&mut buf)
            .map_err(|e| format!("no answer from {to}: {e}"))?;
        if n >= 12 && buf[0..2] == id.to_be_bytes() {
            break n;
        }
    };
    let r = &buf[..n];
    let rcode = r[3] & 0x0f;
    if rcode != 0 {
        let what = match rcode {
            2 => "SERVFAIL",
            3 => "NXDOMAIN",
            5 => "REFUSED",
            _ => "error",
        };
        return Err(format!("{name}: rcode {rcode} ({what}) from {to}"));
    }
    let qd = u16::from_be_bytes([r[4], r[5]]) as usize;
    let an = u16::from_be_bytes([r[6], r[7]]) as usize;
    let mut pos = 12;
    let skip_name = |mut p: usize| -> Option<usize> {
        loop {
            let len = *r.get(p)? as usize;
            if len == 0 {
                return Some(p + 1);
            }
            if len & 0xc0 == 0xc0 {
                return Some(p + 2);
            }
            p += 1 + len;
        }
    };
    for _ in 0..qd {
        pos = skip_name(pos).ok_or("truncated question")? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        pos = skip_name(pos).ok_or("truncated answer")?;
        let h = r.get(pos..pos + 10).ok_or("truncated answer")?;
        let typ = u16::from_be_bytes([h[0], h[1]]);
        let len = u16::from_be_bytes([h[8], h[9]]) as usize;
        pos += 10;
        let data = r.get(pos..pos + len).ok_or("truncated rdata")?;
        if typ == 1 && len == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        pos += len;
    }
    let _ = std::io::stdout().flush();
    Ok(out)
}
