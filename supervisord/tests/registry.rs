//! The daemon's registry over the in-memory FakeBackend: create / list / inspect / remove,
//! name collisions, concurrent creates, reconcile, path ownership, exec framing.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should just fail the test

use std::path::Path;
use std::sync::Arc;

use http::StatusCode;
use kennel_container::backend::{Backend, EnvPlan, ExecResult};
use kennel_container::fake::FakeBackend;
use kennel_container::spec::{EnvSpec, SpecOverrides};
use kennel_supervisord::api::types::CreateEnv;
use kennel_supervisord::auth::{Authorizer, Peer};
use kennel_supervisord::frame::{self, FrameKind};
use kennel_supervisord::registry::{Daemon, FixedProxyImage, LABEL_DAEMON};
use kennel_supervisord::state::StateDir;

struct Fixture {
    fake: FakeBackend,
    daemon: Arc<Daemon>,
    state_dir: tempfile::TempDir,
    workspace: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let fake = FakeBackend::new();
    let state_dir = tempfile::tempdir().unwrap();
    let workspace = tempfile::tempdir().unwrap();
    let daemon = Daemon::new(
        Arc::new(fake.clone()),
        Arc::new(FixedProxyImage("kennel-proxy:test".into())),
        StateDir::open(state_dir.path()).unwrap(),
        Authorizer::new(0, [], []),
    );
    Fixture {
        fake,
        daemon,
        state_dir,
        workspace,
    }
}

fn root() -> Peer {
    Peer {
        pid: None,
        uid: 0,
        gid: 0,
        groups: vec![],
    }
}

