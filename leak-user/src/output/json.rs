//! JSON rendering of a report.
use std::io;

use crate::analysis::report::Report;

/// Writes the pretty JSON of `report`, with a trailing newline, to `w` as it is produced.
///
/// # Errors
/// `w` failed.
pub fn write(report: &Report, w: &mut dyn io::Write) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *w, report).map_err(io::Error::from)?;
    w.write_all(b"\n")
}
