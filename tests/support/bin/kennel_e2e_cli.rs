//! The `kennel` CLI built inside the test package, so end-to-end tests can run it as a separate
//! program (an IDE runs devcontainer.json's `initializeCommand` that way) through
//! `CARGO_BIN_EXE_kennel-e2e-cli`. Same code as `cli/src/main.rs`: `kennel_cli::run`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match kennel_cli::run(kennel_cli::Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("kennel: {err:#}");
            ExitCode::from(2)
        }
    }
}
