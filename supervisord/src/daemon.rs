//! Putting the daemon together: resolve allowed users/groups, bind the socket with the right
//! owner and mode, reconcile, tell systemd, serve until shutdown.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;

use crate::events::EventNow;
use crate::registry::Daemon;
use crate::server;

/// Default API socket.
pub use kennel_api::DEFAULT_SOCKET;
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/kennel";

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A `--allow-user` that is neither a uid nor a known user name.
    #[error("unknown user {0:?} (--allow-user takes a user name or a numeric uid)")]
    UnknownUser(String),
    /// A `--allow-group` that is neither a gid nor a known group name.
    #[error("unknown group {0:?} (--allow-group takes a group name or a numeric gid)")]
    UnknownGroup(String),
    /// Another daemon answers on the socket.
    #[error("another kennel-supervisord is already listening on {}; stop it first or pick another --socket", .0.display())]
    AlreadyRunning(PathBuf),
    /// The socket path exists and is not a socket.
    #[error("{} exists and is not a socket; remove it or pick another --socket", .0.display())]
    NotASocket(PathBuf),
    /// Binding or preparing the socket failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Socket {
        /// What was attempted.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Resolves user names or numeric uids.
pub fn resolve_users(names: &[String]) -> Result<Vec<u32>, StartError> {
    names
        .iter()
        .map(|n| {
            if let Ok(uid) = n.parse::<u32>() {
                return Ok(uid);
            }
            match nix::unistd::User::from_name(n) {
                Ok(Some(u)) => Ok(u.uid.as_raw()),
                _ => Err(StartError::UnknownUser(n.clone())),
            }
        })
        .collect()
}

/// Resolves group names or numeric gids.
pub fn resolve_groups(names: &[String]) -> Result<Vec<u32>, StartError> {
    names
        .iter()
        .map(|n| {
            if let Ok(gid) = n.parse::<u32>() {
                return Ok(gid);
            }
            match nix::unistd::Group::from_name(n) {
                Ok(Some(g)) => Ok(g.gid.as_raw()),
                _ => Err(StartError::UnknownGroup(n.clone())),
            }
        })
        .collect()
}

/// Binds the API socket at `path`: creates the parent directory (0755), replaces a stale socket
/// (refuses if a daemon answers on it), and sets mode 0660 with group `group` (so members of
/// the first allowed group can connect; peer credentials are checked on every connection anyway).
pub fn bind_socket(path: &Path, group: Option<u32>) -> Result<UnixListener, StartError> {
    let sock_err = |op: &'static str| {
        move |source| StartError::Socket {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        std::fs::create_dir_all(parent).map_err(sock_err("create the directory of"))?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
            .map_err(sock_err("chmod the directory of"))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(StartError::AlreadyRunning(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(sock_err("remove the stale socket"))?;
        }
        Ok(_) => return Err(StartError::NotASocket(path.to_path_buf())),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(sock_err("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(sock_err("chmod"))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| {
            StartError::Socket {
                op: "chown",
                path: path.to_path_buf(),
                source: e.into(),
            }
        })?;
    }
    Ok(listener)
}

/// Runs the daemon on `listener`: reconciles with the engine, notifies systemd (`READY=1`),
/// serves until `shutdown`, notifies `STOPPING=1` and drains. Feeds systemd's watchdog when
/// `WATCHDOG_USEC` is set (see [`run_watched`]).
pub async fn run(listener: UnixListener, daemon: Arc<Daemon>, shutdown: impl Future<Output = ()>) {
    run_watched(listener, daemon, shutdown, Watchdog::from_env()).await;
}

/// [`run`] with an explicit watchdog. The pings are sent by the accept loop itself
/// ([`server::serve_watched`]), not by a timer task of their own: a loop that stops turning —
/// a blocking call on its thread, a future in it that never completes — stops them, and
/// systemd restarts the daemon after `WatchdogSec`. A separate task would keep pinging on
/// another worker thread while nobody's connections are accepted.
pub async fn run_watched(
    listener: UnixListener,
    daemon: Arc<Daemon>,
    shutdown: impl Future<Output = ()>,
    watchdog: Option<Watchdog>,
) {
    daemon.event(
        crate::events::Event::now(
            None,
            crate::events::kind::DAEMON_STARTED,
            format!(
                "kennel-supervisord {} started (pid {})",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            ),
        )
        .with("version", env!("CARGO_PKG_VERSION"))
        .with("pid", std::process::id()),
    );
    match daemon.reconcile().await {
        Ok(report) => tracing::info!(
            kept = report.kept.len(),
            started = ?report.started,
            removed_orphans = ?report.removed_orphans,
            removed_incomplete = ?report.removed_incomplete,
            missing = ?report.missing,
            "reconciled with the engine"
        ),
        // The engine may come up later; serve anyway so `kennel` can report what is wrong.
        Err(e) => {
            tracing::error!(error = %e, "reconcile failed; serving anyway");
            daemon.event(
                crate::events::Event::now(
                    None,
                    crate::events::kind::RECONCILED,
                    format!("reconcile with the engine failed: {e}; serving anyway, and reconciling once the engine answers"),
                )
                .with("trigger", crate::registry::ReconcileMode::Startup.trigger())
                .with("error", e.to_string()),
            );
        }
    }
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);
    if let Some(w) = &watchdog {
        tracing::info!(
            every_ms = w.every.as_millis() as u64,
            "feeding systemd's watchdog from the accept loop"
        );
    }
    // `kennel allow --for` entries expire by themselves (also those due while we were down).
    let expiry = tokio::spawn(crate::policy_ops::expire_loop(daemon.clone()));
    // Notification files from the sandboxes, read by the daemon for `kennel notify watch`.
    let notifications = tokio::spawn(crate::notify::scan_loop(daemon.clone()));
    // `policy-reloaded` / `policy-rejected` events: the proxies' outcome of each policy swap.
    let reload_confirm = tokio::spawn(crate::ops::reloads::confirm_loop(daemon.clone()));
    let shutdown = async move {
        shutdown.await;
        notify(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("draining"),
        ]);
    };
    let health = crate::ops::health::spawn(daemon.clone(), crate::ops::health::TICK);
    // `kennel up --ttl` / `--rm` environments go by themselves (also those due while we were down).
    let ephemeral = crate::ops::expiry::spawn(daemon.clone());
    // After an engine restart (or an engine that was not up above), reconcile again.
    let engine = crate::ops::engine::spawn(daemon.clone());
    server::serve_watched(listener, daemon, shutdown, watchdog).await;
    engine.abort();
    health.abort();
    ephemeral.abort();
    expiry.abort();
    reload_confirm.abort();
    notifications.abort();
}

