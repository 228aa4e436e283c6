//! Numbers for people: sizes in binary units, signed changes, durations, rounding. Shared by the
//! analysis (its summaries) and every renderer.

/// `1.5 KiB`-style sizes (binary units).
#[must_use]
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `+1.5 KiB` / `-12 B` / `+0 B`.
#[must_use]
pub fn signed_bytes(d: i64) -> String {
    let sign = if d < 0 { '-' } else { '+' };
    format!("{sign}{}", human_bytes(d.unsigned_abs()))
}

/// Seconds as `850 us`, `12 ms` or `3.4 s`.
#[must_use]
pub fn human_seconds(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.0} us", s * 1e6)
    } else if s < 1.0 {
        format!("{:.0} ms", s * 1e3)
    } else {
        format!("{s:.1} s")
    }
}

/// `45s`, `12m`, `3h10m`, `4d2h`.
#[must_use]
pub fn human_duration(secs: f64) -> String {
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "clamped")]
    let s = secs.clamp(0.0, 1e12).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `x` rounded to `digits` decimals: the precision the JSON reports carry.
#[must_use]
pub fn round_to(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rounding() {
        assert_eq!(human_duration(45.0), "45s");
        assert_eq!(human_duration(12.0 * 60.0), "12m");
        assert_eq!(human_duration(3.0 * 3600.0 + 600.0), "3h10m");
        assert_eq!(human_duration(4.0 * 86_400.0 + 7200.0), "4d2h");
        assert!((round_to(1.23456, 3) - 1.235).abs() < 1e-12);
        assert!((round_to(2.5, 0) - 3.0).abs() < 1e-12);
    }
}
