//! Regression tests of issue 9 (items 7 and 8) in the container backend: the proxy container's
//! log variable, and the legacy `.env` settings rendered into the effective policy.

use std::path::Path;

use crate::backend::EnvPlan;
use crate::hardening;
use crate::spec::EnvSpec;

fn plan(dir: &Path) -> EnvPlan {
    let spec = EnvSpec::parse_str(
        "name = \"t\"\nimage = \"img\"\n",
        &dir.join("kennel.toml"),
        dir,
    )
    .expect("spec");
    EnvPlan {
        spec,
        policy_dir: dir.to_path_buf(),
        proxy_image: "kennel-proxy:abc".into(),
        access_log_dir: None,
        state_labels: Vec::new(),
        progress: None,
    }
}

/// Issue 9 item 7: the proxy container got `RUST_LOG`, which the proxy did not read.
#[test]
fn proxy_container_sets_the_log_variable_the_proxy_reads() {
    let d = tempfile::tempdir().expect("tempdir");
    let c = hardening::proxy_container(&plan(d.path()), None);
    let env = c.env.expect("proxy env");
    assert!(env.iter().any(|e| e == "KENNEL_LOG=info"), "{env:?}");
    assert!(!env.iter().any(|e| e.starts_with("RUST_LOG=")), "{env:?}");
}

fn seed_workspace(env: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(d.path().join(".devcontainer")).expect("mkdir");
    std::fs::write(d.path().join(".devcontainer/.env"), env).expect("write .env");
    d
}

/// Issue 9 item 8 / issue 15 item 2: the backend had its own reading of the legacy variables
/// (it kept `socks5://` local-DNS, preferred `UPSTREAM_PROXY` silently, never validated).
#[test]
fn environment_policy_renders_the_policy_crates_reading_of_the_env() {
    let d = seed_workspace(
        "UPSTREAM_PROXY_TYPE=socks5\nUPSTREAM_PROXY_HOST=host.docker.internal\nUPSTREAM_PROXY_PORT=8900\nNO_UPSTREAM=corp.example\n",
    );
    let spec =
        EnvSpec::from_workspace(d.path(), &crate::spec::SpecOverrides::default()).expect("spec");
    let text = crate::policy_dir::render_policy(&spec).expect("render");
    assert!(
        text.contains("default = \"socks5h://host.docker.internal:8900\""),
        "{text}"
    );
    assert!(text.contains("hosts = [\".corp.example\"]"), "{text}");

    let d = seed_workspace("UPSTREAM_PROXY=socks5://h.example:1080\n");
    let spec =
        EnvSpec::from_workspace(d.path(), &crate::spec::SpecOverrides::default()).expect("spec");
    assert_eq!(
        crate::policy_dir::effective_upstream(&spec).expect("valid"),
        "socks5h://h.example:1080"
    );
}

/// Issue 9 item 8: an invalid `.env` was accepted by `kennel up` and failed later (or not at
/// all); it is refused at spec loading, naming the file, line and column.
#[test]
fn invalid_env_is_refused_at_spec_loading_with_file_line_and_column() {
    let d = seed_workspace(
        "# x\nUPSTREAM_PROXY_TYPE=socks4\nUPSTREAM_PROXY_HOST=h\nUPSTREAM_PROXY_PORT=1\n",
    );
    let e = EnvSpec::from_workspace(d.path(), &crate::spec::SpecOverrides::default())
        .expect_err("socks4 refused");
    let want = format!(
        "{}:2:21: UPSTREAM_PROXY_TYPE \"socks4\" is not supported",
        d.path().join(".devcontainer/.env").display()
    );
    assert!(e.to_string().starts_with(&want), "{e}");
}