/// systemd's watchdog: where `WATCHDOG=1` goes and how often.
#[derive(Debug, Clone)]
pub struct Watchdog {
    socket: PathBuf,
    every: std::time::Duration,
}

impl Watchdog {
    /// From systemd's environment: `NOTIFY_SOCKET`, and `WATCHDOG_USEC` (for this process when
    /// `WATCHDOG_PID` is set). Pings every half of the timeout, as sd_watchdog_enabled(3) advises.
    pub fn from_env() -> Option<Watchdog> {
        let timeout = sd_notify::watchdog_enabled()?;
        let socket = std::env::var_os("NOTIFY_SOCKET")?;
        Some(Watchdog::new(socket, timeout / 2))
    }

    /// Pings `socket` (a path, or `@name` for an abstract socket) every `every`.
    pub fn new(socket: impl Into<PathBuf>, every: std::time::Duration) -> Watchdog {
        Watchdog {
            socket: socket.into(),
            every: every.max(std::time::Duration::from_millis(1)),
        }
    }

    /// How often the accept loop pings.
    pub fn every(&self) -> std::time::Duration {
        self.every
    }

    /// Sends one `WATCHDOG=1`. A failure is logged: systemd will notice the missing pings.
    pub fn ping(&self) {
        if let Err(e) = self.send(b"WATCHDOG=1\n") {
            tracing::warn!(socket = %self.socket.display(), error = %e, "watchdog ping failed");
        }
    }

    fn send(&self, msg: &[u8]) -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let raw = self.socket.as_os_str().as_bytes();
        let sent = match raw.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(msg, &addr)?
            }
            None => sock.send_to(msg, &self.socket)?,
        };
        if sent == msg.len() {
            Ok(())
        } else {
            Err(std::io::ErrorKind::WriteZero.into())
        }
    }
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Installs the SIGTERM and SIGINT handlers now and returns a future that resolves when either
/// arrives. Installing eagerly matters: a handler installed only when the future is first polled
/// (after reconcile) leaves a window in which systemd's SIGTERM kills the daemon undrained.
pub fn termination_signal() -> std::io::Result<impl Future<Output = ()> + use<>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

/// Images on the Docker engine, built from host files: the proxy image from the static
/// `kennel-proxy` binary (`kennel-proxy:<content hash>`, rebuilt when the binary changes) unless
/// a fixed tag is configured, and the demo sandbox image. Builds are serialised.
pub struct DockerImages {
    docker: Arc<kennel_container::docker::DockerBackend>,
    binary: Option<PathBuf>,
    fixed_proxy: Option<String>,
    lock: tokio::sync::Mutex<()>,
    /// The last proxy build: binary path, size, mtime -> tag (skips re-hashing an unchanged binary).
    last_proxy: tokio::sync::Mutex<Option<(PathBuf, u64, std::time::SystemTime, String)>>,
    /// Where `image-built` events go (set by [`Daemon::new`]).
    events: std::sync::OnceLock<Arc<crate::events::EventLog>>,
}

