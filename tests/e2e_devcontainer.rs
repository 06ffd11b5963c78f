//! The IDE's "Open in Dev Container" as a kennel sandbox (issue 11, item 1), on the real Docker
//! engine: `kennel devcontainer init` (the CLI as a separate program, talking to an in-process
//! daemon) writes `.devcontainer/kennel/devcontainer.json`; the IDE emulator
//! ([`kennel_test_support::ide`]) starts it exactly as the Dev Containers spec says an IDE does;
//! probes from inside show the proxy is the only way out; a hand-weakened copy is reported by
//! `--check`; `kennel down` removes the IDE's container. Traffic goes only to the test's own
//! origin container on the environment's egress network and to the host's own listener (which
//! must stay unreachable). Mandatory under `CI=true`, skipped with a reason without an engine.

use std::path::Path;
use std::process::Command;

use kennel_cli::client::Client;
use kennel_container::backend::names;
use kennel_supervisord::api::policy_types::{AllowRequest, PolicyChanged};
use kennel_supervisord::api::types::EnvInfo;
use kennel_test_support::docker::{
    EnvGuard, OriginSpec, engine, network_ipam, proxy_binary, share_dir, start_origin, test_image,
    unique_env, wait_tcp,
};
use kennel_test_support::ide::{IdeEmulator, Ran};

use crate::e2e_supervisor::RunningDaemon;

/// The `kennel` CLI as its own program (what the generated initializeCommand runs).
const KENNEL: &str = env!("CARGO_BIN_EXE_kennel-e2e-cli");

/// Runs the CLI with `args` against `socket` on a blocking thread (the daemon answers on the
/// test's runtime meanwhile).
async fn kennel(socket: &Path, args: &[&str]) -> Ran {
    let mut cmd = Command::new(KENNEL);
    cmd.arg("--socket").arg(socket).args(args);
    tokio::task::spawn_blocking(move || cmd.output().expect("run kennel").into())
        .await
        .expect("join")
}

fn show(r: &Ran) -> String {
    format!(
        "exit {} stdout {:?} stderr {:?}",
        r.code, r.stdout, r.stderr
    )
}

async fn gateway(d: &kennel_container::DockerBackend, network: &str) -> String {
    let n = d
        .docker()
        .inspect_network(network, None)
        .await
        .expect("inspect network");
    n.ipam
        .and_then(|i| i.config)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.gateway)
        .expect("gateway")
}

