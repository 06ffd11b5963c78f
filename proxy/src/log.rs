//! The access log: one line per request or tunnel, with constant field names (smokescreen's
//! canonical decision line).
//!
//! Handlers fill an [`Access`] with the facts as they learn them (target, admission, checked
//! address, bytes) and end with one [`Outcome`]; [`finish`] derives decision, reason, rule,
//! status and error from those once, counts the decision, and renders the line only when the
//! access log is on.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use kennel_policy::{Decision, RuleRef, Target, Upstream};
use serde::Serialize;

use crate::Shared;
use crate::config::{AccessLogSettings, LogDestination, LogFormat};
use crate::respond::Failure;
use crate::sni::Refusal;

/// What a record is about (the `kind` label of `kennel_proxy_decisions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A CONNECT tunnel.
    Connect,
    /// A forwarded HTTP request (or a request head that could not be read).
    Http,
}

impl Kind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Http => "http",
        }
    }
}

/// The access-log `decision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Admitted.
    Allow,
    /// Refused by the policy, the address guard, the SNI check or a revocation.
    Deny,
    /// Admitted in report mode although the policy would deny it.
    WouldDeny,
    /// Could not proceed for another reason (client, DNS, connect, upstream, origin).
    Error,
}

impl Verdict {
    /// The field value.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::WouldDeny => "would_deny",
            Verdict::Error => "error",
        }
    }
}

/// The access-log `reason`: a stable snake_case code (docs/proxy.md lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No decision was reached and nothing failed (never seen in practice; renders as "").
    None,
    /// The policy's own reason (`allowed_by_rule`, `not_in_allowlist`, …).
    Policy(kennel_policy::Reason),
    /// The address guard refused a checked address.
    AddressNotAllowed,
    /// DNS failed.
    DnsFailure,
    /// TCP connect failed.
    ConnectFailed,
    /// TCP connect timed out.
    ConnectTimeout,
    /// The upstream proxy failed; the payload is `UpstreamError::kind()`.
    Upstream(&'static str),
    /// The origin broke the HTTP exchange.
    OriginError,
    /// The ClientHello's SNI is not the CONNECT host.
    SniMismatch,
    /// The ClientHello has no SNI.
    SniMissing,
    /// The ClientHello could not be parsed.
    SniUnreadable,
    /// The ClientHello hides the server name (ECH) and `allow_ech = false`.
    SniEch,
    /// The tunnel does not start with a ClientHello on a port that needs one.
    NotTls,
    /// A reload revoked the destination of a live connection.
    Revoked,
    /// Malformed or ambiguous request.
    BadRequest,
    /// Host header and request target disagree.
    HostMismatch,
    /// An origin-form request reached the proxy port.
    NotAProxyRequest,
    /// The request head is too large.
    HeadTooLarge,
    /// The client failed (timed out or broke the connection) before the tunnel was relayed.
    ClientError,
    /// kennel itself failed.
    Internal,
}

impl Reason {
    /// The code; `upstream_<kind>` is the one that is not a constant.
    pub fn as_str(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Reason::None => "",
            Reason::Policy(r) => r.as_str(),
            Reason::AddressNotAllowed => "address_not_allowed",
            Reason::DnsFailure => "dns_failure",
            Reason::ConnectFailed => "connect_failed",
            Reason::ConnectTimeout => "connect_timeout",
            Reason::Upstream(kind) => return Cow::Owned(format!("upstream_{kind}")),
            Reason::OriginError => "origin_error",
            Reason::SniMismatch => "sni_mismatch",
            Reason::SniMissing => "sni_missing",
            Reason::SniUnreadable => "sni_unreadable",
            Reason::SniEch => "sni_ech",
            Reason::NotTls => "not_tls",
            Reason::Revoked => "revoked",
            Reason::BadRequest => "bad_request",
            Reason::HostMismatch => "host_mismatch",
            Reason::NotAProxyRequest => "not_a_proxy_request",
            Reason::HeadTooLarge => "head_too_large",
            Reason::ClientError => "client_error",
            Reason::Internal => "internal_error",
        })
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// How an admitted request or tunnel ended.
#[derive(Debug)]
pub enum Ended {
    /// Normally (either side closed, or the response was written).
    Done,
    /// Closed after the idle timeout.
    Idle,
    /// A policy reload revoked the destination.
    Revoked,
    /// Closed by shutdown after the drain deadline.
    Shutdown,
    /// The destination closed before the client sent anything (ClientHello wait).
    OriginClosedFirst,
    /// The client failed before the tunnel was relayed (ClientHello wait: timeout, I/O error).
    ClientError(String),
    /// An I/O error, or a request body that stopped early; the decision stands.
    Error(String),
    /// The origin broke its response after the head reached the client (the body was cut
    /// short); the decision stands, the reason is `origin_error`.
    OriginError(String),
}

