//! Pure: the samples of one traced process over a run, per site and in total.
//!
//! Every sample tick aggregates a snapshot; the history keeps, per site, its outstanding
//! bytes and allocations over time. Memory stays bounded on long runs: at most
//! [`MAX_SAMPLES`] samples are kept; when full, every other one is dropped and from then on
//! only every other tick is kept (the stride doubles), so samples stay evenly spaced. A site's
//! series is stored as its changes only: a site that holds steady costs one entry.
use hashbrown::HashMap;

use crate::analysis::aggregate::Aggregate;

/// Samples kept at most (Theil-Sen and Mann-Kendall thin further, see `trend`).
pub const MAX_SAMPLES: usize = 512;

/// Process memory at one instant (`/proc/PID/smaps_rollup`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Resident set size, bytes.
    pub rss: u64,
    /// Private (clean + dirty) resident bytes: what the process alone holds.
    pub private: u64,
}

/// A container's memory at one instant, from its memory cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupMemory {
    /// Bytes charged to it, page cache included (`memory.current`, v1 `memory.usage_in_bytes`).
    pub usage: u64,
    /// Anonymous bytes (`anon` of `memory.stat`, v1 `total_rss`): what a leak grows.
    pub anon: u64,
    /// The working set: `usage` less the inactive page cache (`inactive_file`, v1
    /// `total_inactive_file`), what the kubelet and cAdvisor compare with the limit.
    pub working_set: u64,
    /// Its memory limit (`memory.max`, v1 `memory.limit_in_bytes`), if it has one.
    pub limit: Option<u64>,
}

/// A site's value at one sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Point {
    /// Outstanding bytes.
    pub bytes: u64,
    /// Outstanding allocations.
    pub count: u64,
}

/// A site's series as its changes: `(sample index, value from then on)`; before its first
/// entry a site held nothing.
#[derive(Clone, Debug, Default)]
struct Changes(Vec<(u32, Point)>);

impl Changes {
    fn last(&self) -> Point {
        self.0.last().map_or_else(Point::default, |e| e.1)
    }

    fn last_change(&self) -> usize {
        self.0.last().map_or(0, |e| e.0 as usize)
    }

    fn set(&mut self, index: u32, p: Point) {
        if self.last() != p {
            self.0.push((index, p));
        }
    }

    fn dense(&self, n: usize) -> Vec<Point> {
        let mut out = Vec::with_capacity(n);
        let mut it = self.0.iter().peekable();
        let mut cur = Point::default();
        for i in 0..n {
            while let Some((_, p)) = it.next_if(|e| e.0 as usize <= i) {
                cur = *p;
            }
            out.push(cur);
        }
        out
    }

    /// Keeps the samples at even indices, renumbered `i / 2`: the value at new index `j` is
    /// the one at old index `2j`, i.e. the last change at or before `2j`.
    fn halve(&mut self) {
        let mut out: Vec<(u32, Point)> = Vec::with_capacity(self.0.len());
        for &(i, p) in &self.0 {
            let j = i.div_ceil(2);
            match out.last_mut() {
                Some(last) if last.0 == j => last.1 = p,
                _ => out.push((j, p)),
            }
        }
        // Merging may leave runs of equal values.
        out.dedup_by(|b, a| a.1 == b.1);
        self.0 = out;
    }
}

/// Why a sample is offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A sampling tick: counts toward the stride.
    Tick,
    /// A report: replaces the last sample if that is less than half a period old; stands in
    /// for a tick if one is due (a slow report, e.g. the first symbolization, delays the
    /// ticks, and the gap it leaves is where a cache fills or a leak starts); else is not
    /// kept (an extra sample would break the even spacing).
    Report,
    /// The final sample: always kept.
    Last,
}

/// Evenly spaced samples of a value over a run, bounded (see the module documentation).
/// Sample 0 is at the start, second 0.
#[derive(Clone, Debug)]
pub struct Sampled<T> {
    times: Vec<f64>,
    values: Vec<T>,
    /// Seconds between ticks; a sample less than half of it after the previous one replaces
    /// it.
    period: f64,
    /// When the last tick (kept or not) was offered.
    last_tick: f64,
    /// Keep one tick in `stride`.
    stride: u32,
    ticks: u32,
}

impl<T> Sampled<T> {
    /// Samples starting with `first` at second 0, offered every `period` seconds.
    #[must_use]
    pub fn new(first: T, period: f64) -> Self {
        Self { times: vec![0.0], values: vec![first], period, last_tick: 0.0, stride: 1, ticks: 0 }
    }

