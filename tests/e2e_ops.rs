//! `kennel stats`, `kennel logs` and `kennel refresh` end to end on the real Docker engine,
//! through the daemon's API (in-process daemon, temporary socket and state directory). Skips
//! with a reason without an engine or a static proxy binary, fails instead under `CI=true`.

use std::time::{Duration, Instant};

use kennel_cli::client::{Client, ClientError};
use kennel_cli::commands::up::{UpArgs, build_request};
use kennel_container::Backend;
use kennel_container::backend::{LogsRequest, LogsTarget};
use kennel_supervisord::api::types::{EnvInfo, ExecRequest};
use kennel_supervisord::ops::doctor::{Check, Outcome};
use kennel_supervisord::ops::stats::EnvUsage;
use kennel_test_support::docker::{
    EnvGuard, engine, proxy_binary, share_dir, test_image, unique_env,
};
use tokio::io::AsyncBufReadExt;

use crate::e2e_supervisor::{RunningDaemon, exec};

/// A workspace whose sandbox runs `script` (in busybox sh) as its command.
fn workspace(name: &str, image: &str, script: &str) -> tempfile::TempDir {
    let ws = tempfile::tempdir().expect("workspace");
    share_dir(ws.path(), 1001, 2000, 0o770);
    std::fs::write(
        ws.path().join("kennel.toml"),
        format!(
            "name = \"{name}\"\nimage = \"{image}\"\ncommand = [\"/bin/sh\", \"-c\", {script:?}]\n"
        ),
    )
    .expect("write kennel.toml");
    ws
}

async fn up(client: &Client, ws: &std::path::Path) -> EnvInfo {
    let req = build_request(&UpArgs {
        spec: None,
        name: None,
        image: None,
        workspace: Some(ws.into()),
        learn: None,
        ..Default::default()
    })
    .expect("spec");
    let info: EnvInfo = client.post("/envs", &req).await.expect("create");
    assert_eq!(info.state, "running", "{info:?}");
    info
}

