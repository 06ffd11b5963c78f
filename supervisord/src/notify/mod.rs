//! Host notifications from the sandbox (`kennel-notify LEVEL MESSAGE` inside, `kennel notify
//! watch` on the host).
//!
//! Each environment has a notification directory in the daemon's state directory
//! (`envs/<name>/notifications`), bind-mounted read-write into the sandbox (at
//! `/workspace/.notifications` unless kennel.toml's `[notify] dir` says otherwise), and nothing
//! else of the host. The `kennel-notify` helper, a POSIX sh script ([`HELPER_SCRIPT`]), is
//! bind-mounted read-only at [`HELPER_PATH`], so it is in every image, also those kennel did not
//! build, and always matches the daemon's file format.
//!
//! The daemon reads the directory ([`scan_dir`]) — not the CLI: the state directory is the
//! daemon's (mode 0700), files are read and removed exactly once however many watchers run, and
//! one rate limit per environment holds. Watchers get notifications over the API
//! (`GET /v1/notifications`, a long poll on [`NotifyHub`]).
//!
//! The files are untrusted: opened with `O_NOFOLLOW|O_NONBLOCK` and checked on the descriptor
//! (regular file, one link, at most [`format::MAX_FILE_BYTES`]); symlinks, FIFOs, sockets and
//! devices are removed unread; the format is strict ([`format::parse`]) and the text cleaned of
//! control characters and escape sequences; a [`RateLimiter`] lets [`RATE_BURST`] through and
//! turns a flood into one summary.

/// The notification file format (defined in the wire-types crate: the CLI cleans text with
/// [`format::sanitize`] too).
pub use kennel_api::notify::format;

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use crate::registry::Daemon;
use crate::state::StateDir;

pub use format::Level;

/// Name of the per-environment notification directory inside `envs/<name>`.
pub const NOTIFY_DIR: &str = "notifications";
/// Name of the helper script inside `envs/<name>`.
pub const HELPER_FILE: &str = "kennel-notify";
/// Where the helper appears in the sandbox (on every image's `PATH`).
pub const HELPER_PATH: &str = "/usr/local/bin/kennel-notify";
/// How often the daemon looks at the notification directories (a notification reaches a
/// watcher within this plus the watcher's round trip).
pub const SCAN_INTERVAL: Duration = Duration::from_millis(200);
/// Notifications per environment let through at once before the rate limit holds them.
pub const RATE_BURST: u32 = 5;
/// One more notification is let through per this interval after the burst.
pub const RATE_REFILL: Duration = Duration::from_secs(2);
/// Suppressed notifications are summarised once per this interval.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(5);
/// Directory entries looked at per environment per scan (a directory with millions of files
/// is worked through over several scans, never in one blocking pass).
pub const MAX_ENTRIES_PER_SCAN: usize = 4096;
/// Notifications the daemon keeps for watchers that poll a little late.
pub const KEEP_RECENT: usize = 512;
/// A dot-file (the helper's file being written) older than this is removed.
pub const STALE_TEMP: Duration = Duration::from_secs(60);
/// With `[notify] on_denials = true`, the access log is looked at this often …
pub const DENIAL_WINDOW: Duration = Duration::from_secs(5);
/// … and this many denials within one look are a burst that notifies.
pub const DENIAL_BURST: u64 = 5;
/// Most access-log bytes read per look (a busier log is skipped to its end: still a burst).
const MAX_DENIAL_READ: u64 = 4 * 1024 * 1024;

/// The `kennel-notify` helper, bind-mounted read-only into every sandbox. POSIX sh, so it runs
/// in any image with `/bin/sh`; writes a dot-file and renames it, so the daemon never reads a
/// half-written notification.
pub const HELPER_SCRIPT: &str = r#"#!/bin/sh
# kennel-notify LEVEL MESSAGE... : a notification for the person on the host (kennel notify watch).
# Installed by kennel (read-only); LEVEL is error, complete or clarification.
set -eu
usage() {
    echo "usage: kennel-notify error|complete|clarification MESSAGE..." >&2
    exit 2
}
[ "$#" -ge 2 ] || usage
case "$1" in
    error|complete|clarification) level=$1 ;;
    *) usage ;;
esac
shift
msg=$*
[ -n "$msg" ] || usage
dir=${KENNEL_NOTIFY_DIR:-/workspace/.notifications}
if [ ! -d "$dir" ] || [ ! -w "$dir" ]; then
    echo "kennel-notify: $dir is not a writable directory (is this a kennel environment?)" >&2
    exit 1
