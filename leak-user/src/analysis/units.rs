//! Numbers for people: sizes in binary units, signed changes, durations. Shared by the
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
