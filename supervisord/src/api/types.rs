//! JSON bodies of the `/v1` API, shared by the daemon and the `kennel` CLI.

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
    /// Create response only: what the creation printed — the image build's output and the
    /// lifecycle commands' output, in order (returned whole at the end, not streamed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<String>,
}

/// `POST /v1/envs/{name}/exec`: run a command in the sandbox. The request must ask for a
/// connection upgrade to [`crate::frame::UPGRADE_PROTOCOL`]; the stream is then framed
/// ([`crate::frame`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The command and its arguments (no shell).
    pub cmd: Vec<String>,
    /// Extra environment variables, `KEY=VALUE`.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory inside the sandbox (default: the image's, normally `/workspace`).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Allocate a TTY (stdout and stderr are then one stream, delivered as stdout).
    #[serde(default)]
    pub tty: bool,
    /// Forward stdin frames to the command.
    #[serde(default)]
    pub stdin: bool,
}

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

/// Wire form of [`kennel_container::spec::EnvSpec`]; the daemon re-validates it.
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
    /// Credential mounts.
    #[serde(default)]
    pub credentials: CredentialsDoc,
    /// Sandbox command.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// The workspace's image to build (devcontainer.json `build` or kennel.toml `[build]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<kennel_container::devcontainer::BuildSpec>,
    /// devcontainer.json's user given by name, resolved from the image when created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// devcontainer.json `containerEnv`/`remoteEnv` (values stay out of logs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_env: Vec<(String, String)>,
    /// devcontainer.json lifecycle commands, run in the sandbox after creation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lifecycle: Vec<kennel_container::devcontainer::LifecycleCommand>,
}

/// Wire form of [`kennel_policy::LegacyEnv`].
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
    /// `NO_UPSTREAM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_upstream: Option<String>,
    /// `USER_WHITELIST_DOMAINS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_whitelist_domains: Option<String>,
}

/// Wire form of [`kennel_container::spec::ServiceSpec`].
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
}

/// Wire form of [`kennel_container::spec::CredentialMounts`].
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
}

mod convert {
    use std::time::Duration;

    use kennel_container::spec::{
        CredentialMounts, Egress, EnvSpec, HealthSpec, Resources, ServiceEgress, ServiceSpec,
    };
    use kennel_policy::LegacyEnv;

    use super::{CredentialsDoc, LegacyDoc, ServiceDoc, SpecDoc};

    impl From<&EnvSpec> for SpecDoc {
        fn from(s: &EnvSpec) -> SpecDoc {
            let l = &s.egress.legacy;
            SpecDoc {
                name: s.name.clone(),
                image: s.image.clone(),
                workspace: s.workspace.clone(),
                user: s.user.clone(),
                home: s.home.clone(),
                read_only_rootfs: s.read_only_rootfs,
                cpus: s.resources.cpus,
                memory_bytes: s.resources.memory_bytes,
                pids: s.resources.pids,
                nofile: s.resources.nofile,
                whitelist: s.egress.whitelist.clone(),
                upstream: s.egress.upstream.clone(),
                legacy: LegacyDoc {
                    upstream_socks5: l.upstream_socks5.clone(),
                    upstream_http: l.upstream_http.clone(),
                    upstream_proxy: l.upstream_proxy.clone(),
                    no_upstream: l.no_upstream.clone(),
                    user_whitelist_domains: l.user_whitelist_domains.clone(),
                },
                services: s
                    .services
                    .iter()
                    .map(|v| ServiceDoc {
                        name: v.name.clone(),
                        image: v.image.clone(),
                        egress_profile: match &v.egress {
                            ServiceEgress::None => None,
                            ServiceEgress::Profile(p) => Some(p.clone()),
                        },
                        env: v.env.clone(),
                        command: v.command.clone(),
                    })
                    .collect(),
                max_age_secs: s.health.max_age.map(|d| d.as_secs()),
                max_disk_percent: s.health.max_disk_percent,
                max_memory_percent: s.health.max_memory_percent,
                credentials: CredentialsDoc {
                    git_config: s.credentials.git_config.clone(),
                    ssh_dir: s.credentials.ssh_dir.clone(),
                    agent_config: s.credentials.agent_config.clone(),
                    git_token_file: s.credentials.git_token_file.clone(),
                },
                command: s.command.clone(),
                build: s.build.clone(),
                user_name: s.user_name.clone(),
                container_env: s.container_env.clone(),
                lifecycle: s.lifecycle.clone(),
            }
        }
    }

    impl From<SpecDoc> for EnvSpec {
        fn from(d: SpecDoc) -> EnvSpec {
            let mut legacy = LegacyEnv::default();
            legacy.upstream_socks5 = d.legacy.upstream_socks5;
            legacy.upstream_http = d.legacy.upstream_http;
            legacy.upstream_proxy = d.legacy.upstream_proxy;
            legacy.no_upstream = d.legacy.no_upstream;
            legacy.user_whitelist_domains = d.legacy.user_whitelist_domains;
            EnvSpec {
                name: d.name,
                image: d.image,
                workspace: d.workspace,
                user: d.user,
                home: d.home,
                read_only_rootfs: d.read_only_rootfs,
                resources: Resources {
                    cpus: d.cpus,
                    memory_bytes: d.memory_bytes,
                    pids: d.pids,
                    nofile: d.nofile,
                },
                egress: Egress {
                    whitelist: d.whitelist,
                    upstream: d.upstream,
                    legacy,
                },
                services: d
                    .services
                    .into_iter()
                    .map(|v| ServiceSpec {
                        name: v.name,
                        image: v.image,
                        egress: v
                            .egress_profile
                            .map_or(ServiceEgress::None, ServiceEgress::Profile),
                        env: v.env,
                        command: v.command,
                    })
                    .collect(),
                health: HealthSpec {
                    max_age: d.max_age_secs.map(Duration::from_secs),
                    max_disk_percent: d.max_disk_percent,
                    max_memory_percent: d.max_memory_percent,
                },
                credentials: CredentialMounts {
                    git_config: d.credentials.git_config,
                    ssh_dir: d.credentials.ssh_dir,
                    agent_config: d.credentials.agent_config,
                    git_token_file: d.credentials.git_token_file,
                },
                command: d.command,
                build: d.build,
                user_name: d.user_name,
                container_env: d.container_env,
                lifecycle: d.lifecycle,
                // Warnings are the CLI's to show; the daemon has nothing to add.
                warnings: Vec::new(),
            }
        }
    }
}

/// `POST /v1/images/proxy` and `POST /v1/images/demo-sandbox` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageBuilt {
    /// The image reference, e.g. `kennel-proxy:0123456789abcdef` or `kennel-sandbox:latest`.
    pub image: String,
}
