//! Cross-crate end-to-end tests: one test binary.
