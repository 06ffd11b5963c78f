//! `kennel completions SHELL` and `kennel man`: shell completion scripts (clap_complete) and
//! roff man pages (clap_mangen), both generated from the same argument definitions the CLI
//! parses with, so they cannot drift from it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, ValueEnum};

/// Shells `kennel completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// Bash (`source <(kennel completions bash)`).
    Bash,
    /// Zsh (a `_kennel` file in a directory on `$fpath`).
    Zsh,
    /// Fish (`~/.config/fish/completions/kennel.fish`).
    Fish,
}

/// Arguments of `kennel completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write the completion script for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Arguments of `kennel man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write `kennel.1` and one page per subcommand (`kennel-up.1`, `kennel-policy-check.1`, …)
    /// into this directory instead of printing `kennel.1` to stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Runs `kennel completions`: the script goes to stdout.
pub fn run_completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut out = Vec::new();
    write_completions(args.shell, &mut out);
    std::io::stdout()
        .write_all(&out)
        .context("cannot write the completion script to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the completion script for `shell` to `out`.
pub fn write_completions(shell: Shell, out: &mut dyn Write) {
    let mut cmd = crate::Cli::command();
    let name = cmd.get_name().to_string();
    match shell {
        Shell::Bash => clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, name, out),
        Shell::Zsh => clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, name, out),
        Shell::Fish => clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, name, out),
    }
}

/// Runs `kennel man`.
pub fn run_man(args: ManArgs) -> anyhow::Result<ExitCode> {
    let cmd = crate::Cli::command();
    match args.dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .manual("kennel manual")
                .render(&mut out)
                .context("cannot render the man page")?;
            std::io::stdout()
                .write_all(&out)
                .context("cannot write the man page to stdout")?;
        }
        Some(dir) => {
            let written = write_man_pages(&dir)?;
            println!("wrote {} man pages to {}", written.len(), dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `kennel.1` and a page per (nested) subcommand into `dir` (created if missing);
/// returns the files written.
pub fn write_man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // `help` is clap's own; `kennel help X` is the same text as `kennel-X.1`.
    let mut cmd = crate::Cli::command().disable_help_subcommand(true);
    // Building names each subcommand `kennel-up` (file name, title) and its usage `kennel up …`.
    cmd.build();
    let mut written = Vec::new();
    write_page(dir, cmd, &mut written)?;
    Ok(written)
}

fn write_page(dir: &Path, cmd: clap::Command, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .source(format!("kennel {}", env!("CARGO_PKG_VERSION")))
        .manual("kennel manual");
    let path = dir.join(man.get_filename());
    let mut out = Vec::new();
    man.render(&mut out)
        .with_context(|| format!("cannot render {}", path.display()))?;
    std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(dir, sub.clone(), written)?;
    }
    Ok(())
}
