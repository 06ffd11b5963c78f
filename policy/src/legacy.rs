//! Legacy `.env` variables of the Tinyproxy-based system kennel replaces, and the one place
//! that decides what they mean ([`LegacyEnv::resolve`]). The policy builder, the container
//! backend (which renders them into an environment's `policy.toml`), the proxy's `--check` and
//! the CLI all use this resolution, so they cannot disagree at the edges.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::PolicyError;
use crate::pattern::HostPattern;
use crate::upstream::{Upstream, parse_upstream_url};

/// Legacy `.env` variables (values as written; empty values count as unset):
///
/// - `UPSTREAM_SOCKS5=h:p` → `socks5h://h:p` (names resolved by the upstream, as Tinyproxy did);
/// - `UPSTREAM_HTTP=h:p` → `http://h:p` (ignored, with a warning, when `UPSTREAM_SOCKS5` is also
///   set: the replaced system used SOCKS5 then);
/// - `UPSTREAM_PROXY=<url>`, where `socks5://` means `socks5h://` (Tinyproxy's meaning);
/// - `UPSTREAM_PROXY_TYPE` (`socks5` | `http` | `https`) + `UPSTREAM_PROXY_HOST` +
///   `UPSTREAM_PROXY_PORT`, the old `.env.example` form (unset while the host is empty);
/// - `NO_UPSTREAM` (comma/space separated domains, seed meaning) → routed direct;
/// - `USER_WHITELIST_DOMAINS` (comma/space separated, seed meaning) → allowed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LegacyEnv {
    /// `UPSTREAM_SOCKS5`: `host:port` of a SOCKS5 proxy; names are resolved by the proxy.
    pub upstream_socks5: Option<String>,
    /// `UPSTREAM_HTTP`: `host:port` of an HTTP proxy.
    pub upstream_http: Option<String>,
    /// `UPSTREAM_PROXY`: an upstream URL.
    pub upstream_proxy: Option<String>,
    /// `UPSTREAM_PROXY_TYPE`: `socks5`, `http` or `https`.
    pub upstream_proxy_type: Option<String>,
    /// `UPSTREAM_PROXY_HOST`: the upstream's host name or IP address.
    pub upstream_proxy_host: Option<String>,
    /// `UPSTREAM_PROXY_PORT`: the upstream's port.
    pub upstream_proxy_port: Option<String>,
    /// `NO_UPSTREAM`: domains that bypass the upstream.
    pub no_upstream: Option<String>,
    /// `USER_WHITELIST_DOMAINS`: extra allowed domains.
    pub user_whitelist_domains: Option<String>,
    /// Where each value was read (by variable name). Values without an entry came from the
    /// process environment or an API request and are shown as `$NAME`.
    pub origins: BTreeMap<&'static str, Origin>,
}

/// Where a legacy value was written: a dotenv file, its line, and the column its value starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The dotenv file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: u32,
    /// 1-based column (in characters) of the first character of the value.
    pub col: u32,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// The variable names of the replaced system's proxy settings, in field order (a `.env` key in
/// this list configures the proxy, never the sandbox).
pub const VARS: [&str; 8] = [
    "UPSTREAM_SOCKS5",
    "UPSTREAM_HTTP",
    "UPSTREAM_PROXY",
    "UPSTREAM_PROXY_TYPE",
    "UPSTREAM_PROXY_HOST",
    "UPSTREAM_PROXY_PORT",
    "NO_UPSTREAM",
    "USER_WHITELIST_DOMAINS",
];

/// What the legacy variables amount to, decided once by [`LegacyEnv::resolve`].
#[derive(Debug, Clone, Default)]
pub struct LegacySettings {
    /// The default upstream the variables choose (applies unless the policy sets
    /// `[upstream] default`).
    pub upstream: Option<LegacyUpstream>,
    /// `NO_UPSTREAM` entries (seed meaning), routed direct.
    pub no_upstream: Vec<LegacyEntry>,
    /// `USER_WHITELIST_DOMAINS` entries (seed meaning), allowed.
    pub allow: Vec<LegacyEntry>,
    /// Every variable that is set, with where it was read and what became of it, in
    /// [`LegacyEnv`] field order.
    pub applied: Vec<AppliedVar>,
    /// Things a person should fix, each naming the file and line (e.g. two upstream variables
    /// of which one is ignored).
    pub warnings: Vec<String>,
}

