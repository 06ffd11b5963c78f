//! Compose services: a `docker-compose.yaml` (kennel.toml `services = "…"`, devcontainer.json's
//! `dockerComposeFile`, or the seed layout's `.devcontainer/docker-compose.yaml`) imported into
//! the environment as [`ServiceSpec`]s on its internal network, under its policy.
//!
//! Parsing: the typed model of the maintained `docker-compose-types` crate, read with
//! `serde_norway` (the maintained fork of `serde_yaml`). It was chosen over `compose_spec`
//! (built on the deprecated `serde_yaml`) and over running `docker-compose config` (an external
//! process, version-dependent output, and it interpolates the host's environment into the
//! file, which kennel must not do). Keys the model does not know fail the parse, so nothing is
//! dropped unseen. `serde_norway` keeps no positions after a successful parse, so a second pass
//! over the same text with the `saphyr-parser` event parser records the line of every key; it
//! is only used to point error messages at a line.
//!
//! Policy: the file lives in the workspace, which the agent can write. Whatever would give a
//! service a way around the proxy or into the host (`ports`, `network_mode`, other `networks`,
//! `privileged`, capabilities beyond [`CAP_ADD_ALLOWED`], `pid`/`ipc`/`userns_mode`, `devices`,
//! host bind mounts outside the workspace, …) is refused with the file, line, service and key.
//! Keys that are safe but not applied are listed in one warning; nothing is dropped silently.
//! Variable interpolation (`${VAR}`) is refused: kennel does not pass the host's variables.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use docker_compose_types as dc;

use crate::devcontainer::BuildSpec;
use crate::error::SpecError;
use crate::spec::{
    DependsOn, ServiceBind, ServiceEgress, ServiceHealthcheck, ServiceRun, ServiceSpec,
    ServiceVolume,
};

/// The seed layout's compose files, relative to the workspace (the first that exists is used).
pub const SEED_COMPOSE: [&str; 2] = [
    ".devcontainer/docker-compose.yaml",
    ".devcontainer/docker-compose.yml",
];

/// Capabilities a service may name in `cap_add`: Docker's default set minus those kennel drops
/// from services ([`crate::hardening::SERVICE_CAP_DROP`]). Services already have these, so
/// naming them changes nothing; every other capability is refused.
pub const CAP_ADD_ALLOWED: [&str; 10] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
];

/// Extension key on a service choosing its egress: `none` (default) or `proxy`.
pub const EGRESS_KEY: &str = "x-kennel-egress";

/// The compose file's dev service: the one that becomes the sandbox.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComposeSandbox {
    /// Its name in the compose file.
    pub service: String,
    /// `image`.
    pub image: Option<String>,
    /// `build`.
    pub build: Option<BuildSpec>,
    /// `environment` / `env_file` (proxy variables excluded).
    pub env: Vec<(String, String)>,
    /// `depends_on`.
    pub depends_on: Vec<DependsOn>,
}

/// What kennel takes from a compose file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComposeImport {
    /// The file read.
    pub path: PathBuf,
    /// The services, each after those it depends on.
    pub services: Vec<ServiceSpec>,
    /// The dev service, if the file has one.
    pub sandbox: Option<ComposeSandbox>,
    /// Keys not applied, each with the reason.
    pub not_applied: Vec<(String, String)>,
}

impl ComposeImport {
    /// The one warning listing every key kennel did not apply and why; `None` if there are none.
    pub fn warning(&self) -> Option<String> {
        if self.not_applied.is_empty() {
            return None;
        }
        let mut w = format!(
            "{}: kennel does not apply these keys (the services stay on the environment's network, under its policy):",
            self.path.display()
        );
        for (key, why) in &self.not_applied {
            w.push_str(&format!("\n  - {key}: {why}"));
        }
        Some(w)
    }
}

/// How the dev service is recognised.
#[derive(Debug, Clone, Copy, Default)]
pub struct SandboxHint<'a> {
    /// devcontainer.json's `service`: this one, and it must exist.
    pub service: Option<&'a str>,
    /// Otherwise the service whose `build` uses this Dockerfile (the workspace's dev image).
    pub dockerfile: Option<&'a Path>,
}

/// Reads and imports `path`.
pub fn load(
    path: &Path,
    workspace: &Path,
    hint: &SandboxHint<'_>,
) -> Result<ComposeImport, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_str(&text, path, workspace, hint)
}

// ---------------------------------------------------------------------------------------------
// Key positions

/// Line and column of every mapping key by dotted path (`services.db.ports`), from the event
/// parser; and the first scalar that interpolates a variable.
#[derive(Default)]
struct Positions {
    keys: HashMap<String, (u32, u32)>,
    interpolation: Option<(String, u32, u32, String)>,
}

enum Frame {
    Map {
        path: String,
        expecting_key: bool,
        key: String,
    },
    Seq {
        path: String,
    },
}

