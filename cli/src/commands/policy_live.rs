//! `kennel policy show|edit|import ENV`: a running environment's policy, through the daemon.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use kennel_api::policy::{
    ImportPreview, ImportRequest, PolicyChanged, PolicyFileDoc, PolicyReplace, PolicyView,
};
use kennel_api::types::EnvInfo;

use crate::client::{Client, block_on};
use crate::commands::allow::{env_path, profile_flag, profile_query};

/// Largest whitelist `policy import` reads.
const MAX_WHITELIST: u64 = 1 << 20;

/// Arguments of `kennel policy show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The environment.
    pub env: String,
    /// The policy of the environment's egress profile NAME instead of its own.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `kennel policy edit`.
#[derive(Debug, Args)]
pub struct EditArgs {
    /// The environment.
    pub env: String,
    /// Edit the policy of the environment's egress profile NAME instead of its own.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Why (kept in the environment's change log).
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
}

/// Arguments of `kennel policy import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The environment.
    pub env: String,
    /// The whitelist to import (default: the workspace's, as `kennel up` found it).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Apply without asking (for scripts). Without it, kennel asks on the terminal and refuses
    /// when there is none.
    #[arg(long)]
    pub yes: bool,
}

/// Runs `kennel policy show`.
pub fn show(client: &Client, args: ShowArgs) -> anyhow::Result<ExitCode> {
    let view: PolicyView = block_on(client.get(&format!(
        "{}/policy{}",
        env_path(&args.env)?,
        profile_query(args.profile.as_deref())?
    )))??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", show_text(&view));
    Ok(ExitCode::SUCCESS)
}

/// `kennel policy show` as text: mode, default ports, then one line per entry with its
/// `file:line`.
pub fn show_text(v: &PolicyView) -> String {
    let ports: Vec<String> = v.default_ports.iter().map(u16::to_string).collect();
    let mut out = format!(
        "environment {:?}: {} ({}), default ports {}\n",
        v.env,
        v.file.display(),
        v.mode,
        ports.join(",")
    );
    for e in &v.entries {
        let ports = if e.action == "deny" {
            "all ports".to_string()
        } else {
            e.ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let exp = e
            .expires
            .as_ref()
            .map(|x| format!("  (expires {x})"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<5} {:<40} {:<12} {}{exp}\n",
            e.action, e.pattern, ports, e.at
        ));
    }
    out
}

/// Runs `kennel policy edit`: `$VISUAL`/`$EDITOR` (default `vi`) on a private copy of the
/// environment's policy file; the daemon validates the result before swapping it in.
pub fn edit(client: &Client, args: EditArgs) -> anyhow::Result<ExitCode> {
    let editor = std::env::var("VISUAL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| {
            std::env::var("EDITOR")
                .ok()
                .filter(|v| !v.trim().is_empty())
        })
        .unwrap_or_else(|| "vi".to_string());
    edit_with(client, args, &editor)
}

