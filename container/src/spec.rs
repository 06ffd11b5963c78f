//! The environment spec: `kennel.toml` (DESIGN.md "Environments") or, when a workspace has none,
//! the seed layout of the system kennel replaces (`.devcontainer/whitelist.txt`,
//! `.devcontainer/.env`). Parsing validates everything up front; errors name file, line, column
//! and key.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use kennel_policy::LegacyEnv;

pub use crate::env::SandboxEnv;

use crate::devcontainer::{BuildSpec, LifecycleCommand};
use crate::error::SpecError;

/// Image used when neither the spec nor the caller names one.
pub const DEFAULT_IMAGE: &str = "kennel-sandbox:latest";
/// Default sandbox user (`uid:gid`): the seeds' `claude` user (1001) in group `dev` (2000).
pub const DEFAULT_USER: &str = "1001:2000";
/// Default home directory inside the sandbox (a tmpfs; the seeds' user is `claude`).
pub const DEFAULT_HOME: &str = "/home/claude";
/// Spec file name looked up in a workspace.
pub const SPEC_FILE: &str = "kennel.toml";
/// Seed layout: the project's whitelist.
pub const SEED_WHITELIST: &str = ".devcontainer/whitelist.txt";
/// Seed layout: the project's dotenv file with `UPSTREAM_SOCKS5` / `UPSTREAM_HTTP` …
pub const SEED_DOTENV: &str = ".devcontainer/.env";
/// Seed layout: the Docker-in-Docker allowlist of the system kennel replaces; it becomes the
/// include file of the egress profile [`SEED_DIND_PROFILE`] unless kennel.toml defines that one.
pub const SEED_DIND_WHITELIST: &str = ".devcontainer/dind-whitelist.txt";
/// The egress profile the seed layout's [`SEED_DIND_WHITELIST`] becomes.
pub const SEED_DIND_PROFILE: &str = "dind";
/// Names an egress profile may not have: the values `service.egress` gives other meanings, and
/// the names of the environment's own containers.
pub const RESERVED_PROFILE_NAMES: [&str; 5] = ["none", "proxy", "sandbox", "main", "default"];
/// Largest include file of an egress profile (read into the spec).
pub const MAX_PROFILE_LIST_BYTES: u64 = 1 << 20;

/// Validated environment spec.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvSpec {
    /// Environment name: `[a-z0-9][a-z0-9-]{0,39}`.
    pub name: String,
    /// Sandbox image reference.
    pub image: String,
    /// Absolute host path of the workspace, bind-mounted read-write at `/workspace`.
    pub workspace: PathBuf,
    /// `uid:gid` the sandbox runs as (numeric, non-root).
    pub user: String,
    /// devcontainer.json's user given by name: the backend replaces `user`'s uid with this
    /// user's uid from the image's `/etc/passwd` (refusing uid 0); the gid stays `user`'s.
    pub user_name: Option<String>,
    /// Home directory inside the sandbox (a tmpfs owned by `user`); `HOME` is set to it.
    pub home: String,
    /// Read-only root filesystem (tmpfs for `/tmp` and `home`).
    pub read_only_rootfs: bool,
    /// Resource limits.
    pub resources: Resources,
    /// Egress settings (the proxy's policy inputs).
    pub egress: Egress,
    /// Service containers on the environment's internal network.
    pub services: Vec<ServiceSpec>,
    /// Health thresholds (used by the daemon's monitor).
    pub health: HealthSpec,
    /// Read-only credential mounts.
    pub credentials: CredentialMounts,
    /// Sandbox command; `None` = keep the sandbox alive with `sleep infinity`-like default.
    pub command: Option<Vec<String>>,
    /// Sandbox environment variables by source (`.env`, `containerEnv`, `env_file`, `[env]`).
    pub env: SandboxEnv,
    /// Further host paths (`[[mount]]`), read-only unless `rw = true`.
    pub mounts: Vec<HostMount>,
    /// The name was derived from the directory name (neither `name` nor `--name` gave it), so
    /// the daemon may make it unique with a suffix when another workspace has it.
    pub name_is_default: bool,
    /// The workspace's own image (kennel.toml `[build]`, else devcontainer.json), built by the
    /// daemon on the environment's network; the sandbox then runs the built tag instead of
    /// `image`. See [`crate::build`].
    pub build: Option<BuildSpec>,
    /// devcontainer.json lifecycle commands, run in the sandbox as its user after creation.
    pub lifecycle: Vec<LifecycleCommand>,
    /// Warnings for the person running `kennel up` (e.g. devcontainer.json keys not applied).
    pub warnings: Vec<String>,
    /// Host notifications (`[notify]`): where the sandbox sees its notification directory.
    pub notify: NotifySpec,
    /// Services the sandbox waits for (the compose file's dev service's `depends_on`).
    pub sandbox_depends_on: Vec<DependsOn>,
    /// `[docker]`: a Docker engine of the environment's own ([`crate::engine`]); the seed
    /// layout with [`SEED_DIND_WHITELIST`] gets one in [`SEED_DOCKER_MODE`].
    pub docker: Option<DockerSpec>,
}

/// The egress profile a `[docker]` engine's pulls and nested containers go through (the seed
/// layout's [`SEED_DIND_WHITELIST`] becomes it; without kennel.toml the file also gives the
/// environment an engine).
pub const DOCKER_EGRESS_PROFILE: &str = SEED_DIND_PROFILE;
/// The engine mode the seed layout gets: the least privileged mode measured to work on the
/// kind of host kennel runs on (Docker 20.10, cgroup v1; docs/environments.md, "Docker inside
/// an environment").
pub const SEED_DOCKER_MODE: DockerMode = DockerMode::Rootless;

pub use kennel_api::spec::{DEFAULT_NOTIFY_DIR, DockerMode, DockerSpec, NotifySpec};

/// Checks a `[notify] dir`: an absolute, plain path (letters, digits, `._-` and `/`; no `..`),
/// not `/` nor the workspace itself, at most 200 characters. The path goes into a bind-mount
/// string, so `:` and `,` must never reach it.
pub fn check_notify_dir(dir: &str) -> Result<(), String> {
    let plain = dir
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if !dir.starts_with('/') || !plain || dir.len() > 200 {
        return Err(format!(
            "{dir:?} must be an absolute path of letters, digits, '.', '_', '-' and '/' (at most 200 characters)"
        ));
    }
    let parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(format!(
            "{dir:?} must name a directory below / without `.` or `..` components"
        ));
    }
    if parts == ["workspace"] {
        return Err(format!(
            "{dir:?} is the workspace itself; use a directory in it, e.g. {DEFAULT_NOTIFY_DIR:?}"
        ));
    }
    Ok(())
}

