//! Unit tests of the compose import: what is applied, and every refusal naming file, line,
//! service and key.

use super::*;

fn ws() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(d.path().join(".devcontainer")).expect("mkdir");
    d
}

fn parse(ws: &Path, text: &str) -> Result<ComposeImport, SpecError> {
    let path = ws.join(".devcontainer/docker-compose.yaml");
    std::fs::write(&path, text).expect("write compose");
    let ws = std::fs::canonicalize(ws).expect("canonical");
    load(
        &ws.join(".devcontainer/docker-compose.yaml"),
        &ws,
        &SandboxHint::default(),
    )
}

/// `services.db.<extra>` at line 4 of the file; the error must name the file, that line, the
/// service and the key.
#[track_caller]
fn refused(extra: &str, key: &str, line: u32, says: &str) {
    let d = ws();
    let text = format!("services:\n  db:\n    image: busybox\n{extra}");
    let e = parse(d.path(), &text).expect_err(&format!("{extra} must be refused"));
    let shown = e.to_string();
    match &e {
        SpecError::Invalid {
            path,
            line: l,
            key: Some(k),
            ..
        } => {
            assert!(
                path.ends_with(".devcontainer/docker-compose.yaml"),
                "{shown}"
            );
            assert_eq!(k, key, "{shown}");
            assert_eq!(*l, line, "{shown}");
        }
        other => panic!("not located: {other:?}"),
    }
    assert!(shown.contains("docker-compose.yaml:"), "{shown}");
    assert!(shown.contains(says), "{shown}");
}

#[test]
fn ports_are_refused() {
    refused(
        "    ports:\n      - \"5432:5432\"\n",
        "services.db.ports",
        4,
        "publish",
    );
    refused(
        "    ports:\n      - target: 80\n        published: 8080\n",
        "services.db.ports",
        4,
        "publish",
    );
}

#[test]
fn host_and_other_networks_are_refused() {
    refused(
        "    network_mode: host\n",
        "services.db.network_mode",
        4,
        "internal network",
    );
    refused(
        "    network_mode: \"container:other\"\n",
        "services.db.network_mode",
        4,
        "refused",
    );
    refused(
        "    networks: [outside]\n",
        "services.db.networks",
        4,
        "\"outside\"",
    );
    let d = ws();
    let e = parse(
        d.path(),
        "services:\n  db:\n    image: busybox\nnetworks:\n  default:\n    external: true\n",
    )
    .expect_err("default network settings");
    assert!(e.to_string().contains(":5:"), "{e}");
}

#[test]
fn privileges_are_refused() {
    refused(
        "    privileged: true\n",
        "services.db.privileged",
        4,
        "refused",
    );
    refused(
        "    cap_add: [NET_ADMIN]\n",
        "services.db.cap_add",
        4,
        "NET_ADMIN",
    );
    refused("    cap_add: [ALL]\n", "services.db.cap_add", 4, "refused");
    refused("    pid: host\n", "services.db.pid", 4, "host");
    refused("    ipc: host\n", "services.db.ipc", 4, "host");
    refused(
        "    userns_mode: host\n",
        "services.db.userns_mode",
        4,
        "refused",
    );
    refused(
        "    devices: [\"/dev/kvm:/dev/kvm\"]\n",
        "services.db.devices",
        4,
        "devices",
    );
    refused(
        "    security_opt: [\"seccomp:unconfined\"]\n",
        "services.db.security_opt",
        4,
        "seccomp",
    );
    refused(
        "    sysctls:\n      net.ipv4.ip_forward: 1\n",
        "services.db.sysctls",
        4,
        "refused",
    );
    refused(
        "    volumes_from: [other]\n",
        "services.db.volumes_from",
        4,
        "refused",
    );
    refused(
        "    logging:\n      driver: syslog\n",
        "services.db.logging",
        4,
        "refused",
    );
}

#[test]
fn documented_capabilities_are_accepted() {
    let d = ws();
    let imp = parse(
        d.path(),
        "services:\n  db:\n    image: busybox\n    cap_add: [CHOWN, cap_setuid]\n    cap_drop: [KILL]\n    security_opt: [\"no-new-privileges:true\"]\n",
    )
    .expect("allowed capabilities");
    assert_eq!(imp.services[0].run.cap_drop, vec!["KILL".to_string()]);
}

