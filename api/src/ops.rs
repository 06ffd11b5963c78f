//! Bodies of the daemon's operations endpoints: `kennel stats` ([`EnvUsage`]), `kennel doctor`
//! ([`Check`]) and `kennel bench` ([`BenchRequest`], [`BenchReport`]).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Resource usage of one container of an environment (`kennel stats`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// Container name.
    pub name: String,
    /// Role label (`proxy`, `sandbox`, `service`).
    pub role: String,
    /// Engine state (`running`, `exited`, …).
    pub state: String,
    /// CPU use over the engine's sampling interval, in percent of one CPU (200 = two CPUs busy).
    pub cpu_percent: Option<f64>,
    /// Memory in use, page cache excluded (as `docker stats` shows it).
    pub memory_usage_bytes: Option<u64>,
    /// The memory limit.
    pub memory_limit_bytes: Option<u64>,
    /// Processes/threads now.
    pub pids: Option<u64>,
    /// The pids limit.
    pub pids_limit: Option<u64>,
    /// Bytes received over all of the container's networks.
    pub net_rx_bytes: Option<u64>,
    /// Bytes sent over all of the container's networks.
    pub net_tx_bytes: Option<u64>,
    /// When the container started (engine's RFC 3339 string).
    pub started_at: Option<String>,
}

/// The proxy's decision counters since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyCounts {
    /// Requests and tunnels allowed.
    pub allowed: u64,
    /// Requests and tunnels denied.
    pub denied: u64,
}

/// One environment's usage (`kennel stats`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvUsage {
    /// Environment name.
    pub name: String,
    /// Coarse state (`running`, `stopped`, …).
    pub state: String,
    /// Seconds since the environment was created.
    pub age_seconds: Option<u64>,
    /// Per container: CPU, memory, pids, network.
    pub containers: Vec<ContainerStats>,
    /// Bytes the workspace occupies on the host's disk.
    pub workspace_bytes: Option<u64>,
    /// Bytes the home directory occupies (measured in the running sandbox).
    pub home_bytes: Option<u64>,
    /// The proxy's allowed/denied counts, when its admin `/metrics` answered.
    pub proxy: Option<ProxyCounts>,
    /// Figures that could not be taken, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Fine.
    Pass,
    /// Works, but worth knowing (e.g. an engine with a known CVE that kennel mitigates).
    Warn,
    /// Broken: `kennel doctor` exits 1.
    Fail,
}

/// One line of `kennel doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked (`engine`, `cgroup limits`, …).
    pub name: String,
    /// The outcome.
    pub outcome: Outcome,
    /// What was found, or what was tried.
    pub detail: String,
    /// How to fix it (for warnings and failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Check {
    /// A check with no hint.
    pub fn pass(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            outcome: Outcome::Pass,
            detail: detail.into(),
            hint: None,
        }
    }
    /// A warning with a hint.
    pub fn warn(name: &str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            outcome: Outcome::Warn,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
    /// A failure with a hint.
    pub fn fail(name: &str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            outcome: Outcome::Fail,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
}

/// The state directory: a directory, owned by `uid`, mode 0700 (it holds every environment's
/// spec and policy; nobody else may read or change them).
pub fn state_dir_check(dir: &Path, uid: u32) -> Check {
    let name = "state directory";
    let md = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) => {
            return Check::fail(
                name,
                format!("{}: {e}", dir.display()),
                format!(
                    "create it: install -d -m 0700 {} (the daemon creates it at start when it may)",
                    dir.display()
                ),
            );
        }
    };
    let mode = md.mode() & 0o7777;
    if !md.is_dir() {
        return Check::fail(
            name,
            format!("{} is not a directory", dir.display()),
            "point --state-dir at a directory",
        );
    }
    if md.uid() != uid || mode & 0o077 != 0 {
        return Check::fail(
            name,
            format!(
                "{} is owned by uid {} with mode {mode:04o}",
                dir.display(),
                md.uid()
            ),
            format!("chown {uid} {d} && chmod 0700 {d}", d = dir.display()),
        );
    }
    Check::pass(
        name,
        format!("{} (owner uid {uid}, mode {mode:04o})", dir.display()),
    )
}

