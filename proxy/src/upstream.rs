//! Upstream chaining: reaching a destination through a SOCKS5 (`socks5://`, `socks5h://`) or
//! HTTP(S) (`http://`, `https://`) proxy.
//!
//! The allowlist and the SSRF guard run **before** this module is used; the dialer only
//! speaks the upstream's protocol. Errors name the upstream without its credentials
//! (`upstream socks5h://127.0.0.1:1080: authentication rejected`), and nothing here logs or
//! prints a password.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use kennel_policy::{Credentials, Host, Target, Upstream};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio_socks::TargetAddr;
use tokio_socks::tcp::Socks5Stream;

/// Largest CONNECT response head accepted from an HTTP upstream.
const MAX_CONNECT_RESPONSE_HEAD: usize = 16 * 1024;
/// Most response headers parsed from an HTTP upstream's CONNECT reply.
const MAX_CONNECT_RESPONSE_HEADERS: usize = 64;

/// Settings of the [`UpstreamDialer`].
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Limit for the whole setup through an upstream: TCP connect to the upstream, TLS (for
    /// `https://`), authentication and the upstream's own connect to the target.
    pub connect_timeout: Duration,
    /// Extra CA bundle (PEM) trusted for `https://` upstreams, in addition to the system roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            connect_timeout: Duration::from_secs(10),
            ca_file: None,
        }
    }
}

/// A bidirectional byte stream (a tunnel through an upstream, or a connection to it).
pub trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

/// A boxed [`AsyncReadWrite`] stream.
pub type BoxedIo = Box<dyn AsyncReadWrite>;

/// How a plain-HTTP request must be written on a connection from [`UpstreamDialer::open_http`].
#[derive(Clone, PartialEq, Eq)]
pub enum HttpHop {
    /// The connection reaches the origin (directly or through a SOCKS5 tunnel): send the
    /// request in origin-form (`GET /path HTTP/1.1`).
    Origin,
    /// The connection reaches an HTTP proxy: send the request in absolute-form
    /// (`GET http://host/path HTTP/1.1`) and, when set, this `Proxy-Authorization` value.
    Proxy {
        /// The `Proxy-Authorization` header value (`Basic …`), if the upstream has credentials.
        authorization: Option<String>,
    },
}

impl fmt::Debug for HttpHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpHop::Origin => f.write_str("Origin"),
            HttpHop::Proxy { authorization } => f
                .debug_struct("Proxy")
                .field(
                    "authorization",
                    &authorization.as_ref().map(|_| "<redacted>"),
                )
                .finish(),
        }
    }
}

/// What went wrong with an upstream; [`UpstreamErrorKind::as_str`] is the stable code used
/// in logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamErrorKind {
    /// The upstream proxy could not be reached (DNS failure of its name, TCP connect refused).
    Unreachable,
    /// The upstream rejected the credentials, or requires credentials that are not configured.
    AuthRejected,
    /// The upstream refused or failed to connect to the target (SOCKS5 reply error, HTTP
    /// `403`/`502`/other non-2xx to CONNECT).
    TargetRefused,
    /// The setup did not finish within the connect timeout.
    Timeout,
    /// The upstream spoke something other than the expected protocol, or closed early.
    Protocol,
    /// TLS to an `https://` upstream failed (certificate not trusted, handshake error).
    Tls,
}

impl UpstreamErrorKind {
    /// Stable snake_case code: `unreachable`, `auth_rejected`, `target_refused`, `timeout`,
    /// `protocol`, `tls`.
    pub fn as_str(&self) -> &'static str {
        match self {
            UpstreamErrorKind::Unreachable => "unreachable",
            UpstreamErrorKind::AuthRejected => "auth_rejected",
            UpstreamErrorKind::TargetRefused => "target_refused",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Protocol => "protocol",
            UpstreamErrorKind::Tls => "tls",
        }
    }
}

