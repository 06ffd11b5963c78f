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
pub use kennel_api::ExecRequest;

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
    /// [`kennel_container::spec::EnvSpec::name_is_default`]).
    #[serde(default)]
    pub name_is_default: bool,
    /// The workspace's image to build (devcontainer.json `build` or kennel.toml `[build]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<kennel_container::devcontainer::BuildSpec>,
    /// devcontainer.json's user given by name, resolved from the image when created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// devcontainer.json lifecycle commands, run in the sandbox after creation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lifecycle: Vec<kennel_container::devcontainer::LifecycleCommand>,
    /// `[notify]` (absent in records written before notifications existed: the defaults).
    #[serde(default)]
    pub notify: kennel_container::spec::NotifySpec,
    /// Services the sandbox waits for (the compose dev service's `depends_on`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sandbox_depends_on: Vec<kennel_container::spec::DependsOn>,
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

/// Wire form of [`kennel_container::env::SandboxEnv`]: `[name, value]` pairs per source.
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
        // Names only: values may be secrets.
        let e: kennel_container::env::SandboxEnv = self.clone().into();
        e.fmt(f)
    }
}

impl From<EnvDoc> for kennel_container::env::SandboxEnv {
    fn from(d: EnvDoc) -> Self {
        kennel_container::env::SandboxEnv {
            dotenv: d.dotenv,
            container_env: d.container_env,
            env_file: d.env_file,
            table: d.table,
        }
    }
}

/// Wire form of [`kennel_container::spec::HostMount`].
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

/// Wire form of [`kennel_policy::Origin`].
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
    /// `egress = "proxy"`: the environment's proxy (`egress_profile` is then unset).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub egress_proxy: bool,
    /// Compose settings (entrypoint, volumes, healthcheck, depends_on, …).
    #[serde(default, skip_serializing_if = "is_default_run")]
    pub run: kennel_container::spec::ServiceRun,
}

fn is_default_run(r: &kennel_container::spec::ServiceRun) -> bool {
    *r == kennel_container::spec::ServiceRun::default()
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
    /// Copied into the home volume at creation.
    #[serde(default)]
    pub agent_config_copy: Vec<PathBuf>,
}

mod convert {
    use std::time::Duration;

    use kennel_container::spec::{
        CredentialMounts, Egress, EnvSpec, HealthSpec, HostMount, Resources, ServiceEgress,
        ServiceSpec,
    };
    use kennel_policy::LegacyEnv;

