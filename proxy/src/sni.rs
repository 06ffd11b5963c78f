//! ClientHello peek: read the client's first TLS flight with rustls' `Acceptor` (no handshake is
//! done; the bytes are kept and later forwarded unchanged) and extract the SNI.

use std::time::Duration;

use bytes::BytesMut;
use kennel_policy::{Host, Target};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::log::{Ended, Reason};

/// Largest ClientHello kennel waits for.
pub const MAX_HELLO_BYTES: usize = 64 * 1024;

/// What the client's first bytes were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// A TLS ClientHello.
    Tls {
        /// The (outer) SNI; `None` = no server_name extension.
        sni: Option<String>,
        /// The hello carries an `encrypted_client_hello` (0xfe0d) or draft
        /// `encrypted_server_name` (0xffce) extension: the real server name is hidden.
        ech: bool,
    },
    /// Not TLS (first byte is not a handshake record), or the client sent nothing and closed.
    NotTls,
    /// Looks like TLS but the ClientHello could not be parsed.
    Malformed(String),
}

/// Read from `io` into `buf` (which may already hold bytes) until the first bytes can be
/// classified. Everything read stays in `buf`.
pub async fn peek_client_hello<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    timeout: Duration,
) -> std::io::Result<Peek> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(p) = classify(buf) {
            return Ok(p);
        }
        if buf.len() >= MAX_HELLO_BYTES {
            return Ok(Peek::Malformed("ClientHello larger than 64 KiB".into()));
        }
        buf.reserve(16 * 1024);
        let n = match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no data from the client",
                ));
            }
        };
        if n == 0 {
            return Ok(if buf.is_empty() {
                Peek::NotTls
            } else {
                Peek::Malformed("client closed mid-ClientHello".into())
            });
        }
    }
}

/// Why a tunnel's first flight was refused (access-log `reason` and `error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not TLS on a port outside `plaintext_tunnel_ports`: nothing ties the bytes to the CONNECT
    /// host (a plain HTTP request can carry any Host header, and shared front ends route by it).
    #[error(
        "the tunnel does not start with a TLS ClientHello and port {port} is not in plaintext_tunnel_ports"
    )]
    NotTls {
        /// The CONNECT port.
        port: u16,
    },
    /// The hello hides the real server name and `allow_ech = false`.
    #[error(
        "TLS ClientHello with encrypted_client_hello / encrypted_server_name: the real server name is hidden (allow_ech = false)"
    )]
    Ech {
        /// The outer SNI, if any.
        sni: Option<String>,
    },
    /// The SNI names another host than the CONNECT target.
    #[error("TLS SNI {sni:?} does not match the CONNECT host {host}")]
    Mismatch {
        /// The SNI.
        sni: String,
        /// The CONNECT host.
        host: Host,
    },
    /// No server_name extension.
    #[error("TLS ClientHello without SNI")]
    Missing,
    /// The ClientHello could not be parsed.
    #[error("unreadable ClientHello: {0}")]
    Unreadable(String),
}

impl Refusal {
    /// The access-log reason.
    pub fn reason(&self) -> Reason {
        match self {
            Refusal::NotTls { .. } => Reason::NotTls,
            Refusal::Ech { .. } => Reason::SniEch,
            Refusal::Mismatch { .. } => Reason::SniMismatch,
            Refusal::Missing => Reason::SniMissing,
            Refusal::Unreadable(_) => Reason::SniUnreadable,
        }
    }

    /// The SNI the refused hello carried, if any (access-log `sni`).
    pub fn sni(&self) -> Option<&str> {
        match self {
            Refusal::Ech { sni } => sni.as_deref(),
            Refusal::Mismatch { sni, .. } => Some(sni),
            _ => None,
        }
    }
}

