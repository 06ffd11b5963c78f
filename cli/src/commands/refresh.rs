//! `kennel refresh ENV`: recreate an environment's containers from its stored spec.

use std::process::ExitCode;

use clap::Args;
use kennel_api::types::EnvInfo;

use crate::client::{Client, block_on};

/// Arguments of `kennel refresh`.
#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// The environment.
    pub env: String,
}

/// Runs `kennel refresh`.
pub fn run(client: &Client, args: RefreshArgs) -> anyhow::Result<ExitCode> {
    let info: EnvInfo = block_on(client.post(&format!("/envs/{}/refresh", args.env), &()))??;
    println!(
        "environment {:?} refreshed: new containers, same workspace, home volume and policy ({})",
        info.name, info.state
    );
    for c in &info.containers {
        println!("  {:<8} {:<32} {}", c.role, c.name, c.state);
    }
    for w in &info.warnings {
        eprintln!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}
