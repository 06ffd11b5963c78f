//! The `/v1` HTTP API: routing, JSON bodies and the exec upgrade.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | `GET` | `/v1/version` | | [`types::VersionInfo`] |
//! | `GET` | `/v1/health` | | [`types::HealthInfo`] |
//! | `POST` | `/v1/envs` | [`types::CreateEnv`] | `201` + [`types::EnvInfo`] |
//! | `GET` | `/v1/envs` | | `[`[`types::EnvInfo`]`]` |
//! | `GET` | `/v1/envs/{name}` | | [`types::EnvInfo`] |
//! | `DELETE` | `/v1/envs/{name}` | | [`types::Removed`] |
//! | `POST` | `/v1/images/proxy` | | [`types::ImageBuilt`] |
//! | `POST` | `/v1/images/demo-sandbox` | | [`types::ImageBuilt`] |
//! | `POST` | `/v1/envs/{name}/refresh` | | [`types::EnvInfo`] |
//! | `GET` | `/v1/doctor` | | `[`[`crate::ops::doctor::Check`]`]` |
//! | `POST` | `/v1/envs/{name}/doctor` | | `[`[`crate::ops::doctor::Check`]`]` (isolation self-test) |
//! | `GET` | `/v1/stats` | | `[`[`crate::ops::stats::EnvUsage`]`]` |
//! | `GET` | `/v1/envs/{name}/stats` | | [`crate::ops::stats::EnvUsage`] |
//! | `POST` | `/v1/envs/{name}/logs` | [`crate::ops::logs::LogsBody`], `Upgrade: kennel-exec/1` | `101`, then frames |
//! | `POST` | `/v1/envs/{name}/exec` | [`types::ExecRequest`], `Upgrade: kennel-exec/1` | `101`, then frames ([`crate::frame`]) |
//!
//! Errors are `{ "error": "...", "hint": "..." }` with the status from [`ApiError::status`].

pub mod types;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::Peer;
use crate::error::ApiError;
use crate::frame::UPGRADE_PROTOCOL;
use crate::registry::Daemon;

/// Largest JSON request body accepted.
const MAX_BODY: usize = 1 << 20;

/// The response body type of every answer.
pub type Body = Full<Bytes>;

/// Per-connection context: who is calling, or why they may not.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The authorised peer, or the reason it was refused.
    pub peer: Result<Peer, Arc<ApiError>>,
}

/// Serialises `value` as a JSON response with `status`.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = match serde_json::to_vec(value) {
        Ok(b) => b,
        Err(e) => {
            // Serialising our own plain structs cannot fail; answer 500 rather than panic.
            return plain_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot encode response: {e}"),
            );
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn plain_error(status: StatusCode, msg: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": msg }).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The one place an [`ApiError`] becomes a response.
pub fn error_response(err: &ApiError) -> Response<Body> {
    let status = err.status();
    if status.is_server_error() {
        tracing::error!(status = status.as_u16(), error = %err, "request failed");
    } else {
        tracing::info!(status = status.as_u16(), error = %err, "request refused");
    }
    json(status, &err.body())
}

/// Runs `work` as a tracked task of its own, so it completes (and shutdown waits for it) even
/// when the client disconnects and the request future is dropped.
async fn detach<T: Send + 'static>(
    daemon: &Daemon,
    work: impl std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    daemon
        .tasks()
        .spawn(work)
        .await
        .map_err(|e| ApiError::Internal(format!("request task failed: {e}")))?
}

