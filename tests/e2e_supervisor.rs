//! kennel-supervisord end to end on the real Docker engine: the daemon runs in-process on a
//! temporary socket and state directory; the CLI's library (the code behind `kennel up`,
//! `exec`, `ls`, `down`) talks to it. Skips with a reason without an engine or a static proxy
//! binary, fails instead under `CI=true`.

use std::path::Path;
use std::sync::Arc;

use kennel_cli::client::Client;
use kennel_cli::commands::up::{UpArgs, build_request};
use kennel_container::{Backend, DockerBackend};
use kennel_supervisord::api::types::{EnvInfo, ExecRequest, ImageBuilt, Removed};
use kennel_supervisord::auth::Authorizer;
use kennel_supervisord::daemon::{DockerImages, bind_socket, run};
use kennel_supervisord::registry::Daemon;
use kennel_supervisord::state::StateDir;
use kennel_test_support::docker::{
    EnvGuard, engine, proxy_binary, share_dir, test_image, unique_env,
};

/// A daemon serving on `socket` until dropped (then drained). Shared with e2e_workspace.
pub(crate) struct RunningDaemon {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl RunningDaemon {
    pub(crate) fn start(
        d: &DockerBackend,
        proxy_bin: &Path,
        socket: &Path,
        state: &Path,
    ) -> RunningDaemon {
        let docker = Arc::new(d.clone());
        let daemon = Daemon::new(
            docker.clone(),
            Arc::new(DockerImages::new(
                docker,
                Some(proxy_bin.to_path_buf()),
                None,
            )),
            StateDir::open(state).expect("state dir"),
            Authorizer::new(0, [], []),
        );
        let listener = bind_socket(socket, None).expect("bind socket");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(run(listener, daemon, async {
            let _ = stopped.await;
        }));
        RunningDaemon {
            stop: Some(stop),
            done: Some(done),
        }
    }

    /// A daemon with its socket and state in a new temporary directory, and a client of it.
    /// The directory comes first so that, bound as `let (dir, daemon, client) = …`, it is
    /// dropped last (after the daemon has been told to stop).
    pub(crate) fn start_in_tempdir(
        d: &DockerBackend,
        proxy_bin: &Path,
    ) -> (tempfile::TempDir, RunningDaemon, Client) {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("kennel.sock");
        let daemon = RunningDaemon::start(d, proxy_bin, &socket, &dir.path().join("state"));
        let client = Client::new(&socket);
        (dir, daemon, client)
    }

