//! `kennel`: the command-line client for people and scripts.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // `KENNEL_LOG` (alias `RUST_LOG`), default `warn`: the CLI's own output is its result.
    kennel_policy::log_env::init_tracing("kennel", "warn", false);
    let cli = kennel_cli::Cli::parse();
    match kennel_cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("kennel: {err:#}");
            ExitCode::from(2)
        }
    }
}
