//! Pure: a process's history -> per-site and total growth judgements, the process view and
//! the summary line.
use std::fmt::Write as _;

use hashbrown::HashMap;

use crate::{
    analysis::history::{History, Point},
    analysis::model::Limit,
    analysis::report::{
        Growth, LimitView, ProcessSeries, ProcessView, Site, SiteSeries, TrendView,
    },
    analysis::trend::{self, Params, Trend, Verdict, thin_indices},
    analysis::units::{human_bytes, human_duration, round_to, signed_bytes},
};

/// Samples per series in the report (evenly spaced, both ends kept).
pub const SERIES_POINTS: usize = 64;
/// The growth "most" of which the summary attributes to the fewest sites.
const MOST: f64 = 0.9;
/// Sites named in "N sites account for P%" at most.
const MAX_TOP_SITES: usize = 5;

/// The judgements over one history.
#[derive(Clone, Debug)]
pub struct Analysis<'a> {
    history: &'a History,
    sites: HashMap<u64, Trend>,
    total: Trend,
    process: Option<ProcessAnalysis>,
}

#[derive(Clone, Debug)]
struct ProcessAnalysis {
    /// Indices of the samples where the process's memory was read.
    samples: Vec<usize>,
    rss: Vec<u64>,
    private: Vec<u64>,
    trend: Trend,
}

/// The report form of a trend (rounded).
#[must_use]
pub fn trend_view(t: &Trend) -> TrendView {
    TrendView {
        verdict: t.verdict,
        confidence: round_to(t.confidence, 4),
        rate_bytes_per_s: round_to(t.rate_per_s, 1),
        rate_bytes_per_h: round_to(t.rate_per_hour(), 0),
        recent_rate_bytes_per_s: round_to(t.recent_rate_per_s, 1),
        gained_bytes: to_i64(t.gained),
        samples: t.samples,
    }
}

#[expect(clippy::cast_possible_truncation, reason = "saturating float-to-int is intended")]
fn to_i64(x: f64) -> i64 {
    x.round() as i64
}

#[expect(clippy::cast_precision_loss, reason = "byte counts: exact below 2^53")]
fn f(x: u64) -> f64 {
    x as f64
}

fn signed(a: u64, b: u64) -> i64 {
    crate::analysis::aggregate::signed_diff(a, b)
}

impl<'a> Analysis<'a> {
    /// Judges every site that ever held memory, the total, and the process's private bytes.
    #[must_use]
    pub fn of(history: &'a History, params: &Params) -> Self {
        let times = history.times();
        let judge = |points: &[Point]| {
            let samples: Vec<(f64, f64)> =
                times.iter().zip(points).map(|(t, p)| (*t, f(p.bytes))).collect();
            trend::classify(&samples, params)
        };
        let sites = history.site_ids().map(|id| (id, judge(&history.site(id)))).collect();
        let total = judge(&history.totals());
        let memory = history.process();
        let samples: Vec<usize> =
            memory.iter().enumerate().filter_map(|(i, m)| m.map(|_| i)).collect();
        let process = (samples.len() >= 2).then(|| {
            let mem: Vec<_> = samples.iter().filter_map(|&i| memory[i]).collect();
            let private: Vec<u64> = mem.iter().map(|m| m.private).collect();
            let points: Vec<(f64, f64)> =
                samples.iter().zip(&private).map(|(&i, v)| (times[i], f(*v))).collect();
            ProcessAnalysis {
                trend: trend::classify(&points, params),
                rss: mem.iter().map(|m| m.rss).collect(),
                private,
                samples,
            }
        });
        Self { history, sites, total, process }
    }

    /// A site's trend (stable with no samples if never seen).
    #[must_use]
    pub fn site_trend(&self, id: u64) -> TrendView {
        self.sites.get(&id).map_or_else(TrendView::default, trend_view)
    }

    /// A site's trend, unrounded.
    #[must_use]
    pub fn trend_of(&self, id: u64) -> Option<&Trend> {
        self.sites.get(&id)
    }

    /// The traced total's trend.
    #[must_use]
    pub fn total(&self) -> &Trend {
        &self.total
    }

