//! The state every connection handler shares (config, live policy, resolver, dialer, pool,
//! metrics, access log, tunnel registry), how it is built, and what a reload does to it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use kennel_policy::LegacyEnv;
use kennel_policy::reload::{PolicyStore, ReloadEvent, Reloader, WatchGuard};

use crate::{ProxyConfig, StartError, forward, log, metrics, resolve, tunnels, upstream};

/// Everything the connection handlers share.
pub struct Shared {
    /// The validated configuration.
    pub config: ProxyConfig,
    /// The live policy.
    pub store: Arc<PolicyStore>,
    /// Rebuilds the policy from its files.
    pub reloader: Arc<Reloader>,
    /// DNS + static hosts.
    pub resolver: resolve::Resolver,
    /// Upstream-proxy dialer.
    pub dialer: upstream::UpstreamDialer,
    /// Idle origin connections.
    pub pool: forward::Pool,
    /// Counters.
    pub metrics: metrics::Metrics,
    /// Access log.
    pub log: log::AccessLog,
    /// Live connections (revocation).
    pub registry: tunnels::Registry,
    /// When the policy in force was loaded.
    pub loaded_at: Mutex<SystemTime>,
    /// False once shutdown began (`/readyz` → 503).
    pub ready: AtomicBool,
    /// The legacy variables applied (process environment and `[policy] dotenv`).
    pub legacy: kennel_policy::LegacySettings,
}

impl Shared {
    /// The policy as deny messages name it: `[policy] shown_as`, else the policy file's path
    /// (`None` for the embedded default policy).
    pub fn policy_shown_as(&self, policy: &kennel_policy::Policy) -> Option<std::path::PathBuf> {
        match &self.config.policy.shown_as {
            Some(shown) => Some(std::path::PathBuf::from(shown)),
            None => policy.primary_file().map(std::path::Path::to_path_buf),
        }
    }

    /// `[policy] kennel_env`: the environment deny messages suggest `kennel allow` for.
    pub fn kennel_env(&self) -> Option<&str> {
        self.config.policy.kennel_env.as_deref()
    }

    /// Build the shared state (loads the policy, opens the access log).
    pub fn build(config: ProxyConfig) -> Result<Arc<Shared>, StartError> {
        config.validate()?;
        let mut legacy = if config.policy.process_env {
            LegacyEnv::from_process_env()
        } else {
            LegacyEnv::default()
        };
        if let Some(p) = &config.policy.dotenv {
            legacy = LegacyEnv::from_dotenv(p)?.or(legacy);
        }
        // Resolved once here so its warnings are logged once, not on every reload.
        let legacy_settings = legacy.resolve()?;
        for w in &legacy_settings.warnings {
            tracing::warn!("{w}");
        }
        let reloader = Arc::new(Reloader::new(config.policy.file.clone(), legacy)?);
        let dialer = upstream::UpstreamDialer::new(&upstream::UpstreamSettings {
            connect_timeout: config.limits.connect_timeout(),
            ca_file: config.upstream.ca_file.clone(),
        })
        .map_err(StartError::Upstream)?;
        Ok(Arc::new(Shared {
            store: reloader.store(),
            reloader,
            resolver: resolve::Resolver::new(&config.resolver),
            dialer,
            pool: forward::Pool::default(),
            metrics: metrics::Metrics::default(),
            log: log::AccessLog::open(&config.access_log)?,
            registry: tunnels::Registry::default(),
            loaded_at: Mutex::new(SystemTime::now()),
            ready: AtomicBool::new(true),
            legacy: legacy_settings,
            config,
        }))
    }

    /// Re-read the policy now (what SIGHUP does), with revocation on success.
    pub fn reload(&self) -> ReloadEvent {
        let ev = self.reloader.reload();
        self.on_reload(&ev);
        ev
    }

    /// Bookkeeping after a reload attempt: metrics, log, and revocation of live connections
    /// the new policy denies.
    pub fn on_reload(&self, ev: &ReloadEvent) {
        match ev {
            ReloadEvent::Reloaded { generation } => {
                self.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                *self.loaded_at.lock().unwrap_or_else(|p| p.into_inner()) = SystemTime::now();
                let policy = self.store.current();
                let revoked = self.registry.revoke_denied(&policy);
                tracing::info!(
                    generation,
                    version = policy.version_hash(),
                    revoked,
                    "policy reloaded"
                );
            }
            ReloadEvent::Unchanged => tracing::debug!("policy files touched, content unchanged"),
            ReloadEvent::Failed(e) => {
                self.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!("policy reload failed, keeping the previous policy: {e}");
            }
        }
    }

    /// Start watching the policy files (if configured); reloads go through [`Shared::on_reload`].
    pub fn watch(self: &Arc<Self>) -> Result<Option<WatchGuard>, StartError> {
        if self.config.policy.file.is_none() || self.config.policy.watch == Some(false) {
            return Ok(None);
        }
        let weak: Weak<Shared> = Arc::downgrade(self);
        let debounce = Duration::from_millis(self.config.policy.watch_debounce_ms.unwrap_or(200));
        let guard = self.reloader.clone().watch(debounce, move |ev| {
            if let Some(s) = weak.upgrade() {
                s.on_reload(ev);
            }
        })?;
        Ok(Some(guard))
    }

    /// What `--check` prints after the summary: the default upstream and every upstream route
    /// (URLs without credentials: `Upstream`'s `Display` never shows them), then each legacy
    /// variable that is set, where it was read and what it does.
    pub fn check_report(&self) -> Vec<String> {
        let p = self.store.current();
        let mut out = vec![format!("upstream default: {}", p.default_upstream())];
        for (hosts, cidrs, up) in p.upstream_routes() {
            let matched: Vec<String> = hosts
                .iter()
                .map(ToString::to_string)
                .chain(cidrs.iter().map(ToString::to_string))
                .collect();
            out.push(format!("upstream route: {} -> {up}", matched.join(", ")));
        }
        // A policy's own `[upstream] default` wins over the legacy variables' upstream.
        let overridden = self
            .legacy
            .upstream
            .as_ref()
            .is_some_and(|u| &u.upstream != p.default_upstream());
        for a in &self.legacy.applied {
            let note = if overridden && a.effect.starts_with("default upstream") {
                " (not applied: the policy sets [upstream] default)"
            } else {
                ""
            };
            out.push(format!("legacy: {a}{note}"));
        }
        if self.legacy.applied.is_empty() {
            out.push("legacy: none of the replaced system's variables is set".to_string());
        }
        out
    }

    /// One-line description of the policy in force.
    pub fn policy_summary(&self) -> String {
        let p = self.store.current();
        let s = p.stats();
        format!(
            "{} (mode {:?}, version {}, {} allow patterns, {} deny patterns, {} rules, {} cidrs)",
            p.primary_file().map_or_else(
                || "embedded default policy".to_string(),
                |f| f.display().to_string()
            ),
            p.mode(),
            p.version_hash(),
            s.allow_patterns,
            s.deny_patterns,
            s.rules,
            s.cidrs
        )
    }
}
