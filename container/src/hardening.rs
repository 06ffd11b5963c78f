//! Every hardening choice for kennel's Docker objects, in one reviewable place.
//!
//! The functions here are pure: they turn a plan into engine request bodies. [`crate::docker`]
//! only sends them. `docs/environments.md` explains the isolation model these settings implement
//! and what they do not protect against.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HealthConfig, HostConfig, Ipam,
    IpamConfig, NetworkCreateRequest, NetworkingConfig, ResourcesUlimits, RestartPolicy,
    RestartPolicyNameEnum, VolumeCreateRequest,
};

use crate::backend::{
    EnvPlan, LABEL_ENV, LABEL_MANAGED, LABEL_PROFILE, LABEL_ROLE, LABEL_SERVICE, LABEL_WORKSPACE,
    ROLE_PROFILE_PROXY, names,
};
use crate::git::GitMounts;
use crate::spec::{EnvSpec, ServiceEgress, ServiceHealthcheck, ServiceSpec};

/// Where the sandbox sees the workspace.
pub const WORKSPACE_MOUNT: &str = "/workspace";
/// Where the proxy sees its (read-only) policy directory.
pub const PROXY_POLICY_DIR: &str = "/etc/kennel";
/// The proxy's config file inside [`PROXY_POLICY_DIR`] (written by the backend into the plan's
/// policy directory).
pub const PROXY_CONFIG_FILE: &str = "kennel-proxy.toml";
/// Where the proxy sees its (read-write) access-log directory, when the plan has one.
pub const PROXY_LOG_DIR: &str = "/var/log/kennel";
/// The access-log file name inside the access-log directory (rotated to `access.log.1`).
pub const ACCESS_LOG_FILE: &str = "access.log";
/// The access log is rotated past this size (one older generation kept): at most ~16 MiB of
/// log per environment on the host.
pub const ACCESS_LOG_ROTATE_BYTES: u64 = 8 * 1024 * 1024;
/// The proxy port on the internal network.
pub const PROXY_PORT: u16 = 8888;
/// The proxy's admin port; it listens on the egress-side address only.
pub const ADMIN_PORT: u16 = 9901;
/// The proxy's DNS alias on the internal network.
pub const PROXY_ALIAS: &str = "proxy";
/// User the proxy runs as (no such user needs to exist in the scratch image).
pub const PROXY_USER: &str = "65532:65532";
/// Where the git token file appears in the sandbox.
pub const GIT_TOKEN_PATH: &str = "/run/kennel/git-token";
/// Where the `GIT_ASKPASS` helper appears in the sandbox.
pub const GIT_ASKPASS_PATH: &str = "/run/kennel/git-askpass";
/// The `GIT_ASKPASS` helper: prints the token file for password prompts, a fixed user name
/// otherwise. POSIX sh; the token never enters the environment.
pub const GIT_ASKPASS_SCRIPT: &str = "#!/bin/sh\n# kennel: git credential helper; the token is a read-only file, never an env var.\ncase \"$1\" in\n  Username*) echo x-access-token ;;\n  *) cat /run/kennel/git-token ;;\nesac\n";
/// The sandbox's resolver upstream. Docker's embedded DNS (127.0.0.11) answers the names of the
/// environment's own containers; for every other name it forwards to this address **from the
/// container's own network namespace**, where nothing listens, so the query goes nowhere
/// (mitigates CVE-2024-29018 on engines < 26, which forward internal networks' queries from the
/// host namespace when the upstream is the host's resolver).
pub const SANDBOX_DNS: &str = "127.0.0.1";
/// Network driver option that gives the bridge no IPv4 address on the host, so the host's
/// listeners are unreachable from the network (verified on Docker 20.10 by
/// `e2e_docker::host_listener_unreachable`).
pub const INHIBIT_IPV4: &str = "com.docker.network.bridge.inhibit_ipv4";
/// Capabilities dropped from service containers on top of nothing else (services keep Docker's
/// defaults minus these): raw sockets would let a service forge packets to the proxy's
/// egress-side address; the rest are not needed by ordinary databases and caches.
pub const SERVICE_CAP_DROP: [&str; 4] = ["NET_RAW", "MKNOD", "AUDIT_WRITE", "SETFCAP"];

