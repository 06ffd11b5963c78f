//! `GET /v1/stats` and `GET /v1/envs/{name}/stats`: what an environment uses now.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kennel_container::backend::ExecRequest;
use kennel_container::spec::validate_env_name;

use crate::error::ApiError;
use crate::registry::Daemon;
use crate::state::EnvRecord;

/// The most directory entries the workspace walk visits; beyond it the figure is a lower bound
/// (said in `warnings`) so a huge tree cannot keep a stats request busy for minutes.
pub const MAX_WALK_ENTRIES: u64 = 2_000_000;
/// How long measuring the home directory (a `du` in the sandbox) may take.
const HOME_DU_TIMEOUT: Duration = Duration::from_secs(10);

pub use kennel_api::ops::{EnvUsage, ProxyCounts};

/// Sums `kennel_proxy_decisions_total` by decision from Prometheus text.
pub fn proxy_counts(metrics: &str) -> ProxyCounts {
    let mut c = ProxyCounts::default();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("kennel_proxy_decisions_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(v) = value.trim().parse::<u64>() else {
            continue;
        };
        if labels.contains("decision=\"allow\"") {
            c.allowed += v;
        } else if labels.contains("decision=\"deny\"") {
            c.denied += v;
        }
    }
    c
}

/// Disk use of the tree at `root` (allocated blocks, symlinks not followed, other file systems
/// not entered), and whether the walk stopped at [`MAX_WALK_ENTRIES`].
pub fn disk_usage(root: &Path) -> std::io::Result<(u64, bool)> {
    let top = std::fs::symlink_metadata(root)?;
    let dev = top.dev();
    let mut total = top.blocks() * 512;
    let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
    let mut seen: u64 = 0;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            // Unreadable subdirectories (the sandbox's own modes) are skipped, not fatal.
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_WALK_ENTRIES {
                return Ok((total, true));
            }
            let Ok(md) = entry.metadata() else { continue };
            if md.dev() != dev {
                continue;
            }
            total += md.blocks() * 512;
            if md.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok((total, false))
}

impl Daemon {
    /// `GET /v1/stats`: [`Daemon::usage`] of every environment this daemon manages.
    pub async fn usage_all(&self) -> Result<Vec<EnvUsage>, ApiError> {
        let mut out = Vec::new();
        for info in self.list().await? {
            out.push(self.usage(&info.name).await?);
        }
        Ok(out)
    }

    /// `GET /v1/envs/{name}/stats`.
    pub async fn usage(&self, name: &str) -> Result<EnvUsage, ApiError> {
        validate_env_name(name).map_err(|_| ApiError::NotFound(name.to_string()))?;
        let record = self.state().read_record(name)?;
        let Some(status) = self.managed_status(name, record.as_ref()).await? else {
            if record.is_some() {
                return Ok(EnvUsage {
                    name: name.to_string(),
                    state: "missing".into(),
                    ..Default::default()
                });
            }
            return Err(ApiError::NotFound(name.to_string()));
        };
        let state = self.info(status, record.as_ref()).state;
        let mut u = EnvUsage {
            name: name.to_string(),
            state,
            ..Default::default()
        };
        let (containers, metrics) = tokio::join!(
            self.backend().container_stats(name),
            self.backend().proxy_metrics(name)
        );
        match containers {
            Ok(c) => u.containers = c,
            Err(e) => u.warnings.push(format!("container figures: {e}")),
        }
        match metrics {
            Ok(m) => u.proxy = m.as_deref().map(proxy_counts),
            Err(e) => u.warnings.push(format!("proxy counts: {e}")),
        }
        if let Some(r) = &record {
            self.record_usage(r, &mut u).await;
        }
        Ok(u)
    }

    async fn record_usage(&self, r: &EnvRecord, u: &mut EnvUsage) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        u.age_seconds = Some(now.saturating_sub(r.created_unix));
        let ws = r.request.spec.workspace.clone();
        match tokio::task::spawn_blocking(move || disk_usage(&ws)).await {
            Ok(Ok((bytes, capped))) => {
                u.workspace_bytes = Some(bytes);
                if capped {
                    u.warnings.push(format!(
                        "workspace: more than {MAX_WALK_ENTRIES} entries; the disk figure counts the first ones only"
                    ));
                }
            }
            Ok(Err(e)) => u.warnings.push(format!(
                "workspace {}: {e}",
                r.request.spec.workspace.display()
            )),
            Err(e) => u.warnings.push(format!("workspace walk failed: {e}")),
        }
        let sandbox_runs = u
            .containers
            .iter()
            .any(|c| c.role == "sandbox" && c.state == "running");
        if sandbox_runs {
            match self.home_usage(&r.name, &r.request.spec.home).await {
                Ok(b) => u.home_bytes = Some(b),
                Err(e) => u
                    .warnings
                    .push(format!("home {}: {e}", r.request.spec.home)),
            }
        }
    }

    /// `du -skx HOME` in the sandbox: the home volume is only reachable through a container, and
    /// the sandbox already mounts it. The figure comes from inside the sandbox, so it is
    /// informational, not evidence.
    async fn home_usage(&self, env: &str, home: &str) -> Result<u64, String> {
        let req = ExecRequest {
            cmd: vec!["du".into(), "-skx".into(), home.to_string()],
            workdir: Some("/".into()),
            ..Default::default()
        };
        let run = async {
            let session = self.backend().exec(env, req).await?;
            session.collect().await
        };
        let res = tokio::time::timeout(HOME_DU_TIMEOUT, run)
            .await
            .map_err(|_| format!("`du` did not finish within {HOME_DU_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        if matches!(res.exit_code, 126 | 127) {
            return Err("the sandbox image has no `du`, so home disk use is not measured".into());
        }
        let out = res.stdout_str();
        out.split_whitespace()
            .next()
            .and_then(|k| k.parse::<u64>().ok())
            .map(|k| k * 1024)
            .ok_or_else(|| {
                format!(
                    "`du -skx {home}` exited {} with {:?}",
                    res.exit_code,
                    res.stderr_str().trim()
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_allow_and_deny_decisions() {
        let text = "# HELP x\nkennel_proxy_decisions_total{kind=\"connect\",decision=\"allow\",reason=\"rule\"} 3\nkennel_proxy_decisions_total{kind=\"http\",decision=\"deny\",reason=\"x } y\"} 2\nkennel_proxy_decisions_total{kind=\"connect\",decision=\"deny\",reason=\"z\"} 5\nkennel_proxy_bytes_total{direction=\"up\"} 9\n";
        assert_eq!(
            proxy_counts(text),
            ProxyCounts {
                allowed: 3,
                denied: 7
            }
        );
    }

    #[test]
    fn disk_usage_sees_a_written_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (before, _) = disk_usage(dir.path()).expect("walk");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/f"), vec![7u8; 3 << 20]).expect("write");
        let (after, capped) = disk_usage(dir.path()).expect("walk");
        assert!(!capped);
        assert!(after >= before + (3 << 20), "{before} -> {after}");
    }
}
