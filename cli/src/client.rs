//! Client of the kennel-supervisord API (HTTP/1.1 + JSON over its Unix socket).
//!
//! Every error says what to do next: start the daemon, join the socket's group, check Docker …

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kennel_api::frame::{self, Frame, FrameError, FrameKind, UPGRADE_PROTOCOL};
use kennel_api::types::{API_PREFIX, CreateEnv, EnvInfo, ErrorBody, ExecRequest, StreamError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

/// Default daemon socket (defined once, by the daemon).
pub use kennel_api::DEFAULT_SOCKET;

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "kennel-supervisord is not running (cannot connect to {}: {detail}); start it with `sudo systemctl start kennel-supervisord` or run `sudo kennel-supervisord --socket {}`, or point kennel at its socket with --socket / KENNEL_SOCKET",
        socket.display(), socket.display()
    )]
    DaemonNotRunning {
        /// The socket path.
        socket: PathBuf,
        /// The OS error.
        detail: String,
    },
    /// The socket exists but this user may not open it.
    #[error(
        "permission denied on {}; {}",
        socket.display(),
        group.as_ref().map_or_else(
            || "ask the administrator to let you use kennel, or run the command with sudo".to_string(),
            |g| format!("join the group `{g}` that owns the socket (`sudo usermod -aG {g} $USER`, then log in again), or run the command with sudo")
        )
    )]
    PermissionDenied {
        /// The socket path.
        socket: PathBuf,
        /// The socket's group, when it can be named.
        group: Option<String>,
    },
    /// Connecting failed for another reason.
    #[error("cannot connect to kennel-supervisord at {}: {source}", socket.display())]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The daemon answered with an error.
    #[error("{error}{}", hint.as_ref().map(|h| format!("\nhint: {h}")).unwrap_or_default())]
    Api {
        /// HTTP status.
        status: u16,
        /// The daemon's message.
        error: String,
        /// What to do next.
        hint: Option<String>,
    },
    /// The daemon's answer does not make sense (version mismatch?).
    #[error(
        "unexpected answer from kennel-supervisord: {0}; are the kennel CLI and daemon the same version? (`kennel --version`, `kennel-supervisord --version`)"
    )]
    Protocol(String),
    /// The HTTP exchange failed.
    #[error("talking to kennel-supervisord failed: {0}")]
    Http(#[from] hyper::Error),
    /// The exec stream broke.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// `--host`/`KENNEL_HOST` does not parse.
    #[error("{0}")]
    InvalidHost(String),
    /// The ssh channel to a remote daemon (`--host ssh://…`) failed.
    #[error(
        "cannot reach kennel-supervisord through {target}: {detail}; check that `ssh` reaches the machine without a prompt it cannot show, and that `kennel system dial-stdio` works there (set {} if kennel is not on its PATH)",
        crate::remote::REMOTE_BIN_ENV
    )]
    Ssh {
        /// The `ssh://` target.
        target: String,
        /// ssh's own message, or what went wrong.
        detail: String,
    },
    /// The command could not run to completion inside the daemon.
    #[error("exec failed: {0}")]
    Exec(String),
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one daemon socket. Each call opens its own connection.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    /// Set for `--host ssh://…`: the daemon is reached through ssh, not `socket`.
    ssh: Option<crate::remote::SshTarget>,
    /// A `--host`/`KENNEL_HOST` that does not parse: reported by the first call to the daemon,
    /// so commands that need none (`policy check`, `completions`, `man`) still work.
    invalid_host: Option<String>,
}

