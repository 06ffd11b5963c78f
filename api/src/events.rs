//! The daemon's event log as the CLI reads it (`POST /v1/events`, `kennel events`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What kinds of events there are (the `kind` field).
pub mod kind {
    /// An environment was created (`details.ms`).
    pub const CREATED: &str = "created";
    /// A creation failed (`details.error`).
    pub const CREATE_FAILED: &str = "create-failed";
    /// A creation was interrupted (the daemon died in the middle); the reconcile removed what
    /// it had made.
    pub const CREATE_INTERRUPTED: &str = "create-interrupted";
    /// An environment's containers were started.
    pub const STARTED: &str = "started";
    /// An environment's containers were stopped.
    pub const STOPPED: &str = "stopped";
    /// An environment was refreshed (`details.reason`).
    pub const REFRESHED: &str = "refreshed";
    /// A refresh failed (`details.reason`, `details.error`).
    pub const REFRESH_FAILED: &str = "refresh-failed";
    /// A refresh the health monitor wants waits for attached exec sessions.
    pub const REFRESH_DEFERRED: &str = "refresh-deferred";
    /// An environment was removed (`details.reason`).
    pub const REMOVED: &str = "removed";
    /// A health rule fired (`details.rule`, `details.value`, `details.threshold`).
    pub const HEALTH_RULE_FIRED: &str = "health-rule-fired";
    /// A live policy change (from `changes.jsonl`).
    pub const POLICY_CHANGED: &str = "policy-changed";
    /// The proxy reloaded a changed policy (`details.reloads`, `details.generation`; the daemon
    /// reads the proxy's reload counters).
    pub const POLICY_RELOADED: &str = "policy-reloaded";
    /// A policy change was refused, or the proxy rejected the file (`details.error`).
    pub const POLICY_REJECTED: &str = "policy-rejected";
    /// An image was built (`details.image`, `details.ms`; a workspace or service image also
    /// `details.dockerfile`).
    pub const IMAGE_BUILT: &str = "image-built";
    /// The daemon started.
    pub const DAEMON_STARTED: &str = "daemon-started";
    /// The start-up reconcile ran (`details`: kept, removed orphans/incomplete, missing).
    pub const RECONCILED: &str = "reconciled";
}

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// When, in milliseconds since the Unix epoch (for `--since`).
    pub unix_ms: u64,
    /// The environment, if the event is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// What happened (see [`kind`]).
    pub kind: String,
    /// A sentence for people.
    pub message: String,
    /// The figures behind it (rule, measured value, error …).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub details: Map<String, Value>,
}

impl Event {
    /// Adds a detail.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Event {
        self.details.insert(key.to_string(), value.into());
        self
    }
}

/// Which events to read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Only this environment's.
    #[serde(default)]
    pub env: Option<String>,
    /// Only events at or after this time (seconds since the Unix epoch).
    #[serde(default)]
    pub since_unix: Option<u64>,
    /// Keep the stream open and send new events as they happen.
    #[serde(default)]
    pub follow: bool,
}

impl EventQuery {
    /// Whether `ev` passes the filter.
    pub fn matches(&self, ev: &Event) -> bool {
        self.env.as_ref().is_none_or(|e| ev.env.as_ref() == Some(e))
            && self
                .since_unix
                .is_none_or(|s| ev.unix_ms >= s.saturating_mul(1000))
    }
}

/// Seconds since the Unix epoch, `d` ago.
pub fn since_ago(d: Duration) -> u64 {
    SystemTime::now()
        .checked_sub(d)
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
