//! Fuzz the compose import (`kennel_container::compose::parse_str`): any input must give an
//! import or a located error, never a panic; an accepted import mounts nothing outside the
//! workspace and lists every service after those it depends on.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The workspace does not exist, so no bind mount, env_file or build can resolve: a file
    // naming one is refused cleanly instead of reading the fuzzing host's files.
    let workspace = std::path::Path::new("/nonexistent-kennel-fuzz");
    let path = workspace.join(".devcontainer/docker-compose.yaml");
    let hint = kennel_container::compose::SandboxHint::default();
    match kennel_container::compose::parse_str(text, &path, workspace, &hint) {
        Ok(imp) => {
            let mut started = std::collections::BTreeSet::new();
            for s in &imp.services {
                assert!(s.run.binds.iter().all(|b| b.source.starts_with(workspace)));
                assert!(s.run.depends_on.iter().all(|d| started.contains(&d.service)));
                started.insert(s.name.clone());
            }
            let _ = imp.warning();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
