//! Regressions in how kennel reads the replaced system's files (issue 9, item 8; issue 15,
//! item 2): `kennel-policy` and `kennel-container` each interpreted the `.env` variables and
//! disagreed at the edges. The documented table is checked against the one implementation and
//! against the policy an environment's proxy is really given.

use std::path::{Path, PathBuf};

use kennel_container::spec::{EnvSpec, SpecOverrides};
use kennel_policy::{Host, LegacyEnv, LegacySettings, Policy, Target};

/// One row of the `.env` table in docs/environments.md: the `.env` text and the expected
/// summary (the first code span of the second column).
struct Row {
    env: String,
    want: String,
}

fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn docs_table() -> Vec<Row> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/environments.md");
    let text = std::fs::read_to_string(&path).expect("read docs/environments.md");
    let start = text
        .find("<!-- legacy-env-table -->")
        .expect("table start marker");
    let end = text
        .find("<!-- /legacy-env-table -->")
        .expect("table end marker");
    let rows: Vec<Row> = text[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
            assert_eq!(cells.len(), 2, "a row has two columns: {l}");
            let mut env = code_spans(cells[0]).join("\n");
            env.push('\n');
            let want = code_spans(cells[1])
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("no code span in the kennel column: {l}"));
            Row { env, want }
        })
        .collect();
    assert!(
        rows.len() >= 10,
        "table not found or cut short: {}",
        rows.len()
    );
    rows
}

