//! `kennel-supervisord`: parse arguments, set up logging, run the daemon library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kennel_supervisord::auth::Authorizer;
use kennel_supervisord::daemon::{self, DEFAULT_SOCKET, DEFAULT_STATE_DIR};
use kennel_supervisord::registry::Daemon;
use kennel_supervisord::state::StateDir;

/// The kennel daemon: owns sandbox environments and serves the `kennel` CLI on a Unix socket.
#[derive(Debug, Parser)]
#[command(name = "kennel-supervisord", version, about)]
struct Args {
    /// API socket path.
    #[arg(long, env = "KENNEL_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// State directory (per environment: spec.json and the effective policy directory).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Allow this user (name or uid) to use the API; repeatable. Root and the daemon's own user
    /// are always allowed.
    #[arg(long = "allow-user", value_name = "USER")]
    allow_users: Vec<String>,
    /// Allow members of this group (name or gid); repeatable. The socket's group is set to the
    /// first one (mode 0660), so its members can open it.
    #[arg(long = "allow-group", value_name = "GROUP")]
    allow_groups: Vec<String>,
    /// Use this proxy image as is instead of building one from the kennel-proxy binary.
    #[arg(long, value_name = "IMAGE")]
    proxy_image: Option<String>,
    /// The static kennel-proxy binary to build the proxy image from (default: $KENNEL_PROXY_BIN,
    /// next to this executable, or the cargo target directories).
    #[arg(long, value_name = "FILE")]
    proxy_bin: Option<PathBuf>,
    /// Log as JSON lines (for the journal).
    #[arg(long)]
    log_json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    kennel_policy::log_env::init_tracing("kennel-supervisord", "info", args.log_json);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kennel-supervisord: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kennel-supervisord: {err:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = daemon::termination_signal().context("cannot install signal handlers")?;
    let users = daemon::resolve_users(&args.allow_users)?;
    let groups = daemon::resolve_groups(&args.allow_groups)?;
    let authorizer = Authorizer::new(nix::unistd::geteuid().as_raw(), users, groups.clone());
    let state = StateDir::open(&args.state_dir).with_context(|| {
        format!(
            "failed to open the state directory {}",
            args.state_dir.display()
        )
    })?;
    let docker = Arc::new(
        kennel_container::docker::DockerBackend::connect()
            .await
            .context("failed to connect to the Docker engine (check `docker version`)")?,
    );
    let images = Arc::new(daemon::DockerImages::new(
        docker.clone(),
        args.proxy_bin,
        args.proxy_image,
    ));
    let daemon = Daemon::new(docker, images, state, authorizer);
    let listener = daemon::bind_socket(&args.socket, groups.first().copied())?;
    tracing::info!(socket = %args.socket.display(), state_dir = %args.state_dir.display(), "kennel-supervisord listening");
    daemon::run(listener, daemon, shutdown).await;
    if let Err(e) = std::fs::remove_file(&args.socket) {
        tracing::warn!(socket = %args.socket.display(), error = %e, "cannot remove the socket");
    }
    tracing::info!("stopped");
    Ok(())
}
