//! The event log, the health monitor's command rule and deferral, and ephemeral environments
//! (`--ttl`, `--rm`) end to end on the real Docker engine, through the daemon's API (in-process
//! daemon on a temporary socket and state directory; one test kills a daemon process with
//! SIGKILL). Skips with a reason without an engine or a static proxy binary, fails instead
//! under `CI=true`.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kennel_cli::client::Client;
use kennel_cli::commands::up::{UpArgs, build_request};
use kennel_container::docker::DockerBackend;
use kennel_supervisord::api::types::{CreateEnv, EnvInfo, ExecRequest};
use kennel_supervisord::events::{Event, EventQuery};
use kennel_test_support::docker::{
    EnvGuard, engine, proxy_binary, share_dir, test_image, unique_env,
};

use crate::e2e_supervisor::RunningDaemon;

/// A workspace for the test image whose sandbox sleeps, with `extra` appended to kennel.toml.
fn workspace(name: &str, image: &str, extra: &str) -> tempfile::TempDir {
    let ws = tempfile::tempdir().expect("workspace");
    share_dir(ws.path(), 1001, 2000, 0o770);
    std::fs::write(
        ws.path().join("kennel.toml"),
        format!(
            "name = \"{name}\"\nimage = \"{image}\"\ncommand = [\"/bin/busybox\", \"sleep\", \"3600\"]\n{extra}"
        ),
    )
    .expect("write kennel.toml");
    ws
}

fn request(ws: &Path, args: UpArgs) -> CreateEnv {
    build_request(&UpArgs {
        workspace: Some(ws.into()),
        ..args
    })
    .expect("spec")
}

async fn up(client: &Client, ws: &Path, args: UpArgs) -> EnvInfo {
    let info: EnvInfo = client
        .post("/envs", &request(ws, args))
        .await
        .expect("create");
    assert_eq!(info.state, "running", "{info:?}");
    info
}

/// `kennel events ENV [--since]` as the CLI reads them (the streamed form).
async fn events(client: &Client, env: Option<&str>, since_unix: Option<u64>) -> Vec<Event> {
    let q = EventQuery {
        env: env.map(str::to_string),
        since_unix,
        follow: false,
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = client
        .output_stream("/events", &q, &mut out, &mut err)
        .await
        .expect("events");
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    String::from_utf8_lossy(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("an event per line"))
        .collect()
}

fn of_kind<'a>(evs: &'a [Event], kind: &str) -> Vec<&'a Event> {
    evs.iter().filter(|e| e.kind == kind).collect()
}

