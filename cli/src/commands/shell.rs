//! `kennel shell ENV`: an interactive shell in the sandbox (`kennel exec -t ENV -- sh`; without a
//! terminal, `-i`).

use std::process::ExitCode;

use clap::Args;

use crate::client::Client;
use crate::commands::exec::{self, ExecArgs};

/// Arguments of `kennel shell`.
#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The environment.
    pub env: String,
    /// The shell to run (default `sh`).
    #[arg(last = true, value_name = "SHELL")]
    pub shell: Vec<String>,
}

/// Runs `kennel shell`.
pub fn run(client: &Client, args: ShellArgs) -> anyhow::Result<ExitCode> {
    let tty = exec::stdin_is_tty();
    let cmd = if args.shell.is_empty() {
        vec!["sh".to_string()]
    } else {
        args.shell
    };
    exec::run(
        client,
        ExecArgs {
            interactive: true,
            tty,
            workdir: None,
            env_vars: Vec::new(),
            env: args.env,
            cmd,
        },
    )
}
