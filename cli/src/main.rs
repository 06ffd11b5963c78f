//! `kennel`: the command-line client for people and scripts.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = kennel_cli::Cli::parse();
    match kennel_cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("kennel: {err:#}");
            ExitCode::from(2)
        }
    }
}
