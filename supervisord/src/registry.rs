//! The daemon's core: environment registry on top of the container backend and the state
//! directory; create / list / inspect / remove / exec, and the start-up reconcile.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use kennel_container::backend::{
    Backend, BoxFuture, EnvPlan, EnvState, EnvStatus, ExecOutput, ExecSession, LABEL_EGRESS_ONLY,
};
use kennel_container::error::{ImageError, SpecError};
use kennel_container::spec::{EnvSpec, validate_env_name};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::task::TaskTracker;

use crate::api::types::{ContainerInfo, CreateEnv, EnvInfo, ExecRequest, HealthInfo, VersionInfo};
use crate::auth::{Authorizer, Peer};
use crate::error::ApiError;
use crate::events::EventNow;
use crate::frame::{self, Frame, FrameKind};
use crate::state::{EnvRecord, StateDir, StateError};

/// A lifecycle command (devcontainer.json `postCreateCommand` …) running longer is stopped
/// waiting for.
const LIFECYCLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1800);

/// Label put on every object of an environment created by the daemon: the creator's uid.
pub use kennel_container::backend::LABEL_CREATED_BY;
/// Label put on every object of an environment created by the daemon: the state directory's
/// instance id ([`StateDir::instance`]). The daemon lists, removes and reconciles only objects
/// carrying its own id (or recorded in its state), never another daemon's or a test's.
pub const LABEL_DAEMON: &str = "dev.kennel.daemon";

/// Where images come from (Docker: built from host files and imported, see
/// [`crate::daemon::DockerImages`]; tests: fixed tags).
pub trait ImageSource: Send + Sync + 'static {
    /// The proxy image tag to use, building/importing it first if needed.
    fn proxy_image(&self) -> BoxFuture<'_, Result<String, ImageError>>;
    /// Builds/imports the demo sandbox image (`kennel-sandbox:latest`); returns its tag.
    fn demo_sandbox_image(&self) -> BoxFuture<'_, Result<String, ImageError>>;
    /// The host binary the proxy image is built from (`kennel doctor` checks it is static);
    /// `None` when images come from elsewhere.
    fn proxy_binary(&self) -> Option<PathBuf> {
        None
    }
    /// Where to record `image-built` events (called once by [`Daemon::new`]).
    fn attach_events(&self, _log: Arc<crate::events::EventLog>) {}
}

/// Images assumed to exist already: the given proxy tag and `kennel-sandbox:latest`.
#[derive(Debug, Clone)]
pub struct FixedProxyImage(pub String);

impl ImageSource for FixedProxyImage {
    fn proxy_image(&self) -> BoxFuture<'_, Result<String, ImageError>> {
        let tag = self.0.clone();
        Box::pin(async move { Ok(tag) })
    }

    fn demo_sandbox_image(&self) -> BoxFuture<'_, Result<String, ImageError>> {
        Box::pin(async move { Ok(format!("{}:latest", crate::images::DEMO_SANDBOX_REPO)) })
    }
}

/// What a reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Environments found in the engine and in the state directory.
    pub kept: Vec<String>,
    /// Labelled engine objects without state, removed.
    pub removed_orphans: Vec<String>,
    /// State directories of creations that never finished, removed.
    pub removed_incomplete: Vec<String>,
    /// Environments with state but no engine objects (shown as `missing`; `kennel down` clears them).
    pub missing: Vec<String>,
    /// Kept environments whose containers were not all running and that nobody stopped
    /// (`kennel stop`), started again (proxy first).
    pub started: Vec<String>,
    /// Kept environments that could not be brought back, with why (`name: reason`).
    pub not_repaired: Vec<String>,
    /// Environments left alone because a request of this daemon was working on them (a
    /// `kennel up` in flight, a refresh, a `kennel down` …).
    pub skipped_busy: Vec<String>,
}

/// When a reconcile runs: the checks are the same, the event says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileMode {
    /// At the daemon's start, before it serves.
    Startup,
    /// While serving, after the engine went away and answers again (`systemctl restart docker`,
    /// or an engine that was not up when the daemon started). Requests may be in flight.
    EngineBack,
}

impl ReconcileMode {
    /// The event's `trigger` detail.
    pub fn trigger(self) -> &'static str {
        match self {
            ReconcileMode::Startup => "start-up",
            ReconcileMode::EngineBack => "engine-back",
        }
    }
}

/// The daemon: shared by every connection.
pub struct Daemon {
    backend: Arc<dyn Backend>,
    images: Arc<dyn ImageSource>,
    state: StateDir,
    authorizer: Authorizer,
    daemon_uid: u32,
    tasks: TaskTracker,
    shutting_down: AtomicBool,
    /// Names with a create, change or remove in progress, and who holds each.
    busy: Mutex<HashMap<String, BusyHolder>>,
    /// Woken whenever a busy mark is released (requests wait out a reconcile's mark).
    busy_released: tokio::sync::Notify,
    /// Serialises live policy changes ([`crate::policy_ops`]): each is read-modify-write of
    /// one file, so two at once must not lose either.
    pub(crate) policy_lock: tokio::sync::Mutex<()>,
    /// Attached exec sessions (told why they end on a refresh).
    sessions: crate::ops::sessions::Sessions,
    /// The health monitor's last readings.
    health: crate::ops::health::HealthState,
    /// The event log (`events.jsonl` in the state directory).
    events: Arc<crate::events::EventLog>,
    /// Notifications read from the sandboxes ([`crate::notify`]).
    notifications: crate::notify::NotifyHub,
    /// The proxies' reload counters last seen ([`crate::ops::reloads`]).
    reloads: crate::ops::reloads::ReloadWatch,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("state", &self.state)
            .field("authorizer", &self.authorizer)
            .finish_non_exhaustive()
    }
}

/// Who holds an environment's busy mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BusyHolder {
    /// A request (create, refresh, start/stop, remove, bench): another request is refused.
    Request,
    /// The reconcile, which takes each environment for a moment: a request waits for it.
    Reconcile,
}

/// How long the engine must show nothing of an interrupted creation after its removal before
/// the reconcile trusts that no request of the killed daemon is still being carried out.
const IN_FLIGHT_SETTLE: std::time::Duration = std::time::Duration::from_secs(3);
/// How often the engine is asked in that time.
const IN_FLIGHT_POLL: std::time::Duration = std::time::Duration::from_millis(250);
/// The longest the reconcile keeps removing objects that keep appearing (an engine that is
/// still working through a backlog); what appears later is an orphan for the next reconcile.
const IN_FLIGHT_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Longest a request waits for the reconcile to be done with its environment before it is
/// told the name is busy. The reconcile starts an environment's stopped containers at most.
const RECONCILE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Marks a name busy for the guard's lifetime.
pub(crate) struct BusyGuard<'a> {
    daemon: &'a Daemon,
    name: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.daemon.busy_set().remove(&self.name);
        self.daemon.busy_released.notify_waiters();
    }
}

impl Daemon {
    /// A daemon over `backend`, keeping state in `state`; `authorizer` decides who may call.
    pub fn new(
        backend: Arc<dyn Backend>,
        images: Arc<dyn ImageSource>,
        state: StateDir,
        authorizer: Authorizer,
    ) -> Arc<Daemon> {
        let events = Arc::new(crate::events::EventLog::new(state.root()));
        images.attach_events(events.clone());
        Arc::new(Daemon {
            backend,
            images,
            state,
            authorizer,
            daemon_uid: nix::unistd::geteuid().as_raw(),
            tasks: TaskTracker::new(),
            shutting_down: AtomicBool::new(false),
            busy: Mutex::new(HashMap::new()),
            busy_released: tokio::sync::Notify::new(),
            policy_lock: tokio::sync::Mutex::new(()),
            sessions: Default::default(),
            health: Default::default(),
            events,
            notifications: Default::default(),
            reloads: Default::default(),
        })
    }

    /// Who may call.
    pub fn authorizer(&self) -> &Authorizer {
        &self.authorizer
    }

