//! The access log: one line per request or tunnel, with constant field names (smokescreen's
//! canonical decision line).

use std::io::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::{AccessLogSettings, LogDestination, LogFormat};

/// One access-log record. Field names are part of kennel's interface (docs/proxy.md).
#[derive(Debug, Clone, Serialize, Default)]
pub struct AccessRecord {
    /// RFC 3339 UTC time the request/tunnel ended.
    pub time: String,
    /// Client socket address.
    pub client: String,
    /// "CONNECT", "GET", …
    pub method: String,
    /// Target host as normalised by the policy (or as sent, when unparsable).
    pub host: String,
    /// Target port.
    pub port: u16,
    /// The checked address the proxy connected to (or asked a `socks5://` upstream for).
    pub resolved: Option<String>,
    /// "allow", "deny", "would_deny" (report mode) or "error".
    pub decision: &'static str,
    /// Stable snake_case reason code.
    pub reason: String,
    /// The matched policy rule, "file:line".
    pub rule: Option<String>,
    /// HTTP status sent to the client (200 for an established tunnel; 0 if none was sent).
    pub status: u16,
    /// Bytes from the client to the destination (bodies/tunnel payload).
    pub bytes_up: u64,
    /// Bytes from the destination to the client.
    pub bytes_down: u64,
    /// Duration in milliseconds.
    pub duration_ms: u64,
    /// Upstream used: "direct" or the upstream URL without credentials.
    pub upstream: String,
    /// SNI seen in the tunnel's ClientHello, if any.
    pub sni: Option<String>,
    /// Human-readable detail of an error or denial.
    pub error: Option<String>,
}

/// The access-log writer.
pub struct AccessLog {
    format: LogFormat,
    out: Option<Mutex<Box<dyn Write + Send>>>,
}

/// The access-log file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open access log {path}: {source}")]
pub struct LogOpenError {
    /// The file.
    pub path: std::path::PathBuf,
    /// The I/O error.
    pub source: std::io::Error,
}

impl AccessLog {
    /// Open the configured destination.
    pub fn open(settings: &AccessLogSettings) -> Result<AccessLog, LogOpenError> {
        let out: Option<Box<dyn Write + Send>> = match &settings.destination {
            LogDestination::Stdout => Some(Box::new(std::io::stdout())),
            LogDestination::Stderr => Some(Box::new(std::io::stderr())),
            LogDestination::Off => None,
            LogDestination::File { file } => {
                let f = open_append(file).map_err(|source| LogOpenError {
                    path: file.clone(),
                    source,
                })?;
                match settings.rotate_bytes {
                    None => Some(Box::new(f)),
                    Some(cap) => Some(Box::new(RotatingFile::new(file.clone(), f, cap))),
                }
            }
        };
        Ok(AccessLog {
            format: settings.format,
            out: out.map(Mutex::new),
        })
    }

    /// Write one record (time is filled in here).
    pub fn write(&self, mut rec: AccessRecord) {
        let Some(out) = &self.out else { return };
        rec.time = rfc3339(SystemTime::now());
        let line = match self.format {
            LogFormat::Json => serde_json::to_string(&rec).unwrap_or_default(),
            LogFormat::Text => text_line(&rec),
        };
        let mut w = out.lock().unwrap_or_else(|p| p.into_inner());
        // One write call per line so concurrent writers never interleave within a line.
        let _ = w.write_all(format!("{line}\n").as_bytes());
        let _ = w.flush();
    }
}

fn open_append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// A size-capped log file: before a write would take it past `cap` bytes, the file is renamed
/// to `<file>.1` (replacing the older generation) and a new one is started. Readers (the daemon's
/// `kennel denials`) read `<file>.1` then `<file>`, so at most one generation is lost at a time
/// and the disk use stays below about `2 × cap`.
struct RotatingFile {
    path: std::path::PathBuf,
    file: std::fs::File,
    size: u64,
    cap: u64,
}

impl RotatingFile {
    fn new(path: std::path::PathBuf, file: std::fs::File, cap: u64) -> RotatingFile {
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        RotatingFile {
            path,
            file,
            size,
            cap,
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.size > 0
            && self.size.saturating_add(buf.len() as u64) > self.cap
            && let Err(e) = self.rotate()
        {
            // Keep logging into the current file rather than losing lines; say why once per
            // failed attempt (the next write tries again).
            tracing::warn!(file = %self.path.display(), error = %e, "cannot rotate the access log");
        }
        let n = self.file.write(buf)?;
        self.size = self.size.saturating_add(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn text_line(r: &AccessRecord) -> String {
    let v = serde_json::to_value(r).unwrap_or_default();
    let mut s = String::new();
    if let serde_json::Value::Object(m) = v {
        for (k, v) in m {
            if v.is_null() {
                continue;
            }
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(&format!("{k}={v}"));
        }
    }
    s
}

/// Format a time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_instant() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
    }

    /// A capped file log rotates to `<file>.1` before passing the cap: the disk use stays below
    /// about twice the cap, and whole lines survive in one of the two files.
    #[test]
    fn file_log_rotates_at_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("access.log");
        let log = AccessLog::open(&AccessLogSettings {
            destination: LogDestination::File { file: file.clone() },
            format: LogFormat::Json,
            rotate_bytes: Some(2000),
        })
        .expect("open");
        for i in 0..100 {
            log.write(AccessRecord {
                host: format!("h{i}.example"),
                decision: "deny",
                ..Default::default()
            });
        }
        let cur = std::fs::read_to_string(&file).expect("current");
        let old = std::fs::read_to_string(dir.path().join("access.log.1")).expect("rotated");
        assert!(
            cur.len() <= 2000 && old.len() <= 2000,
            "{} {}",
            cur.len(),
            old.len()
        );
        assert!(cur.ends_with("\n") && old.ends_with("\n"));
        assert!(
            cur.contains("\"h99.example\""),
            "the newest line is in the current file"
        );
        for l in cur.lines().chain(old.lines()) {
            serde_json::from_str::<serde_json::Value>(l).expect("whole JSON lines");
        }
    }
}