impl Positions {
    fn scan(text: &str) -> Positions {
        use saphyr_parser::{Event, Parser};
        let mut pos = Positions::default();
        let mut stack: Vec<Frame> = Vec::new();
        let as_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        // The path a node starting now has, given its parent.
        fn child_path(stack: &[Frame]) -> String {
            match stack.last() {
                Some(Frame::Map {
                    path,
                    expecting_key: false,
                    key,
                }) => join(path, key),
                Some(Frame::Map { path, .. }) => join(path, "?"),
                Some(Frame::Seq { path }) => path.clone(),
                None => String::new(),
            }
        }
        // A node ended: a key becomes "value expected", a value "key expected".
        fn node_done(stack: &mut [Frame]) {
            if let Some(Frame::Map { expecting_key, .. }) = stack.last_mut() {
                *expecting_key = !*expecting_key;
            }
        }
        for ev in Parser::new_from_str(text) {
            // Syntax errors are reported by the serde pass, with their position.
            let Ok((ev, span)) = ev else { break };
            let (line, col) = (as_u32(span.start.line()), as_u32(span.start.col() + 1));
            match ev {
                Event::Scalar(value, ..) => {
                    let path = child_path(&stack);
                    if let Some(Frame::Map {
                        path: parent,
                        expecting_key: true,
                        key,
                    }) = stack.last_mut()
                    {
                        *key = value.to_string();
                        pos.keys.entry(join(parent, &value)).or_insert((line, col));
                    } else if pos.interpolation.is_none() && interpolates(&value) {
                        pos.interpolation = Some((path, line, col, value.to_string()));
                    }
                    node_done(&mut stack);
                }
                Event::Alias(_) => node_done(&mut stack),
                Event::MappingStart(..) => {
                    let path = child_path(&stack);
                    stack.push(Frame::Map {
                        path,
                        expecting_key: true,
                        key: String::new(),
                    });
                }
                Event::SequenceStart(..) => {
                    let path = child_path(&stack);
                    stack.push(Frame::Seq { path });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    node_done(&mut stack);
                }
                _ => {}
            }
        }
        pos
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Whether a compose value interpolates a variable (`$VAR`, `${VAR}`); `$$` is a literal `$`.
fn interpolates(s: &str) -> bool {
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' {
            if chars.peek() == Some(&'$') {
                chars.next();
            } else {
                return true;
            }
        }
    }
    false
}

/// Compose's escape: `$$` is a literal `$`.
fn unescape(s: &str) -> String {
    s.replace("$$", "$")
}

struct Src<'a> {
    path: &'a Path,
    pos: Positions,
}

