//! `kennel down [--purge] ENV`: remove an environment and every Docker object labelled with it;
//! the home volume only with `--purge`.

use std::process::ExitCode;

use clap::Args;
use kennel_api::types::Removed;

use crate::client::{Client, block_on};

/// Arguments of `kennel down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// The environment.
    pub env: String,
    /// Also remove the home volume (agent logins and settings), which `down` otherwise keeps for
    /// the next `kennel up` of the workspace.
    #[arg(long)]
    pub purge: bool,
}

/// Runs `kennel down`.
pub fn run(client: &Client, args: DownArgs) -> anyhow::Result<ExitCode> {
    let query = if args.purge { "?purge=true" } else { "" };
    let removed: Removed = block_on(client.delete(&format!("/envs/{}{query}", args.env)))??;
    if args.purge {
        println!(
            "removed environment {:?} (containers, networks, its policy directory and its home volume)",
            removed.name
        );
    } else {
        println!(
            "removed environment {:?} (containers, networks and its policy directory); its home volume is kept for the next `kennel up` (`kennel down --purge {}` removes it)",
            removed.name, removed.name
        );
    }
    for w in &removed.warnings {
        eprintln!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}