/// A `[[mount]]`: a host path in the sandbox. The daemon mounts only paths the caller owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMount {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute path inside the sandbox.
    pub target: String,
    /// Writable (default: read-only).
    pub rw: bool,
}

/// Resource limits of the sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Resources {
    /// CPUs (fractional allowed), > 0.
    pub cpus: f64,
    /// Memory limit in bytes (swap limited to the same value).
    pub memory_bytes: u64,
    /// Maximum number of processes/threads.
    pub pids: i64,
    /// `RLIMIT_NOFILE` (soft, hard).
    pub nofile: (u64, u64),
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpus: 4.0,
            memory_bytes: 8 * 1024 * 1024 * 1024,
            pids: 1000,
            nofile: (1024, 2048),
        }
    }
}

/// Egress settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Egress {
    /// Project whitelist (seed format), absolute host path; imported when the env is created.
    pub whitelist: Option<PathBuf>,
    /// Default upstream URL (`direct`, `socks5://`, `socks5h://`, `http://`, `https://`).
    pub upstream: Option<String>,
    /// Legacy variables from `.devcontainer/.env` (empty when there is none).
    pub legacy: LegacyEnv,
    /// Egress profiles (`[egress.profiles.NAME]`), sorted by name: each is served by its own
    /// proxy container with its own policy, for services with `egress = "NAME"`.
    pub profiles: Vec<EgressProfile>,
}

impl Egress {
    /// The profile called `name`.
    pub fn profile(&self, name: &str) -> Option<&EgressProfile> {
        self.profiles.iter().find(|p| p.name == name)
    }
}

/// An egress profile: `[egress.profiles.NAME]` of kennel.toml (or the seed layout's
/// `dind-whitelist.txt`). Its proxy container `kennel-<env>-proxy-<NAME>`
/// ([`crate::backend::names::profile_proxy`]) enforces a policy of its own: the include files
/// (seed format, like `egress.whitelist`) and what `kennel allow --profile NAME` adds. The
/// environment's embedded default list is **not** part of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EgressProfile {
    /// Profile name (`[a-z0-9][a-z0-9-]{0,39}`, not one of [`RESERVED_PROFILE_NAMES`]).
    pub name: String,
    /// The include files (seed format), absolute host paths, in the order given.
    pub include: Vec<PathBuf>,
    /// Their text, read when the spec was parsed (by the CLI, as the caller), in the same
    /// order; the daemon writes it into the profile's policy directory.
    pub lists: Vec<String>,
    /// Default upstream of the profile's proxy (same forms as `egress.upstream`); `None`: the
    /// environment's effective upstream.
    pub upstream: Option<String>,
}

/// A service container: a `[[service]]` table of kennel.toml or a service imported from a
/// compose file ([`crate::compose`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceSpec {
    /// Service name (`[a-z0-9][a-z0-9-]{0,39}`); also its DNS alias on the env network.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Egress of the service.
    pub egress: ServiceEgress,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Command override.
    pub command: Option<Vec<String>>,
    /// Everything else a compose service may set (entrypoint, volumes, healthcheck, …); empty
    /// for a `[[service]]` table.
    pub run: ServiceRun,
}

pub use kennel_api::spec::{DependsOn, ServiceBind, ServiceHealthcheck, ServiceRun, ServiceVolume};

/// Egress of a service container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ServiceEgress {
    /// No egress at all (the default).
    #[default]
    None,
    /// The environment's own proxy (`egress = "proxy"`): the proxy variables are set, the
    /// service is still on the internal network only, under the environment's policy.
    Proxy,
    /// Egress through the proxy of the egress profile of that name (`[egress.profiles.NAME]`),
    /// under its policy; still on the internal network only.
    Profile(String),
}

/// Health thresholds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthSpec {
    /// Recreate after this age.
    pub max_age: Option<Duration>,
    /// Recreate when the workspace disk is fuller than this.
    pub max_disk_percent: Option<u8>,
    /// Recreate when memory use exceeds this share of the limit.
    pub max_memory_percent: Option<u8>,
    /// Recreate when this command (run in the sandbox) fails [`HealthSpec::failures`] times
    /// in a row.
    pub command: Option<Vec<String>>,
    /// Recreate when the image's own `HEALTHCHECK` fails [`HealthSpec::failures`] times in a
    /// row (as the engine counts them).
    pub healthcheck: bool,
    /// Consecutive failures of `command` / `healthcheck` that fire the rule (default 3).
    pub failures: Option<u32>,
    /// How often the monitor looks (default 60 s).
    pub interval: Option<Duration>,
    /// The longest a due refresh waits for attached exec sessions to end (default 15 min).
    pub max_defer: Option<Duration>,
}

impl HealthSpec {
    /// Whether any rule is configured.
    pub fn has_rules(&self) -> bool {
        self.max_age.is_some()
            || self.max_disk_percent.is_some()
            || self.max_memory_percent.is_some()
            || self.command.is_some()
            || self.healthcheck
    }
}

/// Read-only credential mounts (absolute host paths).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CredentialMounts {
    /// Mounted at `$HOME/.gitconfig`.
    pub git_config: Option<PathBuf>,
    /// Mounted at `$HOME/.ssh`.
    pub ssh_dir: Option<PathBuf>,
    /// Each mounted at `$HOME/<file name>` (e.g. `~/.claude.json`, `~/.codex`).
    pub agent_config: Vec<PathBuf>,
    /// A file holding a git token; mounted read-only at `/run/kennel/git-token` with a
    /// `GIT_ASKPASS` helper that prints it. Never passed as an environment variable.
    pub git_token_file: Option<PathBuf>,
    /// Copied (not mounted) into the home volume when it is created, each at
    /// `$HOME/<file name>`, so the agent can write its own copy (e.g. `~/.claude`).
    pub agent_config_copy: Vec<PathBuf>,
}

/// Values given by the caller (CLI flags) that override the spec.
#[derive(Debug, Clone, Default)]
pub struct SpecOverrides {
    /// Environment name.
    pub name: Option<String>,
    /// Sandbox image.
    pub image: Option<String>,
    /// Workspace directory (made absolute).
    pub workspace: Option<PathBuf>,
    /// Spec file to read instead of `<workspace>/kennel.toml`.
    pub spec_file: Option<PathBuf>,
}

