//! Fuzz target parsing and decisions: no panics, and a parsed target's display re-parses to the
//! same target.
#![no_main]

use kennel_policy::{Policy, Target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let policy = Policy::embedded_default();
    if let Ok(t) = Target::parse_authority(s) {
        let again = Target::parse_authority(&t.to_string()).expect("display re-parses");
        assert_eq!(again, t);
        let _ = policy.decide(&t);
        let _ = policy.upstream_for(&t.host);
    }
    if let Ok((t, path)) = Target::parse_absolute_uri(s) {
        assert!(path.starts_with('/'));
        let _ = policy.decide(&t);
    }
    let _ = Target::from_host_port(s, 443);
});
