//! Every way a request can fail, which side failed, and the one function that maps a failure to
//! the status, body and `X-Kennel-Deny-Reason` the client sees (linkerd's HttpRescue,
//! smokescreen's rejectResponse).

use std::path::Path;
use std::time::Duration;

use kennel_policy::{Decision, Hint, Reason, RuleRef, Target};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::Shared;

use crate::log::{Reason as LogReason, Verdict};
use crate::resolve::{GuardDenied, ResolveError};

/// Which side a failure belongs to (pingora's ErrorSource).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something wrong.
    Client,
    /// The policy or the address guard refused.
    Policy,
    /// The destination or upstream proxy failed.
    Upstream,
    /// kennel itself failed (a bug or a local resource problem), neither party's doing.
    Internal,
}

/// A request/tunnel that cannot proceed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Malformed or ambiguous request (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// An origin-form request reached the proxy port (400).
    #[error("origin-form request to a forward proxy")]
    NotProxyRequest,
    /// Host header and request-target authority disagree (400).
    #[error("Host header {host:?} does not match the request target {target}")]
    HostMismatch {
        /// The Host header.
        host: String,
        /// The target.
        target: String,
    },
    /// The request head is too large (431).
    #[error("request head too large")]
    HeadTooLarge,
    /// The policy denied the destination (403).
    #[error("denied by policy: {}", .decision.reason.describe())]
    Denied {
        /// The decision.
        decision: Decision,
        /// The policy edits that would allow it (shown in the body).
        hint: Hint,
    },
    /// The address guard refused an address of an allowed destination: it is in a `[deny]
    /// cidrs` entry, or private/loopback/… and no `cidrs` entry allows it (403: a denial, not a
    /// gateway error, so clients do not retry it).
    #[error("{0}")]
    Guard(GuardDenied),
    /// DNS failure (502).
    #[error("{0}")]
    Dns(ResolveError),
    /// TCP connect failed (502).
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// Address tried last.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// TCP connect timed out (504).
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    /// The upstream proxy failed (502, or 504 on timeout).
    #[error("upstream: {detail}")]
    Upstream {
        /// `UpstreamError::kind()`.
        kind: &'static str,
        /// Display of the error (never credentials).
        detail: String,
        /// It was a timeout.
        timeout: bool,
    },
    /// The origin broke the HTTP exchange (502).
    #[error("origin: {0}")]
    Origin(String),
    /// A request inside a CONNECT tunnel names another destination (its `Host` header or its
    /// absolute-form target) than the tunnel's CONNECT host and port (403: a refusal, never
    /// forwarded; shared front ends route by `Host`).
    #[error("{what} {named:?} names another destination than the tunnel's CONNECT target {target}")]
    TunnelHostMismatch {
        /// What named it: "Host header" or "request target".
        what: &'static str,
        /// The name as sent.
        named: String,
        /// The CONNECT target.
        target: String,
    },
    /// The client went away while kennel was answering it (nothing can be sent; counted as
    /// the client's failure, not the origin's).
    #[error("client went away: {0}")]
    ClientGone(#[source] std::io::Error),
    /// kennel itself failed (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Failure {
    /// Which side failed.
    pub fn side(&self) -> Side {
        match self {
            Failure::BadRequest(_)
            | Failure::NotProxyRequest
            | Failure::HostMismatch { .. }
            | Failure::HeadTooLarge
            | Failure::ClientGone(_) => Side::Client,
            Failure::Denied { .. } | Failure::Guard(_) | Failure::TunnelHostMismatch { .. } => {
                Side::Policy
            }
            Failure::Internal(_) => Side::Internal,
            Failure::Dns(_)
            | Failure::Connect { .. }
            | Failure::ConnectTimeout(_)
            | Failure::Upstream { .. }
            | Failure::Origin(_) => Side::Upstream,
        }
    }

    /// Stable snake_case reason code (access log, metrics, `X-Kennel-Deny-Reason`).
    pub fn reason(&self) -> LogReason {
        match self {
            Failure::BadRequest(_) => LogReason::BadRequest,
            Failure::NotProxyRequest => LogReason::NotAProxyRequest,
            Failure::HostMismatch { .. } => LogReason::HostMismatch,
            Failure::HeadTooLarge => LogReason::HeadTooLarge,
            Failure::Denied { decision, .. } => LogReason::Policy(decision.reason),
            Failure::Guard(_) => LogReason::AddressNotAllowed,
            Failure::Dns(_) => LogReason::DnsFailure,
            Failure::Connect { .. } => LogReason::ConnectFailed,
            Failure::ConnectTimeout(_) => LogReason::ConnectTimeout,
            Failure::Upstream { kind, .. } => LogReason::Upstream(kind),
            Failure::Origin(_) => LogReason::OriginError,
            Failure::TunnelHostMismatch { .. } => LogReason::HostMismatch,
            Failure::ClientGone(_) => LogReason::ClientError,
            Failure::Internal(_) => LogReason::Internal,
        }
    }

    /// The policy entry behind a refusal: the matched rule of a denial, or the `[deny] cidrs`
    /// entry the guard applied (access-log `rule`).
    pub fn rule(&self) -> Option<&RuleRef> {
        match self {
            Failure::Denied { decision, .. } => decision.rule.as_ref(),
            Failure::Guard(g) => g.denied_by.as_ref(),
            _ => None,
        }
    }

    /// "deny" for policy/guard refusals, "error" otherwise (access-log `decision`).
    pub fn decision(&self) -> Verdict {
        if self.side() == Side::Policy {
            Verdict::Deny
        } else {
            Verdict::Error
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Failure::BadRequest(_) | Failure::NotProxyRequest | Failure::HostMismatch { .. } => 400,
            Failure::HeadTooLarge => 431,
            Failure::Denied { .. } | Failure::Guard(_) | Failure::TunnelHostMismatch { .. } => 403,
            Failure::Internal(_) => 500,
            Failure::ConnectTimeout(_) => 504,
            Failure::Upstream { timeout: true, .. } => 504,
            _ => 502,
        }
    }

    /// Render the full response (head + body) for `target` (None when unparsable).
    pub fn response(&self, target: Option<&Target>, policy_file: Option<&Path>) -> Vec<u8> {
        self.response_for(target, policy_file, None)
    }

    /// [`Failure::response`], with [`Failure::body_for`]'s `kennel allow` suggestion when the
    /// proxy serves a kennel environment.
    pub fn response_for(
        &self,
        target: Option<&Target>,
        policy_file: Option<&Path>,
        kennel_env: Option<&str>,
    ) -> Vec<u8> {
        let body = self.body_for(target, policy_file, kennel_env);
        let status = self.status();
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
            reason_phrase(status),
            body.len()
        );
        if self.side() == Side::Policy {
            head.push_str(&format!("X-Kennel-Deny-Reason: {}\r\n", self.reason()));
        } else {
            head.push_str(&format!("X-Kennel-Error: {}\r\n", self.reason()));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }

    /// [`Failure::body`]; for a denial of a known destination in a kennel environment
    /// (`kennel_env`), also the command a person on the host runs to allow it — the agent in the
    /// sandbox cannot change the policy, so it should ask for exactly that.
    pub fn body_for(
        &self,
        target: Option<&Target>,
        policy_file: Option<&Path>,
        kennel_env: Option<&str>,
    ) -> String {
        let body = self.body(target, policy_file);
        let entry = match (self, target) {
            (Failure::Denied { .. }, Some(t)) => t.to_string(),
            (Failure::Guard(g), Some(_)) => g.ip.to_string(),
            _ => return body,
        };
        match kennel_env {
            Some(env) => format!(
                "{} Ask a person on the host to run: kennel allow {env} {entry}\n",
                body.trim_end()
            ),
            None => body,
        }
    }

    /// The text body: what happened and, for denials, how to allow it.
    pub fn body(&self, target: Option<&Target>, policy_file: Option<&Path>) -> String {
        let dest = target.map_or_else(|| "the destination".to_string(), |t| t.to_string());
        let file = policy_file.map_or_else(
            || "a policy file (kennel-proxy is running on its embedded default policy; pass --config with [policy] file = …)".to_string(),
            |p| p.display().to_string(),
        );
        let how = |hint: &Hint| {
            if hint.is_empty() {
                String::new()
            } else {
                format!(" To allow it, {}.", hint.render(&file))
            }
        };
        match self {
            Failure::Denied { decision, hint } => {
                let what = decision.reason.describe();
                let why = match decision.reason {
                    Reason::DeniedByRule => match &decision.rule {
                        Some(r) => format!(" It matches the deny entry \"{}\" at {r}.", r.pattern),
                        None => String::new(),
                    },
                    Reason::IpLiteralNotAllowed => {
                        " IP-literal destinations are allowed only by a cidrs entry.".to_string()
                    }
                    _ => String::new(),
                };
                format!("kennel: egress to {dest} denied ({what}).{why}{}\n", how(hint))
            }
            Failure::Guard(g) => {
                let why = match &g.denied_by {
                    Some(rule) => format!(
                        "which the [deny] cidrs entry {} ({rule}) refuses",
                        rule.pattern
                    ),
                    None => format!(
                        "a {} address, and no [allow] cidrs entry allows it",
                        g.class
                    ),
                };
                format!(
                    "kennel: egress to {dest} denied: it resolves to {}, {why}.{}\n",
                    g.ip,
                    how(&g.hint)
                )
            }
            Failure::TunnelHostMismatch { what, named, target } => format!(
                "kennel: request refused: its {what} {named:?} names another destination than this tunnel's CONNECT target {target}. Every request inside a tunnel must be for the tunnel's own host and port; open a tunnel (or send an absolute-form request) to the other destination instead.\n"
            ),
            Failure::NotProxyRequest => "kennel: this is a forward proxy. Send absolute-form requests (GET http://host/path) or CONNECT host:port; set HTTP_PROXY/HTTPS_PROXY to this address.\n".to_string(),
            other => format!("kennel: request to {dest} failed: {other}\n"),
        }
    }
}

