//! UTC timestamps in RFC 3339 without a calendar crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format_rfc3339(secs)
}

/// Now as `YYYY-MM-DDTHH:MM:SS.mmmZ` (log lines: several a second need ordering).
pub fn now_rfc3339_millis() -> String {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    format_rfc3339_millis(ms)
}

/// Milliseconds since the Unix epoch as RFC 3339 (UTC) with a fraction of a second.
pub fn format_rfc3339_millis(ms: u64) -> String {
    let seconds = format_rfc3339(ms / 1000);
    format!("{}.{:03}Z", seconds.trim_end_matches('Z'), ms % 1000)
}

/// Seconds since the Unix epoch as RFC 3339 (UTC), by the days-to-civil algorithm.
pub fn format_rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_dates() {
        assert_eq!(super::format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::format_rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(super::format_rfc3339_millis(1_795_000_000_042), "2026-11-18T11:06:40.042Z");
    }
}
