//! `--fail-on-leak` over a run: each traced process's final report judged by the gate's
//! rules (`analysis::gate`), each finding said where CI logs keep it, the outcome last.
use crate::{
    analysis::gate::{Finding, Rule, Rules},
    analysis::report::Report,
    config::TraceConfig,
};

/// `--fail-on-leak` over the processes of one run: judges each final report by the gate's
/// rules (printing each finding on stderr, where CI logs keep it) and says the outcome last.
#[derive(Debug, Default)]
pub struct GateTally {
    judged: usize,
    failed: usize,
    /// The rules that failed a process, in the order first seen.
    rules: Vec<Rule>,
}

impl GateTally {
    /// Judges `report` by `cfg`'s gate; whether it fails the run (never without a gate).
    pub fn judge(&mut self, report: &Report, cfg: &TraceConfig) -> bool {
        let Some(gate) = cfg.gate else { return false };
        let rules = Rules {
            growth: gate.growth,
            exit: gate.exit,
            allow_inconclusive: gate.allow_inconclusive,
            min_growth: cfg.growth_floor(),
            // LeakSanitizer's rule counts every block left, unless told a floor.
            min_at_exit: cfg.min_growth.unwrap_or(1),
        };
        let findings = crate::analysis::gate::judge(report, &rules);
        let who = format!("pid {} ({})", report.target.pid, report.target.comm);
        self.record(&who, &findings)
    }

    /// A process the gate could not judge because it could not be traced at all.
    pub fn untraced(&mut self, pid: u32, why: &str, cfg: &TraceConfig) -> bool {
        let Some(gate) = cfg.gate else { return false };
        let finding = Finding {
            rule: Rule::Inconclusive,
            text: format!("not traced ({why}), so not judged"),
            fails: !gate.allow_inconclusive,
        };
        let comm = crate::procfs::comm(pid).unwrap_or_default();
        self.record(&format!("pid {pid} ({comm})"), &[finding])
    }

    fn record(&mut self, who: &str, findings: &[Finding]) -> bool {
        self.judged += 1;
        for f in findings {
            let word = if f.fails { "FAIL" } else { "warning, allowed" };
            eprintln!("leak: {word} ({}): {who}: {}", f.rule.name(), f.text);
        }
        let failed = findings.iter().any(|f| f.fails);
        if failed {
            self.failed += 1;
            for f in findings.iter().filter(|f| f.fails) {
                if !self.rules.contains(&f.rule) {
                    self.rules.push(f.rule);
                }
            }
        }
        failed
    }

    /// Whether some process failed.
    #[must_use]
    pub fn failed(&self) -> bool {
        self.failed > 0
    }

    /// The gate's last line (None without a gate).
    #[must_use]
    pub fn summary(&self, cfg: &TraceConfig) -> Option<String> {
        let gate = cfg.gate?;
        let plural = |n: usize| if n == 1 { "process" } else { "processes" };
        if self.failed > 0 {
            let rules: Vec<&str> = self.rules.iter().map(|r| r.name()).collect();
            return Some(format!(
                "leak: --fail-on-leak failed ({}): {} of {} traced {}",
                rules.join("; "),
                self.failed,
                self.judged,
                plural(self.judged)
            ));
        }
        let by = match (gate.growth, gate.exit) {
            (true, true) => "no leak by growth, no block left at exit",
            (false, true) => "no block left at exit",
            _ => "no leak by growth",
        };
        Some(format!(
            "leak: --fail-on-leak passed: {} traced {}, {by}",
            self.judged,
            plural(self.judged)
        ))
    }
}
