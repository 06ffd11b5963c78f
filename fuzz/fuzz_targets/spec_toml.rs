//! Fuzz the environment spec parser (`EnvSpec::parse_str`, kennel.toml): any input gives a spec
//! or an error, never a panic; an accepted spec has a valid environment name, and a syntax or
//! value error points at a line and column inside the text.
#![no_main]

use kennel_container::error::SpecError;
use kennel_container::spec::{EnvSpec, validate_env_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A workspace that does not exist: files the spec names (whitelists, .env, credentials)
    // cannot resolve, so nothing of the fuzzing host is read.
    let base = std::path::Path::new("/nonexistent-kennel-fuzz");
    let path = base.join("kennel.toml");
    match EnvSpec::parse_str(text, &path, base) {
        Ok(spec) => {
            assert!(validate_env_name(&spec.name).is_ok(), "{:?}", spec.name);
        }
        Err(SpecError::Invalid { line, column, .. }) => {
            let lines = text.split('\n').count() as u32;
            assert!(line >= 1 && column >= 1, "{line}:{column}");
            assert!(line <= lines + 1, "line {line} of {lines}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
