//! The approve loop on the real Docker engine (issue 12): the daemon runs in-process, the CLI's
//! code talks to it. A destination denied inside the sandbox shows in `kennel denials` with its
//! count; `kennel allow` makes it reachable within a second without recreating a container;
//! `kennel deny` closes a live tunnel; `--for 3s` expires; an invalid `policy edit` is refused
//! and the old policy keeps working; `policy import` shows the diff and applies only with
//! `--yes`. Traffic goes only to the test's own origin container on the environment's egress
//! network. Mandatory under `CI=true`, skipped with a reason without an engine.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use kennel_cli::client::Client;
use kennel_cli::commands::policy_live::{EditArgs, ImportArgs, edit_with, import_with};
use kennel_cli::commands::up::{UpArgs, build_request};
use kennel_container::backend::names;
use kennel_container::{Backend, DockerBackend};
use kennel_supervisord::api::policy_types::{
    AllowRequest, Denials, DenyRequest, ImportPreview, ImportRequest, PolicyChanged,
};
use kennel_supervisord::api::types::{EnvInfo, Removed};
use kennel_test_support::docker::{
    EnvGuard, OriginSpec, engine, mint_certs, network_ipam, proxy_binary, share_dir, start_origin,
    test_image, unique_env, wait_tcp,
};

use crate::e2e_supervisor::{RunningDaemon, exec};

/// `curl` from the sandbox through its proxy; returns the HTTP status (`000` on failure).
async fn status(client: &Client, env: &str, url: &str) -> String {
    let (out, _, _) = exec(
        client,
        env,
        &format!("curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 {url}"),
    )
    .await;
    out
}

/// Polls until `url` answers `want`; returns how long after `since` the first successful
/// attempt *started* (the exec's own latency is not the proxy's). Bounded: 40 attempts, 10 s.
async fn until_status(
    client: &Client,
    env: &str,
    url: &str,
    want: &str,
    since: Instant,
) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    for _ in 0..40 {
        let started = since.elapsed();
        last = status(client, env, url).await;
        if last == want {
            return started;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never answered {want} (last {last})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never answered {want} (last {last})");
}

async fn containers(d: &DockerBackend, env: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for c in [names::proxy(env), names::sandbox(env)] {
        let i = d
            .docker()
            .inspect_container(&c, None)
            .await
            .unwrap_or_else(|e| panic!("inspect {c}: {e}"));
        let started = i.state.and_then(|s| s.started_at).unwrap_or_default();
        out.push((i.id.unwrap_or_default(), started));
    }
    out
}

/// Runs blocking CLI code (it has its own runtime) off the test's runtime.
async fn cli<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("cli task")
}

/// One environment from the test image with the project's own origin on its egress network
/// (`origin.kennel-test`, `tls-origin.kennel-test`, `denied.kennel-test`), served by an
/// in-process daemon. Everything is removed by the guard, also on failure.
struct Setup {
    d: DockerBackend,
    daemon: RunningDaemon,
    client: Client,
    name: String,
    base: String,
    dir: tempfile::TempDir,
    whitelist: std::path::PathBuf,
    info: EnvInfo,
    _ws: tempfile::TempDir,
    _certs: tempfile::TempDir,
    _guard: EnvGuard,
}

fn allow(entries: &[&str], for_secs: Option<u64>) -> AllowRequest {
    AllowRequest {
        entries: entries.iter().map(|s| (*s).to_string()).collect(),
        for_secs,
        note: Some("e2e".into()),
    }
}

