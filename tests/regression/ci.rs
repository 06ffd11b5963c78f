//! Regressions in the test infrastructure itself (issue 9).

use std::path::PathBuf;

/// Issue 9, item 1: several nextest processes compiled the probe at the same moment into the
/// shared temp dir, their rustc intermediates collided and the linker died ("ld terminated with
/// signal 7"). Eight concurrent builders must all get the same, complete binary.
#[test]
fn concurrent_probe_builds_do_not_collide() {
    let dir = tempfile::tempdir().expect("tempdir");
    let builders: Vec<_> = (0..8)
        .map(|_| {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || kennel_test_support::docker::build_probe_into(&dir))
        })
        .collect();
    let outs: Vec<PathBuf> = builders
        .into_iter()
        .map(|b| b.join().expect("builder thread"))
        .collect();
    let first = std::fs::read(&outs[0]).expect("probe binary");
    assert!(first.starts_with(b"\x7fELF"), "probe is not an ELF binary");
    for out in &outs {
        assert_eq!(out, &outs[0], "every builder returns the same path");
    }
    // Exactly one binary and no leftovers (temp outputs, lock file aside).
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "leftovers in the cache dir: {leftovers:?}"
    );
    let run = std::process::Command::new(&outs[0])
        .output()
        .expect("run probe");
    assert_eq!(
        run.status.code(),
        Some(2),
        "probe without arguments is a usage error"
    );
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("usage: probe"),
        "probe runs and prints its usage: {run:?}"
    );
}
