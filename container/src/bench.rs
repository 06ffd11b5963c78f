//! The containers of `kennel bench ENV` on Docker: a benchmark origin on the environment's
//! egress network, and short-lived clients either in the sandbox's network namespace (so their
//! traffic takes the sandbox's only route: the internal network, then the proxy) or on the
//! egress network beside the origin (the same traffic without the proxy hop).
//!
//! All of them run the environment's own proxy image (`kennel-proxy bench origin|client`), so a
//! benchmark needs no image beyond what the environment already has. Each is labelled with the
//! environment and a `bench-*` role: [`crate::Backend::bench_cleanup`] removes them, and so does
//! `kennel down`.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions,
    StartContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::backend::{ExecResult, LABEL_ENV, LABEL_ROLE, names};
use crate::docker::DockerBackend;
use crate::error::BackendError;
use crate::hardening;

/// Role label of the benchmark origin container.
pub const ROLE_ORIGIN: &str = "bench-origin";
/// Role label of a benchmark client container.
pub const ROLE_CLIENT: &str = "bench-client";
/// How long the origin may take to accept connections after it started.
const ORIGIN_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a container role is one of `kennel bench`'s (not part of the environment proper).
pub fn is_bench_role(role: &str) -> bool {
    role == ROLE_ORIGIN || role == ROLE_CLIENT
}

/// The benchmark origin container's name.
pub fn origin_container(env: &str) -> String {
    format!("kennel-{env}-bench-origin")
}

/// The benchmark client container's name.
pub fn client_container(env: &str) -> String {
    format!("kennel-{env}-bench-client")
}

/// What [`crate::Backend::bench_start_origin`] needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginRequest {
    /// The origin exits by itself after this many seconds (a backstop; it is removed sooner).
    pub max_secs: u64,
    /// Extra labels (the daemon's instance and the caller's uid).
    pub labels: Vec<(String, String)>,
}

/// Where the benchmark's ends are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchEndpoints {
    /// The origin, on the egress network.
    pub origin: SocketAddrV4,
    /// The proxy's listener on the internal network (what the sandbox connects to).
    pub proxy: SocketAddrV4,
    /// The image the benchmark containers run (the proxy's).
    pub image: String,
}

/// Where a benchmark client runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientPath {
    /// In the sandbox's network namespace: through the proxy, as the sandbox's own traffic.
    Sandbox,
    /// On the egress network beside the origin: no proxy hop.
    Egress,
}

/// What [`crate::Backend::bench_run_client`] runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// Where the client runs.
    pub path: ClientPath,
    /// The image (from [`BenchEndpoints::image`]).
    pub image: String,
    /// Arguments after `kennel-proxy bench client`.
    pub args: Vec<String>,
    /// The client is removed and the run fails after this long.
    pub timeout: Duration,
    /// Extra labels.
    pub labels: Vec<(String, String)>,
}