    /// Offers a sample `t` seconds after the start (see [`Kind`]); of the ticks, one in the
    /// current stride is kept. Returns the index it is kept at. Call [`Self::compact`] after.
    pub fn push(&mut self, t: f64, value: T, kind: Kind) -> Option<u32> {
        let prev = self.times.last().copied().unwrap_or(0.0);
        let min_gap = self.period / 2.0;
        if t - prev < min_gap && self.times.len() == 1 {
            // Right after the start (a tick delayed by attaching): the start, when nothing
            // was outstanding yet, stands for it; it is never replaced.
            if kind != Kind::Last {
                return None;
            }
        } else if t - prev < min_gap {
            // Right after the last kept sample: the later one stands for both.
            self.times.pop();
            self.values.pop();
        } else {
            let tick = match kind {
                Kind::Tick => true,
                // Within a tenth of a period of being due: timer jitter.
                Kind::Report => t - self.last_tick >= 0.9 * self.period,
                Kind::Last => {
                    self.last_tick = t;
                    false
                }
            };
            if tick {
                self.last_tick = t;
                self.ticks += 1;
                if !self.ticks.is_multiple_of(self.stride) {
                    return None;
                }
            } else if kind == Kind::Report {
                return None;
            }
        }
        let index = u32::try_from(self.times.len()).unwrap_or(u32::MAX);
        self.times.push(t);
        self.values.push(value);
        Some(index)
    }

    /// Past [`MAX_SAMPLES`]: keeps every other sample (index `i` becomes `i / 2`) and from
    /// now on one tick in twice as many. Returns whether it did.
    pub fn compact(&mut self) -> bool {
        if self.times.len() <= MAX_SAMPLES {
            return false;
        }
        keep_even(&mut self.times);
        keep_even(&mut self.values);
        self.stride = self.stride.saturating_mul(2);
        self.ticks = 0;
        true
    }

    /// Sample times, seconds since the start.
    #[must_use]
    pub fn times(&self) -> &[f64] {
        &self.times
    }

    /// Values, one per time.
    #[must_use]
    pub fn values(&self) -> &[T] {
        &self.values
    }

    /// Samples kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// Only the start is recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.times.len() <= 1
    }
}

fn keep_even<T>(v: &mut Vec<T>) {
    let mut i = 0;
    v.retain(|_| {
        i += 1;
        (i - 1) % 2 == 0
    });
}

/// What was sampled of one process.
#[derive(Clone, Debug)]
pub struct History {
    /// Totals over sites and the process's memory. Sample 0 is the start itself: nothing
    /// traced was outstanding then (the probes see only allocations made after they attach).
    samples: Sampled<(Point, Option<ProcessMemory>)>,
    sites: HashMap<u64, Changes>,
    /// Outstanding bytes per site at the first sample after the start: the baseline growth
    /// is measured from.
    baseline: Option<(f64, Aggregate)>,
}

impl History {
    /// A history starting now, with the process's memory now (if readable), sampled every
    /// `period` seconds (see [`Sampled`]).
    #[must_use]
    pub fn new(memory: Option<ProcessMemory>, period: f64) -> Self {
        Self {
            samples: Sampled::new((Point::default(), memory), period),
            sites: HashMap::new(),
            baseline: None,
        }
    }

    /// Records a sample `t` seconds after the start (see [`Kind`]).
    pub fn record(&mut self, t: f64, agg: &Aggregate, memory: Option<ProcessMemory>, kind: Kind) {
        let total = Point { bytes: agg.total_bytes, count: agg.total_count };
        let Some(index) = self.samples.push(t, (total, memory), kind) else {
            return;
        };
        if self.baseline.is_none() {
            self.baseline = Some((t, agg.clone()));
        }
        let mut seen = hashbrown::HashSet::with_capacity(agg.sites.len());
        for s in &agg.sites {
            seen.insert(s.stack_id);
            self.sites
                .entry(s.stack_id)
                .or_default()
                .set(index, Point { bytes: s.bytes, count: s.count });
        }
        // Sites that no longer hold anything.
        for (id, ch) in &mut self.sites {
            if !seen.contains(id) {
                ch.set(index, Point::default());
            }
        }
        if self.samples.compact() {
            let n = self.samples.len();
            for ch in self.sites.values_mut() {
                ch.halve();
            }
            // Bounded in sites too: forget those that have held nothing for the newer half of
            // the window (their series would say "stable" anyway).
            self.sites.retain(|_, ch| ch.last() != Point::default() || ch.last_change() > n / 2);
        }
    }