async fn read_json<T: DeserializeOwned>(body: Incoming) -> Result<T, ApiError> {
    let bytes = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::BadRequest(format!("cannot read request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// Handles one request (never fails: errors become JSON error responses).
#[tracing::instrument(skip_all, fields(method = %req.method(), path = %req.uri().path(), uid = caller.peer.as_ref().ok().map(|p| p.uid)))]
pub async fn handle(daemon: Arc<Daemon>, caller: Caller, req: Request<Incoming>) -> Response<Body> {
    match route(daemon, caller, req).await {
        Ok(resp) => resp,
        Err(err) => error_response(&err),
    }
}

async fn route(
    daemon: Arc<Daemon>,
    caller: Caller,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let peer = match &caller.peer {
        Ok(p) => p.clone(),
        Err(e) => return Ok(error_response(e)),
    };
    let path = req.uri().path().to_string();
    let Some(rest) = path.strip_prefix(types::API_PREFIX) else {
        return Err(ApiError::NoRoute {
            method: req.method().to_string(),
            path,
        });
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["version"]) => Ok(json(StatusCode::OK, &daemon.version())),
        (&Method::GET, ["health"]) => Ok(json(StatusCode::OK, &daemon.health().await)),
        (&Method::POST, ["images", "proxy"]) => Ok(json(
            StatusCode::OK,
            &types::ImageBuilt {
                image: daemon.build_proxy_image().await?,
            },
        )),
        (&Method::POST, ["images", "demo-sandbox"]) => Ok(json(
            StatusCode::OK,
            &types::ImageBuilt {
                image: daemon.build_demo_sandbox_image().await?,
            },
        )),
        (&Method::GET, ["envs"]) => Ok(json(StatusCode::OK, &daemon.list().await?)),
        (&Method::POST, ["envs"]) => {
            let body: types::CreateEnv = read_json(req.into_body()).await?;
            // Runs to completion even if the client goes away (no half-created environment).
            let d = daemon.clone();
            let info = detach(&daemon, async move { d.create(&peer, body).await }).await?;
            Ok(json(StatusCode::CREATED, &info))
        }
        (&Method::GET, ["envs", name]) => Ok(json(StatusCode::OK, &daemon.inspect(name).await?)),
        (&Method::DELETE, ["envs", name]) => {
            // `?purge=true` (or `purge=1`) also removes the home volume; any other query is an error.
            let purge = match req.uri().query() {
                None | Some("") => false,
                Some("purge=true" | "purge=1") => true,
                Some("purge=false" | "purge=0") => false,
                Some(q) => {
                    return Err(ApiError::BadRequest(format!(
                        "unknown query {q:?}; DELETE /v1/envs/NAME takes only `purge=true`"
                    )));
                }
            };
            let (d, n) = (daemon.clone(), (*name).to_string());
            let warnings = detach(&daemon, async move { d.remove_with(&n, purge).await }).await?;
            Ok(json(
                StatusCode::OK,
                &types::Removed {
                    name: (*name).to_string(),
                    warnings,
                },
            ))
        }
        (&Method::POST, ["envs", name, "stop"]) => {
            let (d, n) = (daemon.clone(), (*name).to_string());
            let info = detach(&daemon, async move { d.stop(&n).await }).await?;
            Ok(json(StatusCode::OK, &info))
        }
        (&Method::POST, ["envs", name, "start"]) => {
            let (d, n) = (daemon.clone(), (*name).to_string());
            let info = detach(&daemon, async move { d.start(&n).await }).await?;
            Ok(json(StatusCode::OK, &info))
        }
        (&Method::POST, ["envs", name, "refresh"]) => {
            let (d, n) = (daemon.clone(), (*name).to_string());
            let info = detach(&daemon, async move { d.refresh(&n).await }).await?;
            Ok(json(StatusCode::OK, &info))
        }
        (&Method::GET, ["envs", name, "health"]) => {
            Ok(json(StatusCode::OK, &daemon.health_of(name)?))
        }
        (&Method::GET, ["doctor"]) => Ok(json(StatusCode::OK, &daemon.doctor().await)),
        (&Method::POST, ["envs", name, "doctor"]) => {
            Ok(json(StatusCode::OK, &daemon.selftest(name).await?))
        }
        (&Method::GET, ["stats"]) => Ok(json(StatusCode::OK, &daemon.usage_all().await?)),
        (&Method::GET, ["envs", name, "stats"]) => {
            Ok(json(StatusCode::OK, &daemon.usage(name).await?))
        }
        (&Method::POST, ["envs", name, "logs"]) => {
            require_upgrade(&req, "logs")?;
            let on_upgrade = hyper::upgrade::on(&mut req);
            let body: crate::ops::logs::LogsBody = read_json(req.into_body()).await?;
            daemon.start_logs(name, body, on_upgrade).await?;
            Ok(switching_protocols())
        }
        (&Method::POST, ["envs", name, "exec"]) => {
            let wants_upgrade = req
                .headers()
                .get(header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE_PROTOCOL));
            if !wants_upgrade {
                return Err(ApiError::BadRequest(format!(
                    "exec needs `Connection: Upgrade` and `Upgrade: {UPGRADE_PROTOCOL}`"
                )));
            }
            let on_upgrade = hyper::upgrade::on(&mut req);
            let body: types::ExecRequest = read_json(req.into_body()).await?;
            let name = (*name).to_string();
            daemon.start_exec(&name, body, on_upgrade).await?;
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            resp.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
            Ok(resp)
        }
        (
            _,
            ["version" | "health" | "envs"]
            | ["envs", _]
            | ["envs", _, "exec" | "stop" | "start"]
            | ["stats" | "doctor"]
            | [
                "envs",
                _,
                "refresh" | "stats" | "logs" | "doctor" | "health",
            ]
            | ["images", "proxy" | "demo-sandbox"],
        ) => Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            path,
        }),
        _ => Err(ApiError::NoRoute {
            method: method.to_string(),
            path,
        }),
    }
}

/// Refuses a streaming request that does not ask for the `kennel-exec/1` upgrade.
fn require_upgrade(req: &Request<Incoming>, what: &str) -> Result<(), ApiError> {
    let wants_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE_PROTOCOL));
    if wants_upgrade {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{what} needs `Connection: Upgrade` and `Upgrade: {UPGRADE_PROTOCOL}`"
        )))
    }
}

/// The `101 Switching Protocols` answer of a streaming request.
fn switching_protocols() -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
    resp
}
