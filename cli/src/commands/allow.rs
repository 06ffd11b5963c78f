//! `kennel allow ENV HOST[:PORT] … [--for DUR] [--note TEXT]` and `kennel deny ENV HOST …`:
//! change a running environment's policy; the proxy reloads it within a second, nothing restarts.

use std::process::ExitCode;

use clap::Args;
use kennel_api::policy::{AllowRequest, DenyRequest, PolicyChanged};

use crate::client::{Client, block_on};

/// Arguments of `kennel allow`.
#[derive(Debug, Args)]
pub struct AllowArgs {
    /// The environment.
    pub env: String,
    /// Change the policy of the environment's egress profile NAME (`[egress.profiles.NAME]`,
    /// served by its own proxy) instead of the environment's own.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// What to allow: `host`, `host:port`, `*.example.com` (subdomains), `.example.com` (apex and
    /// subdomains), an IP address or CIDR, `[v6]:port`. Without a port (or with one of the
    /// policy's default ports) the entry goes into `[allow]`; another port gets a `[[rule]]`.
    #[arg(required_unless_present = "from_denials", value_name = "HOST[:PORT]")]
    pub entries: Vec<String>,
    /// Also allow every destination `kennel denials` lists (learned and enforced) that the
    /// policy does not allow yet (with --profile: what that profile's proxy denied).
    #[arg(long)]
    pub from_denials: bool,
    /// With --from-denials: ask about each one on the terminal.
    #[arg(long, requires = "from_denials")]
    pub select: bool,
    /// Remove the entries again after this long (`30m`, `2h`, `1d`); the daemon does it, also
    /// after a restart. Entries that were already allowed are left alone.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    pub for_: Option<std::time::Duration>,
    /// Why (kept in the environment's change log).
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
}

/// Arguments of `kennel deny`.
#[derive(Debug, Args)]
pub struct DenyArgs {
    /// The environment.
    pub env: String,
    /// Change the policy of the environment's egress profile NAME instead of its own.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Host patterns, IP addresses or CIDRs to deny on every port (deny wins over every allow
    /// entry). Live tunnels to them are closed.
    #[arg(required = true, value_name = "HOST")]
    pub entries: Vec<String>,
    /// Why (kept in the environment's change log).
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
}

/// `--for`/`--since` values: `humantime` durations (`90s`, `30m`, `2h`, `1d 12h`), at least 1 s.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e}; expected e.g. 30s, 10m, 2h, 1d"))?;
    if d < std::time::Duration::from_secs(1) {
        return Err(format!("duration {s:?} is shorter than one second"));
    }
    Ok(d)
}

/// The environment name as it goes into an API path (checked here so a `/` cannot change the
/// endpoint).
pub fn env_path(env: &str) -> anyhow::Result<String> {
    kennel_container::spec::validate_env_name(env)
        .map_err(|e| anyhow::anyhow!("invalid environment name {env:?}: {e}"))?;
    Ok(format!("/envs/{env}"))
}

/// `?profile=NAME` for an API path (the name checked here, so it cannot change the query),
/// or nothing without a profile.
pub fn profile_query(profile: Option<&str>) -> anyhow::Result<String> {
    match profile {
        None => Ok(String::new()),
        Some(p) => {
            kennel_container::spec::check_profile_name(p)
                .map_err(|e| anyhow::anyhow!("invalid egress profile name {p:?}: {e}"))?;
            Ok(format!("?profile={p}"))
        }
    }
}

/// `--profile NAME ` (with its space) for commands printed to the person, or nothing.
pub fn profile_flag(profile: Option<&str>) -> String {
    profile.map_or_else(String::new, |p| format!("--profile {p} "))
}

fn print_changed(c: &PolicyChanged, profile: Option<&str>) {
    for line in &c.changes {
        println!("{line}");
    }
    if let Some(at) = &c.expires {
        println!("new entries expire at {at}");
    }
    let whose = match profile {
        Some(p) => format!("egress profile {p:?} of {:?}", c.env),
        None => format!("{:?}", c.env),
    };
    println!(
        "{}: the proxy of {whose} applies this within a second (`kennel policy show {}{}`)",
        c.file.display(),
        profile_flag(profile),
        c.env
    );
}

/// Runs `kennel allow`.
pub fn run_allow(client: &Client, args: AllowArgs) -> anyhow::Result<ExitCode> {
    let path = format!(
        "{}/policy/allow{}",
        env_path(&args.env)?,
        profile_query(args.profile.as_deref())?
    );
    let mut entries = args.entries;
    if args.from_denials {
        entries.extend(crate::commands::learn::from_denials(
            client,
            &args.env,
            args.profile.as_deref(),
            args.select,
        )?);
        if entries.is_empty() {
            println!("nothing to allow: no denials the policy does not allow yet");
            return Ok(ExitCode::SUCCESS);
        }
    }
    let req = AllowRequest {
        entries,
        for_secs: args.for_.map(|d| d.as_secs()),
        note: args.note,
    };
    let changed: PolicyChanged = block_on(client.post(&path, &req))??;
    print_changed(&changed, args.profile.as_deref());
    Ok(ExitCode::SUCCESS)
}

/// Runs `kennel deny`.
pub fn run_deny(client: &Client, args: DenyArgs) -> anyhow::Result<ExitCode> {
    let path = format!(
        "{}/policy/deny{}",
        env_path(&args.env)?,
        profile_query(args.profile.as_deref())?
    );
    let req = DenyRequest {
        entries: args.entries,
        note: args.note,
    };
    let changed: PolicyChanged = block_on(client.post(&path, &req))??;
    print_changed(&changed, args.profile.as_deref());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_or_say_why() {
        assert_eq!(
            parse_duration("2h"),
            Ok(std::time::Duration::from_secs(7200))
        );
        assert_eq!(parse_duration("3s"), Ok(std::time::Duration::from_secs(3)));
        let e = parse_duration("2 fortnights").expect_err("invalid");
        assert!(e.contains("invalid duration \"2 fortnights\""), "{e}");
        assert!(
            parse_duration("10ms")
                .expect_err("short")
                .contains("shorter")
        );
        assert!(env_path("a/b").is_err());
        assert_eq!(profile_query(None).expect("none"), "");
        assert_eq!(profile_query(Some("dind")).expect("valid"), "?profile=dind");
        for bad in ["a&b=c", "proxy", "Dind", ""] {
            assert!(profile_query(Some(bad)).is_err(), "{bad}");
        }
    }
}
