//! `POST /v1/envs/{name}/logs` (upgraded like exec): a container's output as
//! [`crate::frame`] frames — stdout/stderr, then an exit frame with code 0 when the output ended
//! (or an error frame).

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use kennel_container::backend::{ExecOutput, ExecOutputStream, LogsRequest, LogsTarget};
use kennel_container::spec::validate_env_name;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ApiError;
use crate::frame::{self, Frame, FrameKind};
use crate::registry::Daemon;

/// The `POST /v1/envs/{name}/logs` body.
pub type LogsBody = LogsRequest;

impl Daemon {
    /// Opens the container's output, then (once the connection is upgraded) streams it. Errors
    /// before the upgrade (unknown environment or service) are ordinary JSON errors.
    pub async fn start_logs(
        &self,
        name: &str,
        req: LogsBody,
        on_upgrade: OnUpgrade,
    ) -> Result<(), ApiError> {
        validate_env_name(name).map_err(|_| ApiError::NotFound(name.to_string()))?;
        let record = self.state().read_record(name)?;
        if self.managed_status(name, record.as_ref()).await?.is_none() {
            return Err(ApiError::NotFound(name.to_string()));
        }
        if let (LogsTarget::Service(s), Some(r)) = (&req.target, &record)
            && !r.request.spec.services.iter().any(|d| &d.name == s)
        {
            let known: Vec<&str> = r
                .request
                .spec
                .services
                .iter()
                .map(|d| d.name.as_str())
                .collect();
            return Err(ApiError::BadRequest(format!(
                "environment {name:?} has no service {s:?} (its services: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        if let LogsTarget::ProfileProxy(p) = &req.target {
            kennel_container::spec::check_profile_name(p).map_err(|m| {
                ApiError::BadRequest(format!("invalid egress profile name {p:?}: {m}"))
            })?;
            if let Some(r) = &record
                && !r.request.spec.egress_profiles.iter().any(|d| &d.name == p)
            {
                let known: Vec<&str> = r
                    .request
                    .spec
                    .egress_profiles
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect();
                return Err(ApiError::BadRequest(format!(
                    "environment {name:?} has no egress profile {p:?} (its profiles: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
        // A proxy's access log (the environment's own, or an egress profile's proxy's).
        let log_scope = match &req.target {
            LogsTarget::Proxy => Some(crate::policy_ops::PolicyScope::env(name)),
            LogsTarget::ProfileProxy(p) => Some(crate::policy_ops::PolicyScope::new(name, Some(p))),
            _ => None,
        };
        let access_log = log_scope
            .map(|scope| access_log_lines(scope.log_dir(self.state()), req.since_unix, req.follow));
        let output = self.backend().logs(name, req).await?;
        // The proxy's own output is its diagnostics; its access log is a file in the
        // environment's log directory (where `kennel denials` reads it), so both are shown.
        let output: ExecOutputStream = match access_log {
            Some(lines) => Box::pin(futures_util::stream::select(output, lines)),
            None => output,
        };
        let env = name.to_string();
        // Not a tracked task: a followed log is read-only and may run for days; daemon
        // shutdown must not wait for it.
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    if let Err(e) = stream_logs(output, TokioIo::new(upgraded)).await {
                        tracing::debug!(env = %env, error = %e, "logs stream ended early");
                    }
                }
                Err(e) => tracing::warn!(env = %env, error = %e, "logs upgrade failed"),
            }
        });
        Ok(())
    }
}

/// How often a followed access log is checked for new lines.
const ACCESS_LOG_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// The proxy's access log (`access.log.1`, then `access.log`, lines at or after `since_unix`)
/// as stdout chunks; with `follow`, new lines as they are appended (a rotation, seen as the
/// file shrinking, restarts at its beginning) until the client goes away.
fn access_log_lines(
    dir: std::path::PathBuf,
    since_unix: Option<i64>,
    follow: bool,
) -> ExecOutputStream {
    let file = dir.join(kennel_container::hardening::ACCESS_LOG_FILE);
    let rotated = dir.join(format!(
        "{}.1",
        kennel_container::hardening::ACCESS_LOG_FILE
    ));
    let cutoff = since_unix.map(|s| {
        let t =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(s).unwrap_or(0));
        crate::policy_ops::rfc3339(t)
    });
    // (first read done, bytes of `access.log` already sent)
    let state = (false, 0u64);
    Box::pin(futures_util::stream::unfold(
        state,
        move |(started, offset)| {
            let (file, rotated, cutoff) = (file.clone(), rotated.clone(), cutoff.clone());
            async move {
                if !started {
                    let mut text = String::new();
                    for p in [&rotated, &file] {
                        match read_from(p, 0) {
                            Ok(t) => text.push_str(&t),
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => {
                                let err = kennel_container::BackendError::engine(
                                    "read the proxy's access log",
                                    p.display().to_string(),
                                    e,
                                );
                                return Some((Err(err), (true, offset)));
                            }
                        }
                    }
                    let len = std::fs::metadata(&file).map_or(0, |m| m.len());
                    let kept = keep_since(&text, cutoff.as_deref());
                    return Some((Ok(ExecOutput::Stdout(Bytes::from(kept))), (true, len)));
                }
                if !follow {
                    return None;
                }
                loop {
                    tokio::time::sleep(ACCESS_LOG_POLL).await;
                    let len = std::fs::metadata(&file).map_or(0, |m| m.len());
                    let from = if len < offset { 0 } else { offset };
                    if len == from {
                        continue;
                    }
                    let new = read_from(&file, from).unwrap_or_default();
                    // Only whole lines; a half-written one comes with the next poll.
                    let whole = new.rfind('\n').map_or(0, |i| i + 1);
                    if whole == 0 {
                        continue;
                    }
                    let next = from + whole as u64;
                    return Some((
                        Ok(ExecOutput::Stdout(Bytes::from(new[..whole].to_string()))),
                        (true, next),
                    ));
                }
            }
        },
    ))
}

/// The lines of `text` whose `time` is at or after `cutoff` (RFC 3339 UTC sorts as text);
/// lines without a readable time are kept.
fn keep_since(text: &str, cutoff: Option<&str>) -> String {
    let Some(cutoff) = cutoff else {
        return text.to_string();
    };
    let mut out = String::new();
    for line in text.lines() {
        let time = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("time").and_then(|t| t.as_str()).map(str::to_string));
        if time.is_none_or(|t| t.as_str() >= cutoff) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `path` from byte `from` to its end (at most [`crate::policy_ops::MAX_LOG_READ`]).
fn read_from(path: &std::path::Path, from: u64) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(crate::policy_ops::MAX_LOG_READ)
        .read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Writes `output` as frames until it ends (then an exit frame, code 0) or the client closes
/// its side.
pub async fn stream_logs<IO>(mut output: ExecOutputStream, io: IO) -> Result<(), frame::FrameError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            chunk = output.next() => match chunk {
                Some(Ok(ExecOutput::Stdout(b))) => frame::write_chunked(&mut wr, FrameKind::Stdout, b).await?,
                Some(Ok(ExecOutput::Stderr(b))) => frame::write_chunked(&mut wr, FrameKind::Stderr, b).await?,
                Some(Err(e)) => {
                    frame::write_frame(&mut wr, &Frame::new(FrameKind::Error, Bytes::from(e.to_string()))).await?;
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
                None => break,
            },
            // The client sends nothing; EOF (or an error) means it went away.
            n = rd.read(&mut buf) => if matches!(n, Ok(0) | Err(_)) { return Ok(()) },
        }
    }
    frame::write_frame(&mut wr, &Frame::exit(0)).await?;
    let _ = wr.shutdown().await;
    Ok(())
}
