//! The real `kennel` binary against an in-process kennel-supervisord on a temporary socket,
//! backed by the in-memory FakeBackend (no Docker needed).

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should just fail the test

mod support;
use support::{TestDaemon, stderr, stdout};

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kennel_container::backend::ExecResult;
use kennel_supervisord::auth::Authorizer;

impl TestDaemon {
    fn kennel(&self, args: &[&str]) -> Output {
        kennel_at(&self.socket, args, None)
    }
}

/// Runs `kennel --socket SOCKET ARGS…`; with `as_user = Some((uid, dir))` as that uid (and gid),
/// from a copy of the binary in `dir` (a 0755 temp dir the test owns, so other uids can run it
/// whatever the target directory's permissions).
fn kennel_at(socket: &Path, args: &[&str], as_user: Option<(u32, &Path)>) -> Output {
    let mut cmd = match as_user {
        Some((uid, dir)) => {
            let bin = dir.join("kennel");
            if !bin.exists() {
                std::fs::copy(kennel_bin(), &bin).unwrap();
                std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            let mut cmd = Command::new(bin);
            cmd.uid(uid).gid(uid);
            cmd
        }
        None => Command::new(kennel_bin()),
    };
    cmd.arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("KENNEL_SOCKET");
    cmd.output().expect("run kennel")
}

fn kennel_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kennel"))
}

