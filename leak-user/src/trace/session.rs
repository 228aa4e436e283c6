//! The tracing session: tick, snapshot, aggregate, symbolize, report; end on duration, signal
//! or target exit; write the final outputs.
use std::{
    io::Write as _,
    os::fd::{FromRawFd as _, OwnedFd},
    time::Duration,
};

use hashbrown::{HashMap, HashSet};
use leak_common::STACK_ID_NONE;
use log::{debug, warn};
use tokio::{
    io::unix::AsyncFd,
    time::{Instant, MissedTickBehavior, interval, interval_at},
};

use crate::{
    analysis::aggregate::{Aggregate, signed_diff},
    analysis::build::{self, ReportMeta},
    analysis::gate::{Finding, Rule, Rules},
    analysis::growth::Analysis,
    analysis::history::{History, Kind},
    analysis::model::{Frame, HookInfo, Limit, Snapshot, Totals},
    analysis::report::{self, AllocatorInfo, EndReason, Report, SamplingView, TargetInfo, Window},
    analysis::sampling::Sampling,
    analysis::trend::Params,
    config::TraceConfig,
    error::Error,
    output::{self, table::TableOptions},
    runtime::{self, Sampler, Signals, deadline},
    trace::loader::Tracer,
    trace::source::{AllocSource, monotonic_ns},
    trace::symbolize::{ProcessSymbolizer, Symbolizer as _},
};

/// Entry hits of a hook without one return hit that make the return probe suspect.
const SILENT_RETURN_MIN: u64 = 20;

/// How often the target's memory map is re-read for symbolization.
const MAPS_REFRESH: Duration = Duration::from_secs(1);
/// How often the target's liveness is polled where pidfds are unavailable.
const EXIT_POLL: Duration = Duration::from_millis(250);

/// What one probe hit costs when it was not measured at start (`LEAK_MEASURE_PROBES=0`, or
/// the measure failed): the churn bench's full trace, 3.9 µs per malloc+free pair of three
/// hits (docs/benchmarks.md), rounded up.
pub const DEFAULT_HIT_COST_NS: f64 = 1_300.0;

/// `--max-overhead`: the share of a CPU the target spends in the probes, estimated from the
/// hits between two samples times the cost of a hit.
#[derive(Clone, Debug)]
pub struct Budget {
    max: f64,
    hit_ns: f64,
    last: Option<(f64, u64)>,
}

impl Budget {
    /// A budget of `max_bp` basis points of one CPU, with hits costing `cost` when measured.
    #[must_use]
    pub fn new(max_bp: u32, cost: Option<crate::analysis::model::ProbeCost>) -> Self {
        let max = f64::from(max_bp) / 10_000.0;
        #[expect(clippy::cast_precision_loss, reason = "nanoseconds per hit")]
        let hit_ns = cost.map_or(DEFAULT_HIT_COST_NS, |c| (c.entry_ns + c.return_ns) as f64 / 2.0);
        Self { max, hit_ns, last: None }
    }

    /// Whether the probes went over the budget since the previous sample, given all hits so
    /// far at time `t_s`: then what they cost, in the words the stop is announced with.
    pub fn exceeded(&mut self, t_s: f64, hits: u64) -> Option<String> {
        let (share, over) = self.check(t_s, hits)?;
        over.then(|| {
            format!(
                "the probes cost an estimated {:.1}% of a CPU, over --max-overhead {:.1}%",
                share * 100.0,
                self.max * 100.0
            )
        })
    }

    /// The estimated share since the previous call, given all hits so far at time `t_s`
    /// (seconds), and whether it is over the budget.
    pub fn check(&mut self, t_s: f64, hits: u64) -> Option<(f64, bool)> {
        let last = self.last.replace((t_s, hits));
        let (t0, h0) = last?;
        let dt = t_s - t0;
        if dt <= 0.0 {
            return None;
        }
        #[expect(clippy::cast_precision_loss, reason = "hit counts")]
        let share = hits.saturating_sub(h0) as f64 * self.hit_ns / (dt * 1e9);
        Some((share, share > self.max))
    }
}

