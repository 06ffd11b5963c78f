//! An environment's effective policy directory (kept in the daemon's state directory, mounted
//! read-only into the proxy): `policy.toml` including the embedded default list, the imported
//! project whitelist and local additions, plus the legacy `.env` settings translated to TOML.

use std::path::{Path, PathBuf};

use crate::spec::{EgressProfile, EnvSpec};

/// The policy file the proxy loads.
pub const POLICY_FILE: &str = "policy.toml";
/// The embedded default list (seed format).
pub const DEFAULT_LIST_FILE: &str = "default-whitelist.txt";
/// The imported project whitelist (seed format).
pub const PROJECT_LIST_FILE: &str = "whitelist.txt";
/// `USER_WHITELIST_DOMAINS` from the legacy `.env` (seed format).
pub const LEGACY_LIST_FILE: &str = "legacy-whitelist.txt";

/// `policy.toml` as values, serialised by `toml` (which escapes), never formatted by hand.
#[derive(serde::Serialize)]
struct PolicyFile {
    mode: &'static str,
    include: Vec<IncludeEntry>,
    upstream: UpstreamSection,
}

#[derive(serde::Serialize)]
struct IncludeEntry {
    path: &'static str,
    format: &'static str,
}

#[derive(serde::Serialize)]
struct UpstreamSection {
    default: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    route: Vec<UpstreamRoute>,
}

#[derive(serde::Serialize)]
struct UpstreamRoute {
    hosts: Vec<String>,
    via: &'static str,
}

/// The `.env`'s `NO_UPSTREAM` hosts as a `direct` route (none when it names none).
fn direct_routes(legacy: &kennel_policy::LegacySettings) -> Vec<UpstreamRoute> {
    if legacy.no_upstream.is_empty() {
        return Vec::new();
    }
    vec![UpstreamRoute {
        hosts: legacy
            .no_upstream
            .iter()
            .map(|e| e.pattern.to_string())
            .collect(),
        via: "direct",
    }]
}

/// Serialises a value built from strings, integers, arrays and tables.
///
/// Invariant: such values always serialise (`toml` fails only on unsupported shapes such as a
/// bare `None` at the top or non-string map keys, which these types do not have).
pub(crate) fn to_toml<T: serde::Serialize>(value: &T) -> String {
    toml::to_string(value).expect("plain TOML value (strings, integers, arrays, tables)")
}

/// The effective default upstream URL (credentials included; never print it): the spec's
/// `egress.upstream`, else what the legacy variables choose (decided by
/// [`kennel_policy::LegacyEnv::resolve`], the same code the proxy and the CLI use), else
/// `direct`.
pub fn effective_upstream(spec: &EnvSpec) -> Result<String, kennel_policy::PolicyError> {
    if let Some(u) = &spec.egress.upstream {
        return Ok(u.clone());
    }
    let legacy = spec.egress.legacy.resolve()?;
    Ok(legacy
        .upstream
        .map_or_else(|| "direct".to_string(), |u| u.url))
}

/// Renders `policy.toml` for `spec`. Fails only when the legacy variables are invalid (spec
/// loading already rejects those, naming the `.env` file and line).
pub fn render_policy(spec: &EnvSpec) -> Result<String, kennel_policy::PolicyError> {
    let legacy = spec.egress.legacy.resolve()?;
    let mut t = String::new();
    t.push_str(&format!(
        "# Effective egress policy of kennel environment {:?}, written by kennel when the\n\
         # environment is created. Edits here apply to the running proxy at once (it watches this\n\
         # directory) and last until the environment is recreated; lasting changes belong in the\n\
         # project's whitelist.\n",
        spec.name
    ));
    // Which legacy variables made this policy, for the person reading it. Values that lost
    // their position still came from the workspace's `.devcontainer/.env`.
    for a in &legacy.applied {
        let at = if spec.egress.legacy.origins.contains_key(a.name) {
            a.at.clone()
        } else {
            spec.workspace
                .join(crate::spec::SEED_DOTENV)
                .display()
                .to_string()
        };
        // A control character (a newline in a path) must not end the comment.
        let line: String = format!("# legacy {} ({at}): {}", a.name, a.effect)
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        t.push_str(&line);
        t.push('\n');
    }
    let seed = |path| IncludeEntry {
        path,
        format: "seed",
    };
    let file = PolicyFile {
        mode: "enforce",
        include: vec![
            seed(DEFAULT_LIST_FILE),
            seed(PROJECT_LIST_FILE),
            seed(LEGACY_LIST_FILE),
        ],
        upstream: UpstreamSection {
            default: effective_upstream(spec)?,
            route: direct_routes(&legacy),
        },
    };
    t.push('\n');
    t.push_str(&to_toml(&file));
    Ok(t)
}

fn write_atomic(dir: &Path, name: &str, content: &str) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = (|| {
        std::fs::write(&tmp, content)?;
        // Readable by the proxy's user (65532) through the read-only mount, whatever the umask.
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        std::fs::rename(&tmp, &path)
    })();
    if written.is_err() {
        // A full disk leaves the old file in force and no partial temporary file behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(|()| path)
}