/// The default upstream chosen by legacy variables.
#[derive(Debug, Clone)]
pub struct LegacyUpstream {
    /// The variable(s) it came from, e.g. `UPSTREAM_SOCKS5`.
    pub from: &'static str,
    /// The parsed upstream (its `Display` never shows credentials).
    pub upstream: Upstream,
    /// The canonical URL, credentials included (for rendering a policy file; never print it).
    pub url: String,
}

/// One entry of `NO_UPSTREAM` or `USER_WHITELIST_DOMAINS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyEntry {
    /// The entry as written (valid in a seed list).
    pub text: String,
    /// Its meaning (a bare domain also covers its subdomains).
    pub pattern: HostPattern,
}

/// A legacy variable that is set, and its effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedVar {
    /// The variable name.
    pub name: &'static str,
    /// `FILE:LINE` of a dotenv file, or `$NAME` for the process environment.
    pub at: String,
    /// What it does (never shows credentials).
    pub effect: String,
}

impl fmt::Display for AppliedVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at == format!("${}", self.name) {
            write!(f, "{} (environment): {}", self.name, self.effect)
        } else {
            write!(f, "{} ({}): {}", self.name, self.at, self.effect)
        }
    }
}

impl LegacyEnv {
    /// Reads the legacy variables through `lookup` (`|k| std::env::var(k).ok()` for the process
    /// environment; a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> LegacyEnv {
        let mut env = LegacyEnv::default();
        for name in VARS {
            if let Some(v) = lookup(name) {
                env.set(name, v);
            }
        }
        env
    }

    /// Reads the legacy variables from the process environment.
    pub fn from_process_env() -> LegacyEnv {
        LegacyEnv::from_lookup(|k| std::env::var(k).ok())
    }

    /// Parses a dotenv file (`KEY=VALUE`, optional `export `, `#` comments, optional single or
    /// double quotes); unknown keys are ignored. Records where each value was written, so that
    /// every later error or warning names the file and line.
    pub fn from_dotenv(path: &Path) -> Result<LegacyEnv, PolicyError> {
        let src = std::fs::read_to_string(path).map_err(|e| PolicyError::io(path, e))?;
        LegacyEnv::parse_dotenv(&src, path)
    }

    /// Same as [`LegacyEnv::from_dotenv`] with the file's text given; `path` is used in
    /// messages.
    pub fn parse_dotenv(src: &str, path: &Path) -> Result<LegacyEnv, PolicyError> {
        let mut env = LegacyEnv::default();
        for entry in crate::dotenv::entries(src) {
            let entry = entry.map_err(|bad| {
                PolicyError::at(
                    path,
                    src,
                    bad.offset,
                    "line is not KEY=VALUE (not shown: it may hold a secret); expected e.g. UPSTREAM_SOCKS5=host:port".to_string(),
                )
            })?;
            let Some(name) = VARS.iter().copied().find(|n| *n == entry.key) else {
                continue;
            };
            let (line_no, col) = crate::error::line_col(src, entry.value_offset);
            env.set(name, entry.value);
            env.origins.insert(
                name,
                Origin {
                    file: path.to_path_buf(),
                    line: line_no,
                    col,
                },
            );
        }
        Ok(env)
    }

    /// Records where `name`'s value was written (e.g. after the variables travelled over the
    /// daemon API). Returns false, recording nothing, for a name that is not a legacy variable.
    pub fn set_origin(&mut self, name: &str, origin: Origin) -> bool {
        match VARS.iter().find(|v| **v == name) {
            Some(v) => {
                self.origins.insert(v, origin);
                true
            }
            None => false,
        }
    }

    fn slot(&mut self, key: &str) -> Option<&mut Option<String>> {
        Some(match key {
            "UPSTREAM_SOCKS5" => &mut self.upstream_socks5,
            "UPSTREAM_HTTP" => &mut self.upstream_http,
            "UPSTREAM_PROXY" => &mut self.upstream_proxy,
            "UPSTREAM_PROXY_TYPE" => &mut self.upstream_proxy_type,
            "UPSTREAM_PROXY_HOST" => &mut self.upstream_proxy_host,
            "UPSTREAM_PROXY_PORT" => &mut self.upstream_proxy_port,
            "NO_UPSTREAM" => &mut self.no_upstream,
            "USER_WHITELIST_DOMAINS" => &mut self.user_whitelist_domains,
            _ => return None,
        })
    }

    fn set(&mut self, key: &str, value: String) {
        if let Some(slot) = self.slot(key) {
            *slot = Some(value);
        }
    }

    fn raw(&self, name: &str) -> Option<&str> {
        match name {
            "UPSTREAM_SOCKS5" => self.upstream_socks5.as_deref(),
            "UPSTREAM_HTTP" => self.upstream_http.as_deref(),
            "UPSTREAM_PROXY" => self.upstream_proxy.as_deref(),
            "UPSTREAM_PROXY_TYPE" => self.upstream_proxy_type.as_deref(),
            "UPSTREAM_PROXY_HOST" => self.upstream_proxy_host.as_deref(),
            "UPSTREAM_PROXY_PORT" => self.upstream_proxy_port.as_deref(),
            "NO_UPSTREAM" => self.no_upstream.as_deref(),
            "USER_WHITELIST_DOMAINS" => self.user_whitelist_domains.as_deref(),
            _ => None,
        }
    }

    /// Each set variable overrides the one in `fallback` (with its origin); unset ones keep
    /// `fallback`'s. Used to layer a dotenv file over the process environment.
    pub fn or(mut self, fallback: LegacyEnv) -> LegacyEnv {
        for name in VARS {
            if self.raw(name).is_none()
                && let Some(v) = fallback.raw(name)
            {
                self.set(name, v.to_string());
                if let Some(o) = fallback.origins.get(name) {
                    self.origins.insert(name, o.clone());
                }
            }
        }
        self
    }

    /// The trimmed value and the byte offset of its first character in the stored value;
    /// `None` when unset or blank.
    fn value(&self, name: &str) -> Option<(usize, &str)> {
        let raw = self.raw(name)?;
        let v = raw.trim();
        if v.is_empty() {
            return None;
        }
        Some((raw.len() - raw.trim_start().len(), v))
    }

    /// Non-empty values as (name, value), in [`VARS`] order.
    pub(crate) fn entries(&self) -> Vec<(&'static str, &str)> {
        VARS.iter()
            .filter_map(|n| self.value(n).map(|(_, v)| (*n, v)))
            .collect()
    }

    /// `FILE:LINE` where `name` was set, or `$NAME`.
    pub fn at(&self, name: &str) -> String {
        match self.origins.get(name) {
            Some(o) => o.to_string(),
            None => format!("${name}"),
        }
    }

    /// An error inside the value of `name`, `offset` bytes into its trimmed value.
    fn err(&self, name: &str, offset: usize, message: impl Into<String>) -> PolicyError {
        let message = message.into();
        let (lead, v) = self.value(name).unwrap_or((0, ""));
        match self.origins.get(name) {
            Some(o) => {
                let raw = self.raw(name).unwrap_or("");
                let upto = (lead + offset).min(raw.len());
                let chars = raw.get(..upto).map_or(0, |s| s.chars().count());
                PolicyError::Located {
                    file: o.file.clone(),
                    line: o.line,
                    col: o
                        .col
                        .saturating_add(u32::try_from(chars).unwrap_or(u32::MAX)),
                    message,
                }
            }
            None => PolicyError::at(Path::new(&format!("${name}")), v, offset, message),
        }
    }

    /// Decides what the variables mean. Errors name the file, line and column (or `$NAME`
    /// for the process environment) and say what was expected.
    pub fn resolve(&self) -> Result<LegacySettings, PolicyError> {
        let mut out = LegacySettings::default();
        let mut effects: BTreeMap<&'static str, String> = BTreeMap::new();

        // Candidates for the default upstream, in precedence order.
        let mut cands: Vec<LegacyUpstream> = Vec::new();
        if let Some((_, v)) = self.value("UPSTREAM_PROXY") {
            let (url, mapped) = match split_scheme(v) {
                Some((s, rest)) if s == "socks5" => (format!("socks5h://{rest}"), true),
                _ => (v.to_string(), false),
            };
            let up = self.parse_url("UPSTREAM_PROXY", &url)?;
            effects.insert(
                "UPSTREAM_PROXY",
                if mapped {
                    format!(
                        "default upstream {up} (socks5:// in the replaced system's variables meant names resolved by the upstream, as Tinyproxy did)"
                    )
                } else {
                    format!("default upstream {up}")
                },
            );
            cands.push(LegacyUpstream {
                from: "UPSTREAM_PROXY",
                upstream: up,
                url,
            });
        }
        if let Some(c) = self.proxy_triple(&mut effects)? {
            cands.push(c);
        }
        for (name, scheme, allowed) in [
            ("UPSTREAM_SOCKS5", "socks5h", &["socks5", "socks5h"][..]),
            ("UPSTREAM_HTTP", "http", &["http", "https"][..]),
        ] {
            let Some((_, v)) = self.value(name) else {
                continue;
            };
            let url = match split_scheme(v) {
                Some((s, rest)) if allowed.contains(&s.as_str()) => {
                    // socks5:// here, too, meant names resolved by the upstream.
                    let s = if s == "socks5" { "socks5h" } else { s.as_str() };
                    format!("{s}://{rest}")
                }
                Some((s, _)) => {
                    return Err(self.err(
                        name,
                        0,
                        format!(
                            "{name} is a {s}:// URL; expected host:port (or a {} URL)",
                            allowed.join("/")
                        ),
                    ));
                }
                None => format!("{scheme}://{v}"),
            };
            let up = self.parse_url(name, &url)?;
            effects.insert(name, format!("default upstream {up}"));
            cands.push(LegacyUpstream {
                from: name,
                upstream: up,
                url,
            });
        }
        // Both UPSTREAM_SOCKS5 and UPSTREAM_HTTP: the replaced system used SOCKS5.
        if cands.iter().any(|c| c.from == "UPSTREAM_SOCKS5")
            && let Some(i) = cands.iter().position(|c| c.from == "UPSTREAM_HTTP")
        {
            cands.remove(i);
            out.warnings.push(format!(
                "{}: warning: UPSTREAM_HTTP is ignored because UPSTREAM_SOCKS5 ({}) is also set; the replaced system used SOCKS5 then, and so does kennel. Remove one of the two",
                self.at("UPSTREAM_HTTP"),
                self.at("UPSTREAM_SOCKS5")
            ));
            effects.insert(
                "UPSTREAM_HTTP",
                format!(
                    "ignored: UPSTREAM_SOCKS5 ({}) is also set and wins",
                    self.at("UPSTREAM_SOCKS5")
                ),
            );
        }
        if let [first, second, ..] = cands.as_slice() {
            return Err(self.err(
                locating_var(second.from),
                0,
                format!(
                    "{} and {} ({}) both choose the default upstream; set only one",
                    second.from,
                    first.from,
                    self.at(locating_var(first.from))
                ),
            ));
        }
        out.upstream = cands.into_iter().next();

        for name in ["NO_UPSTREAM", "USER_WHITELIST_DOMAINS"] {
            let Some((_, v)) = self.value(name) else {
                continue;
            };
            let mut entries = Vec::new();
            for (off, entry) in split_list(v) {
                let pattern = crate::parse::parse_seed_entry(entry)
                    .map_err(|(at, m)| self.err(name, off + at, m))?;
                entries.push(LegacyEntry {
                    text: entry.to_string(),
                    pattern,
                });
            }
            let shown: Vec<String> = entries.iter().map(|e| e.pattern.to_string()).collect();
            if name == "NO_UPSTREAM" {
                effects.insert(
                    name,
                    format!("direct (no upstream) for {}", shown.join(", ")),
                );
                out.no_upstream = entries;
            } else {
                effects.insert(name, format!("allowed: {}", shown.join(", ")));
                out.allow = entries;
            }
        }

        for name in VARS {
            if self.value(name).is_some() {
                out.applied.push(AppliedVar {
                    name,
                    at: self.at(name),
                    effect: effects
                        .remove(name)
                        .unwrap_or_else(|| "no effect".to_string()),
                });
            }
        }
        Ok(out)
    }

    fn parse_url(&self, name: &str, url: &str) -> Result<Upstream, PolicyError> {
        parse_upstream_url(url).map_err(|m| self.err(name, 0, m))
    }

    /// `UPSTREAM_PROXY_TYPE` / `_HOST` / `_PORT`. The `.env.example` of the replaced system
    /// ships the type (and maybe a port) with an empty host: that means no upstream.
    fn proxy_triple(
        &self,
        effects: &mut BTreeMap<&'static str, String>,
    ) -> Result<Option<LegacyUpstream>, PolicyError> {
        const TYPE: &str = "UPSTREAM_PROXY_TYPE";
        const HOST: &str = "UPSTREAM_PROXY_HOST";
        const PORT: &str = "UPSTREAM_PROXY_PORT";
        let Some((_, host)) = self.value(HOST) else {
            for n in [TYPE, PORT] {
                effects.insert(n, format!("no effect: {HOST} is empty or unset"));
            }
            return Ok(None);
        };
        let Some((_, ty)) = self.value(TYPE) else {
            return Err(self.err(
                HOST,
                0,
                format!("{HOST} is set but {TYPE} is not; expected {TYPE}=socks5 or {TYPE}=http"),
            ));
        };
        let scheme = match ty.to_ascii_lowercase().as_str() {
            // Tinyproxy's `upstream socks5` sent names to the upstream.
            "socks5" | "socks5h" => "socks5h",
            "http" => "http",
            "https" => "https",
            _ => {
                return Err(self.err(
                    TYPE,
                    0,
                    format!("{TYPE} {ty:?} is not supported; expected socks5, http or https"),
                ));
            }
        };
        let Some((_, port)) = self.value(PORT) else {
            return Err(self.err(
                HOST,
                0,
                format!("{HOST} is set but {PORT} is not; expected {PORT}=<1-65535>"),
            ));
        };
        if !port.bytes().all(|b| b.is_ascii_digit()) || !matches!(port.parse::<u16>(), Ok(1..)) {
            return Err(self.err(
                PORT,
                0,
                format!("{PORT} {port:?} is not a port; expected 1-65535"),
            ));
        }
        if host.contains(['/', '@']) || host.contains("://") {
            return Err(self.err(
                HOST,
                0,
                format!("{HOST} {host:?} is not a host; expected a name or IP address (the type and port have their own variables)"),
            ));
        }
        let host_part = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let url = format!("{scheme}://{host_part}:{port}");
        let up = self.parse_url(HOST, &url)?;
        let effect = format!("default upstream {up}");
        for n in [TYPE, HOST, PORT] {
            effects.insert(n, effect.clone());
        }
        Ok(Some(LegacyUpstream {
            from: TRIPLE,
            upstream: up,
            url,
        }))
    }
}

/// `scheme://rest` with the scheme lowercased.
fn split_scheme(v: &str) -> Option<(String, &str)> {
    let (s, rest) = v.split_once("://")?;
    Some((s.to_ascii_lowercase(), rest))
}

/// The variable an upstream candidate is located by in messages.
fn locating_var(from: &'static str) -> &'static str {
    if from == TRIPLE {
        "UPSTREAM_PROXY_HOST"
    } else {
        from
    }
}

/// How the `UPSTREAM_PROXY_TYPE` / `_HOST` / `_PORT` form is named in messages.
const TRIPLE: &str = "UPSTREAM_PROXY_TYPE/HOST/PORT";

/// Splits a legacy list variable on commas and whitespace: (byte offset, entry).
pub(crate) fn split_list(v: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in v.char_indices() {
        let sep = c == ',' || c.is_whitespace();
        match (sep, start) {
            (true, Some(s)) => {
                out.push((s, &v[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, &v[s..]));
    }
    out
}
