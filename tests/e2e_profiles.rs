//! Egress profiles on the real Docker engine (issue 16, item 1): an environment with
//! `[egress.profiles.extra]` gets a second proxy `kennel-<env>-proxy-extra` (alias
//! `proxy-extra`) with its own policy; a service with `egress = "extra"` goes out through it and
//! only through it; the sandbox keeps the environment's own policy; `kennel allow --profile`
//! takes effect without a restart and survives `kennel refresh`, which recreates the profile's
//! proxy; `kennel down` removes it. The daemon runs in-process and the CLI's code talks to it.
//! Traffic goes only to the test's own origin container on the environment's egress network.
//! Mandatory under `CI=true`, skipped with a reason without an engine.

use std::time::{Duration, Instant};

use kennel_cli::client::Client;
use kennel_cli::commands::up::{UpArgs, build_request};
use kennel_container::backend::names;
use kennel_container::{DockerBackend, profile_proxy_name};
use kennel_supervisord::api::policy_types::{AllowRequest, Denials, PolicyChanged, PolicyView};
use kennel_supervisord::api::types::{EnvInfo, Removed};
use kennel_test_support::docker::{
    EnvGuard, OriginSpec, engine, exec_in, network_ipam, proxy_binary, share_dir, start_origin,
    test_image, unique_env, wait_tcp,
};

use crate::e2e_supervisor::{RunningDaemon, exec};

/// The HTTP status `curl` gets for `url` from the service `fetcher` (its proxy variables are
/// the container's own: the profile's proxy).
async fn from_service(d: &DockerBackend, env: &str, url: &str) -> String {
    let r = exec_in(
        d,
        &names::service(env, "fetcher"),
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            url,
        ],
        None,
    )
    .await;
    r.stdout_str()
}

/// The HTTP status `curl` gets for `url` from the sandbox (through the environment's proxy).
async fn from_sandbox(client: &Client, env: &str, url: &str) -> String {
    let (out, _, _) = exec(
        client,
        env,
        &format!("curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 {url}"),
    )
    .await;
    out
}

/// `curl`'s status and exit code for `url` from the sandbox with `proxy` named explicitly
/// (`-x`), as a process in the sandbox that wants another proxy's policy would.
async fn from_sandbox_via(
    client: &Client,
    env: &str,
    proxy: &str,
    url: &str,
) -> (String, String, i32) {
    exec(
        client,
        env,
        &format!("curl -s -S -o /dev/null -w '%{{http_code}}' --max-time 5 -x {proxy} {url}"),
    )
    .await
}

/// The names of the containers attached to `network`, sorted.
async fn network_members(d: &DockerBackend, network: &str) -> Vec<String> {
    let n = d
        .docker()
        .inspect_network(network, None)
        .await
        .unwrap_or_else(|e| panic!("inspect {network}: {e}"));
    let mut v: Vec<String> = n
        .containers
        .unwrap_or_default()
        .into_values()
        .filter_map(|c| c.name)
        .collect();
    v.sort();
    v
}

