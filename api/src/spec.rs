//! Plain-data parts of the environment spec that travel over the wire unchanged (inside
//! [`crate::types::SpecDoc`]). They are defined here so the wire types need not depend on
//! kennel-container; kennel-container re-exports each at its old path
//! (`kennel_container::spec::ServiceRun`, `kennel_container::devcontainer::BuildSpec`, …).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where notifications appear in the sandbox when kennel.toml has no `[notify] dir`.
pub const DEFAULT_NOTIFY_DIR: &str = "/workspace/.notifications";

/// `[notify]`: the sandbox's notification directory (the only host directory mounted besides
/// the workspace and the listed credentials) and whether denial bursts notify too.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifySpec {
    /// Absolute path inside the sandbox ([`DEFAULT_NOTIFY_DIR`] by default).
    pub dir: String,
    /// A burst of denials by the proxy notifies too.
    pub on_denials: bool,
}

impl Default for NotifySpec {
    fn default() -> Self {
        NotifySpec {
            dir: DEFAULT_NOTIFY_DIR.to_string(),
            on_denials: false,
        }
    }
}

/// An image built from the workspace (`devcontainer.json` `build`, or `[build]` in kennel.toml).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSpec {
    /// Absolute host path of the build context (inside the workspace).
    pub context: PathBuf,
    /// Absolute host path of the Dockerfile (inside the workspace).
    pub dockerfile: PathBuf,
    /// Build arguments (`--build-arg`), sorted by name.
    #[serde(default)]
    pub args: Vec<(String, String)>,
    /// Target stage (`--target`).
    #[serde(default)]
    pub target: Option<String>,
}

/// A lifecycle command run in the sandbox, as its user, after creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleCommand {
    /// Where it came from, e.g. `postCreateCommand` or `postCreateCommand.npm`.
    pub key: String,
    /// The argv (a string command becomes `sh -c STRING`).
    pub argv: Vec<String>,
}

/// The compose settings of a service that kennel applies (compose import).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRun {
    /// Entrypoint override.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `user` (as compose gives it; services may run as root inside their own container).
    #[serde(default)]
    pub user: Option<String>,
    /// Per-environment named volumes (Docker volume `kennel-<env>-vol-<name>`).
    #[serde(default)]
    pub volumes: Vec<ServiceVolume>,
    /// Bind mounts of paths inside the workspace.
    #[serde(default)]
    pub binds: Vec<ServiceBind>,
    /// Health check.
    #[serde(default)]
    pub healthcheck: Option<ServiceHealthcheck>,
    /// Services started (and, with `healthy`, healthy) before this one.
    #[serde(default)]
    pub depends_on: Vec<DependsOn>,
    /// Built from the workspace instead of pulled; `image` is then informational.
    #[serde(default)]
    pub build: Option<BuildSpec>,
    /// Read-only root file system.
    #[serde(default)]
    pub read_only: bool,
    /// Capabilities dropped on top of kennel's kennel-container's `hardening::SERVICE_CAP_DROP`.
    #[serde(default)]
    pub cap_drop: Vec<String>,
}

/// A named volume mounted into a service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceVolume {
    /// The compose volume name (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
    pub name: String,
    /// Absolute path inside the service.
    pub target: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// A host path inside the workspace bind-mounted into a service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceBind {
    /// Absolute host path (inside the workspace, symlinks resolved).
    pub source: PathBuf,
    /// Absolute path inside the service.
    pub target: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// A service's health check (Docker's `HEALTHCHECK`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceHealthcheck {
    /// `["CMD", …]`, `["CMD-SHELL", "…"]` or `["NONE"]` (disabled).
    pub test: Vec<String>,
    /// Between checks, in milliseconds (0 = Docker's default).
    #[serde(default)]
    pub interval_ms: u64,
    /// Per check, in milliseconds (0 = Docker's default).
    #[serde(default)]
    pub timeout_ms: u64,
    /// Failures before unhealthy (0 = Docker's default).
    #[serde(default)]
    pub retries: u32,
    /// Grace period after start, in milliseconds.
    #[serde(default)]
    pub start_period_ms: u64,
}

/// A `depends_on` entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependsOn {
    /// The service depended on.
    pub service: String,
    /// `condition: service_healthy`: wait until its health check passes, not only started.
    #[serde(default)]
    pub healthy: bool,
}

/// How an environment's own Docker engine (`[docker]` in kennel.toml) runs. There is no default:
/// each mode is a different risk, chosen on purpose (docs/threat-model.md, "Docker inside an
/// environment").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DockerMode {
    /// A rootless engine: `dockerd` in a user namespace (rootlesskit, slirp4netns), run by the
    /// sandbox's own uid on the host; its root is no host root.
    Rootless,
    /// A rootful engine with host-level privileges (`SYS_ADMIN`, `NET_ADMIN`, no seccomp
    /// filter): whoever drives it can reach the host.
    Privileged,
}

impl DockerMode {
    /// The name used in kennel.toml and in output (`rootless`, `privileged`).
    pub fn as_str(self) -> &'static str {
        match self {
            DockerMode::Rootless => "rootless",
            DockerMode::Privileged => "privileged",
        }
    }

    /// One line on what the mode risks, for `kennel up`, `kennel doctor` and `kennel inspect`.
    pub fn risk(self) -> &'static str {
        match self {
            DockerMode::Rootless => {
                "rootless engine: its root is the sandbox's uid on the host, but the engine container keeps SYS_ADMIN for newuidmap and runs without seccomp filter; the agent controls it fully"
            }
            DockerMode::Privileged => {
                "PRIVILEGED engine: the agent drives a root engine with SYS_ADMIN and no seccomp filter, which is a path to the host (treat the environment as host root)"
            }
        }
    }
}

impl std::fmt::Display for DockerMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[docker]`: a Docker engine of the environment's own, reached from the sandbox through a Unix
/// socket (`DOCKER_HOST`), whose egress goes through the `dind` egress profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerSpec {
    /// How the engine runs.
    pub mode: DockerMode,
}