fi
size=$(printf '%s' "$msg" | wc -c)
if [ "$size" -gt 4000 ]; then
    echo "kennel-notify: the message is $size bytes; at most 4000 are delivered" >&2
    exit 1
fi
name=$(date +%s)-$$
printf 'kennel-notify/1 %s\n%s\n' "$level" "$msg" > "$dir/.$name.tmp"
mv -f "$dir/.$name.tmp" "$dir/$name.msg"
"#;

pub use kennel_api::notify::{Notification, NotificationBatch};

/// What became of one notification directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A valid notification, admitted by the rate limit.
    Message(format::Parsed),
    /// Refused; the entry was removed.
    Refused {
        /// The entry's name as the sandbox wrote it (lossy UTF-8).
        name: String,
        /// Why.
        reason: String,
    },
    /// Removed unread because the rate limit holds (counted into the next summary).
    Suppressed,
}

/// The result of one pass over a notification directory.
#[derive(Debug, Default)]
pub struct Scan {
    /// What each entry became, in name order.
    pub outcomes: Vec<Outcome>,
    /// Entries left for the next pass (more than [`MAX_ENTRIES_PER_SCAN`]).
    pub more: bool,
}

/// Per-environment rate limit: a token bucket of [`RATE_BURST`] refilled every
/// [`RATE_REFILL`]; what it holds back is counted and reported as one summary per
/// [`SUMMARY_EVERY`].
#[derive(Debug, Clone)]
pub struct RateLimiter {
    tokens: f64,
    last: Instant,
    suppressed: u64,
    first_suppressed: Option<Instant>,
}

impl RateLimiter {
    /// A full bucket at `now`.
    pub fn new(now: Instant) -> RateLimiter {
        RateLimiter {
            tokens: f64::from(RATE_BURST),
            last: now,
            suppressed: 0,
            first_suppressed: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed / RATE_REFILL.as_secs_f64()).min(f64::from(RATE_BURST));
        self.last = now;
    }

    /// Takes a token if there is one; otherwise counts the notification as suppressed.
    pub fn admit(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.suppress(now);
            false
        }
    }

    fn suppress(&mut self, now: Instant) {
        self.suppressed += 1;
        self.first_suppressed.get_or_insert(now);
    }

    /// The number held back, once [`SUMMARY_EVERY`] has passed since the first of them (then
    /// the count starts again).
    pub fn summary_due(&mut self, now: Instant) -> Option<u64> {
        let first = self.first_suppressed?;
        if now.saturating_duration_since(first) < SUMMARY_EVERY {
            return None;
        }
        let n = std::mem::take(&mut self.suppressed);
        self.first_suppressed = None;
        Some(n)
    }
}

/// The summary text for `n` suppressed notifications.
pub fn summary_text(n: u64) -> String {
    format!(
        "{n} more notification(s) were not shown: more than {RATE_BURST} at once (at most one per {}s after that)",
        RATE_REFILL.as_secs()
    )
}

/// One pass over `dir`: every entry but directories is removed. A regular file is read when
/// `limiter` admits it (valid or not, every read takes a token), else removed unread and
/// counted into the next summary; symlinks, FIFOs, sockets and devices are refused unread.
/// Dot-files are the helper's files being written: left alone unless stale.
pub fn scan_dir(dir: &Path, limiter: &mut RateLimiter, now: Instant) -> std::io::Result<Scan> {
    let mut scan = Scan::default();
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entries.len() >= MAX_ENTRIES_PER_SCAN {
            scan.more = true;
            break;
        }
        // The entry's own type (d_type / lstat): a symlink is a symlink here.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        entries.push((entry.file_name(), is_dir));
    }
    entries.sort();
    for (name, is_dir) in entries {
        let path = dir.join(&name);
        let shown = name.to_string_lossy().into_owned();
        if shown.starts_with('.') {
            remove_if_stale(&path);
            continue;
        }
        if is_dir {
            // Only an empty one can go; a full one is skipped on every pass (quietly: reporting
            // it each time would be a flood of its own).
            let _ = std::fs::remove_dir(&path);
            continue;
        }
        let outcome = if limiter.admit(now) {
            match read_entry(&path).and_then(|b| format::parse(&b).map_err(|e| e.to_string())) {
                Ok(p) => Outcome::Message(p),
                Err(reason) => Outcome::Refused {
                    name: shown,
                    reason,
                },
            }
        } else {
            Outcome::Suppressed
        };
        // unlink never follows a symlink: a link to /etc/passwd loses the link, not the file.
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::debug!(path = %path.display(), error = %e, "cannot remove a notification entry");
        }
        scan.outcomes.push(outcome);
    }
    Ok(scan)
}

