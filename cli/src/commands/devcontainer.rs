//! `kennel devcontainer init [--check]`: the IDE's "Open in Dev Container" as a kennel sandbox.
//!
//! `init` brings the workspace's environment up without a sandbox (`kennel up --egress-only`)
//! and writes `.devcontainer/kennel/devcontainer.json` from the sandbox's own settings (asked of
//! the daemon, so image, user, variables, mounts and hardening are the ones kennel would use);
//! the user's own `.devcontainer/devcontainer.json` is never touched. `--check` compares the file
//! with what kennel would write and asks the daemon about every container on the environment's
//! network; anything weaker than kennel's is listed and the exit code is 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use kennel_api::types::{EnvInfo, IdeContainer};
use kennel_container::ide::{DEVCONTAINER_FILE, FILE_HEADER, Weakness};

use crate::client::{Client, block_on};
use crate::commands::up::{UpArgs, build_request, create_egress_only};

/// `kennel devcontainer …`.
#[derive(Debug, Subcommand)]
pub enum DevcontainerCommand {
    /// Write `.devcontainer/kennel/devcontainer.json` for VS Code / JetBrains "Open in Dev
    /// Container" (after `kennel up --egress-only`); with --check, report what is weaker.
    Init(InitArgs),
}

/// Arguments of `kennel devcontainer init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The workspace (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Environment name (default: from the spec, else the workspace directory's name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Spec file to use instead of `<workspace>/kennel.toml`.
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// Write nothing: compare the file with kennel's settings and report every container on the
    /// environment's network that is weaker than kennel's; exit 1 when something is.
    #[arg(long)]
    pub check: bool,
}

/// Runs `kennel devcontainer …`.
pub fn run(client: &Client, cmd: DevcontainerCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DevcontainerCommand::Init(args) if args.check => check(client, &args),
        DevcontainerCommand::Init(args) => init(client, &args),
    }
}

fn workspace_of(args: &InitArgs) -> anyhow::Result<PathBuf> {
    let dir = match &args.workspace {
        Some(w) => w.clone(),
        None => std::env::current_dir().context("failed to read the current directory")?,
    };
    std::fs::canonicalize(&dir).with_context(|| {
        format!(
            "workspace {} does not exist; pass an existing directory",
            dir.display()
        )
    })
}

/// The `initializeCommand`: this `kennel` binary (an IDE's PATH need not have it), this socket,
/// `up --egress-only` for this workspace and environment name.
pub fn initialize_command(
    client: &Client,
    workspace: &Path,
    name: &str,
    spec: Option<&Path>,
) -> anyhow::Result<Vec<String>> {
    let exe = std::env::current_exe().context("cannot find the path of this kennel binary")?;
    let mut argv = vec![
        exe.display().to_string(),
        "--socket".to_string(),
        client.socket().display().to_string(),
        "up".to_string(),
        "--egress-only".to_string(),
        "--workspace".to_string(),
        workspace.display().to_string(),
        "--name".to_string(),
        name.to_string(),
    ];
    if let Some(s) = spec {
        argv.push("--spec".into());
        argv.push(s.display().to_string());
    }
    Ok(argv)
}

/// The devcontainer.json kennel writes for environment `name`.
fn expected(
    client: &Client,
    workspace: &Path,
    name: &str,
    spec: Option<&Path>,
) -> anyhow::Result<serde_json::Value> {
    let ide: IdeContainer = block_on(client.get(&format!("/envs/{name}/ide")))??;
    let mut doc = ide.devcontainer;
    let init = initialize_command(client, workspace, name, spec)?;
    if let Some(o) = doc.as_object_mut() {
        o.insert("initializeCommand".into(), init.into());
    }
    Ok(doc)
}

fn spec_path(args: &InitArgs) -> anyhow::Result<Option<PathBuf>> {
    args.spec
        .as_ref()
        .map(|f| {
            std::fs::canonicalize(f)
                .with_context(|| format!("spec file {} does not exist", f.display()))
        })
        .transpose()
}

