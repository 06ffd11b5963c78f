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
        let output = self.backend().logs(name, req).await?;
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