/// Reads one entry the safe way: `O_NOFOLLOW` (a symlink fails with `ELOOP`), `O_NONBLOCK` (a
/// FIFO does not block the open), then the type, link count and size checked on the open
/// descriptor, and at most one byte past the cap read.
fn read_entry(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                "a symlink (never followed)".to_string()
            } else {
                format!("cannot open: {e}")
            }
        })?;
    let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.file_type().is_file() {
        return Err(format!("not a regular file ({})", kind(&meta)));
    }
    if meta.nlink() != 1 {
        return Err(format!("a file with {} hard links", meta.nlink()));
    }
    if meta.len() > format::MAX_FILE_BYTES {
        return Err(format::FormatError::TooLarge { bytes: meta.len() }.to_string());
    }
    let mut bytes = Vec::new();
    file.take(format::MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    Ok(bytes)
}

fn libc_flags() -> i32 {
    nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC | nix::libc::O_NOCTTY
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

fn remove_if_stale(path: &Path) {
    let stale = std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > STALE_TEMP);
    if stale {
        let _ = std::fs::remove_file(path);
    }
}

/// `envs/<name>/notifications`.
pub fn notify_dir(state: &StateDir, name: &str) -> PathBuf {
    state.env_dir(name).join(NOTIFY_DIR)
}

/// Creates the notification directory and the helper script for `name`, and returns the
/// sandbox mounts for them: the directory read-write at `sandbox_dir`, the helper read-only at
/// [`HELPER_PATH`].
///
/// The directory is mode 1733 (anyone may create files, only its owner — the daemon — lists
/// and removes them); when the daemon runs as root it is owned by root and the sandbox's uid
/// writes through the `wx` bits. The state directory above it is 0700, so no other host user
/// reaches it.
pub fn prepare(
    state: &StateDir,
    name: &str,
    sandbox_dir: &str,
) -> std::io::Result<Vec<kennel_container::spec::HostMount>> {
    use std::os::unix::fs::PermissionsExt;
    let dir = notify_dir(state, name);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1733))?;
    let helper = state.env_dir(name).join(HELPER_FILE);
    let tmp = state.env_dir(name).join(format!(".{HELPER_FILE}.tmp"));
    std::fs::write(&tmp, HELPER_SCRIPT)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &helper)?;
    Ok(vec![
        kennel_container::spec::HostMount {
            source: dir,
            target: sandbox_dir.to_string(),
            rw: true,
        },
        kennel_container::spec::HostMount {
            source: helper,
            target: HELPER_PATH.to_string(),
            rw: false,
        },
    ])
}

/// Creates the mount point `.notifications`-style directory in the host workspace when the
/// sandbox path is a direct child of `/workspace`, owned like the workspace, so the engine does
/// not leave a root-owned directory there. Deeper paths are left to the engine, which creates
/// them inside the container's view: the daemon never walks a path the sandbox could have
/// turned into a symlink.
pub fn prepare_mount_point(workspace: &Path, sandbox_dir: &str) {
    let Some(rel) = sandbox_dir.strip_prefix("/workspace/") else {
        return;
    };
    if rel.is_empty() || rel.contains('/') {
        return;
    }
    let path = workspace.join(rel);
    match std::fs::create_dir(&path) {
        Ok(()) => {
            if let Ok(meta) = std::fs::metadata(workspace)
                && let Err(e) = std::os::unix::fs::lchown(&path, Some(meta.uid()), Some(meta.gid()))
            {
                tracing::debug!(path = %path.display(), error = %e, "cannot chown the notification mount point");
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "cannot create the notification mount point; the engine will");
        }
    }
}

/// The notifications the daemon has read, for watchers; and the per-environment rate limits.
#[derive(Debug)]
pub struct NotifyHub {
    inner: Mutex<HubInner>,
    changed: tokio::sync::watch::Sender<u64>,
    /// Per environment with `on_denials`: where its access log was read to, and when.
    denials: Mutex<DenialCursors>,
}

type DenialCursors = HashMap<String, (Option<LogCursor>, Option<Instant>)>;

#[derive(Debug, Default)]
struct HubInner {
    last_seq: u64,
    recent: VecDeque<Notification>,
    limits: HashMap<String, RateLimiter>,
}

