//! The daemon's event log: what happened to environments and to the daemon, kept in the state
//! directory (`events.jsonl`, one JSON object per line) so `kennel events --since 1d` works
//! after a restart. The file is capped: when the next line would take it past
//! [`DEFAULT_MAX_BYTES`], it becomes `events.jsonl.1` (replacing the older one) and a new file
//! starts, so at most about twice the cap is kept.
//!
//! Live policy changes are not written here a second time: they are in each environment's
//! `changes.jsonl` ([`crate::policy_ops`]), which [`Daemon::events`] merges in as
//! `policy-changed` events (and publishes to followers as they happen).
//!
//! Every event is also logged by the daemon (`target = "kennel::event"`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Map;
use tokio::sync::broadcast;

use crate::error::ApiError;
use crate::registry::Daemon;

/// The event log's file in the state directory.
pub const EVENTS_FILE: &str = "events.jsonl";
/// The size at which the event log is rotated (4 MiB: tens of thousands of events).
pub const DEFAULT_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// Events a slow follower may fall behind by before it is told it missed some.
const FOLLOW_SLOTS: usize = 256;

pub use kennel_api::events::{Event, EventQuery, kind, since_ago};

/// Events the daemon makes (the type is the wire-types crate's; the clock and the time format
/// are the daemon's).
pub trait EventNow {
    /// An event that happens now.
    fn now(env: Option<&str>, kind: &str, message: impl Into<String>) -> Event;
}

impl EventNow for Event {
    fn now(env: Option<&str>, kind: &str, message: impl Into<String>) -> Event {
        let now = SystemTime::now();
        Event {
            time: crate::policy_ops::rfc3339(now),
            unix_ms: unix_ms(now),
            env: env.map(str::to_string),
            kind: kind.to_string(),
            message: message.into(),
            details: Map::new(),
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The append-only, size-capped event file and the live feed for followers.
#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    max_bytes: Mutex<u64>,
    write: Mutex<()>,
    feed: broadcast::Sender<Event>,
}

impl EventLog {
    /// The event log at `dir/events.jsonl` (created on the first event).
    pub fn new(dir: &Path) -> EventLog {
        EventLog {
            path: dir.join(EVENTS_FILE),
            max_bytes: Mutex::new(DEFAULT_MAX_BYTES),
            write: Mutex::new(()),
            feed: broadcast::channel(FOLLOW_SLOTS).0,
        }
    }

    /// Sets the rotation size (at least 1 KiB).
    pub fn set_max_bytes(&self, max: u64) {
        *self
            .max_bytes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = max.max(1024);
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rotated file (`events.jsonl.1`).
    pub fn rotated_path(&self) -> PathBuf {
        self.path.with_extension("jsonl.1")
    }

    /// Appends `ev`, rotating first if it would pass the cap, and sends it to followers.
    /// A write failure is logged, never returned: the operation that caused the event succeeded
    /// and must not be reported as failed because its record could not be kept.
    pub fn record(&self, ev: Event) {
        let details = serde_json::Value::Object(ev.details.clone());
        tracing::info!(target: "kennel::event", env = ?ev.env, kind = %ev.kind, details = %details, "{}", ev.message);
        if let Err(e) = self.append(&ev) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the event log");
        }
        self.publish(ev);
    }

    /// Sends `ev` to followers only (for events kept elsewhere, like policy changes).
    pub fn publish(&self, ev: Event) {
        // No follower is fine.
        let _ = self.feed.send(ev);
    }

    /// New events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.feed.subscribe()
    }

    fn append(&self, ev: &Event) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut line = serde_json::to_string(ev).map_err(std::io::Error::other)?;
        line.push('\n');
        let max = *self
            .max_bytes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A holder that panicked wrote whole lines or nothing; keep going.
        let _one_writer = self
            .write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let len = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if len > 0 && len + line.len() as u64 > max {
            std::fs::rename(&self.path, self.rotated_path())?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        f.write_all(line.as_bytes())
    }

    /// The kept events passing `q`, oldest first. Lines that do not parse (a torn last line
    /// after a crash) are skipped.
    pub fn read(&self, q: &EventQuery) -> std::io::Result<Vec<Event>> {
        let mut out = Vec::new();
        for p in [self.rotated_path(), self.path.clone()] {
            let text = match std::fs::read_to_string(&p) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            out.extend(
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Event>(l).ok())
                    .filter(|ev| q.matches(ev)),
            );
        }
        Ok(out)
    }
}

