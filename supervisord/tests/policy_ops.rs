//! Live policy changes through the daemon over the FakeBackend: allow/deny/show/edit/import,
//! `--for` expiry (also across a daemon restart), the change log, denials from an access log,
//! and bad input (unknown environment, invalid host pattern, invalid edit).

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should just fail the test

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use kennel_container::fake::FakeBackend;
use kennel_container::spec::{EnvSpec, SpecOverrides};
use kennel_policy::{Policy, Target};
use kennel_supervisord::api::policy_types::{
    AllowRequest, DenyRequest, ImportRequest, PolicyReplace,
};
use kennel_supervisord::api::types::CreateEnv;
use kennel_supervisord::auth::{Authorizer, Peer};
use kennel_supervisord::registry::{Daemon, FixedProxyImage};
use kennel_supervisord::state::StateDir;

struct Fixture {
    daemon: Arc<Daemon>,
    fake: FakeBackend,
    state_dir: tempfile::TempDir,
    _workspace: tempfile::TempDir,
}

fn daemon_over(fake: &FakeBackend, state: &Path) -> Arc<Daemon> {
    Daemon::new(
        Arc::new(fake.clone()),
        Arc::new(FixedProxyImage("kennel-proxy:test".into())),
        StateDir::open(state).unwrap(),
        Authorizer::new(0, [], []),
    )
}