/// Polls `events` of `env` until one of `kind` is there (at most `within`).
async fn wait_event(client: &Client, env: &str, kind: &str, within: Duration) -> Vec<Event> {
    let deadline = Instant::now() + within;
    loop {
        let evs = events(client, Some(env), None).await;
        if !of_kind(&evs, kind).is_empty() {
            return evs;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} event of {env} within {within:?}; events: {evs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn gone(client: &Client, env: &str) -> bool {
    let envs: Vec<EnvInfo> = client.get("/envs").await.expect("ls");
    !envs.iter().any(|e| e.name == env)
}

/// Engine objects (containers, networks, volumes) labelled with `env`.
async fn labelled_objects(d: &DockerBackend, env: &str) -> Vec<String> {
    use bollard::query_parameters::{
        ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
    };
    use std::collections::HashMap;
    let filters: HashMap<String, Vec<String>> =
        HashMap::from([("label".to_string(), vec![format!("dev.kennel.env={env}")])]);
    let mut out = Vec::new();
    let cs = d
        .docker()
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .expect("list containers");
    out.extend(
        cs.into_iter()
            .map(|c| format!("container {:?}", c.names.unwrap_or_default())),
    );
    let ns = d
        .docker()
        .list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .expect("list networks");
    out.extend(ns.into_iter().map(|n| format!("network {:?}", n.name)));
    let vs = d
        .docker()
        .list_volumes(Some(
            ListVolumesOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .expect("list volumes");
    out.extend(
        vs.volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| format!("volume {}", v.name)),
    );
    out
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_health_age_rule_fires_refreshes_once_and_is_an_event_on_docker() {
    let test = "events_health_age_rule_fires_refreshes_once_and_is_an_event_on_docker";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&d).await;
    let name = unique_env("ev-age");
    let _guard = EnvGuard::new(&name);
    let (_dir, daemon, client) = RunningDaemon::start_in_tempdir(&d, &proxy_bin);
    // The monitor looks every second (health.interval); the rule fires 5 s after the start.
    let ws = workspace(
        &name,
        &image,
        "[health]\nmax_age = \"5s\"\ninterval = \"1s\"\n",
    );
    up(&client, ws.path(), UpArgs::default()).await;

    let evs = wait_event(&client, &name, "refreshed", Duration::from_secs(30)).await;
    let fired = of_kind(&evs, "health-rule-fired");
    assert_eq!(fired.len(), 1, "{evs:#?}");
    assert_eq!(fired[0].details["rule"], "max_age");
    let value = fired[0].details["value"].as_str().expect("value");
    // The measured age: at least the threshold, written as a duration.
    let secs = humantime::parse_duration(value)
        .expect("a duration")
        .as_secs();
    assert!((5..60).contains(&secs), "{value}");
    assert_eq!(fired[0].details["threshold"], "5s");
    let refreshed = of_kind(&evs, "refreshed");
    assert_eq!(refreshed.len(), 1);
    assert!(
        refreshed[0].details["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("health: max_age ")),
        "{:?}",
        refreshed[0]
    );
    // The new sandbox is young again: no second refresh in the next 3 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let evs = events(&client, Some(&name), None).await;
    assert_eq!(of_kind(&evs, "refreshed").len(), 1, "{evs:#?}");
    assert_eq!(of_kind(&evs, "created").len(), 1);
    // `kennel inspect` shows the rule's last reading.
    let h: serde_json::Value = client
        .get(&format!("/envs/{name}/health"))
        .await
        .expect("health");
    assert_eq!(h["readings"][0]["rule"], "max_age", "{h}");
    assert_eq!(h["interval_secs"], 1);

    let _: serde_json::Value = client.delete(&format!("/envs/{name}")).await.expect("down");
    let evs = events(&client, Some(&name), None).await;
    assert_eq!(of_kind(&evs, "removed").len(), 1, "{evs:#?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_health_command_rule_fires_after_three_failures_on_docker() {
    let test = "events_health_command_rule_fires_after_three_failures_on_docker";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&d).await;
    let name = unique_env("ev-cmd");
    let _guard = EnvGuard::new(&name);
    let (_dir, daemon, client) = RunningDaemon::start_in_tempdir(&d, &proxy_bin);
    // Healthy while /workspace/ok exists.
    let ws = workspace(
        &name,
        &image,
        "[health]\ncommand = [\"/bin/sh\", \"-c\", \"test -e /workspace/ok || { echo no ok file; exit 3; }\"]\ninterval = \"1s\"\n",
    );
    std::fs::write(ws.path().join("ok"), "").expect("ok file");
    share_dir(ws.path(), 1001, 2000, 0o770);
    up(&client, ws.path(), UpArgs::default()).await;
    // Passing checks: no firing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let h: serde_json::Value = client
        .get(&format!("/envs/{name}/health"))
        .await
        .expect("health");
    assert_eq!(h["readings"][0]["rule"], "command", "{h}");
    assert_eq!(h["readings"][0]["fired"], false, "{h}");
    assert!(
        of_kind(
            &events(&client, Some(&name), None).await,
            "health-rule-fired"
        )
        .is_empty()
    );

    std::fs::remove_file(ws.path().join("ok")).expect("rm ok");
    let broke = Instant::now();
    let evs = wait_event(&client, &name, "health-rule-fired", Duration::from_secs(30)).await;
    // Three failed checks a second apart: not before about 2 s.
    assert!(
        broke.elapsed() >= Duration::from_secs(2),
        "{:?}",
        broke.elapsed()
    );
    let fired = of_kind(&evs, "health-rule-fired");
    assert_eq!(fired[0].details["rule"], "command");
    assert_eq!(
        fired[0].details["value"], "3 failures in a row (exit 3: no ok file)",
        "{:?}",
        fired[0]
    );
    assert_eq!(fired[0].details["threshold"], "3 failures in a row");
    let evs = wait_event(&client, &name, "refreshed", Duration::from_secs(30)).await;
    assert!(
        of_kind(&evs, "refreshed")[0].details["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("health: command 3 failures in a row")),
        "{evs:#?}"
    );
    let _: serde_json::Value = client.delete(&format!("/envs/{name}")).await.expect("down");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_refresh_is_deferred_while_an_exec_session_is_attached_on_docker() {
    let test = "events_refresh_is_deferred_while_an_exec_session_is_attached_on_docker";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&d).await;
    let name = unique_env("ev-defer");
    let _guard = EnvGuard::new(&name);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("kennel.sock");
    let daemon = RunningDaemon::start(&d, &proxy_bin, &socket, &dir.path().join("state"));
    let client = Client::new(&socket);
    let ws = workspace(
        &name,
        &image,
        "[health]\nmax_age = \"2s\"\ninterval = \"1s\"\nmax_defer = \"1h\"\n",
    );
    up(&client, ws.path(), UpArgs::default()).await;
    // A session that stays attached for 8 s.
    let session = {
        let client = Client::new(&socket);
        let name = name.clone();
        tokio::spawn(async move {
            let req = ExecRequest {
                cmd: vec!["/bin/sh".into(), "-c".into(), "sleep 8; echo done".into()],
                ..Default::default()
            };
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = client.exec(&name, &req, None, &mut out, &mut err).await;
            (code, String::from_utf8_lossy(&out).into_owned())
        })
    };
    let evs = wait_event(&client, &name, "refresh-deferred", Duration::from_secs(20)).await;
    assert_eq!(of_kind(&evs, "health-rule-fired").len(), 1, "{evs:#?}");
    assert!(of_kind(&evs, "refreshed").is_empty(), "{evs:#?}");
    let (code, out) = session.await.expect("session task");
    // The session was not cut short by a refresh.
    assert_eq!(code.expect("exec"), 0);
    assert_eq!(out.trim(), "done");
    // Once it ended, the deferred refresh happens (once).
    let evs = wait_event(&client, &name, "refreshed", Duration::from_secs(10)).await;
    assert_eq!(of_kind(&evs, "refreshed").len(), 1, "{evs:#?}");
    assert_eq!(of_kind(&evs, "refresh-deferred").len(), 1, "{evs:#?}");
    let _: serde_json::Value = client.delete(&format!("/envs/{name}")).await.expect("down");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_ttl_removes_also_across_a_daemon_restart_and_events_survive_it_on_docker() {
    let test = "events_ttl_removes_also_across_a_daemon_restart_and_events_survive_it_on_docker";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&d).await;
    let (late, early) = (unique_env("ev-ttl-late"), unique_env("ev-ttl-early"));
    let _guards = (EnvGuard::new(&late), EnvGuard::new(&early));
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("kennel.sock");
    let state = dir.path().join("state");
    let daemon = RunningDaemon::start(&d, &proxy_bin, &socket, &state);
    let client = Client::new(&socket);
    let ws_late = workspace(&late, &image, "");
    let ws_early = workspace(&early, &image, "");
    let info = up(
        &client,
        ws_late.path(),
        UpArgs {
            ttl: Some(Duration::from_secs(12)),
            ..Default::default()
        },
    )
    .await;
    assert!(info.expires.is_some(), "{info:?}");
    up(
        &client,
        ws_early.path(),
        UpArgs {
            ttl: Some(Duration::from_secs(5)),
            ..Default::default()
        },
    )
    .await;
    // `kennel ls` shows when each goes.
    let envs: Vec<EnvInfo> = client.get("/envs").await.expect("ls");
    let table = kennel_cli::commands::ls::table(&envs);
    assert!(table.contains("EXPIRES"), "{table}");
    let row = table.lines().find(|l| l.starts_with(&early)).expect("row");
    assert!(row.contains(" in "), "{table}");

    // While the daemon runs: removed when the TTL runs out.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gone(&client, &early).await {
        assert!(Instant::now() < deadline, "{early} was not removed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        labelled_objects(&d, &early)
            .await
            .iter()
            .all(|o| o.starts_with("volume"))
    );
    // `--since` has whole seconds: the next second begins after the removal.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after_early = now_unix();

    // Across a restart: the daemon is down when the deadline passes.
    daemon.stop().await;
    let created_late = std::fs::read_to_string(state.join("envs").join(&late).join("spec.json"))
        .map(|s| serde_json::from_str::<serde_json::Value>(&s).expect("json"))
        .expect("record")["created_unix"]
        .as_u64()
        .expect("created_unix");
    while now_unix() <= created_late + 12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let daemon = RunningDaemon::start(&d, &proxy_bin, &socket, &state);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone(&client, &late).await {
        assert!(
            Instant::now() < deadline,
            "{late} was not removed after the restart"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        labelled_objects(&d, &late)
            .await
            .iter()
            .all(|o| o.starts_with("volume"))
    );

    // The events from before the restart are still there, and --since filters.
    let all = events(&client, None, Some(now_unix() - 86_400)).await;
    let kinds = |env: &str| -> Vec<String> {
        all.iter()
            .filter(|e| e.env.as_deref() == Some(env))
            .map(|e| e.kind.clone())
            .collect()
    };
    assert_eq!(kinds(&early), ["created", "removed"], "{all:#?}");
    assert_eq!(kinds(&late), ["created", "removed"], "{all:#?}");
    assert_eq!(of_kind(&all, "daemon-started").len(), 2, "{all:#?}");
    let removed_late = all
        .iter()
        .find(|e| e.kind == "removed" && e.env.as_deref() == Some(&late))
        .expect("removed");
    assert!(
        removed_late.details["reason"]
            .as_str()
            .is_some_and(|r| r.contains("--ttl")),
        "{removed_late:?}"
    );
    let recent = events(&client, None, Some(after_early)).await;
    assert!(
        recent
            .iter()
            .all(|e| e.env.as_deref() != Some(early.as_str())),
        "--since leaves out what happened before: {recent:#?}"
    );
    assert!(
        recent
            .iter()
            .any(|e| e.kind == "removed" && e.env.as_deref() == Some(late.as_str()))
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_rm_removes_the_environment_when_its_last_exec_ends_on_docker() {
    let test = "events_rm_removes_the_environment_when_its_last_exec_ends_on_docker";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&d).await;
    let name = unique_env("ev-rm");
    let _guard = EnvGuard::new(&name);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("kennel.sock");
    let daemon = RunningDaemon::start(&d, &proxy_bin, &socket, &dir.path().join("state"));
    let client = Client::new(&socket);
    let ws = workspace(&name, &image, "");
    let info = up(
        &client,
        ws.path(),
        UpArgs {
            rm: true,
            ..Default::default()
        },
    )
    .await;
    assert!(info.remove_on_exit);
    // Not removed before any session has ended.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!gone(&client, &name).await);
    // `kennel events ENV --follow --json` sees the removal as it happens.
    let (mut w, r) = tokio::io::duplex(64 * 1024);
    let follower = {
        let client = Client::new(&socket);
        let q = EventQuery {
            env: Some(name.clone()),
            since_unix: None,
            follow: true,
        };
        tokio::spawn(async move {
            let mut err = tokio::io::sink();
            client.output_stream("/events", &q, &mut w, &mut err).await
        })
    };
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(r));
    let (out, _, code) = crate::e2e_supervisor::exec(&client, &name, "echo hello").await;
    assert_eq!((out.trim(), code), ("hello", 0));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone(&client, &name).await {
        assert!(Instant::now() < deadline, "{name} was not removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut followed = Vec::new();
    while !followed.iter().any(|e: &Event| e.kind == "removed") {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .expect("the removal reaches `events --follow` within 5 s")
            .expect("read")
            .expect("a line");
        followed.push(serde_json::from_str(&line).expect("an event"));
    }
    assert_eq!(
        followed[0].kind, "created",
        "the kept events come first: {followed:#?}"
    );
    follower.abort();
    let evs = events(&client, Some(&name), None).await;
    let removed = of_kind(&evs, "removed");
    assert_eq!(removed.len(), 1, "{evs:#?}");
    assert!(
        removed[0].details["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("--rm")),
        "{removed:?}"
    );
    daemon.stop().await;
}

/// Not a test of its own: the daemon process that
/// [`events_sigkill_of_the_daemon_in_the_middle_of_up_leaves_nothing_half_made_on_docker`]
/// starts (this test binary again, running only this function) and kills. Without its
/// environment variable it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_child_daemon_process() {
    let (Some(socket), Some(state), Some(proxy_bin)) = (
        std::env::var_os("KENNEL_TEST_CHILD_SOCKET"),
        std::env::var_os("KENNEL_TEST_CHILD_STATE"),
        std::env::var_os("KENNEL_TEST_CHILD_PROXY_BIN"),
    ) else {
        return;
    };
    let d = DockerBackend::connect().await.expect("engine");
    let _daemon = RunningDaemon::start(
        &d,
        Path::new(&proxy_bin),
        Path::new(&socket),
        Path::new(&state),
    );
    // Until killed.
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sigkill_of_the_daemon_in_the_middle_of_up_leaves_nothing_half_made_on_docker() {
    let test =
        "events_sigkill_of_the_daemon_in_the_middle_of_up_leaves_nothing_half_made_on_docker";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&d).await;
    let name = unique_env("ev-kill");
    let _guard = EnvGuard::new(&name);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("kennel.sock");
    let state = dir.path().join("state");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "e2e_events::events_child_daemon_process",
            "--nocapture",
        ])
        .env("KENNEL_TEST_CHILD_SOCKET", &socket)
        .env("KENNEL_TEST_CHILD_STATE", &state)
        .env("KENNEL_TEST_CHILD_PROXY_BIN", &proxy_bin)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the daemon process");
    let client = Client::new(&socket);
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get::<serde_json::Value>("/version").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the daemon process did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ws = workspace(&name, &image, "");
    let req = request(ws.path(), UpArgs::default());
    let create = tokio::spawn(async move {
        let r: Result<EnvInfo, _> = client.post("/envs", &req).await;
        r
    });
    // Killed as soon as the creation has made its first engine object.
    let deadline = Instant::now() + Duration::from_secs(60);
    while labelled_objects(&d, &name).await.is_empty() {
        assert!(Instant::now() < deadline, "the creation made nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL");
    let _ = child.wait();
    assert!(
        create.await.expect("task").is_err(),
        "the create cannot have answered"
    );
    let half = labelled_objects(&d, &name).await;
    eprintln!("left by the killed daemon: {half:?}");

    // The restarted daemon removes the half-made environment and says so.
    let daemon = RunningDaemon::start(&d, &proxy_bin, &socket, &state);
    let client = Client::new(&socket);
    let deadline = Instant::now() + Duration::from_secs(30);
    let evs = loop {
        let evs = events(&client, Some(&name), None).await;
        if !of_kind(&evs, "create-interrupted").is_empty() {
            break evs;
        }
        assert!(
            Instant::now() < deadline,
            "no create-interrupted event: {evs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ev = of_kind(&evs, "create-interrupted")[0];
    assert_eq!(ev.details["outcome"], "removed", "{ev:?}");
    assert!(gone(&client, &name).await);
    assert_eq!(labelled_objects(&d, &name).await, Vec::<String>::new());
    assert!(!state.join("envs").join(&name).exists());
    let all = events(&client, None, None).await;
    let reconciled = of_kind(&all, "reconciled");
    assert_eq!(
        reconciled.last().expect("reconciled").details["removed_incomplete"],
        serde_json::json!([name])
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_policy_reloads_and_proxy_rejections_are_recorded_on_docker() {
    let test = "events_policy_reloads_and_proxy_rejections_are_recorded_on_docker";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&d).await;
    let name = unique_env("ev-rld");
    let _guard = EnvGuard::new(&name);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("kennel.sock");
    let state = dir.path().join("state");
    let daemon = RunningDaemon::start(&d, &proxy_bin, &socket, &state);
    let client = Client::new(&socket);
    let ws = workspace(&name, &image, "");
    up(&client, ws.path(), UpArgs::default()).await;
    // At once, no waiting for the monitor's first look at the proxy's counters: the daemon
    // knows a proxy it created counts from zero (a reload in the first seconds was lost).

    // `kennel allow`: the proxy reloads the swapped file, and the daemon records it.
    let _: serde_json::Value = client
        .post(
            &format!("/envs/{name}/policy/allow"),
            &serde_json::json!({ "entries": ["api.example.com"] }),
        )
        .await
        .expect("allow");
    let evs = wait_event(&client, &name, "policy-reloaded", Duration::from_secs(10)).await;
    let reloaded = of_kind(&evs, "policy-reloaded");
    assert_eq!(reloaded.len(), 1, "{evs:#?}");
    assert!(
        reloaded[0].details["reloads"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{:?}",
        reloaded[0]
    );
    assert!(of_kind(&evs, "policy-rejected").is_empty(), "{evs:#?}");

    // A broken file written by hand into the state directory (not through the daemon): the
    // proxy keeps the old policy, and the event carries its error.
    let file = state.join("envs").join(&name).join("policy/policy.toml");
    let text = std::fs::read_to_string(&file).expect("policy file");
    std::fs::write(&file, format!("{text}\n[allow]\nhosts = [\"bad host\"]\n")).expect("write");
    let evs = wait_event(&client, &name, "policy-rejected", Duration::from_secs(15)).await;
    let rejected = of_kind(&evs, "policy-rejected");
    assert_eq!(rejected.len(), 1, "{evs:#?}");
    let error = rejected[0].details["error"].as_str().expect("error");
    assert!(
        error.contains("policy.toml"),
        "the proxy's error names the file: {error}"
    );
    assert_eq!(rejected[0].details["source"], "proxy");
    assert_eq!(of_kind(&evs, "policy-reloaded").len(), 1, "{evs:#?}");

    let _: serde_json::Value = client.delete(&format!("/envs/{name}")).await.expect("down");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_workspace_image_built_once_and_not_for_a_reused_tag_on_docker() {
    let test = "events_workspace_image_built_once_and_not_for_a_reused_tag_on_docker";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&d).await;
    let name = unique_env("ev-img");
    let _images = crate::e2e_build::BuiltImages(name.clone());
    let _guard = EnvGuard::new(&name);
    let (_dir, daemon, client) = RunningDaemon::start_in_tempdir(&d, &proxy_bin);
    let ws = tempfile::tempdir().expect("workspace");
    share_dir(ws.path(), 1001, 2000, 0o770);
    std::fs::create_dir_all(ws.path().join(".devcontainer")).expect("mkdir");
    std::fs::write(
        ws.path().join(".devcontainer/Dockerfile"),
        format!("FROM {image}\nRUN echo built > /built-marker\n"),
    )
    .expect("Dockerfile");
    std::fs::write(
        ws.path().join(".devcontainer/devcontainer.json"),
        r#"{ "build": { "dockerfile": "Dockerfile" } }"#,
    )
    .expect("devcontainer.json");
    std::fs::write(
        ws.path().join("kennel.toml"),
        format!("name = \"{name}\"\ncommand = [\"/bin/busybox\", \"sleep\", \"3600\"]\n"),
    )
    .expect("kennel.toml");

    up(&client, ws.path(), UpArgs::default()).await;
    let evs = events(&client, Some(&name), None).await;
    let built = of_kind(&evs, "image-built");
    assert_eq!(built.len(), 1, "{evs:#?}");
    let tag = built[0].details["image"].as_str().expect("image");
    assert!(tag.starts_with(&format!("kennel-build-{name}:")), "{tag}");
    assert!(built[0].details["ms"].as_u64().is_some(), "{:?}", built[0]);
    assert!(
        built[0].details["dockerfile"]
            .as_str()
            .is_some_and(|f| f.ends_with("Dockerfile")),
        "{:?}",
        built[0]
    );

    // Down and up again with the same content: the content tag is reused, nothing is built.
    let _: serde_json::Value = client.delete(&format!("/envs/{name}")).await.expect("down");
    up(&client, ws.path(), UpArgs::default()).await;
    // `kennel refresh` of unchanged content reuses it too.
    let _: EnvInfo = client
        .post(&format!("/envs/{name}/refresh"), &())
        .await
        .expect("refresh");
    let evs = events(&client, Some(&name), None).await;
    assert_eq!(of_kind(&evs, "created").len(), 2, "{evs:#?}");
    assert_eq!(of_kind(&evs, "refreshed").len(), 1, "{evs:#?}");
    assert_eq!(of_kind(&evs, "image-built").len(), 1, "{evs:#?}");

    let _: serde_json::Value = client.delete(&format!("/envs/{name}")).await.expect("down");
    daemon.stop().await;
}

/// A Unix socket that relays to the real engine's, so a test can make "the engine" go away and
/// come back for one daemon without touching the host's Docker (which other tests share).
struct EngineRelay {
    path: std::path::PathBuf,
    upstream: std::path::PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EngineRelay {
    /// The real engine's socket: `DOCKER_HOST=unix://…`, else `/var/run/docker.sock`.
    fn upstream() -> std::path::PathBuf {
        match std::env::var("DOCKER_HOST") {
            Ok(h) if !h.is_empty() => std::path::PathBuf::from(
                h.strip_prefix("unix://")
                    .unwrap_or_else(|| panic!("DOCKER_HOST={h}: the relay needs a unix socket")),
            ),
            _ => std::path::PathBuf::from("/var/run/docker.sock"),
        }
    }

    fn new(path: &Path) -> EngineRelay {
        let mut r = EngineRelay {
            path: path.to_path_buf(),
            upstream: Self::upstream(),
            task: None,
        };
        r.up();
        r
    }

    /// Listens again: the engine is back.
    fn up(&mut self) {
        let listener = tokio::net::UnixListener::bind(&self.path).expect("bind the relay");
        let upstream = self.upstream.clone();
        self.task = Some(tokio::spawn(async move {
            // Dropped with this task: every relayed connection closes, as at an engine's exit.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                conns.spawn(async move {
                    if let Ok(mut engine) = tokio::net::UnixStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
            }
        }));
    }

    /// Closes every connection and stops listening: the engine went away.
    fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for EngineRelay {
    fn drop(&mut self) {
        self.down();
    }
}

/// What `systemctl restart docker` does to a running daemon, seen through a relay (the host's
/// engine is not restarted): the daemon's connections break, the engine is away for a moment,
/// and when it is back one container (the proxy) did not come back. The daemon notices through
/// its event stream, reconciles, starts the proxy again and records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_engine_lost_and_back_reconciles_and_restarts_what_stayed_stopped_on_docker() {
    let test = "events_engine_lost_and_back_reconciles_and_restarts_what_stayed_stopped_on_docker";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = test_image(&d).await;
    let name = unique_env("ev-eng");
    let _guard = EnvGuard::new(&name);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut relay = EngineRelay::new(&dir.path().join("engine.sock"));
    let relayed = bollard::Docker::connect_with_socket(
        &relay.path.display().to_string(),
        120,
        bollard::API_DEFAULT_VERSION,
    )
    .expect("client over the relay")
    .negotiate_version()
    .await
    .expect("version over the relay");
    let relayed = DockerBackend::from_docker(relayed);
    let socket = dir.path().join("kennel.sock");
    let daemon = RunningDaemon::start(&relayed, &proxy_bin, &socket, &dir.path().join("state"));
    let client = Client::new(&socket);
    let ws = workspace(&name, &image, "");
    up(&client, ws.path(), UpArgs::default()).await;
    // The start-up reconcile ran before `up` could be served.
    let before = of_kind(&events(&client, None, None).await, "reconciled").len();
    assert_eq!(before, 1);

    // The restart stopped the proxy and did not start it again …
    let proxy = kennel_container::backend::names::proxy(&name);
    d.docker()
        .stop_container(
            &proxy,
            Some(bollard::query_parameters::StopContainerOptions {
                t: Some(1),
                signal: None,
            }),
        )
        .await
        .expect("stop the proxy");
    // … and was over at once: back before any poll could have seen it away. Only the broken
    // connection tells.
    relay.down();
    relay.up();

    let deadline = Instant::now() + Duration::from_secs(20);
    let ev = loop {
        let evs = events(&client, None, None).await;
        if let Some(e) = of_kind(&evs, "reconciled").get(before) {
            break (*e).clone();
        }
        assert!(Instant::now() < deadline, "no second reconcile: {evs:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(ev.details["trigger"], "engine-back", "{ev:?}");
    assert_eq!(ev.details["started"], serde_json::json!([name]), "{ev:?}");
    let info: EnvInfo = client.get(&format!("/envs/{name}")).await.expect("inspect");
    assert_eq!(info.state, "running", "{info:?}");
    let started = wait_event(&client, &name, "started", Duration::from_secs(1)).await;
    let started = of_kind(&started, "started");
    assert_eq!(started[0].details["containers"], serde_json::json!([proxy]));

    let _: serde_json::Value = client.delete(&format!("/envs/{name}")).await.expect("down");
    daemon.stop().await;
}
