//! Reports printed while a trace goes on: one line a site at each interval, whole stacks at
//! the end (the summary alone with `--quiet`), each with what changed since the print
//! before; on stdout, or on stderr under `leak run` (the command's stdout is the command's).
use std::io::Write as _;

use hashbrown::HashMap;

use crate::{
    analysis::aggregate::{Aggregate, signed_diff},
    analysis::report::{EndReason, Report},
    output::table::{self, TableOptions},
};

/// Where one process's reports are printed, and the sums of the last one printed.
pub struct Console {
    to_stderr: bool,
    quiet: bool,
    top: usize,
    /// Unix seconds as local wall-clock time (the caller's clock: this module reads none).
    clock: fn(f64) -> String,
    prev: Option<Aggregate>,
}

impl Console {
    /// Prints to stderr when `to_stderr`; `quiet` prints the final summary only; `top` sites
    /// a report.
    #[must_use]
    pub fn new(to_stderr: bool, quiet: bool, top: usize, clock: fn(f64) -> String) -> Self {
        Self { to_stderr, quiet, top, clock, prev: None }
    }

    /// An interval report, one line a site (nothing with `--quiet`). `agg` is what it was
    /// built from.
    pub fn interval(&mut self, report: &Report, agg: &Aggregate) {
        if self.quiet {
            return;
        }
        let header = format!(
            "pid {} ({}) {} +{:.1}s",
            report.target.pid,
            report.target.comm,
            (self.clock)(report.window.end_unix_s),
            report.duration_s
        );
        self.print(report, agg, &header, true);
    }

    /// The final report, with whole stacks and why it ended (`--quiet`: its summary line).
    pub fn last(&mut self, report: &Report, agg: &Aggregate) {
        let (pid, comm) = (report.target.pid, &report.target.comm);
        if self.quiet {
            self.emit(&format!("leak: pid {pid} ({comm}): {}", report.growth.summary));
            return;
        }
        let why = match report.end_reason {
            EndReason::Duration => "duration reached",
            EndReason::Signal => "interrupted",
            EndReason::TargetExited | EndReason::TargetsExited => "target exited",
            EndReason::OomKill => "killed by the OOM killer",
            EndReason::OverheadBudget => "overhead budget exceeded",
            EndReason::Interval => "interval",
        };
        let header = format!(
            "final report: pid {pid} ({comm}) {}-{} ({:.1} s, {why})",
            (self.clock)(report.window.start_unix_s),
            (self.clock)(report.window.end_unix_s),
            report.duration_s
        );
        self.print(report, agg, &header, false);
    }

    /// Prints a report: `brief`, one line a site; else with whole stacks.
    fn print(&mut self, report: &Report, agg: &Aggregate, header: &str, brief: bool) {
        let deltas: Option<HashMap<String, i64>> = self.prev.as_ref().map(|prev| {
            agg.deltas_since(prev).into_iter().map(|(id, d)| (format!("{id:016x}"), d)).collect()
        });
        let total_delta = self.prev.as_ref().map(|p| signed_diff(agg.total_bytes, p.total_bytes));
        let opts = TableOptions { header, top: self.top, deltas: deltas.as_ref(), total_delta };
        let text =
            if brief { table::render_brief(report, &opts) } else { table::render(report, &opts) };
        self.emit(&text);
        self.prev = Some(agg.clone());
    }

    /// Writes `text` and a newline where reports go.
    fn emit(&self, text: &str) {
        if self.to_stderr {
            let mut out = std::io::stderr().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        } else {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
    }
}
