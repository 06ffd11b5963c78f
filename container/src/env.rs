//! Sandbox environment variables from the workspace: the seed `.devcontainer/.env` (its keys other
//! than the proxy settings kennel's policy takes from it), devcontainer.json `containerEnv`,
//! `env_file` and `[env]` of `kennel.toml` — merged in that order, a later source winning
//! (docs/environments.md, "Variables").
//!
//! Values are secrets as far as kennel knows: [`SandboxEnv`]'s `Debug` shows names only, and the
//! daemon reports names only. Names kennel sets itself (the proxy variables above all) are
//! refused, so a workspace cannot route the sandbox around its proxy.

use std::path::Path;

/// Proxy variables: kennel's (the sandbox's only way out is its proxy). Compared ignoring case.
pub const PROXY_VARS: [&str; 5] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "FTP_PROXY",
];

/// The `.env` keys that configure the proxy (read by `kennel_policy::LegacyEnv`), not the sandbox.
pub const LEGACY_PROXY_KEYS: [&str; 8] = kennel_policy::LEGACY_VARS;

/// Variables set from the workspace, by source. [`SandboxEnv::merged`] applies the precedence.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SandboxEnv {
    /// `.devcontainer/.env` keys other than [`LEGACY_PROXY_KEYS`] (lowest precedence; the system
    /// kennel replaces passed the whole file to the dev container).
    pub dotenv: Vec<(String, String)>,
    /// devcontainer.json `containerEnv` (set through [`SandboxEnv::set_container_env`]).
    pub container_env: Vec<(String, String)>,
    /// `kennel.toml` `env_file`.
    pub env_file: Vec<(String, String)>,
    /// `kennel.toml` `[env]` (highest precedence).
    pub table: Vec<(String, String)>,
}

impl std::fmt::Debug for SandboxEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only (values may be secrets and a Debug print may end up in a log): the wire
        // form's Debug, which prints just that.
        std::fmt::Debug::fmt(&kennel_api::types::EnvDoc::from(self), f)
    }
}

impl SandboxEnv {
    /// All variables, later sources overriding earlier ones: `.env` < `containerEnv` <
    /// `env_file` < `[env]`; sorted by name.
    pub fn merged(&self) -> Vec<(String, String)> {
        let mut m = std::collections::BTreeMap::new();
        for layer in [
            &self.dotenv,
            &self.container_env,
            &self.env_file,
            &self.table,
        ] {
            for (k, v) in layer {
                m.insert(k.clone(), v.clone());
            }
        }
        m.into_iter().collect()
    }

    /// The names of [`SandboxEnv::merged`] (what `kennel inspect` shows).
    pub fn names(&self) -> Vec<String> {
        self.merged().into_iter().map(|(k, _)| k).collect()
    }

    /// Sets the devcontainer.json `containerEnv` layer, after checking every name.
    pub fn set_container_env(&mut self, vars: Vec<(String, String)>) -> Result<(), String> {
        for (k, _) in &vars {
            check_var_name(k).map_err(|m| format!("containerEnv.{k}: {m}"))?;
        }
        self.container_env = vars;
        Ok(())
    }

    /// Checks every name of every layer (the daemon re-checks what a client sent).
    pub fn validate(&self) -> Result<(), String> {
        for (source, layer) in [
            (".devcontainer/.env", &self.dotenv),
            ("containerEnv", &self.container_env),
            ("env_file", &self.env_file),
            ("env", &self.table),
        ] {
            for (k, _) in layer {
                check_var_name(k).map_err(|m| format!("{source}: {k}: {m}"))?;
            }
        }
        Ok(())
    }
}

/// Checks a variable name: a shell-style identifier that kennel does not set itself.
pub fn check_var_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(
            "is not a valid variable name (letters, digits and '_', not starting with a digit)"
                .into(),
        );
    }
    let upper = name.to_ascii_uppercase();
    if PROXY_VARS.contains(&upper.as_str()) {
        return Err(format!(
            "proxy variables are kennel's: the sandbox's only way out is its proxy, and kennel sets {name} to it. Remove it; to send traffic through an upstream proxy, set `egress.upstream` in kennel.toml"
        ));
    }
    if matches!(
        name,
        "HOME" | "KENNEL_ENV" | "KENNEL_NOTIFY_DIR" | "GIT_ASKPASS" | "GIT_CONFIG_COUNT"
    ) || name.starts_with("GIT_CONFIG_KEY_")
        || name.starts_with("GIT_CONFIG_VALUE_")
    {
        return Err(
            "is set by kennel (HOME from `home`, git's safe.directory through GIT_CONFIG_*, the token helper); remove it"
                .to_string(),
        );
    }
    Ok(())
}

