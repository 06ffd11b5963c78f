//! The daemon's error type and its one mapping to HTTP status + `{ "error", "hint" }`.

use http::StatusCode;
use kennel_container::error::{BackendError, ImageError, SpecError};

/// Everything an API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The caller's peer credentials are not allowed.
    #[error(transparent)]
    Forbidden(#[from] crate::auth::Denied),
    /// The peer credentials of the connection could not be read.
    #[error("cannot read the caller's credentials: {0}")]
    PeerUnknown(std::io::Error),
    /// The request is malformed (bad JSON, missing field, bad path).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No route for this method and path.
    #[error("no such endpoint: {method} {path}")]
    NoRoute {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
    },
    /// The endpoint exists but not with this method.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
    },
    /// The environment does not exist.
    #[error("environment {0:?} not found")]
    NotFound(String),
    /// The environment already exists (or is being created right now).
    #[error("environment {0:?} already exists")]
    Conflict(String),
    /// The name was asked for (kennel.toml `name` or `--name`) but another workspace's
    /// environment (or its kept home volume) has it.
    #[error("environment name {name:?} belongs to the workspace {}", workspace.display())]
    NameTaken {
        /// The name.
        name: String,
        /// The workspace that has it.
        workspace: std::path::PathBuf,
    },
    /// Another create, refresh, start/stop or remove of this environment, or a reconcile, is
    /// working on it right now.
    #[error(
        "environment {0:?} is being created, changed or removed right now (or the daemon is reconciling it with the engine)"
    )]
    Busy(String),
    /// The workspace's spec is invalid.
    #[error("invalid environment spec: {0}")]
    Spec(#[from] SpecError),
    /// The effective policy built for the environment does not load.
    #[error("the environment's effective policy is invalid: {0}")]
    Policy(String),
    /// A policy change (allow/deny/edit/import) would make the policy invalid; nothing applied.
    #[error("{0}")]
    InvalidChange(String),
    /// A policy file changed between reading it and replacing it (another person's change).
    #[error("{0} changed since you read it; nothing was applied")]
    PolicyChangedMeanwhile(String),
    /// The caller may not use a path it named.
    #[error("{0}")]
    PathNotAllowed(String),
    /// The container engine failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The proxy image could not be built or imported.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Reading or writing the daemon's state directory failed.
    #[error("state directory: {0}")]
    State(#[from] crate::state::StateError),
    /// A bug or an unexpected failure inside the daemon.
    #[error("internal error: {0}")]
    Internal(String),
    /// The daemon is shutting down.
    #[error("kennel-supervisord is shutting down")]
    ShuttingDown,
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::PeerUnknown(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_)
            | ApiError::Busy(_)
            | ApiError::NameTaken { .. }
            | ApiError::PolicyChangedMeanwhile(_) => StatusCode::CONFLICT,
            ApiError::Spec(_) | ApiError::Policy(_) | ApiError::InvalidChange(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::PathNotAllowed(_) => StatusCode::FORBIDDEN,
            ApiError::Backend(e) => match e {
                BackendError::AlreadyExists(_) => StatusCode::CONFLICT,
                BackendError::NotFound(_) => StatusCode::NOT_FOUND,
                BackendError::NotRunning { .. } => StatusCode::CONFLICT,
                BackendError::InvalidPlan { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                BackendError::Unavailable { .. } | BackendError::ProxyNotReady { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                BackendError::Engine { .. } => StatusCode::BAD_GATEWAY,
                BackendError::Build(_) => StatusCode::UNPROCESSABLE_ENTITY,
            },
            ApiError::Image(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::State(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// What the caller should do next, when there is something useful to say.
    pub fn hint(&self) -> Option<String> {
        let s = match self {
            ApiError::Forbidden(_) | ApiError::PeerUnknown(_) => {
                "ask the administrator to allow you: start kennel-supervisord with `--allow-user <you>` or `--allow-group <group>` and join that group"
                    .to_string()
            }
            ApiError::NotFound(_) | ApiError::Backend(BackendError::NotFound(_)) => {
                "list environments with `kennel ls`".to_string()
            }
            ApiError::Conflict(name) | ApiError::Backend(BackendError::AlreadyExists(name)) => {
                format!(
                    "remove it first (`kennel down {name}`) or pick another name (`kennel up --name …`); if `kennel ls` does not show it, another daemon or a person made it: `docker ps -a --filter label=dev.kennel.env={name}`"
                )
            }
            ApiError::NameTaken { name, .. } => format!(
                "pick another name (`kennel up --name …`, or drop `name` from kennel.toml to get `<dir>-<hash>` automatically); if that workspace is gone, `kennel down --purge {name}` frees the name"
            ),
            ApiError::Spec(_) => "fix the spec file (kennel.toml, or .devcontainer/) and run `kennel up` again".to_string(),
            ApiError::Policy(_) => {
                "check the project whitelist and [egress] settings; `kennel policy check <file>` explains policy errors".to_string()
            }
            ApiError::Backend(BackendError::Unavailable { .. } | BackendError::Engine { .. }) => {
                "check that the Docker engine runs and answers: `docker version`; see the daemon's log (`journalctl -u kennel-supervisord`)".to_string()
            }
            ApiError::Backend(BackendError::Build(_)) => {
                "fix the Dockerfile or its build context and run `kennel up` again; RUN steps reach only what the environment's policy allows (see docs/environments.md)".to_string()
            }
            ApiError::Backend(BackendError::ProxyNotReady { env, .. }) => format!(
                "the proxy's log lines above say why; `kennel logs --proxy {env}` shows more. Retry with `kennel down {env}` then `kennel up`; if it fails again, report it with that log"
            ),
            ApiError::Backend(BackendError::NotRunning { env, .. }) => {
                format!("inspect it with `kennel inspect {env}`, or recreate it (`kennel down {env}` then `kennel up`)")
            }
            ApiError::Image(_) => {
                "the proxy image needs a static kennel-proxy binary (scripts/build-proxy-static, or KENNEL_PROXY_BIN / --proxy-bin for the daemon); the demo sandbox image needs busybox-static and curl on the host (scripts/setup); retry with `kennel image build`".to_string()
            }
            ApiError::State(_) => "check the daemon's --state-dir (permissions, free space)".to_string(),
            ApiError::Busy(_) => "retry in a moment".to_string(),
            ApiError::InvalidChange(_) => "nothing was applied; the proxy keeps the current policy. Fix what FILE:LINE:COL points at and try again".to_string(),
            ApiError::PolicyChangedMeanwhile(_) => "run the command again: it starts from the current version".to_string(),
            ApiError::Internal(_) => {
                "see the daemon's log (`journalctl -u kennel-supervisord`) and report the bug".to_string()
            }
            ApiError::ShuttingDown => "retry once the daemon is back (`systemctl status kennel-supervisord`)".to_string(),
            ApiError::BadRequest(_) | ApiError::NoRoute { .. } | ApiError::MethodNotAllowed { .. } | ApiError::PathNotAllowed(_) | ApiError::Backend(BackendError::InvalidPlan { .. }) => {
                return None;
            }
        };
        Some(s)
    }

    /// The JSON body for this error.
    pub fn body(&self) -> crate::api::types::ErrorBody {
        crate::api::types::ErrorBody {
            error: self.to_string(),
            hint: self.hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15 item 5: a proxy that does not come up is the daemon's failure (503 with a
    /// hint), not "your request is invalid" (422).
    #[test]
    fn proxy_not_ready_is_the_daemons_failure() {
        let e = ApiError::Backend(BackendError::ProxyNotReady {
            env: "p".into(),
            container: "kennel-p-proxy".into(),
            what: "did not become ready in time",
            admin: "10.9.0.2:9901".into(),
            logs: "policy: bad".into(),
        });
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = e.body();
        assert!(
            body.error
                .starts_with("proxy container kennel-p-proxy did not become ready in time"),
            "{}",
            body.error
        );
        assert!(body.error.ends_with("policy: bad"), "{}", body.error);
        assert!(
            body.hint
                .as_deref()
                .is_some_and(|h| h.contains("kennel logs --proxy p")),
            "{:?}",
            body.hint
        );
        let invalid = ApiError::Backend(BackendError::InvalidPlan {
            env: "p".into(),
            message: "x".into(),
        });
        assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
}
