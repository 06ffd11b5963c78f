//! Host notifications as the daemon hands them to watchers (`GET /v1/notifications`), and the
//! notification file format the sandbox writes ([`format`](mod@format)). The daemon's reading of the
//! notification directory is `kennel_supervisord::notify`, which re-exports these.

use serde::{Deserialize, Serialize};

pub mod format;

/// One notification as watchers get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Increasing number; a watcher asks for those after the last one it saw.
    pub seq: u64,
    /// The environment it came from (the title of a desktop notification).
    pub env: String,
    /// `error`, `complete`, `clarification` (from the sandbox) or `info` (kennel's own).
    pub level: String,
    /// The cleaned text.
    pub message: String,
    /// When the daemon read it, milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

/// `GET /v1/notifications` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationBatch {
    /// Notifications with `seq` greater than the request's `after`, oldest first.
    pub notifications: Vec<Notification>,
    /// What to pass as `after` next time.
    pub next: u64,
    /// Some notifications between `after` and the first returned were dropped from the
    /// daemon's memory before this watcher asked (it polled too late).
    #[serde(default)]
    pub missed: u64,
}
