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
        state_labels: Vec::new(),
    }
}

/// Issue 9 item 7: the proxy container got `RUST_LOG`, which the proxy did not read.
#[test]
fn proxy_container_sets_the_log_variable_the_proxy_reads() {
    let d = tempfile::tempdir().expect("tempdir");
    let c = hardening::proxy_container(&plan(d.path()));
    let env = c.env.expect("proxy env");
    assert!(env.iter().any(|e| e == "KENNEL_LOG=info"), "{env:?}");
    assert!(!env.iter().any(|e| e.starts_with("RUST_LOG=")), "{env:?}");
}
