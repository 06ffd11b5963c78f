//! `kennel policy …`: validate policies, explain decisions, migrate old whitelists.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use kennel_policy::migrate::{Outcome, migrate};
use kennel_policy::{
    DEFAULT_PORTS, Decision, LegacyEnv, ListFormat, Policy, Reason, Target, TargetError,
};

/// `kennel policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy and print the decision for each target.
    ///
    /// Exit status: 0 when every target is allowed, 1 when any is denied, 2 when the policy is
    /// invalid. Errors are printed as FILE:LINE:COL: message.
    Check(CheckArgs),
    /// Translate a seed whitelist or Tinyproxy filter file into a native list, listing every
    /// example host whose verdict changes and every line that could not be translated.
    ///
    /// The native list goes to stdout; the report is appended as `#` comments, so the output
    /// is itself a valid list file. Exit status 1 when some line could not be translated.
    Migrate(MigrateArgs),
    /// A running environment's effective policy: every entry with the file:line it is written at.
    Show(crate::commands::policy_live::ShowArgs),
    /// Edit a running environment's policy file in $VISUAL/$EDITOR; the result is validated
    /// and swapped in atomically (the proxy reloads it within a second), or refused with
    /// FILE:LINE:COL and not applied.
    Edit(crate::commands::policy_live::EditArgs),
    /// Re-read the workspace's whitelist (which the sandbox can edit): show the added and
    /// removed entries and apply them only after confirmation (`--yes` for scripts).
    Import(crate::commands::policy_live::ImportArgs),
}

/// How `kennel policy check` reads FILE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FileFormat {
    /// `.toml` files are policies; anything else is a seed-format list.
    Auto,
    /// A policy TOML file.
    Toml,
    /// A native list file (`example.com` exact, `*.example.com`, `.example.com`).
    List,
    /// A seed-format list (`example.com` covers its subdomains; `\.example\.com$`).
    Seed,
}

/// Arguments of `kennel policy check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy file, then targets. The first argument is the policy file when it names an
    /// existing file; otherwise every argument is a target and the embedded default policy is
    /// checked. Targets: `host`, `host:port`, `[v6]:port` or `http(s)://…` (default port 443
    /// for a bare host).
    #[arg(value_name = "FILE|TARGET")]
    pub args: Vec<String>,
    /// The policy file (instead of the first positional argument).
    #[arg(long, short = 'p', value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// How to read the policy file.
    #[arg(long, value_enum, default_value_t = FileFormat::Auto)]
    pub format: FileFormat,
    /// Apply legacy variables (UPSTREAM_SOCKS5, UPSTREAM_HTTP, UPSTREAM_PROXY, NO_UPSTREAM,
    /// USER_WHITELIST_DOMAINS) from this dotenv file.
    #[arg(long, value_name = "FILE")]
    pub dotenv: Option<PathBuf>,
    /// Apply the legacy variables from the process environment.
    #[arg(long)]
    pub legacy_env: bool,
    /// Print one JSON object per target instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `kennel policy migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// A seed whitelist (one domain per line) or Tinyproxy filter file (one regex per line).
    pub file: PathBuf,
}

