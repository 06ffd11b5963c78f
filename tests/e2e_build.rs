//! The workspace's own image on the real Docker engine (mandatory under `CI=true`, skipped with
//! a reason when no engine answers): `.devcontainer/Dockerfile` is built on the environment's
//! internal network through its proxy, reused while the context is unchanged, and run with the
//! sandbox's hardening whatever devcontainer.json asks for. `FROM` is the locally loaded test
//! image (no registry); origins are the project's own containers on the egress network. Every
//! container, network and built image carries the environment's label and is removed by guards,
//! also when a test fails.

use std::path::Path;

use bollard::query_parameters::{ListImagesOptions, RemoveImageOptions};
use kennel_container::backend::names;
use kennel_container::devcontainer::BuildSpec;
use kennel_container::spec::{EnvSpec, SpecOverrides};
use kennel_container::{Backend, BackendError, EnvPlan};
use kennel_test_support::docker::{
    EnvGuard, EnvOptions, TEST_POLICY, TestEnv, engine, proxy_binary, share_dir, test_image,
    unique_env,
};

/// Removes every image labelled `dev.kennel.env=<name>` when dropped (after the containers that
/// use them: declare it before the [`EnvGuard`]).
pub(crate) struct BuiltImages(pub(crate) String);

impl Drop for BuiltImages {
    fn drop(&mut self) {
        let name = self.0.clone();
        let t = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok(d) = kennel_container::DockerBackend::connect().await else {
                    return;
                };
                for id in labelled_images(&d, &name).await {
                    let opts = RemoveImageOptions {
                        force: true,
                        ..Default::default()
                    };
                    if let Err(e) = d.docker().remove_image(&id, Some(opts), None).await {
                        eprintln!("BuiltImages: removing {id} of {name} failed: {e}");
                    }
                }
            });
        });
        let _ = t.join();
    }
}

async fn labelled_images(d: &kennel_container::DockerBackend, env: &str) -> Vec<String> {
    d.docker()
        .list_images(Some(ListImagesOptions {
            filters: Some(std::collections::HashMap::from([(
                "label".to_string(),
                vec![format!("dev.kennel.env={env}")],
            )])),
            ..Default::default()
        }))
        .await
        .map(|l| l.into_iter().map(|i| i.id).collect())
        .unwrap_or_default()
}

fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}

/// Runs `create_env`, collecting the progress lines.
async fn create(
    d: &kennel_container::DockerBackend,
    plan: &EnvPlan,
) -> (
    Result<kennel_container::EnvStatus, BackendError>,
    Vec<String>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut plan = plan.clone();
    plan.progress = Some(tx);
    let r = d.create_env(&plan).await;
    drop(plan);
    let mut lines = Vec::new();
    while let Ok(l) = rx.try_recv() {
        lines.push(l);
    }
    (r, lines)
}