/// Labels every object of `env` carries, plus the plan's extra labels.
pub fn labels(env: &str, role: &str, extra: &[(String, String)]) -> HashMap<String, String> {
    let mut l: HashMap<String, String> = extra.iter().cloned().collect();
    l.insert(LABEL_ENV.into(), env.into());
    l.insert(LABEL_ROLE.into(), role.into());
    l.insert(LABEL_MANAGED.into(), "true".into());
    l
}

/// The environment's internal network: no route out (`Internal`), and no host address on the
/// bridge (`inhibit_ipv4`), so neither the internet nor host listeners are reachable. No IPv6.
pub fn internal_network(plan: &EnvPlan) -> NetworkCreateRequest {
    isolated_network(plan, names::network(&plan.spec.name), "network")
}

/// Role label of an egress profile's network ([`profile_network`]).
pub const ROLE_PROFILE_NETWORK: &str = "profile-network";

/// The internal network of egress profile `profile` ([`names::profile_network`]): the settings
/// of [`internal_network`], with only the profile's proxy and the services that use it on it.
/// The sandbox is not, so it cannot use the profile's proxy (and its allowlist).
pub fn profile_network(plan: &EnvPlan, profile: &str) -> NetworkCreateRequest {
    let mut req = isolated_network(
        plan,
        names::profile_network(&plan.spec.name, profile),
        ROLE_PROFILE_NETWORK,
    );
    if let Some(l) = req.labels.as_mut() {
        l.insert(LABEL_PROFILE.into(), profile.to_string());
    }
    req
}

/// An internal network of `plan`'s environment named `name`, labelled with `role`: no route
/// out (`Internal`), no host address on the bridge (`inhibit_ipv4`), no IPv6. Every network a
/// container of the environment other than a proxy joins is made by this function.
pub fn isolated_network(plan: &EnvPlan, name: String, role: &str) -> NetworkCreateRequest {
    let env = &plan.spec.name;
    NetworkCreateRequest {
        name,
        driver: Some("bridge".into()),
        internal: Some(true),
        attachable: Some(false),
        enable_ipv6: Some(false),
        options: Some(HashMap::from([
            (INHIBIT_IPV4.to_string(), "true".to_string()),
            (
                "com.docker.network.bridge.enable_icc".to_string(),
                "true".to_string(),
            ),
        ])),
        labels: Some(labels(env, role, &plan.state_labels)),
        ..Default::default()
    }
}

/// The proxy's egress network (an ordinary bridge with NAT), with an explicit subnet so the
/// proxy can have a fixed address there for its admin listener.
pub fn egress_network(plan: &EnvPlan, subnet: &str, gateway: &str) -> NetworkCreateRequest {
    let env = &plan.spec.name;
    NetworkCreateRequest {
        name: names::egress_network(env),
        driver: Some("bridge".into()),
        internal: Some(false),
        attachable: Some(false),
        enable_ipv6: Some(false),
        ipam: Some(Ipam {
            driver: Some("default".into()),
            config: Some(vec![IpamConfig {
                subnet: Some(subnet.into()),
                gateway: Some(gateway.into()),
                ..Default::default()
            }]),
            options: None,
        }),
        labels: Some(labels(env, "egress-network", &plan.state_labels)),
        ..Default::default()
    }
}

/// The proxy's address on the egress network: the subnet's second host (gateway is the first).
pub fn proxy_egress_ip(network: Ipv4Addr, gateway: Ipv4Addr) -> Ipv4Addr {
    proxy_egress_ip_at(network, gateway, 0)
}

