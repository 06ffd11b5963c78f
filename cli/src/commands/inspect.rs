//! `kennel inspect ENV`: show one environment as JSON.

use std::process::ExitCode;

use clap::Args;
use kennel_supervisord::api::types::EnvInfo;

use crate::client::{Client, block_on};

/// Arguments of `kennel inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The environment.
    pub env: String,
}

/// Runs `kennel inspect`.
pub fn run(client: &Client, args: InspectArgs) -> anyhow::Result<ExitCode> {
    let info: EnvInfo = block_on(client.get(&format!("/envs/{}", args.env)))??;
    println!("{}", serde_json::to_string_pretty(&info)?);
    Ok(ExitCode::SUCCESS)
}
