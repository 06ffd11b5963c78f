//! The `/v1` HTTP API: routing, JSON bodies and the exec upgrade.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | `GET` | `/v1/version` | | [`types::VersionInfo`] |
//! | `GET` | `/v1/health` | | [`types::HealthInfo`] |
//! | `POST` | `/v1/envs[?egress_only=true]` | [`types::CreateEnv`] | `201` + [`types::EnvInfo`] (with the build and lifecycle output in `log`) |
//! | `POST` | `/v1/envs` | [`types::CreateEnv`], `Upgrade: kennel-exec/1` | `101`, then frames: output lines as `Stderr`, the [`types::EnvInfo`] JSON as `Stdout`, `Exit` 0; or an `Error` frame with a [`types::StreamError`] |
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
//! | `GET` | `/v1/events[?env=NAME][&since=SECS]` | | `[`[`crate::events::Event`]`]` |
//! | `POST` | `/v1/events` | [`crate::events::EventQuery`], `Upgrade: kennel-exec/1` | `101`, then one JSON event per line in `Stdout` frames (`follow`: until the client goes away) |
//! | `GET` | `/v1/envs/{name}/ide` | | [`types::IdeContainer`] (only for its creator) |
//! | `GET` | `/v1/envs/{name}/weaker` | | `[`[`kennel_container::ide::Weakness`]`]` |
//! | `POST` | `/v1/envs/{name}/exec` | [`types::ExecRequest`], `Upgrade: kennel-exec/1` | `101`, then frames ([`crate::frame`]) |
//! | `POST` | `/v1/envs/{name}/bench` | [`crate::ops::bench::BenchRequest`] | [`crate::ops::bench::BenchReport`] (`kennel bench`) |
//! | `GET` | `/v1/notifications[?after=SEQ][&env=NAME][&wait=SECS]` | | [`crate::notify::NotificationBatch`] (a long poll: waits up to `wait` seconds, at most 60, for one after `after`; without `after`, answers at once with the current `next`) |
//!
//! Errors are `{ "error": "...", "hint": "..." }` with the status from [`ApiError::status`].

/// The live-policy bodies, now in [`kennel_api::policy`] (re-exported at this old path).
pub mod policy_types {
    pub use kennel_api::policy::*;
}
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

/// Whether the request asks for the framed stream ([`UPGRADE_PROTOCOL`]).
fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE_PROTOCOL))
}

/// The `101` answer that switches to the framed stream.
fn switching_protocols() -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
    resp
}

