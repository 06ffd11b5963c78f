//! A daemon on another machine: `kennel --host ssh://[user@]host[:port][/socket]` (or
//! `KENNEL_HOST`) runs `kennel system dial-stdio` there through `ssh` and speaks the API over
//! the ssh channel's stdin/stdout — what `docker -H ssh://` does. Every API call opens its own
//! channel, exactly as each call opens its own Unix-socket connection locally, so streaming
//! commands (exec, shell, `logs --follow`) work unchanged.
//!
//! Environment: `KENNEL_SSH_COMMAND` replaces `ssh` (split on whitespace, e.g.
//! `ssh -F ~/.ssh/kennel_config`), `KENNEL_REMOTE_BIN` names the `kennel` executable on the other
//! machine when it is not on the non-interactive `PATH` there.

use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// Environment variable naming the daemon's host (the `--host` flag wins).
pub const HOST_ENV: &str = "KENNEL_HOST";
/// Environment variable replacing the `ssh` command (whitespace-separated words).
pub const SSH_COMMAND_ENV: &str = "KENNEL_SSH_COMMAND";
/// Environment variable naming the `kennel` executable on the remote machine.
pub const REMOTE_BIN_ENV: &str = "KENNEL_REMOTE_BIN";

/// Where the daemon is, from `--host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A local socket (`unix:///run/kennel/kennel.sock`).
    Unix(PathBuf),
    /// A daemon reached through `ssh`.
    Ssh(SshTarget),
}

/// The other end of an `ssh://` host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// `user@host` or `host`, as given.
    pub destination: String,
    /// `-p PORT`, when the URL has one.
    pub port: Option<u16>,
    /// The daemon's socket on that machine, when the URL has a path (else the remote default).
    pub remote_socket: Option<PathBuf>,
}

/// A `--host` value that is not understood.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid --host/{HOST_ENV} {value:?}: {reason} (expected ssh://[user@]host[:port][/path/to/kennel.sock] or unix:///path/to/kennel.sock)"
)]
pub struct HostError {
    /// The value given.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Host {
    /// Parses `ssh://[user@]host[:port][/socket]` or `unix:///socket`.
    pub fn parse(value: &str) -> Result<Host, HostError> {
        let err = |reason| HostError {
            value: value.to_string(),
            reason,
        };
        if let Some(path) = value.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(err("a unix:// host needs an absolute socket path"));
            }
            return Ok(Host::Unix(PathBuf::from(path)));
        }
        let Some(rest) = value.strip_prefix("ssh://") else {
            return Err(err("unsupported scheme"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
            // [IPv6]:port
            let (h, after) = inner
                .split_once(']')
                .ok_or_else(|| err("unclosed [ in the host"))?;
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => return Err(err("unexpected text after ]")),
            }
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(err("no host name"));
        }
        // A destination starting with '-' would be read by ssh as an option.
        if host.starts_with('-') || user.is_some_and(|u| u.is_empty() || u.starts_with('-')) {
            return Err(err("host and user must not be empty or start with '-'"));
        }
        if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("the host name contains white space"));
        }
        let port = match port {
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| err("the port is not a number from 1 to 65535"))?,
            ),
        };
        let remote_socket = match path {
            None | Some("/") => None,
            Some(p) => Some(PathBuf::from(p)),
        };
        let destination = match user {
            Some(u) => format!("{u}@{host}"),
            None => host.to_string(),
        };
        Ok(Host::Ssh(SshTarget {
            destination,
            port,
            remote_socket,
        }))
    }
}

impl SshTarget {
    /// How the target is named in messages (`ssh://user@host:port`).
    pub fn display(&self) -> String {
        match self.port {
            Some(p) => format!("ssh://{}:{p}", self.destination),
            None => format!("ssh://{}", self.destination),
        }
    }

