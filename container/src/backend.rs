//! The engine seam: everything the daemon needs from a container engine. [`crate::docker`] is the
//! Docker implementation, [`crate::fake`] an in-memory one for the daemon's unit tests.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWrite;

use crate::error::BackendError;
use crate::spec::EnvSpec;

/// Label: the environment's name.
pub const LABEL_ENV: &str = "dev.kennel.env";
/// Label: the object's role (`network`, `egress-network`, `proxy`, `sandbox`, `service`).
pub const LABEL_ROLE: &str = "dev.kennel.role";
/// Label: `true` on every object kennel manages.
pub const LABEL_MANAGED: &str = "dev.kennel.managed";
/// Label: the service name on service containers.
pub const LABEL_SERVICE: &str = "dev.kennel.service";
/// Label (in [`EnvPlan::state_labels`], put there by the daemon): the uid of the caller who asked
/// for the environment. The backend reads host files on that caller's behalf only if they are the
/// caller's (`agent_config_copy`), so a daemon running as root reads nothing for a caller that the
/// caller could not read.
pub const LABEL_CREATED_BY: &str = "dev.kennel.created-by";
/// Label: the workspace (absolute host path) on the sandbox and the home volume; tells whose an
/// environment name is.
pub const LABEL_WORKSPACE: &str = "dev.kennel.workspace";

/// Label (in [`EnvPlan::state_labels`], put there by the daemon for `kennel up --egress-only`):
/// the environment has its network, proxy, services, image and home but no sandbox container;
/// the IDE's dev container (`kennel devcontainer init`) takes the sandbox's place.
pub const LABEL_EGRESS_ONLY: &str = "dev.kennel.egress-only";
/// Role label of the IDE's dev container (`.devcontainer/kennel/devcontainer.json`).
pub const ROLE_IDE: &str = "ide";
/// Role label of an egress profile's proxy container (`kennel-<env>-proxy-<profile>`).
pub const ROLE_PROFILE_PROXY: &str = "profile-proxy";
/// Label: the egress profile a [`ROLE_PROFILE_PROXY`] container serves.
pub const LABEL_PROFILE: &str = "dev.kennel.profile";

