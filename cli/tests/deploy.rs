//! deploy/install and deploy/kennel-supervisord.service: the script installs into a temporary
//! prefix or DESTDIR, and the unit it installs passes `systemd-analyze verify` and keeps its
//! `systemd-analyze security` exposure.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should just fail the test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `systemd-analyze` present? Without it: skip (and say why), or fail under CI=true.
fn have_systemd_analyze(test: &str) -> bool {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !ci(),
            "{test}: CI=true requires systemd-analyze (scripts/setup installs systemd)"
        );
        eprintln!(
            "SKIPPED {test}: systemd-analyze not installed (apt-get install systemd, or scripts/setup)"
        );
    }
    ok
}

/// A directory with what `--from` expects: the real `kennel`, and `kennel-supervisord` (the real
/// one when the workspace built it next to `kennel`, else a stand-in: what is checked here is
/// where the script puts it, not what it does) — plus a static binary for `--proxy-bin`.
struct Build {
    dir: tempfile::TempDir,
    proxy: PathBuf,
}

fn build() -> Option<Build> {
    let dir = tempfile::tempdir().unwrap();
    let kennel = PathBuf::from(env!("CARGO_BIN_EXE_kennel"));
    std::fs::copy(&kennel, dir.path().join("kennel")).unwrap();
    let daemon = kennel.with_file_name("kennel-supervisord");
    std::fs::copy(
        if daemon.exists() { &daemon } else { &kennel },
        dir.path().join("kennel-supervisord"),
    )
    .unwrap();
    let static_proxy = repo().join("target/static/x86_64-unknown-linux-gnu/release/kennel-proxy");
    let proxy = [static_proxy, PathBuf::from("/bin/busybox")]
        .into_iter()
        .find(|p| p.exists())?;
    Some(Build { dir, proxy })
}

