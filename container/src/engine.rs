//! A Docker engine of the environment's own (`[docker]` in kennel.toml; the seed layout with
//! `.devcontainer/dind-whitelist.txt`): docs/environments.md, "Docker inside an environment".
//!
//! - container `kennel-<env>-docker` runs `dockerd` from an image built from the host's own
//!   Docker packages ([`engine_rootfs`]); its data is the volume `kennel-<env>-docker-data`
//!   (kept by `kennel down` and refresh, removed by `--purge`);
//! - it sits on a network of its own, `kennel-<env>-docker-net` (internal, no host address: the
//!   environment network's settings), where the `dind` egress profile's proxy is its only peer.
//!   Image pulls (dockerd's `HTTP(S)_PROXY`) and nested containers (the sandbox's
//!   `~/.docker/config.json` `proxies`, which the docker CLI injects) go through that proxy;
//! - the sandbox reaches it through a Unix socket on the volume `kennel-<env>-docker-sock`
//!   (`DOCKER_HOST`), never over a network: the engine has no address on the sandbox's network,
//!   so nested containers (which the agent controls fully, `--privileged --network host`
//!   included) cannot reach the environment's proxy, services or sandbox, and there are no TLS
//!   certificates to manage.
//!
//! Its isolation settings ([`engine_container`]) are the measured least privileges of each
//! [`DockerMode`]; `crate::hardening` holds everything else's.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerCreateBody, DeviceMapping, EndpointSettings, HostConfig, HostConfigCgroupnsModeEnum,
    NetworkConnectRequest, NetworkCreateRequest, NetworkingConfig, RestartPolicy,
    RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    DownloadFromContainerOptions, InspectContainerOptions, UploadToContainerOptions,
};
use futures_util::StreamExt;

use crate::backend::{EnvPlan, LABEL_ENV, LABEL_WORKSPACE};
use crate::docker::DockerBackend;
use crate::error::{BackendError, ImageError};
use crate::hardening;
use crate::image::{RootfsImage, ensure_image, host_libraries};
use crate::spec::{DOCKER_EGRESS_PROFILE, DockerMode};

/// Repository of the engine image (tagged with its content hash, like the proxy image).
pub const ENGINE_REPO: &str = "kennel-docker-engine";
/// Where the engine and the sandbox see the socket volume.
pub const SOCKET_DIR: &str = "/run/kennel-docker";
/// The engine's socket, as the sandbox's `DOCKER_HOST` names it.
pub const DOCKER_HOST: &str = "unix:///run/kennel-docker/docker.sock";
/// Where the engine keeps its data (the data volume).
pub const DATA_DIR: &str = "/var/lib/docker";
/// The entrypoint script inside the engine image.
pub const ENTRYPOINT: &str = "/usr/local/lib/kennel/engine.sh";
/// Role label of the engine container.
pub const ROLE_ENGINE: &str = "docker-engine";
/// Role label of the engine's network.
pub const ROLE_NETWORK: &str = "docker-network";
/// Role label of the socket volume (removed by `kennel down`).
pub const ROLE_SOCKET_VOLUME: &str = "docker-socket";
/// Role label of the data volume (removed by `kennel down --purge`).
pub const ROLE_DATA_VOLUME: &str = "docker-data";
/// How long `create_env` waits for the engine's API to listen.
const ENGINE_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// What dockerd logs once its API listens.
const READY_LINE: &str = "API listen on";

const ENTRYPOINT_SCRIPT: &str = include_str!("engine-entrypoint.sh");
const ROOTLESS_SCRIPT: &str = include_str!("engine-rootless.sh");

/// Names of the engine's Docker objects.
pub mod names {
    /// The engine container.
    pub fn engine(env: &str) -> String {
        format!("kennel-{env}-docker")
    }
    /// The engine's own internal network (the `dind` profile's proxy is its only peer).
    pub fn network(env: &str) -> String {
        format!("kennel-{env}-docker-net")
    }
    /// The volume holding the engine's socket (shared with the sandbox).
    pub fn socket_volume(env: &str) -> String {
        format!("kennel-{env}-docker-sock")
    }
    /// The engine's data (`/var/lib/docker`): images, build cache, nested containers.
    pub fn data_volume(env: &str) -> String {
        format!("kennel-{env}-docker-data")
    }
    /// The `dind` egress profile's proxy container.
    pub fn dind_proxy(env: &str) -> String {
        crate::backend::names::profile_proxy(env, crate::spec::DOCKER_EGRESS_PROFILE)
    }
}

/// A host program the engine image carries: its path in the image and where the host may have
/// it.
struct Tool {
    image_path: &'static str,
    host: &'static [&'static str],
    /// Debian package that provides it (named in the error when missing).
    package: &'static str,
    /// Needed by the rootless mode only.
    rootless_only: bool,
}

