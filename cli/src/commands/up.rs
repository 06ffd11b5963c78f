//! `kennel up`: create an environment from a workspace (kennel.toml, or the seed layout).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use kennel_api::types::{CreateEnv, EnvInfo};
use kennel_container::spec::{EnvSpec, SpecOverrides};

use crate::client::{Client, block_on};

/// Arguments of `kennel up`.
#[derive(Debug, Default, Args)]
pub struct UpArgs {
    /// Spec file to use instead of `<workspace>/kennel.toml`.
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// Environment name (default: from the spec, else the workspace directory's name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Sandbox image (default: from the spec, else `kennel-sandbox:latest`).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Workspace directory, bind-mounted at /workspace (default: the spec's, else the current directory).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Start the proxy in learn (report) mode for this long: everything is allowed and what
    /// would be denied is logged (`kennel denials ENV --learned`); then it enforces by itself.
    #[arg(long, value_name = "DURATION", value_parser = crate::commands::allow::parse_duration)]
    pub learn: Option<std::time::Duration>,
    /// Remove the environment when its last `kennel exec`/`shell` session ends (the home
    /// volume is kept, as with `kennel down`).
    #[arg(long)]
    pub rm: bool,
    /// Remove the environment this long after its creation (`30m`, `8h`, `2d`), also when the
    /// daemon was restarted in between.
    #[arg(long, value_name = "DURATION", value_parser = crate::commands::allow::parse_duration)]
    pub ttl: Option<std::time::Duration>,
}

/// `kennel up`'s command line: [`UpArgs`] plus the flags only the command line has.
#[derive(Debug, Args)]
pub struct UpCmd {
    /// What to bring up.
    #[command(flatten)]
    pub args: UpArgs,
    /// Only the environment's network, proxy, services, image and home volume, no sandbox
    /// container: for the IDE's dev container (`kennel devcontainer init`), whose
    /// `initializeCommand` runs this. Idempotent; fast when the environment is already up.
    #[arg(long)]
    pub egress_only: bool,
}

/// Reads the spec as the calling user (so `~` and file permissions are the caller's), imports
/// the project whitelist, and asks the daemon to create the environment.
pub fn build_request(args: &UpArgs) -> anyhow::Result<CreateEnv> {
    let cwd = std::env::current_dir().context("failed to read the current directory")?;
    let workspace = match &args.workspace {
        Some(w) => Some(std::fs::canonicalize(w).with_context(|| {
            format!(
                "workspace {} does not exist; pass an existing directory",
                w.display()
            )
        })?),
        None => None,
    };
    let spec_file = match &args.spec {
        Some(f) => Some(
            std::fs::canonicalize(f)
                .with_context(|| format!("spec file {} does not exist", f.display()))?,
        ),
        None => None,
    };
    let overrides = SpecOverrides {
        name: args.name.clone(),
        image: args.image.clone(),
        workspace,
        spec_file,
    };
    let spec = EnvSpec::from_workspace(&cwd, &overrides).map_err(|e| {
        anyhow::anyhow!(
            "{e}\nhint: fix the spec (kennel.toml or .devcontainer/) and run `kennel up` again"
        )
    })?;
    // Spec loading already rejected invalid legacy variables; what is left are warnings that
    // name the `.env` file and line (e.g. UPSTREAM_SOCKS5 and UPSTREAM_HTTP both set).
    if let Ok(legacy) = spec.egress.legacy.resolve() {
        for w in &legacy.warnings {
            eprintln!("kennel: {w}");
        }
    }
    for w in &spec.warnings {
        eprintln!("kennel: warning: {w}");
    }
    let project_whitelist = match &spec.egress.whitelist {
        Some(path) => Some(std::fs::read_to_string(path).with_context(|| {
            format!(
                "failed to read the project whitelist {} (egress.whitelist)",
                path.display()
            )
        })?),
        None => None,
    };
    let mut spec_doc: kennel_api::types::SpecDoc = (&spec).into();
    spec_doc.ttl_secs = args.ttl.map(|d| d.as_secs());
    spec_doc.remove_on_exit = args.rm;
    Ok(CreateEnv {
        spec: spec_doc,
        project_whitelist,
    })
}