    /// The state directory.
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// Tasks that must finish before the daemon exits (connections, exec streams).
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// From now on, new creates and execs are refused with 503.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        // Long-polling watchers answer now, so the drain does not wait for them.
        self.notifications.wake_all();
    }

    /// Whether [`Daemon::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// The container backend (for [`crate::ops`]).
    pub(crate) fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Where images come from (for [`crate::ops`]).
    pub(crate) fn images(&self) -> &Arc<dyn ImageSource> {
        &self.images
    }

    /// Notifications read from the sandboxes, for `kennel notify watch`.
    pub fn notifications(&self) -> &crate::notify::NotifyHub {
        &self.notifications
    }

    /// Creates `name`'s notification directory and helper, and returns the sandbox mounts for
    /// them ([`crate::notify::prepare`]).
    pub(crate) fn prepare_notifications(
        &self,
        name: &str,
        spec: &EnvSpec,
    ) -> Result<Vec<kennel_container::spec::HostMount>, ApiError> {
        crate::notify::prepare_mount_point(&spec.workspace, &spec.notify.dir);
        crate::notify::prepare(&self.state, name, &spec.notify.dir).map_err(|e| {
            ApiError::State(StateError::Io {
                op: "create",
                path: crate::notify::notify_dir(&self.state, name),
                source: e,
            })
        })
    }

    /// The proxies' reload counters last seen.
    pub(crate) fn reloads(&self) -> &crate::ops::reloads::ReloadWatch {
        &self.reloads
    }

    /// The health monitor's last readings.
    pub fn health_state(&self) -> &crate::ops::health::HealthState {
        &self.health
    }

    /// The event log.
    pub fn event_log(&self) -> &Arc<crate::events::EventLog> {
        &self.events
    }

    /// The attached exec sessions.
    pub fn sessions(&self) -> &crate::ops::sessions::Sessions {
        &self.sessions
    }

    fn busy_set(&self) -> std::sync::MutexGuard<'_, HashMap<String, BusyHolder>> {
        // A poisoned lock only means another request panicked while holding it; the set is
        // still consistent (insert/remove are atomic), so keep going.
        self.busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes `name`'s busy mark for a request. Another request holding it is a 409 at once (two
    /// changes to one environment must not race); the reconcile holding it is waited for (up to
    /// [`RECONCILE_WAIT`]): a person's `kennel down` must not fail because the daemon happened
    /// to be looking at that environment after an engine restart.
    pub(crate) async fn mark_busy(&self, name: &str) -> Result<BusyGuard<'_>, ApiError> {
        let deadline = tokio::time::Instant::now() + RECONCILE_WAIT;
        loop {
            // Registered before the mark is tried, so a release in between is not missed.
            let released = self.busy_released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match self.try_mark(name, BusyHolder::Request) {
                Ok(guard) => return Ok(guard),
                Err(BusyHolder::Request) => return Err(ApiError::Busy(name.to_string())),
                Err(BusyHolder::Reconcile) => {}
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(ApiError::Busy(name.to_string()));
            }
        }
    }

    /// Takes `name`'s busy mark for the reconcile, or returns who holds it.
    fn mark_busy_for_reconcile(&self, name: &str) -> Result<BusyGuard<'_>, BusyHolder> {
        self.try_mark(name, BusyHolder::Reconcile)
    }

    fn try_mark(&self, name: &str, holder: BusyHolder) -> Result<BusyGuard<'_>, BusyHolder> {
        match self.busy_set().entry(name.to_string()) {
            std::collections::hash_map::Entry::Occupied(e) => Err(*e.get()),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(holder);
                Ok(BusyGuard {
                    daemon: self,
                    name: name.to_string(),
                })
            }
        }
    }

    pub(crate) fn check_running(&self) -> Result<(), ApiError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            Err(ApiError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// `POST /v1/images/proxy`: builds/imports the proxy image if missing or stale.
    pub async fn build_proxy_image(&self) -> Result<String, ApiError> {
        self.check_running()?;
        Ok(self.images.proxy_image().await?)
    }

    /// `POST /v1/images/demo-sandbox`: builds/imports `kennel-sandbox:latest` from host files.
    pub async fn build_demo_sandbox_image(&self) -> Result<String, ApiError> {
        self.check_running()?;
        Ok(self.images.demo_sandbox_image().await?)
    }

    /// `GET /v1/version`.
    pub fn version(&self) -> VersionInfo {
        VersionInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            api: "v1".to_string(),
        }
    }

    /// `GET /v1/health`: asks the engine for the environments.
    pub async fn health(&self) -> HealthInfo {
        match self.backend.list_envs().await {
            Ok(envs) => HealthInfo {
                status: "ok".into(),
                environments: Some(envs.len()),
                error: None,
            },
            Err(e) => HealthInfo {
                status: "degraded".into(),
                environments: None,
                error: Some(e.to_string()),
            },
        }
    }

    /// `POST /v1/envs`: validates the spec, reserves the name, writes the effective policy
    /// directory and validates it, makes sure the proxy image exists, and creates the objects.
    /// The build's and lifecycle commands' output is returned in [`EnvInfo::log`].
    pub async fn create(&self, peer: &Peer, req: CreateEnv) -> Result<EnvInfo, ApiError> {
        self.create_opts(peer, req, false).await
    }

    /// [`Daemon::create`]; with `egress_only` (`kennel up --egress-only`) the environment gets
    /// its network, proxy, services, image and home but no sandbox container (the IDE's dev
    /// container, `kennel devcontainer init`, takes its place) and no lifecycle commands.
    pub async fn create_opts(
        &self,
        peer: &Peer,
        req: CreateEnv,
        egress_only: bool,
    ) -> Result<EnvInfo, ApiError> {
        let (progress, mut lines) = tokio::sync::mpsc::unbounded_channel();
        let result = self
            .create_streaming_opts(peer, req, progress, egress_only)
            .await;
        let mut log = Vec::new();
        // Bounded: the sender is gone, only what was queued remains.
        while let Ok(line) = lines.try_recv() {
            log.push(line);
        }
        let mut info = result?;
        info.log = log;
        Ok(info)
    }

    /// [`Daemon::create`], sending the image build's and lifecycle commands' output to
    /// `progress` line by line as it happens (for the streaming create, see [`crate::api`]).
    pub async fn create_streaming(
        &self,
        peer: &Peer,
        req: CreateEnv,
        progress: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<EnvInfo, ApiError> {
        self.create_streaming_opts(peer, req, progress, false).await
    }

    /// [`Daemon::create_streaming`], egress-only as [`Daemon::create_opts`] says. An existing
    /// environment of the workspace is returned as it is (fast: `initializeCommand` runs this on
    /// every IDE start). A failure in the engine is an event.
    pub async fn create_streaming_opts(
        &self,
        peer: &Peer,
        req: CreateEnv,
        progress: tokio::sync::mpsc::UnboundedSender<String>,
        egress_only: bool,
    ) -> Result<EnvInfo, ApiError> {
        use crate::events::{Event, kind};
        let asked = req.spec.name.clone();
        let result = self
            .create_streaming_inner(peer, req, progress, egress_only)
            .await;
        match &result {
            Ok(_) => {}
            // A refused request (bad spec, name taken …) changed nothing: no event.
            Err(e) if !e.status().is_server_error() => {}
            Err(e) => self.event(
                Event::now(
                    Some(&asked),
                    kind::CREATE_FAILED,
                    format!("creating environment {asked:?} failed: {e}"),
                )
                .with("error", e.to_string())
                .with("uid", peer.uid),
            ),
        }
        result
    }

    #[tracing::instrument(skip_all, fields(env = %req.spec.name, uid = peer.uid, egress_only))]
    async fn create_streaming_inner(
        &self,
        peer: &Peer,
        req: CreateEnv,
        progress: tokio::sync::mpsc::UnboundedSender<String>,
        egress_only: bool,
    ) -> Result<EnvInfo, ApiError> {
        self.check_running()?;
        // What the caller asked of the environment's lifetime: kept as asked (the spec is
        // re-derived from the validated one below, which knows nothing of it).
        let (ttl_secs, remove_on_exit) = (req.spec.ttl_secs, req.spec.remove_on_exit);
        let started = std::time::Instant::now();
        validate_env_name(&req.spec.name)?;
        let mut spec: EnvSpec = req.spec.clone().into();
        self.validate_spec(peer, &mut spec)?;

        // Names and idempotence: the same workspace gets its environment back (started if
        // stopped); a name another workspace holds is suffixed when it was only the directory
        // name, and a conflict when it was asked for.
        // A kept home of this workspace is reused by creating the environment again.
        match self.name_owner(&spec.name).await? {
            Some(NameOwner::Env(ws)) if ws == spec.workspace => {
                return self.existing(&spec.name).await;
            }
            Some(NameOwner::Home(ws)) if ws == spec.workspace => {}
            Some(owner) if spec.name_is_default => {
                let suffixed = suffixed_name(&spec.name, &spec.workspace);
                tracing::info!(env = %suffixed, taken_by = %owner.describe(), "name taken; suffixed");
                spec.name = suffixed;
                match self.name_owner(&spec.name).await? {
                    Some(NameOwner::Env(ws)) if ws == spec.workspace => {
                        return self.existing(&spec.name).await;
                    }
                    Some(NameOwner::Home(ws)) if ws == spec.workspace => {}
                    Some(_) => return Err(ApiError::Conflict(spec.name.clone())),
                    None => {}
                }
            }
            Some(NameOwner::Env(other) | NameOwner::Home(other)) => {
                return Err(ApiError::NameTaken {
                    name: spec.name.clone(),
                    workspace: other,
                });
            }
            Some(NameOwner::Foreign) => return Err(ApiError::Conflict(spec.name.clone())),
            None => {}
        }
        let name = spec.name.clone();

        let _busy = self.mark_busy(&name).await?;
        if self.state.read_record(&name)?.is_some() {
            return Err(ApiError::Conflict(name));
        }
        let reservation = match self.state.reserve(&name) {
            Ok(r) => r,
            Err(StateError::Exists(_)) => return Err(ApiError::Conflict(name)),
            Err(e) => return Err(e.into()),
        };
        if self.backend.inspect_env(&name).await?.is_some() {
            return Err(ApiError::Conflict(name));
        }
        // Until the creation is done, a marker says so: a daemon killed in between finds it at
        // start and removes what was made (see [`Daemon::reconcile`]).
        let kept_home = self.backend.kept_home(&name).await?.is_some();
        self.state.mark_creating(&name, kept_home)?;

        // Invalid legacy variables are the request's fault (the CLI already reports them with
        // the `.env` file and line), not a state-directory write failure.
        spec.egress
            .legacy
            .resolve()
            .map_err(|e| ApiError::Policy(e.to_string()))?;
        let policy_dir = self.state.policy_dir(&name);
        let policy_file = crate::policy::write_effective_policy(
            &policy_dir,
            &spec,
            req.project_whitelist.as_deref(),
        )
        .map_err(|e| {
            ApiError::State(StateError::Io {
                op: "write",
                path: policy_dir.clone(),
                source: e,
            })
        })?;
        // Validated exactly as the proxy container will load it: the legacy variables are
        // already rendered into the file, and the container gets none of them.
        kennel_policy::Policy::load(&policy_file).map_err(|e| ApiError::Policy(e.to_string()))?;
        // Each egress profile's policy directory beside it, validated the same way.
        crate::policy_ops::write_profile_dirs(&self.state, &name, &spec)?;

        let proxy_image = self.images.proxy_image().await?;
        let created_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut req = req;
        // Record what is mounted: the validated, canonical paths.
        req.spec = (&spec).into();
        req.spec.ttl_secs = ttl_secs;
        req.spec.remove_on_exit = remove_on_exit;
        let record = EnvRecord {
            name: name.clone(),
            request: req,
            created_by_uid: peer.uid,
            created_unix,
            proxy_image: proxy_image.clone(),
        };
        self.state.write_record(&record)?;
        let lifecycle = spec.lifecycle.clone();
        let access_log_dir = crate::policy_ops::log_dir(&self.state, &name);
        crate::policy_ops::prepare_log_dir(&access_log_dir).map_err(|e| {
            ApiError::State(StateError::Io {
                op: "create",
                path: access_log_dir.clone(),
                source: e,
            })
        })?;
        let notify_mounts = self.prepare_notifications(&name, &spec)?;
        spec.mounts.extend(notify_mounts);
        let plan = EnvPlan {
            access_log_dir: Some(access_log_dir),
            spec,
            policy_dir,
            proxy_image,
            state_labels: {
                let mut l = vec![
                    (LABEL_CREATED_BY.to_string(), peer.uid.to_string()),
                    (LABEL_DAEMON.to_string(), self.state.instance().to_string()),
                ];
                if egress_only {
                    l.push((LABEL_EGRESS_ONLY.to_string(), "true".to_string()));
                }
                l
            },
            progress: Some(progress.clone()),
        };
        // Before the proxy exists: a look while it starts then compares with zero too.
        self.proxy_created(&name);
        let (status, builds) =
            kennel_container::build::collecting_builds(self.backend.create_env(&plan)).await;
        // A build that ran is an event also when a later step of the creation failed.
        self.images_built(&name, &builds);
        let status = status?;
        self.state.creation_done(&name)?;
        reservation.commit();
        tracing::info!(env = %name, ms = started.elapsed().as_millis() as u64, "environment created");
        {
            use crate::events::{Event, kind};
            let mut ev = Event::now(
                Some(&name),
                kind::CREATED,
                format!("environment {name:?} created by uid {}", peer.uid),
            )
            .with("uid", peer.uid)
            .with("ms", started.elapsed().as_millis() as u64)
            .with(
                "workspace",
                record.request.spec.workspace.display().to_string(),
            );
            if let Some(t) = ttl_secs {
                ev = ev.with("ttl_secs", t);
            }
            if remove_on_exit {
                ev = ev.with("remove_on_exit", true);
            }
            self.event(ev);
        }
        if egress_only {
            if !lifecycle.is_empty() {
                let _ = progress.send(
                    "egress-only: devcontainer.json's lifecycle commands are not run (no sandbox); the IDE runs its own".to_string(),
                );
            }
        } else {
            self.run_lifecycle(&name, &lifecycle, &progress).await;
        }
        Ok(self.info(status, Some(&record)))
    }

    /// Which workspace holds `name`: the recorded environment's, else the workspace label of a
    /// home volume `kennel down` kept. Engine objects of this name that this daemon does not know
    /// hold the name too (they are not ours to reuse).
    async fn name_owner(&self, name: &str) -> Result<Option<NameOwner>, ApiError> {
        if let Some(r) = self.state.read_record(name)? {
            return Ok(Some(NameOwner::Env(r.request.spec.workspace)));
        }
        if self.backend.inspect_env(name).await?.is_some() {
            return Ok(Some(NameOwner::Foreign));
        }
        Ok(self
            .backend
            .kept_home(name)
            .await?
            .map(|w| NameOwner::Home(PathBuf::from(w))))
    }

    /// `kennel up` on an environment that exists for this workspace: start it if needed, report it.
    async fn existing(&self, name: &str) -> Result<EnvInfo, ApiError> {
        let record = self.state.read_record(name)?;
        let Some(record) = record else {
            // Only a kept home: nothing to start; a fresh create would reuse it, but the caller's
            // name resolution said "existing", so this is a race with a `down`.
            return Err(ApiError::Busy(name.to_string()));
        };
        let mut status = self.backend.inspect_env(name).await?;
        let mut started = false;
        if let Some(s) = &status
            && s.state != EnvState::Running
        {
            let _busy = self.mark_busy(name).await?;
            self.state.clear_stopped(name)?;
            status = Some(self.backend.start_env(name).await?);
            tracing::info!(env = %name, "existing environment started");
            started = true;
        }
        let Some(status) = status else {
            // Recorded but gone from the engine: nothing to start; `kennel down` clears the
            // record, then `kennel up` creates it again (the hint of a conflict says so).
            return Err(ApiError::Conflict(name.to_string()));
        };
        let mut info = self.info(status, Some(&record));
        info.already_existed = true;
        if started {
            self.event(crate::events::Event::now(
                Some(name),
                crate::events::kind::STARTED,
                format!("environment {name:?} started by `kennel up`"),
            ));
        }
        Ok(info)
    }

    /// `POST /v1/envs/{name}/stop`: stops the containers, keeping everything.
    pub async fn stop(&self, name: &str) -> Result<EnvInfo, ApiError> {
        self.start_or_stop(name, false).await
    }

    /// `POST /v1/envs/{name}/start`: starts the stopped containers, proxy first.
    pub async fn start(&self, name: &str) -> Result<EnvInfo, ApiError> {
        self.check_running()?;
        self.start_or_stop(name, true).await
    }

    async fn start_or_stop(&self, name: &str, start: bool) -> Result<EnvInfo, ApiError> {
        validate_env_name(name).map_err(|_| ApiError::NotFound(name.to_string()))?;
        let _busy = self.mark_busy(name).await?;
        let record = self.state.read_record(name)?;
        if self.managed_status(name, record.as_ref()).await?.is_none() {
            return Err(ApiError::NotFound(name.to_string()));
        }
        // The intent first: a reconcile (after an engine restart) keeps a stopped environment
        // stopped and starts one meant to run, also when this call fails half-way.
        let recorded = record.is_some();
        let status = if start {
            self.state.clear_stopped(name)?;
            self.backend.start_env(name).await?
        } else {
            if recorded {
                self.state.mark_stopped(name)?;
            }
            match self.backend.stop_env(name).await {
                Ok(s) => s,
                Err(e) => {
                    // Still running (at least partly): not stopped as far as a reconcile goes.
                    if let Err(c) = self.state.clear_stopped(name) {
                        tracing::warn!(env = %name, error = %c, "cannot clear the stopped marker");
                    }
                    return Err(e.into());
                }
            }
        };
        tracing::info!(env = %name, start, "environment {}", if start { "started" } else { "stopped" });
        let (kind, verb) = if start {
            (crate::events::kind::STARTED, "started")
        } else {
            (crate::events::kind::STOPPED, "stopped")
        };
        self.event(crate::events::Event::now(
            Some(name),
            kind,
            format!("environment {name:?} {verb}"),
        ));
        Ok(self.info(status, record.as_ref()))
    }

    /// Runs devcontainer.json's lifecycle commands in the sandbox (as its user, in
    /// `/workspace`), sending their output to `log` line by line as it comes.
    /// The first failure stops the rest, as in the devcontainer CLI; the environment stays up
    /// so the person can fix and rerun by hand.
    async fn run_lifecycle(
        &self,
        env: &str,
        commands: &[kennel_container::devcontainer::LifecycleCommand],
        log: &tokio::sync::mpsc::UnboundedSender<String>,
    ) {
        let say = |line: String| {
            // Nobody listening (the client went away) is fine: the commands still run.
            let _ = log.send(line);
        };
        for c in commands {
            say(format!("running {} ({:?}) in the sandbox", c.key, c.argv));
            let req = kennel_container::ExecRequest {
                cmd: c.argv.clone(),
                ..Default::default()
            };
            let run = async {
                let mut session = self.backend.exec(env, req).await?;
                drop(session.stdin.take());
                // Lines as they come (stdout and stderr each complete their own lines).
                let (mut out, mut err) = (Vec::new(), Vec::new());
                while let Some(chunk) = session.output.next().await {
                    let (buf, bytes) = match chunk? {
                        ExecOutput::Stdout(b) => (&mut out, b),
                        ExecOutput::Stderr(b) => (&mut err, b),
                    };
                    buf.extend_from_slice(&bytes);
                    while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=nl).collect();
                        say(String::from_utf8_lossy(&line[..nl]).into_owned());
                    }
                }
                for rest in [out, err] {
                    if !rest.is_empty() {
                        say(String::from_utf8_lossy(&rest).into_owned());
                    }
                }
                session.exit.code().await
            };
            let outcome = match tokio::time::timeout(LIFECYCLE_TIMEOUT, run).await {
                Ok(Ok(code)) => (code == 0)
                    .then_some(())
                    .ok_or(format!("exited with {code}")),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "did not finish within {} s",
                    LIFECYCLE_TIMEOUT.as_secs()
                )),
            };
            if let Err(why) = outcome {
                say(format!(
                    "{} {why}; the remaining lifecycle commands were not run (the environment is up: fix it and run them with `kennel exec {env} -- …`)",
                    c.key
                ));
                return;
            }
        }
    }

    /// Checks what the backend cannot: paths are absolute, exist, and belong to the caller
    /// (checked on the canonical path, which replaces the given one, so a symlink cannot point
    /// the mount elsewhere); the sandbox user and group are not root.
    fn validate_spec(&self, peer: &Peer, spec: &mut EnvSpec) -> Result<(), ApiError> {
        let bad = |what: String, message: String| {
            ApiError::Spec(SpecError::InvalidValue { what, message })
        };
        if !spec.workspace.is_absolute() || !spec.workspace.is_dir() {
            return Err(bad(
                format!("workspace {}", spec.workspace.display()),
                "must be an existing directory, given as an absolute path".into(),
            ));
        }
        let ids: Vec<Option<u32>> = spec
            .user
            .split(':')
            .map(|p| p.parse::<u32>().ok())
            .collect();
        match ids.as_slice() {
            [Some(uid), Some(gid)] if *uid != 0 && *gid != 0 => {}
            [Some(_), Some(_)] => {
                return Err(bad(
                    format!("user {:?}", spec.user),
                    "the sandbox must not run as root or in group root".into(),
                ));
            }
            _ => {
                return Err(bad(
                    format!("user {:?}", spec.user),
                    "expected numeric `uid:gid`".into(),
                ));
            }
        }
        let checked = |what: &str, path: &mut PathBuf| -> Result<(), ApiError> {
            if !path.is_absolute() {
                return Err(bad(
                    format!("{what} {}", path.display()),
                    "must be an absolute path".into(),
                ));
            }
            let canonical = std::fs::canonicalize(&*path)
                .map_err(|e| ApiError::PathNotAllowed(format!("{what} {}: {e}", path.display())))?;
            self.check_owner(peer, what, &canonical)?;
            *path = canonical;
            Ok(())
        };
        checked("workspace", &mut spec.workspace)?;
        kennel_container::spec::check_notify_dir(&spec.notify.dir)
            .map_err(|m| bad("notify.dir".into(), m))?;
        // A worktree's main git directory is mounted read-write too: the caller must own it.
        let git = kennel_container::git::discover(&spec.workspace).map_err(|e| {
            bad(
                format!("workspace {}", spec.workspace.display()),
                format!("its git layout cannot be mounted safely: {e}"),
            )
        })?;
        if let Some(dir) = git.as_ref().and_then(|g| g.rw_host_dir()) {
            self.check_owner(peer, "the worktree's main git directory", dir)?;
        }
        let workspace = spec.workspace.clone();
        if let Some(b) = spec.build.as_mut() {
            // The paths come from files the agent can edit: canonical, the caller's, and inside
            // the workspace, or no build.
            checked("build context", &mut b.context)?;
            checked("build Dockerfile", &mut b.dockerfile)?;
            kennel_container::devcontainer::check_build(b, &workspace)
                .map_err(|m| bad("build".into(), m))?;
            if peer.uid != 0 && peer.uid != self.daemon_uid {
                let mut gids = peer.groups.clone();
                gids.push(peer.gid);
                let unreadable = kennel_container::build::unreadable_for(b, peer.uid, &gids)
                    .map_err(|e| bad("build context".into(), e.to_string()))?;
                if let Some(p) = unreadable {
                    return Err(ApiError::PathNotAllowed(format!(
                        "build context: you (uid {}) cannot read {}; kennel builds only from files the caller can read (exclude it in .dockerignore)",
                        peer.uid,
                        p.display()
                    )));
                }
            }
        }
        let creds = &mut spec.credentials;
        if let Some(p) = creds.git_config.as_mut() {
            checked("credentials.git_config", p)?;
        }
        if let Some(p) = creds.ssh_dir.as_mut() {
            checked("credentials.ssh_dir", p)?;
        }
        if let Some(p) = creds.git_token_file.as_mut() {
            checked("credentials.git_token_file", p)?;
        }
        for p in &mut creds.agent_config {
            checked("credentials.agent_config", p)?;
        }
        // Copied by the daemon into the home volume: the caller must own what is read.
        for p in &mut creds.agent_config_copy {
            checked("credentials.agent_config_copy", p)?;
        }
        for m in &mut spec.mounts {
            checked("mount.source", &mut m.source)?;
        }
        spec.env
            .validate()
            .map_err(|m| bad("sandbox variables".into(), m))?;
        // Egress profiles: names checked again (they become container names and paths), one
        // text per include file, services naming only the spec's profiles.
        let mut seen = std::collections::BTreeSet::new();
        for p in &spec.egress.profiles {
            kennel_container::spec::check_profile_name(&p.name)
                .map_err(|m| bad(format!("egress profile {:?}", p.name), m))?;
            if !seen.insert(p.name.clone()) {
                return Err(bad(
                    format!("egress profile {:?}", p.name),
                    "is defined twice".into(),
                ));
            }
            if p.include.len() != p.lists.len() {
                return Err(bad(
                    format!("egress profile {:?}", p.name),
                    "needs the text of each include file (the CLI reads them)".into(),
                ));
            }
        }
        for svc in &spec.services {
            if let kennel_container::spec::ServiceEgress::Profile(p) = &svc.egress
                && spec.egress.profile(p).is_none()
            {
                return Err(bad(
                    format!("service {:?}", svc.name),
                    format!("service.egress = {p:?} names no egress profile of the environment"),
                ));
            }
        }
        Ok(())
    }

    /// Non-root callers may only mount paths they own.
    fn check_owner(&self, peer: &Peer, what: &str, path: &Path) -> Result<(), ApiError> {
        if peer.uid == 0 || peer.uid == self.daemon_uid {
            return Ok(());
        }
        let meta = std::fs::metadata(path)
            .map_err(|e| ApiError::PathNotAllowed(format!("{what} {}: {e}", path.display())))?;
        if meta.uid() != peer.uid {
            return Err(ApiError::PathNotAllowed(format!(
                "{what} {} is owned by uid {}, not by you (uid {}); kennel only mounts paths the caller owns",
                path.display(),
                meta.uid(),
                peer.uid
            )));
        }
        Ok(())
    }

    pub(crate) fn info(&self, status: EnvStatus, record: Option<&EnvRecord>) -> EnvInfo {
        let mut containers: Vec<ContainerInfo> = status
            .containers
            .into_iter()
            .map(|c| ContainerInfo {
                name: c.name,
                role: c.role,
                state: c.state,
                image: Some(c.image),
            })
            .collect();
        let rank = |role: &str| match role {
            "proxy" => 0,
            "sandbox" => 1,
            _ => 2,
        };
        containers.sort_by(|a, b| {
            rank(&a.role)
                .cmp(&rank(&b.role))
                .then_with(|| a.name.cmp(&b.name))
        });
        let profiles = record
            .map(|r| crate::policy_ops::profile_infos(&self.state, r, &containers))
            .unwrap_or_default();
        EnvInfo {
            state: state_str(status.state).to_string(),
            name: status.name,
            network: status.network,
            proxy_address: status.proxy_address,
            created: status.created.map(|c| rfc3339_if_epoch(&c)),
            containers,
            workspace: record.map(|r| r.request.spec.workspace.clone()),
            image: record.map(|r| r.request.spec.image.clone()),
            policy_dir: record.map(|r| self.state.policy_dir(&r.name)),
            env_names: record.map(env_names).unwrap_or_default(),
            already_existed: false,
            warnings: record.map(workspace_warnings).unwrap_or_default(),
            log: Vec::new(),
            expires: record.and_then(expires_text),
            remove_on_exit: record.is_some_and(|r| r.request.spec.remove_on_exit),
            profiles,
            docker: record.and_then(docker_doc),
        }
    }

    fn missing_info(&self, record: &EnvRecord) -> EnvInfo {
        EnvInfo {
            name: record.name.clone(),
            state: "missing".into(),
            network: kennel_container::backend::names::network(&record.name),
            proxy_address: None,
            created: None,
            containers: Vec::new(),
            workspace: Some(record.request.spec.workspace.clone()),
            image: Some(record.request.spec.image.clone()),
            policy_dir: Some(self.state.policy_dir(&record.name)),
            env_names: env_names(record),
            already_existed: false,
            warnings: workspace_warnings(record),
            log: Vec::new(),
            expires: expires_text(record),
            remove_on_exit: record.request.spec.remove_on_exit,
            profiles: crate::policy_ops::profile_infos(&self.state, record, &[]),
            docker: docker_doc(record),
        }
    }

    /// Whether engine objects were created by this daemon (carry its instance label).
    fn owns(&self, status: &EnvStatus) -> bool {
        status.labels.get(LABEL_DAEMON).map(String::as_str) == Some(self.state.instance())
    }

    /// The engine's view of `name` if this daemon manages it (recorded in its state, or
    /// carrying its instance label); `Ok(None)` for unknown or foreign environments.
    pub(crate) async fn managed_status(
        &self,
        name: &str,
        record: Option<&EnvRecord>,
    ) -> Result<Option<EnvStatus>, ApiError> {
        Ok(self
            .backend
            .inspect_env(name)
            .await?
            .filter(|s| record.is_some() || self.owns(s)))
    }

    /// `GET /v1/envs`: the environments this daemon manages, including recorded ones that have
    /// vanished from the engine (state `missing`), sorted by name. Objects created by another
    /// daemon or by hand are not listed.
    pub async fn list(&self) -> Result<Vec<EnvInfo>, ApiError> {
        let mut out = BTreeMap::new();
        for status in self.backend.list_envs().await? {
            let record = self.state.read_record(&status.name).ok().flatten();
            if record.is_some() || self.owns(&status) {
                out.insert(status.name.clone(), self.info(status, record.as_ref()));
            }
        }
        for name in self.state.names()? {
            if out.contains_key(&name) {
                continue;
            }
            if let Ok(Some(record)) = self.state.read_record(&name) {
                out.insert(name, self.missing_info(&record));
            }
        }
        Ok(out.into_values().collect())
    }

    /// `GET /v1/envs/{name}`.
    pub async fn inspect(&self, name: &str) -> Result<EnvInfo, ApiError> {
        validate_env_name(name).map_err(|_| ApiError::NotFound(name.to_string()))?;
        let record = self.state.read_record(name)?;
        match (self.managed_status(name, record.as_ref()).await?, record) {
            (Some(status), record) => Ok(self.info(status, record.as_ref())),
            (None, Some(record)) => Ok(self.missing_info(&record)),
            (None, None) => Err(ApiError::NotFound(name.to_string())),
        }
    }

    /// `DELETE /v1/envs/{name}`: removes every labelled object, then the state.
    #[tracing::instrument(skip(self))]
    ///
    /// The home volume is kept (agent logins survive `down`/`up`).
    pub async fn remove(&self, name: &str) -> Result<(), ApiError> {
        self.remove_with(name, false).await.map(|_warnings| ())
    }

    /// `DELETE /v1/envs/{name}?purge=true`: [`Daemon::remove`], and with `purge` the home
    /// volume too (also of an environment that is already down but kept its home).
    /// Returns the workspace's warnings ([`workspace_warnings`]) for the person to read.
    pub async fn remove_with(&self, name: &str, purge: bool) -> Result<Vec<String>, ApiError> {
        self.remove_because(name, purge, "kennel down").await
    }

    /// [`Daemon::remove_with`], recording `reason` in the `removed` event.
    pub async fn remove_because(
        &self,
        name: &str,
        purge: bool,
        reason: &str,
    ) -> Result<Vec<String>, ApiError> {
        validate_env_name(name).map_err(|_| ApiError::NotFound(name.to_string()))?;
        let _busy = self.mark_busy(name).await?;
        let record = self.state.read_record(name)?;
        let status = self.managed_status(name, record.as_ref()).await?;
        let kept_home = purge && self.backend.kept_home(name).await?.is_some();
        if record.is_none() && status.is_none() && !kept_home {
            return Err(ApiError::NotFound(name.to_string()));
        }
        self.backend.remove_env(name).await?;
        if purge {
            self.backend.purge_env(name).await?;
        }
        self.state.remove(name)?;
        self.notifications.forget(name);
        tracing::info!(env = %name, purge, "environment removed");
        self.event(
            crate::events::Event::now(
                Some(name),
                crate::events::kind::REMOVED,
                format!(
                    "environment {name:?} removed ({reason}){}",
                    if purge { ", home volume purged" } else { "" }
                ),
            )
            .with("reason", reason)
            .with("purge", purge),
        );
        Ok(record.map(|r| workspace_warnings(&r)).unwrap_or_default())
    }

    /// `GET /v1/envs/{name}/ide`: the IDE's dev container for environment `name`, as
    /// devcontainer.json (without `initializeCommand`). Only the environment's creator (or root,
    /// or the daemon's own user) may read it: it carries the sandbox's variables, values included.
    pub async fn ide_container(
        &self,
        peer: &Peer,
        name: &str,
    ) -> Result<crate::api::types::IdeContainer, ApiError> {
        validate_env_name(name).map_err(|_| ApiError::NotFound(name.to_string()))?;
        let record = self
            .state
            .read_record(name)?
            .ok_or_else(|| ApiError::NotFound(name.to_string()))?;
        if peer.uid != 0 && peer.uid != self.daemon_uid && peer.uid != record.created_by_uid {
            return Err(ApiError::PathNotAllowed(format!(
                "environment {name:?} was created by uid {}; only they may read its variables (you are uid {})",
                record.created_by_uid, peer.uid
            )));
        }
        let plan = self.refresh_plan(&record).await?;
        let body = self.backend.ide_container(&plan).await?;
        let devcontainer = kennel_container::ide::devcontainer_json(name, &body, &[])
            .map_err(|m| ApiError::BadRequest(format!("environment {name:?}: {m}")))?;
        Ok(crate::api::types::IdeContainer {
            name: name.to_string(),
            devcontainer,
        })
    }

    /// `GET /v1/envs/{name}/weaker`: every container on the environment's internal network whose
    /// settings are weaker than kennel's for its role (the IDE's container after a hand edit, a
    /// container attached by hand).
    pub async fn weaker(
        &self,
        name: &str,
    ) -> Result<Vec<kennel_container::ide::Weakness>, ApiError> {
        validate_env_name(name).map_err(|_| ApiError::NotFound(name.to_string()))?;
        let record = self.state.read_record(name)?;
        if self.managed_status(name, record.as_ref()).await?.is_none() {
            return Err(ApiError::NotFound(name.to_string()));
        }
        let read_only = record
            .as_ref()
            .map(|r| r.request.spec.read_only_rootfs)
            .unwrap_or(true);
        Ok(self
            .backend
            .network_members(name)
            .await?
            .into_iter()
            .filter_map(|m| {
                let problems = kennel_container::ide::weaknesses(name, &m, read_only);
                (!problems.is_empty()).then(|| kennel_container::ide::Weakness {
                    container: m.name.clone(),
                    role: m.role.clone().unwrap_or_else(|| "unlabelled".into()),
                    problems,
                })
            })
            .collect())
    }

    /// Start-up reconcile: [`Daemon::reconcile_with`] in [`ReconcileMode::Startup`].
    pub async fn reconcile(&self) -> Result<ReconcileReport, ApiError> {
        self.reconcile_with(ReconcileMode::Startup).await
    }

    /// Reconciles the state directory with the engine. Objects carrying this daemon's instance
    /// label but without state are orphans and are removed; creations that never finished
    /// (a `creating` marker, or a state directory without a record) are removed; recorded
    /// environments whose containers are not all running are started again (proxy first)
    /// unless the person stopped them (`kennel stop`). Objects of other daemons (or made by
    /// hand) are left alone.
    ///
    /// Each environment is looked at under its busy mark ([`Daemon::mark_busy`]), the one every
    /// create, refresh, start/stop and remove holds: one that a request of this daemon is working
    /// on is skipped (its `creating` marker is that request's, not a leftover), and a request
    /// arriving meanwhile waits until the reconcile is done with that environment rather than
    /// racing it. At start-up
    /// nothing is busy yet, so both modes do the same; `mode` only goes into the event.
    pub async fn reconcile_with(&self, mode: ReconcileMode) -> Result<ReconcileReport, ApiError> {
        let mut report = ReconcileReport::default();
        let mut engine = Vec::new();
        for status in self.backend.list_envs().await? {
            let name = status.name.clone();
            engine.push(name.clone());
            let valid = validate_env_name(&name).is_ok();
            let _busy = if valid {
                match self.mark_busy_for_reconcile(&name) {
                    Ok(guard) => Some(guard),
                    Err(_) => {
                        tracing::info!(env = %name, "reconcile: a request is working on it; left alone");
                        report.skipped_busy.push(name);
                        continue;
                    }
                }
            } else {
                None
            };
            let recorded = valid && self.state.read_record(&name)?.is_some();
            let interrupted = if valid {
                self.state.creating(&name)?
            } else {
                None
            };
            if let Some(marker) = interrupted {
                self.remove_interrupted(&name, marker, true).await?;
                report.removed_incomplete.push(name.clone());
            } else if recorded {
                report.kept.push(name.clone());
                self.repair(&name, mode, &mut report).await?;
            } else if self.owns(&status) {
                tracing::warn!(env = %name, "removing orphaned environment objects (no state)");
                self.backend.remove_env(&name).await?;
                if validate_env_name(&name).is_ok() {
                    self.state.remove(&name)?;
                }
                report.removed_orphans.push(name.clone());
            } else {
                tracing::debug!(env = %name, "ignoring an environment this daemon did not create");
            }
        }
        for name in self.state.names()? {
            if engine.contains(&name) {
                continue;
            }
            let Ok(_busy) = self.mark_busy_for_reconcile(&name) else {
                tracing::info!(env = %name, "reconcile: a request is working on it; left alone");
                report.skipped_busy.push(name);
                continue;
            };
            if let Some(marker) = self.state.creating(&name)? {
                self.remove_interrupted(&name, marker, false).await?;
                report.removed_incomplete.push(name);
            } else if self.state.read_record(&name)?.is_some() {
                // Created since the engine was listed (at run time the busy mark was released
                // in between): not missing.
                if self.backend.inspect_env(&name).await?.is_some() {
                    report.kept.push(name);
                    continue;
                }
                tracing::warn!(env = %name, "environment has state but no engine objects; `kennel down` clears it");
                report.missing.push(name);
            } else {
                tracing::warn!(env = %name, "removing the state of an unfinished create");
                self.state.remove(&name)?;
                self.event(
                    crate::events::Event::now(
                        Some(&name),
                        crate::events::kind::CREATE_INTERRUPTED,
                        format!("the creation of {name:?} never finished (the daemon stopped in the middle); its state was removed, nothing had been created in the engine"),
                    )
                    .with("outcome", "removed"),
                );
                report.removed_incomplete.push(name);
            }
        }
        let mut ev = crate::events::Event::now(
            None,
            crate::events::kind::RECONCILED,
            format!(
                "reconciled with the engine {}: {} kept, {} started again, {} orphaned removed, {} unfinished creations removed, {} missing, {} left alone (busy){}",
                match mode {
                    ReconcileMode::Startup => "at start-up",
                    ReconcileMode::EngineBack => "after it came back",
                },
                report.kept.len(),
                report.started.len(),
                report.removed_orphans.len(),
                report.removed_incomplete.len(),
                report.missing.len(),
                report.skipped_busy.len(),
                if report.not_repaired.is_empty() {
                    String::new()
                } else {
                    format!("; not repaired: {}", report.not_repaired.join("; "))
                }
            ),
        )
        .with("trigger", mode.trigger());
        for (k, v) in [
            ("kept", &report.kept),
            ("started", &report.started),
            ("removed_orphans", &report.removed_orphans),
            ("removed_incomplete", &report.removed_incomplete),
            ("missing", &report.missing),
            ("skipped_busy", &report.skipped_busy),
            ("not_repaired", &report.not_repaired),
        ] {
            ev = ev.with(k, v.clone());
        }
        self.event(ev);
        Ok(report)
    }

    /// Brings a kept environment back to what its state says: running, unless the person
    /// stopped it. A failure to start is reported, not returned: the other environments are
    /// still reconciled. The caller holds the environment's busy mark.
    async fn repair(
        &self,
        name: &str,
        mode: ReconcileMode,
        report: &mut ReconcileReport,
    ) -> Result<(), ApiError> {
        // Looked at again under the busy mark: the list may be from before a request that
        // has just finished (a `kennel start`, a create).
        let Some(status) = self.backend.inspect_env(name).await? else {
            return Ok(());
        };
        match status.state {
            EnvState::Running => return Ok(()),
            EnvState::Incomplete => {
                report.not_repaired.push(format!(
                    "{name}: its proxy or sandbox container is gone; `kennel refresh {name}` recreates them"
                ));
                return Ok(());
            }
            EnvState::Stopped | EnvState::Degraded => {}
        }
        if self.state.stopped(name)? {
            return Ok(());
        }
        let down: Vec<String> = status
            .containers
            .iter()
            .filter(|c| c.state != "running")
            .map(|c| c.name.clone())
            .collect();
        match self.backend.start_env(name).await {
            Ok(after) => {
                tracing::info!(env = %name, started = ?down, state = state_str(after.state), "reconcile: started the containers that were not running");
                self.event(
                    crate::events::Event::now(
                        Some(name),
                        crate::events::kind::STARTED,
                        format!(
                            "environment {name:?} started again by the reconcile {} ({} were not running)",
                            match mode {
                                ReconcileMode::Startup => "at the daemon's start",
                                ReconcileMode::EngineBack => "after the engine came back",
                            },
                            down.join(", ")
                        ),
                    )
                    .with("reason", "reconcile")
                    .with("trigger", mode.trigger())
                    .with("containers", down),
                );
                report.started.push(name.to_string());
            }
            Err(e) => {
                tracing::warn!(env = %name, error = %e, "reconcile: cannot start the environment again");
                report
                    .not_repaired
                    .push(format!("{name}: starting it failed: {e}"));
            }
        }
        Ok(())
    }

    /// Removes what an interrupted creation of `name` made: its engine objects, the home
    /// volume if the creation made it (a kept home it reused stays), and its state.
    async fn remove_interrupted(
        &self,
        name: &str,
        marker: crate::state::Creating,
        in_engine: bool,
    ) -> Result<(), ApiError> {
        tracing::warn!(env = %name, "removing an environment whose creation never finished");
        // Always: a creation killed before its first container may have made its networks,
        // which the engine's list of environments does not show.
        self.backend.remove_env(name).await?;
        let late = self.remove_late_objects(name, &marker).await?;
        self.state.remove(name)?;
        self.event(
            crate::events::Event::now(
                Some(name),
                crate::events::kind::CREATE_INTERRUPTED,
                format!(
                    "the creation of {name:?} never finished (the daemon stopped in the middle); what it had made was removed{}",
                    if marker.kept_home {
                        " (the kept home volume it reused stays)"
                    } else {
                        ""
                    }
                ),
            )
            .with("outcome", "removed")
            .with("engine_objects", in_engine)
            .with("late_removals", late),
        );
        Ok(())
    }

    /// Watches the engine for what the killed daemon's last requests still make after
    /// [`Daemon::remove_interrupted`] removed the rest, and removes it: the engine finishes a
    /// request (a network create, a container start) whose client died, so an object can
    /// appear after the first removal. Done once nothing has appeared for
    /// [`IN_FLIGHT_SETTLE`] (at most [`IN_FLIGHT_LIMIT`]); returns how many times something
    /// had to be removed again. The caller holds the busy mark, so a new create of the name
    /// waits rather than being taken for a straggler.
    async fn remove_late_objects(
        &self,
        name: &str,
        marker: &crate::state::Creating,
    ) -> Result<u32, ApiError> {
        let start = tokio::time::Instant::now();
        let mut quiet_since = start;
        let mut removals = 0;
        while quiet_since.elapsed() < IN_FLIGHT_SETTLE && start.elapsed() < IN_FLIGHT_LIMIT {
            tokio::time::sleep(IN_FLIGHT_POLL).await;
            if self.backend.inspect_env(name).await?.is_some() {
                tracing::warn!(env = %name, "the engine finished a request of the stopped daemon after the removal; removing again");
                self.backend.remove_env(name).await?;
                removals += 1;
                quiet_since = tokio::time::Instant::now();
            }
        }
        // The home volume last (its create may have been in flight too, and it shows in no
        // listing above); one that was kept before the creation stays.
        if !marker.kept_home {
            self.backend.purge_env(name).await?;
        }
        Ok(removals)
    }

    /// `POST /v1/envs/{name}/exec`: starts the command, then (once the connection is upgraded)
    /// streams its output as frames. Errors before the upgrade are ordinary JSON errors.
    pub async fn start_exec(
        &self,
        name: &str,
        req: ExecRequest,
        on_upgrade: OnUpgrade,
    ) -> Result<(), ApiError> {
        self.check_running()?;
        validate_env_name(name).map_err(|_| ApiError::NotFound(name.to_string()))?;
        if req.cmd.is_empty() {
            return Err(ApiError::BadRequest("exec needs a command".into()));
        }
        let record = self.state.read_record(name)?;
        if record.is_none() && self.managed_status(name, None).await?.is_none() {
            return Err(ApiError::NotFound(name.to_string()));
        }
        let session = self.backend.exec(name, req).await?;
        let env = name.to_string();
        let attached = self.sessions.attach(name);
        // `kennel up --rm`: the expiry loop removes it once its last session has ended.
        if record
            .as_ref()
            .is_some_and(|r| r.request.spec.remove_on_exit)
        {
            self.sessions.remove_when_detached(name);
        }
        self.tasks.spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    if let Err(e) =
                        pump_until(session, TokioIo::new(upgraded), Some(attached)).await
                    {
                        tracing::info!(env = %env, error = %e, "exec stream ended early");
                    }
                }
                Err(e) => tracing::warn!(env = %env, error = %e, "exec upgrade failed"),
            }
        });
        Ok(())
    }
}