const TOOLS: &[Tool] = &[
    Tool {
        image_path: "/usr/bin/dockerd",
        host: &["/usr/sbin/dockerd", "/usr/bin/dockerd"],
        package: "docker.io",
        rootless_only: false,
    },
    Tool {
        image_path: "/usr/bin/containerd",
        host: &["/usr/bin/containerd", "/usr/sbin/containerd"],
        package: "containerd",
        rootless_only: false,
    },
    Tool {
        image_path: "/usr/bin/containerd-shim-runc-v2",
        host: &["/usr/bin/containerd-shim-runc-v2"],
        package: "containerd",
        rootless_only: false,
    },
    Tool {
        image_path: "/usr/bin/runc",
        host: &["/usr/sbin/runc", "/usr/bin/runc"],
        package: "runc",
        rootless_only: false,
    },
    Tool {
        image_path: "/usr/bin/docker-init",
        host: &[
            "/usr/bin/tini-static",
            "/usr/bin/docker-init",
            "/usr/libexec/docker/docker-init",
        ],
        package: "tini",
        rootless_only: false,
    },
    Tool {
        image_path: "/usr/bin/xtables-nft-multi",
        host: &["/usr/sbin/xtables-nft-multi"],
        package: "iptables",
        rootless_only: false,
    },
    Tool {
        image_path: "/usr/bin/rootlesskit",
        host: &["/usr/bin/rootlesskit"],
        package: "rootlesskit",
        rootless_only: true,
    },
    Tool {
        // dockerd under rootlesskit refuses to start without it (published ports).
        image_path: "/usr/bin/rootlesskit-docker-proxy",
        host: &["/usr/bin/rootlesskit-docker-proxy"],
        package: "rootlesskit",
        rootless_only: true,
    },
    Tool {
        image_path: "/usr/bin/slirp4netns",
        host: &["/usr/bin/slirp4netns"],
        package: "slirp4netns",
        rootless_only: true,
    },
    Tool {
        image_path: "/usr/bin/newuidmap",
        host: &["/usr/bin/newuidmap"],
        package: "uidmap",
        rootless_only: true,
    },
    Tool {
        image_path: "/usr/bin/newgidmap",
        host: &["/usr/bin/newgidmap"],
        package: "uidmap",
        rootless_only: true,
    },
    Tool {
        image_path: "/usr/bin/nsenter",
        host: &["/usr/bin/nsenter"],
        package: "util-linux",
        rootless_only: true,
    },
    Tool {
        image_path: "/usr/bin/ip",
        host: &["/usr/bin/ip", "/bin/ip", "/usr/sbin/ip", "/sbin/ip"],
        package: "iproute2",
        rootless_only: true,
    },
];

/// busybox applets the entrypoint scripts use.
const APPLETS: &[&str] = &[
    "sh", "mkdir", "rm", "chown", "chmod", "mount", "umount", "su", "cat", "echo", "ls", "ps",
    "sleep", "test", "[",
];

/// Finds a tool on the host, or says which package provides it.
fn find_tool(t: &Tool) -> Result<PathBuf, ImageError> {
    t.host
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .map(Path::to_path_buf)
        .ok_or_else(|| ImageError::HostToolMissing {
            image: ENGINE_REPO.into(),
            tool: t
                .image_path
                .rsplit('/')
                .next()
                .unwrap_or(t.image_path)
                .into(),
            looked: t.host.join(", "),
            package: t.package.into(),
        })
}