/// Validates an environment name: `[a-z0-9][a-z0-9-]{0,39}`.
pub fn validate_env_name(name: &str) -> Result<(), SpecError> {
    check_name(name).map_err(|message| SpecError::InvalidValue {
        what: format!("environment name {name:?}"),
        message,
    })
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err("must not be empty; use lowercase letters, digits and '-'".into());
    };
    if name.len() > 40 {
        return Err(format!(
            "is {} characters long; at most 40 are allowed",
            name.len()
        ));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err("must start with a lowercase letter or a digit".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "contains {bad:?}; use lowercase letters, digits and '-' only"
        ));
    }
    Ok(())
}

/// Turns an arbitrary directory name into a valid environment name (lowercase, runs of other
/// characters become `-`, at most 40 characters). Returns `None` when nothing usable remains.
pub fn sanitize_env_name(raw: &str) -> Option<String> {
    let mut out = String::new();
    for c in raw.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(40);
    while out.ends_with('-') {
        out.pop();
    }
    (!out.is_empty()).then_some(out)
}

// ---------------------------------------------------------------------------------------------
// Raw TOML model

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: Option<Spanned<String>>,
    image: Option<Spanned<String>>,
    workspace: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    home: Option<Spanned<String>>,
    read_only_rootfs: Option<bool>,
    command: Option<Spanned<Vec<String>>>,
    resources: Option<RawResources>,
    egress: Option<RawEgress>,
    #[serde(default)]
    service: Vec<RawService>,
    health: Option<RawHealth>,
    credentials: Option<RawCredentials>,
    env: Option<Spanned<toml::Table>>,
    env_file: Option<Spanned<String>>,
    #[serde(default)]
    mount: Vec<RawMount>,
    build: Option<Spanned<RawBuild>>,
    notify: Option<RawNotify>,
    /// A compose file whose services are imported ([`crate::compose`]).
    services: Option<Spanned<String>>,
    docker: Option<Spanned<RawDocker>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDocker {
    mode: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    dir: Option<Spanned<String>>,
    on_denials: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMount {
    source: Spanned<String>,
    target: Spanned<String>,
    #[serde(default)]
    rw: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBuild {
    dockerfile: Option<String>,
    context: Option<String>,
    #[serde(default)]
    args: std::collections::BTreeMap<String, String>,
    target: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawResources {
    cpus: Option<Spanned<f64>>,
    memory: Option<Spanned<MemoryValue>>,
    pids: Option<Spanned<i64>>,
    nofile: Option<Spanned<Vec<u64>>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MemoryValue {
    Bytes(i64),
    Text(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEgress {
    whitelist: Option<Spanned<String>>,
    upstream: Option<Spanned<String>>,
    #[serde(default)]
    profiles: std::collections::BTreeMap<Spanned<String>, Spanned<RawProfile>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    #[serde(default)]
    include: Vec<Spanned<String>>,
    upstream: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    image: Spanned<String>,
    egress: Option<Spanned<String>>,
    #[serde(default)]
    env: toml::Table,
    command: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    max_age: Option<Spanned<String>>,
    max_disk_percent: Option<Spanned<i64>>,
    max_memory_percent: Option<Spanned<i64>>,
    command: Option<Spanned<Vec<String>>>,
    healthcheck: Option<bool>,
    failures: Option<Spanned<i64>>,
    interval: Option<Spanned<String>>,
    max_defer: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    git_config: Option<Spanned<String>>,
    ssh_dir: Option<Spanned<String>>,
    #[serde(default)]
    agent_config: Vec<Spanned<String>>,
    git_token_file: Option<Spanned<String>>,
    #[serde(default)]
    agent_config_copy: Vec<Spanned<String>>,
}

/// Context for error messages: the file and its text.
struct Src<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Src<'_> {
    fn line_col(&self, offset: usize) -> (u32, u32) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
        (
            u32::try_from(line).unwrap_or(u32::MAX),
            u32::try_from(col).unwrap_or(u32::MAX),
        )
    }

    fn err(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> SpecError {
        let (line, column) = self.line_col(span.start);
        SpecError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            key: Some(key.to_string()),
            message: message.into(),
        }
    }
}

impl EnvSpec {
    /// Parses and validates a `kennel.toml`. Relative `workspace` is resolved against the file's
    /// directory; relative `egress.whitelist` against the workspace; `~/` in credential paths
    /// against `$HOME`. A `.devcontainer/.env` in the workspace is read into `egress.legacy`.
    pub fn load(path: &Path) -> Result<EnvSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = absolute(path.parent().unwrap_or(Path::new(".")));
        Self::parse_str(&text, path, &base)
    }

    /// Parses spec text as if read from `path`; relative paths resolve against `base_dir`.
    pub fn parse_str(text: &str, path: &Path, base_dir: &Path) -> Result<EnvSpec, SpecError> {
        let src = Src { path, text };
        let raw: RawSpec = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| src.line_col(s.start));
            SpecError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                key: None,
                message: e.message().trim().to_string(),
            }
        })?;
        build(&src, raw, base_dir)
    }

    /// Builds the spec for a workspace directory: `overrides.spec_file`, else
    /// `<dir>/kennel.toml` if present, else the seed layout (`.devcontainer/whitelist.txt`,
    /// `.devcontainer/.env`) with defaults. The name defaults to the directory name (sanitised).
    /// Overrides are applied last and validated.
    pub fn from_workspace(dir: &Path, overrides: &SpecOverrides) -> Result<EnvSpec, SpecError> {
        let dir = absolute(overrides.workspace.as_deref().unwrap_or(dir));
        let spec_file = overrides
            .spec_file
            .clone()
            .or_else(|| Some(dir.join(SPEC_FILE)).filter(|p| p.is_file()));
        let seed_layout = spec_file.is_none();
        let mut spec = match spec_file {
            Some(file) => EnvSpec::load(&file)?,
            None => {
                let raw = RawSpec::default();
                let src = Src {
                    path: Path::new("<defaults>"),
                    text: "",
                };
                build(&src, raw, &dir)?
            }
        };
        // The seed layout's Docker-in-Docker allowlist: the old system ran an engine beside the
        // dev container; kennel gives the environment one of its own, in the least privileged
        // mode that works (kennel.toml says `[docker]` itself).
        let dind = dir.join(SEED_DIND_WHITELIST);
        if dind.exists() {
            if seed_layout {
                spec.docker.get_or_insert(DockerSpec {
                    mode: SEED_DOCKER_MODE,
                });
            } else if spec.docker.is_none() {
                spec.warnings.push(format!(
                    "{} is the egress profile {DOCKER_EGRESS_PROFILE:?}, but kennel.toml has no [docker], so no Docker engine runs in the environment (add `[docker] mode = \"rootless\"`)",
                    dind.display()
                ));
            }
        }
        if overrides.workspace.is_some() {
            spec.workspace = dir.clone();
            spec.env.dotenv = load_dotenv_vars(&dir)?;
            spec.egress.legacy = load_legacy(&dir)?;
            if spec.egress.whitelist.is_none() {
                let seed = dir.join(SEED_WHITELIST);
                spec.egress.whitelist = seed.is_file().then_some(seed);
            }
            if let Some(dind) = seed_dind_profile(&dir, &spec.egress.profiles)? {
                spec.egress.profiles.push(dind);
                spec.egress.profiles.sort_by(|a, b| a.name.cmp(&b.name));
            }
        }
        if let Some(name) = &overrides.name {
            validate_env_name(name)?;
            spec.name = name.clone();
            spec.name_is_default = false;
        }
        if let Some(image) = &overrides.image {
            check_image(image).map_err(|message| SpecError::InvalidValue {
                what: format!("image {image:?}"),
                message,
            })?;
            spec.image = image.clone();
            // An explicit image replaces the workspace's build.
            spec.build = None;
        }
        Ok(spec)
    }
}