/// State carried across the ticks of one traced process.
pub struct Session {
    pid: u32,
    cfg: TraceConfig,
    target: TargetInfo,
    allocator: AllocatorInfo,
    hooks: Vec<HookInfo>,
    start_unix: f64,
    symbolizer: ProcessSymbolizer,
    /// Raw frames by stack id (stacks never change once recorded).
    raw_stacks: HashMap<u64, crate::trace::source::RawStack>,
    /// How complete each symbolized stack is, when known.
    ends: HashMap<u64, crate::analysis::model::StackEnd>,
    /// Symbolized frames by stack id.
    frames: HashMap<u64, Vec<Frame>>,
    /// The allocator wrapper folded off each stack's top, by stack id.
    wrappers: HashMap<u64, String>,
    /// What is folded off the top of stacks.
    folding: crate::analysis::plumbing::Folding,
    /// Stacks with frames outside every known mapping: symbolized again next time.
    incomplete: HashSet<u64>,
    prev: Option<Aggregate>,
    /// `CLOCK_MONOTONIC` ns at the start (sample times count from here).
    start_ns: u64,
    history: History,
    /// Reading `smaps_rollup` walks the target's page tables (milliseconds on a large
    /// process): it is read again only once this much time has passed.
    memory_next: std::time::Instant,
    /// The memory limit last read, and its cgroup's directory (the final report of a
    /// process gone has it).
    /// And its OOM count then (v2).
    last_limit: Option<(Limit, std::path::PathBuf, Option<u64>)>,
}

impl Session {
    /// A session for `pid`, starting now.
    #[must_use]
    pub fn new(pid: u32, cfg: TraceConfig, allocator: AllocatorInfo, hooks: Vec<HookInfo>) -> Self {
        let target = TargetInfo {
            pid,
            comm: crate::procfs::comm(pid).unwrap_or_default(),
            exe: crate::procfs::exe(pid).map(|p| p.display().to_string()).unwrap_or_default(),
            start_time_ticks: crate::procfs::start_time(pid).unwrap_or(0),
        };
        let period = cfg.sample_period().as_secs_f64();
        let symbolizer = ProcessSymbolizer::new(pid, &cfg.debug_dirs);
        let mut patterns = cfg.fold.clone();
        let mut modules = Vec::new();
        // A growth profile's stacks start where memory was touched: in malloc or memset
        // more often than not, whose callers are the sites.
        if cfg.mode == crate::config::Mode::Growth {
            use crate::analysis::plumbing::{TOUCHER_MODULES, TOUCHERS};
            patterns.extend(TOUCHERS.iter().map(|p| (*p).to_owned()));
            modules.extend(TOUCHER_MODULES.iter().map(|p| (*p).to_owned()));
        }
        let folding = crate::analysis::plumbing::Folding { patterns, modules };
        Self {
            pid,
            cfg,
            target,
            allocator,
            hooks,
            start_unix: runtime::now_unix(),
            symbolizer,
            raw_stacks: HashMap::new(),
            ends: HashMap::new(),
            frames: HashMap::new(),
            wrappers: HashMap::new(),
            folding,
            incomplete: HashSet::new(),
            prev: None,
            start_ns: monotonic_ns(),
            history: History::new(crate::procfs::memory(pid), period),
            memory_next: std::time::Instant::now(),
            last_limit: None,
        }
    }

    /// The traced process.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Re-reads the process's memory map for symbolization.
    pub fn refresh_maps(&mut self) {
        self.symbolizer.refresh();
    }

    /// This process's share of `snap`, per site.
    fn aggregate(&self, snap: &Snapshot) -> Aggregate {
        let min_age_ns = u64::try_from(self.cfg.min_age.as_nanos()).unwrap_or(u64::MAX);
        // Not copied: a snapshot may hold millions of records.
        let mine = snap.allocations.iter().filter(|a| a.tgid == self.pid);
        let sampling = self.cfg.sample_mean.map(Sampling::new);
        Aggregate::estimate(mine, snap.taken_ns, min_age_ns, sampling.as_ref())
    }

    /// How many sampled allocations the estimates of `agg` rest on, when sampling.
    fn sampling_view(&self, agg: &Aggregate) -> Option<SamplingView> {
        let mean_bytes = self.cfg.sample_mean?;
        Some(SamplingView { mean_bytes, samples: agg.records })
    }

    /// Records a growth sample (no report).
    pub fn sample(&mut self, data: &SampleData) {
        // Read while the process lives: a final report after an OOM kill names the limit.
        let _ = self.limit();
        match data {
            SampleData::Records(snap) => {
                let agg = self.aggregate(snap);
                self.record(snap.taken_ns, &agg, Kind::Tick);
            }
            SampleData::Totals(totals) => {
                let mine = totals.sites.iter().filter(|t| t.tgid == self.pid);
                self.record(totals.taken_ns, &Aggregate::from_totals(mine), Kind::Tick);
            }
        }
    }

