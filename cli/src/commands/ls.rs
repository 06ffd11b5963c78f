//! `kennel ls`: list environments.

use std::process::ExitCode;

use clap::Args;
use kennel_supervisord::api::types::EnvInfo;

use crate::client::{Client, block_on};

/// Arguments of `kennel ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `kennel ls`.
pub fn run(client: &Client, args: LsArgs) -> anyhow::Result<ExitCode> {
    let envs: Vec<EnvInfo> = block_on(client.get("/envs"))??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&envs)?);
    } else {
        print!("{}", table(&envs));
        if envs.is_empty() {
            eprintln!("no environments; create one with `kennel up` in a workspace");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Formats environments as an aligned table (header + one line per environment).
pub fn table(envs: &[EnvInfo]) -> String {
    let rows: Vec<[String; 5]> = envs
        .iter()
        .map(|e| {
            let running = e.containers.iter().filter(|c| c.state == "running").count();
            [
                e.name.clone(),
                e.state.clone(),
                format!("{running}/{}", e.containers.len()),
                e.created.clone().unwrap_or_else(|| "-".into()),
                e.workspace
                    .as_ref()
                    .map_or_else(|| "-".into(), |w| w.display().to_string()),
            ]
        })
        .collect();
    let header = ["NAME", "STATE", "RUNNING", "CREATED", "WORKSPACE"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
