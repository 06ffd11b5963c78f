//! The `kennel` CLI: argument definitions and one module per subcommand under `commands/`.
//! `main.rs` only parses arguments and calls [`run`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod client;
pub mod commands;
pub mod remote;

/// Run coding agents in sandboxes whose only route out is an allowlisting egress proxy.
#[derive(Debug, Parser)]
#[command(name = "kennel", version, about)]
pub struct Cli {
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
    /// kennel-supervisord's API socket.
    #[arg(long, global = true, env = "KENNEL_SOCKET", default_value = client::DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: std::path::PathBuf,
    /// The daemon on another machine, reached through ssh: ssh://[user@]host[:port][/socket]
    /// (`kennel system dial-stdio` runs there). Also unix:///path for a local socket.
    #[arg(long, global = true, env = "KENNEL_HOST", value_name = "URL")]
    pub host: Option<String>,
}

/// Every `kennel` subcommand. Each variant's arguments live in its own module.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a policy and explain decisions for targets.
    #[command(subcommand)]
    Policy(commands::policy::PolicyCommand),
    /// Create an environment from a workspace (kennel.toml, or .devcontainer/) and start it.
    Up(commands::up::UpCmd),
    /// List environments.
    Ls(commands::ls::LsArgs),
    /// Show one environment as JSON.
    Inspect(commands::inspect::InspectArgs),
    /// Remove an environment and every Docker object labelled with it (the home volume only with --purge).
    Down(commands::down::DownArgs),
    /// Stop an environment's containers, keeping everything (`kennel start` resumes it).
    Stop(commands::startstop::StartStopArgs),
    /// Start a stopped environment's containers (proxy first).
    Start(commands::startstop::StartStopArgs),
    /// Run a command in an environment's sandbox (stdout/stderr kept apart, exit code propagated).
    Exec(commands::exec::ExecArgs),
    /// An interactive shell in an environment's sandbox (`exec -t ENV -- sh`).
    Shell(commands::shell::ShellArgs),
    /// Allow destinations in a running environment's policy (applied within a second).
    Allow(commands::allow::AllowArgs),
    /// Deny destinations in a running environment's policy; live tunnels to them are closed.
    Deny(commands::allow::DenyArgs),
    /// What an environment's proxy denied, grouped by host:port, with how to allow each.
    Denials(commands::denials::DenialsArgs),
    /// Recreate an environment's containers from its stored spec, keeping workspace, home volume, policy and name.
    Refresh(commands::refresh::RefreshArgs),
    /// Show what environments use: CPU, memory, pids, network, disk, age, proxy counts.
    Stats(commands::stats::StatsArgs),
    /// Show the output of an environment's sandbox, a service or the proxy.
    Logs(commands::logs::LogsArgs),
    /// Check this machine (engine, limits, address pools, socket, state, images, proxy binary) and, with ENV, that environment's isolation.
    Doctor(commands::doctor::DoctorArgs),
    /// Build the images environments need, from host files (no registry).
    #[command(subcommand)]
    Image(commands::image::ImageCommand),
    /// One worktree + environment per task: `add NAME` creates `../<repo>-<NAME>` and brings it up, `rm NAME` removes both.
    #[command(subcommand)]
    Worktree(commands::worktree::WorktreeCommand),
    /// Print a shell completion script: `source <(kennel completions bash)`.
    Completions(commands::completions::CompletionsArgs),
    /// Print the man page (roff), or write one page per subcommand with --dir.
    Man(commands::completions::ManArgs),
    /// Plumbing for other kennel processes (`dial-stdio` serves `kennel --host ssh://…`).
    #[command(subcommand)]
    System(commands::system::SystemCommand),
    /// What happened to environments and the daemon (created, refreshed and why, removed, health rules fired, policy changes …).
    Events(commands::events::EventsArgs),
    /// Measure egress throughput and connection rate from the sandbox through its proxy, beside the same without the proxy.
    Bench(commands::bench::BenchArgs),
    /// Host notifications from the sandboxes: `watch [ENV]` shows them on the desktop (or prints them).
    #[command(subcommand)]
    Notify(commands::notify::NotifyCommand),
    /// The IDE's "Open in Dev Container" as a kennel sandbox: `init` writes
    /// `.devcontainer/kennel/devcontainer.json`, `init --check` reports what is weaker than kennel's.
    #[command(subcommand)]
    Devcontainer(commands::devcontainer::DevcontainerCommand),
}

/// Runs one parsed command line; the returned code is the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = client::Client::for_host(cli.host.as_deref(), &cli.socket);
    match cli.command {
        Command::Policy(cmd) => commands::policy::run(cmd, &client),
        Command::Up(cmd) => commands::up::run_cmd(&client, cmd),
        Command::Ls(args) => commands::ls::run(&client, args),
        Command::Inspect(args) => commands::inspect::run(&client, args),
        Command::Down(args) => commands::down::run(&client, args),
        Command::Stop(args) => commands::startstop::run(&client, args, false),
        Command::Start(args) => commands::startstop::run(&client, args, true),
        Command::Exec(args) => commands::exec::run(&client, args),
        Command::Shell(args) => commands::shell::run(&client, args),
        Command::Allow(args) => commands::allow::run_allow(&client, args),
        Command::Deny(args) => commands::allow::run_deny(&client, args),
        Command::Denials(args) => commands::denials::run(&client, args),
        Command::Refresh(args) => commands::refresh::run(&client, args),
        Command::Stats(args) => commands::stats::run(&client, args),
        Command::Logs(args) => commands::logs::run(&client, args),
        Command::Doctor(args) => commands::doctor::run(&client, args),
        Command::Image(cmd) => commands::image::run(&client, cmd),
        Command::Worktree(cmd) => commands::worktree::run(&client, cmd),
        Command::Completions(args) => commands::completions::run_completions(args),
        Command::Man(args) => commands::completions::run_man(args),
        // Always the local socket: this is the remote end of `--host ssh://…`.
        Command::System(cmd) => commands::system::run(cmd, &cli.socket),
        Command::Events(args) => commands::events::run(&client, args),
        Command::Bench(args) => commands::bench::run(&client, args),
        Command::Notify(cmd) => commands::notify::run(&client, cmd),
        Command::Devcontainer(cmd) => commands::devcontainer::run(&client, cmd),
    }
}
