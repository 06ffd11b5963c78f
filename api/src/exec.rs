//! The exec request: one type from the `kennel` CLI through the daemon to the container backend.

use serde::{Deserialize, Serialize};

/// A command to run in the sandbox: the body of the daemon's `POST /v1/envs/{name}/exec`, and
/// what the container backend runs (`kennel_container::backend::ExecRequest` is this type).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Argv (no shell).
    pub cmd: Vec<String>,
    /// Allocate a TTY (stdout and stderr then arrive merged as stdout).
    #[serde(default)]
    pub tty: bool,
    /// Extra `KEY=VALUE` variables.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory (default: the image's, normally `/workspace`).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Attach stdin (the backend's exec session has a stdin writer; the daemon forwards stdin frames).
    #[serde(default)]
    pub stdin: bool,
}
