//! The interactive prompts of `kennel policy import` and `kennel allow --from-denials --select`,
//! driven through a real terminal: the real `kennel` binary runs under `script(1)`, which gives
//! it a pseudo-terminal as stdin and feeds it the test's answers. The daemon is in-process with
//! the in-memory FakeBackend (no Docker needed).

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should just fail the test

mod support;
use support::TestDaemon;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

impl TestDaemon {
    /// Every file of the environment's policy directory (policy.toml and the imported lists).
    fn policy(&self, env: &str) -> String {
        let dir = self.dir.path().join("state/envs").join(env).join("policy");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| {
                format!(
                    "== {}\n{}",
                    p.display(),
                    std::fs::read_to_string(p).unwrap()
                )
            })
            .collect()
    }

    /// `kennel ARGS…` with stdin and stdout pipes (no terminal).
    fn kennel(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kennel"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("KENNEL_SOCKET")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `kennel ARGS…` on a pseudo-terminal (`script -qec`), `answers` typed into it.
    fn kennel_on_terminal(&self, args: &[&str], answers: &str) -> (Option<i32>, String) {
        let mut line = shell_quote(env!("CARGO_BIN_EXE_kennel"));
        line.push_str(" --socket ");
        line.push_str(&shell_quote(self.socket.to_str().unwrap()));
        for a in args {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        let mut child = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env_remove("KENNEL_SOCKET")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script(1) from util-linux");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(answers.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).replace('\r', ""),
        )
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn up(d: &TestDaemon, name: &str, whitelist: &str) -> tempfile::TempDir {
    let ws = tempfile::tempdir().unwrap();
    std::fs::create_dir(ws.path().join(".devcontainer")).unwrap();
    std::fs::write(ws.path().join(".devcontainer/whitelist.txt"), whitelist).unwrap();
    let o = d.kennel(&[
        "up",
        "--workspace",
        ws.path().to_str().unwrap(),
        "--name",
        name,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ws
}

fn has_host(policy: &str, host: &str) -> bool {
    policy
        .lines()
        .any(|l| l.trim() == host || l.contains(&format!("\"{host}\"")))
}

#[test]
fn policy_import_shows_the_diff_and_applies_only_after_yes_on_a_terminal() {
    let d = TestDaemon::start();
    let ws = up(&d, "imp", "old.example\n");
    assert!(has_host(&d.policy("imp"), "old.example"));
    // The agent edits the project's whitelist.
    std::fs::write(
        ws.path().join(".devcontainer/whitelist.txt"),
        "new.example\n",
    )
    .unwrap();

    // "n": the diff is shown, nothing is applied.
    let (code, out) = d.kennel_on_terminal(&["policy", "import", "imp"], "n\n");
    assert!(out.contains("+ new.example"), "{out}");
    assert!(out.contains("- old.example"), "{out}");
    assert!(
        out.contains("apply these changes to \"imp\"? [y/N]"),
        "{out}"
    );
    assert!(out.contains("not applied"), "{out}");
    assert_eq!(code, Some(1), "{out}");
    let policy = d.policy("imp");
    assert!(!has_host(&policy, "new.example"), "{policy}");
    assert!(has_host(&policy, "old.example"), "{policy}");

    // Enter alone is "no" too.
    let (code, out) = d.kennel_on_terminal(&["policy", "import", "imp"], "\n");
    assert_eq!(code, Some(1), "{out}");
    assert!(!has_host(&d.policy("imp"), "new.example"));

    // Without a terminal and without --yes: refused, nothing applied.
    let o = d.kennel(&["policy", "import", "imp"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--yes"),
        "{o:?}"
    );
    assert!(!has_host(&d.policy("imp"), "new.example"));

    // "y": applied.
    let (code, out) = d.kennel_on_terminal(&["policy", "import", "imp"], "y\n");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("applied: 1 added, 1 removed"), "{out}");
    let policy = d.policy("imp");
    assert!(has_host(&policy, "new.example"), "{policy}");
    assert!(!has_host(&policy, "old.example"), "{policy}");

    // --yes in a script: applied without asking.
    std::fs::write(
        ws.path().join(".devcontainer/whitelist.txt"),
        "third.example\n",
    )
    .unwrap();
    let o = d.kennel(&["policy", "import", "imp", "--yes"]);
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("+ third.example") && !out.contains("[y/N]"),
        "{out}"
    );
    assert!(has_host(&d.policy("imp"), "third.example"));
}

#[test]
fn allow_from_denials_select_asks_about_each_entry_on_a_terminal() {
    let d = TestDaemon::start();
    let _ws = up(&d, "sel", "base.example\n");
    let log = d.dir.path().join("state/envs/sel/logs/access.log");
    let line = |time: &str, host: &str| {
        format!(
            "{{\"time\":\"{time}\",\"host\":\"{host}\",\"port\":443,\"decision\":\"deny\",\"reason\":\"not_in_allowlist\"}}\n"
        )
    };
    // Newest first: wanted.example is asked about first.
    std::fs::write(
        &log,
        line("2026-11-30T22:00:00.000Z", "unwanted.example")
            + &line("2026-11-30T22:00:01.000Z", "wanted.example"),
    )
    .unwrap();

    // Without a terminal --select refuses.
    let o = d.kennel(&["allow", "sel", "--from-denials", "--select"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--select asks on a terminal"),
        "{o:?}"
    );

    let (code, out) =
        d.kennel_on_terminal(&["allow", "sel", "--from-denials", "--select"], "y\nn\n");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("allow wanted.example:443? [y/N]"), "{out}");
    assert!(out.contains("allow unwanted.example:443? [y/N]"), "{out}");
    let policy = d.policy("sel");
    assert!(has_host(&policy, "wanted.example"), "{policy}");
    assert!(!has_host(&policy, "unwanted.example"), "{policy}");
}
