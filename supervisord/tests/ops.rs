//! Day-to-day operations over the FakeBackend: refresh (and the notice an attached exec session
//! ends with), stats, logs framing.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should just fail the test

use std::sync::Arc;
use std::time::Duration;

use kennel_container::backend::{
    Backend, ContainerStats, ExecRequest, LogsRequest, LogsTarget, names,
};
use kennel_container::fake::FakeBackend;
use kennel_container::spec::{EnvSpec, SpecOverrides};
use kennel_supervisord::api::types::CreateEnv;
use kennel_supervisord::auth::{Authorizer, Peer};
use kennel_supervisord::frame::{self, FrameKind};
use kennel_supervisord::registry::{Daemon, FixedProxyImage, pump_until};
use kennel_supervisord::state::StateDir;

struct Fixture {
    fake: FakeBackend,
    daemon: Arc<Daemon>,
    _state_dir: tempfile::TempDir,
    workspace: tempfile::TempDir,
}

async fn fixture_with_env(name: &str) -> Fixture {
    let fake = FakeBackend::new();
    let state_dir = tempfile::tempdir().unwrap();
    let workspace = tempfile::tempdir().unwrap();
    let daemon = Daemon::new(
        Arc::new(fake.clone()),
        Arc::new(FixedProxyImage("kennel-proxy:test".into())),
        StateDir::open(state_dir.path()).unwrap(),
        Authorizer::new(0, [], []),
    );
    let spec = EnvSpec::from_workspace(
        workspace.path(),
        &SpecOverrides {
            name: Some(name.into()),
            workspace: Some(workspace.path().to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap();
    let peer = Peer {
        pid: None,
        uid: 0,
        gid: 0,
        groups: vec![],
    };
    daemon
        .create(
            &peer,
            CreateEnv {
                spec: (&spec).into(),
                project_whitelist: None,
            },
        )
        .await
        .unwrap();
    Fixture {
        fake,
        daemon,
        _state_dir: state_dir,
        workspace,
    }
}

#[tokio::test]
async fn refresh_recreates_from_the_stored_spec_and_tells_the_attached_session_why_it_ended() {
    let f = fixture_with_env("r1").await;
    let before = f.fake.plan("r1").unwrap();
    f.fake.hang_exec(&["sleep", "1000"]);
    let session = f
        .fake
        .exec(
            "r1",
            ExecRequest {
                cmd: vec!["sleep".into(), "1000".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let attached = f.daemon.sessions().attach("r1");
    assert_eq!(f.daemon.sessions().attached("r1"), 1);
    let (daemon_side, mut client_side) = tokio::io::duplex(64 * 1024);
    let pump = tokio::spawn(pump_until(session, daemon_side, Some(attached)));

    let info = tokio::time::timeout(Duration::from_secs(10), f.daemon.refresh("r1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.name, "r1");
    assert_eq!(info.state, "running");

    let last = tokio::time::timeout(Duration::from_secs(5), frame::read_frame(&mut client_side))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(last.kind, FrameKind::Error);
    let msg = String::from_utf8_lossy(&last.payload);
    assert!(msg.contains("\"r1\" is being refreshed"), "{msg}");
    tokio::time::timeout(Duration::from_secs(5), pump)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(f.daemon.sessions().attached("r1"), 0);

    let after = f.fake.plan("r1").unwrap();
    assert_eq!(after.spec.workspace, before.spec.workspace);
    assert_eq!(after.spec.home, before.spec.home);
    assert_eq!(after.policy_dir, before.policy_dir);
    assert_eq!(after.state_labels, before.state_labels);
    // The home volume survived (remove_env keeps it).
    assert!(f.fake.kept_home("r1").await.unwrap().is_some());
}

#[tokio::test]
async fn refresh_of_an_unknown_environment_is_404() {
    let f = fixture_with_env("r2").await;
    let err = f.daemon.refresh("nope").await.unwrap_err();
    assert_eq!(err.status(), http::StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn stats_report_containers_disk_and_proxy_counts() {
    let f = fixture_with_env("s1").await;
    std::fs::write(f.workspace.path().join("big"), vec![1u8; 2 << 20]).unwrap();
    f.fake.set_container_stats(
        "s1",
        vec![ContainerStats {
            name: names::sandbox("s1"),
            role: "sandbox".into(),
            state: "running".into(),
            memory_usage_bytes: Some(42 << 20),
            ..Default::default()
        }],
    );
    f.fake.script_exec(
        &["du", "-skx", "/home/claude"],
        kennel_container::backend::ExecResult {
            stdout: b"1234\t/home/claude\n".to_vec(),
            stderr: vec![],
            exit_code: 0,
        },
    );
    f.fake.set_metrics(
        "s1",
        "kennel_proxy_decisions_total{kind=\"connect\",decision=\"allow\",reason=\"r\"} 4\nkennel_proxy_decisions_total{kind=\"http\",decision=\"deny\",reason=\"d\"} 1\n",
    );
    let u = f.daemon.usage("s1").await.unwrap();
    assert_eq!(u.state, "running");
    assert_eq!(u.containers[0].memory_usage_bytes, Some(42 << 20));
    assert!(u.workspace_bytes.unwrap() >= 2 << 20, "{u:?}");
    assert_eq!(u.home_bytes, Some(1234 * 1024), "{u:?}");
    let p = u.proxy.unwrap();
    assert_eq!((p.allowed, p.denied), (4, 1));
    assert!(u.age_seconds.is_some());
    let all = f.daemon.usage_all().await.unwrap();
    assert_eq!(all.len(), 1);
}

#[tokio::test]
async fn logs_arrive_as_frames_then_exit_zero() {
    let f = fixture_with_env("l1").await;
    f.fake.set_logs(&names::proxy("l1"), "line one\nline two\n");
    let out = f
        .fake
        .logs(
            "l1",
            LogsRequest {
                target: LogsTarget::Proxy,
                follow: false,
                since_unix: None,
            },
        )
        .await
        .unwrap();
    let (daemon_side, mut client_side) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(kennel_supervisord::ops::logs::stream_logs(out, daemon_side));
    let mut text = Vec::new();
    loop {
        let fr = tokio::time::timeout(Duration::from_secs(5), frame::read_frame(&mut client_side))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match fr.kind {
            FrameKind::Stdout => text.extend_from_slice(&fr.payload),
            FrameKind::Exit => {
                assert_eq!(fr.exit_code().unwrap(), 0);
                break;
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(text, b"line one\nline two\n");
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_fired_health_rule_refreshes_once_and_waits_for_an_attached_session() {
    use kennel_container::backend::EnvStats;
    use kennel_supervisord::ops::health::Action;
    let fake = FakeBackend::new();
    let state_dir = tempfile::tempdir().unwrap();
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(
        workspace.path().join("kennel.toml"),
        "name = \"h1\"\n[health]\nmax_memory_percent = 1\n",
    )
    .unwrap();
    let daemon = Daemon::new(
        Arc::new(fake.clone()),
        Arc::new(FixedProxyImage("kennel-proxy:test".into())),
        StateDir::open(state_dir.path()).unwrap(),
        Authorizer::new(0, [], []),
    );
    let spec = EnvSpec::from_workspace(
        workspace.path(),
        &SpecOverrides {
            workspace: Some(workspace.path().to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(spec.health.max_memory_percent, Some(1));
    let peer = Peer {
        pid: None,
        uid: 0,
        gid: 0,
        groups: vec![],
    };
    daemon
        .create(
            &peer,
            CreateEnv {
                spec: (&spec).into(),
                project_whitelist: None,
            },
        )
        .await
        .unwrap();
    let load = EnvStats {
        memory_usage_bytes: Some(50 << 20),
        memory_limit_bytes: Some(100 << 20),
        ..Default::default()
    };
    fake.set_stats("h1", load.clone());

    // An attached session defers the refresh; the reading names the rule and the value.
    let attached = daemon.sessions().attach("h1");
    let round = daemon.health_round().await;
    assert_eq!(
        round,
        vec![(
            "h1".to_string(),
            Action::Deferred("max_memory_percent 50.0% > 1%".into())
        )]
    );
    let h = daemon.health_of("h1").unwrap();
    assert!(h.deferred_since_unix.is_some());
    assert_eq!(h.readings[0].value, "50.0%");
    assert!(h.readings[0].fired);
    drop(attached);

    // Without a session it refreshes, once per firing round.
    let round = daemon.health_round().await;
    assert_eq!(
        round[0].1,
        Action::Refreshed("max_memory_percent 50.0% > 1%".into())
    );
    // The recreated sandbox uses little memory: the rule no longer fires.
    fake.set_stats(
        "h1",
        EnvStats {
            memory_usage_bytes: Some(0),
            ..load
        },
    );
    let round = daemon.health_round().await;
    assert_eq!(round[0].1, Action::None);
    let h = daemon.health_of("h1").unwrap();
    assert_eq!(
        h.last_action.as_deref(),
        Some("refreshed: max_memory_percent 50.0% > 1%")
    );
}

#[tokio::test]
async fn a_failed_refresh_leaves_the_record_and_a_second_refresh_recovers() {
    let f = fixture_with_env("r3").await;
    f.fake.fail_next_create("engine said no");
    let err = f.daemon.refresh("r3").await.unwrap_err();
    assert!(err.to_string().contains("engine said no"), "{err}");
    assert_eq!(f.daemon.inspect("r3").await.unwrap().state, "missing");
    let info = f.daemon.refresh("r3").await.unwrap();
    assert_eq!(info.state, "running");
}
