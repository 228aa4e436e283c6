//! A report's files: JSON, pprof, folded stacks, both flame graphs and the page, each written
//! atomically. The session hands over the report and the one thing the files need besides it
//! (the first growth sample, for what grew); every way of tracing writes through here.
use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
};

use crate::{
    analysis::{
        report::{Report, StackFrame},
        units::human_bytes,
    },
    output::{self, flamegraph, folded, html, json, pprof},
};

/// The files asked for (`None`: not written).
#[derive(Clone, Copy, Debug, Default)]
pub struct Files<'a> {
    /// The JSON report.
    pub json: Option<&'a Path>,
    /// The gzipped pprof profile.
    pub pprof: Option<&'a Path>,
    /// Folded stacks of the outstanding bytes.
    pub folded: Option<&'a Path>,
    /// The growth flame graph.
    pub svg: Option<&'a Path>,
    /// The differential flame graph, first sample against the end.
    pub svg_diff: Option<&'a Path>,
    /// The HTML page.
    pub html: Option<&'a Path>,
}

/// The first growth sample: when it was taken, and each stack's outstanding bytes then.
#[derive(Clone, Debug, Default)]
pub struct Baseline {
    /// Unix seconds.
    pub at_unix_s: f64,
    /// `(site id, stack, bytes)`.
    pub sites: Vec<(String, Vec<StackFrame>, u64)>,
}

/// What the files need besides the report.
pub struct Inputs<'a> {
    /// The first sample, when there were two or more.
    pub baseline: Option<&'a Baseline>,
    /// Unix seconds to a time of day.
    pub clock: &'a dyn Fn(f64) -> String,
    /// Sites the page charts.
    pub top: usize,
}

/// Why a file was not written: what was being done, and the error.
#[derive(Debug)]
pub struct FileError {
    /// `writing PATH`, or `rendering the flame graph`.
    pub context: String,
    /// Cause.
    pub source: io::Error,
}

/// Writes every file of `files`, each atomically; returns the paths written, in order.
///
/// # Errors
/// A flame graph could not be rendered or a file written.
pub fn write(
    report: &Report,
    files: &Files<'_>,
    inputs: &Inputs<'_>,
) -> Result<Vec<PathBuf>, FileError> {
    let mut written = Vec::new();
    // Streamed into a temporary file renamed over the path (a report may hold millions of
    // records' sites): a reader never sees half a file.
    let mut put = |path: &Path, write: &dyn Fn(&mut dyn io::Write) -> io::Result<()>| {
        output::write_atomic_with(path, |w| write(w)).map_err(|source| FileError {
            context: format!("writing {}", path.display()),
            source,
        })?;
        written.push(path.to_path_buf());
        Ok::<(), FileError>(())
    };
    let lines = folded::fold(report);
    if let Some(p) = files.json {
        put(p, &|w| json::write(report, w))?;
    }
    if let Some(p) = files.pprof {
        put(p, &|w| pprof::write(report, w))?;
    }
    if let Some(p) = files.folded {
        put(p, &|w| lines.iter().try_for_each(|l| writeln!(w, "{l}")))?;
    }
    let page = files.html.is_some();
    let rendering = |source| FileError { context: "rendering the flame graph".to_owned(), source };
    let growth = if files.svg.is_some() || page {
        Some(growth_svg(report, &lines, inputs).map_err(rendering)?)
    } else {
        None
    };
    let diff = if files.svg_diff.is_some() || page {
        Some(diff_svg(report, &lines, inputs).map_err(rendering)?)
    } else {
        None
    };
    for (path, svg) in [(files.svg, &growth), (files.svg_diff, &diff)] {
        if let (Some(p), Some(svg)) = (path, svg) {
            put(p, &|w| w.write_all(svg))?;
        }
    }
    if let Some(p) = files.html {
        let text = html::render(&html::Page {
            report,
            growth_svg: growth.as_deref(),
            diff_svg: diff.as_deref(),
            clock: inputs.clock,
            top: inputs.top,
        });
        put(p, &|w| w.write_all(text.as_bytes()))?;
    }
    Ok(written)
}

/// `pid 42 (demo), 10:00:00-10:00:10`.
fn who(report: &Report, clock: &dyn Fn(f64) -> String) -> String {
    format!(
        "pid {} ({}), {}-{}",
        report.target.pid,
        report.target.comm,
        clock(report.window.start_unix_s),
        clock(report.window.end_unix_s)
    )
}

