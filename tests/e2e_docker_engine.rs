//! A Docker engine per environment on the real engine (issue 16, items 2-4): the seed layout
//! with `.devcontainer/dind-whitelist.txt` gets `[docker]` in the least privileged mode that
//! works on this kind of host (rootless) and the `dind` egress profile. From the sandbox,
//! `docker version` answers and `docker build` of a `FROM scratch` image works; a nested
//! container reaches what the `dind` profile allows through its proxy and nothing else (not what
//! only the main policy allows, not the origin directly, not the host's listeners, not the
//! environment's own proxy); the sandbox cannot reach what only the `dind` profile allows; the
//! engine's data survives `kennel refresh`; `kennel down` removes the engine with its nested
//! containers, its network and socket volume, and `--purge` its data volume.
//!
//! The daemon runs in-process and the CLI's code talks to it. Traffic goes only to the test's
//! own origin container on the environment's egress network and to a listener the test opens on
//! the host (which must stay unreachable). Every object carries the environment's labels and is
//! removed by the guard, also on failure. Mandatory under `CI=true`.

use std::time::{Duration, Instant};

use kennel_cli::client::Client;
use kennel_cli::commands::up::{UpArgs, build_request};
use kennel_container::backend::names;
use kennel_container::engine;
use kennel_container::spec::DockerMode;
use kennel_supervisord::api::policy_types::{AllowRequest, PolicyChanged};
use kennel_supervisord::api::types::{EnvInfo, Removed};
use kennel_supervisord::ops::doctor::{Check, Outcome};
use kennel_test_support::docker::{
    EnvGuard, OriginSpec, docker_test_image, engine as docker_engine, network_ipam, proxy_binary,
    share_dir, start_origin, unique_env, wait_tcp,
};

use crate::e2e_supervisor::{RunningDaemon, exec};

/// The nested image: busybox and the probe, built in the environment's engine.
const NESTED_IMAGE: &str = "kennel-nested:1";

fn allow(entries: &[&str]) -> AllowRequest {
    AllowRequest {
        entries: entries.iter().map(|s| (*s).to_string()).collect(),
        for_secs: None,
        note: Some("e2e docker engine".into()),
    }
}

/// An HTTP GET of `host` through the nested container's own `HTTP_PROXY` (set by the docker CLI
/// from `~/.docker/config.json`); the response's first line and body, or what went wrong.
fn nested_get(host: &str) -> String {
    format!(
        "docker run --rm {NESTED_IMAGE} /bin/busybox sh -c '\
         echo \"proxy=$HTTP_PROXY\"; p=${{HTTP_PROXY#http://}}; \
         printf \"GET http://{host}/index.html HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n\" \
         | /bin/busybox timeout 10 /bin/busybox nc ${{p%:*}} ${{p##*:}}' 2>&1"
    )
}

/// Whether a process whose command line contains `marker` runs anywhere on the host.
fn host_has_process(marker: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(marker)
            })
            .unwrap_or(false)
    })
}

async fn doctor(client: &Client, env: &str) -> Vec<Check> {
    client
        .post(&format!("/envs/{env}/doctor"), &())
        .await
        .expect("doctor ENV")
}

fn outcome(checks: &[Check], name: &str) -> Outcome {
    checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {checks:?}"))
        .outcome
}