    pub(crate) async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(done) = self.done.take() {
            done.await.expect("daemon task");
        }
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A workspace with a kennel.toml for the test image (kept alive by the sandbox's `sleep`).
fn workspace(name: &str, image: &str) -> tempfile::TempDir {
    let ws = tempfile::tempdir().expect("workspace");
    share_dir(ws.path(), 1001, 2000, 0o770);
    std::fs::write(
        ws.path().join("kennel.toml"),
        format!("name = \"{name}\"\nimage = \"{image}\"\ncommand = [\"/bin/busybox\", \"sleep\", \"3600\"]\n"),
    )
    .expect("write kennel.toml");
    std::fs::create_dir(ws.path().join(".devcontainer")).expect("mkdir");
    std::fs::write(
        ws.path().join(".devcontainer/whitelist.txt"),
        "project-only.kennel-test\n",
    )
    .expect("whitelist");
    ws
}

pub(crate) async fn exec(client: &Client, env: &str, script: &str) -> (String, String, i32) {
    let req = ExecRequest {
        cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..Default::default()
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = client
        .exec(env, &req, None, &mut out, &mut err)
        .await
        .expect("exec");
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        code,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_up_exec_ls_down_on_docker() {
    let test = "supervisor_up_exec_ls_down_on_docker";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&d).await;
    let name = unique_env("sup");
    let _guard = EnvGuard::new(&name);
    let (_dir, daemon, client) = RunningDaemon::start_in_tempdir(&d, &proxy_bin);

    // `kennel up --workspace WS` (spec read from WS/kennel.toml, seed whitelist imported).
    let ws = workspace(&name, &image);
    let req = build_request(&UpArgs {
        spec: None,
        learn: None,
        name: None,
        image: None,
        workspace: Some(ws.path().into()),
        ..Default::default()
    })
    .expect("spec");
    assert_eq!(
        req.project_whitelist.as_deref(),
        Some("project-only.kennel-test\n")
    );
    let info: EnvInfo = client.post("/envs", &req).await.expect("create");
    assert_eq!(info.name, name);
    assert_eq!(info.state, "running", "{info:?}");
    let roles: Vec<&str> = info.containers.iter().map(|c| c.role.as_str()).collect();
    assert_eq!(roles, ["proxy", "sandbox"]);
    let policy_dir = info.policy_dir.clone().expect("policy dir");
    assert!(policy_dir.join("policy.toml").is_file());

    // A second create for the same workspace is a no-op that reports the environment.
    let again: EnvInfo = client.post("/envs", &req).await.expect("up again");
    assert!(again.already_existed, "{again:?}");
    assert_eq!(again.name, name);

    // `kennel exec`: stdout and stderr apart, exit code propagated, runs as 1001:2000.
    let (out, err, code) = exec(
        &client,
        &name,
        "echo to-out; echo to-err >&2; id -u; id -g; exit 3",
    )
    .await;
    assert_eq!(out, "to-out\n1001\n2000\n");
    assert_eq!(err, "to-err\n");
    assert_eq!(code, 3);

    // `kennel exec -i`: stdin is forwarded until EOF.
    let cat = ExecRequest {
        cmd: vec!["/bin/cat".into()],
        stdin: true,
        ..Default::default()
    };
    let input: Box<dyn tokio::io::AsyncRead + Send + Unpin> =
        Box::new(std::io::Cursor::new(b"via stdin\n".to_vec()));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = client
        .exec(&name, &cat, Some(input), &mut out, &mut err)
        .await
        .expect("exec -i");
    assert_eq!(
        (String::from_utf8_lossy(&out).as_ref(), code),
        ("via stdin\n", 0)
    );

    // The sandbox reaches its proxy, which runs the daemon-written policy: a host outside it is
    // refused with 403 (decided before any DNS lookup, so nothing leaves the machine).
    let mut status = String::new();
    for _ in 0..50 {
        let (out, _, _) = exec(
            &client,
            &name,
            "curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://not-allowed.kennel-test/",
        )
        .await;
        status = out;
        if status == "403" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, "403", "the proxy answers with a policy denial");

    // `kennel ls`.
    let list: Vec<EnvInfo> = client.get("/envs").await.expect("list");
    let mine = list.iter().find(|e| e.name == name).expect("listed");
    assert_eq!(mine.workspace.as_deref(), Some(ws.path()));

    // `kennel down` removes every labelled object and the state.
    let removed: Removed = client.delete(&format!("/envs/{name}")).await.expect("down");
    assert_eq!(removed.name, name);
    assert!(
        d.inspect_env(&name).await.expect("inspect").is_none(),
        "labelled objects remain"
    );
    assert!(!policy_dir.exists(), "state removed");
    let gone = client
        .get::<EnvInfo>(&format!("/envs/{name}"))
        .await
        .expect_err("gone");
    assert_eq!(gone.status(), Some(404));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_restart_keeps_known_envs_and_removes_orphans_on_docker() {
    let test = "supervisor_restart_keeps_known_envs_and_removes_orphans_on_docker";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&d).await;
    let (kept, orphan) = (unique_env("sup-kept"), unique_env("sup-orphan"));
    let _guards = (EnvGuard::new(&kept), EnvGuard::new(&orphan));
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("kennel.sock");
    let state = dir.path().join("state");
    let client = Client::new(&socket);

    let daemon = RunningDaemon::start(&d, &proxy_bin, &socket, &state);
    let (ws1, ws2) = (workspace(&kept, &image), workspace(&orphan, &image));
    for ws in [&ws1, &ws2] {
        let req = build_request(&UpArgs {
            spec: None,
            learn: None,
            name: None,
            image: None,
            workspace: Some(ws.path().into()),
            ..Default::default()
        })
        .expect("spec");
        let _: EnvInfo = client.post("/envs", &req).await.expect("create");
    }
    daemon.stop().await;

    // The orphan's state disappears while the daemon is down; its containers stay labelled.
    std::fs::remove_dir_all(state.join("envs").join(&orphan)).expect("wipe state");
    let daemon = RunningDaemon::start(&d, &proxy_bin, &socket, &state);
    let list: Vec<EnvInfo> = client.get("/envs").await.expect("list");
    let names: Vec<&str> = list.iter().map(|e| e.name.as_str()).collect();
    assert!(names.contains(&kept.as_str()), "{names:?}");
    assert!(!names.contains(&orphan.as_str()), "{names:?}");
    assert!(
        d.inspect_env(&orphan).await.expect("inspect").is_none(),
        "orphan objects removed"
    );
    let (out, _, code) = exec(&client, &kept, "echo alive").await;
    assert_eq!(
        (out.as_str(), code),
        ("alive\n", 0),
        "the kept env survived the restart"
    );
    let _: Removed = client.delete(&format!("/envs/{kept}")).await.expect("down");
    daemon.stop().await;
}

/// The README path: `kennel image build`, then `kennel up` in a directory without kennel.toml
/// (default image `kennel-sandbox:latest`, embedded default policy + seed whitelist).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_demo_sandbox_from_host_files_on_docker() {
    let test = "supervisor_demo_sandbox_from_host_files_on_docker";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let name = unique_env("sup-demo");
    let _guard = EnvGuard::new(&name);
    let (_dir, daemon, client) = RunningDaemon::start_in_tempdir(&d, &proxy_bin);

    let built: ImageBuilt = client
        .post("/images/demo-sandbox", &serde_json::json!({}))
        .await
        .expect("demo image");
    assert_eq!(built.image, "kennel-sandbox:latest");

    let ws = tempfile::tempdir().expect("workspace");
    share_dir(ws.path(), 1001, 2000, 0o770);
    let req = build_request(&UpArgs {
        spec: None,
        learn: None,
        name: Some(name.clone()),
        image: None,
        workspace: Some(ws.path().into()),
        ..Default::default()
    })
    .expect("spec from the seed layout");
    assert_eq!(req.spec.image, "kennel-sandbox:latest");
    let info: EnvInfo = client.post("/envs", &req).await.expect("create");
    assert_eq!(info.state, "running");

    let (out, err, code) = exec(
        &client,
        &name,
        "id -u; id -g; pwd; touch /workspace/made-here && echo ok",
    )
    .await;
    assert_eq!(
        (out.as_str(), err.as_str(), code),
        ("1001\n2000\n/workspace\nok\n", "", 0)
    );
    assert!(
        ws.path().join("made-here").is_file(),
        "the workspace is the host directory"
    );

    let _: Removed = client.delete(&format!("/envs/{name}")).await.expect("down");
    assert!(d.inspect_env(&name).await.expect("inspect").is_none());
    daemon.stop().await;
}
