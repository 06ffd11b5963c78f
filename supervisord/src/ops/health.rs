//! The health monitor: every [`HEALTH_INTERVAL`], per environment, the `[health]` rules of its
//! spec — sandbox age, workspace disk use, memory use of its limit. A rule that fires refreshes
//! the environment ([`Daemon::refresh`]); while an exec session is attached the refresh waits,
//! at most [`MAX_DEFER`]. Each firing is logged as an event naming the rule and its measured
//! value; `GET /v1/envs/{name}/health` shows every rule's last reading.
//!
//! A rule applies only when its key is set in `[health]` (an absent key is no rule): a refresh
//! drops the containers' own state, so it never happens unasked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kennel_container::spec::EnvSpec;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::registry::Daemon;

/// How often the monitor looks at every environment.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(60);
/// The longest a fired rule's refresh waits for attached exec sessions to end.
pub const MAX_DEFER: Duration = Duration::from_secs(15 * 60);

/// One rule's last reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// `max_age`, `max_disk_percent`, `max_memory_percent`.
    pub rule: String,
    /// What was measured (`73h 2m`, `91.3%`), or why nothing could be.
    pub value: String,
    /// The configured threshold.
    pub threshold: String,
    /// Whether the reading crossed the threshold.
    pub fired: bool,
}

/// An environment's last health check.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvHealth {
    /// When it was checked (Unix seconds).
    pub checked_unix: u64,
    /// Each configured rule.
    pub readings: Vec<Reading>,
    /// Since when a due refresh waits for attached sessions (Unix seconds).
    pub deferred_since_unix: Option<u64>,
    /// What the monitor did last (`refreshed: max_age 80h > 72h`, `deferred: …`).
    pub last_action: Option<String>,
}

/// The monitor's memory: last readings per environment.
#[derive(Debug, Clone, Default)]
pub struct HealthState {
    inner: Arc<Mutex<HashMap<String, EnvHealth>>>,
}

impl HealthState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, EnvHealth>> {
        // A holder that panicked leaves whole entries (each update replaces one); keep going.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The last check of `env`.
    pub fn get(&self, env: &str) -> Option<EnvHealth> {
        self.lock().get(env).cloned()
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Percentage of the file system holding `path` in use.
fn disk_percent(path: &std::path::Path) -> Result<f64, String> {
    let s =
        nix::sys::statvfs::statvfs(path).map_err(|e| format!("statvfs {}: {e}", path.display()))?;
    let total = s.blocks() as f64;
    if total <= 0.0 {
        return Err(format!("{}: file system reports no blocks", path.display()));
    }
    Ok((total - s.blocks_free() as f64) * 100.0 / total)
}

/// What the monitor does with an environment whose rules fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing fired.
    None,
    /// Refreshed because of the named rules.
    Refreshed(String),
    /// Due, but an exec session is attached.
    Deferred(String),
    /// The refresh failed.
    Failed(String),
}

impl Daemon {
    /// `GET /v1/envs/{name}/health`.
    pub fn health_of(&self, name: &str) -> Result<EnvHealth, ApiError> {
        self.health_state()
            .get(name)
            .ok_or_else(|| ApiError::NotFound(name.to_string()))
    }

    /// One look at every recorded environment (what the monitor does each interval).
    pub async fn health_round(&self) -> Vec<(String, Action)> {
        let mut out = Vec::new();
        let Ok(names) = self.state().names() else {
            return out;
        };
        for name in names {
            let action = self.health_check(&name).await;
            out.push((name, action));
        }
        out
    }

    async fn health_check(&self, name: &str) -> Action {
        let Ok(Some(record)) = self.state().read_record(name) else {
            return Action::None;
        };
        let spec: EnvSpec = record.request.spec.clone().into();
        let h = &spec.health;
        if h.max_age.is_none() && h.max_disk_percent.is_none() && h.max_memory_percent.is_none() {
            return Action::None;
        }
        let stats = self.backend().stats(name).await.ok().flatten();
        let Some(stats) = stats else {
            // Gone or not running: nothing to measure, nothing to refresh.
            return Action::None;
        };
        let mut readings = Vec::new();
        if let Some(max) = h.max_age {
            let age = stats
                .started_at
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .and_then(|t| SystemTime::now().duration_since(t).ok());
            readings.push(match age {
                Some(a) => Reading {
                    rule: "max_age".into(),
                    value: humantime::format_duration(Duration::from_secs(a.as_secs())).to_string(),
                    threshold: humantime::format_duration(max).to_string(),
                    fired: a > max,
                },
                None => Reading {
                    rule: "max_age".into(),
                    value: "unknown (no start time)".into(),
                    threshold: humantime::format_duration(max).to_string(),
                    fired: false,
                },
            });
        }
        if let Some(max) = h.max_disk_percent {
            let r = disk_percent(&spec.workspace);
            readings.push(Reading {
                rule: "max_disk_percent".into(),
                value: r
                    .as_ref()
                    .map_or_else(|e| e.clone(), |p| format!("{p:.1}%")),
                threshold: format!("{max}%"),
                fired: r.is_ok_and(|p| p > f64::from(max)),
            });
        }
        if let Some(max) = h.max_memory_percent {
            let p = stats.memory_percent();
            readings.push(Reading {
                rule: "max_memory_percent".into(),
                value: p.map_or_else(|| "unknown".into(), |p| format!("{p:.1}%")),
                threshold: format!("{max}%"),
                fired: p.is_some_and(|p| p > f64::from(max)),
            });
        }
        let fired: Vec<String> = readings
            .iter()
            .filter(|r| r.fired)
            .map(|r| format!("{} {} > {}", r.rule, r.value, r.threshold))
            .collect();
        let prev = self.health_state().get(name).unwrap_or_default();
        let mut entry = EnvHealth {
            checked_unix: now_unix(),
            readings,
            deferred_since_unix: None,
            last_action: prev.last_action.clone(),
        };
        let action = if fired.is_empty() {
            Action::None
        } else {
            let why = fired.join(", ");
            let attached = self.sessions().attached(name);
            let since = prev.deferred_since_unix.unwrap_or(entry.checked_unix);
            let waited = Duration::from_secs(entry.checked_unix.saturating_sub(since));
            if attached > 0 && waited < MAX_DEFER {
                tracing::info!(target: "kennel::event", env = %name, rules = %why, sessions = attached, "health rule fired; refresh deferred while exec sessions are attached");
                entry.deferred_since_unix = Some(since);
                Action::Deferred(why)
            } else {
                tracing::warn!(target: "kennel::event", env = %name, rules = %why, "health rule fired; refreshing");
                match self.refresh(name).await {
                    Ok(_) => Action::Refreshed(why),
                    Err(e) => {
                        tracing::error!(target: "kennel::event", env = %name, error = %e, "health refresh failed");
                        Action::Failed(format!("{why}: {e}"))
                    }
                }
            }
        };
        entry.last_action = match &action {
            Action::None => entry.last_action,
            Action::Refreshed(w) => Some(format!("refreshed: {w}")),
            Action::Deferred(w) => Some(format!("deferred: {w}")),
            Action::Failed(w) => Some(format!("refresh failed: {w}")),
        };
        self.health_state().lock().insert(name.to_string(), entry);
        action
    }
}

/// Runs [`Daemon::health_round`] every `every` until the task is dropped/aborted.
pub fn spawn(daemon: Arc<Daemon>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick fires at once; the daemon has just reconciled, let it settle first.
        tick.tick().await;
        loop {
            tick.tick().await;
            daemon.health_round().await;
        }
    })
}