/// Largest download `kennel bench` asks for.
pub const MAX_BYTES: u64 = 1 << 30;
/// Longest connection-rate phase.
pub const MAX_SECS: f64 = 10.0;
/// Most connections in the rate phase.
pub const MAX_CONNS: u64 = 200_000;
/// Most concurrent connection loops.
pub const MAX_CLIENTS: usize = 32;
/// `POST /v1/envs/{name}/bench` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BenchRequest {
    /// Bytes of the single-stream download (1..=[`MAX_BYTES`]).
    pub bytes: u64,
    /// Seconds of the connection-rate phase (above 0, at most [`MAX_SECS`]).
    pub secs: f64,
    /// Most connections in the rate phase (1..=[`MAX_CONNS`]).
    pub max_conns: u64,
    /// Concurrent connection loops (1..=[`MAX_CLIENTS`]).
    pub clients: usize,
}

impl Default for BenchRequest {
    fn default() -> Self {
        BenchRequest {
            bytes: 256 << 20,
            secs: 3.0,
            max_conns: 50_000,
            clients: 4,
        }
    }
}

impl BenchRequest {
    /// Checks every bound; the error names the field and its range (the daemon answers it as a
    /// bad request; the CLI checks before sending).
    pub fn check_bounds(&self) -> Result<(), String> {
        let bad = |m: String| Err(m);
        if !(1..=MAX_BYTES).contains(&self.bytes) {
            return bad(format!(
                "bytes {} is out of range; expected 1 to {MAX_BYTES}",
                self.bytes
            ));
        }
        if !(self.secs > 0.0 && self.secs <= MAX_SECS) {
            return bad(format!(
                "secs {} is out of range; expected more than 0 and at most {MAX_SECS}",
                self.secs
            ));
        }
        if !(1..=MAX_CONNS).contains(&self.max_conns) {
            return bad(format!(
                "max_conns {} is out of range; expected 1 to {MAX_CONNS}",
                self.max_conns
            ));
        }
        if !(1..=MAX_CLIENTS).contains(&self.clients) {
            return bad(format!(
                "clients {} is out of range; expected 1 to {MAX_CLIENTS}",
                self.clients
            ));
        }
        Ok(())
    }
}

/// What one client measured (the JSON line of `kennel-proxy bench client`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathReport {
    /// `proxy` or `direct`.
    pub path: String,
    /// Bytes downloaded on the one stream.
    pub bytes: u64,
    /// Seconds the download took.
    pub download_secs: f64,
    /// Download throughput, MB/s (10^6 bytes per second).
    pub mb_per_s: f64,
    /// Connections completed in the rate phase (connect, CONNECT when proxied, small GET,
    /// close).
    pub connections: u64,
    /// Seconds the rate phase took.
    pub connect_secs: f64,
    /// Completed connections per second.
    pub connections_per_s: f64,
    /// Failed connections in the rate phase.
    pub errors: u64,
}

/// `kennel bench` result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// The environment.
    pub env: String,
    /// The origin's address on the egress network.
    pub origin: String,
    /// The policy entry that was allowed for the run and removed after it; `None` when the
    /// policy allowed the origin already (nothing was changed).
    pub temporary_allow: Option<String>,
    /// From the sandbox, through the proxy.
    pub proxy: PathReport,
    /// From the egress network, without the proxy.
    pub direct: PathReport,
    /// `proxy.mb_per_s / direct.mb_per_s`.
    pub throughput_ratio: f64,
    /// `proxy.connections_per_s / direct.connections_per_s`.
    pub connection_rate_ratio: f64,
    /// What the run could not do cleanly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}
