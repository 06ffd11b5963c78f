//! Reload: manual reload, rename-replace, invalid edit keeps the old policy, delete then
//! recreate. Every wait polls with a deadline.

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use kennel_policy::reload::{ReloadEvent, Reloader};
use kennel_policy::{LegacyEnv, Target};

use super::support::Dir;

const DEADLINE: Duration = Duration::from_secs(20);

fn allowed(r: &Reloader, t: &str) -> bool {
    r.store()
        .current()
        .decide(&Target::parse_authority(t).unwrap())
        .is_allowed()
}

fn setup() -> (Dir, Arc<Reloader>) {
    let d = Dir::new();
    d.write("list.txt", "one.example\n");
    let p = d.write("policy.toml", "include = [\"list.txt\"]\n");
    let r = Arc::new(Reloader::new(Some(p), LegacyEnv::default()).unwrap());
    (d, r)
}

/// Waits for an event matching `pred`, up to DEADLINE.
fn wait_event(rx: &mpsc::Receiver<String>, pred: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ev) if pred(&ev) => return ev,
            Ok(_) => continue,
            Err(e) => panic!("no matching reload event before the deadline: {e}"),
        }
    }
}

/// Polls `cond` until it holds, up to DEADLINE.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            Instant::now() < end,
            "not reached before the deadline: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn describe(ev: &ReloadEvent) -> String {
    match ev {
        ReloadEvent::Reloaded { generation } => format!("reloaded {generation}"),
        ReloadEvent::Unchanged => "unchanged".into(),
        ReloadEvent::Failed(e) => format!("failed {e}"),
    }
}

fn watch(r: &Arc<Reloader>) -> (kennel_policy::reload::WatchGuard, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let guard = r
        .clone()
        .watch(Duration::from_millis(50), move |ev| {
            let _ = tx.lock().unwrap().send(describe(ev));
        })
        .unwrap();
    (guard, rx)
}

#[test]
fn manual_reload_unchanged_then_reloaded() {
    let (d, r) = setup();
    let store = r.store();
    assert_eq!(store.generation(), 1);
    assert!(matches!(r.reload(), ReloadEvent::Unchanged));
    assert_eq!(store.generation(), 1);
    d.write("list.txt", "two.example\n");
    assert!(matches!(
        r.reload(),
        ReloadEvent::Reloaded { generation: 2 }
    ));
    assert!(allowed(&r, "two.example:443"));
    assert!(!allowed(&r, "one.example:443"));
    d.write("list.txt", "bad..example\n");
    match r.reload() {
        ReloadEvent::Failed(e) => assert!(d.strip(&e.to_string()).starts_with("list.txt:1:5: ")),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.generation(), 2);
    assert!(allowed(&r, "two.example:443"));
}

#[test]
fn rename_replace_is_picked_up() {
    let (d, r) = setup();
    let (_guard, rx) = watch(&r);
    d.replace("list.txt", "one.example\nrenamed.example\n");
    let ev = wait_event(&rx, |e| e.starts_with("reloaded"));
    assert_eq!(ev, "reloaded 2");
    assert!(allowed(&r, "renamed.example:443"));
    assert_eq!(r.store().generation(), 2);
    // Renames are atomic, so no intermediate state is ever loaded.
    // The policy file itself, replaced by rename.
    d.replace(
        "policy.toml",
        "include = [\"list.txt\"]\n[allow]\nhosts = [\"toml.example\"]\n",
    );
    wait_event(&rx, |e| e == "reloaded 3");
    assert!(allowed(&r, "toml.example:443"));
}

#[test]
fn invalid_edit_keeps_old_policy() {
    let (d, r) = setup();
    let (_guard, rx) = watch(&r);
    d.replace("policy.toml", "include = [\"list.txt\"]\nbogus = 1\n");
    let ev = wait_event(&rx, |e| e.starts_with("failed"));
    assert!(
        d.strip(&ev)
            .starts_with("failed policy.toml:2:1: unknown field `bogus`"),
        "{ev}"
    );
    assert_eq!(r.store().generation(), 1);
    assert!(allowed(&r, "one.example:443"));
    // Fixing it reloads.
    d.replace(
        "policy.toml",
        "include = [\"list.txt\"]\n[allow]\nhosts = [\"fixed.example\"]\n",
    );
    wait_event(&rx, |e| e == "reloaded 2");
    assert!(allowed(&r, "fixed.example:443") && allowed(&r, "one.example:443"));
}

#[test]
fn delete_then_recreate() {
    let (d, r) = setup();
    let (_guard, rx) = watch(&r);
    std::fs::remove_file(d.path("list.txt")).unwrap();
    let ev = wait_event(&rx, |e| e.starts_with("failed"));
    assert!(ev.contains("cannot read include"), "{ev}");
    assert!(
        allowed(&r, "one.example:443"),
        "old policy kept while the include is missing"
    );
    d.write("list.txt", "recreated.example\n");
    // A plain write may be seen half-done; wait for the complete content.
    eventually("recreated list in force", || {
        allowed(&r, "recreated.example:443")
    });
    assert!(r.store().generation() >= 2);
    assert!(!allowed(&r, "one.example:443"));
}