/// [`edit`] with the editor command given (a shell word list, run as `EDITOR "$file"`).
pub fn edit_with(client: &Client, args: EditArgs, editor: &str) -> anyhow::Result<ExitCode> {
    let base = env_path(&args.env)?;
    let query = profile_query(args.profile.as_deref())?;
    let doc: PolicyFileDoc = block_on(client.get(&format!("{base}/policy/file{query}")))??;
    let copy = private_copy(&args.env, &doc.content)?;
    // Through the shell, so EDITOR may carry arguments (`code --wait`), as git does.
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&copy)
        .status()
        .with_context(|| format!("cannot run the editor {editor:?}"))?;
    if !status.success() {
        anyhow::bail!(
            "the editor {editor:?} exited with {status}; nothing applied (your copy: {})",
            copy.display()
        );
    }
    let edited = std::fs::read_to_string(&copy)
        .with_context(|| format!("cannot read the edited copy {}", copy.display()))?;
    if edited == doc.content {
        let _ = std::fs::remove_file(&copy);
        println!("no changes");
        return Ok(ExitCode::SUCCESS);
    }
    let req = PolicyReplace {
        content: edited,
        base_sha256: doc.sha256,
        note: args.note,
    };
    match block_on(client.post::<_, PolicyChanged>(&format!("{base}/policy/file{query}"), &req))? {
        Ok(c) => {
            let _ = std::fs::remove_file(&copy);
            for line in &c.changes {
                println!("{line}");
            }
            println!(
                "the proxy of {:?}{} applies it within a second (`kennel policy show {}{}`)",
                c.env,
                args.profile
                    .as_deref()
                    .map_or_else(String::new, |p| format!(" (egress profile {p:?})")),
                profile_flag(args.profile.as_deref()),
                c.env
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("kennel: {e}");
            eprintln!(
                "kennel: the edit was NOT applied; the environment keeps its current policy. Your edited copy is {} (line numbers above refer to it)",
                copy.display()
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// A file only the caller can read, holding `content`, for the editor.
fn private_copy(env: &str, content: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir();
    for n in 0..100u32 {
        let path = dir.join(format!(
            "kennel-policy-{env}-{}-{n}.toml",
            std::process::id()
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(content.as_bytes())
                    .with_context(|| format!("cannot write {}", path.display()))?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create {}", path.display()));
            }
        }
    }
    anyhow::bail!(
        "cannot create a private copy of the policy in {}",
        dir.display()
    )
}

/// Reads the whitelist as the person: a regular file only (the sandbox can write the workspace
/// and could leave a symlink to one of the person's files), at most 1 MiB, UTF-8.
fn read_whitelist(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot read the whitelist {}", path.display()))?;
    if !meta.file_type().is_file() {
        anyhow::bail!(
            "{} is not a regular file (a symlink or special file); the sandbox can write the workspace, so kennel imports only a regular file",
            path.display()
        );
    }
    if meta.len() > MAX_WHITELIST {
        anyhow::bail!(
            "{} is {} bytes; a whitelist may have at most {MAX_WHITELIST}",
            path.display(),
            meta.len()
        );
    }
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the whitelist {} as UTF-8 text", path.display()))
}

/// The workspace's whitelist as `kennel up` would find it.
fn workspace_whitelist(info: &EnvInfo) -> anyhow::Result<PathBuf> {
    let ws = info.workspace.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "environment {:?} has no recorded workspace; pass --file",
            info.name
        )
    })?;
    let spec = kennel_container::spec::EnvSpec::from_workspace(
        &ws,
        &kennel_container::spec::SpecOverrides {
            workspace: Some(ws.clone()),
            name: Some(info.name.clone()),
            ..Default::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}\nhint: pass the whitelist with --file"))?;
    spec.egress.whitelist.ok_or_else(|| {
        anyhow::anyhow!(
            "the workspace {} has no project whitelist (egress.whitelist); pass --file",
            ws.display()
        )
    })
}

/// Runs `kennel policy import`: shows the diff, asks, applies.
pub fn import(client: &Client, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    import_with(client, args, interactive, &mut stdin.lock())
}

/// [`import`] with the terminal check and the answer's source given (for tests).
pub fn import_with(
    client: &Client,
    args: ImportArgs,
    interactive: bool,
    answer: &mut dyn BufRead,
) -> anyhow::Result<ExitCode> {
    let base = env_path(&args.env)?;
    let file = match &args.file {
        Some(f) => f.clone(),
        None => {
            let info: EnvInfo = block_on(client.get(&base))??;
            workspace_whitelist(&info)?
        }
    };
    let content = read_whitelist(&file)?;
    let url = format!("{base}/policy/import");
    let preview: ImportPreview = block_on(client.post(
        &url,
        &ImportRequest {
            content: content.clone(),
            apply: false,
            base_sha256: None,
        },
    ))??;
    println!("{}", diff_text(&file, &preview));
    if preview.added.is_empty() && preview.removed.is_empty() {
        println!("nothing to import");
        return Ok(ExitCode::SUCCESS);
    }
    if !args.yes {
        if !interactive {
            anyhow::bail!(
                "not applied: confirm on a terminal, or pass --yes (stdin is not a terminal)"
            );
        }
        print!("apply these changes to {:?}? [y/N] ", args.env);
        std::io::stdout().flush()?;
        let mut line = String::new();
        answer.read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes" | "YES") {
            println!("not applied");
            return Ok(ExitCode::from(1));
        }
    }
    let done: ImportPreview = block_on(client.post(
        &url,
        &ImportRequest {
            content,
            apply: true,
            base_sha256: Some(preview.base_sha256),
        },
    ))??;
    println!(
        "applied: {} added, {} removed; the proxy of {:?} applies it within a second",
        done.added.len(),
        done.removed.len(),
        args.env
    );
    Ok(ExitCode::SUCCESS)
}

/// The diff as `+ entry` / `- entry` lines.
pub fn diff_text(file: &Path, p: &ImportPreview) -> String {
    let mut out = format!("{} compared with the imported copy:", file.display());
    for a in &p.added {
        out.push_str(&format!("\n+ {a}"));
    }
    for r in &p.removed {
        out.push_str(&format!("\n- {r}"));
    }
    out
}