/// A boxed, sendable future (keeps [`Backend`] usable as `Arc<dyn Backend>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything the daemon needs from a container engine.
pub trait Backend: Send + Sync + 'static {
    /// Creates the networks, proxy container, sandbox and services for `plan`, all labelled
    /// `dev.kennel.env=<name>`, `dev.kennel.role=<role>`, `dev.kennel.managed=true`, and starts
    /// them. Removes everything it created if a step fails. [`BackendError::AlreadyExists`] if
    /// any object of the environment exists.
    fn create_env<'a>(
        &'a self,
        plan: &'a EnvPlan,
    ) -> BoxFuture<'a, Result<EnvStatus, BackendError>>;
    /// Every environment found by its labels.
    fn list_envs(&self) -> BoxFuture<'_, Result<Vec<EnvStatus>, BackendError>>;
    /// One environment, `None` if no object carries its label.
    fn inspect_env<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<EnvStatus>, BackendError>>;
    /// Removes every object labelled with the environment's name (containers first, then
    /// networks). Idempotent: removing an absent environment is `Ok`.
    fn remove_env<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BackendError>>;
    /// Removes what outlives [`Backend::remove_env`]: the environment's home volume
    /// (`kennel down --purge`). Idempotent. The default has nothing to remove.
    fn purge_env<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        let _ = name;
        Box::pin(async { Ok(()) })
    }
    /// Stops every container of the environment, keeping them, their networks and the home
    /// volume (`kennel stop`). [`BackendError::NotFound`] when nothing carries its label. The
    /// default refuses (a backend that cannot stop must say so, not pretend).
    fn stop_env<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<EnvStatus, BackendError>> {
        Box::pin(async move {
            Err(BackendError::InvalidPlan {
                env: name.to_string(),
                message: "this backend cannot stop environments".into(),
            })
        })
    }
    /// Starts the stopped containers of the environment, proxy first (`kennel start`, and
    /// `kennel up` on a stopped environment). [`BackendError::NotFound`] when nothing carries its
    /// label. The default refuses.
    fn start_env<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<EnvStatus, BackendError>> {
        Box::pin(async move {
            Err(BackendError::InvalidPlan {
                env: name.to_string(),
                message: "this backend cannot start environments".into(),
            })
        })
    }
    /// The workspace label of the environment's home volume, when one is kept (an environment
    /// removed without `--purge` still owns its name through it). The default keeps none.
    fn kept_home<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, BackendError>> {
        let _ = name;
        Box::pin(async { Ok(None) })
    }
    /// Resource usage of the sandbox (for the health monitor and `kennel stats`); `None` when
    /// the environment or its sandbox does not exist. The default reports nothing.
    fn stats<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<EnvStats>, BackendError>> {
        let _ = name;
        Box::pin(async { Ok(None) })
    }
    /// Recreates the environment's containers from `plan` (`kennel refresh`): the workspace (a
    /// bind mount), the home volume and the policy directory are kept, everything inside the
    /// containers' own filesystems (`/tmp`, installed packages) is dropped. The default removes
    /// the containers and networks ([`Backend::remove_env`], which keeps the home volume) and
    /// creates them again.
    fn refresh_env<'a>(
        &'a self,
        plan: &'a EnvPlan,
    ) -> BoxFuture<'a, Result<EnvStatus, BackendError>> {
        Box::pin(async move {
            self.remove_env(&plan.spec.name).await?;
            self.create_env(plan).await
        })
    }
    /// Per-container resource usage of the environment (`kennel stats`). The default reports
    /// no containers.
    fn container_stats<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ContainerStats>, BackendError>> {
        let _ = name;
        Box::pin(async { Ok(Vec::new()) })
    }
    /// The proxy's Prometheus text from its admin `/metrics` (reached on the egress side), `None`
    /// when the proxy does not run. The default has none.
    fn proxy_metrics<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, BackendError>> {
        let _ = name;
        Box::pin(async { Ok(None) })
    }
    /// The output of one of the environment's containers (`kennel logs`), as stdout/stderr
    /// chunks; with `follow` the stream continues until the container stops or the stream is
    /// dropped. The default refuses.
    fn logs<'a>(
        &'a self,
        name: &'a str,
        req: LogsRequest,
    ) -> BoxFuture<'a, Result<ExecOutputStream, BackendError>> {
        let _ = req;
        Box::pin(async move {
            Err(BackendError::InvalidPlan {
                env: name.to_string(),
                message: "this backend cannot show logs".into(),
            })
        })
    }
    /// What `kennel doctor` asks of the engine: version, cgroup limit support, the subnets
    /// networks already use, the images present. The default refuses.
    fn engine_facts(&self) -> BoxFuture<'_, Result<EngineFacts, BackendError>> {
        Box::pin(async {
            Err(BackendError::InvalidPlan {
                env: String::new(),
                message: "this backend reports no engine facts".into(),
            })
        })
    }
    /// The gateway addresses of the environment's networks (the isolation self-test checks
    /// the sandbox cannot connect to them). The default knows none.
    fn env_gateways<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, BackendError>> {
        let _ = name;
        Box::pin(async { Ok(Vec::new()) })
    }
    /// The container the IDE's dev container must be (`kennel devcontainer init`): the sandbox's
    /// create body for `plan` (image built and user resolved exactly as for the sandbox), with
    /// the IDE role label. The default refuses.
    fn ide_container<'a>(
        &'a self,
        plan: &'a EnvPlan,
    ) -> BoxFuture<'a, Result<bollard::models::ContainerCreateBody, BackendError>> {
        Box::pin(async move {
            Err(BackendError::InvalidPlan {
                env: plan.spec.name.clone(),
                message: "this backend cannot describe an IDE container".into(),
            })
        })
    }
    /// The isolation settings of every container attached to the environment's internal
    /// network (for [`crate::ide::weaknesses`]). The default knows none.
    fn network_members<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<crate::ide::Member>, BackendError>> {
        let _ = name;
        Box::pin(async { Ok(Vec::new()) })
    }
    /// Runs a command in the sandbox. Output arrives tagged stdout/stderr; the exit code after.
    fn exec<'a>(
        &'a self,
        name: &'a str,
        req: ExecRequest,
    ) -> BoxFuture<'a, Result<ExecSession, BackendError>>;
    /// `kennel bench`: starts the benchmark origin (`kennel-proxy bench origin`, from the
    /// proxy's image) on the environment's egress network; returns where it and the proxy are.
    /// Labelled with the environment (so `kennel down` removes it too) and role
    /// [`crate::bench::ROLE_ORIGIN`]. The default refuses.
    fn bench_start_origin<'a>(
        &'a self,
        name: &'a str,
        req: crate::bench::OriginRequest,
    ) -> BoxFuture<'a, Result<crate::bench::BenchEndpoints, BackendError>> {
        let _ = req;
        Box::pin(async move {
            Err(BackendError::InvalidPlan {
                env: name.to_string(),
                message: "this backend cannot run benchmarks".into(),
            })
        })
    }
    /// `kennel bench`: runs `kennel-proxy bench client ARGS..` to completion in a short-lived
    /// container on `path` (the sandbox's network namespace, or the egress network) and
    /// returns its output; the container is removed afterwards. The default refuses.
    fn bench_run_client<'a>(
        &'a self,
        name: &'a str,
        req: crate::bench::ClientRequest,
    ) -> BoxFuture<'a, Result<ExecResult, BackendError>> {
        let _ = req;
        Box::pin(async move {
            Err(BackendError::InvalidPlan {
                env: name.to_string(),
                message: "this backend cannot run benchmarks".into(),
            })
        })
    }
    /// `kennel bench`: removes every benchmark container of the environment; returns how many
    /// there were. Idempotent. The default has none.
    fn bench_cleanup<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<usize, BackendError>> {
        let _ = name;
        Box::pin(async { Ok(0) })
    }
    /// `Ok` when the engine answers now. The default lists the environments.
    fn ping(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move { self.list_envs().await.map(|_| ()) })
    }
    /// Waits while the engine that answers now keeps running, and resolves `Ok` once it has
    /// gone away (stopped or restarted; it may already be back). `Err` at once when the engine
    /// does not answer now. The daemon's engine watch reconciles after each such loss. The
    /// default asks [`Backend::ping`] every [`ENGINE_POLL`], which misses a restart faster
    /// than that; an engine with a connection that breaks when it stops does better
    /// ([`crate::docker`]'s event stream).
    fn engine_gone(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(poll_until_gone(self, ENGINE_POLL))
    }
}

