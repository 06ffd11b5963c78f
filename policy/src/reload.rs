//! Live policy: [`PolicyStore`] (an `ArcSwap<Policy>` plus a generation counter) and
//! [`Reloader`], which rebuilds the policy from its source on demand (SIGHUP) or when a file it
//! was built from changes (the watcher sees every write in the sources' directories, and
//! reloads only when a source's content changed).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};

use crate::error::PolicyError;
use crate::inputs::Inputs;
use crate::legacy::LegacyEnv;
use crate::model::Policy;

/// Holds the live policy behind an `ArcSwap` plus a generation counter.
#[derive(Debug)]
pub struct PolicyStore {
    policy: ArcSwap<Policy>,
    generation: AtomicU64,
}

impl PolicyStore {
    /// A store holding `policy` as generation 1.
    pub fn new(policy: Policy) -> Arc<PolicyStore> {
        Arc::new(PolicyStore {
            policy: ArcSwap::from_pointee(policy),
            generation: AtomicU64::new(1),
        })
    }

    /// The current policy (cheap: one atomic load and a reference count increment).
    pub fn current(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Starts at 1, +1 per successful swap.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces the policy; returns the new generation.
    pub fn swap(&self, policy: Policy) -> u64 {
        self.policy.store(Arc::new(policy));
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// The result of one reload attempt.
#[derive(Debug)]
pub enum ReloadEvent {
    /// A new policy is live.
    Reloaded {
        /// Its generation.
        generation: u64,
    },
    /// The sources did not change (same version hash); nothing was swapped.
    Unchanged,
    /// The sources are invalid; the previous policy stays live.
    Failed(PolicyError),
}

/// Rebuilds the policy from its source (a TOML file + [`LegacyEnv`], or the embedded default).
#[derive(Debug)]
pub struct Reloader {
    path: Option<PathBuf>,
    legacy: LegacyEnv,
    store: Arc<PolicyStore>,
    /// The files the last build attempt read, with what they held; held while reloading, so
    /// reloads never run concurrently.
    last: Mutex<Inputs>,
}

impl Reloader {
    /// Loads the policy once (an error here is fatal for the caller) and holds it in a new store.
    pub fn new(path: Option<PathBuf>, legacy: LegacyEnv) -> Result<Reloader, PolicyError> {
        let (policy, inputs) = build(path.as_deref(), &legacy);
        Ok(Reloader {
            store: PolicyStore::new(policy?),
            path,
            legacy,
            last: Mutex::new(inputs),
        })
    }

    /// The store the reloader swaps policies into.
    pub fn store(&self) -> Arc<PolicyStore> {
        self.store.clone()
    }

    /// Re-reads now (SIGHUP). On error the old policy stays and the error is returned;
    /// unchanged content (same version hash) gives [`ReloadEvent::Unchanged`].
    pub fn reload(&self) -> ReloadEvent {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        self.attempt(&mut last)
    }

    /// What the watcher does: reload only when a file the last attempt read (policy, include,
    /// credential file, or one it failed to read) now reads differently; `None` otherwise. So
    /// writes of other files in a watched directory never reload, and a policy that is still
    /// invalid is reported once, not again on every event.
    pub fn reload_if_changed(&self) -> Option<ReloadEvent> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if !last.changed() {
            return None;
        }
        Some(self.attempt(&mut last))
    }

    /// The files the last attempt read (for the watcher: their directories are watched too).
    fn last_inputs(&self) -> Vec<PathBuf> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.paths().map(Path::to_path_buf).collect()
    }

    fn attempt(&self, last: &mut Inputs) -> ReloadEvent {
        let (built, inputs) = build(self.path.as_deref(), &self.legacy);
        *last = inputs;
        match built {
            Err(e) => ReloadEvent::Failed(e),
            Ok(p) if p.change_digest == self.store.current().change_digest => {
                ReloadEvent::Unchanged
            }
            Ok(p) => ReloadEvent::Reloaded {
                generation: self.store.swap(p),
            },
        }
    }

    /// Watches the directories of every source file (so rename-replace and
    /// delete-then-recreate are seen), waits until `debounce` has passed without further
    /// events, reloads, and calls `on_event` for each reload attempt from a background thread.
    /// The watched set follows the policy (a new include's directory is watched after reload).
    pub fn watch(
        self: Arc<Self>,
        debounce: Duration,
        on_event: impl Fn(&ReloadEvent) + Send + Sync + 'static,
    ) -> Result<WatchGuard, PolicyError> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let fs_tx = tx.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && !matches!(ev.kind, notify::EventKind::Access(_))
            {
                let _ = fs_tx.send(Msg::Fs);
            }
        })
        .map_err(|e| watch_error(self.path.as_deref(), e))?;
        let mut watched = BTreeSet::new();
        update_watches(&mut watcher, &mut watched, &self.watch_paths())
            .map_err(|e| watch_error(self.path.as_deref(), e))?;
        let this = self.clone();
        let handle = std::thread::Builder::new()
            .name("kennel-policy-watch".into())
            .spawn(move || {
                let mut watcher = watcher;
                loop {
                    match rx.recv() {
                        Ok(Msg::Fs) => {}
                        Ok(Msg::Stop) | Err(_) => return,
                    }
                    // Debounce: wait until the directory is quiet for `debounce`, but no longer
                    // than MAX_DEBOUNCE_PERIODS of it: a file written continuously in the same
                    // directory (the access log under traffic) must not postpone a policy edit
                    // forever.
                    let latest = Instant::now() + debounce.saturating_mul(MAX_DEBOUNCE_PERIODS);
                    let mut deadline = Instant::now() + debounce;
                    loop {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        match rx.recv_timeout(deadline - now) {
                            Ok(Msg::Fs) => deadline = (Instant::now() + debounce).min(latest),
                            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                            Err(RecvTimeoutError::Timeout) => break,
                        }
                    }
                    let Some(ev) = this.reload_if_changed() else {
                        continue;
                    };
                    if let Err(e) = update_watches(&mut watcher, &mut watched, &this.watch_paths())
                    {
                        tracing::warn!(error = %e, "policy watcher could not watch a directory");
                    }
                    on_event(&ev);
                }
            })
            .map_err(|e| PolicyError::io(self.path.as_deref().unwrap_or(Path::new(".")), e))?;
        Ok(WatchGuard {
            tx,
            handle: Some(handle),
        })
    }
}