/// Runs `kennel up [--egress-only]`.
pub fn run_cmd(client: &Client, cmd: UpCmd) -> anyhow::Result<ExitCode> {
    if !cmd.egress_only {
        return run(client, cmd.args);
    }
    if cmd.args.learn.is_some() {
        anyhow::bail!(
            "--learn needs a sandbox; with --egress-only run `kennel learn ENV DURATION` instead"
        );
    }
    let req = build_request(&cmd.args)?;
    let info = create_egress_only(client, &req)?;
    if info.already_existed {
        println!("environment {:?} is {} (already up)", info.name, info.state);
    } else {
        println!(
            "environment {:?} is {}: network {}, proxy {}; no sandbox container (the IDE's dev container takes its place)",
            info.name,
            info.state,
            info.network,
            info.proxy_address.as_deref().unwrap_or("-")
        );
    }
    for w in &info.warnings {
        eprintln!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks the daemon for an egress-only environment (`kennel up --egress-only`), printing the
/// creation's output to stderr as [`create`] does.
pub fn create_egress_only(client: &Client, req: &CreateEnv) -> anyhow::Result<EnvInfo> {
    let mut show = |line: &str| eprintln!("| {line}");
    Ok(block_on(client.create_streaming_at(
        "/envs?egress_only=true",
        req,
        &mut show,
    ))??)
}

/// Runs `kennel up`.
pub fn run(client: &Client, args: UpArgs) -> anyhow::Result<ExitCode> {
    let req = build_request(&args)?;
    let name = req.spec.name.clone();
    let image = match &req.spec.build {
        Some(b) => format!(
            "image built from {} on the environment's network",
            b.dockerfile.display()
        ),
        None => format!("image {}", req.spec.image),
    };
    eprintln!(
        "creating environment {name:?}{} ({image}, workspace {}) …",
        if req.spec.name_is_default {
            " (or <name>-<hash> if another workspace has that name)"
        } else {
            ""
        },
        req.spec.workspace.display()
    );
    let info = create(client, &req)?;
    print_up(&info);
    if let Some(d) = args.learn {
        crate::commands::learn::start(client, &info.name, d)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks the daemon to create the environment, printing the creation's output (image build,
/// lifecycle commands) to stderr as it happens, each line prefixed with `| `.
pub fn create(client: &Client, req: &CreateEnv) -> anyhow::Result<EnvInfo> {
    let mut show = |line: &str| eprintln!("| {line}");
    Ok(block_on(client.create_streaming(req, &mut show))??)
}

fn print_up(info: &EnvInfo) {
    if info.already_existed {
        println!(
            "environment {:?} already exists for this workspace; nothing created",
            info.name
        );
    }
    println!("environment {:?} is {}", info.name, info.state);
    for c in &info.containers {
        println!("  {:<8} {:<32} {}", c.role, c.name, c.state);
    }
    println!("  network  {}", info.network);
    if let Some(p) = &info.proxy_address {
        println!("  proxy    {p} (the sandbox's only way out)");
    }
    if let Some(d) = &info.policy_dir {
        println!("  policy   {}", d.display());
    }
    for p in &info.profiles {
        println!(
            "  profile  {} at {} ({}, {} allow entries; `kennel allow --profile {} {} HOST:PORT`)",
            p.name,
            p.proxy_address,
            p.proxy_container,
            p.allow_count
                .map_or_else(|| "?".to_string(), |n| n.to_string()),
            p.name,
            info.name
        );
    }
    if !info.env_names.is_empty() {
        println!("  env      {}", info.env_names.join(" "));
    }
    if let Some(d) = &info.docker {
        println!("  docker   {} ({}): {}", d.mode, d.docker_host, d.risk);
    }
    if let Some(t) = &info.expires {
        println!("  expires  {t} (removed then, `--ttl`)");
    }
    if info.remove_on_exit {
        println!("  --rm     removed when its last exec session ends");
    }
    for w in &info.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "next: `kennel exec {0} -- sh -c 'id; env | grep -i proxy'`, and `kennel down {0}` when done",
        info.name
    );
}