    /// A site's series, thinned for the report.
    #[must_use]
    pub fn site_series(&self, id: u64) -> SiteSeries {
        if self.sites.contains_key(&id) {
            self.series_of(&self.history.site(id))
        } else {
            SiteSeries::default()
        }
    }

    fn series_of(&self, points: &[Point]) -> SiteSeries {
        let keep = thin_indices(points.len(), SERIES_POINTS);
        SiteSeries {
            t_s: keep.iter().map(|&i| round_to(self.history.times()[i], 3)).collect(),
            bytes: keep.iter().map(|&i| points[i].bytes).collect(),
            allocs: keep.iter().map(|&i| points[i].count).collect(),
        }
    }

    /// The process view: memory at the last readable sample, its change, and how much of
    /// it the traced sites explain.
    #[must_use]
    pub fn process_view(&self) -> Option<ProcessView> {
        let p = self.process.as_ref()?;
        let (first, last) = (*p.samples.first()?, *p.samples.last()?);
        let n = p.samples.len();
        let private_gained = signed(p.private[n - 1], p.private[0]);
        let totals = self.history.totals();
        let traced_gained = signed(totals[last].bytes, totals[first].bytes);
        let keep = thin_indices(n, SERIES_POINTS);
        Some(ProcessView {
            rss_bytes: p.rss[n - 1],
            private_bytes: p.private[n - 1],
            rss_gained_bytes: signed(p.rss[n - 1], p.rss[0]),
            private_gained_bytes: private_gained,
            traced_gained_bytes: traced_gained,
            traced_share: (private_gained > 0).then(|| {
                #[expect(clippy::cast_precision_loss, reason = "a ratio")]
                let share = traced_gained as f64 / private_gained as f64;
                // Above 1 when blocks allocated before the probes attached were replaced by
                // traced ones (attach mode), or when freed memory stayed with the allocator.
                round_to(share.max(0.0), 3)
            }),
            trend: trend_view(&p.trend),
            series: ProcessSeries {
                t_s: keep
                    .iter()
                    .map(|&i| round_to(self.history.times()[p.samples[i]], 3))
                    .collect(),
                rss_bytes: keep.iter().map(|&i| p.rss[i]).collect(),
                private_bytes: keep.iter().map(|&i| p.private[i]).collect(),
            },
        })
    }

    /// The growth section of a report over `sites` (already built), with its summary line,
    /// its one verdict and the caveats `evidence` and the `process` view (already built)
    /// call for.
    #[must_use]
    pub fn view(
        &self,
        sites: &[Site],
        window_text: &str,
        limit: Option<&Limit>,
        evidence: &Evidence,
        process: Option<&ProcessView>,
    ) -> Growth {
        let by_rate = |verdict: Verdict| {
            let mut v: Vec<&Site> = sites.iter().filter(|s| s.trend.verdict == verdict).collect();
            v.sort_by(|a, b| b.trend.rate_bytes_per_s.total_cmp(&a.trend.rate_bytes_per_s));
            v
        };
        let leaks = by_rate(Verdict::Leak);
        let growing = by_rate(Verdict::Growing);
        let (top_sites, top_share) = concentration(sites);
        let total = trend_view(&self.total);
        let limit = limit.map(|l| LimitView {
            bytes: l.bytes,
            source: l.source.to_owned(),
            usage_bytes: l.usage,
            time_to_limit_s: projection(l, &self.total),
        });
        let verdict = sites.iter().map(|s| s.trend.verdict).min().unwrap_or_default();
        let summary = summary_line(&SummaryInput {
            total: &total,
            window_text,
            top_sites,
            top_share,
            leaks: &leaks,
            growing: &growing,
            limit: limit.as_ref(),
            fired: evidence.fired,
            oom_killed: evidence.oom_killed,
        });
        let caveats = caveats(verdict, evidence, process);
        Growth {
            summary,
            verdict,
            caveats,
            trend: total,
            top_sites,
            top_share,
            leak_sites: leaks.iter().map(|s| s.id.clone()).collect(),
            growing_sites: growing.iter().map(|s| s.id.clone()).collect(),
            limit,
            series: self.series_of(&self.history.totals()),
        }
    }
}

