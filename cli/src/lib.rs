//! The `kennel` CLI: argument definitions and one module per subcommand under `commands/`.
//! `main.rs` only parses arguments and calls [`run`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod commands;

/// Run coding agents in sandboxes whose only route out is an allowlisting egress proxy.
#[derive(Debug, Parser)]
#[command(name = "kennel", version, about)]
pub struct Cli {
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Every `kennel` subcommand. Each variant's arguments live in its own module.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a policy and explain decisions for targets.
    #[command(subcommand)]
    Policy(commands::policy::PolicyCommand),
}

/// Runs one parsed command line; the returned code is the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Policy(cmd) => commands::policy::run(cmd),
    }
}