impl Reloader {
    /// The policy in force's sources plus what the last attempt read (a failed attempt may
    /// name an include in a directory the policy in force does not use).
    fn watch_paths(&self) -> Vec<PathBuf> {
        let mut paths = self.store.current().source_files().to_vec();
        paths.extend(self.last_inputs());
        paths
    }
}

/// Longest a burst of directory events delays a reload, in debounce periods.
const MAX_DEBOUNCE_PERIODS: u32 = 10;

enum Msg {
    Fs,
    Stop,
}

/// Build the policy, and say which files the attempt read (also when it failed).
fn build(path: Option<&Path>, legacy: &LegacyEnv) -> (Result<Policy, PolicyError>, Inputs) {
    let Some(p) = path else {
        return (Policy::embedded_default_with(legacy), Inputs::default());
    };
    let inputs = RefCell::new(Inputs::default());
    // Two statements: the read's mutable borrow must end before the build borrows again.
    let src = inputs.borrow_mut().read_to_string(p);
    let built = src
        .map_err(|e| PolicyError::io(p, e))
        .and_then(|src| crate::parse::build_from_toml_recording(&src, p, legacy, &inputs));
    (built, inputs.into_inner())
}

fn watch_error(path: Option<&Path>, e: notify::Error) -> PolicyError {
    PolicyError::io(
        path.unwrap_or(Path::new(".")),
        std::io::Error::other(format!("cannot watch policy directory: {e}")),
    )
}

fn dir_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Watches the directories of `sources` (and stops watching ones no longer used).
fn update_watches(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
    sources: &[PathBuf],
) -> notify::Result<()> {
    let wanted: BTreeSet<PathBuf> = sources.iter().map(|p| dir_of(p)).collect();
    for gone in watched.difference(&wanted).cloned().collect::<Vec<_>>() {
        let _ = watcher.unwatch(&gone);
        watched.remove(&gone);
    }
    let mut result = Ok(());
    for dir in wanted {
        if watched.contains(&dir) {
            continue;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.insert(dir);
            }
            Err(e) => result = Err(e),
        }
    }
    result
}

/// Stops watching (and joins the watcher thread) when dropped.
#[derive(Debug)]
pub struct WatchGuard {
    tx: mpsc::Sender<Msg>,
    handle: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Fs => "Fs",
            Msg::Stop => "Stop",
        })
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