/// Seconds until `limit` is reached at the total's rate, if the total grows.
fn projection(limit: &Limit, total: &Trend) -> Option<f64> {
    seconds_to_limit(limit.bytes, limit.usage, total.verdict, total.rate_per_s)
}

/// Seconds until `usage` reaches `limit` at `rate_per_s`, if it is judged growing (a leak,
/// or growing: a plateau or a stable series is not projected).
#[must_use]
pub fn seconds_to_limit(limit: u64, usage: u64, verdict: Verdict, rate_per_s: f64) -> Option<f64> {
    if !matches!(verdict, Verdict::Leak | Verdict::Growing) || rate_per_s <= 0.0 {
        return None;
    }
    Some(round_to(f(limit.saturating_sub(usage)) / rate_per_s, 0))
}

/// The fewest sites whose gains make up [`MOST`] of the positive growth (at most
/// [`MAX_TOP_SITES`]), and their share.
fn concentration(sites: &[Site]) -> (usize, f64) {
    let mut gains: Vec<i64> =
        sites.iter().map(|s| s.trend.gained_bytes).filter(|g| *g > 0).collect();
    let sum: i64 = gains.iter().sum();
    if sum <= 0 {
        return (0, 0.0);
    }
    gains.sort_unstable_by(|a, b| b.cmp(a));
    let mut acc = 0;
    for (i, g) in gains.iter().enumerate().take(MAX_TOP_SITES) {
        acc += g;
        #[expect(clippy::cast_precision_loss, reason = "a ratio")]
        let share = acc as f64 / sum as f64;
        if share >= MOST || i + 1 == MAX_TOP_SITES.min(gains.len()) {
            return (i + 1, round_to(share, 3));
        }
    }
    (0, 0.0)
}

/// What a report's verdict rests on, besides its sites' series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// Some hooked function's probe fired while traced.
    pub fired: bool,
    /// Frees of blocks allocated before tracing (`unknown_free`).
    pub unknown_free: u64,
    /// The kernel's OOM killer ended the process (`end_reason: "oom_kill"`).
    pub oom_killed: bool,
}

/// The caveats of a report whose verdict is `verdict`: each a statement true of it.
fn caveats(verdict: Verdict, evidence: &Evidence, process: Option<&ProcessView>) -> Vec<String> {
    let mut out = Vec::new();
    if !evidence.fired {
        out.push(
            "no probe fired: the process called no allocator function leak hooks while traced, \
             so this report is not evidence of no leak"
                .to_owned(),
        );
    }
    if verdict == Verdict::Leak
        && let Some(p) = process
        && p.traced_gained_bytes > 0
        && p.private_gained_bytes < p.traced_gained_bytes / 2
    {
        // Attach mode sees only blocks allocated since: a pool whose older blocks are being
        // replaced grows in the traced view while the process stays level; so does memory
        // the allocator held free and hands out again.
        let mut text = format!(
            "the process's private memory grew {} while the traced sites gained {}: the \
             traced growth may be memory the allocator already held",
            signed_bytes(p.private_gained_bytes),
            signed_bytes(p.traced_gained_bytes)
        );
        if evidence.unknown_free > 0 {
            let _ = write!(
                text,
                ", or blocks allocated before tracing being replaced ({} of their frees seen: \
                 unknown_free)",
                evidence.unknown_free
            );
        }
        out.push(text);
    }
    out
}

/// How much of the process's private growth the traced sites explain, in words that are
/// true for each case (`None`: nothing worth saying).
#[must_use]
pub fn explained(p: &ProcessView) -> Option<String> {
    match p.traced_share {
        Some(share) if share <= 1.0 => {
            Some(format!("traced sites explain {:.0}% of the private growth", share * 100.0))
        }
        // Pages and allocator slack: a tenth over is all of it.
        Some(share) if share <= 1.1 => {
            Some("traced sites explain all of the private growth".into())
        }
        Some(_) => Some(format!(
            "traced sites gained {}, more than the private memory grew: the allocator reused \
             memory it already held",
            signed_bytes(p.traced_gained_bytes)
        )),
        None if p.traced_gained_bytes > 0 => Some(format!(
            "traced sites gained {} while the private memory did not grow: the allocator \
             reused memory it already held",
            signed_bytes(p.traced_gained_bytes)
        )),
        None => None,
    }
}

