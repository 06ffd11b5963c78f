//! Live changes to an environment's policy, made by a person through the daemon:
//! `kennel allow`, `kennel deny`, `kennel policy show|edit|import` and `kennel denials`.
//!
//! Every change is a validated, atomic replacement (temp file + rename) of a file in the
//! environment's policy directory; the proxy's hot reload picks it up (it watches the directory),
//! so nothing is restarted, and a reload that no longer allows a destination closes its tunnels.
//! Nothing the sandbox can write is read here except on a person's command (`policy import`
//! takes the whitelist text the person's CLI read).
//!
//! Per environment, beside `spec.json` in the state directory (never in the read-only, watched
//! policy directory):
//! - `expiry.json`: the `allow --for` entries and when they expire (survives a daemon restart;
//!   [`expire_loop`] removes them);
//! - `changes.jsonl`: one JSON line per change (who = the caller's uid from `SO_PEERCRED`, what,
//!   when, note), rotated to `changes.jsonl.1` past [`CHANGES_ROTATE_BYTES`]; every change is
//!   also logged by the daemon (`target = "kennel::policy"`);
//! - `logs/`: the proxy's access log (mounted read-write into the proxy container only),
//!   read by [`Daemon::denials`].
//!
//! An environment's egress profiles (`[egress.profiles.NAME]`) have a proxy and a policy each:
//! `policy-NAME/` beside `policy/`, `logs-NAME/` beside `logs/`, `expiry-NAME.json` beside
//! `expiry.json`. Every call takes a [`PolicyScope`] (`?profile=NAME`, `kennel … --profile
//! NAME`); the change log is shared, each line naming the profile.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet_like::cidr_of;
use kennel_container::policy_dir::{POLICY_FILE, PROJECT_LIST_FILE};
use kennel_container::spec::validate_env_name;
use kennel_policy::{HostPattern, ListFormat, Policy, Target};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, Value};

use crate::api::policy_types::{
    AllowRequest, Denial, Denials, DenyRequest, ImportPreview, ImportRequest, LearnRequest,
    PolicyChanged, PolicyEntryView, PolicyFileDoc, PolicyReplace, PolicyView,
};
use crate::auth::Peer;
use crate::error::ApiError;
use crate::events::EventNow;
use crate::registry::Daemon;
use crate::state::{StateDir, StateError};

/// The per-environment file of `allow --for` entries.
pub const EXPIRY_FILE: &str = "expiry.json";
/// The per-environment learn-mode deadline (`kennel up --learn`): `{"until_unix": N}`.
pub const LEARN_FILE: &str = "learn.json";
/// The per-environment change log (JSON lines).
pub const CHANGES_FILE: &str = "changes.jsonl";
/// [`CHANGES_FILE`] is rotated to `changes.jsonl.1` (one older generation kept) before it would
/// grow past this: at most ~2 MiB of change log per environment, however many changes a script
/// makes.
pub const CHANGES_ROTATE_BYTES: u64 = 1024 * 1024;
/// The per-environment access-log directory (mounted read-write into the proxy only).
pub const LOG_DIR: &str = "logs";
/// Most bytes of access log `kennel denials` reads (newest kept): the proxy caps the files at
/// about twice [`kennel_container::hardening::ACCESS_LOG_ROTATE_BYTES`] anyway.
pub(crate) const MAX_LOG_READ: u64 = 32 * 1024 * 1024;
/// Longest `--note`.
const MAX_NOTE: usize = 1000;
/// Most entries in one `allow`/`deny`.
const MAX_ENTRIES: usize = 100;

/// Tiny helpers for IP entries (the policy crate owns CIDR parsing; this only spells a single
/// address as a CIDR).
mod ipnet_like {
    use std::net::IpAddr;

    /// `10.0.0.5` → `10.0.0.5/32`, `::1` → `::1/128`.
    pub fn cidr_of(ip: IpAddr) -> String {
        match ip {
            IpAddr::V4(v4) => format!("{v4}/32"),
            IpAddr::V6(v6) => format!("{v6}/128"),
        }
    }
}

/// `envs/<name>/logs`: where the proxy writes its access log.
pub fn log_dir(state: &StateDir, name: &str) -> PathBuf {
    state.env_dir(name).join(LOG_DIR)
}

/// Which proxy's policy a live-policy call acts on: the environment's own (`profile: None`) or
/// one of its egress profiles' (`kennel allow --profile NAME`, `?profile=NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyScope {
    /// The environment.
    pub env: String,
    /// The egress profile; `None` for the environment's own proxy.
    pub profile: Option<String>,
}

impl PolicyScope {
    /// The environment's own proxy.
    pub fn env(name: &str) -> PolicyScope {
        PolicyScope {
            env: name.to_string(),
            profile: None,
        }
    }

    /// Egress profile `profile` of `name` (`None`: the environment's own proxy).
    pub fn new(name: &str, profile: Option<&str>) -> PolicyScope {
        PolicyScope {
            env: name.to_string(),
            profile: profile.map(str::to_string),
        }
    }

    /// The policy directory its proxy mounts.
    pub fn policy_dir(&self, state: &StateDir) -> PathBuf {
        let main = state.policy_dir(&self.env);
        match &self.profile {
            Some(p) => kennel_container::policy_dir::profile_policy_dir(&main, p),
            None => main,
        }
    }

    /// Its `policy.toml`.
    pub fn policy_file(&self, state: &StateDir) -> PathBuf {
        self.policy_dir(state).join(POLICY_FILE)
    }

    /// Its `allow --for` entries.
    pub fn expiry_file(&self, state: &StateDir) -> PathBuf {
        let dir = state.env_dir(&self.env);
        match &self.profile {
            Some(p) => dir.join(format!("expiry-{p}.json")),
            None => dir.join(EXPIRY_FILE),
        }
    }

    /// Its proxy's access-log directory.
    pub fn log_dir(&self, state: &StateDir) -> PathBuf {
        let main = log_dir(state, &self.env);
        match &self.profile {
            Some(p) => kennel_container::policy_dir::profile_log_dir(&main, p),
            None => main,
        }
    }

    /// `--profile NAME ` for commands the person may run next (empty for the env's own).
    fn flag(&self) -> String {
        self.profile
            .as_ref()
            .map_or_else(String::new, |p| format!("--profile {p} "))
    }

    /// The change lines as the shared change log keeps them: a profile's name first.
    fn mark(&self, changes: Vec<String>) -> Vec<String> {
        match &self.profile {
            None => changes,
            Some(p) => changes
                .into_iter()
                .map(|c| format!("egress profile {p}: {c}"))
                .collect(),
        }
    }
}

/// Writes the policy directory of every egress profile of `spec` (environment `name`) and
/// validates each as its proxy will load it; creates their access-log directories.
pub fn write_profile_dirs(
    state: &StateDir,
    name: &str,
    spec: &kennel_container::EnvSpec,
) -> Result<(), ApiError> {
    for p in &spec.egress.profiles {
        let dir = PolicyScope::new(name, Some(&p.name)).policy_dir(state);
        let file = kennel_container::policy_dir::write_profile_policy(&dir, spec, p)
            .map_err(io_err("write", &dir))?;
        Policy::load(&file)
            .map_err(|e| ApiError::Policy(format!("egress profile {:?}: {e}", p.name)))?;
    }
    prepare_profile_log_dirs(state, name, spec)
}

