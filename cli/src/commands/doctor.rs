//! `kennel doctor [ENV] [--json]`: is this machine (and ENV) fit to run kennel? The socket is
//! checked here (it is what the CLI uses); the engine, cgroup limits, address pools, the
//! daemon's state directory, images and the proxy binary are checked by the daemon
//! (`GET /v1/doctor`); with ENV the daemon also runs the isolation self-test inside it.
//! Exit status 1 when any check fails.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use kennel_api::ops::{Check, Outcome, state_dir_check};
use serde::Serialize;

use crate::client::{Client, block_on};

/// Arguments of `kennel doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Also run the isolation self-test inside this environment.
    pub env: Option<String>,
    /// Print JSON instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Also check this state directory from here (the daemon checks its own in any case).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Everything `kennel doctor` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Host and daemon checks.
    pub checks: Vec<Check>,
    /// The isolation self-test (with ENV).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selftest: Option<Vec<Check>>,
}

impl Report {
    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.checks
            .iter()
            .chain(self.selftest.iter().flatten())
            .any(|c| c.outcome == Outcome::Fail)
    }
}

/// The socket: it exists, is a socket, is not writable by everyone, and this user can connect.
pub fn socket_check(socket: &Path) -> Check {
    let name = "socket";
    let md = match std::fs::metadata(socket) {
        Ok(m) => m,
        Err(e) => {
            return Check::fail(
                name,
                format!("{}: {e}", socket.display()),
                "start the daemon (sudo systemctl start kennel-supervisord), or pass --socket / set KENNEL_SOCKET to where it listens",
            );
        }
    };
    if !md.file_type().is_socket() {
        return Check::fail(
            name,
            format!("{} is not a socket", socket.display()),
            "pass --socket / set KENNEL_SOCKET to the daemon's socket",
        );
    }
    let mode = md.mode() & 0o777;
    if mode & 0o002 != 0 {
        return Check::fail(
            name,
            format!(
                "{} has mode {mode:04o}: anyone on this machine can drive kennel, and through it Docker",
                socket.display()
            ),
            format!(
                "chmod 0660 {} (the daemon sets this itself at start; restart it: sudo systemctl restart kennel-supervisord)",
                socket.display()
            ),
        );
    }
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => Check::pass(
            name,
            format!(
                "{} (mode {mode:04o}, uid {} gid {}) accepts this user",
                socket.display(),
                md.uid(),
                md.gid()
            ),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Check::fail(
            name,
            format!("{}: {e}", socket.display()),
            format!(
                "join the socket's group (gid {}): sudo usermod -aG <group> $USER, then log in again",
                md.gid()
            ),
        ),
        Err(e) => Check::fail(
            name,
            format!("{}: {e}", socket.display()),
            "the daemon is not running behind this socket: sudo systemctl start kennel-supervisord",
        ),
    }
}

/// The daemon on another machine answers through its ssh channel (`GET /v1/version`).
fn remote_check(client: &Client, target: &str) -> Check {
    let name = "socket";
    match block_on(client.get::<serde_json::Value>("/version")) {
        Ok(Ok(_)) => Check::pass(name, format!("{target}: kennel-supervisord answers")),
        Ok(Err(e)) => Check::fail(
            name,
            format!("{target}: {e}"),
            "run `ssh <host> kennel system dial-stdio </dev/null` to see what the other machine says",
        ),
        Err(e) => Check::fail(
            name,
            format!("{target}: {e:#}"),
            "the CLI could not start its async runtime; retry",
        ),
    }
}

/// The host-side checks: the socket and, if given, a state directory (expected to belong to the
/// socket's owner, the daemon's user).
pub fn local_checks(socket: &Path, state_dir: Option<&Path>) -> Vec<Check> {
    let mut out = vec![socket_check(socket)];
    if let Some(dir) = state_dir {
        let owner = std::fs::metadata(socket)
            .map(|m| m.uid())
            .unwrap_or_else(|_| current_uid());
        out.push(state_dir_check(dir, owner));
    }
    out
}

