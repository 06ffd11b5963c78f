//! Name resolution (static hosts map, then hickory DNS) and the SSRF guard: every resolved
//! address is classified and must be public or allowed by a `cidrs` entry, before any dial.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use kennel_policy::{Hint, Host, Policy, RuleRef, addr};
use tokio::sync::OnceCell;

use crate::config::ResolverSettings;

/// Resolution failed.
#[derive(Debug, thiserror::Error, Clone)]
pub enum ResolveError {
    /// No address for the name (NXDOMAIN, no records, or not in the static map with
    /// `static_only`).
    #[error("DNS lookup of {name} failed: {detail}")]
    Failed {
        /// The name.
        name: String,
        /// Why.
        detail: String,
    },
    /// The DNS client could not be configured, or it answered the lookup with an error
    /// (NXDOMAIN, timeout …); `source` is the resolver's own error.
    #[error("DNS lookup of {name} failed: {source}")]
    Lookup {
        /// The name.
        name: String,
        /// The resolver's error (shared: the error of building the DNS client is cached and
        /// reported for every lookup).
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

/// The DNS client could not be built from the system or configured nameservers.
#[derive(Debug, thiserror::Error)]
#[error("cannot configure DNS: {0}")]
pub struct DnsSetupError(#[source] hickory_resolver::net::NetError);

/// An address the guard refused.
#[derive(Debug, thiserror::Error, Clone)]
#[error("{}", match denied_by {
    Some(rule) => format!("{ip} is denied by the [deny] cidrs entry {} ({rule})", rule.pattern),
    None => format!("{ip} is a {class} address and no `cidrs` entry allows it"),
})]
pub struct GuardDenied {
    /// The address.
    pub ip: IpAddr,
    /// Its class ("loopback", "private", …).
    pub class: &'static str,
    /// The `[deny] cidrs` entry that matched, when that is why (deny wins over public and over
    /// allow entries).
    pub denied_by: Option<RuleRef>,
    /// The policy edits that would let the guard accept every address of the destination.
    pub hint: Hint,
}

/// Resolver with a static hosts map in front of DNS.
pub struct Resolver {
    hosts: HashMap<String, Vec<IpAddr>>,
    static_only: bool,
    nameservers: Vec<std::net::SocketAddr>,
    dns: OnceCell<Result<TokioResolver, Arc<DnsSetupError>>>,
}

impl Resolver {
    /// Build from settings; the DNS client is created lazily on the first lookup that needs it.
    pub fn new(settings: &ResolverSettings) -> Resolver {
        let hosts = settings
            .hosts
            .iter()
            .map(|(k, v)| {
                let key = match Host::parse(k) {
                    Ok(Host::Name(n)) => n,
                    _ => k.to_ascii_lowercase(),
                };
                (key, v.clone())
            })
            .collect();
        Resolver {
            hosts,
            static_only: settings.static_only,
            nameservers: settings.nameservers.clone(),
            dns: OnceCell::new(),
        }
    }

    /// All addresses of `host` (an IP literal resolves to itself).
    pub async fn resolve(&self, host: &Host) -> Result<Vec<IpAddr>, ResolveError> {
        let name = match host {
            Host::Ip(ip) => return Ok(vec![*ip]),
            Host::Name(n) => n,
        };
        if let Some(ips) = self.hosts.get(name.as_str()) {
            return Ok(ips.clone());
        }
        let fail = |detail: String| ResolveError::Failed {
            name: name.clone(),
            detail,
        };
        if self.static_only {
            return Err(fail(
                "not in the static hosts map and DNS is disabled (resolver.static_only)".into(),
            ));
        }
        // Boxed: the lookup's state (hickory's) is large, and the common answers above (an IP
        // literal, the hosts map) would otherwise carry its size in every request's future.
        Box::pin(self.lookup(name)).await
    }

    /// A DNS lookup of `name` (never relative).
    async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let fail = |detail: String| ResolveError::Failed {
            name: name.to_string(),
            detail,
        };
        let dns = self.dns.get_or_init(|| async { self.build_dns() }).await;
        let lookup_failed =
            |source: Arc<dyn std::error::Error + Send + Sync>| ResolveError::Lookup {
                name: name.to_string(),
                source,
            };
        let dns = dns.as_ref().map_err(|e| lookup_failed(e.clone()))?;
        // Always fully qualified: a relative name would get the host's search domains
        // appended (resolv.conf `search` / `ndots`), reaching a name the policy never checked.
        // Names are stored without the trailing dot (Host::parse strips it), so add it here.
        let fqdn = format!("{name}.");
        let lookup = dns
            .lookup_ip(fqdn.as_str())
            .await
            .map_err(|e| lookup_failed(Arc::new(e)))?;
        let ips: Vec<IpAddr> = lookup.iter().collect();
        if ips.is_empty() {
            return Err(fail("no addresses".into()));
        }
        Ok(ips)
    }
}