/// The engine image's content, from host files: dockerd, containerd, its runc shim, runc,
/// docker-init, iptables (nft) with its extensions, and for `rootless` rootlesskit,
/// slirp4netns, newuidmap/newgidmap (setuid root, as Debian ships them), nsenter and ip; each
/// with the libraries `ldd` lists; busybox for the entrypoint scripts.
pub fn engine_rootfs(mode: DockerMode) -> Result<RootfsImage, ImageError> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        return Err(ImageError::HostToolMissing {
            image: ENGINE_REPO.into(),
            tool: "busybox".into(),
            looked: busybox.display().to_string(),
            package: "busybox-static".into(),
        });
    }
    let mut img = RootfsImage::new().host_file("/bin/busybox", busybox, 0o755)?;
    for a in APPLETS {
        img = img.symlink(&format!("/bin/{a}"), "/bin/busybox");
    }
    let mut libs = std::collections::BTreeSet::new();
    for t in TOOLS {
        if t.rootless_only && mode != DockerMode::Rootless {
            continue;
        }
        let host = find_tool(t)?;
        // newuidmap/newgidmap must stay setuid root: they write the user namespace's id maps.
        let file_mode = if t.image_path.ends_with("idmap") {
            0o4755
        } else {
            0o755
        };
        img = img.host_file(t.image_path, &host, file_mode)?;
        libs.extend(host_libraries(ENGINE_REPO, &host)?);
    }
    for lib in libs {
        img = img.host_file(&lib.display().to_string(), &lib, 0o755)?;
    }
    for name in [
        "iptables",
        "iptables-save",
        "iptables-restore",
        "ip6tables",
        "ip6tables-save",
        "ip6tables-restore",
    ] {
        img = img.symlink(&format!("/usr/bin/{name}"), "xtables-nft-multi");
    }
    // iptables' match and target extensions (dockerd uses several).
    for dir in [
        "/usr/lib/x86_64-linux-gnu/xtables",
        "/usr/lib/aarch64-linux-gnu/xtables",
    ] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "so") && p.is_file() {
                img = img.host_file(&p.display().to_string(), &p, 0o644)?;
            }
        }
    }
    let ca = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if ca.is_file() {
        img = img.host_file("/etc/ssl/certs/ca-certificates.crt", ca, 0o644)?;
    }
    Ok(img
        .file(ENTRYPOINT, ENTRYPOINT_SCRIPT, 0o755)
        .file("/usr/local/lib/kennel/rootless.sh", ROOTLESS_SCRIPT, 0o755)
        .file("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .file("/etc/group", "root:x:0:\n", 0o644)
        .file("/etc/nsswitch.conf", "hosts: files dns\n", 0o644)
        .dir("/tmp")
        .dir("/root")
        .dir("/home")
        .dir("/run")
        .dir(DATA_DIR)
        .dir(SOCKET_DIR)
        .env("PATH=/usr/local/bin:/usr/bin:/usr/sbin:/bin")
        .entrypoint(&["/bin/sh", ENTRYPOINT])
        .label("dev.kennel.managed", "true")
        .label("dev.kennel.image", "docker-engine"))
}

/// Tags already loaded by this process, per mode (packing the ~200 MB image hashes it).
static LOADED: Mutex<Vec<(DockerMode, String)>> = Mutex::new(Vec::new());

/// Builds and loads the engine image for `mode` unless the engine has it; returns its tag.
pub async fn ensure_engine_image(
    docker: &DockerBackend,
    mode: DockerMode,
) -> Result<String, ImageError> {
    let known = LOADED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .find(|(m, _)| *m == mode)
        .map(|(_, t)| t.clone());
    if let Some(tag) = known
        && crate::image::image_exists(docker, &tag).await?
    {
        return Ok(tag);
    }
    let img = tokio::task::spawn_blocking(move || engine_rootfs(mode))
        .await
        .map_err(|e| ImageError::Assemble {
            image: ENGINE_REPO.into(),
            source: std::io::Error::other(e.to_string()),
        })??;
    let tag = ensure_image(docker, ENGINE_REPO, &img).await?;
    LOADED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push((mode, tag.clone()));
    Ok(tag)
}

/// What this host lacks for `mode`, if anything (checked before anything is created).
pub fn host_lacks(mode: DockerMode) -> Option<String> {
    lacks(mode, Path::new("/dev/net/tun").exists())
}

fn lacks(mode: DockerMode, has_tun: bool) -> Option<String> {
    match mode {
        // slirp4netns needs a tap device in the engine's network namespace.
        DockerMode::Rootless if !has_tun => Some(
            "the rootless engine needs /dev/net/tun on the host (kernel module `tun`) for slirp4netns; load it (`modprobe tun`) or use `[docker] mode = \"privileged\"`".into(),
        ),
        _ => None,
    }
}

/// The engine's network: the environment network's settings (internal, no host address on the
/// bridge, no IPv6), its own name and role.
pub fn network(plan: &EnvPlan) -> NetworkCreateRequest {
    hardening::isolated_network(plan, names::network(&plan.spec.name), ROLE_NETWORK)
}

fn volume(plan: &EnvPlan, name: String, role: &str) -> VolumeCreateRequest {
    let env = &plan.spec.name;
    let mut l = hardening::labels(env, role, &plan.state_labels);
    l.insert(
        LABEL_WORKSPACE.into(),
        plan.spec.workspace.display().to_string(),
    );
    VolumeCreateRequest {
        name: Some(name),
        driver: Some("local".into()),
        labels: Some(l),
        ..Default::default()
    }
}

/// The socket volume (engine and sandbox; removed with the environment).
pub fn socket_volume(plan: &EnvPlan) -> VolumeCreateRequest {
    volume(
        plan,
        names::socket_volume(&plan.spec.name),
        ROLE_SOCKET_VOLUME,
    )
}