/// Check a classified first flight against the CONNECT target: `Ok(sni)` when it is a
/// ClientHello whose SNI names the target (and, unless `allow_ech`, hides no other name).
pub fn check(peek: Peek, target: &Target, allow_ech: bool) -> Result<String, Refusal> {
    match peek {
        Peek::NotTls => Err(Refusal::NotTls { port: target.port }),
        Peek::Tls { sni, ech: true } if !allow_ech => Err(Refusal::Ech { sni }),
        Peek::Tls { sni: Some(sni), .. } => match Host::parse(&sni) {
            Ok(h) if h == target.host => Ok(sni),
            _ => Err(Refusal::Mismatch {
                sni,
                host: target.host.clone(),
            }),
        },
        Peek::Tls { sni: None, .. } => Err(Refusal::Missing),
        Peek::Malformed(m) => Err(Refusal::Unreadable(m)),
    }
}

/// The result of [`inspect_first_flight`].
#[derive(Debug)]
pub enum FirstFlight {
    /// Relay it: the SNI that passed the check, or `None` when no check applies.
    Pass(Option<String>),
    /// The check refused it.
    Refused(Refusal),
    /// The wait ended without a verdict (revoked, shutdown, client failure, origin closed).
    Ended(Ended),
}

/// What [`inspect_first_flight`] needs besides the sockets.
pub struct Inspect<'a> {
    /// The CONNECT target.
    pub target: &'a Target,
    /// `require_sni` and the port is not a plaintext port and the target is a name.
    pub required: bool,
    /// `allow_ech`.
    pub allow_ech: bool,
    /// How long to wait for the client's first bytes.
    pub timeout: Duration,
    /// Cancelled when a reload revokes the destination.
    pub revoked: &'a CancellationToken,
    /// Cancelled at the drain deadline.
    pub hard_stop: &'a CancellationToken,
}

/// Wait for the client's first flight (it stays in `buf`, forwarded unchanged) and check its
/// SNI against the CONNECT host. `origin` is the destination socket of a direct tunnel: if it
/// speaks first (SMTP, FTP, some SSH servers) this is not TLS and there is no SNI to check.
pub async fn inspect_first_flight(
    client: &mut TcpStream,
    buf: &mut BytesMut,
    origin: Option<&TcpStream>,
    cx: Inspect<'_>,
) -> FirstFlight {
    if !cx.required {
        return FirstFlight::Pass(None);
    }
    // Readiness alone is not "the origin spoke": it can be spurious, or an EOF / reset. Only
    // bytes actually waiting (peek > 0) count; a closed origin ends the tunnel. Through an
    // upstream the origin is not visible: wait for the client.
    let origin_speaks_first = async move {
        match origin {
            Some(t) => {
                let mut one = [0u8; 1];
                matches!(t.peek(&mut one).await, Ok(n) if n > 0)
            }
            None => std::future::pending::<bool>().await,
        }
    };
    let peek = tokio::select! {
        p = peek_client_hello(client, buf, cx.timeout) => p,
        spoke = origin_speaks_first => if spoke {
            Ok(Peek::NotTls)
        } else {
            return FirstFlight::Ended(Ended::OriginClosedFirst);
        },
        _ = cx.revoked.cancelled() => return FirstFlight::Ended(Ended::Revoked),
        _ = cx.hard_stop.cancelled() => return FirstFlight::Ended(Ended::Shutdown),
    };
    match peek {
        Ok(p) => match check(p, cx.target, cx.allow_ech) {
            Ok(sni) => FirstFlight::Pass(Some(sni)),
            Err(r) => {
                // A not-TLS first flight from the client may still be served as HTTP
                // (`tunnel_http`): the caller logs that refusal once it is final.
                if !matches!(r, Refusal::NotTls { .. }) || buf.is_empty() {
                    tracing::info!(reason = %r.reason(), target = %cx.target, "{r}");
                }
                FirstFlight::Refused(r)
            }
        },
        Err(e) => FirstFlight::Ended(Ended::ClientError(e.to_string())),
    }
}

/// Classify the bytes so far; `None` = need more.
pub fn classify(buf: &[u8]) -> Option<Peek> {
    let first = *buf.first()?;
    if first != 0x16 {
        return Some(Peek::NotTls);
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rd: &[u8] = buf;
    while !rd.is_empty() {
        match acceptor.read_tls(&mut rd) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Some(Peek::Malformed(e.to_string())),
        }
    }
    match acceptor.accept() {
        Ok(None) => None,
        Ok(Some(accepted)) => {
            let sni = accepted.client_hello().server_name().map(str::to_string);
            Some(match hello_extension_types(buf) {
                Some(types) => Peek::Tls {
                    sni,
                    ech: types.iter().any(|t| ECH_EXTENSIONS.contains(t)),
                },
                None => Peek::Malformed("ClientHello extensions could not be read".into()),
            })
        }
        Err((e, _alert)) => Some(Peek::Malformed(e.to_string())),
    }
}