fn build(src: &Src<'_>, raw: RawSpec, base_dir: &Path) -> Result<EnvSpec, SpecError> {
    let workspace = match &raw.workspace {
        Some(w) => {
            let p = expand_path(w.get_ref(), base_dir);
            if !p.is_dir() {
                return Err(src.err(
                    w.span(),
                    "workspace",
                    format!("{} is not a directory", p.display()),
                ));
            }
            p
        }
        None => base_dir.to_path_buf(),
    };

    let name = match &raw.name {
        Some(n) => {
            check_name(n.get_ref()).map_err(|m| src.err(n.span(), "name", m))?;
            n.get_ref().clone()
        }
        None => workspace
            .file_name()
            .and_then(|f| sanitize_env_name(&f.to_string_lossy()))
            .ok_or_else(|| SpecError::InvalidValue {
                what: format!("workspace {}", workspace.display()),
                message: "cannot derive an environment name from the directory name; set `name` in kennel.toml or pass --name".into(),
            })?,
    };

    let image = match &raw.image {
        Some(i) => {
            check_image(i.get_ref()).map_err(|m| src.err(i.span(), "image", m))?;
            i.get_ref().clone()
        }
        None => DEFAULT_IMAGE.to_string(),
    };

    let user = match &raw.user {
        Some(u) => {
            check_user(u.get_ref()).map_err(|m| src.err(u.span(), "user", m))?;
            u.get_ref().clone()
        }
        None => DEFAULT_USER.to_string(),
    };

    let home = match &raw.home {
        Some(h) => {
            check_container_path(h.get_ref()).map_err(|m| src.err(h.span(), "home", m))?;
            h.get_ref().trim_end_matches('/').to_string()
        }
        None => DEFAULT_HOME.to_string(),
    };

    let command = match &raw.command {
        Some(c) if c.get_ref().is_empty() => {
            return Err(src.err(
                c.span(),
                "command",
                "must not be empty; omit it for the default",
            ));
        }
        Some(c) => Some(c.get_ref().clone()),
        None => None,
    };

    let WorkspaceImage {
        image,
        build,
        user,
        user_name,
        container_env,
        lifecycle,
        warnings,
        compose_services,
        sandbox_depends_on,
    } = workspace_image(src, &raw, &workspace, &name, image, user)?;

    let resources = build_resources(src, raw.resources.unwrap_or_default())?;
    let egress = build_egress(src, raw.egress.unwrap_or_default(), &workspace)?;
    let mut services = build_services(src, raw.service, &egress)?;
    for svc in compose_services {
        if let Some(dup) = services.iter().find(|s| s.name == svc.name) {
            return Err(SpecError::InvalidValue {
                what: format!("service {:?}", dup.name),
                message: "is both a [[service]] in kennel.toml and a service of the compose file; keep one".into(),
            });
        }
        if let Some(p) = profile_alias_clash(&svc.name, &egress) {
            return Err(SpecError::InvalidValue {
                what: format!("compose service {:?}", svc.name),
                message: format!(
                    "is the network name of egress profile {p:?}'s proxy; rename the service"
                ),
            });
        }
        services.push(svc);
    }
    let health = build_health(src, raw.health.unwrap_or_default())?;
    let credentials = build_credentials(src, raw.credentials.unwrap_or_default(), base_dir)?;
    let mut env = build_env(src, raw.env, raw.env_file, &workspace)?;
    env.set_container_env(container_env)
        .map_err(|message| SpecError::InvalidValue {
            what: "devcontainer.json".into(),
            message,
        })?;
    let mounts = build_mounts(src, raw.mount, base_dir, &home)?;
    let notify = build_notify(src, raw.notify.unwrap_or_default())?;
    let docker = build_docker(src, raw.docker, &egress)?;

    Ok(EnvSpec {
        name,
        image,
        workspace,
        user,
        user_name,
        home,
        read_only_rootfs: raw.read_only_rootfs.unwrap_or(true),
        resources,
        egress,
        services,
        health,
        credentials,
        command,
        env,
        mounts,
        name_is_default: raw.name.is_none(),
        build,
        lifecycle,
        warnings,
        notify,
        sandbox_depends_on,
        docker,
    })
}

/// `[docker]`: `mode` is required (each mode is a different risk; nothing is chosen silently).
fn build_docker(
    src: &Src<'_>,
    raw: Option<Spanned<RawDocker>>,
    egress: &Egress,
) -> Result<Option<DockerSpec>, SpecError> {
    let Some(raw) = raw else { return Ok(None) };
    let span = raw.span();
    let raw = raw.into_inner();
    let Some(mode) = raw.mode else {
        return Err(src.err(
            span,
            "docker.mode",
            "is required: \"rootless\" (least privilege) or \"privileged\" (a path to the host); see docs/environments.md, \"Docker inside an environment\"",
        ));
    };
    let m = match mode.get_ref().as_str() {
        "rootless" => DockerMode::Rootless,
        "privileged" => DockerMode::Privileged,
        other => {
            return Err(src.err(
                mode.span(),
                "docker.mode",
                format!("{other:?} is not a mode: use \"rootless\" or \"privileged\""),
            ));
        }
    };
    // The engine's only way out: without the profile it would have none (or, worse, someone
    // would be tempted to give it the sandbox's).
    if egress.profile(DOCKER_EGRESS_PROFILE).is_none() {
        return Err(src.err(
            span,
            "docker",
            format!(
                "needs the egress profile {DOCKER_EGRESS_PROFILE:?} (the engine's pulls and nested containers go out only through it): add [egress.profiles.{DOCKER_EGRESS_PROFILE}] with include = [\"{SEED_DIND_WHITELIST}\"] (or a list of your own)"
            ),
        ));
    }
    Ok(Some(DockerSpec { mode: m }))
}