impl Src<'_> {
    /// An error at `key` (dotted path), located at the key or its nearest known parent.
    fn err(&self, key: &str, message: impl Into<String>) -> SpecError {
        let mut probe = key;
        let (line, column) = loop {
            if let Some(p) = self.pos.keys.get(probe) {
                break *p;
            }
            match probe.rsplit_once('.') {
                Some((parent, _)) => probe = parent,
                None => break (1, 1),
            }
        };
        SpecError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            key: Some(key.to_string()),
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Import

/// Parses compose text read from `path`; relative paths resolve against the file's directory
/// and must stay inside `workspace`.
pub fn parse_str(
    text: &str,
    path: &Path,
    workspace: &Path,
    hint: &SandboxHint<'_>,
) -> Result<ComposeImport, SpecError> {
    let pos = Positions::scan(text);
    let compose: dc::Compose = serde_norway::from_str(text).map_err(|e| {
        let (mut line, mut column) = e.location().map_or((1, 1), |l| {
            (
                u32::try_from(l.line()).unwrap_or(u32::MAX),
                u32::try_from(l.column()).unwrap_or(u32::MAX),
            )
        });
        let mut message = e.to_string();
        // Unknown keys land in the crate's flattened extension map, which reports the
        // position of the enclosing mapping; the event pass knows the key's own line.
        let mut key = None;
        if let Some(rest) = message.split("unknown attribute \"").nth(1)
            && let Some(name) = rest.split('"').next()
            && let Some((k, p)) = pos
                .keys
                .iter()
                .filter(|(k, _)| k.rsplit('.').next() == Some(name))
                .min_by_key(|(_, p)| **p)
        {
            (line, column) = *p;
            key = Some(k.clone());
            message = format!(
                "unknown key {name:?}: kennel reads the compose keys it can check (extensions start with 'x-')"
            );
        }
        SpecError::Invalid {
            path: path.to_path_buf(),
            line,
            column,
            key,
            message: format!("{message} (not a compose file kennel can read)"),
        }
    })?;
    let src = Src { path, pos };
    if let Some((key, line, column, value)) = &src.pos.interpolation {
        return Err(SpecError::Invalid {
            path: path.to_path_buf(),
            line: *line,
            column: *column,
            key: Some(key.clone()),
            message: format!(
                "{value:?} interpolates a variable; kennel does not pass the host's variables into a compose file: write the value (or `$$` for a literal `$`)"
            ),
        });
    }
    let dir = path.parent().unwrap_or(workspace);
    let ctx = Ctx {
        src: &src,
        dir,
        workspace,
    };
    let mut imp = ComposeImport {
        path: path.to_path_buf(),
        ..Default::default()
    };

    // Top level.
    if compose.includes.is_some() {
        return Err(src.err(
            "include",
            "including other compose files is not supported; put the services in this file",
        ));
    }
    if compose.secrets.is_some() {
        return Err(src.err(
            "secrets",
            "secrets are host files; not supported (mount files from the workspace instead)",
        ));
    }
    if compose.service.is_some() {
        return Err(src.err(
            "service",
            "not a compose key; services go under `services:`",
        ));
    }
    for (name, net) in &compose.networks.0 {
        let key = format!("networks.{name}");
        if name != "default" {
            return Err(src.err(
                &key,
                "kennel puts every service on the environment's internal network only; other networks are refused",
            ));
        }
        if matches!(net, dc::MapOrEmpty::Map(_)) {
            return Err(src.err(
                &key,
                "the default network is the environment's internal network; its settings cannot be changed",
            ));
        }
    }
    let mut declared_volumes = BTreeSet::new();
    for (name, v) in &compose.volumes.0 {
        let key = format!("volumes.{name}");
        check_volume_name(name).map_err(|m| src.err(&key, m))?;
        if let dc::MapOrEmpty::Map(v) = v {
            if v.driver.as_deref().is_some_and(|d| d != "local") {
                return Err(src.err(
                    &format!("{key}.driver"),
                    "only the local driver: other volume drivers can reach the network or the host",
                ));
            }
            if !v.driver_opts.is_empty() {
                return Err(src.err(
                    &format!("{key}.driver_opts"),
                    "driver options can bind any host path (o: bind, device: /); refused",
                ));
            }
            if matches!(&v.external, Some(dc::ExternalVolume::Bool(false)) | None) {
            } else {
                return Err(src.err(
                    &format!("{key}.external"),
                    "external volumes belong to the host, not to the environment; refused",
                ));
            }
            if v.name.is_some() {
                imp.not_applied.push((
                    format!("{key}.name"),
                    "kennel names the volume after the environment (kennel-<env>-vol-<name>)"
                        .into(),
                ));
            }
            if !v.labels.is_empty() {
                imp.not_applied.push((
                    format!("{key}.labels"),
                    "kennel labels its volumes itself".into(),
                ));
            }
        }
        declared_volumes.insert(name.clone());
    }

    // The dev service.
    let sandbox_name: Option<String> = match hint.service {
        Some(s) => {
            if !compose.services.0.contains_key(s) {
                return Err(src.err(
                    "services",
                    format!("devcontainer.json names service {s:?} as the dev container, but this file has no such service"),
                ));
            }
            Some(s.to_string())
        }
        None => {
            let dev_dockerfile = hint
                .dockerfile
                .map(Path::to_path_buf)
                .unwrap_or_else(|| workspace.join(".devcontainer/Dockerfile"));
            compose
                .services
                .0
                .iter()
                .find(|(_, s)| {
                    s.as_ref()
                        .and_then(|s| s.build_.as_ref())
                        .is_some_and(|b| build_paths(dir, b).1 == dev_dockerfile)
                })
                .map(|(n, _)| n.clone())
        }
    };

    let mut services: Vec<ServiceSpec> = Vec::new();
    for (name, svc) in &compose.services.0 {
        let base = format!("services.{name}");
        let Some(svc) = svc else {
            return Err(src.err(&base, "needs `image` or `build`"));
        };
        let is_sandbox = sandbox_name.as_deref() == Some(name.as_str());
        for (key, why) in ctx.refused_keys(&base, svc) {
            if is_sandbox {
                // The dev container becomes the sandbox, which keeps kennel's hardening
                // whatever the file says: these keys have no effect there, and are reported.
                imp.not_applied
                    .push((key, format!("not applied to the sandbox: {why}")));
            } else {
                return Err(src.err(&key, why));
            }
        }
        if !svc.profiles.is_empty() && !is_sandbox {
            imp.not_applied.push((
                format!("{base}.profiles"),
                "a service with profiles is not started by default (as with `docker-compose up`); kennel does not start it".into(),
            ));
            continue;
        }
        let env = ctx.environment(&base, svc, &mut imp.not_applied)?;
        let depends_on = ctx.depends_on(&base, svc)?;
        let build = match &svc.build_ {
            Some(b) => Some(ctx.build(&format!("{base}.build"), b, &mut imp.not_applied)?),
            None => None,
        };
        let image = match &svc.image {
            Some(i) => {
                let i = unescape(i);
                crate::spec::check_image(&i).map_err(|m| src.err(&format!("{base}.image"), m))?;
                Some(i)
            }
            None => None,
        };
        if image.is_none() && build.is_none() {
            return Err(src.err(&base, "needs `image` or `build`"));
        }
        ctx.not_applied(&base, svc, is_sandbox, &mut imp.not_applied);
        if is_sandbox {
            imp.sandbox = Some(ComposeSandbox {
                service: name.clone(),
                image,
                build,
                env,
                depends_on,
            });
            continue;
        }
        check_service_name(name).map_err(|m| src.err(&base, m))?;
        let (volumes, binds) = ctx.volumes(&base, svc, &declared_volumes, &mut imp.not_applied)?;
        let egress = match svc
            .extensions
            .iter()
            .map(|(k, v)| (extension_name(k), v))
            .find(|(k, _)| k.starts_with("x-kennel"))
        {
            None => ServiceEgress::None,
            Some((k, v)) => {
                let key = format!("{base}.{k}");
                if k != EGRESS_KEY {
                    return Err(src.err(
                        &key,
                        format!("unknown kennel key; the only one is {EGRESS_KEY}"),
                    ));
                }
                match v.as_str() {
                    Some("none") => ServiceEgress::None,
                    Some("proxy") => ServiceEgress::Proxy,
                    _ => {
                        return Err(src.err(
                            &key,
                            "must be \"none\" (the default) or \"proxy\" (the environment's proxy, under its policy)",
                        ));
                    }
                }
            }
        };
        let healthcheck = match &svc.healthcheck {
            Some(h) => ctx.healthcheck(&format!("{base}.healthcheck"), h)?,
            None => None,
        };
        let working_dir = match &svc.working_dir {
            Some(w) => {
                let w = unescape(w);
                check_target(&w).map_err(|m| src.err(&format!("{base}.working_dir"), m))?;
                Some(w)
            }
            None => None,
        };
        let user = match &svc.user {
            Some(u) if u.is_empty() || u.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                return Err(src.err(&format!("{base}.user"), "must be a user name or uid[:gid]"));
            }
            Some(u) => Some(unescape(u)),
            None => None,
        };
        let mut cap_drop = Vec::new();
        for c in &svc.cap_drop {
            cap_drop.push(cap_name(c).map_err(|m| src.err(&format!("{base}.cap_drop"), m))?);
        }
        services.push(ServiceSpec {
            name: name.clone(),
            image: image.unwrap_or_else(|| format!("kennel-build-svc-{name}")),
            egress,
            env,
            command: svc
                .command
                .as_ref()
                .map(|c| match c {
                    dc::Command::Simple(s) => split(&format!("{base}.command"), s, &src),
                    dc::Command::Args(a) => Ok(a.iter().map(|s| unescape(s)).collect()),
                })
                .transpose()?,
            run: ServiceRun {
                entrypoint: svc
                    .entrypoint
                    .as_ref()
                    .map(|c| match c {
                        dc::Entrypoint::Simple(s) => split(&format!("{base}.entrypoint"), s, &src),
                        dc::Entrypoint::List(a) => Ok(a.iter().map(|s| unescape(s)).collect()),
                    })
                    .transpose()?,
                working_dir,
                user,
                volumes,
                binds,
                healthcheck,
                depends_on,
                build,
                read_only: svc.read_only,
                cap_drop,
            },
        });
    }

    // Dependencies: known, not the sandbox (it starts last), no cycles; then start order.
    let names: BTreeSet<&str> = services.iter().map(|s| s.name.as_str()).collect();
    let deps_of_sandbox = imp.sandbox.iter().flat_map(|s| {
        s.depends_on
            .iter()
            .map(move |d| (s.service.as_str(), d.service.as_str()))
    });
    let deps_of_services = services.iter().flat_map(|s| {
        s.run
            .depends_on
            .iter()
            .map(move |d| (s.name.as_str(), d.service.as_str()))
    });
    for (from, to) in deps_of_services.chain(deps_of_sandbox) {
        if names.contains(to) {
            continue;
        }
        let key = format!("services.{from}.depends_on");
        let why = if sandbox_name.as_deref() == Some(to) {
            format!("{to:?} is the dev container (the sandbox), which starts after every service")
        } else if compose.services.0.contains_key(to) {
            format!("{to:?} is not started (it has profiles)")
        } else {
            format!("no service {to:?} in this file")
        };
        return Err(src.err(&key, why));
    }
    imp.services = start_order(&src, services)?;
    Ok(imp)
}

