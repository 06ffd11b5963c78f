//! `kennel stats [ENV] [--json] [--watch [INTERVAL]]`: what environments use now.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use kennel_api::ops::EnvUsage;

use crate::client::{Client, block_on};

/// The shortest `--watch` interval: each round already takes about a second (the engine's CPU
/// sample), and a faster loop would only load the engine.
pub const MIN_WATCH: Duration = Duration::from_secs(1);
/// The longest `--watch` interval.
pub const MAX_WATCH: Duration = Duration::from_secs(3600);

/// Arguments of `kennel stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// One environment (default: all).
    pub env: Option<String>,
    /// Print JSON instead of a table (with --watch: one JSON document per line and round).
    #[arg(long)]
    pub json: bool,
    /// Refresh in place every INTERVAL (default 2s, 1s..1h) until Ctrl-C.
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s", value_parser = parse_interval)]
    pub watch: Option<Duration>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 2s, 1m)"))?;
    if !(MIN_WATCH..=MAX_WATCH).contains(&d) {
        return Err(format!(
            "{s} is outside {}..{}",
            humantime::format_duration(MIN_WATCH),
            humantime::format_duration(MAX_WATCH)
        ));
    }
    Ok(d)
}

/// Runs `kennel stats`.
pub fn run(client: &Client, args: StatsArgs) -> anyhow::Result<ExitCode> {
    let path = match &args.env {
        Some(e) => format!("/envs/{e}/stats"),
        None => "/stats".to_string(),
    };
    let fetch = || -> anyhow::Result<Vec<EnvUsage>> {
        Ok(match &args.env {
            Some(_) => vec![block_on(client.get::<EnvUsage>(&path))??],
            None => block_on(client.get::<Vec<EnvUsage>>(&path))??,
        })
    };
    let Some(interval) = args.watch else {
        let usage = fetch()?;
        if args.json {
            let doc = match (&args.env, usage.as_slice()) {
                (Some(_), [one]) => serde_json::to_string_pretty(one)?,
                _ => serde_json::to_string_pretty(&usage)?,
            };
            println!("{doc}");
        } else {
            print!("{}", table(&usage));
            if usage.is_empty() {
                eprintln!("no environments; create one with `kennel up` in a workspace");
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    // Ends with Ctrl-C (SIGINT's default action); each round is bounded by the request itself.
    loop {
        let usage = fetch()?;
        if args.json {
            println!("{}", serde_json::to_string(&usage)?);
        } else {
            // Home the cursor and clear the screen, so the table is redrawn in place.
            print!("\x1b[H\x1b[2J{}", table(&usage));
            println!(
                "every {}; Ctrl-C to stop",
                humantime::format_duration(interval)
            );
        }
        std::thread::sleep(interval);
    }
}

/// Bytes as `12.3MiB`.
pub fn bytes(b: Option<u64>) -> String {
    let Some(b) = b else { return "-".into() };
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn age(secs: Option<u64>) -> String {
    secs.map_or_else(
        || "-".into(),
        |s| humantime::format_duration(Duration::from_secs(s)).to_string(),
    )
    .split(' ')
    .take(2)
    .collect::<Vec<_>>()
    .join(" ")
}

/// The people's view: one line per environment (age, disk, proxy counts), then one line per
/// container (CPU, memory/limit, pids/limit, network), then warnings.
pub fn table(usage: &[EnvUsage]) -> String {
    let mut out = String::new();
    for u in usage {
        let proxy = u.proxy.as_ref().map_or_else(
            || "-".to_string(),
            |p| format!("{} allowed / {} denied", p.allowed, p.denied),
        );
        out.push_str(&format!(
            "{}  {}  age {}  workspace {}  home {}  proxy {}\n",
            u.name,
            u.state,
            age(u.age_seconds),
            bytes(u.workspace_bytes),
            bytes(u.home_bytes),
            proxy
        ));
        let header = [
            "  CONTAINER",
            "ROLE",
            "CPU %",
            "MEM / LIMIT",
            "PIDS / LIMIT",
            "NET RX / TX",
        ];
        let mut rows: Vec<[String; 6]> = vec![header.map(String::from)];
        for c in &u.containers {
            let pair = |a: Option<u64>, b: Option<u64>, f: fn(Option<u64>) -> String| {
                format!("{} / {}", f(a), f(b))
            };
            let num = |n: Option<u64>| n.map_or_else(|| "-".into(), |n| n.to_string());
            rows.push([
                format!("  {}", c.name),
                c.role.clone(),
                c.cpu_percent
                    .map_or_else(|| "-".into(), |p| format!("{p:.1}")),
                pair(c.memory_usage_bytes, c.memory_limit_bytes, bytes),
                pair(c.pids, c.pids_limit, num),
                pair(c.net_rx_bytes, c.net_tx_bytes, bytes),
            ]);
        }
        let mut widths = [0usize; 6];
        for r in &rows {
            for (w, cell) in widths.iter_mut().zip(r) {
                *w = (*w).max(cell.len());
            }
        }
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        for w in &u.warnings {
            out.push_str(&format!("  warning: {w}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_intervals() {
        assert_eq!(bytes(Some(512)), "512B");
        assert_eq!(bytes(Some(3 << 20)), "3.0MiB");
        assert_eq!(bytes(None), "-");
        assert!(parse_interval("500ms").is_err());
        assert!(parse_interval("2h").is_err());
        assert_eq!(parse_interval("5s"), Ok(Duration::from_secs(5)));
    }

    #[test]
    fn table_shows_each_container_and_the_proxy_counts() {
        let u = EnvUsage {
            name: "t".into(),
            state: "running".into(),
            age_seconds: Some(3700),
            containers: vec![kennel_container::backend::ContainerStats {
                name: "kennel-t-sandbox".into(),
                role: "sandbox".into(),
                memory_usage_bytes: Some(64 << 20),
                memory_limit_bytes: Some(1 << 30),
                ..Default::default()
            }],
            proxy: Some(kennel_api::ops::ProxyCounts {
                allowed: 3,
                denied: 1,
            }),
            ..Default::default()
        };
        let t = table(&[u]);
        assert!(t.contains("age 1h 1m"), "{t}");
        assert!(t.contains("3 allowed / 1 denied"), "{t}");
        assert!(t.contains("64.0MiB / 1.0GiB"), "{t}");
    }
}