/// Creates the access-log directory of every egress profile's proxy ([`prepare_log_dir`]).
pub fn prepare_profile_log_dirs(
    state: &StateDir,
    name: &str,
    spec: &kennel_container::EnvSpec,
) -> Result<(), ApiError> {
    for p in &spec.egress.profiles {
        let dir = PolicyScope::new(name, Some(&p.name)).log_dir(state);
        prepare_log_dir(&dir).map_err(io_err("create", &dir))?;
    }
    Ok(())
}

/// The egress profiles of a recorded environment as `kennel inspect` shows them: proxy
/// container and its state among `containers`, policy directory, allow entries now.
pub fn profile_infos(
    state: &StateDir,
    record: &crate::state::EnvRecord,
    containers: &[crate::api::types::ContainerInfo],
) -> Vec<kennel_api::types::ProfileInfo> {
    let name = &record.name;
    record
        .request
        .spec
        .egress_profiles
        .iter()
        .map(|p| {
            let scope = PolicyScope::new(name, Some(&p.name));
            let container = kennel_container::profile_proxy_name(name, &p.name);
            let allow_count = Policy::load(&scope.policy_file(state))
                .ok()
                .map(|pol| pol.entries().iter().filter(|e| e.allow).count());
            kennel_api::types::ProfileInfo {
                name: p.name.clone(),
                state: containers
                    .iter()
                    .find(|c| c.name == container)
                    .map_or_else(|| "missing".to_string(), |c| c.state.clone()),
                proxy_container: container,
                proxy_address: kennel_container::profile_proxy_url(&p.name),
                policy_dir: Some(scope.policy_dir(state)),
                allow_count,
                services: record
                    .request
                    .spec
                    .services
                    .iter()
                    .filter(|s| s.egress_profile.as_deref() == Some(p.name.as_str()))
                    .map(|s| s.name.clone())
                    .collect(),
            }
        })
        .collect()
}

/// Creates the access-log directory so that the proxy (uid 65532 in its container) can write
/// it: owned by that uid when the daemon runs as root, else mode 0777. The state directory
/// above it is mode 0700, so nobody else on the host reaches it either way.
pub fn prepare_log_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    if nix::unistd::geteuid().is_root() {
        let id = 65532;
        nix::unistd::chown(
            dir,
            Some(nix::unistd::Uid::from_raw(id)),
            Some(nix::unistd::Gid::from_raw(id)),
        )
        .map_err(std::io::Error::from)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    } else {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
    }
}

/// One policy entry as `kennel allow`/`deny` take it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntrySpec {
    /// The normalised host pattern, or the CIDR.
    pub pattern: String,
    /// True when `pattern` is a CIDR (goes into `cidrs`, not `hosts`).
    pub cidr: bool,
    /// The port, if one was given.
    pub port: Option<u16>,
}

impl EntrySpec {
    fn key(&self) -> &'static str {
        if self.cidr { "cidrs" } else { "hosts" }
    }

    fn describe(&self) -> String {
        match self.port {
            Some(p) if self.pattern.contains(':') => format!("[{}]:{p}", self.pattern),
            Some(p) => format!("{}:{p}", self.pattern),
            None => self.pattern.clone(),
        }
    }
}

fn bad(msg: String) -> ApiError {
    ApiError::BadRequest(msg)
}

/// Parses `host`, `host:port`, `*.example.com`, `.example.com`, an IP address, a CIDR,
/// `[v6]` or `[v6]:port`. Errors name the input and what is wrong with it.
pub fn parse_entry(input: &str) -> Result<EntrySpec, ApiError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(bad("empty entry; expected HOST or HOST:PORT".into()));
    }
    let port_of = |p: &str| -> Result<u16, ApiError> {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad(format!(
                "invalid port {p:?} in {input:?}; expected a number from 1 to 65535"
            ))),
            Ok(n) => Ok(n),
        }
    };
    let ip_or_cidr = |h: &str| -> Option<String> {
        if let Ok(ip) = h.parse::<IpAddr>() {
            return Some(cidr_of(ip));
        }
        if h.contains('/') {
            return Some(h.to_string());
        }
        None
    };
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err(bad(format!("{input:?}: missing `]` after an IPv6 address")));
        };
        let port = match after {
            "" => None,
            a => match a.strip_prefix(':') {
                Some(p) => Some(port_of(p)?),
                None => {
                    return Err(bad(format!(
                        "{input:?}: expected `:PORT` after `]`, found {a:?}"
                    )));
                }
            },
        };
        (inner, port)
    } else if s.parse::<IpAddr>().is_ok() || (s.matches(':').count() > 1) {
        // A bare IPv6 address (or CIDR): its colons are not a port separator.
        (s, None)
    } else if let Some((h, p)) = s.rsplit_once(':') {
        (h, Some(port_of(p)?))
    } else {
        (s, None)
    };
    if let Some(cidr) = ip_or_cidr(host) {
        // Validated by the policy crate exactly as it will read it.
        let probe = format!(
            "[allow]\ncidrs = [{}]\n",
            toml_edit::Value::from(cidr.as_str())
        );
        Policy::from_toml_str(&probe, Path::new("entry"))
            .map_err(|e| bad(format!("invalid address or CIDR {input:?}: {e}")))?;
        return Ok(EntrySpec {
            pattern: cidr,
            cidr: true,
            port,
        });
    }
    let pattern = HostPattern::parse(host).map_err(|(at, msg)| {
        bad(format!(
            "invalid host pattern {input:?} (column {}): {msg}",
            at + 1
        ))
    })?;
    Ok(EntrySpec {
        pattern: pattern.to_string(),
        cidr: false,
        port,
    })
}

/// A `kennel allow --for` entry waiting to expire (`expiry.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expiring {
    /// The entry as added.
    pub entry: EntrySpec,
    /// When it expires, seconds since the Unix epoch.
    pub expires_unix: u64,
    /// Who added it.
    pub uid: u32,
}

/// One line of `changes.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// RFC 3339 time.
    pub time: String,
    /// The caller's uid (`SO_PEERCRED`); `None` for the daemon itself (expiry).
    pub uid: Option<u32>,
    /// `allow`, `deny`, `edit`, `import`, `expire`.
    pub action: String,
    /// What changed.
    pub changes: Vec<String>,
    /// The person's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// When the entries expire (RFC 3339), for `allow --for`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

impl ChangeEvent {
    /// An event that happens now.
    fn now(
        uid: Option<u32>,
        action: &str,
        changes: Vec<String>,
        note: Option<String>,
        expires: Option<String>,
    ) -> ChangeEvent {
        ChangeEvent {
            time: rfc3339(SystemTime::now()),
            uid,
            action: action.to_string(),
            changes,
            note,
            expires,
        }
    }
}

fn now_unix(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) use kennel_policy::time::rfc3339_millis as rfc3339;