/// The egress-side address of proxy number `slot`: 0 is the environment's own proxy
/// ([`proxy_egress_ip`]), 1.. its egress profiles' proxies in name order. Consecutive hosts
/// from the subnet's second on, the gateway skipped; they are taken before anything else joins
/// the network.
pub fn proxy_egress_ip_at(network: Ipv4Addr, gateway: Ipv4Addr, slot: u32) -> Ipv4Addr {
    let n = u32::from(network);
    let g = u32::from(gateway);
    let candidate = n.saturating_add(2).saturating_add(slot);
    if g > n.saturating_add(1) && candidate >= g {
        Ipv4Addr::from(candidate.saturating_add(1))
    } else {
        Ipv4Addr::from(candidate)
    }
}

/// The proxy's config file (TOML for `kennel-proxy --config`): proxy port on all addresses of
/// the container (the internal side is the only one the sandbox reaches), admin port on the
/// egress-side address only, policy from the read-only policy directory.
///
/// Deny messages name `policy_shown_as` (the host path of the environment's policy directory),
/// not the path inside the proxy container, so the person reading one knows what to edit.
pub fn proxy_config(egress_ip: Ipv4Addr, policy_shown_as: &str) -> String {
    proxy_config_with_log(egress_ip, policy_shown_as, false)
}

/// [`proxy_config_with_log`] for environment `env`: deny messages also name the
/// `kennel allow ENV HOST:PORT` a person runs to allow the destination.
pub fn proxy_config_for_env(
    egress_ip: Ipv4Addr,
    policy_shown_as: &str,
    log_to_file: bool,
    env: &str,
) -> String {
    proxy_config_file(egress_ip, policy_shown_as, log_to_file, Some(env))
}

/// [`proxy_config`], with the access log written to [`PROXY_LOG_DIR`]/[`ACCESS_LOG_FILE`]
/// (size-capped, see [`ACCESS_LOG_ROTATE_BYTES`]) when `log_to_file`.
pub fn proxy_config_with_log(
    egress_ip: Ipv4Addr,
    policy_shown_as: &str,
    log_to_file: bool,
) -> String {
    proxy_config_file(egress_ip, policy_shown_as, log_to_file, None)
}

fn proxy_config_file(
    egress_ip: Ipv4Addr,
    policy_shown_as: &str,
    log_to_file: bool,
    kennel_env: Option<&str>,
) -> String {
    #[derive(serde::Serialize)]
    struct ProxyConfigFile<'a> {
        listen: [String; 1],
        admin: String,
        policy: PolicySection<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        access_log: Option<AccessLogSection>,
    }
    #[derive(serde::Serialize)]
    struct PolicySection<'a> {
        file: String,
        shown_as: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        kennel_env: Option<&'a str>,
    }
    #[derive(serde::Serialize)]
    struct AccessLogSection {
        destination: FileDestination,
        rotate_bytes: u64,
    }
    #[derive(serde::Serialize)]
    struct FileDestination {
        file: String,
    }
    let config = ProxyConfigFile {
        listen: [format!("0.0.0.0:{PROXY_PORT}")],
        admin: std::net::SocketAddrV4::new(egress_ip, ADMIN_PORT).to_string(),
        policy: PolicySection {
            file: format!("{PROXY_POLICY_DIR}/{}", crate::policy_dir::POLICY_FILE),
            shown_as: policy_shown_as,
            kennel_env,
        },
        access_log: log_to_file.then(|| AccessLogSection {
            destination: FileDestination {
                file: format!("{PROXY_LOG_DIR}/{ACCESS_LOG_FILE}"),
            },
            rotate_bytes: ACCESS_LOG_ROTATE_BYTES,
        }),
    };
    "# Written by kennel for this environment's proxy container; do not edit.\n".to_string()
        + &crate::policy_dir::to_toml(&config)
}

fn hardened_host_config() -> HostConfig {
    HostConfig {
        cap_drop: Some(vec!["ALL".into()]),
        // no-new-privileges; the default seccomp profile stays in force (no `seccomp=unconfined`).
        security_opt: Some(vec!["no-new-privileges:true".into()]),
        privileged: Some(false),
        readonly_rootfs: Some(true),
        init: Some(false),
        ipc_mode: Some("private".into()),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        }),
        ..Default::default()
    }
}