#[test]
fn new_include_directory_is_watched() {
    let (d, r) = setup();
    let (_guard, rx) = watch(&r);
    std::fs::create_dir(d.path("sub")).unwrap();
    d.replace("sub/extra.txt", "extra.example\n");
    d.replace(
        "policy.toml",
        "include = [\"list.txt\", \"sub/extra.txt\"]\n",
    );
    wait_event(&rx, |e| e == "reloaded 2");
    assert!(allowed(&r, "extra.example:443"));
    d.replace("sub/extra.txt", "extra2.example\n");
    wait_event(&rx, |e| e == "reloaded 3");
    assert!(allowed(&r, "extra2.example:443"));
}

#[test]
fn embedded_default_reloader() {
    let r = Reloader::new(None, LegacyEnv::default()).unwrap();
    assert!(matches!(r.reload(), ReloadEvent::Unchanged));
    assert!(allowed(&r, "github.com:443"));
}

/// The version hash is public (the proxy's `/policy` shows it): it must not be a hash of the
/// credentials, which a short password would let anyone brute-force offline. A changed secret
/// must still be picked up by a reload.
#[test]
fn version_hash_hides_credentials_but_a_credential_change_reloads() {
    let d = Dir::new();
    d.write("creds.txt", "alice:first-secret\n");
    d.write(
        "policy.toml",
        "[upstream]\ndefault = \"socks5h://127.0.0.1:1080\"\ndefault_credentials = { file = \"creds.txt\" }\n",
    );
    let r = Reloader::new(Some(d.path("policy.toml")), LegacyEnv::default()).unwrap();
    let before = r.store().current().version_hash().to_string();

    d.write("creds.txt", "alice:second-secret\n");
    assert!(
        matches!(r.reload(), ReloadEvent::Reloaded { generation: 2 }),
        "a new password must be applied"
    );
    let policy = r.store().current();
    assert_eq!(
        policy.version_hash(),
        before,
        "the password changed the public hash"
    );
    assert_eq!(
        policy
            .default_upstream()
            .credentials()
            .map(|c| c.password.as_str()),
        Some("second-secret")
    );
}

/// Issue 9, item 6: a file the proxy writes (its access log) in a watched policy directory made
/// the watcher re-read an invalid policy and report the same failure every debounce period,
/// forever. Only a change of a file the last attempt read reloads; an unchanged invalid policy
/// is reported once.
#[test]
fn writes_beside_an_unchanged_invalid_policy_do_not_reload_it() {
    let (d, r) = setup();
    let (_guard, rx) = watch(&r);
    d.replace("policy.toml", "include = [\"list.txt\"]\nbogus = 1\n");
    wait_event(&rx, |e| e.starts_with("failed"));
    // Ten appends to a non-policy file in the same directory, over several debounce periods.
    for i in 0..10 {
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.path("access.log"))
            .unwrap();
        writeln!(log, "line {i}").unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    let quiet_until = Instant::now() + Duration::from_millis(400);
    while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
        if let Ok(ev) = rx.recv_timeout(left) {
            panic!("an unchanged policy was reloaded again: {ev}");
        }
    }
    // Touching a source without changing it does not reload either.
    d.replace("list.txt", "one.example\n");
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    // A changed source reloads (and a still-invalid one is reported again, once).
    d.replace("policy.toml", "include = [\"list.txt\"]\nbogus = 2\n");
    wait_event(&rx, |e| e.starts_with("failed"));
    d.replace(
        "policy.toml",
        "include = [\"list.txt\"]\n[allow]\nhosts = [\"fixed.example\"]\n",
    );
    wait_event(&rx, |e| e == "reloaded 2");
    assert!(allowed(&r, "fixed.example:443"));
}

/// The files an invalid policy tried to read count as its sources: creating the missing include
/// it names reloads it.
#[test]
fn reload_if_changed_follows_the_files_the_last_attempt_read() {
    let (d, r) = setup();
    assert!(r.reload_if_changed().is_none(), "nothing changed");
    d.write("access.log", "x\n");
    assert!(r.reload_if_changed().is_none(), "not a policy source");
    d.replace("policy.toml", "include = [\"list.txt\", \"later.txt\"]\n");
    match r.reload_if_changed() {
        Some(ReloadEvent::Failed(e)) => assert!(e.to_string().contains("later.txt"), "{e}"),
        other => panic!("expected a failed reload, got {other:?}"),
    }
    assert!(
        r.reload_if_changed().is_none(),
        "still the same invalid policy"
    );
    d.write("later.txt", "later.example\n");
    assert!(matches!(
        r.reload_if_changed(),
        Some(ReloadEvent::Reloaded { generation: 2 })
    ));
    assert!(allowed(&r, "later.example:443"));
    assert!(r.reload_if_changed().is_none());
}

