//! The proxy's tunnel registry (not the daemon's environment registry): live client
//! connections, for revocation: each connection registers its current
//! destination (and the checked address) plus a cancellation token. After every successful
//! policy reload [`Registry::revoke_denied`] asks the admission step ([`crate::admit::check`])
//! again for each entry and cancels those the new policy refuses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use kennel_policy::{Policy, Target};
use tokio_util::sync::CancellationToken;

struct Entry {
    target: Option<(Target, Option<IpAddr>)>,
    cancel: CancellationToken,
}

/// Live connections.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    entries: Mutex<HashMap<u64, Entry>>,
}

/// Removes the entry when dropped.
pub struct Registration<'a> {
    registry: &'a Registry,
    id: u64,
    /// Cancelled when the connection's destination is revoked.
    pub cancel: CancellationToken,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a connection (no destination yet).
    pub fn register(&self) -> Registration<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        self.lock().insert(
            id,
            Entry {
                target: None,
                cancel: cancel.clone(),
            },
        );
        Registration {
            registry: self,
            id,
            cancel,
        }
    }

    /// Number of live registered connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cancel every connection whose destination `policy` no longer admits (the same
    /// [`crate::admit::check`] as the first decision: policy verdict, then the address guard
    /// over the checked address). Returns how many were cancelled.
    pub fn revoke_denied(&self, policy: &Policy) -> usize {
        let mut n = 0;
        for e in self.lock().values() {
            let Some((target, ip)) = &e.target else {
                continue;
            };
            let ips: &[IpAddr] = ip.as_slice();
            if crate::admit::check(policy, target, ips).is_err() && !e.cancel.is_cancelled() {
                e.cancel.cancel();
                n += 1;
            }
        }
        n
    }
}

impl Registration<'_> {
    /// Record the destination this connection is now talking to.
    pub fn set_target(&self, target: &Target, ip: Option<IpAddr>) {
        if let Some(e) = self.registry.lock().get_mut(&self.id) {
            e.target = Some((target.clone(), ip));
        }
    }

    /// The connection is between requests (no destination).
    pub fn clear_target(&self) {
        if let Some(e) = self.registry.lock().get_mut(&self.id) {
            e.target = None;
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(src: &str) -> Policy {
        Policy::from_toml_str(src, std::path::Path::new("/p/policy.toml")).expect("valid policy")
    }

    /// Issue 9, item 2: revocation had its own address guard that only looked at non-public
    /// addresses, so a reload adding a `[deny] cidrs` entry never closed a live tunnel to a
    /// public address in it. Nothing is dialed here: the registry only holds the address.
    #[test]
    fn revocation_closes_tunnels_to_public_addresses_in_a_new_deny_cidr() {
        let registry = Registry::default();
        let target = Target::parse_authority("pub.test:443").expect("target");
        let denied = registry.register();
        denied.set_target(&target, Some("8.8.8.8".parse().expect("ip")));
        let kept = registry.register();
        kept.set_target(&target, Some("1.1.1.1".parse().expect("ip")));
        let p = policy("[allow]\nhosts = [\"pub.test\"]\n[deny]\ncidrs = [\"8.8.8.0/24\"]\n");
        assert_eq!(registry.revoke_denied(&p), 1);
        assert!(denied.cancel.is_cancelled(), "tunnel to 8.8.8.8 revoked");
        assert!(!kept.cancel.is_cancelled(), "tunnel to 1.1.1.1 kept");
    }
}