/// A proxy container, created on its internal network; the backend connects it to the egress
/// network at a fixed address ([`proxy_egress_endpoint`]) before starting it. `profile: None`
/// is the environment's own proxy (alias `proxy` on the environment's network,
/// [`EnvPlan::policy_dir`]); `Some(name)` the proxy of egress profile `name` (alias
/// `proxy-<name>` on the profile's own network [`names::profile_network`], never on the
/// sandbox's, [`EnvPlan::profile_policy_dir`], role [`ROLE_PROFILE_PROXY`]), hardened the same
/// way.
pub fn proxy_container(plan: &EnvPlan, profile: Option<&str>) -> ContainerCreateBody {
    let env = &plan.spec.name;
    let (policy_dir, log_dir, alias, mut l) = match profile {
        None => (
            plan.policy_dir.clone(),
            plan.access_log_dir.clone(),
            PROXY_ALIAS.to_string(),
            labels(env, "proxy", &plan.state_labels),
        ),
        Some(p) => {
            let mut l = labels(env, ROLE_PROFILE_PROXY, &plan.state_labels);
            l.insert(LABEL_PROFILE.into(), p.to_string());
            (
                plan.profile_policy_dir(p),
                plan.profile_access_log_dir(p),
                profile_proxy_alias(p),
                l,
            )
        }
    };
    // The egress-only marker belongs to the environment's own proxy (status_from reads it).
    if profile.is_some() {
        l.remove(crate::backend::LABEL_EGRESS_ONLY);
    }
    // A profile's proxy is not on the sandbox's network: there the sandbox could name it as its
    // proxy and get the profile's allowlist.
    let network = match profile {
        None => names::network(env),
        Some(p) => names::profile_network(env, p),
    };
    let mut host = hardened_host_config();
    let mut binds = vec![format!("{}:{PROXY_POLICY_DIR}:ro", policy_dir.display())];
    if let Some(dir) = &log_dir {
        binds.push(format!("{}:{PROXY_LOG_DIR}:rw", dir.display()));
    }
    host.binds = Some(binds);
    host.tmpfs = Some(HashMap::from([(
        "/tmp".to_string(),
        "rw,noexec,nosuid,nodev,size=16m".to_string(),
    )]));
    host.network_mode = Some(network.clone());
    host.memory = Some(512 * 1024 * 1024);
    host.pids_limit = Some(256);
    host.nano_cpus = Some(2_000_000_000);
    // No nofile ulimit: the engine's own limit applies (raising it above the daemon's hard
    // limit fails container start); the proxy caps connections itself.
    // Lets the policy route to an upstream on the host (`socks5h://host.docker.internal:…`).
    host.extra_hosts = Some(vec!["host.docker.internal:host-gateway".into()]);
    ContainerCreateBody {
        image: Some(plan.proxy_image.clone()),
        user: Some(PROXY_USER.into()),
        cmd: Some(vec![
            "--config".into(),
            format!("{PROXY_POLICY_DIR}/{PROXY_CONFIG_FILE}"),
        ]),
        // The variable the proxy reads (RUST_LOG is only its alias).
        env: Some(vec![format!("{}=info", kennel_policy::log_env::LOG_VAR)]),
        labels: Some(l),
        host_config: Some(host),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network,
                EndpointSettings {
                    aliases: Some(vec![alias]),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    }
}

/// Endpoint settings for connecting the proxy to its egress network at a fixed address.
pub fn proxy_egress_endpoint(egress_ip: Ipv4Addr) -> EndpointSettings {
    EndpointSettings {
        ipam_config: Some(EndpointIpamConfig {
            ipv4_address: Some(egress_ip.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The proxy URL the sandbox uses.
pub fn proxy_url() -> String {
    format!("http://{PROXY_ALIAS}:{PROXY_PORT}")
}

/// The DNS alias of egress profile `profile`'s proxy on the profile's network: `proxy-<profile>`.
pub fn profile_proxy_alias(profile: &str) -> String {
    format!("{PROXY_ALIAS}-{profile}")
}

/// The URL of egress profile `profile`'s proxy, as a service on the profile's network (or a
/// Docker engine on its own network) uses it: `http://proxy-<profile>:8888`.
pub fn profile_proxy_url(profile: &str) -> String {
    format!("http://{}:{PROXY_PORT}", profile_proxy_alias(profile))
}

/// Environment variables of the sandbox: the workspace's (`.env`, `containerEnv`, `env_file`,
/// `[env]`, merged by [`crate::env::SandboxEnv::merged`]), then kennel's: proxy variables in both
/// spellings, HOME, and the git askpass helper when a token file is configured.
pub fn sandbox_env(spec: &EnvSpec) -> Vec<String> {
    let url = proxy_url();
    let mut no_proxy = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    no_proxy.extend(spec.services.iter().map(|s| s.name.clone()));
    let no_proxy = no_proxy.join(",");
    // The workspace's variables first: kennel's own follow and are never overridden (their
    // names are refused at parse time anyway, crate::env::check_var_name).
    let mut env: Vec<String> = spec
        .env
        .merged()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.extend([
        format!("HTTP_PROXY={url}"),
        format!("HTTPS_PROXY={url}"),
        format!("http_proxy={url}"),
        format!("https_proxy={url}"),
        format!("NO_PROXY={no_proxy}"),
        format!("no_proxy={no_proxy}"),
        format!("HOME={}", spec.home),
        format!("KENNEL_ENV={}", spec.name),
        // Where `kennel-notify` writes (the `[notify] dir` mount).
        format!("KENNEL_NOTIFY_DIR={}", spec.notify.dir),
    ]);
    if spec.credentials.git_token_file.is_some() {
        env.push(format!("GIT_ASKPASS={GIT_ASKPASS_PATH}"));
        env.push("GIT_TERMINAL_PROMPT=0".into());
    }
    env
}

/// Bind mounts of the sandbox: workspace rw, the home volume, credentials ro. `askpass_host` is the host path of
/// the askpass helper script (written by the backend next to the policy directory).
pub fn sandbox_binds(spec: &EnvSpec, askpass_host: Option<&std::path::Path>) -> Vec<String> {
    let mut binds = vec![
        format!("{}:{WORKSPACE_MOUNT}:rw", spec.workspace.display()),
        format!("{}:{}:rw", names::home_volume(&spec.name), spec.home),
    ];
    let home = &spec.home;
    let c = &spec.credentials;
    if let Some(p) = &c.git_config {
        binds.push(format!("{}:{home}/.gitconfig:ro", p.display()));
    }
    if let Some(p) = &c.ssh_dir {
        binds.push(format!("{}:{home}/.ssh:ro", p.display()));
    }
    for p in &c.agent_config {
        if let Some(file) = p.file_name() {
            binds.push(format!(
                "{}:{home}/{}:ro",
                p.display(),
                file.to_string_lossy()
            ));
        }
    }
    if let Some(p) = &c.git_token_file {
        binds.push(format!("{}:{GIT_TOKEN_PATH}:ro", p.display()));
        if let Some(a) = askpass_host {
            binds.push(format!("{}:{GIT_ASKPASS_PATH}:ro", a.display()));
        }
    }
    for m in &spec.mounts {
        let mode = if m.rw { "rw" } else { "ro" };
        binds.push(format!("{}:{}:{mode}", m.source.display(), m.target));
    }
    // The IDE's devcontainer.json (`kennel devcontainer init`): its initializeCommand runs on
    // the host and its runArgs set the IDE container's isolation, so the sandbox may read it,
    // never change it.
    let ide_dir = crate::ide::DEVCONTAINER_FILE
        .rsplit_once('/')
        .map_or(crate::ide::DEVCONTAINER_FILE, |(d, _)| d);
    if spec.workspace.join(ide_dir).is_dir() {
        binds.push(format!(
            "{}:{WORKSPACE_MOUNT}/{ide_dir}:ro",
            spec.workspace.join(ide_dir).display()
        ));
    }
    binds
}

/// `(uid, gid)` of a validated `uid:gid` user string.
pub fn user_ids(user: &str) -> (u32, u32) {
    let mut it = user.split(':').map(|s| s.parse::<u32>().unwrap_or(65534));
    (it.next().unwrap_or(65534), it.next().unwrap_or(65534))
}

/// The sandbox container: internal network only, non-root, no capabilities, no new privileges,
/// default seccomp, read-only rootfs with tmpfs `/tmp` and home, limits, resolver that reaches
/// nothing but the environment's own names, no Docker socket (nothing from the host but the
/// workspace and the listed credentials is mounted).
///
/// `git` (from [`crate::git::discover`]) adds the git directory and the read-only mounts over
/// it, and `safe.directory` through `GIT_CONFIG_*` variables.
pub fn sandbox_container(
    plan: &EnvPlan,
    askpass_host: Option<&std::path::Path>,
    git: Option<&GitMounts>,
) -> ContainerCreateBody {
    let spec = &plan.spec;
    let env = &spec.name;
    let r = &spec.resources;
    let mut host = hardened_host_config();
    host.readonly_rootfs = Some(spec.read_only_rootfs);
    let mut binds = sandbox_binds(spec, askpass_host);
    let mut env_vars = sandbox_env(spec);
    if let Some(g) = git {
        binds.extend(g.binds());
        env_vars.extend(g.env());
    }
    // `[docker]`: the environment's own engine, through the socket volume (crate::engine).
    if spec.docker.is_some() {
        binds.extend(crate::engine::sandbox_binds(env));
        env_vars.push(format!("DOCKER_HOST={}", crate::engine::DOCKER_HOST));
    }
    host.binds = Some(binds);
    // Home is the environment's named volume (kept across down/up), initialised owned by the
    // sandbox user (crate::home); /tmp stays a tmpfs.
    host.tmpfs = Some(HashMap::from([(
        "/tmp".to_string(),
        "rw,nosuid,nodev,exec,mode=1777,size=1g".to_string(),
    )]));
    host.network_mode = Some(names::network(env));
    host.dns = Some(vec![SANDBOX_DNS.into()]);
    host.dns_search = Some(vec![]);
    host.nano_cpus = Some((r.cpus * 1e9) as i64);
    host.memory = Some(i64::try_from(r.memory_bytes).unwrap_or(i64::MAX));
    host.memory_swap = Some(i64::try_from(r.memory_bytes).unwrap_or(i64::MAX));
    host.pids_limit = Some(r.pids);
    host.ulimits = Some(vec![ResourcesUlimits {
        name: Some("nofile".into()),
        soft: Some(i64::try_from(r.nofile.0).unwrap_or(i64::MAX)),
        hard: Some(i64::try_from(r.nofile.1).unwrap_or(i64::MAX)),
    }]);
    host.init = Some(true);
    let cmd = spec
        .command
        .clone()
        .unwrap_or_else(|| vec!["sleep".into(), "infinity".into()]);
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        hostname: Some(env.clone()),
        user: Some(spec.user.clone()),
        env: Some(env_vars),
        cmd: Some(cmd),
        working_dir: Some(WORKSPACE_MOUNT.into()),
        labels: Some(labels(env, "sandbox", &plan.state_labels)),
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

/// The IDE's dev container (`kennel devcontainer init`): the sandbox's body, labelled with the
/// IDE role so `kennel ls/down/inspect` see it and the start-up order leaves it to the IDE.
/// The IDE replaces the command; `crate::ide::devcontainer_json` turns this into
/// devcontainer.json, so the sandbox and the IDE's container share one set of settings.
pub fn ide_container(
    plan: &EnvPlan,
    askpass_host: Option<&std::path::Path>,
    git: Option<&GitMounts>,
) -> ContainerCreateBody {
    let mut body = sandbox_container(plan, askpass_host, git);
    body.labels = Some(labels(
        &plan.spec.name,
        crate::backend::ROLE_IDE,
        &plan.state_labels,
    ));
    body.cmd = None;
    body
}

/// A service container: internal network only (alias = service name), no new privileges,
/// default seccomp, raw sockets dropped. Its rootfs stays writable (databases write to it).
/// A service with `egress = "NAME"` is also connected, by the backend before it starts, to
/// the profile's network ([`service_profile_network`]), where its proxy is.
pub fn service_container(plan: &EnvPlan, svc: &ServiceSpec) -> ContainerCreateBody {
    let env = &plan.spec.name;
    let mut host = hardened_host_config();
    host.network_mode = Some(names::network(env));
    host.dns = Some(vec![SANDBOX_DNS.into()]);
    host.pids_limit = Some(1000);
    let run = &svc.run;
    let mut cap_drop: Vec<String> = SERVICE_CAP_DROP.iter().map(|s| s.to_string()).collect();
    cap_drop.extend(
        run.cap_drop
            .iter()
            .filter(|c| !cap_drop.contains(c))
            .cloned()
            .collect::<Vec<_>>(),
    );
    host.cap_drop = Some(cap_drop);
    host.readonly_rootfs = Some(run.read_only);
    let binds = service_binds(env, svc);
    if !binds.is_empty() {
        host.binds = Some(binds);
    }
    let mut l = labels(env, "service", &plan.state_labels);
    l.insert(LABEL_SERVICE.into(), svc.name.clone());
    let mut vars: Vec<String> = svc.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let url = match &svc.egress {
        ServiceEgress::None => None,
        ServiceEgress::Proxy => Some(proxy_url()),
        ServiceEgress::Profile(p) => Some(profile_proxy_url(p)),
    };
    if let Some(url) = url {
        // Still on internal networks only: the proxy (the environment's, or its egress
        // profile's on the profile's network), under its policy, is its one way out.
        let no_proxy = service_no_proxy(&plan.spec);
        vars.extend([
            format!("HTTP_PROXY={url}"),
            format!("HTTPS_PROXY={url}"),
            format!("http_proxy={url}"),
            format!("https_proxy={url}"),
            format!("NO_PROXY={no_proxy}"),
            format!("no_proxy={no_proxy}"),
        ]);
    }
    ContainerCreateBody {
        image: Some(svc.image.clone()),
        env: Some(vars),
        cmd: svc.command.clone(),
        entrypoint: run.entrypoint.clone(),
        working_dir: run.working_dir.clone(),
        user: run.user.clone(),
        healthcheck: run.healthcheck.as_ref().map(health_config),
        labels: Some(l),
        host_config: Some(host),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                names::network(env),
                EndpointSettings {
                    aliases: Some(vec![svc.name.clone()]),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    }
}

/// The network a service joins besides the environment's, when it uses egress profile `NAME`
/// (`egress = "NAME"`): the profile's network, where `proxy-NAME` is. `None` otherwise.
pub fn service_profile_network(env: &str, svc: &ServiceSpec) -> Option<String> {
    match &svc.egress {
        ServiceEgress::Profile(p) => Some(names::profile_network(env, p)),
        ServiceEgress::None | ServiceEgress::Proxy => None,
    }
}

/// The environment's home volume: labelled like every kennel object, plus the workspace it
/// belongs to (an environment removed without `--purge` keeps its name through it).
pub fn home_volume(plan: &EnvPlan) -> VolumeCreateRequest {
    let env = &plan.spec.name;
    let mut l = labels(env, "home", &plan.state_labels);
    l.insert(
        LABEL_WORKSPACE.into(),
        plan.spec.workspace.display().to_string(),
    );
    VolumeCreateRequest {
        name: Some(names::home_volume(env)),
        driver: Some("local".into()),
        labels: Some(l),
        ..Default::default()
    }
}

/// The container that initialises a new home volume: never started, no network, the sandbox
/// image (so the image's own home content is copied into the empty volume by the engine). The
/// backend unpacks [`crate::home::init_archive`] into it and removes it.
pub fn home_init_container(plan: &EnvPlan) -> ContainerCreateBody {
    let spec = &plan.spec;
    let env = &spec.name;
    let host = HostConfig {
        binds: Some(vec![format!(
            "{}:{}:rw",
            names::home_volume(env),
            spec.home
        )]),
        network_mode: Some("none".into()),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges:true".into()]),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        user: Some(spec.user.clone()),
        cmd: Some(vec!["true".into()]),
        labels: Some(labels(env, "home-init", &plan.state_labels)),
        host_config: Some(host),
        network_disabled: Some(true),
        ..Default::default()
    }
}

/// Port the `kennel bench` origin listens on (inside its own container).
pub const BENCH_ORIGIN_PORT: u16 = 8080;

/// A `kennel bench` container ([`crate::bench`]): the proxy image running `kennel-proxy bench
/// ARGS..`, hardened like the proxy (no capabilities, no new privileges, read-only root,
/// non-root, limits) and never restarted. `network_mode` is the egress network (origin,
/// direct client) or `container:<sandbox>` (the client that takes the sandbox's route).
pub fn bench_container(
    env: &str,
    role: &str,
    image: &str,
    network_mode: &str,
    args: &[String],
    extra_labels: &[(String, String)],
) -> ContainerCreateBody {
    let mut host = hardened_host_config();
    host.restart_policy = Some(RestartPolicy {
        name: Some(RestartPolicyNameEnum::NO),
        maximum_retry_count: None,
    });
    host.network_mode = Some(network_mode.to_string());
    host.memory = Some(256 * 1024 * 1024);
    host.pids_limit = Some(64);
    let mut cmd = vec!["bench".to_string()];
    cmd.extend(args.iter().cloned());
    ContainerCreateBody {
        image: Some(image.to_string()),
        user: Some(PROXY_USER.into()),
        cmd: Some(cmd),
        labels: Some(labels(env, role, extra_labels)),
        host_config: Some(host),
        ..Default::default()
    }
}

/// `NO_PROXY` for services with proxy egress: loopback and the environment's own names.
fn service_no_proxy(spec: &EnvSpec) -> String {
    let mut no_proxy = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    no_proxy.extend(spec.services.iter().map(|s| s.name.clone()));
    no_proxy.join(",")
}

/// Bind mounts of a service: its per-environment named volumes and workspace paths.
pub fn service_binds(env: &str, svc: &ServiceSpec) -> Vec<String> {
    let mode = |ro: bool| if ro { "ro" } else { "rw" };
    let mut binds: Vec<String> = svc
        .run
        .volumes
        .iter()
        .map(|v| {
            format!(
                "{}:{}:{}",
                names::service_volume(env, &v.name),
                v.target,
                mode(v.read_only)
            )
        })
        .collect();
    binds.extend(
        svc.run
            .binds
            .iter()
            .map(|b| format!("{}:{}:{}", b.source.display(), b.target, mode(b.read_only))),
    );
    binds
}

/// Docker's health check settings from a service's (durations in nanoseconds; 0 = default).
pub fn health_config(h: &ServiceHealthcheck) -> HealthConfig {
    let ns = |ms: u64| i64::try_from(ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
    HealthConfig {
        test: Some(h.test.clone()),
        interval: Some(ns(h.interval_ms)),
        timeout: Some(ns(h.timeout_ms)),
        retries: Some(i64::from(h.retries)),
        start_period: Some(ns(h.start_period_ms)),
        ..Default::default()
    }
}

/// A service's named volume: per environment, labelled like the home volume, kept by
/// `kennel down`, removed by `kennel down --purge`.
pub fn service_volume(plan: &EnvPlan, volume: &str) -> VolumeCreateRequest {
    let env = &plan.spec.name;
    let mut l = labels(env, "service-volume", &plan.state_labels);
    l.insert(
        LABEL_WORKSPACE.into(),
        plan.spec.workspace.display().to_string(),
    );
    VolumeCreateRequest {
        name: Some(names::service_volume(env, volume)),
        driver: Some("local".into()),
        labels: Some(l),
        ..Default::default()
    }
}
