//! Fuzz list-file patterns and the migrate translator: no panics; translated patterns are valid.
#![no_main]

use kennel_policy::HostPattern;
use kennel_policy::migrate::{Outcome, migrate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    for line in s.lines() {
        if let Ok(p) = HostPattern::parse(line.trim()) {
            assert_eq!(HostPattern::parse(&p.to_string()).ok(), Some(p));
        }
    }
    for l in migrate(s).lines {
        if let Outcome::Translated { pattern, .. } = l.outcome {
            assert_eq!(HostPattern::parse(&pattern.to_string()).ok(), Some(pattern));
        }
    }
});
