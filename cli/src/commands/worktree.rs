//! `kennel worktree add NAME [-b BRANCH] [--from REF] [--dir PATH]` and `kennel worktree rm NAME
//! [--force]`: one command per task, as the old README's steps 6–7. `add` creates a git worktree
//! next to the repository (`../<repo>-<NAME>`) with the host's `git` and brings its environment
//! up; `rm` removes the environment and then the worktree, refusing a dirty worktree unless
//! `--force`.
//!
//! git runs on the host, in a repository the agent of another environment may have written to:
//! every call disables hooks (`core.hooksPath=/dev/null`) and `core.fsmonitor`, so nothing the
//! sandbox wrote runs here.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kennel_api::types::{EnvInfo, Removed};

use crate::client::{Client, block_on};
use crate::commands::up::{UpArgs, build_request};

/// `kennel worktree …`.
#[derive(Debug, Subcommand)]
pub enum WorktreeCommand {
    /// Create a worktree next to the repository (`../<repo>-<NAME>`) and bring its environment up.
    Add(AddArgs),
    /// Remove a worktree's environment and the worktree (refuses uncommitted changes without --force).
    Rm(RmArgs),
}

/// Arguments of `kennel worktree add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// Task name: the worktree is `../<repo>-<NAME>`.
    pub name: String,
    /// Branch to create (default: NAME); an existing branch is checked out instead.
    #[arg(short = 'b', long = "branch", value_name = "BRANCH")]
    pub branch: Option<String>,
    /// Start the new branch at this commit-ish (default: HEAD).
    #[arg(long = "from", value_name = "REF")]
    pub from: Option<String>,
    /// Create the worktree here instead of `../<repo>-<NAME>`.
    #[arg(long = "dir", value_name = "PATH")]
    pub dir: Option<PathBuf>,
    /// Only create the worktree; do not run `kennel up` in it.
    #[arg(long = "no-up")]
    pub no_up: bool,
}

/// Arguments of `kennel worktree rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Task name given to `kennel worktree add`.
    pub name: String,
    /// The worktree's directory, if it was created with `--dir`.
    #[arg(long = "dir", value_name = "PATH")]
    pub dir: Option<PathBuf>,
    /// Remove even with uncommitted or untracked changes (they are lost).
    #[arg(long)]
    pub force: bool,
    /// Keep the environment's home volume (by default it goes with the worktree: no workspace
    /// will claim it again).
    #[arg(long)]
    pub keep_home: bool,
}

/// Runs `kennel worktree …` from the current directory.
pub fn run(client: &Client, cmd: WorktreeCommand) -> anyhow::Result<ExitCode> {
    let cwd = std::env::current_dir().context("failed to read the current directory")?;
    match cmd {
        WorktreeCommand::Add(args) => add(client, &cwd, &args),
        WorktreeCommand::Rm(args) => rm(client, &cwd, &args),
    }
}

/// `git` with hooks and fsmonitor off (see the module docs), in `dir`.
fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C").arg(dir).args([
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "core.fsmonitor=false",
    ]);
    c
}