fn sha256_hex(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ApiError + 'a {
    move |source| {
        ApiError::State(StateError::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Replaces `path` atomically: a temp file in the same directory, mode 0644 (the proxy's user
/// reads it through the read-only mount), fsync, rename.
fn write_atomic(path: &Path, content: &str) -> Result<(), ApiError> {
    use std::os::unix::fs::PermissionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.kennel-tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(content.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err("write", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .map_err(io_err("chmod", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("rename", path))
}

/// The environment whose policy file `path` is (`<state>/envs/<name>/policy/policy.toml`).
fn env_of_policy_file(path: &Path) -> Option<String> {
    path.parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
}

fn read_expiring(path: &Path) -> Result<Vec<Expiring>, ApiError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|source| {
            ApiError::State(StateError::Corrupt {
                path: path.to_path_buf(),
                source,
            })
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

fn write_expiring(path: &Path, list: &[Expiring]) -> Result<(), ApiError> {
    let body = serde_json::to_string_pretty(list)
        .map_err(|e| ApiError::Internal(format!("cannot encode {}: {e}", path.display())))?;
    write_atomic(path, &body)
}

/// Whether an array item is the entry `pattern` (compared as the policy crate normalises it).
fn same_pattern(v: &Value, pattern: &str, cidr: bool) -> bool {
    let Some(s) = v.as_str() else { return false };
    if cidr {
        return s.trim() == pattern;
    }
    HostPattern::parse(s).map_or(s.trim() == pattern, |p| p.to_string() == pattern)
}

fn table_mut<'a>(doc: &'a mut DocumentMut, name: &str) -> Result<&'a mut Table, ApiError> {
    let item = doc.entry(name).or_insert_with(|| Item::Table(Table::new()));
    item.as_table_mut().ok_or_else(|| {
        ApiError::Policy(format!(
            "`{name}` in the policy file is not a table; fix it with `kennel policy edit`"
        ))
    })
}

fn array_mut<'a>(table: &'a mut Table, key: &str) -> Result<&'a mut Array, ApiError> {
    let item = table
        .entry(key)
        .or_insert_with(|| Item::Value(Value::Array(Array::new())));
    item.as_array_mut().ok_or_else(|| {
        ApiError::Policy(format!(
            "`{key}` in the policy file is not an array; fix it with `kennel policy edit`"
        ))
    })
}

fn array_has(a: &Array, e: &EntrySpec) -> bool {
    a.iter().any(|v| same_pattern(v, &e.pattern, e.cidr))
}

/// Removes `e` from `[table] key`; true if it was there.
fn remove_from(doc: &mut DocumentMut, table: &str, e: &EntrySpec) -> bool {
    let Some(a) = doc
        .get_mut(table)
        .and_then(Item::as_table_mut)
        .and_then(|t| t.get_mut(e.key()))
        .and_then(Item::as_array_mut)
    else {
        return false;
    };
    let before = a.len();
    a.retain(|v| !same_pattern(v, &e.pattern, e.cidr));
    a.len() != before
}

/// Whether a `[[rule]]` table is exactly `{ key = [pattern], ports = [port] }` (or any ports
/// when `port` is `None`).
fn rule_is(t: &Table, e: &EntrySpec, port: Option<u16>) -> bool {
    let other = if e.cidr { "hosts" } else { "cidrs" };
    if t.get(other)
        .and_then(Item::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return false;
    }
    let only_this = t
        .get(e.key())
        .and_then(Item::as_array)
        .is_some_and(|a| a.len() == 1 && array_has(a, e));
    let ports_match = match port {
        None => true,
        Some(p) => t.get("ports").and_then(Item::as_array).is_some_and(|a| {
            a.len() == 1 && a.get(0).and_then(Value::as_integer) == Some(i64::from(p))
        }),
    };
    only_this && ports_match
}

fn rules_mut(doc: &mut DocumentMut) -> Result<&mut ArrayOfTables, ApiError> {
    let item = doc
        .entry("rule")
        .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()));
    item.as_array_of_tables_mut().ok_or_else(|| {
        ApiError::Policy(
            "`rule` in the policy file is not an array of [[rule]] tables; fix it with `kennel policy edit`"
                .into(),
        )
    })
}

/// Removes `[[rule]]` tables that are exactly this entry; true if any was there.
fn remove_rules(doc: &mut DocumentMut, e: &EntrySpec, port: Option<u16>) -> bool {
    let Some(aot) = doc.get_mut("rule").and_then(Item::as_array_of_tables_mut) else {
        return false;
    };
    let before = aot.len();
    aot.retain(|t| !rule_is(t, e, port));
    aot.len() != before
}

/// Adds an allow entry. `defaults`: the policy's `[defaults] ports` (an entry with no port, or a
/// port among them, goes into `[allow]`; another port gets its own `[[rule]]`). Returns what it
/// did, and whether the entry is new (only new entries may expire: `--for` must never remove an
/// entry that was there before).
fn add_allow(
    doc: &mut DocumentMut,
    e: &EntrySpec,
    defaults: &[u16],
) -> Result<(String, bool), ApiError> {
    let mut said = Vec::new();
    if remove_from(doc, "deny", e) {
        said.push(format!("removed {:?} from [deny] {}", e.pattern, e.key()));
    }
    let new = match e.port {
        Some(p) if !defaults.contains(&p) => {
            let aot = rules_mut(doc)?;
            if aot.iter().any(|t| rule_is(t, e, Some(p))) {
                said.push(format!("{} was already allowed", e.describe()));
                false
            } else {
                let mut t = Table::new();
                let mut a = Array::new();
                a.push(e.pattern.as_str());
                t.insert(e.key(), Item::Value(Value::Array(a)));
                let mut ports = Array::new();
                ports.push(i64::from(p));
                t.insert("ports", Item::Value(Value::Array(ports)));
                aot.push(t);
                said.push(format!(
                    "added a [[rule]] with {} = [{:?}], ports = [{p}]",
                    e.key(),
                    e.pattern
                ));
                true
            }
        }
        _ => {
            let allow = table_mut(doc, "allow")?;
            let a = array_mut(allow, e.key())?;
            if array_has(a, e) {
                said.push(format!("{} was already in [allow] {}", e.pattern, e.key()));
                false
            } else {
                a.push(e.pattern.as_str());
                said.push(format!("added {:?} to [allow] {}", e.pattern, e.key()));
                true
            }
        }
    };
    Ok((said.join("; "), new))
}

/// Removes exactly what [`add_allow`] added for `e` (expiry).
fn remove_allow(doc: &mut DocumentMut, e: &EntrySpec, defaults: &[u16]) -> bool {
    match e.port {
        Some(p) if !defaults.contains(&p) => remove_rules(doc, e, Some(p)),
        _ => remove_from(doc, "allow", e),
    }
}

/// Adds a deny entry, removing the same pattern's allow entries from this file.
fn add_deny(doc: &mut DocumentMut, e: &EntrySpec) -> Result<String, ApiError> {
    let mut said = Vec::new();
    if remove_from(doc, "allow", e) {
        said.push(format!("removed {:?} from [allow] {}", e.pattern, e.key()));
    }
    if remove_rules(doc, e, None) {
        said.push(format!("removed the [[rule]] tables for {:?}", e.pattern));
    }
    let deny = table_mut(doc, "deny")?;
    let a = array_mut(deny, e.key())?;
    if array_has(a, e) {
        said.push(format!("{} was already in [deny] {}", e.pattern, e.key()));
    } else {
        a.push(e.pattern.as_str());
        said.push(format!("added {:?} to [deny] {}", e.pattern, e.key()));
    }
    Ok(said.join("; "))
}

/// The entries of a seed-format list, as written (comments and blank lines dropped).
fn list_entries(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Reads the tail of a log file (at most `max` bytes; a cut first line is dropped).
fn read_tail(path: &Path, max: u64) -> Result<String, ApiError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    let len = f.metadata().map_err(io_err("read", path))?.len();
    let start = len.saturating_sub(max);
    f.seek(SeekFrom::Start(start))
        .map_err(io_err("read", path))?;
    let mut buf = Vec::new();
    f.take(max)
        .read_to_end(&mut buf)
        .map_err(io_err("read", path))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    if start > 0 {
        return Ok(text
            .split_once('\n')
            .map_or(String::new(), |(_, r)| r.to_string()));
    }
    Ok(text)
}

/// The fields of an access-log line `kennel denials` uses.
#[derive(Debug, Deserialize)]
struct LogLine {
    time: String,
    host: String,
    port: u16,
    decision: String,
    reason: String,
    #[serde(default)]
    rule: Option<String>,
}

impl Daemon {
    /// The environment must be one this daemon recorded.
    fn policy_env(&self, name: &str) -> Result<crate::state::EnvRecord, ApiError> {
        validate_env_name(name).map_err(|_| ApiError::NotFound(name.to_string()))?;
        self.state()
            .read_record(name)?
            .ok_or_else(|| ApiError::NotFound(name.to_string()))
    }

    /// The environment must be one this daemon recorded, and the profile one of its egress
    /// profiles.
    fn policy_scope(&self, scope: &PolicyScope) -> Result<crate::state::EnvRecord, ApiError> {
        let record = self.policy_env(&scope.env)?;
        if let Some(p) = &scope.profile {
            let profiles = &record.request.spec.egress_profiles;
            if !profiles.iter().any(|x| x.name == *p) {
                let known: Vec<&str> = profiles.iter().map(|x| x.name.as_str()).collect();
                return Err(ApiError::BadRequest(format!(
                    "environment {:?} has no egress profile {p:?} ({})",
                    scope.env,
                    if known.is_empty() {
                        "it has none; they are defined as [egress.profiles.NAME] in kennel.toml"
                            .to_string()
                    } else {
                        format!("its profiles: {}", known.join(", "))
                    }
                )));
            }
        }
        Ok(record)
    }

    /// Records a change: the daemon's log and `changes.jsonl`.
    fn record_change(&self, name: &str, ev: &ChangeEvent) -> Result<(), ApiError> {
        tracing::info!(target: "kennel::policy", env = %name, uid = ?ev.uid, action = %ev.action,
            changes = ?ev.changes, note = ?ev.note, expires = ?ev.expires, "policy changed");
        // Kept once, in `changes.jsonl`; followers of `kennel events` get it live.
        self.event_log()
            .publish(crate::events::from_change(name, ev));
        let path = self.state().env_dir(name).join(CHANGES_FILE);
        let mut line = serde_json::to_string(ev)
            .map_err(|e| ApiError::Internal(format!("cannot encode a change event: {e}")))?;
        line.push('\n');
        append_rotating(&path, &line, CHANGES_ROTATE_BYTES).map_err(io_err("append to", &path))
    }

    /// Loads the current policy file as text + editable document + validated policy.
    fn load_policy(
        &self,
        scope: &PolicyScope,
    ) -> Result<(PathBuf, String, DocumentMut, Policy), ApiError> {
        let path = scope.policy_file(self.state());
        let text = std::fs::read_to_string(&path).map_err(io_err("read", &path))?;
        let policy = Policy::from_toml_str(&text, &path).map_err(|e| {
            ApiError::Policy(format!(
                "{e} (the current policy file is invalid; fix it with `kennel policy edit {}{}`)",
                scope.flag(),
                scope.env
            ))
        })?;
        let doc: DocumentMut = text
            .parse()
            .map_err(|e| ApiError::Policy(format!("{}: {e}", path.display())))?;
        Ok((path, text, doc, policy))
    }

    /// Validates `text` as the policy file at `path` (includes resolved beside it) and swaps it
    /// in. An invalid policy is refused (422) with the policy crate's FILE:LINE:COL message.
    fn swap_policy(&self, path: &Path, text: &str) -> Result<Policy, ApiError> {
        let policy = Policy::from_toml_str(text, path).map_err(|e| {
            let env = env_of_policy_file(path);
            self.event(
                crate::events::Event::now(
                    env.as_deref(),
                    crate::events::kind::POLICY_REJECTED,
                    format!("policy change refused, the policy in force is kept: {e}"),
                )
                .with("error", e.to_string()),
            );
            ApiError::InvalidChange(format!("invalid policy: {e}"))
        })?;
        write_atomic(path, text)?;
        if let Some(env) = env_of_policy_file(path) {
            self.policy_swapped(&env);
        }
        Ok(policy)
    }

    /// `POST /v1/envs/{name}/policy/allow`.
    pub async fn policy_allow(
        &self,
        peer: &Peer,
        name: &str,
        req: AllowRequest,
    ) -> Result<PolicyChanged, ApiError> {
        self.policy_allow_in(peer, &PolicyScope::env(name), req)
            .await
    }

    /// `POST /v1/envs/{name}/policy/allow[?profile=NAME]`.
    pub async fn policy_allow_in(
        &self,
        peer: &Peer,
        scope: &PolicyScope,
        req: AllowRequest,
    ) -> Result<PolicyChanged, ApiError> {
        let name = scope.env.as_str();
        self.policy_scope(scope)?;
        let note = check_note(req.note)?;
        let entries = parse_entries(&req.entries)?;
        let _lock = self.policy_lock.lock().await;
        let (path, _text, mut doc, policy) = self.load_policy(scope)?;
        let defaults = policy.default_ports().to_vec();
        let mut changes = Vec::new();
        let mut fresh = Vec::new();
        for e in &entries {
            let (said, new) = add_allow(&mut doc, e, &defaults)?;
            changes.push(said);
            if new {
                fresh.push(e.clone());
            }
        }
        let now = SystemTime::now();
        let expires_at = req.for_secs.map(|s| now + Duration::from_secs(s));
        self.swap_policy(&path, &doc.to_string())?;
        if let Some(at) = expires_at {
            let xpath = scope.expiry_file(self.state());
            let mut list = read_expiring(&xpath)?;
            for e in fresh {
                list.retain(|x| x.entry != e);
                list.push(Expiring {
                    entry: e,
                    expires_unix: now_unix(at),
                    uid: peer.uid,
                });
            }
            write_expiring(&xpath, &list)?;
        }
        let expires = expires_at.map(rfc3339);
        self.record_change(
            name,
            &ChangeEvent {
                time: rfc3339(now),
                uid: Some(peer.uid),
                action: "allow".into(),
                changes: scope.mark(changes.clone()),
                note,
                expires: expires.clone(),
            },
        )?;
        Ok(PolicyChanged {
            env: name.to_string(),
            file: path,
            changes,
            expires,
        })
    }

    /// `POST /v1/envs/{name}/policy/deny`.
    pub async fn policy_deny(
        &self,
        peer: &Peer,
        name: &str,
        req: DenyRequest,
    ) -> Result<PolicyChanged, ApiError> {
        self.policy_deny_in(peer, &PolicyScope::env(name), req)
            .await
    }

    /// `POST /v1/envs/{name}/policy/deny[?profile=NAME]`.
    pub async fn policy_deny_in(
        &self,
        peer: &Peer,
        scope: &PolicyScope,
        req: DenyRequest,
    ) -> Result<PolicyChanged, ApiError> {
        let name = scope.env.as_str();
        self.policy_scope(scope)?;
        let note = check_note(req.note)?;
        let entries = parse_entries(&req.entries)?;
        if let Some((input, _)) = req
            .entries
            .iter()
            .zip(&entries)
            .find(|(_, e)| e.port.is_some())
        {
            return Err(bad(format!(
                "{input:?}: a deny entry covers every port of a host; give the host without a port"
            )));
        }
        let _lock = self.policy_lock.lock().await;
        let (path, _text, mut doc, _policy) = self.load_policy(scope)?;
        let mut changes = Vec::new();
        for e in &entries {
            changes.push(add_deny(&mut doc, e)?);
        }
        self.swap_policy(&path, &doc.to_string())?;
        // A denied pattern's pending expiries are moot (its allow entries are gone).
        let xpath = scope.expiry_file(self.state());
        let mut list = read_expiring(&xpath)?;
        let before = list.len();
        list.retain(|x| !entries.iter().any(|e| e.pattern == x.entry.pattern));
        if list.len() != before {
            write_expiring(&xpath, &list)?;
        }
        self.record_change(
            name,
            &ChangeEvent::now(
                Some(peer.uid),
                "deny",
                scope.mark(changes.clone()),
                note,
                None,
            ),
        )?;
        Ok(PolicyChanged {
            env: name.to_string(),
            file: path,
            changes,
            expires: None,
        })
    }

    /// `GET /v1/envs/{name}/policy`: every entry of the effective policy with its `file:line`.
    pub async fn policy_show(&self, name: &str) -> Result<PolicyView, ApiError> {
        self.policy_show_in(&PolicyScope::env(name)).await
    }

    /// `GET /v1/envs/{name}/policy[?profile=NAME]`.
    pub async fn policy_show_in(&self, scope: &PolicyScope) -> Result<PolicyView, ApiError> {
        let name = scope.env.as_str();
        self.policy_scope(scope)?;
        let path = scope.policy_file(self.state());
        let policy = Policy::load(&path).map_err(|e| ApiError::Policy(e.to_string()))?;
        let expiring = read_expiring(&scope.expiry_file(self.state()))?;
        let entries = policy
            .entries()
            .into_iter()
            .map(|e| {
                let expires = expiring
                    .iter()
                    .find(|x| {
                        e.allow
                            && *e.rule.file == *path.to_string_lossy()
                            && *x.entry.pattern == *e.rule.pattern
                    })
                    .map(|x| rfc3339(UNIX_EPOCH + Duration::from_secs(x.expires_unix)));
                PolicyEntryView {
                    action: if e.allow { "allow" } else { "deny" }.into(),
                    pattern: e.rule.pattern.to_string(),
                    ports: e.ports,
                    at: e.rule.to_string(),
                    expires,
                }
            })
            .collect();
        Ok(PolicyView {
            env: name.to_string(),
            file: path,
            mode: policy.mode().as_str().to_string(),
            default_ports: policy.default_ports().to_vec(),
            entries,
        })
    }

    /// `GET /v1/envs/{name}/policy/file`.
    pub async fn policy_file(&self, name: &str) -> Result<PolicyFileDoc, ApiError> {
        self.policy_file_in(&PolicyScope::env(name)).await
    }

    /// `GET /v1/envs/{name}/policy/file[?profile=NAME]`.
    pub async fn policy_file_in(&self, scope: &PolicyScope) -> Result<PolicyFileDoc, ApiError> {
        self.policy_scope(scope)?;
        let path = scope.policy_file(self.state());
        let content = std::fs::read_to_string(&path).map_err(io_err("read", &path))?;
        Ok(PolicyFileDoc {
            sha256: sha256_hex(&content),
            path,
            content,
        })
    }

    /// `POST /v1/envs/{name}/policy/file`: replaces the policy file after validating it; an
    /// edit made from an older version is refused (409), so no change is lost.
    pub async fn policy_replace(
        &self,
        peer: &Peer,
        name: &str,
        req: PolicyReplace,
    ) -> Result<PolicyChanged, ApiError> {
        self.policy_replace_in(peer, &PolicyScope::env(name), req)
            .await
    }

    /// `POST /v1/envs/{name}/policy/file[?profile=NAME]`.
    pub async fn policy_replace_in(
        &self,
        peer: &Peer,
        scope: &PolicyScope,
        req: PolicyReplace,
    ) -> Result<PolicyChanged, ApiError> {
        let name = scope.env.as_str();
        self.policy_scope(scope)?;
        let note = check_note(req.note)?;
        let _lock = self.policy_lock.lock().await;
        let path = scope.policy_file(self.state());
        let current = std::fs::read_to_string(&path).map_err(io_err("read", &path))?;
        if sha256_hex(&current) != req.base_sha256 {
            return Err(ApiError::PolicyChangedMeanwhile(path.display().to_string()));
        }
        if current == req.content {
            return Ok(PolicyChanged {
                env: name.to_string(),
                file: path,
                changes: vec!["no change".into()],
                expires: None,
            });
        }
        self.swap_policy(&path, &req.content)?;
        let changes = vec![format!(
            "replaced {} ({} bytes)",
            path.display(),
            req.content.len()
        )];
        self.record_change(
            name,
            &ChangeEvent::now(Some(peer.uid), "edit", changes.clone(), note, None),
        )?;
        Ok(PolicyChanged {
            env: name.to_string(),
            file: path,
            changes,
            expires: None,
        })
    }

    /// `POST /v1/envs/{name}/policy/import`: the diff between the imported copy of the
    /// project whitelist and `req.content`; with `apply`, replaces the copy (validated as a
    /// seed list first) and updates the environment's record.
    pub async fn policy_import(
        &self,
        peer: &Peer,
        name: &str,
        req: ImportRequest,
    ) -> Result<ImportPreview, ApiError> {
        let mut record = self.policy_env(name)?;
        let _lock = self.policy_lock.lock().await;
        let dir = self.state().policy_dir(name);
        let path = dir.join(PROJECT_LIST_FILE);
        let current = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let base_sha256 = sha256_hex(&current);
        let (old, new) = (list_entries(&current), list_entries(&req.content));
        let added: Vec<String> = new.difference(&old).cloned().collect();
        let removed: Vec<String> = old.difference(&new).cloned().collect();
        // Validated before anything is written: a seed list read exactly as the proxy will.
        let check_dir = self.state().env_dir(name).join("import-check");
        std::fs::create_dir_all(&check_dir).map_err(io_err("create", &check_dir))?;
        let check = check_dir.join(PROJECT_LIST_FILE);
        std::fs::write(&check, &req.content).map_err(io_err("write", &check))?;
        let valid = Policy::load_list(&check, ListFormat::Seed, &Default::default());
        let _ = std::fs::remove_dir_all(&check_dir);
        valid.map_err(|e| {
            ApiError::InvalidChange(format!(
                "the workspace's whitelist is invalid: {}",
                e.to_string()
                    .replace(&check.display().to_string(), PROJECT_LIST_FILE)
            ))
        })?;
        if !req.apply {
            return Ok(ImportPreview {
                added,
                removed,
                base_sha256,
                applied: false,
            });
        }
        if req.base_sha256.as_deref() != Some(base_sha256.as_str()) {
            return Err(ApiError::PolicyChangedMeanwhile(path.display().to_string()));
        }
        write_atomic(&path, &req.content)?;
        // The policy as a whole must still load (it includes the list); if not, put the old
        // list back so the proxy never sees a broken policy for longer than a moment.
        let policy_file = dir.join(POLICY_FILE);
        if let Err(e) = Policy::load(&policy_file) {
            write_atomic(&path, &current)?;
            return Err(ApiError::Policy(e.to_string()));
        }
        self.policy_swapped(name);
        record.request.project_whitelist = Some(req.content.clone());
        self.state().write_record(&record)?;
        let mut changes: Vec<String> = added.iter().map(|a| format!("+ {a}")).collect();
        changes.extend(removed.iter().map(|r| format!("- {r}")));
        self.record_change(
            name,
            &ChangeEvent::now(Some(peer.uid), "import", changes, None, None),
        )?;
        Ok(ImportPreview {
            added,
            removed,
            base_sha256,
            applied: true,
        })
    }

    /// `POST /v1/envs/{name}/policy/learn`: puts the proxy in report mode (everything allowed,
    /// what would be denied logged as `would_deny`) for `for_secs`, after which the daemon
    /// switches it back to enforce by itself (also across a restart: `learn.json`).
    pub async fn policy_learn(
        &self,
        peer: &Peer,
        name: &str,
        req: LearnRequest,
    ) -> Result<PolicyChanged, ApiError> {
        self.policy_env(name)?;
        if req.for_secs == 0 {
            return Err(bad(
                "learn mode needs a duration of at least one second".into()
            ));
        }
        let _lock = self.policy_lock.lock().await;
        let (path, _text, mut doc, _policy) = self.load_policy(&PolicyScope::env(name))?;
        doc["mode"] = toml_edit::value("report");
        let now = SystemTime::now();
        let until = now + Duration::from_secs(req.for_secs);
        self.swap_policy(&path, &doc.to_string())?;
        let lpath = self.state().env_dir(name).join(LEARN_FILE);
        let body =
            serde_json::json!({ "until_unix": now_unix(until), "uid": peer.uid }).to_string();
        write_atomic(&lpath, &body)?;
        let expires = Some(rfc3339(until));
        let changes =
            vec!["mode = \"report\" (learn mode: allowed and logged as would_deny)".to_string()];
        self.record_change(
            name,
            &ChangeEvent {
                time: rfc3339(now),
                uid: Some(peer.uid),
                action: "learn".into(),
                changes: changes.clone(),
                note: None,
                expires: expires.clone(),
            },
        )?;
        Ok(PolicyChanged {
            env: name.to_string(),
            file: path,
            changes,
            expires,
        })
    }

    /// Ends learn mode if it is due: `mode = "enforce"` again.
    fn end_learn(&self, name: &str, lpath: &Path, now: SystemTime) -> Result<bool, ApiError> {
        #[derive(Deserialize)]
        struct Learn {
            until_unix: u64,
        }
        let bytes = std::fs::read(lpath).map_err(io_err("read", lpath))?;
        let l: Learn = serde_json::from_slice(&bytes).map_err(|source| {
            ApiError::State(StateError::Corrupt {
                path: lpath.to_path_buf(),
                source,
            })
        })?;
        if l.until_unix > now_unix(now) {
            return Ok(false);
        }
        let (path, _text, mut doc, _policy) = self.load_policy(&PolicyScope::env(name))?;
        doc["mode"] = toml_edit::value("enforce");
        self.swap_policy(&path, &doc.to_string())?;
        std::fs::remove_file(lpath).map_err(io_err("remove", lpath))?;
        self.record_change(
            name,
            &ChangeEvent {
                time: rfc3339(now),
                uid: None,
                action: "enforce".into(),
                changes: vec!["mode = \"enforce\" (learn mode ended)".into()],
                note: None,
                expires: None,
            },
        )?;
        Ok(true)
    }

    /// Removes the `allow --for` entries of every environment that are due at `now`; returns
    /// `(env, entry)` for each removed entry. Runs under the policy lock like every change.
    pub async fn expire_due(&self, now: SystemTime) -> Vec<(String, String)> {
        let mut done = Vec::new();
        let names = match self.state().names() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "expiry: cannot list environments");
                return done;
            }
        };
        for name in names {
            let lpath = self.state().env_dir(&name).join(LEARN_FILE);
            if lpath.exists() {
                let _lock = self.policy_lock.lock().await;
                match self.end_learn(&name, &lpath, now) {
                    Ok(true) => done.push((name.clone(), "learn mode (now enforcing)".into())),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(env = %name, error = %e, "ending learn mode failed; retrying")
                    }
                }
            }
            // The environment's own policy, then each egress profile's.
            let mut scopes = vec![PolicyScope::env(&name)];
            if let Ok(Some(record)) = self.state().read_record(&name) {
                scopes.extend(
                    record
                        .request
                        .spec
                        .egress_profiles
                        .iter()
                        .map(|p| PolicyScope::new(&name, Some(&p.name))),
                );
            }
            for scope in scopes {
                let xpath = scope.expiry_file(self.state());
                if !xpath.exists() {
                    continue;
                }
                let _lock = self.policy_lock.lock().await;
                match self.expire_env(&scope, &xpath, now) {
                    Ok(removed) => done.extend(removed.into_iter().map(|e| (name.clone(), e))),
                    Err(e) => tracing::warn!(env = %name, error = %e, "expiry failed; retrying"),
                }
            }
        }
        done
    }

    fn expire_env(
        &self,
        scope: &PolicyScope,
        xpath: &Path,
        now: SystemTime,
    ) -> Result<Vec<String>, ApiError> {
        let name = scope.env.as_str();
        let list = read_expiring(xpath)?;
        let t = now_unix(now);
        let (due, keep): (Vec<Expiring>, Vec<Expiring>) =
            list.into_iter().partition(|x| x.expires_unix <= t);
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let (path, _text, mut doc, policy) = self.load_policy(scope)?;
        let defaults = policy.default_ports().to_vec();
        let mut changes = Vec::new();
        for x in &due {
            if remove_allow(&mut doc, &x.entry, &defaults) {
                changes.push(format!("removed {} (expired)", x.entry.describe()));
            }
        }
        if !changes.is_empty() {
            self.swap_policy(&path, &doc.to_string())?;
        }
        write_expiring(xpath, &keep)?;
        self.record_change(
            name,
            &ChangeEvent {
                time: rfc3339(now),
                uid: None,
                action: "expire".into(),
                changes: scope.mark(changes.clone()),
                note: None,
                expires: None,
            },
        )?;
        Ok(changes)
    }

    /// `GET /v1/envs/{name}/denials?since=SECS`: denied destinations from the proxy's access
    /// log, grouped by host:port, most recent first, each with the edit that would allow it
    /// under the current policy.
    pub async fn denials(&self, name: &str, since: Option<Duration>) -> Result<Denials, ApiError> {
        self.denials_of(name, since, false).await
    }

    /// [`Daemon::denials`]; with `learned`, the `would_deny` lines of report (learn) mode
    /// instead of the enforced denials.
    pub async fn denials_of(
        &self,
        name: &str,
        since: Option<Duration>,
        learned: bool,
    ) -> Result<Denials, ApiError> {
        self.denials_in(&PolicyScope::env(name), since, learned)
            .await
    }

    /// [`Daemon::denials_of`] for the proxy of `scope` (an egress profile's with
    /// `?profile=NAME`): its own access log, judged against its own policy.
    pub async fn denials_in(
        &self,
        scope: &PolicyScope,
        since: Option<Duration>,
        learned: bool,
    ) -> Result<Denials, ApiError> {
        let name = scope.env.as_str();
        self.policy_scope(scope)?;
        let dir = scope.log_dir(self.state());
        let file = kennel_container::hardening::ACCESS_LOG_FILE;
        let mut text = read_tail(&dir.join(format!("{file}.1")), MAX_LOG_READ)?;
        text.push_str(&read_tail(&dir.join(file), MAX_LOG_READ)?);
        // RFC 3339 UTC with milliseconds sorts as text, the way the proxy writes it.
        let cutoff = since.map(|d| rfc3339(SystemTime::now() - d));
        let policy_path = scope.policy_file(self.state());
        let policy = Policy::load(&policy_path).ok();
        let shown = policy_path.display().to_string();
        let mut groups: BTreeMap<(String, u16), Denial> = BTreeMap::new();
        let mut skipped = 0u64;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(l) = serde_json::from_str::<LogLine>(line) else {
                skipped += 1;
                continue;
            };
            let wanted = if learned { "would_deny" } else { "deny" };
            if l.decision != wanted {
                continue;
            }
            if cutoff.as_ref().is_some_and(|c| l.time < *c) {
                continue;
            }
            let g = groups
                .entry((l.host.clone(), l.port))
                .or_insert_with(|| Denial {
                    host: l.host.clone(),
                    port: l.port,
                    count: 0,
                    reasons: Vec::new(),
                    first: l.time.clone(),
                    last: l.time.clone(),
                    rule: None,
                    hint: None,
                    allowed_now: false,
                });
            g.count += 1;
            if !g.reasons.contains(&l.reason) {
                g.reasons.push(l.reason.clone());
            }
            if l.time < g.first {
                g.first = l.time.clone();
            }
            if l.time > g.last {
                g.last = l.time.clone();
            }
            if l.rule.is_some() {
                g.rule = l.rule;
            }
        }
        let mut denials: Vec<Denial> = groups.into_values().collect();
        for d in &mut denials {
            let authority = if d.host.contains(':') {
                format!("[{}]:{}", d.host, d.port)
            } else {
                format!("{}:{}", d.host, d.port)
            };
            if let (Some(p), Ok(t)) = (&policy, Target::parse_authority(&authority)) {
                // In report (learn) mode everything is let through; "allowed" here means
                // allowed once enforced.
                let decision = p.decide(&t);
                d.allowed_now = decision.is_allowed() && !decision.would_deny;
                let hint = p.how_to_allow(&t);
                if !d.allowed_now && !hint.is_empty() {
                    d.hint = Some(hint.render(&shown));
                }
            }
        }
        denials.sort_by(|a, b| b.last.cmp(&a.last));
        Ok(Denials {
            env: name.to_string(),
            denials,
            skipped_lines: skipped,
        })
    }
}

