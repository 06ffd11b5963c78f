//! The log settings shared by kennel's three binaries (`kennel-proxy`, `kennel-supervisord`,
//! `kennel`) and the container backend that starts proxies, and the one subscriber set-up the
//! binaries use ([`init_tracing`]). It lives in this crate because it is the one every binary and
//! the backend already depend on.

/// The variable holding the log filter (`tracing` `EnvFilter` syntax, e.g. `info` or
/// `kennel_proxy=debug`).
pub const LOG_VAR: &str = "KENNEL_LOG";

/// Accepted as an alias of [`LOG_VAR`] (what Rust tooling and older kennel setups set);
/// [`LOG_VAR`] wins when both are set.
pub const LOG_VAR_ALIAS: &str = "RUST_LOG";

/// The log filter a binary should use and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter {
    /// The filter directive.
    pub directive: String,
    /// The variable it was read from; `None` when it is the binary's default.
    pub from: Option<&'static str>,
}

/// Picks the log filter: [`LOG_VAR`], else [`LOG_VAR_ALIAS`], else `default`. Empty values count
/// as unset. `lookup` reads a variable (`|k| std::env::var(k).ok()` in a binary, a map in tests).
pub fn log_filter(lookup: impl Fn(&str) -> Option<String>, default: &str) -> LogFilter {
    for var in [LOG_VAR, LOG_VAR_ALIAS] {
        if let Some(v) = lookup(var).filter(|v| !v.trim().is_empty()) {
            return LogFilter {
                directive: v.trim().to_string(),
                from: Some(var),
            };
        }
    }
    LogFilter {
        directive: default.to_string(),
        from: None,
    }
}

/// Whether log output may carry ANSI colour codes: only on a terminal, and not when `NO_COLOR`
/// is set to a non-empty value (<https://no-color.org>). Files, pipes and `docker logs` get plain
/// text.
pub fn use_ansi(is_terminal: bool, lookup: impl Fn(&str) -> Option<String>) -> bool {
    is_terminal && lookup("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the `tracing` subscriber of a kennel binary: stderr, filtered by [`LOG_VAR`] (alias
/// [`LOG_VAR_ALIAS`], else `default`), colour only on a terminal ([`use_ansi`]), JSON lines when
/// `json`. An invalid filter is reported on stderr (naming `binary` and the variable), not
/// silently replaced, and `default` is used.
pub fn init_tracing(binary: &str, default: &str, json: bool) {
    use std::io::IsTerminal as _;
    let env = |k: &str| std::env::var(k).ok();
    let chosen = log_filter(env, default);
    let filter = tracing_subscriber::EnvFilter::try_new(&chosen.directive).unwrap_or_else(|e| {
        eprintln!(
            "{binary}: warning: {}={:?} is not a valid log filter ({e}); using {default}",
            chosen.from.unwrap_or(LOG_VAR),
            chosen.directive
        );
        tracing_subscriber::EnvFilter::new(default)
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(use_ansi(std::io::stderr().is_terminal(), env))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_string())
        }
    }

    #[test]
    fn kennel_log_wins_rust_log_is_the_alias_empty_is_unset() {
        let f = log_filter(
            env(&[("KENNEL_LOG", "warn"), ("RUST_LOG", "debug")]),
            "info",
        );
        assert_eq!((f.directive.as_str(), f.from), ("warn", Some("KENNEL_LOG")));
        let f = log_filter(env(&[("KENNEL_LOG", " "), ("RUST_LOG", "debug")]), "info");
        assert_eq!((f.directive.as_str(), f.from), ("debug", Some("RUST_LOG")));
        let f = log_filter(env(&[]), "info");
        assert_eq!((f.directive.as_str(), f.from), ("info", None));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_ansi(true, env(&[])));
        assert!(!use_ansi(false, env(&[])));
        assert!(!use_ansi(true, env(&[("NO_COLOR", "1")])));
        assert!(use_ansi(true, env(&[("NO_COLOR", "")])));
    }
}