fn build_notify(src: &Src<'_>, raw: RawNotify) -> Result<NotifySpec, SpecError> {
    let mut n = NotifySpec::default();
    if let Some(d) = raw.dir {
        check_notify_dir(d.get_ref()).map_err(|m| src.err(d.span(), "notify.dir", m))?;
        n.dir = d.get_ref().trim_end_matches('/').to_string();
    }
    n.on_denials = raw.on_denials.unwrap_or(false);
    Ok(n)
}

/// The `.devcontainer/.env` keys that are sandbox variables (all but the proxy settings).
fn load_dotenv_vars(workspace: &Path) -> Result<Vec<(String, String)>, SpecError> {
    let dotenv = workspace.join(SEED_DOTENV);
    if !dotenv.is_file() {
        return Ok(Vec::new());
    }
    crate::env::read_dotenv(&dotenv, &crate::env::LEGACY_PROXY_KEYS).map_err(|message| {
        SpecError::InvalidValue {
            what: "sandbox variables".into(),
            message,
        }
    })
}

fn build_env(
    src: &Src<'_>,
    table: Option<Spanned<toml::Table>>,
    env_file: Option<Spanned<String>>,
    workspace: &Path,
) -> Result<SandboxEnv, SpecError> {
    let mut env = SandboxEnv {
        dotenv: load_dotenv_vars(workspace)?,
        ..Default::default()
    };
    if let Some(f) = env_file {
        let p = expand_path(f.get_ref(), workspace);
        env.env_file =
            crate::env::read_dotenv(&p, &[]).map_err(|m| src.err(f.span(), "env_file", m))?;
    }
    if let Some(t) = table {
        let span = t.span();
        for (k, v) in t.into_inner() {
            let key = format!("env.{k}");
            crate::env::check_var_name(&k).map_err(|m| src.err(span.clone(), &key, m))?;
            let v = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                _ => {
                    return Err(src.err(span, &key, "must be a string, number or boolean"));
                }
            };
            env.table.push((k, v));
        }
    }
    Ok(env)
}

/// Sandbox paths a `[[mount]]` may not cover: kennel's own mounts and the kernel's.
const MOUNT_RESERVED: [&str; 6] = ["/workspace", "/tmp", "/run/kennel", "/proc", "/sys", "/dev"];

fn build_mounts(
    src: &Src<'_>,
    raw: Vec<RawMount>,
    base: &Path,
    home: &str,
) -> Result<Vec<HostMount>, SpecError> {
    let mut out: Vec<HostMount> = Vec::new();
    for m in raw {
        let source = expand_path(m.source.get_ref(), base);
        if !source.exists() {
            return Err(src.err(
                m.source.span(),
                "mount.source",
                format!("{} does not exist", source.display()),
            ));
        }
        if source.to_string_lossy().contains([':', ',']) {
            return Err(src.err(
                m.source.span(),
                "mount.source",
                "contains ':' or ','; Docker bind mounts cannot express such a path",
            ));
        }
        let target = m.target.get_ref().trim_end_matches('/').to_string();
        check_container_path(&target).map_err(|e| src.err(m.target.span(), "mount.target", e))?;
        let t = Path::new(&target);
        if target == home || MOUNT_RESERVED.iter().any(|r| t.starts_with(r)) {
            return Err(src.err(
                m.target.span(),
                "mount.target",
                format!("{target} is kennel's (the workspace, home, /tmp, /run/kennel or a kernel file system); pick another path, e.g. under {home}/"),
            ));
        }
        if out.iter().any(|o| o.target == target) {
            return Err(src.err(
                m.target.span(),
                "mount.target",
                format!("{target} is mounted twice"),
            ));
        }
        out.push(HostMount {
            source,
            target,
            rw: m.rw,
        });
    }
    Ok(out)
}

/// What [`workspace_image`] settles.
struct WorkspaceImage {
    image: String,
    build: Option<BuildSpec>,
    user: String,
    user_name: Option<String>,
    container_env: Vec<(String, String)>,
    lifecycle: Vec<LifecycleCommand>,
    warnings: Vec<String>,
    /// Services imported from the compose file.
    compose_services: Vec<ServiceSpec>,
    /// The compose dev service's `depends_on`.
    sandbox_depends_on: Vec<DependsOn>,
}

/// The compose file to import: kennel.toml `services`, else devcontainer.json's
/// `dockerComposeFile`, else the seed layout's `.devcontainer/docker-compose.y(a)ml`.
fn compose_file(
    src: &Src<'_>,
    raw: &RawSpec,
    workspace: &Path,
    dc: &crate::devcontainer::DevContainer,
) -> Result<Option<PathBuf>, SpecError> {
    if let Some(f) = &raw.services {
        let p = expand_path(f.get_ref(), workspace);
        if !p.is_file() {
            return Err(src.err(
                f.span(),
                "services",
                format!("{} does not exist or is not a file", p.display()),
            ));
        }
        return Ok(Some(p));
    }
    if let Some(p) = &dc.compose_file {
        if !p.is_file() {
            return Err(SpecError::InvalidValue {
                what: format!("{} dockerComposeFile", dc.path.display()),
                message: format!("{} does not exist or is not a file", p.display()),
            });
        }
        return Ok(Some(p.clone()));
    }
    Ok(crate::compose::SEED_COMPOSE
        .iter()
        .map(|f| workspace.join(f))
        .find(|p| p.is_file()))
}