#[test]
fn host_bind_mounts_outside_the_workspace_are_refused() {
    refused(
        "    volumes:\n      - /etc:/host-etc\n",
        "services.db.volumes",
        4,
        "outside the workspace",
    );
    refused(
        "    volumes:\n      - ../..:/up\n",
        "services.db.volumes",
        4,
        "outside the workspace",
    );
    refused(
        "    volumes:\n      - ~/.ssh:/keys:ro\n",
        "services.db.volumes",
        4,
        "home directory",
    );
    refused(
        "    volumes:\n      - type: bind\n        source: /var/run/docker.sock\n        target: /var/run/docker.sock\n",
        "services.db.volumes",
        4,
        "outside the workspace",
    );
    // An undeclared name is not silently a new volume.
    refused(
        "    volumes:\n      - data:/data\n",
        "services.db.volumes",
        4,
        "not declared",
    );
}

#[test]
fn a_symlink_in_the_workspace_pointing_out_is_refused() {
    let d = ws();
    std::os::unix::fs::symlink("/etc", d.path().join("escape")).expect("symlink");
    let e = parse(
        d.path(),
        "services:\n  db:\n    image: busybox\n    volumes:\n      - ../escape:/x\n",
    )
    .expect_err("symlink out of the workspace");
    assert!(e.to_string().contains("outside the workspace"), "{e}");
}

#[test]
fn volume_drivers_that_reach_the_host_are_refused() {
    let d = ws();
    let e = parse(
        d.path(),
        "services:\n  db:\n    image: busybox\nvolumes:\n  data:\n    driver_opts:\n      type: none\n      o: bind\n      device: /\n",
    )
    .expect_err("driver_opts");
    assert!(e.to_string().contains(":6:"), "{e}");
    assert!(e.to_string().contains("volumes.data.driver_opts"), "{e}");
    let e = parse(
        d.path(),
        "services:\n  db:\n    image: busybox\nvolumes:\n  data:\n    external: true\n",
    )
    .expect_err("external");
    assert!(e.to_string().contains("volumes.data.external"), "{e}");
}

#[test]
fn interpolation_and_unknown_keys_are_refused_with_their_line() {
    refused(
        "    environment:\n      PASSWORD: ${PGPASSWORD}\n",
        "services.db.environment.PASSWORD",
        5,
        "interpolates",
    );
    let d = ws();
    let e = parse(
        d.path(),
        "services:\n  db:\n    image: busybox\n    cgroup: host\n",
    )
    .expect_err("unknown key");
    assert!(e.to_string().contains(":4:"), "{e}");
    assert!(e.to_string().contains("cgroup"), "{e}");
    let e = parse(d.path(), "services:\n  db: [\n").expect_err("syntax");
    assert!(matches!(e, SpecError::Invalid { .. }), "{e}");
}

#[test]
fn dependencies_must_exist_be_supported_and_acyclic() {
    refused(
        "    depends_on: [cache]\n",
        "services.db.depends_on",
        4,
        "no service \"cache\"",
    );
    refused(
        "    depends_on:\n      db:\n        condition: service_completed_successfully\n",
        "services.db.depends_on.db",
        5,
        "not supported",
    );
    let d = ws();
    let e = parse(
        d.path(),
        "services:\n  a:\n    image: busybox\n    depends_on: [b]\n  b:\n    image: busybox\n    depends_on: [a]\n",
    )
    .expect_err("cycle");
    assert!(e.to_string().contains("cycle"), "{e}");
}

#[test]
fn service_names_and_egress_values_are_checked() {
    let d = ws();
    let e = parse(d.path(), "services:\n  My_DB:\n    image: busybox\n").expect_err("name");
    assert!(e.to_string().contains("rename the service"), "{e}");
    let e = parse(d.path(), "services:\n  proxy:\n    image: busybox\n").expect_err("reserved");
    assert!(e.to_string().contains("reserved"), "{e}");
    refused(
        "    x-kennel-egress: open\n",
        "services.db.x-kennel-egress",
        4,
        "\"proxy\"",
    );
}