    fn record(&mut self, taken_ns: u64, agg: &Aggregate, kind: Kind) {
        #[expect(clippy::cast_precision_loss, reason = "seconds; ns precision not needed")]
        let t = taken_ns.saturating_sub(self.start_ns) as f64 / 1e9;
        let memory = self.read_memory();
        self.history.record(t, agg, memory, kind);
    }

    /// The process's memory, unless reading it now would spend more than 1% of the time in
    /// the target's page tables.
    fn read_memory(&mut self) -> Option<crate::analysis::history::ProcessMemory> {
        let started = std::time::Instant::now();
        if started < self.memory_next {
            return None;
        }
        let memory = crate::procfs::memory(self.pid);
        self.memory_next = started + started.elapsed() * 100;
        memory
    }

    /// Snapshot, aggregate, symbolize and build a report.
    fn collect(
        &mut self,
        source: &mut dyn AllocSource,
        end_reason: EndReason,
    ) -> Result<(Report, Aggregate), Error> {
        let snap = source.snapshot()?;
        self.collect_from(&snap, source, end_reason)
    }

    /// Aggregates this process's share of `snap`, records it as a growth sample (the last
    /// one unless `end_reason` is `interval`), symbolizes and builds a report.
    fn collect_from(
        &mut self,
        snap: &Snapshot,
        source: &mut dyn AllocSource,
        end_reason: EndReason,
    ) -> Result<(Report, Aggregate), Error> {
        let started = std::time::Instant::now();
        let agg = self.aggregate(snap);
        let kind = if end_reason == EndReason::Interval { Kind::Report } else { Kind::Last };
        self.record(snap.taken_ns, &agg, kind);
        let aggregated = started.elapsed();
        self.resolve_stacks(source, &agg)?;
        let resolved = started.elapsed();
        let end_unix_s = runtime::now_unix();
        let meta = ReportMeta {
            target: self.target.clone(),
            window: Window { start_unix_s: self.start_unix, end_unix_s },
            now_ns: snap.taken_ns,
            min_age_s: self.cfg.min_age.as_secs_f64(),
            allocator: self.allocator.clone(),
            end_reason,
            hooks: self.hooks.clone(),
            window_text: format!(
                "{}-{}",
                runtime::local_hms(self.start_unix),
                runtime::local_hms(end_unix_s)
            ),
            limit: if end_reason == EndReason::OomKill {
                self.limit_at_kill()
            } else {
                self.limit()
            },
            sampling: self.sampling_view(&agg),
            probe_cost: self.cfg.probe_cost,
            kernel: Some(kernel_view()),
            mode: self.cfg.mode.report(),
        };
        let analysis = Analysis::of(&self.history, &self.params());
        let stacks =
            build::Stacks { frames: &self.frames, ends: &self.ends, wrappers: &self.wrappers };
        let mut report = build::build(meta, &agg, &stacks, &snap.drops, &snap.hits, &analysis);
        let modules: Vec<_> = {
            let shown: hashbrown::HashSet<&str> = report
                .sites
                .iter()
                .flat_map(|s| s.stack.iter().filter_map(|f| f.module.as_deref()))
                .collect();
            let all = self.symbolizer.modules();
            all.into_iter().filter(|m| shown.contains(m.name.as_str())).collect()
        };
        report.modules = modules;
        debug!(
            "pid {}: {} records, {} sites: aggregated in {aggregated:.1?}, symbolized by \
             {resolved:.1?}, report built by {:.1?}",
            self.pid,
            snap.allocations.len(),
            agg.sites.len(),
            started.elapsed()
        );
        Ok((report, agg))
    }

    /// The trend's thresholds: `--min-growth` is the growth floor.
    fn params(&self) -> Params {
        #[expect(clippy::cast_precision_loss, reason = "a byte threshold")]
        let floor = self.cfg.growth_floor() as f64;
        Params { min_growth_bytes: floor, ..Params::default() }
    }

