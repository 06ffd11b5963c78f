//! `kennel stop ENV` / `kennel start ENV`: stop or start an environment's containers, keeping
//! them, their networks, the policy and the home volume.

use std::process::ExitCode;

use clap::Args;
use kennel_api::types::EnvInfo;

use crate::client::{Client, block_on};

/// Arguments of `kennel stop` and `kennel start`.
#[derive(Debug, Args)]
pub struct StartStopArgs {
    /// The environment.
    pub env: String,
}

/// Runs `kennel start` (`start = true`) or `kennel stop`.
pub fn run(client: &Client, args: StartStopArgs, start: bool) -> anyhow::Result<ExitCode> {
    let verb = if start { "start" } else { "stop" };
    let info: EnvInfo = block_on(client.post(&format!("/envs/{}/{verb}", args.env), &()))??;
    println!("environment {:?} is {}", info.name, info.state);
    for c in &info.containers {
        println!("  {:<8} {:<32} {}", c.role, c.name, c.state);
    }
    for w in &info.warnings {
        eprintln!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}