    /// The command line that opens one channel: `ssh [opts] -- DEST kennel [--socket S] system dial-stdio`.
    pub fn command_line(&self) -> Vec<String> {
        let ssh = std::env::var(SSH_COMMAND_ENV).unwrap_or_default();
        let mut argv: Vec<String> = ssh.split_whitespace().map(str::to_string).collect();
        if argv.is_empty() {
            argv.push("ssh".into());
        }
        // -T: no remote terminal (the channel carries binary frames); ConnectTimeout so an
        // unreachable host is an error, not a hang.
        argv.extend(["-T".into(), "-o".into(), "ConnectTimeout=30".into()]);
        if let Some(p) = self.port {
            argv.extend(["-p".into(), p.to_string()]);
        }
        argv.push("--".into());
        argv.push(self.destination.clone());
        // ssh hands the rest to the remote shell as one string: quote each word.
        let bin = std::env::var(REMOTE_BIN_ENV)
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| "kennel".into());
        let mut remote = vec![shell_quote(&bin)];
        if let Some(s) = &self.remote_socket {
            remote.push("--socket".into());
            remote.push(shell_quote(&s.to_string_lossy()));
        }
        remote.extend(["system".into(), "dial-stdio".into()]);
        argv.push(remote.join(" "));
        argv
    }

    /// Starts `ssh` for one API connection.
    pub fn open(&self) -> Result<SshStream, crate::client::ClientError> {
        let argv = self.command_line();
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| crate::client::ClientError::Ssh {
            target: self.display(),
            detail: format!("cannot run {:?}: {e}", argv[0]),
        })?;
        let (Some(stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(crate::client::ClientError::Ssh {
                target: self.display(),
                detail: "ssh started without pipes".into(),
            });
        };
        let diagnostics = Arc::new(Mutex::new(Vec::new()));
        let sink = diagnostics.clone();
        // ssh's and the remote kennel's messages; shown when the channel fails. Bounded.
        let stderr_done = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut all = sink
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if all.len() < 64 * 1024 {
                    all.extend_from_slice(&buf[..n]);
                }
            }
        });
        Ok(SshStream {
            _child: child,
            stdin: Some(stdin),
            stdout,
            diagnostics: Diagnostics {
                text: diagnostics,
                done: Arc::new(tokio::sync::Mutex::new(Some(stderr_done))),
            },
        })
    }
}

/// What `ssh` wrote to stderr, readable after the stream was handed to hyper.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    text: Arc<Mutex<Vec<u8>>>,
    done: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Diagnostics {
    /// ssh's stderr, after waiting (briefly) for ssh to finish writing it.
    pub async fn text(&self) -> String {
        if let Some(task) = self.done.lock().await.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
        let text = self
            .text
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        String::from_utf8_lossy(&text).trim().to_string()
    }
}

/// One ssh channel as a byte stream: writes go to ssh's stdin, reads come from its stdout.
/// Dropping it kills `ssh`.
#[derive(Debug)]
pub struct SshStream {
    _child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    /// ssh's stderr.
    pub diagnostics: Diagnostics,
}

impl AsyncRead for SshStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdout).poll_read(cx, buf)
    }
}

impl AsyncWrite for SshStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.stdin.as_mut() {
            Some(stdin) => Pin::new(stdin).poll_write(cx, buf),
            None => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stdin.as_mut() {
            Some(stdin) => Pin::new(stdin).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    /// A half-close: ssh passes the end of its stdin on, and `dial-stdio` shuts the write side
    /// of its socket connection.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(stdin) = self.stdin.as_mut() {
            std::task::ready!(Pin::new(stdin).poll_flush(cx))?;
        }
        self.stdin = None;
        Poll::Ready(Ok(()))
    }
}

/// Quotes `word` for a POSIX shell (the remote side of `ssh` runs one).
fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(dest: &str, port: Option<u16>, socket: Option<&str>) -> Host {
        Host::Ssh(SshTarget {
            destination: dest.into(),
            port,
            remote_socket: socket.map(PathBuf::from),
        })
    }

    #[test]
    fn parses_ssh_and_unix_hosts() {
        assert_eq!(
            Host::parse("ssh://alice@ws1").unwrap(),
            ssh("alice@ws1", None, None)
        );
        assert_eq!(
            Host::parse("ssh://ws2:2222").unwrap(),
            ssh("ws2", Some(2222), None)
        );
        assert_eq!(
            Host::parse("ssh://bob@[::1]:22/run/k/k.sock").unwrap(),
            ssh("bob@::1", Some(22), Some("/run/k/k.sock"))
        );
        assert_eq!(
            Host::parse("unix:///run/kennel/kennel.sock").unwrap(),
            Host::Unix("/run/kennel/kennel.sock".into())
        );
    }

    #[test]
    fn rejects_bad_hosts_with_the_reason() {
        for (value, reason) in [
            ("tcp://ws1:2375", "unsupported scheme"),
            ("ws1", "unsupported scheme"),
            ("ssh://", "no host name"),
            (
                "ssh://-oProxyCommand=x",
                "must not be empty or start with '-'",
            ),
            ("ssh://ws1:99999", "the port is not a number"),
            ("unix://relative.sock", "absolute socket path"),
        ] {
            let e = Host::parse(value).unwrap_err().to_string();
            assert!(e.contains(reason), "{value}: {e}");
            assert!(e.contains("expected ssh://"), "{value}: {e}");
        }
    }

    #[test]
    fn quotes_remote_words() {
        assert_eq!(
            shell_quote("/usr/local/bin/kennel"),
            "/usr/local/bin/kennel"
        );
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