    /// `--limit` against the process's RSS, else its cgroup's limit against the cgroup's
    /// usage; once the process is gone, the last one read.
    fn limit(&mut self) -> Option<Limit> {
        if let Some(bytes) = self.cfg.limit {
            let usage = self.history.process().iter().rev().find_map(|m| m.map(|m| m.rss));
            return Some(Limit { bytes, usage: usage.unwrap_or(0), source: "option" });
        }
        let cgroupfs = crate::trace::preflight::sysfs_root().join("fs/cgroup");
        let now = crate::procfs::cgroup_memory_limit_at(self.pid, &cgroupfs).map(
            |(bytes, usage, dir)| {
                let events = crate::procfs::cgroup_oom_events(&dir);
                (Limit { bytes, usage, source: "cgroup" }, dir, events)
            },
        );
        if now.is_some() {
            self.last_limit.clone_from(&now);
        }
        now.or_else(|| self.last_limit.clone()).map(|(l, _, _)| l)
    }

    /// After an OOM kill: the limit as last read, its usage the limit when the cgroup's
    /// counts say the kill was for it (the last sample may be a second before the kill; the
    /// cgroup outlives its process, for a while at least).
    fn limit_at_kill(&mut self) -> Option<Limit> {
        if self.cfg.limit.is_some() {
            return self.limit();
        }
        let (mut limit, dir, events) = self.last_limit.clone()?;
        if crate::procfs::cgroup_limit_reached(&dir, limit.bytes, events) {
            limit.usage = limit.bytes;
        }
        Some(limit)
    }

    /// Fetches and symbolizes stacks not seen before (and those with frames that did not
    /// resolve last time), in one batch.
    fn resolve_stacks(
        &mut self,
        source: &mut dyn AllocSource,
        agg: &Aggregate,
    ) -> Result<(), Error> {
        let mut todo: Vec<u64> = Vec::new();
        for site in &agg.sites {
            let id = site.stack_id;
            if id == STACK_ID_NONE
                || (self.frames.contains_key(&id) && !self.incomplete.contains(&id))
            {
                continue;
            }
            if !self.raw_stacks.contains_key(&id) {
                let Some(raw) = source.stack(id)? else {
                    debug!("stack {id:016x} not in the stack map");
                    continue;
                };
                self.raw_stacks.insert(id, raw);
            }
            todo.push(id);
        }
        if todo.is_empty() {
            return Ok(());
        }
        let all: Vec<u64> =
            todo.iter().flat_map(|id| self.raw_stacks[id].ips.iter().copied()).collect();
        let mut resolved = self.symbolizer.symbolize(&all).into_iter();
        for id in todo {
            let raw = &self.raw_stacks[&id];
            let mut frames: Vec<Frame> = resolved.by_ref().take(raw.ips.len()).flatten().collect();
            match crate::analysis::plumbing::fold_top(&mut frames, &self.folding) {
                Some(wrapper) => self.wrappers.insert(id, wrapper),
                None => self.wrappers.remove(&id),
            };
            // A walk that says nothing (frame pointers) is complete if it reached a start.
            let outermost = frames
                .last()
                .and_then(|f| f.function.as_deref())
                .is_some_and(crate::trace::unwind::is_outermost);
            let end = raw.end.or(outermost.then_some(crate::analysis::model::StackEnd::Complete));
            if let Some(end) = end {
                self.ends.insert(id, end);
            }
            if frames.iter().all(|f| f.module.is_some()) {
                self.incomplete.remove(&id);
            } else {
                self.incomplete.insert(id);
            }
            self.frames.insert(id, frames);
        }
        Ok(())
    }

    /// Prints an interval report from `snap`.
    ///
    /// # Errors
    /// Reading stacks failed.
    pub fn report_interval(
        &mut self,
        snap: &Snapshot,
        source: &mut dyn AllocSource,
    ) -> Result<(), Error> {
        let (report, agg) = self.collect_from(snap, source, EndReason::Interval)?;
        self.print_interval(&report, &agg);
        Ok(())
    }

