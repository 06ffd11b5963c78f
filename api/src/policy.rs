//! JSON bodies of the live-policy endpoints (`kennel allow/deny/denials/policy show|edit|import`),
//! shared by the daemon (`kennel_supervisord::policy_ops`) and the `kennel` CLI.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `POST /v1/envs/{name}/policy/allow`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRequest {
    /// `host`, `host:port`, `*.example.com`, `.example.com`, an IP address or CIDR, `[v6]:port`.
    pub entries: Vec<String>,
    /// Remove the entries again after this many seconds (`kennel allow --for 2h`).
    #[serde(default)]
    pub for_secs: Option<u64>,
    /// Why (kept in the change log).
    #[serde(default)]
    pub note: Option<String>,
}

/// `POST /v1/envs/{name}/policy/deny`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRequest {
    /// Host patterns, IP addresses or CIDRs (no ports: a deny entry covers every port).
    pub entries: Vec<String>,
    /// Why (kept in the change log).
    #[serde(default)]
    pub note: Option<String>,
}

/// The answer to every change: what the daemon did, and the event it recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyChanged {
    /// The environment.
    pub env: String,
    /// The policy file that was replaced (host path).
    pub file: PathBuf,
    /// One line per entry: what changed (`added "x" to [allow] hosts`, `already allowed` …).
    pub changes: Vec<String>,
    /// When `--for` entries expire (RFC 3339), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// One entry of the effective policy (`GET /v1/envs/{name}/policy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyEntryView {
    /// `allow` or `deny`.
    pub action: String,
    /// The pattern as normalised (host pattern or CIDR).
    pub pattern: String,
    /// Ports an allow entry allows (empty for deny: every port).
    pub ports: Vec<u16>,
    /// Where it is written, `file:line`.
    pub at: String,
    /// When a `kennel allow --for` entry expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// `GET /v1/envs/{name}/policy`: the effective policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyView {
    /// The environment.
    pub env: String,
    /// The policy file (host path).
    pub file: PathBuf,
    /// `enforce` or `report`.
    pub mode: String,
    /// `[defaults] ports`.
    pub default_ports: Vec<u16>,
    /// Every allow and deny entry.
    pub entries: Vec<PolicyEntryView>,
}

/// `GET /v1/envs/{name}/policy/file`: the local policy file, for `kennel policy edit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyFileDoc {
    /// Host path of the file.
    pub path: PathBuf,
    /// Its text.
    pub content: String,
    /// Hex SHA-256 of the text; a replace must name it (no lost updates).
    pub sha256: String,
}

/// `POST /v1/envs/{name}/policy/file`: replace the local policy file (validated first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyReplace {
    /// The new text.
    pub content: String,
    /// [`PolicyFileDoc::sha256`] of the text the edit started from.
    pub base_sha256: String,
    /// Why (kept in the change log).
    #[serde(default)]
    pub note: Option<String>,
}

/// `POST /v1/envs/{name}/policy/import`: the workspace's whitelist as the person's CLI read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// The whitelist's text.
    pub content: String,
    /// `false`: only compute the diff. `true`: apply it (after the person confirmed).
    #[serde(default)]
    pub apply: bool,
    /// With `apply`: the [`ImportPreview::base_sha256`] the person saw (no lost updates).
    #[serde(default)]
    pub base_sha256: Option<String>,
}

/// The answer of `POST /v1/envs/{name}/policy/import`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportPreview {
    /// Entries in the new whitelist and not in the imported copy.
    pub added: Vec<String>,
    /// Entries in the imported copy and not in the new whitelist.
    pub removed: Vec<String>,
    /// Hex SHA-256 of the imported copy the diff was computed against.
    pub base_sha256: String,
    /// Whether the new whitelist was applied.
    pub applied: bool,
}

/// One destination the proxy denied (`GET /v1/envs/{name}/denials`), grouped by host:port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Denial {
    /// Target host (normalised).
    pub host: String,
    /// Target port.
    pub port: u16,
    /// How many requests/tunnels were denied.
    pub count: u64,
    /// The reasons seen (`not_in_allowlist`, `denied_by_rule`, `port_not_allowed` …).
    pub reasons: Vec<String>,
    /// First time (RFC 3339).
    pub first: String,
    /// Last time (RFC 3339).
    pub last: String,
    /// The deny rule that matched (`file:line`), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The edit that would allow it under the current policy (the proxy's deny hint), or
    /// `None` when the current policy already allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Whether the current policy allows it (e.g. after `kennel allow`).
    pub allowed_now: bool,
}

/// `GET /v1/envs/{name}/denials`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Denials {
    /// The environment.
    pub env: String,
    /// Grouped denials, most recent first.
    pub denials: Vec<Denial>,
    /// Access-log lines that could not be read (not JSON), skipped.
    pub skipped_lines: u64,
}

/// `POST /v1/envs/{name}/policy/learn` (`kennel up --learn DUR`, `kennel policy learn ENV DUR`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnRequest {
    /// How long the proxy stays in report mode before the daemon switches it to enforce.
    pub for_secs: u64,
}