/// Orders services so each comes after those it depends on; refuses cycles.
fn start_order(
    src: &Src<'_>,
    mut pending: Vec<ServiceSpec>,
) -> Result<Vec<ServiceSpec>, SpecError> {
    let mut out: Vec<ServiceSpec> = Vec::new();
    while !pending.is_empty() {
        let started: BTreeSet<String> = out.iter().map(|s| s.name.clone()).collect();
        let Some(i) = pending.iter().position(|s| {
            s.run
                .depends_on
                .iter()
                .all(|d| started.contains(&d.service))
        }) else {
            let cycle: Vec<&str> = pending.iter().map(|s| s.name.as_str()).collect();
            return Err(src.err(
                &format!("services.{}.depends_on", cycle[0]),
                format!(
                    "services depend on each other in a cycle: {}",
                    cycle.join(", ")
                ),
            ));
        };
        out.push(pending.remove(i));
    }
    Ok(out)
}

fn split(key: &str, s: &str, src: &Src<'_>) -> Result<Vec<String>, SpecError> {
    shlex::split(&unescape(s))
        .filter(|v| !v.is_empty())
        .ok_or_else(|| src.err(key, "is not a valid command line (unbalanced quotes?)"))
}

/// Dockerfile and context of a build, resolved against the compose file's directory.
fn build_paths(dir: &Path, b: &dc::BuildStep) -> (PathBuf, PathBuf) {
    let (context, dockerfile) = match b {
        dc::BuildStep::Simple(c) => (c.as_str(), None),
        dc::BuildStep::Advanced(a) => (a.context.as_str(), a.dockerfile.as_deref()),
    };
    let context = crate::spec::normalize(&dir.join(context));
    let dockerfile = crate::spec::normalize(&context.join(dockerfile.unwrap_or("Dockerfile")));
    (context, dockerfile)
}

struct Ctx<'a> {
    src: &'a Src<'a>,
    dir: &'a Path,
    workspace: &'a Path,
}