fn check_note(note: Option<String>) -> Result<Option<String>, ApiError> {
    match note {
        Some(n) if n.len() > MAX_NOTE => Err(bad(format!(
            "the note is {} bytes; at most {MAX_NOTE} are kept",
            n.len()
        ))),
        // Control characters would forge lines in the daemon's text log.
        Some(n) if n.chars().any(char::is_control) => Err(bad(
            "the note contains control characters (newlines, escapes); write it on one line".into(),
        )),
        other => Ok(other),
    }
}

fn parse_entries(inputs: &[String]) -> Result<Vec<EntrySpec>, ApiError> {
    if inputs.is_empty() {
        return Err(bad("no entries given; expected HOST[:PORT] …".into()));
    }
    if inputs.len() > MAX_ENTRIES {
        return Err(bad(format!(
            "{} entries given; at most {MAX_ENTRIES} at once",
            inputs.len()
        )));
    }
    inputs.iter().map(|s| parse_entry(s)).collect()
}

/// Appends `line` to the log at `path`; when that would take the file past `rotate_bytes`, the
/// file first becomes `<path>.1` (replacing the older generation), so the log never holds more
/// than about twice `rotate_bytes`. A single line longer than the cap still gets written.
pub fn append_rotating(path: &Path, line: &str, rotate_bytes: u64) -> std::io::Result<()> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    if len > 0 && len + line.len() as u64 > rotate_bytes {
        let mut older = path.as_os_str().to_owned();
        older.push(".1");
        std::fs::rename(path, PathBuf::from(older))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
}