/// Writes an environment's effective policy directory: `policy.toml`, `default-whitelist.txt`
/// (embedded, seed format), `whitelist.txt` (imported copy of the project's whitelist, seed
/// format), `legacy-whitelist.txt` (`USER_WHITELIST_DOMAINS`). Each file is replaced atomically
/// (temp + rename). Creates `dir` if missing. Returns the path of `policy.toml`. Invalid legacy
/// variables (rejected earlier by spec loading) are an `InvalidData` error carrying the policy
/// crate's message, which names the `.env` file and line.
pub fn write_effective_policy(
    dir: &Path,
    spec: &EnvSpec,
    project_whitelist: Option<&str>,
) -> Result<PathBuf, std::io::Error> {
    let invalid = |e: kennel_policy::PolicyError| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
    };
    let legacy = spec.egress.legacy.resolve().map_err(invalid)?;
    let policy = render_policy(spec).map_err(invalid)?;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    write_atomic(dir, DEFAULT_LIST_FILE, kennel_policy::EMBEDDED_DEFAULT_LIST)?;
    write_atomic(
        dir,
        PROJECT_LIST_FILE,
        project_whitelist.unwrap_or("# no project whitelist\n"),
    )?;
    let mut legacy_text = String::from("# USER_WHITELIST_DOMAINS from .devcontainer/.env\n");
    for e in &legacy.allow {
        // The entry as written: seed format, read back with the same meaning.
        legacy_text.push_str(&e.text);
        legacy_text.push('\n');
    }
    write_atomic(dir, LEGACY_LIST_FILE, &legacy_text)?;
    write_atomic(dir, POLICY_FILE, &policy)
}

/// The policy directory of egress profile `profile`: `policy-<profile>` beside the
/// environment's own `main` policy directory (never inside it: each proxy mounts only its own).
pub fn profile_policy_dir(main: &Path, profile: &str) -> PathBuf {
    sibling(main, &format!("policy-{profile}"))
}

/// The access-log directory of egress profile `profile`'s proxy: `logs-<profile>` beside the
/// main proxy's `main_log_dir`.
pub fn profile_log_dir(main_log_dir: &Path, profile: &str) -> PathBuf {
    sibling(main_log_dir, &format!("logs-{profile}"))
}

fn sibling(dir: &Path, name: &str) -> PathBuf {
    match dir.parent() {
        Some(parent) => parent.join(name),
        // A root directory has no sibling: the profile's directory goes inside it.
        None => dir.join(name),
    }
}

/// The file name of a profile's `i`-th include file (0-based) in its policy directory.
pub fn profile_list_file(i: usize) -> String {
    format!("include-{}.txt", i + 1)
}

/// Renders `policy.toml` of egress profile `profile`: its include files (seed format) and its
/// upstream (the environment's effective one, legacy `NO_UPSTREAM` routes included, when the
/// profile names none). Unlike the environment's own policy, the embedded default list is not
/// included: a profile allows what its include files and `kennel allow --profile` say.
pub fn render_profile_policy(
    spec: &EnvSpec,
    profile: &EgressProfile,
) -> Result<String, kennel_policy::PolicyError> {
    let legacy = spec.egress.legacy.resolve()?;
    let mut t = format!(
        "# Effective egress policy of profile {:?} of kennel environment {:?}, written by kennel\n\
         # when the environment is created; served by its own proxy (alias proxy-{}). Edits here\n\
         # apply at once and last until the environment is recreated; `kennel allow --profile {}`\n\
         # edits this file.\n",
        profile.name, spec.name, profile.name, profile.name
    );
    for (i, src) in profile.include.iter().enumerate() {
        let line: String = format!("# {}: {}", profile_list_file(i), src.display())
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        t.push_str(&line);
        t.push('\n');
    }
    let (default, route) = match &profile.upstream {
        Some(u) => (u.clone(), Vec::new()),
        None => (effective_upstream(spec)?, direct_routes(&legacy)),
    };
    #[derive(serde::Serialize)]
    struct ProfilePolicyFile {
        mode: &'static str,
        include: Vec<OwnedInclude>,
        upstream: UpstreamSection,
    }
    #[derive(serde::Serialize)]
    struct OwnedInclude {
        path: String,
        format: &'static str,
    }
    let file = ProfilePolicyFile {
        mode: "enforce",
        include: (0..profile.lists.len())
            .map(|i| OwnedInclude {
                path: profile_list_file(i),
                format: "seed",
            })
            .collect(),
        upstream: UpstreamSection { default, route },
    };
    t.push('\n');
    t.push_str(&to_toml(&file));
    Ok(t)
}

/// Writes egress profile `profile`'s policy directory `dir`: its include files' text as
/// `include-N.txt` and `policy.toml` ([`render_profile_policy`]), each replaced atomically.
/// Creates `dir` if missing. Returns the path of `policy.toml`.
pub fn write_profile_policy(
    dir: &Path,
    spec: &EnvSpec,
    profile: &EgressProfile,
) -> Result<PathBuf, std::io::Error> {
    let invalid = |e: kennel_policy::PolicyError| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
    };
    let policy = render_profile_policy(spec, profile).map_err(invalid)?;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    for (i, text) in profile.lists.iter().enumerate() {
        write_atomic(dir, &profile_list_file(i), text)?;
    }
    write_atomic(dir, POLICY_FILE, &policy)
}
