//! Fuzz the devcontainer.json reader (`devcontainer::parse_str`, JSON with comments): any input
//! gives a configuration or a located error, never a panic; what is accepted names no build
//! context outside the workspace.
#![no_main]

use kennel_container::devcontainer::parse_str;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let workspace = std::path::Path::new("/nonexistent-kennel-fuzz");
    let path = workspace.join(".devcontainer/devcontainer.json");
    match parse_str(text, &path, workspace, false) {
        Ok(dc) => {
            let _ = dc.warning();
            if let Some(b) = &dc.build {
                assert!(b.context.starts_with(workspace), "{:?}", b.context);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