/// Polls a nested container's GET of `host` through the dind proxy until it answers 200.
async fn nested_until_ok(client: &Client, env: &str, host: &str) -> String {
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < Duration::from_secs(15) {
        last = exec(client, env, &nested_get(host)).await.0;
        if last.contains(" 200 ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    last
}

/// The origin on the egress network under `aliases`; returns its name and the egress network's
/// subnet and gateway.
async fn origin_on_egress(
    d: &kennel_container::DockerBackend,
    env: &str,
    image: &str,
    aliases: &[&str],
) -> (String, String, String) {
    let egress = names::egress_network(env);
    let origin = start_origin(
        d,
        &OriginSpec {
            env,
            suffix: "origin",
            network: &egress,
            aliases,
            image,
            script: "httpd -f -p 80 -h /www & wait",
            binds: Vec::new(),
        },
    )
    .await;
    wait_tcp(d, &origin, "127.0.0.1", 80).await;
    let (subnet, gateway) = network_ipam(d, &egress).await;
    (origin, subnet, gateway)
}

async fn exists_container(d: &kennel_container::DockerBackend, name: &str) -> bool {
    d.docker().inspect_container(name, None).await.is_ok()
}

async fn exists_volume(d: &kennel_container::DockerBackend, name: &str) -> bool {
    d.docker().inspect_volume(name).await.is_ok()
}

async fn exists_network(d: &kennel_container::DockerBackend, name: &str) -> bool {
    d.docker().inspect_network(name, None).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_engine_per_environment_builds_runs_nested_containers_only_through_dind_profile() {
    let test =
        "docker_engine_per_environment_builds_runs_nested_containers_only_through_dind_profile";
    let Some(d) = docker_engine(test).await else {
        return;
    };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let t0 = Instant::now();
    let image = docker_test_image(&d).await;
    let name = unique_env("dind");
    let _guard = EnvGuard::new(&name);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("kennel.sock");
    let daemon = RunningDaemon::start(&d, &proxy_bin, &socket, &dir.path().join("state"));
    let client = Client::new(&socket);

    // The seed layout of the system kennel replaces: no kennel.toml.
    let ws = tempfile::tempdir().expect("workspace");
    share_dir(ws.path(), 1001, 2000, 0o770);
    std::fs::create_dir(ws.path().join(".devcontainer")).expect("mkdir");
    std::fs::write(
        ws.path().join(".devcontainer/whitelist.txt"),
        "main-only.kennel-test\n",
    )
    .expect("whitelist");
    std::fs::write(
        ws.path().join(".devcontainer/dind-whitelist.txt"),
        "dind-only.kennel-test\n",
    )
    .expect("dind whitelist");
    let req = build_request(&UpArgs {
        workspace: Some(ws.path().into()),
        name: Some(name.clone()),
        image: Some(image.clone()),
        ..Default::default()
    })
    .expect("spec");
    assert_eq!(
        req.spec.docker.map(|x| x.mode),
        Some(DockerMode::Rootless),
        "the seed layout gets the least privileged mode"
    );
    let info: EnvInfo = client.post("/envs", &req).await.expect("create");
    assert_eq!(info.state, "running", "{info:?}");
    let doc = info.docker.clone().expect("inspect shows the engine");
    assert_eq!(doc.mode, DockerMode::Rootless);
    assert!(doc.risk.contains("rootless"), "{doc:?}");
    assert_eq!(doc.docker_host, engine::DOCKER_HOST);
    let engine_name = engine::names::engine(&name);
    assert!(
        info.containers.iter().any(|c| c.name == engine_name
            && c.role == engine::ROLE_ENGINE
            && c.state == "running"),
        "{info:?}"
    );
    assert!(
        info.log
            .iter()
            .any(|l| l.contains("Docker engine (rootless)")),
        "kennel up prints the mode and its risk: {:?}",
        info.log
    );
    eprintln!("up with engine: {:?}", t0.elapsed());

    // The origin on the egress network; both policies get its subnet (the address guard), the
    // host names stay each policy's own.
    let egress = names::egress_network(&name);
    let (origin, subnet, egress_gateway) = origin_on_egress(
        &d,
        &name,
        &image,
        &["dind-only.kennel-test", "main-only.kennel-test"],
    )
    .await;
    let base = format!("/envs/{name}");
    let _: PolicyChanged = client
        .post(&format!("{base}/policy/allow"), &allow(&[&subnet]))
        .await
        .expect("allow subnet (main)");
    let _: PolicyChanged = client
        .post(
            &format!(
                "{base}/policy/allow?profile={}",
                kennel_container::spec::DOCKER_EGRESS_PROFILE
            ),
            &allow(&[&subnet]),
        )
        .await
        .expect("allow subnet (dind)");

    // 1. `docker version` answers from the sandbox, through the socket.
    let (out, err, code) = exec(
        &client,
        &name,
        "echo \"host=$DOCKER_HOST\"; docker version --format 'server={{.Server.Version}}'",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("host={}", engine::DOCKER_HOST)) && out.contains("server=2"),
        "{out}{err}"
    );

    // `kennel doctor ENV` reports the mode and that the engine answers from the sandbox.
    assert_engine_doctor(&client, &name, Outcome::Pass).await;

    // 2. `docker build` of a FROM scratch image (a static busybox and the probe).
    let (out, err, code) = exec(
        &client,
        &name,
        &format!(
            "set -e; mkdir -p /tmp/ctx; cp /bin/busybox /usr/local/bin/probe /tmp/ctx/; \
             printf 'FROM scratch\\nCOPY busybox /bin/busybox\\nCOPY probe /bin/probe\\n' > /tmp/ctx/Dockerfile; \
             docker build -q -t {NESTED_IMAGE} /tmp/ctx"
        ),
    )
    .await;
    assert_eq!(code, 0, "docker build: {out}{err}");

    // 3. A nested container reaches what the dind profile allows, through its proxy (the
    //    profile's proxy by address on the engine's network, from ~/.docker/config.json).
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < Duration::from_secs(15) {
        last = exec(&client, &name, &nested_get("dind-only.kennel-test"))
            .await
            .0;
        if last.contains(" 200 ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        last.contains(" 200 ") && last.contains("hello from kennel origin"),
        "nested container through the dind proxy: {last}"
    );
    let proxy_line = last
        .lines()
        .find_map(|l| l.strip_prefix("proxy="))
        .unwrap_or_default()
        .to_string();
    assert!(proxy_line.starts_with("http://"), "{last}");
    // 4. ... but not what only the main policy allows (the dind proxy denies it).
    let out = exec(&client, &name, &nested_get("main-only.kennel-test"))
        .await
        .0;
    assert!(
        out.contains(" 403 "),
        "main-only through the dind proxy: {out}"
    );

    // 5. ... nor anything directly: the origin, the environment's own proxy, the host's
    //    listeners on every gateway it could try (the test's own listener on all addresses),
    //    with the engine's default network and with `--network host` (the engine's namespace).
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("host listener");
    let host_port = listener.local_addr().expect("addr").port().to_string();
    let origin_ip = d
        .container_ip(&origin, &egress)
        .await
        .expect("inspect origin")
        .expect("origin ip")
        .to_string();
    let main_proxy_ip = d
        .container_ip(&names::proxy(&name), &names::network(&name))
        .await
        .expect("inspect proxy")
        .expect("proxy ip")
        .to_string();
    let engine_net = d
        .docker()
        .inspect_network(&engine::names::network(&name), None)
        .await
        .expect("inspect engine network");
    let engine_gateway = engine_net
        .ipam
        .and_then(|i| i.config)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.gateway)
        .expect("engine network gateway");
    let targets = [
        (origin_ip.as_str(), "80"),
        (main_proxy_ip.as_str(), "8888"),
        (egress_gateway.as_str(), host_port.as_str()),
        (engine_gateway.as_str(), host_port.as_str()),
        ("172.17.0.1", host_port.as_str()),
        ("10.0.2.2", host_port.as_str()),
    ];
    for net in ["", "--network host"] {
        let probes: Vec<String> = targets
            .iter()
            .map(|(h, p)| format!("/bin/probe tcp {h} {p} 1500; echo \"exit={h}:{p}=$?\""))
            .collect();
        let script = format!(
            "docker run --rm {net} {NESTED_IMAGE} /bin/busybox sh -c '{}' 2>&1",
            probes.join("; ")
        );
        let out = exec(&client, &name, &script).await.0;
        for (h, p) in targets {
            assert!(
                out.contains(&format!("exit={h}:{p}=1")),
                "nested container ({net:?}) must not reach {h}:{p}: {out}"
            );
        }
    }
    drop(listener);

    // 6. The sandbox cannot reach what only the dind profile allows (its proxy is the main one).
    let (out, _, _) = exec(
        &client,
        &name,
        "curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://dind-only.kennel-test/index.html",
    )
    .await;
    assert_eq!(out, "403", "the sandbox through its own proxy");
    // ... nor by naming the dind profile's proxy as its proxy: `proxy-dind` is on the profile's
    // and the engine's networks, not the sandbox's (no answer at all: the name does not resolve).
    let (out, err, code) = exec(
        &client,
        &name,
        "curl -s -S -o /dev/null -w '%{http_code}' --max-time 5 -x http://proxy-dind:8888 http://dind-only.kennel-test/index.html",
    )
    .await;
    assert!(
        out == "000" && (code == 5 || (code == 28 && err.contains("Resolving"))),
        "the sandbox used proxy-dind: {out} {err} (curl exit {code})"
    );

    // `kennel stop` / `kennel start`: the engine comes back with its data (a restarted engine
    // container starts cleanly).
    let _: EnvInfo = client
        .post(&format!("{base}/stop"), &())
        .await
        .expect("stop");
    let _: EnvInfo = client
        .post(&format!("{base}/start"), &())
        .await
        .expect("start");
    let t = Instant::now();
    let mut last = (String::new(), String::new(), -1);
    while t.elapsed() < Duration::from_secs(30) {
        last = exec(
            &client,
            &name,
            &format!("docker image inspect --format ok {NESTED_IMAGE}"),
        )
        .await;
        if last.2 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(last.2, 0, "after stop/start: {last:?}");

    // 7. The engine's data (the built image) survives `kennel refresh`; a nested container
    //    running before it does not (it lived in the old engine).
    let marker = format!("{}", 60_000 + (std::process::id() % 30_000));
    let (out, err, code) = exec(
        &client,
        &name,
        &format!("docker run -d {NESTED_IMAGE} /bin/busybox sleep {marker}"),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let sleeping = format!("sleep {marker}");
    let t = Instant::now();
    while !host_has_process(&sleeping) && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(host_has_process(&sleeping), "the nested container runs");
    let _: EnvInfo = client
        .post(&format!("{base}/refresh"), &())
        .await
        .expect("refresh");
    assert!(
        !host_has_process(&sleeping),
        "nested containers die with the engine"
    );
    let (out, err, code) = exec(
        &client,
        &name,
        &format!("docker image inspect --format 'id={{{{.Id}}}}' {NESTED_IMAGE}"),
    )
    .await;
    assert!(
        code == 0 && out.contains("id=sha256:"),
        "kept across refresh: {out}{err}"
    );

    // 8. `kennel down` removes the engine (and its nested containers), its network and socket
    //    volume; the data volume stays until `--purge`.
    let (_, err, code) = exec(
        &client,
        &name,
        &format!("docker run -d {NESTED_IMAGE} /bin/busybox sleep {marker}"),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let t = Instant::now();
    while !host_has_process(&sleeping) && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        host_has_process(&sleeping),
        "the nested container runs again"
    );
    let _: Removed = client.delete(&base).await.expect("down");
    assert!(!exists_container(&d, &engine_name).await, "engine removed");
    assert!(
        !host_has_process(&sleeping),
        "nested containers removed with it"
    );
    assert!(!exists_network(&d, &engine::names::network(&name)).await);
    assert!(!exists_volume(&d, &engine::names::socket_volume(&name)).await);
    assert!(
        exists_volume(&d, &engine::names::data_volume(&name)).await,
        "the data volume is kept by `kennel down`"
    );
    let _: Removed = client
        .delete(&format!("{base}?purge=true"))
        .await
        .expect("down --purge");
    assert!(
        !exists_volume(&d, &engine::names::data_volume(&name)).await,
        "`kennel down --purge` removes the data volume"
    );
    daemon.stop().await;
    eprintln!("{test}: {:?}", t0.elapsed());
}

/// The opt-in `privileged` mode (kennel.toml `[docker]` with its own `[egress.profiles.dind]`):
/// `kennel up` and `kennel doctor` say it is a path to the host; nested containers still get
/// out only through the dind profile's proxy, also with `--network host`; `kennel down --purge`
/// removes everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_docker_engine_is_reported_as_such_and_still_fenced_by_the_dind_profile() {
    let test = "privileged_docker_engine_is_reported_as_such_and_still_fenced_by_the_dind_profile";
    let Some(d) = docker_engine(test).await else {
        return;
    };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = docker_test_image(&d).await;
    let name = unique_env("dindp");
    let _guard = EnvGuard::new(&name);
    let (_dir, daemon, client) = RunningDaemon::start_in_tempdir(&d, &proxy_bin);
    let ws = tempfile::tempdir().expect("workspace");
    share_dir(ws.path(), 1001, 2000, 0o770);
    std::fs::write(
        ws.path().join("kennel.toml"),
        format!(
            "name = \"{name}\"\nimage = \"{image}\"\ncommand = [\"/bin/busybox\", \"sleep\", \"3600\"]\n\
             [docker]\nmode = \"privileged\"\n\
             [egress.profiles.dind]\ninclude = [\"engine-list.txt\"]\n"
        ),
    )
    .expect("kennel.toml");
    std::fs::write(ws.path().join("engine-list.txt"), "dind-only.kennel-test\n").expect("list");
    let req = build_request(&UpArgs {
        workspace: Some(ws.path().into()),
        ..Default::default()
    })
    .expect("spec");
    let info: EnvInfo = client.post("/envs", &req).await.expect("create");
    assert_eq!(info.state, "running", "{info:?}");
    let doc = info.docker.clone().expect("engine");
    assert_eq!(doc.mode, DockerMode::Privileged);
    assert!(doc.risk.contains("path to the host"), "{doc:?}");
    assert!(
        info.log
            .iter()
            .any(|l| l.contains("Docker engine (privileged)") && l.contains("path to the host")),
        "{:?}",
        info.log
    );
    assert_engine_doctor(&client, &name, Outcome::Warn).await;

    let (_origin, subnet, egress_gateway) = origin_on_egress(
        &d,
        &name,
        &image,
        &["dind-only.kennel-test", "main-only.kennel-test"],
    )
    .await;
    let base = format!("/envs/{name}");
    let _: PolicyChanged = client
        .post(
            &format!(
                "{base}/policy/allow?profile={}",
                kennel_container::spec::DOCKER_EGRESS_PROFILE
            ),
            &allow(&[&subnet]),
        )
        .await
        .expect("allow subnet (dind)");
    let (out, err, code) = exec(
        &client,
        &name,
        &format!(
            "set -e; mkdir -p /tmp/ctx; cp /bin/busybox /usr/local/bin/probe /tmp/ctx/; \
             printf 'FROM scratch\\nCOPY busybox /bin/busybox\\nCOPY probe /bin/probe\\n' > /tmp/ctx/Dockerfile; \
             docker build -q -t {NESTED_IMAGE} /tmp/ctx"
        ),
    )
    .await;
    assert_eq!(code, 0, "docker build: {out}{err}");
    let out = nested_until_ok(&client, &name, "dind-only.kennel-test").await;
    assert!(out.contains(" 200 "), "through the dind proxy: {out}");
    let out = exec(&client, &name, &nested_get("main-only.kennel-test"))
        .await
        .0;
    assert!(out.contains(" 403 "), "{out}");
    // A nested container in the engine's own network namespace reaches no host listener
    // either. (A nested `--privileged` container is refused: the engine container's device
    // cgroup does not grant `a *:* rwm` — measured, and asserted so a change is noticed.)
    let (out, err, code) = exec(
        &client,
        &name,
        &format!("docker run --rm --privileged {NESTED_IMAGE} /bin/busybox true"),
    )
    .await;
    assert!(
        code != 0 && format!("{out}{err}").contains("devices.allow"),
        "nested --privileged: {out}{err}"
    );
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("host listener");
    let port = listener.local_addr().expect("addr").port();
    let out = exec(
        &client,
        &name,
        &format!(
            "docker run --rm --network host {NESTED_IMAGE} /bin/busybox sh -c \
             '/bin/probe tcp {egress_gateway} {port} 1500; echo \"exit=$?\"; /bin/probe tcp 172.17.0.1 {port} 1500; echo \"exit=$?\"' 2>&1"
        ),
    )
    .await
    .0;
    assert_eq!(out.matches("exit=1").count(), 2, "{out}");
    drop(listener);

    let _: Removed = client
        .delete(&format!("{base}?purge=true"))
        .await
        .expect("down --purge");
    assert!(!exists_container(&d, &engine::names::engine(&name)).await);
    assert!(!exists_network(&d, &engine::names::network(&name)).await);
    for v in [
        engine::names::socket_volume(&name),
        engine::names::data_volume(&name),
    ] {
        assert!(!exists_volume(&d, &v).await, "{v}");
    }
    daemon.stop().await;
}

/// `kennel doctor ENV` reports the engine mode as `mode` (a warning for privileged) and that the
/// engine answers from the sandbox.
async fn assert_engine_doctor(client: &Client, name: &str, mode: Outcome) {
    let checks = doctor(client, name).await;
    assert_eq!(outcome(&checks, "docker engine mode"), mode, "{checks:?}");
    assert_eq!(
        outcome(&checks, "docker engine answers"),
        Outcome::Pass,
        "{checks:?}"
    );
}