fn container_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["container", "inspect", name])
        .output()
        .expect("docker inspect")
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ide_dev_container_is_a_kennel_sandbox_and_weakening_is_reported() {
    let test = "ide_dev_container_is_a_kennel_sandbox";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&d).await;
    let name = unique_env("ide");
    let _guard = EnvGuard::new(&name);
    let state = tempfile::tempdir().expect("state");
    let socket = state.path().join("kennel.sock");
    let daemon = RunningDaemon::start(&d, &proxy_bin, &socket, &state.path().join("state"));
    let client = Client::new(&socket);

    let ws = tempfile::tempdir().expect("workspace");
    share_dir(ws.path(), 1001, 2000, 0o770);
    std::fs::write(
        ws.path().join("kennel.toml"),
        format!("name = \"{name}\"\nimage = \"{image}\"\n"),
    )
    .expect("kennel.toml");
    std::fs::create_dir(ws.path().join(".devcontainer")).expect("mkdir");
    std::fs::write(
        ws.path().join(".devcontainer/whitelist.txt"),
        "origin.kennel-test\n",
    )
    .expect("whitelist");
    // The person's own devcontainer.json is never touched.
    let own = "{ \"image\": \"their-own:1\" }\n";
    std::fs::write(ws.path().join(".devcontainer/devcontainer.json"), own).expect("own");
    let ws_path = std::fs::canonicalize(ws.path()).expect("canonical");
    let ws_arg = ws_path.display().to_string();

    // `kennel devcontainer init`: environment up without a sandbox, file written.
    let r = kennel(&socket, &["devcontainer", "init", "--workspace", &ws_arg]).await;
    assert_eq!(r.code, 0, "init: {}", show(&r));
    let file = ws_path.join(".devcontainer/kennel/devcontainer.json");
    assert!(file.is_file(), "{}", show(&r));
    assert_eq!(
        std::fs::read_to_string(ws_path.join(".devcontainer/devcontainer.json")).expect("own"),
        own
    );
    let info: EnvInfo = client.get(&format!("/envs/{name}")).await.expect("inspect");
    assert_eq!(info.state, "running", "{info:?}");
    let roles: Vec<&str> = info.containers.iter().map(|c| c.role.as_str()).collect();
    assert_eq!(roles, ["proxy"], "egress-only: no sandbox container");

    // The origin on the egress side; its private subnet allowed (the name is in the whitelist).
    let egress = names::egress_network(&name);
    let origin = start_origin(
        &d,
        &OriginSpec {
            env: &name,
            suffix: "origin",
            network: &egress,
            aliases: &["origin.kennel-test"],
            image: &image,
            script: "httpd -f -p 80 -h /www",
            binds: vec![],
        },
    )
    .await;
    wait_tcp(&d, &origin, "127.0.0.1", 80).await;
    let (subnet, _) = network_ipam(&d, &egress).await;
    let _: PolicyChanged = client
        .post(
            &format!("/envs/{name}/policy/allow"),
            &AllowRequest {
                entries: vec![subnet],
                for_secs: None,
                note: Some("e2e".into()),
            },
        )
        .await
        .expect("allow subnet");
    let origin_ip = d
        .container_ip(&origin, &egress)
        .await
        .expect("inspect origin")
        .expect("origin address")
        .to_string();

    // The IDE: initializeCommand on the host (fast, idempotent), then docker run as the spec says.
    let ide = IdeEmulator::load(&file, &ws_path);
    let started = std::time::Instant::now();
    let r = ide.initialize();
    assert_eq!(r.code, 0, "initializeCommand: {}", show(&r));
    assert!(r.stdout.contains("already up"), "{}", show(&r));
    eprintln!(
        "initializeCommand on a running environment: {:?}",
        started.elapsed()
    );
    assert_eq!(ide.container_name(), names::ide(&name));
    ide.start();

    // Inside: the sandbox user, the workspace, the home volume; capabilities 0; read-only root.
    let r = ide.sh("id -u; id -g; pwd; echo $HOME; touch /workspace/from-ide && echo ok > $HOME/h && echo wrote");
    assert_eq!(r.code, 0, "{}", show(&r));
    assert_eq!(r.stdout, "1001\n2000\n/workspace\n/home/claude\nwrote\n");
    assert!(
        ws_path.join("from-ide").is_file(),
        "the workspace is the host's"
    );
    let r = ide.sh("grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status");
    assert_eq!(r.code, 0, "{}", show(&r));
    for line in r.stdout.lines() {
        assert!(
            line.ends_with("0000000000000000"),
            "capabilities: {}",
            r.stdout
        );
    }
    let r = ide.exec(&["probe", "write", "/etc/kennel-ide-probe"]);
    assert_ne!(r.code, 0, "root filesystem writable: {}", show(&r));
    // The generated file is read-only inside (its initializeCommand runs on the host).
    let r = ide.exec(&[
        "probe",
        "write",
        "/workspace/.devcontainer/kennel/devcontainer.json",
    ]);
    assert_ne!(
        r.code,
        0,
        "devcontainer.json writable from inside: {}",
        show(&r)
    );

    // An allowed origin through the proxy works.
    let r = ide.sh("curl -s --max-time 10 http://origin.kennel-test/");
    assert_eq!(r.code, 0, "through the proxy: {}", show(&r));
    assert_eq!(r.stdout, "hello from kennel origin\n");
    // A direct connection to the origin, the host and the gateways fails.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("host listener");
    let port = listener.local_addr().expect("addr").port().to_string();
    let internal_gw = gateway(&d, &names::network(&name)).await;
    let egress_gw = gateway(&d, &egress).await;
    for (what, host, p) in [
        ("origin", origin_ip.as_str(), "80"),
        ("internal gateway", internal_gw.as_str(), port.as_str()),
        ("egress gateway (host)", egress_gw.as_str(), port.as_str()),
        ("docker0 (host)", "172.17.0.1", port.as_str()),
    ] {
        let r = ide.exec(&["probe", "tcp", host, p, "1500"]);
        assert_ne!(
            r.code,
            0,
            "direct connection to the {what} {host}:{p}: {}",
            show(&r)
        );
    }
    drop(listener);
    // DNS for outside names gets no answer (not even NXDOMAIN); the proxy's name resolves.
    for n in ["origin.kennel-test", "kennel-dns-leak-check.invalid"] {
        let r = ide.exec(&["probe", "dns", n]);
        assert_ne!(r.code, 0, "lookup of {n}: {}", show(&r));
        assert!(!r.stdout.contains("NXDOMAIN"), "{n}: {}", show(&r));
    }
    let r = ide.exec(&["probe", "dns", "proxy"]);
    assert_eq!(r.code, 0, "{}", show(&r));

    // kennel sees it (ls/inspect), and --check finds nothing weaker.
    let info: EnvInfo = client.get(&format!("/envs/{name}")).await.expect("inspect");
    assert!(
        info.containers
            .iter()
            .any(|c| c.role == "ide" && c.name == names::ide(&name) && c.state == "running"),
        "{info:?}"
    );
    assert_eq!(info.state, "running", "{info:?}");
    let r = kennel(
        &socket,
        &["devcontainer", "init", "--check", "--workspace", &ws_arg],
    )
    .await;
    assert_eq!(r.code, 0, "check of the generated file: {}", show(&r));
    let r = kennel(&socket, &["inspect", &name]).await;
    assert_eq!(r.code, 0, "{}", show(&r));
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).expect("inspect JSON");
    assert_eq!(doc["weaker_containers"], serde_json::json!([]), "{doc}");

    // A hand-weakened copy: `--privileged` added to runArgs, the container rebuilt from it.
    let text = std::fs::read_to_string(&file).expect("read");
    let weakened = text.replacen("\"runArgs\": [", "\"runArgs\": [\n    \"--privileged\",", 1);
    assert_ne!(weakened, text);
    std::fs::write(&file, &weakened).expect("weaken");
    ide.remove();
    let weak = IdeEmulator::load(&file, &ws_path);
    weak.start();
    // Control: the non-root user has no effective capabilities either way, but --privileged
    // gives back the whole bounding set (setuid programs could use it).
    let r = weak.sh("grep ^CapBnd: /proc/self/status");
    assert!(
        r.code == 0 && !r.stdout.contains("0000000000000000"),
        "control: --privileged gives capabilities: {}",
        show(&r)
    );
    let r = kennel(
        &socket,
        &["devcontainer", "init", "--check", "--workspace", &ws_arg],
    )
    .await;
    assert_eq!(r.code, 1, "check of the weakened file: {}", show(&r));
    assert!(
        r.stdout.contains("runArgs adds --privileged"),
        "{}",
        show(&r)
    );
    assert!(
        r.stdout.contains(&format!(
            "container {} (ide): runs --privileged",
            names::ide(&name)
        )),
        "{}",
        show(&r)
    );
    let r = kennel(&socket, &["inspect", &name]).await;
    assert!(r.stderr.contains("runs --privileged"), "{}", show(&r));

    // `init` again restores kennel's file and keeps the person's edit.
    let r = kennel(&socket, &["devcontainer", "init", "--workspace", &ws_arg]).await;
    assert_eq!(r.code, 0, "{}", show(&r));
    assert_eq!(
        std::fs::read_to_string(file.with_extension("json.orig")).expect("kept"),
        weakened
    );
    assert_eq!(std::fs::read_to_string(&file).expect("read"), text);

    // A container attached to the network by hand, without kennel's labels (cleaned up by its
    // own guard): reported as weaker, and it does not keep `kennel down` from removing the network.
    let stranger_env = format!("{name}-x");
    let _stranger_guard = EnvGuard::new(&stranger_env);
    let stranger = format!("kennel-{stranger_env}");
    let o = Command::new("docker")
        .args([
            "run",
            "-d",
            "--name",
            &stranger,
            "--label",
            &format!("dev.kennel.env={stranger_env}"),
            "--network",
            &names::network(&name),
            &image,
            "/bin/busybox",
            "sleep",
            "600",
        ])
        .output()
        .expect("docker run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = kennel(
        &socket,
        &["devcontainer", "init", "--check", "--workspace", &ws_arg],
    )
    .await;
    assert_eq!(r.code, 1, "{}", show(&r));
    assert!(
        r.stdout.contains(&format!(
            "container {stranger} (unlabelled): does not drop all capabilities"
        )),
        "{}",
        show(&r)
    );

    // `kennel down` removes the IDE's container with the environment.
    let r = kennel(&socket, &["down", &name]).await;
    assert_eq!(r.code, 0, "down: {}", show(&r));
    assert!(
        !container_exists(&names::ide(&name)),
        "the IDE's container outlived down"
    );
    assert!(!container_exists(&names::proxy(&name)));
    assert!(container_exists(&stranger), "not kennel's to remove");
    let o = Command::new("docker")
        .args(["network", "inspect", &names::network(&name)])
        .output()
        .expect("docker network inspect");
    assert!(!o.status.success(), "the internal network outlived down");
    let r = kennel(&socket, &["down", "--purge", &name]).await;
    assert_eq!(r.code, 0, "purge: {}", show(&r));
    daemon.stop().await;
}
