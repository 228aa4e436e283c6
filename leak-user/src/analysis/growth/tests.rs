//! The growth judgements and the summary line on histories of known shape.
#![expect(clippy::cast_precision_loss, reason = "small test values")]

use super::*;
use crate::{
    analysis::aggregate::Aggregate,
    analysis::build::tests::{frame, sample_report},
    analysis::history::{Kind, ProcessMemory},
    analysis::model::Allocation,
};

/// A history over `ticks` seconds: site 1 leaks 8 KiB/s, site 2 fills a 64 KiB cache in
/// 8 s then holds it, site 3 holds 1 KiB; private memory follows the traced total plus
/// 1 MiB.
fn history(ticks: u64) -> History {
    let mut h = History::new(Some(ProcessMemory { rss: 2 << 20, private: 1 << 20 }), 1.0);
    for t in 1..=ticks {
        let mut allocs = Vec::new();
        let mut add = |stack_id, n: u64, size| {
            for _ in 0..n {
                allocs.push(Allocation {
                    addr: allocs.len() as u64,
                    size,
                    timestamp_ns: 0,
                    stack_id,
                    tgid: 1,
                    kind: 0,
                });
            }
        };
        add(1, t * 8, 1024);
        add(2, t.min(8) * 8, 1024);
        add(3, 1, 1024);
        let agg = Aggregate::from_allocations(&allocs, 0, 0);
        let mem = ProcessMemory {
            rss: (2 << 20) + agg.total_bytes,
            private: (1 << 20) + agg.total_bytes,
        };
        h.record(t as f64, &agg, Some(mem), if t == ticks { Kind::Last } else { Kind::Tick });
    }
    h
}

#[test]
fn judges_each_site_and_the_total() {
    let h = history(30);
    let a = Analysis::of(&h, &Params::default());
    assert_eq!(a.site_trend(1).verdict, Verdict::Leak);
    assert!((a.site_trend(1).rate_bytes_per_s - 8192.0).abs() < 1.0);
    assert!((a.site_trend(1).rate_bytes_per_h - 8192.0 * 3600.0).abs() < 1.0);
    assert_eq!(a.site_trend(2).verdict, Verdict::Plateau);
    assert_eq!(a.site_trend(3).verdict, Verdict::Stable);
    assert_eq!(a.total().verdict, Verdict::Leak);
    assert_eq!(a.site_trend(99), TrendView::default());
    let series = a.site_series(1);
    assert_eq!(series.t_s.len(), 31);
    assert_eq!(series.bytes[0], 0);
    assert_eq!(series.bytes[30], 30 * 8192);
    assert_eq!(series.allocs[30], 240);
}

#[test]
fn process_view_says_how_much_the_sites_explain() {
    let h = history(30);
    let a = Analysis::of(&h, &Params::default());
    let p = a.process_view().unwrap();
    let traced_end = 30 * 8192 + 64 * 1024 + 1024;
    assert_eq!(p.private_bytes, (1 << 20) + traced_end);
    assert_eq!(p.private_gained_bytes, i64::try_from(traced_end).unwrap());
    assert_eq!(p.traced_gained_bytes, p.private_gained_bytes);
    assert_eq!(p.traced_share, Some(1.0));
    assert_eq!(p.trend.verdict, Verdict::Leak);
    assert_eq!(p.series.t_s.len(), 31);
    // Unreadable memory: no process view.
    let mut h = History::new(None, 1.0);
    h.record(1.0, &Aggregate::default(), None, Kind::Last);
    assert!(Analysis::of(&h, &Params::default()).process_view().is_none());
}