/// Every second, removes expired `allow --for` entries (until the daemon shuts down). Runs once
/// at start too, so entries that expired while the daemon was down go at once.
pub async fn expire_loop(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if daemon.is_shutting_down() {
            return;
        }
        for (env, entry) in daemon.expire_due(SystemTime::now()).await {
            tracing::info!(env = %env, entry = %entry, "policy entry expired");
        }
    }
}

/// Temporary allow entries for jobs the daemon runs on a person's command (`kennel bench`):
/// always with an expiry (so a daemon that dies mid-job still removes them through
/// [`expire_loop`]), and removed again by the job itself when it ends.
impl Daemon {
    /// Allows `entry` for at most `for_secs`, recorded like `kennel allow --for` (the caller's
    /// uid, `note`). Returns the entry when it was new — the caller must end it with
    /// [`Daemon::end_temporary_allow`] — and `None` when the policy already allowed it (then
    /// nothing was changed and nothing must be removed).
    pub(crate) async fn temporary_allow(
        &self,
        peer: &Peer,
        name: &str,
        entry: &str,
        for_secs: u64,
        note: &str,
    ) -> Result<Option<EntrySpec>, ApiError> {
        self.policy_env(name)?;
        let e = parse_entry(entry)?;
        let _lock = self.policy_lock.lock().await;
        let (path, _text, mut doc, policy) = self.load_policy(&PolicyScope::env(name))?;
        let defaults = policy.default_ports().to_vec();
        let (said, new) = add_allow(&mut doc, &e, &defaults)?;
        if !new {
            return Ok(None);
        }
        let now = SystemTime::now();
        let at = now + Duration::from_secs(for_secs);
        // The expiry is written first: if the policy swap then fails nothing is allowed, and
        // an expiry of an absent entry removes nothing.
        let xpath = self.state().env_dir(name).join(EXPIRY_FILE);
        let mut list = read_expiring(&xpath)?;
        list.retain(|x| x.entry != e);
        list.push(Expiring {
            entry: e.clone(),
            expires_unix: now_unix(at),
            uid: peer.uid,
        });
        write_expiring(&xpath, &list)?;
        if let Err(err) = self.swap_policy(&path, &doc.to_string()) {
            // Take the expiry back: left behind, it would later remove the same entry if a
            // person added it for good.
            list.retain(|x| x.entry != e);
            if let Err(e2) = write_expiring(&xpath, &list) {
                tracing::warn!(env = %name, error = %e2, "cannot take back a temporary expiry");
            }
            return Err(err);
        }
        self.record_change(
            name,
            &ChangeEvent::now(
                Some(peer.uid),
                "allow",
                vec![said],
                Some(note.to_string()),
                Some(rfc3339(at)),
            ),
        )?;
        Ok(Some(e))
    }