    use super::{CredentialsDoc, EnvDoc, HealthDoc, LegacyDoc, MountDoc, ServiceDoc, SpecDoc};

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
                    upstream_proxy_type: l.upstream_proxy_type.clone(),
                    upstream_proxy_host: l.upstream_proxy_host.clone(),
                    upstream_proxy_port: l.upstream_proxy_port.clone(),
                    origins: l
                        .origins
                        .iter()
                        .map(|(k, o)| {
                            (
                                (*k).to_string(),
                                super::OriginDoc {
                                    file: o.file.clone(),
                                    line: o.line,
                                    col: o.col,
                                },
                            )
                        })
                        .collect(),
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
                            ServiceEgress::None | ServiceEgress::Proxy => None,
                            ServiceEgress::Profile(p) => Some(p.clone()),
                        },
                        env: v.env.clone(),
                        command: v.command.clone(),
                        egress_proxy: v.egress == ServiceEgress::Proxy,
                        run: v.run.clone(),
                    })
                    .collect(),
                max_age_secs: s.health.max_age.map(|d| d.as_secs()),
                max_disk_percent: s.health.max_disk_percent,
                max_memory_percent: s.health.max_memory_percent,
                health: HealthDoc {
                    command: s.health.command.clone(),
                    healthcheck: s.health.healthcheck,
                    failures: s.health.failures,
                    interval_secs: s.health.interval.map(|d| d.as_secs().max(1)),
                    max_defer_secs: s.health.max_defer.map(|d| d.as_secs()),
                },
                // Not part of the spec file: `kennel up` sets them from its flags.
                ttl_secs: None,
                remove_on_exit: false,
                credentials: CredentialsDoc {
                    git_config: s.credentials.git_config.clone(),
                    ssh_dir: s.credentials.ssh_dir.clone(),
                    agent_config: s.credentials.agent_config.clone(),
                    git_token_file: s.credentials.git_token_file.clone(),
                    agent_config_copy: s.credentials.agent_config_copy.clone(),
                },
                command: s.command.clone(),
                env: EnvDoc {
                    dotenv: s.env.dotenv.clone(),
                    container_env: s.env.container_env.clone(),
                    env_file: s.env.env_file.clone(),
                    table: s.env.table.clone(),
                },
                mounts: s
                    .mounts
                    .iter()
                    .map(|m| MountDoc {
                        source: m.source.clone(),
                        target: m.target.clone(),
                        rw: m.rw,
                    })
                    .collect(),
                name_is_default: s.name_is_default,
                build: s.build.clone(),
                user_name: s.user_name.clone(),
                lifecycle: s.lifecycle.clone(),
                notify: s.notify.clone(),
                sandbox_depends_on: s.sandbox_depends_on.clone(),
            }
        }
    }

    impl From<SpecDoc> for EnvSpec {
        fn from(d: SpecDoc) -> EnvSpec {
            let mut legacy = LegacyEnv::default();
            legacy.upstream_socks5 = d.legacy.upstream_socks5;
            legacy.upstream_http = d.legacy.upstream_http;
            legacy.upstream_proxy = d.legacy.upstream_proxy;
            legacy.upstream_proxy_type = d.legacy.upstream_proxy_type;
            legacy.upstream_proxy_host = d.legacy.upstream_proxy_host;
            legacy.upstream_proxy_port = d.legacy.upstream_proxy_port;
            for (name, o) in d.legacy.origins {
                // Unknown names are dropped: they can only carry a position, never a value.
                legacy.set_origin(
                    &name,
                    kennel_policy::Origin {
                        file: o.file,
                        line: o.line,
                        col: o.col,
                    },
                );
            }
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
                        egress: match v.egress_profile {
                            Some(p) => ServiceEgress::Profile(p),
                            None if v.egress_proxy => ServiceEgress::Proxy,
                            None => ServiceEgress::None,
                        },
                        env: v.env,
                        command: v.command,
                        run: v.run,
                    })
                    .collect(),
                health: HealthSpec {
                    max_age: d.max_age_secs.map(Duration::from_secs),
                    max_disk_percent: d.max_disk_percent,
                    max_memory_percent: d.max_memory_percent,
                    command: d.health.command,
                    healthcheck: d.health.healthcheck,
                    failures: d.health.failures,
                    interval: d.health.interval_secs.map(Duration::from_secs),
                    max_defer: d.health.max_defer_secs.map(Duration::from_secs),
                },
                credentials: CredentialMounts {
                    git_config: d.credentials.git_config,
                    ssh_dir: d.credentials.ssh_dir,
                    agent_config: d.credentials.agent_config,
                    git_token_file: d.credentials.git_token_file,
                    agent_config_copy: d.credentials.agent_config_copy,
                },
                command: d.command,
                env: d.env.into(),
                mounts: d
                    .mounts
                    .into_iter()
                    .map(|m| HostMount {
                        source: m.source,
                        target: m.target,
                        rw: m.rw,
                    })
                    .collect(),
                name_is_default: d.name_is_default,
                build: d.build,
                user_name: d.user_name,
                lifecycle: d.lifecycle,
                sandbox_depends_on: d.sandbox_depends_on,
                // Warnings are the CLI's to show; the daemon has nothing to add.
                warnings: Vec::new(),
                notify: d.notify,
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

/// `GET /v1/envs/{name}/ide`: what the IDE's dev container must be (`kennel devcontainer init`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdeContainer {
    /// The environment.
    pub name: String,
    /// devcontainer.json without `initializeCommand` (the CLI adds it: it knows its own path and
    /// socket), from [`kennel_container::ide::devcontainer_json`].
    pub devcontainer: serde_json::Value,
}

#[cfg(test)]
mod compose_wire_tests {
    use kennel_container::spec::{
        DependsOn, EnvSpec, ServiceEgress, ServiceHealthcheck, ServiceRun, ServiceSpec,
        ServiceVolume,
    };

    use super::SpecDoc;

    /// A compose service's settings and the sandbox's depends_on survive the trip to the daemon.
    #[test]
    fn compose_services_round_trip_through_the_wire_form() {
        let mut spec = EnvSpec::parse_str(
            "name = \"wire\"\n",
            std::path::Path::new("/kennel.toml"),
            std::path::Path::new("/"),
        )
        .expect("spec");
        spec.services.push(ServiceSpec {
            name: "db".into(),
            image: "postgres:16".into(),
            egress: ServiceEgress::Proxy,
            env: vec![("A".into(), "1".into())],
            command: Some(vec!["postgres".into()]),
            run: ServiceRun {
                entrypoint: Some(vec!["/e".into()]),
                working_dir: Some("/srv".into()),
                user: Some("999".into()),
                volumes: vec![ServiceVolume {
                    name: "pgdata".into(),
                    target: "/data".into(),
                    read_only: false,
                }],
                healthcheck: Some(ServiceHealthcheck {
                    test: vec!["CMD".into(), "true".into()],
                    interval_ms: 500,
                    timeout_ms: 0,
                    retries: 3,
                    start_period_ms: 0,
                }),
                depends_on: vec![DependsOn {
                    service: "x".into(),
                    healthy: true,
                }],
                ..Default::default()
            },
        });
        spec.sandbox_depends_on = vec![DependsOn {
            service: "db".into(),
            healthy: true,
        }];
        let json = serde_json::to_string(&SpecDoc::from(&spec)).expect("serialise");
        let back: EnvSpec = serde_json::from_str::<SpecDoc>(&json)
            .expect("deserialise")
            .into();
        assert_eq!(back.services, spec.services);
        assert_eq!(back.sandbox_depends_on, spec.sandbox_depends_on);
    }
}