/// Merges kennel.toml's `image`/`[build]`/`user` with `.devcontainer/devcontainer.json`:
/// kennel.toml wins key by key (`image` or `[build]` there replaces the file's image or build).
fn workspace_image(
    src: &Src<'_>,
    raw: &RawSpec,
    workspace: &Path,
    name: &str,
    image: String,
    user: String,
) -> Result<WorkspaceImage, SpecError> {
    let mut dc = crate::devcontainer::load(workspace, raw.user.is_some())?.unwrap_or_default();
    let toml_build = match &raw.build {
        Some(b) if raw.image.is_some() => {
            return Err(src.err(
                b.span(),
                "build",
                "`image` and `[build]` are both set; keep one",
            ));
        }
        Some(b) => {
            let r = b.get_ref();
            let dockerfile = expand_path(
                r.dockerfile
                    .as_deref()
                    .unwrap_or(".devcontainer/Dockerfile"),
                workspace,
            );
            let context = match &r.context {
                Some(c) => expand_path(c, workspace),
                None => dockerfile.parent().unwrap_or(workspace).to_path_buf(),
            };
            if let Some(k) = r.args.keys().find(|k| crate::devcontainer::is_proxy_var(k)) {
                return Err(src.err(
                    b.span(),
                    "build.args",
                    format!("{k}: the proxy build arguments are kennel's: builds go through the environment's proxy"),
                ));
            }
            let spec = BuildSpec {
                context,
                dockerfile,
                args: r.args.clone().into_iter().collect(),
                target: r.target.clone(),
            };
            crate::devcontainer::check_build(&spec, workspace)
                .map_err(|m| src.err(b.span(), "build", m))?;
            Some(spec)
        }
        None => None,
    };
    let toml_sets_image = raw.image.is_some() || toml_build.is_some();
    let image_from_devcontainer = dc.build.is_some() || dc.image.is_some();
    let (image, build) = if toml_sets_image {
        if dc.build.is_some() || dc.image.is_some() {
            let key = if dc.build.is_some() { "build" } else { "image" };
            dc.not_applied.push((
                key.into(),
                "kennel.toml sets the image (`image` or `[build]`), which wins".into(),
            ));
        }
        (image, toml_build)
    } else if let Some(b) = dc.build.take() {
        // Informational until the daemon has built it and knows the content tag.
        (format!("kennel-build-{name}"), Some(b))
    } else if let Some(i) = dc.image.take() {
        (i, None)
    } else {
        (image, None)
    };
    let user = dc.user.take().unwrap_or(user);
    let mut warnings: Vec<String> = dc.warning().into_iter().collect();
    // (The seed layout's dind-whitelist.txt becomes the `dind` egress profile: build_egress.)
    let mut container_env = std::mem::take(&mut dc.container_env);
    let mut compose_services = Vec::new();
    let mut sandbox_depends_on = Vec::new();
    let (mut image, mut build) = (image, build);
    if let Some(file) = compose_file(src, raw, workspace, &dc)? {
        let hint = crate::compose::SandboxHint {
            service: dc.service.as_deref(),
            dockerfile: build.as_ref().map(|b| b.dockerfile.as_path()),
        };
        let imp = crate::compose::load(&file, workspace, &hint)?;
        warnings.extend(imp.warning());
        compose_services = imp.services;
        if let Some(sb) = imp.sandbox {
            // The dev service's image is the lowest-priority source: kennel.toml and
            // devcontainer.json's own `image`/`build` win.
            let image_set_elsewhere = toml_sets_image || image_from_devcontainer;
            if !image_set_elsewhere {
                if let Some(b) = sb.build {
                    image = format!("kennel-build-{name}");
                    build = Some(b);
                } else if let Some(i) = sb.image {
                    image = i;
                }
            }
            // Its variables come before devcontainer.json's containerEnv (which wins).
            let mut merged = sb.env;
            merged.retain(|(k, _)| !container_env.iter().any(|(c, _)| c == k));
            merged.append(&mut container_env);
            container_env = merged;
            sandbox_depends_on = sb.depends_on;
        }
    }
    Ok(WorkspaceImage {
        image,
        build,
        user,
        user_name: dc.user_name,
        container_env,
        lifecycle: dc.lifecycle,
        warnings,
        compose_services,
        sandbox_depends_on,
    })
}

fn build_resources(src: &Src<'_>, raw: RawResources) -> Result<Resources, SpecError> {
    let mut r = Resources::default();
    if let Some(c) = raw.cpus {
        let v = *c.get_ref();
        if !(v.is_finite() && v > 0.0 && v <= 1024.0) {
            return Err(src.err(
                c.span(),
                "resources.cpus",
                "must be a number > 0 (e.g. 4.0)",
            ));
        }
        r.cpus = v;
    }
    if let Some(m) = raw.memory {
        let bytes = match m.get_ref() {
            MemoryValue::Bytes(b) => u64::try_from(*b).ok().filter(|b| *b > 0),
            MemoryValue::Text(t) => parse_memory(t),
        };
        let bytes = bytes.filter(|b| *b >= 6 * 1024 * 1024).ok_or_else(|| {
            src.err(
                m.span(),
                "resources.memory",
                "must be a size of at least 6m, like \"8g\", \"512m\" or a number of bytes",
            )
        })?;
        r.memory_bytes = bytes;
    }
    if let Some(p) = raw.pids {
        let v = *p.get_ref();
        if v < 1 {
            return Err(src.err(p.span(), "resources.pids", "must be at least 1"));
        }
        r.pids = v;
    }
    if let Some(n) = raw.nofile {
        match n.get_ref().as_slice() {
            [soft, hard] if *soft >= 1 && soft <= hard => r.nofile = (*soft, *hard),
            _ => {
                return Err(src.err(
                    n.span(),
                    "resources.nofile",
                    "must be [soft, hard] with 1 <= soft <= hard, e.g. [1024, 2048]",
                ));
            }
        }
    }
    Ok(r)
}

fn build_egress(src: &Src<'_>, raw: RawEgress, workspace: &Path) -> Result<Egress, SpecError> {
    let whitelist = match raw.whitelist {
        Some(w) => {
            let p = expand_path(w.get_ref(), workspace);
            if !p.is_file() {
                return Err(src.err(
                    w.span(),
                    "egress.whitelist",
                    format!("{} does not exist or is not a file", p.display()),
                ));
            }
            Some(p)
        }
        None => Some(workspace.join(SEED_WHITELIST)).filter(|p| p.is_file()),
    };
    let upstream = match raw.upstream {
        Some(u) => {
            check_upstream(u.get_ref()).map_err(|m| src.err(u.span(), "egress.upstream", m))?;
            Some(u.get_ref().clone())
        }
        None => None,
    };
    let mut profiles = Vec::new();
    for (name, p) in raw.profiles {
        let key = format!("egress.profiles.{}", name.get_ref());
        check_profile_name(name.get_ref()).map_err(|m| src.err(name.span(), &key, m))?;
        let p = p.into_inner();
        let mut include = Vec::new();
        let mut lists = Vec::new();
        for f in &p.include {
            let path = expand_path(f.get_ref(), workspace);
            let text = read_profile_list(&path)
                .map_err(|m| src.err(f.span(), &format!("{key}.include"), m))?;
            include.push(path);
            lists.push(text);
        }
        let upstream = match &p.upstream {
            Some(u) => {
                check_upstream(u.get_ref())
                    .map_err(|m| src.err(u.span(), &format!("{key}.upstream"), m))?;
                Some(u.get_ref().clone())
            }
            None => None,
        };
        profiles.push(EgressProfile {
            name: name.into_inner(),
            include,
            lists,
            upstream,
        });
    }
    if let Some(dind) = seed_dind_profile(workspace, &profiles)? {
        profiles.push(dind);
    }
    profiles.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Egress {
        whitelist,
        upstream,
        legacy: load_legacy(workspace)?,
        profiles,
    })
}

