//! kennel-container: environment spec -> Docker objects via bollard; hardening defaults;
//! exec; image build from host files.
//!
//! - [`spec`]: `kennel.toml` / seed layout -> validated [`spec::EnvSpec`];
//! - [`backend`]: the [`backend::Backend`] trait (the engine seam) and its types;
//! - [`docker`]: the Docker implementation; [`fake`]: an in-memory one for tests;
//! - [`git`]: a workspace's git directory, mounted so git works and cannot attack the host;
//! - [`env`]: sandbox variables from the workspace, their precedence and the refused names;
//! - [`home`]: the home volume's initial content;
//! - [`devcontainer`]: `.devcontainer/devcontainer.json` → the workspace's image and settings;
//! - [`build`]: builds that image through the engine, on the environment's network;
//! - [`engine`]: a Docker engine of the environment's own (`[docker]`);
//! - [`hardening`]: every isolation setting, in one place;
//! - [`image`]: images from host files (the proxy image without a registry);
//! - [`policy_dir`]: an environment's effective policy directory;
//! - [`bench`]: the containers of `kennel bench` (origin and clients).

pub mod backend;
pub mod bench;
pub mod build;
pub mod compose;
pub mod devcontainer;
pub mod docker;
mod docker_ops;
pub mod engine;
pub mod env;
pub mod error;
pub mod fake;
pub mod git;
pub mod hardening;
pub mod home;
pub mod ide;
pub mod image;
pub mod policy_dir;
pub mod spec;
pub mod wire;

pub use backend::names::profile_proxy as profile_proxy_name;
pub use backend::{Backend, EnvPlan, EnvState, EnvStatus, ExecOutput, ExecRequest, ExecSession};
pub use docker::DockerBackend;
pub use error::{BackendError, ImageError, SpecError};
pub use fake::FakeBackend;
pub use hardening::profile_proxy_url;
pub use spec::EnvSpec;

#[cfg(test)]
mod legacy_tests;
#[cfg(test)]
mod tests;
