//! Numbers for people: byte counts, durations and dates, as `ambassador status` and the admin
//! page show them (the JSON keeps the exact values).

/// `n` bytes in binary units, in at most five characters: `512B`, `1.2K`, `34M`, `5.6G`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    if n < 1000 {
        return format!("{n}B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 999.5 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let suffix = UNITS.get(unit).copied().unwrap_or("?");
    if value < 9.95 {
        format!("{value:.1}{suffix}")
    } else {
        format!("{value:.0}{suffix}")
    }
}

/// A duration in its two largest units: `12s`, `5m 12s`, `4h 5m`, `3d 4h`.
pub(crate) fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// How long ago `then` was at `now` (Unix seconds): `12s ago`; `just now` for a time ahead
/// of `now` (another clock).
pub(crate) fn ago(then: u64, now: u64) -> String {
    match now.checked_sub(then) {
        Some(d) => format!("{} ago", duration(d)),
        None => "just now".to_string(),
    }
}

/// A Unix time as `2026-05-01 12:00 UTC`, and its year (`None` out of the calendar's range).
pub(crate) fn utc(unix: i64) -> Option<(String, i32)> {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).ok()?;
    let text = format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    );
    Some((text, t.year()))
}

/// A span of seconds in days once it is a day or more (`3 days`, `1 day`), else as
/// [`duration`] (`5h 3m`).
pub(crate) fn days(seconds: u64) -> String {
    match seconds / 86_400 {
        0 => duration(seconds),
        1 => "1 day".to_string(),
        n => format!("{n} days"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_short() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(999), "999B");
        assert_eq!(bytes(1000), "1.0K");
        assert_eq!(bytes(1234), "1.2K");
        assert_eq!(bytes(3_565_158), "3.4M");
        assert_eq!(bytes(500 * 1024), "500K");
        assert_eq!(bytes(1023 * 1024), "1.0M");
        assert_eq!(bytes(6_012_954_214), "5.6G");
        assert_eq!(bytes(u64::MAX), "16E");
        for n in [0, 999, 1000, 10_188, 1_048_000, u64::MAX / 3, u64::MAX] {
            assert!(bytes(n).len() <= 5, "{n} -> {}", bytes(n));
        }
    }

    #[test]
    fn durations_take_two_units() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(312), "5m 12s");
        assert_eq!(duration(4 * 3600 + 300), "4h 5m");
        assert_eq!(duration(3 * 86_400 + 4 * 3600 + 59), "3d 4h");
        assert_eq!(ago(100, 112), "12s ago");
        assert_eq!(ago(120, 112), "just now");
        assert_eq!(days(3 * 86_400 + 5), "3 days");
        assert_eq!(days(86_400), "1 day");
        assert_eq!(days(3600), "1h 0m");
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc(0), Some(("1970-01-01 00:00 UTC".to_string(), 1970)));
        assert_eq!(
            utc(1_777_636_800),
            Some(("2026-05-01 12:00 UTC".to_string(), 2026))
        );
        // rcgen's default not-after, which mesh-key certificates keep.
        assert_eq!(utc(67_090_118_400).map(|(_, y)| y), Some(4096));
    }
}