    /// The final report: printed and written to the configured files.
    ///
    /// # Errors
    /// Reading stacks or writing a file failed.
    pub fn finish(
        &mut self,
        snap: &Snapshot,
        source: &mut dyn AllocSource,
        end: EndReason,
    ) -> Result<Report, Error> {
        if end == EndReason::OomKill {
            // Everything resident at the kill is what the kill is about, the freshest pages
            // most of all: none is left out as too young (`--min-age`).
            self.cfg.min_age = Duration::ZERO;
        }
        let (report, agg) = self.collect_from(snap, source, end)?;
        if end == EndReason::TargetExited && !self.cfg.samples_need_records() {
            self.check_totals(&agg, source)?;
        }
        // An empty trace is not evidence of no leak: say so rather than report "no leak".
        // Only the hooks' counters: the start-up measure of the probes' cost has its own.
        let hooked = (0..self.hooks.len()).all(|i| snap.hits.get(i, false) == 0);
        if !self.cfg.probe_floor && hooked {
            warn!(
                "no probe fired in pid {} while traced: it called no allocator function leak \
                 hooks in that time; trace it for longer, or while it works",
                self.pid
            );
        }
        // Entries without a single return: the calls' blocks were never recorded. Seen once
        // on kernel 6.18 (malloc's return probe silent for a whole trace, its entry probe
        // firing) and not understood yet: say so rather than report "no leak".
        for (i, h) in self.hooks.iter().enumerate().filter(|(_, h)| h.has_exit) {
            let (enter, exit) = (snap.hits.get(i, false), snap.hits.get(i, true));
            if !self.cfg.probe_floor && enter >= SILENT_RETURN_MIN && exit == 0 {
                warn!(
                    "{} was called {enter} times in pid {} without its return probe firing: \
                     its blocks are missing from this report; trace it again",
                    h.symbol, self.pid
                );
            }
        }
        let why = match end {
            EndReason::Duration => "duration reached",
            EndReason::Signal => "interrupted",
            EndReason::TargetExited | EndReason::TargetsExited => "target exited",
            EndReason::OomKill => "killed by the OOM killer",
            EndReason::OverheadBudget => "overhead budget exceeded",
            EndReason::Interval => "interval",
        };
        let header = format!(
            "final report: pid {} ({}) {} ({:.1} s, {why})",
            self.pid,
            self.target.comm,
            Self::window_text(&report),
            report.duration_s
        );
        if self.cfg.quiet {
            let line =
                format!("leak: pid {} ({}): {}", self.pid, self.target.comm, report.growth.summary);
            self.emit(&line);
        } else {
            self.print(&report, &agg, &header, false);
        }
        if self.cfg.outputs.svg_diff.is_some()
            && let Some((_, base)) = self.history.baseline()
        {
            // The sites of the first sample, freed since, still need names.
            let base = base.clone();
            self.resolve_stacks(source, &base)?;
        }
        self.write_outputs(&report)?;
        Ok(report)
    }

    /// Once the process has exited nothing changes its records, so the kernel's per-site
    /// totals (what growth samples read) must equal the records' sums: says where they do
    /// not (the integration tests fail on this line).
    fn check_totals(&self, agg: &Aggregate, source: &mut dyn AllocSource) -> Result<(), Error> {
        let totals = source.totals()?;
        let kernel = Aggregate::from_totals(totals.sites.iter().filter(|t| t.tgid == self.pid));
        let sums = |a: &Aggregate| -> Vec<(u64, u64, u64)> {
            a.sites.iter().map(|s| (s.stack_id, s.bytes, s.count)).collect()
        };
        let (kernel, records) = (sums(&kernel), sums(agg));
        if kernel != records {
            let differ = records.iter().filter(|r| !kernel.contains(r)).count()
                + kernel.iter().filter(|k| !records.contains(k)).count();
            warn!("{TOTALS_DISAGREE} at {differ} sites: growth samples may be off");
            debug!("totals {kernel:?} records {records:?}");
        }
        Ok(())
    }

    /// An interval report (one line a site), unless `--quiet`.
    fn print_interval(&mut self, report: &Report, agg: &Aggregate) {
        if self.cfg.quiet {
            return;
        }
        let header = self.header(report);
        self.print(report, agg, &header, true);
    }

    /// Prints a report: `brief`, one line a site; else with whole stacks.
    fn print(&mut self, report: &Report, agg: &Aggregate, header: &str, brief: bool) {
        let deltas: Option<HashMap<String, i64>> = self.prev.as_ref().map(|prev| {
            agg.deltas_since(prev).into_iter().map(|(id, d)| (format!("{id:016x}"), d)).collect()
        });
        let total_delta = self.prev.as_ref().map(|p| signed_diff(agg.total_bytes, p.total_bytes));
        let opts = TableOptions { header, top: self.cfg.top, deltas: deltas.as_ref(), total_delta };
        let text = if brief {
            output::table::render_brief(report, &opts)
        } else {
            output::table::render(report, &opts)
        };
        self.emit(&text);
        self.prev = Some(agg.clone());
    }

