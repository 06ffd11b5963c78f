//! `kennel policy …`: validate policies and explain decisions.

use std::process::ExitCode;

use clap::Subcommand;

/// `kennel policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {}

/// Runs a `kennel policy` subcommand.
pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