/// Polls the service until `url` answers `want` (bounded: 10 s).
async fn service_until(d: &DockerBackend, env: &str, url: &str, want: &str) -> Duration {
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < Duration::from_secs(10) {
        last = from_service(d, env, url).await;
        if last == want {
            return t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never answered {want} from the service (last {last})");
}

async fn container_id(d: &DockerBackend, name: &str) -> Option<String> {
    d.docker()
        .inspect_container(name, None)
        .await
        .ok()
        .and_then(|i| i.id)
}

fn allow(entries: &[&str]) -> AllowRequest {
    AllowRequest {
        entries: entries.iter().map(|s| (*s).to_string()).collect(),
        for_secs: None,
        note: Some("e2e profiles".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_profile_proxy_serves_its_services_only_with_its_own_policy_on_docker() {
    let test = "egress_profile_proxy_serves_its_services_only_with_its_own_policy_on_docker";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&d).await;
    let name = unique_env("prof");
    let _guard = EnvGuard::new(&name);
    let (_dir, daemon, client) = RunningDaemon::start_in_tempdir(&d, &proxy_bin);

    let ws = tempfile::tempdir().expect("workspace");
    share_dir(ws.path(), 1001, 2000, 0o770);
    std::fs::write(
        ws.path().join("kennel.toml"),
        format!(
            "name = \"{name}\"\nimage = \"{image}\"\ncommand = [\"/bin/busybox\", \"sleep\", \"3600\"]\n\
             [egress.profiles.extra]\ninclude = [\"extra-list.txt\"]\n\
             [[service]]\nname = \"fetcher\"\nimage = \"{image}\"\negress = \"extra\"\n\
             command = [\"/bin/busybox\", \"sleep\", \"3600\"]\n"
        ),
    )
    .expect("kennel.toml");
    std::fs::write(ws.path().join("extra-list.txt"), "extra-only.kennel-test\n").expect("list");
    std::fs::create_dir(ws.path().join(".devcontainer")).expect("mkdir");
    std::fs::write(
        ws.path().join(".devcontainer/whitelist.txt"),
        "main-only.kennel-test\n",
    )
    .expect("whitelist");
    let req = build_request(&UpArgs {
        workspace: Some(ws.path().into()),
        ..Default::default()
    })
    .expect("spec");
    let info: EnvInfo = client.post("/envs", &req).await.expect("create");
    assert_eq!(info.state, "running", "{info:?}");
    let proxy_extra = profile_proxy_name(&name, "extra");
    assert_eq!(proxy_extra, format!("kennel-{name}-proxy-extra"));
    let p = info
        .profiles
        .iter()
        .find(|p| p.name == "extra")
        .unwrap_or_else(|| panic!("profile extra in {info:?}"));
    assert_eq!(
        (p.proxy_container.as_str(), p.proxy_address.as_str()),
        (proxy_extra.as_str(), "http://proxy-extra:8888")
    );
    assert_eq!((p.state.as_str(), p.allow_count), ("running", Some(1)));
    assert_eq!(p.services, ["fetcher"]);
    assert!(
        info.containers
            .iter()
            .any(|c| c.name == proxy_extra && c.role == "profile-proxy"),
        "{info:?}"
    );

    // The project's origin on the egress network, under every name the test asks for.
    let egress = names::egress_network(&name);
    let origin = start_origin(
        &d,
        &OriginSpec {
            env: &name,
            suffix: "origin",
            network: &egress,
            aliases: &[
                "extra-only.kennel-test",
                "main-only.kennel-test",
                "later.kennel-test",
            ],
            image: &image,
            script: "httpd -f -p 80 -h /www & wait",
            binds: Vec::new(),
        },
    )
    .await;
    wait_tcp(&d, &origin, "127.0.0.1", 80).await;
    // The origin has a private address: both policies need its subnet in `cidrs` (the address
    // guard); host names are still decided by each policy's own lists.
    let (subnet, _) = network_ipam(&d, &egress).await;
    let base = format!("/envs/{name}");
    let _: PolicyChanged = client
        .post(&format!("{base}/policy/allow"), &allow(&[&subnet]))
        .await
        .expect("allow subnet (main)");
    let changed: PolicyChanged = client
        .post(
            &format!("{base}/policy/allow?profile=extra"),
            &allow(&[&subnet]),
        )
        .await
        .expect("allow subnet (profile)");
    assert!(
        changed.file.ends_with("policy-extra/policy.toml"),
        "{changed:?}"
    );

    let url = |host: &str| format!("http://{host}/index.html");
    // 1. The service reaches what its profile allows, through proxy-extra.
    service_until(&d, &name, &url("extra-only.kennel-test"), "200").await;
    // 2. It cannot reach what only the environment's own policy allows (the profile's proxy
    //    denies it: 403 from the proxy, not a connection failure).
    assert_eq!(
        from_service(&d, &name, &url("main-only.kennel-test")).await,
        "403"
    );
    // The profile's proxy says how to allow it: with `--profile extra`.
    let body = exec_in(
        &d,
        &names::service(&name, "fetcher"),
        &[
            "curl",
            "-s",
            "--max-time",
            "5",
            &url("main-only.kennel-test"),
        ],
        None,
    )
    .await
    .stdout_str();
    assert!(
        body.contains(&format!(
            "Ask a person on the host to run: kennel allow --profile extra {name} main-only.kennel-test:80"
        )),
        "{body}"
    );
    // 3. The sandbox keeps the environment's policy: the main-only host yes, the profile's no.
    assert_eq!(
        from_sandbox(&client, &name, &url("main-only.kennel-test")).await,
        "200"
    );
    assert_eq!(
        from_sandbox(&client, &name, &url("extra-only.kennel-test")).await,
        "403"
    );
    // 3b. The sandbox cannot borrow the profile's allowlist by naming its proxy: `proxy-extra`
    //     is on the profile's own network, not the sandbox's, so it neither resolves nor is
    //     routable from the sandbox, while the service still reaches the same origin through
    //     it. No HTTP answer at all (status 000), only a failure to resolve the proxy's name
    //     (the sandbox's resolver knows only its own network's names; for others it times out:
    //     curl 5 or 28 "Resolving timed out") or to connect to its address (7, or 28).
    let profile_net = names::profile_network(&name, "extra");
    let (out, err, code) = from_sandbox_via(
        &client,
        &name,
        "http://proxy-extra:8888",
        &url("extra-only.kennel-test"),
    )
    .await;
    assert!(
        out == "000" && (code == 5 || (code == 28 && err.contains("Resolving"))),
        "the sandbox used proxy-extra: {out} {err} (curl exit {code})"
    );
    let profile_proxy_ip = d
        .container_ip(&proxy_extra, &profile_net)
        .await
        .expect("inspect proxy-extra")
        .unwrap_or_else(|| panic!("{proxy_extra} has no address on {profile_net}"));
    let (out, err, code) = from_sandbox_via(
        &client,
        &name,
        &format!("http://{profile_proxy_ip}:8888"),
        &url("extra-only.kennel-test"),
    )
    .await;
    assert!(
        out == "000" && (code == 7 || code == 28),
        "the sandbox reached proxy-extra at {profile_proxy_ip}: {out} {err} (curl exit {code})"
    );
    assert_eq!(
        from_service(&d, &name, &url("extra-only.kennel-test")).await,
        "200"
    );
    // Who is on which network: the profile's proxy not on the sandbox's; the service on both.
    assert_eq!(network_members(&d, &names::network(&name)).await, {
        let mut v = vec![
            names::proxy(&name),
            names::sandbox(&name),
            names::service(&name, "fetcher"),
        ];
        v.sort();
        v
    });
    assert_eq!(network_members(&d, &profile_net).await, {
        let mut v = vec![proxy_extra.clone(), names::service(&name, "fetcher")];
        v.sort();
        v
    });
    // The service's proxy variables name the profile's proxy.
    let env = exec_in(&d, &names::service(&name, "fetcher"), &["env"], None).await;
    assert!(
        env.stdout_str()
            .contains("HTTP_PROXY=http://proxy-extra:8888"),
        "{}",
        env.stdout_str()
    );

    // 4. `kennel denials --profile extra` shows the profile's proxy's denial; the main one's
    //    log does not have it.
    let mut shown = None;
    for _ in 0..30 {
        let ds: Denials = client
            .get(&format!("{base}/denials?since=600&profile=extra"))
            .await
            .expect("denials");
        if let Some(x) = ds
            .denials
            .iter()
            .find(|x| x.host == "main-only.kennel-test")
        {
            shown = Some(x.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let x = shown.expect("main-only.kennel-test in the profile's denials");
    let table = kennel_cli::commands::denials::table_for(
        &Denials {
            env: name.clone(),
            denials: vec![x],
            skipped_lines: 0,
        },
        Some("extra"),
    );
    assert!(
        table.contains(&format!(
            "kennel allow --profile extra {name} main-only.kennel-test:80"
        )),
        "{table}"
    );
    let main_denials: Denials = client
        .get(&format!("{base}/denials?since=600"))
        .await
        .expect("main denials");
    assert!(
        main_denials
            .denials
            .iter()
            .all(|x| x.host != "main-only.kennel-test"),
        "{main_denials:?}"
    );

    // 5. `kennel allow --profile extra` (the CLI's code): effective without a restart.
    assert_eq!(
        from_service(&d, &name, &url("later.kennel-test")).await,
        "403"
    );
    let before = container_id(&d, &proxy_extra).await;
    let (c2, n2) = (client.clone(), name.clone());
    let code = tokio::task::spawn_blocking(move || {
        kennel_cli::commands::allow::run_allow(
            &c2,
            kennel_cli::commands::allow::AllowArgs {
                env: n2,
                profile: Some("extra".into()),
                entries: vec!["later.kennel-test:80".into()],
                from_denials: false,
                select: false,
                for_: None,
                note: Some("e2e".into()),
            },
        )
        .expect("kennel allow --profile")
    })
    .await
    .expect("cli task");
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    let took = service_until(&d, &name, &url("later.kennel-test"), "200").await;
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(
        container_id(&d, &proxy_extra).await,
        before,
        "not restarted"
    );
    // Only the profile's policy changed: the sandbox still cannot reach it.
    assert_eq!(
        from_sandbox(&client, &name, &url("later.kennel-test")).await,
        "403"
    );
    let view: PolicyView = client
        .get(&format!("{base}/policy?profile=extra"))
        .await
        .expect("policy show --profile");
    assert!(
        view.entries
            .iter()
            .any(|e| e.pattern == "later.kennel-test" && e.action == "allow"),
        "{view:?}"
    );

    // 6. An unknown profile is a clear error, naming the ones there are.
    let err = client
        .post::<_, PolicyChanged>(
            &format!("{base}/policy/allow?profile=nope"),
            &allow(&["x.example"]),
        )
        .await
        .expect_err("unknown profile")
        .to_string();
    assert!(
        err.contains("no egress profile \"nope\"") && err.contains("extra"),
        "{err}"
    );

    // 7. `kennel stop` / `kennel start`: the profile's proxy stops with the environment and
    //    comes back (before the services) still serving with its policy.
    let stopped: EnvInfo = client
        .post(&format!("{base}/stop"), &())
        .await
        .expect("stop");
    assert_eq!(stopped.state, "stopped", "{stopped:?}");
    let started: EnvInfo = client
        .post(&format!("{base}/start"), &())
        .await
        .expect("start");
    // (Degraded until the test's own origin runs again: it counts as the environment's.)
    assert_eq!(
        started.profiles.first().map(|p| p.state.as_str()),
        Some("running"),
        "{started:?}"
    );
    // The test's origin is not kennel's to start.
    d.docker()
        .start_container(
            &origin,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .expect("start origin");
    wait_tcp(&d, &origin, "127.0.0.1", 80).await;
    service_until(&d, &name, &url("later.kennel-test"), "200").await;
    assert_eq!(
        from_service(&d, &name, &url("main-only.kennel-test")).await,
        "403"
    );

    // 8. `kennel refresh` recreates the profile's proxy and keeps its policy.
    let _: EnvInfo = client
        .post(&format!("{base}/refresh"), &())
        .await
        .expect("refresh");
    let after = container_id(&d, &proxy_extra).await;
    assert!(after.is_some() && after != before, "recreated: {after:?}");
    let info: EnvInfo = client.get(&base).await.expect("inspect");
    let p = info
        .profiles
        .iter()
        .find(|p| p.name == "extra")
        .unwrap_or_else(|| panic!("profile extra in {info:?}"));
    // The include file's entry, the subnet and `later.kennel-test`: kept.
    assert_eq!((p.state.as_str(), p.allow_count), ("running", Some(3)));
    // (The test's origin went with the refresh: it carries the environment's label.)

    // 9. `kennel down` removes the profile's proxy with everything else.
    let _: Removed = client.delete(&base).await.expect("down");
    assert_eq!(container_id(&d, &proxy_extra).await, None);
    assert!(
        d.docker()
            .inspect_network(&profile_net, None)
            .await
            .is_err(),
        "{profile_net} removed by down"
    );
    daemon.stop().await;
}

/// An egress profile's network name already taken (by the internal network of an environment
/// named `<env>-net-<profile>`; Docker 20.10 would create a second network of that name and
/// then refuse the containers naming it) is refused before anything is attached to it, and
/// what `create_env` made is rolled back; the other network stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_egress_profile_network_name_already_taken_is_refused_on_docker() {
    let test = "an_egress_profile_network_name_already_taken_is_refused_on_docker";
    let Some(d) = engine(test).await else { return };
    let name = unique_env("pnet");
    let _guard = EnvGuard::new(&name);
    let taken = names::profile_network(&name, "extra");
    // What the environment `<name>-net-extra` would have as its internal network; labelled so
    // its guard removes it whatever happens.
    let other_env = format!("{name}-net-extra");
    assert_eq!(names::network(&other_env), taken);
    let _other_guard = EnvGuard::new(&other_env);
    d.docker()
        .create_network(bollard::models::NetworkCreateRequest {
            name: taken.clone(),
            internal: Some(true),
            labels: Some(std::collections::HashMap::from([
                ("dev.kennel.env".to_string(), other_env.clone()),
                ("dev.kennel.test".to_string(), test.to_string()),
            ])),
            ..Default::default()
        })
        .await
        .expect("create the other network");
    let ws = tempfile::tempdir().expect("workspace");
    let state = tempfile::tempdir().expect("state");
    let policy_dir = state.path().join("policy");
    std::fs::create_dir_all(&policy_dir).expect("policy dir");
    let prof_dir = kennel_container::policy_dir::profile_policy_dir(&policy_dir, "extra");
    std::fs::create_dir_all(&prof_dir).expect("profile dir");
    std::fs::write(prof_dir.join(kennel_container::policy_dir::POLICY_FILE), "").expect("policy");
    let spec = kennel_container::EnvSpec::parse_str(
        &format!("name = \"{name}\"\n[egress.profiles.extra]\ninclude = []\n"),
        &ws.path().join("kennel.toml"),
        ws.path(),
    )
    .expect("spec");
    let plan = kennel_container::EnvPlan {
        spec,
        policy_dir,
        proxy_image: "kennel-proxy:never-used".into(),
        access_log_dir: None,
        state_labels: vec![("dev.kennel.test".into(), test.into())],
        progress: None,
    };
    let err = kennel_container::Backend::create_env(&d, &plan)
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains(&taken) && err.contains("already exists"),
        "{err}"
    );
    // Rolled back: the environment's own networks are gone, the other one stays.
    for n in [names::network(&name), names::egress_network(&name)] {
        assert!(
            d.docker().inspect_network(&n, None).await.is_err(),
            "{n} rolled back"
        );
    }
    let other = d
        .docker()
        .inspect_network(&taken, None)
        .await
        .expect("the other network stays");
    assert_eq!(
        other
            .labels
            .unwrap_or_default()
            .get("dev.kennel.test")
            .map(String::as_str),
        Some(test)
    );
}