/// Who holds an environment name: a recorded environment, or the home volume `kennel down`
/// kept; both name the workspace.
enum NameOwner {
    Env(PathBuf),
    Home(PathBuf),
    /// Labelled engine objects this daemon has no record of (another daemon's, or by hand).
    Foreign,
}

impl NameOwner {
    fn describe(&self) -> String {
        match self {
            NameOwner::Env(w) => format!("environment of {}", w.display()),
            NameOwner::Home(w) => format!("kept home of {}", w.display()),
            NameOwner::Foreign => "objects this daemon did not create".into(),
        }
    }
}

/// What the person should check before trusting the workspace on the host again: a git
/// `commondir` in the main git directory (see [`kennel_container::git::unexpected_redirects`]).
pub fn workspace_warnings(record: &EnvRecord) -> Vec<String> {
    kennel_container::git::unexpected_redirects(&record.request.spec.workspace)
        .into_iter()
        .map(|p| {
            format!(
                "{} exists: git does not create it in a main repository, and it redirects git on the host to another repository's config and hooks; the sandbox may have written it. Inspect and remove it before running git in {} on the host",
                p.display(),
                record.request.spec.workspace.display()
            )
        })
        .collect()
}

/// When an environment with a `--ttl` is removed (seconds since the Unix epoch): its creation
/// time plus the TTL, both stored in its record, so the deadline survives a daemon restart.
pub fn expires_unix(record: &EnvRecord) -> Option<u64> {
    record
        .request
        .spec
        .ttl_secs
        .map(|t| record.created_unix.saturating_add(t))
}

