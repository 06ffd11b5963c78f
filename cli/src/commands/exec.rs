//! `kennel exec ENV -- CMD…`: run a command in an environment's sandbox; stdout and stderr are
//! kept apart and the command's exit code becomes kennel's. `-t` runs it on a TTY (raw mode,
//! window size forwarded), e.g. `kennel exec -t demo -- sh`.

use std::process::ExitCode;

use clap::Args;
use kennel_supervisord::api::types::ExecRequest;

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

/// Terminal handling for `-t`: raw mode and window size (libc termios/ioctl).
mod terminal {
    /// Whether `fd` is a terminal.
    pub fn is_tty(fd: i32) -> bool {
        // SAFETY: isatty only inspects the descriptor number; any value is safe to pass.
        unsafe { libc::isatty(fd) == 1 }
    }

    /// The size of the terminal on stdout (or stdin), `(rows, cols)`.
    pub fn size() -> Option<(u16, u16)> {
        for fd in [1, 0] {
            let mut ws = libc::winsize {
                ws_row: 0,
                ws_col: 0,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCGWINSZ writes one `winsize` into the valid, exclusively borrowed `ws`.
            let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
            if rc == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
                return Some((ws.ws_row, ws.ws_col));
            }
        }
        None
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
        saved: libc::termios,
    }

    impl RawMode {
        /// Switches stdin to raw mode.
        pub fn enable() -> std::io::Result<RawMode> {
            // SAFETY: termios is a plain C struct; all-zero is a valid value to be overwritten.
            let mut saved: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: tcgetattr writes into the valid `saved`; fd 0 is checked to be a TTY first.
            if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut raw = saved;
            // SAFETY: cfmakeraw only modifies the struct it is given.
            unsafe { libc::cfmakeraw(&mut raw) };
            // SAFETY: tcsetattr reads the valid `raw` struct.
            if unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(RawMode { saved })
        }
    }

    impl Drop for RawMode {
        fn drop(&mut self) {
            // SAFETY: restores the attributes read in `enable` from the valid `saved` struct.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &self.saved);
            }
        }
    }
}
