//! `kennel-proxy`: parse arguments, set up tracing, load the config, run the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use kennel_proxy::ProxyConfig;

mod bench_tool;

/// kennel's egress proxy: CONNECT + HTTP forward proxy enforcing a default-deny allowlist.
#[derive(Parser, Debug)]
#[command(name = "kennel-proxy", version)]
struct Args {
    /// Config file (TOML). Without it: listen on 127.0.0.1:8888 with the embedded default policy.
    #[arg(long, short = 'c', env = "KENNEL_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address (repeatable); overrides `listen` from the config.
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Admin listen address; overrides `admin` from the config.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Policy file; overrides `[policy] file` from the config.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Validate the config and policy, print a summary, and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> std::process::ExitCode {
    // `kennel-proxy bench ...`: the origin and client of `kennel bench ENV` (the proxy image
    // doubles as the benchmark image). Not a proxy run, so no config and no tracing setup.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("bench") {
        return match bench_tool::main(&argv[2..]) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kennel-proxy bench: error: {e:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    kennel_policy::log_env::init_tracing("kennel-proxy", "info", false);
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kennel-proxy: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    tracing::debug!(config = ?args.config, check = args.check, "loading configuration");
    let mut config = match &args.config {
        Some(p) => ProxyConfig::load(p)?,
        None => ProxyConfig::default(),
    };
    config.policy.process_env = true;
    if !args.listen.is_empty() {
        config.listen = args.listen;
    }
    if let Some(a) = args.admin {
        config.admin = Some(a);
    }
    if let Some(p) = args.policy {
        config.policy.file = Some(p);
    }
    if args.check {
        let shared = kennel_proxy::Shared::build(config)?;
        println!("config ok; policy: {}", shared.policy_summary());
        for line in shared.check_report() {
            println!("{line}");
        }
        return Ok(());
    }
    // On one CPU (a container limited to one, or pinned with taskset) the work-stealing
    // scheduler has nobody to steal from: the current-thread scheduler runs the same tasks
    // without its cross-thread queues and wake-up machinery (measured in benches/README.md).
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let one_cpu = cpus == 1;
    tracing::info!(
        cpus,
        scheduler = if one_cpu {
            "current-thread"
        } else {
            "multi-thread"
        },
        "runtime"
    );
    let rt = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    }
    .context("failed to start the tokio runtime")?;
    rt.block_on(kennel_proxy::run_with_signals(config))?;
    Ok(())
}