fn expires_text(record: &EnvRecord) -> Option<String> {
    expires_unix(record).map(|t| {
        crate::policy_ops::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
    })
}

/// The names (never the values) of an environment's sandbox variables.
fn env_names(record: &EnvRecord) -> Vec<String> {
    kennel_container::env::SandboxEnv::from(record.request.spec.env.clone()).names()
}

/// `<name>-<6 hex digits of the SHA-256 of the workspace path>`, at most 40 characters: the name
/// of a workspace whose directory name another workspace's environment already has.
pub fn suffixed_name(name: &str, workspace: &Path) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(workspace.as_os_str().as_encoded_bytes());
    let hex: String = hash.iter().take(3).map(|b| format!("{b:02x}")).collect();
    let mut base: String = name.chars().take(40 - 7).collect();
    while base.ends_with('-') {
        base.pop();
    }
    format!("{base}-{hex}")
}

/// Engine timestamps given as Unix seconds become RFC 3339 (UTC); anything else is kept.
pub fn rfc3339_if_epoch(text: &str) -> String {
    let Ok(secs) = text.trim().parse::<i64>() else {
        return text.to_string();
    };
    kennel_policy::time::rfc3339_from_unix_secs(secs).unwrap_or_else(|| text.to_string())
}

fn state_str(s: EnvState) -> &'static str {
    match s {
        EnvState::Running => "running",
        EnvState::Degraded => "degraded",
        EnvState::Stopped => "stopped",
        EnvState::Incomplete => "incomplete",
    }
}