impl From<crate::relay::End> for Ended {
    fn from(e: crate::relay::End) -> Ended {
        use crate::relay::End;
        match e {
            End::Done => Ended::Done,
            End::Idle => Ended::Idle,
            End::Revoked => Ended::Revoked,
            End::Shutdown => Ended::Shutdown,
            End::Error(e) => Ended::Error(e),
        }
    }
}

/// The one result of a request or tunnel that [`finish`] renders.
#[derive(Debug)]
pub enum Outcome {
    /// It could not proceed; the failure's response was sent.
    Failed(Failure),
    /// The tunnel's first flight failed the SNI / ECH / not-TLS check.
    Refused(Refusal),
    /// Admitted, and ended this way.
    Ended(Ended),
}

impl From<Failure> for Outcome {
    fn from(f: Failure) -> Outcome {
        Outcome::Failed(f)
    }
}

/// The facts of one request or tunnel, filled in as the handler learns them.
#[derive(Debug)]
pub struct Access<'a> {
    /// Connect or http.
    pub kind: Kind,
    /// When it began.
    pub start: tokio::time::Instant,
    /// Client socket address.
    pub client: SocketAddr,
    /// The request method as sent ("" when no head could be read).
    pub method: &'a str,
    /// The request target as sent, kept only while it is not parsed into [`Access::target`].
    pub unparsed: Option<&'a str>,
    /// The parsed target.
    pub target: Option<Target>,
    /// The admission decision, once admitted.
    pub admitted: Option<Decision>,
    /// The route's upstream (`None`: no route yet; rendered "direct" once a request head was read).
    pub upstream: Option<Upstream>,
    /// The checked address connected to (or given to a `socks5://` upstream).
    pub resolved: Option<SocketAddr>,
    /// The status sent to the client, when it is not a failure's.
    pub status: u16,
    /// Bytes client → destination.
    pub bytes_up: u64,
    /// Bytes destination → client.
    pub bytes_down: u64,
    /// SNI of a ClientHello that passed the check.
    pub sni: Option<String>,
}