/// The data volume (kept across refresh and `kennel down`).
pub fn data_volume(plan: &EnvPlan) -> VolumeCreateRequest {
    volume(plan, names::data_volume(&plan.spec.name), ROLE_DATA_VOLUME)
}

/// The proxy URL of the `dind` profile's proxy at `ip` (the engine and nested containers use
/// the address: nested containers get no resolver for the environment's names).
pub fn proxy_url(ip: Ipv4Addr) -> String {
    format!("http://{ip}:{}", hardening::PROXY_PORT)
}

/// The engine container for `mode`. Both modes: on the engine network only, no resolver (the
/// proxy is given by address), data and socket volumes, the spec's CPU and memory limits (the
/// nested containers live inside them), restart unless stopped, and none of the sandbox's
/// hardening that the engine measurably cannot run with:
///
/// - `privileged`: root; `SYS_ADMIN` and `NET_ADMIN` added to Docker's default capabilities;
///   no seccomp filter (runc needs `keyctl` and more); a private cgroup namespace whose cgroups
///   the entrypoint remounts read-write (cgroup v1 is mounted read-only otherwise). Docker's own
///   `--privileged` is not used: it adds every capability and host device, and on hosts whose
///   engine lacks a capability in its bounding set (`CAP_SYS_RESOURCE` here) it cannot start.
/// - `rootless`: capabilities dropped but `SYS_ADMIN` (newuidmap writes the id maps), `SETUID`,
///   `SETGID` (newuidmap, su), `CHOWN`, `DAC_OVERRIDE`, `FOWNER` (the entrypoint prepares the
///   volumes); no seccomp filter; `/proc` unmasked (the nested `/proc` mount is refused under
///   Docker's masks); `/dev/net/tun`; setuid allowed (newuidmap). dockerd itself runs as the
///   sandbox's uid, root only inside its user namespace.
pub fn engine_container(
    plan: &EnvPlan,
    image: &str,
    mode: DockerMode,
    proxy: &str,
) -> ContainerCreateBody {
    let spec = &plan.spec;
    let env = &spec.name;
    let (uid, gid) = hardening::user_ids(&spec.user);
    let r = &spec.resources;
    let mut host = HostConfig {
        binds: Some(vec![
            format!("{}:{DATA_DIR}:rw", names::data_volume(env)),
            format!("{}:{SOCKET_DIR}:rw", names::socket_volume(env)),
        ]),
        network_mode: Some(names::network(env)),
        dns: Some(vec![hardening::SANDBOX_DNS.into()]),
        dns_search: Some(vec![]),
        cgroupns_mode: Some(HostConfigCgroupnsModeEnum::PRIVATE),
        nano_cpus: Some((r.cpus * 1e9) as i64),
        memory: Some(i64::try_from(r.memory_bytes).unwrap_or(i64::MAX)),
        pids_limit: Some(r.pids.max(4096)),
        ipc_mode: Some("private".into()),
        init: Some(false),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        }),
        privileged: Some(false),
        ..Default::default()
    };
    let unconfined = vec![
        "seccomp=unconfined".to_string(),
        "apparmor=unconfined".to_string(),
    ];
    match mode {
        DockerMode::Privileged => {
            host.cap_add = Some(vec!["SYS_ADMIN".into(), "NET_ADMIN".into()]);
            host.security_opt = Some(unconfined);
        }
        DockerMode::Rootless => {
            host.cap_drop = Some(vec!["ALL".into()]);
            host.cap_add = Some(
                [
                    "SYS_ADMIN",
                    "SETUID",
                    "SETGID",
                    "CHOWN",
                    "DAC_OVERRIDE",
                    "FOWNER",
                ]
                .iter()
                .map(|c| c.to_string())
                .collect(),
            );
            host.security_opt = Some(unconfined);
            // `--security-opt systempaths=unconfined`.
            host.masked_paths = Some(vec![]);
            host.readonly_paths = Some(vec![]);
            host.devices = Some(vec![DeviceMapping {
                path_on_host: Some("/dev/net/tun".into()),
                path_in_container: Some("/dev/net/tun".into()),
                cgroup_permissions: Some("rwm".into()),
            }]);
        }
    }
    let mut labels = hardening::labels(env, ROLE_ENGINE, &plan.state_labels);
    labels.insert(LABEL_DOCKER_MODE.into(), mode.as_str().into());
    ContainerCreateBody {
        image: Some(image.to_string()),
        hostname: Some(format!("{env}-docker")),
        user: Some("0:0".into()),
        env: Some(vec![
            format!("KENNEL_DOCKER_MODE={mode}"),
            format!("KENNEL_DOCKER_UID={uid}"),
            format!("KENNEL_DOCKER_GID={gid}"),
            format!("KENNEL_DOCKER_PROXY={proxy}"),
        ]),
        labels: Some(labels),
        host_config: Some(host),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                names::network(env),
                EndpointSettings::default(),
            )])),
        }),
        ..Default::default()
    }
}

