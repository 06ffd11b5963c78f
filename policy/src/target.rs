//! Request targets: host normalisation and parsing of CONNECT authorities, absolute URIs and
//! Host header values.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::TargetError;

/// Longest domain name accepted (RFC 1035, without the trailing dot).
pub(crate) const MAX_NAME_LEN: usize = 253;
/// Longest label accepted (RFC 1035).
pub(crate) const MAX_LABEL_LEN: usize = 63;

/// A normalised destination host. `Name` is lowercase ASCII (punycode for IDNs), no trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A domain name, normalised.
    Name(String),
    /// An IP address (from any spelling: dotted, decimal, octal, hex, short, bracketed IPv6).
    Ip(IpAddr),
}

impl Host {
    /// Parses a host in any spelling a browser, `inet_aton` or a Host header would use.
    ///
    /// IP literals (`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`, `[::1]`) become
    /// [`Host::Ip`]; names are lowercased, stripped of one trailing dot and converted to
    /// punycode. Userinfo, percent-encoding and characters no host name can hold are rejected.
    pub fn parse(s: &str) -> Result<Host, TargetError> {
        if s.is_empty() {
            return Err(TargetError::EmptyHost);
        }
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| TargetError::InvalidIpv6(s.to_string()))?;
            return inner
                .parse::<Ipv6Addr>()
                .map(|ip| Host::Ip(IpAddr::V6(ip)))
                .map_err(|_| TargetError::InvalidIpv6(s.to_string()));
        }
        for c in s.chars() {
            match c {
                '@' => return Err(TargetError::Userinfo),
                '%' => return Err(TargetError::PercentEncoded),
                c if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' => {}
                c if !c.is_ascii() && !c.is_whitespace() && !c.is_control() => {}
                c => return Err(TargetError::InvalidChar(c)),
            }
        }
        // Unbracketed IPv6 cannot appear here (':' is rejected above).
        if let Some(ip) = parse_ipv4_like(s)? {
            return Ok(Host::Ip(IpAddr::V4(ip)));
        }
        let name = normalize_name(s).ok_or_else(|| TargetError::InvalidName(s.to_string()))?;
        // After IDNA mapping (e.g. full-width digits and dots) the name may have become an IPv4.
        if let Some(ip) = parse_ipv4_like(&name)? {
            return Ok(Host::Ip(IpAddr::V4(ip)));
        }
        Ok(Host::Name(name))
    }

    /// The name, if this is a [`Host::Name`].
    pub fn as_name(&self) -> Option<&str> {
        match self {
            Host::Name(n) => Some(n),
            Host::Ip(_) => None,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// A destination: normalised host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The destination host.
    pub host: Host,
    /// The destination port (never 0).
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Target {
    /// CONNECT authority: `host:port`, `[v6]:port`; the port is required. IP literals in every
    /// spelling `inet_aton` and browsers accept become [`Host::Ip`]. Rejects userinfo,
    /// percent-encoding, invalid characters, an empty host and port 0 / out of range.
    pub fn parse_authority(s: &str) -> Result<Target, TargetError> {
        if s.contains('@') {
            return Err(TargetError::Userinfo);
        }
        let (host, port) = split_host_port(s)?;
        let port = port.ok_or(TargetError::MissingPort)?;
        Ok(Target {
            host: Host::parse(host)?,
            port: parse_port(port)?,
        })
    }

    /// Absolute-form request target `http://host[:port]/path?q` -> (target, path-and-query;
    /// `/` if empty). Default port 80 for http, 443 for https. Other schemes, userinfo and
    /// malformed authorities are errors. A fragment is dropped from the path.
    pub fn parse_absolute_uri(s: &str) -> Result<(Target, String), TargetError> {
        let (scheme, rest) = s.split_once("://").ok_or(TargetError::NotAbsolute)?;
        let default_port = if scheme.eq_ignore_ascii_case("http") {
            80
        } else if scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            return Err(TargetError::UnsupportedScheme(scheme.to_string()));
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err(TargetError::Userinfo);
        }
        if tail.starts_with('#') {
            return Err(TargetError::MalformedAuthority(authority.to_string()));
        }
        if authority.contains('\\') {
            return Err(TargetError::InvalidChar('\\'));
        }
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            None | Some("") => default_port,
            Some(p) => parse_port(p)?,
        };
        let host = Host::parse(host)?;
        let path = tail.split('#').next().unwrap_or("");
        let path = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Ok((Target { host, port }, path))
    }

    /// Host (any spelling, as in a Host header without port, or SNI) + port.
    pub fn from_host_port(host: &str, port: u16) -> Result<Target, TargetError> {
        if port == 0 {
            return Err(TargetError::InvalidPort("0".to_string()));
        }
        Ok(Target {
            host: Host::parse(host)?,
            port,
        })
    }
}

