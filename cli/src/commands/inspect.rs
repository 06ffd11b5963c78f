//! `kennel inspect ENV`: show one environment as JSON.

use std::process::ExitCode;

use clap::Args;
use kennel_api::types::EnvInfo;

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
    let mut doc = serde_json::to_value(&info)?;
    // The health monitor's last reading of each rule (404 until its first look: left out).
    let health: Result<serde_json::Value, _> =
        block_on(client.get(&format!("/envs/{}/health", args.env)))?;
    if let (Ok(h), Some(obj)) = (health, doc.as_object_mut()) {
        obj.insert("health".into(), h);
    }
    // Containers on the environment's network weaker than kennel's (a hand-edited IDE
    // devcontainer.json, a container attached by hand): in the JSON and on stderr.
    let weaker: Result<Vec<kennel_container::ide::Weakness>, _> =
        block_on(client.get(&format!("/envs/{}/weaker", args.env)))?;
    if let (Ok(w), Some(obj)) = (weaker, doc.as_object_mut()) {
        for c in &w {
            for p in &c.problems {
                eprintln!(
                    "warning: container {} ({}) is weaker than kennel's: {p}",
                    c.container, c.role
                );
            }
        }
        obj.insert("weaker_containers".into(), serde_json::to_value(&w)?);
    }
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(ExitCode::SUCCESS)
}