/// How often [`Backend::engine_gone`]'s default asks the engine whether it is still there.
pub const ENGINE_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// [`Backend::engine_gone`] by asking [`Backend::ping`] every `every`: `Err` if the first
/// ping fails, `Ok` when a later one does.
pub async fn poll_until_gone<B: Backend + ?Sized>(
    backend: &B,
    every: std::time::Duration,
) -> Result<(), BackendError> {
    backend.ping().await?;
    loop {
        tokio::time::sleep(every).await;
        if backend.ping().await.is_err() {
            return Ok(());
        }
    }
}

/// What to create for one environment.
#[derive(Debug, Clone)]
pub struct EnvPlan {
    /// The validated spec.
    pub spec: EnvSpec,
    /// Host directory with the effective policy (mounted read-only into the proxy at
    /// [`crate::hardening::PROXY_POLICY_DIR`]); must hold `policy.toml`.
    pub policy_dir: PathBuf,
    /// The proxy image (from [`crate::image::ensure_proxy_image`]).
    pub proxy_image: String,
    /// Extra labels put on every object (e.g. the daemon's spec hash, creation time).
    pub state_labels: Vec<(String, String)>,
    /// Receives progress lines of the creation (the image build's output), if anyone listens.
    pub progress: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// Host directory the proxy writes its access log into (mounted read-write into the proxy
    /// only, at [`crate::hardening::PROXY_LOG_DIR`]; never into the sandbox, and not inside the
    /// read-only, watched policy directory). `None`: the access log goes to the proxy's stdout.
    pub access_log_dir: Option<PathBuf>,
}

impl EnvPlan {
    /// The policy directory of egress profile `profile` (mounted read-only into its proxy):
    /// beside [`EnvPlan::policy_dir`], see [`crate::policy_dir::profile_policy_dir`].
    pub fn profile_policy_dir(&self, profile: &str) -> PathBuf {
        crate::policy_dir::profile_policy_dir(&self.policy_dir, profile)
    }

    /// The access-log directory of egress profile `profile`'s proxy (beside
    /// [`EnvPlan::access_log_dir`]), when the plan has one.
    pub fn profile_access_log_dir(&self, profile: &str) -> Option<PathBuf> {
        self.access_log_dir
            .as_deref()
            .map(|d| crate::policy_dir::profile_log_dir(d, profile))
    }

    /// Whether the plan is `kennel up --egress-only`'s: no sandbox container
    /// ([`LABEL_EGRESS_ONLY`] among the state labels).
    pub fn egress_only(&self) -> bool {
        self.state_labels
            .iter()
            .any(|(k, v)| k == LABEL_EGRESS_ONLY && v == "true")
    }
}

/// Coarse state of an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvState {
    /// Proxy, sandbox and every service are running.
    Running,
    /// Some containers run, others do not.
    Degraded,
    /// No container runs.
    Stopped,
    /// Labelled objects exist but the sandbox or proxy is missing.
    Incomplete,
}

