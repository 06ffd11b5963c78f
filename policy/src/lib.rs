//! kennel-policy: the policy model, parser, matcher, address classifier and reload.
//! No network I/O.
//!
//! A [`Policy`] is an immutable value built from a TOML file (plus list-file includes and
//! legacy variables) or the embedded default list. [`Policy::decide`] answers allow/deny with a
//! [`Reason`] and the matched [`RuleRef`]; host lookups cost one hash probe per label of the
//! host, independent of the number of rules. See `docs/policy.md` for the format.

mod error;
mod hint;
mod inputs;
mod legacy;
mod model;
mod parse;
mod pattern;
mod target;
mod upstream;

pub mod addr;
pub mod dotenv;
pub mod log_env;
pub mod migrate;
pub mod reload;
pub mod time;

use std::path::Path;

pub use error::{PolicyError, TargetError};
pub use hint::{Edit, Hint};
pub use legacy::{
    AppliedVar, LegacyEntry, LegacyEnv, LegacySettings, LegacyUpstream, Origin, VARS as LEGACY_VARS,
};
pub use model::{Decision, Mode, Policy, PolicyEntry, PolicyStats, Reason, RuleRef, Verdict};
pub use parse::{DEFAULT_PORTS, EMBEDDED_DEFAULT_LIST, EMBEDDED_DEFAULT_NAME, ListFormat, PRESETS};
pub use pattern::{HostPattern, PatternKind};
pub use target::{Host, Target};
pub use upstream::{Credentials, Upstream};

impl Policy {
    /// Loads a policy TOML file and its includes (relative to the file's directory).
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        Policy::load_with(path, &LegacyEnv::default())
    }

    /// Same as [`Policy::load`], also applying the legacy variables from `legacy`.
    pub fn load_with(path: &Path, legacy: &LegacyEnv) -> Result<Policy, PolicyError> {
        let src = std::fs::read_to_string(path).map_err(|e| PolicyError::io(path, e))?;
        parse::build_from_toml(&src, path, legacy)
    }

    /// Parses TOML text as if it were the file `origin` (includes resolved relative to its
    /// directory).
    pub fn from_toml_str(src: &str, origin: &Path) -> Result<Policy, PolicyError> {
        parse::build_from_toml(src, origin, &LegacyEnv::default())
    }

    /// Same as [`Policy::from_toml_str`] with legacy variables.
    pub fn from_toml_str_with(
        src: &str,
        origin: &Path,
        legacy: &LegacyEnv,
    ) -> Result<Policy, PolicyError> {
        parse::build_from_toml(src, origin, legacy)
    }

    /// A policy made of one list file (allow rules on ports 80 and 443, enforce, direct), e.g.
    /// a seed `whitelist.txt` read with [`ListFormat::Seed`].
    pub fn load_list(
        path: &Path,
        format: ListFormat,
        legacy: &LegacyEnv,
    ) -> Result<Policy, PolicyError> {
        parse::build_from_list(path, format, legacy)
    }

    /// The embedded default policy: the replaced system's default whitelist in seed format
    /// (every entry also covers its subdomains), ports 80/443, enforce, direct.
    pub fn embedded_default() -> Policy {
        // The embedded list is a compile-time constant covered by tests
        // (`embedded_default_parses`), and an empty LegacyEnv adds nothing that can fail.
        parse::build_embedded(&LegacyEnv::default())
            .expect("embedded default list is valid (tested)")
    }

    /// The embedded default policy with legacy variables applied.
    pub fn embedded_default_with(legacy: &LegacyEnv) -> Result<Policy, PolicyError> {
        parse::build_embedded(legacy)
    }
}