#[test]
fn a_full_service_is_imported() {
    let d = ws();
    std::fs::write(d.path().join(".devcontainer/db.env"), "FROM_FILE=1\n").expect("env file");
    std::fs::create_dir(d.path().join("seed")).expect("seed dir");
    let imp = parse(
        d.path(),
        r#"
name: project
services:
  app:
    image: busybox
    command: sh -c 'echo "$$HOME"; sleep 1'
    depends_on:
      db:
        condition: service_healthy
  db:
    image: postgres:16
    environment:
      POSTGRES_PASSWORD: dev
      COUNT: 3
    env_file: db.env
    entrypoint: ["/entry", "--x"]
    working_dir: /srv
    user: "999:999"
    volumes:
      - pgdata:/var/lib/postgresql/data
      - ../seed:/seed:ro
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -U $$POSTGRES_USER"]
      interval: 1s
      timeout: 1m30s
      retries: 5
      start_period: 500ms
    x-kennel-egress: proxy
    restart: always
    expose: ["5432"]
volumes:
  pgdata:
"#,
    )
    .expect("import");
    // db first: app depends on it.
    let names: Vec<&str> = imp.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["db", "app"]);
    let db = &imp.services[0];
    assert_eq!(db.image, "postgres:16");
    assert_eq!(db.egress, ServiceEgress::Proxy);
    assert_eq!(
        db.env,
        vec![
            ("COUNT".to_string(), "3".to_string()),
            ("FROM_FILE".to_string(), "1".to_string()),
            ("POSTGRES_PASSWORD".to_string(), "dev".to_string()),
        ]
    );
    let run = &db.run;
    assert_eq!(
        run.entrypoint.as_deref(),
        Some(&["/entry".to_string(), "--x".to_string()][..])
    );
    assert_eq!(run.working_dir.as_deref(), Some("/srv"));
    assert_eq!(run.user.as_deref(), Some("999:999"));
    assert_eq!(
        run.volumes,
        vec![ServiceVolume {
            name: "pgdata".into(),
            target: "/var/lib/postgresql/data".into(),
            read_only: false
        }]
    );
    assert_eq!(run.binds.len(), 1);
    assert!(run.binds[0].source.ends_with("seed") && run.binds[0].read_only);
    let h = run.healthcheck.as_ref().expect("healthcheck");
    assert_eq!(h.test, ["CMD-SHELL", "pg_isready -U $POSTGRES_USER"]);
    assert_eq!(
        (h.interval_ms, h.timeout_ms, h.retries, h.start_period_ms),
        (1000, 90_000, 5, 500)
    );
    let app = &imp.services[1];
    assert_eq!(app.egress, ServiceEgress::None);
    assert_eq!(
        app.command.as_deref(),
        Some(
            &[
                "sh".to_string(),
                "-c".into(),
                "echo \"$HOME\"; sleep 1".into()
            ][..]
        )
    );
    assert_eq!(
        app.run.depends_on,
        vec![DependsOn {
            service: "db".into(),
            healthy: true
        }]
    );
    // Safe keys not applied are reported, not dropped silently.
    let w = imp.warning().expect("warning");
    assert!(w.contains("services.db.restart"), "{w}");
}