/// Canonical reason phrase for the statuses kennel produces.
/// Send `f`'s error response to the client (errors writing it are the client's: it is gone).
pub async fn refuse(shared: &Shared, client: &mut TcpStream, target: Option<&Target>, f: &Failure) {
    let policy = shared.store.current();
    let _ = client
        .write_all(&f.response_for(
            target,
            shared.policy_shown_as(&policy).as_deref(),
            shared.kennel_env(),
        ))
        .await;
}

/// Close after an error response without resetting it away: shut the write side, then read and
/// discard what the client is still sending (bounded in bytes and time), so the kernel does not
/// answer unread data with a RST that destroys the response in flight.
pub async fn linger_close(tcp: &mut TcpStream) {
    use tokio::io::AsyncReadExt;
    let _ = tcp.shutdown().await;
    // On the heap, not in the future: an array here would make every connection task (whose
    // size is that of its largest state) 16 KiB larger for its whole life, idle tunnels included.
    let mut sink = vec![0u8; 16 * 1024];
    let mut left: usize = 1 << 20;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while left > 0 {
        match tokio::time::timeout_at(deadline, tcp.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
}

/// The standard reason phrase of `status`.
pub fn reason_phrase(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kennel_policy::{Policy, Target};

    fn denied(policy: &str, target: &str) -> (u16, String, String) {
        let p = Policy::from_toml_str(policy, Path::new("/etc/kennel/policy.toml")).unwrap();
        let t = Target::parse_authority(target).unwrap();
        let f = crate::admit::check(&p, &t, &[]).expect_err("denied");
        (
            f.status(),
            f.reason().to_string(),
            f.body(Some(&t), p.primary_file()),
        )
    }

    #[test]
    fn deny_bodies_say_how_to_allow() {
        let pol = "[defaults]\nports = [443]\n[allow]\nhosts = [\"github.com\"]\n[deny]\nhosts = [\"gist.github.com\"]\n";
        let (s, r, b) = denied(pol, "evil.example:443");
        assert_eq!((s, r.as_str()), (403, "not_in_allowlist"));
        assert_eq!(
            b,
            "kennel: egress to evil.example:443 denied (not in allowlist). To allow it, add \"evil.example\" to hosts in the [allow] table of /etc/kennel/policy.toml.\n"
        );
        let (_, r, b) = denied(pol, "github.com:8443");
        assert_eq!(r, "port_not_allowed");
        assert!(
            b.contains("add a [[rule]] table with hosts = [\"github.com\"] and ports = [8443]"),
            "{b}"
        );
        let (_, r, b) = denied(pol, "gist.github.com:443");
        assert_eq!(r, "denied_by_rule");
        assert!(
            b.contains("deny entry \"gist.github.com\" at /etc/kennel/policy.toml:6"),
            "{b}"
        );
        let (_, r, b) = denied(pol, "[::ffff:169.254.169.254]:443");
        assert_eq!(r, "ip_literal_not_allowed");
        // One answer, and one that works: the hint names the literal as written (the test used
        // to accept either a /32 or any /128, so it passed whichever form the hint took).
        assert!(
            b.contains("add \"::ffff:169.254.169.254/128\" to cidrs in the [allow] table"),
            "{b}"
        );
        let fixed = Policy::from_toml_str(
            "[defaults]\nports = [443]\n[allow]\ncidrs = [\"::ffff:169.254.169.254/128\"]\n",
            Path::new("/etc/kennel/policy.toml"),
        )
        .unwrap();
        let t = Target::parse_authority("[::ffff:169.254.169.254]:443").unwrap();
        assert!(fixed.decide(&t).is_allowed(), "the hint allows it");
    }

    #[test]
    fn in_a_kennel_environment_the_body_names_the_kennel_allow_command() {
        let p = Policy::from_toml_str(
            "[allow]\nhosts = [\"github.com\"]\n",
            Path::new("/etc/kennel/policy.toml"),
        )
        .unwrap();
        let t = Target::parse_authority("evil.example:443").unwrap();
        let f = crate::admit::check(&p, &t, &[]).expect_err("denied");
        let b = f.body_for(Some(&t), p.primary_file(), Some("task-a"));
        assert!(
            b.ends_with(
                "/etc/kennel/policy.toml. Ask a person on the host to run: kennel allow task-a evil.example:443\n"
            ),
            "{b}"
        );
        assert_eq!(
            f.body_for(Some(&t), p.primary_file(), None),
            f.body(Some(&t), p.primary_file())
        );
        // Not a denial: no suggestion.
        let other = Failure::NotProxyRequest;
        assert_eq!(
            other.body_for(None, None, Some("task-a")),
            other.body(None, None)
        );
    }

    #[test]
    fn embedded_policy_deny_points_to_config() {
        let t = Target::parse_authority("evil.example:443").unwrap();
        let f = crate::admit::check(&Policy::embedded_default(), &t, &[]).expect_err("denied");
        let b = f.body(Some(&t), None);
        assert!(b.starts_with("kennel: egress to evil.example:443 denied (not in allowlist). To allow it, add \"evil.example\" to hosts in the [allow] table of a policy file"), "{b}");
    }

    /// Issue 15 item 5: whose fault a failure is decides the log reason and the metrics; a
    /// client that went away is the client's failure, not the origin's, and kennel's own
    /// failure is neither.
    #[test]
    fn sides_say_whose_fault() {
        let gone = Failure::ClientGone(std::io::ErrorKind::BrokenPipe.into());
        assert_eq!(gone.side(), Side::Client);
        assert_eq!(gone.reason().to_string(), "client_error");
        assert_eq!(gone.decision(), Verdict::Error);
        let origin = Failure::Origin("connection reset".into());
        assert_eq!(origin.side(), Side::Upstream);
        assert_eq!(origin.reason().to_string(), "origin_error");
        let internal = Failure::Internal("cannot build the origin request".into());
        assert_eq!(internal.side(), Side::Internal);
        assert_eq!(internal.status(), 500);
        assert_eq!(internal.reason().to_string(), "internal_error");
        let resp = String::from_utf8(internal.response(None, None)).expect("utf-8");
        assert!(
            resp.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{resp}"
        );
        assert!(
            resp.contains("X-Kennel-Error: internal_error\r\n"),
            "{resp}"
        );
    }

    /// Issue 15 item 5: a failed connect keeps the OS error (kind and all) as its source.
    #[test]
    fn connect_failure_keeps_the_os_error() {
        let f = Failure::Connect {
            addr: "127.0.0.1:9".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert_eq!(f.side(), Side::Upstream);
        let source = std::error::Error::source(&f).expect("source kept");
        assert_eq!(
            source
                .downcast_ref::<std::io::Error>()
                .map(std::io::Error::kind),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
        assert!(
            f.to_string().starts_with("connect to 127.0.0.1:9 failed: "),
            "{f}"
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(Failure::HeadTooLarge.status(), 431);
        assert_eq!(Failure::ConnectTimeout("x".into()).status(), 504);
        assert_eq!(
            Failure::Upstream {
                kind: "timeout",
                detail: String::new(),
                timeout: true
            }
            .status(),
            504
        );
        assert_eq!(
            Failure::Upstream {
                kind: "auth_rejected",
                detail: String::new(),
                timeout: false
            }
            .status(),
            502
        );
        let resp = String::from_utf8(Failure::NotProxyRequest.response(None, None)).unwrap();
        assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{resp}");
        assert!(resp.contains("X-Kennel-Error: not_a_proxy_request\r\n"));
    }
}
