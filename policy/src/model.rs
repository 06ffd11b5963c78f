//! The immutable policy value and its decisions.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;

use crate::pattern::{HostIndex, HostPattern};
use crate::target::{Host, Target};
use crate::upstream::Upstream;

/// Whether denies are enforced or only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny what the policy does not allow.
    #[default]
    Enforce,
    /// Allow everything, but report what would have been denied.
    Report,
}

impl Mode {
    /// `"enforce"` or `"report"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Report => "report",
        }
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The connection may proceed.
    Allow,
    /// The connection is refused.
    Deny,
}

impl Verdict {
    /// `"allow"` or `"deny"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

/// Why a decision was made. Stable snake_case codes via [`Reason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A host pattern allowed the host and the port.
    AllowedByRule,
    /// A `cidrs` entry allowed the IP and the port.
    AllowedByCidr,
    /// No allow rule matches the host.
    NotInAllowlist,
    /// A `[deny]` entry matches (deny wins over allow).
    DeniedByRule,
    /// The host is allowed, but not on this port.
    PortNotAllowed,
    /// The target is an IP literal that no `cidrs` entry allows.
    IpLiteralNotAllowed,
}

impl Reason {
    /// Stable code: `allowed_by_rule`, `allowed_by_cidr`, `not_in_allowlist`, `denied_by_rule`,
    /// `port_not_allowed`, `ip_literal_not_allowed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::AllowedByRule => "allowed_by_rule",
            Reason::AllowedByCidr => "allowed_by_cidr",
            Reason::NotInAllowlist => "not_in_allowlist",
            Reason::DeniedByRule => "denied_by_rule",
            Reason::PortNotAllowed => "port_not_allowed",
            Reason::IpLiteralNotAllowed => "ip_literal_not_allowed",
        }
    }

    /// Human description: "allowed by rule", "not in allowlist", …
    pub fn describe(&self) -> &'static str {
        match self {
            Reason::AllowedByRule => "allowed by rule",
            Reason::AllowedByCidr => "allowed by cidr",
            Reason::NotInAllowlist => "not in allowlist",
            Reason::DeniedByRule => "denied by rule",
            Reason::PortNotAllowed => "port not allowed",
            Reason::IpLiteralNotAllowed => "IP address not allowed",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Where a rule came from. `Display`: `file:line` (the embedded default list is shown as
/// `<embedded>/default-whitelist.txt:LINE`, legacy variables as `$NAME:1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleRef {
    /// The file the rule is in.
    pub file: Arc<str>,
    /// 1-based line.
    pub line: u32,
    /// The pattern as normalised (`.example.com`, `*.example.com`, `example.com`, a CIDR).
    /// Shared: a decision carries a clone of its rule, and cloning must not allocate on the
    /// per-request path.
    pub pattern: Arc<str>,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One entry of a policy, as [`Policy::entries`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEntry {
    /// True for an allow entry, false for a deny entry (deny wins).
    pub allow: bool,
    /// The pattern (host pattern or CIDR) and where it was written.
    pub rule: RuleRef,
    /// Ports an allow entry allows (sorted); empty for deny entries (they deny every port).
    pub ports: Vec<u16>,
}

/// The outcome of [`Policy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The effective verdict (Allow in report mode even if it would deny).
    pub verdict: Verdict,
    /// The reason (kept as the deny reason in report mode).
    pub reason: Reason,
    /// The matched allow or deny rule, if any.
    pub rule: Option<RuleRef>,
    /// True when `mode = "report"` turned a deny into an allow.
    pub would_deny: bool,
}

impl Decision {
    /// `verdict == Allow`.
    pub fn is_allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

/// Counts of what a policy contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyStats {
    /// Allow host patterns (includes, `[allow]`, `[[rule]]`, legacy).
    pub allow_patterns: usize,
    /// Deny host patterns.
    pub deny_patterns: usize,
    /// `[[rule]]` tables.
    pub rules: usize,
    /// Allow and deny CIDRs.
    pub cidrs: usize,
    /// Upstream routes.
    pub routes: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct AllowEntry {
    pub(crate) rule: RuleRef,
    /// Sorted allowed ports.
    pub(crate) ports: Arc<[u16]>,
}

#[derive(Debug, Clone)]
pub(crate) struct CidrEntry {
    pub(crate) net: IpNet,
    pub(crate) rule: RuleRef,
    pub(crate) ports: Arc<[u16]>,
}

#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// The host patterns routed this way (kept for [`Policy::upstream_routes`]; matching
    /// goes through `route_idx`).
    pub(crate) hosts: Vec<HostPattern>,
    pub(crate) cidrs: Vec<IpNet>,
    pub(crate) upstream: Upstream,
}

/// An immutable, validated policy. Build with [`Policy::load`], [`Policy::from_toml_str`] or
/// [`Policy::embedded_default`]; replace it as a whole on reload.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) mode: Mode,
    pub(crate) primary: Option<PathBuf>,
    pub(crate) sources: Vec<PathBuf>,
    pub(crate) hash: String,
    /// Digest of everything the policy was built from, secrets included; never shown, only
    /// compared by the reloader to tell an unchanged policy from a changed one.
    pub(crate) change_digest: [u8; 32],
    pub(crate) allow: Vec<AllowEntry>,
    pub(crate) allow_idx: HostIndex,
    pub(crate) deny: Vec<RuleRef>,
    pub(crate) deny_idx: HostIndex,
    pub(crate) allow_cidrs: Vec<CidrEntry>,
    pub(crate) deny_cidrs: Vec<CidrEntry>,
    pub(crate) rules: usize,
    pub(crate) routes: Vec<Route>,
    pub(crate) route_idx: HostIndex,
    pub(crate) default_upstream: Upstream,
    /// `[defaults] ports` (what `[allow]` entries allow), for deny hints.
    pub(crate) default_ports: Arc<[u16]>,
}

pub(crate) fn net_contains(net: &IpNet, ip: IpAddr) -> bool {
    if net.contains(&ip) {
        return true;
    }
    // The same embeddings the address classifier unwraps (mapped, compatible, NAT64, 6to4), so
    // a v4 CIDR covers every IPv6 spelling `addr::classify` treats as that v4 address.
    match ip {
        // `::` and `::1` are not embeddings (unspecified / loopback), as in `classify`.
        IpAddr::V6(v6) if v6.is_unspecified() || v6.is_loopback() => false,
        IpAddr::V6(v6) => {
            crate::addr::embedded_v4(v6).is_some_and(|v4| net.contains(&IpAddr::V4(v4)))
        }
        IpAddr::V4(_) => false,
    }
}

impl Policy {
    /// Decides whether `target` may be reached. Deny rules win over allow rules; a host
    /// allowed only on other ports is denied with [`Reason::PortNotAllowed`]; IP targets are
    /// allowed only by `cidrs`. In report mode a deny becomes an allow with `would_deny`.
    pub fn decide(&self, target: &Target) -> Decision {
        let (verdict, reason, rule) = self.decide_enforced(target);
        if verdict == Verdict::Deny && self.mode == Mode::Report {
            Decision {
                verdict: Verdict::Allow,
                reason,
                rule,
                would_deny: true,
            }
        } else {
            Decision {
                verdict,
                reason,
                rule,
                would_deny: false,
            }
        }
    }

    fn decide_enforced(&self, target: &Target) -> (Verdict, Reason, Option<RuleRef>) {
        match &target.host {
            Host::Name(name) => {
                let mut denied = None;
                self.deny_idx.find(name, |id| {
                    denied = Some(id);
                    true
                });
                if let Some(id) = denied {
                    return (
                        Verdict::Deny,
                        Reason::DeniedByRule,
                        Some(self.deny[id as usize].clone()),
                    );
                }
                let mut first = None;
                let mut allowed = None;
                self.allow_idx.find(name, |id| {
                    let e = &self.allow[id as usize];
                    if first.is_none() {
                        first = Some(id);
                    }
                    if e.ports.binary_search(&target.port).is_ok() {
                        allowed = Some(id);
                        return true;
                    }
                    false
                });
                match (allowed, first) {
                    (Some(id), _) => (
                        Verdict::Allow,
                        Reason::AllowedByRule,
                        Some(self.allow[id as usize].rule.clone()),
                    ),
                    (None, Some(id)) => (
                        Verdict::Deny,
                        Reason::PortNotAllowed,
                        Some(self.allow[id as usize].rule.clone()),
                    ),
                    (None, None) => (Verdict::Deny, Reason::NotInAllowlist, None),
                }
            }
            Host::Ip(ip) => {
                if let Some(e) = self.deny_cidrs.iter().find(|e| net_contains(&e.net, *ip)) {
                    return (Verdict::Deny, Reason::DeniedByRule, Some(e.rule.clone()));
                }
                let mut first = None;
                for e in self
                    .allow_cidrs
                    .iter()
                    .filter(|e| net_contains(&e.net, *ip))
                {
                    if e.ports.binary_search(&target.port).is_ok() {
                        return (Verdict::Allow, Reason::AllowedByCidr, Some(e.rule.clone()));
                    }
                    first.get_or_insert(e);
                }
                match first {
                    Some(e) => (Verdict::Deny, Reason::PortNotAllowed, Some(e.rule.clone())),
                    None => (Verdict::Deny, Reason::IpLiteralNotAllowed, None),
                }
            }
        }
    }

    /// For the proxy's SSRF guard: the `cidrs` entry that allows `ip` (ports are not checked
    /// here), if any and if no deny `cidrs` entry matches it.
    pub fn cidr_allowing(&self, ip: IpAddr) -> Option<RuleRef> {
        if self.deny_cidrs.iter().any(|e| net_contains(&e.net, ip)) {
            return None;
        }
        self.allow_cidrs
            .iter()
            .find(|e| net_contains(&e.net, ip))
            .map(|e| e.rule.clone())
    }

    /// For the proxy's SSRF guard: the deny `cidrs` entry that matches `ip`, if any. The guard
    /// checks this for every resolved address before anything else (deny wins, also over
    /// public addresses).
    pub fn cidr_denying(&self, ip: IpAddr) -> Option<RuleRef> {
        self.deny_cidrs
            .iter()
            .find(|e| net_contains(&e.net, ip))
            .map(|e| e.rule.clone())
    }

    /// The first matching `[[upstream.route]]` for the host, else the default upstream.
    pub fn upstream_for(&self, host: &Host) -> &Upstream {
        match host {
            Host::Name(name) => {
                let mut best: Option<u32> = None;
                self.route_idx.find(name, |id| {
                    if best.is_none_or(|b| id < b) {
                        best = Some(id);
                    }
                    false
                });
                match best {
                    Some(id) => &self.routes[id as usize].upstream,
                    None => &self.default_upstream,
                }
            }
            Host::Ip(ip) => self
                .routes
                .iter()
                .find(|r| r.cidrs.iter().any(|n| net_contains(n, *ip)))
                .map_or(&self.default_upstream, |r| &r.upstream),
        }
    }

    /// `[defaults] ports`: the ports `[allow]` entries and list files allow.
    pub fn default_ports(&self) -> &[u16] {
        &self.default_ports
    }

    /// The default upstream (used when no route matches).
    pub fn default_upstream(&self) -> &Upstream {
        &self.default_upstream
    }

    /// The `[[upstream.route]]`s (and the `NO_UPSTREAM` route) in the order they were given:
    /// host patterns, CIDRs, upstream. The upstream's `Display` never shows credentials.
    pub fn upstream_routes(&self) -> impl Iterator<Item = (&[HostPattern], &[IpNet], &Upstream)> {
        self.routes
            .iter()
            .map(|r| (r.hosts.as_slice(), r.cidrs.as_slice(), &r.upstream))
    }

    /// `enforce` or `report`.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The policy TOML file, `None` for the embedded default.
    pub fn primary_file(&self) -> Option<&Path> {
        self.primary.as_deref()
    }

    /// Every file read (policy, includes, credential files), for the reload watcher.
    pub fn source_files(&self) -> &[PathBuf] {
        &self.sources
    }

    /// Stable hex SHA-256 of the policy's sources (same content -> same hash).
    pub fn version_hash(&self) -> &str {
        &self.hash
    }

    /// Every allow and deny entry with where it was written (`file:line`) and, for allow
    /// entries, the ports it allows; in load order (allow hosts, allow cidrs, deny hosts, deny
    /// cidrs). For showing the effective policy to a person (`kennel policy show`).
    pub fn entries(&self) -> Vec<PolicyEntry> {
        let mut out = Vec::with_capacity(
            self.allow.len() + self.allow_cidrs.len() + self.deny.len() + self.deny_cidrs.len(),
        );
        out.extend(self.allow.iter().map(|e| PolicyEntry {
            allow: true,
            rule: e.rule.clone(),
            ports: e.ports.to_vec(),
        }));
        out.extend(self.allow_cidrs.iter().map(|e| PolicyEntry {
            allow: true,
            rule: e.rule.clone(),
            ports: e.ports.to_vec(),
        }));
        out.extend(self.deny.iter().map(|r| PolicyEntry {
            allow: false,
            rule: r.clone(),
            ports: Vec::new(),
        }));
        out.extend(self.deny_cidrs.iter().map(|e| PolicyEntry {
            allow: false,
            rule: e.rule.clone(),
            ports: Vec::new(),
        }));
        out
    }

    /// Counts of patterns, rules, CIDRs and routes.
    pub fn stats(&self) -> PolicyStats {
        PolicyStats {
            allow_patterns: self.allow_idx.len(),
            deny_patterns: self.deny_idx.len(),
            rules: self.rules,
            cidrs: self.allow_cidrs.len() + self.deny_cidrs.len(),
            routes: self.routes.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(src: &str) -> Policy {
        Policy::from_toml_str(src, Path::new("/p/policy.toml")).expect("valid policy")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid IP")
    }

    /// Every IPv6 spelling that embeds an IPv4 address is matched against IPv4 CIDRs, the same
    /// embeddings the address classifier unwraps.
    #[test]
    fn v4_cidrs_match_every_embedded_v4_spelling() {
        let p = policy("[allow]\ncidrs = [\"10.1.0.0/16\"]\n[deny]\ncidrs = [\"10.9.0.0/16\"]\n");
        for s in [
            "10.1.2.3",
            "::ffff:10.1.2.3",
            "::10.1.2.3",
            "64:ff9b::a01:203",
            "2002:a01:203::1",
        ] {
            assert!(p.cidr_allowing(ip(s)).is_some(), "{s} is in 10.1.0.0/16");
            let d = p.decide(&Target {
                host: Host::Ip(ip(s)),
                port: 443,
            });
            assert_eq!(d.reason, Reason::AllowedByCidr, "{s}");
        }
        for s in [
            "10.9.0.1",
            "::ffff:10.9.0.1",
            "::10.9.0.1",
            "64:ff9b::a09:1",
            "2002:a09:1::1",
        ] {
            let d = p.decide(&Target {
                host: Host::Ip(ip(s)),
                port: 443,
            });
            assert_eq!(
                d.reason,
                Reason::DeniedByRule,
                "{s} is in the deny 10.9.0.0/16"
            );
        }
        assert!(p.cidr_allowing(ip("2001:db8::a01:203")).is_none());
        let all = policy("[allow]\ncidrs = [\"0.0.0.0/0\"]\n");
        assert!(all.cidr_allowing(ip("::1")).is_none(), "::1 is not 0.0.0.1");
        assert!(all.cidr_allowing(ip("::")).is_none(), ":: is not 0.0.0.0");
    }

    #[test]
    fn cidr_denying_names_the_deny_rule_for_public_and_private_addresses() {
        let p = policy(
            "[allow]\ncidrs = [\"10.0.0.0/8\"]\n[deny]\ncidrs = [\"10.9.0.0/16\", \"8.8.8.0/24\"]\n",
        );
        let r = p
            .cidr_denying(ip("8.8.8.8"))
            .expect("public address in a deny cidr");
        assert_eq!(&*r.pattern, "8.8.8.0/24");
        assert!(p.cidr_denying(ip("::ffff:10.9.1.1")).is_some());
        assert!(p.cidr_denying(ip("10.1.1.1")).is_none());
        assert!(p.cidr_denying(ip("1.1.1.1")).is_none());
    }
}
