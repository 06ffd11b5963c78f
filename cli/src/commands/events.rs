//! `kennel events [ENV] [--follow] [--json] [--since DUR]`: what the daemon recorded —
//! environments created, started, stopped, refreshed (and why), removed; health rules that
//! fired; policy changes and refusals; images built; daemon starts and reconciles.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use kennel_api::events::{Event, EventQuery, since_ago};

use crate::client::{Client, block_on};
use crate::commands::line_renderer::LineRenderer;

/// Arguments of `kennel events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this environment's events.
    pub env: Option<String>,
    /// Keep printing new events until Ctrl-C.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Print each event as a JSON line.
    #[arg(long)]
    pub json: bool,
    /// Only events from the last DUR (`10m`, `2h`, `1d`).
    #[arg(long, value_name = "DUR", value_parser = crate::commands::allow::parse_duration)]
    pub since: Option<Duration>,
}

/// Runs `kennel events`.
pub fn run(client: &Client, args: EventsArgs) -> anyhow::Result<ExitCode> {
    let q = EventQuery {
        env: args.env.clone(),
        since_unix: args.since.map(since_ago),
        follow: args.follow,
    };
    let code = block_on(async {
        // Raw JSON lines with `--json`, else each event rendered (other lines as they are).
        let json = args.json;
        let mut out =
            LineRenderer::new(
                move |line: &str| match serde_json::from_str::<Event>(line) {
                    Ok(ev) if !json => render(&ev),
                    _ => line.to_string(),
                },
            );
        let mut err = tokio::io::stderr();
        let code = client
            .output_stream("/events", &q, &mut out, &mut err)
            .await?;
        out.finish()?;
        if out.printed == 0 && !args.json {
            eprintln!(
                "no events{}{}",
                args.env
                    .as_deref()
                    .map(|e| format!(" of {e:?}"))
                    .unwrap_or_default(),
                args.since
                    .map(|d| format!(" in the last {}", humantime::format_duration(d)))
                    .unwrap_or_default()
            );
        }
        anyhow::Ok(code)
    })??;
    Ok(if code == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One event for people: `TIME  KIND  ENV  MESSAGE`.
pub fn render(ev: &Event) -> String {
    format!(
        "{}  {:<18} {:<16} {}",
        ev.time,
        ev.kind,
        ev.env.as_deref().unwrap_or("-"),
        ev.message
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_time_kind_env_and_message() {
        let ev = Event {
            time: "2026-11-30T20:00:00.000Z".into(),
            unix_ms: 1_795_000_000_000,
            env: Some("web".into()),
            kind: "health-rule-fired".into(),
            message: "health rule max_age fired".into(),
            details: serde_json::Map::new(),
        };
        assert_eq!(
            render(&ev),
            "2026-11-30T20:00:00.000Z  health-rule-fired  web              health rule max_age fired"
        );
    }
}
