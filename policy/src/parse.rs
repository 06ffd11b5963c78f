//! Policy sources -> [`Policy`]: TOML policy files, native and seed-format list files, the
//! embedded default list and legacy variables. Every error names file, line and column.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::error::PolicyError;
use crate::inputs::Inputs;
use crate::legacy::LegacyEnv;
use crate::model::{AllowEntry, CidrEntry, Mode, Policy, Route, RuleRef};
use crate::pattern::{HostIndex, HostPattern, PatternKind};
use crate::upstream::{Credentials, Upstream, parse_upstream_url};

/// The embedded default list (the replaced system's default whitelist, seed format).
pub const EMBEDDED_DEFAULT_LIST: &str = include_str!("../default-whitelist.txt");
/// How rules from the embedded list are attributed.
pub const EMBEDDED_DEFAULT_NAME: &str = "<embedded>/default-whitelist.txt";
/// Optional lists a policy can include by name (`include = [{ preset = "vscode" }]`), native
/// format, never part of the default list: the hosts IDEs download their servers from into a
/// dev container (docs/environments.md, "IDE dev containers").
pub const PRESETS: [(&str, &str); 2] = [
    ("vscode", include_str!("../presets/vscode.txt")),
    ("jetbrains", include_str!("../presets/jetbrains.txt")),
];

/// Ports allowed when `[defaults] ports` is not given.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// How a list file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ListFormat {
    /// Native patterns: `example.com` exact, `*.example.com`, `.example.com`.
    #[default]
    Native,
    /// The replaced system's format: bare `example.com` means `.example.com` (apex and
    /// subdomains); the Tinyproxy shape `\.example\.com$` means `*.example.com`; any other
    /// regex-looking line is an error.
    Seed,
}

