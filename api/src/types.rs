//! JSON bodies of the `/v1` API, shared by the daemon and the `kennel` CLI. The conversions
//! between the spec and its wire form ([`SpecDoc`]) live in `kennel_container::wire`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The API version prefix.
pub const API_PREFIX: &str = "/v1";

/// One container of an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// Docker container name (e.g. `kennel-demo-sandbox`).
    pub name: String,
    /// Role label: `proxy`, `sandbox` or `service`.
    pub role: String,
    /// Engine state (`running`, `exited` …).
    pub state: String,
    /// Image reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// An environment as the daemon sees it (`GET /v1/envs`, `GET /v1/envs/{name}`, create response).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvInfo {
    /// Environment name.
    pub name: String,
    /// Overall state (`running`, `partial`, `stopped` …, from the engine).
    pub state: String,
    /// The environment's internal network.
    pub network: String,
    /// The proxy's address on the internal network, as the sandbox uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_address: Option<String>,
    /// Creation time (engine's RFC 3339 text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The containers, proxy first.
    pub containers: Vec<ContainerInfo>,
    /// Workspace directory (from the daemon's state; absent for objects without state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<PathBuf>,
    /// Sandbox image (from the daemon's state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The environment's effective policy directory on the host (mounted read-only into the proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_dir: Option<PathBuf>,
    /// Names of the workspace's sandbox variables (`.env`, `containerEnv`, `env_file`, `[env]`);
    /// never their values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_names: Vec<String>,
    /// `kennel up` found this environment already there (same workspace) and changed nothing
    /// but starting it if it was stopped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already_existed: bool,
    /// Things the person should know before trusting the workspace on the host (e.g. a git
    /// `commondir` file the sandbox may have written).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Create response only: what the creation printed — the image build's output and the
    /// lifecycle commands' output, in order (returned whole at the end, not streamed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<String>,
    /// When the environment is removed by itself (`kennel up --ttl`; RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Removed when its last exec session ends (`kennel up --rm`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove_on_exit: bool,
    /// Egress profiles: each one's proxy container and policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<ProfileInfo>,
    /// The environment's own Docker engine (`[docker]`), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerDoc>,
}

/// The Docker engine of an environment, as `kennel inspect` and `kennel up` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DockerDoc {
    /// How it runs.
    pub mode: crate::spec::DockerMode,
    /// What that mode risks, in one line ([`crate::spec::DockerMode::risk`]).
    pub risk: String,
    /// The sandbox's `DOCKER_HOST`.
    pub docker_host: String,
}

impl DockerDoc {
    /// The document for an engine in `mode` reached at `docker_host`.
    pub fn new(mode: crate::spec::DockerMode, docker_host: &str) -> Self {
        DockerDoc {
            mode,
            risk: mode.risk().to_string(),
            docker_host: docker_host.to_string(),
        }
    }
}

/// `POST /v1/envs/{name}/stop` and `/start` bodies are empty; `DELETE /v1/envs/{name}?purge=true`
/// also removes the home volume. This is the query of that `DELETE`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoveQuery {
    /// Also remove what `down` keeps (the home volume).
    #[serde(default)]
    pub purge: bool,
}

/// `POST /v1/envs/{name}/exec`: run a command in the sandbox. The request must ask for a
/// connection upgrade to [`crate::frame::UPGRADE_PROTOCOL`]; the stream is then framed
/// ([`crate::frame`]). One type from the CLI to the engine (the container backend runs it as
/// it is), defined in the wire-types crate.
pub use crate::exec::ExecRequest;

/// `GET /v1/version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// kennel-supervisord's version.
    pub version: String,
    /// The API version (`v1`).
    pub api: String,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthInfo {
    /// `ok`, or `degraded` when the engine does not answer.
    pub status: String,
    /// Number of environments the engine reports (absent when it does not answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environments: Option<usize>,
    /// What is wrong, when degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `DELETE /v1/envs/{name}` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Removed {
    /// The removed environment.
    pub name: String,
    /// As [`EnvInfo::warnings`], checked at removal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Every error response: what went wrong and what to do next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// What to do next, when there is something to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// The last frame of a failed streaming create ([`crate::frame::FrameKind::Error`] payload, JSON):
/// the HTTP status the plain create would have answered, and its error body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamError {
    /// The HTTP status of the equivalent non-streaming answer (e.g. 409, 422).
    pub status: u16,
    /// What went wrong and what to do next.
    #[serde(flatten)]
    pub body: ErrorBody,
}

/// `POST /v1/envs` body: the spec as the CLI parsed it (as the calling user, so `~` and file
/// permissions are the caller's) plus the imported project whitelist's text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEnv {
    /// The parsed spec.
    pub spec: SpecDoc,
    /// Content of the project whitelist (`egress.whitelist`), read by the CLI; imported into the
    /// environment's effective policy directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_whitelist: Option<String>,
}

