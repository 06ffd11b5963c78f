//! Counters and gauges, rendered in the Prometheus text format by the admin listener.
//! Label sets are bounded: verdicts/reasons/kinds are fixed enums, and per-rule byte counters
//! are capped at [`MAX_RULE_SERIES`] series (the rest are summed under `rule="other"`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use kennel_policy::RuleRef;

use crate::log::{Kind, Reason, Verdict};

/// Most distinct `rule` label values kept for per-rule byte counters.
pub const MAX_RULE_SERIES: usize = 256;

/// All proxy metrics.
#[derive(Default)]
pub struct Metrics {
    /// Client connections currently open.
    pub connections_active: AtomicI64,
    /// Client connections accepted since start.
    pub connections_total: AtomicU64,
    /// Errors from `accept()` (e.g. EMFILE).
    pub accept_errors_total: AtomicU64,
    /// Bytes from clients to destinations.
    pub bytes_up: AtomicU64,
    /// Bytes from destinations to clients.
    pub bytes_down: AtomicU64,
    /// Successful reloads that changed the policy.
    pub reloads_ok: AtomicU64,
    /// Reloads refused (invalid policy).
    pub reloads_failed: AtomicU64,
    /// Live connections closed because a reload revoked their destination.
    pub revoked_total: AtomicU64,
    /// Requests/tunnels by (kind, decision, reason).
    decisions: Mutex<HashMap<(Kind, Verdict, Reason), u64>>,
    /// Upstream failures by kind.
    upstream_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Allowed bytes by matched rule.
    rule_bytes: Mutex<RuleBytes>,
}

/// Per-rule byte counters, keyed by the rule itself so counting builds no string.
#[derive(Default)]
struct RuleBytes {
    by_rule: HashMap<RuleRef, u64>,
    other: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned metrics map is still a valid map: keep counting.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    /// Count one request/tunnel decision (typed key: no string is built per request).
    pub fn decision(&self, kind: Kind, decision: Verdict, reason: Reason) {
        *lock(&self.decisions)
            .entry((kind, decision, reason))
            .or_default() += 1;
    }

    /// Current value of a decision counter (for tests).
    pub fn decision_count(&self, kind: &str, decision: &str, reason: &str) -> u64 {
        lock(&self.decisions)
            .iter()
            .filter(|((k, d, r), _)| {
                k.as_str() == kind && d.as_str() == decision && r.as_str() == reason
            })
            .map(|(_, v)| *v)
            .sum()
    }

    /// Count an upstream failure of the given kind.
    pub fn upstream_failure(&self, kind: &'static str) {
        *lock(&self.upstream_failures).entry(kind).or_default() += 1;
    }

    /// Add transferred bytes, attributing them to the allowing rule if any.
    pub fn add_bytes(&self, up: u64, down: u64, rule: Option<&RuleRef>) {
        self.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.bytes_down.fetch_add(down, Ordering::Relaxed);
        if let Some(rule) = rule {
            let mut m = lock(&self.rule_bytes);
            if let Some(n) = m.by_rule.get_mut(rule) {
                *n += up + down;
            } else if m.by_rule.len() < MAX_RULE_SERIES {
                m.by_rule.insert(rule.clone(), up + down);
            } else {
                m.other += up + down;
            }
        }
    }