/// Issue 9, item 6 (the other half of a busy directory): the debounce waited for a quiet
/// directory, so an access log written more often than the debounce period postponed a policy
/// edit forever. The wait is capped.
#[test]
fn a_continuously_written_file_beside_the_policy_does_not_postpone_a_reload() {
    use std::io::Write;
    let (d, r) = setup();
    let (_guard, rx) = watch(&r);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), d.path("access.log"));
        std::thread::spawn(move || {
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            // Every 10 ms (debounce is 50 ms), for at most DEADLINE.
            let end = Instant::now() + DEADLINE;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
                writeln!(log, "request").unwrap();
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    d.replace(
        "policy.toml",
        "include = [\"list.txt\"]\n[allow]\nhosts = [\"busy.example\"]\n",
    );
    let edited = Instant::now();
    wait_event(&rx, |e| e == "reloaded 2");
    let took = edited.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(allowed(&r, "busy.example:443"));
    assert!(
        took < Duration::from_secs(5),
        "reload postponed by {took:?}"
    );
}

/// A Kubernetes ConfigMap volume as the kubelet lays it out: each key is a symlink
/// `KEY -> ..data/KEY`, `..data` is a symlink to a timestamped directory holding the files.
/// An update writes a new timestamped directory, points a `..data_tmp` symlink at it, renames
/// `..data_tmp` over `..data` (one atomic step for every key at once) and removes the old
/// directory. The watcher must see that — no event touches `policy.toml` itself — and must
/// never load a mix of old and new keys.
struct ConfigMap {
    dir: tempfile::TempDir,
    version: u32,
}

impl ConfigMap {
    fn new(files: &[(&str, &str)]) -> ConfigMap {
        let mut cm = ConfigMap {
            dir: tempfile::tempdir().unwrap(),
            version: 0,
        };
        cm.update(files);
        for (key, _) in files {
            std::os::unix::fs::symlink(format!("..data/{key}"), cm.dir.path().join(key)).unwrap();
        }
        cm
    }

    /// The kubelet's atomic update (AtomicWriter in pkg/volume/util).
    fn update(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let root = self.dir.path();
        let stamped = format!(
            "..2026_11_30_22_00_{:02}.{}",
            self.version,
            1000 + self.version
        );
        std::fs::create_dir(root.join(&stamped)).unwrap();
        for (key, content) in files {
            std::fs::write(root.join(&stamped).join(key), content).unwrap();
        }
        let old = std::fs::read_link(root.join("..data")).ok();
        std::os::unix::fs::symlink(&stamped, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(root.join(old)).unwrap();
        }
    }

    fn policy(&self) -> std::path::PathBuf {
        self.dir.path().join("policy.toml")
    }
}

#[test]
fn a_configmap_update_by_data_symlink_swap_is_picked_up() {
    let mut cm = ConfigMap::new(&[
        ("policy.toml", "include = [\"list.txt\"]\n"),
        ("list.txt", "one.example\n"),
    ]);
    let r = Arc::new(Reloader::new(Some(cm.policy()), LegacyEnv::default()).unwrap());
    assert!(allowed(&r, "one.example:443"));
    let (_guard, rx) = watch(&r);

    // Both keys change in one swap: the include and the policy that names it.
    cm.update(&[
        (
            "policy.toml",
            "include = [\"list.txt\"]\n[allow]\nhosts = [\"policy.example\"]\n",
        ),
        ("list.txt", "two.example\n"),
    ]);
    assert_eq!(
        wait_event(&rx, |e| !e.starts_with("unchanged")),
        "reloaded 2"
    );
    assert!(allowed(&r, "two.example:443") && allowed(&r, "policy.example:443"));
    assert!(!allowed(&r, "one.example:443"));

    // Again: the directory the first update used is gone, the watch must still hold.
    cm.update(&[
        ("policy.toml", "include = [\"list.txt\"]\n"),
        ("list.txt", "three.example\n"),
    ]);
    assert_eq!(
        wait_event(&rx, |e| !e.starts_with("unchanged")),
        "reloaded 3"
    );
    assert!(allowed(&r, "three.example:443"));
    assert!(!allowed(&r, "policy.example:443") && !allowed(&r, "two.example:443"));

    // An invalid update keeps the policy in force, and a fixed one is loaded after it.
    cm.update(&[
        ("policy.toml", "include = [\"list.txt\"]\nbogus = 1\n"),
        ("list.txt", "x.example\n"),
    ]);
    let ev = wait_event(&rx, |e| !e.starts_with("unchanged"));
    assert!(
        ev.starts_with("failed") && ev.contains("unknown field `bogus`"),
        "{ev}"
    );
    assert!(allowed(&r, "three.example:443"));
    cm.update(&[
        ("policy.toml", "include = [\"list.txt\"]\n"),
        ("list.txt", "four.example\n"),
    ]);
    assert_eq!(
        wait_event(&rx, |e| !e.starts_with("unchanged")),
        "reloaded 4"
    );
    assert!(allowed(&r, "four.example:443") && !allowed(&r, "three.example:443"));
}
