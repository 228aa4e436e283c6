//! Pure: `--fail-on-leak`, the CI gate. Which rule a process's final report fails, in words a
//! CI log shows: growth (a site judged a leak), blocks still allocated at exit
//! (`LeakSanitizer`'s rule, on request), or a run too short or too empty to judge, which fails
//! too unless allowed: a gate that passes what it could not judge passes leaks.
use crate::{
    analysis::growth::leak_line,
    analysis::report::{EndReason, Report, Site},
    analysis::trend::{Params, Verdict},
    analysis::units::{human_bytes, signed_bytes},
};

/// The rules a run is judged by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// A site judged a leak fails.
    pub growth: bool,
    /// Blocks still allocated at exit fail (`LeakSanitizer`'s rule).
    pub exit: bool,
    /// What could not be judged passes, with a warning.
    pub allow_inconclusive: bool,
    /// Sites that gained less than this over the window are not judged (growth rule).
    pub min_growth: u64,
    /// Sites holding less than this at exit are not counted (exit rule).
    pub min_at_exit: u64,
}

/// Which rule a finding comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// A site judged a leak.
    Growth,
    /// Blocks still allocated at exit.
    Exit,
    /// Nothing could be judged, or not enough.
    Inconclusive,
}

impl Rule {
    /// How the gate's line names it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Growth => "growth rule",
            Self::Exit => "exit rule, LeakSanitizer's",
            Self::Inconclusive => "inconclusive",
        }
    }
}

/// One reason the gate fails (or, for an allowed inconclusive run, warns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The rule.
    pub rule: Rule,
    /// What was found, one line.
    pub text: String,
    /// It fails the run (an allowed inconclusive finding only warns).
    pub fails: bool,
}

/// Sites shown per finding at most.
const SHOWN: usize = 3;

/// Judges one process's final report. No finding: the process passes.
#[must_use]
pub fn judge(report: &Report, rules: &Rules) -> Vec<Finding> {
    let mut out = Vec::new();
    let inconclusive =
        |text: String| Finding { rule: Rule::Inconclusive, text, fails: !rules.allow_inconclusive };
    if report.probe_hits.values().all(|&h| h == 0) {
        out.push(inconclusive(
            "no probe fired: the process made no call to an allocator function leak hooks \
             (a Go or Java program, or an allocator leak did not find?), so there is nothing \
             to judge"
                .to_owned(),
        ));
        return out;
    }
    if rules.growth {
        growth_findings(report, rules, &mut out);
    }
    if rules.exit {
        out.extend(exit_finding(report, rules));
    }
    out
}

/// The growth rule: sites judged leaks; growing sites not judged yet are inconclusive.
fn growth_findings(report: &Report, rules: &Rules, out: &mut Vec<Finding>) {
    let inconclusive =
        |text: String| Finding { rule: Rule::Inconclusive, text, fails: !rules.allow_inconclusive };
    let gained = |s: &Site| u64::try_from(s.trend.gained_bytes).unwrap_or(0);
    let leaks: Vec<&Site> = report
        .sites
        .iter()
        .filter(|s| s.trend.verdict == Verdict::Leak && gained(s) >= rules.min_growth)
        .collect();
    for s in leaks.iter().take(SHOWN) {
        out.push(Finding {
            rule: Rule::Growth,
            text: format!("leak at {}", leak_line(s)),
            fails: true,
        });
    }
    if leaks.len() > SHOWN {
        out.push(Finding {
            rule: Rule::Growth,
            text: format!("{} more sites judged leaks", leaks.len() - SHOWN),
            fails: true,
        });
    }
    let mut growing: Vec<&Site> = report
        .sites
        .iter()
        .filter(|s| s.trend.verdict == Verdict::Growing && gained(s) >= rules.min_growth)
        .collect();
    growing.sort_by_key(|s| std::cmp::Reverse(gained(s)));
    if let Some(top) = growing.first() {
        let more = match growing.len() {
            1 => String::new(),
            n => format!(" (and {} more sites)", n - 1),
        };
        let needed = Params::default().min_samples;
        let why = if top.trend.samples < needed {
            format!(
                "{} samples, and a verdict needs {needed}: run it longer, or sample faster \
                 (--sample-interval 100ms)",
                top.trend.samples
            )
        } else {
            "its rise is not steady enough to call a leak yet: run it longer".to_owned()
        };
        out.push(inconclusive(format!(
            "growing at {}{more}: {} over {:.1} s, not conclusive ({why}; \
             --fail-on-leak=exit judges blocks left at exit instead)",
            top.name(),
            signed_bytes(top.trend.gained_bytes),
            report.duration_s,
        )));
    }
}

