//! Proxy configuration: a serde struct with defaults and one [`ProxyConfig::validate`] (pingora
//! style). Errors name the file, line and key.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole `kennel-proxy.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Addresses the proxy port listens on (several allowed, IPv4 and IPv6).
    pub listen: Vec<SocketAddr>,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`, `/policy`); `None` disables it.
    pub admin: Option<SocketAddr>,
    /// Policy source.
    pub policy: PolicySettings,
    /// Access-log destination and format.
    pub access_log: AccessLogSettings,
    /// Limits and timeouts.
    pub limits: Limits,
    /// DNS resolution.
    pub resolver: ResolverSettings,
    /// Upstream-proxy dialer settings (the routes themselves are in the policy).
    pub upstream: UpstreamConfig,
    /// Close CONNECT tunnels whose TLS ClientHello has no SNI or an SNI different from the
    /// CONNECT host (name targets only). Also refuses non-TLS tunnels to name targets (see
    /// `plaintext_tunnel_ports`). `false` turns every tunnel check off, which lets a client
    /// reach any site behind a shared front end of an allowed name (plain HTTP with another
    /// `Host`, or a TLS SNI for another site).
    pub require_sni: bool,
    /// Ports on which a CONNECT tunnel to a name may carry a non-TLS protocol (the client's
    /// first bytes are not a TLS ClientHello, or the destination speaks first), e.g. `[22]` for
    /// git over SSH. Default empty: such tunnels are closed (`not_tls`), because a plaintext
    /// request to an allowed name can carry any `Host` header and shared front ends route by it.
    pub plaintext_tunnel_ports: Vec<u16>,
    /// Let TLS tunnels use Encrypted Client Hello (`encrypted_client_hello` / draft
    /// `encrypted_server_name`). Default false: such tunnels are closed (`sni_ech`), because
    /// the SNI kennel checks is then only the public "cover" name and the real one is hidden.
    pub allow_ech: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8888))],
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
            policy: PolicySettings::default(),
            access_log: AccessLogSettings::default(),
            limits: Limits::default(),
            resolver: ResolverSettings::default(),
            upstream: UpstreamConfig::default(),
            require_sni: true,
            plaintext_tunnel_ports: Vec::new(),
            allow_ech: false,
        }
    }
}

/// Where the policy comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySettings {
    /// Policy TOML file; `None` = the embedded default policy.
    pub file: Option<PathBuf>,
    /// A legacy `.env` file (UPSTREAM_SOCKS5, NO_UPSTREAM, USER_WHITELIST_DOMAINS …).
    pub dotenv: Option<PathBuf>,
    /// Also honour the legacy variables from the process environment (the binary sets this).
    pub process_env: bool,
    /// Debounce of the file watcher, in milliseconds (default 200).
    pub watch_debounce_ms: Option<u64>,
    /// Watch the policy files for changes (default true).
    pub watch: Option<bool>,
    /// How deny messages name the policy (default: the policy file's path). kennel-supervisord
    /// sets the host path of the environment's policy, because the path inside the proxy
    /// container means nothing to the person (or agent) reading the message.
    pub shown_as: Option<String>,
    /// The kennel environment this proxy serves (set by kennel-supervisord): deny messages then
    /// also say which `kennel allow ENV HOST:PORT` a person on the host can run.
    pub kennel_env: Option<String>,
}

/// Access-log destination.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogDestination {
    /// Standard output (default).
    #[default]
    Stdout,
    /// Standard error.
    Stderr,
    /// Nowhere.
    Off,
    /// Append to a file (`{ file = "/var/log/kennel/access.log" }`).
    #[serde(untagged)]
    File {
        /// Path of the file, created if missing.
        file: PathBuf,
    },
}

/// Access-log format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (default).
    #[default]
    Json,
    /// `key=value` pairs, for eyes.
    Text,
}

/// `[access_log]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogSettings {
    /// `"stdout"`, `"stderr"`, `"off"` or `{ file = "…" }`.
    pub destination: LogDestination,
    /// `"json"` or `"text"`.
    pub format: LogFormat,
    /// For a file destination: when the file would grow past this many bytes it is renamed to
    /// `<file>.1` (replacing the previous one) and a new file is started, so the log never takes
    /// more than about twice this on disk. `None` (default) = never rotate.
    pub rotate_bytes: Option<u64>,
}

/// `[limits]`: every number has a default; durations are in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Maximum concurrent client connections (further clients wait in the listen backlog).
    pub max_connections: usize,
    /// Maximum size of a request head (request line + headers), in bytes; larger → 431.
    pub max_head_bytes: usize,
    /// Time a client has to send a complete request head (slowloris guard).
    pub header_timeout_ms: u64,
    /// Time to connect to an origin or upstream; exceeded → 504.
    pub connect_timeout_ms: u64,
    /// A tunnel or keep-alive connection with no traffic for this long is closed.
    pub idle_timeout_ms: u64,
    /// On shutdown, how long live connections may take to finish.
    pub drain_timeout_ms: u64,
    /// Relay buffer per direction, in bytes.
    pub buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_head_bytes: 64 * 1024,
            header_timeout_ms: 10_000,
            connect_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            drain_timeout_ms: 10_000,
            buffer_bytes: 64 * 1024,
        }
    }
}

impl Limits {
    /// Header timeout as a duration.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }
    /// Connect timeout as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    /// Idle timeout as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// Drain deadline as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
}