/// Runs `cmd`, returning its trimmed stdout, or an error with its stderr.
fn output(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to run git to {what}; is git installed?"))?;
    if !out.status.success() {
        bail!(
            "git failed to {what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The main worktree of the repository containing `cwd` (the first entry of `git worktree list`).
pub fn main_worktree(cwd: &Path) -> anyhow::Result<PathBuf> {
    let mut c = git(cwd);
    c.args(["worktree", "list", "--porcelain"]);
    let list = output(c, "find the repository").with_context(|| {
        format!(
            "{} is not inside a git repository; run `kennel worktree` in one",
            cwd.display()
        )
    })?;
    let first = list
        .lines()
        .find_map(|l| l.strip_prefix("worktree "))
        .context("git worktree list printed no worktree")?;
    Ok(PathBuf::from(first))
}

/// Checks a task name: it becomes part of a directory name (and the default branch).
fn check_task_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!(
            "task name {name:?}: use letters, digits, '-', '_' and '.', not starting with '.' or '-' (at most 64)"
        );
    }
    Ok(())
}

/// `../<repo>-<NAME>` next to the main worktree, or `dir`.
pub fn worktree_path(main: &Path, name: &str, dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(d) = dir {
        return Ok(if d.is_absolute() {
            d.to_path_buf()
        } else {
            std::env::current_dir()?.join(d)
        });
    }
    let repo = main
        .file_name()
        .with_context(|| format!("repository {} has no directory name", main.display()))?;
    let parent = main
        .parent()
        .with_context(|| format!("repository {} has no parent directory", main.display()))?;
    Ok(parent.join(format!("{}-{name}", repo.to_string_lossy())))
}

/// Creates the worktree for task `name` and returns its path (no environment yet).
pub fn create_worktree(cwd: &Path, args: &AddArgs) -> anyhow::Result<PathBuf> {
    check_task_name(&args.name)?;
    let main = main_worktree(cwd)?;
    let path = worktree_path(&main, &args.name, args.dir.as_deref())?;
    if path.exists() {
        bail!(
            "{} already exists; pick another task name or remove it (`kennel worktree rm {}`)",
            path.display(),
            args.name
        );
    }
    let branch = args.branch.clone().unwrap_or_else(|| args.name.clone());
    let mut check = git(&main);
    check.args(["check-ref-format", "--branch", &branch]);
    output(check, &format!("accept {branch:?} as a branch name"))?;
    let mut exists = git(&main);
    exists.args([
        "rev-parse",
        "--verify",
        "--quiet",
        &format!("refs/heads/{branch}"),
    ]);
    let exists = exists
        .output()
        .context("failed to run git; is git installed?")?
        .status
        .success();
    let mut add = git(&main);
    add.args(["worktree", "add"]);
    match (exists, &args.from) {
        (true, Some(_)) => bail!(
            "branch {branch:?} already exists, so --from cannot apply; drop --from to check it out, or pick another -b"
        ),
        (true, None) => {
            add.arg(&path).arg(&branch);
        }
        (false, from) => {
            add.args(["-b", &branch]).arg(&path);
            if let Some(f) = from {
                add.arg(f);
            }
        }
    }
    output(add, &format!("create the worktree {}", path.display()))?;
    Ok(path)
}

/// `kennel worktree add` run in `cwd`.
pub fn add(client: &Client, cwd: &Path, args: &AddArgs) -> anyhow::Result<ExitCode> {
    let path = create_worktree(cwd, args)?;
    println!("created worktree {}", path.display());
    if args.no_up {
        return Ok(ExitCode::SUCCESS);
    }
    let up = UpArgs {
        spec: None,
        name: None,
        image: None,
        workspace: Some(path.clone()),
        learn: None,
        ..Default::default()
    };
    // build_request prints the spec's warnings (devcontainer.json keys not applied).
    let result = build_request(&up).and_then(|req| crate::commands::up::create(client, &req));
    match result {
        Ok(info) => {
            println!(
                "environment {:?} is {} for {}; `kennel shell {0}` to work in it, `kennel worktree rm {}` when done",
                info.name,
                info.state,
                path.display(),
                args.name
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.context(format!(
            "the worktree {} was created but its environment was not; fix the cause and run `kennel up` there, or `kennel worktree rm {}`",
            path.display(),
            args.name
        ))),
    }
}

/// Removes the worktree of task `name` (after its environment): refuses uncommitted or
/// untracked changes unless `force`. Returns its path.
pub fn remove_worktree(cwd: &Path, args: &RmArgs) -> anyhow::Result<PathBuf> {
    let main = main_worktree(cwd)?;
    let path = worktree_path(&main, &args.name, args.dir.as_deref())?;
    let mut rm = git(&main);
    rm.args(["worktree", "remove"]);
    if args.force {
        // Twice: also removes a locked worktree.
        rm.args(["--force", "--force"]);
    }
    rm.arg(&path);
    output(rm, &format!("remove the worktree {}", path.display()))?;
    Ok(path)
}

/// Whether the worktree at `path` has uncommitted or untracked changes.
pub fn is_dirty(path: &Path) -> anyhow::Result<bool> {
    let mut st = git(path);
    st.args(["status", "--porcelain"]);
    Ok(!output(st, &format!("check {} for changes", path.display()))?.is_empty())
}

/// `kennel worktree rm` run in `cwd`.
pub fn rm(client: &Client, cwd: &Path, args: &RmArgs) -> anyhow::Result<ExitCode> {
    check_task_name(&args.name)?;
    let main = main_worktree(cwd)?;
    let path = worktree_path(&main, &args.name, args.dir.as_deref())?;
    if !path.is_dir() {
        bail!(
            "no worktree at {}; `git worktree list` shows the existing ones",
            path.display()
        );
    }
    // Refuse before touching the environment, so a refusal changes nothing.
    if !args.force && is_dirty(&path)? {
        bail!(
            "{} has uncommitted or untracked changes; commit or stash them, or pass --force to lose them",
            path.display()
        );
    }
    let canonical = std::fs::canonicalize(&path)
        .with_context(|| format!("failed to resolve {}", path.display()))?;
    let envs: Vec<EnvInfo> = block_on(client.get("/envs"))??;
    for env in envs
        .iter()
        .filter(|e| e.workspace.as_deref() == Some(canonical.as_path()))
    {
        let query = if args.keep_home { "" } else { "?purge=true" };
        let removed: Removed = block_on(client.delete(&format!("/envs/{}{query}", env.name)))??;
        if args.keep_home {
            println!(
                "removed environment {:?} (home volume kept: `kennel down --purge {}` removes it)",
                removed.name, removed.name
            );
        } else {
            println!("removed environment {:?} and its home volume", removed.name);
        }
    }
    let path = remove_worktree(cwd, args)?;
    println!(
        "removed worktree {} (its branch is kept; `git branch -d` it when merged)",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, args: &[&str]) {
        let st = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .status()
            .expect("git");
        assert!(st.success(), "git {args:?}");
    }

    fn repo() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let main = d.path().join("proj");
        std::fs::create_dir(&main).expect("mkdir");
        sh(&main, &["init", "-q", "-b", "main"]);
        std::fs::write(main.join("a"), "a").expect("write");
        sh(&main, &["add", "a"]);
        sh(&main, &["commit", "-qm", "init"]);
        (d, main)
    }

    fn add_args(name: &str) -> AddArgs {
        AddArgs {
            name: name.into(),
            branch: None,
            from: None,
            dir: None,
            no_up: true,
        }
    }

    #[test]
    fn add_next_to_the_repo_without_running_hooks_then_rm_refuses_dirty() {
        let (_d, main) = repo();
        // A hook the agent could have written: must not run on the host.
        let hook = main.join(".git/hooks/post-checkout");
        std::fs::write(
            &hook,
            "#!/bin/sh\ntouch \"$(dirname \"$0\")/../../HOOK-RAN\"\n",
        )
        .expect("hook");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");

        let path = create_worktree(&main, &add_args("task1")).expect("add");
        assert_eq!(path, main.parent().expect("parent").join("proj-task1"));
        assert!(path.join("a").is_file());
        assert!(!main.join("HOOK-RAN").exists(), "post-checkout hook ran");
        // From inside the new worktree, the main worktree is still found.
        assert_eq!(main_worktree(&path).expect("main"), main);
        let e = create_worktree(&main, &add_args("task1")).expect_err("exists");
        assert!(e.to_string().contains("already exists"), "{e}");

        // Existing branch + --from is refused; -b with --from works.
        let mut a = add_args("task2");
        a.branch = Some("task1".into());
        a.from = Some("main".into());
        assert!(create_worktree(&main, &a).is_err());
        let mut a = add_args("task3");
        a.branch = Some("feature/x".into());
        a.from = Some("main".into());
        create_worktree(&main, &a).expect("-b --from");

        std::fs::write(path.join("new"), "x").expect("write");
        assert!(is_dirty(&path).expect("status"));
        let rm = RmArgs {
            name: "task1".into(),
            dir: None,
            force: false,
            keep_home: false,
        };
        assert!(
            remove_worktree(&main, &rm).is_err(),
            "git refuses untracked"
        );
        let rm = RmArgs { force: true, ..rm };
        remove_worktree(&main, &rm).expect("forced");
        assert!(!path.exists());
        assert!(check_task_name("../x").is_err());
        assert!(check_task_name("-x").is_err());
    }
}
