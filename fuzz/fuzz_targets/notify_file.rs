//! Fuzz the notification-file parser (files the sandbox writes): no panic; an accepted file has
//! a non-empty message within the length cap with no control character but `\n` and no
//! bidirectional override; cleaning is idempotent.
#![no_main]

// std-only module, included by path so the fuzz build does not pull in the daemon's
// dependencies (Docker client, HTTP server).
#[path = "../../api/src/notify/format.rs"]
#[allow(dead_code)]
mod format;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = format::parse(data) {
        assert!(!p.message.is_empty());
        assert!(p.message.chars().count() <= format::MAX_MESSAGE_CHARS);
        assert!(
            !p.message.chars().any(|c| c.is_control() && c != '\n'),
            "{:?}",
            p.message
        );
        assert!(!p.message.contains(['\u{202e}', '\u{2066}', '\u{1b}']));
        assert_eq!(format::sanitize(&p.message), p.message);
        assert_ne!(p.level, format::Level::Info);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let once = format::sanitize(s);
        assert_eq!(format::sanitize(&once), once);
    }
});