/// Streams an exec session over `io`: output frames, then the exit (or error) frame; stdin
/// frames from the client go to the command, resize frames to the TTY.
pub async fn pump<IO>(session: ExecSession, io: IO) -> Result<(), frame::FrameError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin,
{
    pump_until(session, io, None).await
}

/// [`pump`], ended early by a notice to `attached` (a refresh): the notice goes to the client
/// as the last ([`FrameKind::Error`]) frame, so the person sees why the session ended.
pub async fn pump_until<IO>(
    mut session: ExecSession,
    io: IO,
    mut attached: Option<crate::ops::sessions::Attached>,
) -> Result<(), frame::FrameError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut stdin = session.stdin.take();
    let resize = session.resize.take();
    let input_fut = async move {
        if stdin.is_none() && resize.is_none() {
            return;
        }
        loop {
            let frame = match frame::read_frame(&mut rd).await {
                Ok(Some(f)) => f,
                // End of stream or a broken stream: end of input.
                _ => break,
            };
            match frame.kind {
                FrameKind::Stdin if frame.payload.is_empty() => {
                    if let Some(mut s) = stdin.take() {
                        let _ = s.shutdown().await;
                    }
                }
                FrameKind::Stdin => {
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(&frame.payload).await.is_err()
                    {
                        stdin = None;
                    }
                }
                FrameKind::Resize => {
                    if let (Some(resize), Ok((rows, cols))) = (&resize, frame.size()) {
                        let _ = resize(rows, cols).await;
                    }
                }
                _ => break,
            }
        }
        if let Some(mut s) = stdin.take() {
            let _ = s.shutdown().await;
        }
    };
    let output_fut = async move {
        loop {
            let notice = async {
                match attached.as_mut() {
                    Some(a) => a.notices.recv().await.ok(),
                    None => std::future::pending().await,
                }
            };
            let chunk = tokio::select! {
                chunk = session.output.next() => chunk,
                Some(message) = notice => {
                    frame::write_frame(&mut wr, &Frame::new(FrameKind::Error, Bytes::from(message)))
                        .await?;
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
            };
            let Some(chunk) = chunk else { break };
            match chunk {
                Ok(ExecOutput::Stdout(b)) => {
                    frame::write_chunked(&mut wr, FrameKind::Stdout, b).await?
                }
                Ok(ExecOutput::Stderr(b)) => {
                    frame::write_chunked(&mut wr, FrameKind::Stderr, b).await?
                }
                Err(e) => {
                    frame::write_frame(
                        &mut wr,
                        &Frame::new(FrameKind::Error, Bytes::from(e.to_string())),
                    )
                    .await?;
                    return Ok(());
                }
            }
        }
        let last = match session.exit.code().await {
            Ok(code) => Frame::exit(i32::try_from(code).unwrap_or(i32::MAX)),
            Err(e) => Frame::new(FrameKind::Error, Bytes::from(e.to_string())),
        };
        frame::write_frame(&mut wr, &last).await?;
        let _ = wr.shutdown().await;
        Ok(())
    };
    tokio::pin!(input_fut, output_fut);
    let mut input_done = false;
    loop {
        tokio::select! {
            r = &mut output_fut => return r,
            () = &mut input_fut, if !input_done => input_done = true,
        }
    }
}

