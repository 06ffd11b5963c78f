//! `kennel logs ENV [--proxy | --service NAME] [--follow] [--since DUR] [--json]`.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use kennel_container::backend::{LogsRequest, LogsTarget};

use crate::client::{Client, block_on};
use crate::commands::line_renderer::LineRenderer;

/// Arguments of `kennel logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The environment.
    pub env: String,
    /// The proxy's output (its access log, rendered one readable line per request).
    #[arg(long, conflicts_with = "service")]
    pub proxy: bool,
    /// A service's output.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// The output of the proxy of egress profile NAME (its access log rendered like --proxy's).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["service", "proxy"])]
    pub profile: Option<String>,
    /// Keep printing new output until Ctrl-C (or the container stops).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only output from the last DUR (`10m`, `2h`, `1d`).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// With --proxy: print the access log's JSON lines as they are.
    #[arg(long)]
    pub json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 90s, 10m, 2h, 1d)"))
}

/// Runs `kennel logs`.
pub fn run(client: &Client, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let target = match (&args.service, args.proxy, &args.profile) {
        (_, _, Some(p)) => {
            kennel_container::spec::check_profile_name(p)
                .map_err(|e| anyhow::anyhow!("invalid egress profile name {p:?}: {e}"))?;
            LogsTarget::ProfileProxy(p.clone())
        }
        (Some(s), _, None) => LogsTarget::Service(s.clone()),
        (None, true, None) => LogsTarget::Proxy,
        (None, false, None) => LogsTarget::Sandbox,
    };
    let since_unix = match args.since {
        None => None,
        Some(d) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .context("the system clock is before 1970")?;
            Some(i64::try_from(now.saturating_sub(d).as_secs()).unwrap_or(i64::MAX))
        }
    };
    let render = matches!(target, LogsTarget::Proxy | LogsTarget::ProfileProxy(_)) && !args.json;
    let req = LogsRequest {
        target,
        follow: args.follow,
        since_unix,
    };
    let path = format!("/envs/{}/logs", args.env);
    let code = block_on(async {
        let mut err = tokio::io::stderr();
        if render {
            let mut out = LineRenderer::new(render_access_line);
            let code = client.output_stream(&path, &req, &mut out, &mut err).await;
            out.finish()?;
            anyhow::Ok(code?)
        } else {
            let mut out = tokio::io::stdout();
            anyhow::Ok(
                client
                    .output_stream(&path, &req, &mut out, &mut err)
                    .await?,
            )
        }
    })??;
    Ok(if code == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Renders one proxy access-log JSON line readably:
/// `TIME DECISION METHOD HOST:PORT status=… reason=… rule=… up/down … ms`. Lines that are not
/// access records (the proxy's own messages) are printed unchanged.
pub fn render_access_line(line: &str) -> String {
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(line) else {
        return line.to_string();
    };
    let s = |k: &str| -> String {
        match m.get(k) {
            Some(serde_json::Value::String(v)) => v.clone(),
            Some(serde_json::Value::Null) | None => String::new(),
            Some(v) => v.to_string(),
        }
    };
    if !m.contains_key("decision") || !m.contains_key("host") {
        return line.to_string();
    }
    let mut out = format!(
        "{} {:<5} {:<7} {}:{} status={} reason={}",
        s("time"),
        s("decision").to_uppercase(),
        s("method"),
        s("host"),
        s("port"),
        s("status"),
        s("reason")
    );
    for k in ["rule", "resolved", "sni", "error"] {
        let v = s(k);
        if !v.is_empty() {
            out.push_str(&format!(" {k}={v}"));
        }
    }
    out.push_str(&format!(
        " up={}B down={}B {}ms",
        s("bytes_up"),
        s("bytes_down"),
        s("duration_ms")
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::render_access_line;

    #[test]
    fn access_records_become_one_readable_line_and_other_lines_stay() {
        let line = r#"{"time":"2026-11-30T20:00:00Z","client":"10.0.0.2:1234","method":"CONNECT","host":"evil.example","port":443,"resolved":null,"decision":"deny","reason":"not_allowlisted","rule":null,"status":403,"bytes_up":0,"bytes_down":0,"duration_ms":1,"upstream":"direct","sni":null,"error":"no rule allows evil.example"}"#;
        let r = render_access_line(line);
        assert_eq!(
            r,
            "2026-11-30T20:00:00Z DENY  CONNECT evil.example:443 status=403 reason=not_allowlisted error=no rule allows evil.example up=0B down=0B 1ms"
        );
        assert_eq!(render_access_line("proxy listening"), "proxy listening");
        assert_eq!(render_access_line(r#"{"msg":"x"}"#), r#"{"msg":"x"}"#);
    }
}