impl<'a> Access<'a> {
    /// A record for a request head that was read: `method` as sent, nothing decided yet.
    pub fn new(kind: Kind, client: SocketAddr, method: &'a str) -> Access<'a> {
        Access {
            kind,
            start: tokio::time::Instant::now(),
            client,
            method,
            unparsed: None,
            target: None,
            admitted: None,
            upstream: Some(Upstream::Direct),
            resolved: None,
            status: 0,
            bytes_up: 0,
            bytes_down: 0,
            sni: None,
        }
    }

    /// The admission step allowed it: its decision, and the route's upstream and first address.
    pub fn admitted(&mut self, decision: Decision, route: &crate::dial::Route) {
        self.admitted = Some(decision);
        self.upstream = Some(route.upstream.clone());
        self.resolved = route.addrs.first().copied();
    }

    /// The matched rule of the admission, if any.
    pub fn rule(&self) -> Option<&RuleRef> {
        self.admitted.as_ref().and_then(|d| d.rule.as_ref())
    }

    fn admitted_verdict(&self) -> Verdict {
        match &self.admitted {
            Some(d) if d.would_deny => Verdict::WouldDeny,
            Some(_) => Verdict::Allow,
            None => Verdict::Error,
        }
    }

    fn admitted_reason(&self) -> Reason {
        self.admitted
            .as_ref()
            .map_or(Reason::None, |d| Reason::Policy(d.reason))
    }
}

/// End a request or tunnel: derive its decision, reason, rule, status and error from `outcome`,
/// count the decision (and a revocation), and write the access-log line if the log is on.
pub fn finish(shared: &Shared, rec: Access<'_>, outcome: Outcome) {
    let (verdict, reason, status) = match &outcome {
        Outcome::Failed(f) => (f.decision(), f.reason(), f.status()),
        Outcome::Refused(r) => (Verdict::Deny, r.reason(), rec.status),
        Outcome::Ended(Ended::Revoked) => (Verdict::Deny, Reason::Revoked, rec.status),
        Outcome::Ended(Ended::ClientError(_)) => {
            (rec.admitted_verdict(), Reason::ClientError, rec.status)
        }
        Outcome::Ended(Ended::OriginError(_)) => {
            (rec.admitted_verdict(), Reason::OriginError, rec.status)
        }
        Outcome::Ended(_) => (rec.admitted_verdict(), rec.admitted_reason(), rec.status),
    };
    if matches!(outcome, Outcome::Ended(Ended::Revoked)) {
        shared.metrics.revoked_total.fetch_add(1, Ordering::Relaxed);
    }
    shared.metrics.decision(rec.kind, verdict, reason);
    if !shared.log.is_on() {
        return;
    }
    let error: Option<String> = match &outcome {
        Outcome::Failed(f) => Some(f.to_string()),
        Outcome::Refused(r) => Some(r.to_string()),
        Outcome::Ended(e) => match e {
            Ended::Done => None,
            Ended::Idle => Some("closed after the idle timeout".into()),
            Ended::Revoked => {
                Some("closed: a policy reload no longer allows this destination".into())
            }
            Ended::Shutdown => Some("closed by shutdown after the drain deadline".into()),
            Ended::OriginClosedFirst => {
                Some("the destination closed before the client sent anything".into())
            }
            Ended::ClientError(e) | Ended::Error(e) | Ended::OriginError(e) => Some(e.clone()),
        },
    };
    let rule = match &outcome {
        Outcome::Failed(f) => f.rule().or(rec.rule()),
        _ => rec.rule(),
    };
    let sni = match &outcome {
        Outcome::Refused(r) => r.sni().map(str::to_string),
        _ => rec.sni.clone(),
    };
    let (host, port) = match (&rec.target, rec.unparsed) {
        (Some(t), _) => (t.host.to_string(), t.port),
        (None, Some(raw)) => (raw.to_string(), 0),
        (None, None) => (String::new(), 0),
    };
    shared.log.write(AccessRecord {
        time: String::new(),
        client: rec.client.to_string(),
        method: rec.method.to_string(),
        host,
        port,
        resolved: rec.resolved.map(|a| a.to_string()),
        decision: verdict.as_str(),
        reason: reason.to_string(),
        rule: rule.map(ToString::to_string),
        status,
        bytes_up: rec.bytes_up,
        bytes_down: rec.bytes_down,
        duration_ms: rec.start.elapsed().as_millis() as u64,
        upstream: rec
            .upstream
            .as_ref()
            .map_or_else(String::new, ToString::to_string),
        sni,
        error,
    });
}

/// One access-log line as rendered. Field names and order are part of kennel's interface
/// (docs/proxy.md); only [`finish`] builds one.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AccessRecord {
    /// RFC 3339 UTC time the request/tunnel ended.
    pub time: String,
    /// Client socket address.
    pub client: String,
    /// "CONNECT", "GET", …
    pub method: String,
    /// Target host as normalised by the policy (or as sent, when unparsable).
    pub host: String,
    /// Target port.
    pub port: u16,
    /// The checked address the proxy connected to (or asked a `socks5://` upstream for).
    pub resolved: Option<String>,
    /// "allow", "deny", "would_deny" (report mode) or "error".
    pub decision: &'static str,
    /// Stable snake_case reason code.
    pub reason: String,
    /// The matched policy rule, "file:line".
    pub rule: Option<String>,
    /// HTTP status sent to the client (200 for an established tunnel; 0 if none was sent).
    pub status: u16,
    /// Bytes from the client to the destination (bodies/tunnel payload).
    pub bytes_up: u64,
    /// Bytes from the destination to the client.
    pub bytes_down: u64,
    /// Duration in milliseconds.
    pub duration_ms: u64,
    /// Upstream used: "direct" or the upstream URL without credentials.
    pub upstream: String,
    /// SNI seen in the tunnel's ClientHello, if any.
    pub sni: Option<String>,
    /// Human-readable detail of an error or denial.
    pub error: Option<String>,
}

/// The access-log writer.
pub struct AccessLog {
    format: LogFormat,
    out: Option<Mutex<Box<dyn Write + Send>>>,
}

/// The access-log file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open access log {path}: {source}")]
pub struct LogOpenError {
    /// The file.
    pub path: std::path::PathBuf,
    /// The I/O error.
    pub source: std::io::Error,
}