    /// Writes `text` and a newline where reports go: stdout, or stderr under `leak run`
    /// (the command's stdout is the command's).
    fn emit(&self, text: &str) {
        if self.cfg.report_to_stderr {
            let mut out = std::io::stderr().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        } else {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
    }

    fn header(&self, report: &Report) -> String {
        format!(
            "pid {} ({}) {} +{:.1}s",
            self.pid,
            self.target.comm,
            runtime::local_hms(report.window.end_unix_s),
            report.duration_s
        )
    }

    fn window_text(report: &Report) -> String {
        format!(
            "{}-{}",
            runtime::local_hms(report.window.start_unix_s),
            runtime::local_hms(report.window.end_unix_s)
        )
    }

    /// Hands the report to `output`, which writes every configured file, each atomically.
    ///
    /// # Errors
    /// A file could not be written.
    pub fn write_outputs(&self, report: &Report) -> Result<(), Error> {
        let o = &self.cfg.outputs;
        let files = output::files::Files {
            json: o.json.as_deref(),
            pprof: o.pprof.as_deref(),
            folded: o.folded.as_deref(),
            svg: o.svg.as_deref(),
            svg_diff: o.svg_diff.as_deref(),
            html: o.html.as_deref(),
        };
        // The first growth sample, for what grew since.
        let baseline = self.history.baseline().map(|(t, base)| output::files::Baseline {
            at_unix_s: self.start_unix + t,
            sites: base
                .sites
                .iter()
                .map(|s| {
                    (
                        format!("{:016x}", s.stack_id),
                        build::stack_of(&self.frames, s.stack_id),
                        s.bytes,
                    )
                })
                .collect(),
        });
        let inputs = output::files::Inputs {
            baseline: baseline.as_ref(),
            clock: &runtime::local_hms,
            top: self.cfg.top,
        };
        let written = output::files::write(report, &files, &inputs)
            .map_err(|e| Error::io(e.context)(e.source))?;
        for p in written {
            eprintln!("wrote {}", p.display());
        }
        Ok(())
    }
}

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

/// `leak attach`: traces until `--duration`, a signal, or the target's exit; returns the
/// final report (also printed and written to the configured files).
///
/// # Errors
/// Reading the maps or writing outputs failed.
pub async fn trace(
    tracer: &mut Tracer,
    session: &mut Session,
    signals: &mut Signals,
) -> Result<Report, Error> {
    let exit = ExitWatch::new(session.pid);
    let mut oom = crate::trace::oom::OomWatch::process(session.pid);
    let start = Instant::now();
    let mut report_tick = interval_at(start + session.cfg.interval, session.cfg.interval);
    report_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut maps_tick = interval(MAPS_REFRESH);
    maps_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sampler = Sampler::new(start, session.cfg.sample_period());
    let mut budget = session.cfg.max_overhead.map(|m| Budget::new(m, session.cfg.probe_cost));
    let until_deadline = deadline(start, session.cfg.duration);
    tokio::pin!(until_deadline);
    let end = loop {
        tokio::select! {
            _ = report_tick.tick() => {
                // The final report is due about now: it would print the same again.
                if !runtime::ends_soon(start, session.cfg.duration, session.cfg.interval) {
                    let (report, agg) = session.collect(tracer, EndReason::Interval)?;
                    session.print_interval(&report, &agg);
                }
            }
            () = sampler.tick() => {
                let started = Instant::now();
                let data = SampleData::read(tracer, &session.cfg)?;
                session.sample(&data);
                oom.refresh();
                sampler.spent(started);
                if let Some(b) = &mut budget
                    && let Some(why) = b.exceeded(start.elapsed().as_secs_f64(), data.hits().0.iter().sum())
                {
                    warn!("stopped tracing pid {}: {why}", session.pid);
                    break EndReason::OverheadBudget;
                }
            }
            _ = maps_tick.tick() => {
                session.symbolizer.refresh();
                // Libraries loaded since: their unwind tables.
                tracer.load_unwind_tables(session.pid);
                tracer.flush_logs();
            }
            () = &mut until_deadline => break EndReason::Duration,
            () = exit.exited() => {
                break if oom.killed(session.pid) { EndReason::OomKill } else { EndReason::TargetExited };
            }
            _ = signals.recv() => break EndReason::Signal,
        }
    };
    tracer.flush_logs();
    let snap = tracer.snapshot()?;
    session.finish(&snap, tracer, end)
}

/// The one "hook" of a growth profile: page faults (their hit counter, the `kind` of their
/// records, `leak_common::FAULT_HOOK`).
#[must_use]
pub fn growth_hooks() -> Vec<HookInfo> {
    vec![HookInfo { symbol: "page_fault".into(), display: "page fault".into(), has_exit: false }]
}

/// Start of the warning [`Session`] logs when the kernel's site totals and the records differ
/// at a final report.
pub const TOTALS_DISAGREE: &str = "site totals disagree with the records";

/// What a growth sample is taken from.
pub enum SampleData {
    /// Every record (`--min-age`, `--sample`: see [`TraceConfig::samples_need_records`]).
    Records(Snapshot),
    /// The kernel's per-site totals.
    Totals(Totals),
}

impl SampleData {
    /// The probe hit counters read with the sample.
    #[must_use]
    pub fn hits(&self) -> &crate::analysis::model::ProbeHits {
        match self {
            Self::Records(s) => &s.hits,
            Self::Totals(t) => &t.hits,
        }
    }