/// A failure to reach a target through an upstream proxy. `Display` names the upstream
/// (without credentials) and the failure.
#[derive(Debug, thiserror::Error)]
#[error("upstream {upstream}: {detail}")]
pub struct UpstreamError {
    /// The upstream URL without credentials (`Upstream`'s `Display`).
    upstream: String,
    kind: UpstreamErrorKind,
    detail: String,
}

impl UpstreamError {
    fn new(up: &Upstream, kind: UpstreamErrorKind, detail: impl Into<String>) -> Self {
        UpstreamError {
            upstream: up.to_string(),
            kind,
            detail: detail.into(),
        }
    }

    /// Whether the failure is a timeout (the proxy answers `504` instead of `502`).
    pub fn is_timeout(&self) -> bool {
        self.kind == UpstreamErrorKind::Timeout
    }

    /// Stable code of the failure: `unreachable`, `auth_rejected`, `target_refused`,
    /// `timeout`, `protocol` or `tls`.
    pub fn kind(&self) -> &'static str {
        self.kind.as_str()
    }

    /// The failure as an enum.
    pub fn error_kind(&self) -> UpstreamErrorKind {
        self.kind
    }

    /// The upstream URL without credentials.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }
}

/// Error building an [`UpstreamDialer`] (bad CA file).
#[derive(Debug, thiserror::Error)]
pub enum DialerBuildError {
    /// The CA file could not be read or holds no valid PEM certificate.
    #[error("upstream CA file {}: {detail}", path.display())]
    CaFile {
        /// The configured CA file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// rustls refused the TLS configuration.
    #[error("upstream TLS configuration: {0}")]
    Tls(String),
}

/// Opens connections through upstream proxies. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct UpstreamDialer {
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
}

