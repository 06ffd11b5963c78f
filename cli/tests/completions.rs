//! `kennel completions bash|zsh|fish` and `kennel man`: the scripts complete real subcommands
//! and flags in a real shell, and the man pages render with `man`.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should just fail the test

use std::process::{Command, Output};

fn kennel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kennel"))
        .args(args)
        .env_remove("KENNEL_HOST")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Sources the bash script and asks its completion function what follows `words`, the way bash
/// does on TAB.
fn bash_complete(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={}\nCOMP_LINE='{}'\nCOMP_POINT=${{#COMP_LINE}}\n_kennel kennel '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display(),
        quoted.join(" "),
        words.len() - 1,
        words.join(" "),
        words[words.len() - 1],
        words[words.len().saturating_sub(2)],
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out).lines().map(str::to_string).collect()
}

#[test]
fn bash_completion_completes_subcommands_and_flags() {
    if !have("bash") {
        eprintln!("SKIPPED bash_completion_completes_subcommands_and_flags: no bash");
        return;
    }
    let out = kennel(&["completions", "bash"]);
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("kennel.bash");
    std::fs::write(&script, &out.stdout).unwrap();

    let subcommands = bash_complete(&script, &["kennel", "st"]);
    for want in ["stats", "start", "stop"] {
        assert!(
            subcommands.iter().any(|w| w == want),
            "{want}: {subcommands:?}"
        );
    }
    assert!(!subcommands.iter().any(|w| w == "exec"), "{subcommands:?}");

    let flags = bash_complete(&script, &["kennel", "up", "--wo"]);
    assert!(flags.iter().any(|w| w == "--workspace"), "{flags:?}");

    // The new subcommands complete too.
    let shells = bash_complete(&script, &["kennel", "completions", ""]);
    for want in ["bash", "zsh", "fish"] {
        assert!(shells.iter().any(|w| w == want), "{want}: {shells:?}");
    }
}

#[test]
fn zsh_and_fish_scripts_name_the_subcommands() {
    let zsh = stdout(&kennel(&["completions", "zsh"]));
    assert!(
        zsh.starts_with("#compdef kennel"),
        "{}",
        &zsh[..zsh.len().min(200)]
    );
    assert!(
        zsh.contains("'--workspace=[") || zsh.contains("--workspace"),
        "zsh: --workspace"
    );
    let fish = stdout(&kennel(&["completions", "fish"]));
    assert!(fish.contains("complete -c kennel"), "fish");
    assert!(fish.contains("-a \"stats\""), "fish: stats subcommand");
    // A real shell, when there is one, accepts the script.
    for (shell, script, check) in [("zsh", &zsh, "-n"), ("fish", &fish, "--no-execute")] {
        if !have(shell) {
            eprintln!("note: {shell} not installed; its script was checked as text only");
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kennel.completion");
        std::fs::write(&path, script).unwrap();
        let out = Command::new(shell).arg(check).arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn an_unknown_shell_is_refused_with_the_choices() {
    let out = kennel(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value 'tcsh'"), "{err}");
    assert!(err.contains("bash, zsh, fish"), "{err}");
}

#[test]
fn man_pages_render_with_man() {
    let top = kennel(&["man"]);
    assert!(top.status.success());
    let roff = stdout(&top);
    assert!(
        roff.contains(".TH kennel 1"),
        "{}",
        &roff[..roff.len().min(300)]
    );
    assert!(
        roff.contains("kennel\\-up(1)") || roff.contains("up"),
        "lists subcommands"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = kennel(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "kennel.1",
        "kennel-up.1",
        "kennel-policy-check.1",
        "kennel-completions.1",
    ] {
        assert!(dir.path().join(page).is_file(), "{page} written");
    }
    assert!(
        !dir.path().join("kennel-help.1").exists(),
        "no page for clap's help"
    );
    if !have("man") {
        eprintln!("note: man not installed; pages checked as roff text only");
        let up = std::fs::read_to_string(dir.path().join("kennel-up.1")).unwrap();
        assert!(up.contains("\\-\\-workspace"), "{up}");
        return;
    }
    let rendered = Command::new("man")
        .arg("-l")
        .arg(dir.path().join("kennel-up.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        // ASCII hyphens (a UTF-8 locale renders `-` as U+2010).
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(rendered.status.success());
    // man justifies lines with extra spaces: compare word sequences.
    let text = String::from_utf8_lossy(&rendered.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(text.contains("kennel-up"), "{text}");
    assert!(
        text.contains("kennel up"),
        "synopsis names the full command: {text}"
    );
    assert!(text.contains("--workspace"), "{text}");
}
