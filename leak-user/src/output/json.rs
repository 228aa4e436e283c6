//! JSON rendering of a report.
use crate::report::Report;

/// Pretty JSON with a trailing newline.
#[must_use]
pub fn render(report: &Report) -> Vec<u8> {
    // Serializing plain structs of strings and numbers cannot fail.
    let mut out = serde_json::to_vec_pretty(report).unwrap_or_default();
    out.push(b'\n');
    out
}