/// Streaming create: the creation runs to completion as its own tracked task whatever the
/// client does (no half-created environment); its output lines go out as `Stderr` frames while
/// it runs, then the result.
fn stream_create(
    daemon: &Arc<Daemon>,
    peer: Peer,
    body: types::CreateEnv,
    egress_only: bool,
    on_upgrade: hyper::upgrade::OnUpgrade,
) {
    use crate::frame::{Frame, FrameKind, write_frame};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let d = daemon.clone();
    let create = daemon
        .tasks()
        .spawn(async move { d.create_streaming_opts(&peer, body, tx, egress_only).await });
    daemon.tasks().spawn(async move {
        let mut io = match on_upgrade.await {
            Ok(u) => Some(hyper_util::rt::TokioIo::new(u)),
            Err(e) => {
                tracing::warn!(error = %e, "create upgrade failed; the creation goes on");
                None
            }
        };
        let send = async |io: &mut Option<_>, line: String| {
            if let Some(w) = io.as_mut() {
                let frame = Frame::new(FrameKind::Stderr, Bytes::from(format!("{line}\n")));
                if write_frame(w, &frame).await.is_err() {
                    // The client went away; keep draining so the creation is never blocked.
                    *io = None;
                }
            }
        };
        // Lines while the creation runs; it ends when the creation does (a backend may keep a
        // clone of the sender, so the channel closing is not the signal).
        let mut create = create;
        let result = loop {
            tokio::select! {
                biased;
                line = rx.recv() => match line {
                    Some(line) => send(&mut io, line).await,
                    None => break (&mut create).await,
                },
                r = &mut create => break r,
            }
        };
        // Bounded: what was queued before the creation ended.
        while let Ok(line) = rx.try_recv() {
            send(&mut io, line).await;
        }
        let last = match result {
            Ok(Ok(info)) => serde_json::to_vec(&info)
                .map(|json| vec![Frame::new(FrameKind::Stdout, json), Frame::exit(0)])
                .unwrap_or_else(|e| {
                    vec![Frame::new(
                        FrameKind::Error,
                        format!("cannot encode response: {e}"),
                    )]
                }),
            Ok(Err(e)) => {
                let err = types::StreamError {
                    status: e.status().as_u16(),
                    body: e.body(),
                };
                vec![Frame::new(
                    FrameKind::Error,
                    serde_json::to_vec(&err).unwrap_or_else(|_| e.to_string().into_bytes()),
                )]
            }
            Err(e) => vec![Frame::new(
                FrameKind::Error,
                format!("create task failed: {e}"),
            )],
        };
        if let Some(w) = io.as_mut() {
            for f in &last {
                if write_frame(w, f).await.is_err() {
                    break;
                }
            }
        }
    });
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
        (&Method::POST, ["envs"]) if wants_upgrade(&req) => {
            let egress_only = egress_only_query(req.uri().query())?;
            let on_upgrade = hyper::upgrade::on(&mut req);
            let body: types::CreateEnv = read_json(req.into_body()).await?;
            stream_create(&daemon, peer, body, egress_only, on_upgrade);
            Ok(switching_protocols())
        }
        (&Method::POST, ["envs"]) => {
            let egress_only = egress_only_query(req.uri().query())?;
            let body: types::CreateEnv = read_json(req.into_body()).await?;
            // Runs to completion even if the client goes away (no half-created environment).
            let d = daemon.clone();
            let info = detach(&daemon, async move {
                d.create_opts(&peer, body, egress_only).await
            })
            .await?;
            Ok(json(StatusCode::CREATED, &info))
        }
        (&Method::GET, ["envs", name, "ide"]) => {
            let (d, n) = (daemon.clone(), (*name).to_string());
            let p = peer.clone();
            let ide = detach(&daemon, async move { d.ide_container(&p, &n).await }).await?;
            Ok(json(StatusCode::OK, &ide))
        }
        (&Method::GET, ["envs", name, "weaker"]) => {
            Ok(json(StatusCode::OK, &daemon.weaker(name).await?))
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
            if !wants_upgrade(&req) {
                return Err(ApiError::BadRequest(format!(
                    "exec needs `Connection: Upgrade` and `Upgrade: {UPGRADE_PROTOCOL}`"
                )));
            }
            let on_upgrade = hyper::upgrade::on(&mut req);
            let body: types::ExecRequest = read_json(req.into_body()).await?;
            let name = (*name).to_string();
            daemon.start_exec(&name, body, on_upgrade).await?;
            Ok(switching_protocols())
        }
        (&Method::GET, ["events"]) => {
            let q = crate::events::parse_query(req.uri().query())?;
            Ok(json(StatusCode::OK, &daemon.events(&q)?))
        }
        (&Method::POST, ["events"]) => {
            require_upgrade(&req, "events")?;
            let on_upgrade = hyper::upgrade::on(&mut req);
            let body: crate::events::EventQuery = read_json(req.into_body()).await?;
            daemon.start_events(body, on_upgrade)?;
            Ok(switching_protocols())
        }
        (&Method::POST, ["envs", name, "bench"]) => {
            let body: crate::ops::bench::BenchRequest = read_json(req.into_body()).await?;
            // A tracked task of its own: the run and its cleanup (the temporary allow entry,
            // the containers) complete even when the caller goes away (Ctrl-C).
            let (d, n) = (daemon.clone(), (*name).to_string());
            let report = detach(&daemon, async move { d.bench(&peer, &n, body).await }).await?;
            Ok(json(StatusCode::OK, &report))
        }
        (&Method::GET, ["notifications"]) => {
            let q = notifications_query(req.uri().query().unwrap_or(""))?;
            if let Some(env) = &q.env {
                kennel_container::spec::validate_env_name(env)?;
            }
            let d = daemon.clone();
            let batch = d
                .notifications()
                .wait_since(q.after, q.env.as_deref(), q.wait, || {
                    daemon.is_shutting_down()
                })
                .await;
            Ok(json(StatusCode::OK, &batch))
        }
        // Live policy changes and denials (crate::policy_ops).
        (_, ["envs", name, "policy" | "denials", ..]) => {
            let name = (*name).to_string();
            let rest: Vec<String> = segments[2..].iter().map(|s| (*s).to_string()).collect();
            policy_route(&daemon, &peer, &method, &name, &rest, req).await
        }
        (
            _,
            ["version" | "health" | "envs"]
            | ["envs", _]
            | ["envs", _, "exec" | "stop" | "start" | "bench"]
            | ["stats" | "doctor" | "notifications"]
            | [
                "envs",
                _,
                "refresh" | "stats" | "logs" | "doctor" | "health" | "ide" | "weaker",
            ]
            | ["images", "proxy" | "demo-sandbox"]
            | ["events"],
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

/// The live-policy endpoints (see [`crate::policy_ops`]):
///
/// | method | path | body | answer |
/// |---|---|---|---|
/// | `GET` | `/v1/envs/{name}/policy` | | [`policy_types::PolicyView`] |
/// | `POST` | `/v1/envs/{name}/policy/allow` | [`policy_types::AllowRequest`] | [`policy_types::PolicyChanged`] |
/// | `POST` | `/v1/envs/{name}/policy/deny` | [`policy_types::DenyRequest`] | [`policy_types::PolicyChanged`] |
/// | `GET` | `/v1/envs/{name}/policy/file` | | [`policy_types::PolicyFileDoc`] |
/// | `POST` | `/v1/envs/{name}/policy/file` | [`policy_types::PolicyReplace`] | [`policy_types::PolicyChanged`] |
/// | `POST` | `/v1/envs/{name}/policy/import` | [`policy_types::ImportRequest`] | [`policy_types::ImportPreview`] |
/// | `POST` | `/v1/envs/{name}/policy/learn` | [`policy_types::LearnRequest`] | [`policy_types::PolicyChanged`] |
/// | `GET` | `/v1/envs/{name}/denials[?since=SECS][&learned=true]` | | [`policy_types::Denials`] |
///
/// `policy`, `policy/allow`, `policy/deny`, `policy/file` and `denials` take `profile=NAME`
/// in the query: the policy and proxy of the environment's egress profile `NAME` instead of its
/// own ([`crate::policy_ops::PolicyScope`]).
async fn policy_route(
    daemon: &Arc<Daemon>,
    peer: &Peer,
    method: &Method,
    name: &str,
    rest: &[String],
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    fn ok<T: Serialize>(v: &T) -> Response<Body> {
        json(StatusCode::OK, v)
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let scoped = matches!(
        rest.as_slice(),
        ["policy" | "denials"] | ["policy", "allow" | "deny" | "file"]
    );
    let mut profile = None;
    let mut other = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("profile", _)) if !scoped => {
                return Err(ApiError::BadRequest(format!(
                    "{} does not take an egress profile (`profile=` is for policy, policy/allow, policy/deny, policy/file and denials)",
                    req.uri().path()
                )));
            }
            Some(("profile", v)) => {
                kennel_container::spec::check_profile_name(v).map_err(|m| {
                    ApiError::BadRequest(format!("invalid egress profile name {v:?}: {m}"))
                })?;
                profile = Some(v.to_string());
            }
            _ => other.push(pair),
        }
    }
    let scope = crate::policy_ops::PolicyScope::new(name, profile.as_deref());
    match (method, rest.as_slice()) {
        (&Method::GET, ["policy"]) => Ok(ok(&daemon.policy_show_in(&scope).await?)),
        (&Method::GET, ["policy", "file"]) => Ok(ok(&daemon.policy_file_in(&scope).await?)),
        (&Method::POST, ["policy", "allow"]) => {
            let body = read_json(req.into_body()).await?;
            Ok(ok(&daemon.policy_allow_in(peer, &scope, body).await?))
        }
        (&Method::POST, ["policy", "deny"]) => {
            let body = read_json(req.into_body()).await?;
            Ok(ok(&daemon.policy_deny_in(peer, &scope, body).await?))
        }
        (&Method::POST, ["policy", "file"]) => {
            let body = read_json(req.into_body()).await?;
            Ok(ok(&daemon.policy_replace_in(peer, &scope, body).await?))
        }
        (&Method::POST, ["policy", "learn"]) => {
            let body = read_json(req.into_body()).await?;
            Ok(ok(&daemon.policy_learn(peer, name, body).await?))
        }
        (&Method::POST, ["policy", "import"]) => {
            let body = read_json(req.into_body()).await?;
            Ok(ok(&daemon.policy_import(peer, name, body).await?))
        }
        (&Method::GET, ["denials"]) => {
            let (mut since, mut learned) = (None, false);
            for pair in other {
                match pair.split_once('=') {
                    Some(("since", v)) if v.parse::<u64>().is_ok() => {
                        since = v.parse::<u64>().ok().map(std::time::Duration::from_secs);
                    }
                    Some(("learned", "1" | "true")) => learned = true,
                    Some(("learned", "0" | "false")) => learned = false,
                    _ => {
                        return Err(ApiError::BadRequest(format!(
                            "unknown query {pair:?}; GET /v1/envs/NAME/denials takes `since=SECONDS`, `learned=true` and `profile=NAME`"
                        )));
                    }
                }
            }
            Ok(ok(&daemon.denials_in(&scope, since, learned).await?))
        }
        (
            _,
            ["policy" | "denials"] | ["policy", "allow" | "deny" | "file" | "import" | "learn"],
        ) => Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            path: req.uri().path().to_string(),
        }),
        _ => Err(ApiError::NoRoute {
            method: method.to_string(),
            path: req.uri().path().to_string(),
        }),
    }
}

