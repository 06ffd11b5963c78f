//! Ephemeral environments: `kennel up --ttl DUR` (removed when the deadline passes, also one
//! that passed while the daemon was down: the deadline is the record's creation time plus the
//! TTL) and `kennel up --rm` (removed once its last exec session has ended).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::registry::{Daemon, expires_unix};

/// How often deadlines and ended sessions are looked at.
pub const EXPIRY_TICK: Duration = Duration::from_secs(1);

impl Daemon {
    /// Removes the environments whose TTL has run out at `now` and the `--rm` ones whose last
    /// session has ended; returns each removed name with why. A removal that fails (the name is
    /// busy, the engine is down) is tried again on the next tick.
    pub async fn expire_envs(&self, now: SystemTime) -> Vec<(String, String)> {
        let now_unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut due = Vec::new();
        for name in self.state().names().unwrap_or_default() {
            let Ok(Some(record)) = self.state().read_record(&name) else {
                continue;
            };
            // A creation still running is not expired under its feet.
            if matches!(self.state().creating(&name), Ok(Some(_))) {
                continue;
            }
            if let Some(t) = expires_unix(&record)
                && now_unix >= t
            {
                let ttl = record.request.spec.ttl_secs.unwrap_or(0);
                due.push((
                    name,
                    format!(
                        "its --ttl {} ran out",
                        humantime::format_duration(Duration::from_secs(ttl))
                    ),
                ));
            }
        }
        for name in self.sessions().take_detached() {
            if !due.iter().any(|(n, _)| *n == name) {
                due.push((name, "--rm: its last exec session ended".to_string()));
            }
        }
        let mut removed = Vec::new();
        for (name, why) in due {
            match self.remove_because(&name, false, &why).await {
                Ok(_) => removed.push((name, why)),
                Err(crate::error::ApiError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(env = %name, error = %e, reason = %why, "cannot remove an expired environment; trying again");
                    if why.starts_with("--rm") {
                        self.sessions().remove_when_detached(&name);
                    }
                }
            }
        }
        removed
    }
}

/// Runs [`Daemon::expire_envs`] every [`EXPIRY_TICK`] (the first at once: deadlines that passed
/// while the daemon was down) until the daemon shuts down.
pub fn spawn(daemon: Arc<Daemon>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EXPIRY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if daemon.is_shutting_down() {
                return;
            }
            daemon.expire_envs(SystemTime::now()).await;
        }
    })
}