/// This process's uid (`/proc/self` belongs to it; saves a dependency for one number).
fn current_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// Runs `kennel doctor`.
pub fn run(client: &Client, args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let checks = match client.remote() {
        // `--host ssh://…`: this machine's socket is not the one in use; the channel is.
        Some(target) => vec![remote_check(client, &target)],
        None => local_checks(client.socket(), args.state_dir.as_deref()),
    };
    let mut report = Report {
        checks,
        selftest: None,
    };
    let reachable = report.checks[0].outcome == Outcome::Pass;
    if reachable {
        match block_on(client.get::<Vec<Check>>("/doctor"))? {
            Ok(c) => report.checks.extend(c),
            Err(e) => report.checks.push(Check::fail(
                "daemon",
                format!("GET /v1/doctor: {e}"),
                "update kennel-supervisord to the CLI's version",
            )),
        }
        if let Some(env) = &args.env {
            report.selftest = Some(
                match block_on(client.post::<_, Vec<Check>>(&format!("/envs/{env}/doctor"), &()))? {
                    Ok(c) => c,
                    Err(e) => vec![Check::fail(
                        "self-test",
                        format!("environment {env:?}: {e}"),
                        "kennel ls shows the environments; kennel start ENV starts a stopped one",
                    )],
                },
            );
        }
    } else if args.env.is_some() {
        report.selftest = Some(vec![Check::fail(
            "self-test",
            "not run: the daemon is not reachable",
            "fix the socket first",
        )]);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report.checks));
        if let (Some(env), Some(st)) = (&args.env, &report.selftest) {
            println!("isolation self-test in {env}:");
            print!("{}", render(st));
        }
    }
    Ok(if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `PASS name: detail` lines, each failure or warning followed by its fix.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let tag = match c.outcome {
            Outcome::Pass => "PASS",
            Outcome::Warn => "WARN",
            Outcome::Fail => "FAIL",
        };
        out.push_str(&format!("{tag}  {}: {}\n", c.name, c.detail));
        if let Some(h) = &c.hint {
            out.push_str(&format!("      fix: {h}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_world_writable_socket_fails_with_a_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("kennel.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let c = socket_check(&sock);
        assert_eq!(c.outcome, Outcome::Fail, "{c:?}");
        assert!(
            c.hint.as_deref().unwrap_or("").contains("chmod 0660"),
            "{c:?}"
        );
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o660)).expect("chmod");
        assert_eq!(socket_check(&sock).outcome, Outcome::Pass);
    }

    #[test]
    fn a_missing_socket_and_an_open_state_dir_fail_and_the_report_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).expect("mkdir");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let checks = local_checks(&dir.path().join("absent.sock"), Some(&state));
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[0].outcome, Outcome::Fail);
        assert!(
            checks[0]
                .hint
                .as_deref()
                .unwrap_or("")
                .contains("systemctl start")
        );
        assert_eq!(checks[1].outcome, Outcome::Fail);
        assert!(
            checks[1]
                .hint
                .as_deref()
                .unwrap_or("")
                .contains("chmod 0700")
        );
        let report = Report {
            checks,
            selftest: None,
        };
        assert!(report.failed());
        let text = render(&report.checks);
        assert!(text.starts_with("FAIL  socket: "), "{text}");
        assert!(text.contains("      fix: "), "{text}");
    }

    #[test]
    fn a_socket_this_user_may_not_open_fails_with_the_group_hint() {
        // Root bypasses file permissions; the check is only observable as another user.
        if current_uid() == 0 {
            eprintln!("SKIPPED: running as root, which may open any socket");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("kennel.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o000)).expect("chmod");
        let c = socket_check(&sock);
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(
            c.hint.as_deref().unwrap_or("").contains("usermod -aG"),
            "{c:?}"
        );
    }
}