/// Checks an egress profile's name: an environment-name-like word that is not reserved.
pub fn check_profile_name(name: &str) -> Result<(), String> {
    check_name(name)?;
    if RESERVED_PROFILE_NAMES.contains(&name) {
        return Err(format!(
            "{name:?} is reserved (service egress \"none\" and \"proxy\", the environment's own containers); pick another profile name"
        ));
    }
    Ok(())
}

/// Reads an include file of a profile: a regular file of at most [`MAX_PROFILE_LIST_BYTES`],
/// valid as a seed-format list (its errors name the file, line and column).
fn read_profile_list(path: &Path) -> Result<String, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    if meta.len() > MAX_PROFILE_LIST_BYTES {
        return Err(format!(
            "{} is {} bytes; an include file may have at most {MAX_PROFILE_LIST_BYTES}",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    kennel_policy::Policy::load_list(path, kennel_policy::ListFormat::Seed, &LegacyEnv::default())
        .map_err(|e| e.to_string())?;
    Ok(text)
}

/// The seed layout's Docker-in-Docker allowlist as the profile [`SEED_DIND_PROFILE`], unless
/// `profiles` already has one of that name (kennel.toml wins).
fn seed_dind_profile(
    workspace: &Path,
    profiles: &[EgressProfile],
) -> Result<Option<EgressProfile>, SpecError> {
    let path = workspace.join(SEED_DIND_WHITELIST);
    if !path.exists() || profiles.iter().any(|p| p.name == SEED_DIND_PROFILE) {
        return Ok(None);
    }
    let text = read_profile_list(&path).map_err(|message| SpecError::InvalidValue {
        what: format!(
            "the seed layout's {SEED_DIND_WHITELIST} (egress profile \"{SEED_DIND_PROFILE}\")"
        ),
        message,
    })?;
    Ok(Some(EgressProfile {
        name: SEED_DIND_PROFILE.to_string(),
        include: vec![path],
        lists: vec![text],
        upstream: None,
    }))
}

fn load_legacy(workspace: &Path) -> Result<LegacyEnv, SpecError> {
    let dotenv = workspace.join(SEED_DOTENV);
    if !dotenv.is_file() {
        return Ok(LegacyEnv::default());
    }
    let legacy = LegacyEnv::from_dotenv(&dotenv).map_err(|e| SpecError::Legacy {
        path: dotenv.clone(),
        message: e.to_string(),
    })?;
    // Rejected here, at `kennel up`, with the file and line, rather than when the policy is
    // written.
    legacy.resolve().map_err(|e| SpecError::Legacy {
        path: dotenv,
        message: e.to_string(),
    })?;
    Ok(legacy)
}

fn build_services(
    src: &Src<'_>,
    raw: Vec<RawService>,
    egress: &Egress,
) -> Result<Vec<ServiceSpec>, SpecError> {
    let mut out: Vec<ServiceSpec> = Vec::new();
    for s in raw {
        check_name(s.name.get_ref()).map_err(|m| src.err(s.name.span(), "service.name", m))?;
        let name = s.name.get_ref().clone();
        if name == "proxy" || name == "sandbox" {
            return Err(src.err(
                s.name.span(),
                "service.name",
                format!("{name:?} is reserved; pick another name"),
            ));
        }
        if let Some(p) = profile_alias_clash(&name, egress) {
            return Err(src.err(
                s.name.span(),
                "service.name",
                format!("{name:?} is the network name of egress profile {p:?}'s proxy; pick another name"),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(src.err(
                s.name.span(),
                "service.name",
                format!("duplicate service {name:?}"),
            ));
        }
        check_image(s.image.get_ref()).map_err(|m| src.err(s.image.span(), "service.image", m))?;
        let egress = match &s.egress {
            None => ServiceEgress::None,
            Some(e) if e.get_ref() == "none" => ServiceEgress::None,
            Some(e) if e.get_ref() == "proxy" => ServiceEgress::Proxy,
            Some(e) => {
                check_name(e.get_ref()).map_err(|m| src.err(e.span(), "service.egress", m))?;
                if egress.profile(e.get_ref()).is_none() {
                    let known: Vec<&str> =
                        egress.profiles.iter().map(|p| p.name.as_str()).collect();
                    return Err(src.err(
                        e.span(),
                        "service.egress",
                        format!(
                            "service {name:?}: there is no egress profile {:?} ({}); use \"none\", \"proxy\" or define [egress.profiles.{}]",
                            e.get_ref(),
                            if known.is_empty() {
                                "none is defined".to_string()
                            } else {
                                format!("defined: {}", known.join(", "))
                            },
                            e.get_ref()
                        ),
                    ));
                }
                ServiceEgress::Profile(e.get_ref().clone())
            }
        };
        let mut env = Vec::new();
        for (k, v) in &s.env {
            let v = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                _ => {
                    return Err(src.err(
                        s.name.span(),
                        &format!("service.env.{k}"),
                        "must be a string, number or boolean",
                    ));
                }
            };
            env.push((k.clone(), v));
        }
        out.push(ServiceSpec {
            name,
            image: s.image.get_ref().clone(),
            egress,
            env,
            command: s.command,
            run: ServiceRun::default(),
        });
    }
    Ok(out)
}

/// The profile whose proxy's network alias (`proxy-NAME`) is `service`, if any.
fn profile_alias_clash<'a>(service: &str, egress: &'a Egress) -> Option<&'a str> {
    egress
        .profiles
        .iter()
        .find(|p| crate::hardening::profile_proxy_alias(&p.name) == service)
        .map(|p| p.name.as_str())
}

fn build_health(src: &Src<'_>, raw: RawHealth) -> Result<HealthSpec, SpecError> {
    let duration = |v: Option<Spanned<String>>, key: &str| -> Result<Option<Duration>, SpecError> {
        match v {
            Some(a) => Ok(Some(
                parse_duration(a.get_ref())
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        src.err(
                            a.span(),
                            key,
                            "must be a duration like \"72h\", \"30m\", \"2d\" or \"90s\"",
                        )
                    })?,
            )),
            None => Ok(None),
        }
    };
    let max_age = duration(raw.max_age, "health.max_age")?;
    let interval = duration(raw.interval, "health.interval")?;
    let max_defer = duration(raw.max_defer, "health.max_defer")?;
    let command = match raw.command {
        Some(c) if c.get_ref().is_empty() || c.get_ref()[0].is_empty() => {
            return Err(src.err(
                c.span(),
                "health.command",
                "must be a non-empty list like [\"/bin/sh\", \"-c\", \"test -e /tmp/ok\"]",
            ));
        }
        Some(c) => Some(c.into_inner()),
        None => None,
    };
    let failures = match raw.failures {
        Some(f) => Some(
            u32::try_from(*f.get_ref())
                .ok()
                .filter(|f| (1..=100).contains(f))
                .ok_or_else(|| {
                    src.err(f.span(), "health.failures", "must be a count from 1 to 100")
                })?,
        ),
        None => None,
    };
    let pct = |v: Option<Spanned<i64>>, key: &str| -> Result<Option<u8>, SpecError> {
        match v {
            Some(p) => u8::try_from(*p.get_ref())
                .ok()
                .filter(|p| (1..=100).contains(p))
                .map(Some)
                .ok_or_else(|| src.err(p.span(), key, "must be a percentage from 1 to 100")),
            None => Ok(None),
        }
    };
    Ok(HealthSpec {
        max_age,
        max_disk_percent: pct(raw.max_disk_percent, "health.max_disk_percent")?,
        max_memory_percent: pct(raw.max_memory_percent, "health.max_memory_percent")?,
        command,
        healthcheck: raw.healthcheck.unwrap_or(false),
        failures,
        interval,
        max_defer,
    })
}

