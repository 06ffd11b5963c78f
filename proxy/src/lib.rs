//! kennel-proxy: the egress data path (listener, CONNECT, forward, upstream, resolver guard, SNI
//! check, logs, metrics).
//!
//! Servers take their listeners and a shutdown future ([`serve`]); [`spawn`] is the in-process
//! harness used by tests (binds what the config says, usually `127.0.0.1:0`).

pub mod admin;
pub mod admit;
pub mod config;
pub mod connect;
pub mod dial;
pub mod forward;
pub mod head;
pub mod listener;
pub mod log;
pub mod metrics;
pub mod origin;
pub mod relay;
pub mod resolve;
pub mod respond;
mod shared;
pub mod sni;
pub mod tunnel_http;
pub mod tunnels;
pub mod upstream;

/// The old name of [`tunnels`] (it clashed with the daemon's environment registry); kept so
/// code written against it still compiles. New code says `tunnels`.
#[doc(hidden)]
pub use tunnels as registry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use kennel_policy::reload::{PolicyStore, ReloadEvent, WatchGuard};
use tokio::net::TcpListener;

pub use config::ProxyConfig;
pub use shared::Shared;

/// Start-up failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The policy (or the legacy .env file) is invalid.
    #[error("policy: {0}")]
    Policy(#[from] kennel_policy::PolicyError),
    /// The access log cannot be opened.
    #[error(transparent)]
    Log(#[from] log::LogOpenError),
    /// The upstream dialer could not be configured.
    #[error("upstream settings: {0}")]
    Upstream(#[source] upstream::DialerBuildError),
    /// The signal handlers (SIGTERM, SIGINT, SIGHUP) could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Serve the proxy on `listeners` (and the admin endpoint on `admin`) until `shutdown`
/// completes; then stop accepting, let live connections finish within the drain deadline, and
/// close the rest.
pub async fn serve(
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    let ctl = listener::Control::new(shared.config.limits.max_connections);
    for l in listeners {
        ctl.tracker
            .spawn(listener::accept_loop(shared.clone(), l, ctl.clone()));
    }
    let admin_stop = tokio_util::sync::CancellationToken::new();
    if let Some(a) = admin {
        tokio::spawn(admin::serve(shared.clone(), a, admin_stop.clone()));
    }
    shutdown.await;
    shared.ready.store(false, Ordering::Relaxed);
    tracing::info!(
        live = shared.registry.len(),
        "shutting down: draining connections"
    );
    ctl.drain.cancel();
    ctl.tracker.close();
    if tokio::time::timeout(shared.config.limits.drain_timeout(), ctl.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            live = shared.registry.len(),
            "drain deadline passed, closing live connections"
        );
        ctl.hard_stop.cancel();
        ctl.tracker.wait().await;
    }
    admin_stop.cancel();
    tracing::info!("shutdown complete");
}

/// A proxy running in this process (tests, embedding).
pub struct RunningProxy {
    proxy_addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _watch: Option<WatchGuard>,
}

/// Bind the configured listeners and start serving in the background (on the current tokio
/// runtime). Port 0 binds an ephemeral port: see [`RunningProxy::proxy_addr`].
pub async fn spawn(config: ProxyConfig) -> Result<RunningProxy, StartError> {
    let shared = Shared::build(config)?;
    let (listeners, admin) = bind(&shared.config).await?;
    let proxy_addrs = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    let watch = shared.watch()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(shared.clone(), listeners, admin, async move {
        let _ = rx.await;
    }));
    Ok(RunningProxy {
        proxy_addrs,
        admin_addr,
        shared,
        stop: Some(tx),
        task: Some(task),
        _watch: watch,
    })
}

/// Bind the proxy listeners and the admin listener of `config`.
pub async fn bind(
    config: &ProxyConfig,
) -> Result<(Vec<TcpListener>, Option<TcpListener>), StartError> {
    let mut ls = Vec::new();
    for addr in &config.listen {
        ls.push(listener::bind(*addr).map_err(|source| StartError::Bind {
            addr: *addr,
            source,
        })?);
    }
    let admin = match config.admin {
        Some(addr) => {
            Some(listener::bind(addr).map_err(|source| StartError::Bind { addr, source })?)
        }
        None => None,
    };
    Ok((ls, admin))
}

impl RunningProxy {
    /// The first proxy listen address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addrs[0]
    }
    /// All proxy listen addresses.
    pub fn proxy_addrs(&self) -> &[SocketAddr] {
        &self.proxy_addrs
    }
    /// The admin address, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }
    /// The live policy store.
    pub fn store(&self) -> Arc<PolicyStore> {
        self.shared.store.clone()
    }
    /// Shared state (metrics, registry, pool …).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
    /// Reload the policy now, as SIGHUP does.
    pub fn reload(&self) -> ReloadEvent {
        self.shared.reload()
    }
    /// Stop accepting, drain, and wait for the server to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Run until SIGTERM/SIGINT (drain, then return), reloading the policy on SIGHUP. Prints where
/// it listens and which policy is in force to stderr.
pub async fn run_with_signals(config: ProxyConfig) -> Result<(), StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    // Handlers first: whoever starts the proxy may signal it as soon as it prints where it
    // listens, and until a handler exists the default action kills it without a drain.
    let sig = |k| signal(k).map_err(StartError::Signals);
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut hup = sig(SignalKind::hangup())?;
    let shared = Shared::build(config)?;
    let (listeners, admin) = bind(&shared.config).await?;
    for l in &listeners {
        if let Ok(a) = l.local_addr() {
            eprintln!("kennel-proxy: listening on {a}");
        }
    }
    if let Some(a) = admin.as_ref().and_then(|l| l.local_addr().ok()) {
        eprintln!("kennel-proxy: admin (metrics, health, policy) on http://{a}/");
    }
    eprintln!("kennel-proxy: policy in force: {}", shared.policy_summary());
    let _watch = shared.watch()?;
    let s2 = shared.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let s3 = s2.clone();
            let _ = tokio::task::spawn_blocking(move || {
                s3.reload();
                eprintln!(
                    "kennel-proxy: SIGHUP: policy in force: {}",
                    s3.policy_summary()
                );
            })
            .await;
        }
    });
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("kennel-proxy: shutting down (draining live connections)");
    };
    serve(shared, listeners, admin, shutdown).await;
    Ok(())
}