impl fmt::Debug for UpstreamDialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamDialer")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl UpstreamDialer {
    /// Builds the dialer: a rustls client configuration (ring provider) trusting the system
    /// roots plus the certificates in `settings.ca_file`, used for `https://` upstreams.
    pub fn new(settings: &UpstreamSettings) -> Result<Self, DialerBuildError> {
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable individual system certificates are skipped: a broken entry in the system
        // store must not stop the proxy (the CA file, if any, is checked strictly below).
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = &settings.ca_file {
            let ca_err = |detail: String| DialerBuildError::CaFile {
                path: path.clone(),
                detail,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_err("no PEM certificate found".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| DialerBuildError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(UpstreamDialer {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            connect_timeout: settings.connect_timeout,
        })
    }

    /// Tunnel to target through a non-Direct upstream. `resolved` = guard-checked address
    /// (Some for `socks5://` — the IP is sent; None for `socks5h://` and HTTP(S) upstreams —
    /// the name is sent). The returned stream carries the client's bytes to the target.
    pub async fn open_tunnel(
        &self,
        up: &Upstream,
        target: &Target,
        resolved: Option<SocketAddr>,
    ) -> Result<BoxedIo, UpstreamError> {
        self.with_timeout(up, self.tunnel(up, target, resolved))
            .await
    }

    /// Connection for forwarding a plain-HTTP request: through a SOCKS5 upstream a tunnel to
    /// the target + [`HttpHop::Origin`]; to an HTTP(S) upstream a connection to the proxy +
    /// [`HttpHop::Proxy`] (send absolute-form with the given `Proxy-Authorization`).
    pub async fn open_http(
        &self,
        up: &Upstream,
        target: &Target,
        resolved: Option<SocketAddr>,
    ) -> Result<(BoxedIo, HttpHop), UpstreamError> {
        match up {
            Upstream::Http {
                credentials, tls, ..
            } => {
                let io = self
                    .with_timeout(up, self.proxy_connection(up, *tls))
                    .await?;
                let authorization = credentials.as_ref().map(basic_authorization);
                Ok((io, HttpHop::Proxy { authorization }))
            }
            _ => {
                let io = self.open_tunnel(up, target, resolved).await?;
                Ok((io, HttpHop::Origin))
            }
        }
    }

    async fn with_timeout<T>(
        &self,
        up: &Upstream,
        fut: impl Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        match tokio::time::timeout(self.connect_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::new(
                up,
                UpstreamErrorKind::Timeout,
                format!(
                    "timed out after {} ms setting up the connection through the upstream",
                    self.connect_timeout.as_millis()
                ),
            )),
        }
    }

    async fn tunnel(
        &self,
        up: &Upstream,
        target: &Target,
        resolved: Option<SocketAddr>,
    ) -> Result<BoxedIo, UpstreamError> {
        match up {
            Upstream::Direct => Err(UpstreamError::new(
                up,
                UpstreamErrorKind::Protocol,
                "internal error: the direct route has no upstream to dial",
            )),
            Upstream::Socks5 {
                credentials,
                remote_dns,
                ..
            } => {
                let dest = socks_target(up, target, resolved, *remote_dns)?;
                let tcp = connect_tcp(up).await?;
                let res = match credentials {
                    Some(c) => {
                        Socks5Stream::connect_with_password_and_socket(
                            tcp,
                            dest,
                            &c.username,
                            &c.password,
                        )
                        .await
                    }
                    None => Socks5Stream::connect_with_socket(tcp, dest).await,
                };
                match res {
                    Ok(s) => Ok(Box::new(s)),
                    Err(e) => Err(map_socks_error(up, target, e)),
                }
            }
            Upstream::Http {
                credentials, tls, ..
            } => {
                let mut io = self.proxy_connection(up, *tls).await?;
                let leftover = http_connect(up, &mut io, target, credentials.as_ref()).await?;
                if leftover.is_empty() {
                    Ok(io)
                } else {
                    Ok(Box::new(Prefixed {
                        prefix: leftover,
                        pos: 0,
                        inner: io,
                    }))
                }
            }
        }
    }

    /// TCP (+ TLS for `https://`) connection to an HTTP upstream.
    async fn proxy_connection(&self, up: &Upstream, tls: bool) -> Result<BoxedIo, UpstreamError> {
        let tcp = connect_tcp(up).await?;
        if !tls {
            return Ok(Box::new(tcp));
        }
        let host = upstream_host(up);
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            UpstreamError::new(
                up,
                UpstreamErrorKind::Tls,
                format!("invalid TLS server name {host:?}: {e}"),
            )
        })?;
        match self.tls.connect(name, tcp).await {
            Ok(s) => Ok(Box::new(s)),
            Err(e) => Err(UpstreamError::new(
                up,
                UpstreamErrorKind::Tls,
                format!("TLS handshake failed: {}", tls_detail(&e)),
            )),
        }
    }
}

/// The `Proxy-Authorization` value for an HTTP(S) upstream's credentials:
/// `Basic base64(user:pass)` (RFC 7617). Secret: never log it.
pub fn proxy_authorization(c: &Credentials) -> String {
    basic_authorization(c)
}

/// Checks the status of a response that an HTTP(S) upstream returned for a forwarded
/// plain-HTTP request (an [`HttpHop::Proxy`] connection). A `407` is the upstream rejecting
/// *kennel's* credentials (the client never sent any), so it must not reach the client as a
/// `407`: the caller answers `502` with this error instead. Other statuses are the request's
/// own answer and pass.
pub fn check_proxy_response(up: &Upstream, status: u16) -> Result<(), UpstreamError> {
    if status != 407 {
        return Ok(());
    }
    let what = if up.credentials().is_some() {
        "authentication rejected"
    } else {
        "authentication required (no credentials configured)"
    };
    Err(UpstreamError::new(
        up,
        UpstreamErrorKind::AuthRejected,
        format!("{what} (407 Proxy Authentication Required)"),
    ))
}

/// The upstream's host (IPv6 without brackets).
fn upstream_host(up: &Upstream) -> &str {
    match up {
        Upstream::Direct => "",
        Upstream::Socks5 { host, .. } | Upstream::Http { host, .. } => host,
    }
}

