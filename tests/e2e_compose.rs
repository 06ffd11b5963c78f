//! Compose services on the real Docker engine (issue 11, items 2 and 3): a postgres-like
//! service from the seed layout's `.devcontainer/docker-compose.yaml` (a test image built from
//! host files: busybox's httpd serving a file from its named volume, with a health check), a
//! `depends_on: service_healthy`, and a service with `x-kennel-egress: proxy`. Mandatory under
//! `CI=true`, skipped with a reason without an engine. Every object carries the test
//! environment's labels and is removed by a guard, also on failure; the only traffic is between
//! the environment's own containers.

use bollard::models::HealthStatusEnum;
use bollard::query_parameters::InspectContainerOptions;
use kennel_container::backend::names;
use kennel_container::spec::{DependsOn, ServiceEgress};
use kennel_container::{Backend, EnvPlan, EnvSpec};
use kennel_test_support::docker::{
    EnvGuard, TEST_POLICY, engine, exec_in, proxy_binary, share_dir, test_image, unique_env,
};

fn out(r: &kennel_container::backend::ExecResult) -> String {
    String::from_utf8_lossy(&r.stdout).trim().to_string()
}

/// The compose file: `db` serves `/data/www` of its volume on port 5432 and becomes healthy
/// only after 5 s; `dev` is the old dev container (its `build:` is the workspace's dev
/// Dockerfile), so it becomes the sandbox and waits for `db`; `fetcher` has proxy egress.
fn compose_file(image: &str) -> String {
    format!(
        r#"services:
  db:
    image: {image}
    command: ["/bin/busybox", "sh", "-c", "mkdir -p /data/www && sleep 5 && touch /tmp/ready && exec httpd -f -p 5432 -h /data/www"]
    volumes:
      - dbdata:/data
    healthcheck:
      test: ["CMD", "/bin/busybox", "test", "-f", "/tmp/ready"]
      interval: 500ms
      timeout: 2s
      retries: 30
  fetcher:
    image: {image}
    command: ["/bin/busybox", "sleep", "3600"]
    x-kennel-egress: proxy
  dev:
    build:
      context: .
      dockerfile: Dockerfile
    command: sleep infinity
    depends_on:
      db:
        condition: service_healthy
volumes:
  dbdata:
"#
    )
}