/// A policy change from `changes.jsonl` as an event.
pub fn from_change(env: &str, c: &crate::policy_ops::ChangeEvent) -> Event {
    let t = humantime::parse_rfc3339_weak(&c.time).unwrap_or(UNIX_EPOCH);
    let who = c
        .uid
        .map_or_else(|| "the daemon".to_string(), |u| format!("uid {u}"));
    let mut ev = Event {
        time: c.time.clone(),
        unix_ms: unix_ms(t),
        env: Some(env.to_string()),
        kind: kind::POLICY_CHANGED.to_string(),
        message: format!("policy {} by {who}: {}", c.action, c.changes.join("; ")),
        details: Map::new(),
    };
    ev = ev.with("action", c.action.clone());
    if let Some(u) = c.uid {
        ev = ev.with("uid", u);
    }
    if let Some(n) = &c.note {
        ev = ev.with("note", n.clone());
    }
    if let Some(x) = &c.expires {
        ev = ev.with("expires", x.clone());
    }
    ev
}

impl Daemon {
    /// Records an event (see [`EventLog::record`]).
    pub fn event(&self, ev: Event) {
        self.event_log().record(ev);
    }

    /// Records an `image-built` event for each workspace or service image build that ran for
    /// environment `env` (from [`kennel_container::build::collecting_builds`]).
    pub(crate) fn images_built(&self, env: &str, builds: &[kennel_container::build::BuiltImage]) {
        for b in builds {
            self.event(
                Event::now(
                    Some(env),
                    kind::IMAGE_BUILT,
                    format!(
                        "image {} built from {} in {} ms",
                        b.tag,
                        b.dockerfile.display(),
                        b.ms
                    ),
                )
                .with("image", b.tag.clone())
                .with("dockerfile", b.dockerfile.display().to_string())
                .with("ms", b.ms),
            );
        }
    }

    /// `GET /v1/events`: the kept events passing `q` (the daemon's log merged with every
    /// environment's policy changes), oldest first.
    pub fn events(&self, q: &EventQuery) -> Result<Vec<Event>, ApiError> {
        if let Some(env) = &q.env {
            kennel_container::spec::validate_env_name(env)
                .map_err(|e| ApiError::BadRequest(format!("env {env:?}: {e}")))?;
        }
        let mut out = self.event_log().read(q).map_err(|e| {
            ApiError::State(crate::state::StateError::Io {
                op: "read",
                path: self.event_log().path().to_path_buf(),
                source: e,
            })
        })?;
        let names = match &q.env {
            Some(e) => vec![e.clone()],
            None => self.state().names()?,
        };
        for name in names {
            let path = self
                .state()
                .env_dir(&name)
                .join(crate::policy_ops::CHANGES_FILE);
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            out.extend(
                text.lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .map(|c| from_change(&name, &c))
                    .filter(|ev| q.matches(ev)),
            );
        }
        // Stable: equal times keep their file order.
        out.sort_by_key(|ev| ev.unix_ms);
        Ok(out)
    }
}

/// `GET /v1/events` query: `env=NAME`, `since=SECONDS_SINCE_EPOCH`.
pub fn parse_query(query: Option<&str>) -> Result<EventQuery, ApiError> {
    let mut q = EventQuery::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("env", v)) if !v.is_empty() => q.env = Some(v.to_string()),
            Some(("since", v)) if v.parse::<u64>().is_ok() => q.since_unix = v.parse().ok(),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query {pair:?}; GET /v1/events takes `env=NAME` and `since=SECONDS` (since the Unix epoch)"
                )));
            }
        }
    }
    Ok(q)
}

