//! Day-to-day operations of [`DockerBackend`] (`kennel stats`, `kennel logs`): kept apart from
//! the create/remove code in [`crate::docker`].

use std::time::Duration;

use bollard::container::LogOutput;
use bollard::query_parameters::{
    InspectContainerOptions, InspectNetworkOptions, ListImagesOptions, ListNetworksOptions,
    LogsOptions, StatsOptions,
};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::{
    Backend, ContainerStats, EngineFacts, ExecOutput, ExecOutputStream, LogsRequest, LogsTarget,
    names,
};
use crate::docker::DockerBackend;
use crate::error::BackendError;

/// How long one `/metrics` fetch from the proxy may take (it answers from memory).
const METRICS_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest `/metrics` answer read (a few hundred rules' counters fit easily).
const MAX_METRICS_BYTES: u64 = 4 << 20;

fn is_404(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl DockerBackend {
    /// Per-container usage of `env`: one engine sample per container (taken concurrently; the
    /// engine waits about a second for the second CPU reading the percentage needs).
    pub(crate) async fn container_stats_of(
        &self,
        env: &str,
    ) -> Result<Vec<ContainerStats>, BackendError> {
        let Some(status) = self.inspect_env(env).await? else {
            return Err(BackendError::NotFound(env.to_string()));
        };
        let samples = status.containers.iter().map(|c| self.one_container(c));
        futures_util::future::join_all(samples)
            .await
            .into_iter()
            .collect()
    }

    async fn one_container(
        &self,
        c: &crate::backend::ContainerStatus,
    ) -> Result<ContainerStats, BackendError> {
        let mut out = ContainerStats {
            name: c.name.clone(),
            role: c.role.clone(),
            state: c.state.clone(),
            ..Default::default()
        };
        let info = match self
            .docker()
            .inspect_container(&c.name, None::<InspectContainerOptions>)
            .await
        {
            Ok(i) => i,
            // Removed between the listing and now: report what the listing said.
            Err(e) if is_404(&e) => return Ok(out),
            Err(e) => return Err(BackendError::engine("inspect container", &c.name, e)),
        };
        out.started_at = info.state.as_ref().and_then(|s| s.started_at.clone());
        out.pids_limit = info
            .host_config
            .as_ref()
            .and_then(|h| h.pids_limit)
            .and_then(|l| u64::try_from(l).ok())
            .filter(|l| *l > 0);
        if c.state != "running" {
            return Ok(out);
        }
        let mut stream = self.docker().stats(
            &c.name,
            Some(StatsOptions {
                stream: false,
                one_shot: false,
            }),
        );
        let Some(sample) = stream.next().await else {
            return Ok(out);
        };
        let s = match sample {
            Ok(s) => s,
            Err(e) if is_404(&e) => return Ok(out),
            Err(e) => return Err(BackendError::engine("read stats of", &c.name, e)),
        };
        let mem = s.memory_stats.unwrap_or_default();
        // cgroup v1 calls the page cache `total_inactive_file`, v2 `inactive_file`; `docker
        // stats` subtracts it too.
        let cache = mem
            .stats
            .as_ref()
            .and_then(|m| {
                m.get("total_inactive_file")
                    .or_else(|| m.get("inactive_file"))
            })
            .copied()
            .unwrap_or(0);
        out.memory_usage_bytes = mem.usage.map(|u| u.saturating_sub(cache));
        out.memory_limit_bytes = mem.limit;
        out.pids = s.pids_stats.as_ref().and_then(|p| p.current);
        if out.pids_limit.is_none() {
            out.pids_limit = s.pids_stats.as_ref().and_then(|p| p.limit);
        }
        if let Some(nets) = &s.networks {
            out.net_rx_bytes = Some(nets.values().filter_map(|n| n.rx_bytes).sum());
            out.net_tx_bytes = Some(nets.values().filter_map(|n| n.tx_bytes).sum());
        }
        out.cpu_percent = cpu_percent(s.cpu_stats.as_ref(), s.precpu_stats.as_ref());
        Ok(out)
    }

    /// GETs the proxy's admin `/metrics` on its egress-side address (the admin listener is
    /// bound there only, so the sandbox cannot reach it; the host can, over the bridge).
    pub(crate) async fn proxy_metrics_of(&self, env: &str) -> Result<Option<String>, BackendError> {
        let addr = match self.proxy_admin_address(env).await {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(None),
            Err(BackendError::Engine { .. }) if !self.proxy_exists(env).await => return Ok(None),
            Err(e) => return Err(e),
        };
        let fetch = async {
            let mut s = tokio::net::TcpStream::connect(&addr).await?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: proxy\r\nConnection: close\r\n\r\n")
                .await?;
            let mut buf = Vec::new();
            s.take(MAX_METRICS_BYTES).read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        let raw = tokio::time::timeout(METRICS_TIMEOUT, fetch)
            .await
            .map_err(|_| metrics_err(env, &addr, "timed out"))?
            .map_err(|e| metrics_err(env, &addr, &e.to_string()))?;
        let text = String::from_utf8_lossy(&raw);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return Err(metrics_err(env, &addr, "answer has no HTTP header end"));
        };
        if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1).is_none_or(|c| c != "200")
        {
            let first = head.lines().next().unwrap_or_default();
            return Err(metrics_err(env, &addr, &format!("answered {first:?}")));
        }
        Ok(Some(body.to_string()))
    }

    async fn proxy_exists(&self, env: &str) -> bool {
        self.docker()
            .inspect_container(&names::proxy(env), None::<InspectContainerOptions>)
            .await
            .is_ok()
    }

    /// [`Backend::engine_facts`] from `docker version`, `docker info`, the networks and images.
    pub(crate) async fn engine_facts_of(&self) -> Result<EngineFacts, BackendError> {
        let d = self.docker();
        let version = d
            .version()
            .await
            .map_err(|e| BackendError::engine("ask the version of", "the engine", e))?;
        let info = d
            .info()
            .await
            .map_err(|e| BackendError::engine("ask the info of", "the engine", e))?;
        let networks = d
            .list_networks(None::<ListNetworksOptions>)
            .await
            .map_err(|e| BackendError::engine("list", "networks", e))?;
        let images = d
            .list_images(None::<ListImagesOptions>)
            .await
            .map_err(|e| BackendError::engine("list", "images", e))?;
        Ok(EngineFacts {
            version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
            memory_limit: info.memory_limit.unwrap_or(false),
            pids_limit: info.pids_limit.unwrap_or(false),
            cpu_quota: info.cpu_cfs_quota.unwrap_or(false),
            cgroup_version: info.cgroup_version.map(|v| v.to_string()),
            network_subnets: networks
                .into_iter()
                .flat_map(|n| n.ipam.and_then(|i| i.config).unwrap_or_default())
                .filter_map(|c| c.subnet)
                .filter(|s| s.contains('.'))
                .collect(),
            image_tags: images.into_iter().flat_map(|i| i.repo_tags).collect(),
        })
    }

    /// [`Backend::env_gateways`]: the IPAM gateways of the environment's internal and egress
    /// networks (the sandbox is on no other).
    pub(crate) async fn env_gateways_of(&self, env: &str) -> Result<Vec<String>, BackendError> {
        let mut out = Vec::new();
        for net in [names::network(env), names::egress_network(env)] {
            let n = match self
                .docker()
                .inspect_network(&net, None::<InspectNetworkOptions>)
                .await
            {
                Ok(n) => n,
                Err(e) if is_404(&e) => continue,
                Err(e) => return Err(BackendError::engine("inspect network", &net, e)),
            };
            for c in n.ipam.and_then(|i| i.config).unwrap_or_default() {
                if let Some(gw) = c.gateway.filter(|g| !g.is_empty()) {
                    out.push(gw);
                }
            }
        }
        Ok(out)
    }

    /// [`Backend::network_members`]: every container attached to `env`'s internal network,
    /// with the settings [`crate::ide::weaknesses`] judges.
    pub(crate) async fn network_members_of(
        &self,
        env: &str,
    ) -> Result<Vec<crate::ide::Member>, BackendError> {
        let net = names::network(env);
        let n = match self
            .docker()
            .inspect_network(&net, None::<InspectNetworkOptions>)
            .await
        {
            Ok(n) => n,
            Err(e) if is_404(&e) => return Ok(Vec::new()),
            Err(e) => return Err(BackendError::engine("inspect network", &net, e)),
        };
        let mut out = Vec::new();
        for id in n.containers.unwrap_or_default().into_keys() {
            let c = match self
                .docker()
                .inspect_container(
                    &id,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
            {
                Ok(c) => c,
                // Gone since the network was read.
                Err(e) if is_404(&e) => continue,
                Err(e) => return Err(BackendError::engine("inspect container", &id, e)),
            };
            let h = c.host_config.unwrap_or_default();
            let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
            let mut networks: Vec<String> = c
                .network_settings
                .and_then(|s| s.networks)
                .map(|m| m.into_keys().collect())
                .unwrap_or_default();
            networks.sort();
            out.push(crate::ide::Member {
                name: c.name.unwrap_or(id).trim_start_matches('/').to_string(),
                role: labels.get(crate::backend::LABEL_ROLE).cloned(),
                env_label: labels.get(crate::backend::LABEL_ENV).cloned(),
                privileged: h.privileged.unwrap_or(false),
                cap_add: h.cap_add.unwrap_or_default(),
                cap_drop: h.cap_drop.unwrap_or_default(),
                security_opt: h.security_opt.unwrap_or_default(),
                network_mode: h.network_mode.unwrap_or_default(),
                networks,
                readonly_rootfs: h.readonly_rootfs.unwrap_or(false),
                pid_mode: h.pid_mode.unwrap_or_default(),
                ipc_mode: h.ipc_mode.unwrap_or_default(),
                devices: h
                    .devices
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|d| d.path_on_host)
                    .collect(),
                binds: h.binds.unwrap_or_default(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The output of one container of `env`.
    pub(crate) async fn logs_of(
        &self,
        env: &str,
        req: LogsRequest,
    ) -> Result<ExecOutputStream, BackendError> {
        let container = req.target.container(env);
        match self
            .docker()
            .inspect_container(&container, None::<InspectContainerOptions>)
            .await
        {
            Ok(_) => {}
            Err(e) if is_404(&e) => {
                return Err(match &req.target {
                    LogsTarget::Service(s) => BackendError::InvalidPlan {
                        env: env.to_string(),
                        message: format!("it has no service {s:?} (no container {container})"),
                    },
                    LogsTarget::ProfileProxy(p) => BackendError::InvalidPlan {
                        env: env.to_string(),
                        message: format!(
                            "it has no egress profile {p:?} (no container {container})"
                        ),
                    },
                    _ => BackendError::NotFound(env.to_string()),
                });
            }
            Err(e) => return Err(BackendError::engine("inspect container", &container, e)),
        }
        let since = req
            .since_unix
            .map(|s| i32::try_from(s).unwrap_or(i32::MAX))
            .unwrap_or(0);
        let stream = self.docker().logs(
            &container,
            Some(LogsOptions {
                follow: req.follow,
                stdout: true,
                stderr: true,
                since,
                tail: "all".into(),
                ..Default::default()
            }),
        );
        let shown = container.clone();
        Ok(Box::pin(stream.filter_map(move |item| {
            let shown = shown.clone();
            async move {
                match item {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                        Some(Ok(ExecOutput::Stdout(message)))
                    }
                    Ok(LogOutput::StdErr { message }) => Some(Ok(ExecOutput::Stderr(message))),
                    Ok(LogOutput::StdIn { .. }) => None,
                    Err(e) => Some(Err(BackendError::engine("read logs of", shown, e))),
                }
            }
        })))
    }
}

fn metrics_err(env: &str, addr: &str, what: &str) -> BackendError {
    BackendError::engine(
        "read proxy metrics of",
        names::proxy(env),
        std::io::Error::other(format!("GET http://{addr}/metrics: {what}")),
    )
}

/// `docker stats`' CPU percentage: the container's CPU time delta over the host's, times the
/// number of CPUs (so one busy CPU is 100 %).
fn cpu_percent(
    now: Option<&bollard::models::ContainerCpuStats>,
    pre: Option<&bollard::models::ContainerCpuStats>,
) -> Option<f64> {
    let (now, pre) = (now?, pre?);
    let used = now.cpu_usage.as_ref()?.total_usage?;
    let used_pre = pre.cpu_usage.as_ref().and_then(|u| u.total_usage)?;
    let sys = now.system_cpu_usage?;
    let sys_pre = pre.system_cpu_usage?;
    let cpus = now
        .online_cpus
        .filter(|n| *n > 0)
        .map(f64::from)
        .or_else(|| {
            now.cpu_usage
                .as_ref()
                .and_then(|u| u.percpu_usage.as_ref())
                .map(|p| p.len() as f64)
        })
        .unwrap_or(1.0);
    let d_used = used.checked_sub(used_pre)? as f64;
    let d_sys = sys.checked_sub(sys_pre)? as f64;
    (d_sys > 0.0).then(|| d_used / d_sys * cpus * 100.0)
}