impl Ctx<'_> {
    /// Everything that would give a service a way around the proxy or into the host.
    /// Returns each offending key (dotted path) with the reason.
    fn refused_keys(&self, base: &str, s: &dc::Service) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut bad = |k: &str, m: &str| out.push((format!("{base}.{k}"), m.to_string()));
        if s.privileged {
            bad(
                "privileged",
                "would give the service every capability and the host's devices; refused",
            );
        }
        if !s.ports.is_empty() {
            bad(
                "ports",
                "would publish the service on the host; services are reachable from the sandbox by name on the environment's network, without ports",
            );
        }
        if s.network_mode.is_some() || s.net.is_some() {
            let k = if s.network_mode.is_some() {
                "network_mode"
            } else {
                "net"
            };
            bad(
                k,
                "would take the service off the environment's internal network (host network, another container's); refused",
            );
        }
        let networks: Vec<&String> = match &s.networks {
            dc::Networks::Simple(n) => n.iter().collect(),
            dc::Networks::Advanced(n) => n.0.keys().collect(),
        };
        if let Some(n) = networks.iter().find(|n| n.as_str() != "default") {
            bad(
                "networks",
                &format!(
                    "network {n:?}: services are on the environment's internal network only; refused"
                ),
            );
        }
        if let dc::Networks::Advanced(n) = &s.networks
            && n.0.values().any(|v| matches!(v, dc::MapOrEmpty::Map(_)))
        {
            bad(
                "networks",
                "addresses and aliases on the environment's network are kennel's; refused",
            );
        }
        if s.pid.is_some() {
            bad(
                "pid",
                "would share another process namespace (the host's with `host`); refused",
            );
        }
        if s.ipc.as_deref().is_some_and(|i| i != "private") {
            bad(
                "ipc",
                "would share another IPC namespace (the host's with `host`); only `private`",
            );
        }
        if s.userns_mode.is_some() {
            bad("userns_mode", "would change the user namespace; refused");
        }
        if !s.devices.is_empty() {
            bad("devices", "would give the service host devices; refused");
        }
        for c in &s.cap_add {
            let name = match cap_name(c) {
                Ok(n) => n,
                Err(m) => {
                    bad("cap_add", &m);
                    continue;
                }
            };
            if !CAP_ADD_ALLOWED.contains(&name.as_str()) {
                bad(
                    "cap_add",
                    &format!(
                        "{c}: services may only name capabilities they already have ({}); refused",
                        CAP_ADD_ALLOWED.join(", ")
                    ),
                );
            }
        }
        if let Some(o) = s
            .security_opt
            .iter()
            .find(|o| !o.starts_with("no-new-privileges"))
        {
            bad(
                "security_opt",
                &format!(
                    "{o:?} could turn off seccomp or AppArmor; kennel keeps them (only no-new-privileges may be named)"
                ),
            );
        }
        if !s.sysctls.is_empty() {
            bad("sysctls", "kernel settings are kennel's; refused");
        }
        if !s.volumes_from.is_empty() {
            bad(
                "volumes_from",
                "would mount another container's volumes, possibly one that is not the environment's; refused",
            );
        }
        if s.cgroup_parent.is_some() {
            bad("cgroup_parent", "the cgroup is kennel's; refused");
        }
        if s.runtime.is_some() {
            bad("runtime", "the container runtime is kennel's; refused");
        }
        if let Some(l) = &s.logging
            && !matches!(
                l.driver.as_deref(),
                None | Some("json-file" | "local" | "none")
            )
        {
            bad(
                "logging",
                "log drivers other than json-file/local/none send logs from the host to an address of the file's choosing; refused",
            );
        }
        if s.secrets.is_some() {
            bad("secrets", "secrets are host files; not supported");
        }
        if !s.extends.is_empty() {
            bad(
                "extends",
                "not supported: it reads other files; write the service out",
            );
        }
        out
    }

    /// Safe keys kennel does not apply: recorded for the warning.
    fn not_applied(
        &self,
        base: &str,
        s: &dc::Service,
        is_sandbox: bool,
        out: &mut Vec<(String, String)>,
    ) {
        let mut note = |k: &str, why: &str| out.push((format!("{base}.{k}"), why.to_string()));
        if is_sandbox {
            let others = [
                ("command", s.command.is_some()),
                ("entrypoint", s.entrypoint.is_some()),
                ("volumes", !s.volumes.is_empty()),
                ("working_dir", s.working_dir.is_some()),
                ("user", s.user.is_some()),
                ("healthcheck", s.healthcheck.is_some()),
                ("cap_add", !s.cap_add.is_empty()),
                ("cap_drop", !s.cap_drop.is_empty()),
                ("read_only", s.read_only),
                ("profiles", !s.profiles.is_empty()),
            ];
            for (k, is_set) in others {
                if is_set {
                    note(
                        k,
                        "this is the dev container: it becomes the sandbox, which keeps kennel's settings (workspace at /workspace, kennel.toml's user, command and mounts)",
                    );
                }
            }
        }
        let keys = [
            (
                "container_name",
                s.container_name.is_some(),
                "kennel names its containers (kennel-<env>-svc-<name>)",
            ),
            (
                "hostname",
                s.hostname.is_some(),
                "services are reached by their service name",
            ),
            (
                "domainname",
                s.domainname.is_some(),
                "services are reached by their service name",
            ),
            (
                "restart",
                s.restart.is_some(),
                "kennel restarts services unless stopped",
            ),
            (
                "labels",
                !s.labels.is_empty(),
                "kennel labels its containers itself",
            ),
            (
                "links",
                !s.links.is_empty(),
                "every service is reachable by name on the environment's network",
            ),
            (
                "dns",
                !s.dns.is_empty(),
                "the resolver is kennel's (it answers the environment's names only)",
            ),
            ("dns_opt", !s.dns_opt.is_empty(), "the resolver is kennel's"),
            (
                "extra_hosts",
                !s.extra_hosts.is_empty(),
                "the environment's network has no route to other addresses",
            ),
            ("tmpfs", s.tmpfs.is_some(), "not supported yet"),
            ("ulimits", !s.ulimits.is_empty(), "not supported yet"),
            ("deploy", s.deploy.is_some(), "not supported (no swarm)"),
            ("mem_limit", s.mem_limit.is_some(), "not supported yet"),
            (
                "mem_reservation",
                s.mem_reservation.is_some(),
                "not supported yet",
            ),
            (
                "mem_swappiness",
                s.mem_swappiness.is_some(),
                "not supported yet",
            ),
            ("shm_size", s.shm_size.is_some(), "not supported yet"),
            ("group_add", !s.group_add.is_empty(), "not supported yet"),
            ("init", s.init, "not supported yet"),
            ("tty", s.tty, "services run without a terminal"),
            (
                "stdin_open",
                s.stdin_open,
                "services run without a terminal",
            ),
            ("stop_signal", s.stop_signal.is_some(), "not supported yet"),
            (
                "stop_grace_period",
                s.stop_grace_period.is_some(),
                "not supported yet",
            ),
            (
                "pull_policy",
                s.pull_policy.is_some(),
                "images are never pulled by kennel (no registry access); they must be present or built",
            ),
            ("scale", s.scale > 1, "one container per service"),
            (
                "logging",
                s.logging.is_some(),
                "the engine's default log driver is used",
            ),
        ];
        for (k, is_set, why) in keys {
            if is_set {
                note(k, why);
            }
        }
        // `expose` changes nothing: every port of a service is reachable on the environment's
        // network, from the environment only.
    }

    fn environment(
        &self,
        base: &str,
        s: &dc::Service,
        not_applied: &mut Vec<(String, String)>,
    ) -> Result<Vec<(String, String)>, SpecError> {
        let mut vars: BTreeMap<String, String> = BTreeMap::new();
        if let Some(f) = &s.env_file {
            let files: Vec<&String> = match f {
                dc::StringOrList::Simple(s) => vec![s],
                dc::StringOrList::List(l) => l.iter().collect(),
            };
            for f in files {
                let key = format!("{base}.env_file");
                let p = self.inside_workspace(&key, f)?;
                for (k, v) in crate::env::read_dotenv(&p, &[]).map_err(|m| self.src.err(&key, m))? {
                    vars.insert(k, v);
                }
            }
        }
        let mut put = |k: &str, v: Option<String>| -> Result<(), SpecError> {
            let key = format!("{base}.environment.{k}");
            if k.is_empty() || k.contains(['=', '\0']) {
                return Err(self.src.err(&key, "is not a variable name"));
            }
            match v {
                None => not_applied.push((
                    key,
                    "a variable without a value is taken from the host's environment by compose; kennel passes none".into(),
                )),
                Some(v) => {
                    vars.insert(k.to_string(), unescape(&v));
                }
            }
            Ok(())
        };
        match &s.environment {
            dc::Environment::List(l) => {
                for item in l {
                    match item.split_once('=') {
                        Some((k, v)) => put(k, Some(v.to_string()))?,
                        None => put(item, None)?,
                    }
                }
            }
            dc::Environment::KvPair(m) => {
                for (k, v) in m {
                    put(k, v.as_ref().map(|v| v.to_string()))?;
                }
            }
        }
        let mut out = Vec::new();
        for (k, v) in vars {
            if crate::env::PROXY_VARS
                .iter()
                .any(|p| p.eq_ignore_ascii_case(&k))
            {
                not_applied.push((
                    format!("{base}.environment.{k}"),
                    "the proxy variables are kennel's (set for services with x-kennel-egress: proxy)".into(),
                ));
                continue;
            }
            out.push((k, v));
        }
        Ok(out)
    }

    fn depends_on(&self, base: &str, s: &dc::Service) -> Result<Vec<DependsOn>, SpecError> {
        Ok(match &s.depends_on {
            dc::DependsOnOptions::Simple(l) => l
                .iter()
                .map(|n| DependsOn {
                    service: n.clone(),
                    healthy: false,
                })
                .collect(),
            dc::DependsOnOptions::Conditional(m) => {
                let mut out = Vec::new();
                for (n, c) in m {
                    let healthy = match c.condition.as_str() {
                        "service_started" => false,
                        "service_healthy" => true,
                        other => {
                            return Err(self.src.err(
                                &format!("{base}.depends_on.{n}"),
                                format!("condition {other:?} is not supported; use service_started or service_healthy"),
                            ));
                        }
                    };
                    out.push(DependsOn {
                        service: n.clone(),
                        healthy,
                    });
                }
                out
            }
        })
    }

    fn build(
        &self,
        key: &str,
        b: &dc::BuildStep,
        not_applied: &mut Vec<(String, String)>,
    ) -> Result<BuildSpec, SpecError> {
        let (context, dockerfile) = build_paths(self.dir, b);
        let mut args = Vec::new();
        let mut target = None;
        if let dc::BuildStep::Advanced(a) = b {
            if a.dockerfile_inline.is_some() {
                return Err(self.src.err(
                    &format!("{key}.dockerfile_inline"),
                    "not supported; write a Dockerfile in the workspace",
                ));
            }
            if a.network.is_some() {
                return Err(self.src.err(
                    &format!("{key}.network"),
                    "builds run on the environment's network, through its proxy; refused",
                ));
            }
            if !a.cache_from.is_empty() {
                not_applied.push((
                    format!("{key}.cache_from"),
                    "no registry access for a build cache".into(),
                ));
            }
            if !a.labels.is_empty() || a.shm_size.is_some() {
                not_applied.push((format!("{key}.labels/shm_size"), "not supported".into()));
            }
            match &a.args {
                None => {}
                Some(dc::BuildArgs::Simple(s)) => args.push(arg(s)),
                Some(dc::BuildArgs::List(l)) => args.extend(l.iter().map(|s| arg(s))),
                Some(dc::BuildArgs::KvPair(m)) => {
                    args.extend(m.iter().map(|(k, v)| (k.clone(), unescape(v))));
                }
            }
            target = a.target.clone();
        }
        if let Some((k, _)) = args
            .iter()
            .find(|(k, _)| crate::devcontainer::is_proxy_var(k))
        {
            return Err(self.src.err(
                &format!("{key}.args"),
                format!("{k}: the proxy build arguments are kennel's: builds go through the environment's proxy"),
            ));
        }
        args.sort();
        let spec = BuildSpec {
            context,
            dockerfile,
            args,
            target,
        };
        crate::devcontainer::check_build(&spec, self.workspace)
            .map_err(|m| self.src.err(key, m))?;
        Ok(spec)
    }

    fn volumes(
        &self,
        base: &str,
        s: &dc::Service,
        declared: &BTreeSet<String>,
        not_applied: &mut Vec<(String, String)>,
    ) -> Result<(Vec<ServiceVolume>, Vec<ServiceBind>), SpecError> {
        let key = format!("{base}.volumes");
        let err = |m: String| self.src.err(&key, m);
        let mut volumes = Vec::new();
        let mut binds = Vec::new();
        for v in &s.volumes {
            let (kind, source, target, read_only) = match v {
                dc::Volumes::Simple(spec) => {
                    let parts: Vec<&str> = spec.split(':').collect();
                    let (source, target, mode) = match parts.as_slice() {
                        [t] => (None, *t, ""),
                        [s, t] => (Some(*s), *t, ""),
                        [s, t, m] => (Some(*s), *t, *m),
                        _ => return Err(err(format!("{spec:?} is not SOURCE:TARGET[:MODE]"))),
                    };
                    let mut ro = false;
                    for m in mode.split(',').filter(|m| !m.is_empty()) {
                        match m {
                            "ro" => ro = true,
                            "rw" | "cached" | "delegated" | "consistent" | "nocopy" => {}
                            other => {
                                return Err(err(format!(
                                    "{spec:?}: mode {other:?} is not supported (ro, rw, cached, delegated, consistent, nocopy)"
                                )));
                            }
                        }
                    }
                    let kind = match source {
                        None => "anonymous",
                        Some(s) if s.starts_with(['/', '.', '~']) => "bind",
                        Some(_) => "volume",
                    };
                    (kind, source.map(str::to_string), target.to_string(), ro)
                }
                dc::Volumes::Advanced(a) => {
                    if a.bind
                        .as_ref()
                        .is_some_and(|b| b.propagation.is_some() || b.selinux.is_some())
                    {
                        return Err(err(format!(
                            "{}: bind propagation and SELinux relabelling are refused",
                            a.target
                        )));
                    }
                    if a.volume.as_ref().is_some_and(|v| v.subpath.is_some()) {
                        return Err(err(format!(
                            "{}: volume subpath is not supported",
                            a.target
                        )));
                    }
                    let kind = match a._type.as_str() {
                        "bind" => "bind",
                        "volume" if a.source.is_none() => "anonymous",
                        "volume" => "volume",
                        "tmpfs" => "tmpfs",
                        other => {
                            return Err(err(format!(
                                "{}: volume type {other:?} is refused (volume, bind inside the workspace, tmpfs)",
                                a.target
                            )));
                        }
                    };
                    (kind, a.source.clone(), a.target.clone(), a.read_only)
                }
            };
            let target = unescape(&target).trim_end_matches('/').to_string();
            check_target(&target).map_err(|m| err(format!("{target:?}: {m}")))?;
            match (kind, source) {
                ("volume", Some(name)) => {
                    if !declared.contains(&name) {
                        return Err(err(format!(
                            "volume {name:?} is not declared under the top-level `volumes:`"
                        )));
                    }
                    volumes.push(ServiceVolume {
                        name,
                        target,
                        read_only,
                    });
                }
                ("bind", Some(source)) => {
                    let source = self.inside_workspace(&key, &source)?;
                    binds.push(ServiceBind {
                        source,
                        target,
                        read_only,
                    });
                }
                (kind, _) => not_applied.push((
                    format!("{key} {target}"),
                    format!("{kind} volumes are not supported yet (the image's own data lives in the container until `kennel down`)"),
                )),
            }
        }
        Ok((volumes, binds))
    }

    /// A host path named by the file: relative to its directory; must exist and resolve
    /// (symlinks followed, as the engine would) inside the workspace.
    fn inside_workspace(&self, key: &str, p: &str) -> Result<PathBuf, SpecError> {
        if p.starts_with('~') {
            return Err(self.src.err(
                key,
                format!("{p}: the home directory is outside the workspace; only paths inside the workspace are mounted"),
            ));
        }
        let joined = crate::spec::normalize(&self.dir.join(unescape(p)));
        let real = std::fs::canonicalize(&joined)
            .map_err(|e| self.src.err(key, format!("{}: {e}", joined.display())))?;
        let ws =
            std::fs::canonicalize(self.workspace).unwrap_or_else(|_| self.workspace.to_path_buf());
        if !real.starts_with(&ws) {
            return Err(self.src.err(
                key,
                format!(
                    "{} is outside the workspace {}: the file naming it can be edited by the agent, so only paths inside the workspace are mounted",
                    real.display(),
                    ws.display()
                ),
            ));
        }
        if real.to_string_lossy().contains([':', ',']) {
            return Err(self.src.err(
                key,
                format!(
                    "{}: contains ':' or ','; Docker bind mounts cannot express such a path",
                    real.display()
                ),
            ));
        }
        Ok(real)
    }

    fn healthcheck(
        &self,
        key: &str,
        h: &dc::Healthcheck,
    ) -> Result<Option<ServiceHealthcheck>, SpecError> {
        let test = if h.disable {
            vec!["NONE".to_string()]
        } else {
            match &h.test {
                None => return Ok(None),
                Some(dc::HealthcheckTest::Single(s)) => vec!["CMD-SHELL".into(), unescape(s)],
                Some(dc::HealthcheckTest::Multiple(l)) => {
                    let l: Vec<String> = l.iter().map(|s| unescape(s)).collect();
                    match l.first().map(String::as_str) {
                        Some("CMD" | "CMD-SHELL") if l.len() > 1 => l,
                        Some("NONE") => l,
                        _ => {
                            return Err(self.src.err(
                                &format!("{key}.test"),
                                "must be a string, [\"CMD\", …], [\"CMD-SHELL\", \"…\"] or [\"NONE\"]",
                            ));
                        }
                    }
                }
            }
        };
        let ms = |k: &str, v: &Option<String>| -> Result<u64, SpecError> {
            match v {
                None => Ok(0),
                Some(v) => parse_compose_duration(v)
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .ok_or_else(|| {
                        self.src.err(
                            &format!("{key}.{k}"),
                            format!("{v:?} is not a duration like \"10s\", \"1m30s\" or \"500ms\" (at least 1ms)"),
                        )
                    }),
            }
        };
        let retries = u32::try_from(h.retries).map_err(|_| {
            self.src
                .err(&format!("{key}.retries"), "must be a number from 0")
        })?;
        Ok(Some(ServiceHealthcheck {
            test,
            interval_ms: ms("interval", &h.interval)?,
            timeout_ms: ms("timeout", &h.timeout)?,
            retries,
            start_period_ms: ms("start_period", &h.start_period)?,
        }))
    }
}