/// Label on the engine container: its [`DockerMode`] (read back by `kennel inspect`/`doctor`).
pub const LABEL_DOCKER_MODE: &str = "dev.kennel.docker-mode";

/// The sandbox's additions when the environment has an engine: the socket volume at
/// [`SOCKET_DIR`] and `DOCKER_HOST`.
pub fn sandbox_binds(env: &str) -> Vec<String> {
    vec![format!("{}:{SOCKET_DIR}:rw", names::socket_volume(env))]
}

/// `~/.docker/config.json` with `proxies.default` set to `proxy` (the docker CLI passes them to
/// nested containers and builds as `HTTP(S)_PROXY`); the rest of an existing file is kept.
pub fn docker_config_json(existing: Option<&[u8]>, proxy: &str) -> Result<Vec<u8>, String> {
    let mut doc: serde_json::Value = match existing {
        Some(b) if !b.iter().all(u8::is_ascii_whitespace) => serde_json::from_slice(b)
            .map_err(|e| format!("~/.docker/config.json is not JSON ({e}); fix or remove it"))?,
        _ => serde_json::json!({}),
    };
    let obj = doc
        .as_object_mut()
        .ok_or("~/.docker/config.json is not a JSON object; fix or remove it")?;
    let proxies = obj
        .entry("proxies")
        .or_insert_with(|| serde_json::json!({}));
    if !proxies.is_object() {
        *proxies = serde_json::json!({});
    }
    if let Some(p) = proxies.as_object_mut() {
        p.insert(
            "default".into(),
            serde_json::json!({
                "httpProxy": proxy,
                "httpsProxy": proxy,
                "noProxy": "localhost,127.0.0.1,::1",
            }),
        );
    }
    let mut out = serde_json::to_vec_pretty(&doc).map_err(|e| e.to_string())?;
    out.push(b'\n');
    Ok(out)
}

impl DockerBackend {
    /// Starts the environment's engine (when the spec has `[docker]`): its network with the
    /// `dind` profile's proxy connected, its volumes, the image, the container; waits until its
    /// API listens. Returns the proxy URL nested containers use, for the sandbox's docker config.
    pub(crate) async fn start_engine(
        &self,
        plan: &EnvPlan,
        created: &mut Vec<crate::docker::Created>,
    ) -> Result<Option<String>, BackendError> {
        let Some(docker) = plan.spec.docker else {
            return Ok(None);
        };
        let env = &plan.spec.name;
        let invalid = |message: String| BackendError::InvalidPlan {
            env: env.clone(),
            message,
        };
        if let Some(lack) = host_lacks(docker.mode) {
            return Err(invalid(format!(
                "[docker] mode = \"{}\" cannot run on this host: {lack}",
                docker.mode
            )));
        }
        let image = ensure_engine_image(self, docker.mode)
            .await
            .map_err(|e| invalid(format!("the Docker engine image: {e}")))?;

        let net = names::network(env);
        let res = self
            .docker()
            .create_network(network(plan))
            .await
            .map_err(|e| BackendError::engine("create network", &net, e))?;
        created.push(crate::docker::Created::Network(res.id));

        // The `dind` profile's proxy joins the engine's network (alias `proxy-dind`).
        let proxy = names::dind_proxy(env);
        self.docker()
            .connect_network(
                &net,
                NetworkConnectRequest {
                    container: proxy.clone(),
                    endpoint_config: Some(EndpointSettings {
                        aliases: Some(vec![hardening::profile_proxy_alias(
                            DOCKER_EGRESS_PROFILE,
                        )]),
                        ..Default::default()
                    }),
                },
            )
            .await
            .map_err(|e| {
                if matches!(&e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) {
                    invalid(format!(
                        "[docker] needs the egress profile {DOCKER_EGRESS_PROFILE:?} (its proxy {proxy} does not exist); define [egress.profiles.{DOCKER_EGRESS_PROFILE}] in kennel.toml"
                    ))
                } else {
                    BackendError::engine("connect the dind proxy to network", &net, e)
                }
            })?;
        let proxy_ip = self
            .container_ip(&proxy, &net)
            .await?
            .ok_or_else(|| invalid(format!("{proxy} got no address on {net}")))?;
        let proxy_url = proxy_url(proxy_ip);

        for req in [socket_volume(plan), data_volume(plan)] {
            let name = req.name.clone().unwrap_or_default();
            match self.docker().inspect_volume(&name).await {
                Ok(v) if v.labels.get(LABEL_ENV).map(String::as_str) == Some(env.as_str()) => {}
                Ok(_) => {
                    return Err(invalid(format!(
                        "volume {name} exists but is not this environment's; remove or rename it"
                    )));
                }
                Err(e) if is_404(&e) => {
                    self.docker()
                        .create_volume(req)
                        .await
                        .map_err(|e| BackendError::engine("create volume", &name, e))?;
                    // Only the socket volume goes with a failed create; data is kept like home.
                    if name == names::socket_volume(env) {
                        created.push(crate::docker::Created::Volume(name));
                    }
                }
                Err(e) => return Err(BackendError::engine("inspect volume", &name, e)),
            }
        }

        let engine = names::engine(env);
        if let Some(p) = &plan.progress {
            let _ = p.send(format!(
                "Docker engine ({}): {}",
                docker.mode,
                docker.mode.risk()
            ));
        }
        self.create_and_start(
            &engine,
            engine_container(plan, &image, docker.mode, &proxy_url),
            created,
        )
        .await?;
        self.wait_engine_ready(env, &engine).await?;
        Ok(Some(proxy_url))
    }