/// What the legacy resolution amounts to, in the table's words.
fn summary(s: &LegacySettings) -> String {
    let mut parts = Vec::new();
    if let Some(u) = &s.upstream {
        parts.push(format!("upstream {}", u.upstream));
    }
    let join = |v: &[kennel_policy::LegacyEntry]| {
        v.iter()
            .map(|e| e.pattern.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !s.no_upstream.is_empty() {
        parts.push(format!("direct {}", join(&s.no_upstream)));
    }
    if !s.allow.is_empty() {
        parts.push(format!("allow {}", join(&s.allow)));
    }
    if !s.warnings.is_empty() {
        parts.push("warning".to_string());
    }
    if parts.is_empty() {
        "no upstream".to_string()
    } else {
        parts.join("; ")
    }
}

/// A seed-layout workspace (no kennel.toml) with `.devcontainer/.env`.
fn workspace(env: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().expect("tempdir");
    let ws = d.path().join("task");
    std::fs::create_dir_all(ws.join(".devcontainer")).expect("mkdir");
    std::fs::write(ws.join(".devcontainer/.env"), env).expect("write .env");
    (d, ws)
}

fn upstream(p: &Policy, host: &str) -> String {
    p.upstream_for(&Host::parse(host).expect("host"))
        .to_string()
}

/// Issue 9 item 8 / issue 15 item 2: the policy crate refused `.env` files the container
/// backend accepted (and rendered differently, e.g. `UPSTREAM_PROXY=socks5://` kept local DNS
/// there). Every documented row must mean the same to `kennel up`, to the environment's
/// `policy.toml` (what its proxy loads) and to `kennel-proxy` given the file directly.
#[test]
fn docs_env_table_matches_the_one_legacy_resolution() {
    for row in docs_table() {
        let ctx = format!(".env:\n{}", row.env);
        let (tmp, ws) = workspace(&row.env);
        let dotenv = ws.join(".devcontainer/.env");
        // The one implementation, as the proxy and `kennel policy check --dotenv` use it.
        let resolved = LegacyEnv::from_dotenv(&dotenv).and_then(|l| l.resolve());
        let spec = EnvSpec::from_workspace(&ws, &SpecOverrides::default());
        if row.want == "error" {
            let e = resolved.err().unwrap_or_else(|| panic!("{ctx}: no error"));
            assert!(
                e.to_string().starts_with(&format!("{}:", dotenv.display())),
                "{ctx}: error does not name the file and line: {e}"
            );
            let e = spec
                .err()
                .unwrap_or_else(|| panic!("{ctx}: kennel up accepted it"));
            assert!(
                e.to_string().starts_with(&format!("{}:", dotenv.display())),
                "{ctx}: kennel up error does not name the file and line: {e}"
            );
            continue;
        }
        let settings = resolved.unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(summary(&settings), row.want, "{ctx}");
        for w in &settings.warnings {
            assert!(
                w.starts_with(&format!("{}:", dotenv.display())),
                "{ctx}: warning does not name the file and line: {w}"
            );
        }

        // The environment's policy, as the daemon writes it and the proxy container loads it
        // (the container gets no legacy variables of its own).
        let spec = spec.unwrap_or_else(|e| panic!("{ctx}: kennel up refused it: {e}"));
        let dir = tmp.path().join("state/policy");
        let file = kennel_container::policy_dir::write_effective_policy(&dir, &spec, None)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let env_policy = Policy::load(&file).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        // The stand-alone proxy with the same file as `[policy] dotenv`.
        let legacy = LegacyEnv::from_dotenv(&dotenv).expect("parsed above");
        let proxy_policy = Policy::embedded_default_with(&legacy).expect("resolved above");

        let want_default = settings
            .upstream
            .as_ref()
            .map_or_else(|| "direct".to_string(), |u| u.upstream.to_string());
        for p in [&env_policy, &proxy_policy] {
            assert_eq!(upstream(p, "unrelated.example"), want_default, "{ctx}");
            for e in &settings.no_upstream {
                let h = format!("www.{}", e.pattern.domain);
                assert_eq!(upstream(p, &h), "direct", "{ctx}: {h}");
            }
            for e in &settings.allow {
                let t = Target::from_host_port(&format!("www.{}", e.pattern.domain), 443)
                    .expect("target");
                assert!(p.decide(&t).is_allowed(), "{ctx}: {t} not allowed");
            }
        }
        // The credentials reach the environment's policy (they are used), but no summary shows
        // them.
        if row.env.contains("secret") {
            let text = std::fs::read_to_string(&file).expect("read policy.toml");
            assert!(text.contains("user:secret@"), "{ctx}: credentials dropped");
            assert!(!summary(&settings).contains("secret"), "{ctx}");
            for a in &settings.applied {
                assert!(!a.to_string().contains("secret"), "{ctx}: {a}");
            }
            assert!(
                text.lines()
                    .filter(|l| l.starts_with('#'))
                    .all(|l| !l.contains("secret")),
                "{ctx}: credentials in a policy.toml comment"
            );
        }
    }
}

/// Starts an in-process proxy whose legacy `.env` is `env` (nothing else sets the upstream),
/// with an origin on loopback, and fetches `http://localhost:PORT/legacy` through it.
async fn fetch_through_dotenv(env: &str) -> (u16, String, String) {
    use kennel_test_support::proxy_harness::{TestProxy, curl};
    use kennel_test_support::upstreams::Origin;
    let origin = Origin::http().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let dotenv = dir.path().join(".env");
    std::fs::write(&dotenv, env).expect("write .env");
    let policy = format!(
        "[defaults]\nports = [{}]\n[allow]\nhosts = [\"localhost\"]\ncidrs = [\"127.0.0.0/8\"]\n",
        origin.port()
    );
    let lo = std::net::IpAddr::from([127, 0, 0, 1]);
    let proxy = TestProxy::start(&policy, &[("localhost", lo)], |cfg| {
        cfg.policy.dotenv = Some(dotenv.clone());
    })
    .await
    .unwrap_or_else(|e| panic!("proxy refused the .env:\n{env}\n{e:#}"));
    let url = format!("http://localhost:{}/legacy", origin.port());
    let out = curl(&["-w", "\n%{http_code}", "-x", &proxy.url(), &url])
        .await
        .expect("run curl");
    let (body, status) = out.stdout.rsplit_once('\n').unwrap_or(("", ""));
    (origin.port(), status.to_string(), body.to_string())
}

/// Issue 9 item 8, with real traffic through a SOCKS5 server started here on loopback: a seed
/// `.env` with both `UPSTREAM_SOCKS5` and `UPSTREAM_HTTP` made the proxy refuse to start; the
/// replaced system used SOCKS5. The HTTP upstream is a closed port, so a request that went
/// there would fail.
#[tokio::test]
async fn dotenv_with_socks5_and_http_sends_traffic_through_socks5() {
    use kennel_test_support::upstreams::{UpstreamProxy, free_port};
    let up = UpstreamProxy::microsocks(None).await;
    let env = format!(
        "UPSTREAM_SOCKS5={}\nUPSTREAM_HTTP=127.0.0.1:{}\n",
        up.addr(),
        free_port()
    );
    let (port, status, body) = fetch_through_dotenv(&env).await;
    assert_eq!(status, "200", "{body}");
    // socks5h: the name went to the upstream, which resolved it.
    up.wait_log_contains(&format!("connected to localhost:{port}"))
        .await;
}

/// Issue 9 item 8: `UPSTREAM_PROXY=socks5://…` in a seed `.env` meant names resolved at the
/// far end (Tinyproxy); kennel sent the locally resolved address instead.
#[tokio::test]
async fn dotenv_upstream_proxy_socks5_sends_the_name_to_the_upstream() {
    use kennel_test_support::upstreams::UpstreamProxy;
    let up = UpstreamProxy::microsocks(None).await;
    let env = format!("UPSTREAM_PROXY=socks5://{}\n", up.addr());
    let (port, status, body) = fetch_through_dotenv(&env).await;
    assert_eq!(status, "200", "{body}");
    up.wait_log_contains(&format!("connected to localhost:{port}"))
        .await;
}

/// Issue 9 item 8: "every `.env` error names the file and line" must also hold after the spec
/// crossed the daemon API (the daemon renders the environment's policy from it).
#[test]
fn legacy_origins_survive_the_daemon_api_into_the_environment_policy() {
    use kennel_supervisord::api::types::SpecDoc;
    let (tmp, ws) =
        workspace("# proxy\nUPSTREAM_SOCKS5=h.example:8900\nUPSTREAM_HTTP=h.example:3128\n");
    let dotenv = ws.join(".devcontainer/.env");
    let spec = EnvSpec::from_workspace(&ws, &SpecOverrides::default()).expect("spec");
    let wire = serde_json::to_string(&SpecDoc::from(&spec)).expect("serialize");
    let back: EnvSpec = serde_json::from_str::<SpecDoc>(&wire)
        .expect("deserialize")
        .into();
    assert_eq!(back.egress.legacy, spec.egress.legacy);
    let warnings = back.egress.legacy.resolve().expect("resolve").warnings;
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].starts_with(&format!("{}:3: warning:", dotenv.display())),
        "{}",
        warnings[0]
    );
    let file = kennel_container::policy_dir::write_effective_policy(
        &tmp.path().join("policy"),
        &back,
        None,
    )
    .expect("write");
    let text = std::fs::read_to_string(file).expect("read");
    assert!(
        text.contains(&format!(
            "# legacy UPSTREAM_SOCKS5 ({}:2): default upstream socks5h://h.example:8900",
            dotenv.display()
        )),
        "{text}"
    );
}
