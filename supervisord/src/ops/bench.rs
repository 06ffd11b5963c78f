//! `POST /v1/envs/{name}/bench` (`kennel bench ENV`): egress throughput and connection rate
//! from inside the environment's sandbox through its proxy, and the same without the proxy hop.
//!
//! 1. A benchmark origin (`kennel-proxy bench origin`, the proxy's own image) starts on the
//!    environment's egress network.
//! 2. The origin's `IP:PORT` is allowed in the environment's policy for a bounded time, like
//!    `kennel allow --for` (recorded in `changes.jsonl` with the caller's uid; the expiry is
//!    the backstop if the daemon dies mid-run), and the daemon waits for the proxy to reload.
//! 3. A client in the sandbox's network namespace measures one bounded download and a bounded
//!    run of new connections through the proxy (CONNECT tunnels).
//! 4. The allow entry is removed again at once (and the proxy's reload awaited), before
//!    anything else happens.
//! 5. A client on the egress network measures the same against the origin directly.
//! 6. Every benchmark container is removed — also when a step failed, and also when the
//!    caller went away (the run is a tracked task of its own, bounded in time).

use std::time::{Duration, Instant};

use kennel_container::bench::{ClientPath, ClientRequest, OriginRequest};
use kennel_container::spec::validate_env_name;

use crate::auth::Peer;
use crate::error::ApiError;
use crate::policy_ops::EntrySpec;
use crate::registry::{Daemon, LABEL_CREATED_BY, LABEL_DAEMON};

pub use kennel_api::ops::{
    BenchReport, BenchRequest, MAX_BYTES, MAX_CLIENTS, MAX_CONNS, MAX_SECS, PathReport,
};

/// How long the proxy may take to pick up a policy change.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The note on the temporary allow entry (kept in `changes.jsonl`).
const NOTE: &str = "kennel bench: the benchmark origin, for the duration of the run";

/// The daemon's checks of a [`BenchRequest`] (the type is the wire-types crate's).
pub trait BenchRequestCheck {
    /// Checks every bound; the error names the field and its range.
    fn validate(&self) -> Result<(), ApiError>;
    /// How long one client run may take.
    fn client_timeout(&self) -> Duration;
}

impl BenchRequestCheck for BenchRequest {
    fn validate(&self) -> Result<(), ApiError> {
        self.check_bounds().map_err(ApiError::BadRequest)
    }

    /// How long one client run may take: the download at a pessimistic 10 MB/s, the rate
    /// phase, and start-up.
    fn client_timeout(&self) -> Duration {
        Duration::from_secs(30 + self.bytes / 10_000_000) + Duration::from_secs_f64(self.secs)
    }
}

/// `kennel_proxy_reloads_total{result="ok"}` from the proxy's Prometheus text.
pub fn reloads_ok(metrics: &str) -> Option<u64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix("kennel_proxy_reloads_total{result=\"ok\"} ")
            .and_then(|v| v.trim().parse().ok())
    })
}