/// `encrypted_client_hello` (RFC 9849 / draft-ietf-tls-esni) and the older draft
/// `encrypted_server_name`.
pub const ECH_EXTENSIONS: [u16; 2] = [0xfe0d, 0xffce];

/// The extension types of the ClientHello at the start of `buf` (TLS records), in order; `None`
/// if the bytes are not a complete, well-formed ClientHello. Every length is bounds-checked.
pub fn hello_extension_types(buf: &[u8]) -> Option<Vec<u16>> {
    // Concatenate the payloads of the leading handshake records until the message is complete.
    let mut hs: Vec<u8> = Vec::new();
    let mut rest = buf;
    let need = loop {
        if hs.len() >= 4 {
            let len = u32::from_be_bytes([0, hs[1], hs[2], hs[3]]) as usize;
            if hs.len() >= 4 + len {
                break 4 + len;
            }
        }
        let (&ty, _) = rest.split_first()?;
        if ty != 0x16 || rest.len() < 5 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let payload = rest.get(5..5 + len)?;
        hs.extend_from_slice(payload);
        rest = &rest[5 + len..];
    };
    let mut r = Reader(hs.get(..need)?);
    if r.u8()? != 0x01 {
        return None; // not a ClientHello
    }
    r.take(3)?; // handshake length (checked above)
    r.take(2 + 32)?; // legacy_version, random
    let n = usize::from(r.u8()?);
    r.take(n)?; // session_id
    let n = usize::from(r.u16()?);
    r.take(n)?; // cipher_suites
    let n = usize::from(r.u8()?);
    r.take(n)?; // compression_methods
    if r.0.is_empty() {
        return Some(Vec::new()); // no extensions block
    }
    let n = usize::from(r.u16()?);
    let mut ext = Reader(r.take(n)?);
    let mut types = Vec::new();
    while !ext.0.is_empty() {
        types.push(ext.u16()?);
        let n = usize::from(ext.u16()?);
        ext.take(n)?;
    }
    Some(types)
}