impl DockerBackend {
    async fn remove_container_forced(&self, name: &str) -> Result<(), BackendError> {
        match self
            .docker()
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(BackendError::engine("remove container", name, e)),
        }
    }

    async fn create_bench_container(
        &self,
        name: &str,
        body: bollard::models::ContainerCreateBody,
    ) -> Result<(), BackendError> {
        self.docker()
            .create_container(
                Some(bollard::query_parameters::CreateContainerOptions {
                    name: Some(name.to_string()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| BackendError::engine("create container", name, e))?;
        self.docker()
            .start_container(name, None::<StartContainerOptions>)
            .await
            .map_err(|e| BackendError::engine("start container", name, e))
    }

    async fn bench_start_origin_of(
        &self,
        env: &str,
        req: OriginRequest,
    ) -> Result<BenchEndpoints, BackendError> {
        let proxy = names::proxy(env);
        let info = self
            .docker()
            .inspect_container(&proxy, None::<InspectContainerOptions>)
            .await
            .map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                } => BackendError::NotFound(env.to_string()),
                e => BackendError::engine("inspect container", &proxy, e),
            })?;
        let running = info.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        if !running {
            return Err(BackendError::NotRunning {
                env: env.to_string(),
                state: "the proxy is not running".into(),
            });
        }
        let image = info.image.ok_or_else(|| BackendError::InvalidPlan {
            env: env.to_string(),
            message: format!("container {proxy} reports no image"),
        })?;
        let proxy_ip = self
            .container_ip(&proxy, &names::network(env))
            .await?
            .ok_or_else(|| BackendError::InvalidPlan {
                env: env.to_string(),
                message: format!("{proxy} has no address on {}", names::network(env)),
            })?;
        let name = origin_container(env);
        let args = vec![
            "origin".to_string(),
            "--listen".into(),
            format!("0.0.0.0:{}", hardening::BENCH_ORIGIN_PORT),
            "--max-secs".into(),
            req.max_secs.to_string(),
        ];
        let body = hardening::bench_container(
            env,
            ROLE_ORIGIN,
            &image,
            &names::egress_network(env),
            &args,
            &req.labels,
        );
        self.create_bench_container(&name, body).await?;
        let ip = self
            .container_ip(&name, &names::egress_network(env))
            .await?
            .ok_or_else(|| BackendError::InvalidPlan {
                env: env.to_string(),
                message: format!("{name} got no address on {}", names::egress_network(env)),
            })?;
        let origin = SocketAddrV4::new(ip, hardening::BENCH_ORIGIN_PORT);
        self.wait_origin(&name, origin).await?;
        Ok(BenchEndpoints {
            origin,
            proxy: SocketAddrV4::new(proxy_ip, hardening::PROXY_PORT),
            image,
        })
    }

    /// Waits until the origin accepts connections (from the host, over the egress bridge, like
    /// the proxy's readiness check).
    async fn wait_origin(&self, name: &str, addr: SocketAddrV4) -> Result<(), BackendError> {
        let deadline = Instant::now() + ORIGIN_READY_TIMEOUT;
        loop {
            let attempt = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr),
            )
            .await;
            if matches!(attempt, Ok(Ok(_))) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let logs = self.container_logs_tail(name, 20).await;
                return Err(BackendError::InvalidPlan {
                    env: String::new(),
                    message: format!(
                        "the benchmark origin {name} did not accept connections on {addr} within {ORIGIN_READY_TIMEOUT:?}; its output: {logs}"
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn bench_run_client_of(
        &self,
        env: &str,
        req: ClientRequest,
    ) -> Result<ExecResult, BackendError> {
        let name = client_container(env);
        self.remove_container_forced(&name).await?;
        let network_mode = match req.path {
            ClientPath::Sandbox => format!("container:{}", names::sandbox(env)),
            ClientPath::Egress => names::egress_network(env),
        };
        let mut args = vec!["client".to_string()];
        args.extend(req.args.iter().cloned());
        let body = hardening::bench_container(
            env,
            ROLE_CLIENT,
            &req.image,
            &network_mode,
            &args,
            &req.labels,
        );
        let run = async {
            self.create_bench_container(&name, body).await?;
            let mut wait = self.docker().wait_container(
                &name,
                Some(WaitContainerOptions {
                    condition: "not-running".into(),
                }),
            );
            // A non-zero exit arrives as an error item; the exit code is read below either way.
            while wait.next().await.is_some() {}
            let info = self
                .docker()
                .inspect_container(&name, None::<InspectContainerOptions>)
                .await
                .map_err(|e| BackendError::engine("inspect container", &name, e))?;
            let exit_code = info.state.and_then(|s| s.exit_code).unwrap_or(-1);
            let mut res = ExecResult {
                exit_code,
                ..Default::default()
            };
            let mut logs = self.docker().logs(
                &name,
                Some(LogsOptions {
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            );
            while let Some(chunk) = logs.next().await {
                match chunk.map_err(|e| BackendError::engine("read logs of", &name, e))? {
                    LogOutput::StdErr { message } => res.stderr.extend_from_slice(&message),
                    other => res.stdout.extend_from_slice(&other.into_bytes()),
                }
            }
            Ok::<_, BackendError>(res)
        };
        let out = tokio::time::timeout(req.timeout, run).await;
        // Removed whatever happened: a client must not outlive its run.
        let removed = self.remove_container_forced(&name).await;
        let res = out.map_err(|_| BackendError::InvalidPlan {
            env: env.to_string(),
            message: format!(
                "the benchmark client did not finish within {:?}",
                req.timeout
            ),
        })??;
        removed?;
        Ok(res)
    }

    async fn bench_cleanup_of(&self, env: &str) -> Result<usize, BackendError> {
        let label = format!("{LABEL_ENV}={env}");
        let containers = self
            .docker()
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(std::collections::HashMap::from([(
                    "label".to_string(),
                    vec![label.clone()],
                )])),
                ..Default::default()
            }))
            .await
            .map_err(|e| BackendError::engine("list containers labelled", &label, e))?;
        let mut n = 0;
        for c in containers {
            let role = c
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_ROLE))
                .map(String::as_str)
                .unwrap_or("");
            if !is_bench_role(role) {
                continue;
            }
            if let Some(id) = &c.id {
                self.remove_container_forced(id).await?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The [`crate::Backend`] bench methods of [`DockerBackend`] (called from its `impl Backend`).
pub(crate) fn start_origin<'a>(
    d: &'a DockerBackend,
    env: &'a str,
    req: OriginRequest,
) -> crate::backend::BoxFuture<'a, Result<BenchEndpoints, BackendError>> {
    Box::pin(d.bench_start_origin_of(env, req))
}

/// See [`start_origin`].
pub(crate) fn run_client<'a>(
    d: &'a DockerBackend,
    env: &'a str,
    req: ClientRequest,
) -> crate::backend::BoxFuture<'a, Result<ExecResult, BackendError>> {
    Box::pin(d.bench_run_client_of(env, req))
}

/// See [`start_origin`].
pub(crate) fn cleanup<'a>(
    d: &'a DockerBackend,
    env: &'a str,
) -> crate::backend::BoxFuture<'a, Result<usize, BackendError>> {
    Box::pin(d.bench_cleanup_of(env))
}