#[tokio::test(flavor = "multi_thread")]
async fn workspace_dockerfile_is_built_run_hardened_and_reused() {
    let test = "workspace_dockerfile_is_built";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let name = unique_env("wsimg");
    let _images = BuiltImages(name.clone());
    let _guard = EnvGuard::new(&name);
    let image = test_image(&d).await;
    let proxy_image = kennel_container::image::ensure_proxy_image(&d, &proxy_bin)
        .await
        .expect("proxy image");

    let ws = tempfile::tempdir().expect("workspace");
    share_dir(ws.path(), 1001, 2000, 0o770);
    write(
        &ws.path().join(".devcontainer/Dockerfile"),
        &format!(
            "FROM {image}\nARG GREETING\nRUN echo built > /built-marker && echo \"$GREETING\" > /greeting && echo 'builder:x:1234:1234::/tmp:/bin/sh' >> /etc/passwd\n"
        ),
    );
    write(
        &ws.path().join(".devcontainer/devcontainer.json"),
        r#"{
            // the project's image, as the old setup had it
            "build": { "dockerfile": "Dockerfile", "args": { "GREETING": "hello-arg" }, },
            "containerEnv": { "FOO": "from-devcontainer", "HTTP_PROXY": "http://tinyproxy:8888" },
            "remoteUser": "builder", // a name: its uid comes from the built image
            "privileged": true,
            "runArgs": ["--privileged", "--network=host"],
            "capAdd": ["SYS_ADMIN"],
            "postCreateCommand": "echo created",
        }"#,
    );
    // Only the name and a command the busybox test image has; the image comes from the build.
    write(
        &ws.path().join("kennel.toml"),
        &format!("name = \"{name}\"\ncommand = [\"/bin/busybox\", \"sleep\", \"3600\"]\n"),
    );
    let spec = EnvSpec::from_workspace(ws.path(), &SpecOverrides::default()).expect("spec");
    assert!(spec.build.is_some(), "{spec:?}");
    let warning = spec.warnings.join("\n");
    for key in ["privileged", "runArgs", "capAdd", "containerEnv.HTTP_PROXY"] {
        assert!(
            warning.contains(&format!("  - {key}: ")),
            "{key}: {warning}"
        );
    }
    let policy = tempfile::tempdir().expect("policy dir");
    share_dir(policy.path(), 0, 0, 0o755);
    write(&policy.path().join("policy.toml"), TEST_POLICY);
    let plan = EnvPlan {
        spec,
        policy_dir: policy.path().to_path_buf(),
        proxy_image,
        state_labels: vec![("dev.kennel.test".into(), test.into())],
        progress: None,
        access_log_dir: None,
    };

    let (status, log) = create(&d, &plan).await;
    let status = status.unwrap_or_else(|e| panic!("create_env {name}: {e}\n{}", log.join("\n")));
    let log = log.join("\n");
    assert!(log.contains("building "), "{log}");
    let sandbox = status
        .containers
        .iter()
        .find(|c| c.role == "sandbox")
        .expect("sandbox");
    assert!(
        sandbox.image.starts_with(&format!("kennel-build-{name}:")),
        "{sandbox:?}"
    );
    let first_tag = sandbox.image.clone();

    let run = |script: &'static str| {
        let d = d.clone();
        let name = name.clone();
        async move {
            d.exec(
                &name,
                kennel_container::ExecRequest {
                    cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
                    ..Default::default()
                },
            )
            .await
            .expect("exec")
            .collect()
            .await
            .expect("collect")
        }
    };
    let r = run("cat /built-marker /greeting; echo \"FOO=$FOO\"; echo \"PROXY=$HTTP_PROXY\"; id -u; id -g; grep -E '^Cap(Eff|Bnd)' /proc/self/status").await;
    let out = r.stdout_str();
    assert_eq!(r.exit_code, 0, "{out} {}", r.stderr_str());
    assert!(out.contains("built\nhello-arg\n"), "{out}");
    assert!(out.contains("FOO=from-devcontainer"), "{out}");
    // kennel's proxy variable, not the one devcontainer.json asked for.
    assert!(out.contains("PROXY=http://proxy:8888"), "{out}");
    assert!(
        out.contains("\n1234\n2000\n"),
        "remoteUser resolved in the image: {out}"
    );
    assert!(log.contains("user \"builder\" is uid 1234"), "{log}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("CapBnd:\t0000000000000000"), "{out}");

    // Still unprivileged and on the internal network only, whatever the file asked for.
    let info = d
        .docker()
        .inspect_container(&names::sandbox(&name), None)
        .await
        .expect("inspect sandbox");
    let host = info.host_config.expect("host config");
    assert_eq!(host.privileged, Some(false));
    assert!(host.cap_add.unwrap_or_default().is_empty());
    assert_eq!(
        host.network_mode.as_deref(),
        Some(names::network(&name).as_str())
    );

    // Unchanged context: the second creation reuses the tag without building.
    d.remove_env(&name).await.expect("remove");
    let (status, log) = create(&d, &plan).await;
    let status = status.unwrap_or_else(|e| panic!("second create_env {name}: {e}"));
    let log = log.join("\n");
    assert!(log.contains("up to date"), "{log}");
    assert!(!log.contains("Step 1/"), "rebuilt: {log}");
    let again = status
        .containers
        .iter()
        .find(|c| c.role == "sandbox")
        .expect("sandbox");
    assert_eq!(again.image, first_tag);

    // A changed Dockerfile gives a new tag.
    d.remove_env(&name).await.expect("remove");
    write(
        &ws.path().join(".devcontainer/Dockerfile"),
        &format!(
            "FROM {image}\nRUN echo changed > /built-marker && echo 'builder:x:1234:1234::/tmp:/bin/sh' >> /etc/passwd\n"
        ),
    );
    let mut plan2 = plan.clone();
    plan2.spec = EnvSpec::from_workspace(ws.path(), &SpecOverrides::default()).expect("spec");
    let (status, _) = create(&d, &plan2).await;
    let status = status.expect("third create_env");
    let third = status
        .containers
        .iter()
        .find(|c| c.role == "sandbox")
        .expect("sandbox");
    assert_ne!(third.image, first_tag);

    // A Dockerfile that makes the named user root: refused, nothing left behind.
    d.remove_env(&name).await.expect("remove");
    write(
        &ws.path().join(".devcontainer/Dockerfile"),
        &format!("FROM {image}\nRUN echo 'builder:x:0:0::/root:/bin/sh' >> /etc/passwd\n"),
    );
    plan2.spec = EnvSpec::from_workspace(ws.path(), &SpecOverrides::default()).expect("spec");
    let (status, _) = create(&d, &plan2).await;
    let e = status
        .expect_err("a user that is root in the image")
        .to_string();
    assert!(e.contains("never runs the sandbox as root"), "{e}");
    assert!(d.inspect_env(&name).await.expect("inspect").is_none());
    assert_eq!(
        labelled_images(&d, &name).await.len(),
        3,
        "every build is labelled (for cleanup)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn build_run_steps_obey_the_environment_allowlist() {
    let Some(t) = TestEnv::start("build_allowlist", "bldnet", EnvOptions::default()).await else {
        return;
    };
    let _images = BuiltImages(t.name.clone());
    let origin = t.origin.clone().expect("origin");
    let origin_ip = t.ip(&origin, &names::egress_network(&t.name)).await;
    let dir = t.workspace.path().join(".devcontainer");
    let image = &t.image;
    let build = |file: &str, run: &str| {
        write(&dir.join(file), &format!("FROM {image}\nRUN {run}\n"));
        BuildSpec {
            context: dir.clone(),
            dockerfile: dir.join(file),
            args: vec![],
            target: None,
        }
    };
    let lines = std::sync::Mutex::new(Vec::<String>::new());
    let report = |l: String| lines.lock().expect("lock").push(l);

    // Allowed origin, through the proxy the build arguments point at.
    let ok = build(
        "Dockerfile.allowed",
        "curl -fsS --max-time 10 http://origin.kennel-test/index.html > /fetched && cat /fetched",
    );
    let tag = kennel_container::build::build_image(t.d.docker(), &t.name, &ok, &[], &report)
        .await
        .unwrap_or_else(|e| panic!("allowed build: {e}\n{:?}", lines.lock()));
    assert!(tag.starts_with(&format!("kennel-build-{}:", t.name)));
    let log = lines.lock().expect("lock").join("\n");
    assert!(log.contains("hello from kennel origin"), "{log}");

    // Denied origin: the proxy answers 403, curl -f fails, the build fails and says why.
    let denied = build(
        "Dockerfile.denied",
        "curl -fsS --max-time 10 http://denied.kennel-test/index.html",
    );
    let e = kennel_container::build::build_image(t.d.docker(), &t.name, &denied, &[], &report)
        .await
        .expect_err("a RUN step fetching a denied origin must fail the build");
    let msg = e.to_string();
    assert!(matches!(e, BackendError::Build(_)), "{msg}");
    assert!(msg.contains("403"), "{msg}");

    // Around the proxy: the RUN container is on the internal network, which has no route out.
    let direct = build(
        "Dockerfile.direct",
        &format!("curl -fsS --noproxy '*' --max-time 5 http://{origin_ip}/index.html"),
    );
    let e = kennel_container::build::build_image(t.d.docker(), &t.name, &direct, &[], &report)
        .await
        .expect_err("a direct connection from a RUN step must fail");
    assert!(matches!(e, BackendError::Build(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kennel_up_builds_the_devcontainer_and_runs_lifecycle_commands_as_the_sandbox_user() {
    use kennel_cli::client::Client;
    use kennel_cli::commands::up::{UpArgs, build_request};
    use kennel_supervisord::api::types::EnvInfo;

    let test = "kennel_up_builds_the_devcontainer";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&d).await;
    let name = unique_env("upbld");
    let _images = BuiltImages(name.clone());
    let _guard = EnvGuard::new(&name);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("kennel.sock");
    let daemon = crate::e2e_supervisor::RunningDaemon::start(
        &d,
        &proxy_bin,
        &socket,
        &dir.path().join("state"),
    );
    let client = Client::new(&socket);

    let ws = tempfile::tempdir().expect("workspace");
    share_dir(ws.path(), 1001, 2000, 0o770);
    write(
        &ws.path().join(".devcontainer/Dockerfile"),
        &format!("FROM {image}\nRUN echo from-the-dockerfile > /built-marker\n"),
    );
    write(
        &ws.path().join(".devcontainer/devcontainer.json"),
        r#"{
            "dockerFile": "Dockerfile", // legacy spelling
            "remoteEnv": { "BAR": "remote" },
            "postCreateCommand": "id -u > /workspace/created-by; echo post-create-output",
            "postStartCommand": ["/bin/sh", "-c", "echo post-start-output; cat /built-marker"],
        }"#,
    );
    write(
        &ws.path().join("kennel.toml"),
        &format!("name = \"{name}\"\ncommand = [\"/bin/busybox\", \"sleep\", \"3600\"]\n"),
    );
    let req = build_request(&UpArgs {
        spec: None,
        name: None,
        image: None,
        workspace: Some(ws.path().into()),
        learn: None,
        ..Default::default()
    })
    .expect("spec");
    assert!(req.spec.build.is_some());
    // As `kennel up` does: the output streams in while the environment is created.
    let mut lines = Vec::new();
    let info: EnvInfo = client
        .create_streaming(&req, &mut |l: &str| lines.push(l.to_string()))
        .await
        .expect("create");
    assert_eq!(info.state, "running", "{info:?}");
    let log = lines.join("\n");
    let step = log
        .find("Step 1/")
        .unwrap_or_else(|| panic!("build output streamed: {log}"));
    let post = log
        .find("post-create-output")
        .unwrap_or_else(|| panic!("{log}"));
    assert!(step < post, "build before lifecycle commands: {log}");
    assert!(
        log.contains("post-start-output\nfrom-the-dockerfile"),
        "{log}"
    );
    let created_by = std::fs::read_to_string(ws.path().join("created-by")).expect("created-by");
    assert_eq!(
        created_by.trim(),
        "1001",
        "lifecycle commands run as the sandbox user"
    );

    // A second `kennel up` in the same workspace (plain, non-streaming create) is a no-op that
    // reports the environment: nothing is built or run again.
    let again = client
        .post::<_, EnvInfo>("/envs", &req)
        .await
        .expect("up again");
    assert!(again.already_existed, "{again:?}");
    assert!(again.log.is_empty(), "nothing rebuilt or rerun: {again:?}");

    // A failing RUN step: a 422 over the stream with the end of the build output, nothing left.
    let _: kennel_supervisord::api::types::Removed =
        client.delete(&format!("/envs/{name}")).await.expect("down");
    write(
        &ws.path().join(".devcontainer/Dockerfile"),
        &format!("FROM {image}\nRUN echo about-to-fail && false\n"),
    );
    let req = build_request(&UpArgs {
        spec: None,
        name: None,
        image: None,
        workspace: Some(ws.path().into()),
        learn: None,
        ..Default::default()
    })
    .expect("spec");
    let e = client
        .create_streaming(&req, &mut |_: &str| {})
        .await
        .expect_err("failing build");
    assert_eq!(e.status(), Some(422), "{e}");
    assert!(e.to_string().contains("about-to-fail"), "{e}");
    assert!(d.inspect_env(&name).await.expect("inspect").is_none());
    daemon.stop().await;
}

/// `kennel worktree add` / `rm` against an in-process daemon. A plain test with its own runtime
/// for the daemon, because the CLI code under test blocks on its own runtime.
#[test]
fn kennel_worktree_add_brings_the_task_up_and_rm_refuses_dirty_then_removes_both() {
    use kennel_cli::client::Client;
    use kennel_cli::commands::worktree::{AddArgs, RmArgs, add, rm};
    use kennel_supervisord::api::types::EnvInfo;

    let test = "kennel_worktree_add_rm";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let Some(d) = rt.block_on(engine(test)) else {
        return;
    };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = rt.block_on(test_image(&d));
    let name = unique_env("wt");
    let _guard = EnvGuard::new(&name);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("kennel.sock");
    let daemon = rt.block_on(async {
        crate::e2e_supervisor::RunningDaemon::start(
            &d,
            &proxy_bin,
            &socket,
            &dir.path().join("state"),
        )
    });
    let client = Client::new(&socket);

    // A repository whose committed kennel.toml names the environment and the test image.
    let repos = tempfile::tempdir().expect("repos");
    let main = repos.path().join("proj");
    std::fs::create_dir(&main).expect("mkdir");
    write(
        &main.join("kennel.toml"),
        &format!(
            "name = \"{name}\"\nimage = \"{image}\"\ncommand = [\"/bin/busybox\", \"sleep\", \"3600\"]\n"
        ),
    );
    let git = |args: &[&str]| {
        let st = std::process::Command::new("git")
            .arg("-C")
            .arg(&main)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .status()
            .expect("git");
        assert!(st.success(), "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "kennel.toml"]);
    git(&["commit", "-qm", "init"]);

    add(
        &client,
        &main,
        &AddArgs {
            name: "t1".into(),
            branch: Some("feature/t1".into()),
            from: None,
            dir: None,
            no_up: false,
        },
    )
    .expect("worktree add");
    let wt = repos.path().join("proj-t1");
    assert!(wt.join("kennel.toml").is_file());
    let info: EnvInfo = rt
        .block_on(client.get(&format!("/envs/{name}")))
        .expect("env exists");
    assert_eq!(info.state, "running");
    assert_eq!(
        info.workspace.as_deref(),
        Some(std::fs::canonicalize(&wt).expect("canon").as_path())
    );

    // Dirty: refused, and nothing removed.
    std::fs::write(wt.join("work-in-progress"), "x").expect("write");
    let args = RmArgs {
        name: "t1".into(),
        dir: None,
        force: false,
        keep_home: false,
    };
    let e = rm(&client, &main, &args).expect_err("dirty worktree");
    assert!(e.to_string().contains("uncommitted or untracked"), "{e}");
    assert!(wt.is_dir());
    assert!(
        rt.block_on(d.inspect_env(&name))
            .expect("inspect")
            .is_some()
    );

    // --force removes the environment and the worktree.
    rm(
        &client,
        &main,
        &RmArgs {
            force: true,
            ..args
        },
    )
    .expect("worktree rm --force");
    assert!(!wt.exists());
    assert!(
        rt.block_on(d.inspect_env(&name))
            .expect("inspect")
            .is_none()
    );
    // The home volume goes with the worktree: no workspace would claim it again.
    assert_eq!(
        rt.block_on(d.kept_home(&name)).expect("kept home"),
        None,
        "home volume left behind by worktree rm"
    );
    rt.block_on(daemon.stop());
}