async fn setup(test: &str, prefix: &str) -> Option<Setup> {
    let d = engine(test).await?;
    let proxy_bin = proxy_binary(test)?;
    let image = test_image(&d).await;
    let name = unique_env(prefix);
    let guard = EnvGuard::new(&name);
    let (dir, daemon, client) = RunningDaemon::start_in_tempdir(&d, &proxy_bin);

    let ws = tempfile::tempdir().expect("workspace");
    share_dir(ws.path(), 1001, 2000, 0o770);
    std::fs::write(
        ws.path().join("kennel.toml"),
        format!("name = \"{name}\"\nimage = \"{image}\"\ncommand = [\"/bin/busybox\", \"sleep\", \"3600\"]\n"),
    )
    .expect("kennel.toml");
    std::fs::create_dir(ws.path().join(".devcontainer")).expect("mkdir");
    let whitelist = ws.path().join(".devcontainer/whitelist.txt");
    std::fs::write(&whitelist, "project-only.kennel-test\n").expect("whitelist");
    let certs = tempfile::tempdir().expect("certs");
    share_dir(certs.path(), 0, 0, 0o755);
    mint_certs(certs.path(), ws.path());

    let req = build_request(&UpArgs {
        spec: None,
        learn: None,
        name: None,
        image: None,
        workspace: Some(ws.path().into()),
        ..Default::default()
    })
    .expect("spec");
    let info: EnvInfo = client.post("/envs", &req).await.expect("create");
    assert_eq!(info.state, "running", "{info:?}");

    let egress = names::egress_network(&name);
    let origin = start_origin(
        &d,
        &OriginSpec {
            env: &name,
            suffix: "origin",
            network: &egress,
            aliases: &["origin.kennel-test", "tls-origin.kennel-test", "denied.kennel-test"],
            image: &image,
            script: "httpd -f -p 80 -h /www & openssl s_server -quiet -accept 443 -cert /certs/cert.pem -key /certs/key.pem -www & wait",
            binds: vec![format!("{}:/certs:ro", certs.path().display())],
        },
    )
    .await;
    wait_tcp(&d, &origin, "127.0.0.1", 80).await;
    wait_tcp(&d, &origin, "127.0.0.1", 443).await;
    // The origin has a private address: the address guard needs its subnet in `cidrs`, which is
    // itself a `kennel allow` (an IP/CIDR entry).
    let (subnet, _) = network_ipam(&d, &egress).await;
    let base = format!("/envs/{name}");
    let _: PolicyChanged = client
        .post(&format!("{base}/policy/allow"), &allow(&[&subnet], None))
        .await
        .expect("allow subnet");
    Some(Setup {
        d,
        daemon,
        client,
        name,
        base,
        dir,
        whitelist,
        info,
        _ws: ws,
        _certs: certs,
        _guard: guard,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_loop_denials_allow_deny_expiry_edit_import_on_docker() {
    let test = "approve_loop_denials_allow_deny_expiry_edit_import_on_docker";
    let Some(st) = setup(test, "approve").await else {
        return;
    };
    let (d, client, name, base) = (
        st.d.clone(),
        st.client.clone(),
        st.name.clone(),
        st.base.clone(),
    );
    let (dir, whitelist, info) = (
        st.dir.path().to_path_buf(),
        st.whitelist.clone(),
        st.info.clone(),
    );

    // 1. Denied three times inside the sandbox -> `kennel denials` shows it with its count.
    let before = containers(&d, &name).await;
    let denied = "http://denied.kennel-test/index.html";
    let t0 = Instant::now();
    until_status(&client, &name, denied, "403", t0).await;
    for _ in 0..2 {
        assert_eq!(status(&client, &name, denied).await, "403");
    }
    let mut shown = None;
    for _ in 0..20 {
        let ds: Denials = client
            .get(&format!("{base}/denials?since=600"))
            .await
            .expect("denials");
        if let Some(x) = ds
            .denials
            .iter()
            .find(|x| x.host == "denied.kennel-test" && x.count >= 3)
        {
            shown = Some(x.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let x = shown.expect("denied.kennel-test:80 in kennel denials with count 3");
    assert_eq!((x.port, x.count), (80, 3), "{x:?}");
    assert_eq!(x.reasons, ["not_in_allowlist"]);
    assert!(
        x.hint
            .as_deref()
            .unwrap_or("")
            .contains("add \"denied.kennel-test\" to hosts"),
        "{x:?}"
    );
    let table = kennel_cli::commands::denials::table(&Denials {
        env: name.clone(),
        denials: vec![x],
        skipped_lines: 0,
    });
    assert!(
        table.contains(&format!("kennel allow {name} denied.kennel-test:80")),
        "{table}"
    );

    // 2. `kennel allow` -> reachable within a second, nothing recreated.
    let _: PolicyChanged = client
        .post(
            &format!("{base}/policy/allow"),
            &allow(&["denied.kennel-test"], None),
        )
        .await
        .expect("allow");
    let took = until_status(&client, &name, denied, "200", Instant::now()).await;
    assert!(took <= Duration::from_secs(1), "allowed after {took:?}");
    assert_eq!(
        containers(&d, &name).await,
        before,
        "no container was recreated or restarted"
    );

    // 3. `kennel deny` closes a live tunnel: an open TLS session through the proxy ends at once
    //    instead of after its 20 s.
    let _: PolicyChanged = client
        .post(
            &format!("{base}/policy/allow"),
            &allow(&["tls-origin.kennel-test"], None),
        )
        .await
        .expect("allow tls");
    until_status(
        &client,
        &name,
        "--cacert /workspace/ca.pem https://tls-origin.kennel-test/",
        "200",
        Instant::now(),
    )
    .await;
    let (c2, n2) = (client.clone(), name.clone());
    let tunnel = tokio::spawn(async move {
        exec(
            &c2,
            &n2,
            // -quiet implies -ign_eof: with stdin at EOF the session stays open until the
            // other side closes it.
            "openssl s_client -proxy proxy:8888 -connect tls-origin.kennel-test:443 -servername tls-origin.kennel-test -quiet </dev/null >/dev/null 2>&1; echo ended",
        )
        .await
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!tunnel.is_finished(), "the tunnel should be open");
    let _: PolicyChanged = client
        .post(
            &format!("{base}/policy/deny"),
            &DenyRequest {
                entries: vec!["tls-origin.kennel-test".into()],
                note: None,
            },
        )
        .await
        .expect("deny");
    let denied_at = Instant::now();
    // The proxy closes the tunnel on the reload and logs it as a `revoked` denial, which
    // `kennel denials` shows.
    let mut revoked = None;
    for _ in 0..30 {
        let ds: Denials = client
            .get(&format!("{base}/denials?since=600"))
            .await
            .expect("denials");
        revoked = ds.denials.into_iter().find(|x| {
            x.host == "tls-origin.kennel-test" && x.reasons.iter().any(|r| r == "revoked")
        });
        if revoked.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed_after = denied_at.elapsed();
    assert!(
        revoked.is_some(),
        "the live tunnel was not closed (no `revoked` line) within {closed_after:?} of `kennel deny`"
    );
    assert!(
        closed_after <= Duration::from_secs(2),
        "closed after {closed_after:?}"
    );
    // The client's side: its open TLS session ends (instead of lasting until the test ends).
    let (out, _, _) = tokio::time::timeout(Duration::from_secs(3), tunnel)
        .await
        .expect("the client's session ended within 3 s of `kennel deny`")
        .expect("tunnel task");
    assert_eq!(out, "ended\n");

    // 4. `--for 3s` expires by itself.
    let origin_url = "http://origin.kennel-test/index.html";
    assert_eq!(status(&client, &name, origin_url).await, "403");
    let added: PolicyChanged = client
        .post(
            &format!("{base}/policy/allow"),
            &allow(&["origin.kennel-test"], Some(3)),
        )
        .await
        .expect("allow --for");
    assert!(added.expires.is_some());
    let t = Instant::now();
    until_status(&client, &name, origin_url, "200", t).await;
    let gone = until_status(&client, &name, origin_url, "403", t).await;
    assert!(
        gone >= Duration::from_secs(2) && gone <= Duration::from_secs(6),
        "expired after {gone:?}"
    );

    // 5. An invalid `policy edit` is refused and the old policy keeps working.
    let editor = dir.join("bad-editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nprintf '\\n[allow]\\nhosts = [\"bad host\"]\\n' >> \"$1\"\n",
    )
    .expect("editor script");
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let policy_file = info
        .policy_dir
        .clone()
        .expect("policy dir")
        .join("policy.toml");
    let before_edit = std::fs::read_to_string(&policy_file).expect("policy");
    let (c3, n3, e3) = (client.clone(), name.clone(), editor.display().to_string());
    let code = cli(move || {
        edit_with(
            &c3,
            EditArgs {
                env: n3,
                profile: None,
                note: None,
            },
            &e3,
        )
        .expect("edit runs")
    })
    .await;
    assert_eq!(code, ExitCode::from(1), "an invalid edit is refused");
    // The refused edit's copy is kept for the person; the test removes its own.
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        let prefix = format!("kennel-policy-{name}-");
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    assert_eq!(
        std::fs::read_to_string(&policy_file).expect("policy"),
        before_edit
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status(&client, &name, denied).await,
        "200",
        "the old policy still works"
    );

    // 6. `policy import`: the diff, refused without a terminal or --yes, applied with --yes.
    std::fs::write(&whitelist, "project-only.kennel-test\norigin.kennel-test\n")
        .expect("edit whitelist");
    let preview: ImportPreview = client
        .post(
            &format!("{base}/policy/import"),
            &ImportRequest {
                content: std::fs::read_to_string(&whitelist).expect("read"),
                apply: false,
                base_sha256: None,
            },
        )
        .await
        .expect("preview");
    assert_eq!(preview.added, ["origin.kennel-test"]);
    assert!(preview.removed.is_empty());
    let (c4, n4) = (client.clone(), name.clone());
    let refused = cli(move || {
        import_with(
            &c4,
            ImportArgs {
                env: n4,
                file: None,
                yes: false,
            },
            false,
            &mut std::io::empty(),
        )
    })
    .await
    .expect_err("no terminal, no --yes");
    assert!(refused.to_string().contains("--yes"), "{refused}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status(&client, &name, origin_url).await,
        "403",
        "not applied"
    );
    let (c5, n5) = (client.clone(), name.clone());
    let code = cli(move || {
        import_with(
            &c5,
            ImportArgs {
                env: n5,
                file: None,
                yes: true,
            },
            false,
            &mut std::io::empty(),
        )
        .expect("import --yes")
    })
    .await;
    assert_eq!(code, ExitCode::SUCCESS);
    until_status(&client, &name, origin_url, "200", Instant::now()).await;

    // Every change is in the environment's change log.
    let log = std::fs::read_to_string(dir.join(format!("state/envs/{name}/changes.jsonl")))
        .expect("change log");
    for action in ["allow", "deny", "expire", "import"] {
        assert!(
            log.contains(&format!("\"action\":\"{action}\"")),
            "{action}: {log}"
        );
    }
    assert_eq!(
        containers(&d, &name).await,
        before,
        "no container was recreated or restarted"
    );

    let _: Removed = client.delete(&base).await.expect("down");
    assert!(d.inspect_env(&name).await.expect("inspect").is_none());
    st.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learn_mode_allows_and_logs_then_enforces_and_from_denials_passes_on_docker() {
    let test = "learn_mode_allows_and_logs_then_enforces_and_from_denials_passes_on_docker";
    let Some(st) = setup(test, "learn").await else {
        return;
    };
    let (client, name) = (st.client.clone(), st.name.clone());
    let denied = "http://denied.kennel-test/index.html";
    assert_eq!(status(&client, &name, denied).await, "403");

    // `kennel up --learn 5s` on the created environment: report mode for 5 s.
    let (c, n) = (client.clone(), name.clone());
    cli(move || kennel_cli::commands::learn::start(&c, &n, Duration::from_secs(5)))
        .await
        .expect("learn");
    let t = Instant::now();
    until_status(&client, &name, denied, "200", t).await;
    let learned: Denials = client
        .get(&format!("{}/denials?learned=true", st.base))
        .await
        .expect("learned");
    let x = learned
        .denials
        .iter()
        .find(|x| x.host == "denied.kennel-test")
        .unwrap_or_else(|| panic!("logged as would_deny: {learned:?}"));
    assert!(!x.allowed_now && x.hint.is_some(), "{x:?}");

    // Then it enforces by itself.
    let enforced = until_status(&client, &name, denied, "403", t).await;
    assert!(
        enforced >= Duration::from_secs(4),
        "enforcing after {enforced:?}"
    );

    // `kennel allow --from-denials` turns what was learned into entries that pass.
    let (c, n) = (client.clone(), name.clone());
    let entries = cli(move || kennel_cli::commands::learn::from_denials(&c, &n, None, false))
        .await
        .expect("from denials");
    assert!(
        entries.contains(&"denied.kennel-test:80".to_string()),
        "{entries:?}"
    );
    let _: PolicyChanged = client
        .post(
            &format!("{}/policy/allow", st.base),
            &AllowRequest {
                entries,
                for_secs: None,
                note: None,
            },
        )
        .await
        .expect("allow from denials");
    until_status(&client, &name, denied, "200", Instant::now()).await;
    let _: Removed = client.delete(&st.base).await.expect("down");
    st.daemon.stop().await;
}