/// One container of an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// Container name, e.g. `kennel-foo-sandbox`.
    pub name: String,
    /// Role label (`proxy`, `sandbox`, `service`).
    pub role: String,
    /// Engine id.
    pub id: String,
    /// Image reference.
    pub image: String,
    /// Engine state (`running`, `exited`, …).
    pub state: String,
    /// Human status (`Up 3 minutes`).
    pub status: String,
}

/// An environment as found in the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvStatus {
    /// Environment name.
    pub name: String,
    /// Coarse state.
    pub state: EnvState,
    /// Its containers.
    pub containers: Vec<ContainerStatus>,
    /// The internal network's name.
    pub network: String,
    /// `http://proxy:8888` style address the sandbox uses, when the proxy exists.
    pub proxy_address: Option<String>,
    /// The sandbox's creation time (RFC 3339 or engine-provided), if known.
    pub created: Option<String>,
    /// The sandbox's labels (includes the plan's `state_labels`).
    pub labels: HashMap<String, String>,
}

/// Resource usage of an environment's sandbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvStats {
    /// Memory in use, page cache excluded (as `docker stats` shows it).
    pub memory_usage_bytes: Option<u64>,
    /// The memory limit.
    pub memory_limit_bytes: Option<u64>,
    /// Cumulative CPU time in nanoseconds.
    pub cpu_total_ns: Option<u64>,
    /// Processes/threads now.
    pub pids: Option<u64>,
    /// When the sandbox started (engine's RFC 3339 string).
    pub started_at: Option<String>,
    /// The image's `HEALTHCHECK` as the engine runs it; `None` when the image has none.
    #[serde(default)]
    pub healthcheck: Option<ImageHealth>,
}

/// The engine's view of a container's `HEALTHCHECK`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageHealth {
    /// `starting`, `healthy`, `unhealthy`.
    pub status: String,
    /// Failed checks in a row.
    pub failing_streak: u32,
    /// The last check's output (trimmed), if any.
    pub last_output: Option<String>,
}

impl EnvStats {
    /// Memory use as a percentage of the limit.
    pub fn memory_percent(&self) -> Option<f64> {
        match (self.memory_usage_bytes, self.memory_limit_bytes) {
            (Some(u), Some(l)) if l > 0 => Some(u as f64 * 100.0 / l as f64),
            _ => None,
        }
    }
}

pub use kennel_api::ops::ContainerStats;

/// The engine as `kennel doctor` sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineFacts {
    /// Engine version (`20.10.24`).
    pub version: String,
    /// API version.
    pub api_version: String,
    /// Memory limits are enforced.
    pub memory_limit: bool,
    /// Pids limits are enforced.
    pub pids_limit: bool,
    /// CPU quotas are enforced.
    pub cpu_quota: bool,
    /// cgroup version (`1`, `2`), when reported.
    pub cgroup_version: Option<String>,
    /// IPv4 subnets of existing networks (CIDR).
    pub network_subnets: Vec<String>,
    /// Tags of the images present.
    pub image_tags: Vec<String>,
}

/// Whose output `kennel logs` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum LogsTarget {
    /// The sandbox container.
    Sandbox,
    /// The proxy container (its access log is JSON lines).
    Proxy,
    /// A service container, by service name.
    Service(String),
    /// The proxy container of an egress profile, by profile name (its access log is JSON
    /// lines, like the proxy's).
    ProfileProxy(String),
}

impl LogsTarget {
    /// The container's name in environment `env`.
    pub fn container(&self, env: &str) -> String {
        match self {
            LogsTarget::Sandbox => names::sandbox(env),
            LogsTarget::Proxy => names::proxy(env),
            LogsTarget::Service(s) => names::service(env, s),
            LogsTarget::ProfileProxy(p) => names::profile_proxy(env, p),
        }
    }
}

/// What `kennel logs` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsRequest {
    /// Whose output.
    pub target: LogsTarget,
    /// Keep streaming new output.
    pub follow: bool,
    /// Only output since this Unix time (seconds).
    pub since_unix: Option<i64>,
}

/// A command to run in the sandbox: the daemon's exec request body, run as it is (one type from
/// the CLI to the engine, defined in the wire-types crate).
pub use kennel_api::ExecRequest;

/// A chunk of a running command's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutput {
    /// Bytes written to stdout (or the TTY).
    Stdout(Bytes),
    /// Bytes written to stderr.
    Stderr(Bytes),
}

/// Output stream of an exec.
pub type ExecOutputStream = Pin<Box<dyn Stream<Item = Result<ExecOutput, BackendError>> + Send>>;
/// Stdin writer of an exec.
pub type ExecStdin = Pin<Box<dyn AsyncWrite + Send>>;