/// The key of an `x-` extension (the crate's type has no accessor; it serialises as its text).
fn extension_name(k: &dc::Extension) -> String {
    serde_norway::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn arg(s: &str) -> (String, String) {
    match s.split_once('=') {
        Some((k, v)) => (k.to_string(), unescape(v)),
        None => (s.to_string(), String::new()),
    }
}

/// `CAP_NET_ADMIN` / `net_admin` → `NET_ADMIN`.
fn cap_name(c: &str) -> Result<String, String> {
    let up = c.trim().to_ascii_uppercase();
    let name = up.strip_prefix("CAP_").unwrap_or(&up).to_string();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
        return Err(format!("{c:?} is not a capability name"));
    }
    Ok(name)
}

/// A compose duration: `10s`, `1m30s`, `500ms`, `1h`.
fn parse_compose_duration(s: &str) -> Option<Duration> {
    humantime::parse_duration(s.trim())
        .ok()
        .filter(|d| !d.is_zero())
}

/// A path inside a container: absolute, not `/`, no `..`, no `:` or `,`.
fn check_target(p: &str) -> Result<(), String> {
    if !p.starts_with('/') || p == "/" || p.split('/').any(|c| c == "..") || p.contains([':', ','])
    {
        return Err("must be an absolute path below / without '..', ',' or ':'".into());
    }
    Ok(())
}

/// Service names become container names and DNS names: `[a-z0-9][a-z0-9-]{0,39}`, not
/// kennel's own.
fn check_service_name(name: &str) -> Result<(), String> {
    crate::spec::validate_env_name(name).map_err(|_| {
        format!("service name {name:?}: kennel needs lowercase letters, digits and '-' (at most 40, starting with a letter or digit); rename the service")
    })?;
    if name == "proxy" || name == "sandbox" {
        return Err(format!(
            "service name {name:?} is reserved; rename the service"
        ));
    }
    Ok(())
}

/// Compose volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 64.
fn check_volume_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "volume name {name:?}: use letters, digits, '_', '.' and '-' (at most 64)"
        ))
    }
}

#[cfg(test)]
#[path = "compose_tests.rs"]
mod tests;
