//! `kennel notify watch` (the real binary, printed mode) against an in-process daemon with the
//! in-memory FakeBackend: notification files in an environment's directory reach the watcher
//! through the daemon's socket — also for a user who cannot read the daemon's state directory —
//! cleaned, rate-limited, and removed. No Docker needed.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should just fail the test

mod support;
use support::TestDaemon;

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use kennel_supervisord::auth::Authorizer;

impl TestDaemon {
    fn notify_dir(&self, env: &str) -> PathBuf {
        self.dir
            .path()
            .join("state/envs")
            .join(env)
            .join("notifications")
    }
}

fn kennel(socket: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kennel"));
    cmd.arg("--socket").arg(socket).env_remove("KENNEL_SOCKET");
    cmd
}

/// A running `kennel notify watch`, its stdout lines on a channel; killed on drop.
struct Watch {
    child: Child,
    lines: Receiver<String>,
}

impl Watch {
    fn start(mut cmd: Command) -> Watch {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The first call only learns where "now" is.
        std::thread::sleep(Duration::from_millis(500));
        Watch { child, lines }
    }

    fn next(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn up(d: &TestDaemon, name: &str) -> tempfile::TempDir {
    let ws = tempfile::tempdir().unwrap();
    let o = kennel(&d.socket)
        .args([
            "up",
            "--workspace",
            ws.path().to_str().unwrap(),
            "--name",
            name,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ws
}

#[test]
fn notify_watch_prints_cleaned_notifications_within_a_second() {
    let d = TestDaemon::start_with(Authorizer::new(0, [], []));
    let ws = up(&d, "demo");
    let dir = d.notify_dir("demo");

    // The sandbox gets the directory read-write and the helper read-only, nothing else new.
    let plan = d.fake.plan("demo").unwrap();
    let mounts: Vec<(String, bool)> = plan
        .spec
        .mounts
        .iter()
        .map(|m| (m.target.clone(), m.rw))
        .collect();
    assert_eq!(
        mounts,
        [
            ("/workspace/.notifications".to_string(), true),
            ("/usr/local/bin/kennel-notify".to_string(), false)
        ]
    );
    assert_eq!(plan.spec.mounts[0].source, dir);
    assert!(
        ws.path().join(".notifications").is_dir(),
        "the mount point exists"
    );

    let w = Watch::start({
        let mut c = kennel(&d.socket);
        c.args(["notify", "watch", "demo", "--print", "--poll-secs", "1"]);
        c
    });
    std::fs::write(
        dir.join("1.msg"),
        "kennel-notify/1 clarification\n\u{1b}[31mwhich\u{1b}[0m database\u{7}?\n",
    )
    .unwrap();
    let t = Instant::now();
    let line = w.next(Duration::from_secs(3)).expect("a line");
    assert!(t.elapsed() <= Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(
        line.ends_with("[demo] clarification: which database?"),
        "{line:?}"
    );
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "processed files are removed"
    );

    // Another environment's notification is not this watcher's.
    let _ws2 = up(&d, "other");
    std::fs::write(
        d.notify_dir("other").join("1.msg"),
        "kennel-notify/1 error\nnope\n",
    )
    .unwrap();
    std::fs::write(dir.join("2.msg"), "kennel-notify/1 complete\ndone\n").unwrap();
    let line = w.next(Duration::from_secs(3)).expect("a line");
    assert!(line.ends_with("[demo] complete: done"), "{line:?}");
}

#[test]
fn a_user_who_cannot_read_the_state_dir_watches_through_the_socket() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run the client as another uid");
        return;
    }
    let d = TestDaemon::start_with(Authorizer::new(0, [65534], []));
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let _ws = up(&d, "demo");
    let dir = d.notify_dir("demo");
    let bin = d.dir.path().join("kennel");
    std::fs::copy(env!("CARGO_BIN_EXE_kennel"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = Command::new(&bin);
    cmd.arg("--socket")
        .arg(&d.socket)
        .env_remove("KENNEL_SOCKET")
        .args(["notify", "watch", "--print", "--poll-secs", "1"])
        .uid(65534)
        .gid(65534);
    let w = Watch::start(cmd);
    // The state directory is the daemon's alone.
    let listing = Command::new("/bin/ls")
        .arg(&dir)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        !listing.status.success(),
        "uid 65534 could list {}",
        dir.display()
    );

    // A flood of 1,000 files in a second: the burst, then one summary.
    for i in 0..1000 {
        std::fs::write(
            dir.join(format!("{i:04}.msg")),
            format!("kennel-notify/1 error\nflood {i}\n"),
        )
        .unwrap();
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(9);
    while Instant::now() < deadline {
        if let Some(l) = w.next(Duration::from_millis(200)) {
            got.push(l);
            if got.iter().any(|l| l.contains("info:")) {
                break;
            }
        }
    }
    let shown = got.iter().filter(|l| l.contains("] error: flood ")).count();
    let summaries: Vec<&String> = got.iter().filter(|l| l.contains("] info: ")).collect();
    assert_eq!(shown, 5, "{got:?}");
    assert_eq!(summaries.len(), 1, "{got:?}");
    assert!(summaries[0].contains("995 more notification"), "{got:?}");
    assert!(std::fs::read_dir(&dir).unwrap().next().is_none());
}

#[test]
fn with_on_denials_a_burst_of_denials_notifies() {
    let d = TestDaemon::start_with(Authorizer::new(0, [], []));
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(
        ws.path().join("kennel.toml"),
        "name = \"loud\"\n[notify]\non_denials = true\n",
    )
    .unwrap();
    let o = kennel(&d.socket)
        .args(["up", "--workspace", ws.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let w = Watch::start({
        let mut c = kennel(&d.socket);
        c.args(["notify", "watch", "loud", "--print", "--poll-secs", "1"]);
        c
    });
    // The daemon's first look (right after `up`) takes the log as history.
    std::thread::sleep(Duration::from_millis(300));
    let log = d.dir.path().join("state/envs/loud/logs/access.log");
    let line = "{\"time\":\"2026-11-30T22:00:00.000Z\",\"host\":\"evil.example\",\"port\":443,\"decision\":\"deny\",\"reason\":\"not_in_allowlist\"}\n";
    std::fs::write(&log, line.repeat(8)).unwrap();
    let got = w
        .next(Duration::from_secs(8))
        .expect("a denial-burst notification");
    assert!(
        got.contains("[loud] info: the proxy denied 8 requests in 5s (evil.example:443); `kennel denials loud` lists them"),
        "{got}"
    );
}