    /// Removes what [`Daemon::temporary_allow`] added for `entry`, and its expiry; records it
    /// with `note`. Returns whether the policy file changed.
    pub(crate) async fn end_temporary_allow(
        &self,
        peer: &Peer,
        name: &str,
        entry: &EntrySpec,
        note: &str,
    ) -> Result<bool, ApiError> {
        let _lock = self.policy_lock.lock().await;
        let (path, _text, mut doc, policy) = self.load_policy(&PolicyScope::env(name))?;
        let defaults = policy.default_ports().to_vec();
        let changed = remove_allow(&mut doc, entry, &defaults);
        if changed {
            self.swap_policy(&path, &doc.to_string())?;
        }
        let xpath = self.state().env_dir(name).join(EXPIRY_FILE);
        let mut list = read_expiring(&xpath)?;
        let before = list.len();
        list.retain(|x| x.entry != *entry);
        if list.len() != before {
            write_expiring(&xpath, &list)?;
        }
        let changes = if changed {
            vec![format!("removed {}", entry.describe())]
        } else {
            vec![format!("{} was already gone", entry.describe())]
        };
        self.record_change(
            name,
            &ChangeEvent::now(
                Some(peer.uid),
                "expire",
                changes,
                Some(note.to_string()),
                None,
            ),
        )?;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_change_log_rotates_and_keeps_one_older_generation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(CHANGES_FILE);
        let older = dir.path().join(format!("{CHANGES_FILE}.1"));
        let line = |i: usize| format!("{{\"n\":{i:04}}}\n"); // 11 bytes
        for i in 0..10 {
            append_rotating(&path, &line(i), 50).expect("append");
        }
        let now = std::fs::read_to_string(&path).expect("current");
        let old = std::fs::read_to_string(&older).expect("older generation");
        // 4 lines (44 bytes) fit under 50: lines 0-3, 4-7 rotated, 8-9 current.
        assert_eq!(now, format!("{}{}", line(8), line(9)));
        assert_eq!(old, (4..8).map(line).collect::<String>());
        assert!(std::fs::metadata(&path).expect("meta").len() <= 50);
        // No third generation.
        let files = std::fs::read_dir(dir.path()).expect("ls").count();
        assert_eq!(files, 2);
    }