async fn health(d: &kennel_container::DockerBackend, container: &str) -> Option<HealthStatusEnum> {
    d.docker()
        .inspect_container(container, None::<InspectContainerOptions>)
        .await
        .expect("inspect")
        .state
        .and_then(|s| s.health)
        .and_then(|h| h.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_service_by_name_waits_healthy_and_its_volume_survives_down_up() {
    let test = "compose_service_by_name_waits_healthy_and_its_volume_survives_down_up";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let name = unique_env("compose");
    let _guard = EnvGuard::new(&name);
    let image = test_image(&d).await;
    let proxy_image = kennel_container::image::ensure_proxy_image(&d, &proxy_bin)
        .await
        .expect("proxy image");

    let ws = tempfile::tempdir().expect("workspace");
    share_dir(ws.path(), 1001, 2000, 0o770);
    let ws_path = std::fs::canonicalize(ws.path()).expect("canonical workspace");
    std::fs::create_dir(ws_path.join(".devcontainer")).expect("mkdir");
    std::fs::write(ws_path.join(".devcontainer/Dockerfile"), "FROM scratch\n").expect("df");
    std::fs::write(
        ws_path.join(".devcontainer/docker-compose.yaml"),
        compose_file(&image),
    )
    .expect("compose");
    let policy = tempfile::tempdir().expect("policy dir");
    share_dir(policy.path(), 0, 0, 0o755);
    std::fs::write(policy.path().join("policy.toml"), TEST_POLICY).expect("policy");

    // No `services` key: the seed layout's compose file is the default.
    let toml = format!(
        "name = \"{name}\"\nimage = \"{image}\"\ncommand = [\"/bin/busybox\", \"sleep\", \"3600\"]\n"
    );
    let spec = EnvSpec::parse_str(&toml, &ws_path.join("kennel.toml"), &ws_path).expect("spec");
    let svc: Vec<(&str, &ServiceEgress)> = spec
        .services
        .iter()
        .map(|s| (s.name.as_str(), &s.egress))
        .collect();
    assert_eq!(
        svc,
        [
            ("db", &ServiceEgress::None),
            ("fetcher", &ServiceEgress::Proxy)
        ]
    );
    assert_eq!(
        spec.sandbox_depends_on,
        [DependsOn {
            service: "db".into(),
            healthy: true
        }]
    );
    // kennel.toml's image wins over the dev service's build, and says so.
    assert_eq!(spec.image, image);
    assert!(spec.build.is_none());
    let plan = EnvPlan {
        spec,
        policy_dir: policy.path().to_path_buf(),
        proxy_image,
        access_log_dir: None,
        state_labels: vec![("dev.kennel.test".into(), test.into())],
        progress: None,
    };

    d.create_env(&plan).await.expect("up");
    let db = names::service(&name, "db");
    // The sandbox was started after db became healthy (db needs 5 s to get there).
    assert_eq!(
        health(&d, &db).await,
        Some(HealthStatusEnum::HEALTHY),
        "the sandbox must wait for db's health check"
    );
    let w = exec_in(
        &d,
        &db,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "echo persisted-42 > /data/www/v",
        ],
        None,
    )
    .await;
    assert_eq!(w.exit_code, 0, "write into the volume: {w:?}");
    let fetch = async || {
        let r = exec_in(
            &d,
            &names::sandbox(&name),
            &["curl", "-s", "--max-time", "5", "http://db:5432/v"],
            None,
        )
        .await;
        (r.exit_code, out(&r))
    };
    assert_eq!(
        fetch().await,
        (0, "persisted-42".to_string()),
        "sandbox reaches db by name"
    );

    // Proxy egress: the proxy variables are set for fetcher, not for db; both stay on the
    // environment's internal network only.
    let env_of = async |c: &str| out(&exec_in(&d, c, &["/bin/busybox", "env"], None).await);
    let fetcher = names::service(&name, "fetcher");
    assert!(
        env_of(&fetcher)
            .await
            .lines()
            .any(|l| l == "HTTPS_PROXY=http://proxy:8888"),
        "fetcher has the proxy"
    );
    assert!(
        !env_of(&db).await.contains("PROXY="),
        "db has no proxy variables"
    );
    for c in [&db, &fetcher] {
        let nets = d
            .docker()
            .inspect_container(c, None::<InspectContainerOptions>)
            .await
            .expect("inspect")
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default();
        let nets: Vec<&String> = nets.keys().collect();
        assert_eq!(nets, [&names::network(&name)], "{c} networks");
    }

    // down / up: the named volume and its data are kept.
    d.remove_env(&name).await.expect("down");
    let volume = names::service_volume(&name, "dbdata");
    let v = d
        .docker()
        .inspect_volume(&volume)
        .await
        .expect("volume kept");
    assert_eq!(
        v.labels.get("dev.kennel.env").map(String::as_str),
        Some(name.as_str())
    );
    d.create_env(&plan).await.expect("up again");
    assert_eq!(
        fetch().await,
        (0, "persisted-42".to_string()),
        "data survives down/up"
    );

    // --purge removes it.
    d.remove_env(&name).await.expect("down");
    d.purge_env(&name).await.expect("purge");
    assert!(
        d.docker().inspect_volume(&volume).await.is_err(),
        "purge removes the service volume"
    );
}

/// What a person running `kennel up` sees for a compose file with `ports:` or
/// `network_mode: host`: the file, the line, the service and the key. No engine needed.
#[test]
fn compose_ports_and_host_network_are_refused_naming_file_line_service_and_key() {
    for (extra, key) in [
        ("    ports:\n      - \"5432:5432\"\n", "services.db.ports"),
        ("    network_mode: host\n", "services.db.network_mode"),
    ] {
        let ws = tempfile::tempdir().expect("workspace");
        let root = std::fs::canonicalize(ws.path()).expect("canonical");
        std::fs::create_dir(root.join(".devcontainer")).expect("mkdir");
        let file = root.join(".devcontainer/docker-compose.yaml");
        std::fs::write(
            &file,
            format!("services:\n  app:\n    image: busybox\n  db:\n    image: busybox\n{extra}"),
        )
        .expect("compose");
        let e = EnvSpec::from_workspace(&root, &Default::default()).expect_err("refused");
        let shown = e.to_string();
        let at = format!("{}:6:5: key `{key}`", file.display());
        assert!(
            shown.starts_with(&at),
            "{shown}\nexpected to start with {at}"
        );
    }
}
