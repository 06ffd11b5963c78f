//! `kennel notify watch [ENV]`: the sandboxes' notifications (`kennel-notify LEVEL MESSAGE`
//! inside) as desktop notifications, or printed lines.
//!
//! The daemon reads and cleans the notification files (see `kennel_supervisord::notify`); this
//! command long-polls `GET /v1/notifications` over the daemon's socket, so it works for a user
//! who cannot read the daemon's state directory. Desktop notifications go through the
//! freedesktop notification D-Bus interface by way of `notify-send` (libnotify) when it is on
//! `PATH` and a session bus is reachable; otherwise, or with `--print`, each notification is a
//! line on stdout.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use kennel_api::notify::format::sanitize;
use kennel_api::notify::{Notification, NotificationBatch};

use crate::client::{Client, ClientError, block_on};

/// `kennel notify …`.
#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Show the notifications environments send (`kennel-notify error|complete|clarification
    /// MESSAGE` in the sandbox) as desktop notifications, or as lines with --print. Runs until
    /// interrupted.
    Watch(WatchArgs),
}

/// Arguments of `kennel notify watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Only this environment's notifications (default: every environment's).
    pub env: Option<String>,
    /// Print lines on stdout instead of desktop notifications.
    #[arg(long)]
    pub print: bool,
    /// How long one long poll of the daemon waits, in seconds (1–60).
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=60), hide = true)]
    pub poll_secs: u64,
}

/// Runs `kennel notify`.
pub fn run(client: &Client, cmd: NotifyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        NotifyCommand::Watch(args) => {
            let mut out = Output::choose(args.print);
            if matches!(out, Output::Print) && !args.print {
                eprintln!(
                    "kennel notify watch: no desktop notifications (notify-send or a session D-Bus is missing); printing them"
                );
            }
            let stop = AtomicBool::new(false);
            watch_with(client, &args, &mut out, &stop)
        }
    }
}

/// Where notifications go.
pub enum Output {
    /// Lines on stdout.
    Print,
    /// `notify-send` at this path.
    Desktop(PathBuf),
    /// Lines into a writer (for tests and embedding).
    Writer(Box<dyn Write + Send>),
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Print => f.write_str("Print"),
            Output::Desktop(p) => f.debug_tuple("Desktop").field(p).finish(),
            Output::Writer(_) => f.write_str("Writer"),
        }
    }
}

impl Output {
    /// Desktop notifications when `notify-send` and a session bus are there and `print` is
    /// not asked for; else printed lines.
    pub fn choose(print: bool) -> Output {
        if print || !session_bus_reachable() {
            return Output::Print;
        }
        match find_on_path("notify-send") {
            Some(p) => Output::Desktop(p),
            None => Output::Print,
        }
    }