struct SummaryInput<'a> {
    total: &'a TrendView,
    window_text: &'a str,
    top_sites: usize,
    top_share: f64,
    leaks: &'a [&'a Site],
    growing: &'a [&'a Site],
    limit: Option<&'a LimitView>,
    /// Some probe fired.
    fired: bool,
    /// The OOM killer ended the process.
    oom_killed: bool,
}

/// `+1.2 GiB over 14:02:03-16:40:10 (+460.0 MiB/h); 3 sites account for 97%; leak suspected
/// at parse_request <- handle_conn`.
fn summary_line(s: &SummaryInput<'_>) -> String {
    let mut parts = vec![format!(
        "{}{} over {} ({}/h)",
        if s.oom_killed { "OOM-killed after " } else { "" },
        signed_bytes(s.total.gained_bytes),
        s.window_text,
        signed_bytes(to_i64(s.total.rate_bytes_per_h))
    )];
    if s.top_sites > 0 {
        parts.push(format!(
            "{} site{} account{} for {:.0}%",
            s.top_sites,
            if s.top_sites == 1 { "" } else { "s" },
            if s.top_sites == 1 { "s" } else { "" },
            s.top_share * 100.0
        ));
    }
    let more = |n: usize| if n > 1 { format!(" (+{} more)", n - 1) } else { String::new() };
    if let Some(top) = s.leaks.first() {
        parts.push(format!(
            "leak suspected at {}{} (confidence {})",
            top.name(),
            more(s.leaks.len()),
            percent_below_certain(top.trend.confidence)
        ));
    } else if let Some(top) = s.growing.first() {
        parts.push(format!(
            "growing at {}{}, not conclusive yet",
            top.name(),
            more(s.growing.len())
        ));
    } else if !s.fired {
        parts.push("nothing traced: no probe fired".to_owned());
    } else {
        parts.push("no leak suspected".to_owned());
    }
    // Said reached when the kernel's limit (not `--limit`) was near at the last sample:
    // else something else (the machine) ran out, and what was seen is said as usual.
    if let Some(l) = s.limit
        && s.oom_killed
        && l.source == "cgroup"
        && l.usage_bytes.saturating_mul(10) >= l.bytes.saturating_mul(9)
    {
        parts.push(format!("its {} limit reached", human_bytes(l.bytes)));
    } else if let Some(l) = s.limit
        && s.oom_killed
    {
        parts.push(format!(
            "{} of the {} limit used at the last sample",
            human_bytes(l.usage_bytes),
            human_bytes(l.bytes)
        ));
    } else if let Some(l) = s.limit {
        match l.time_to_limit_s {
            Some(secs) => parts.push(format!(
                "{} limit reached in {} at this rate",
                human_bytes(l.bytes),
                human_duration(secs)
            )),
            None => parts.push(format!(
                "{} of the {} limit used",
                human_bytes(l.usage_bytes),
                human_bytes(l.bytes)
            )),
        }
    }
    parts.join("; ")
}

/// `leak_fn <- main: +240.0 KiB at +8.0 KiB/s (+28.1 MiB/h), confidence 99.9%`.
#[must_use]
pub fn leak_line(site: &Site) -> String {
    format!(
        "{}: {} at {}/s ({}/h), confidence {}",
        site.name(),
        signed_bytes(site.trend.gained_bytes),
        signed_bytes(to_i64(site.trend.rate_bytes_per_s)),
        signed_bytes(to_i64(site.trend.rate_bytes_per_h)),
        percent_below_certain(site.trend.confidence)
    )
}

/// A confidence as a percentage that never reads as certainty: `99.9%` at most.
#[must_use]
pub fn percent_below_certain(confidence: f64) -> String {
    format!("{:.1}%", (confidence * 1000.0).floor().clamp(0.0, 999.0) / 10.0)
}

#[cfg(test)]
mod tests;