/// Resizes an exec's TTY: `(rows, cols)`.
pub type ResizeFn =
    Box<dyn Fn(u16, u16) -> BoxFuture<'static, Result<(), BackendError>> + Send + Sync>;

/// Resolves the exit code once the output stream has ended.
pub struct ExitHandle {
    fut: Box<dyn FnOnce() -> BoxFuture<'static, Result<i64, BackendError>> + Send>,
}

impl ExitHandle {
    /// Wraps a function producing the exit-code future.
    pub fn new(
        f: impl FnOnce() -> BoxFuture<'static, Result<i64, BackendError>> + Send + 'static,
    ) -> Self {
        ExitHandle { fut: Box::new(f) }
    }

    /// The exit code. Call after the output stream has ended (it waits for the process).
    pub async fn code(self) -> Result<i64, BackendError> {
        (self.fut)().await
    }
}

impl std::fmt::Debug for ExitHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExitHandle")
    }
}

/// A running command: output chunks tagged stdout/stderr, an optional stdin writer, and the exit
/// code once the output has ended.
pub struct ExecSession {
    /// Output, until the process ends.
    pub output: ExecOutputStream,
    /// Stdin, when requested (drop or shut it down to send EOF).
    pub stdin: Option<ExecStdin>,
    /// The exit code, to be awaited after `output` ended.
    pub exit: ExitHandle,
    /// Resizes the TTY (no-op without a TTY): `(rows, cols)`.
    pub resize: Option<ResizeFn>,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession")
            .field("stdin", &self.stdin.is_some())
            .finish_non_exhaustive()
    }
}

/// Everything a finished command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecResult {
    /// All stdout bytes.
    pub stdout: Vec<u8>,
    /// All stderr bytes.
    pub stderr: Vec<u8>,
    /// Exit code.
    pub exit_code: i64,
}

impl ExecResult {
    /// Stdout as (lossy) UTF-8.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// Stderr as (lossy) UTF-8.
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

impl ExecSession {
    /// Drains the output (stdin is closed first) and waits for the exit code.
    pub async fn collect(mut self) -> Result<ExecResult, BackendError> {
        use futures_util::StreamExt;
        drop(self.stdin.take());
        let mut res = ExecResult::default();
        while let Some(chunk) = self.output.next().await {
            match chunk? {
                ExecOutput::Stdout(b) => res.stdout.extend_from_slice(&b),
                ExecOutput::Stderr(b) => res.stderr.extend_from_slice(&b),
            }
        }
        res.exit_code = self.exit.code().await?;
        Ok(res)
    }
}

/// Names of an environment's Docker objects.
pub mod names {
    /// The internal network.
    pub fn network(env: &str) -> String {
        format!("kennel-{env}")
    }
    /// The internal network of egress profile `profile`: its proxy (alias `proxy-<profile>`)
    /// and the services that use it, never the sandbox (so the sandbox cannot reach the
    /// profile's proxy and borrow its allowlist).
    pub fn profile_network(env: &str, profile: &str) -> String {
        format!("kennel-{env}-net-{profile}")
    }
    /// The proxy's egress network.
    pub fn egress_network(env: &str) -> String {
        format!("kennel-{env}-egress")
    }
    /// The proxy container.
    pub fn proxy(env: &str) -> String {
        format!("kennel-{env}-proxy")
    }
    /// The proxy container of egress profile `profile` (`[egress.profiles.NAME]`).
    pub fn profile_proxy(env: &str, profile: &str) -> String {
        format!("kennel-{env}-proxy-{profile}")
    }
    /// The sandbox container.
    pub fn sandbox(env: &str) -> String {
        format!("kennel-{env}-sandbox")
    }
    /// A service container.
    pub fn service(env: &str, service: &str) -> String {
        format!("kennel-{env}-svc-{service}")
    }
    /// The IDE's dev container (`kennel devcontainer init`).
    pub fn ide(env: &str) -> String {
        format!("kennel-{env}-ide")
    }
    /// The home volume (kept by `kennel down`, removed by `kennel down --purge`).
    pub fn home_volume(env: &str) -> String {
        format!("kennel-{env}-home")
    }
    /// A compose service's named volume (kept by `kennel down`, removed by `--purge`).
    pub fn service_volume(env: &str, volume: &str) -> String {
        format!("kennel-{env}-vol-{volume}")
    }
    /// The short-lived, never started container that initialises a new home volume.
    pub fn home_init(env: &str) -> String {
        format!("kennel-{env}-home-init")
    }
}
