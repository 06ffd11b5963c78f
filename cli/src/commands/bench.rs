//! `kennel bench ENV [--bytes SIZE] [--secs S] [--json]`: egress throughput and connection rate
//! from inside the environment's sandbox through its proxy, beside the same measured without
//! the proxy hop (see `kennel_supervisord::ops::bench` in the daemon for what it does).

use std::process::ExitCode;

use clap::Args;
use kennel_api::ops::{BenchReport, BenchRequest, PathReport};

use crate::client::{Client, block_on};

/// Arguments of `kennel bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The environment (must be running).
    pub env: String,
    /// Size of the single-stream download, e.g. 64M, 1G (at most 1G).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub bytes: u64,
    /// Seconds of the connection-rate phase (at most 10).
    #[arg(long, default_value_t = 3.0)]
    pub secs: f64,
    /// Most connections in the rate phase.
    #[arg(long, default_value_t = 50_000)]
    pub max_conns: u64,
    /// Concurrent connection loops in the rate phase (at most 32).
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `64M` → 67108864; plain numbers are bytes; K, M, G are powers of 1024.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.eq_ignore_ascii_case(&'k') => (&t[..i], 1u64 << 10),
        Some((i, c)) if c.eq_ignore_ascii_case(&'m') => (&t[..i], 1 << 20),
        Some((i, c)) if c.eq_ignore_ascii_case(&'g') => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size; expected e.g. 64M, 1G or a byte count"))
}

fn line(label: &str, r: &PathReport) -> String {
    format!(
        "{label:<28} {:>9.1} MB/s  ({} MiB in {:.2} s)   {:>9.0} conn/s  ({} in {:.1} s{})",
        r.mb_per_s,
        r.bytes >> 20,
        r.download_secs,
        r.connections_per_s,
        r.connections,
        r.connect_secs,
        if r.errors > 0 {
            format!(", {} failed", r.errors)
        } else {
            String::new()
        }
    )
}

/// The human-readable report.
pub fn render(r: &BenchReport) -> String {
    let mut out = format!(
        "kennel bench {}: origin {} on the egress network\n",
        r.env, r.origin
    );
    out += &line("sandbox -> proxy -> origin", &r.proxy);
    out.push('\n');
    out += &line("egress network -> origin", &r.direct);
    out.push('\n');
    out += &format!(
        "{:<28} {:>9.2} x             {:>21.2} x\n",
        "proxy / direct", r.throughput_ratio, r.connection_rate_ratio
    );
    match &r.temporary_allow {
        Some(e) => {
            out +=
                &format!("the origin ({e}) was allowed for the run only; that entry is removed\n")
        }
        None => out += "the policy already allowed the origin; it was left unchanged\n",
    }
    for w in &r.warnings {
        out += &format!("warning: {w}\n");
    }
    out
}

/// Runs `kennel bench`.
pub fn run(client: &Client, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let req = BenchRequest {
        bytes: args.bytes,
        secs: args.secs,
        max_conns: args.max_conns,
        clients: args.clients,
    };
    // The daemon checks the same bounds; checking here too answers before any request.
    req.check_bounds()
        .map_err(|e| anyhow::anyhow!("kennel bench: bad request: {e}"))?;
    if !args.json {
        eprintln!(
            "kennel bench {}: starting a benchmark origin on its egress network (this takes a few seconds)...",
            args.env
        );
    }
    let report: BenchReport = block_on(client.post(&format!("/envs/{}/bench", args.env), &req))??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("lots").unwrap_err().contains("lots"));
    }
}
