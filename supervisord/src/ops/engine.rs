//! The engine watch: notices that the container engine went away and came back
//! (`systemctl restart docker`, a Docker upgrade, an engine that was not up when the daemon
//! started) and reconciles again ([`Daemon::reconcile_with`] in
//! [`ReconcileMode::EngineBack`]): containers the restart left stopped are started again
//! (unless `kennel stop` stopped them), leftovers are removed, environments a request is
//! working on are left alone, and a `reconciled` event says what was done.
//!
//! It is a task of its own rather than a step of the health monitor's tick: that tick asks
//! the engine only about environments with `[health]` rules, and can spend up to a minute in
//! one environment's `[health] command`, so it neither pings the engine nor would notice
//! promptly. Losing the engine is noticed by [`Backend::engine_gone`] (for Docker an idle
//! event stream that the engine's exit breaks; see there why that signal), not by polling,
//! so no second poller runs while the engine is up; only while it is away is it pinged, every
//! `retry`, until it answers.
//!
//! [`Backend::engine_gone`]: kennel_container::backend::Backend::engine_gone

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::{Event, EventNow, kind};
use crate::registry::{Daemon, ReconcileMode};

/// How often the engine is asked whether it is back while it is away.
pub const RETRY: Duration = Duration::from_secs(1);
/// At least this long between two reconciles: an event stream that keeps breaking (something
/// in front of the socket) must not turn into back-to-back reconciles. A real restart in that
/// time is reconciled once the time is up.
pub const MIN_SPACING: Duration = Duration::from_secs(10);

/// [`spawn_with`] with [`RETRY`] and [`MIN_SPACING`].
pub fn spawn(daemon: Arc<Daemon>) -> tokio::task::JoinHandle<()> {
    spawn_with(daemon, RETRY, MIN_SPACING)
}

/// Watches the engine until the daemon shuts down (or the task is aborted): each time it is
/// lost and answers again, one reconcile; pings every `retry` while it is away; reconciles at
/// least `spacing` apart.
pub fn spawn_with(
    daemon: Arc<Daemon>,
    retry: Duration,
    spacing: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_reconcile: Option<Instant> = None;
        loop {
            // While the engine answers, this waits; `Err` means it does not answer now (also
            // at start when the start-up reconcile could not reach it).
            match daemon.backend().engine_gone().await {
                Ok(()) => tracing::warn!("lost the engine; reconciling once it answers again"),
                Err(e) => {
                    tracing::warn!(error = %e, "the engine does not answer; reconciling once it does")
                }
            }
            let lost = Instant::now();
            if !wait_for_engine(&daemon, retry).await {
                return;
            }
            if let Some(t) = last_reconcile {
                tokio::time::sleep(spacing.saturating_sub(t.elapsed())).await;
            }
            tracing::info!(
                away_ms = lost.elapsed().as_millis() as u64,
                "the engine answers again; reconciling"
            );
            if !reconcile_until_done(&daemon, retry).await {
                return;
            }
            last_reconcile = Some(Instant::now());
        }
    })
}

/// Pings every `retry` until the engine answers (`true`) or the daemon shuts down (`false`).
async fn wait_for_engine(daemon: &Daemon, retry: Duration) -> bool {
    loop {
        if daemon.is_shutting_down() {
            return false;
        }
        if daemon.backend().ping().await.is_ok() {
            return true;
        }
        tokio::time::sleep(retry).await;
    }
}

/// Reconciles until it succeeds (`true`) or the daemon shuts down (`false`). The engine may go
/// again in the middle; then this waits for it once more. The first failure is an event (the
/// start-up reconcile's failure is one too), later ones are only logged.
async fn reconcile_until_done(daemon: &Daemon, retry: Duration) -> bool {
    let mut told = false;
    loop {
        if daemon.is_shutting_down() {
            return false;
        }
        match daemon.reconcile_with(ReconcileMode::EngineBack).await {
            Ok(report) => {
                tracing::info!(
                    kept = report.kept.len(),
                    started = ?report.started,
                    removed_orphans = ?report.removed_orphans,
                    removed_incomplete = ?report.removed_incomplete,
                    missing = ?report.missing,
                    skipped_busy = ?report.skipped_busy,
                    not_repaired = ?report.not_repaired,
                    "reconciled with the engine after it came back"
                );
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reconcile after the engine came back failed; trying again");
                if !told {
                    told = true;
                    daemon.event(
                        Event::now(
                            None,
                            kind::RECONCILED,
                            format!(
                                "reconcile with the engine after it came back failed: {e}; trying again"
                            ),
                        )
                        .with("trigger", ReconcileMode::EngineBack.trigger())
                        .with("error", e.to_string()),
                    );
                }
                tokio::time::sleep(retry).await;
                if !wait_for_engine(daemon, retry).await {
                    return false;
                }
            }
        }
    }
}
