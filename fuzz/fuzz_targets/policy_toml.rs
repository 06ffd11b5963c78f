//! Fuzz the policy TOML parser: any input must give a policy or a located error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(src) = std::str::from_utf8(data) {
        // The origin's directory does not exist, so includes fail cleanly instead of reading
        // arbitrary files.
        let origin = std::path::Path::new("/nonexistent-kennel-fuzz/policy.toml");
        if let Err(e) = kennel_policy::Policy::from_toml_str(src, origin) {
            let _ = e.to_string();
        }
    }
});