impl Client {
    /// A client for the daemon at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            ssh: None,
            invalid_host: None,
        }
    }

    /// A client for `host` (`--host`/`KENNEL_HOST`) when given, else for the local `socket`.
    /// An invalid `host` is reported by the first call ([`ClientError::InvalidHost`]).
    pub fn for_host(host: Option<&str>, socket: &Path) -> Client {
        use crate::remote::Host;
        match host.filter(|h| !h.is_empty()).map(Host::parse) {
            None => Client::new(socket),
            Some(Ok(Host::Unix(path))) => Client::new(path),
            Some(Ok(Host::Ssh(target))) => Client {
                socket: socket.to_path_buf(),
                ssh: Some(target),
                invalid_host: None,
            },
            Some(Err(e)) => Client {
                invalid_host: Some(e.to_string()),
                ..Client::new(socket)
            },
        }
    }

    /// The socket path (of this machine; see [`Client::remote`]).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The `ssh://` target when the daemon is on another machine.
    pub fn remote(&self) -> Option<String> {
        self.ssh.as_ref().map(crate::remote::SshTarget::display)
    }

    async fn connect(&self) -> Result<Connection, ClientError> {
        if let Some(e) = &self.invalid_host {
            return Err(ClientError::InvalidHost(e.clone()));
        }
        if let Some(target) = &self.ssh {
            return Ok(Connection::Ssh(Box::new(target.open()?)));
        }
        UnixStream::connect(&self.socket)
            .await
            .map(Connection::Unix)
            .map_err(|source| classify_connect_error(&self.socket, source))
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, ClientError> {
        let stream = self.connect().await?;
        let diagnostics = match &stream {
            Connection::Ssh(s) => Some(s.diagnostics.clone()),
            Connection::Unix(_) => None,
        };
        let exchange = async {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                // The connection ends when the response (or the upgraded stream) is done.
                let _ = conn.with_upgrades().await;
            });
            sender.send_request(req).await
        };
        match (exchange.await, diagnostics) {
            (Ok(resp), _) => Ok(resp),
            (Err(e), None) => Err(e.into()),
            // The channel closed before an answer: ssh (or kennel on the other side) said why.
            (Err(e), Some(diag)) => {
                let text = diag.text().await;
                Err(ClientError::Ssh {
                    target: self.remote().unwrap_or_default(),
                    detail: if text.is_empty() { e.to_string() } else { text },
                })
            }
        }
    }

    fn request(
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{API_PREFIX}{path}"))
            .header(header::HOST, "kennel");
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Protocol(format!("cannot build request: {e}")))
    }

    async fn call<T: DeserializeOwned>(&self, req: Request<Full<Bytes>>) -> Result<T, ClientError> {
        let resp = self.send(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Protocol(format!("invalid JSON ({e})")))
    }

    /// `GET /v1{path}`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Self::request(Method::GET, path, None)?).await
    }

    /// `POST /v1{path}` with a JSON body.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| ClientError::Protocol(format!("cannot encode request: {e}")))?;
        self.call(Self::request(Method::POST, path, Some(body))?)
            .await
    }

    /// `DELETE /v1{path}`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Self::request(Method::DELETE, path, None)?).await
    }

    /// `POST /v1{path}` with `body`, asking for the `kennel-exec/1` upgrade; the upgraded
    /// connection, or the daemon's error when it answered without switching protocols.
    async fn upgrade(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<hyper::upgrade::Upgraded, ClientError> {
        let mut http_req = Self::request(Method::POST, path, Some(body))?;
        http_req
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        http_req
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
        let resp = self.send(http_req).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            return Err(api_error(status, &bytes));
        }
        Ok(hyper::upgrade::on(resp).await?)
    }

    /// `POST /v1/envs` as a framed stream: `on_line` gets each line of the creation's output
    /// (the image build, lifecycle commands) as it happens; returns the environment.
    pub async fn create_streaming(
        &self,
        req: &CreateEnv,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<EnvInfo, ClientError> {
        self.create_streaming_at("/envs", req, on_line).await
    }

    /// [`Client::create_streaming`] to `path` (`/envs?egress_only=true` for
    /// `kennel up --egress-only`).
    pub async fn create_streaming_at(
        &self,
        path: &str,
        req: &CreateEnv,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<EnvInfo, ClientError> {
        let body = serde_json::to_vec(req)
            .map_err(|e| ClientError::Protocol(format!("cannot encode request: {e}")))?;
        let mut rd = TokioIo::new(self.upgrade(path, body).await?);
        let mut info = Vec::new();
        // Bounded by the daemon: it ends the stream after the creation's last frame.
        loop {
            let Some(f) = frame::read_frame(&mut rd).await? else {
                return Err(ClientError::Protocol(
                    "the create stream ended without a result".into(),
                ));
            };
            match f.kind {
                FrameKind::Stderr => {
                    let text = String::from_utf8_lossy(&f.payload);
                    on_line(text.strip_suffix('\n').unwrap_or(&text));
                }
                FrameKind::Stdout => info.extend_from_slice(&f.payload),
                FrameKind::Exit => {
                    return serde_json::from_slice(&info)
                        .map_err(|e| ClientError::Protocol(format!("invalid JSON ({e})")));
                }
                FrameKind::Error => {
                    return Err(match serde_json::from_slice::<StreamError>(&f.payload) {
                        Ok(e) => ClientError::Api {
                            status: e.status,
                            error: e.body.error,
                            hint: e.body.hint,
                        },
                        Err(_) => {
                            ClientError::Protocol(String::from_utf8_lossy(&f.payload).into_owned())
                        }
                    });
                }
                FrameKind::Stdin | FrameKind::Resize => {
                    return Err(ClientError::Protocol(
                        "client-side frame from the daemon".into(),
                    ));
                }
            }
        }
    }

    /// Runs a command in environment `env`: its stdout and stderr are copied to `stdout` and
    /// `stderr` as they arrive; `stdin` (if any) is forwarded until it ends. Returns the exit code.
    pub async fn exec<O, E>(
        &self,
        env: &str,
        req: &ExecRequest,
        stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<i32, ClientError>
    where
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let input = ExecInput {
            stdin,
            resize: None,
        };
        self.exec_with(env, req, input, stdout, stderr).await
    }

    /// [`Client::exec`] with terminal size updates (`(rows, cols)`, sent as resize frames).
    pub async fn exec_with<O, E>(
        &self,
        env: &str,
        req: &ExecRequest,
        input: ExecInput,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<i32, ClientError>
    where
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let body = serde_json::to_vec(req)
            .map_err(|e| ClientError::Protocol(format!("cannot encode request: {e}")))?;
        let upgraded = self.upgrade(&format!("/envs/{env}/exec"), body).await?;
        let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
        let ExecInput {
            mut stdin,
            mut resize,
        } = input;
        let input_task = (stdin.is_some() || resize.is_some()).then(|| {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let next = tokio::select! {
                        read = async {
                            match stdin.as_mut() {
                                Some(s) => s.read(&mut buf).await,
                                None => std::future::pending().await,
                            }
                        } => match read {
                            Ok(0) | Err(_) => {
                                stdin = None;
                                Frame::new(FrameKind::Stdin, Bytes::new())
                            }
                            Ok(n) => Frame::new(FrameKind::Stdin, Bytes::copy_from_slice(&buf[..n])),
                        },
                        size = async {
                            match resize.as_mut() {
                                Some(r) => r.recv().await,
                                None => std::future::pending().await,
                            }
                        } => match size {
                            Some((rows, cols)) => Frame::resize(rows, cols),
                            None => {
                                resize = None;
                                if stdin.is_none() {
                                    return;
                                }
                                continue;
                            }
                        },
                    };
                    if frame::write_frame(&mut wr, &next).await.is_err() {
                        return;
                    }
                    if stdin.is_none() && resize.is_none() {
                        return;
                    }
                }
            })
        });
        let result = copy_output_frames(&mut rd, stdout, stderr, "the exec stream").await;
        if let Some(task) = input_task {
            task.abort();
        }
        result
    }
}

