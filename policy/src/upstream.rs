//! Upstream proxies: URL parsing and the redacting [`Credentials`] type.

use std::fmt;

/// Username and password for an upstream proxy. `Debug` and `Display` never print the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The username.
    pub username: String,
    /// The password (never printed).
    pub password: String,
}

impl Credentials {
    /// Parses `user:pass` (the password may contain `:`; surrounding whitespace is trimmed).
    pub(crate) fn parse_pair(s: &str) -> Option<Credentials> {
        let (u, p) = s.trim().split_once(':')?;
        if u.is_empty() {
            return None;
        }
        Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        })
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:<redacted>", self.username)
    }
}

/// Upstream route for a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// Connect to the destination directly.
    Direct,
    /// SOCKS5 proxy. `remote_dns = false`: `socks5://` (kennel resolves and guards, sends the
    /// IP); `remote_dns = true`: `socks5h://` (the name is sent to the upstream).
    Socks5 {
        /// Proxy host (name or IP, IPv6 without brackets).
        host: String,
        /// Proxy port.
        port: u16,
        /// Username/password authentication.
        credentials: Option<Credentials>,
        /// Whether the destination name is resolved by the upstream.
        remote_dns: bool,
    },
    /// `http://` (tls = false) or `https://` (tls = true) proxy: CONNECT for tunnels,
    /// absolute-form forwarding for plain HTTP; `Proxy-Authorization: Basic` with credentials.
    Http {
        /// Proxy host (name or IP, IPv6 without brackets).
        host: String,
        /// Proxy port.
        port: u16,
        /// Basic authentication.
        credentials: Option<Credentials>,
        /// Whether the connection to the proxy uses TLS.
        tls: bool,
    },
}

impl Upstream {
    /// The credentials of a proxy upstream.
    pub fn credentials(&self) -> Option<&Credentials> {
        match self {
            Upstream::Direct => None,
            Upstream::Socks5 { credentials, .. } | Upstream::Http { credentials, .. } => {
                credentials.as_ref()
            }
        }
    }

    pub(crate) fn set_credentials(&mut self, c: Credentials) {
        match self {
            Upstream::Direct => {}
            Upstream::Socks5 { credentials, .. } | Upstream::Http { credentials, .. } => {
                *credentials = Some(c);
            }
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, host, port) = match self {
            Upstream::Direct => return f.write_str("direct"),
            Upstream::Socks5 {
                host,
                port,
                remote_dns,
                ..
            } => (if *remote_dns { "socks5h" } else { "socks5" }, host, port),
            Upstream::Http {
                host, port, tls, ..
            } => (if *tls { "https" } else { "http" }, host, port),
        };
        if host.contains(':') {
            write!(f, "{scheme}://[{host}]:{port}")
        } else {
            write!(f, "{scheme}://{host}:{port}")
        }
    }
}

/// Parses `direct` or `scheme://[user:pass@]host:port[/]`. The error message says what is
/// wrong and what was expected, without echoing credentials.
pub(crate) fn parse_upstream_url(s: &str) -> Result<Upstream, String> {
    const EXPECTED: &str = "expected direct, socks5://host:port, socks5h://host:port, http://host:port or https://host:port";
    let s = s.trim();
    if s.eq_ignore_ascii_case("direct") {
        return Ok(Upstream::Direct);
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!("upstream {s:?} is not a URL; {EXPECTED}"));
    };
    let scheme_l = scheme.to_ascii_lowercase();
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let shown = match userinfo {
        Some(_) => format!("{scheme}://…@{hostport}"),
        None => s.to_string(),
    };
    if hostport.contains(['/', '?', '#']) {
        return Err(format!("upstream {shown:?} has a path; {EXPECTED}"));
    }
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, p) = h
            .split_once(']')
            .ok_or_else(|| format!("upstream {shown:?} has an unclosed `[`; {EXPECTED}"))?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "upstream {shown:?} has an invalid IPv6 address; {EXPECTED}"
            ));
        }
        (h.to_string(), p.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    let Some(port) = port else {
        return Err(format!("upstream {shown:?} has no port; {EXPECTED}"));
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
        _ => {
            return Err(format!(
                "upstream {shown:?} has an invalid port {port:?}; expected 1-65535"
            ));
        }
    };
    if host.is_empty() {
        return Err(format!("upstream {shown:?} has no host; {EXPECTED}"));
    }
    let host = if host.contains(':') {
        host
    } else {
        match crate::target::Host::parse(&host) {
            Ok(h) => match h {
                crate::target::Host::Name(n) => n,
                crate::target::Host::Ip(ip) => ip.to_string(),
            },
            Err(e) => return Err(format!("upstream {shown:?} has an invalid host: {e}")),
        }
    };
    let credentials = match userinfo {
        None => None,
        Some(u) => {
            let decoded = percent_decode(u).ok_or_else(|| {
                format!("upstream {shown:?} has invalid percent-encoding in its user:password")
            })?;
            Some(Credentials::parse_pair(&decoded).ok_or_else(|| {
                format!("upstream {shown:?} has credentials that are not user:password")
            })?)
        }
    };
    match scheme_l.as_str() {
        "socks5" | "socks5h" => Ok(Upstream::Socks5 {
            host,
            port,
            credentials,
            remote_dns: scheme_l == "socks5h",
        }),
        "http" | "https" => Ok(Upstream::Http {
            host,
            port,
            credentials,
            tls: scheme_l == "https",
        }),
        _ => Err(format!(
            "unsupported upstream scheme {scheme:?}; {EXPECTED}"
        )),
    }
}

/// Decodes `%XX` escapes (userinfo of an upstream URL). `None` for a `%` not followed by two
/// hex digits (which `percent-encoding` would keep as it is) or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let malformed = s.match_indices('%').any(|(i, _)| {
        s.as_bytes()
            .get(i + 1..i + 3)
            .is_none_or(|h| !h.iter().all(u8::is_ascii_hexdigit))
    });
    if malformed {
        return None;
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}
