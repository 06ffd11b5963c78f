//! The notification reader on hostile directory contents (the sandbox writes them): a 10 MiB
//! file, a symlink to /etc/passwd, a FIFO, a hard link, terminal escape sequences, bad formats
//! and a flood of 1,000 files.

#![allow(clippy::unwrap_used)] // test code: a failed setup step should just fail the test

use std::path::Path;
use std::time::{Duration, Instant};

use kennel_supervisord::notify::format::{self, Level};
use kennel_supervisord::notify::{
    NotifyHub, Outcome, RATE_BURST, RateLimiter, SUMMARY_EVERY, scan_dir,
};

fn write(dir: &Path, name: &str, body: &[u8]) {
    std::fs::write(dir.join(name), body).unwrap();
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn one(dir: &Path) -> Outcome {
    let mut lim = RateLimiter::new(Instant::now());
    let scan = scan_dir(dir, &mut lim, Instant::now()).unwrap();
    assert_eq!(scan.outcomes.len(), 1, "{:?}", scan.outcomes);
    scan.outcomes.into_iter().next().unwrap()
}

#[test]
fn a_valid_file_is_read_and_removed() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "1.msg",
        b"kennel-notify/1 complete\nall tests pass\n",
    );
    match one(d.path()) {
        Outcome::Message(p) => {
            assert_eq!(p.level, Level::Complete);
            assert_eq!(p.message, "all tests pass");
        }
        o => panic!("{o:?}"),
    }
    assert!(entries(d.path()).is_empty());
}

#[test]
fn a_10_mib_file_is_refused_unread_and_removed() {
    let d = tempfile::tempdir().unwrap();
    let mut big = b"kennel-notify/1 error\n".to_vec();
    big.resize(10 * 1024 * 1024, b'a');
    write(d.path(), "big.msg", &big);
    match one(d.path()) {
        Outcome::Refused { name, reason } => {
            assert_eq!(name, "big.msg");
            assert!(reason.contains("10485760 bytes"), "{reason}");
        }
        o => panic!("{o:?}"),
    }
    assert!(entries(d.path()).is_empty());
}

#[test]
fn a_symlink_to_etc_passwd_is_refused_never_followed_and_the_target_kept() {
    let d = tempfile::tempdir().unwrap();
    let before = std::fs::read("/etc/passwd").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", d.path().join("passwd.msg")).unwrap();
    match one(d.path()) {
        Outcome::Refused { reason, .. } => assert!(reason.contains("symlink"), "{reason}"),
        o => panic!("{o:?}"),
    }
    assert!(entries(d.path()).is_empty(), "the link is removed");
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), before);
}

#[test]
fn a_fifo_a_socket_and_a_hard_link_are_refused_without_blocking() {
    let d = tempfile::tempdir().unwrap();
    nix::unistd::mkfifo(&d.path().join("a-fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(d.path().join("b-sock")).unwrap();
    let other = tempfile::tempdir().unwrap();
    write(other.path(), "orig", b"kennel-notify/1 error\nlinked\n");
    std::fs::hard_link(other.path().join("orig"), d.path().join("c-link")).unwrap();
    let started = Instant::now();
    let mut lim = RateLimiter::new(Instant::now());
    let scan = scan_dir(d.path(), &mut lim, Instant::now()).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the FIFO blocked"
    );
    let reasons: Vec<String> = scan
        .outcomes
        .iter()
        .map(|o| match o {
            Outcome::Refused { reason, .. } => reason.clone(),
            o => panic!("{o:?}"),
        })
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("FIFO"), "{reasons:?}");
    assert!(
        reasons[1].contains("socket") || reasons[1].contains("cannot open"),
        "{reasons:?}"
    );
    assert!(reasons[2].contains("2 hard links"), "{reasons:?}");
    assert!(entries(d.path()).is_empty());
    assert!(other.path().join("orig").exists());
}

#[test]
fn terminal_escape_sequences_and_control_characters_are_stripped() {
    let d = tempfile::tempdir().unwrap();
    let evil = "kennel-notify/1 clarification\n\u{1b}]0;pwned title\u{7}\u{1b}[31mred\u{1b}[0m \
                \u{1b}[2Jcleared\u{1b}P+q\u{1b}\\ \u{202e}desrever\u{7}\u{8}\r\u{9b}31m\u{0}ok\t\u{1b}c\n";
    write(d.path(), "evil.msg", evil.as_bytes());
    match one(d.path()) {
        Outcome::Message(p) => {
            assert_eq!(p.message, "red cleared desrever31mok");
            assert!(!p.message.chars().any(char::is_control), "{:?}", p.message);
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn bad_formats_are_refused_with_the_reason() {
    for (body, want) in [
        (&b"kennel-notify/1 error\n\xff\xfe"[..], "not UTF-8"),
        (b"error\nhello", "first line"),
        (b"kennel-notify/1 info\nhello", "unknown level"),
        (b"kennel-notify/1 error extra\nhello", "first line"),
        (b"kennel-notify/1 error\n \x1b[0m \n", "empty message"),
    ] {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "x.msg", body);
        match one(d.path()) {
            Outcome::Refused { reason, .. } => assert!(reason.contains(want), "{reason} / {want}"),
            o => panic!("{body:?}: {o:?}"),
        }
    }
}

#[test]
fn files_being_written_and_directories_are_left_alone() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), ".123.tmp", b"kennel-notify/1 error\nhalf");
    std::fs::create_dir(d.path().join("sub")).unwrap();
    write(&d.path().join("sub"), "x", b"x");
    let mut lim = RateLimiter::new(Instant::now());
    let scan = scan_dir(d.path(), &mut lim, Instant::now()).unwrap();
    assert!(scan.outcomes.is_empty(), "{:?}", scan.outcomes);
    assert_eq!(entries(d.path()), [".123.tmp", "sub"]);
}