/// Parses dotenv text (`KEY=VALUE`, optional `export `, `#` comments, optional single or double
/// quotes, ` #` starting an inline comment after an unquoted value), as the seed's `.env`.
/// Errors are `(line number, message)`.
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    kennel_policy::dotenv::entries(text)
        .map(|entry| match entry {
            Ok(e) => Ok((e.key.to_string(), e.value)),
            // The line itself is not echoed: it may hold a secret.
            Err(bad) => Err((
                bad.line,
                "is not KEY=VALUE (nor a # comment or blank)".to_string(),
            )),
        })
        .collect()
}

/// Reads a dotenv file and checks its names; `skip` names are left out (the `.env` proxy keys).
/// Errors name the file and line.
pub fn read_dotenv(path: &Path, skip: &[&str]) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let vars =
        parse_dotenv(&text).map_err(|(line, m)| format!("{}:{line}: {m}", path.display()))?;
    let mut out = Vec::new();
    for (k, v) in vars {
        if skip.contains(&k.as_str()) {
            continue;
        }
        check_var_name(&k).map_err(|m| format!("{}: {k}: {m}", path.display()))?;
        out.push((k, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_dotenv_container_env_env_file_table() {
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        let mut e = SandboxEnv {
            dotenv: vec![
                kv("A", "dotenv"),
                kv("B", "dotenv"),
                kv("C", "dotenv"),
                kv("D", "dotenv"),
            ],
            env_file: vec![kv("C", "file"), kv("D", "file")],
            table: vec![kv("D", "table")],
            ..Default::default()
        };
        e.set_container_env(vec![kv("B", "ce"), kv("C", "ce"), kv("D", "ce")])
            .expect("ok");
        assert_eq!(
            e.merged(),
            vec![
                kv("A", "dotenv"),
                kv("B", "ce"),
                kv("C", "file"),
                kv("D", "table")
            ]
        );
        let dbg = format!("{e:?}");
        assert!(
            !dbg.contains("dotenv\"") && !dbg.contains("table\""),
            "{dbg}"
        );
    }

    #[test]
    fn proxy_and_kennel_variables_are_refused_in_any_case() {
        for n in ["HTTP_PROXY", "https_proxy", "No_Proxy", "all_proxy"] {
            let e = check_var_name(n).expect_err(n);
            assert!(e.contains("proxy variables are kennel's"), "{e}");
        }
        for n in [
            "HOME",
            "GIT_CONFIG_COUNT",
            "GIT_CONFIG_KEY_0",
            "1X",
            "A-B",
            "",
        ] {
            assert!(check_var_name(n).is_err(), "{n}");
        }
        assert!(check_var_name("RUST_LOG").is_ok());
        let mut e = SandboxEnv::default();
        assert!(
            e.set_container_env(vec![("HTTPS_PROXY".into(), "x".into())])
                .expect_err("refused")
                .starts_with("containerEnv.HTTPS_PROXY")
        );
    }

    #[test]
    fn dotenv_parses_like_the_seed() {
        let v = parse_dotenv("# c\nexport A=1\nB=\"two words\"\nC='x' \nD=v # note\n\nE=\n")
            .expect("parse");
        let names: Vec<_> = v.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(names, ["A=1", "B=two words", "C=x", "D=v", "E="]);
        assert_eq!(parse_dotenv("A=1\nnope\n").expect_err("bad").0, 2);
    }

    /// Every proxy setting the policy crate reads from a seed `.env` (including the
    /// `.env.example` form `UPSTREAM_PROXY_TYPE/HOST/PORT`) stays out of the sandbox.
    #[test]
    fn dotenv_proxy_settings_never_become_sandbox_variables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(".env");
        let mut text = String::from("KEEP=1\n");
        for key in LEGACY_PROXY_KEYS {
            text.push_str(&format!("{key}=x\n"));
        }
        std::fs::write(&path, text).expect("write .env");
        let vars = read_dotenv(&path, &LEGACY_PROXY_KEYS).expect("read");
        assert_eq!(vars, [("KEEP".to_string(), "1".to_string())]);
        assert!(LEGACY_PROXY_KEYS.contains(&"UPSTREAM_PROXY_TYPE"));
    }
}