impl Default for NotifyHub {
    fn default() -> Self {
        NotifyHub {
            inner: Mutex::new(HubInner::default()),
            changed: tokio::sync::watch::channel(0).0,
            denials: Mutex::new(HashMap::new()),
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl NotifyHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubInner> {
        // A poisoned lock only means a panic elsewhere; the queue itself stays consistent.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Scans `dir` (the notification directory of `env`) and delivers what it holds; returns
    /// whether entries are left for the next pass.
    pub fn scan(&self, env: &str, dir: &Path, now: Instant) -> std::io::Result<bool> {
        let mut inner = self.lock();
        let limiter = inner
            .limits
            .entry(env.to_string())
            .or_insert_with(|| RateLimiter::new(now));
        let scan = scan_dir(dir, limiter, now)?;
        for o in scan.outcomes {
            match o {
                Outcome::Message(p) => {
                    Self::push(&mut inner, &self.changed, env, p.level, p.message)
                }
                Outcome::Refused { name, reason } => {
                    tracing::warn!(target: "kennel::event", env = %env, file = %format::sanitize(&name), reason = %reason, "notification file refused");
                }
                Outcome::Suppressed => {}
            }
        }
        drop(inner);
        self.flush_summary(env, now);
        Ok(scan.more)
    }

    /// Delivers one notification to watchers if `env`'s rate limit lets it through.
    pub fn deliver(&self, env: &str, level: Level, message: String, now: Instant) {
        let mut inner = self.lock();
        let admitted = inner
            .limits
            .entry(env.to_string())
            .or_insert_with(|| RateLimiter::new(now))
            .admit(now);
        if admitted {
            Self::push(&mut inner, &self.changed, env, level, message);
        }
    }

    /// Emits `env`'s rate-limit summary if one is due.
    pub fn flush_summary(&self, env: &str, now: Instant) {
        let mut inner = self.lock();
        let due = inner.limits.get_mut(env).and_then(|l| l.summary_due(now));
        if let Some(n) = due.filter(|n| *n > 0) {
            Self::push(&mut inner, &self.changed, env, Level::Info, summary_text(n));
        }
    }

    fn push(
        inner: &mut HubInner,
        changed: &tokio::sync::watch::Sender<u64>,
        env: &str,
        level: Level,
        message: String,
    ) {
        inner.last_seq += 1;
        let n = Notification {
            seq: inner.last_seq,
            env: env.to_string(),
            level: level.as_str().to_string(),
            message,
            unix_ms: unix_ms(),
        };
        tracing::info!(target: "kennel::event", env = %env, level = level.as_str(), message = %n.message, "notification");
        inner.recent.push_back(n);
        while inner.recent.len() > KEEP_RECENT {
            inner.recent.pop_front();
        }
        changed.send_replace(inner.last_seq);
    }

    /// Forgets `env`'s rate limit and denial cursor (the environment was removed).
    pub fn forget(&self, env: &str) {
        self.lock().limits.remove(env);
        self.denials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(env);
    }

    /// Notifications after `after` (of `env`, or of every environment), without waiting.
    pub fn since(&self, after: Option<u64>, env: Option<&str>) -> NotificationBatch {
        let inner = self.lock();
        let Some(after) = after else {
            return NotificationBatch {
                notifications: Vec::new(),
                next: inner.last_seq,
                missed: 0,
            };
        };
        // A number from before a daemon restart (numbering starts again): everything kept now
        // is new to this watcher.
        let after = if after > inner.last_seq { 0 } else { after };
        let oldest = inner.recent.front().map_or(inner.last_seq + 1, |n| n.seq);
        let missed = oldest.saturating_sub(after + 1);
        NotificationBatch {
            notifications: inner
                .recent
                .iter()
                .filter(|n| n.seq > after && env.is_none_or(|e| n.env == e))
                .cloned()
                .collect(),
            next: inner.last_seq,
            missed,
        }
    }

    /// Like [`NotifyHub::since`], but waits up to `wait` for a first notification; returns
    /// early when `stop` says the daemon is shutting down.
    pub async fn wait_since(
        &self,
        after: Option<u64>,
        env: Option<&str>,
        wait: Duration,
        stop: impl Fn() -> bool,
    ) -> NotificationBatch {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let batch = self.since(after, env);
            if after.is_none() || !batch.notifications.is_empty() || stop() {
                return batch;
            }
            let woke = tokio::time::timeout_at(deadline, rx.changed()).await;
            if !matches!(woke, Ok(Ok(()))) {
                return self.since(after, env);
            }
        }
    }

    /// Wakes every waiting watcher (the daemon is shutting down).
    pub fn wake_all(&self) {
        self.changed.send_modify(|_| {});
    }
}

/// Where the denial watch of one environment is in its access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCursor {
    inode: u64,
    offset: u64,
}

/// The denials of an access log since `cursor` (`None`: start at the end now, counting
/// nothing): how many, and up to three `host:port` of them. A rotated log (another inode, or
/// shorter than the cursor) is read from its start.
pub fn new_denials(
    log: &Path,
    cursor: &mut Option<LogCursor>,
) -> std::io::Result<(u64, Vec<String>)> {
    use std::io::{Seek, SeekFrom};
    let mut file = match std::fs::File::open(log) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            *cursor = Some(LogCursor {
                inode: 0,
                offset: 0,
            });
            return Ok((0, Vec::new()));
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let (inode, len) = (meta.ino(), meta.len());
    let start = match *cursor {
        None => len,
        Some(c) if c.inode == inode && c.offset <= len => c.offset,
        Some(_) => 0,
    };
    let from = start.max(len.saturating_sub(MAX_DENIAL_READ));
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.take(len - from).read_to_end(&mut bytes)?;
    // Up to the last complete line; the rest is read next time.
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    *cursor = Some(LogCursor {
        inode,
        offset: from + complete as u64,
    });
    #[derive(Deserialize)]
    struct Line {
        host: String,
        port: u16,
        decision: String,
    }
    let (mut count, mut examples) = (0u64, Vec::new());
    for line in bytes[..complete].split(|b| *b == b'\n') {
        let Ok(l) = serde_json::from_slice::<Line>(line) else {
            continue;
        };
        if l.decision != "deny" {
            continue;
        }
        count += 1;
        let dest = format!("{}:{}", format::sanitize(&l.host), l.port);
        if examples.len() < 3 && !examples.contains(&dest) {
            examples.push(dest);
        }
    }
    Ok((count, examples))
}

/// The text of a denial-burst notification.
pub fn denial_text(env: &str, count: u64, examples: &[String]) -> String {
    format!(
        "the proxy denied {count} requests in {}s ({}); `kennel denials {env}` lists them",
        DENIAL_WINDOW.as_secs(),
        examples.join(", ")
    )
}

impl NotifyHub {
    /// Whether [`NotifyHub::check_denials`] would look at `env`'s log now (so the record is
    /// read only once per [`DENIAL_WINDOW`]).
    pub fn denials_due(&self, env: &str, now: Instant) -> bool {
        self.denials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(env)
            .and_then(|e| e.1)
            .is_none_or(|last| now.saturating_duration_since(last) >= DENIAL_WINDOW)
    }

