//! `kennel down ENV`: remove an environment and every Docker object labelled with it.

use std::process::ExitCode;

use clap::Args;
use kennel_supervisord::api::types::Removed;

use crate::client::{Client, block_on};

/// Arguments of `kennel down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// The environment.
    pub env: String,
}

/// Runs `kennel down`.
pub fn run(client: &Client, args: DownArgs) -> anyhow::Result<ExitCode> {
    let removed: Removed = block_on(client.delete(&format!("/envs/{}", args.env)))??;
    println!(
        "removed environment {:?} (containers, networks and its policy directory)",
        removed.name
    );
    Ok(ExitCode::SUCCESS)
}
