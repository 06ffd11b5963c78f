//! `policy-reloaded` / `policy-rejected` events from the environments' proxies.
//!
//! The proxy reloads its policy by itself when the file changes (it watches the read-only
//! policy directory) and counts the outcomes in `/metrics` (`kennel_proxy_reloads_total`
//! by `result`); the error of a rejected file is only in its log. The daemon compares these
//! counters with the last ones it saw for the environment and records an event for each
//! increase:
//! - after each policy file the daemon swaps ([`Daemon::policy_swapped`]), a watcher polls the
//!   proxy for up to [`CONFIRM_WITHIN`] (like `kennel bench` waits for the reload), so a
//!   `kennel allow` is followed by its `policy-reloaded` within about a second;
//! - the health monitor's tick ([`crate::ops::health::TICK`]) looks once at every
//!   environment, which keeps the baselines current and catches reloads the daemon did not
//!   cause (a person editing the file in the state directory, an include changing).
//!
//! A proxy the daemon creates (`kennel up`, a refresh) starts from zero counts, which is its
//! baseline ([`Daemon::proxy_created`]). Otherwise the first look at an environment only sets
//! its baseline: counts from before the daemon (re)started are not replayed as events. Lower
//! counts than last time mean a new proxy (a restart) and are a new baseline too.

use crate::events::EventNow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kennel_container::backend::{ExecOutput, LogsRequest, LogsTarget};

use crate::events::{Event, kind};
use crate::registry::Daemon;

/// How long after a swap the watcher waits for the proxy to report the reload.
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(2);
/// How often the health monitor's tick looks at each environment's counters (an engine
/// inspect and an HTTP request each time).
pub const TICK_LOOK_EVERY: Duration = Duration::from_secs(5);
/// How often it looks in that time.
const CONFIRM_EVERY: Duration = Duration::from_millis(100);
/// How far back the proxy's log is searched for the error of a rejected reload.
const ERROR_LOG_WINDOW_SECS: i64 = 120;
/// At most this much of the proxy's log is read for it.
const ERROR_LOG_MAX_BYTES: usize = 1024 * 1024;
/// What the proxy logs when it keeps the old policy (`kennel-proxy`'s `on_reload`).
const FAILED_MARK: &str = "policy reload failed";

/// The proxy's reload counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadCounts {
    /// Successful reloads.
    pub ok: u64,
    /// Rejected files (the old policy kept).
    pub failed: u64,
    /// The policy generation now in force, when reported.
    pub generation: Option<u64>,
}

/// `kennel_proxy_reloads_total{result=…}` and `kennel_proxy_policy_generation` from the
/// proxy's Prometheus text; `None` when the reload counters are missing.
pub fn parse_counts(metrics: &str) -> Option<ReloadCounts> {
    let value = |prefix: &str| {
        metrics.lines().find_map(|l| {
            l.strip_prefix(prefix)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|v| v as u64)
        })
    };
    Some(ReloadCounts {
        ok: value("kennel_proxy_reloads_total{result=\"ok\"} ")?,
        failed: value("kennel_proxy_reloads_total{result=\"failed\"} ")?,
        generation: value("kennel_proxy_policy_generation "),
    })
}

/// The last counters seen per environment and the environments whose policy was just swapped.
#[derive(Debug, Default)]
pub struct ReloadWatch {
    seen: Mutex<HashMap<String, ReloadCounts>>,
    pending: Mutex<HashSet<String>>,
    wake: tokio::sync::Notify,
    /// One look at a time.
    look: tokio::sync::Mutex<()>,
    /// When the monitor's tick last looked, per environment.
    ticked: Mutex<HashMap<String, std::time::Instant>>,
}