/// Bytes each stack gained from the first sample to the end; with a single sample, the
/// outstanding bytes (everything traced was allocated after the start).
fn growth_svg(report: &Report, lines: &[String], inputs: &Inputs<'_>) -> io::Result<Vec<u8>> {
    let who = who(report, inputs.clock);
    let Some(base) = inputs.baseline else {
        return flamegraph::render(
            lines,
            &format!("Outstanding bytes by allocation stack: {who}"),
            &format!(
                "{} ({} bytes) in {} allocations not freed; each tower's top frame called the allocator",
                human_bytes(report.totals.outstanding_bytes),
                report.totals.outstanding_bytes,
                report.totals.outstanding_allocs
            ),
        );
    };
    let before: HashMap<&str, u64> =
        base.sites.iter().map(|(id, _, b)| (id.as_str(), *b)).collect();
    let gains: Vec<(&[StackFrame], u64)> = report
        .sites
        .iter()
        .map(|s| {
            let was = before.get(s.id.as_str()).copied().unwrap_or(0);
            (s.stack.as_slice(), s.outstanding_bytes.saturating_sub(was))
        })
        .collect();
    let gained: u64 = gains.iter().map(|g| g.1).sum();
    flamegraph::render(
        &folded::fold_stacks(gains),
        &format!("Growth by allocation stack: {who}"),
        &format!(
            "{} ({gained} bytes) gained since the first sample at {} by the stacks that grew; \
             each tower's top frame called the allocator",
            human_bytes(gained),
            (inputs.clock)(base.at_unix_s)
        ),
    )
}

/// Outstanding bytes at the first sample against the end: red grew, blue shrank.
fn diff_svg(report: &Report, lines: &[String], inputs: &Inputs<'_>) -> io::Result<Vec<u8>> {
    let (at, before) = match inputs.baseline {
        Some(b) => (
            b.at_unix_s,
            folded::fold_stacks(b.sites.iter().map(|(_, stack, bytes)| (stack.as_slice(), *bytes))),
        ),
        None => (report.window.start_unix_s, Vec::new()),
    };
    let title = format!(
        "Outstanding bytes, {} against {}: pid {} ({})",
        (inputs.clock)(report.window.end_unix_s),
        (inputs.clock)(at),
        report.target.pid,
        report.target.comm
    );
    let subtitle = "widths: bytes at the end; red: grew since the first sample, blue: shrank";
    flamegraph::render_diff(&before, lines, &title, subtitle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::build::tests::sample_report;

    fn clock(unix_s: f64) -> String {
        format!("T{:.0}", unix_s - 1_700_000_000.0)
    }

    #[test]
    fn every_file_is_written_with_what_grew() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let report = sample_report();
        // leak_fn held 1 KiB at the first sample: it gained 2 KiB since.
        let base = Baseline {
            at_unix_s: 1_700_000_002.0,
            sites: vec![(report.sites[0].id.clone(), report.sites[0].stack.clone(), 1024)],
        };
        let (json, pprof, folded, svg, diff, page) = (
            path("r.json"),
            path("r.pb.gz"),
            path("r.folded"),
            path("r.svg"),
            path("d.svg"),
            path("r.html"),
        );
        let files = Files {
            json: Some(&json),
            pprof: Some(&pprof),
            folded: Some(&folded),
            svg: Some(&svg),
            svg_diff: Some(&diff),
            html: Some(&page),
        };
        let inputs = Inputs { baseline: Some(&base), clock: &clock, top: 10 };
        let written = write(&report, &files, &inputs).unwrap();
        let expected: Vec<&Path> = vec![&json, &pprof, &folded, &svg, &diff, &page];
        assert_eq!(written, expected);
        let back: Report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(back, report);
        let folded = std::fs::read_to_string(&folded).unwrap();
        assert_eq!(folded, "main;cache_fn 100\nmain;leak_fn 3072\n");
        let growth = std::fs::read_to_string(&svg).unwrap();
        assert!(growth.contains("Growth by allocation stack: pid 42 (demo), T0-T10"), "{growth}");
        assert!(
            growth.contains("2.1 KiB (2148 bytes) gained since the first sample at T2"),
            "{growth}"
        );
        let diff = std::fs::read_to_string(&diff).unwrap();
        assert!(diff.contains("Outstanding bytes, T10 against T2: pid 42 (demo)"), "{diff}");
        let page = std::fs::read_to_string(&page).unwrap();
        assert!(
            page.contains("<iframe") && page.contains("leak_fn"),
            "the page embeds both graphs"
        );
        // Nothing asked for, nothing written; an unwritable path names itself.
        assert!(write(&report, &Files::default(), &inputs).unwrap().is_empty());
        let bad = path("no/such/dir.json");
        let err =
            write(&report, &Files { json: Some(&bad), ..Files::default() }, &inputs).unwrap_err();
        assert_eq!(err.context, format!("writing {}", bad.display()));
    }
}
