//! Wall-clock helpers for report headers (kept out of the pure modules).
use std::time::{SystemTime, UNIX_EPOCH};

/// Now, Unix seconds.
#[must_use]
pub fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// `HH:MM:SS` in local time.
#[must_use]
pub fn local_hms(unix_s: f64) -> String {
    #[expect(clippy::cast_possible_truncation, reason = "seconds since 1970 fit in time_t")]
    let t = unix_s.floor() as libc::time_t;
    // SAFETY: zeroed tm is a valid out-value; localtime_r is the thread-safe variant.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers for the call.
    if unsafe { libc::localtime_r(&raw const t, &raw mut tm) }.is_null() {
        return "??:??:??".to_owned();
    }
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}