impl Resolver {
    fn build_dns(&self) -> Result<TokioResolver, Arc<DnsSetupError>> {
        let built = if self.nameservers.is_empty() {
            TokioResolver::builder_tokio().and_then(|b| b.build())
        } else {
            use hickory_resolver::config::{NameServerConfig, ResolverConfig};
            let servers = self
                .nameservers
                .iter()
                .map(|sa| {
                    let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                    for c in &mut ns.connections {
                        c.port = sa.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
            )
            .build()
        };
        built.map_err(|e| Arc::new(DnsSetupError(e)))
    }
}

/// Check one address: not in a `[deny] cidrs` entry, and public or allowed by an allow `cidrs`
/// entry (returned).
pub fn guard(policy: &Policy, ip: IpAddr) -> Result<Option<RuleRef>, GuardDenied> {
    let class = addr::classify(ip);
    if let Some(rule) = policy.cidr_denying(ip) {
        return Err(GuardDenied {
            ip,
            class: class.as_str(),
            denied_by: Some(rule),
            hint: policy.how_to_admit_addresses(&[ip]),
        });
    }
    if class.is_public() {
        return Ok(None);
    }
    match policy.cidr_allowing(ip) {
        Some(rule) => Ok(Some(rule)),
        None => Err(GuardDenied {
            ip,
            class: class.as_str(),
            denied_by: None,
            hint: policy.how_to_admit_addresses(&[ip]),
        }),
    }
}

/// Check every address; the first refusal denies the whole destination (a name that resolves to
/// one public and one private address is refused: that is what DNS rebinding looks like). The
/// refusal's hint covers every address, so applying it admits the whole destination.
pub fn guard_all(policy: &Policy, ips: &[IpAddr]) -> Result<(), GuardDenied> {
    let refused = |mut g: GuardDenied| {
        g.hint = policy.how_to_admit_addresses(ips);
        g
    };
    // Deny entries first, over every address, so a denied address is named as such even when
    // another address is refused for its class.
    for ip in ips {
        if let Some(rule) = policy.cidr_denying(*ip) {
            return Err(refused(GuardDenied {
                ip: *ip,
                class: addr::classify(*ip).as_str(),
                denied_by: Some(rule),
                hint: Hint::default(),
            }));
        }
    }
    for ip in ips {
        guard(policy, *ip).map_err(refused)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Regression: lookups must be fully qualified, so a configured search domain (with a high
    /// `ndots`) is never appended to a checked name.
    #[tokio::test]
    async fn dns_lookups_are_fully_qualified_so_search_domains_never_apply() {
        use hickory_resolver::config::{NameServerConfig, ResolverConfig};
        use hickory_resolver::proto::rr::Name;
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind udp");
        let ns = sock.local_addr().expect("local addr");
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        // Tiny DNS server: records each question name and answers NXDOMAIN.
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                let q = &buf[..n];
                let mut i = 12;
                let mut labels = Vec::new();
                while let Some(&len) = q.get(i) {
                    i += 1;
                    if len == 0 {
                        break;
                    }
                    let Some(l) = q.get(i..i + usize::from(len)) else {
                        break;
                    };
                    labels.push(String::from_utf8_lossy(l).to_ascii_lowercase());
                    i += usize::from(len);
                }
                log.lock().expect("lock").push(labels.join("."));
                let Some(question) = q.get(12..i + 4) else {
                    continue;
                };
                let mut r = vec![q[0], q[1], 0x81, 0x83, 0, 1, 0, 0, 0, 0, 0, 0];
                r.extend_from_slice(question);
                let _ = sock.send_to(&r, peer).await;
            }
        });
        let mut server_cfg = NameServerConfig::udp_and_tcp(ns.ip());
        for c in &mut server_cfg.connections {
            c.port = ns.port();
        }
        let mut cfg = ResolverConfig::from_name_servers(vec![server_cfg]);
        cfg.add_search(Name::from_ascii("corp.example.").expect("name"));
        let mut b = TokioResolver::builder_with_config(
            cfg,
            hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
        );
        b.options_mut().ndots = 5;
        b.options_mut().attempts = 1;
        b.options_mut().timeout = std::time::Duration::from_secs(2);
        let resolver = Resolver {
            hosts: HashMap::new(),
            static_only: false,
            nameservers: vec![ns],
            dns: OnceCell::new_with(Some(b.build().map_err(|e| Arc::new(DnsSetupError(e))))),
        };
        let host = Host::parse("missing.test").expect("host");
        let err = resolver.resolve(&host).await.expect_err("NXDOMAIN");
        // The resolver's own error is kept as the source, not flattened into a string.
        assert!(
            matches!(&err, ResolveError::Lookup { name, .. } if name == "missing.test"),
            "{err:?}"
        );
        assert!(std::error::Error::source(&err).is_some(), "{err:?}");
        server.abort();
        let seen = seen.lock().expect("lock").clone();
        assert!(!seen.is_empty(), "the DNS server was asked");
        assert!(
            seen.iter().all(|n| n == "missing.test"),
            "only the checked name may be looked up: {seen:?}"
        );
    }

    fn policy(src: &str) -> Policy {
        Policy::from_toml_str(src, std::path::Path::new("/p/policy.toml")).expect("valid policy")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid IP")
    }

    #[test]
    fn deny_cidrs_refuse_public_and_allowed_addresses() {
        let p = policy(
            "[allow]\ncidrs = [\"127.0.0.0/8\"]\n[deny]\ncidrs = [\"127.0.0.9/32\", \"8.8.8.0/24\"]\n",
        );
        assert!(guard(&p, ip("127.0.0.1")).is_ok());
        assert!(guard(&p, ip("1.1.1.1")).is_ok());
        for s in ["8.8.8.8", "::ffff:8.8.8.8", "127.0.0.9"] {
            let e = guard(&p, ip(s)).expect_err(s);
            assert_eq!(
                e.denied_by.as_ref().map(|r| &*r.pattern),
                Some(if s == "127.0.0.9" {
                    "127.0.0.9/32"
                } else {
                    "8.8.8.0/24"
                }),
                "{s}"
            );
            assert!(e.to_string().contains("[deny] cidrs"), "{e}");
        }
        // Every address is checked; the deny is reported even after a refused private one.
        let e = guard_all(&p, &[ip("1.1.1.1"), ip("10.0.0.1"), ip("8.8.8.8")]).unwrap_err();
        assert_eq!(e.ip, ip("8.8.8.8"));
        assert!(guard_all(&p, &[ip("1.1.1.1"), ip("127.0.0.1")]).is_ok());
    }
}
