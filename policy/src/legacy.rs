//! Legacy `.env` variables of the Tinyproxy-based system kennel replaces.

use std::path::Path;

use crate::error::PolicyError;

/// Legacy `.env` variables: `UPSTREAM_SOCKS5=h:p` (→ `socks5h://h:p`), `UPSTREAM_HTTP=h:p`
/// (→ `http://h:p`), `UPSTREAM_PROXY=<url>`, `NO_UPSTREAM` (comma/space separated domains, seed
/// meaning, routed direct) and `USER_WHITELIST_DOMAINS` (comma/space separated, seed meaning,
/// allowed). Empty values count as unset.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LegacyEnv {
    /// `UPSTREAM_SOCKS5`: `host:port` of a SOCKS5 proxy; names are resolved by the proxy.
    pub upstream_socks5: Option<String>,
    /// `UPSTREAM_HTTP`: `host:port` of an HTTP proxy.
    pub upstream_http: Option<String>,
    /// `UPSTREAM_PROXY`: an upstream URL.
    pub upstream_proxy: Option<String>,
    /// `NO_UPSTREAM`: domains that bypass the upstream.
    pub no_upstream: Option<String>,
    /// `USER_WHITELIST_DOMAINS`: extra allowed domains.
    pub user_whitelist_domains: Option<String>,
}

/// The variable names, in field order.
pub(crate) const VARS: [&str; 5] = [
    "UPSTREAM_SOCKS5",
    "UPSTREAM_HTTP",
    "UPSTREAM_PROXY",
    "NO_UPSTREAM",
    "USER_WHITELIST_DOMAINS",
];

impl LegacyEnv {
    /// Reads the five variables from the process environment.
    pub fn from_process_env() -> LegacyEnv {
        let mut env = LegacyEnv::default();
        for name in VARS {
            if let Ok(v) = std::env::var(name) {
                env.set(name, v);
            }
        }
        env
    }

    /// Parses a dotenv file (`KEY=VALUE`, optional `export `, `#` comments, optional single or
    /// double quotes); unknown keys are ignored.
    pub fn from_dotenv(path: &Path) -> Result<LegacyEnv, PolicyError> {
        let src = std::fs::read_to_string(path).map_err(|e| PolicyError::io(path, e))?;
        let mut env = LegacyEnv::default();
        let mut offset = 0;
        for line in src.split_inclusive('\n') {
            let start = offset;
            offset += line.len();
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let body = trimmed
                .strip_prefix("export ")
                .unwrap_or(trimmed)
                .trim_start();
            let Some((key, value)) = body.split_once('=') else {
                let col = line.len() - line.trim_start().len();
                return Err(PolicyError::at(
                    path,
                    &src,
                    start + col,
                    format!(
                        "line {trimmed:?} is not KEY=VALUE; expected e.g. UPSTREAM_SOCKS5=host:port"
                    ),
                ));
            };
            let key = key.trim();
            let value = value.trim();
            let value = if let Some(v) = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            {
                v.to_string()
            } else {
                // Unquoted: an inline comment starts at " #".
                match value.find(" #") {
                    Some(i) => value[..i].trim_end().to_string(),
                    None => value.to_string(),
                }
            };
            env.set(key, value);
        }
        Ok(env)
    }

    fn set(&mut self, key: &str, value: String) {
        let slot = match key {
            "UPSTREAM_SOCKS5" => &mut self.upstream_socks5,
            "UPSTREAM_HTTP" => &mut self.upstream_http,
            "UPSTREAM_PROXY" => &mut self.upstream_proxy,
            "NO_UPSTREAM" => &mut self.no_upstream,
            "USER_WHITELIST_DOMAINS" => &mut self.user_whitelist_domains,
            _ => return,
        };
        *slot = Some(value);
    }

    /// Non-empty values as (name, value), in [`VARS`] order.
    pub(crate) fn entries(&self) -> Vec<(&'static str, &str)> {
        [
            &self.upstream_socks5,
            &self.upstream_http,
            &self.upstream_proxy,
            &self.no_upstream,
            &self.user_whitelist_domains,
        ]
        .into_iter()
        .zip(VARS)
        .filter_map(|(v, name)| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| (name, v))
        })
        .collect()
    }
}