    #[test]
    fn entries_parse_with_clear_errors() {
        let e = parse_entry("Example.COM:8443").expect("valid");
        assert_eq!(
            (e.pattern.as_str(), e.cidr, e.port),
            ("example.com", false, Some(8443))
        );
        let e = parse_entry("*.example.com").expect("valid");
        assert_eq!((e.pattern.as_str(), e.port), ("*.example.com", None));
        let e = parse_entry("10.0.0.5:5432").expect("valid");
        assert_eq!(
            (e.pattern.as_str(), e.cidr, e.port),
            ("10.0.0.5/32", true, Some(5432))
        );
        let e = parse_entry("[fd00::1]:443").expect("valid");
        assert_eq!(
            (e.pattern.as_str(), e.cidr, e.port),
            ("fd00::1/128", true, Some(443))
        );
        let e = parse_entry("fd00::/8").expect("valid");
        assert!(e.cidr && e.port.is_none());
        for (input, says) in [
            ("exa mple.com", "invalid host pattern \"exa mple.com\""),
            ("example.com:0", "invalid port \"0\""),
            ("example.com:http", "invalid port \"http\""),
            ("", "empty entry"),
            ("[fd00::1", "missing `]`"),
            ("10.0.0.1/8", "invalid address or CIDR \"10.0.0.1/8\""),
        ] {
            let err = parse_entry(input).expect_err(input).to_string();
            assert!(err.contains(says), "{input}: {err}");
        }
    }