    /// Sample times, seconds since the start.
    #[must_use]
    pub fn times(&self) -> &[f64] {
        self.samples.times()
    }

    /// Samples kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Only the start is recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// A site's values at every kept sample.
    #[must_use]
    pub fn site(&self, stack_id: u64) -> Vec<Point> {
        let n = self.len();
        self.sites.get(&stack_id).map_or_else(|| vec![Point::default(); n], |c| c.dense(n))
    }

    /// Sites ever seen.
    pub fn site_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.sites.keys().copied()
    }

    /// Totals over sites at every kept sample.
    #[must_use]
    pub fn totals(&self) -> Vec<Point> {
        self.samples.values().iter().map(|v| v.0).collect()
    }

    /// Process memory at every kept sample (`None` where it could not be read).
    #[must_use]
    pub fn process(&self) -> Vec<Option<ProcessMemory>> {
        self.samples.values().iter().map(|v| v.1).collect()
    }

    /// The first sample after the start and its time, if a later one was recorded too:
    /// growth over the window is measured from it.
    #[must_use]
    pub fn baseline(&self) -> Option<(f64, &Aggregate)> {
        let (t, agg) = self.baseline.as_ref()?;
        (self.times().last().is_some_and(|last| last > t)).then_some((*t, agg))
    }
}

#[cfg(test)]
#[expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::float_cmp,
    reason = "whole seconds: exact in f64"
)]
mod tests {
    use super::*;
    use crate::{analysis::aggregate::Aggregate, analysis::model::Allocation};

    fn agg(sites: &[(u64, u64)]) -> Aggregate {
        let allocs: Vec<Allocation> = sites
            .iter()
            .enumerate()
            .map(|(i, &(stack_id, size))| Allocation {
                addr: i as u64,
                size,
                timestamp_ns: 0,
                stack_id,
                tgid: 1,
                kind: 0,
            })
            .collect();
        Aggregate::from_allocations(&allocs, 0, 0)
    }

    #[test]
    fn series_start_at_zero_and_follow_each_site() {
        let mut h = History::new(Some(ProcessMemory { rss: 10, private: 5 }), 1.0);
        h.record(1.0, &agg(&[(1, 100)]), None, Kind::Tick);
        h.record(2.0, &agg(&[(1, 100), (2, 7)]), None, Kind::Tick);
        h.record(3.0, &agg(&[(2, 7), (2, 1)]), None, Kind::Last);
        assert_eq!(h.times(), [0.0, 1.0, 2.0, 3.0]);
        let b = |v: Vec<Point>| v.iter().map(|p| p.bytes).collect::<Vec<_>>();
        assert_eq!(b(h.site(1)), [0, 100, 100, 0]);
        assert_eq!(b(h.site(2)), [0, 0, 7, 8]);
        assert_eq!(h.site(2)[3].count, 2);
        assert_eq!(b(h.site(99)), [0, 0, 0, 0]);
        assert_eq!(h.totals().iter().map(|p| p.bytes).collect::<Vec<_>>(), [0, 100, 107, 8]);
        assert_eq!(h.process()[0], Some(ProcessMemory { rss: 10, private: 5 }));
        assert_eq!(h.baseline().unwrap().0, 1.0);
        assert_eq!(h.baseline().unwrap().1.total_bytes, 100);
        let mut one = History::new(None, 1.0);
        one.record(1.0, &agg(&[(1, 100)]), None, Kind::Last);
        assert!(one.baseline().is_none(), "one sample: no growth window");
    }

    #[test]
    fn a_sample_right_after_another_replaces_it() {
        let mut h = History::new(None, 1.0);
        h.record(1.0, &agg(&[(1, 100)]), None, Kind::Tick);
        h.record(1.2, &agg(&[(1, 300)]), None, Kind::Tick);
        assert_eq!(h.times(), [0.0, 1.2]);
        assert_eq!(h.site(1)[1].bytes, 300);
        h.record(1.7, &agg(&[(1, 400)]), None, Kind::Last);
        assert_eq!(h.times(), [0.0, 1.2, 1.7]);
        // A report between ticks is not kept (it would break the spacing); one right after a
        // tick replaces it.
        h.record(2.3, &agg(&[(1, 500)]), None, Kind::Report);
        assert_eq!(h.times(), [0.0, 1.2, 1.7]);
        h.record(2.5, &agg(&[(1, 600)]), None, Kind::Tick);
        h.record(2.6, &agg(&[(1, 700)]), None, Kind::Report);
        assert_eq!(h.times(), [0.0, 1.2, 1.7, 2.6]);
        assert_eq!(h.site(1)[3].bytes, 700);
        // A tick right after the start (delayed by attaching) adds nothing: the start stands
        // for it. It is never replaced, and a last sample is always kept.
        let mut h = History::new(None, 1.0);
        h.record(0.1, &agg(&[(1, 1)]), None, Kind::Tick);
        assert_eq!(h.times(), [0.0]);
        h.record(0.2, &agg(&[(1, 2)]), None, Kind::Last);
        assert_eq!(h.times(), [0.0, 0.2]);
    }

