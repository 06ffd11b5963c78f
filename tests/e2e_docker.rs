//! Environments on the real Docker engine (mandatory under `CI=true`, skipped with a reason when
//! no engine answers): the sandbox's only way out is its proxy. Every test uses its own
//! environment name and removes every labelled object on drop, also on failure. Traffic goes only
//! to the project's own containers on their own networks, and to a listener this test opens on
//! the host's bridge addresses.

use kennel_container::backend::names;
use kennel_container::{Backend, BackendError};
use kennel_test_support::docker::{EnvOptions, TestEnv, exec_in};

fn out(r: &kennel_container::backend::ExecResult) -> String {
    format!(
        "exit {} stdout {:?} stderr {:?}",
        r.exit_code,
        r.stdout_str(),
        r.stderr_str()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_reaches_allowed_origin_through_proxy_and_gets_403_for_denied() {
    let Some(t) = TestEnv::start("egress_through_proxy", "egress", EnvOptions::default()).await
    else {
        return;
    };
    // Allowed, plain HTTP (the sandbox's HTTP_PROXY points at the proxy).
    let r = t
        .sh("curl -sS --max-time 10 http://origin.kennel-test/index.html")
        .await;
    assert_eq!(r.exit_code, 0, "{}", out(&r));
    assert_eq!(r.stdout_str(), "hello from kennel origin\n");

    // Allowed, HTTPS via CONNECT, certificate checked against the test CA.
    let r = t
        .sh("curl -sS --max-time 10 --cacert /workspace/ca.pem https://tls-origin.kennel-test/")
        .await;
    assert_eq!(r.exit_code, 0, "{}", out(&r));
    assert!(r.stdout_str().contains("s_server"), "{}", out(&r));

    // Denied: 403 with a body that names the host and says how to allow it.
    let r = t
        .sh("curl -sS --max-time 10 -o /tmp/body -w '%{http_code}' http://denied.kennel-test/; echo; cat /tmp/body")
        .await;
    let text = r.stdout_str();
    assert!(text.starts_with("403"), "{}", out(&r));
    assert!(
        text.contains("egress to denied.kennel-test:80 denied"),
        "{}",
        out(&r)
    );
    // It names the policy file as the person sees it on the host (the environment's policy
    // directory in the state dir), not the path inside the proxy container.
    let host_policy = t.policy_dir.path().join("policy.toml");
    assert!(
        text.contains(&format!(
            "To allow it, add \"denied.kennel-test\" to hosts in the [allow] table of {}.",
            host_policy.display()
        )),
        "{}",
        out(&r)
    );

    // Denied over CONNECT too: curl reports the proxy's 403.
    let r = t
        .sh("curl -sS --max-time 10 https://denied.kennel-test/ 2>&1")
        .await;
    assert_ne!(r.exit_code, 0, "{}", out(&r));
    assert!(r.stdout_str().contains("403"), "{}", out(&r));
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_cannot_connect_directly_anywhere_but_the_proxy() {
    let Some(t) = TestEnv::start("direct_tcp", "direct", EnvOptions::default()).await else {
        return;
    };
    let origin = t.origin.clone().expect("origin");
    let egress = names::egress_network(&t.name);
    let origin_ip = t.ip(&origin, &egress).await;
    let proxy_egress_ip = t.ip(&t.proxy(), &egress).await;
    let proxy_internal_ip = t.ip(&t.proxy(), &names::network(&t.name)).await;
    let gw = gateway(&t, &egress).await;
    let internal_gw = gateway(&t, &names::network(&t.name)).await;

    // Control: the probe does connect where a path exists (the proxy port on the internal side),
    // and the origin answers on its egress address from the egress network.
    let r = t.run(&["probe", "tcp", "proxy", "8888"]).await;
    assert_eq!(
        r.exit_code,
        0,
        "control: sandbox -> proxy:8888: {}",
        out(&r)
    );
    let r = exec_in(
        &t.d,
        &t.proxy_peer(),
        &["probe", "tcp", &origin_ip, "80"],
        None,
    )
    .await;
    assert_eq!(
        r.exit_code,
        0,
        "control: origin reachable on egress: {}",
        out(&r)
    );

    for (what, host, port) in [
        ("origin", origin_ip.as_str(), "80"),
        ("origin tls", origin_ip.as_str(), "443"),
        ("proxy egress side", proxy_egress_ip.as_str(), "8888"),
        (
            "proxy admin (egress side)",
            proxy_egress_ip.as_str(),
            "9901",
        ),
        (
            "proxy admin (internal side)",
            proxy_internal_ip.as_str(),
            "9901",
        ),
        ("egress bridge gateway", gw.as_str(), "80"),
        ("internal network gateway", internal_gw.as_str(), "80"),
    ] {
        let r = t.run(&["probe", "tcp", host, port, "1500"]).await;
        assert_ne!(
            r.exit_code,
            0,
            "sandbox reached {what} {host}:{port}: {}",
            out(&r)
        );
        assert!(r.stdout_str().starts_with("fail:"), "{}", out(&r));
    }
}

impl TestEnvExt for TestEnv {
    fn proxy_peer(&self) -> String {
        self.origin.clone().expect("origin")
    }
}

trait TestEnvExt {
    /// A container on the egress network (the origin) for positive controls.
    fn proxy_peer(&self) -> String;
}

async fn gateway(t: &TestEnv, network: &str) -> String {
    let n =
        t.d.docker()
            .inspect_network(network, None)
            .await
            .expect("inspect network");
    let cfg = n
        .ipam
        .and_then(|i| i.config)
        .and_then(|c| c.into_iter().next())
        .expect("ipam config");
    cfg.gateway.unwrap_or_else(|| {
        let subnet = cfg.subnet.expect("subnet");
        let base: std::net::Ipv4Addr = subnet.split('/').next().unwrap_or("").parse().expect("ip");
        std::net::Ipv4Addr::from(u32::from(base) + 1).to_string()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn host_listener_unreachable_from_sandbox() {
    let Some(t) = TestEnv::start("host_listener", "hostl", EnvOptions::default()).await else {
        return;
    };
    // A listener on the host's 0.0.0.0: every host address, including the bridges'.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind host listener");
    let port = listener.local_addr().expect("addr").port().to_string();
    let egress_gw = gateway(&t, &names::egress_network(&t.name)).await;
    let internal_gw = gateway(&t, &names::network(&t.name)).await;

    // Control: from the egress network the host listener IS reachable (so the probe can fail).
    let r = exec_in(
        &t.d,
        &t.proxy_peer(),
        &["probe", "tcp", &egress_gw, &port],
        None,
    )
    .await;
    assert_eq!(
        r.exit_code,
        0,
        "control: origin -> host listener: {}",
        out(&r)
    );

    for host in [internal_gw.as_str(), egress_gw.as_str(), "172.17.0.1"] {
        let r = t.run(&["probe", "tcp", host, &port, "1500"]).await;
        assert_ne!(
            r.exit_code,
            0,
            "sandbox reached host listener at {host}: {}",
            out(&r)
        );
    }
    // The internal bridge has no host address at all (inhibit_ipv4).
    let net =
        t.d.docker()
            .inspect_network(&names::network(&t.name), None)
            .await
            .expect("inspect");
    assert_eq!(net.internal, Some(true));
    assert_eq!(
        net.options
            .unwrap_or_default()
            .get("com.docker.network.bridge.inhibit_ipv4")
            .map(String::as_str),
        Some("true")
    );

    drop(listener);
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_dns_and_udp_go_nowhere_but_proxy_resolves() {
    let Some(t) = TestEnv::start("dns_udp", "dnsudp", EnvOptions::default()).await else {
        return;
    };
    let version = t.d.engine_version().await.expect("version");
    eprintln!("engine version {version} (CVE-2024-29018 fixed in >= 26.0.0 / 25.0.4 / 23.0.11)");

    // The sandbox's resolver upstream is an address in its own namespace (see hardening.rs);
    // only then is it safe to look up a name that is not the environment's own.
    let info =
        t.d.docker()
            .inspect_container(
                &t.sandbox(),
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .expect("inspect sandbox");
    let dns = info.host_config.and_then(|h| h.dns).unwrap_or_default();
    assert_eq!(dns, vec!["127.0.0.1".to_string()], "sandbox DNS upstream");

    let r = t.run(&["probe", "dns", "proxy"]).await;
    assert_eq!(r.exit_code, 0, "the proxy alias resolves: {}", out(&r));
    let proxy_ip = t.ip(&t.proxy(), &names::network(&t.name)).await;
    assert!(r.stdout_str().contains(&proxy_ip), "{}", out(&r));

    // A name on the egress side and an external name: no answer (not even NXDOMAIN, which would
    // mean a resolver outside answered).
    for name in ["origin.kennel-test", "kennel-dns-leak-check.invalid"] {
        let r = t.run(&["probe", "dns", name]).await;
        assert_ne!(r.exit_code, 0, "lookup of {name} succeeded: {}", out(&r));
        assert!(!r.stdout_str().contains("NXDOMAIN"), "{name}: {}", out(&r));
    }

    // UDP: the origin echoes (control from the egress network), the sandbox gets nothing.
    let origin_ip = t.ip(&t.proxy_peer(), &names::egress_network(&t.name)).await;
    let r = exec_in(
        &t.d,
        &t.proxy_peer(),
        &["probe", "udp", &origin_ip, "7"],
        None,
    )
    .await;
    assert_eq!(r.exit_code, 0, "control: UDP echo answers: {}", out(&r));
    let r = t.run(&["probe", "udp", &origin_ip, "7"]).await;
    assert_ne!(r.exit_code, 0, "sandbox got a UDP reply: {}", out(&r));
    // DNS straight to other resolvers' addresses gets nowhere either.
    let gw = gateway(&t, &names::egress_network(&t.name)).await;
    let r = t.run(&["probe", "dns", "origin.kennel-test", &gw]).await;
    assert_ne!(r.exit_code, 0, "{}", out(&r));
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_is_unprivileged_read_only_and_blind_to_policy_and_docker() {
    let Some(t) = TestEnv::start(
        "unprivileged",
        "unpriv",
        EnvOptions {
            origin: false,
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    // Exec streams stdout and stderr separately and propagates the exit code.
    let r = t.sh("echo out; echo err >&2; exit 3").await;
    assert_eq!(
        (
            r.stdout_str().as_str(),
            r.stderr_str().as_str(),
            r.exit_code
        ),
        ("out\n", "err\n", 3)
    );

    // With a TTY, output arrives on stdout and the command sees a terminal.
    let s =
        t.d.exec(
            &t.name,
            kennel_container::ExecRequest {
                cmd: vec!["sh".into(), "-c".into(), "test -t 1 && echo tty".into()],
                tty: true,
                ..Default::default()
            },
        )
        .await
        .expect("tty exec");
    assert!(s.resize.is_some(), "a TTY exec can be resized");
    let r = s.collect().await.expect("collect");
    assert_eq!(
        (r.stdout_str().trim(), r.exit_code),
        ("tty", 0),
        "{}",
        out(&r)
    );

    let r = t.run(&["id"]).await;
    assert_eq!(r.exit_code, 0, "{}", out(&r));
    assert!(
        r.stdout_str().starts_with("uid=1001(claude) gid=2000(dev)"),
        "{}",
        out(&r)
    );

    let r = t.run(&["cat", "/proc/self/status"]).await;
    let status = r.stdout_str();
    for (key, want) in [
        ("CapEff:", "0000000000000000"),
        ("CapPrm:", "0000000000000000"),
        ("CapBnd:", "0000000000000000"),
        ("NoNewPrivs:", "1"),
        ("Seccomp:", "2"),
    ] {
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("{key} missing in {status}"));
        assert_eq!(line.split_whitespace().nth(1), Some(want), "{line}");
    }

    // Writable: workspace, home, /tmp. Nothing else.
    for path in ["/workspace/w", "/home/claude/w", "/tmp/w"] {
        let r = t.run(&["probe", "write", path]).await;
        assert_eq!(r.exit_code, 0, "cannot write {path}: {}", out(&r));
    }
    assert!(
        t.workspace.path().join("w").is_file(),
        "workspace write visible on the host"
    );
    for path in [
        "/w", "/etc/w", "/usr/w", "/bin/w", "/root/w", "/run/w", "/var/w",
    ] {
        let r = t.run(&["probe", "write", path]).await;
        assert_ne!(r.exit_code, 0, "could write {path}: {}", out(&r));
    }

    // The policy directory is not there (only the proxy mounts it), nor is any Docker socket.
    let policy_host = t.policy_dir.path().display().to_string();
    let r = t.run(&["cat", "/proc/self/mountinfo"]).await;
    assert!(
        !r.stdout_str().contains(&policy_host),
        "policy dir mounted: {}",
        out(&r)
    );
    for path in [
        "/etc/kennel",
        "/etc/kennel/policy.toml",
        "/var/run/docker.sock",
        "/run/docker.sock",
    ] {
        let r = t.run(&["probe", "read", path]).await;
        assert_ne!(r.exit_code, 0, "sandbox can read {path}: {}", out(&r));
    }
    assert!(!r.stdout_str().contains("docker.sock"));
    // Control: the proxy does have it (read-only).
    let info =
        t.d.docker()
            .inspect_container(
                &t.proxy(),
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .expect("inspect proxy");
    let mounts = info.mounts.unwrap_or_default();
    let m = mounts
        .iter()
        .find(|m| m.destination.as_deref() == Some("/etc/kennel"))
        .expect("policy mount in proxy");
    assert_eq!(m.rw, Some(false), "policy mount must be read-only");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_container_is_hardened() {
    let Some(t) = TestEnv::start(
        "proxy_hardened",
        "phard",
        EnvOptions {
            origin: false,
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let info =
        t.d.docker()
            .inspect_container(
                &t.proxy(),
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .expect("inspect proxy");
    let cfg = info.config.expect("config");
    assert_eq!(cfg.user.as_deref(), Some("65532:65532"));
    let host = info.host_config.expect("host config");
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    assert!(
        host.security_opt
            .unwrap_or_default()
            .iter()
            .any(|s| s.starts_with("no-new-privileges")),
    );
    let nets = info
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default();
    let mut names_: Vec<&String> = nets.keys().collect();
    names_.sort();
    assert_eq!(
        names_,
        vec![&names::network(&t.name), &names::egress_network(&t.name)]
    );
    let sandbox =
        t.d.docker()
            .inspect_container(
                &t.sandbox(),
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .expect("inspect sandbox");
    let nets = sandbox
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default();
    assert_eq!(
        nets.keys().collect::<Vec<_>>(),
        vec![&names::network(&t.name)]
    );
    // The admin port answers from the host on the egress side (the daemon's path).
    let admin =
        t.d.proxy_admin_address(&t.name)
            .await
            .expect("admin")
            .expect("admin address");
    tokio::net::TcpStream::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("admin {admin} unreachable from host: {e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_limits_are_applied() {
    let Some(t) = TestEnv::start(
        "limits",
        "limits",
        EnvOptions {
            origin: false,
            spec_extra:
                "[resources]\ncpus = 1.5\nmemory = \"256m\"\npids = 40\nnofile = [512, 1024]\n"
                    .into(),
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let info =
        t.d.docker()
            .inspect_container(
                &t.sandbox(),
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .expect("inspect sandbox");
    let host = info.host_config.expect("host config");
    assert_eq!(host.nano_cpus, Some(1_500_000_000));
    assert_eq!(host.memory, Some(256 * 1024 * 1024));
    assert_eq!(host.pids_limit, Some(40));
    let ul = host.ulimits.unwrap_or_default();
    assert_eq!(ul.len(), 1);
    assert_eq!((ul[0].soft, ul[0].hard), (Some(512), Some(1024)));

    let stats =
        t.d.stats(&t.name)
            .await
            .expect("stats")
            .expect("sandbox stats");
    assert_eq!(
        stats.memory_limit_bytes,
        Some(256 * 1024 * 1024),
        "{stats:?}"
    );
    assert!(stats.pids.is_some_and(|p| p >= 1), "{stats:?}");
    assert!(
        stats.memory_percent().is_some_and(|p| p < 100.0),
        "{stats:?}"
    );
    assert!(stats.started_at.is_some(), "{stats:?}");

    // The container's own process has exactly the configured nofile limits.
    let r = t.sh("grep 'Max open files' /proc/1/limits").await;
    let limits: Vec<String> = r
        .stdout_str()
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(
        limits.get(3..5),
        Some(&["512".to_string(), "1024".to_string()][..]),
        "{}",
        out(&r)
    );
    // An exec'd process keeps the hard limit; its soft limit is 512, or sometimes the hard
    // limit: seen about once in five runs with Debian's docker 20.10 / runc 1.1.5 (probably the
    // Go runtime of the exec path raising its soft RLIMIT_NOFILE and handing it on). The hard
    // limit is the bound that holds for every process.
    let r = t.sh("ulimit -n; ulimit -Hn").await;
    let exec_limits = r.stdout_str();
    assert!(
        exec_limits == "512\n1024\n" || exec_limits == "1024\n1024\n",
        "{}",
        out(&r)
    );
    // The pids limit stops a fork loop well before 100 children.
    let r = t.run(&["probe", "spawn", "100"]).await;
    assert_ne!(r.exit_code, 0, "100 processes under pids=40: {}", out(&r));
    let spawned: usize = r
        .stdout_str()
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    assert!(spawned < 40, "{}", out(&r));
    // And a small number still works (the limit, not something else, stopped it).
    let r = t.run(&["probe", "spawn", "5"]).await;
    assert_eq!(r.exit_code, 0, "{}", out(&r));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_envs_cannot_reach_each_other() {
    let Some(a) = TestEnv::start(
        "two_envs_a",
        "twoa",
        EnvOptions {
            origin: false,
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let Some(b) = TestEnv::start(
        "two_envs_b",
        "twob",
        EnvOptions {
            origin: false,
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let b_proxy = b.ip(&b.proxy(), &names::network(&b.name)).await;
    let b_sandbox = b.ip(&b.sandbox(), &names::network(&b.name)).await;
    let b_proxy_egress = b.ip(&b.proxy(), &names::egress_network(&b.name)).await;
    let a_proxy = a.ip(&a.proxy(), &names::network(&a.name)).await;
    // Control: each sandbox reaches its own proxy.
    let r = a.run(&["probe", "tcp", "proxy", "8888"]).await;
    assert_eq!(r.exit_code, 0, "{}", out(&r));
    let r = a.run(&["probe", "dns", "proxy"]).await;
    assert!(
        r.stdout_str().contains(&a_proxy),
        "alias proxy is A's own: {}",
        out(&r)
    );
    for (what, host, port) in [
        ("B's proxy", b_proxy.as_str(), "8888"),
        ("B's proxy egress", b_proxy_egress.as_str(), "8888"),
        ("B's sandbox", b_sandbox.as_str(), "22"),
    ] {
        let r = a.run(&["probe", "tcp", host, port, "1500"]).await;
        assert_ne!(r.exit_code, 0, "A reached {what}: {}", out(&r));
    }
    let r = a.run(&["probe", "dns", &names::sandbox(&b.name)]).await;
    assert_ne!(r.exit_code, 0, "A resolves B's sandbox: {}", out(&r));
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_env_removes_every_labelled_object_and_names_collide() {
    let Some(t) = TestEnv::start("remove_env", "remove", EnvOptions::default()).await else {
        return;
    };
    let listed = t.d.list_envs().await.expect("list");
    assert!(
        listed.iter().any(|e| e.name == t.name),
        "listed: {listed:?}"
    );
    let st =
        t.d.inspect_env(&t.name)
            .await
            .expect("inspect")
            .expect("present");
    assert_eq!(st.state, kennel_container::EnvState::Running, "{st:?}");
    assert_eq!(
        st.labels.get("dev.kennel.test").map(String::as_str),
        Some("remove_env")
    );

    // Same name again: a clear conflict, and the running env is untouched.
    match t.d.create_env(&t.plan).await {
        Err(BackendError::AlreadyExists(n)) => assert_eq!(n, t.name),
        other => panic!("second create: {other:?}"),
    }
    assert!(t.d.inspect_env(&t.name).await.expect("inspect").is_some());

    t.d.remove_env(&t.name).await.expect("remove");
    let label = format!("dev.kennel.env={}", t.name);
    let filters = std::collections::HashMap::from([("label".to_string(), vec![label])]);
    let cs =
        t.d.docker()
            .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                all: true,
                filters: Some(filters.clone()),
                ..Default::default()
            }))
            .await
            .expect("list containers");
    assert!(cs.is_empty(), "containers left: {cs:?}");
    let ns =
        t.d.docker()
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .expect("list networks");
    assert!(ns.is_empty(), "networks left: {ns:?}");
    assert!(t.d.inspect_env(&t.name).await.expect("inspect").is_none());
    // Idempotent.
    t.d.remove_env(&t.name).await.expect("remove again");
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_create_leaves_nothing_behind() {
    let Some(t) = TestEnv::start(
        "failed_create",
        "fail",
        EnvOptions {
            origin: false,
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let mut plan = t.plan.clone();
    plan.spec.name = format!("{}-x", t.name);
    plan.spec.image = "kennel-no-such-image:never".into();
    let _guard = kennel_test_support::docker::EnvGuard::new(&plan.spec.name);
    let err =
        t.d.create_env(&plan)
            .await
            .expect_err("missing image must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("kennel-no-such-image") || msg.contains(&names::sandbox(&plan.spec.name)),
        "{msg}"
    );
    assert!(
        t.d.inspect_env(&plan.spec.name)
            .await
            .expect("inspect")
            .is_none(),
        "leftovers after {msg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn git_token_is_a_read_only_file_never_an_env_var() {
    let token_dir = tempfile::tempdir().expect("tmp");
    let token = token_dir.path().join("token");
    std::fs::write(&token, "s3cr3t-token-value\n").expect("write token");
    let gitconfig = token_dir.path().join("gitconfig");
    std::fs::write(&gitconfig, "[user]\n\tname = kennel test\n").expect("write gitconfig");
    kennel_test_support::docker::share_dir(token_dir.path(), 0, 0, 0o755);
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let Some(t) = TestEnv::start(
        "git_token",
        "token",
        EnvOptions {
            origin: false,
            spec_extra: format!(
                "[credentials]\ngit_token_file = \"{}\"\ngit_config = \"{}\"\n",
                token.display(),
                gitconfig.display()
            ),
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let info =
        t.d.docker()
            .inspect_container(
                &t.sandbox(),
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .expect("inspect sandbox");
    let env = info.config.and_then(|c| c.env).unwrap_or_default();
    assert!(
        !env.iter().any(|e| e.contains("s3cr3t")),
        "token in env: {env:?}"
    );
    assert!(
        env.iter()
            .any(|e| e == "GIT_ASKPASS=/run/kennel/git-askpass"),
        "{env:?}"
    );
    let r = t
        .sh("$GIT_ASKPASS 'Password for https://github.com: '")
        .await;
    assert_eq!(r.stdout_str(), "s3cr3t-token-value\n", "{}", out(&r));
    let r = t
        .sh("$GIT_ASKPASS 'Username for https://github.com: '")
        .await;
    assert_eq!(r.stdout_str(), "x-access-token\n", "{}", out(&r));
    let r = t.run(&["probe", "write", "/run/kennel/git-token"]).await;
    assert_ne!(r.exit_code, 0, "token file writable: {}", out(&r));
    // Credentials land in the (tmpfs) home, read-only.
    let r = t.run(&["cat", "/home/claude/.gitconfig"]).await;
    assert_eq!(
        r.stdout_str(),
        "[user]\n\tname = kennel test\n",
        "{}",
        out(&r)
    );
    let r = t.run(&["probe", "write", "/home/claude/.gitconfig"]).await;
    assert_ne!(r.exit_code, 0, "credential mount writable: {}", out(&r));
    let r = t.run(&["probe", "write", "/home/claude/other"]).await;
    assert_eq!(r.exit_code, 0, "home still writable: {}", out(&r));
    drop(token_dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_image_is_static_scratch_content_tagged_and_reused() {
    let Some(d) = kennel_test_support::docker::engine("proxy_image").await else {
        return;
    };
    let Some(bin) = kennel_test_support::docker::proxy_binary("proxy_image") else {
        return;
    };
    let tag = kennel_container::image::ensure_proxy_image(&d, &bin)
        .await
        .expect("proxy image");
    assert!(tag.starts_with("kennel-proxy:"), "{tag}");
    let again = kennel_container::image::ensure_proxy_image(&d, &bin)
        .await
        .expect("proxy image again");
    assert_eq!(tag, again, "same binary, same tag (no reload)");
    let info = d.docker().inspect_image(&tag).await.expect("inspect image");
    let cfg = info.config.expect("config");
    assert_eq!(cfg.user.as_deref(), Some("65532:65532"));
    assert_eq!(cfg.entrypoint, Some(vec!["/kennel-proxy".to_string()]));
    let layers = info.root_fs.and_then(|r| r.layers).unwrap_or_default();
    assert_eq!(layers.len(), 1, "one layer, FROM scratch");
    // A dynamically linked binary is refused with a message that says how to build a static one.
    let err = kennel_container::image::ensure_proxy_image(&d, std::path::Path::new("/bin/sh"))
        .await
        .expect_err("dynamic binary");
    assert!(err.to_string().contains("crt-static"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn service_is_reachable_from_sandbox_only_on_the_internal_network() {
    let image_probe = kennel_test_support::docker::engine("service").await;
    let Some(d) = image_probe else {
        return;
    };
    let image = kennel_test_support::docker::test_image(&d).await;
    let Some(t) = TestEnv::start(
        "service",
        "svc",
        EnvOptions {
            spec_extra: format!(
                "[[service]]\nname = \"web\"\nimage = \"{image}\"\ncommand = [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
            ),
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let svc = names::service(&t.name, "web");
    let info =
        t.d.docker()
            .inspect_container(
                &svc,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .expect("inspect service");
    let nets = info
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default();
    assert_eq!(
        nets.keys().collect::<Vec<_>>(),
        vec![&names::network(&t.name)]
    );
    let caps = info
        .host_config
        .and_then(|h| h.cap_drop)
        .unwrap_or_default();
    assert!(caps.contains(&"NET_RAW".to_string()), "{caps:?}");

    // The sandbox reaches the service by name, directly (NO_PROXY lists it).
    let r = t
        .sh("echo $NO_PROXY; curl -sS --max-time 10 http://web:8080/index.html")
        .await;
    assert_eq!(r.exit_code, 0, "{}", out(&r));
    assert!(r.stdout_str().contains(",web"), "{}", out(&r));
    assert!(
        r.stdout_str().ends_with("hello from kennel origin\n"),
        "{}",
        out(&r)
    );
    // The service has no way out either.
    let origin_ip = t.ip(&t.proxy_peer(), &names::egress_network(&t.name)).await;
    let r = exec_in(
        &t.d,
        &svc,
        &["probe", "tcp", &origin_ip, "80", "1500"],
        None,
    )
    .await;
    assert_ne!(r.exit_code, 0, "service reached the origin: {}", out(&r));
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_edit_in_the_state_dir_reaches_the_running_proxy() {
    let Some(t) = TestEnv::start("policy_edit", "pedit", EnvOptions::default()).await else {
        return;
    };
    let probe = "curl -s --max-time 10 -o /dev/null -w '%{http_code}' http://denied.kennel-test/";
    let r = t.sh(probe).await;
    assert_eq!(r.stdout_str(), "403", "{}", out(&r));
    // Editors replace files by rename; the directory mount sees the new file.
    let dir = t.policy_dir.path();
    let new_policy = kennel_test_support::docker::TEST_POLICY.replace(
        "\"tls-origin.kennel-test\"]",
        "\"tls-origin.kennel-test\", \"denied.kennel-test\"]",
    );
    assert_ne!(new_policy, kennel_test_support::docker::TEST_POLICY);
    std::fs::write(dir.join(".policy.toml.new"), new_policy).expect("write");
    std::fs::rename(dir.join(".policy.toml.new"), dir.join("policy.toml")).expect("rename");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = t.sh(probe).await;
        if r.stdout_str() == "200" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "policy edit not applied: {}",
            out(&r)
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