async fn fixture(name: &str) -> Fixture {
    let fake = FakeBackend::new();
    let state_dir = tempfile::tempdir().unwrap();
    let workspace = tempfile::tempdir().unwrap();
    let daemon = daemon_over(&fake, state_dir.path());
    let spec = EnvSpec::from_workspace(
        workspace.path(),
        &SpecOverrides {
            name: Some(name.into()),
            workspace: Some(workspace.path().to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap();
    daemon
        .create(
            &person(),
            CreateEnv {
                spec: (&spec).into(),
                project_whitelist: Some("example.org\n".into()),
            },
        )
        .await
        .unwrap();
    Fixture {
        daemon,
        fake,
        state_dir,
        _workspace: workspace,
    }
}

/// The test's own user (the daemon only mounts paths the caller owns).
fn person() -> Peer {
    Peer {
        pid: None,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        groups: vec![],
    }
}

fn allows(f: &Fixture, env: &str, target: &str) -> bool {
    let p = Policy::load(
        &f.state_dir
            .path()
            .join(format!("envs/{env}/policy/policy.toml")),
    )
    .unwrap();
    p.decide(&Target::parse_authority(target).unwrap())
        .is_allowed()
}

fn allow(entries: &[&str], for_secs: Option<u64>) -> AllowRequest {
    AllowRequest {
        entries: entries.iter().map(|s| (*s).to_string()).collect(),
        for_secs,
        note: Some("agent needs it".into()),
    }
}

#[tokio::test]
async fn allow_deny_show_and_change_log() {
    let f = fixture("pol").await;
    assert!(!allows(&f, "pol", "api.example.net:443"));
    let changed = f
        .daemon
        .policy_allow(
            &person(),
            "pol",
            allow(&["api.example.net", "db.example.net:5432"], None),
        )
        .await
        .unwrap();
    assert_eq!(changed.changes.len(), 2, "{changed:?}");
    assert!(allows(&f, "pol", "api.example.net:443"));
    assert!(allows(&f, "pol", "db.example.net:5432"));
    assert!(
        !allows(&f, "pol", "db.example.net:443"),
        "the rule is for its port only"
    );

    let view = f.daemon.policy_show("pol").await.unwrap();
    let e = view
        .entries
        .iter()
        .find(|e| e.pattern == "api.example.net")
        .unwrap();
    assert_eq!(e.action, "allow");
    assert!(e.at.contains("policy.toml:"), "{e:?}");
    assert!(
        view.entries
            .iter()
            .any(|e| e.pattern == ".example.org" && e.at.contains("whitelist.txt:1")),
        "the imported list is shown with file:line: {view:?}"
    );

    f.daemon
        .policy_deny(
            &person(),
            "pol",
            DenyRequest {
                entries: vec!["api.example.net".into()],
                note: None,
            },
        )
        .await
        .unwrap();
    assert!(!allows(&f, "pol", "api.example.net:443"));

    let log = std::fs::read_to_string(f.state_dir.path().join("envs/pol/changes.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{log}");
    assert_eq!(events[0]["action"], "allow");
    assert_eq!(events[0]["uid"], person().uid);
    assert_eq!(events[0]["note"], "agent needs it");
    assert_eq!(events[1]["action"], "deny");
    // Nothing was recreated: the fake still has the one create.
    assert!(f.fake.plan("pol").is_some());
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_input() {
    let f = fixture("bad").await;
    let err = f
        .daemon
        .policy_allow(&person(), "nosuch", allow(&["a.example"], None))
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::NOT_FOUND);
    assert!(err.to_string().contains("\"nosuch\""), "{err}");

    let err = f
        .daemon
        .policy_allow(&person(), "bad", allow(&["ok.example", "bad host"], None))
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    assert!(err.to_string().contains("\"bad host\""), "{err}");
    assert!(
        !allows(&f, "bad", "ok.example:443"),
        "nothing applied when one entry is bad"
    );

    let err = f
        .daemon
        .policy_deny(
            &person(),
            "bad",
            DenyRequest {
                entries: vec!["x.example:443".into()],
                note: None,
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("every port"), "{err}");
}

#[tokio::test]
async fn allow_for_expires_also_across_a_restart() {
    let f = fixture("exp").await;
    f.daemon
        .policy_allow(&person(), "exp", allow(&["tmp.example"], Some(2)))
        .await
        .unwrap();
    assert!(allows(&f, "exp", "tmp.example:443"));
    let view = f.daemon.policy_show("exp").await.unwrap();
    assert!(
        view.entries
            .iter()
            .any(|e| e.pattern == "tmp.example" && e.expires.is_some()),
        "{view:?}"
    );
    // Not due yet.
    assert!(f.daemon.expire_due(SystemTime::now()).await.is_empty());
    // A new daemon over the same state directory (a restart) expires it when due.
    let restarted = daemon_over(&f.fake, f.state_dir.path());
    let removed = restarted
        .expire_due(SystemTime::now() + Duration::from_secs(3))
        .await;
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert!(!allows(&f, "exp", "tmp.example:443"));

    // An entry that was there before `--for` is never removed by the expiry.
    f.daemon
        .policy_allow(&person(), "exp", allow(&["keep.example"], None))
        .await
        .unwrap();
    f.daemon
        .policy_allow(&person(), "exp", allow(&["keep.example"], Some(1)))
        .await
        .unwrap();
    restarted
        .expire_due(SystemTime::now() + Duration::from_secs(5))
        .await;
    assert!(allows(&f, "exp", "keep.example:443"));
}

#[tokio::test]
async fn invalid_edit_is_refused_with_file_line_col_and_not_applied() {
    let f = fixture("edit").await;
    let doc = f.daemon.policy_file("edit").await.unwrap();
    let bad = format!("{}\n[allow]\nhosts = [\"bad host\"]\n", doc.content);
    let err = f
        .daemon
        .policy_replace(
            &person(),
            "edit",
            PolicyReplace {
                content: bad,
                base_sha256: doc.sha256.clone(),
                note: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let msg = err.to_string();
    assert!(msg.contains("policy.toml:"), "FILE:LINE:COL: {msg}");
    assert_eq!(
        f.daemon.policy_file("edit").await.unwrap().content,
        doc.content
    );

    // A stale base is refused (409), a good edit applies.
    let good = format!("{}\n[allow]\nhosts = [\"edited.example\"]\n", doc.content);
    let err = f
        .daemon
        .policy_replace(
            &person(),
            "edit",
            PolicyReplace {
                content: good.clone(),
                base_sha256: "0".repeat(64),
                note: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::CONFLICT);
    f.daemon
        .policy_replace(
            &person(),
            "edit",
            PolicyReplace {
                content: good,
                base_sha256: doc.sha256,
                note: None,
            },
        )
        .await
        .unwrap();
    assert!(allows(&f, "edit", "edited.example:443"));
}

#[tokio::test]
async fn import_shows_the_diff_and_applies_only_when_asked() {
    let f = fixture("imp").await;
    let preview = f
        .daemon
        .policy_import(
            &person(),
            "imp",
            ImportRequest {
                content: "new.example\n# comment\n".into(),
                apply: false,
                base_sha256: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(preview.added, ["new.example"]);
    assert_eq!(preview.removed, ["example.org"]);
    assert!(!preview.applied);
    assert!(
        !allows(&f, "imp", "new.example:443"),
        "a preview changes nothing"
    );

    let err = f
        .daemon
        .policy_import(
            &person(),
            "imp",
            ImportRequest {
                content: "new.example\n(regex|thing)\n".into(),
                apply: false,
                base_sha256: None,
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("whitelist.txt:2"), "{err}");

    let applied = f
        .daemon
        .policy_import(
            &person(),
            "imp",
            ImportRequest {
                content: "new.example\n".into(),
                apply: true,
                base_sha256: Some(preview.base_sha256),
            },
        )
        .await
        .unwrap();
    assert!(applied.applied);
    assert!(allows(&f, "imp", "new.example:443"));
    assert!(!allows(&f, "imp", "example.org:443"));
}

#[tokio::test]
async fn denials_are_grouped_from_the_access_log() {
    let f = fixture("den").await;
    let dir = f.state_dir.path().join("envs/den/logs");
    assert!(dir.is_dir(), "the daemon made the log dir");
    let line = |t: &str, host: &str, decision: &str| {
        format!(
            "{{\"time\":\"{t}\",\"client\":\"10.0.0.2:1\",\"method\":\"CONNECT\",\"host\":\"{host}\",\"port\":443,\"decision\":\"{decision}\",\"reason\":\"not_in_allowlist\",\"status\":403,\"bytes_up\":0,\"bytes_down\":0,\"duration_ms\":0,\"upstream\":\"direct\"}}\n"
        )
    };
    let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let mut log = String::new();
    log.push_str(&line("2020-01-01T00:00:00.000Z", "old.example", "deny"));
    log.push_str(&line(&now, "evil.example", "deny"));
    log.push_str(&line(&now, "evil.example", "deny"));
    log.push_str(&line(&now, "example.org", "allow"));
    log.push_str("not json\n");
    std::fs::write(
        dir.join("access.log.1"),
        line("2020-01-01T00:00:01.000Z", "old.example", "deny"),
    )
    .unwrap();
    std::fs::write(dir.join("access.log"), log).unwrap();

    let all = f.daemon.denials("den", None).await.unwrap();
    assert_eq!(all.skipped_lines, 1);
    let hosts: Vec<(&str, u64)> = all
        .denials
        .iter()
        .map(|d| (d.host.as_str(), d.count))
        .collect();
    assert_eq!(hosts, [("evil.example", 2), ("old.example", 2)]);
    let evil = &all.denials[0];
    assert!(!evil.allowed_now);
    assert!(
        evil.hint
            .as_deref()
            .unwrap()
            .contains("add \"evil.example\" to hosts"),
        "{evil:?}"
    );
    let recent = f
        .daemon
        .denials("den", Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(recent.denials.len(), 1);

    f.daemon
        .policy_allow(&person(), "den", allow(&["evil.example"], None))
        .await
        .unwrap();
    let after = f
        .daemon
        .denials("den", Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert!(after.denials[0].allowed_now && after.denials[0].hint.is_none());
}

#[tokio::test]
async fn learn_mode_reports_then_enforces_by_itself() {
    use kennel_supervisord::api::policy_types::LearnRequest;
    let f = fixture("lrn").await;
    let mode = |f: &Fixture| {
        Policy::load(&f.state_dir.path().join("envs/lrn/policy/policy.toml"))
            .unwrap()
            .mode()
    };
    let err = f
        .daemon
        .policy_learn(&person(), "lrn", LearnRequest { for_secs: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    f.daemon
        .policy_learn(&person(), "lrn", LearnRequest { for_secs: 5 })
        .await
        .unwrap();
    assert_eq!(mode(&f), kennel_policy::Mode::Report);
    assert!(
        allows(&f, "lrn", "anything.example:443"),
        "report mode lets it through"
    );
    assert!(f.daemon.expire_due(SystemTime::now()).await.is_empty());
    // A restarted daemon still ends it when due.
    let restarted = daemon_over(&f.fake, f.state_dir.path());
    let done = restarted
        .expire_due(SystemTime::now() + Duration::from_secs(6))
        .await;
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(mode(&f), kennel_policy::Mode::Enforce);

    // `--learned` lists the would_deny lines, not the enforced ones.
    let dir = f.state_dir.path().join("envs/lrn/logs");
    let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    std::fs::write(
        dir.join("access.log"),
        format!(
            "{{\"time\":\"{now}\",\"host\":\"learned.example\",\"port\":443,\"decision\":\"would_deny\",\"reason\":\"not_in_allowlist\"}}\n{{\"time\":\"{now}\",\"host\":\"denied.example\",\"port\":443,\"decision\":\"deny\",\"reason\":\"not_in_allowlist\"}}\n"
        ),
    )
    .unwrap();
    let learned = f.daemon.denials_of("lrn", None, true).await.unwrap();
    assert_eq!(learned.denials.len(), 1);
    assert_eq!(learned.denials[0].host, "learned.example");
    assert!(!learned.denials[0].allowed_now);
}

/// One raw HTTP/1.1 request over the daemon's socket; returns (status, body).
async fn http(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: kennel\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn http_routes_and_bad_input() {
    let f = fixture("web").await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("k.sock");
    let listener = kennel_supervisord::daemon::bind_socket(&socket, None).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kennel_supervisord::server::serve(
        listener,
        f.daemon.clone(),
        async {
            let _ = stopped.await;
        },
    ));

    let (st, body) = http(
        &socket,
        "POST",
        "/v1/envs/web/policy/allow",
        r#"{"entries":["bad host"]}"#,
    )
    .await;
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("bad host"), "{body}");
    let (st, body) = http(&socket, "GET", "/v1/envs/nosuch/policy", "").await;
    assert_eq!(st, 404, "{body}");
    assert!(
        body.contains("nosuch") && body.contains("kennel ls"),
        "{body}"
    );
    let (st, body) = http(&socket, "GET", "/v1/envs/web/denials?since=abc", "").await;
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("since=abc"), "{body}");
    let (st, _) = http(&socket, "DELETE", "/v1/envs/web/policy", "").await;
    assert_eq!(st, 405);
    let (st, _) = http(&socket, "GET", "/v1/envs/web/policy/nothing", "").await;
    assert_eq!(st, 404);
    let (st, body) = http(
        &socket,
        "POST",
        "/v1/envs/web/policy/allow",
        r#"{"entries":["ok.example"],"for_secs":60,"note":"n"}"#,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["expires"].is_string(), "{body}");
    let (st, body) = http(&socket, "GET", "/v1/envs/web/policy", "").await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("ok.example"), "{body}");
    let (st, body) = http(
        &socket,
        "GET",
        "/v1/envs/web/denials?since=60&learned=true",
        "",
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = http(
        &socket,
        "POST",
        "/v1/envs/web/policy/deny",
        r#"{"entries":["x.example"],"bogus":1}"#,
    )
    .await;
    assert_eq!(st, 400, "unknown fields are refused: {body}");

    let _ = stop.send(());
    server.await.unwrap();
}

#[tokio::test]
async fn policy_changes_and_refusals_are_events_kept_once() {
    use kennel_supervisord::events::{EventQuery, kind};
    let f = fixture("evp").await;
    let mut live = f.daemon.event_log().subscribe();
    f.daemon
        .policy_allow(&person(), "evp", allow(&["api.example.com"], None))
        .await
        .unwrap();
    // Followers get the change as it happens …
    let ev = live.try_recv().unwrap();
    assert_eq!(ev.kind, kind::POLICY_CHANGED);
    assert_eq!(ev.env.as_deref(), Some("evp"));
    assert_eq!(ev.details["action"], "allow");
    assert!(ev.message.contains("api.example.com"), "{}", ev.message);

    let doc = f.daemon.policy_file("evp").await.unwrap();
    f.daemon
        .policy_replace(
            &person(),
            "evp",
            PolicyReplace {
                content: format!("{}\n[allow]\nhosts = [\"bad host\"]\n", doc.content),
                base_sha256: doc.sha256,
                note: None,
            },
        )
        .await
        .unwrap_err();

    let q = EventQuery {
        env: Some("evp".into()),
        ..Default::default()
    };
    let evs = f.daemon.events(&q).unwrap();
    let kinds: Vec<&str> = evs.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [kind::CREATED, kind::POLICY_CHANGED, kind::POLICY_REJECTED],
        "{evs:#?}"
    );
    assert!(
        evs[2].details["error"]
            .as_str()
            .is_some_and(|e| e.contains("policy.toml:")),
        "the refusal names FILE:LINE:COL: {:?}",
        evs[2]
    );
    // … and the change is kept once, in changes.jsonl, not copied into the event log.
    let log = std::fs::read_to_string(f.state_dir.path().join("events.jsonl")).unwrap();
    assert!(!log.contains(kind::POLICY_CHANGED), "{log}");
}

fn reload_metrics(ok: u64, failed: u64) -> String {
    format!(
        "kennel_proxy_policy_generation {}\nkennel_proxy_reloads_total{{result=\"ok\"}} {ok}\nkennel_proxy_reloads_total{{result=\"failed\"}} {failed}\n",
        ok + 1
    )
}

#[tokio::test]
async fn the_proxys_reloads_and_rejections_are_events() {
    use kennel_container::backend::LogsTarget;
    use kennel_supervisord::events::{EventQuery, kind};
    use kennel_supervisord::ops::reloads::{Look, confirm_loop};

    let f = fixture("evr").await;
    let watcher = tokio::spawn(confirm_loop(f.daemon.clone()));
    f.fake.set_metrics("evr", &reload_metrics(0, 0));
    // The daemon created the proxy: zero counts are its baseline already.
    assert_eq!(f.daemon.look_at_reloads("evr").await, Look::Same);
    f.daemon
        .policy_allow(&person(), "evr", allow(&["api.example.com"], None))
        .await
        .unwrap();
    // The "proxy" reloads a moment after the swap; the watcher sees it within its 2 s.
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.fake.set_metrics("evr", &reload_metrics(1, 0));
    let q = EventQuery {
        env: Some("evr".into()),
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let reloaded = loop {
        let evs = f.daemon.events(&q).unwrap();
        if let Some(e) = evs.iter().find(|e| e.kind == kind::POLICY_RELOADED) {
            break e.clone();
        }
        assert!(std::time::Instant::now() < deadline, "{evs:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reloaded.details["reloads"], 1, "{reloaded:?}");
    assert_eq!(reloaded.details["generation"], 2, "{reloaded:?}");

    // A rejection the daemon did not cause (a hand edit): the monitor's look finds it and the
    // error comes from the proxy's log.
    f.fake.set_logs(
        &LogsTarget::Proxy.container("evr"),
        "2026-11-30T00:00:00Z  INFO kennel_proxy: policy reloaded generation=2\n2026-11-30T00:00:01Z ERROR kennel_proxy::shared: policy reload failed, keeping the previous policy: /etc/kennel/policy/policy.toml:4:1: unknown key `hostz`\n",
    );
    f.fake.set_metrics("evr", &reload_metrics(1, 1));
    assert_eq!(f.daemon.look_at_reloads("evr").await, Look::Changed);
    assert_eq!(f.daemon.look_at_reloads("evr").await, Look::Same);
    let evs = f.daemon.events(&q).unwrap();
    let rejected: Vec<_> = evs
        .iter()
        .filter(|e| e.kind == kind::POLICY_REJECTED)
        .collect();
    assert_eq!(rejected.len(), 1, "{evs:#?}");
    assert_eq!(
        rejected[0].details["error"],
        "/etc/kennel/policy/policy.toml:4:1: unknown key `hostz`"
    );
    assert_eq!(rejected[0].details["source"], "proxy");
    // One reload, one rejection: nothing counted twice.
    let reloads = evs
        .iter()
        .filter(|e| e.kind == kind::POLICY_RELOADED)
        .count();
    assert_eq!(reloads, 1, "{evs:#?}");
    // A refreshed proxy counts from zero again: a new baseline, not an event.
    f.fake.set_metrics("evr", &reload_metrics(0, 0));
    assert_eq!(f.daemon.look_at_reloads("evr").await, Look::Baseline);
    f.fake.set_metrics("evr", &reload_metrics(1, 0));
    assert_eq!(f.daemon.look_at_reloads("evr").await, Look::Changed);
    watcher.abort();
}

/// `--profile NAME`: the profile's own policy directory (written at creation from its include
/// files, without the default list), its own expiry, `kennel inspect`'s profile list; the
/// environment's policy untouched; an unknown profile is a clear error.
#[tokio::test]
async fn a_profile_has_its_own_policy_allow_deny_show_expiry_and_inspect() {
    use kennel_supervisord::policy_ops::PolicyScope;
    let fake = FakeBackend::new();
    let state_dir = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let daemon = daemon_over(&fake, state_dir.path());
    std::fs::write(ws.path().join("extra.txt"), "extra.example\n").unwrap();
    std::fs::write(
        ws.path().join("kennel.toml"),
        "name = \"prof\"\n[egress.profiles.extra]\ninclude = [\"extra.txt\"]\n\
         [[service]]\nname = \"fetcher\"\nimage = \"busybox\"\negress = \"extra\"\n",
    )
    .unwrap();
    let spec = EnvSpec::from_workspace(ws.path(), &SpecOverrides::default()).unwrap();
    let info = daemon
        .create(
            &person(),
            CreateEnv {
                spec: (&spec).into(),
                project_whitelist: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(info.profiles.len(), 1, "{info:?}");
    let p = &info.profiles[0];
    assert_eq!(
        (
            p.name.as_str(),
            p.proxy_container.as_str(),
            p.state.as_str()
        ),
        ("extra", "kennel-prof-proxy-extra", "running")
    );
    assert_eq!(
        (p.allow_count, p.services.clone()),
        (Some(1), vec!["fetcher".to_string()])
    );
    let pdir = state_dir.path().join("envs/prof/policy-extra");
    assert_eq!(p.policy_dir.as_deref(), Some(pdir.as_path()));
    assert!(state_dir.path().join("envs/prof/logs-extra").is_dir());
    let decide = |dir: &str, t: &str| {
        Policy::load(
            &state_dir
                .path()
                .join(format!("envs/prof/{dir}/policy.toml")),
        )
        .unwrap()
        .decide(&Target::parse_authority(t).unwrap())
        .is_allowed()
    };
    assert!(decide("policy-extra", "extra.example:443"));
    assert!(!decide("policy-extra", "github.com:443"), "no default list");
    assert!(!decide("policy", "extra.example:443"));

    let extra = PolicyScope::new("prof", Some("extra"));
    let changed = daemon
        .policy_allow_in(&person(), &extra, allow(&["later.example"], Some(3600)))
        .await
        .unwrap();
    assert_eq!(changed.file, pdir.join("policy.toml"));
    assert!(decide("policy-extra", "later.example:443"));
    assert!(
        !decide("policy", "later.example:443"),
        "the env's own policy untouched"
    );
    let view = daemon.policy_show_in(&extra).await.unwrap();
    let later = view
        .entries
        .iter()
        .find(|e| e.pattern == "later.example")
        .unwrap();
    assert!(later.expires.is_some(), "{later:?}");
    assert!(
        state_dir
            .path()
            .join("envs/prof/expiry-extra.json")
            .is_file()
    );
    assert!(!state_dir.path().join("envs/prof/expiry.json").exists());
    // The expiry loop removes it from the profile's policy when due.
    let removed = daemon
        .expire_due(SystemTime::now() + Duration::from_secs(7200))
        .await;
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert!(!decide("policy-extra", "later.example:443"));
    daemon
        .policy_deny_in(
            &person(),
            &extra,
            DenyRequest {
                entries: vec!["extra.example".into()],
                note: None,
            },
        )
        .await
        .unwrap();
    assert!(!decide("policy-extra", "extra.example:443"));
    // The shared change log names the profile.
    let log = std::fs::read_to_string(state_dir.path().join("envs/prof/changes.jsonl")).unwrap();
    assert!(log.contains("egress profile extra: added"), "{log}");

    let err = daemon
        .policy_allow_in(
            &person(),
            &PolicyScope::new("prof", Some("nope")),
            allow(&["x.example"], None),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    assert!(
        err.to_string()
            .contains("environment \"prof\" has no egress profile \"nope\" (its profiles: extra)"),
        "{err}"
    );
    let info = daemon.inspect("prof").await.unwrap();
    // The include file's entry is still there (deny wins over it, but it is an allow entry).
    assert_eq!(info.profiles[0].allow_count, Some(1), "{info:?}");
}

/// Regression: a reload in an environment's first seconds, before the daemon had looked at its
/// proxy once, went into the first look's baseline and never became an event (the monitor's
/// tick looks every 5 s per environment; the e2e test slept 1.5 s after `kennel up` for it).
#[tokio::test]
async fn a_reload_before_the_first_look_after_creation_is_an_event() {
    use kennel_supervisord::events::{EventQuery, kind};
    use kennel_supervisord::ops::reloads::Look;

    let f = fixture("evn").await;
    // The proxy reloaded a hand edit before anyone looked at it.
    f.fake.set_metrics("evn", &reload_metrics(1, 0));
    // The monitor's tick.
    f.daemon.health_due_round().await;
    let q = EventQuery {
        env: Some("evn".into()),
        ..Default::default()
    };
    let evs = f.daemon.events(&q).unwrap();
    let reloaded: Vec<_> = evs
        .iter()
        .filter(|e| e.kind == kind::POLICY_RELOADED)
        .collect();
    assert_eq!(reloaded.len(), 1, "{evs:#?}");
    assert_eq!(reloaded[0].details["reloads"], 1, "{reloaded:?}");

    // A daemon that starts later knows nothing of the proxy's past: its first look is a
    // baseline, and counts from before are not replayed.
    let restarted = daemon_over(&f.fake, f.state_dir.path());
    assert_eq!(restarted.look_at_reloads("evn").await, Look::Baseline);
}