    #[test]
    fn allow_and_expire_edit_only_their_own_entries() {
        let src = "# comment kept\nmode = \"enforce\"\n\n[allow]\nhosts = [\"a.example\"]\n\n[deny]\nhosts = [\"b.example\"]\n";
        let mut doc: DocumentMut = src.parse().expect("toml");
        let d = [80, 443];
        let b = parse_entry("b.example").expect("valid");
        let (said, new) = add_allow(&mut doc, &b, &d).expect("allow");
        assert!(
            new && said.contains("removed \"b.example\" from [deny]"),
            "{said}"
        );
        let (_, new) = add_allow(&mut doc, &parse_entry("a.example").expect("v"), &d).expect("a");
        assert!(!new, "already there: not new, so never expired");
        let p = parse_entry("c.example:5000").expect("valid");
        add_allow(&mut doc, &p, &d).expect("rule");
        let text = doc.to_string();
        assert!(text.starts_with("# comment kept"), "{text}");
        let pol = Policy::from_toml_str(&text, Path::new("/p/policy.toml")).expect("valid");
        let t = Target::parse_authority("c.example:5000").expect("t");
        assert!(pol.decide(&t).is_allowed());
        assert!(remove_allow(&mut doc, &p, &d));
        assert!(remove_allow(&mut doc, &b, &d));
        let pol = Policy::from_toml_str(&doc.to_string(), Path::new("/p/policy.toml")).expect("v");
        assert!(!pol.decide(&t).is_allowed());
        assert!(
            pol.decide(&Target::parse_authority("a.example:443").expect("t"))
                .is_allowed()
        );
        add_deny(&mut doc, &parse_entry("a.example").expect("v")).expect("deny");
        let pol = Policy::from_toml_str(&doc.to_string(), Path::new("/p/policy.toml")).expect("v");
        assert!(
            !pol.decide(&Target::parse_authority("a.example:443").expect("t"))
                .is_allowed()
        );
    }
}