fn upstream_port(up: &Upstream) -> u16 {
    match up {
        Upstream::Direct => 0,
        Upstream::Socks5 { port, .. } | Upstream::Http { port, .. } => *port,
    }
}

/// `Basic base64(user:pass)`.
fn basic_authorization(c: &Credentials) -> String {
    let raw = format!("{}:{}", c.username, c.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// TCP connection to the upstream itself (its name resolved by the system resolver: the
/// upstream is chosen by the operator, not by the sandbox).
async fn connect_tcp(up: &Upstream) -> Result<TcpStream, UpstreamError> {
    let host = upstream_host(up);
    let port = upstream_port(up);
    let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host, port)).await {
        Ok(a) => a.collect(),
        Err(e) => {
            return Err(UpstreamError::new(
                up,
                UpstreamErrorKind::Unreachable,
                format!("cannot resolve the upstream's name {host:?}: {e}"),
            ));
        }
    };
    let mut last: Option<io::Error> = None;
    for addr in &addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                // Latency matters more than packet count for interactive tunnels.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    let detail = match last {
        Some(e) => format!("cannot connect to the upstream proxy: {e}"),
        None => format!("the upstream's name {host:?} has no address"),
    };
    Err(UpstreamError::new(
        up,
        UpstreamErrorKind::Unreachable,
        detail,
    ))
}

/// What to put in the SOCKS5 request: the checked IP for `socks5://`, the name for
/// `socks5h://` (an IP-literal target is always sent as the IP).
fn socks_target(
    up: &Upstream,
    target: &Target,
    resolved: Option<SocketAddr>,
    remote_dns: bool,
) -> Result<TargetAddr<'static>, UpstreamError> {
    match (&target.host, remote_dns) {
        (Host::Ip(ip), _) => Ok(TargetAddr::Ip(SocketAddr::new(*ip, target.port))),
        (Host::Name(name), true) => Ok(TargetAddr::Domain(Cow::Owned(name.clone()), target.port)),
        (Host::Name(_), false) => match resolved {
            Some(addr) => Ok(TargetAddr::Ip(addr)),
            None => Err(UpstreamError::new(
                up,
                UpstreamErrorKind::Protocol,
                format!(
                    "internal error: no checked address for {target} (socks5:// sends an IP; \
                     use socks5h:// to let the upstream resolve names)"
                ),
            )),
        },
    }
}

fn map_socks_error(up: &Upstream, target: &Target, e: tokio_socks::Error) -> UpstreamError {
    use UpstreamErrorKind as K;
    use tokio_socks::Error as E;
    let (kind, detail) = match e {
        E::PasswordAuthFailure(code) => (
            K::AuthRejected,
            format!("authentication rejected (SOCKS5 username/password status {code})"),
        ),
        E::NoAcceptableAuthMethods | E::AuthorizationRequired => (
            K::AuthRejected,
            "authentication rejected: the upstream accepts none of the offered methods \
             (credentials missing or not supported)"
                .to_string(),
        ),
        E::InvalidAuthValues(why) => (
            K::AuthRejected,
            format!("credentials cannot be sent over SOCKS5: {why}"),
        ),
        E::ConnectionRefused => (
            K::TargetRefused,
            format!("the upstream could not connect to {target}: connection refused"),
        ),
        E::HostUnreachable => (
            K::TargetRefused,
            format!("the upstream could not connect to {target}: host unreachable"),
        ),
        E::NetworkUnreachable => (
            K::TargetRefused,
            format!("the upstream could not connect to {target}: network unreachable"),
        ),
        E::ConnectionNotAllowedByRuleset => (
            K::TargetRefused,
            format!("the upstream refused {target}: connection not allowed by its ruleset"),
        ),
        E::TtlExpired => (
            K::TargetRefused,
            format!("the upstream could not connect to {target}: TTL expired"),
        ),
        E::GeneralSocksServerFailure => (
            K::TargetRefused,
            format!(
                "the upstream could not connect to {target}: general SOCKS server failure \
                 (for socks5h, often a name the upstream cannot resolve)"
            ),
        ),
        E::AddressTypeNotSupported => (
            K::TargetRefused,
            format!("the upstream does not support the address type of {target}"),
        ),
        E::CommandNotSupported => (
            K::Protocol,
            "the upstream does not support SOCKS5 CONNECT".to_string(),
        ),
        E::Io(io) if is_early_close(&io) => (
            K::TargetRefused,
            format!(
                "the upstream closed the connection without a SOCKS5 reply: it could not \
                 connect to {target} or refused the request (ssh -D does this when the far \
                 end cannot connect)"
            ),
        ),
        E::Io(io) => (K::Protocol, format!("SOCKS5 handshake failed: {io}")),
        other => (K::Protocol, format!("invalid SOCKS5 reply: {other}")),
    };
    UpstreamError::new(up, kind, detail)
}

