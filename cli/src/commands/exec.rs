//! `kennel exec ENV -- CMD…`: run a command in an environment's sandbox; stdout and stderr are
//! kept apart and the command's exit code becomes kennel's.

use std::process::ExitCode;

use clap::Args;
use kennel_supervisord::api::types::ExecRequest;

use crate::client::{Client, block_on};

/// Arguments of `kennel exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Forward this terminal's stdin to the command.
    #[arg(short, long)]
    pub interactive: bool,
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

/// Runs `kennel exec`; the exit code is the command's (255 if it does not fit a byte).
pub fn run(client: &Client, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let req = ExecRequest {
        cmd: args.cmd,
        env: args.env_vars,
        workdir: args.workdir,
        tty: false,
        stdin: args.interactive,
    };
    let stdin: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>> = if args.interactive {
        Some(Box::new(tokio::io::stdin()))
    } else {
        None
    };
    let code = block_on(async {
        let mut out = tokio::io::stdout();
        let mut err = tokio::io::stderr();
        client
            .exec(&args.env, &req, stdin, &mut out, &mut err)
            .await
    })??;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
}
