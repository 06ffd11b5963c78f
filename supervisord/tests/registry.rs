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
    let other = tempfile::tempdir().unwrap();
    let err = f
        .daemon
        .create(&root(), request(other.path(), "dup"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::CONFLICT);
    let body = err.body();
    let ws = std::fs::canonicalize(f.workspace.path()).unwrap();
    assert_eq!(
        body.error,
        format!(
            "environment name \"dup\" belongs to the workspace {}",
            ws.display()
        )
    );
    assert!(body.hint.unwrap().contains("kennel up --name"));
}

#[tokio::test]
async fn up_again_in_the_same_workspace_is_a_no_op_that_starts_a_stopped_env() {
    let f = fixture();
    let first = f
        .daemon
        .create(&root(), request(f.workspace.path(), "idem"))
        .await
        .unwrap();
    assert!(!first.already_existed);
    let stopped = f.daemon.stop("idem").await.unwrap();
    assert_eq!(stopped.state, "stopped");
    let again = f
        .daemon
        .create(&root(), request(f.workspace.path(), "idem"))
        .await
        .unwrap();
    assert!(again.already_existed);
    assert_eq!(again.state, "running");
    assert_eq!(f.daemon.list().await.unwrap().len(), 1);
    let started = f.daemon.start("idem").await.unwrap();
    assert_eq!(started.state, "running");
}

