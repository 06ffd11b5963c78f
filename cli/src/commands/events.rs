//! `kennel events [ENV] [--follow] [--json] [--since DUR]`: what the daemon recorded —
//! environments created, started, stopped, refreshed (and why), removed; health rules that
//! fired; policy changes and refusals; images built; daemon starts and reconciles.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use kennel_api::events::{Event, EventQuery, since_ago};
use tokio::io::AsyncWrite;

use crate::client::{Client, block_on};

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
        let mut out = Renderer {
            json: args.json,
            partial: Vec::new(),
            printed: 0,
        };
        let mut err = tokio::io::stderr();
        let code = client
            .output_stream("/events", &q, &mut out, &mut err)
            .await?;
        out.emit(true)?;
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

/// Prints complete JSON lines as they come: raw with `--json`, else rendered.
struct Renderer {
    json: bool,
    partial: Vec<u8>,
    printed: usize,
}

impl Renderer {
    fn emit(&mut self, all: bool) -> std::io::Result<()> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        while let Some(pos) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            self.print(&mut out, &String::from_utf8_lossy(&line[..pos]))?;
        }
        if all && !self.partial.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned();
            self.print(&mut out, &rest)?;
        }
        out.flush()
    }

    fn print(&mut self, out: &mut impl std::io::Write, line: &str) -> std::io::Result<()> {
        self.printed += 1;
        if self.json {
            return writeln!(out, "{line}");
        }
        match serde_json::from_str::<Event>(line) {
            Ok(ev) => writeln!(out, "{}", render(&ev)),
            Err(_) => writeln!(out, "{line}"),
        }
    }
}

impl AsyncWrite for Renderer {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.partial.extend_from_slice(buf);
        std::task::Poll::Ready(self.emit(false).map(|()| buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
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