#[test]
fn the_dev_service_becomes_the_sandbox() {
    let d = ws();
    std::fs::write(d.path().join(".devcontainer/Dockerfile"), "FROM scratch\n").expect("df");
    let text = "services:\n  dev:\n    build:\n      context: .\n      dockerfile: Dockerfile\n    environment:\n      APP_ENV: dev\n    volumes:\n      - ..:/workspace:cached\n    ports: [\"3000:3000\"]\n    cap_add: [SYS_PTRACE]\n    security_opt: [\"seccomp:unconfined\"]\n    command: sleep infinity\n    depends_on:\n      db:\n        condition: service_healthy\n  db:\n    image: busybox\n";
    let imp = parse(d.path(), text).expect("import");
    let sb = imp
        .sandbox
        .as_ref()
        .expect("dev service found by its Dockerfile");
    assert_eq!(sb.service, "dev");
    assert!(
        sb.build
            .as_ref()
            .is_some_and(|b| b.dockerfile.ends_with(".devcontainer/Dockerfile"))
    );
    assert_eq!(sb.env, vec![("APP_ENV".to_string(), "dev".to_string())]);
    assert_eq!(sb.depends_on[0].service, "db");
    assert_eq!(imp.services.len(), 1);
    let w = imp.warning().expect("warning");
    assert!(w.contains("services.dev.volumes"), "{w}");
    // The dev container's weakening keys have no effect on the sandbox: reported, not refused.
    for k in ["ports", "cap_add", "security_opt"] {
        assert!(
            w.contains(&format!("services.dev.{k}: not applied to the sandbox")),
            "{w}"
        );
    }

    // Named by devcontainer.json's `service`.
    let path = std::fs::canonicalize(d.path()).expect("canon");
    std::fs::write(
        path.join(".devcontainer/docker-compose.yaml"),
        "services:\n  dev:\n    image: busybox\n  db:\n    image: busybox\n",
    )
    .expect("write");
    let imp = load(
        &path.join(".devcontainer/docker-compose.yaml"),
        &path,
        &SandboxHint {
            service: Some("db"),
            dockerfile: None,
        },
    )
    .expect("import");
    assert_eq!(imp.sandbox.expect("sandbox").service, "db");
    assert_eq!(imp.services[0].name, "dev");
    std::fs::write(path.join(".devcontainer/docker-compose.yaml"), text).expect("write");
    let imp = load(
        &path.join(".devcontainer/docker-compose.yaml"),
        &path,
        &SandboxHint {
            service: Some("db"),
            dockerfile: None,
        },
    )
    .expect_err("dev is now an ordinary service, and its ports are refused");
    assert!(e_contains(&imp, "key `services.dev.ports`"), "{imp}");
    let e = load(
        &path.join(".devcontainer/docker-compose.yaml"),
        &path,
        &SandboxHint {
            service: Some("nope"),
            dockerfile: None,
        },
    )
    .expect_err("unknown dev service");
    assert!(e.to_string().contains("\"nope\""), "{e}");
}

#[test]
fn a_service_with_profiles_is_not_started() {
    let d = ws();
    let imp = parse(
        d.path(),
        "services:\n  db:\n    image: busybox\n  debug:\n    image: busybox\n    profiles: [debug]\n",
    )
    .expect("import");
    assert_eq!(imp.services.len(), 1);
    assert!(imp.warning().expect("warning").contains("profiles"));
}

#[test]
fn kennel_toml_services_and_the_seed_default_import_the_file() {
    let d = ws();
    let root = std::fs::canonicalize(d.path()).expect("canon");
    std::fs::write(
        root.join("other.yaml"),
        "services:\n  cache:\n    image: busybox\n    x-kennel-egress: proxy\n",
    )
    .expect("write");
    std::fs::write(
        root.join(".devcontainer/docker-compose.yml"),
        "services:\n  db:\n    image: busybox\n",
    )
    .expect("write");
    let spec = crate::spec::EnvSpec::parse_str(
        "name = \"t\"\nservices = \"other.yaml\"\n[[service]]\nname = \"extra\"\nimage = \"busybox\"\negress = \"proxy\"\n",
        &root.join("kennel.toml"),
        &root,
    )
    .expect("spec");
    let names: Vec<(&str, &ServiceEgress)> = spec
        .services
        .iter()
        .map(|s| (s.name.as_str(), &s.egress))
        .collect();
    assert_eq!(
        names,
        [
            ("extra", &ServiceEgress::Proxy),
            ("cache", &ServiceEgress::Proxy)
        ]
    );
    // Without `services`, the seed layout's file.
    let spec = crate::spec::EnvSpec::parse_str("name = \"t\"\n", &root.join("kennel.toml"), &root)
        .expect("spec");
    assert_eq!(spec.services[0].name, "db");
    // A refusal surfaces from the spec with the compose file's name.
    std::fs::write(
        root.join(".devcontainer/docker-compose.yml"),
        "services:\n  db:\n    image: busybox\n    network_mode: host\n",
    )
    .expect("write");
    let e = crate::spec::EnvSpec::parse_str("name = \"t\"\n", &root.join("kennel.toml"), &root)
        .expect_err("refused");
    assert!(
        e.to_string()
            .contains("docker-compose.yml:4:5: key `services.db.network_mode`"),
        "{e}"
    );
}

fn e_contains(e: &SpecError, s: &str) -> bool {
    e.to_string().contains(s)
}
