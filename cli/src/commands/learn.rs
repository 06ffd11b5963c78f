//! Learn mode: `kennel up --learn DUR` and `kennel allow ENV --from-denials [--select]`.

use std::io::{BufRead, IsTerminal, Write};

use kennel_api::policy::{Denials, LearnRequest, PolicyChanged};

use crate::client::{Client, block_on};
use crate::commands::allow::env_path;

/// Puts `env`'s proxy in learn (report) mode for `d`; the daemon switches it to enforce after.
pub fn start(client: &Client, env: &str, d: std::time::Duration) -> anyhow::Result<()> {
    let path = format!("{}/policy/learn", env_path(env)?);
    let c: PolicyChanged = block_on(client.post(
        &path,
        &LearnRequest {
            for_secs: d.as_secs(),
        },
    ))??;
    println!(
        "learn mode: everything is allowed and logged until {}; then the proxy enforces. Review with `kennel denials {env} --learned`, approve with `kennel allow {env} --from-denials --select`",
        c.expires.unwrap_or_default()
    );
    Ok(())
}

/// The `host:port` entries of every denial (learned and enforced) the current policy does not
/// allow yet, in the order `kennel denials` shows them; of the egress profile `profile`'s proxy
/// and judged against its policy when given.
pub fn pending(client: &Client, env: &str, profile: Option<&str>) -> anyhow::Result<Vec<String>> {
    let base = env_path(env)?;
    // "?profile=NAME" (checked) or "".
    let scope = crate::commands::allow::profile_query(profile)?;
    let mut out = Vec::new();
    for learned in [true, false] {
        let q = match (learned, scope.is_empty()) {
            (true, true) => "?learned=true".to_string(),
            (true, false) => format!("{scope}&learned=true"),
            (false, _) => scope.clone(),
        };
        let d: Denials = block_on(client.get(&format!("{base}/denials{q}")))??;
        for x in d.denials.iter().filter(|x| !x.allowed_now) {
            let e = if x.host.contains(':') {
                format!("[{}]:{}", x.host, x.port)
            } else {
                format!("{}:{}", x.host, x.port)
            };
            if !out.contains(&e) {
                out.push(e);
            }
        }
    }
    Ok(out)
}

/// Asks about each entry on the terminal (`y` keeps it); refuses without a terminal.
pub fn select(
    entries: Vec<String>,
    interactive: bool,
    answers: &mut dyn BufRead,
) -> anyhow::Result<Vec<String>> {
    if !interactive {
        anyhow::bail!(
            "--select asks on a terminal, and stdin is not one; drop --select to take every denial"
        );
    }
    let mut chosen = Vec::new();
    for e in entries {
        print!("allow {e}? [y/N] ");
        std::io::stdout().flush()?;
        let mut line = String::new();
        if answers.read_line(&mut line)? == 0 {
            break;
        }
        if matches!(line.trim(), "y" | "Y" | "yes") {
            chosen.push(e);
        }
    }
    Ok(chosen)
}

/// The entries `kennel allow ENV --from-denials [--select]` adds.
pub fn from_denials(
    client: &Client,
    env: &str,
    profile: Option<&str>,
    ask: bool,
) -> anyhow::Result<Vec<String>> {
    let entries = pending(client, env, profile)?;
    if !ask {
        return Ok(entries);
    }
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    select(entries, interactive, &mut stdin.lock())
}