/// The query of `GET /v1/notifications`.
struct NotificationsQuery {
    after: Option<u64>,
    env: Option<String>,
    wait: std::time::Duration,
}

/// Longest long poll a watcher may ask for.
const MAX_NOTIFY_WAIT_SECS: u64 = 60;

fn notifications_query(query: &str) -> Result<NotificationsQuery, ApiError> {
    let mut q = NotificationsQuery {
        after: None,
        env: None,
        wait: std::time::Duration::ZERO,
    };
    let bad = |pair: &str| {
        ApiError::BadRequest(format!(
            "bad query {pair:?}; GET /v1/notifications takes `after=SEQ`, `env=NAME` and `wait=SECONDS` (at most {MAX_NOTIFY_WAIT_SECS})"
        ))
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("after", v)) => q.after = Some(v.parse().map_err(|_| bad(pair))?),
            Some(("env", v)) if !v.is_empty() => q.env = Some(v.to_string()),
            Some(("wait", v)) => {
                let secs: u64 = v.parse().map_err(|_| bad(pair))?;
                if secs > MAX_NOTIFY_WAIT_SECS {
                    return Err(bad(pair));
                }
                q.wait = std::time::Duration::from_secs(secs);
            }
            _ => return Err(bad(pair)),
        }
    }
    Ok(q)
}

