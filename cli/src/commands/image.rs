//! `kennel image build`: have the daemon build and import the images an environment needs,
//! from host files (no registry): the proxy image and the demo sandbox image.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use kennel_api::types::ImageBuilt;

use crate::client::{Client, block_on};

/// `kennel image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the proxy image (`kennel-proxy:<hash>`, from the static kennel-proxy binary) and the
    /// demo sandbox image (`kennel-sandbox:latest`, from busybox-static and curl on the host).
    Build(BuildArgs),
}

/// Arguments of `kennel image build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Only the proxy image (`kennel up` also builds it when missing or stale).
    #[arg(long, conflicts_with = "demo_only")]
    pub proxy_only: bool,
    /// Only the demo sandbox image.
    #[arg(long)]
    pub demo_only: bool,
}

/// Runs a `kennel image` subcommand.
pub fn run(client: &Client, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Build(args) => Ok(block_on(async {
            if !args.demo_only {
                let built: ImageBuilt =
                    client.post("/images/proxy", &serde_json::json!({})).await?;
                println!("proxy image: {}", built.image);
            }
            if !args.proxy_only {
                let built: ImageBuilt = client
                    .post("/images/demo-sandbox", &serde_json::json!({}))
                    .await?;
                println!(
                    "demo sandbox image: {} (the default image of `kennel up`)",
                    built.image
                );
            }
            Ok::<_, crate::client::ClientError>(ExitCode::SUCCESS)
        })??),
    }
}