impl AccessLog {
    /// Open the configured destination.
    pub fn open(settings: &AccessLogSettings) -> Result<AccessLog, LogOpenError> {
        let out: Option<Box<dyn Write + Send>> = match &settings.destination {
            LogDestination::Stdout => Some(Box::new(std::io::stdout())),
            LogDestination::Stderr => Some(Box::new(std::io::stderr())),
            LogDestination::Off => None,
            LogDestination::File { file } => {
                let f = open_append(file).map_err(|source| LogOpenError {
                    path: file.clone(),
                    source,
                })?;
                match settings.rotate_bytes {
                    None => Some(Box::new(f)),
                    Some(cap) => Some(Box::new(RotatingFile::new(file.clone(), f, cap))),
                }
            }
        };
        Ok(AccessLog {
            format: settings.format,
            out: out.map(Mutex::new),
        })
    }

    /// Whether records are written at all (off: [`finish`] renders nothing).
    pub fn is_on(&self) -> bool {
        self.out.is_some()
    }

    /// Write one record (time is filled in here).
    pub fn write(&self, mut rec: AccessRecord) {
        let Some(out) = &self.out else { return };
        rec.time = rfc3339(SystemTime::now());
        let line = match self.format {
            LogFormat::Json => serde_json::to_string(&rec).unwrap_or_default(),
            LogFormat::Text => text_line(&rec),
        };
        let mut w = out.lock().unwrap_or_else(|p| p.into_inner());
        // One write call per line so concurrent writers never interleave within a line.
        let _ = w.write_all(format!("{line}\n").as_bytes());
        let _ = w.flush();
    }
}

fn open_append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// A size-capped log file: before a write would take it past `cap` bytes, the file is renamed
/// to `<file>.1` (replacing the older generation) and a new one is started. Readers (the daemon's
/// `kennel denials`) read `<file>.1` then `<file>`, so at most one generation is lost at a time
/// and the disk use stays below about `2 × cap`.
struct RotatingFile {
    path: std::path::PathBuf,
    file: std::fs::File,
    size: u64,
    cap: u64,
}

impl RotatingFile {
    fn new(path: std::path::PathBuf, file: std::fs::File, cap: u64) -> RotatingFile {
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        RotatingFile {
            path,
            file,
            size,
            cap,
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.size > 0
            && self.size.saturating_add(buf.len() as u64) > self.cap
            && let Err(e) = self.rotate()
        {
            // Keep logging into the current file rather than losing lines; say why once per
            // failed attempt (the next write tries again).
            tracing::warn!(file = %self.path.display(), error = %e, "cannot rotate the access log");
        }
        let n = self.file.write(buf)?;
        self.size = self.size.saturating_add(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn text_line(r: &AccessRecord) -> String {
    let v = serde_json::to_value(r).unwrap_or_default();
    let mut s = String::new();
    if let serde_json::Value::Object(m) = v {
        for (k, v) in m {
            if v.is_null() {
                continue;
            }
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(&format!("{k}={v}"));
        }
    }
    s
}

/// Format a time as RFC 3339 UTC with milliseconds (the one helper every component uses).
pub use kennel_policy::time::rfc3339_millis as rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    /// A capped file log rotates to `<file>.1` before passing the cap: the disk use stays below
    /// about twice the cap, and whole lines survive in one of the two files.
    #[test]
    fn file_log_rotates_at_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("access.log");
        let log = AccessLog::open(&AccessLogSettings {
            destination: LogDestination::File { file: file.clone() },
            format: LogFormat::Json,
            rotate_bytes: Some(2000),
        })
        .expect("open");
        for i in 0..100 {
            log.write(AccessRecord {
                host: format!("h{i}.example"),
                decision: "deny",
                ..Default::default()
            });
        }
        let cur = std::fs::read_to_string(&file).expect("current");
        let old = std::fs::read_to_string(dir.path().join("access.log.1")).expect("rotated");
        assert!(
            cur.len() <= 2000 && old.len() <= 2000,
            "{} {}",
            cur.len(),
            old.len()
        );
        assert!(cur.ends_with("\n") && old.ends_with("\n"));
        assert!(
            cur.contains("\"h99.example\""),
            "the newest line is in the current file"
        );
        for l in cur.lines().chain(old.lines()) {
            serde_json::from_str::<serde_json::Value>(l).expect("whole JSON lines");
        }
    }
}