/// Splits `host[:port]` / `[v6][:port]`.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), TargetError> {
    if s.is_empty() {
        return Err(TargetError::EmptyHost);
    }
    if s.starts_with('[') {
        let close = s
            .find(']')
            .ok_or_else(|| TargetError::InvalidIpv6(s.to_string()))?;
        let (host, rest) = s.split_at(close + 1);
        if rest.is_empty() {
            return Ok((host, None));
        }
        let port = rest
            .strip_prefix(':')
            .ok_or_else(|| TargetError::MalformedAuthority(s.to_string()))?;
        return Ok((host, Some(port)));
    }
    match s.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => {
            Err(TargetError::MalformedAuthority(s.to_string()))
        }
        Some((host, port)) => {
            if host.is_empty() {
                return Err(TargetError::EmptyHost);
            }
            Ok((host, Some(port)))
        }
        None => Ok((s, None)),
    }
}

fn parse_port(p: &str) -> Result<u16, TargetError> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TargetError::InvalidPort(p.to_string()));
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(TargetError::InvalidPort(p.to_string())),
        Ok(n) => Ok(n),
    }
}

/// One inet_aton part: decimal, `0x` hex or `0`-leading octal. `None` if not numeric.
fn parse_ipv4_part(part: &str) -> Option<Result<u64, ()>> {
    let (digits, radix) =
        if let Some(h) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (h, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    let numeric = match radix {
        16 => digits.bytes().all(|b| b.is_ascii_hexdigit()),
        _ => !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
    };
    if !numeric {
        return None;
    }
    if digits.is_empty() {
        // "0x" alone is zero (WHATWG).
        return Some(Ok(0));
    }
    if radix == 8 && digits.bytes().any(|b| b > b'7') {
        return Some(Err(()));
    }
    let trimmed = digits.trim_start_matches('0');
    if trimmed.len() > 20 {
        return Some(Err(()));
    }
    Some(u64::from_str_radix(digits, radix).map_err(|_| ()))
}

/// WHATWG "ends in a number" + inet_aton parsing. `Ok(None)` when the host is a name.
pub(crate) fn parse_ipv4_like(s: &str) -> Result<Option<Ipv4Addr>, TargetError> {
    let s_trim = s.strip_suffix('.').unwrap_or(s);
    if s_trim.is_empty() {
        return Ok(None);
    }
    let last = s_trim.rsplit('.').next().unwrap_or("");
    let last_numeric = !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit())
            || last
                .strip_prefix("0x")
                .or_else(|| last.strip_prefix("0X"))
                .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit())));
    if !last_numeric {
        return Ok(None);
    }
    let bad = || TargetError::InvalidIpv4(s.to_string());
    // At most four parts, parsed in place (this runs for every request target).
    let mut parts = [0u64; 4];
    let mut count = 0;
    for p in s_trim.split('.') {
        let Some(slot) = parts.get_mut(count) else {
            return Err(bad());
        };
        match parse_ipv4_part(p) {
            Some(Ok(n)) => *slot = n,
            _ => return Err(bad()),
        }
        count += 1;
    }
    // `s_trim` is not empty, so there is at least one part.
    let (init, last) = parts[..count].split_at(count - 1);
    if init.iter().any(|&n| n > 255) {
        return Err(bad());
    }
    let last = last[0];
    let remaining_bits = 8 * (4 - init.len() as u32);
    if remaining_bits < 64 && last >= (1u64 << remaining_bits) {
        return Err(bad());
    }
    let mut value: u64 = 0;
    for (i, n) in init.iter().enumerate() {
        value |= n << (8 * (3 - i as u32));
    }
    value |= last;
    let v = u32::try_from(value).map_err(|_| bad())?;
    Ok(Some(Ipv4Addr::from(v)))
}

/// Normalises a domain name: IDNA (UTS 46) to ASCII, lowercase, one trailing dot removed,
/// RFC 1035 lengths, no empty labels, only `[a-z0-9_-]` after punycode conversion.
/// Returns `None` when the name is invalid.
pub(crate) fn normalize_name(s: &str) -> Option<String> {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.ends_with('.') {
        return None;
    }
    let ascii = if s.bytes().all(|b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'
    }) && !s.contains("xn--")
    {
        std::borrow::Cow::Borrowed(s)
    } else {
        idna::domain_to_ascii_cow(s.as_bytes(), idna::AsciiDenyList::URL).ok()?
    };
    let ascii = ascii.strip_suffix('.').unwrap_or(&ascii);
    if ascii.is_empty() || ascii.len() > MAX_NAME_LEN {
        return None;
    }
    for label in ascii.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return None;
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return None;
        }
    }
    Some(ascii.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inet_aton_spellings() {
        let lo = Host::Ip(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
        for s in [
            "127.0.0.1",
            "2130706433",
            "0177.0.0.1",
            "0x7f.1",
            "127.1",
            "0x7f000001",
            "017700000001",
            "127.0.1",
            "0x7F.0.0.1",
            "127.0.0.1.",
        ] {
            assert_eq!(Host::parse(s), Ok(lo.clone()), "{s}");
        }
    }

    #[test]
    fn invalid_ipv4_like() {
        for s in [
            "1.2.3.4.5",
            "256.0.0.1",
            "foo.0x10",
            "4294967296",
            "1.2.3.256",
            "09.1.1.1",
        ] {
            assert!(
                matches!(Host::parse(s), Err(TargetError::InvalidIpv4(_))),
                "{s}"
            );
        }
    }
}