/// The exit rule: blocks still allocated when the process exited.
fn exit_finding(report: &Report, rules: &Rules) -> Option<Finding> {
    if report.end_reason == EndReason::OomKill {
        return Some(Finding {
            rule: Rule::Inconclusive,
            text: "the OOM killer killed the process: the exit rule judges a process that exits \
                   by itself (see the growth rule and the report's summary)"
                .to_owned(),
            fails: !rules.allow_inconclusive,
        });
    }
    if report.end_reason != EndReason::TargetExited {
        return Some(Finding {
            rule: Rule::Inconclusive,
            text: format!(
                "the exit rule needs the process to exit, and it was still running when \
                 tracing ended ({})",
                report.end_reason
            ),
            fails: !rules.allow_inconclusive,
        });
    }
    let mut left: Vec<&Site> = report
        .sites
        .iter()
        .filter(|s| s.outstanding_bytes >= rules.min_at_exit.max(1) && !is_runtime_own(s))
        .collect();
    if left.is_empty() {
        return None;
    }
    left.sort_by_key(|s| std::cmp::Reverse(s.outstanding_bytes));
    let bytes: u64 = left.iter().map(|s| s.outstanding_bytes).sum();
    let blocks: u64 = left.iter().map(|s| s.outstanding_allocs).sum();
    let top: Vec<String> = left
        .iter()
        .take(SHOWN)
        .map(|s| format!("{} {}", s.name(), human_bytes(s.outstanding_bytes)))
        .collect();
    Some(Finding {
        rule: Rule::Exit,
        text: format!(
            "{} in {blocks} block{} still allocated at exit, at {} site{}: {}",
            human_bytes(bytes),
            if blocks == 1 { "" } else { "s" },
            left.len(),
            if left.len() == 1 { "" } else { "s" },
            top.join(", ")
        ),
        fails: true,
    })
}