#[test]
fn summary_names_the_leak_and_projects_the_limit() {
    let h = history(30);
    let a = Analysis::of(&h, &Params::default());
    let mut sites = sample_report().sites;
    sites[0].id = "1".into();
    sites[0].trend = a.site_trend(1);
    sites[1].id = "2".into();
    sites[1].trend = a.site_trend(2);
    sites[1].stack = vec![frame("cache_fn", "c.c", 1, 1)]
        .into_iter()
        .map(|f| crate::analysis::report::StackFrame {
            function: f.function,
            module: f.module,
            file: f.file,
            line: f.line,
            address: "0x1".into(),
        })
        .collect();
    let limit = Limit { bytes: 64 << 20, usage: 8 << 20, source: "cgroup" };
    let g = a.view(&sites, "10:00:00-10:00:30", Some(&limit), &FIRED, a.process_view().as_ref());
    assert_eq!(g.leak_sites, ["1"]);
    // One verdict for the report: its most severe site's; the caveats are empty, as the
    // process's private memory grew with the traced sites.
    assert_eq!(g.verdict, Verdict::Leak);
    assert!(g.caveats.is_empty(), "{:?}", g.caveats);
    assert!(g.growing_sites.is_empty());
    // 240 KiB leaked, 64 KiB cached: the leak alone is 78% of the growth, both 100%.
    assert_eq!((g.top_sites, g.top_share), (2, 1.0));
    let secs = g.limit.as_ref().unwrap().time_to_limit_s.unwrap();
    let rate = a.total().rate_per_s;
    assert!((secs - (56u64 << 20) as f64 / rate).abs() <= 1.0, "{secs}");
    assert!(g.summary.starts_with("+305.0 KiB over 10:00:00-10:00:30 (+"), "{}", g.summary);
    assert!(
        g.summary.contains("; 2 sites account for 100%; leak suspected at leak_fn <- main (confidence 99.9%); 64.0 MiB limit reached in "),
        "{}",
        g.summary
    );
    // Killed by the OOM killer: the triage line says so, and that the limit was reached.
    let killed = Evidence { oom_killed: true, ..FIRED };
    let g = a.view(&sites, "10:00:00-10:00:30", Some(&limit), &killed, a.process_view().as_ref());
    assert!(
        g.summary.starts_with("OOM-killed after +305.0 KiB over 10:00:00-10:00:30 (+"),
        "{}",
        g.summary
    );
    assert!(
        g.summary
            .ends_with("(confidence 99.9%); 8.0 MiB of the 64.0 MiB limit used at the last sample"),
        "{}",
        g.summary
    );
    // The limit near at the last sample: reached.
    let near = Limit { usage: 60 << 20, ..limit };
    let g = a.view(&sites, "10:00:00-10:00:30", Some(&near), &killed, a.process_view().as_ref());
    assert!(g.summary.ends_with("(confidence 99.9%); its 64.0 MiB limit reached"), "{}", g.summary);
    // Nothing growing: said so, and no projection.
    let empty = History::new(None, 1.0);
    let quiet = Analysis::of(&empty, &Params::default());
    let g = quiet.view(&[], "a-b", Some(&limit), &FIRED, None);
    assert_eq!(
        g.summary,
        "+0 B over a-b (+0 B/h); no leak suspected; 8.0 MiB of the 64.0 MiB limit used"
    );
    assert_eq!((g.verdict, g.caveats.len()), (Verdict::Stable, 0));
    assert_eq!(g.limit.unwrap().time_to_limit_s, None);
    // No probe fired: not "no leak", but nothing traced, and a caveat says so.
    let g = quiet.view(
        &[],
        "a-b",
        None,
        &Evidence { fired: false, unknown_free: 0, oom_killed: false },
        None,
    );
    assert_eq!(g.summary, "+0 B over a-b (+0 B/h); nothing traced: no probe fired");
    assert!(g.caveats[0].starts_with("no probe fired: "), "{:?}", g.caveats);
}

const FIRED: Evidence = Evidence { fired: true, unknown_free: 0, oom_killed: false };

#[test]
fn traced_growth_without_process_growth_is_a_caveat_only_when_true() {
    // The traced total grows 8 KiB/s; the process's private memory grows by `private`
    // bytes a second.
    let judged = |private: u64, unknown_free: u64| {
        let mut h = History::new(Some(ProcessMemory { rss: 4 << 20, private: 2 << 20 }), 1.0);
        for t in 1..=30u64 {
            let allocs: Vec<Allocation> = (0..t * 8)
                .map(|i| Allocation {
                    addr: i,
                    size: 1024,
                    timestamp_ns: 0,
                    stack_id: 1,
                    tgid: 1,
                    kind: 0,
                })
                .collect();
            let mem = ProcessMemory { rss: 4 << 20, private: (2 << 20) + t * private };
            let agg = Aggregate::from_allocations(&allocs, 0, 0);
            h.record(t as f64, &agg, Some(mem), Kind::Tick);
        }
        let a = Analysis::of(&h, &Params::default());
        let mut sites = sample_report().sites;
        sites.truncate(1);
        sites[0].id = "1".into();
        sites[0].trend = a.site_trend(1);
        let g = a.view(
            &sites,
            "a-b",
            None,
            &Evidence { fired: true, unknown_free, oom_killed: false },
            a.process_view().as_ref(),
        );
        (g, a.process_view().unwrap())
    };
    // Level: older blocks replaced, or memory the allocator held.
    let (g, p) = judged(0, 0);
    assert_eq!(g.verdict, Verdict::Leak);
    assert!(g.summary.contains("leak suspected at leak_fn <- main (confidence "), "{}", g.summary);
    assert_eq!(
        g.caveats,
        ["the process's private memory grew +0 B while the traced sites gained +240.0 KiB: \
          the traced growth may be memory the allocator already held"]
    );
    assert_eq!(p.traced_share, None, "private did not grow");
    assert_eq!(
        explained(&p).unwrap(),
        "traced sites gained +240.0 KiB while the private memory did not grow: the \
         allocator reused memory it already held"
    );
    // unknown_free named only when there are such frees.
    let (g, _) = judged(0, 12);
    assert!(g.caveats[0].ends_with("or blocks allocated before tracing being replaced (12 of their frees seen: unknown_free)"), "{:?}", g.caveats);
    // Private memory that grows nearly as much (page-granular): no caveat, and the
    // share reads as what it is.
    let (g, p) = judged(7 * 1024, 0);
    assert!(g.caveats.is_empty(), "{:?}", g.caveats);
    assert_eq!(
        explained(&p).unwrap(),
        "traced sites gained +240.0 KiB, more than the private memory grew: the allocator reused memory it already held"
    );
    let (_, p) = judged(8 * 1024 + 100, 0);
    assert_eq!(explained(&p).unwrap(), "traced sites explain 99% of the private growth");
    let (_, p) = judged(7 * 1024 + 800, 0);
    assert_eq!(explained(&p).unwrap(), "traced sites explain all of the private growth");
}

#[test]
fn a_leak_is_named_with_its_rate_and_confidence() {
    let h = history(30);
    let a = Analysis::of(&h, &Params::default());
    let mut sites = sample_report().sites;
    sites[0].trend = a.site_trend(1);
    let line = leak_line(&sites[0]);
    assert!(
        line.starts_with("leak_fn <- main: +240.0 KiB at +8.0 KiB/s (+28.1 MiB/h), confidence "),
        "{line}"
    );
}
