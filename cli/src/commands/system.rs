//! `kennel system …`: plumbing for other kennel processes, not for people.
//!
//! `kennel system dial-stdio` relays its stdin/stdout to the daemon's socket. `kennel --host
//! ssh://user@host …` runs it on the other machine through `ssh` (as `docker -H ssh://` runs
//! `docker system dial-stdio`), so every command, streams included, works unchanged remotely.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

/// `kennel system` subcommands.
#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Relay stdin/stdout to the daemon's socket (used by `kennel --host ssh://…` on the remote side).
    DialStdio,
}

/// Runs a `kennel system` subcommand; `socket` is the (local) daemon socket.
pub fn run(cmd: SystemCommand, socket: &Path) -> anyhow::Result<ExitCode> {
    match cmd {
        SystemCommand::DialStdio => dial_stdio(socket),
    }
}

/// Connects to `socket` and copies stdin to it and its output to stdout. Ends when the daemon
/// closes the connection (stdin's end is passed on as a half-close, so an HTTP exchange in
/// flight still completes). Errors go to stderr, where the `ssh` client on the other machine
/// picks them up for its user.
fn dial_stdio(socket: &Path) -> anyhow::Result<ExitCode> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| crate::client::classify_connect_error(socket, e))?;
    let mut to_daemon = stream.try_clone()?;
    // A plain thread, not an async task: a blocking stdin read must not keep the process alive
    // once the daemon's side is finished (we exit without joining it).
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let _ = std::io::copy(&mut stdin, &mut to_daemon);
        let _ = to_daemon.shutdown(std::net::Shutdown::Write);
    });
    let mut from_daemon = stream;
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from_daemon.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(anyhow::anyhow!("reading from {}: {e}", socket.display())),
        };
        // Flush every chunk: exec and `logs --follow` output must not wait in a buffer.
        if stdout
            .write_all(&buf[..n])
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // The other side went away; nothing left to relay to.
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}