impl Client {
    /// `POST /v1{path}` with a JSON body, upgraded to a frame stream (as exec is) that only
    /// carries output: stdout/stderr frames are copied as they arrive; returns the exit frame's
    /// code. Used by `kennel logs`.
    pub async fn output_stream<B, O, E>(
        &self,
        path: &str,
        body: &B,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<i32, ClientError>
    where
        B: Serialize,
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let body = serde_json::to_vec(body)
            .map_err(|e| ClientError::Protocol(format!("cannot encode request: {e}")))?;
        // The write half stays open: the daemon takes its end as "the client went away".
        let mut io = TokioIo::new(self.upgrade(path, body).await?);
        copy_output_frames(&mut io, stdout, stderr, "the stream").await
    }
}

/// What an exec sends to the command besides its arguments.
#[derive(Default)]
pub struct ExecInput {
    /// Forwarded as stdin until it ends.
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Terminal sizes `(rows, cols)` for a TTY exec.
    pub resize: Option<tokio::sync::mpsc::Receiver<(u16, u16)>>,
}

impl std::fmt::Debug for ExecInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecInput")
            .field("stdin", &self.stdin.is_some())
            .field("resize", &self.resize.is_some())
            .finish()
    }
}

fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => ClientError::Api {
            status: status.as_u16(),
            error: e.error,
            hint: e.hint,
        },
        Err(_) => ClientError::Protocol(format!(
            "HTTP {status} with body {:?}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    }
}

/// One connection to the daemon: its Unix socket, or an ssh channel to `dial-stdio`.
#[derive(Debug)]
enum Connection {
    Unix(UnixStream),
    Ssh(Box<crate::remote::SshStream>),
}

impl AsyncRead for Connection {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Unix(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Connection::Ssh(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Connection::Unix(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Connection::Ssh(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Unix(s) => std::pin::Pin::new(s).poll_flush(cx),
            Connection::Ssh(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Unix(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Connection::Ssh(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Turns a connect error into an actionable one.
pub fn classify_connect_error(socket: &Path, source: std::io::Error) -> ClientError {
    use std::io::ErrorKind;
    match source.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => ClientError::DaemonNotRunning {
            socket: socket.to_path_buf(),
            detail: source.to_string(),
        },
        ErrorKind::PermissionDenied => ClientError::PermissionDenied {
            socket: socket.to_path_buf(),
            group: socket_group(socket),
        },
        _ => ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        },
    }
}

/// The name of the group owning the socket (or its directory, if the socket cannot be stat'ed).
fn socket_group(socket: &Path) -> Option<String> {
    let meta = std::fs::metadata(socket)
        .ok()
        .or_else(|| socket.parent().and_then(|p| std::fs::metadata(p).ok()))?;
    let gid = meta.gid();
    if gid == 0 {
        return None;
    }
    group_name(gid).or_else(|| Some(gid.to_string()))
}

/// Looks a gid up in `/etc/group`.
fn group_name(gid: u32) -> Option<String> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut parts = line.split(':');
        let name = parts.next()?;
        let _pw = parts.next()?;
        (parts.next()?.parse::<u32>().ok()? == gid).then(|| name.to_string())
    })
}

/// Runs `fut` on a fresh single-threaded runtime (the CLI is synchronous at the top).
pub fn block_on<F: std::future::Future>(fut: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(fut);
    // A blocking stdin read may still be parked on a runtime thread; do not wait for it.
    rt.shutdown_background();
    Ok(out)
}

/// Copies a daemon's output frames to `stdout`/`stderr` as they arrive until the exit frame,
/// whose code it returns (`what` names the stream in the error when it ends without one).
async fn copy_output_frames<R, O, E>(
    rd: &mut R,
    stdout: &mut O,
    stderr: &mut E,
    what: &str,
) -> Result<i32, ClientError>
where
    R: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    loop {
        let Some(f) = frame::read_frame(rd).await? else {
            return Err(ClientError::Protocol(format!(
                "{what} ended without an exit code"
            )));
        };
        match f.kind {
            FrameKind::Stdout => {
                stdout.write_all(&f.payload).await.map_err(FrameError::Io)?;
                stdout.flush().await.map_err(FrameError::Io)?;
            }
            FrameKind::Stderr => {
                stderr.write_all(&f.payload).await.map_err(FrameError::Io)?;
                stderr.flush().await.map_err(FrameError::Io)?;
            }
            FrameKind::Exit => return Ok(f.exit_code()?),
            FrameKind::Error => {
                return Err(ClientError::Exec(
                    String::from_utf8_lossy(&f.payload).into_owned(),
                ));
            }
            FrameKind::Stdin | FrameKind::Resize => {
                return Err(ClientError::Protocol(
                    "client-side frame from the daemon".into(),
                ));
            }
        }
    }
}