async fn logs(client: &Client, env: &str, target: LogsTarget) -> (String, String) {
    let req = LogsRequest {
        target,
        follow: false,
        since_unix: None,
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = client
        .output_stream(&format!("/envs/{env}/logs"), &req, &mut out, &mut err)
        .await
        .expect("logs");
    assert_eq!(code, 0);
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_stats_and_logs_on_docker() {
    let test = "ops_stats_and_logs_on_docker";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&d).await;
    let name = unique_env("ops-st");
    let _guard = EnvGuard::new(&name);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("kennel.sock");
    let daemon = RunningDaemon::start(&d, &proxy_bin, &socket, &dir.path().join("state"));
    let client = Client::new(&socket);
    // Prints two known lines, then one more each time /tmp/go appears (polled every 0.1 s).
    let script = "echo known-line-one; echo known-line-two >&2; \
        while sleep 0.1; do if [ -f /tmp/go ]; then rm -f /tmp/go; echo followed-line; fi; done";
    let ws = workspace(&name, &image, script);
    up(&client, ws.path()).await;

    // Logs of the sandbox: stdout and stderr apart.
    let mut seen = (String::new(), String::new());
    for _ in 0..50 {
        seen = logs(&client, &name, LogsTarget::Sandbox).await;
        if seen.0.contains("known-line-one") && seen.1.contains("known-line-two") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.0.contains("known-line-one"), "{seen:?}");
    assert!(seen.1.contains("known-line-two"), "{seen:?}");

    // --follow sees a new line within 1 s.
    let (mut w, r) = tokio::io::duplex(64 * 1024);
    let follower = {
        let client = Client::new(&socket);
        let path = format!("/envs/{name}/logs");
        tokio::spawn(async move {
            let req = LogsRequest {
                target: LogsTarget::Sandbox,
                follow: true,
                since_unix: None,
            };
            let mut err = tokio::io::sink();
            client.output_stream(&path, &req, &mut w, &mut err).await
        })
    };
    let mut lines = tokio::io::BufReader::new(r).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("followed logs start")
        .expect("read");
    assert_eq!(first.as_deref(), Some("known-line-one"));
    let (_, _, code) = exec(&client, &name, "touch /tmp/go").await;
    assert_eq!(code, 0);
    let asked = Instant::now();
    let next = tokio::time::timeout(Duration::from_secs(1), lines.next_line())
        .await
        .expect("a new line reaches `logs --follow` within 1 s")
        .expect("read");
    assert_eq!(next.as_deref(), Some("followed-line"));
    eprintln!("followed line after {:?}", asked.elapsed());
    follower.abort();

    // Known loads: 64 MiB resident in a process, 8 MiB written into the workspace, 1 MiB in home,
    // one denied request through the proxy.
    let (_, _, code) = exec(
        &client,
        &name,
        "/usr/local/bin/probe alloc 64 60 > /tmp/alloc.log 2>&1 & \
         dd if=/dev/zero of=/workspace/blob bs=1048576 count=8 2>/dev/null && \
         dd if=/dev/zero of=/home/claude/blob bs=1048576 count=1 2>/dev/null && \
         curl -s -o /dev/null --max-time 5 http://denied.kennel-test/; \
         i=0; while [ $i -lt 100 ]; do grep -q allocated /tmp/alloc.log 2>/dev/null && exit 0; sleep 0.1; i=$((i+1)); done; cat /tmp/alloc.log; exit 1",
    )
    .await;
    assert_eq!(code, 0, "the allocation did not finish");
    let u: EnvUsage = client
        .get(&format!("/envs/{name}/stats"))
        .await
        .expect("stats");
    eprintln!("{u:#?}");
    assert_eq!(u.state, "running");
    let sandbox = u
        .containers
        .iter()
        .find(|c| c.role == "sandbox")
        .expect("sandbox figures");
    let proxy = u
        .containers
        .iter()
        .find(|c| c.role == "proxy")
        .expect("proxy figures");
    assert!(
        sandbox.memory_usage_bytes.unwrap_or(0) >= 64 << 20,
        "64 MiB allocated, {:?} shown",
        sandbox.memory_usage_bytes
    );
    assert!(sandbox.cpu_percent.is_some());
    assert!(sandbox.pids.unwrap_or(0) >= 2);
    assert!(sandbox.pids_limit.is_some(), "the sandbox has a pids limit");
    assert!(proxy.net_rx_bytes.is_some());
    assert!(
        u.workspace_bytes.unwrap_or(0) >= 8 << 20,
        "{:?}",
        u.workspace_bytes
    );
    assert!(u.home_bytes.unwrap_or(0) >= 1 << 20, "{:?}", u.home_bytes);
    assert!(u.age_seconds.is_some());
    let counts = u.proxy.clone().expect("proxy counts from /metrics");
    assert!(counts.denied >= 1, "{counts:?}");
    let all: Vec<EnvUsage> = client.get("/stats").await.expect("stats of all");
    assert!(all.iter().any(|e| e.name == name));

    // The proxy's access log carries the denied request (raw JSON; the CLI renders it).
    let (proxy_out, proxy_err) = logs(&client, &name, LogsTarget::Proxy).await;
    let all_text = format!("{proxy_out}{proxy_err}");
    assert!(all_text.contains("denied.kennel-test"), "{all_text}");
    // An unknown service is a clear error.
    let err = client
        .output_stream(
            &format!("/envs/{name}/logs"),
            &LogsRequest {
                target: LogsTarget::Service("nope".into()),
                follow: false,
                since_unix: None,
            },
            &mut Vec::new(),
            &mut Vec::new(),
        )
        .await
        .expect_err("unknown service");
    assert!(err.to_string().contains("no service \"nope\""), "{err}");

    // `kennel doctor`: the engine line names the CVE when the engine is affected; `kennel
    // doctor ENV`: every isolation check passes inside this environment.
    let checks: Vec<Check> = client.get("/doctor").await.expect("doctor");
    eprintln!("{checks:#?}");
    let engine = checks
        .iter()
        .find(|c| c.name == "engine")
        .expect("engine line");
    assert_ne!(engine.outcome, Outcome::Fail, "{engine:?}");
    if engine.outcome == Outcome::Warn {
        assert!(engine.detail.contains("CVE-2024-29018") && engine.detail.contains("127.0.0.1"));
    }
    assert!(checks.iter().any(|c| c.name == "address pools"));
    let selftest: Vec<Check> = client
        .post(&format!("/envs/{name}/doctor"), &())
        .await
        .expect("self-test");
    eprintln!("{selftest:#?}");
    for name in [
        "proxy denies",
        "gateway unreachable",
        "names do not resolve",
        "capabilities",
    ] {
        assert!(
            selftest.iter().any(|c| c.name == name),
            "no {name} line: {selftest:?}"
        );
    }
    for c in &selftest {
        assert_eq!(c.outcome, Outcome::Pass, "{c:?}");
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_refresh_keeps_workspace_and_home_on_docker() {
    let test = "ops_refresh_keeps_workspace_and_home_on_docker";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&d).await;
    let name = unique_env("ops-rf");
    let _guard = EnvGuard::new(&name);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("kennel.sock");
    let daemon = RunningDaemon::start(&d, &proxy_bin, &socket, &dir.path().join("state"));
    let client = Client::new(&socket);
    let ws = workspace(&name, &image, "exec sleep 3600");
    let before = up(&client, ws.path()).await;
    let ids = |s: kennel_container::backend::EnvStatus| -> Vec<(String, String)> {
        s.containers.into_iter().map(|c| (c.name, c.id)).collect()
    };
    let ids_before = ids(d
        .inspect_env(&name)
        .await
        .expect("inspect")
        .expect("exists"));

    let (_, _, code) = exec(
        &client,
        &name,
        "echo ws > /workspace/keep.txt && echo home > /home/claude/keep.txt && echo tmp > /tmp/drop.txt",
    )
    .await;
    assert_eq!(code, 0);

    // An attached session: ended by the refresh, with the reason as its last word.
    let attached = {
        let client = Client::new(&socket);
        let env = name.clone();
        tokio::spawn(async move {
            let req = ExecRequest {
                cmd: vec!["sleep".into(), "120".into()],
                ..Default::default()
            };
            client
                .exec(&env, &req, None, &mut Vec::new(), &mut Vec::new())
                .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (out, _, _) = exec(&client, &name, "ps | grep -c '[s]leep 120'").await;
        if out.trim() == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the attached session did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let after: EnvInfo = client
        .post(&format!("/envs/{name}/refresh"), &())
        .await
        .expect("refresh");
    assert_eq!(after.state, "running", "{after:?}");
    assert_eq!(after.name, before.name);
    assert_eq!(after.policy_dir, before.policy_dir);
    let ids_after = ids(d
        .inspect_env(&name)
        .await
        .expect("inspect")
        .expect("exists"));
    assert_eq!(ids_before.len(), ids_after.len());
    for ((n1, id1), (n2, id2)) in ids_before.iter().zip(&ids_after) {
        assert_eq!(n1, n2, "same containers");
        assert_ne!(id1, id2, "{n1} was not recreated");
    }

    let ended = tokio::time::timeout(Duration::from_secs(10), attached)
        .await
        .expect("the attached session ended")
        .expect("task");
    match ended {
        Err(ClientError::Exec(msg)) => assert!(msg.contains("being refreshed"), "{msg}"),
        other => panic!("expected the refresh notice, got {other:?}"),
    }

    let (out, _, _) = exec(
        &client,
        &name,
        "cat /workspace/keep.txt /home/claude/keep.txt; test -e /tmp/drop.txt && echo tmp-kept || echo tmp-dropped",
    )
    .await;
    assert_eq!(out, "ws\nhome\ntmp-dropped\n");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_health_rule_fires_and_refreshes_once_on_docker() {
    use kennel_supervisord::auth::{Authorizer, Peer};
    use kennel_supervisord::daemon::DockerImages;
    use kennel_supervisord::ops::health::Action;
    use kennel_supervisord::registry::Daemon;
    use kennel_supervisord::state::StateDir;
    use std::sync::Arc;

    let test = "ops_health_rule_fires_and_refreshes_once_on_docker";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&d).await;
    let name = unique_env("ops-hl");
    let _guard = EnvGuard::new(&name);
    let dir = tempfile::tempdir().expect("tempdir");
    let docker = Arc::new(d.clone());
    let daemon = Daemon::new(
        docker.clone(),
        Arc::new(DockerImages::new(docker, Some(proxy_bin), None)),
        StateDir::open(&dir.path().join("state")).expect("state dir"),
        Authorizer::new(0, [], []),
    );
    let ws = workspace(&name, &image, "exec sleep 3600");
    let toml = ws.path().join("kennel.toml");
    let mut text = std::fs::read_to_string(&toml).expect("read");
    text.push_str("[health]\nmax_age = \"5s\"\n");
    std::fs::write(&toml, text).expect("write");
    let req = build_request(&UpArgs {
        spec: None,
        name: None,
        image: None,
        workspace: Some(ws.path().into()),
        learn: None,
        ..Default::default()
    })
    .expect("spec");
    let peer = Peer {
        pid: None,
        uid: 0,
        gid: 0,
        groups: vec![],
    };
    daemon.create(&peer, req).await.expect("create");
    let ids = |s: kennel_container::backend::EnvStatus| -> Vec<String> {
        s.containers.into_iter().map(|c| c.id).collect()
    };
    let before = ids(d
        .inspect_env(&name)
        .await
        .expect("inspect")
        .expect("exists"));

    let round = daemon.health_round().await;
    assert_eq!(
        round,
        vec![(name.clone(), Action::None)],
        "young environment"
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let round = daemon.health_round().await;
    match &round[..] {
        [(n, Action::Refreshed(why))] if n == &name => {
            assert!(
                why.starts_with("max_age ") && why.ends_with("> 5s"),
                "{why}"
            );
        }
        other => panic!("expected one refresh, got {other:?}"),
    }
    let after = ids(d
        .inspect_env(&name)
        .await
        .expect("inspect")
        .expect("exists"));
    assert!(before.iter().all(|id| !after.contains(id)), "recreated");
    // The new sandbox is young again: no second refresh.
    let round = daemon.health_round().await;
    assert_eq!(round, vec![(name.clone(), Action::None)]);
    let h = daemon.health_of(&name).expect("health");
    assert!(
        h.last_action
            .as_deref()
            .unwrap_or("")
            .starts_with("refreshed: max_age")
    );
    daemon.remove(&name).await.expect("remove");
}

/// The `kennel bench` containers of `env` that exist now (any state).
async fn bench_containers(d: &kennel_container::DockerBackend, env: &str) -> Vec<String> {
    d.inspect_env(env)
        .await
        .expect("inspect")
        .map(|s| {
            s.containers
                .into_iter()
                .filter(|c| kennel_container::bench::is_bench_role(&c.role))
                .map(|c| c.name)
                .collect()
        })
        .unwrap_or_default()
}

/// What the sandbox's proxy answers for `http://ADDR/1`: `403` is the policy's refusal (the
/// proxy dials nothing for it).
async fn proxy_answer(client: &Client, env: &str, addr: &str) -> String {
    let (out, _, _) = exec(
        client,
        env,
        &format!(
            "curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 -x http://proxy:8888 http://{addr}/1"
        ),
    )
    .await;
    out
}

/// `kennel bench ENV` on Docker: both figures (through the proxy from the sandbox, and direct
/// from the egress network) and their ratios; afterwards the policy file is byte-identical, the
/// proxy refuses the origin's address again, and no benchmark container is left. A run whose
/// caller goes away (Ctrl-C) still cleans up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_bench_measures_both_paths_and_leaves_no_hole_on_docker() {
    use kennel_supervisord::api::policy_types::PolicyFileDoc;
    use kennel_supervisord::ops::bench::{BenchReport, BenchRequest};
    let test = "ops_bench_measures_both_paths_and_leaves_no_hole_on_docker";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&d).await;
    let name = unique_env("ops-bn");
    let _guard = EnvGuard::new(&name);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("kennel.sock");
    let daemon = RunningDaemon::start(&d, &proxy_bin, &socket, &dir.path().join("state"));
    let client = Client::new(&socket);
    let ws = workspace(&name, &image, "exec sleep 3600");
    up(&client, ws.path()).await;
    let policy_path = format!("/envs/{name}/policy/file");
    let policy_before: PolicyFileDoc = client.get(&policy_path).await.expect("policy file");

    // Small, bounded sizes: this checks the command, not the machine.
    let req = BenchRequest {
        bytes: 8 << 20,
        secs: 0.5,
        max_conns: 2000,
        clients: 2,
    };
    let report: BenchReport = client
        .post(&format!("/envs/{name}/bench"), &req)
        .await
        .expect("bench");
    for r in [&report.proxy, &report.direct] {
        assert_eq!(r.bytes, 8 << 20, "{report:?}");
        assert!(r.mb_per_s > 0.0, "{report:?}");
        assert!(r.connections > 0 && r.connections <= 2000, "{report:?}");
        assert!(r.connections_per_s > 0.0, "{report:?}");
    }
    assert_eq!(report.proxy.path, "proxy");
    assert_eq!(report.direct.path, "direct");
    assert!(report.throughput_ratio > 0.0 && report.connection_rate_ratio > 0.0);
    let origin_ip = report.origin.split(':').next().expect("ip").to_string();
    assert!(
        report
            .temporary_allow
            .as_deref()
            .is_some_and(|e| e.contains(&origin_ip)),
        "{report:?}"
    );
    let shown = kennel_cli::commands::bench::render(&report);
    eprintln!("{shown}");
    for want in [
        "sandbox -> proxy -> origin",
        "egress network -> origin",
        "MB/s",
        "conn/s",
        "proxy / direct",
    ] {
        assert!(shown.contains(want), "{want:?} missing from:\n{shown}");
    }

    // No hole left: the file is as before, and the proxy refuses the origin's address.
    let policy_after: PolicyFileDoc = client.get(&policy_path).await.expect("policy file");
    assert_eq!(policy_after.content, policy_before.content);
    assert_eq!(proxy_answer(&client, &name, &report.origin).await, "403");
    assert_eq!(bench_containers(&d, &name).await, Vec::<String>::new());

    // Ctrl-C: the caller goes away while the run is under way; the daemon still cleans up.
    let run = {
        let client = Client::new(&socket);
        let path = format!("/envs/{name}/bench");
        let req = BenchRequest {
            bytes: 8 << 20,
            secs: 2.0,
            max_conns: 100_000,
            clients: 2,
        };
        tokio::spawn(async move { client.post::<_, BenchReport>(&path, &req).await })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while bench_containers(&d, &name).await.is_empty() {
        assert!(Instant::now() < deadline, "the second run did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.abort();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = bench_containers(&d, &name).await;
        let file: PolicyFileDoc = client.get(&policy_path).await.expect("policy file");
        if left.is_empty() && file.content == policy_before.content {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not cleaned up after the caller left: {left:?}\n{}",
            file.content
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The environment is left as it was: still running, nothing but its own containers.
    let status = d
        .inspect_env(&name)
        .await
        .expect("inspect")
        .expect("exists");
    assert_eq!(status.state, kennel_container::EnvState::Running);
    daemon.stop().await;
}
