//! The health monitor: per environment, every `health.interval` (default [`HEALTH_INTERVAL`]),
//! the `[health]` rules of its spec — sandbox age, workspace disk use, memory use of its limit,
//! `[health] command` or the image's `HEALTHCHECK` failing `health.failures` (default 3) times
//! in a row. A rule that fires refreshes the environment ([`Daemon::refresh_because`]); while
//! an exec session is attached the refresh waits, at most `health.max_defer` (default
//! [`MAX_DEFER`]). Each firing is an event ([`crate::events`]) naming the rule and its measured
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
use crate::events::{Event, EventNow, kind};
use crate::registry::Daemon;

/// How often the monitor looks at an environment unless its `health.interval` says otherwise.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(60);
/// The longest a fired rule's refresh waits for attached exec sessions to end, unless the
/// environment's `health.max_defer` says otherwise.
pub const MAX_DEFER: Duration = Duration::from_secs(15 * 60);
/// How often the monitor checks whose interval has passed.
pub const TICK: Duration = Duration::from_secs(1);
/// Failures in a row of `[health] command` / the image's `HEALTHCHECK` that fire the rule,
/// unless `health.failures` says otherwise.
pub const DEFAULT_FAILURES: u32 = 3;

/// One rule's last reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// `max_age`, `max_disk_percent`, `max_memory_percent`, `command`, `healthcheck`.
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
    /// `[health] command` failures in a row.
    #[serde(default)]
    pub command_failures: u32,
    /// The environment's `health.interval`, seconds.
    #[serde(default)]
    pub interval_secs: u64,
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

    /// One look at the environments whose `health.interval` has passed since their last look
    /// (what the monitor does every [`TICK`]).
    pub async fn health_due_round(&self) -> Vec<(String, Action)> {
        let mut out = Vec::new();
        let Ok(names) = self.state().names() else {
            return out;
        };
        for name in names {
            // Reloads the daemon did not cause (a hand edit, an include) become events too.
            self.look_at_reloads_if_due(&name).await;
            let action = self.health_check_if_due(&name, false).await;
            out.push((name, action));
        }
        out
    }

    async fn health_check(&self, name: &str) -> Action {
        self.health_check_if_due(name, true).await
    }

    async fn health_check_if_due(&self, name: &str, force: bool) -> Action {
        let Ok(Some(record)) = self.state().read_record(name) else {
            return Action::None;
        };
        // A creation still running is not looked at.
        if matches!(self.state().creating(name), Ok(Some(_))) {
            return Action::None;
        }
        let spec: EnvSpec = record.request.spec.clone().into();
        let h = &spec.health;
        if !h.has_rules() {
            return Action::None;
        }
        let prev = self.health_state().get(name).unwrap_or_default();
        let interval = h.interval.unwrap_or(HEALTH_INTERVAL);
        if !force && prev.checked_unix > 0 && now_unix() < prev.checked_unix + interval.as_secs() {
            return Action::None;
        }
        let stats = self.backend().stats(name).await.ok().flatten();
        let Some(stats) = stats else {
            // Gone or not running: nothing to measure, nothing to refresh.
            return Action::None;
        };
        let failures = h.failures.unwrap_or(DEFAULT_FAILURES);
        let mut command_failures = prev.command_failures;
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
        if let Some(cmd) = &h.command {
            let (ok, what) = self.run_health_command(name, cmd, interval).await;
            command_failures = if ok { 0 } else { command_failures + 1 };
            readings.push(Reading {
                rule: "command".into(),
                value: format!("{command_failures} failures in a row ({what})"),
                threshold: format!("{failures} failures in a row"),
                fired: command_failures >= failures,
            });
        }
        if h.healthcheck {
            readings.push(match &stats.healthcheck {
                Some(hc) => Reading {
                    rule: "healthcheck".into(),
                    value: format!(
                        "{} failures in a row ({}{})",
                        hc.failing_streak,
                        hc.status,
                        hc.last_output
                            .as_deref()
                            .filter(|o| !o.is_empty())
                            .map(|o| format!(": {o}"))
                            .unwrap_or_default()
                    ),
                    threshold: format!("{failures} failures in a row"),
                    fired: hc.failing_streak >= failures,
                },
                None => Reading {
                    rule: "healthcheck".into(),
                    value: "the image has no HEALTHCHECK".into(),
                    threshold: format!("{failures} failures in a row"),
                    fired: false,
                },
            });
        }
        let fired: Vec<&Reading> = readings.iter().filter(|r| r.fired).collect();
        let why = fired
            .iter()
            .map(|r| format!("{} {} > {}", r.rule, r.value, r.threshold))
            .collect::<Vec<_>>()
            .join(", ");
        let now = now_unix();
        let max_defer = h.max_defer.unwrap_or(MAX_DEFER);
        let action = if fired.is_empty() {
            Action::None
        } else {
            let attached = self.sessions().attached(name);
            let since = prev.deferred_since_unix.unwrap_or(now);
            let waited = Duration::from_secs(now.saturating_sub(since));
            // One event per firing, not one per look while the refresh waits.
            if prev.deferred_since_unix.is_none() {
                for r in &fired {
                    self.event(
                        Event::now(
                            Some(name),
                            kind::HEALTH_RULE_FIRED,
                            format!(
                                "health rule {} fired on {name:?}: {} (threshold {})",
                                r.rule, r.value, r.threshold
                            ),
                        )
                        .with("rule", r.rule.clone())
                        .with("value", r.value.clone())
                        .with("threshold", r.threshold.clone()),
                    );
                }
            }
            if attached > 0 && waited < max_defer {
                if prev.deferred_since_unix.is_none() {
                    self.event(
                        Event::now(
                            Some(name),
                            kind::REFRESH_DEFERRED,
                            format!(
                                "refresh of {name:?} deferred while {attached} exec session(s) are attached (at most {})",
                                humantime::format_duration(max_defer)
                            ),
                        )
                        .with("reason", why.clone())
                        .with("sessions", attached)
                        .with("max_defer_secs", max_defer.as_secs()),
                    );
                }
                Action::Deferred(why)
            } else {
                match self.refresh_because(name, &format!("health: {why}")).await {
                    Ok(_) => {
                        command_failures = 0;
                        Action::Refreshed(why)
                    }
                    Err(e) => Action::Failed(format!("{why}: {e}")),
                }
            }
        };
        let entry = EnvHealth {
            checked_unix: now,
            readings,
            deferred_since_unix: match &action {
                Action::Deferred(_) => Some(prev.deferred_since_unix.unwrap_or(now)),
                _ => None,
            },
            last_action: match &action {
                Action::None => prev.last_action,
                Action::Refreshed(w) => Some(format!("refreshed: {w}")),
                Action::Deferred(w) => Some(format!("deferred: {w}")),
                Action::Failed(w) => Some(format!("refresh failed: {w}")),
            },
            command_failures,
            interval_secs: interval.as_secs(),
        };
        self.health_state().lock().insert(name.to_string(), entry);
        action
    }

    /// Runs `[health] command` in the sandbox (bounded by the interval, at most 60 s); whether
    /// it passed (exit 0) and what happened, for the reading.
    async fn run_health_command(
        &self,
        name: &str,
        cmd: &[String],
        interval: Duration,
    ) -> (bool, String) {
        let req = kennel_container::ExecRequest {
            cmd: cmd.to_vec(),
            ..Default::default()
        };
        let limit = interval.min(Duration::from_secs(60));
        let run = async {
            let mut session = self.backend().exec(name, req).await?;
            drop(session.stdin.take());
            session.collect().await
        };
        match tokio::time::timeout(limit, run).await {
            Ok(Ok(r)) if r.exit_code == 0 => (true, "exit 0".into()),
            Ok(Ok(r)) => {
                let out = r.stderr_str();
                let out = if out.trim().is_empty() {
                    r.stdout_str()
                } else {
                    out
                };
                let out: String = out.trim().chars().take(200).collect();
                (
                    false,
                    if out.is_empty() {
                        format!("exit {}", r.exit_code)
                    } else {
                        format!("exit {}: {out}", r.exit_code)
                    },
                )
            }
            Ok(Err(e)) => (false, format!("could not run: {e}")),
            Err(_) => (
                false,
                format!("timed out after {}", humantime::format_duration(limit)),
            ),
        }
    }
}

/// Runs [`Daemon::health_due_round`] every `every` (each environment is looked at when its
/// own `health.interval` has passed) until the task is dropped/aborted.
pub fn spawn(daemon: Arc<Daemon>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            daemon.health_due_round().await;
        }
    })
}
