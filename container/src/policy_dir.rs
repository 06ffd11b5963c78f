//! An environment's effective policy directory (kept in the daemon's state directory, mounted
//! read-only into the proxy): `policy.toml` including the embedded default list, the imported
//! project whitelist and local additions, plus the legacy `.env` settings translated to TOML.

use std::path::{Path, PathBuf};

use crate::spec::EnvSpec;

/// The policy file the proxy loads.
pub const POLICY_FILE: &str = "policy.toml";
/// The embedded default list (seed format).
pub const DEFAULT_LIST_FILE: &str = "default-whitelist.txt";
/// The imported project whitelist (seed format).
pub const PROJECT_LIST_FILE: &str = "whitelist.txt";
/// `USER_WHITELIST_DOMAINS` from the legacy `.env` (seed format).
pub const LEGACY_LIST_FILE: &str = "legacy-whitelist.txt";
pub(crate) fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn split_list(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Seed meaning of a bare domain: apex and subdomains.
fn seed_pattern(d: &str) -> String {
    if d.starts_with('.') || d.starts_with("*.") {
        d.to_string()
    } else {
        format!(".{d}")
    }
}

/// The effective upstream: the spec's `egress.upstream`, else the legacy variables
/// (`UPSTREAM_PROXY` URL, `UPSTREAM_SOCKS5` as `socks5h://`, `UPSTREAM_HTTP` as `http://`),
/// else `direct`.
pub fn effective_upstream(spec: &EnvSpec) -> String {
    let l = &spec.egress.legacy;
    if let Some(u) = &spec.egress.upstream {
        return u.clone();
    }
    if let Some(u) = &l.upstream_proxy {
        return u.clone();
    }
    if let Some(h) = &l.upstream_socks5 {
        return format!("socks5h://{h}");
    }
    if let Some(h) = &l.upstream_http {
        return format!("http://{h}");
    }
    "direct".to_string()
}

/// Renders `policy.toml` for `spec`.
pub fn render_policy(spec: &EnvSpec) -> String {
    let mut t = String::new();
    t.push_str(&format!(
        "# Effective egress policy of kennel environment {:?}, written by kennel when the\n\
         # environment is created. Edits here apply to the running proxy at once (it watches this\n\
         # directory) and last until the environment is recreated; lasting changes belong in the\n\
         # project's whitelist.\n",
        spec.name
    ));
    t.push_str("mode = \"enforce\"\n");
    t.push_str(&format!(
        "include = [\n  {{ path = \"{DEFAULT_LIST_FILE}\", format = \"seed\" }},\n  {{ path = \"{PROJECT_LIST_FILE}\", format = \"seed\" }},\n  {{ path = \"{LEGACY_LIST_FILE}\", format = \"seed\" }},\n]\n"
    ));
    t.push_str("\n[upstream]\n");
    t.push_str(&format!(
        "default = {}\n",
        toml_str(&effective_upstream(spec))
    ));
    if let Some(no) = &spec.egress.legacy.no_upstream {
        let hosts: Vec<String> = split_list(no)
            .iter()
            .map(|d| toml_str(&seed_pattern(d)))
            .collect();
        if !hosts.is_empty() {
            t.push_str(&format!(
                "\n[[upstream.route]]\nhosts = [{}]\nvia = \"direct\"\n",
                hosts.join(", ")
            ));
        }
    }
    t
}

fn write_atomic(dir: &Path, name: &str, content: &str) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content)?;
    // Readable by the proxy's user (65532) through the read-only mount, whatever the umask.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Writes an environment's effective policy directory: `policy.toml`, `default-whitelist.txt`
/// (embedded, seed format), `whitelist.txt` (imported copy of the project's whitelist, seed
/// format), `legacy-whitelist.txt` (`USER_WHITELIST_DOMAINS`). Each file is replaced atomically
/// (temp + rename). Creates `dir` if missing. Returns the path of `policy.toml`.
pub fn write_effective_policy(
    dir: &Path,
    spec: &EnvSpec,
    project_whitelist: Option<&str>,
) -> Result<PathBuf, std::io::Error> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    write_atomic(dir, DEFAULT_LIST_FILE, kennel_policy::EMBEDDED_DEFAULT_LIST)?;
    write_atomic(
        dir,
        PROJECT_LIST_FILE,
        project_whitelist.unwrap_or("# no project whitelist\n"),
    )?;
    let legacy = spec
        .egress
        .legacy
        .user_whitelist_domains
        .as_deref()
        .map(split_list)
        .unwrap_or_default();
    let mut legacy_text = String::from("# USER_WHITELIST_DOMAINS from .devcontainer/.env\n");
    for d in legacy {
        legacy_text.push_str(&d);
        legacy_text.push('\n');
    }
    write_atomic(dir, LEGACY_LIST_FILE, &legacy_text)?;
    write_atomic(dir, POLICY_FILE, &render_policy(spec))
}