fn install(build: &Build, args: &[&str], destdir: Option<&Path>) -> Output {
    let mut cmd = Command::new(repo().join("deploy/install"));
    cmd.arg("--from")
        .arg(build.dir.path())
        .arg("--proxy-bin")
        .arg(&build.proxy)
        .args(args)
        .env_remove("DESTDIR");
    if let Some(d) = destdir {
        cmd.env("DESTDIR", d);
    }
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn install_into_a_prefix_and_the_installed_unit_passes_systemd_analyze_verify() {
    let Some(build) = build() else {
        eprintln!(
            "SKIPPED: no static binary for --proxy-bin (scripts/build-proxy-static or busybox-static)"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("prefix");
    let units = tmp.path().join("units");
    let out = install(
        &build,
        &[
            "--prefix",
            prefix.to_str().unwrap(),
            "--unit-dir",
            units.to_str().unwrap(),
            "--no-system",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    for bin in [
        "bin/kennel",
        "bin/kennel-supervisord",
        "lib/kennel/kennel-proxy",
    ] {
        assert_eq!(mode(&prefix.join(bin)), 0o755, "{bin}");
    }
    for file in [
        "share/man/man1/kennel.1",
        "share/man/man1/kennel-up.1",
        "share/bash-completion/completions/kennel",
        "share/zsh/site-functions/_kennel",
        "share/fish/vendor_completions.d/kennel.fish",
        "share/doc/kennel/operations.md",
    ] {
        assert_eq!(mode(&prefix.join(file)), 0o644, "{file}");
    }
    let unit_path = units.join("kennel-supervisord.service");
    assert_eq!(mode(&unit_path), 0o644);
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    assert!(
        unit.contains(&format!(
            "ExecStart={}/bin/kennel-supervisord ",
            prefix.display()
        )),
        "{unit}"
    );
    assert!(
        unit.contains(&format!(
            "KENNEL_PROXY_BIN={}/lib/kennel/kennel-proxy",
            prefix.display()
        )),
        "{unit}"
    );
    assert!(
        !unit.contains("/usr/local"),
        "every /usr/local path follows --prefix: {unit}"
    );

    if !have_systemd_analyze(
        "install_into_a_prefix_and_the_installed_unit_passes_systemd_analyze_verify",
    ) {
        return;
    }
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .output()
        .unwrap();
    // verify exits 0 on unknown keys and bad values too; they are reported on stderr.
    assert!(
        verify.status.success() && text(&verify.stderr).trim().is_empty(),
        "systemd-analyze verify: {}{}",
        text(&verify.stdout),
        text(&verify.stderr)
    );
}

#[test]
fn a_destdir_install_stages_files_and_changes_nothing_on_this_machine() {
    let Some(build) = build() else {
        eprintln!("SKIPPED: no static binary for --proxy-bin");
        return;
    };
    let groups_before = std::fs::read_to_string("/etc/group").unwrap();
    let stage = tempfile::tempdir().unwrap();
    let out = install(&build, &[], Some(stage.path()));
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let root = stage.path();
    assert_eq!(mode(&root.join("usr/local/bin/kennel-supervisord")), 0o755);
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/kennel-supervisord.service"))
        .unwrap();
    assert!(
        unit.contains(
            "ExecStart=/usr/local/bin/kennel-supervisord --socket /run/kennel/kennel.sock"
        ),
        "the unit names the final paths, not the staging ones: {unit}"
    );
    assert!(!unit.contains(&root.display().to_string()), "{unit}");
    let said = text(&out.stdout);
    assert!(
        said.contains("groupadd --system kennel"),
        "says what is left to do: {said}"
    );
    assert_eq!(
        std::fs::read_to_string("/etc/group").unwrap(),
        groups_before,
        "no group created"
    );

    // Changing this machine is refused with a staging root.
    let out = install(&build, &["--enable"], Some(stage.path()));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot be combined with --no-system or DESTDIR"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn install_errors_name_what_is_missing_and_how_to_get_it() {
    let Some(build) = build() else {
        eprintln!("SKIPPED: no static binary for --proxy-bin");
        return;
    };
    let stage = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(repo().join("deploy/install"))
        .arg("--from")
        .arg(empty.path())
        .env("DESTDIR", stage.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{}/kennel not found", empty.path().display())),
        "{err}"
    );
    assert!(err.contains("cargo build --release"), "{err}");

    let out = install(
        &build,
        &["--proxy-bin", env!("CARGO_BIN_EXE_kennel")],
        Some(stage.path()),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is dynamically linked"),
        "{}",
        text(&out.stderr)
    );

    let out = install(&build, &["--prefix", "relative/dir"], Some(stage.path()));
    assert!(
        text(&out.stderr).contains("--prefix must be an absolute path"),
        "{}",
        text(&out.stderr)
    );
    let out = install(&build, &["--frobnicate"], Some(stage.path()));
    assert!(
        text(&out.stderr).contains("unknown option --frobnicate"),
        "{}",
        text(&out.stderr)
    );
}

/// The unit in the repository: ordered after Docker without depending on it, hardened, and its
/// exposure score (docs/operations.md) does not creep back up.
#[test]
fn the_unit_wants_docker_and_stays_hardened() {
    let path = repo().join("deploy/kennel-supervisord.service");
    let unit = std::fs::read_to_string(&path).unwrap();
    let directives: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    let has = |d: &str| directives.iter().any(|l| l.starts_with(d));
    assert!(has("Wants=docker.service"), "Wants=docker.service");
    assert!(has("After=docker.service"), "After=docker.service");
    assert!(
        !has("Requires=") && !has("BindsTo="),
        "a Docker restart must not stop kennel"
    );
    for d in [
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER",
        "WatchdogSec=",
        "Type=notify",
    ] {
        assert!(has(d), "{d} missing from {}", path.display());
    }

    if !have_systemd_analyze("the_unit_wants_docker_and_stays_hardened") {
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let report = text(&out.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for").nth(1))
        .and_then(|rest| rest.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no score in: {report}{}", text(&out.stderr)));
    assert!(
        score <= 2.5,
        "exposure {score} > 2.5 (docs/operations.md says 2.5): {report}"
    );
}