/// Wire form of `kennel_container::spec::EnvSpec` (converted in `kennel_container::wire`); the
/// daemon re-validates it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecDoc {
    /// Environment name.
    pub name: String,
    /// Sandbox image.
    pub image: String,
    /// Absolute workspace path.
    pub workspace: PathBuf,
    /// `uid:gid`.
    pub user: String,
    /// Home directory inside the sandbox.
    pub home: String,
    /// Read-only root filesystem.
    pub read_only_rootfs: bool,
    /// CPUs.
    pub cpus: f64,
    /// Memory limit in bytes.
    pub memory_bytes: u64,
    /// Process limit.
    pub pids: i64,
    /// `RLIMIT_NOFILE` (soft, hard).
    pub nofile: (u64, u64),
    /// Project whitelist path (informational; its text travels in [`CreateEnv::project_whitelist`]).
    #[serde(default)]
    pub whitelist: Option<PathBuf>,
    /// Default upstream URL.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Legacy `.env` variables.
    #[serde(default)]
    pub legacy: LegacyDoc,
    /// Egress profiles (`[egress.profiles.NAME]`), each served by its own proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_profiles: Vec<ProfileDoc>,
    /// Service containers.
    #[serde(default)]
    pub services: Vec<ServiceDoc>,
    /// Health thresholds: max age in seconds.
    #[serde(default)]
    pub max_age_secs: Option<u64>,
    /// Health thresholds: disk percentage.
    #[serde(default)]
    pub max_disk_percent: Option<u8>,
    /// Health thresholds: memory percentage.
    #[serde(default)]
    pub max_memory_percent: Option<u8>,
    /// Health rule: `[health] command` and `healthcheck`, their failure count, the monitor's
    /// interval and longest deferral.
    #[serde(default, skip_serializing_if = "HealthDoc::is_empty")]
    pub health: HealthDoc,
    /// Remove the environment this many seconds after its creation (`kennel up --ttl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Remove the environment when its last exec session ends (`kennel up --rm`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove_on_exit: bool,
    /// Credential mounts.
    #[serde(default)]
    pub credentials: CredentialsDoc,
    /// Sandbox command.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Sandbox variables by source.
    #[serde(default)]
    pub env: EnvDoc,
    /// `[[mount]]`s.
    #[serde(default)]
    pub mounts: Vec<MountDoc>,
    /// The name came from the directory name (the daemon may suffix it, see
    /// `kennel_container::spec::EnvSpec::name_is_default`).
    #[serde(default)]
    pub name_is_default: bool,
    /// The workspace's image to build (devcontainer.json `build` or kennel.toml `[build]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<crate::spec::BuildSpec>,
    /// devcontainer.json's user given by name, resolved from the image when created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// devcontainer.json lifecycle commands, run in the sandbox after creation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lifecycle: Vec<crate::spec::LifecycleCommand>,
    /// `[notify]` (absent in records written before notifications existed: the defaults).
    #[serde(default)]
    pub notify: crate::spec::NotifySpec,
    /// Services the sandbox waits for (the compose dev service's `depends_on`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sandbox_depends_on: Vec<crate::spec::DependsOn>,
    /// `[docker]`: the environment's own Docker engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<crate::spec::DockerSpec>,
}

/// Wire form of the `[health]` keys beyond the thresholds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthDoc {
    /// `[health] command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// `[health] healthcheck`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub healthcheck: bool,
    /// `[health] failures`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// `[health] interval`, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u64>,
    /// `[health] max_defer`, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_defer_secs: Option<u64>,
}

impl HealthDoc {
    /// Nothing set.
    pub fn is_empty(&self) -> bool {
        *self == HealthDoc::default()
    }
}

/// Wire form of `kennel_container::env::SandboxEnv` (converted in `kennel_container::wire`):
/// `[name, value]` pairs per source.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvDoc {
    /// `.devcontainer/.env` (other keys than the proxy settings).
    #[serde(default)]
    pub dotenv: Vec<(String, String)>,
    /// devcontainer.json `containerEnv`.
    #[serde(default)]
    pub container_env: Vec<(String, String)>,
    /// `env_file`.
    #[serde(default)]
    pub env_file: Vec<(String, String)>,
    /// `[env]`.
    #[serde(default)]
    pub table: Vec<(String, String)>,
}

impl std::fmt::Debug for EnvDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: values may be secrets and a Debug print may end up in a log (the same
        // output as kennel-container's `SandboxEnv`).
        let names = |v: &[(String, String)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        f.debug_struct("SandboxEnv")
            .field("dotenv", &names(&self.dotenv))
            .field("container_env", &names(&self.container_env))
            .field("env_file", &names(&self.env_file))
            .field("table", &names(&self.table))
            .finish()
    }
}