fn parse_report(
    path: &str,
    res: &kennel_container::backend::ExecResult,
) -> Result<PathReport, ApiError> {
    if res.exit_code != 0 {
        return Err(ApiError::Internal(format!(
            "the benchmark client ({path}) exited {}: {}",
            res.exit_code,
            res.stderr_str().trim()
        )));
    }
    let out = res.stdout_str();
    let line = out.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
    serde_json::from_str(line).map_err(|e| {
        ApiError::Internal(format!(
            "the benchmark client ({path}) printed no report ({e}): {:?}",
            out.trim()
        ))
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

impl Daemon {
    /// The proxy's count of successful reloads, `None` when its metrics cannot be read.
    async fn proxy_reloads(&self, name: &str) -> Option<u64> {
        match self.backend().proxy_metrics(name).await {
            Ok(Some(m)) => reloads_ok(&m),
            _ => None,
        }
    }

    /// Waits until the proxy has reloaded since it reported `before` reloads.
    async fn wait_reload(&self, name: &str, before: Option<u64>) -> Result<(), ApiError> {
        let Some(before) = before else {
            return Err(ApiError::Internal(format!(
                "cannot read the proxy's reload count of {name:?} (its admin /metrics), so a policy change cannot be confirmed"
            )));
        };
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        loop {
            if self.proxy_reloads(name).await.is_some_and(|n| n > before) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ApiError::Internal(format!(
                    "the proxy of {name:?} did not reload its policy within {RELOAD_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `POST /v1/envs/{name}/bench`.
    pub async fn bench(
        &self,
        peer: &Peer,
        name: &str,
        req: BenchRequest,
    ) -> Result<BenchReport, ApiError> {
        req.validate()?;
        validate_env_name(name).map_err(|_| ApiError::NotFound(name.to_string()))?;
        let record = self.state().read_record(name)?;
        let Some(status) = self.managed_status(name, record.as_ref()).await? else {
            return Err(ApiError::NotFound(name.to_string()));
        };
        if record.is_none() {
            return Err(ApiError::NotFound(name.to_string()));
        }
        if status.state != kennel_container::EnvState::Running {
            return Err(ApiError::Backend(
                kennel_container::BackendError::NotRunning {
                    env: name.to_string(),
                    state: format!("{:?}", status.state).to_lowercase(),
                },
            ));
        }
        let _busy = self.mark_busy(name).await?;
        // Containers of an interrupted earlier run.
        self.backend().bench_cleanup(name).await?;
        let mut report = BenchReport {
            env: name.to_string(),
            ..Default::default()
        };
        let mut allowed: Option<EntrySpec> = None;
        let outcome = self
            .bench_run(peer, name, &req, &mut report, &mut allowed)
            .await;
        // Undo, whatever happened: the allow entry first (the hole), then the containers.
        let mut cleanup_errors = Vec::new();
        if let Some(entry) = allowed.take()
            && let Err(e) = self.end_bench_allow(peer, name, &entry).await
        {
            cleanup_errors.push(format!("removing the temporary allow entry: {e}"));
        }
        match self.backend().bench_cleanup(name).await {
            Ok(_) => {}
            Err(e) => cleanup_errors.push(format!("removing the benchmark containers: {e}")),
        }
        match (outcome, cleanup_errors.is_empty()) {
            (Ok(()), true) => Ok(report),
            (Ok(()), false) => Err(ApiError::Internal(format!(
                "the benchmark ran but did not clean up: {}",
                cleanup_errors.join("; ")
            ))),
            (Err(e), true) => Err(e),
            (Err(e), false) => Err(ApiError::Internal(format!(
                "{e}; and cleaning up failed: {}",
                cleanup_errors.join("; ")
            ))),
        }
    }

    async fn end_bench_allow(
        &self,
        peer: &Peer,
        name: &str,
        entry: &EntrySpec,
    ) -> Result<(), ApiError> {
        let before = self.proxy_reloads(name).await;
        let changed = self
            .end_temporary_allow(peer, name, entry, "kennel bench ended")
            .await?;
        if changed {
            self.wait_reload(name, before).await?;
        }
        Ok(())
    }

    async fn bench_run(
        &self,
        peer: &Peer,
        name: &str,
        req: &BenchRequest,
        report: &mut BenchReport,
        allowed: &mut Option<EntrySpec>,
    ) -> Result<(), ApiError> {
        let timeout = req.client_timeout();
        // Both client runs, the origin's start and two reloads, with room to spare: the
        // longest the allow entry and the origin can outlive a daemon that died mid-run.
        let budget = 2 * timeout.as_secs() + 2 * RELOAD_TIMEOUT.as_secs() + 60;
        let labels = vec![
            (
                LABEL_DAEMON.to_string(),
                self.state().instance().to_string(),
            ),
            (LABEL_CREATED_BY.to_string(), peer.uid.to_string()),
        ];
        let ends = self
            .backend()
            .bench_start_origin(
                name,
                OriginRequest {
                    max_secs: budget,
                    labels: labels.clone(),
                },
            )
            .await?;
        report.origin = ends.origin.to_string();
        let before = self.proxy_reloads(name).await;
        *allowed = self
            .temporary_allow(peer, name, &ends.origin.to_string(), budget, NOTE)
            .await?;
        if allowed.is_some() {
            report.temporary_allow = Some(ends.origin.to_string());
            self.wait_reload(name, before).await?;
        }
        let args = |via_proxy: bool| {
            let mut a = vec![
                "--target".to_string(),
                ends.origin.to_string(),
                "--bytes".into(),
                req.bytes.to_string(),
                "--secs".into(),
                req.secs.to_string(),
                "--max-conns".into(),
                req.max_conns.to_string(),
                "--clients".into(),
                req.clients.to_string(),
            ];
            if via_proxy {
                a.extend(["--proxy".to_string(), ends.proxy.to_string()]);
            }
            a
        };
        let through = self
            .backend()
            .bench_run_client(
                name,
                ClientRequest {
                    path: ClientPath::Sandbox,
                    image: ends.image.clone(),
                    args: args(true),
                    timeout,
                    labels: labels.clone(),
                },
            )
            .await?;
        report.proxy = parse_report("through the proxy", &through)?;
        // The hole closes before the comparison run.
        if let Some(entry) = allowed.take() {
            self.end_bench_allow(peer, name, &entry).await?;
        }
        let direct = self
            .backend()
            .bench_run_client(
                name,
                ClientRequest {
                    path: ClientPath::Egress,
                    image: ends.image.clone(),
                    args: args(false),
                    timeout,
                    labels,
                },
            )
            .await?;
        report.direct = parse_report("direct", &direct)?;
        report.throughput_ratio = ratio(report.proxy.mb_per_s, report.direct.mb_per_s);
        report.connection_rate_ratio = ratio(
            report.proxy.connections_per_s,
            report.direct.connections_per_s,
        );
        for (p, r) in [("proxy", &report.proxy), ("direct", &report.direct)] {
            if r.errors > 0 {
                report.warnings.push(format!(
                    "{p}: {} of {} connections failed in the rate phase",
                    r.errors,
                    r.errors + r.connections
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bounds_name_the_field() {
        assert!(BenchRequest::default().validate().is_ok());
        for (r, field) in [
            (
                BenchRequest {
                    bytes: 0,
                    ..Default::default()
                },
                "bytes",
            ),
            (
                BenchRequest {
                    secs: 11.0,
                    ..Default::default()
                },
                "secs",
            ),
            (
                BenchRequest {
                    max_conns: 0,
                    ..Default::default()
                },
                "max_conns",
            ),
            (
                BenchRequest {
                    clients: 99,
                    ..Default::default()
                },
                "clients",
            ),
        ] {
            let e = r.validate().expect_err(field).to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn reads_the_reload_count() {
        let m = "# HELP x\nkennel_proxy_reloads_total{result=\"ok\"} 7\nkennel_proxy_reloads_total{result=\"failed\"} 1\n";
        assert_eq!(reloads_ok(m), Some(7));
        assert_eq!(reloads_ok("nothing"), None);
    }
}
