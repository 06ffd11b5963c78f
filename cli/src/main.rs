//! `kennel`: the command-line client for people and scripts.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    init_tracing();
    let cli = kennel_cli::Cli::parse();
    match kennel_cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("kennel: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Diagnostics of the libraries (e.g. the container backend) go to stderr, filtered by
/// `KENNEL_LOG` (alias `RUST_LOG`, default `warn`: the CLI's own output is its result); colour
/// only on a terminal. An invalid filter is reported, not silently replaced.
fn init_tracing() {
    use kennel_policy::log_env;
    use std::io::IsTerminal as _;
    let env = |k: &str| std::env::var(k).ok();
    let chosen = log_env::log_filter(env, "warn");
    let filter = tracing_subscriber::EnvFilter::try_new(&chosen.directive).unwrap_or_else(|e| {
        eprintln!(
            "kennel: warning: {}={:?} is not a valid log filter ({e}); using warn",
            chosen.from.unwrap_or(log_env::LOG_VAR),
            chosen.directive
        );
        tracing_subscriber::EnvFilter::new("warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(log_env::use_ansi(std::io::stderr().is_terminal(), env))
        .with_writer(std::io::stderr)
        .init();
}
