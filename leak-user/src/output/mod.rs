//! The renderers of a report, and files written atomically (a temporary file renamed over
//! the old one: a reader never sees half a report).
//!
//! What it holds: every file of a report written at once (`files`), reports printed as a
//! trace goes (`console`), the text table (`table`), JSON (`json`), the HTML page (`html`,
//! its charts drawn by `charts`), folded stacks (`folded`), flame graphs (`flamegraph`, the
//! only inferno user), pprof profiles (`pprof`), Prometheus's text format (`prometheus`),
//! and the JSON schemas with their field reference (`schema`).
//!
//! What it may import: `analysis` only (the report model it renders).
pub mod charts;
pub mod console;
pub mod files;
pub mod flamegraph;
pub mod folded;
pub mod html;
pub mod json;
pub mod pprof;
pub mod prometheus;
pub mod schema;
pub mod table;

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// `name` as a file name's part: letters, digits and `-`; anything else `_`.
#[must_use]
pub fn file_safe(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsynced,
/// then renamed over `path`. Readers see the old file or the new one, never a partial one.
///
/// # Errors
/// The directory is not writable, or the disk is full.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// As [`write_atomic`], with the content streamed by `write` (through a buffer): a large
/// report need not be held in memory whole (10,000 sites make 40 MB of JSON).
///
/// # Errors
/// The directory is not writable, the disk is full, or `write` failed.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn io::Write) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut w = io::BufWriter::with_capacity(1 << 16, fs::File::create(&tmp)?);
        write(&mut w)?;
        let f = w.into_inner().map_err(io::IntoInnerError::into_error)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Checks, before tracing starts, that `path` can be written atomically later: creates and
/// removes the temporary file `write_atomic` will use, and rejects a directory at `path`.
///
/// # Errors
/// The path is a directory, or its directory is missing or not writable.
pub fn check_writable(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory"));
    }
    let tmp = temp_path(path);
    fs::File::create(&tmp)?;
    fs::remove_file(&tmp)
}

/// The output file of a process other than `leak run`'s command: `leaks.json` becomes
/// `leaks-1234.json`, and `leaks-1234-2.json` for the second process with pid 1234 in a run.
#[must_use]
pub fn for_process(path: &Path, pid: u32, nth: usize) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let suffix = if nth > 1 { format!("-{pid}-{nth}") } else { format!("-{pid}") };
    let name = match path.extension() {
        Some(ext) => format!("{stem}{suffix}.{}", ext.to_string_lossy()),
        None => format!("{stem}{suffix}"),
    };
    path.with_file_name(name)
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

/// Text for HTML or SVG content and attribute values.
#[must_use]
pub fn escape_markup(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["out.json"]);
    }

    #[test]
    fn per_process_names() {
        assert_eq!(for_process(Path::new("out/leaks.json"), 42, 1), Path::new("out/leaks-42.json"));
        assert_eq!(for_process(Path::new("leaks.svg"), 42, 3), Path::new("leaks-42-3.svg"));
        assert_eq!(for_process(Path::new("report"), 7, 1), Path::new("report-7"));
    }

    #[test]
    fn writability_is_checked_up_front() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_writable(&dir.path().join("ok.svg")).is_ok());
        assert!(check_writable(&dir.path().join("missing/x.svg")).is_err());
        assert!(check_writable(dir.path()).is_err());
        assert!(write_atomic(&dir.path().join("missing/x.svg"), b"x").is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
