//! Real workspaces on the real Docker engine (issue 10): git that works inside the sandbox and
//! cannot attack the host, variables, a home that survives, names and idempotence. Mandatory
//! under `CI=true`, skipped with a reason without an engine. Every object carries the test
//! environment's labels and is removed by a guard, also on failure; the only traffic is to the
//! project's own containers.

use std::path::Path;
use std::process::Command;

use kennel_container::backend::ExecResult;
use kennel_test_support::docker::{EnvOptions, TestEnv, engine, git_test_image};

fn out(r: &ExecResult) -> String {
    format!(
        "exit {} stdout {:?} stderr {:?}",
        r.exit_code,
        r.stdout_str(),
        r.stderr_str()
    )
}

/// Runs the host's git in `dir`; panics with its output on failure.
fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=kennel test",
            "-c",
            "user.email=test@kennel.invalid",
        ])
        .args(args)
        .output()
        .expect("run host git");
    assert!(
        o.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Makes `dir` (recursively) owned by root:2000, group-writable and setgid on directories: the
/// seeds' shared-group layout. The sandbox (1001:2000) can write it, but does not own it, so git
/// calls it "dubious" unless `safe.directory` says otherwise.
fn share_with_group_dev(dir: &Path) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(
            "chown -R 0:2000 \"$1\" && chmod -R g+w \"$1\" && find \"$1\" -type d -exec chmod g+s {} +",
        )
        .arg("sh")
        .arg(dir)
        .status()
        .expect("chown");
    assert!(st.success());
}

/// A main repository with one commit and a linked worktree `task` next to it (made with the
/// host's git), shared with group dev. Returns (parent dir, main, worktree).
fn repo_with_worktree() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let root = tempfile::tempdir().expect("tempdir");
    let main = root.path().join("main");
    std::fs::create_dir(&main).expect("mkdir main");
    git(&main, &["init", "-q", "-b", "main"]);
    std::fs::write(main.join("README"), "hello\n").expect("write");
    git(&main, &["add", "README"]);
    git(&main, &["commit", "-q", "-m", "first"]);
    git(
        &main,
        &["worktree", "add", "-q", "../task", "-b", "feature/task"],
    );
    share_with_group_dev(root.path());
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod root");
    let task = root.path().join("task");
    (root, main, task)
}