/// Runs a `kennel policy` subcommand.
pub fn run(cmd: PolicyCommand, client: &crate::client::Client) -> anyhow::Result<ExitCode> {
    use crate::commands::policy_live;
    let client = || client.clone();
    match cmd {
        PolicyCommand::Show(a) => policy_live::show(&client(), a),
        PolicyCommand::Edit(a) => policy_live::edit(&client(), a),
        PolicyCommand::Import(a) => policy_live::import(&client(), a),
        PolicyCommand::Check(args) => check(args),
        PolicyCommand::Migrate(args) => migrate_file(&args.file),
    }
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut positional = args.args.into_iter().peekable();
    let file = match args.policy {
        Some(p) => Some(p),
        None => positional
            .next_if(|a| Path::new(a).is_file())
            .map(PathBuf::from),
    };
    let targets: Vec<String> = positional.collect();
    let mut legacy = if args.legacy_env {
        LegacyEnv::from_process_env()
    } else {
        LegacyEnv::default()
    };
    if let Some(env_file) = &args.dotenv {
        let from_file = match LegacyEnv::from_dotenv(env_file) {
            Ok(l) => l,
            Err(e) => return Ok(invalid(&e)),
        };
        legacy = from_file.or(legacy);
    }
    // Warnings (e.g. UPSTREAM_SOCKS5 and UPSTREAM_HTTP both set) name file and line; errors are
    // reported by the policy load below with the same text.
    if let Ok(settings) = legacy.resolve() {
        for w in &settings.warnings {
            eprintln!("{w}");
        }
    }
    let loaded = match &file {
        None => Policy::embedded_default_with(&legacy),
        Some(path) => match (args.format, is_toml(path)) {
            (FileFormat::Toml, _) | (FileFormat::Auto, true) => Policy::load_with(path, &legacy),
            (FileFormat::List, _) => Policy::load_list(path, ListFormat::Native, &legacy),
            (FileFormat::Seed, _) | (FileFormat::Auto, false) => {
                Policy::load_list(path, ListFormat::Seed, &legacy)
            }
        },
    };
    let policy = match loaded {
        Ok(p) => p,
        Err(e) => return Ok(invalid(&e)),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if targets.is_empty() {
        let s = policy.stats();
        let name = file.as_ref().map_or_else(
            || "embedded default policy".to_string(),
            |f| f.display().to_string(),
        );
        writeln!(
            out,
            "ok {name}: {} allow patterns, {} deny patterns, {} rules, {} cidrs, {} upstream routes; mode {}; default upstream {}",
            s.allow_patterns,
            s.deny_patterns,
            s.rules,
            s.cidrs,
            s.routes,
            policy.mode().as_str(),
            policy.default_upstream()
        )
        .context("failed to write to stdout")?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut any_denied = false;
    for input in &targets {
        let line = match parse_target(input) {
            Err(e) => {
                any_denied = true;
                if args.json {
                    serde_json::json!({
                        "input": input,
                        "decision": "deny",
                        // Old name of `decision` (the access log's word), kept for one release.
                        "verdict": "deny",
                        "reason": "invalid_target",
                        "error": e.to_string(),
                    })
                    .to_string()
                } else {
                    format!("deny {input} (invalid target: {e})")
                }
            }
            Ok(t) => {
                let d = policy.decide(&t);
                any_denied |= !d.is_allowed();
                if args.json {
                    serde_json::json!({
                        "input": input,
                        "target": t.to_string(),
                        "decision": d.verdict.as_str(),
                        // Old name of `decision` (the access log's word), kept for one release.
                        "verdict": d.verdict.as_str(),
                        "reason": d.reason.as_str(),
                        "rule": d.rule.as_ref().map(ToString::to_string),
                        "pattern": d.rule.as_ref().map(|r| r.pattern.to_string()),
                        "would_deny": d.would_deny,
                        "upstream": policy.upstream_for(&t.host).to_string(),
                    })
                    .to_string()
                } else {
                    format!("{} {t} ({})", d.verdict.as_str(), explain(&d))
                }
            }
        };
        writeln!(out, "{line}").context("failed to write to stdout")?;
    }
    Ok(if any_denied {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn is_toml(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
}

fn invalid(e: &kennel_policy::PolicyError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(2)
}

/// `host`, `host:port`, `[v6]:port` or an absolute URI; a bare host means port 443.
fn parse_target(s: &str) -> Result<Target, TargetError> {
    if s.contains("://") {
        return Target::parse_absolute_uri(s).map(|(t, _)| t);
    }
    match Target::parse_authority(s) {
        Err(TargetError::MissingPort) => Target::from_host_port(s, DEFAULT_PORTS[1]),
        other => other,
    }
}

fn explain(d: &Decision) -> String {
    let rule = d.rule.as_ref().map(ToString::to_string).unwrap_or_default();
    let base = match d.reason {
        Reason::AllowedByRule | Reason::AllowedByCidr => format!("rule {rule}"),
        Reason::DeniedByRule => format!("denied by rule {rule}"),
        Reason::PortNotAllowed => format!("port not allowed; rule {rule} allows other ports"),
        Reason::NotInAllowlist | Reason::IpLiteralNotAllowed => d.reason.describe().to_string(),
    };
    if d.would_deny {
        format!("report mode; would deny: {base}")
    } else {
        base
    }
}

fn migrate_file(path: &Path) -> anyhow::Result<ExitCode> {
    let src = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    let m = migrate(&src);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut text = String::new();
    text.push_str(&format!(
        "# kennel native list migrated from {} by `kennel policy migrate`\n",
        path.display()
    ));
    for p in m.patterns() {
        text.push_str(&format!("{p}\n"));
    }
    let untranslated: Vec<_> = m.untranslatable().collect();
    if !untranslated.is_empty() {
        text.push_str(
            "#\n# NOT TRANSLATED (add the hosts these lines were meant to allow by hand):\n",
        );
        for l in &untranslated {
            if let Outcome::Untranslatable { why } = &l.outcome {
                text.push_str(&format!("#   line {}: {}  -- {why}\n", l.line, l.original));
            }
        }
    }
    // Per line, because only some lines had unescaped dots (or were URL filters).
    let noted: Vec<_> = m
        .lines
        .iter()
        .filter_map(|l| match &l.outcome {
            Outcome::Translated { notes, .. } if !notes.is_empty() => Some((l, notes)),
            _ => None,
        })
        .collect();
    if !noted.is_empty() {
        text.push_str("#\n# What the old lines did that kennel does not (per line):\n");
        for (l, notes) in noted {
            for n in notes {
                text.push_str(&format!("#   line {} {}: {n}\n", l.line, l.original));
            }
        }
    }
    text.push_str("#\n# Verdict changes (old Tinyproxy filter -> kennel):\n");
    for l in &m.lines {
        if let Outcome::Translated {
            pattern, changes, ..
        } = &l.outcome
        {
            for c in changes {
                text.push_str(&format!(
                    "#   line {} {} -> {pattern}: {} {} -> {}  ({})\n",
                    l.line,
                    l.original,
                    c.host,
                    verdict(c.old_allowed),
                    verdict(c.new_allowed),
                    c.why
                ));
            }
        }
    }
    text.push_str(
        "#   every entry: CONNECT to any port (e.g. github.com:22) was allowed -> only ports 80 and 443 are allowed unless a [[rule]] names other ports\n",
    );
    out.write_all(text.as_bytes())
        .context("failed to write to stdout")?;
    Ok(if untranslated.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "denied" }
}