/// `[resolver]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ResolverSettings {
    /// Static name → addresses map, consulted before DNS (like `/etc/hosts`).
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
    /// Never send DNS queries: names not in `hosts` fail to resolve (tests, air-gapped hosts).
    pub static_only: bool,
    /// DNS servers (`ip:port`, UDP then TCP) to use instead of `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
}

/// `[upstream]`: settings of the upstream-proxy dialer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Extra CA bundle (PEM) trusted for `https://` upstream proxies.
    pub ca_file: Option<PathBuf>,
}

/// A configuration error; Display names the file, line and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config file: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown key / wrong type.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong (names the key).
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        /// The file (`<defaults>` for in-process configs).
        path: PathBuf,
        /// The offending key, dotted.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl ProxyConfig {
    /// Read and validate a TOML config file. Relative paths inside are resolved against the
    /// file's directory.
    pub fn load(path: &Path) -> Result<ProxyConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::from_toml_str(&text, path)?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = cfg.policy.file.as_mut() {
            rebase(p);
        }
        if let Some(p) = cfg.policy.dotenv.as_mut() {
            rebase(p);
        }
        if let LogDestination::File { file } = &mut cfg.access_log.destination {
            rebase(file);
        }
        if let Some(p) = cfg.upstream.ca_file.as_mut() {
            rebase(p);
        }
        Ok(cfg)
    }

    /// Parse TOML text as if read from `path` (used in messages), then validate.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<ProxyConfig, ConfigError> {
        let cfg: ProxyConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        cfg.validate_at(path, Some(text))?;
        Ok(cfg)
    }

    /// Check values that serde cannot (ranges, non-empty lists).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_at(Path::new("<config>"), None)
    }

    fn validate_at(&self, path: &Path, text: Option<&str>) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| {
            // Point at the key's line when we have the text.
            let shown = match text.and_then(|t| find_key_line(t, key)) {
                Some(line) => PathBuf::from(format!("{}:{line}", path.display())),
                None => path.to_path_buf(),
            };
            ConfigError::Invalid {
                path: shown,
                key: key.to_string(),
                message: message.to_string(),
            }
        };
        if self.listen.is_empty() {
            return Err(invalid(
                "listen",
                "at least one listen address is needed, e.g. listen = [\"127.0.0.1:8888\"]",
            ));
        }
        let l = &self.limits;
        let checks: [(&str, bool, &str); 6] = [
            (
                "limits.max_connections",
                l.max_connections == 0,
                "must be at least 1",
            ),
            (
                "limits.max_head_bytes",
                l.max_head_bytes < 1024 || l.max_head_bytes > 1 << 20,
                "must be between 1024 and 1048576",
            ),
            (
                "limits.header_timeout_ms",
                l.header_timeout_ms == 0,
                "must be at least 1",
            ),
            (
                "limits.connect_timeout_ms",
                l.connect_timeout_ms == 0,
                "must be at least 1",
            ),
            (
                "limits.idle_timeout_ms",
                l.idle_timeout_ms == 0,
                "must be at least 1",
            ),
            (
                "limits.buffer_bytes",
                l.buffer_bytes < 4096 || l.buffer_bytes > 16 << 20,
                "must be between 4096 and 16777216",
            ),
        ];
        for (key, bad, msg) in checks {
            if bad {
                return Err(invalid(key, msg));
            }
        }
        for name in self.resolver.hosts.keys() {
            if kennel_policy::Host::parse(name).is_err() {
                return Err(invalid(
                    "resolver.hosts",
                    &format!("{name:?} is not a valid host name"),
                ));
            }
        }
        Ok(())
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Line of the last path segment of a dotted key (best effort, for messages).
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    let last = key.rsplit('.').next()?;
    text.lines()
        .position(|l| {
            let t = l.trim_start();
            t.starts_with(last) && t[last.len()..].trim_start().starts_with('=')
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = ProxyConfig::from_toml_str(
            "listen = [\"127.0.0.1:1\"]\n[limits]\nmax_conections = 5\n",
            Path::new("/etc/k.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("/etc/k.toml:3:"), "{err}");
        assert!(err.contains("max_conections"), "{err}");
    }

    #[test]
    fn bad_value_names_key_and_line() {
        let err =
            ProxyConfig::from_toml_str("[limits]\nmax_connections = 0\n", Path::new("k.toml"))
                .unwrap_err()
                .to_string();
        assert_eq!(
            err,
            "k.toml:2: key `limits.max_connections`: must be at least 1"
        );
    }

    #[test]
    fn full_example_parses() {
        let cfg = ProxyConfig::from_toml_str(
            r#"
listen = ["127.0.0.1:8888", "[::1]:8888"]
admin = "127.0.0.1:9901"
require_sni = false
plaintext_tunnel_ports = [22]
[policy]
file = "policy.toml"
[access_log]
destination = { file = "/tmp/access.log" }
format = "json"
[limits]
max_connections = 100
[resolver]
static_only = true
hosts = { "origin.test" = ["127.0.0.1", "::1"] }
[upstream]
ca_file = "ca.pem"
"#,
            Path::new("k.toml"),
        )
        .unwrap();
        assert_eq!(cfg.listen.len(), 2);
        assert_eq!(
            cfg.access_log.destination,
            LogDestination::File {
                file: "/tmp/access.log".into()
            }
        );
        assert_eq!(cfg.resolver.hosts["origin.test"].len(), 2);
        assert_eq!(cfg.plaintext_tunnel_ports, vec![22]);
        assert!(ProxyConfig::default().plaintext_tunnel_ports.is_empty());
    }
}
