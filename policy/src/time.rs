//! RFC 3339 timestamps, in the one shape every kennel component writes: UTC with milliseconds
//! (`2023-11-14T22:13:20.123Z`), so the access log, the policy change log and the daemon's
//! answers sort as text and compare across components. Formatting is `humantime`'s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last second RFC 3339 (and `humantime`, which panics past it) can write: 9999-12-31.
const LAST_SECOND: u64 = 253_402_300_799;

/// `t` as RFC 3339 UTC with milliseconds. Times before 1970 are written as 1970-01-01, times
/// after the year 9999 as its last second (`humantime` would panic on either).
pub fn rfc3339_millis(t: SystemTime) -> String {
    let t = t.clamp(UNIX_EPOCH, UNIX_EPOCH + Duration::from_secs(LAST_SECOND));
    humantime::format_rfc3339_millis(t).to_string()
}

/// `secs` since the Unix epoch as RFC 3339 UTC with whole seconds (`2026-11-23T12:28:08Z`),
/// the shape of the engine's own timestamps. `None` before 1970 or after the year 9999.
pub fn rfc3339_from_unix_secs(secs: i64) -> Option<String> {
    let secs = u64::try_from(secs).ok().filter(|s| *s <= LAST_SECOND)?;
    Some(humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339_millis(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_from_unix_secs(951_782_400).as_deref(),
            Some("2000-02-29T00:00:00Z")
        );
        assert_eq!(rfc3339_from_unix_secs(-1), None);
        assert_eq!(rfc3339_from_unix_secs(i64::MAX), None);
        let far = UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 100);
        assert_eq!(rfc3339_millis(far), "9999-12-31T23:59:59.000Z");
    }
}
