//! The project's own origins for proxy tests: a small HTTP/1.1 server (plain or TLS) and a TCP
//! echo server. Each runs on a listener the test provides (loopback or inside a test netns).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use kennel_proxy::head::{self, BodyReader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running origin; aborted on drop.
pub struct Origin {
    /// Address it listens on.
    pub addr: std::net::SocketAddr,
    /// Requests (HTTP) or connections (echo) served.
    pub hits: Arc<AtomicU64>,
    /// TCP connections accepted.
    pub conns: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    /// Requests/connections served so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn conns(&self) -> u64 {
        self.conns.load(Ordering::SeqCst)
    }
}

/// Bind 127.0.0.1:0.
pub async fn loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback")
}

/// Plain HTTP origin named `name`. Responses: `GET /bytes/N` → N bytes of 'x'; `/headers` → the
/// request's header lines; `/chunked` → a chunked body; anything else →
/// `origin {name}: {METHOD} {path} host={Host} body={len}` (keep-alive, Content-Length).
pub fn http(listener: TcpListener, name: &str) -> Origin {
    serve(listener, name, None)
}

/// The same origin behind TLS with `config`.
pub fn https(listener: TcpListener, name: &str, config: Arc<rustls::ServerConfig>) -> Origin {
    serve(
        listener,
        name,
        Some(tokio_rustls::TlsAcceptor::from(config)),
    )
}

fn serve(listener: TcpListener, name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Origin {
    let addr = listener.local_addr().expect("local addr");
    let hits = Arc::new(AtomicU64::new(0));
    let conns = Arc::new(AtomicU64::new(0));
    let (h, c, name) = (hits.clone(), conns.clone(), name.to_string());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let (h, name, tls) = (h.clone(), name.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    Some(acc) => {
                        if let Ok(s) = acc.accept(tcp).await {
                            http_conn(s, &name, &h).await;
                        }
                    }
                    None => http_conn(tcp, &name, &h).await,
                }
            });
        }
    });
    Origin {
        addr,
        hits,
        conns,
        task,
    }
}

async fn http_conn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, name: &str, hits: &AtomicU64) {
    let mut buf = BytesMut::new();
    loop {
        let Ok(req) = head::read_head(
            &mut s,
            &mut buf,
            1 << 20,
            Duration::from_secs(30),
            Duration::from_secs(30),
        )
        .await
        else {
            return;
        };
        hits.fetch_add(1, Ordering::SeqCst);
        let mut body = BodyReader::new(req.framing);
        let mut len = 0usize;
        while let Ok(Some(b)) = body.next(&mut s, &mut buf, 65536).await {
            len += b.len();
        }
        let host = req
            .header("host")
            .map(|h| String::from_utf8_lossy(h).to_string())
            .unwrap_or_default();
        if req.target() == "/chunked" {
            // Chunked response without Content-Length: "chunk-one\nchunk-two\n".
            let out = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nchunk-one\n\r\na\r\nchunk-two\n\r\n0\r\n\r\n";
            if s.write_all(out.as_bytes()).await.is_err() {
                return;
            }
        } else {
            let resp_body: Vec<u8> = if let Some(n) = req
                .target()
                .strip_prefix("/bytes/")
                .and_then(|n| n.parse::<usize>().ok())
            {
                vec![b'x'; n]
            } else if req.target() == "/headers" {
                // The request's header lines, lowercase names, one per line.
                req.headers()
                    .map(|(n, v)| {
                        format!(
                            "{}: {}\n",
                            n.to_ascii_lowercase(),
                            String::from_utf8_lossy(v)
                        )
                    })
                    .collect::<String>()
                    .into_bytes()
            } else {
                format!(
                    "origin {name}: {} {} host={host} body={len}\n",
                    req.method(),
                    req.target()
                )
                .into_bytes()
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nX-Origin: {name}\r\nKeep-Alive: timeout=5\r\n\r\n",
                resp_body.len()
            );
            if s.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            if req.method() != "HEAD" && s.write_all(&resp_body).await.is_err() {
                return;
            }
        }
        if !req.keep_alive {
            let _ = s.shutdown().await;
            return;
        }
    }
}

/// TCP echo origin (for tunnels): echoes every byte; on EOF shuts its write side down.
pub fn echo(listener: TcpListener) -> Origin {
    let addr = listener.local_addr().expect("local addr");
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            h.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Origin {
        addr,
        hits,
        conns: Arc::default(),
        task,
    }
}

/// Sink origin (for throughput): reads and discards, then reports the byte count on close.
pub fn sink(listener: TcpListener) -> Origin {
    let addr = listener.local_addr().expect("local addr");
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let mut b = vec![0u8; 256 * 1024];
                while let Ok(n) = tcp.read(&mut b).await {
                    if n == 0 {
                        break;
                    }
                    h.fetch_add(n as u64, Ordering::SeqCst);
                }
            });
        }
    });
    Origin {
        addr,
        hits,
        conns: Arc::default(),
        task,
    }
}

/// A tiny authoritative DNS server on UDP for proxy tests: answers A/AAAA queries from `records`
/// (lowercase names without trailing dot), NXDOMAIN for unknown names. Counts queries in `hits`.
pub async fn dns(records: Vec<(&str, std::net::IpAddr)>) -> Origin {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind udp");
    let addr = sock.local_addr().expect("local addr");
    let records: Vec<(String, std::net::IpAddr)> = records
        .into_iter()
        .map(|(n, ip)| (n.to_string(), ip))
        .collect();
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            h.fetch_add(1, Ordering::SeqCst);
            if let Some(resp) = dns_answer(&buf[..n], &records) {
                let _ = sock.send_to(&resp, peer).await;
            }
        }
    });
    Origin {
        addr,
        hits,
        conns: Arc::default(),
        task,
    }
}

fn dns_answer(q: &[u8], records: &[(String, std::net::IpAddr)]) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    // Question name.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let qend = i + 4;
    let name = labels.join(".");
    let known = records.iter().any(|(n, _)| *n == name);
    let answers: Vec<&std::net::IpAddr> = records
        .iter()
        .filter(|(n, ip)| {
            *n == name && ((qtype == 1 && ip.is_ipv4()) || (qtype == 28 && ip.is_ipv6()))
        })
        .map(|(_, ip)| ip)
        .collect();
    let mut r = Vec::with_capacity(512);
    r.extend_from_slice(&q[..2]); // id
    r.extend_from_slice(&[0x85, if known { 0x80 } else { 0x83 }]); // QR AA RD, RA, rcode
    r.extend_from_slice(&[0, 1]);
    r.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(q.get(12..qend)?);
    for ip in answers {
        r.extend_from_slice(&[0xc0, 0x0c]);
        match ip {
            std::net::IpAddr::V4(v4) => {
                r.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                r.extend_from_slice(&v4.octets());
            }
            std::net::IpAddr::V6(v6) => {
                r.extend_from_slice(&[0, 28, 0, 1, 0, 0, 0, 60, 0, 16]);
                r.extend_from_slice(&v6.octets());
            }
        }
    }
    Some(r)
}

/// Server-first origin: sends `banner` on accept, then echoes.
pub fn banner(listener: TcpListener, banner: &'static str) -> Origin {
    let addr = listener.local_addr().expect("local addr");
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            h.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if tcp.write_all(banner.as_bytes()).await.is_err() {
                    return;
                }
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Origin {
        addr,
        hits,
        conns: Arc::default(),
        task,
    }
}