/// A block the C runtime allocated for itself and keeps until exit (stdio buffers, locale
/// and character-set tables, the dynamic loader's): `LeakSanitizer` sees them as still
/// reachable and does not report them; neither does the exit rule.
fn is_runtime_own(site: &Site) -> bool {
    let Some(f) = site.stack.first() else { return false };
    let module = f.module.as_deref().unwrap_or("");
    let runtime = module.starts_with("libc.so") || module.starts_with("ld-linux");
    runtime && f.function.as_deref().is_some_and(|name| name.starts_with('_'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{build::tests::sample_report, report::TrendView};

    fn rules() -> Rules {
        Rules {
            growth: true,
            exit: false,
            allow_inconclusive: false,
            min_growth: 4096,
            min_at_exit: 1,
        }
    }

    /// The sample report with hits, the leak site judged `verdict` after `samples` samples.
    fn report(verdict: Verdict, samples: usize, end: EndReason) -> Report {
        let mut r = sample_report();
        r.probe_hits.insert("malloc_enter".into(), 10);
        r.end_reason = end;
        r.sites[0].trend = TrendView {
            verdict,
            confidence: 0.999,
            rate_bytes_per_s: 8192.0,
            rate_bytes_per_h: 8192.0 * 3600.0,
            recent_rate_bytes_per_s: 8192.0,
            gained_bytes: 240 << 10,
            samples,
        };
        r
    }

    #[test]
    fn a_leak_fails_by_the_growth_rule() {
        let f = judge(&report(Verdict::Leak, 12, EndReason::TargetExited), &rules());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].rule, Rule::Growth);
        assert!(f[0].fails);
        assert!(
            f[0].text.starts_with("leak at leak_fn <- main: +240.0 KiB at +8.0 KiB/s"),
            "{}",
            f[0].text
        );
        // Below --min-growth it does not count.
        let f = judge(
            &report(Verdict::Leak, 12, EndReason::TargetExited),
            &Rules { min_growth: 1 << 20, ..rules() },
        );
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn growth_too_short_to_judge_fails_unless_allowed() {
        let f = judge(&report(Verdict::Growing, 3, EndReason::TargetExited), &rules());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].rule, Rule::Inconclusive);
        assert!(f[0].fails);
        assert!(
            f[0].text.starts_with("growing at leak_fn <- main: +240.0 KiB over 10.0 s, not conclusive (3 samples, and a verdict needs 6"),
            "{}",
            f[0].text
        );
        let allowed = Rules { allow_inconclusive: true, ..rules() };
        let f = judge(&report(Verdict::Growing, 3, EndReason::TargetExited), &allowed);
        assert!(!f[0].fails, "allowed: a warning");
        // Enough samples but an unsteady rise: said differently.
        let f = judge(&report(Verdict::Growing, 40, EndReason::TargetExited), &rules());
        assert!(f[0].text.contains("not steady enough"), "{}", f[0].text);
        // A plateau or a stable site passes.
        assert!(judge(&report(Verdict::Plateau, 40, EndReason::TargetExited), &rules()).is_empty());
    }

    #[test]
    fn no_probe_fired_is_nothing_judged() {
        let mut r = report(Verdict::Stable, 40, EndReason::TargetExited);
        r.probe_hits.values_mut().for_each(|v| *v = 0);
        let f = judge(&r, &rules());
        assert_eq!((f.len(), f[0].rule, f[0].fails), (1, Rule::Inconclusive, true), "{f:?}");
        assert!(f[0].text.starts_with("no probe fired"), "{}", f[0].text);
    }

    #[test]
    fn the_exit_rule_counts_blocks_left_at_exit() {
        let exit = Rules { growth: false, exit: true, ..rules() };
        let f = judge(&report(Verdict::Stable, 40, EndReason::TargetExited), &exit);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].rule, Rule::Exit);
        assert_eq!(
            f[0].text,
            "3.1 KiB in 4 blocks still allocated at exit, at 2 sites: leak_fn <- main 3.0 KiB, \
             cache_fn <- main 100 B"
        );
        // A threshold leaves out the small site.
        let f = judge(
            &report(Verdict::Stable, 40, EndReason::TargetExited),
            &Rules { min_at_exit: 1024, ..exit },
        );
        assert!(
            f[0].text.starts_with("3.0 KiB in 3 blocks still allocated at exit, at 1 site: "),
            "{}",
            f[0].text
        );
        // Still running: inconclusive.
        let f = judge(&report(Verdict::Stable, 40, EndReason::Duration), &exit);
        assert_eq!(f[0].rule, Rule::Inconclusive);
        assert!(f[0].text.contains("needs the process to exit"), "{}", f[0].text);
        // Killed by the OOM killer: not an exit either, and said as what it was.
        let f = judge(&report(Verdict::Stable, 40, EndReason::OomKill), &exit);
        assert_eq!(f[0].rule, Rule::Inconclusive);
        assert!(f[0].text.starts_with("the OOM killer killed the process"), "{}", f[0].text);
        // The C library's own buffers are not counted.
        let mut r = report(Verdict::Stable, 40, EndReason::TargetExited);
        for s in &mut r.sites {
            s.stack[0].function = Some("_IO_file_doallocate".into());
            s.stack[0].module = Some("libc.so.6".into());
        }
        assert!(judge(&r, &exit).is_empty());
    }
}
