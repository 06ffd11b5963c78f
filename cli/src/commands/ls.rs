//! `kennel ls`: list environments.

use std::process::ExitCode;

use clap::Args;
use kennel_api::types::EnvInfo;

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
    let now = std::time::SystemTime::now();
    let rows: Vec<[String; 6]> = envs
        .iter()
        .map(|e| {
            let running = e.containers.iter().filter(|c| c.state == "running").count();
            [
                e.name.clone(),
                e.state.clone(),
                format!("{running}/{}", e.containers.len()),
                e.created.clone().unwrap_or_else(|| "-".into()),
                expiry(e, now),
                e.workspace
                    .as_ref()
                    .map_or_else(|| "-".into(), |w| w.display().to_string()),
            ]
        })
        .collect();
    let header = [
        "NAME",
        "STATE",
        "RUNNING",
        "CREATED",
        "EXPIRES",
        "WORKSPACE",
    ]
    .map(String::from);
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

/// When an environment goes by itself: `in 4m 10s` (`--ttl`), `on exit` (`--rm`), both, or `-`.
pub fn expiry(e: &EnvInfo, now: std::time::SystemTime) -> String {
    let ttl = e.expires.as_deref().map(|t| {
        match humantime::parse_rfc3339_weak(t)
            .ok()
            .map(|at| at.duration_since(now))
        {
            Some(Ok(left)) => format!(
                "in {}",
                humantime::format_duration(std::time::Duration::from_secs(left.as_secs()))
            ),
            Some(Err(_)) => "now".to_string(),
            None => t.to_string(),
        }
    });
    match (ttl, e.remove_on_exit) {
        (Some(t), true) => format!("{t} or on exit"),
        (Some(t), false) => t,
        (None, true) => "on exit".into(),
        (None, false) => "-".into(),
    }
}