    /// Removes volume `volume` if it is environment `env`'s (labelled so); others are left.
    pub(crate) async fn remove_own_volume(
        &self,
        env: &str,
        volume: &str,
    ) -> Result<(), BackendError> {
        match self.docker().inspect_volume(volume).await {
            Ok(v) if v.labels.get(LABEL_ENV).map(String::as_str) == Some(env) => {}
            Ok(_) => return Ok(()),
            Err(e) if is_404(&e) => return Ok(()),
            Err(e) => return Err(BackendError::engine("inspect volume", volume, e)),
        }
        match self
            .docker()
            .remove_volume(
                volume,
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_404(&e) => Ok(()),
            Err(e) => Err(BackendError::engine("remove volume", volume, e)),
        }
    }

    /// Waits until dockerd in `engine` logs that its API listens, or fails with its logs.
    async fn wait_engine_ready(&self, env: &str, engine: &str) -> Result<(), BackendError> {
        let deadline = Instant::now() + ENGINE_READY_TIMEOUT;
        loop {
            let logs = self.container_logs_tail(engine, 200).await;
            if logs.contains(READY_LINE) {
                return Ok(());
            }
            let info = self
                .docker()
                .inspect_container(engine, None::<InspectContainerOptions>)
                .await
                .ok();
            // A dockerd that exited is restarted by the restart policy: one restart is a failure.
            let restarted = info
                .as_ref()
                .and_then(|i| i.restart_count)
                .is_some_and(|n| n > 0);
            let running = !restarted
                && info
                    .and_then(|i| i.state)
                    .and_then(|s| s.running)
                    .unwrap_or(false);
            if !running || Instant::now() >= deadline {
                let tail: Vec<&str> = logs.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(BackendError::InvalidPlan {
                    env: env.to_string(),
                    message: format!(
                        "the Docker engine {engine} {}; its last log lines:\n{}",
                        if running {
                            "did not start listening in time"
                        } else {
                            "exited"
                        },
                        tail.join("\n")
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Writes `~/.docker/config.json` (its `proxies`, [`docker_config_json`]) into the home
    /// volume through the created, not yet started `container` (the sandbox).
    pub(crate) async fn write_docker_config(
        &self,
        plan: &EnvPlan,
        container: &str,
        proxy: &str,
    ) -> Result<(), BackendError> {
        let spec = &plan.spec;
        let path = format!("{}/.docker/config.json", spec.home);
        let existing = self.read_file_from(container, &path).await;
        let json = docker_config_json(existing.as_deref(), proxy).map_err(|m| {
            BackendError::InvalidPlan {
                env: spec.name.clone(),
                message: m,
            }
        })?;
        let (uid, gid) = hardening::user_ids(&spec.user);
        let archive =
            config_archive(&json, uid, gid).map_err(|e| BackendError::engine("pack", &path, e))?;
        self.docker()
            .upload_to_container(
                container,
                Some(UploadToContainerOptions {
                    path: spec.home.clone(),
                    ..Default::default()
                }),
                bollard::body_full(archive.into()),
            )
            .await
            .map_err(|e| BackendError::engine("write ~/.docker/config.json into", container, e))
    }

    /// A small file's content from a container (`None` when missing or unreadable).
    async fn read_file_from(&self, container: &str, path: &str) -> Option<Vec<u8>> {
        let mut stream = self.docker().download_from_container(
            container,
            Some(DownloadFromContainerOptions {
                path: path.to_string(),
            }),
        );
        let mut tar_bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            tar_bytes.extend_from_slice(&chunk.ok()?);
            if tar_bytes.len() > 4 << 20 {
                return None;
            }
        }
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let mut entry = archive.entries().ok()?.next()?.ok()?;
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut out).ok()?;
        Some(out)
    }
}

/// A tar of `.docker/` and `.docker/config.json` owned by `uid:gid` (unpacked in home).
fn config_archive(json: &[u8], uid: u32, gid: u32) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_uid(u64::from(uid));
    h.set_gid(u64::from(gid));
    h.set_mode(0o700);
    h.set_size(0);
    b.append_data(&mut h, ".docker/", std::io::empty())?;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_uid(u64::from(uid));
    h.set_gid(u64::from(gid));
    h.set_mode(0o600);
    h.set_size(json.len() as u64);
    b.append_data(&mut h, ".docker/config.json", json)?;
    b.into_inner()
}

fn is_404(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_keeps_the_users_keys_and_sets_the_proxies() {
        let out = docker_config_json(
            Some(br#"{"auths":{"r.example":{"auth":"x"}},"proxies":{"default":{"httpProxy":"http://evil:1"},"other":{}}}"#),
            "http://10.1.2.3:8888",
        )
        .expect("json");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("parse");
        assert_eq!(v["auths"]["r.example"]["auth"], "x");
        assert_eq!(v["proxies"]["default"]["httpProxy"], "http://10.1.2.3:8888");
        assert_eq!(
            v["proxies"]["default"]["httpsProxy"],
            "http://10.1.2.3:8888"
        );
        assert!(v["proxies"]["other"].is_object());
        let fresh = docker_config_json(None, "http://p:1").expect("json");
        let v: serde_json::Value = serde_json::from_slice(&fresh).expect("parse");
        assert_eq!(v["proxies"]["default"]["httpProxy"], "http://p:1");
        assert!(docker_config_json(Some(b"[1]"), "http://p:1").is_err());
        assert!(docker_config_json(Some(b"{nope"), "http://p:1").is_err());
    }

    fn plan(mode: DockerMode) -> EnvPlan {
        let mut spec = crate::spec::EnvSpec::parse_str(
            "name = \"dk\"\n",
            Path::new("/kennel.toml"),
            Path::new("/"),
        )
        .expect("spec");
        spec.docker = Some(crate::spec::DockerSpec { mode });
        EnvPlan {
            spec,
            policy_dir: PathBuf::from("/p"),
            proxy_image: "kennel-proxy:x".into(),
            state_labels: vec![],
            progress: None,
            access_log_dir: None,
        }
    }

    /// Each mode gets exactly the privileges measured as needed, and nothing is reachable but
    /// its own network; the engine never joins the sandbox's network.
    #[test]
    fn engine_privileges_are_the_measured_minimum_of_each_mode() {
        let p = plan(DockerMode::Rootless);
        let body = engine_container(&p, "img", DockerMode::Rootless, "http://10.0.0.2:8888");
        let host = body.host_config.as_ref().expect("host config");
        assert_eq!(host.privileged, Some(false));
        assert_eq!(host.cap_drop.as_deref(), Some(&["ALL".to_string()][..]));
        let caps = host.cap_add.clone().unwrap_or_default();
        assert!(!caps.contains(&"NET_ADMIN".to_string()), "{caps:?}");
        assert!(caps.contains(&"SYS_ADMIN".to_string()), "{caps:?}");
        assert_eq!(host.network_mode.as_deref(), Some("kennel-dk-docker-net"));
        assert_eq!(host.masked_paths, Some(vec![]));
        assert!(host.devices.is_some());
        assert_eq!(
            host.cgroupns_mode,
            Some(HostConfigCgroupnsModeEnum::PRIVATE)
        );
        let eps = body
            .networking_config
            .as_ref()
            .and_then(|n| n.endpoints_config.as_ref())
            .expect("endpoints");
        assert_eq!(eps.keys().collect::<Vec<_>>(), vec!["kennel-dk-docker-net"]);
        let env = body.env.clone().unwrap_or_default();
        assert!(
            env.contains(&"KENNEL_DOCKER_UID=1001".to_string()),
            "{env:?}"
        );
        assert!(env.contains(&"KENNEL_DOCKER_PROXY=http://10.0.0.2:8888".to_string()));

        let p = plan(DockerMode::Privileged);
        let body = engine_container(&p, "img", DockerMode::Privileged, "http://10.0.0.2:8888");
        let host = body.host_config.as_ref().expect("host config");
        assert_eq!(host.privileged, Some(false), "not Docker's --privileged");
        assert_eq!(
            host.cap_add.clone().unwrap_or_default(),
            vec!["SYS_ADMIN".to_string(), "NET_ADMIN".to_string()]
        );
        assert!(host.devices.is_none());
        assert!(host.masked_paths.is_none(), "/proc stays masked");
        assert_eq!(
            body.labels.as_ref().and_then(|l| l.get(LABEL_DOCKER_MODE)),
            Some(&"privileged".to_string())
        );
    }

    #[test]
    fn docker_mode_is_required_and_errors_name_file_line_and_key() {
        let path = Path::new("/w/kennel.toml");
        let e = crate::spec::EnvSpec::parse_str("name = \"a\"\n\n[docker]\n", path, Path::new("/"))
            .expect_err("mode missing")
            .to_string();
        assert!(
            e.starts_with("/w/kennel.toml:3:")
                && e.contains("docker.mode")
                && e.contains("is required"),
            "{e}"
        );
        let e = crate::spec::EnvSpec::parse_str(
            "name = \"a\"\n[docker]\nmode = \"root\"\n",
            path,
            Path::new("/"),
        )
        .expect_err("bad mode")
        .to_string();
        assert!(
            e.starts_with("/w/kennel.toml:3:") && e.contains("\"root\" is not a mode"),
            "{e}"
        );
        let e = crate::spec::EnvSpec::parse_str(
            "name = \"a\"\n[docker]\nmode = \"rootless\"\ntls = true\n",
            path,
            Path::new("/"),
        )
        .expect_err("unknown key");
        assert!(e.to_string().contains("tls"), "{e}");
        // Without the `dind` egress profile the engine would have no way out: refused.
        let e = crate::spec::EnvSpec::parse_str(
            "name = \"a\"\n[docker]\nmode = \"rootless\"\n",
            path,
            Path::new("/"),
        )
        .expect_err("no dind profile")
        .to_string();
        assert!(
            e.starts_with("/w/kennel.toml:2:")
                && e.contains("key `docker`")
                && e.contains("[egress.profiles.dind]"),
            "{e}"
        );
        for (text, mode) in [
            ("rootless", DockerMode::Rootless),
            ("privileged", DockerMode::Privileged),
        ] {
            let s = crate::spec::EnvSpec::parse_str(
                &format!(
                    "name = \"a\"\n[docker]\nmode = \"{text}\"\n[egress.profiles.dind]\ninclude = []\n"
                ),
                path,
                Path::new("/"),
            )
            .expect("valid");
            assert_eq!(s.docker, Some(crate::spec::DockerSpec { mode }));
        }
    }

    /// The seed layout with dind-whitelist.txt gets an engine in the least privileged mode
    /// measured to work; kennel.toml without `[docker]` gets none, and a warning saying so.
    #[test]
    fn the_seed_layout_with_a_dind_whitelist_gets_a_rootless_engine() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join(".devcontainer")).expect("mkdir");
        let ov = crate::spec::SpecOverrides::default();
        let without = crate::spec::EnvSpec::from_workspace(d.path(), &ov).expect("seed");
        assert_eq!(without.docker, None);
        std::fs::write(
            d.path().join(crate::spec::SEED_DIND_WHITELIST),
            "registry-1.docker.io\n",
        )
        .expect("w");
        let with = crate::spec::EnvSpec::from_workspace(d.path(), &ov).expect("seed");
        assert_eq!(
            with.docker,
            Some(crate::spec::DockerSpec {
                mode: DockerMode::Rootless
            })
        );
        std::fs::write(d.path().join("kennel.toml"), "name = \"t\"\n").expect("w");
        let toml = crate::spec::EnvSpec::from_workspace(d.path(), &ov).expect("toml");
        assert_eq!(toml.docker, None);
        assert!(
            toml.warnings
                .iter()
                .any(|w| w.contains("dind-whitelist.txt") && w.contains("no [docker]")),
            "{:?}",
            toml.warnings
        );
    }

    /// A mode this host cannot run fails `kennel up` with what the host lacks (start_engine
    /// puts this text after `[docker] mode = "…" cannot run on this host:`).
    #[test]
    fn a_host_without_tun_cannot_run_the_rootless_engine_and_is_told_why() {
        let why = lacks(DockerMode::Rootless, false).expect("lacks tun");
        assert!(
            why.contains("/dev/net/tun") && why.contains("privileged"),
            "{why}"
        );
        assert_eq!(lacks(DockerMode::Rootless, true), None);
        assert_eq!(lacks(DockerMode::Privileged, false), None);
    }

    #[test]
    fn the_engine_network_is_internal_without_a_host_address() {
        let p = plan(DockerMode::Rootless);
        let n = network(&p);
        assert_eq!(n.name, "kennel-dk-docker-net");
        assert_eq!(n.internal, Some(true));
        assert_eq!(
            n.options
                .as_ref()
                .and_then(|o| o.get(hardening::INHIBIT_IPV4))
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(
            n.labels
                .as_ref()
                .and_then(|l| l.get(crate::backend::LABEL_ROLE))
                .map(String::as_str),
            Some(ROLE_NETWORK)
        );
    }
}