/// Wire form of `kennel_container::spec::HostMount` (converted in `kennel_container::wire`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountDoc {
    /// Host path.
    pub source: PathBuf,
    /// Path in the sandbox.
    pub target: String,
    /// Writable.
    #[serde(default)]
    pub rw: bool,
}

/// Wire form of `kennel_policy::LegacyEnv` (converted in `kennel_container::wire`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyDoc {
    /// `UPSTREAM_SOCKS5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_socks5: Option<String>,
    /// `UPSTREAM_HTTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_http: Option<String>,
    /// `UPSTREAM_PROXY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_proxy: Option<String>,
    /// `UPSTREAM_PROXY_TYPE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_proxy_type: Option<String>,
    /// `UPSTREAM_PROXY_HOST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_proxy_host: Option<String>,
    /// `UPSTREAM_PROXY_PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_proxy_port: Option<String>,
    /// `NO_UPSTREAM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_upstream: Option<String>,
    /// `USER_WHITELIST_DOMAINS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_whitelist_domains: Option<String>,
    /// Where each value was written (variable name → file, line, column), so the daemon's
    /// messages and the environment's `policy.toml` name the `.env` line too.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub origins: std::collections::BTreeMap<String, OriginDoc>,
}

/// Wire form of `kennel_policy::Origin` (converted in `kennel_container::wire`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginDoc {
    /// The dotenv file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: u32,
    /// 1-based column of the value.
    pub col: u32,
}

/// Wire form of `kennel_container::spec::EgressProfile` (converted in `kennel_container::wire`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileDoc {
    /// Profile name.
    pub name: String,
    /// Include files (host paths, informational; their text travels in `lists`).
    #[serde(default)]
    pub include: Vec<PathBuf>,
    /// The include files' text, in the same order, read by the CLI as the caller.
    #[serde(default)]
    pub lists: Vec<String>,
    /// Default upstream of the profile's proxy; `None`: the environment's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

/// An egress profile of a running environment, as `kennel inspect` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileInfo {
    /// Profile name.
    pub name: String,
    /// Its proxy container (`kennel-<env>-proxy-<name>`).
    pub proxy_container: String,
    /// The proxy's URL on the internal network (`http://proxy-<name>:8888`).
    pub proxy_address: String,
    /// The proxy container's engine state (`running`, …; `missing` when absent).
    pub state: String,
    /// The profile's effective policy directory on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_dir: Option<PathBuf>,
    /// Allow entries of its policy now (hosts and CIDRs, include files and `kennel allow`);
    /// `None` when the policy cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_count: Option<usize>,
    /// Services that use it (`egress = "<name>"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
}

/// Wire form of `kennel_container::spec::ServiceSpec` (converted in `kennel_container::wire`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDoc {
    /// Service name.
    pub name: String,
    /// Image.
    pub image: String,
    /// `None` for no egress, else the proxy profile's name.
    #[serde(default)]
    pub egress_profile: Option<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Command override.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// `egress = "proxy"`: the environment's proxy (`egress_profile` is then unset).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub egress_proxy: bool,
    /// Compose settings (entrypoint, volumes, healthcheck, depends_on, …).
    #[serde(default, skip_serializing_if = "is_default_run")]
    pub run: crate::spec::ServiceRun,
}

fn is_default_run(r: &crate::spec::ServiceRun) -> bool {
    *r == crate::spec::ServiceRun::default()
}

/// Wire form of `kennel_container::spec::CredentialMounts` (converted in
/// `kennel_container::wire`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsDoc {
    /// Git config file.
    #[serde(default)]
    pub git_config: Option<PathBuf>,
    /// SSH directory.
    #[serde(default)]
    pub ssh_dir: Option<PathBuf>,
    /// Agent config files/directories.
    #[serde(default)]
    pub agent_config: Vec<PathBuf>,
    /// Git token file.
    #[serde(default)]
    pub git_token_file: Option<PathBuf>,
    /// Copied into the home volume at creation.
    #[serde(default)]
    pub agent_config_copy: Vec<PathBuf>,
}

/// `POST /v1/images/proxy` and `POST /v1/images/demo-sandbox` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageBuilt {
    /// The image reference, e.g. `kennel-proxy:0123456789abcdef` or `kennel-sandbox:latest`.
    pub image: String,
}

/// `GET /v1/envs/{name}/ide`: what the IDE's dev container must be (`kennel devcontainer init`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdeContainer {
    /// The environment.
    pub name: String,
    /// devcontainer.json without `initializeCommand` (the CLI adds it: it knows its own path and
    /// socket), from `kennel_container::ide::devcontainer_json`.
    pub devcontainer: serde_json::Value,
}
