//! ClientHello peek: read the client's first TLS flight with rustls' `Acceptor` (no handshake is
//! done; the bytes are kept and later forwarded unchanged) and extract the SNI.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest ClientHello kennel waits for.
pub const MAX_HELLO_BYTES: usize = 64 * 1024;

/// What the client's first bytes were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// A TLS ClientHello, with its SNI (None = no server_name extension).
    Tls(Option<String>),
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
        Ok(Some(accepted)) => Some(Peek::Tls(
            accepted.client_hello().server_name().map(str::to_string),
        )),
        Err((e, _alert)) => Some(Peek::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_tls() {
        assert_eq!(classify(b"SSH-2.0-x\r\n"), Some(Peek::NotTls));
        assert_eq!(classify(b""), None);
    }

    #[test]
    fn partial_record_needs_more() {
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), None);
    }

    #[test]
    fn garbage_record_is_malformed() {
        let mut v = vec![0x16, 0x03, 0x01, 0x00, 0x05];
        v.extend_from_slice(&[0x01, 0x00, 0x00, 0x01, 0x00]);
        assert!(matches!(classify(&v), Some(Peek::Malformed(_))));
    }
}
