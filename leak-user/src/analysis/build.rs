//! Pure: a report (the schema in `report`) built from an aggregate, the symbolized stacks,
//! the probes' counters and the growth analysis. The session calls [`build`] at every report.
use std::collections::BTreeMap;

use hashbrown::HashMap;

use crate::{
    analysis::aggregate::Aggregate,
    analysis::growth::{Analysis, Evidence},
    analysis::model::{DropCounts, Frame, HookInfo, Limit, ProbeCost, ProbeHits},
    analysis::report::{
        AgeView, AllocatorInfo, EndReason, GROWTH_CAVEAT, KernelView, Mode, ProbeTime,
        REPORT_VERSION, Report, SamplingView, Site, StackFrame, TargetInfo, Totals, Window,
    },
    analysis::units::round_to,
};

/// Everything besides the aggregate a report needs.
#[derive(Clone, Debug)]
pub struct ReportMeta {
    /// Target.
    pub target: TargetInfo,
    /// Window.
    pub window: Window,
    /// Snapshot time, `CLOCK_MONOTONIC` ns (for ages).
    pub now_ns: u64,
    /// Minimum age applied, seconds.
    pub min_age_s: f64,
    /// Allocator.
    pub allocator: AllocatorInfo,
    /// Why the report was made.
    pub end_reason: EndReason,
    /// The hooks, by attach cookie: names the allocator function of each site and the hit
    /// counters.
    pub hooks: Vec<HookInfo>,
    /// The window as local wall-clock times, e.g. `14:02:03-16:40:10` (for the summary).
    pub window_text: String,
    /// The memory limit to project against.
    pub limit: Option<Limit>,
    /// Sampling, when on.
    pub sampling: Option<SamplingView>,
    /// What a probe hit costs, when measured.
    pub probe_cost: Option<ProbeCost>,
    /// The kernel and the BPF object.
    pub kernel: Option<KernelView>,
    /// What was traced.
    pub mode: Mode,
}

/// The symbolized stacks by id: frames (innermost first) and how complete each is.
pub struct Stacks<'a> {
    /// Frames; a stack without an entry is reported with an empty stack.
    pub frames: &'a HashMap<u64, Vec<Frame>>,
    /// Ends, where known.
    pub ends: &'a HashMap<u64, crate::analysis::model::StackEnd>,
    /// The allocator wrapper folded off each stack, where one was.
    pub wrappers: &'a HashMap<u64, String>,
}

/// Builds a report from the sites of `agg` and their `stacks`. `growth` is the analysis of
/// the samples so far (see `growth`).
#[must_use]
pub fn build(
    meta: ReportMeta,
    agg: &Aggregate,
    stacks: &Stacks<'_>,
    drops: &DropCounts,
    hits: &ProbeHits,
    growth: &Analysis,
) -> Report {
    let sites: Vec<Site> = agg
        .sites
        .iter()
        .map(|s| Site {
            id: format!("{:016x}", s.stack_id),
            outstanding_bytes: s.bytes,
            outstanding_allocs: s.count,
            resident_bytes: (meta.mode == Mode::Growth).then_some(s.bytes),
            allocator_fn: usize::try_from(s.kind)
                .ok()
                .and_then(|k| meta.hooks.get(k))
                .map(|h| h.display.clone()),
            oldest_age_s: ns_to_s(meta.now_ns.saturating_sub(s.oldest_ns)),
            wrapper: stacks.wrappers.get(&s.stack_id).cloned(),
            stack: stack_of(stacks.frames, s.stack_id),
            stack_end: stacks.ends.get(&s.stack_id).copied(),
            age_bytes: s.age_bytes.into(),
            trend: growth.site_trend(s.stack_id),
            series: growth.site_series(s.stack_id),
        })
        .collect();
    let evidence = Evidence {
        fired: (0..meta.hooks.len()).any(|i| hits.get(i, false) > 0),
        unknown_free: drops.get(leak_common::DropReason::UnknownFree),
        oom_killed: meta.end_reason == EndReason::OomKill,
    };
    let process = growth.process_view();
    let mut growth_view =
        growth.view(&sites, &meta.window_text, meta.limit.as_ref(), &evidence, process.as_ref());
    if meta.mode == Mode::Growth {
        growth_view.caveats.push(GROWTH_CAVEAT.to_owned());
    }
    Report {
        version: REPORT_VERSION,
        mode: meta.mode,
        target: meta.target,
        duration_s: round_to(meta.window.end_unix_s - meta.window.start_unix_s, 3),
        totals: Totals { outstanding_bytes: agg.total_bytes, outstanding_allocs: agg.total_count },
        sites,
        drops: drops.named().map(|(k, v)| (k.to_owned(), v)).collect(),
        probe_hits: probe_hits(&meta.hooks, hits),
        window: meta.window,
        min_age_s: meta.min_age_s,
        allocator: meta.allocator,
        end_reason: meta.end_reason,
        age: AgeView { bytes: agg.age_bytes.into(), allocs: agg.age_counts.into() },
        growth: growth_view,
        sampling: meta.sampling,
        probe_time: meta.probe_cost.map(|c| ProbeTime::new(&meta.hooks, hits, c)),
        process,
        kernel: meta.kernel,
        modules: Vec::new(),
    }
}

