//! `kennel exec ENV -- CMD…`: run a command in an environment's sandbox; stdout and stderr are
//! kept apart and the command's exit code becomes kennel's. `-t` runs it on a TTY (raw mode,
//! window size forwarded), e.g. `kennel exec -t demo -- sh`.

use std::process::ExitCode;

use clap::Args;
use kennel_api::ExecRequest;

use crate::client::{Client, ExecInput, block_on};

/// Arguments of `kennel exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Forward this terminal's stdin to the command.
    #[arg(short, long)]
    pub interactive: bool,
    /// Run the command on a TTY (implies -i; stdout and stderr then arrive as one stream).
    #[arg(short, long)]
    pub tty: bool,
    /// Working directory inside the sandbox (default /workspace).
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Extra environment variable for the command (`KEY=VALUE`); repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env_vars: Vec<String>,
    /// The environment.
    pub env: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// Whether kennel's stdin is a terminal.
pub fn stdin_is_tty() -> bool {
    terminal::is_tty(0)
}

/// Runs `kennel exec`; the exit code is the command's (255 if it does not fit a byte).
pub fn run(client: &Client, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let mut env_vars = args.env_vars;
    if args.tty && !terminal::is_tty(0) {
        anyhow::bail!("the input device is not a TTY; drop -t (use -i to forward piped input)");
    }
    if args.tty && !env_vars.iter().any(|v| v.starts_with("TERM=")) {
        env_vars.push(format!(
            "TERM={}",
            std::env::var("TERM").unwrap_or_else(|_| "xterm".into())
        ));
    }
    let req = ExecRequest {
        cmd: args.cmd,
        env: env_vars,
        workdir: args.workdir,
        tty: args.tty,
        stdin: args.interactive || args.tty,
    };
    let code = block_on(async {
        let mut input = ExecInput::default();
        if req.stdin {
            input.stdin = Some(Box::new(tokio::io::stdin()));
        }
        // Restores the terminal when dropped (also on errors).
        let _raw = if args.tty {
            input.resize = Some(terminal::watch_size());
            Some(terminal::RawMode::enable()?)
        } else {
            None
        };
        let mut out = tokio::io::stdout();
        let mut err = tokio::io::stderr();
        anyhow::Ok(
            client
                .exec_with(&args.env, &req, input, &mut out, &mut err)
                .await?,
        )
    })??;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
}

/// Terminal handling for `-t`: raw mode and window size, through rustix's safe termios calls.
mod terminal {
    use std::os::fd::BorrowedFd;

    use rustix::termios::{self, OptionalActions, Termios};

    fn fd(n: i32) -> Option<BorrowedFd<'static>> {
        match n {
            0 => Some(rustix::stdio::stdin()),
            1 => Some(rustix::stdio::stdout()),
            _ => None,
        }
    }

    /// Whether `fd` (0 = stdin, 1 = stdout) is a terminal.
    pub fn is_tty(n: i32) -> bool {
        fd(n).is_some_and(termios::isatty)
    }

    /// The size of the terminal on stdout (or stdin), `(rows, cols)`.
    pub fn size() -> Option<(u16, u16)> {
        [1, 0].into_iter().find_map(|n| {
            let ws = termios::tcgetwinsize(fd(n)?).ok()?;
            (ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
        })
    }

    /// Sends the current size now and after every SIGWINCH.
    pub fn watch_size() -> tokio::sync::mpsc::Receiver<(u16, u16)> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            if let Some(s) = size()
                && tx.send(s).await.is_err()
            {
                return;
            }
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some(s) = size()
                    && tx.send(s).await.is_err()
                {
                    return;
                }
            }
        });
        rx
    }

    /// Stdin in raw mode until dropped.
    pub struct RawMode {
        saved: Termios,
    }

    impl RawMode {
        /// Switches stdin to raw mode.
        pub fn enable() -> std::io::Result<RawMode> {
            let stdin = rustix::stdio::stdin();
            let saved = termios::tcgetattr(stdin)?;
            let mut raw = saved.clone();
            raw.make_raw();
            termios::tcsetattr(stdin, OptionalActions::Now, &raw)?;
            Ok(RawMode { saved })
        }
    }

    impl Drop for RawMode {
        fn drop(&mut self) {
            // Nothing sensible to do if restoring fails while the process exits anyway.
            let _ = termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, &self.saved);
        }
    }
}