impl DockerImages {
    /// Builds the proxy image from `binary`, or from the binary
    /// [`kennel_container::image::find_proxy_binary`] finds; `fixed_proxy` skips the build.
    pub fn new(
        docker: Arc<kennel_container::docker::DockerBackend>,
        binary: Option<PathBuf>,
        fixed_proxy: Option<String>,
    ) -> DockerImages {
        DockerImages {
            docker,
            binary,
            fixed_proxy,
            lock: tokio::sync::Mutex::new(()),
            last_proxy: tokio::sync::Mutex::new(None),
            events: std::sync::OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for DockerImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerImages")
            .field("binary", &self.binary)
            .field("fixed_proxy", &self.fixed_proxy)
            .finish_non_exhaustive()
    }
}

impl crate::registry::ImageSource for DockerImages {
    fn proxy_binary(&self) -> Option<PathBuf> {
        self.binary
            .clone()
            .or_else(|| kennel_container::image::find_proxy_binary().ok())
    }

    fn proxy_image(
        &self,
    ) -> kennel_container::backend::BoxFuture<'_, Result<String, kennel_container::error::ImageError>>
    {
        Box::pin(async move {
            if let Some(tag) = &self.fixed_proxy {
                return Ok(tag.clone());
            }
            let _one_at_a_time = self.lock.lock().await;
            let binary = match &self.binary {
                Some(b) => b.clone(),
                None => kennel_container::image::find_proxy_binary()?,
            };
            let stamp = std::fs::metadata(&binary)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)));
            let mut last = self.last_proxy.lock().await;
            if let (Some((path, len, mtime, tag)), Some((cur_len, cur_mtime))) =
                (last.as_ref(), stamp)
                && *path == binary
                && *len == cur_len
                && *mtime == cur_mtime
                && kennel_container::image::image_exists(&self.docker, tag).await?
            {
                return Ok(tag.clone());
            }
            let started = std::time::Instant::now();
            let before = self.image_tags().await;
            let tag = kennel_container::image::ensure_proxy_image(&self.docker, &binary).await?;
            tracing::info!(image = %tag, binary = %binary.display(), ms = started.elapsed().as_millis() as u64, "proxy image ready");
            self.built_if_new(
                before,
                &format!("the proxy image, from {}", binary.display()),
                started,
            )
            .await;
            *last = stamp.map(|(len, mtime)| (binary, len, mtime, tag.clone()));
            Ok(tag)
        })
    }

    fn demo_sandbox_image(
        &self,
    ) -> kennel_container::backend::BoxFuture<'_, Result<String, kennel_container::error::ImageError>>
    {
        Box::pin(async move {
            let _one_at_a_time = self.lock.lock().await;
            let started = std::time::Instant::now();
            let before = self.image_tags().await;
            let tag = crate::images::ensure_demo_sandbox_image(&self.docker).await?;
            self.built_if_new(before, "the demo sandbox image, from host files", started)
                .await;
            Ok(tag)
        })
    }

    fn attach_events(&self, log: Arc<crate::events::EventLog>) {
        // Only the first daemon's log counts; a second call is a no-op by design.
        let _ = self.events.set(log);
    }
}

impl DockerImages {
    /// The image tags present now (`None`: the engine did not answer).
    async fn image_tags(&self) -> Option<Vec<String>> {
        use bollard::query_parameters::ListImagesOptions;
        let images = self
            .docker
            .docker()
            .list_images(None::<ListImagesOptions>)
            .await
            .ok()?;
        Some(images.into_iter().flat_map(|i| i.repo_tags).collect())
    }

    /// Records an `image-built` event for each tag that was not there `before`.
    async fn built_if_new(
        &self,
        before: Option<Vec<String>>,
        what: &str,
        started: std::time::Instant,
    ) {
        let (Some(before), Some(log)) = (before, self.events.get()) else {
            return;
        };
        let Some(after) = self.image_tags().await else {
            return;
        };
        for tag in after.iter().filter(|t| !before.contains(t)) {
            log.record(
                crate::events::Event::now(
                    None,
                    crate::events::kind::IMAGE_BUILT,
                    format!("image {tag} built ({what})"),
                )
                .with("image", tag.clone())
                .with("ms", started.elapsed().as_millis() as u64),
            );
        }
    }
}