/// `<symbol>_enter` / `<symbol>_exit` hit counters of every hook.
fn probe_hits(hooks: &[HookInfo], hits: &ProbeHits) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (i, h) in hooks.iter().enumerate() {
        out.insert(format!("{}_enter", h.symbol), hits.get(i, false));
        if h.has_exit {
            out.insert(format!("{}_exit", h.symbol), hits.get(i, true));
        }
    }
    out
}

/// The report frames of stack `id` (empty if unknown).
#[must_use]
pub fn stack_of(frames: &HashMap<u64, Vec<Frame>>, id: u64) -> Vec<StackFrame> {
    frames.get(&id).map(|fs| fs.iter().map(stack_frame).collect()).unwrap_or_default()
}

fn stack_frame(f: &Frame) -> StackFrame {
    StackFrame {
        function: f.function.clone(),
        module: f.module.clone(),
        file: f.file.clone(),
        line: f.line,
        address: format!("{:#x}", f.address),
    }
}

#[expect(clippy::cast_precision_loss, reason = "seconds for display; ns precision not needed")]
fn ns_to_s(ns: u64) -> f64 {
    round_to(ns as f64 / 1e9, 3)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{analysis::history::History, analysis::model::Allocation, analysis::trend::Params};

    pub(crate) fn frame(f: &str, file: &str, line: u32, addr: u64) -> Frame {
        Frame {
            function: Some(f.into()),
            module: Some("demo".into()),
            file: Some(format!("/src/{file}").into()),
            line: Some(line),
            address: addr,
        }
    }

    /// A report with two sites: `leak_fn` (3 x 1024 via malloc), `cache_fn` (1 x 100 via calloc).
    pub(crate) fn sample_report() -> Report {
        let alloc = |addr, size, stack_id, kind: u32| Allocation {
            addr,
            size,
            timestamp_ns: 1_000_000_000,
            stack_id,
            tgid: 42,
            kind,
        };
        let agg = Aggregate::from_allocations(
            &[
                alloc(0x10, 1024, 0xa, 0),
                alloc(0x20, 1024, 0xa, 0),
                alloc(0x30, 1024, 0xa, 0),
                alloc(0x40, 100, 0xb, 2),
            ],
            3_500_000_000,
            0,
        );
        let mut frames = HashMap::new();
        frames.insert(
            0xa,
            vec![frame("leak_fn", "demo.c", 12, 0x1111), frame("main", "demo.c", 40, 0x2222)],
        );
        frames.insert(
            0xb,
            vec![frame("cache_fn", "demo.c", 20, 0x3333), frame("main", "demo.c", 41, 0x4444)],
        );
        let mut drops = DropCounts::default();
        drops.0[leak_common::DropReason::UnknownFree as usize] = 2;
        let ends = [(0xa, crate::analysis::model::StackEnd::Complete)].into_iter().collect();
        let mut hits = ProbeHits::default();
        let at = |cookie: u32, exit| leak_common::hit_index(cookie, exit) as usize;
        hits.0[at(0, false)] = 3;
        hits.0[at(0, true)] = 3;
        hits.0[at(2, false)] = 1;
        hits.0[at(2, true)] = 1;
        build(
            ReportMeta {
                target: TargetInfo {
                    pid: 42,
                    comm: "demo".into(),
                    exe: "/bin/demo".into(),
                    start_time_ticks: 7,
                },
                window: Window { start_unix_s: 1_700_000_000.0, end_unix_s: 1_700_000_010.0 },
                now_ns: 3_500_000_000,
                min_age_s: 0.0,
                allocator: AllocatorInfo::default(),
                end_reason: EndReason::Duration,
                window_text: "10:00:00-10:00:10".into(),
                limit: None,
                sampling: None,
                probe_cost: None,
                kernel: None,
                mode: Mode::Exact,
                hooks: ["malloc", "free", "calloc"]
                    .iter()
                    .map(|s| HookInfo {
                        symbol: (*s).into(),
                        display: (*s).into(),
                        has_exit: *s != "free",
                    })
                    .collect(),
            },
            &agg,
            &Stacks { frames: &frames, ends: &ends, wrappers: &HashMap::new() },
            &drops,
            &hits,
            &Analysis::of(&History::new(None, 1.0), &Params::default()),
        )
    }

    #[test]
    fn json_has_the_contract_fields() {
        let report = sample_report();
        let v: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["target"]["pid"], 42);
        assert_eq!(v["target"]["comm"], "demo");
        assert_eq!(v["target"]["exe"], "/bin/demo");
        assert_eq!(v["duration_s"], 10.0);
        assert_eq!(v["totals"]["outstanding_bytes"], 3172);
        assert_eq!(v["totals"]["outstanding_allocs"], 4);
        assert_eq!(v["sites"][0]["stack_end"], "complete");
        assert!(v["sites"][1].get("stack_end").is_none(), "unknown: left out");
        let site = &v["sites"][0];
        assert_eq!(site["id"], "000000000000000a");
        assert_eq!(site["outstanding_bytes"], 3072);
        assert_eq!(site["outstanding_allocs"], 3);
        assert_eq!(site["allocator_fn"], "malloc");
        assert_eq!(site["oldest_age_s"], 2.5);
        let f0 = &site["stack"][0];
        assert_eq!(f0["function"], "leak_fn");
        assert_eq!(f0["module"], "demo");
        assert_eq!(f0["file"], "/src/demo.c");
        assert_eq!(f0["line"], 12);
        assert_eq!(f0["address"], "0x1111");
        assert_eq!(v["sites"][1]["stack"][0]["function"], "cache_fn");
        assert_eq!(v["drops"]["unknown_free"], 2);
        assert_eq!(v["drops"]["alloc_map_full"], 0);
        assert_eq!(v["drops"].as_object().unwrap().len(), leak_common::DropReason::ALL.len());
        // Hit counters of the hooks; free has no return probe.
        let hits: Vec<&String> = v["probe_hits"].as_object().unwrap().keys().collect();
        assert_eq!(
            hits,
            ["calloc_enter", "calloc_exit", "free_enter", "malloc_enter", "malloc_exit"]
        );
    }

    #[test]
    fn json_round_trips() {
        let report = sample_report();
        let text = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn unknown_stacks_are_empty_and_frames_have_display_names() {
        let agg = Aggregate::from_allocations(
            &[Allocation { addr: 1, size: 5, timestamp_ns: 0, stack_id: 0, tgid: 1, kind: 7 }],
            0,
            0,
        );
        let r = build(
            ReportMeta {
                target: TargetInfo {
                    pid: 1,
                    comm: String::new(),
                    exe: String::new(),
                    start_time_ticks: 0,
                },
                window: Window { start_unix_s: 0.0, end_unix_s: 0.0 },
                now_ns: 0,
                min_age_s: 0.0,
                allocator: AllocatorInfo::default(),
                end_reason: EndReason::Signal,
                hooks: Vec::new(),
                window_text: String::new(),
                limit: None,
                sampling: None,
                probe_cost: None,
                kernel: None,
                mode: Mode::Exact,
            },
            &agg,
            &Stacks { frames: &HashMap::new(), ends: &HashMap::new(), wrappers: &HashMap::new() },
            &DropCounts::default(),
            &ProbeHits::default(),
            &Analysis::of(&History::new(None, 1.0), &Params::default()),
        );
        assert!(r.sites[0].stack.is_empty());
        assert_eq!(r.sites[0].allocator_fn, None);
        let f = StackFrame {
            function: None,
            module: Some("libc.so.6".into()),
            file: None,
            line: None,
            address: "0x1".into(),
        };
        assert_eq!(f.name(), "[libc.so.6]");
        let f = StackFrame { module: Some("[vdso]".into()), ..f };
        assert_eq!(f.name(), "[vdso]");
        assert_eq!(f.location(), None);
        let f = StackFrame {
            function: Some("x".into()),
            module: None,
            file: Some("/a/b.c".into()),
            line: Some(3),
            address: "0x1".into(),
        };
        assert_eq!(f.location().as_deref(), Some("b.c:3"));
    }
}