impl Daemon {
    /// `POST /v1/events` (upgraded): the kept events passing `q` as JSON lines in `Stdout`
    /// frames; with `follow`, then each new one as it happens, until the client goes away.
    /// Without `follow` it ends with `Exit` 0.
    pub fn start_events(
        self: &std::sync::Arc<Self>,
        q: EventQuery,
        on_upgrade: hyper::upgrade::OnUpgrade,
    ) -> Result<(), ApiError> {
        use crate::frame::{Frame, FrameKind, read_frame, write_frame};
        // Subscribed before reading, so nothing recorded in between is lost; what is both read
        // and fed is sent once.
        let mut feed = self.event_log().subscribe();
        let kept = self.events(&q)?;
        // Not a tracked task: a followed stream may run for days; shutdown must not wait for it.
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => hyper_util::rt::TokioIo::new(u),
                Err(e) => {
                    tracing::warn!(error = %e, "events upgrade failed");
                    return;
                }
            };
            let (mut rd, mut wr) = tokio::io::split(upgraded);
            let line = |ev: &Event| {
                let mut l = serde_json::to_string(ev).unwrap_or_default();
                l.push('\n');
                Frame::new(FrameKind::Stdout, l)
            };
            let newest = kept.last().map_or(0, |e| e.unix_ms);
            let mut sent_last: Vec<Event> = kept
                .iter()
                .filter(|e| e.unix_ms == newest)
                .cloned()
                .collect();
            for ev in &kept {
                if write_frame(&mut wr, &line(ev)).await.is_err() {
                    return;
                }
            }
            if !q.follow {
                let _ = write_frame(&mut wr, &Frame::exit(0)).await;
                return;
            }
            loop {
                tokio::select! {
                    got = feed.recv() => match got {
                        Ok(ev) => {
                            if !q.matches(&ev) || ev.unix_ms < newest || sent_last.contains(&ev) {
                                continue;
                            }
                            sent_last.clear();
                            if write_frame(&mut wr, &line(&ev)).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let note = format!("kennel: {n} events were missed (this reader was too slow); `kennel events --since` shows them\n");
                            if write_frame(&mut wr, &Frame::new(FrameKind::Stderr, note)).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    // The client closing its end (or sending anything) ends the stream.
                    _ = read_frame(&mut rd) => return,
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rotates_at_the_cap_and_reads_both_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EventLog::new(dir.path());
        log.set_max_bytes(2048);
        for i in 0..100 {
            log.record(Event::now(Some("a"), kind::CREATED, format!("event {i}")).with("i", i));
        }
        let cur = std::fs::metadata(log.path()).expect("current").len();
        let old = std::fs::metadata(log.rotated_path())
            .expect("rotated")
            .len();
        assert!(cur <= 2048 && old <= 2048, "{cur} {old}");
        let all = log.read(&EventQuery::default()).expect("read");
        // The newest survive, in order, and the oldest were dropped with the second rotation.
        assert_eq!(all.last().map(|e| e.message.as_str()), Some("event 99"));
        assert!(all.len() < 100 && all.len() > 10, "{}", all.len());
        let nums: Vec<u64> = all
            .iter()
            .map(|e| e.details["i"].as_u64().expect("i"))
            .collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
    }

    #[test]
    fn filters_by_env_and_time_and_skips_torn_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EventLog::new(dir.path());
        let mut old = Event::now(Some("a"), kind::CREATED, "old");
        old.unix_ms = 1_000_000;
        log.record(old);
        log.record(Event::now(Some("b"), kind::CREATED, "b new"));
        log.record(Event::now(None, kind::DAEMON_STARTED, "daemon"));
        std::fs::OpenOptions::new()
            .append(true)
            .open(log.path())
            .and_then(|mut f| f.write_all(b"{\"time\":\"torn"))
            .expect("append");
        let q = |env: Option<&str>, since: Option<u64>| EventQuery {
            env: env.map(str::to_string),
            since_unix: since,
            follow: false,
        };
        let msgs = |q: EventQuery| -> Vec<String> {
            log.read(&q)
                .expect("read")
                .into_iter()
                .map(|e| e.message)
                .collect()
        };
        assert_eq!(msgs(q(None, None)), ["old", "b new", "daemon"]);
        assert_eq!(msgs(q(Some("a"), None)), ["old"]);
        assert_eq!(
            msgs(q(None, Some(since_ago(Duration::from_secs(60))))),
            ["b new", "daemon"]
        );
    }
}