#[test]
fn a_flood_of_1000_files_gives_the_burst_and_one_summary() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..1000 {
        write(
            d.path(),
            &format!("{i:04}.msg"),
            format!("kennel-notify/1 error\nflood {i}\n").as_bytes(),
        );
    }
    let hub = NotifyHub::default();
    let t0 = Instant::now();
    // Within the second the flood arrives in: several passes.
    for step in 0..5 {
        hub.scan("envx", d.path(), t0 + Duration::from_millis(200 * step))
            .unwrap();
    }
    assert!(
        entries(d.path()).is_empty(),
        "every file is processed and removed"
    );
    let shown = hub.since(Some(0), None).notifications;
    assert_eq!(shown.len(), RATE_BURST as usize, "{shown:?}");
    assert!(shown.iter().all(|n| n.level == "error" && n.env == "envx"));
    // The summary comes once, after SUMMARY_EVERY.
    let later = t0 + SUMMARY_EVERY + Duration::from_millis(100);
    hub.scan("envx", d.path(), later).unwrap();
    hub.scan("envx", d.path(), later + Duration::from_secs(6))
        .unwrap();
    let all = hub.since(Some(0), None).notifications;
    let summaries: Vec<_> = all.iter().filter(|n| n.level == "info").collect();
    assert_eq!(summaries.len(), 1, "{all:?}");
    assert!(
        summaries[0]
            .message
            .starts_with(&format!("{} more notification", 1000 - RATE_BURST)),
        "{}",
        summaries[0].message
    );
    // Another environment has its own limit.
    write(d.path(), "z.msg", b"kennel-notify/1 complete\nother env\n");
    hub.scan("envy", d.path(), later).unwrap();
    assert_eq!(hub.since(Some(0), Some("envy")).notifications.len(), 1);
}

#[test]
fn messages_are_cut_at_the_limit() {
    let long = "x".repeat(3000);
    let p = format::parse(format!("kennel-notify/1 error\n{long}").as_bytes()).unwrap();
    assert_eq!(p.message.chars().count(), format::MAX_MESSAGE_CHARS);
    assert!(p.message.ends_with('…'));
}

#[tokio::test]
async fn a_waiting_watcher_gets_a_notification_as_it_arrives() {
    let hub = std::sync::Arc::new(NotifyHub::default());
    let start = hub.since(None, None).next;
    let h = hub.clone();
    let waiter = tokio::spawn(async move {
        h.wait_since(Some(start), Some("a"), Duration::from_secs(10), || false)
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    hub.deliver("b", Level::Error, "not for a".into(), Instant::now());
    hub.deliver(
        "a",
        Level::Clarification,
        "which db?".into(),
        Instant::now(),
    );
    let got = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.notifications.len(), 1, "{got:?}");
    assert_eq!(got.notifications[0].message, "which db?");
    assert_eq!(got.next, start + 2);
}

fn deny_line(host: &str, port: u16, decision: &str) -> String {
    format!(
        "{{\"time\":\"2026-11-30T22:00:00.000Z\",\"host\":\"{host}\",\"port\":{port},\"decision\":\"{decision}\",\"reason\":\"not_in_allowlist\"}}\n"
    )
}

#[test]
fn a_burst_of_denials_notifies_once_per_window_and_history_does_not() {
    use kennel_supervisord::notify::DENIAL_WINDOW;
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("access.log");
    // Denials from before the watch started are history.
    std::fs::write(&log, deny_line("old.example", 443, "deny").repeat(50)).unwrap();
    let hub = NotifyHub::default();
    let t0 = Instant::now();
    hub.check_denials("e", &log, t0, true);
    assert!(hub.since(Some(0), None).notifications.is_empty());

    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    for i in 0..6 {
        f.write_all(deny_line(&format!("h{}.example\\u001b[2J", i % 2), 443, "deny").as_bytes())
            .unwrap();
    }
    f.write_all(deny_line("ok.example", 443, "allow").as_bytes())
        .unwrap();
    // Within the window: not looked at yet.
    hub.check_denials("e", &log, t0 + Duration::from_secs(1), true);
    assert!(hub.since(Some(0), None).notifications.is_empty());
    let t1 = t0 + DENIAL_WINDOW;
    hub.check_denials("e", &log, t1, true);
    let got = hub.since(Some(0), None).notifications;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].level, "info");
    assert_eq!(
        got[0].message,
        "the proxy denied 6 requests in 5s (h0.example:443, h1.example:443); `kennel denials e` lists them"
    );
    // Fewer than the burst: nothing; a rotated log is read from its start.
    std::fs::rename(&log, d.path().join("access.log.1")).unwrap();
    std::fs::write(&log, deny_line("a.example", 80, "deny").repeat(2)).unwrap();
    hub.check_denials("e", &log, t1 + DENIAL_WINDOW, true);
    assert_eq!(hub.since(Some(0), None).notifications.len(), 1);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(deny_line("b.example", 80, "deny").repeat(7).as_bytes())
        .unwrap();
    hub.check_denials("e", &log, t1 + DENIAL_WINDOW * 2, true);
    let got = hub.since(Some(0), None).notifications;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[1].message.starts_with("the proxy denied 7 requests"),
        "{got:?}"
    );
}
