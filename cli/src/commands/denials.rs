//! `kennel denials ENV [--since DUR] [--json]`: what the environment's proxy denied, grouped by
//! host:port, with the edit that would allow each.

use std::process::ExitCode;

use clap::Args;
use kennel_api::policy::Denials;

use crate::client::{Client, block_on};
use crate::commands::allow::{env_path, parse_duration, profile_flag};

/// Arguments of `kennel denials`.
#[derive(Debug, Args)]
pub struct DenialsArgs {
    /// The environment.
    pub env: String,
    /// What the proxy of the environment's egress profile NAME denied, instead of its own.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Only denials newer than this (`10m`, `2h`, `1d`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<std::time::Duration>,
    /// What learn mode (`kennel up --learn`) let through but would have denied, instead of
    /// what was denied.
    #[arg(long)]
    pub learned: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `kennel denials`.
pub fn run(client: &Client, args: DenialsArgs) -> anyhow::Result<ExitCode> {
    let mut path = format!("{}/denials", env_path(&args.env)?);
    let mut query = Vec::new();
    if let Some(s) = args.since {
        query.push(format!("since={}", s.as_secs()));
    }
    if args.learned {
        query.push("learned=true".to_string());
    }
    if let Some(p) = &args.profile {
        kennel_container::spec::check_profile_name(p)
            .map_err(|e| anyhow::anyhow!("invalid egress profile name {p:?}: {e}"))?;
        query.push(format!("profile={p}"));
    }
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    let d: Denials = block_on(client.get(&path))??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", table_for(&d, args.profile.as_deref()));
    if d.denials.is_empty() {
        match &args.profile {
            Some(p) => eprintln!("no denials for egress profile {p:?} of {:?}", d.env),
            None => eprintln!("no denials for {:?}", d.env),
        }
    }
    if d.skipped_lines > 0 {
        eprintln!(
            "warning: {} access-log lines were not JSON and were skipped",
            d.skipped_lines
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The denials as a table, each followed by the command that allows it.
pub fn table(d: &Denials) -> String {
    table_for(d, None)
}

/// [`table`] for the proxy of egress profile `profile` (the commands say `--profile NAME`).
pub fn table_for(d: &Denials, profile: Option<&str>) -> String {
    let mut out = String::new();
    if d.denials.is_empty() {
        return out;
    }
    out.push_str(&format!(
        "{:<40} {:>6}  {:<24} {:<24} {:<24}\n",
        "DESTINATION", "COUNT", "REASON", "FIRST", "LAST"
    ));
    for x in &d.denials {
        let dest = if x.host.contains(':') {
            format!("[{}]:{}", x.host, x.port)
        } else {
            format!("{}:{}", x.host, x.port)
        };
        out.push_str(&format!(
            "{dest:<40} {:>6}  {:<24} {:<24} {:<24}\n",
            x.count,
            x.reasons.join(","),
            x.first,
            x.last
        ));
        if let Some(rule) = &x.rule {
            out.push_str(&format!("    matched {rule}\n"));
        }
        if x.allowed_now {
            out.push_str("    allowed now\n");
        } else if let Some(h) = &x.hint {
            out.push_str(&format!(
                "    to allow: kennel allow {}{} {dest}   ({h})\n",
                profile_flag(profile),
                d.env
            ));
        }
    }
    out
}