    #[test]
    fn a_report_stands_in_for_the_ticks_it_delays() {
        let mut h = History::new(None, 1.0);
        h.record(1.0, &agg(&[(1, 100)]), None, Kind::Tick);
        // The report is due with the tick at 2.0 and comes first; it takes until 3.4, and
        // the tick delayed by it comes then.
        h.record(2.0, &agg(&[(1, 200)]), None, Kind::Report);
        h.record(3.4, &agg(&[(1, 340)]), None, Kind::Tick);
        h.record(4.0, &agg(&[(1, 400)]), None, Kind::Tick);
        assert_eq!(h.times(), [0.0, 1.0, 2.0, 3.4, 4.0]);
        // Between ticks: not kept; right after one: replaces it.
        h.record(4.6, &agg(&[(1, 460)]), None, Kind::Report);
        assert_eq!(h.times(), [0.0, 1.0, 2.0, 3.4, 4.0]);
        h.record(5.0, &agg(&[(1, 500)]), None, Kind::Tick);
        h.record(5.3, &agg(&[(1, 530)]), None, Kind::Report);
        assert_eq!(h.times(), [0.0, 1.0, 2.0, 3.4, 4.0, 5.3]);
        // At twice the stride (after a halving), a report counts as the tick it stands for.
        let mut s = Sampled::new(0u32, 1.0);
        s.stride = 2;
        s.push(1.0, 1, Kind::Report);
        s.push(2.0, 2, Kind::Report);
        s.push(3.0, 3, Kind::Tick);
        s.push(4.0, 4, Kind::Tick);
        assert_eq!(s.values(), [0, 2, 4]);
    }

    /// Property: after any number of halvings the kept samples are exactly the ones a dense
    /// record would hold at the same (evenly spaced) times.
    #[test]
    fn halving_keeps_evenly_spaced_exact_samples() {
        let mut h = History::new(None, 1.0);
        let value = |tick: u64, id: u64| match id {
            // A leak, a sawtooth, a site that comes and goes, one freed for good early on.
            1 => tick * 10,
            2 => tick % 7,
            3 => u64::from(tick % 50 < 20) * 3,
            _ => u64::from(tick < 100) * 5,
        };
        let ticks = 3000u64;
        for tick in 1..=ticks {
            let sites: Vec<(u64, u64)> =
                (1..=4).map(|id| (id, value(tick, id))).filter(|s| s.1 > 0).collect();
            h.record(
                tick as f64,
                &agg(&sites),
                None,
                if tick == ticks { Kind::Last } else { Kind::Tick },
            );
            // A report between ticks changes nothing.
            h.record(tick as f64 + 0.7, &agg(&[(1, 1)]), None, Kind::Report);
        }
        assert!(h.len() <= MAX_SAMPLES + 1, "{}", h.len());
        assert!(h.len() > MAX_SAMPLES / 2, "{}", h.len());
        let times = h.times().to_vec();
        // Evenly spaced, but for the forced last sample.
        let step = times[2] - times[1];
        for w in times[..times.len() - 1].windows(2).skip(1) {
            assert!((w[1] - w[0] - step).abs() < 1e-9, "{times:?}");
        }
        assert_eq!(*times.last().unwrap(), ticks as f64);
        // The site freed early on is forgotten (it holds nothing now; the totals keep it).
        assert!(!h.site_ids().any(|id| id == 4));
        assert!(h.site(4).iter().all(|p| p.bytes == 0));
        for id in 1..=3 {
            let series = h.site(id);
            for (t, p) in times.iter().zip(&series).skip(1) {
                assert_eq!(p.bytes, value(*t as u64, id), "site {id} at {t}");
            }
        }
        for (t, p) in times.iter().zip(h.totals()).skip(1) {
            let tick = *t as u64;
            assert_eq!(p.bytes, (1..=4).map(|id| value(tick, id)).sum::<u64>());
        }
    }
}
