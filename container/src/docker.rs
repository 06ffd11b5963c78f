//! The Docker implementation of [`Backend`] (bollard). Request bodies come from
//! [`crate::hardening`]; this module only sequences the engine calls, labels, and cleans up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, NetworkConnectRequest, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, ListNetworksOptions,
    LogsOptions, RemoveContainerOptions, RemoveVolumeOptions, StartContainerOptions, StatsOptions,
    StopContainerOptions, UploadToContainerOptions,
};
use futures_util::StreamExt;

use crate::backend::{
    Backend, BoxFuture, ContainerStatus, EnvPlan, EnvState, EnvStats, EnvStatus, ExecOutput,
    ExecRequest, ExecSession, ExitHandle, LABEL_ENV, LABEL_MANAGED, LABEL_ROLE, LABEL_WORKSPACE,
    ROLE_PROFILE_PROXY, names,
};
use crate::error::BackendError;
use crate::hardening;

/// How long `create_env` waits for the proxy's admin port to accept connections.
const PROXY_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a service or the sandbox waits for a `depends_on: condition: service_healthy`.
pub const DEPENDENCY_TIMEOUT: Duration = Duration::from_secs(180);

/// [`Backend`] on a Docker engine reached through the local socket (`DOCKER_HOST` honoured).
#[derive(Clone)]
pub struct DockerBackend {
    docker: Docker,
    /// Names whose `create_env` is in flight in this process (two creates of one name race).
    creating: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for DockerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerBackend").finish_non_exhaustive()
    }
}

fn is_status(e: &bollard::errors::Error, code: u16) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code)
}