    /// Reads what growth samples under `cfg` need from `source`.
    ///
    /// # Errors
    /// The source could not be read.
    pub fn read(source: &mut dyn AllocSource, cfg: &TraceConfig) -> Result<Self, Error> {
        Ok(if cfg.samples_need_records() {
            Self::Records(source.snapshot()?)
        } else {
            Self::Totals(source.totals()?)
        })
    }
}

/// Notices a process's exit: its pidfd turns readable, or (where `pidfd_open` is refused,
/// e.g. by an old seccomp profile) polling sees it gone or a zombie.
struct ExitWatch {
    pid: u32,
    pidfd: Option<AsyncFd<OwnedFd>>,
}

impl ExitWatch {
    fn new(pid: u32) -> Self {
        let pidfd = pidfd_open(pid);
        if pidfd.is_none() {
            warn!("pidfd_open failed: noticing the exit of {pid} by polling");
        }
        Self { pid, pidfd }
    }

    async fn exited(&self) {
        match &self.pidfd {
            Some(fd) => {
                if let Ok(mut guard) = fd.readable().await {
                    // Level-triggered state: keep readiness so a later poll sees it too.
                    guard.retain_ready();
                }
            }
            None => {
                // A child of ours stays a zombie until reaped: that counts as exited.
                while crate::procfs::is_running(self.pid) {
                    tokio::time::sleep(EXIT_POLL).await;
                }
            }
        }
    }
}

fn pidfd_open(pid: u32) -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: plain syscall; the result is a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: pidfd_open returned a descriptor we now own.
    let owned = unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).ok()?) };
    // SAFETY: `owned` is a valid descriptor that the AsyncFd owns and nothing else closes.
    unsafe { AsyncFd::register(owned) }.ok()
}

/// The kernel as the loader probed it, and the object it loads there.
fn kernel_view() -> report::KernelView {
    let (features, object) = crate::trace::loader::kernel();
    report::KernelView {
        release: features.release.clone(),
        bpf_object: object.name().to_owned(),
        degraded: crate::trace::loader::Features::degradations(*object)
            .iter()
            .map(|d| (*d).to_owned())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_the_hit_rate_times_the_cost_of_a_hit() {
        // 5% of a CPU; a hit costs 1 µs (measured: entry 800 ns, return 1200 ns).
        let cost = crate::analysis::model::ProbeCost { entry_ns: 800, return_ns: 1200 };
        let mut b = Budget::new(500, Some(cost));
        assert_eq!(b.check(0.0, 0), None, "the first sample only starts the count");
        // 40,000 hits in 1 s: 40 ms of probes, 4% of a CPU.
        let (share, over) = b.check(1.0, 40_000).unwrap();
        assert!((share - 0.04).abs() < 1e-9 && !over, "{share}");
        // 60,000 more in 1 s: 6%.
        let (share, over) = b.check(2.0, 100_000).unwrap();
        assert!((share - 0.06).abs() < 1e-9 && over, "{share}");
        // Unmeasured: the bench's cost per hit.
        let mut b = Budget::new(100, None);
        b.check(0.0, 0);
        let (share, _) = b.check(0.5, 1000).unwrap();
        assert!((share - 1000.0 * DEFAULT_HIT_COST_NS / 0.5e9).abs() < 1e-12, "{share}");
    }
}