    /// Render in the Prometheus text exposition format.
    pub fn render(&self, generation: u64) -> String {
        let mut o = String::with_capacity(4096);
        let g = |o: &mut String, name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        g(
            &mut o,
            "kennel_proxy_connections_active",
            "Client connections currently open.",
            "gauge",
            self.connections_active.load(Ordering::Relaxed).to_string(),
        );
        g(
            &mut o,
            "kennel_proxy_connections_total",
            "Client connections accepted.",
            "counter",
            self.connections_total.load(Ordering::Relaxed).to_string(),
        );
        g(
            &mut o,
            "kennel_proxy_accept_errors_total",
            "Errors from accept (e.g. EMFILE).",
            "counter",
            self.accept_errors_total.load(Ordering::Relaxed).to_string(),
        );
        g(
            &mut o,
            "kennel_proxy_revoked_total",
            "Live connections closed by a policy reload.",
            "counter",
            self.revoked_total.load(Ordering::Relaxed).to_string(),
        );
        g(
            &mut o,
            "kennel_proxy_policy_generation",
            "Generation of the policy in force.",
            "gauge",
            generation.to_string(),
        );

        let _ = writeln!(
            o,
            "# HELP kennel_proxy_bytes_total Bytes relayed, by direction.\n# TYPE kennel_proxy_bytes_total counter"
        );
        let _ = writeln!(
            o,
            "kennel_proxy_bytes_total{{direction=\"up\"}} {}",
            self.bytes_up.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "kennel_proxy_bytes_total{{direction=\"down\"}} {}",
            self.bytes_down.load(Ordering::Relaxed)
        );

        let _ = writeln!(
            o,
            "# HELP kennel_proxy_reloads_total Policy reloads, by result.\n# TYPE kennel_proxy_reloads_total counter"
        );
        let _ = writeln!(
            o,
            "kennel_proxy_reloads_total{{result=\"ok\"}} {}",
            self.reloads_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "kennel_proxy_reloads_total{{result=\"failed\"}} {}",
            self.reloads_failed.load(Ordering::Relaxed)
        );

        let _ = writeln!(
            o,
            "# HELP kennel_proxy_decisions_total Requests and tunnels, by kind, decision and reason.\n# TYPE kennel_proxy_decisions_total counter"
        );
        // Rendered in label order, as before the keys were typed.
        let decisions: BTreeMap<(&str, &str, String), u64> = lock(&self.decisions)
            .iter()
            .map(|((k, d, r), v)| ((k.as_str(), d.as_str(), r.to_string()), *v))
            .collect();
        for ((k, d, r), v) in &decisions {
            let _ = writeln!(
                o,
                "kennel_proxy_decisions_total{{kind=\"{k}\",decision=\"{d}\",reason=\"{}\"}} {v}",
                esc(r)
            );
        }
        let _ = writeln!(
            o,
            "# HELP kennel_proxy_upstream_failures_total Upstream proxy failures, by kind.\n# TYPE kennel_proxy_upstream_failures_total counter"
        );
        for (k, v) in lock(&self.upstream_failures).iter() {
            let _ = writeln!(
                o,
                "kennel_proxy_upstream_failures_total{{kind=\"{k}\"}} {v}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP kennel_proxy_rule_allowed_bytes_total Bytes relayed for destinations allowed by each rule (file:line).\n# TYPE kennel_proxy_rule_allowed_bytes_total counter"
        );
        // Rules on one line share a `file:line` label: summed, in label order.
        let mut rules: BTreeMap<String, u64> = BTreeMap::new();
        {
            let m = lock(&self.rule_bytes);
            for (r, v) in &m.by_rule {
                *rules.entry(r.to_string()).or_default() += v;
            }
            if m.other > 0 {
                *rules.entry("other".to_string()).or_default() += m.other;
            }
        }
        for (r, v) in &rules {
            let _ = writeln!(
                o,
                "kennel_proxy_rule_allowed_bytes_total{{rule=\"{}\"}} {v}",
                esc(r)
            );
        }
        o
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_series_are_bounded() {
        let m = Metrics::default();
        for i in 0..(MAX_RULE_SERIES + 10) {
            let rule = RuleRef {
                file: "f".into(),
                line: i as u32,
                pattern: format!("p{i}").into(),
            };
            m.add_bytes(1, 1, Some(&rule));
        }
        let text = m.render(1);
        assert_eq!(
            text.matches("kennel_proxy_rule_allowed_bytes_total{")
                .count(),
            MAX_RULE_SERIES + 1
        );
        assert!(text.contains("rule=\"other\"} 20"));
    }
}