/// What one look found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// The proxy's counters could not be read (stopped, gone, no proxy).
    Unreadable,
    /// The first look: the baseline is set.
    Baseline,
    /// Nothing new since the last look.
    Same,
    /// New reloads or rejections (and events recorded).
    Changed,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Daemon {
    /// Tells the watcher that `name`'s policy file was replaced (its proxy should reload).
    pub(crate) fn policy_swapped(&self, name: &str) {
        lock(&self.reloads().pending).insert(name.to_string());
        self.reloads().wake.notify_one();
    }

    /// `name`'s proxy is new (a create, a refresh): it counts from zero, so that is its
    /// baseline. Without this the first look set the baseline, and a reload before it — the
    /// monitor looks every [`TICK_LOOK_EVERY`], and a look while the proxy is not up yet
    /// counts — was taken into the baseline and never became an event.
    pub(crate) fn proxy_created(&self, name: &str) {
        lock(&self.reloads().seen).insert(name.to_string(), ReloadCounts::default());
    }

    /// The health monitor's look: at most every [`TICK_LOOK_EVERY`] per environment.
    pub(crate) async fn look_at_reloads_if_due(&self, name: &str) {
        let now = std::time::Instant::now();
        {
            let mut ticked = lock(&self.reloads().ticked);
            if ticked
                .get(name)
                .is_some_and(|t| now.duration_since(*t) < TICK_LOOK_EVERY)
            {
                return;
            }
            ticked.insert(name.to_string(), now);
        }
        self.look_at_reloads(name).await;
    }

    /// Looks at `name`'s proxy counters once and records an event per increase.
    pub async fn look_at_reloads(&self, name: &str) -> Look {
        // The watcher and the monitor's tick take turns, so a look's counters are never older
        // than the stored ones.
        let _one_look = self.reloads().look.lock().await;
        let Some(now) = self
            .backend()
            .proxy_metrics(name)
            .await
            .ok()
            .flatten()
            .and_then(|m| parse_counts(&m))
        else {
            return Look::Unreadable;
        };
        let prev = lock(&self.reloads().seen).insert(name.to_string(), now);
        let prev = match prev {
            None => return Look::Baseline,
            // Lower counters: a new proxy (refresh, restart, a new environment of that name)
            // started from zero; its counts are the new baseline.
            Some(p) if now.ok < p.ok || now.failed < p.failed => return Look::Baseline,
            Some(p) if now.ok == p.ok && now.failed == p.failed => return Look::Same,
            Some(p) => p,
        };
        if now.ok > prev.ok {
            let mut ev = Event::now(
                Some(name),
                kind::POLICY_RELOADED,
                format!(
                    "the proxy of {name:?} reloaded its policy (reload {} since it started)",
                    now.ok
                ),
            )
            .with("reloads", now.ok);
            if let Some(g) = now.generation {
                ev = ev.with("generation", g);
            }
            self.event(ev);
        }
        if now.failed > prev.failed {
            let error = self.proxy_reload_error(name).await.unwrap_or_else(|| {
                format!("(not found in its log; see `kennel logs {name} --proxy`)")
            });
            self.event(
                Event::now(
                    Some(name),
                    kind::POLICY_REJECTED,
                    format!(
                        "the proxy of {name:?} rejected its policy file and keeps the previous policy: {error}"
                    ),
                )
                .with("error", error)
                .with("source", "proxy")
                .with("rejected", now.failed),
            );
        }
        Look::Changed
    }

    /// The last "policy reload failed" message in the proxy's recent log.
    async fn proxy_reload_error(&self, name: &str) -> Option<String> {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs() as i64
            - ERROR_LOG_WINDOW_SECS;
        let req = LogsRequest {
            target: LogsTarget::Proxy,
            follow: false,
            since_unix: Some(since),
        };
        let read = async {
            let mut stream = self.backend().logs(name, req).await.ok()?;
            let mut text = Vec::new();
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(ExecOutput::Stdout(b) | ExecOutput::Stderr(b)) => text.extend_from_slice(&b),
                    Err(_) => break,
                }
                if text.len() > ERROR_LOG_MAX_BYTES {
                    break;
                }
            }
            Some(text)
        };
        let text = tokio::time::timeout(CONFIRM_WITHIN, read).await.ok()??;
        let text = String::from_utf8_lossy(&text);
        text.lines().rev().find_map(reload_error_of)
    }
}

/// The error of a "policy reload failed" log line (plain text or JSON).
fn reload_error_of(line: &str) -> Option<String> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        let msg = v
            .pointer("/fields/message")
            .or_else(|| v.get("message"))
            .and_then(|m| m.as_str())?;
        return reload_error_of(msg);
    }
    let at = line.find(FAILED_MARK)?;
    let rest = &line[at + FAILED_MARK.len()..];
    let rest = rest
        .split_once(": ")
        .map_or(rest, |(_, e)| e)
        .trim()
        .to_string();
    Some(if rest.is_empty() {
        line[at..].trim().to_string()
    } else {
        rest
    })
}

/// Runs until the daemon shuts down: after each swap, waits (at most [`CONFIRM_WITHIN`]) for
/// the environment's proxy to report the outcome.
pub async fn confirm_loop(daemon: Arc<Daemon>) {
    loop {
        // A bounded wait, so a shutdown is noticed without a wake-up.
        let _ =
            tokio::time::timeout(Duration::from_secs(1), daemon.reloads().wake.notified()).await;
        if daemon.is_shutting_down() {
            return;
        }
        let names: Vec<String> = lock(&daemon.reloads().pending).drain().collect();
        for name in names {
            let deadline = tokio::time::Instant::now() + CONFIRM_WITHIN;
            loop {
                match daemon.look_at_reloads(&name).await {
                    Look::Changed | Look::Unreadable => break,
                    Look::Baseline | Look::Same => {}
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::debug!(env = %name, "the proxy reported no reload within {CONFIRM_WITHIN:?}");
                    break;
                }
                tokio::time::sleep(CONFIRM_EVERY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_reload_counters_and_generation() {
        let m = "# HELP x\nkennel_proxy_policy_generation 4\nkennel_proxy_reloads_total{result=\"ok\"} 7\nkennel_proxy_reloads_total{result=\"failed\"} 1\n";
        assert_eq!(
            parse_counts(m),
            Some(ReloadCounts {
                ok: 7,
                failed: 1,
                generation: Some(4)
            })
        );
        assert_eq!(parse_counts("nothing"), None);
    }

    #[test]
    fn finds_the_error_of_a_rejected_reload() {
        assert_eq!(
            reload_error_of(
                "2026-11-30T00:00:00Z ERROR kennel_proxy::shared: policy reload failed, keeping the previous policy: /etc/kennel/policy/policy.toml:3:1: unknown key"
            )
            .as_deref(),
            Some("/etc/kennel/policy/policy.toml:3:1: unknown key")
        );
        assert_eq!(
            reload_error_of(
                r#"{"level":"ERROR","fields":{"message":"policy reload failed, keeping the previous policy: bad: x"}}"#
            )
            .as_deref(),
            Some("bad: x")
        );
        assert_eq!(reload_error_of("policy reloaded generation=3"), None);
    }
}