fn build_credentials(
    src: &Src<'_>,
    raw: RawCredentials,
    base: &Path,
) -> Result<CredentialMounts, SpecError> {
    let existing = |v: &Spanned<String>, key: &str, dir: bool| -> Result<PathBuf, SpecError> {
        let p = expand_path(v.get_ref(), base);
        let ok = if dir { p.is_dir() } else { p.exists() };
        if ok {
            Ok(p)
        } else {
            Err(src.err(
                v.span(),
                key,
                format!(
                    "{} does not exist{}",
                    p.display(),
                    if dir { " or is not a directory" } else { "" }
                ),
            ))
        }
    };
    let mut agent_config_copy = Vec::new();
    for a in &raw.agent_config_copy {
        let p = existing(a, "credentials.agent_config_copy", false)?;
        if p.file_name().is_none() {
            return Err(src.err(
                a.span(),
                "credentials.agent_config_copy",
                "needs a file name",
            ));
        }
        agent_config_copy.push(p);
    }
    let mut agent_config = Vec::new();
    for a in &raw.agent_config {
        let p = existing(a, "credentials.agent_config", false)?;
        if p.file_name().is_none() {
            return Err(src.err(a.span(), "credentials.agent_config", "needs a file name"));
        }
        agent_config.push(p);
    }
    Ok(CredentialMounts {
        git_config: raw
            .git_config
            .as_ref()
            .map(|v| existing(v, "credentials.git_config", false))
            .transpose()?,
        ssh_dir: raw
            .ssh_dir
            .as_ref()
            .map(|v| existing(v, "credentials.ssh_dir", true))
            .transpose()?,
        agent_config,
        git_token_file: raw
            .git_token_file
            .as_ref()
            .map(|v| existing(v, "credentials.git_token_file", false))
            .transpose()?,
        agent_config_copy,
    })
}

// ---------------------------------------------------------------------------------------------
// Value checks

pub(crate) fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = image
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || c.is_ascii_uppercase())
    {
        return Err(format!(
            "contains {c:?}; an image reference is lowercase like \"repo/name:tag\""
        ));
    }
    Ok(())
}

/// Checks a `uid:gid` user: numeric, both non-zero.
fn check_user(user: &str) -> Result<(), String> {
    let parse = |s: &str| s.parse::<u32>().ok();
    match user.split_once(':') {
        Some((u, g)) => match (parse(u), parse(g)) {
            (Some(0), _) | (_, Some(0)) => {
                Err("must not be root (uid or gid 0); the default is \"1001:2000\"".into())
            }
            (Some(_), Some(_)) => Ok(()),
            _ => Err("must be numeric \"uid:gid\", e.g. \"1001:2000\"".into()),
        },
        None => Err("must be numeric \"uid:gid\", e.g. \"1001:2000\"".into()),
    }
}

fn check_container_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') || p == "/" || p.contains("..") || p.contains(',') || p.contains(':') {
        return Err("must be an absolute path below / without '..', ',' or ':'".into());
    }
    Ok(())
}

fn check_upstream(u: &str) -> Result<(), String> {
    const SCHEMES: [&str; 4] = ["socks5://", "socks5h://", "http://", "https://"];
    if u == "direct" {
        return Ok(());
    }
    match SCHEMES.iter().find(|s| u.starts_with(*s)) {
        Some(s) if u.len() > s.len() => Ok(()),
        _ => Err(
            "must be \"direct\" or a URL socks5://, socks5h://, http:// or https://host:port"
                .into(),
        ),
    }
}

/// Parses `"8g"`, `"512m"`, `"1024k"`, `"8GiB"`, `"123"` (bytes), 1024-based.
pub fn parse_memory(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (num, mult) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1u64 << 10),
        'm' => (&t[..t.len() - 1], 1 << 20),
        'g' => (&t[..t.len() - 1], 1 << 30),
        't' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().ok()?;
    n.checked_mul(mult).filter(|v| *v > 0)
}

/// Parses `"72h"`, `"30m"`, `"2d"`, `"90s"`, `"1w"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let t = s.trim();
    let unit = t.chars().last()?;
    let n: u64 = t[..t.len() - unit.len_utf8()].trim().parse().ok()?;
    let secs = match unit {
        's' => n,
        'm' => n.checked_mul(60)?,
        'h' => n.checked_mul(3600)?,
        'd' => n.checked_mul(86400)?,
        'w' => n.checked_mul(7 * 86400)?,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

fn expand_path(p: &str, base: &Path) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    let p = Path::new(p);
    if p.is_absolute() {
        normalize(p)
    } else {
        normalize(&base.join(p))
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        normalize(p)
    } else {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        normalize(&cwd.join(p))
    }
}

/// Lexical normalisation (`.` and `..`), so names derived from paths are stable.
pub(crate) fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