    fn show(&mut self, n: &Notification) -> anyhow::Result<()> {
        match self {
            Output::Print => {
                let mut o = std::io::stdout().lock();
                writeln!(o, "{}", line(n))?;
                o.flush()?;
            }
            Output::Writer(w) => {
                writeln!(w, "{}", line(n))?;
                w.flush()?;
            }
            Output::Desktop(bin) => {
                let status = std::process::Command::new(&*bin)
                    .args(desktop_args(n))
                    .stdin(std::process::Stdio::null())
                    .status();
                match status {
                    Ok(s) if s.success() => {}
                    Ok(s) => {
                        eprintln!(
                            "kennel notify watch: {} failed ({s}); printing from now on",
                            bin.display()
                        );
                        *self = Output::Print;
                        return self.show(n);
                    }
                    Err(e) => {
                        eprintln!(
                            "kennel notify watch: cannot run {}: {e}; printing from now on",
                            bin.display()
                        );
                        *self = Output::Print;
                        return self.show(n);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The freedesktop urgency for a level: `error` critical, `clarification` (the agent waits
/// for an answer) and `complete` normal, kennel's own summaries low.
pub fn urgency(level: &str) -> &'static str {
    match level {
        "error" => "critical",
        "clarification" | "complete" => "normal",
        _ => "low",
    }
}

/// `notify-send` arguments: app name, urgency, the environment's name as the title, the level
/// and message as the body (markup characters escaped: notification servers read the body as
/// a small HTML subset).
pub fn desktop_args(n: &Notification) -> Vec<String> {
    let body = format!("{}: {}", n.level, sanitize(&n.message))
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    vec![
        "--app-name=kennel".into(),
        format!("--urgency={}", urgency(&n.level)),
        "--".into(),
        sanitize(&n.env),
        body,
    ]
}

/// The printed form: `TIME [ENV] LEVEL: MESSAGE`, continuation lines indented. The text is
/// cleaned again here (the terminal is the last line of defence against escape sequences).
pub fn line(n: &Notification) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(n.unix_ms);
    let at =
        humantime::format_rfc3339_seconds(at.min(SystemTime::now() + Duration::from_secs(86400)));
    let msg = sanitize(&n.message).replace('\n', "\n    ");
    format!("{at} [{}] {}: {msg}", sanitize(&n.env), sanitize(&n.level))
}

fn session_bus_reachable() -> bool {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|v| !v.is_empty()) {
        return true;
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(|d| PathBuf::from(d).join("bus"))
        .is_some_and(|p| p.exists())
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The watch loop: long polls until `stop` is set (checked between polls). A daemon that goes
/// away is retried every 2 s (the watch survives a daemon restart); a refused request (bad
/// environment name, no permission) ends it with the error.
pub fn watch_with(
    client: &Client,
    args: &WatchArgs,
    out: &mut Output,
    stop: &AtomicBool,
) -> anyhow::Result<ExitCode> {
    let env_q = match &args.env {
        Some(e) => {
            crate::commands::allow::env_path(e)?;
            format!("&env={e}")
        }
        None => String::new(),
    };
    let mut after: Option<u64> = None;
    let mut down_reported = false;
    while !stop.load(Ordering::SeqCst) {
        let path = match after {
            None => format!("/notifications?wait=0{env_q}"),
            Some(a) => format!("/notifications?after={a}&wait={}{env_q}", args.poll_secs),
        };
        let batch: Result<NotificationBatch, ClientError> = block_on(client.get(&path))?;
        match batch {
            Ok(b) => {
                if down_reported {
                    eprintln!("kennel notify watch: connected again");
                    down_reported = false;
                }
                if b.missed > 0 {
                    eprintln!(
                        "kennel notify watch: {} notification(s) were dropped before this watcher fetched them",
                        b.missed
                    );
                }
                for n in &b.notifications {
                    out.show(n)?;
                }
                after = Some(b.next);
            }
            Err(
                e @ (ClientError::DaemonNotRunning { .. }
                | ClientError::Connect { .. }
                | ClientError::Http(_)),
            ) => {
                if !down_reported {
                    eprintln!("kennel notify watch: {e}; retrying every 2 s");
                    down_reported = true;
                }
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(level: &str, message: &str) -> Notification {
        Notification {
            seq: 1,
            env: "task-a".into(),
            level: level.into(),
            message: message.into(),
            unix_ms: 1_764_547_200_000,
        }
    }

    #[test]
    fn printed_lines_are_clean_and_indent_continuations() {
        assert_eq!(
            line(&n("error", "build failed\u{1b}[2J\nsee log")),
            "2025-12-01T00:00:00Z [task-a] error: build failed\n    see log"
        );
    }

    #[test]
    fn desktop_notifications_have_the_env_as_title_urgency_per_level_and_escaped_markup() {
        assert_eq!(
            desktop_args(&n("error", "<b>x</b> & y")),
            [
                "--app-name=kennel",
                "--urgency=critical",
                "--",
                "task-a",
                "error: &lt;b&gt;x&lt;/b&gt; &amp; y"
            ]
        );
        assert_eq!(urgency("clarification"), "normal");
        assert_eq!(urgency("complete"), "normal");
        assert_eq!(urgency("info"), "low");
    }
}