impl DockerBackend {
    /// Connects to the local engine and negotiates the API version (the engine here speaks 1.41).
    pub async fn connect() -> Result<Self, BackendError> {
        let docker =
            Docker::connect_with_local_defaults().map_err(|e| BackendError::Unavailable {
                detail: e.to_string(),
            })?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| BackendError::Unavailable {
                detail: e.to_string(),
            })?;
        Ok(Self::from_docker(docker))
    }

    /// Wraps an already connected client.
    pub fn from_docker(docker: Docker) -> Self {
        DockerBackend {
            docker,
            creating: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// The bollard client (for image import and tests).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The engine's version string, e.g. `20.10.24+dfsg1`.
    pub async fn engine_version(&self) -> Result<String, BackendError> {
        let v = self
            .docker
            .version()
            .await
            .map_err(|e| BackendError::engine("query version of", "engine", e))?;
        Ok(v.version.unwrap_or_default())
    }

    /// Number of CPUs the engine reports.
    pub async fn engine_cpus(&self) -> Result<i64, BackendError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| BackendError::engine("query info of", "engine", e))?;
        Ok(info.ncpu.unwrap_or(1).max(1))
    }

    /// The IPv4 address of `container` on `network`, if attached and running.
    pub async fn container_ip(
        &self,
        container: &str,
        network: &str,
    ) -> Result<Option<Ipv4Addr>, BackendError> {
        let info = self
            .docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
            .map_err(|e| BackendError::engine("inspect container", container, e))?;
        Ok(info
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(network))
            .and_then(|ep| ep.ip_address)
            .and_then(|ip| ip.parse().ok()))
    }

    /// The address of the proxy's admin listener (egress side), for the daemon.
    pub async fn proxy_admin_address(&self, env: &str) -> Result<Option<String>, BackendError> {
        Ok(self
            .container_ip(&names::proxy(env), &names::egress_network(env))
            .await?
            .map(|ip| format!("{ip}:{}", hardening::ADMIN_PORT)))
    }

    /// Last lines of a container's logs (for error messages).
    pub async fn container_logs_tail(&self, container: &str, lines: usize) -> String {
        let mut stream = self.docker.logs(
            container,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: lines.to_string(),
                ..Default::default()
            }),
        );
        let mut out = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        out
    }

    async fn list_labelled_containers(
        &self,
        label: &str,
    ) -> Result<Vec<bollard::models::ContainerSummary>, BackendError> {
        self.docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([(
                    "label".to_string(),
                    vec![label.to_string()],
                )])),
                ..Default::default()
            }))
            .await
            .map_err(|e| BackendError::engine("list containers labelled", label, e))
    }

    async fn list_labelled_networks(
        &self,
        label: &str,
    ) -> Result<Vec<bollard::models::Network>, BackendError> {
        self.docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(HashMap::from([(
                    "label".to_string(),
                    vec![label.to_string()],
                )])),
            }))
            .await
            .map_err(|e| BackendError::engine("list networks labelled", label, e))
    }

    async fn create_network(&self, req: NetworkCreateRequest) -> Result<String, BackendError> {
        let name = req.name.clone();
        let res = self
            .docker
            .create_network(req)
            .await
            .map_err(|e| BackendError::engine("create network", &name, e))?;
        Ok(res.id)
    }

    /// Creates the egress network with an explicit subnet: the engine first picks a free pool
    /// (it avoids host routes), then the network is recreated with that subnet pinned so the
    /// proxy can take a fixed address on it. Retries when a concurrent creation took the pool.
    async fn create_egress_network(
        &self,
        plan: &EnvPlan,
        created: &mut Vec<Created>,
    ) -> Result<(Ipv4Addr, Ipv4Addr), BackendError> {
        // Returns the network address and the gateway (the proxies' addresses follow from
        // them: hardening::proxy_egress_ip_at).
        let env = &plan.spec.name;
        let name = names::egress_network(env);
        let mut last_err = None;
        for _attempt in 0..5 {
            let mut probe = hardening::egress_network(plan, "0.0.0.0/0", "0.0.0.0");
            probe.ipam = None;
            let id = self.create_network(probe).await?;
            let inspect = self
                .docker
                .inspect_network(&id, None)
                .await
                .map_err(|e| BackendError::engine("inspect network", &name, e));
            let _ = self.docker.remove_network(&id).await;
            let inspect = inspect?;
            let cfg = inspect
                .ipam
                .and_then(|i| i.config)
                .and_then(|c| c.into_iter().next())
                .ok_or_else(|| BackendError::InvalidPlan {
                    env: env.clone(),
                    message: format!("network {name} got no IPv4 subnet from the engine"),
                })?;
            let subnet = cfg.subnet.unwrap_or_default();
            let (net, prefix) = parse_cidr(&subnet).ok_or_else(|| BackendError::InvalidPlan {
                env: env.clone(),
                message: format!("network {name}: unexpected subnet {subnet:?}"),
            })?;
            let gateway = cfg
                .gateway
                .and_then(|g| g.parse::<Ipv4Addr>().ok())
                .unwrap_or(Ipv4Addr::from(u32::from(net) + 1));
            let req =
                hardening::egress_network(plan, &format!("{net}/{prefix}"), &gateway.to_string());
            match self.docker.create_network(req).await {
                Ok(res) => {
                    created.push(Created::Network(res.id));
                    return Ok((net, gateway));
                }
                Err(e) => {
                    // A concurrent creation took the pool between probe and create; try again.
                    last_err = Some(BackendError::engine("create network", &name, e));
                }
            }
        }
        Err(last_err.unwrap_or_else(|| BackendError::InvalidPlan {
            env: env.clone(),
            message: format!("could not allocate a subnet for {name}"),
        }))
    }

    pub(crate) async fn create_and_start(
        &self,
        name: &str,
        body: ContainerCreateBody,
        created: &mut Vec<Created>,
    ) -> Result<(), BackendError> {
        self.create_container(name, body).await?;
        created.push(Created::Container(name.to_string()));
        self.start(name).await
    }

    async fn create_container(
        &self,
        name: &str,
        mut body: ContainerCreateBody,
    ) -> Result<(), BackendError> {
        // The engine refuses a CPU limit above its CPU count; clamp (a limit of "all CPUs" is
        // what the spec asked for on a smaller machine).
        if let Some(host) = body.host_config.as_mut()
            && let Some(nano) = host.nano_cpus
        {
            let ncpu = self.engine_cpus().await?;
            host.nano_cpus = Some(nano.min(ncpu * 1_000_000_000));
        }
        self.docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.to_string()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| {
                if is_status(&e, 409) {
                    BackendError::AlreadyExists(name.to_string())
                } else {
                    BackendError::engine("create container", name, e)
                }
            })?;
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<(), BackendError> {
        self.docker
            .start_container(name, None::<StartContainerOptions>)
            .await
            .map_err(|e| BackendError::engine("start container", name, e))
    }

    /// Waits until the proxy accepts connections on its admin port (from the host, over the
    /// egress bridge), or fails with its logs when it exits or the deadline passes.
    async fn wait_proxy_ready(
        &self,
        env: &str,
        name: &str,
        admin: Ipv4Addr,
    ) -> Result<(), BackendError> {
        let name = name.to_string();
        let deadline = Instant::now() + PROXY_READY_TIMEOUT;
        loop {
            let attempt = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect((admin, hardening::ADMIN_PORT)),
            )
            .await;
            if let Ok(Ok(_)) = attempt {
                return Ok(());
            }
            let running = self
                .docker
                .inspect_container(&name, None::<InspectContainerOptions>)
                .await
                .ok()
                .and_then(|i| i.state)
                .and_then(|s| s.running)
                .unwrap_or(false);
            if !running || Instant::now() >= deadline {
                let logs = self.container_logs_tail(&name, 20).await;
                return Err(BackendError::ProxyNotReady {
                    env: env.to_string(),
                    container: name,
                    what: if running {
                        "did not become ready in time"
                    } else {
                        "exited"
                    },
                    admin: format!("{admin}:{}", hardening::ADMIN_PORT),
                    logs,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Removes what a failed `create_env` made, newest first, and nothing else (another
    /// creator's objects with the same name stay untouched).
    async fn rollback(&self, created: Vec<Created>) {
        for obj in created.into_iter().rev() {
            let res = match &obj {
                Created::Container(name) => self
                    .docker
                    .remove_container(
                        name,
                        Some(RemoveContainerOptions {
                            force: true,
                            v: true,
                            ..Default::default()
                        }),
                    )
                    .await
                    .map_err(|e| BackendError::engine("remove container", name, e)),
                Created::Network(id) => {
                    // The Docker engine's network has the `dind` profile's proxy connected to it,
                    // which is removed only later (created earlier): disconnect what is attached.
                    if let Ok(full) = self
                        .docker
                        .inspect_network(
                            id,
                            None::<bollard::query_parameters::InspectNetworkOptions>,
                        )
                        .await
                    {
                        for cid in full.containers.unwrap_or_default().into_keys() {
                            let _ = self
                                .docker
                                .disconnect_network(
                                    id,
                                    bollard::models::NetworkDisconnectRequest {
                                        container: cid,
                                        force: Some(true),
                                    },
                                )
                                .await;
                        }
                    }
                    self.docker
                        .remove_network(id)
                        .await
                        .map_err(|e| BackendError::engine("remove network", id, e))
                }
                Created::Volume(name) => self
                    .docker
                    .remove_volume(name, None::<RemoveVolumeOptions>)
                    .await
                    .map_err(|e| BackendError::engine("remove volume", name, e)),
            };
            if let Err(e) = res {
                tracing::warn!(error = %e, "rollback after failed create");
            }
        }
    }

    async fn create_env_inner(
        &self,
        plan: &EnvPlan,
        created: &mut Vec<Created>,
    ) -> Result<EnvStatus, BackendError> {
        let spec = &plan.spec;
        let env = &spec.name;
        crate::spec::validate_env_name(env).map_err(|e| BackendError::InvalidPlan {
            env: env.clone(),
            message: e.to_string(),
        })?;
        if !plan.policy_dir.is_absolute() || !plan.policy_dir.is_dir() {
            return Err(BackendError::InvalidPlan {
                env: env.clone(),
                message: format!(
                    "policy directory {} must be an existing absolute path",
                    plan.policy_dir.display()
                ),
            });
        }
        if !spec.workspace.is_absolute() || !spec.workspace.is_dir() {
            return Err(BackendError::InvalidPlan {
                env: env.clone(),
                message: format!(
                    "workspace {} must be an existing absolute directory",
                    spec.workspace.display()
                ),
            });
        }
        // The spec arrives over the API: a service's profile must be one of the spec's, and
        // each profile's policy directory must have been written (by the daemon).
        for svc in &spec.services {
            if let crate::spec::ServiceEgress::Profile(p) = &svc.egress
                && spec.egress.profile(p).is_none()
            {
                return Err(BackendError::InvalidPlan {
                    env: env.clone(),
                    message: format!(
                        "service {:?}: egress = {p:?} names no egress profile of the environment",
                        svc.name
                    ),
                });
            }
        }
        for p in &spec.egress.profiles {
            crate::spec::check_profile_name(&p.name).map_err(|m| BackendError::InvalidPlan {
                env: env.clone(),
                message: format!("egress profile {:?}: {m}", p.name),
            })?;
            let dir = plan.profile_policy_dir(&p.name);
            if !dir.join(crate::policy_dir::POLICY_FILE).is_file() {
                return Err(BackendError::InvalidPlan {
                    env: env.clone(),
                    message: format!(
                        "egress profile {:?}: policy directory {} has no {}",
                        p.name,
                        dir.display(),
                        crate::policy_dir::POLICY_FILE
                    ),
                });
            }
        }

        // Networks.
        let (egress_net, gateway) = self.create_egress_network(plan, created).await?;
        let id = self
            .create_network(hardening::internal_network(plan))
            .await?;
        created.push(Created::Network(id));
        // Each egress profile's own network: its proxy and the services that use it, not the
        // sandbox.
        for p in &spec.egress.profiles {
            // Docker 20.10 creates a second network of an existing name, and then refuses every
            // container that names it ("ambiguous"): an environment named `<env>-net-<profile>`
            // has this name for its internal network. Refuse it here, clearly.
            let name = names::profile_network(env, &p.name);
            if self
                .docker
                .inspect_network(
                    &name,
                    None::<bollard::query_parameters::InspectNetworkOptions>,
                )
                .await
                .is_ok()
            {
                return Err(BackendError::InvalidPlan {
                    env: env.clone(),
                    message: format!(
                        "egress profile {:?}: network {name} already exists (another environment's? `docker network inspect {name}`); rename the profile or remove that network",
                        p.name
                    ),
                });
            }
            let id = self
                .create_network(hardening::profile_network(plan, &p.name))
                .await?;
            created.push(Created::Network(id));
        }

        let askpass = if spec.credentials.git_token_file.is_some() {
            let p = plan.policy_dir.join("git-askpass");
            write_file(
                &plan.policy_dir,
                "git-askpass",
                hardening::GIT_ASKPASS_SCRIPT,
            )?;
            set_mode(&p, 0o755)
                .map_err(|e| BackendError::engine("chmod", p.display().to_string(), e))?;
            Some(p)
        } else {
            None
        };

        // The environment's proxy, then one per egress profile (in name order), before
        // anything that may send through them.
        self.start_proxy(
            plan,
            None,
            hardening::proxy_egress_ip(egress_net, gateway),
            created,
        )
        .await?;
        for (i, p) in spec.egress.profiles.iter().enumerate() {
            let slot = u32::try_from(i + 1).unwrap_or(u32::MAX);
            self.start_proxy(
                plan,
                Some(&p.name),
                hardening::proxy_egress_ip_at(egress_net, gateway, slot),
                created,
            )
            .await?;
        }

        self.start_services(plan, created).await?;

        let (resolved, git) = self.resolve_plan(plan).await?;
        let plan = &resolved;
        // After the build and the user lookup: the home volume is initialised from the image
        // that will run, owned by the user it runs as.
        self.ensure_home(plan, created).await?;
        // `[docker]`: the environment's own engine (crate::engine), before the sandbox that
        // uses its socket.
        let engine_proxy = self.start_engine(plan, created).await?;
        // `kennel up --egress-only`: the IDE's dev container takes the sandbox's place.
        if !plan.egress_only() {
            // The compose dev service's depends_on: the sandbox starts after them.
            self.wait_dependencies(env, "the sandbox", &plan.spec.sandbox_depends_on, plan)
                .await?;
            let sandbox = names::sandbox(env);
            self.create_container(
                &sandbox,
                hardening::sandbox_container(plan, askpass.as_deref(), git.as_ref()),
            )
            .await?;
            created.push(Created::Container(sandbox.clone()));
            if let Some(proxy) = &engine_proxy {
                self.write_docker_config(plan, &sandbox, proxy).await?;
            }
            self.start(&sandbox).await?;
        }

        self.inspect_env_inner(env)
            .await?
            .ok_or_else(|| BackendError::NotFound(env.clone()))
    }

    /// Starts one proxy of the environment: its own (`profile: None`) or an egress profile's.
    /// Writes its config into its policy directory, creates it on its internal network (the
    /// environment's, or the profile's own),
    /// connects it to the egress network at `egress_ip` (its admin listener's address), starts
    /// it and waits until it accepts connections.
    async fn start_proxy(
        &self,
        plan: &EnvPlan,
        profile: Option<&str>,
        egress_ip: Ipv4Addr,
        created: &mut Vec<Created>,
    ) -> Result<(), BackendError> {
        let env = &plan.spec.name;
        let (dir, name, log_dir) = match profile {
            None => (
                plan.policy_dir.clone(),
                names::proxy(env),
                plan.access_log_dir.clone(),
            ),
            Some(p) => (
                plan.profile_policy_dir(p),
                names::profile_proxy(env, p),
                plan.profile_access_log_dir(p),
            ),
        };
        // The proxy (uid 65532) must read the policy directory through its bind mount; the
        // directory's parents do not matter (the mount bypasses them), its own mode does.
        set_mode(&dir, 0o755)
            .map_err(|e| BackendError::engine("chmod", dir.display().to_string(), e))?;
        // Deny messages name the `kennel allow` a person runs: with `--profile NAME` for a
        // profile's proxy (the proxy prints this text after `kennel allow`).
        let allow_args = match profile {
            None => env.clone(),
            Some(p) => format!("--profile {p} {env}"),
        };
        write_file(
            &dir,
            hardening::PROXY_CONFIG_FILE,
            &hardening::proxy_config_for_env(
                egress_ip,
                &dir.join(crate::policy_dir::POLICY_FILE)
                    .display()
                    .to_string(),
                log_dir.is_some(),
                &allow_args,
            ),
        )?;
        self.create_container(&name, hardening::proxy_container(plan, profile))
            .await?;
        created.push(Created::Container(name.clone()));
        let egress = names::egress_network(env);
        self.docker
            .connect_network(
                &egress,
                NetworkConnectRequest {
                    container: name.clone(),
                    endpoint_config: Some(hardening::proxy_egress_endpoint(egress_ip)),
                },
            )
            .await
            .map_err(|e| BackendError::engine("connect proxy to network", &egress, e))?;
        self.start(&name).await?;
        self.wait_proxy_ready(env, &name, egress_ip).await
    }

    /// `plan` with the workspace's image built (or its content tag reused) and a user given by
    /// name resolved in that image, and the workspace's git mounts: what the sandbox (and the
    /// IDE's container) runs.
    async fn resolve_plan(
        &self,
        plan: &EnvPlan,
    ) -> Result<(EnvPlan, Option<crate::git::GitMounts>), BackendError> {
        let spec = &plan.spec;
        let env = &spec.name;
        // Git: the workspace's git directory reachable at its own path, with what git on the
        // host would execute mounted read-only (crate::git).
        let git_error = |e: crate::git::GitError| BackendError::InvalidPlan {
            env: env.clone(),
            message: format!("git layout of the workspace: {e}"),
        };
        let git = crate::git::discover(&spec.workspace).map_err(git_error)?;
        if let Some(g) = &git {
            g.prepare_host().map_err(git_error)?;
        }

        // The workspace's image, built now that the network and proxy its RUN steps go
        // through exist; then a user given by name is looked up in the image that will run.
        let resolved = if spec.build.is_some() || spec.user_name.is_some() {
            let progress = plan.progress.clone();
            let report = move |line: String| {
                if let Some(p) = &progress {
                    let _ = p.send(line);
                }
            };
            let mut p = plan.clone();
            if let Some(b) = &spec.build {
                p.spec.image =
                    crate::build::build_image(&self.docker, env, b, &plan.state_labels, &report)
                        .await?;
            }
            if let Some(n) = &spec.user_name {
                let uid = crate::build::image_uid(
                    &self.docker,
                    env,
                    &p.spec.image,
                    n,
                    &plan.state_labels,
                )
                .await?;
                let gid = hardening::user_ids(&p.spec.user).1;
                p.spec.user = format!("{uid}:{gid}");
                report(format!(
                    "user {n:?} is uid {uid} in the image; the sandbox runs as {}",
                    p.spec.user
                ));
            }
            p
        } else {
            plan.clone()
        };
        Ok((resolved, git))
    }

    /// Creates and starts the service containers in their order (each after those it depends
    /// on, healthy where asked): their images built from the workspace first, their named
    /// volumes created if missing (kept across `kennel down`).
    async fn start_services(
        &self,
        plan: &EnvPlan,
        created: &mut Vec<Created>,
    ) -> Result<(), BackendError> {
        let spec = &plan.spec;
        let env = &spec.name;
        // The daemon checks again what the spec parser checked: a service mounts only paths
        // inside the workspace (the spec arrives over the API).
        let ws = std::fs::canonicalize(&spec.workspace).unwrap_or_else(|_| spec.workspace.clone());
        for svc in &spec.services {
            if let Some(b) = svc.run.binds.iter().find(|b| !b.source.starts_with(&ws)) {
                return Err(BackendError::InvalidPlan {
                    env: env.clone(),
                    message: format!(
                        "service {:?}: bind mount {} is outside the workspace {}",
                        svc.name,
                        b.source.display(),
                        ws.display()
                    ),
                });
            }
        }
        let progress = plan.progress.clone();
        let report = move |line: String| {
            if let Some(p) = &progress {
                let _ = p.send(line);
            }
        };
        let mut volumes: Vec<&str> = spec
            .services
            .iter()
            .flat_map(|s| s.run.volumes.iter().map(|v| v.name.as_str()))
            .collect();
        volumes.sort_unstable();
        volumes.dedup();
        for v in volumes {
            let name = names::service_volume(env, v);
            match self.docker.inspect_volume(&name).await {
                Ok(existing) => {
                    if existing.labels.get(LABEL_ENV).map(String::as_str) != Some(env.as_str()) {
                        return Err(BackendError::InvalidPlan {
                            env: env.clone(),
                            message: format!(
                                "volume {name} exists but is not this environment's; remove or rename it"
                            ),
                        });
                    }
                }
                Err(e) if is_status(&e, 404) => {
                    self.docker
                        .create_volume(hardening::service_volume(plan, v))
                        .await
                        .map_err(|e| BackendError::engine("create volume", &name, e))?;
                    created.push(Created::Volume(name));
                }
                Err(e) => return Err(BackendError::engine("inspect volume", &name, e)),
            }
        }
        for svc in &spec.services {
            let mut svc = svc.clone();
            if let Some(b) = &svc.run.build {
                report(format!("building the image of service {:?}", svc.name));
                svc.image =
                    crate::build::build_image(&self.docker, env, b, &plan.state_labels, &report)
                        .await?;
            }
            self.wait_dependencies(
                env,
                &format!("service {:?}", svc.name),
                &svc.run.depends_on,
                plan,
            )
            .await?;
            let name = names::service(env, &svc.name);
            self.create_container(&name, hardening::service_container(plan, &svc))
                .await?;
            created.push(Created::Container(name.clone()));
            // `egress = "NAME"`: the profile's network too, where `proxy-NAME` is (the engine
            // takes one network at create time on API 1.41).
            if let Some(net) = hardening::service_profile_network(env, &svc) {
                self.docker
                    .connect_network(
                        &net,
                        NetworkConnectRequest {
                            container: name.clone(),
                            endpoint_config: Some(bollard::models::EndpointSettings {
                                aliases: Some(vec![svc.name.clone()]),
                                ..Default::default()
                            }),
                        },
                    )
                    .await
                    .map_err(|e| BackendError::engine("connect service to network", &net, e))?;
            }
            self.start(&name).await?;
        }
        Ok(())
    }

    /// Waits until every `depends_on` with `service_healthy` reports healthy (those without
    /// the condition were started before, in order). Fails when one is unhealthy, has no health
    /// check, stopped, or is not healthy within [`DEPENDENCY_TIMEOUT`].
    async fn wait_dependencies(
        &self,
        env: &str,
        who: &str,
        deps: &[crate::spec::DependsOn],
        plan: &EnvPlan,
    ) -> Result<(), BackendError> {
        use bollard::models::HealthStatusEnum;
        for d in deps.iter().filter(|d| d.healthy) {
            let container = names::service(env, &d.service);
            if let Some(p) = &plan.progress {
                let _ = p.send(format!(
                    "{who} waits for service {:?} to be healthy",
                    d.service
                ));
            }
            let started = Instant::now();
            loop {
                let info = self
                    .docker
                    .inspect_container(&container, None::<InspectContainerOptions>)
                    .await
                    .map_err(|e| BackendError::engine("inspect container", &container, e))?;
                let state = info.state.unwrap_or_default();
                let fail = |why: String| BackendError::InvalidPlan {
                    env: env.to_string(),
                    message: format!(
                        "{who} depends on service {:?} being healthy, but it {why} (see `docker logs {container}`)",
                        d.service
                    ),
                };
                if state.running != Some(true) {
                    return Err(fail(format!(
                        "is not running (exit code {})",
                        state.exit_code.unwrap_or_default()
                    )));
                }
                match state.health.and_then(|h| h.status) {
                    Some(HealthStatusEnum::HEALTHY) => break,
                    Some(HealthStatusEnum::UNHEALTHY) => {
                        return Err(fail("is unhealthy".into()));
                    }
                    Some(HealthStatusEnum::STARTING) => {}
                    _ => {
                        return Err(fail(
                            "has no health check (add `healthcheck:` to it in the compose file)"
                                .into(),
                        ));
                    }
                }
                if started.elapsed() > DEPENDENCY_TIMEOUT {
                    return Err(fail(format!(
                        "was not healthy within {}s",
                        DEPENDENCY_TIMEOUT.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Ok(())
    }

    /// Makes sure the home volume exists. A new one is initialised through a never-started
    /// helper container: the engine copies the image's home content into the empty volume, then
    /// [`crate::home::init_archive`] (unpacked in home's parent) makes home owned by the sandbox
    /// user and adds the `agent_config_copy` copies. An existing volume is kept as it is.
    async fn ensure_home(
        &self,
        plan: &EnvPlan,
        created: &mut Vec<Created>,
    ) -> Result<(), BackendError> {
        let spec = &plan.spec;
        let env = &spec.name;
        let volume = names::home_volume(env);
        match self.docker.inspect_volume(&volume).await {
            Ok(_) => return Ok(()),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(BackendError::engine("inspect volume", &volume, e)),
        }
        let (uid, gid) = hardening::user_ids(&spec.user);
        // Files are read for the caller only if they are the caller's (a root daemon must not
        // copy what the caller could not read); root and the daemon's own user are trusted.
        let caller = plan
            .state_labels
            .iter()
            .find(|(k, _)| k == crate::backend::LABEL_CREATED_BY)
            .and_then(|(_, v)| v.parse::<u32>().ok());
        let me = nix::unistd::geteuid().as_raw();
        let only_owner = caller.filter(|c| *c != 0 && *c != me);
        let archive = crate::home::init_archive(
            &spec.home,
            uid,
            gid,
            &spec.credentials.agent_config_copy,
            only_owner,
        )
        .map_err(|e| BackendError::InvalidPlan {
            env: env.clone(),
            message: e.to_string(),
        })?;
        self.docker
            .create_volume(hardening::home_volume(plan))
            .await
            .map_err(|e| BackendError::engine("create volume", &volume, e))?;
        created.push(Created::Volume(volume.clone()));
        let init = names::home_init(env);
        self.create_container(&init, hardening::home_init_container(plan))
            .await?;
        let parent = std::path::Path::new(&spec.home)
            .parent()
            .map_or_else(|| "/".to_string(), |p| p.display().to_string());
        let upload = self
            .docker
            .upload_to_container(
                &init,
                Some(UploadToContainerOptions {
                    path: parent,
                    ..Default::default()
                }),
                bollard::body_full(archive.into()),
            )
            .await
            .map_err(|e| BackendError::engine("initialise home volume through", &init, e));
        let removed = self
            .docker
            .remove_container(
                &init,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
        upload?;
        if let Err(e) = removed {
            created.push(Created::Container(init.clone()));
            return Err(BackendError::engine("remove container", &init, e));
        }
        Ok(())
    }

    async fn inspect_env_inner(&self, name: &str) -> Result<Option<EnvStatus>, BackendError> {
        let label = format!("{LABEL_ENV}={name}");
        let containers = self.list_labelled_containers(&label).await?;
        let networks = self.list_labelled_networks(&label).await?;
        if containers.is_empty() && networks.is_empty() {
            return Ok(None);
        }
        Ok(Some(status_from(name, containers)))
    }
}

/// An object `create_env` made (for rollback).
pub(crate) enum Created {
    Network(String),
    Container(String),
    Volume(String),
}

fn path_str(dir: &std::path::Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

/// Replaces `dir/file` (temp file + rename) with `content`.
fn write_file(dir: &std::path::Path, file: &str, content: &str) -> Result<(), BackendError> {
    let path = dir.join(file);
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, content)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| BackendError::engine("write", path_str(dir, file), e))
}

#[cfg(unix)]
fn set_mode(p: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, prefix) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 30).then_some((ip, prefix))
}

fn status_from(name: &str, containers: Vec<bollard::models::ContainerSummary>) -> EnvStatus {
    let mut list = Vec::new();
    let mut sandbox_labels = HashMap::new();
    let mut created = None;
    let (mut running, mut total) = (0, 0);
    let (mut has_proxy, mut has_sandbox) = (false, false);
    let mut proxy_labels = HashMap::new();
    for c in containers {
        let labels = c.labels.clone().unwrap_or_default();
        let role = labels.get(LABEL_ROLE).cloned().unwrap_or_default();
        let state = c
            .state
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into());
        // `kennel bench` containers come and go during a benchmark, the IDE's container with the
        // IDE; they are listed but the environment's state is its own.
        if !crate::bench::is_bench_role(&role) && role != crate::backend::ROLE_IDE {
            total += 1;
            if state == "running" {
                running += 1;
            }
        }
        match role.as_str() {
            "proxy" => {
                has_proxy = true;
                proxy_labels = labels.clone();
            }
            "sandbox" => {
                has_sandbox = true;
                sandbox_labels = labels.clone();
                created = c.created.map(|t| t.to_string());
            }
            _ => {}
        }
        list.push(ContainerStatus {
            name: c
                .names
                .and_then(|n| n.into_iter().next())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default(),
            role,
            id: c.id.unwrap_or_default(),
            image: c.image.unwrap_or_default(),
            state,
            status: c.status.unwrap_or_default(),
        });
    }
    list.sort_by(|a, b| a.name.cmp(&b.name));
    // `kennel up --egress-only`: no sandbox by design; the proxy carries the labels.
    let egress_only = proxy_labels
        .get(crate::backend::LABEL_EGRESS_ONLY)
        .is_some_and(|v| v == "true");
    if egress_only && !has_sandbox {
        has_sandbox = true;
        sandbox_labels = proxy_labels;
    }
    let state = if !(has_proxy && has_sandbox) {
        EnvState::Incomplete
    } else if running == total {
        EnvState::Running
    } else if running == 0 {
        EnvState::Stopped
    } else {
        EnvState::Degraded
    };
    EnvStatus {
        name: name.to_string(),
        state,
        containers: list,
        network: names::network(name),
        proxy_address: has_proxy.then(hardening::proxy_url),
        created,
        labels: sandbox_labels,
    }
}

impl Backend for DockerBackend {
    fn create_env<'a>(
        &'a self,
        plan: &'a EnvPlan,
    ) -> BoxFuture<'a, Result<EnvStatus, BackendError>> {
        Box::pin(async move {
            let name = plan.spec.name.clone();
            {
                let mut creating = self
                    .creating
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if !creating.insert(name.clone()) {
                    return Err(BackendError::AlreadyExists(name));
                }
            }
            struct Unmark<'b>(&'b Mutex<HashSet<String>>, String);
            impl Drop for Unmark<'_> {
                fn drop(&mut self) {
                    self.0
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&self.1);
                }
            }
            let _unmark = Unmark(&self.creating, name.clone());

            if self.inspect_env_inner(&name).await?.is_some() {
                return Err(BackendError::AlreadyExists(name));
            }
            let mut created = Vec::new();
            match self.create_env_inner(plan, &mut created).await {
                Ok(status) => Ok(status),
                Err(e) => {
                    self.rollback(created).await;
                    Err(e)
                }
            }
        })
    }

    fn list_envs(&self) -> BoxFuture<'_, Result<Vec<EnvStatus>, BackendError>> {
        Box::pin(async move {
            let label = format!("{LABEL_MANAGED}=true");
            let containers = self.list_labelled_containers(&label).await?;
            let networks = self.list_labelled_networks(&label).await?;
            let mut by_env: BTreeMap<String, Vec<_>> = BTreeMap::new();
            for n in networks {
                if let Some(env) = n.labels.as_ref().and_then(|l| l.get(LABEL_ENV)) {
                    by_env.entry(env.clone()).or_default();
                }
            }
            for c in containers {
                if let Some(env) = c.labels.as_ref().and_then(|l| l.get(LABEL_ENV)).cloned() {
                    by_env.entry(env).or_default().push(c);
                }
            }
            Ok(by_env
                .into_iter()
                .map(|(env, cs)| status_from(&env, cs))
                .collect())
        })
    }

    fn inspect_env<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<EnvStatus>, BackendError>> {
        Box::pin(self.inspect_env_inner(name))
    }

    fn remove_env<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let label = format!("{LABEL_ENV}={name}");
            for c in self.list_labelled_containers(&label).await? {
                let Some(id) = c.id else { continue };
                match self
                    .docker
                    .remove_container(
                        &id,
                        Some(RemoveContainerOptions {
                            force: true,
                            v: true,
                            ..Default::default()
                        }),
                    )
                    .await
                {
                    Ok(()) => {}
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) => return Err(BackendError::engine("remove container", id, e)),
                }
            }
            for n in self.list_labelled_networks(&label).await? {
                let Some(id) = n.id else { continue };
                let shown = n.name.unwrap_or_else(|| id.clone());
                // A container someone attached by hand (an IDE container whose labels were edited
                // away) would keep the network: it is disconnected, not removed (not kennel's).
                if let Ok(full) = self
                    .docker
                    .inspect_network(
                        &id,
                        None::<bollard::query_parameters::InspectNetworkOptions>,
                    )
                    .await
                {
                    for cid in full.containers.unwrap_or_default().into_keys() {
                        tracing::warn!(network = %shown, container = %cid, "disconnecting a container kennel did not label from the environment's network");
                        let _ = self
                            .docker
                            .disconnect_network(
                                &id,
                                bollard::models::NetworkDisconnectRequest {
                                    container: cid,
                                    force: Some(true),
                                },
                            )
                            .await;
                    }
                }
                match self.docker.remove_network(&id).await {
                    Ok(()) => {}
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) => return Err(BackendError::engine("remove network", shown, e)),
                }
            }
            // The Docker engine's socket volume goes with the engine (its data stays).
            self.remove_own_volume(name, &crate::engine::names::socket_volume(name))
                .await
        })
    }

    fn purge_env<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            // The Docker engine's data (images, build cache, nested containers' layers).
            self.remove_own_volume(name, &crate::engine::names::data_volume(name))
                .await?;
            // The compose services' named volumes: only those labelled as this environment's.
            let label = format!("{LABEL_ENV}={name}");
            let listed = self
                .docker
                .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
                    filters: Some(HashMap::from([(
                        "label".to_string(),
                        vec![label.clone(), format!("{LABEL_ROLE}=service-volume")],
                    )])),
                }))
                .await
                .map_err(|e| BackendError::engine("list volumes labelled", &label, e))?;
            for v in listed.volumes.unwrap_or_default() {
                match self
                    .docker
                    .remove_volume(&v.name, None::<RemoveVolumeOptions>)
                    .await
                {
                    Ok(()) => {}
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) => return Err(BackendError::engine("remove volume", &v.name, e)),
                }
            }
            let volume = names::home_volume(name);
            match self.docker.inspect_volume(&volume).await {
                // Only kennel's own volume (labelled with this environment) is removed.
                Ok(v) if v.labels.get(LABEL_ENV).map(String::as_str) == Some(name) => {}
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, 404) => return Ok(()),
                Err(e) => return Err(BackendError::engine("inspect volume", &volume, e)),
            }
            match self
                .docker
                .remove_volume(&volume, None::<RemoveVolumeOptions>)
                .await
            {
                Ok(()) => Ok(()),
                Err(e) if is_status(&e, 404) => Ok(()),
                Err(e) => Err(BackendError::engine("remove volume", &volume, e)),
            }
        })
    }

    fn kept_home<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, BackendError>> {
        Box::pin(async move {
            let volume = names::home_volume(name);
            match self.docker.inspect_volume(&volume).await {
                Ok(v) if v.labels.get(LABEL_ENV).map(String::as_str) == Some(name) => Ok(Some(
                    v.labels.get(LABEL_WORKSPACE).cloned().unwrap_or_default(),
                )),
                Ok(_) => Ok(None),
                Err(e) if is_status(&e, 404) => Ok(None),
                Err(e) => Err(BackendError::engine("inspect volume", &volume, e)),
            }
        })
    }

    fn stop_env<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<EnvStatus, BackendError>> {
        Box::pin(async move {
            let label = format!("{LABEL_ENV}={name}");
            let mut containers = self.list_labelled_containers(&label).await?;
            if containers.is_empty() {
                return Err(BackendError::NotFound(name.to_string()));
            }
            // The sandbox and services first, the proxy last: nothing runs without its proxy.
            containers.sort_by_key(|c| {
                let role = c.labels.as_ref().and_then(|l| l.get(LABEL_ROLE)).cloned();
                matches!(role.as_deref(), Some("proxy" | ROLE_PROFILE_PROXY))
            });
            for c in containers {
                let Some(id) = c.id else { continue };
                match self
                    .docker
                    .stop_container(
                        &id,
                        Some(StopContainerOptions {
                            t: Some(10),
                            signal: None,
                        }),
                    )
                    .await
                {
                    Ok(()) => {}
                    // 304: already stopped.
                    Err(e) if is_status(&e, 304) || is_status(&e, 404) => {}
                    Err(e) => return Err(BackendError::engine("stop container", id, e)),
                }
            }
            self.inspect_env_inner(name)
                .await?
                .ok_or_else(|| BackendError::NotFound(name.to_string()))
        })
    }

    fn start_env<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<EnvStatus, BackendError>> {
        Box::pin(async move {
            let label = format!("{LABEL_ENV}={name}");
            let mut containers = self.list_labelled_containers(&label).await?;
            if containers.is_empty() {
                return Err(BackendError::NotFound(name.to_string()));
            }
            // The proxy first, the sandbox last: the sandbox's only way out must be up.
            let rank = |c: &bollard::models::ContainerSummary| {
                match c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_ROLE))
                    .map(String::as_str)
                {
                    Some("proxy" | ROLE_PROFILE_PROXY) => 0,
                    Some("service" | crate::engine::ROLE_ENGINE) => 1,
                    Some("sandbox") => 2,
                    // Test origins, leftovers: not kennel's to start.
                    _ => 3,
                }
            };
            containers.sort_by_key(rank);
            for c in containers {
                if rank(&c) == 3 {
                    continue;
                }
                let running = c.state.map(|s| s.to_string()).as_deref() == Some("running");
                let Some(id) = c.id else { continue };
                if running {
                    continue;
                }
                match self
                    .docker
                    .start_container(&id, None::<StartContainerOptions>)
                    .await
                {
                    Ok(()) => {}
                    Err(e) if is_status(&e, 304) => {}
                    Err(e) => return Err(BackendError::engine("start container", id, e)),
                }
            }
            self.inspect_env_inner(name)
                .await?
                .ok_or_else(|| BackendError::NotFound(name.to_string()))
        })
    }

    fn stats<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<EnvStats>, BackendError>> {
        Box::pin(async move {
            let sandbox = names::sandbox(name);
            let info = match self
                .docker
                .inspect_container(&sandbox, None::<InspectContainerOptions>)
                .await
            {
                Ok(i) => i,
                Err(e) if is_status(&e, 404) => return Ok(None),
                Err(e) => return Err(BackendError::engine("inspect container", &sandbox, e)),
            };
            let healthcheck = info
                .state
                .as_ref()
                .and_then(|s| s.health.as_ref())
                .and_then(|h| {
                    let status = h.status.map(|s| s.to_string())?;
                    // `none`: the image has no HEALTHCHECK (or it was disabled).
                    (!status.is_empty() && status != "none").then(|| crate::backend::ImageHealth {
                        status,
                        failing_streak: h
                            .failing_streak
                            .and_then(|n| u32::try_from(n).ok())
                            .unwrap_or(0),
                        last_output: h
                            .log
                            .as_ref()
                            .and_then(|l| l.last())
                            .and_then(|r| r.output.as_ref())
                            .map(|o| o.trim().chars().take(200).collect()),
                    })
                });
            let started_at = info.state.and_then(|s| s.started_at);
            let mut stream = self.docker.stats(
                &sandbox,
                Some(StatsOptions {
                    stream: false,
                    one_shot: true,
                }),
            );
            let Some(sample) = stream.next().await else {
                return Ok(Some(EnvStats {
                    started_at,
                    healthcheck,
                    ..Default::default()
                }));
            };
            let sample = sample.map_err(|e| BackendError::engine("read stats of", &sandbox, e))?;
            let mem = sample.memory_stats.unwrap_or_default();
            let cache = mem
                .stats
                .as_ref()
                .and_then(|s| {
                    s.get("total_inactive_file")
                        .or_else(|| s.get("inactive_file"))
                })
                .copied()
                .unwrap_or(0);
            Ok(Some(EnvStats {
                memory_usage_bytes: mem.usage.map(|u| u.saturating_sub(cache)),
                memory_limit_bytes: mem.limit,
                cpu_total_ns: sample
                    .cpu_stats
                    .and_then(|c| c.cpu_usage)
                    .and_then(|u| u.total_usage),
                pids: sample.pids_stats.and_then(|p| p.current),
                started_at,
                healthcheck,
            }))
        })
    }

    fn container_stats<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<crate::backend::ContainerStats>, BackendError>> {
        Box::pin(self.container_stats_of(name))
    }

    fn proxy_metrics<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, BackendError>> {
        Box::pin(self.proxy_metrics_of(name))
    }

    fn engine_facts(&self) -> BoxFuture<'_, Result<crate::backend::EngineFacts, BackendError>> {
        Box::pin(self.engine_facts_of())
    }

    fn env_gateways<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, BackendError>> {
        Box::pin(self.env_gateways_of(name))
    }

    fn logs<'a>(
        &'a self,
        name: &'a str,
        req: crate::backend::LogsRequest,
    ) -> BoxFuture<'a, Result<crate::backend::ExecOutputStream, BackendError>> {
        Box::pin(self.logs_of(name, req))
    }

    fn ide_container<'a>(
        &'a self,
        plan: &'a EnvPlan,
    ) -> BoxFuture<'a, Result<ContainerCreateBody, BackendError>> {
        Box::pin(async move {
            let (resolved, git) = self.resolve_plan(plan).await?;
            // Written by create_env next to the policy when a token file is configured.
            let askpass = plan.policy_dir.join("git-askpass");
            let askpass = (plan.spec.credentials.git_token_file.is_some() && askpass.is_file())
                .then_some(askpass);
            let mut body = hardening::ide_container(&resolved, askpass.as_deref(), git.as_ref());
            // As create_container does for the sandbox: the engine refuses more CPUs than it has.
            if let Some(host) = body.host_config.as_mut()
                && let Some(nano) = host.nano_cpus
            {
                let ncpu = self.engine_cpus().await?;
                host.nano_cpus = Some(nano.min(ncpu * 1_000_000_000));
            }
            Ok(body)
        })
    }

    fn network_members<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<crate::ide::Member>, BackendError>> {
        Box::pin(self.network_members_of(name))
    }

    fn exec<'a>(
        &'a self,
        name: &'a str,
        req: ExecRequest,
    ) -> BoxFuture<'a, Result<ExecSession, BackendError>> {
        Box::pin(async move {
            let sandbox = names::sandbox(name);
            let info = self
                .docker
                .inspect_container(&sandbox, None::<InspectContainerOptions>)
                .await
                .map_err(|e| {
                    if is_status(&e, 404) {
                        BackendError::NotFound(name.to_string())
                    } else {
                        BackendError::engine("inspect container", &sandbox, e)
                    }
                })?;
            let state = info.state.as_ref();
            if !state.and_then(|s| s.running).unwrap_or(false) {
                return Err(BackendError::NotRunning {
                    env: name.to_string(),
                    state: state
                        .and_then(|s| s.status)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "unknown".into()),
                });
            }
            let created = self
                .docker
                .create_exec(
                    &sandbox,
                    CreateExecOptions::<String> {
                        attach_stdin: Some(req.stdin),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        tty: Some(req.tty),
                        env: Some(req.env.clone()),
                        cmd: Some(req.cmd.clone()),
                        working_dir: Some(
                            req.workdir
                                .clone()
                                .unwrap_or_else(|| hardening::WORKSPACE_MOUNT.into()),
                        ),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| BackendError::engine("create exec in", &sandbox, e))?;
            let exec_id = created.id;
            let started = self
                .docker
                .start_exec(
                    &exec_id,
                    Some(StartExecOptions {
                        detach: false,
                        tty: req.tty,
                        output_capacity: None,
                    }),
                )
                .await
                .map_err(|e| BackendError::engine("start exec in", &sandbox, e))?;
            let StartExecResults::Attached { output, input } = started else {
                return Err(BackendError::InvalidPlan {
                    env: name.to_string(),
                    message: "exec started detached".into(),
                });
            };
            let obj = sandbox.clone();
            let output = output.filter_map(move |item| {
                let obj = obj.clone();
                async move {
                    match item {
                        Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                            Some(Ok(ExecOutput::Stdout(message)))
                        }
                        Ok(LogOutput::StdErr { message }) => Some(Ok(ExecOutput::Stderr(message))),
                        Ok(LogOutput::StdIn { .. }) => None,
                        Err(e) => Some(Err(BackendError::engine("read exec output from", obj, e))),
                    }
                }
            });
            let docker = self.docker.clone();
            let id = exec_id.clone();
            let exit = ExitHandle::new(move || {
                Box::pin(async move {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    loop {
                        let info = docker
                            .inspect_exec(&id)
                            .await
                            .map_err(|e| BackendError::engine("inspect exec", &id, e))?;
                        if info.running != Some(true) {
                            return Ok(info.exit_code.unwrap_or(-1));
                        }
                        if Instant::now() >= deadline {
                            return Err(BackendError::InvalidPlan {
                                env: String::new(),
                                message: format!("exec {id} still running after its output ended"),
                            });
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
            });
            let docker = self.docker.clone();
            let id = exec_id;
            let resize: crate::backend::ResizeFn = Box::new(move |rows, cols| {
                let docker = docker.clone();
                let id = id.clone();
                Box::pin(async move {
                    docker
                        .resize_exec(
                            &id,
                            ResizeExecOptions {
                                height: rows,
                                width: cols,
                            },
                        )
                        .await
                        .map_err(|e| BackendError::engine("resize exec", &id, e))
                })
            });
            Ok(ExecSession {
                output: Box::pin(output),
                stdin: req.stdin.then_some(input),
                exit,
                resize: req.tty.then_some(resize),
            })
        })
    }

    fn bench_start_origin<'a>(
        &'a self,
        name: &'a str,
        req: crate::bench::OriginRequest,
    ) -> BoxFuture<'a, Result<crate::bench::BenchEndpoints, BackendError>> {
        crate::bench::start_origin(self, name, req)
    }

    fn bench_run_client<'a>(
        &'a self,
        name: &'a str,
        req: crate::bench::ClientRequest,
    ) -> BoxFuture<'a, Result<crate::backend::ExecResult, BackendError>> {
        crate::bench::run_client(self, name, req)
    }

    fn bench_cleanup<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<usize, BackendError>> {
        crate::bench::cleanup(self, name)
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            self.docker
                .ping()
                .await
                .map(|_| ())
                .map_err(|e| BackendError::Unavailable {
                    detail: e.to_string(),
                })
        })
    }

    /// Holds `GET /events` open (filtered to the engine's own `daemon` events, which are rare,
    /// so the stream is idle) and returns when it ends. Why this signal and not another:
    /// - polling `/_ping` misses a restart between two polls, and with socket activation
    ///   (`docker.socket`) systemd keeps the socket listening while dockerd restarts, so a
    ///   ping during the restart is only slow, never refused;
    /// - the engine's ID (`/info`) is kept on disk and survives restarts, and the API reports no
    ///   start time of the engine;
    /// - a connection held open to the engine is closed by its exit whatever the timing: each
    ///   restart ends the stream exactly once.
    ///
    /// A stream ended for another reason (a proxy in front of the socket timing it out) looks
    /// the same; the daemon then reconciles once more than needed, which is harmless, and spaces
    /// its reconciles out. An engine that refuses the request (no events API) is polled instead.
    fn engine_gone(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            self.ping().await?;
            let options = bollard::query_parameters::EventsOptions {
                filters: Some(HashMap::from([(
                    "type".to_string(),
                    vec!["daemon".to_string()],
                )])),
                ..Default::default()
            };
            let mut events = Box::pin(self.docker.events(Some(options)));
            loop {
                match events.next().await {
                    Some(Ok(_)) => {}
                    Some(Err(e))
                        if matches!(
                            e,
                            bollard::errors::Error::DockerResponseServerError { .. }
                        ) =>
                    {
                        tracing::warn!(error = %e, "the engine refuses its event stream; asking it every {:?} instead", crate::backend::ENGINE_POLL);
                        return crate::backend::poll_until_gone(self, crate::backend::ENGINE_POLL)
                            .await;
                    }
                    Some(Err(e)) => {
                        tracing::info!(error = %e, "the engine's event stream broke: the engine went away");
                        return Ok(());
                    }
                    None => {
                        tracing::info!("the engine's event stream ended: the engine went away");
                        return Ok(());
                    }
                }
            }
        })
    }
}