// ---------------------------------------------------------------------------------------------
// Raw TOML model.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    mode: Option<Spanned<Mode>>,
    #[serde(default)]
    include: Vec<Spanned<toml::Value>>,
    defaults: Option<RawDefaults>,
    allow: Option<RawHosts>,
    deny: Option<RawHosts>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    upstream: Option<RawUpstream>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    ports: Option<Spanned<Vec<Spanned<i64>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHosts {
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    #[serde(default)]
    cidrs: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    #[serde(default)]
    cidrs: Vec<Spanned<String>>,
    ports: Option<Spanned<Vec<Spanned<i64>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    default: Option<Spanned<String>>,
    default_credentials: Option<Spanned<RawCreds>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    #[serde(default)]
    cidrs: Vec<Spanned<String>>,
    via: Spanned<String>,
    credentials: Option<Spanned<RawCreds>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCreds {
    env: Option<String>,
    file: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Builder.

pub(crate) struct Builder {
    mode: Mode,
    default_ports: Arc<[u16]>,
    primary: Option<PathBuf>,
    sources: Vec<PathBuf>,
    hasher: Sha256,
    /// Secrets (credentials) are hashed here only: the version hash is shown by the proxy's
    /// `/policy`, and a hash of a short `user:password` could be brute-forced offline. This one
    /// only feeds the reload's change detection, which never leaves the process.
    secret_hasher: Sha256,
    allow: Vec<AllowEntry>,
    allow_idx: HostIndex,
    deny: Vec<RuleRef>,
    deny_idx: HostIndex,
    allow_cidrs: Vec<CidrEntry>,
    deny_cidrs: Vec<CidrEntry>,
    rules: usize,
    routes: Vec<Route>,
    route_idx: HostIndex,
    default_upstream: Upstream,
    default_upstream_set: bool,
}

impl Builder {
    pub(crate) fn new() -> Builder {
        Builder {
            mode: Mode::Enforce,
            default_ports: Arc::from(&DEFAULT_PORTS[..]),
            primary: None,
            sources: Vec::new(),
            hasher: Sha256::new(),
            secret_hasher: Sha256::new(),
            allow: Vec::new(),
            allow_idx: HostIndex::default(),
            deny: Vec::new(),
            deny_idx: HostIndex::default(),
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
            rules: 0,
            routes: Vec::new(),
            route_idx: HostIndex::default(),
            default_upstream: Upstream::Direct,
            default_upstream_set: false,
        }
    }

    fn hash_part(&mut self, tag: &str, content: &[u8]) {
        self.hasher.update(tag.as_bytes());
        self.hasher.update([0]);
        self.hasher.update((content.len() as u64).to_le_bytes());
        self.hasher.update(content);
    }

    /// Hashes a secret: its name goes into the version hash, its value only into the change
    /// digest (see `secret_hasher`).
    fn hash_secret(&mut self, tag: &str, content: &[u8]) {
        self.hash_part(tag, b"<secret>");
        self.secret_hasher.update(tag.as_bytes());
        self.secret_hasher.update([0]);
        self.secret_hasher
            .update((content.len() as u64).to_le_bytes());
        self.secret_hasher.update(content);
    }

    fn add_source(&mut self, path: &Path, content: &str) {
        self.hash_part(&path.to_string_lossy(), content.as_bytes());
        if !self.sources.iter().any(|p| p == path) {
            self.sources.push(path.to_path_buf());
        }
    }

    fn add_allow(&mut self, p: &HostPattern, rule: RuleRef, ports: Arc<[u16]>) {
        let id = u32::try_from(self.allow.len()).unwrap_or(u32::MAX);
        self.allow_idx.insert(p, id);
        self.allow.push(AllowEntry { rule, ports });
    }

    fn add_deny(&mut self, p: &HostPattern, rule: RuleRef) {
        let id = u32::try_from(self.deny.len()).unwrap_or(u32::MAX);
        self.deny_idx.insert(p, id);
        self.deny.push(rule);
    }

    /// Adds a parsed list as allow rules with the default ports.
    fn add_list(&mut self, display: &Arc<str>, entries: Vec<(HostPattern, u32)>) {
        let ports = self.default_ports.clone();
        self.allow.reserve(entries.len());
        self.allow_idx.reserve(entries.len());
        for (p, line) in entries {
            let rule = RuleRef {
                file: display.clone(),
                line,
                pattern: p.to_string().into(),
            };
            self.add_allow(&p, rule, ports.clone());
        }
    }

    fn finish(self) -> Policy {
        let version = self.hasher.finalize();
        let hash = version
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        let mut change = Sha256::new();
        change.update(version);
        change.update(self.secret_hasher.finalize());
        let change_digest: [u8; 32] = change.finalize().into();
        Policy {
            mode: self.mode,
            primary: self.primary,
            sources: self.sources,
            hash,
            change_digest,
            allow: self.allow,
            allow_idx: self.allow_idx,
            deny: self.deny,
            deny_idx: self.deny_idx,
            allow_cidrs: self.allow_cidrs,
            deny_cidrs: self.deny_cidrs,
            rules: self.rules,
            routes: self.routes,
            route_idx: self.route_idx,
            default_upstream: self.default_upstream,
            default_ports: self.default_ports,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lists.

/// Tinyproxy `\.example\.com$` -> `example.com`; `None` if the line does not have that shape.
fn tinyproxy_suffix_shape(s: &str) -> Option<String> {
    let inner = s.strip_prefix("\\.")?.strip_suffix('$')?;
    let mut out = String::new();
    let mut rest = inner;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("\\.") {
            out.push('.');
            rest = r;
            continue;
        }
        let c = rest.chars().next()?;
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            out.push(c);
            rest = &rest[1..];
        } else {
            return None;
        }
    }
    Some(out)
}

fn looks_like_regex(s: &str) -> bool {
    s.contains(['\\', '^', '$', '(', ')', '[', ']', '{', '}', '|', '+', '?'])
        || (s.contains('*') && !s.starts_with("*.") || s.matches('*').count() > 1)
}

/// Parses one seed-format entry. Errors carry the byte offset inside `s`.
pub(crate) fn parse_seed_entry(s: &str) -> Result<HostPattern, (usize, String)> {
    if let Some(domain) = tinyproxy_suffix_shape(s) {
        return HostPattern::parse(&format!("*.{domain}")).map_err(|(_, m)| (0, m));
    }
    if looks_like_regex(s) {
        return Err((
            0,
            format!(
                "regular expression {s:?} is not supported in a seed list; expected a bare domain (example.com, meaning it and its subdomains) or exactly the Tinyproxy shape \\.example\\.com$"
            ),
        ));
    }
    let mut p = HostPattern::parse(s)?;
    if p.kind == PatternKind::Exact {
        p.kind = PatternKind::ApexAndSubdomains;
    }
    Ok(p)
}

/// Parses a list file's text. Returns (pattern, line) pairs.
pub(crate) fn parse_list(
    src: &str,
    file: &Path,
    format: ListFormat,
) -> Result<Vec<(HostPattern, u32)>, PolicyError> {
    let mut out = Vec::with_capacity(src.bytes().filter(|b| *b == b'\n').count() + 1);
    let mut offset = 0;
    for (n, raw) in src.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        let lead = line.len() - line.trim_start().len();
        let entry = line.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let parsed = match format {
            ListFormat::Native => HostPattern::parse(entry),
            ListFormat::Seed => parse_seed_entry(entry),
        };
        match parsed {
            Ok(p) => out.push((p, u32::try_from(n + 1).unwrap_or(u32::MAX))),
            Err((at, msg)) => return Err(PolicyError::at(file, src, start + lead + at, msg)),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// TOML.

fn toml_error(file: &Path, src: &str, e: &toml::de::Error) -> PolicyError {
    let offset = e.span().map_or(0, |s| s.start);
    let msg = e.message().trim().replace('\n', " ");
    PolicyError::at(file, src, offset, msg)
}

struct Ctx<'a> {
    file: &'a Path,
    display: Arc<str>,
    src: &'a str,
    /// Every file read while building (includes, credential files), for the reloader.
    inputs: &'a RefCell<Inputs>,
}

impl Ctx<'_> {
    fn err(&self, offset: usize, msg: impl Into<String>) -> PolicyError {
        PolicyError::at(self.file, self.src, offset, msg)
    }

    fn line(&self, offset: usize) -> u32 {
        crate::error::line_col(self.src, offset).0
    }

    fn rule(&self, offset: usize, pattern: String) -> RuleRef {
        RuleRef {
            file: self.display.clone(),
            line: self.line(offset),
            pattern: pattern.into(),
        }
    }

    fn pattern(&self, s: &Spanned<String>) -> Result<HostPattern, PolicyError> {
        HostPattern::parse(s.get_ref()).map_err(|(at, msg)| self.err(s.span().start + 1 + at, msg))
    }

    fn ports(&self, raw: &Spanned<Vec<Spanned<i64>>>) -> Result<Arc<[u16]>, PolicyError> {
        if raw.get_ref().is_empty() {
            return Err(self.err(
                raw.span().start,
                "empty port list; expected at least one port, e.g. ports = [443]",
            ));
        }
        let mut ports = Vec::new();
        for p in raw.get_ref() {
            match u16::try_from(*p.get_ref()) {
                Ok(n) if n != 0 => ports.push(n),
                _ => {
                    return Err(self.err(
                        p.span().start,
                        format!("port {} is out of range; expected 1-65535", p.get_ref()),
                    ));
                }
            }
        }
        ports.sort_unstable();
        ports.dedup();
        Ok(Arc::from(ports))
    }

    fn cidr(&self, s: &Spanned<String>) -> Result<IpNet, PolicyError> {
        let text = s.get_ref().trim();
        let at = s.span().start + 1;
        let net = if text.contains('/') {
            text.parse::<IpNet>().map_err(|_| {
                self.err(
                    at,
                    format!("invalid cidr {text:?}; expected an address range such as 10.0.0.0/8 or fd00::/8"),
                )
            })?
        } else {
            let ip = text.parse::<std::net::IpAddr>().map_err(|_| {
                self.err(
                    at,
                    format!("invalid cidr {text:?}; expected an address range such as 10.0.0.0/8 or fd00::/8"),
                )
            })?;
            IpNet::from(ip)
        };
        if net.trunc() != net {
            return Err(self.err(
                at,
                format!("cidr {text:?} has host bits set; expected {}", net.trunc()),
            ));
        }
        Ok(net)
    }

    fn credentials(
        &self,
        b: &mut Builder,
        raw: &Spanned<RawCreds>,
    ) -> Result<Credentials, PolicyError> {
        let at = raw.span().start;
        let c = raw.get_ref();
        match (&c.env, &c.file) {
            (Some(_), Some(_)) => Err(self.err(
                at,
                "credentials have both env and file; expected only one of { env = \"VAR\" } or { file = \"path\" }",
            )),
            (None, None) => Err(self.err(
                at,
                "credentials name no source; expected { env = \"VAR\" } or { file = \"path\" }",
            )),
            (Some(var), None) => {
                let (line, col) = crate::error::line_col(self.src, at);
                let value = std::env::var(var).map_err(|_| PolicyError::Credentials {
                    file: self.file.to_path_buf(),
                    line,
                    col,
                    message: format!(
                        "credentials variable {var} is not set; expected it to hold user:password"
                    ),
                })?;
                b.hash_secret(&format!("env:{var}"), value.as_bytes());
                Credentials::parse_pair(&value).ok_or_else(|| PolicyError::Credentials {
                    file: self.file.to_path_buf(),
                    line,
                    col,
                    message: format!(
                        "credentials variable {var} does not hold user:password"
                    ),
                })
            }
            (None, Some(f)) => {
                let path = resolve(self.file, f);
                let read = self.inputs.borrow_mut().read_to_string(&path);
                let value = read.map_err(|e| {
                    self.err(
                        at,
                        format!("cannot read credentials file {}: {e}", path.display()),
                    )
                })?;
                b.hash_secret(&path.to_string_lossy(), value.as_bytes());
                if !b.sources.iter().any(|p| p == &path) {
                    b.sources.push(path.clone());
                }
                Credentials::parse_pair(&value).ok_or_else(|| {
                    self.err(
                        at,
                        format!(
                            "credentials file {} does not hold user:password",
                            path.display()
                        ),
                    )
                })
            }
        }
    }

    fn upstream(
        &self,
        b: &mut Builder,
        via: &Spanned<String>,
        creds: Option<&Spanned<RawCreds>>,
        creds_key: &str,
    ) -> Result<Upstream, PolicyError> {
        let mut up =
            parse_upstream_url(via.get_ref()).map_err(|m| self.err(via.span().start + 1, m))?;
        if let Some(raw) = creds {
            if up == Upstream::Direct {
                return Err(self.err(
                    raw.span().start,
                    format!("{creds_key} given for a direct upstream; expected a proxy URL"),
                ));
            }
            if up.credentials().is_some() {
                return Err(self.err(
                    raw.span().start,
                    format!(
                        "both user:password in the upstream URL and {creds_key} are set; expected only one"
                    ),
                ));
            }
            let c = self.credentials(b, raw)?;
            up.set_credentials(c);
        }
        Ok(up)
    }
}

/// Resolves an include/credentials path relative to the policy file's directory.
fn resolve(origin: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match origin.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// What an `include` entry names: a list file, or an embedded [`PRESETS`] list.
enum IncludeSource {
    File(String, ListFormat),
    Preset(&'static str, &'static str),
}

fn include_spec(ctx: &Ctx<'_>, v: &Spanned<toml::Value>) -> Result<IncludeSource, PolicyError> {
    const EXPECTED: &str =
        "expected \"file.txt\" or { path = \"file.txt\", format = \"seed\" | \"native\" }";
    const EXPECTED_PRESET: &str = "expected { preset = \"vscode\" | \"jetbrains\" }";
    let at = v.span().start;
    match v.get_ref() {
        toml::Value::String(s) => Ok(IncludeSource::File(s.clone(), ListFormat::Native)),
        toml::Value::Table(t) if t.contains_key("preset") => {
            if let Some(other) = t.keys().find(|k| *k != "preset") {
                return Err(ctx.err(
                    at,
                    format!("a preset include takes no `{other}`; {EXPECTED_PRESET}"),
                ));
            }
            let name = t
                .get("preset")
                .and_then(toml::Value::as_str)
                .ok_or_else(|| {
                    ctx.err(
                        at,
                        format!("include preset must be a string; {EXPECTED_PRESET}"),
                    )
                })?;
            PRESETS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(n, text)| IncludeSource::Preset(n, text))
                .ok_or_else(|| {
                    let known: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
                    ctx.err(
                        at,
                        format!(
                            "unknown include preset {name:?}; known presets: {}",
                            known.join(", ")
                        ),
                    )
                })
        }
        toml::Value::Table(t) => {
            let mut path = None;
            let mut format = ListFormat::Native;
            for (k, val) in t {
                match (k.as_str(), val) {
                    ("path", toml::Value::String(s)) => path = Some(s.clone()),
                    ("format", toml::Value::String(s)) if s == "seed" => format = ListFormat::Seed,
                    ("format", toml::Value::String(s)) if s == "native" => {
                        format = ListFormat::Native;
                    }
                    ("format", other) => {
                        return Err(ctx.err(
                            at,
                            format!(
                                "unknown include format {other}; expected \"seed\" or \"native\""
                            ),
                        ));
                    }
                    ("path", _) => {
                        return Err(
                            ctx.err(at, format!("include path must be a string; {EXPECTED}"))
                        );
                    }
                    (other, _) => {
                        return Err(
                            ctx.err(at, format!("unknown key `{other}` in include; {EXPECTED}"))
                        );
                    }
                }
            }
            let path =
                path.ok_or_else(|| ctx.err(at, format!("include without path; {EXPECTED}")))?;
            Ok(IncludeSource::File(path, format))
        }
        other => Err(ctx.err(at, format!("invalid include {other}; {EXPECTED}"))),
    }
}

pub(crate) fn build_from_toml(
    src: &str,
    origin: &Path,
    legacy: &LegacyEnv,
) -> Result<Policy, PolicyError> {
    build_from_toml_recording(src, origin, legacy, &RefCell::default())
}

/// [`build_from_toml`], recording in `inputs` every file it reads (also when it fails).
pub(crate) fn build_from_toml_recording(
    src: &str,
    origin: &Path,
    legacy: &LegacyEnv,
    inputs: &RefCell<Inputs>,
) -> Result<Policy, PolicyError> {
    // An empty file is far more often a torn write (truncated, not yet rewritten) than a
    // decision to deny everything; on reload it must keep the old policy, not swap in deny-all.
    if src.trim().is_empty() {
        return Err(PolicyError::at(
            origin,
            src,
            0,
            "the policy file is empty (a half-written file?); write what it allows, or `mode = \"enforce\"` alone to deny everything",
        ));
    }
    let raw: RawPolicy = toml::from_str(src).map_err(|e| toml_error(origin, src, &e))?;
    let ctx = Ctx {
        file: origin,
        display: Arc::from(origin.to_string_lossy().as_ref()),
        src,
        inputs,
    };
    let mut b = Builder::new();
    b.primary = Some(origin.to_path_buf());
    b.add_source(origin, src);
    if let Some(m) = &raw.mode {
        b.mode = *m.get_ref();
    }
    if let Some(ports) = raw.defaults.as_ref().and_then(|d| d.ports.as_ref()) {
        b.default_ports = ctx.ports(ports)?;
    }
    for inc in &raw.include {
        let (p, format) = match include_spec(&ctx, inc)? {
            IncludeSource::File(p, format) => (p, format),
            IncludeSource::Preset(name, text) => {
                let shown = PathBuf::from(format!("<preset>/{name}.txt"));
                let entries = parse_list(text, &shown, ListFormat::Native)?;
                b.add_source(&shown, text);
                let display: Arc<str> = Arc::from(shown.to_string_lossy().as_ref());
                b.add_list(&display, entries);
                continue;
            }
        };
        let path = resolve(origin, &p);
        let read = ctx.inputs.borrow_mut().read_to_string(&path);
        let text = read.map_err(|e| {
            ctx.err(
                inc.span().start,
                format!("cannot read include {}: {e}", path.display()),
            )
        })?;
        let entries = parse_list(&text, &path, format)?;
        b.add_source(&path, &text);
        let display: Arc<str> = Arc::from(path.to_string_lossy().as_ref());
        b.add_list(&display, entries);
    }
    if let Some(allow) = &raw.allow {
        for h in &allow.hosts {
            let p = ctx.pattern(h)?;
            let rule = ctx.rule(h.span().start, p.to_string());
            let ports = b.default_ports.clone();
            b.add_allow(&p, rule, ports);
        }
        for c in &allow.cidrs {
            let net = ctx.cidr(c)?;
            let rule = ctx.rule(c.span().start, net.to_string());
            let ports = b.default_ports.clone();
            b.allow_cidrs.push(CidrEntry { net, rule, ports });
        }
    }
    if let Some(deny) = &raw.deny {
        for h in &deny.hosts {
            let p = ctx.pattern(h)?;
            let rule = ctx.rule(h.span().start, p.to_string());
            b.add_deny(&p, rule);
        }
        for c in &deny.cidrs {
            let net = ctx.cidr(c)?;
            let rule = ctx.rule(c.span().start, net.to_string());
            b.deny_cidrs.push(CidrEntry {
                net,
                rule,
                ports: Arc::from(Vec::new()),
            });
        }
    }
    for r in &raw.rule {
        let rr = r.get_ref();
        if rr.hosts.is_empty() && rr.cidrs.is_empty() {
            return Err(ctx.err(
                r.span().start,
                "[[rule]] has no hosts and no cidrs; expected hosts = [\"example.com\"] and/or cidrs = [\"10.0.0.0/8\"]",
            ));
        }
        let ports = match &rr.ports {
            Some(p) => ctx.ports(p)?,
            None => b.default_ports.clone(),
        };
        for h in &rr.hosts {
            let p = ctx.pattern(h)?;
            let rule = ctx.rule(h.span().start, p.to_string());
            b.add_allow(&p, rule, ports.clone());
        }
        for c in &rr.cidrs {
            let net = ctx.cidr(c)?;
            let rule = ctx.rule(c.span().start, net.to_string());
            b.allow_cidrs.push(CidrEntry {
                net,
                rule,
                ports: ports.clone(),
            });
        }
        b.rules += 1;
    }
    if let Some(up) = &raw.upstream {
        match &up.default {
            Some(d) => {
                b.default_upstream = ctx.upstream(
                    &mut b,
                    d,
                    up.default_credentials.as_ref(),
                    "default_credentials",
                )?;
                b.default_upstream_set = true;
            }
            None => {
                if let Some(c) = &up.default_credentials {
                    return Err(ctx.err(
                        c.span().start,
                        "default_credentials without default; expected default = \"socks5h://host:port\" or similar",
                    ));
                }
            }
        }
        for r in &up.route {
            let rr = r.get_ref();
            if rr.hosts.is_empty() && rr.cidrs.is_empty() {
                return Err(ctx.err(
                    r.span().start,
                    "[[upstream.route]] has no hosts and no cidrs; expected hosts = [\".corp.example\"]",
                ));
            }
            let upstream = ctx.upstream(&mut b, &rr.via, rr.credentials.as_ref(), "credentials")?;
            let id = u32::try_from(b.routes.len()).unwrap_or(u32::MAX);
            let mut hosts = Vec::with_capacity(rr.hosts.len());
            for h in &rr.hosts {
                let p = ctx.pattern(h)?;
                b.route_idx.insert(&p, id);
                hosts.push(p);
            }
            let mut cidrs = Vec::new();
            for c in &rr.cidrs {
                cidrs.push(ctx.cidr(c)?);
            }
            b.routes.push(Route {
                hosts,
                cidrs,
                upstream,
            });
        }
    }
    apply_legacy(&mut b, legacy)?;
    Ok(b.finish())
}

/// Applies the legacy variables as [`LegacyEnv::resolve`] decides: their default upstream
/// (unless the policy set one), `NO_UPSTREAM` as direct routes, `USER_WHITELIST_DOMAINS` as an
/// allow list named `$USER_WHITELIST_DOMAINS`.
fn apply_legacy(b: &mut Builder, legacy: &LegacyEnv) -> Result<(), PolicyError> {
    for (name, value) in legacy.entries() {
        // The upstream variables may carry user:password (UPSTREAM_PROXY=http://u:p@h:port).
        if name.starts_with("UPSTREAM_") {
            b.hash_secret(&format!("${name}"), value.as_bytes());
        } else {
            b.hash_part(&format!("${name}"), value.as_bytes());
        }
    }
    let settings = legacy.resolve()?;
    if let Some(up) = settings.upstream
        && !b.default_upstream_set
    {
        b.default_upstream = up.upstream;
        b.default_upstream_set = true;
    }
    if !settings.allow.is_empty() {
        let display: Arc<str> = Arc::from("$USER_WHITELIST_DOMAINS");
        b.add_list(
            &display,
            settings.allow.into_iter().map(|e| (e.pattern, 1)).collect(),
        );
    }
    if !settings.no_upstream.is_empty() {
        let id = u32::try_from(b.routes.len()).unwrap_or(u32::MAX);
        for e in &settings.no_upstream {
            b.route_idx.insert(&e.pattern, id);
        }
        b.routes.push(Route {
            hosts: settings
                .no_upstream
                .into_iter()
                .map(|e| e.pattern)
                .collect(),
            cidrs: Vec::new(),
            upstream: Upstream::Direct,
        });
    }
    Ok(())
}

pub(crate) fn build_embedded(legacy: &LegacyEnv) -> Result<Policy, PolicyError> {
    let mut b = Builder::new();
    let file = Path::new(EMBEDDED_DEFAULT_NAME);
    let entries = parse_list(EMBEDDED_DEFAULT_LIST, file, ListFormat::Seed)?;
    b.hash_part(EMBEDDED_DEFAULT_NAME, EMBEDDED_DEFAULT_LIST.as_bytes());
    b.add_list(&Arc::from(EMBEDDED_DEFAULT_NAME), entries);
    apply_legacy(&mut b, legacy)?;
    Ok(b.finish())
}

pub(crate) fn build_from_list(
    path: &Path,
    format: ListFormat,
    legacy: &LegacyEnv,
) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError::io(path, e))?;
    let entries = parse_list(&text, path, format)?;
    let mut b = Builder::new();
    b.primary = Some(path.to_path_buf());
    b.add_source(path, &text);
    b.add_list(&Arc::from(path.to_string_lossy().as_ref()), entries);
    apply_legacy(&mut b, legacy)?;
    Ok(b.finish())
}
