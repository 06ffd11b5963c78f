//! Registry of live client connections, for revocation: each connection registers its current
//! destination (and the checked address) plus a cancellation token. After every successful
//! policy reload [`Registry::revoke_denied`] re-decides each entry and cancels those the new
//! policy denies.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use kennel_policy::{Policy, Target, addr};
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

    /// Cancel every connection whose destination `policy` no longer allows (policy verdict or
    /// address guard). Returns how many were cancelled.
    pub fn revoke_denied(&self, policy: &Policy) -> usize {
        let mut n = 0;
        for e in self.lock().values() {
            let Some((target, ip)) = &e.target else {
                continue;
            };
            let denied = !policy.decide(target).is_allowed()
                || ip.is_some_and(|ip| {
                    !addr::classify(ip).is_public() && policy.cidr_allowing(ip).is_none()
                });
            if denied && !e.cancel.is_cancelled() {
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

/// If the policy changed since `generation`, decide `target` (and its checked address) again;
/// `Some(failure)` when the policy in force now refuses it.
pub fn recheck(
    shared: &crate::Shared,
    generation: u64,
    target: &Target,
    resolved: Option<std::net::SocketAddr>,
) -> Option<crate::respond::Failure> {
    if shared.store.generation() == generation {
        return None;
    }
    let policy = shared.store.current();
    let decision = policy.decide(target);
    if !decision.is_allowed() {
        return Some(crate::respond::Failure::Denied { decision });
    }
    if let Some(a) = resolved
        && let Err(g) = crate::resolve::guard(&policy, a.ip())
    {
        return Some(crate::respond::Failure::Guard(g));
    }
    None
}
