//! One traced process's session: its samples' growth history, its stacks symbolized, and
//! its reports, each built by `analysis::build` and handed to `output` (printed, and the
//! final one written to every configured file). The loops that drive sessions are `attach`
//! (`leak attach`) and `controller` (`leak run`).
use std::time::Duration;

use hashbrown::{HashMap, HashSet};
use leak_common::STACK_ID_NONE;
use log::{debug, warn};

use crate::{
    analysis::aggregate::Aggregate,
    analysis::build::{self, ReportMeta},
    analysis::growth::Analysis,
    analysis::history::{History, Kind},
    analysis::model::{Frame, HookInfo, Limit, Snapshot, Totals},
    analysis::report::{self, AllocatorInfo, EndReason, Report, SamplingView, TargetInfo, Window},
    analysis::sampling::Sampling,
    analysis::trend::Params,
    config::TraceConfig,
    error::Error,
    output::{self, console::Console},
    runtime,
    trace::source::{AllocSource, monotonic_ns},
    trace::symbolize::{ProcessSymbolizer, Symbolizer as _},
};

/// Entry hits of a hook without one return hit that make the return probe suspect.
const SILENT_RETURN_MIN: u64 = 20;

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
    /// Where its reports are printed.
    console: Console,
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
        let console = Console::new(cfg.report_to_stderr, cfg.quiet, cfg.top, runtime::local_hms);
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
            console,
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

    /// How it traces.
    #[must_use]
    pub fn config(&self) -> &TraceConfig {
        &self.cfg
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
        // Kept for after an OOM kill (`limit_at_kill`), unless the cgroup has called the OOM
        // killer since the reading kept: a sample between the kill and the exit noticed
        // reads the victim's memory freed and the kill already counted, which would hide
        // that its limit was reached (seen on 5.10 in QEMU).
        let killed_since = match (&self.last_limit, &now) {
            (Some((_, kept, Some(before))), Some((_, dir, Some(count)))) => {
                kept == dir && count > before
            }
            _ => false,
        };
        if now.is_some() && !killed_since {
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
        self.console.interval(&report, &agg);
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
        self.console.last(&report, &agg);
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
        probes: crate::trace::loader::probes_attached().to_owned(),
    }
}