/// A bounds-checked big-endian cursor.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each first flight gets its typed refusal, with the SNI kept where the hello had one.
    #[test]
    fn check_refusals_are_typed() {
        let t = Target::parse_authority("a.test:443").expect("target");
        let tls = |sni: Option<&str>, ech| Peek::Tls {
            sni: sni.map(str::to_string),
            ech,
        };
        assert_eq!(
            check(tls(Some("A.test"), false), &t, false),
            Ok("A.test".into())
        );
        assert_eq!(
            check(tls(Some("a.test"), true), &t, true),
            Ok("a.test".into())
        );
        let refused = |p: Peek, allow_ech| check(p, &t, allow_ech).expect_err("refused");
        let r = refused(tls(Some("b.test"), false), false);
        assert_eq!((r.reason(), r.sni()), (Reason::SniMismatch, Some("b.test")));
        let r = refused(tls(Some("a.test"), true), false);
        assert_eq!((r.reason(), r.sni()), (Reason::SniEch, Some("a.test")));
        assert_eq!(refused(tls(None, false), false), Refusal::Missing);
        assert_eq!(refused(tls(None, true), true).reason(), Reason::SniMissing);
        assert_eq!(refused(Peek::NotTls, false), Refusal::NotTls { port: 443 });
        assert_eq!(
            refused(Peek::Malformed("x".into()), false).reason(),
            Reason::SniUnreadable
        );
    }

    #[test]
    fn not_tls() {
        assert_eq!(classify(b"SSH-2.0-x\r\n"), Some(Peek::NotTls));
        assert_eq!(classify(b""), None);
    }

    #[test]
    fn partial_record_needs_more() {
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), None);
    }

    /// A minimal ClientHello handshake message with these extensions.
    fn hello(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]); // random
        body.push(0); // session_id
        body.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0xc0, 0x2f]); // cipher suites
        body.extend_from_slice(&[0x01, 0x00]); // compression: null
        let mut e = Vec::new();
        for (ty, data) in exts {
            e.extend_from_slice(&ty.to_be_bytes());
            e.extend_from_slice(&(data.len() as u16).to_be_bytes());
            e.extend_from_slice(data);
        }
        body.extend_from_slice(&(e.len() as u16).to_be_bytes());
        body.extend_from_slice(&e);
        let mut hs = vec![0x01];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        hs
    }

    /// signature_algorithms (rustls requires it).
    fn sig_algs() -> (u16, Vec<u8>) {
        (0x000d, vec![0, 4, 0x04, 0x03, 0x08, 0x04])
    }

    /// A well-formed outer `encrypted_client_hello` (HPKE suite, config id, enc, payload).
    fn ech_outer() -> Vec<u8> {
        let mut d = vec![0x00, 0x00, 0x01, 0x00, 0x01, 0x05, 0x00, 0x20];
        d.extend_from_slice(&[9u8; 32]);
        d.extend_from_slice(&[0x00, 0x10]);
        d.extend_from_slice(&[3u8; 16]);
        d
    }

    fn sni_ext(name: &str) -> (u16, Vec<u8>) {
        let n = name.as_bytes();
        let mut d = ((n.len() + 3) as u16).to_be_bytes().to_vec();
        d.push(0);
        d.extend_from_slice(&(n.len() as u16).to_be_bytes());
        d.extend_from_slice(n);
        (0x0000, d)
    }

    /// Wrap `hs` in handshake records, split at the given offsets.
    fn records(hs: &[u8], splits: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut start = 0;
        for end in splits.iter().copied().chain([hs.len()]) {
            let part = &hs[start..end];
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
            start = end;
        }
        out
    }

    #[test]
    fn hello_without_ech_is_tls_with_its_sni() {
        let hs = hello(&[sni_ext("a.test"), sig_algs(), (0x000a, vec![0, 2, 0, 0x1d])]);
        for splits in [vec![], vec![10], vec![1, 50]] {
            let buf = records(&hs, &splits);
            assert_eq!(
                hello_extension_types(&buf),
                Some(vec![0x0000, 0x000d, 0x000a])
            );
            assert_eq!(
                classify(&buf),
                Some(Peek::Tls {
                    sni: Some("a.test".into()),
                    ech: false
                }),
                "{splits:?}"
            );
        }
    }

    #[test]
    fn hello_with_ech_or_esni_is_flagged_also_when_split_over_two_records() {
        for ext in ECH_EXTENSIONS {
            let hs = hello(&[sni_ext("cover.test"), sig_algs(), (ext, ech_outer())]);
            for splits in [vec![], vec![hs.len() / 2]] {
                let buf = records(&hs, &splits);
                assert_eq!(
                    classify(&buf),
                    Some(Peek::Tls {
                        sni: Some("cover.test".into()),
                        ech: true
                    }),
                    "{ext:#x} {splits:?}"
                );
            }
        }
    }

    #[test]
    fn truncated_or_lying_lengths_never_panic() {
        let hs = hello(&[sni_ext("a.test"), sig_algs(), (0xfe0d, ech_outer())]);
        let full = records(&hs, &[20]);
        for cut in 0..full.len() {
            assert_eq!(hello_extension_types(&full[..cut]), None, "cut at {cut}");
            let _ = classify(&full[..cut]);
        }
        // Every single-byte corruption: any answer, but no panic.
        for i in 0..full.len() {
            for v in [0x00, 0x01, 0x7f, 0xff] {
                let mut b = full.clone();
                b[i] = v;
                let _ = hello_extension_types(&b);
                let _ = classify(&b);
            }
        }
    }

    #[test]
    fn garbage_record_is_malformed() {
        let mut v = vec![0x16, 0x03, 0x01, 0x00, 0x05];
        v.extend_from_slice(&[0x01, 0x00, 0x00, 0x01, 0x00]);
        assert!(matches!(classify(&v), Some(Peek::Malformed(_))));
    }
}