/// The agent writes the workspace; the policy is copied at creation only. Edits to the project
/// whitelist files after `up` must not reach the effective policy through any daemon action that
/// runs without a person asking for an import (stop/start, a daemon restart's reconcile).
#[tokio::test]
async fn a_workspace_whitelist_edited_after_create_changes_nothing() {
    let f = fixture();
    f.daemon
        .create(&root(), request(f.workspace.path(), "frozen"))
        .await
        .unwrap();
    let policy_dir = f.state_dir.path().join("envs/frozen/policy");
    let snapshot = |dir: &Path| {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap_or_default(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let before = snapshot(&policy_dir);

    // What an agent in the sandbox can do: rewrite every whitelist file the seed layout knows.
    std::fs::create_dir_all(f.workspace.path().join(".devcontainer")).unwrap();
    for file in [".devcontainer/whitelist.txt", "whitelist.txt"] {
        std::fs::write(f.workspace.path().join(file), "evil.example\n").unwrap();
    }
    f.daemon.stop("frozen").await.unwrap();
    f.daemon.start("frozen").await.unwrap();
    f.daemon.reconcile().await.unwrap();

    let after = snapshot(&policy_dir);
    assert_eq!(before, after, "the effective policy changed");
    for (name, bytes) in &after {
        assert!(
            !String::from_utf8_lossy(bytes).contains("evil.example"),
            "{name} took the agent's edit"
        );
    }
}

/// A spec whose name came from the directory name (no `name`, no `--name`).
fn default_named(workspace: &Path) -> CreateEnv {
    let spec = EnvSpec::from_workspace(
        workspace,
        &SpecOverrides {
            workspace: Some(workspace.to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(spec.name_is_default);
    CreateEnv {
        spec: (&spec).into(),
        project_whitelist: None,
    }
}

#[tokio::test]
async fn two_workspaces_named_task_get_two_environments_and_a_kept_home_holds_its_name() {
    let f = fixture();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (wa, wb) = (a.path().join("task"), b.path().join("task"));
    std::fs::create_dir(&wa).unwrap();
    std::fs::create_dir(&wb).unwrap();
    let ea = f.daemon.create(&root(), default_named(&wa)).await.unwrap();
    assert_eq!(ea.name, "task");
    let eb = f.daemon.create(&root(), default_named(&wb)).await.unwrap();
    let wb_canon = std::fs::canonicalize(&wb).unwrap();
    assert_eq!(
        eb.name,
        kennel_supervisord::registry::suffixed_name("task", &wb_canon)
    );
    assert!(eb.name.starts_with("task-") && eb.name.len() == "task-".len() + 6);
    // Each workspace finds its own environment again.
    let again = f.daemon.create(&root(), default_named(&wb)).await.unwrap();
    assert!(again.already_existed);
    assert_eq!(again.name, eb.name);

    // `down` keeps the home, and with it the name: b still cannot take "task".
    f.daemon.remove("task").await.unwrap();
    let eb2 = f.daemon.create(&root(), default_named(&wb)).await.unwrap();
    assert_eq!(eb2.name, eb.name, "b keeps its own environment");
    // `down --purge` frees it.
    f.daemon.remove_with("task", true).await.unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let wc = fresh.path().join("task");
    std::fs::create_dir(&wc).unwrap();
    let ec = f.daemon.create(&root(), default_named(&wc)).await.unwrap();
    assert_eq!(ec.name, "task");
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
        access_log_dir: None,
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

/// Regression (CI): the daemon was killed while the engine was still creating a network for
/// it; the restarted daemon removed what it found, and the network appeared after that. What
/// the engine finishes late for an interrupted creation is removed by the same reconcile.
#[tokio::test(start_paused = true)]
async fn what_the_engine_finishes_late_for_an_interrupted_create_is_removed_too() {
    let f = fixture();
    let mine = vec![(
        LABEL_DAEMON.to_string(),
        f.daemon.state().instance().to_string(),
    )];
    let p = plan(&f, "halfmade", mine);
    f.fake.create_env(&p).await.unwrap();
    f.daemon.state().reserve("halfmade").unwrap().commit();
    f.daemon.state().mark_creating("halfmade", false).unwrap();
    f.fake
        .finish_in_flight_after_remove(&p, std::time::Duration::from_secs(1));

    let report = f.daemon.reconcile().await.unwrap();
    assert_eq!(report.removed_incomplete, ["halfmade"]);
    assert!(
        f.fake.inspect_env("halfmade").await.unwrap().is_none(),
        "the object the engine made after the first removal is gone too"
    );
    assert!(!f.state_dir.path().join("envs/halfmade").exists());
    let ev = f
        .daemon
        .events(&kennel_supervisord::events::EventQuery::default())
        .unwrap()
        .into_iter()
        .find(|e| e.kind == kennel_supervisord::events::kind::CREATE_INTERRUPTED)
        .expect("create-interrupted event");
    assert_eq!(ev.details["late_removals"], 1, "{ev:?}");
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

#[tokio::test]
async fn variables_show_as_names_only_and_a_proxy_variable_sent_to_the_api_is_refused() {
    let f = fixture();
    let mut req = request(f.workspace.path(), "vars");
    req.spec.env.table = vec![("API_KEY".into(), "value-never-shown-4d1e".into())];
    let info = f.daemon.create(&root(), req).await.unwrap();
    assert_eq!(info.env_names, vec!["API_KEY".to_string()]);
    let shown = serde_json::to_string(&f.daemon.inspect("vars").await.unwrap()).unwrap();
    assert!(
        shown.contains("API_KEY") && !shown.contains("value-never-shown"),
        "{shown}"
    );
    // The plan carries the value to the engine (the sandbox needs it).
    let plan = f.fake.plan("vars").unwrap();
    assert_eq!(plan.spec.env.merged()[0].1, "value-never-shown-4d1e");

    // A client that skips the CLI's checks is refused by the daemon all the same.
    let mut req = request(f.workspace.path(), "sneaky");
    req.spec.env.table = vec![("http_proxy".into(), "http://elsewhere:1".into())];
    let err = f.daemon.create(&root(), req).await.unwrap_err();
    assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        err.to_string().contains("proxy variables are kennel's"),
        "{err}"
    );
}

#[tokio::test]
async fn mounts_and_agent_config_copies_must_be_the_callers() {
    let f = fixture();
    let foreign = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(foreign.path(), Some(4242), Some(4242)).unwrap();
    let caller = Peer {
        pid: None,
        uid: 1234,
        gid: 1234,
        groups: vec![],
    };
    std::os::unix::fs::chown(f.workspace.path(), Some(1234), Some(1234)).unwrap();
    let mut req = request(f.workspace.path(), "mnt");
    req.spec.mounts = vec![kennel_supervisord::api::types::MountDoc {
        source: foreign.path().to_path_buf(),
        target: "/data".into(),
        rw: false,
    }];
    let err = f.daemon.create(&caller, req).await.unwrap_err();
    assert_eq!(err.status(), StatusCode::FORBIDDEN, "{err}");
    assert!(err.to_string().contains("mount.source"), "{err}");
    let mut req = request(f.workspace.path(), "copy");
    req.spec.credentials.agent_config_copy = vec![foreign.path().to_path_buf()];
    let err = f.daemon.create(&caller, req).await.unwrap_err();
    assert!(
        err.to_string().contains("credentials.agent_config_copy"),
        "{err}"
    );
}

#[tokio::test]
async fn a_git_commondir_in_the_main_repository_is_reported_on_inspect_and_down() {
    let f = fixture();
    let st = std::process::Command::new("git")
        .arg("-C")
        .arg(f.workspace.path())
        .args(["init", "-q"])
        .status()
        .unwrap();
    assert!(st.success());
    f.daemon
        .create(&root(), request(f.workspace.path(), "gitws"))
        .await
        .unwrap();
    assert!(f.daemon.inspect("gitws").await.unwrap().warnings.is_empty());
    // What a sandbox could write: host git would follow it to a config of the agent's.
    std::fs::write(f.workspace.path().join(".git/commondir"), "/tmp/evil\n").unwrap();
    let warnings = f.daemon.inspect("gitws").await.unwrap().warnings;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(".git/commondir exists"),
        "{warnings:?}"
    );
    let at_down = f.daemon.remove_with("gitws", false).await.unwrap();
    assert_eq!(at_down, warnings);
}

/// Creates `name` from a workspace of its own (one workspace gets one environment back).
async fn create_in_own_workspace(f: &Fixture, name: &str) -> tempfile::TempDir {
    let ws = tempfile::tempdir().unwrap();
    f.daemon
        .create(&root(), request(ws.path(), name))
        .await
        .unwrap();
    ws
}

/// The `reconciled` events so far, oldest first.
fn reconciled(f: &Fixture) -> Vec<kennel_supervisord::events::Event> {
    use kennel_supervisord::events::{EventQuery, kind};
    f.daemon
        .events(&EventQuery::default())
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind::RECONCILED)
        .collect()
}

/// Waits (at most 5 s) for the `n`th `reconciled` event and returns it.
async fn nth_reconciled(f: &Fixture, n: usize) -> kennel_supervisord::events::Event {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let evs = reconciled(f);
        if let Some(e) = evs.get(n - 1) {
            return e.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reconciled event #{n}: {evs:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn engine_state(f: &Fixture, name: &str) -> kennel_container::backend::EnvState {
    f.fake.inspect_env(name).await.unwrap().unwrap().state
}

#[tokio::test]
async fn after_the_engine_comes_back_a_reconcile_starts_what_its_restart_left_stopped() {
    use kennel_container::backend::EnvState;
    use kennel_supervisord::events::{EventQuery, kind};

    let f = fixture();
    let _ws: Vec<_> = create_each(&f, &["alpha", "beta", "resting"]).await;
    f.daemon.stop("resting").await.unwrap();
    let watch = kennel_supervisord::ops::engine::spawn_with(
        f.daemon.clone(),
        std::time::Duration::from_millis(20),
        std::time::Duration::ZERO,
    );
    // Let the watch settle into waiting on the engine.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(
        reconciled(&f).is_empty(),
        "no reconcile while the engine stays"
    );

    // `systemctl restart docker`: the engine stops every container on its way out; back up, it
    // brought beta's sandbox back but not its proxy, and alpha not at all.
    f.fake.engine_down();
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    f.fake.set_container_running("beta", "sandbox", true);
    f.fake.engine_up();

    let ev = nth_reconciled(&f, 1).await;
    assert_eq!(ev.details["trigger"], "engine-back", "{ev:?}");
    assert_eq!(
        ev.details["started"],
        serde_json::json!(["alpha", "beta"]),
        "{ev:?}"
    );
    assert_eq!(
        ev.details["kept"],
        serde_json::json!(["alpha", "beta", "resting"]),
        "{ev:?}"
    );
    assert_eq!(ev.details["skipped_busy"], serde_json::json!([]), "{ev:?}");
    assert_eq!(engine_state(&f, "alpha").await, EnvState::Running);
    assert_eq!(engine_state(&f, "beta").await, EnvState::Running);
    // `kennel stop` is what the person asked for: it stays stopped.
    assert_eq!(engine_state(&f, "resting").await, EnvState::Stopped);
    // Each environment started again says why in its own events.
    let alpha = f
        .daemon
        .events(&EventQuery {
            env: Some("alpha".into()),
            ..Default::default()
        })
        .unwrap();
    let started = alpha
        .iter()
        .rfind(|e| e.kind == kind::STARTED)
        .expect("a started event for alpha");
    assert_eq!(started.details["reason"], "reconcile", "{started:?}");
    assert!(
        started.message.contains("after the engine came back"),
        "{started:?}"
    );

    // The watch keeps going: a second restart, a second reconcile.
    f.fake.engine_down();
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    f.fake.engine_up();
    let ev = nth_reconciled(&f, 2).await;
    assert_eq!(
        ev.details["started"],
        serde_json::json!(["alpha", "beta"]),
        "{ev:?}"
    );
    // `kennel start` lifts the stop: the next reconcile would bring it back too.
    f.daemon.start("resting").await.unwrap();
    assert!(!f.state_dir.path().join("envs/resting/stopped").exists());
    watch.abort();
}

/// Creates the environments one after the other, each from its own workspace.
async fn create_each(f: &Fixture, names: &[&str]) -> Vec<tempfile::TempDir> {
    let mut out = Vec::new();
    for n in names {
        out.push(create_in_own_workspace(f, n).await);
    }
    out
}

#[tokio::test]
async fn the_start_up_reconcile_starts_what_nobody_stopped_and_keeps_kennel_stop() {
    use kennel_container::backend::EnvState;

    let f = fixture();
    let _ws = create_each(&f, &["up", "down"]).await;
    f.daemon.stop("down").await.unwrap();
    // The host rebooted and the engine did not bring `up`'s proxy back.
    f.fake.set_container_running("up", "proxy", false);
    let report = f.daemon.reconcile().await.unwrap();
    assert_eq!(report.started, ["up"]);
    assert!(report.not_repaired.is_empty(), "{report:?}");
    assert_eq!(engine_state(&f, "up").await, EnvState::Running);
    assert_eq!(engine_state(&f, "down").await, EnvState::Stopped);
    let ev = nth_reconciled(&f, 1).await;
    assert_eq!(ev.details["trigger"], "start-up", "{ev:?}");
}

#[tokio::test]
async fn a_reconcile_at_run_time_leaves_an_environment_with_a_create_in_flight_alone() {
    use kennel_supervisord::registry::ReconcileMode;

    let f = fixture();
    f.fake.hold_creates();
    let daemon = f.daemon.clone();
    let req = request(f.workspace.path(), "inflight");
    let create = tokio::spawn(async move {
        let peer = root();
        daemon.create(&peer, req).await
    });
    // The create is in the middle: its proxy exists in the engine, its state has the record
    // and the `creating` marker a start-up reconcile would remove.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while f.fake.inspect_env("inflight").await.unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the create never began"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let marker = f.state_dir.path().join("envs/inflight/creating");
    assert!(marker.is_file());
    // And a create interrupted before this daemon started (nobody works on it) is still
    // cleaned up at run time.
    std::fs::create_dir(f.state_dir.path().join("envs/halfway")).unwrap();

    let report = f
        .daemon
        .reconcile_with(ReconcileMode::EngineBack)
        .await
        .unwrap();
    assert_eq!(report.skipped_busy, ["inflight"], "{report:?}");
    assert_eq!(report.removed_incomplete, ["halfway"], "{report:?}");
    assert!(report.removed_orphans.is_empty(), "{report:?}");
    assert!(report.started.is_empty(), "{report:?}");
    assert!(
        marker.is_file(),
        "the in-flight create's marker was removed"
    );
    assert!(f.fake.inspect_env("inflight").await.unwrap().is_some());
    let ev = nth_reconciled(&f, 1).await;
    assert_eq!(ev.details["trigger"], "engine-back", "{ev:?}");
    assert_eq!(
        ev.details["skipped_busy"],
        serde_json::json!(["inflight"]),
        "{ev:?}"
    );

    f.fake.release_creates();
    let info = create.await.unwrap().unwrap();
    assert_eq!(info.state, "running");
    assert!(!marker.exists());
    assert!(f.state_dir.path().join("envs/inflight/spec.json").is_file());
}

#[tokio::test]
async fn an_engine_away_when_the_watch_starts_is_reconciled_once_it_answers() {
    use kennel_container::backend::EnvState;

    let f = fixture();
    let _ws = create_each(&f, &["early"]).await;
    // The start-up reconcile could not reach the engine.
    f.fake.engine_down();
    assert!(f.daemon.reconcile().await.is_err());
    let watch = kennel_supervisord::ops::engine::spawn_with(
        f.daemon.clone(),
        std::time::Duration::from_millis(20),
        std::time::Duration::ZERO,
    );
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    assert!(
        reconciled(&f).is_empty(),
        "nothing while the engine is away"
    );
    f.fake.engine_up();
    let ev = nth_reconciled(&f, 1).await;
    assert_eq!(ev.details["trigger"], "engine-back", "{ev:?}");
    assert_eq!(
        ev.details["started"],
        serde_json::json!(["early"]),
        "{ev:?}"
    );
    assert_eq!(engine_state(&f, "early").await, EnvState::Running);
    watch.abort();
}