    /// With `on_denials`, a burst of denials in `env`'s access log since the last look is a
    /// notification (through the rate limit). Looks at most once per [`DENIAL_WINDOW`].
    /// `enabled` false (the spec does not ask) only notes the time, so the spec is read again
    /// one window later.
    pub fn check_denials(&self, env: &str, log: &Path, now: Instant, enabled: bool) {
        let mut cursors = self
            .denials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = cursors.entry(env.to_string()).or_insert((None, None));
        if entry
            .1
            .is_some_and(|last: Instant| now.saturating_duration_since(last) < DENIAL_WINDOW)
        {
            return;
        }
        entry.1 = Some(now);
        if !enabled {
            entry.0 = None;
            return;
        }
        match new_denials(log, &mut entry.0) {
            Ok((count, examples)) if count >= DENIAL_BURST => {
                drop(cursors);
                self.deliver(env, Level::Info, denial_text(env, count, &examples), now);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(env = %env, error = %e, "cannot read the access log for denials")
            }
        }
    }
}

/// Scans every environment's notification directory every [`SCAN_INTERVAL`] until the daemon
/// shuts down.
pub async fn scan_loop(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(SCAN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if daemon.is_shutting_down() {
            return;
        }
        let d = daemon.clone();
        let pass = tokio::task::spawn_blocking(move || scan_all(&d)).await;
        if let Err(e) = pass {
            tracing::error!(error = %e, "notification scan failed");
        }
    }
}

fn scan_all(daemon: &Daemon) {
    let names = match daemon.state().names() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list environments for notifications");
            return;
        }
    };
    let now = Instant::now();
    for name in names {
        let dir = notify_dir(daemon.state(), &name);
        match daemon.notifications().scan(&name, &dir, now) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::debug!(env = %name, error = %e, "cannot scan the notification directory")
            }
        }
        if daemon.notifications().denials_due(&name, now) {
            let log = crate::policy_ops::log_dir(daemon.state(), &name)
                .join(kennel_container::hardening::ACCESS_LOG_FILE);
            let enabled = on_denials(daemon, &name);
            daemon
                .notifications()
                .check_denials(&name, &log, now, enabled);
        }
    }
}

/// Whether `name`'s recorded spec asks for denial notifications.
fn on_denials(daemon: &Daemon, name: &str) -> bool {
    matches!(daemon.state().read_record(name), Ok(Some(r)) if r.request.spec.notify.on_denials)
}