fn seed_workspace() -> tempfile::TempDir {
    let ws = tempfile::tempdir().unwrap();
    std::fs::create_dir(ws.path().join(".devcontainer")).unwrap();
    std::fs::write(
        ws.path().join(".devcontainer/whitelist.txt"),
        "example.org\n",
    )
    .unwrap();
    ws
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn up_ls_inspect_exec_down_through_the_cli() {
    let d = TestDaemon::start_with(Authorizer::new(0, [], []));
    let ws = seed_workspace();
    let ws_path = ws.path().to_str().unwrap();

    let up = d.kennel(&["up", "--workspace", ws_path, "--name", "demo"]);
    assert!(up.status.success(), "up failed: {}", stderr(&up));
    assert!(
        stdout(&up).contains("environment \"demo\" is running"),
        "{}",
        stdout(&up)
    );
    assert!(
        stdout(&up).contains("kennel exec demo"),
        "says what to do next: {}",
        stdout(&up)
    );
    let imported =
        std::fs::read_to_string(d.dir.path().join("state/envs/demo/policy/whitelist.txt")).unwrap();
    assert!(
        imported.contains("example.org"),
        "seed whitelist imported: {imported}"
    );

    let ls = d.kennel(&["ls"]);
    assert!(ls.status.success(), "{}", stderr(&ls));
    let table = stdout(&ls);
    assert!(table.starts_with("NAME"), "{table}");
    let row = table.lines().nth(1).unwrap();
    assert!(
        row.starts_with("demo") && row.contains("running") && row.contains("2/2"),
        "{table}"
    );

    let json: serde_json::Value =
        serde_json::from_slice(&d.kennel(&["ls", "--json"]).stdout).unwrap();
    assert_eq!(json[0]["name"], "demo");
    assert_eq!(json[0]["workspace"], ws_path);

    let inspect: serde_json::Value =
        serde_json::from_slice(&d.kennel(&["inspect", "demo"]).stdout).unwrap();
    assert_eq!(inspect["network"], "kennel-demo");
    assert_eq!(inspect["containers"][0]["role"], "proxy");

    d.fake.script_exec(
        &["sh", "-c", "work"],
        ExecResult {
            stdout: b"out line\n".to_vec(),
            stderr: b"err line\n".to_vec(),
            exit_code: 7,
        },
    );
    let exec = d.kennel(&["exec", "demo", "--", "sh", "-c", "work"]);
    assert_eq!(stdout(&exec), "out line\n");
    assert_eq!(stderr(&exec), "err line\n");
    assert_eq!(exec.status.code(), Some(7), "exit code propagated");

    let ok = d.kennel(&["exec", "-e", "A=b", "-w", "/tmp", "demo", "--", "true"]);
    assert_eq!(
        (ok.status.code(), stdout(&ok)),
        (Some(0), "true\n".to_string())
    );
    let (_, seen) = d.fake.exec_log().pop().unwrap();
    assert_eq!(
        (seen.env, seen.workdir),
        (vec!["A=b".to_string()], Some("/tmp".to_string()))
    );

    let down = d.kennel(&["down", "demo"]);
    assert!(down.status.success(), "{}", stderr(&down));
    assert!(stdout(&down).contains("removed environment \"demo\""));
    assert!(!d.dir.path().join("state/envs/demo").exists());

    let gone = d.kennel(&["inspect", "demo"]);
    assert_eq!(gone.status.code(), Some(2));
    assert!(
        stderr(&gone).contains("environment \"demo\" not found"),
        "{}",
        stderr(&gone)
    );
    assert!(
        stderr(&gone).contains("hint: list environments with `kennel ls`"),
        "{}",
        stderr(&gone)
    );
}

#[test]
fn up_twice_is_a_no_op_and_a_name_of_another_workspace_is_refused_with_a_next_step() {
    let d = TestDaemon::start_with(Authorizer::new(0, [], []));
    let ws = seed_workspace();
    let ws_path = ws.path().to_str().unwrap();
    assert!(
        d.kennel(&["up", "--workspace", ws_path, "--name", "twice"])
            .status
            .success()
    );
    // The same workspace again: its environment, unchanged.
    let again = d.kennel(&["up", "--workspace", ws_path, "--name", "twice"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let out = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(
        out.contains("environment \"twice\" already exists for this workspace; nothing created"),
        "{out}"
    );
    // Another workspace asking for that name explicitly: refused, with what to do.
    let other = seed_workspace();
    let refused = d.kennel(&[
        "up",
        "--workspace",
        other.path().to_str().unwrap(),
        "--name",
        "twice",
    ]);
    assert_eq!(refused.status.code(), Some(2));
    let err = stderr(&refused);
    assert!(
        err.contains(&format!(
            "environment name \"twice\" belongs to the workspace {ws_path}"
        )),
        "{err}"
    );
    assert!(err.contains("kennel up --name"), "{err}");
}

#[test]
fn exec_in_an_unknown_environment_says_not_found() {
    let d = TestDaemon::start_with(Authorizer::new(0, [], []));
    let out = d.kennel(&["exec", "nosuch", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("environment \"nosuch\" not found"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_invalid_spec_names_file_and_line() {
    let d = TestDaemon::start_with(Authorizer::new(0, [], []));
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(
        ws.path().join("kennel.toml"),
        "name = \"ok\"\n[resources]\nmemory = \"lots\"\n",
    )
    .unwrap();
    let out = d.kennel(&["up", "--workspace", ws.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("kennel.toml:3:"), "{err}");
    assert!(err.contains("resources.memory"), "{err}");
    assert!(d.fake.plan("ok").is_none());
}

#[test]
fn without_a_daemon_the_cli_says_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let out = kennel_at(&socket, &["ls"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("kennel-supervisord is not running"), "{err}");
    assert!(err.contains(&socket.display().to_string()), "{err}");
    assert!(
        err.contains("sudo systemctl start kennel-supervisord"),
        "{err}"
    );
    assert!(err.contains("kennel-supervisord --socket"), "{err}");
}

#[test]
fn a_caller_that_is_not_allowed_gets_403_with_the_fix() {
    if !is_root() {
        eprintln!("skipped: needs root to run the client as another uid");
        return;
    }
    let d = TestDaemon::start_with(Authorizer::new(0, [], []));
    // Let everybody open the socket, so only the peer-credential check stands in the way.
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = kennel_at(&d.socket, &["ls"], Some((65534, d.dir.path())));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("uid 65534 (gid 65534) is not allowed to use kennel-supervisord"),
        "{err}"
    );
    assert!(err.contains("--allow-user"), "{err}");
}

#[test]
fn a_configured_user_is_allowed() {
    if !is_root() {
        eprintln!("skipped: needs root to run the client as another uid");
        return;
    }
    let d = TestDaemon::start_with(Authorizer::new(0, [65534], []));
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = kennel_at(&d.socket, &["ls", "--json"], Some((65534, d.dir.path())));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "[]");

    // Their own workspace can be mounted; somebody else's cannot.
    let ws = seed_workspace();
    std::os::unix::fs::chown(ws.path(), Some(65534), Some(65534)).unwrap();
    let ws_path = ws.path().to_str().unwrap();
    let up = kennel_at(
        &d.socket,
        &["up", "--workspace", ws_path, "--name", "mine"],
        Some((65534, d.dir.path())),
    );
    assert!(up.status.success(), "{}", stderr(&up));
    assert_eq!(created_by(&d.fake.plan("mine").unwrap()), "65534");
    let other = tempfile::tempdir().unwrap();
    std::fs::set_permissions(other.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let other_path = other.path().to_str().unwrap();
    let up = kennel_at(
        &d.socket,
        &["up", "--workspace", other_path, "--name", "theirs"],
        Some((65534, d.dir.path())),
    );
    assert_eq!(up.status.code(), Some(2));
    assert!(
        stderr(&up).contains("is owned by uid 0, not by you (uid 65534)"),
        "{}",
        stderr(&up)
    );
}

/// The `dev.kennel.created-by` label of a plan.
fn created_by(plan: &kennel_container::backend::EnvPlan) -> String {
    let label = kennel_supervisord::registry::LABEL_CREATED_BY;
    plan.state_labels
        .iter()
        .find(|(k, _)| k == label)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

#[test]
fn permission_denied_on_the_socket_names_the_group_to_join() {
    if !is_root() {
        eprintln!("skipped: needs root to run the client as another uid");
        return;
    }
    let d = TestDaemon::start_with(Authorizer::new(0, [], [100]));
    // What the daemon does with `--allow-group users`: mode 0660, group users.
    nix::unistd::chown(&d.socket, None, Some(nix::unistd::Gid::from_raw(100))).unwrap();
    let out = kennel_at(&d.socket, &["ls"], Some((65534, d.dir.path())));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains("join the group `users`"), "{err}");
}

#[test]
fn image_build_reports_both_images() {
    let d = TestDaemon::start_with(Authorizer::new(0, [], []));
    let out = d.kennel(&["image", "build"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "proxy image: kennel-proxy:test\ndemo sandbox image: kennel-sandbox:latest (the default image of `kennel up`)\n"
    );
    let proxy_only = d.kennel(&["image", "build", "--proxy-only"]);
    assert_eq!(stdout(&proxy_only), "proxy image: kennel-proxy:test\n");
}

#[test]
fn version_and_health_answer() {
    let d = TestDaemon::start_with(Authorizer::new(0, [], []));
    let client = kennel_cli::client::Client::new(&d.socket);
    let (version, health) = d.rt.block_on(async {
        let v: kennel_supervisord::api::types::VersionInfo = client.get("/version").await.unwrap();
        let h: kennel_supervisord::api::types::HealthInfo = client.get("/health").await.unwrap();
        (v, h)
    });
    assert_eq!(version.api, "v1");
    assert_eq!(
        (health.status.as_str(), health.environments),
        ("ok", Some(0))
    );
    let err =
        d.rt.block_on(client.get::<serde_json::Value>("/nope"))
            .unwrap_err();
    assert_eq!(err.status(), Some(404));
    let err =
        d.rt.block_on(client.delete::<serde_json::Value>("/envs"))
            .unwrap_err();
    assert_eq!(err.status(), Some(405));
}

#[test]
fn up_reads_kennel_toml_from_the_current_directory_or_spec() {
    let d = TestDaemon::start_with(Authorizer::new(0, [], []));
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(
        ws.path().join("kennel.toml"),
        "name = \"from-cwd\"\nimage = \"my-image:1\"\n[resources]\nmemory = \"2g\"\npids = 300\n",
    )
    .unwrap();
    let out = Command::new(kennel_bin())
        .current_dir(ws.path())
        .arg("--socket")
        .arg(&d.socket)
        .arg("up")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = d.fake.plan("from-cwd").unwrap();
    assert_eq!(plan.spec.image, "my-image:1");
    assert_eq!(
        (plan.spec.resources.memory_bytes, plan.spec.resources.pids),
        (2 << 30, 300)
    );
    assert_eq!(plan.spec.workspace, ws.path());

    // --spec elsewhere, --name and --image override it.
    let spec_dir = tempfile::tempdir().unwrap();
    let spec = spec_dir.path().join("other.toml");
    std::fs::write(&spec, "name = \"ignored\"\nimage = \"spec-image:2\"\n").unwrap();
    let ws_path = ws.path().to_str().unwrap();
    let out = d.kennel(&[
        "up",
        "--spec",
        spec.to_str().unwrap(),
        "--workspace",
        ws_path,
        "--name",
        "overridden",
        "--image",
        "flag-image:3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = d.fake.plan("overridden").unwrap();
    assert_eq!(plan.spec.image, "flag-image:3");
    assert!(d.fake.plan("ignored").is_none());
}

#[test]
fn shell_without_a_terminal_forwards_stdin_without_a_tty() {
    use std::io::Write;
    let d = TestDaemon::start_with(Authorizer::new(0, [], []));
    let ws = seed_workspace();
    assert!(
        d.kennel(&[
            "up",
            "--workspace",
            ws.path().to_str().unwrap(),
            "--name",
            "sh"
        ])
        .status
        .success()
    );
    let mut child = Command::new(kennel_bin())
        .arg("--socket")
        .arg(&d.socket)
        .args(["shell", "sh"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"id\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "sh\n", "the fake echoes the command line");
    let (_, req) = d.fake.exec_log().pop().unwrap();
    assert_eq!(
        (req.cmd, req.stdin, req.tty),
        (vec!["sh".to_string()], true, false)
    );
}

#[test]
fn stop_start_and_down_purge_through_the_cli() {
    let d = TestDaemon::start_with(Authorizer::new(0, [], []));
    let ws = seed_workspace();
    let ws_path = ws.path().to_str().unwrap();
    assert!(
        d.kennel(&["up", "--workspace", ws_path, "--name", "ss"])
            .status
            .success()
    );
    let stop = d.kennel(&["stop", "ss"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert!(
        stdout(&stop).contains("environment \"ss\" is stopped"),
        "{}",
        stdout(&stop)
    );
    let start = d.kennel(&["start", "ss"]);
    assert!(start.status.success(), "{}", stderr(&start));
    assert!(
        stdout(&start).contains("environment \"ss\" is running"),
        "{}",
        stdout(&start)
    );
    let down = d.kennel(&["down", "ss"]);
    assert!(
        stdout(&down).contains("its home volume is kept"),
        "{}",
        stdout(&down)
    );
    // The kept home holds the name for this workspace: up again gets "ss" back.
    assert!(
        d.kennel(&["up", "--workspace", ws_path, "--name", "ss"])
            .status
            .success()
    );
    let purge = d.kennel(&["down", "--purge", "ss"]);
    assert!(purge.status.success(), "{}", stderr(&purge));
    assert!(
        stdout(&purge).contains("and its home volume)"),
        "{}",
        stdout(&purge)
    );
    let gone = d.kennel(&["stop", "ss"]);
    assert_eq!(gone.status.code(), Some(2));
    assert!(stderr(&gone).contains("not found"), "{}", stderr(&gone));
}

#[test]
fn a_proxy_variable_in_env_is_refused_before_anything_is_created() {
    let d = TestDaemon::start_with(Authorizer::new(0, [], []));
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(
        ws.path().join("kennel.toml"),
        "name = \"pv\"\n[env]\nHTTP_PROXY = \"http://elsewhere:3128\"\n",
    )
    .unwrap();
    let out = d.kennel(&["up", "--workspace", ws.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("kennel.toml:2:"), "{err}");
    assert!(err.contains("env.HTTP_PROXY"), "{err}");
    assert!(err.contains("proxy variables are kennel's"), "{err}");
    assert!(d.fake.plan("pv").is_none());
}

/// The seed layout's `dind-whitelist.txt` becomes the egress profile `dind`: `kennel up` and
/// `kennel inspect` show it; `kennel allow|deny|denials|policy show --profile dind` act on its
/// policy (`allow --profile dind --from-denials` takes what its proxy denied), `kennel logs
/// --profile dind` shows its proxy's output and access log; an unknown
/// profile is refused by the daemon, an invalid name by the CLI.
#[test]
fn the_dind_profile_of_the_seed_layout_through_the_cli() {
    let d = TestDaemon::start_with(Authorizer::new(0, [], []));
    let ws = seed_workspace();
    std::fs::write(
        ws.path().join(".devcontainer/dind-whitelist.txt"),
        "registry-1.docker.io\n\\.cloudfront\\.net$\n",
    )
    .unwrap();
    let ws_path = ws.path().to_str().unwrap();
    let up = d.kennel(&["up", "--workspace", ws_path, "--name", "demo"]);
    assert!(up.status.success(), "up failed: {}", stderr(&up));
    assert!(
        stdout(&up).contains("profile  dind at http://proxy-dind:8888 (kennel-demo-proxy-dind, 2 allow entries; `kennel allow --profile dind demo HOST:PORT`)"),
        "{}",
        stdout(&up)
    );
    assert!(!stderr(&up).contains("dind-whitelist"), "{}", stderr(&up));
    let inspect: serde_json::Value =
        serde_json::from_slice(&d.kennel(&["inspect", "demo"]).stdout).unwrap();
    assert_eq!(inspect["profiles"][0]["name"], "dind");
    assert_eq!(
        inspect["profiles"][0]["proxy_container"],
        "kennel-demo-proxy-dind"
    );
    assert_eq!(inspect["profiles"][0]["allow_count"], 2);

    let allow = d.kennel(&["allow", "--profile", "dind", "demo", "ghcr.io"]);
    assert!(allow.status.success(), "{}", stderr(&allow));
    assert!(
        stdout(&allow).contains("policy-dind/policy.toml")
            && stdout(&allow).contains("egress profile \"dind\" of \"demo\""),
        "{}",
        stdout(&allow)
    );
    let show = d.kennel(&["policy", "show", "--profile", "dind", "demo"]);
    assert!(stdout(&show).contains("ghcr.io"), "{}", stdout(&show));
    let main = d.kennel(&["policy", "show", "demo"]);
    assert!(!stdout(&main).contains("ghcr.io"), "{}", stdout(&main));
    let deny = d.kennel(&["deny", "--profile", "dind", "demo", "ghcr.io"]);
    assert!(deny.status.success(), "{}", stderr(&deny));
    let denials = d.kennel(&["denials", "--profile", "dind", "demo"]);
    assert!(denials.status.success(), "{}", stderr(&denials));
    assert!(
        stderr(&denials).contains("no denials for egress profile \"dind\" of \"demo\""),
        "{}",
        stderr(&denials)
    );

    // `kennel allow --profile dind --from-denials`: what the dind proxy denied goes into the
    // dind policy; what the main proxy denied does not.
    let state = d.dir.path().join("state/envs/demo");
    let deny_line = |host: &str| {
        format!(
            "{{\"time\":\"2026-12-01T03:00:00.000Z\",\"host\":\"{host}\",\"port\":443,\"decision\":\"deny\",\"reason\":\"not_in_allowlist\"}}\n"
        )
    };
    std::fs::write(state.join("logs-dind/access.log"), deny_line("quay.io")).unwrap();
    std::fs::write(
        state.join("logs/access.log"),
        deny_line("main-denied.example"),
    )
    .unwrap();
    let approve = d.kennel(&["allow", "--profile", "dind", "--from-denials", "demo"]);
    assert!(approve.status.success(), "{}", stderr(&approve));
    let show = stdout(&d.kennel(&["policy", "show", "--profile", "dind", "demo"]));
    assert!(show.contains("quay.io"), "{show}");
    assert!(!show.contains("main-denied.example"), "{show}");
    let main = stdout(&d.kennel(&["policy", "show", "demo"]));
    assert!(!main.contains("quay.io"), "{main}");

    // `kennel logs --profile dind`: the profile's proxy's output and its own access log.
    d.fake
        .set_logs("kennel-demo-proxy-dind", "dind proxy output\n");
    std::fs::write(state.join("logs-dind/access.log"), "dind access line\n").unwrap();
    std::fs::write(state.join("logs/access.log"), "main access line\n").unwrap();
    let logs = d.kennel(&["logs", "--profile", "dind", "demo"]);
    assert!(logs.status.success(), "{}", stderr(&logs));
    let out = stdout(&logs);
    assert!(
        out.contains("dind proxy output") && out.contains("dind access line"),
        "{out}"
    );
    assert!(!out.contains("main access line"), "{out}");
    let nope = d.kennel(&["logs", "--profile", "nope", "demo"]);
    assert!(
        !nope.status.success() && stderr(&nope).contains("has no egress profile \"nope\""),
        "{}",
        stderr(&nope)
    );

    let unknown = d.kennel(&["allow", "--profile", "nope", "demo", "x.example"]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown)
            .contains("environment \"demo\" has no egress profile \"nope\" (its profiles: dind)"),
        "{}",
        stderr(&unknown)
    );
    let invalid = d.kennel(&["denials", "--profile", "a&b", "demo"]);
    assert!(!invalid.status.success());
    assert!(
        stderr(&invalid).contains("invalid egress profile name \"a&b\""),
        "{}",
        stderr(&invalid)
    );
}