fn is_early_close(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Sends `CONNECT target` on `io` and reads the response head (bounded). Returns the bytes
/// the upstream sent after the head (already part of the tunnel).
async fn http_connect(
    up: &Upstream,
    io: &mut BoxedIo,
    target: &Target,
    credentials: Option<&Credentials>,
) -> Result<Vec<u8>, UpstreamError> {
    let authority = target.to_string();
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(c) = credentials {
        req.push_str("Proxy-Authorization: ");
        req.push_str(&basic_authorization(c));
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let io_err = |e: io::Error| {
        UpstreamError::new(
            up,
            UpstreamErrorKind::Protocol,
            format!("CONNECT exchange failed: {e}"),
        )
    };
    io.write_all(req.as_bytes()).await.map_err(io_err)?;
    io.flush().await.map_err(io_err)?;

    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = io.read(&mut chunk).await.map_err(io_err)?;
        if n == 0 {
            return Err(UpstreamError::new(
                up,
                UpstreamErrorKind::Protocol,
                format!("the upstream closed the connection before answering CONNECT {authority}"),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_CONNECT_RESPONSE_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let code = resp.code.unwrap_or(0);
                let reason = resp.reason.unwrap_or("").to_string();
                if (200..300).contains(&code) {
                    return Ok(buf.split_off(head_len));
                }
                let status = format!("{code} {reason}").trim_end().to_string();
                let (kind, detail) = if code == 407 {
                    let what = if credentials.is_some() {
                        "authentication rejected"
                    } else {
                        "authentication required (no credentials configured)"
                    };
                    (
                        UpstreamErrorKind::AuthRejected,
                        format!("{what} ({status})"),
                    )
                } else {
                    (
                        UpstreamErrorKind::TargetRefused,
                        format!("the upstream refused CONNECT {authority}: {status}"),
                    )
                };
                return Err(UpstreamError::new(up, kind, detail));
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_CONNECT_RESPONSE_HEAD {
                    return Err(UpstreamError::new(
                        up,
                        UpstreamErrorKind::Protocol,
                        format!(
                            "CONNECT response head larger than {MAX_CONNECT_RESPONSE_HEAD} bytes"
                        ),
                    ));
                }
            }
            Err(e) => {
                return Err(UpstreamError::new(
                    up,
                    UpstreamErrorKind::Protocol,
                    format!("invalid CONNECT response: {e}"),
                ));
            }
        }
    }
}

/// The most useful part of a TLS handshake error (rustls wraps its error in `io::Error`).
fn tls_detail(e: &io::Error) -> String {
    match e.get_ref() {
        Some(inner) => inner.to_string(),
        None => e.to_string(),
    }
}

/// A stream that first yields bytes already read from it.
struct Prefixed {
    prefix: Vec<u8>,
    pos: usize,
    inner: BoxedIo,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let rest = &this.prefix[this.pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socks(remote_dns: bool) -> Upstream {
        Upstream::Socks5 {
            host: "127.0.0.1".into(),
            port: 1080,
            credentials: Some(Credentials {
                username: "alice".into(),
                password: "s3cret-pw".into(),
            }),
            remote_dns,
        }
    }

    #[test]
    fn error_display_names_upstream_without_credentials() {
        let up = socks(true);
        let e = map_socks_error(
            &up,
            &Target::parse_authority("example.com:443").expect("valid authority"),
            tokio_socks::Error::PasswordAuthFailure(1),
        );
        let shown = e.to_string();
        assert!(
            shown.starts_with("upstream socks5h://127.0.0.1:1080: authentication rejected"),
            "{shown}"
        );
        assert!(
            !shown.contains("s3cret-pw") && !shown.contains("alice"),
            "{shown}"
        );
        assert!(!format!("{e:?}").contains("s3cret-pw"));
        assert_eq!(e.kind(), "auth_rejected");
        assert!(!e.is_timeout());
    }

    #[test]
    fn basic_authorization_is_rfc7617() {
        let c = Credentials {
            username: "Aladdin".into(),
            password: "open sesame".into(),
        };
        assert_eq!(
            basic_authorization(&c),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        let hop = HttpHop::Proxy {
            authorization: Some(basic_authorization(&c)),
        };
        assert!(!format!("{hop:?}").contains("QWxh"));
    }

    #[test]
    fn socks5_sends_checked_ip_and_socks5h_sends_name() {
        let up = socks(false);
        let t = Target::parse_authority("origin.test:8080").expect("valid authority");
        let checked: SocketAddr = "127.0.0.9:8080".parse().expect("valid addr");
        match socks_target(&up, &t, Some(checked), false) {
            Ok(TargetAddr::Ip(a)) => assert_eq!(a, checked),
            other => panic!("socks5 must send the checked IP, got {other:?}"),
        }
        match socks_target(&up, &t, None, true) {
            Ok(TargetAddr::Domain(n, p)) => assert_eq!((n.as_ref(), p), ("origin.test", 8080)),
            other => panic!("socks5h must send the name, got {other:?}"),
        }
        assert!(socks_target(&up, &t, None, false).is_err());
    }

    #[test]
    fn proxy_407_becomes_auth_rejected() {
        let up = Upstream::Http {
            host: "proxy.corp".into(),
            port: 3128,
            credentials: Some(Credentials {
                username: "u".into(),
                password: "hunter2".into(),
            }),
            tls: false,
        };
        assert!(check_proxy_response(&up, 200).is_ok());
        assert!(check_proxy_response(&up, 503).is_ok());
        let e = check_proxy_response(&up, 407).expect_err("407 must be an upstream error");
        assert_eq!(e.kind(), "auth_rejected");
        assert_eq!(
            e.to_string(),
            "upstream http://proxy.corp:3128: authentication rejected (407 Proxy Authentication Required)"
        );
    }

    #[test]
    fn missing_ca_file_is_a_clear_error() {
        let e = UpstreamDialer::new(&UpstreamSettings {
            connect_timeout: Duration::from_secs(1),
            ca_file: Some(PathBuf::from("/nonexistent/kennel-ca.pem")),
        })
        .expect_err("missing CA file must fail");
        assert!(e.to_string().contains("/nonexistent/kennel-ca.pem"), "{e}");
    }

    /// Issue 15 item 5: at start-up the dialer's error is kept as the source (it was a string).
    #[test]
    fn start_error_keeps_the_dialer_error() {
        let mut config = crate::ProxyConfig::default();
        config.upstream.ca_file = Some(PathBuf::from("/nonexistent/kennel-ca.pem"));
        let Err(e) = crate::Shared::build(config) else {
            panic!("a missing CA file must stop the start");
        };
        assert!(matches!(e, crate::StartError::Upstream(_)), "{e:?}");
        let source = std::error::Error::source(&e).expect("source kept");
        assert!(
            source.downcast_ref::<DialerBuildError>().is_some(),
            "{source:?}"
        );
        assert!(e.to_string().contains("/nonexistent/kennel-ca.pem"), "{e}");
    }
}
