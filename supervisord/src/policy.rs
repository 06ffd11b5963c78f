//! The environment's effective policy directory (written by the container crate's
//! `policy_dir` module: `policy.toml` + the embedded default list + the imported project
//! whitelist + local additions).

pub use kennel_container::policy_dir::write_effective_policy;