fn init(client: &Client, args: &InitArgs) -> anyhow::Result<ExitCode> {
    let workspace = workspace_of(args)?;
    let spec = spec_path(args)?;
    let dir = workspace.join(DEVCONTAINER_FILE);
    let dir = dir
        .parent()
        .context("the devcontainer.json path has no directory")?
        .to_path_buf();
    // First, so the daemon mounts it read-only into the IDE's container (the sandbox may read
    // the file, never change what runs on the host).
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let req = build_request(&UpArgs {
        spec: spec.clone(),
        name: args.name.clone(),
        image: None,
        workspace: Some(workspace.clone()),
        learn: None,
        ..Default::default()
    })?;
    eprintln!(
        "bringing up the network and proxy of {} (kennel up --egress-only) …",
        workspace.display()
    );
    let info = create_egress_only(client, &req)?;
    let doc = expected(client, &workspace, &info.name, spec.as_deref())?;
    let text = format!("{FILE_HEADER}{}\n", serde_json::to_string_pretty(&doc)?);
    let file = workspace.join(DEVCONTAINER_FILE);
    match std::fs::read_to_string(&file) {
        Ok(old) if old == text => {
            println!("{} is up to date", file.display());
        }
        Ok(_) => {
            // Never lose a person's edit: the old file is kept next to the new one.
            let kept = file.with_extension("json.orig");
            std::fs::rename(&file, &kept)
                .with_context(|| format!("cannot keep the old file as {}", kept.display()))?;
            write_atomic(&file, &text)?;
            println!(
                "wrote {} (the previous file differed and is kept as {})",
                file.display(),
                kept.display()
            );
        }
        Err(_) => {
            write_atomic(&file, &text)?;
            println!("wrote {}", file.display());
        }
    }
    // Machine-specific (absolute paths, this socket) and carrying the sandbox's variables:
    // never committed.
    write_atomic(
        &dir.join(".gitignore"),
        "# Written by kennel devcontainer init: machine-specific, holds the sandbox's variables.\n*\n",
    )?;
    print_steps(&info);
    Ok(ExitCode::SUCCESS)
}

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().context("no parent directory")?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    // Only the person (and the IDE they run) need it: it holds the sandbox's variables.
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn print_steps(info: &EnvInfo) {
    println!(
        "environment {:?}: network {}, proxy {}; the IDE's container will be kennel-{}-ide",
        info.name,
        info.network,
        info.proxy_address.as_deref().unwrap_or("-"),
        info.name
    );
    println!("next:");
    println!(
        "  VS Code:   Dev Containers: Reopen in Container (or Open Folder in Container…), pick \"kennel: {}\"",
        info.name
    );
    println!(
        "  JetBrains: Remote Development > Dev Containers > New Dev Container > From Local Project, choose .devcontainer/kennel/devcontainer.json"
    );
    println!(
        "  the IDE downloads its server through the proxy: allow its hosts first (docs/environments.md, \"IDE dev containers\")"
    );
    println!(
        "  `kennel devcontainer init --check` reports anything weaker than kennel's; `kennel down {}` removes the IDE's container too",
        info.name
    );
}

fn check(client: &Client, args: &InitArgs) -> anyhow::Result<ExitCode> {
    let workspace = workspace_of(args)?;
    let spec = spec_path(args)?;
    let file = workspace.join(DEVCONTAINER_FILE);
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "cannot read {}; `kennel devcontainer init` writes it",
            file.display()
        )
    })?;
    let envs: Vec<EnvInfo> = block_on(client.get("/envs"))??;
    let env = envs
        .iter()
        .find(|e| {
            e.workspace.as_deref() == Some(workspace.as_path())
                && args.name.as_ref().is_none_or(|n| *n == e.name)
        })
        .with_context(|| {
            format!(
                "no environment for workspace {}; `kennel devcontainer init` (or the IDE's initializeCommand) brings it up",
                workspace.display()
            )
        })?;
    let want = expected(client, &workspace, &env.name, spec.as_deref())?;
    let (diffs, weaker) = kennel_container::ide::check_file(&text, &want)
        .map_err(|m| anyhow::anyhow!("{}: {m}", file.display()))?;
    let containers: Vec<Weakness> = block_on(client.get(&format!("/envs/{}/weaker", env.name)))??;
    for w in &weaker {
        println!("WEAKER  {}: {w}", file.display());
    }
    for d in diffs.iter().filter(|d| !weaker.contains(d)) {
        println!("differs {}: {d}", file.display());
    }
    for c in &containers {
        for p in &c.problems {
            println!("WEAKER  container {} ({}): {p}", c.container, c.role);
        }
    }
    if weaker.is_empty() && containers.is_empty() {
        println!(
            "{} and every container on {} are as strict as kennel's settings",
            file.display(),
            env.network
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "kennel: weaker than kennel's settings (above); `kennel devcontainer init` rewrites the file (keeping yours as devcontainer.json.orig), then rebuild the IDE's container"
        );
        Ok(ExitCode::from(1))
    }
}