/// `POST /v1/envs?egress_only=true`: `kennel up --egress-only` (network, proxy, services, image
/// and home, no sandbox container: the IDE's dev container takes its place).
fn egress_only_query(query: Option<&str>) -> Result<bool, ApiError> {
    match query {
        None | Some("") | Some("egress_only=false" | "egress_only=0") => Ok(false),
        Some("egress_only=true" | "egress_only=1") => Ok(true),
        Some(q) => Err(ApiError::BadRequest(format!(
            "unknown query {q:?}; POST /v1/envs takes only `egress_only=true`"
        ))),
    }
}

/// Refuses a streaming request that does not ask for the `kennel-exec/1` upgrade.
fn require_upgrade(req: &Request<Incoming>, what: &str) -> Result<(), ApiError> {
    if wants_upgrade(req) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{what} needs `Connection: Upgrade` and `Upgrade: {UPGRADE_PROTOCOL}`"
        )))
    }
}

#[cfg(test)]
mod egress_only_tests {
    use super::egress_only_query;

    #[test]
    fn egress_only_query_is_parsed_and_anything_else_refused() {
        assert!(!egress_only_query(None).expect("none"));
        assert!(!egress_only_query(Some("")).expect("empty"));
        assert!(egress_only_query(Some("egress_only=true")).expect("true"));
        assert!(egress_only_query(Some("egress_only=1")).expect("1"));
        assert!(!egress_only_query(Some("egress_only=false")).expect("false"));
        let e = egress_only_query(Some("egress=yes")).expect_err("unknown");
        assert!(
            e.to_string().contains("takes only `egress_only=true`"),
            "{e}"
        );
    }
}