fn request(workspace: &Path, name: &str) -> CreateEnv {
    let spec = EnvSpec::from_workspace(
        workspace,
        &SpecOverrides {
            name: Some(name.into()),
            workspace: Some(workspace.to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap();
    CreateEnv {
        spec: (&spec).into(),
        project_whitelist: Some("example.org\n".into()),
    }
}

#[tokio::test]
async fn create_list_inspect_remove() {
    let f = fixture();
    let info = f
        .daemon
        .create(&root(), request(f.workspace.path(), "alpha"))
        .await
        .unwrap();
    assert_eq!(info.name, "alpha");
    assert_eq!(info.state, "running");
    assert_eq!(
        info.containers[0].role, "proxy",
        "proxy listed first: {info:?}"
    );
    assert_eq!(info.workspace.as_deref(), Some(f.workspace.path()));

    // The effective policy directory exists, holds the imported whitelist, and the plan uses it.
    let policy_dir = f.state_dir.path().join("envs/alpha/policy");
    assert_eq!(info.policy_dir.as_deref(), Some(policy_dir.as_path()));
    let imported = std::fs::read_to_string(policy_dir.join("whitelist.txt")).unwrap();
    assert!(imported.contains("example.org"), "{imported}");
    let plan = f.fake.plan("alpha").unwrap();
    assert_eq!(plan.policy_dir, policy_dir);
    assert_eq!(plan.proxy_image, "kennel-proxy:test");
    assert!(f.state_dir.path().join("envs/alpha/spec.json").is_file());

    let list = f.daemon.list().await.unwrap();
    assert_eq!(
        list.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["alpha"]
    );
    assert_eq!(f.daemon.inspect("alpha").await.unwrap().name, "alpha");

    f.daemon.remove("alpha").await.unwrap();
    assert!(f.daemon.list().await.unwrap().is_empty());
    assert!(
        !f.state_dir.path().join("envs/alpha").exists(),
        "state removed"
    );
    let err = f.daemon.inspect("alpha").await.unwrap_err();
    assert_eq!(err.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        f.daemon.remove("alpha").await.unwrap_err().status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn name_collision_is_a_409_that_says_what_to_do() {
    let f = fixture();
    f.daemon
        .create(&root(), request(f.workspace.path(), "dup"))
        .await
        .unwrap();
    let err = f
        .daemon
        .create(&root(), request(f.workspace.path(), "dup"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::CONFLICT);
    let body = err.body();
    assert_eq!(body.error, "environment \"dup\" already exists");
    assert!(body.hint.unwrap().contains("kennel down dup"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_of_one_name_yield_exactly_one_environment() {
    let f = fixture();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let daemon = f.daemon.clone();
        let req = request(f.workspace.path(), "race");
        tasks.push(tokio::spawn(
            async move { daemon.create(&root(), req).await },
        ));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.status(), StatusCode::CONFLICT, "{e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(f.daemon.list().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_of_different_names_all_succeed() {
    let f = fixture();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let daemon = f.daemon.clone();
        let req = request(f.workspace.path(), &format!("env-{i}"));
        tasks.push(tokio::spawn(
            async move { daemon.create(&root(), req).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let names: Vec<String> = f
        .daemon
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        (0..8).map(|i| format!("env-{i}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_failed_create_releases_the_name() {
    let f = fixture();
    f.fake.fail_next_create("engine says no");
    let err = f
        .daemon
        .create(&root(), request(f.workspace.path(), "flaky"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    assert!(err.to_string().contains("engine says no"), "{err}");
    assert!(err.hint().unwrap().contains("docker version"));
    assert!(!f.state_dir.path().join("envs/flaky").exists());
    f.daemon
        .create(&root(), request(f.workspace.path(), "flaky"))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_invalid_project_whitelist_is_refused_before_anything_is_created() {
    let f = fixture();
    let mut req = request(f.workspace.path(), "badlist");
    req.project_whitelist = Some("github\\.com.*\n".into());
    let err = f.daemon.create(&root(), req).await.unwrap_err();
    assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(
        err.to_string().contains("whitelist.txt"),
        "names the file: {err}"
    );
    assert!(f.fake.plan("badlist").is_none());
    assert!(!f.state_dir.path().join("envs/badlist").exists());
}

#[tokio::test]
async fn non_root_callers_may_only_mount_what_they_own() {
    let f = fixture();
    let stranger = Peer {
        pid: None,
        uid: 4242,
        gid: 4242,
        groups: vec![],
    };
    let err = f
        .daemon
        .create(&stranger, request(f.workspace.path(), "theirs"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::FORBIDDEN);
    assert!(err.to_string().contains("not by you (uid 4242)"), "{err}");
}

#[tokio::test]
async fn a_root_sandbox_user_is_refused() {
    let f = fixture();
    let mut req = request(f.workspace.path(), "rooty");
    req.spec.user = "0:0".into();
    let err = f.daemon.create(&root(), req).await.unwrap_err();
    assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(err.to_string().contains("must not run as root"), "{err}");
}

#[tokio::test]
async fn path_traversal_names_are_not_found() {
    let f = fixture();
    for name in ["..", "../etc", "a/b", "UPPER"] {
        assert_eq!(
            f.daemon.inspect(name).await.unwrap_err().status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            f.daemon.remove(name).await.unwrap_err().status(),
            StatusCode::NOT_FOUND
        );
    }
}

fn plan(f: &Fixture, name: &str, labels: Vec<(String, String)>) -> EnvPlan {
    EnvPlan {
        spec: request(f.workspace.path(), name).spec.into(),
        policy_dir: f.state_dir.path().into(),
        proxy_image: "p".into(),
        state_labels: labels,
        progress: None,
    }
}

#[tokio::test]
async fn reconcile_removes_own_orphans_and_unfinished_creates_and_keeps_the_rest() {
    let f = fixture();
    f.daemon
        .create(&root(), request(f.workspace.path(), "kept"))
        .await
        .unwrap();
    // Objects this daemon created but has no state for (e.g. state dir wiped).
    let mine = vec![(
        LABEL_DAEMON.to_string(),
        f.daemon.state().instance().to_string(),
    )];
    f.fake.create_env(&plan(&f, "orphan", mine)).await.unwrap();
    // Objects somebody else created (another daemon, a test): not ours to remove.
    let theirs = vec![(LABEL_DAEMON.to_string(), "someone-else".to_string())];
    f.fake
        .create_env(&plan(&f, "foreign", theirs))
        .await
        .unwrap();
    f.fake
        .create_env(&plan(&f, "unlabelled", vec![]))
        .await
        .unwrap();
    // A create that died after reserving its name.
    std::fs::create_dir(f.state_dir.path().join("envs/halfway")).unwrap();

    let report = f.daemon.reconcile().await.unwrap();
    assert_eq!(report.kept, ["kept"]);
    assert_eq!(report.removed_orphans, ["orphan"]);
    assert_eq!(report.removed_incomplete, ["halfway"]);
    assert!(
        f.fake.inspect_env("orphan").await.unwrap().is_none(),
        "orphan objects removed"
    );
    assert!(!f.state_dir.path().join("envs/halfway").exists());
    assert!(f.fake.inspect_env("kept").await.unwrap().is_some());
    assert!(
        f.fake.inspect_env("foreign").await.unwrap().is_some(),
        "foreign env untouched"
    );
    assert!(
        f.fake.inspect_env("unlabelled").await.unwrap().is_some(),
        "unlabelled env untouched"
    );
}

#[tokio::test]
async fn environments_of_others_are_invisible_and_cannot_be_removed() {
    let f = fixture();
    let theirs = vec![(LABEL_DAEMON.to_string(), "someone-else".to_string())];
    f.fake
        .create_env(&plan(&f, "foreign", theirs))
        .await
        .unwrap();
    assert!(f.daemon.list().await.unwrap().is_empty());
    assert_eq!(
        f.daemon.inspect("foreign").await.unwrap_err().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        f.daemon.remove("foreign").await.unwrap_err().status(),
        StatusCode::NOT_FOUND
    );
    assert!(f.fake.inspect_env("foreign").await.unwrap().is_some());
    // Its name is still taken in the engine, so creating it is a conflict, not a clobber.
    let err = f
        .daemon
        .create(&root(), request(f.workspace.path(), "foreign"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn an_environment_gone_from_the_engine_is_listed_as_missing_and_can_be_removed() {
    let f = fixture();
    f.daemon
        .create(&root(), request(f.workspace.path(), "ghost"))
        .await
        .unwrap();
    f.fake.remove_env("ghost").await.unwrap();
    let list = f.daemon.list().await.unwrap();
    assert_eq!(
        (list[0].name.as_str(), list[0].state.as_str()),
        ("ghost", "missing")
    );
    assert_eq!(f.daemon.reconcile().await.unwrap().missing, ["ghost"]);
    f.daemon.remove("ghost").await.unwrap();
    assert!(f.daemon.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn exec_frames_carry_stdout_stderr_and_the_exit_code() {
    let f = fixture();
    f.daemon
        .create(&root(), request(f.workspace.path(), "runner"))
        .await
        .unwrap();
    f.fake.script_exec(
        &["sh", "-c", "work"],
        ExecResult {
            stdout: b"to stdout\n".to_vec(),
            stderr: b"to stderr\n".to_vec(),
            exit_code: 7,
        },
    );
    let session = f
        .fake
        .exec(
            "runner",
            kennel_container::backend::ExecRequest {
                cmd: vec!["sh".into(), "-c".into(), "work".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (daemon_side, mut client_side) = tokio::io::duplex(1024);
    let pump = tokio::spawn(kennel_supervisord::registry::pump(session, daemon_side));
    let mut frames = Vec::new();
    while let Some(fr) = frame::read_frame(&mut client_side).await.unwrap() {
        frames.push(fr);
    }
    pump.await.unwrap().unwrap();
    let kinds: Vec<FrameKind> = frames.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [FrameKind::Stdout, FrameKind::Stderr, FrameKind::Exit]
    );
    assert_eq!(&frames[0].payload[..], b"to stdout\n");
    assert_eq!(&frames[1].payload[..], b"to stderr\n");
    assert_eq!(frames[2].exit_code().unwrap(), 7);
}

#[tokio::test]
async fn a_symlink_cannot_point_a_callers_mount_at_someone_elses_directory() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to chown the test workspace");
        return;
    }
    let f = fixture();
    let caller = Peer {
        pid: None,
        uid: 4242,
        gid: 4242,
        groups: vec![],
    };
    let own = f.workspace.path().join("mine");
    std::fs::create_dir(&own).unwrap();
    std::os::unix::fs::chown(&own, Some(4242), Some(4242)).unwrap();
    let link = f.workspace.path().join("link-to-etc");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(4242), Some(4242)).unwrap();

    let err = f
        .daemon
        .create(&caller, request(&link, "sneaky"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::FORBIDDEN);
    assert!(
        err.to_string().contains("workspace /etc is owned by uid 0"),
        "{err}"
    );

    let own_link = f.workspace.path().join("link-to-mine");
    std::os::unix::fs::symlink(&own, &own_link).unwrap();
    f.daemon
        .create(&caller, request(&own_link, "honest"))
        .await
        .unwrap();
    assert_eq!(
        f.fake.plan("honest").unwrap().spec.workspace,
        own,
        "the canonical path is mounted"
    );
}

#[tokio::test]
async fn a_root_group_is_refused_too() {
    let f = fixture();
    let mut req = request(f.workspace.path(), "rootgroup");
    req.spec.user = "1001:0".into();
    let err = f.daemon.create(&root(), req).await.unwrap_err();
    assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn exec_input_frames_reach_stdin_and_resize_the_tty() {
    use kennel_container::backend::{ExecOutput, ExecSession, ExitHandle};
    use tokio::io::AsyncReadExt;

    let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (stdin_w, mut stdin_r) = tokio::io::duplex(64);
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let recorded = sizes.clone();
    let session = ExecSession {
        output: Box::pin(futures_util::stream::once(async move {
            let _ = release_rx.await;
            Ok(ExecOutput::Stdout(bytes::Bytes::from_static(b"done")))
        })),
        stdin: Some(Box::pin(stdin_w)),
        exit: ExitHandle::new(|| Box::pin(async { Ok(0) })),
        resize: Some(Box::new(move |rows, cols| {
            recorded.lock().unwrap().push((rows, cols));
            Box::pin(async { Ok(()) })
        })),
    };
    let (daemon_side, mut client_side) = tokio::io::duplex(1024);
    let pump = tokio::spawn(kennel_supervisord::registry::pump(session, daemon_side));

    frame::write_frame(&mut client_side, &frame::Frame::resize(30, 100))
        .await
        .unwrap();
    frame::write_frame(
        &mut client_side,
        &frame::Frame::new(FrameKind::Stdin, "typed"),
    )
    .await
    .unwrap();
    frame::write_frame(&mut client_side, &frame::Frame::new(FrameKind::Stdin, ""))
        .await
        .unwrap();
    let mut got = String::new();
    stdin_r.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "typed", "stdin bytes, then EOF");
    frame::write_frame(&mut client_side, &frame::Frame::resize(40, 120))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sizes.lock().unwrap().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "resize frames not applied: {sizes:?}"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(*sizes.lock().unwrap(), [(30, 100), (40, 120)]);

    release_tx.send(()).unwrap();
    let out = frame::read_frame(&mut client_side).await.unwrap().unwrap();
    assert_eq!(&out.payload[..], b"done");
    let exit = frame::read_frame(&mut client_side).await.unwrap().unwrap();
    assert_eq!(exit.exit_code().unwrap(), 0);
    pump.await.unwrap().unwrap();
}