/// The environment's Docker engine as `kennel inspect` shows it (from its spec).
fn docker_doc(record: &EnvRecord) -> Option<kennel_api::types::DockerDoc> {
    record
        .request
        .spec
        .docker
        .map(|d| kennel_api::types::DockerDoc::new(d.mode, kennel_container::engine::DOCKER_HOST))
}

#[cfg(test)]
mod tests {
    use super::rfc3339_if_epoch;

    mod busy_marks {
        use std::sync::Arc;
        use std::time::Duration;

        use kennel_container::FakeBackend;

        use crate::auth::Authorizer;
        use crate::registry::{Daemon, FixedProxyImage};
        use crate::state::StateDir;

        fn daemon(dir: &std::path::Path) -> Arc<Daemon> {
            Daemon::new(
                Arc::new(FakeBackend::new()),
                Arc::new(FixedProxyImage("kennel-proxy:test".into())),
                StateDir::open(dir).unwrap(),
                Authorizer::new(0, [], []),
            )
        }

        /// Regression: `kennel down` right after an engine restart failed with 409 because the
        /// reconcile was looking at that environment at that moment.
        #[tokio::test]
        async fn a_request_waits_for_the_reconcile_and_then_gets_the_environment() {
            let dir = tempfile::tempdir().unwrap();
            let d = daemon(dir.path());
            let reconcile = d.mark_busy_for_reconcile("e1").expect("free");
            let waiting = {
                let d = d.clone();
                tokio::spawn(async move { d.mark_busy("e1").await.map(drop).is_ok() })
            };
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(
                !waiting.is_finished(),
                "the request waits while the reconcile holds it"
            );
            drop(reconcile);
            let got = tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .expect("woken when the reconcile lets go")
                .unwrap();
            assert!(got, "the request then holds the mark");
        }

        #[tokio::test]
        async fn a_request_holding_the_mark_still_makes_another_request_busy_at_once() {
            let dir = tempfile::tempdir().unwrap();
            let d = daemon(dir.path());
            let first = d.mark_busy("e1").await.expect("free");
            let second = tokio::time::timeout(Duration::from_secs(1), d.mark_busy("e1"))
                .await
                .expect("answered at once");
            assert!(
                matches!(second, Err(crate::error::ApiError::Busy(ref n)) if n == "e1"),
                "409 for a second request"
            );
            assert!(
                d.mark_busy_for_reconcile("e1").is_err(),
                "the reconcile leaves it alone"
            );
            drop(first);
            assert!(d.mark_busy_for_reconcile("e1").is_ok(), "free again");
        }
    }

    #[test]
    fn epoch_seconds_become_rfc3339() {
        assert_eq!(rfc3339_if_epoch("0"), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_if_epoch("1795436888"), "2026-11-23T12:28:08Z");
        assert_eq!(rfc3339_if_epoch("951782400"), "2000-02-29T00:00:00Z");
        assert_eq!(
            rfc3339_if_epoch("2026-01-01T00:00:00Z"),
            "2026-01-01T00:00:00Z"
        );
    }
}