async fn git_env(test: &str, prefix: &str, workspace: &Path) -> Option<TestEnv> {
    let d = engine(test).await?;
    let image = git_test_image(&d).await;
    TestEnv::start(
        test,
        prefix,
        EnvOptions {
            origin: false,
            image: Some(image),
            spec_extra: format!("workspace = \"{}\"\n", workspace.display()),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn git_worktree_works_inside_and_cannot_attack_the_host() {
    let (_root, main, task) = repo_with_worktree();
    let Some(t) = git_env("git_worktree", "gitwt", &task).await else {
        return;
    };
    let common = main.join(".git");
    let admin = common.join("worktrees/task");

    // safe.directory arrives through GIT_CONFIG_* (the repository is root:2000, not the
    // sandbox user's), and git finds the main repository at its own path.
    let r = t.sh("env | grep ^GIT_CONFIG_ | sort").await;
    assert!(
        r.stdout_str().contains("GIT_CONFIG_VALUE_0=/workspace"),
        "{}",
        out(&r)
    );
    assert!(
        r.stdout_str().contains(&format!("={}", common.display())),
        "{}",
        out(&r)
    );
    let r = t.sh("git status --porcelain=v1 --branch").await;
    assert_eq!(r.exit_code, 0, "{}", out(&r));
    assert!(r.stdout_str().contains("feature/task"), "{}", out(&r));

    // Commits and branches work, and the commit is visible from the main checkout on the host.
    let r = t
        .sh("echo change >> README && git -c user.name=agent -c user.email=agent@kennel.invalid commit -qam 'from the sandbox' && git branch agent-branch && git log --oneline -1")
        .await;
    assert_eq!(r.exit_code, 0, "{}", out(&r));
    let log = git(&main, &["log", "--oneline", "-1", "feature/task"]);
    assert!(log.contains("from the sandbox"), "host sees: {log}");
    let branches = git(&main, &["branch", "--list", "agent-branch"]);
    assert!(branches.contains("agent-branch"), "host sees: {branches}");

    // Nothing git on the host executes or follows is writable from inside.
    let protected = [
        ("worktree .git file", "/workspace/.git".to_string()),
        ("repo config", common.join("config").display().to_string()),
        (
            "repo config.worktree",
            common.join("config.worktree").display().to_string(),
        ),
        (
            "worktree config.worktree",
            admin.join("config.worktree").display().to_string(),
        ),
        (
            "worktree commondir",
            admin.join("commondir").display().to_string(),
        ),
        (
            "hook",
            common.join("hooks/pre-commit").display().to_string(),
        ),
        (
            "info/attributes",
            common.join("info/attributes").display().to_string(),
        ),
        (
            "another worktree's admin dir",
            common.join("worktrees/other").display().to_string(),
        ),
        (
            "commondir redirect in the main git dir",
            common.join("commondir").display().to_string(),
        ),
        (
            "packed-refs",
            common.join("packed-refs").display().to_string(),
        ),
    ];
    for (what, path) in &protected {
        let r = t
            .sh(&format!("echo '[core] fsmonitor = evil' >> '{path}'"))
            .await;
        assert_ne!(
            r.exit_code,
            0,
            "sandbox could write the {what} {path}: {}",
            out(&r)
        );
    }
    let r = t
        .sh(&format!("mkdir '{}/x'", common.join("hooks").display()))
        .await;
    assert_ne!(
        r.exit_code,
        0,
        "sandbox could create in hooks/: {}",
        out(&r)
    );
    // The host files are unchanged (config.worktree exists, created empty by kennel).
    assert!(
        !std::fs::read_to_string(common.join("config"))
            .expect("config")
            .contains("evil")
    );
    assert_eq!(
        std::fs::read_to_string(admin.join("config.worktree")).expect("cw"),
        ""
    );
    assert!(
        std::fs::read_to_string(task.join(".git"))
            .expect(".git")
            .starts_with("gitdir:")
    );
    // Host git still works in both checkouts.
    git(&task, &["status", "--short"]);
    git(&main, &["status", "--short"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_group_dev_repository_needs_no_dubious_ownership_workaround() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = root.path().join("plain");
    std::fs::create_dir(&repo).expect("mkdir");
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("a.txt"), "a\n").expect("write");
    git(&repo, &["add", "a.txt"]);
    git(&repo, &["commit", "-q", "-m", "first"]);
    std::fs::remove_dir_all(repo.join(".git/hooks")).expect("rm hooks");
    share_with_group_dev(root.path());
    let Some(t) = git_env("git_plain", "gitplain", &repo).await else {
        return;
    };
    let r = t.sh("env | grep ^GIT_CONFIG_ | sort").await;
    assert!(
        r.stdout_str().contains("GIT_CONFIG_COUNT=1")
            && r.stdout_str().contains("GIT_CONFIG_KEY_0=safe.directory")
            && r.stdout_str().contains("GIT_CONFIG_VALUE_0=/workspace"),
        "{}",
        out(&r)
    );
    let r = t.sh("git status --short && git -c user.name=a -c user.email=a@kennel.invalid commit -q --allow-empty -m inside").await;
    assert_eq!(r.exit_code, 0, "{}", out(&r));
    assert!(!r.stderr_str().contains("dubious"), "{}", out(&r));
    assert!(git(&repo, &["log", "--oneline", "-1"]).contains("inside"));
    // A missing hooks/ was created (empty, read-only inside), so the sandbox cannot add one.
    for path in [
        "/workspace/.git/hooks/post-checkout",
        "/workspace/.git/config",
        "/workspace/.git/config.worktree",
        "/workspace/.git/info/exclude",
    ] {
        let r = t.sh(&format!("echo evil >> {path}")).await;
        assert_ne!(r.exit_code, 0, "sandbox could write {path}: {}", out(&r));
    }
    assert!(repo.join(".git/hooks").is_dir());
    // The read-only mounts inside .git/ move with it: renaming .git/ away and planting a fresh
    // one with hooks would make the person's next host `git` run them. .git/ itself is a
    // mount point, so it cannot be renamed or removed.
    let r = t
        .sh("mv /workspace/.git /workspace/.git-moved && mkdir -p /workspace/.git/hooks")
        .await;
    assert_ne!(r.exit_code, 0, "sandbox could move .git away: {}", out(&r));
    assert!(!repo.join(".git-moved").exists());
    assert!(repo.join(".git/config").is_file());
}

/// A workspace `<parent>/<dir>` for the test image, without a `name` (the directory gives it),
/// with `extra` appended to its kennel.toml. Shared with the sandbox user (1001:2000).
fn named_workspace(parent: &Path, dir: &str, image: &str, extra: &str) -> std::path::PathBuf {
    let ws = parent.join(dir);
    std::fs::create_dir(&ws).expect("mkdir workspace");
    kennel_test_support::docker::share_dir(&ws, 1001, 2000, 0o770);
    std::fs::write(
        ws.join("kennel.toml"),
        format!("image = \"{image}\"\ncommand = [\"/bin/busybox\", \"sleep\", \"3600\"]\n{extra}"),
    )
    .expect("write kennel.toml");
    ws
}

fn up_request(ws: &Path) -> anyhow::Result<kennel_supervisord::api::types::CreateEnv> {
    kennel_cli::commands::up::build_request(&kennel_cli::commands::up::UpArgs {
        spec: None,
        learn: None,
        name: None,
        image: None,
        workspace: Some(ws.to_path_buf()),
        ..Default::default()
    })
}

/// Names, idempotence, stop/start, variables, a home that survives `down` + `up` and is gone
/// after `down --purge`, agent config copied (not mounted) — through the daemon and the CLI's
/// request builder, on the real engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_names_home_variables_stop_start_and_purge_on_docker() {
    use kennel_cli::client::Client;
    use kennel_supervisord::api::types::{EnvInfo, Removed};
    use kennel_test_support::docker::{EnvGuard, proxy_binary, test_image, unique_env};

    use crate::e2e_supervisor::{RunningDaemon, exec};

    let test = "supervisor_names_home_variables";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&d).await;
    // One directory name for both workspaces, unique to this run (other runs share the engine).
    let dir_name = unique_env("task");
    let (pa, pb) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    for p in [pa.path(), pb.path()] {
        kennel_test_support::docker::share_dir(p, 0, 0, 0o755);
    }
    let host_cfg = tempfile::tempdir().expect("agent config");
    let claude = host_cfg.path().join(".claude");
    std::fs::create_dir(&claude).expect("mkdir .claude");
    std::fs::write(claude.join("settings.json"), "{\"host\": true}\n").expect("settings");
    let extra_b = format!(
        "[env]\nFROM_TOML = \"toml-value-7f3a\"\nSHARED = \"from-toml\"\n[credentials]\nagent_config_copy = [\"{}\"]\n",
        claude.display()
    );
    let wa = named_workspace(pa.path(), &dir_name, &image, "");
    let wb = named_workspace(pb.path(), &dir_name, &image, &extra_b);
    std::fs::create_dir(wb.join(".devcontainer")).expect("mkdir");
    std::fs::write(
        wb.join(".devcontainer/.env"),
        "FROM_DOTENV=dotenv-value-91c2\nSHARED=from-dotenv\nNO_UPSTREAM=example.org\n",
    )
    .expect(".env");
    let name_b = kennel_supervisord::registry::suffixed_name(
        &dir_name,
        &std::fs::canonicalize(&wb).expect("canonical"),
    );
    let _guards = (EnvGuard::new(&dir_name), EnvGuard::new(&name_b));

    let state = tempfile::tempdir().expect("state");
    let socket = state.path().join("kennel.sock");
    let daemon = RunningDaemon::start(&d, &proxy_bin, &socket, &state.path().join("state"));
    let client = Client::new(&socket);

    // Two workspaces with the same directory name: two environments.
    let a: EnvInfo = client
        .post("/envs", &up_request(&wa).expect("spec a"))
        .await
        .expect("up a");
    assert_eq!(a.name, dir_name);
    let req_b = up_request(&wb).expect("spec b");
    let b: EnvInfo = client.post("/envs", &req_b).await.expect("up b");
    assert_eq!(b.name, name_b);
    assert!(!b.already_existed);

    // `up` again: a no-op that reports it.
    let again: EnvInfo = client.post("/envs", &req_b).await.expect("up b again");
    assert!(again.already_existed && again.name == name_b, "{again:?}");

    // Variables: [env] over .env; .env's proxy settings are not sandbox variables; inspect shows
    // names only.
    let (out, _, code) = exec(&client, &name_b, "env | sort").await;
    assert_eq!(code, 0);
    for want in [
        "FROM_TOML=toml-value-7f3a",
        "FROM_DOTENV=dotenv-value-91c2",
        "SHARED=from-toml",
    ] {
        assert!(out.lines().any(|l| l == want), "{want} missing in {out}");
    }
    assert!(!out.contains("NO_UPSTREAM"), "{out}");
    let inspect: serde_json::Value = client
        .get(&format!("/envs/{name_b}"))
        .await
        .expect("inspect");
    let text = inspect.to_string();
    assert!(
        text.contains("FROM_TOML") && text.contains("FROM_DOTENV"),
        "{text}"
    );
    assert!(
        !text.contains("toml-value-7f3a") && !text.contains("dotenv-value-91c2"),
        "values leak into inspect: {text}"
    );

    // Home: owned by the sandbox user, agent config copied (the agent's copy is writable, the
    // host's is untouched), a file written there survives stop/start and down/up.
    let (out, err, code) = exec(
        &client,
        &name_b,
        "stat -c %u:%g $HOME && cat $HOME/.claude/settings.json && echo agent > $HOME/.claude/settings.json && echo kept > $HOME/survivor",
    )
    .await;
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.starts_with("1001:2000\n{\"host\": true}"), "{out}");
    assert_eq!(
        std::fs::read_to_string(claude.join("settings.json")).expect("host settings"),
        "{\"host\": true}\n"
    );
    let stopped: EnvInfo = client
        .post(&format!("/envs/{name_b}/stop"), &())
        .await
        .expect("stop");
    assert_eq!(stopped.state, "stopped", "{stopped:?}");
    let started: EnvInfo = client
        .post(&format!("/envs/{name_b}/start"), &())
        .await
        .expect("start");
    assert_eq!(started.state, "running", "{started:?}");
    let (out, _, _) = exec(&client, &name_b, "cat $HOME/survivor").await;
    assert_eq!(out, "kept\n");

    let _: Removed = client
        .delete(&format!("/envs/{name_b}"))
        .await
        .expect("down");
    let back: EnvInfo = client.post("/envs", &req_b).await.expect("up after down");
    assert_eq!(back.name, name_b, "the kept home keeps the name");
    let (out, _, _) = exec(
        &client,
        &name_b,
        "cat $HOME/survivor $HOME/.claude/settings.json",
    )
    .await;
    assert_eq!(out, "kept\nagent\n", "home survives down + up");

    // down --purge: the home volume is gone; the next up starts from a fresh home.
    let _: Removed = client
        .delete(&format!("/envs/{name_b}?purge=true"))
        .await
        .expect("down --purge");
    let vol = kennel_container::backend::names::home_volume(&name_b);
    assert!(
        d.docker().inspect_volume(&vol).await.is_err(),
        "{vol} still exists after --purge"
    );
    let fresh: EnvInfo = client.post("/envs", &req_b).await.expect("up after purge");
    let (out, _, code) = exec(&client, &fresh.name, "test -e $HOME/survivor").await;
    assert_ne!(code, 0, "home not fresh after --purge: {out}");

    // A proxy variable in [env] is refused with a clear error, before anything is created.
    let wc = named_workspace(
        pa.path(),
        "proxyvar",
        &image,
        "[env]\nhttps_proxy = \"http://elsewhere:3128\"\n",
    );
    let err = up_request(&wc)
        .expect_err("proxy variable refused")
        .to_string();
    assert!(err.contains("env.https_proxy"), "{err}");
    assert!(err.contains("proxy variables are kennel's"), "{err}");
    daemon.stop().await;
}
