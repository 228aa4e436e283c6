//! Pure: a site's (or a process's) outstanding bytes over time -> is it leaking?
//!
//! Outstanding bytes alone mislead: a cache that fills up and stays full looks like a leak in
//! every snapshot. A leak is steady, unbounded growth, so each series is judged on:
//! - Mann-Kendall: is there a monotonic upward trend, and how sure are we (robust to outliers
//!   and to the growth being non-linear);
//! - Theil-Sen: how fast (the median of the pairwise slopes: robust to noise and to bursts);
//! - the recent part of the window on its own: a series that grew and then levelled off is a
//!   plateau (cache-like), not a leak.
//!
//! No clock here: samples carry their own timestamps (seconds).

/// The judgement on one series, most severe first (`Ord`: a leak sorts before a plateau).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Steady growth, statistically significant, still going on at the end of the window.
    Leak,
    /// Growth, but not enough evidence yet (too few samples, or too noisy).
    Growing,
    /// Grew, then levelled off: a cache or a pool filling up.
    Plateau,
    /// No growth.
    #[default]
    Stable,
}

impl Verdict {
    /// A verdict with its evidence, as every report shows it: the confidence is labelled,
    /// and only a leak has one worth showing (`growing` is by definition not conclusive).
    #[must_use]
    pub fn describe(self, confidence: f64) -> String {
        match self {
            // Never "100%": a test's confidence is below certainty.
            Self::Leak => format!(
                "leak (confidence {:.1}%)",
                (confidence * 1000.0).floor().clamp(0.0, 999.0) / 10.0
            ),
            Self::Growing => "growing, not conclusive yet".to_owned(),
            Self::Plateau => "plateau (levelled off)".to_owned(),
            Self::Stable => "stable".to_owned(),
        }
    }

    /// Name used in reports.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Leak => "leak",
            Self::Growing => "growing",
            Self::Plateau => "plateau",
            Self::Stable => "stable",
        }
    }
}

/// Thresholds of the classification.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Samples needed before anything is called a leak.
    pub min_samples: usize,
    /// Mann-Kendall one-sided p-value below which an upward trend is significant.
    pub alpha: f64,
    /// "Grew, then flat" must fit at least this much better (sum of absolute residuals, as a
    /// share of a straight line's) to call the series a plateau.
    pub plateau_fit: f64,
    /// The flat part of a plateau covers at least this share of the window, at its end.
    pub min_flat_share: f64,
    /// Growth over the window below this many bytes is noise, whatever the statistics say.
    pub min_growth_bytes: f64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            min_samples: 6,
            alpha: 0.01,
            plateau_fit: 0.7,
            min_flat_share: 0.25,
            min_growth_bytes: 4096.0,
        }
    }
}

/// The result for one series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trend {
    /// The judgement.
    pub verdict: Verdict,
    /// How sure, 0..1: for `leak`/`growing` 1 - the trend test's p-value; for `plateau` how
    /// far growth has slowed (1 - recent rate / average rate); for `stable` the p-value.
    pub confidence: f64,
    /// Theil-Sen slope over the window, bytes per second.
    pub rate_per_s: f64,
    /// Theil-Sen slope over the recent part of the window, bytes per second.
    pub recent_rate_per_s: f64,
    /// Last value minus first value.
    pub gained: f64,
    /// Samples judged.
    pub samples: usize,
}

impl Trend {
    /// Growth rate, bytes per hour.
    #[must_use]
    pub fn rate_per_hour(&self) -> f64 {
        self.rate_per_s * 3600.0
    }
}

/// Pairs at most this many points: Theil-Sen and Mann-Kendall are O(n^2).
const MAX_POINTS: usize = 240;
/// Points the plateau model is fitted on (it tries several knees).
const PLATEAU_POINTS: usize = 60;
/// Knees the plateau model tries.
const PLATEAU_KNEES: usize = 12;

/// Judges a series of `(seconds, value)` samples in time order.
#[must_use]
pub fn classify(samples: &[(f64, f64)], p: &Params) -> Trend {
    let samples = thin(samples, MAX_POINTS);
    let n = samples.len();
    let gained = match (samples.first(), samples.last()) {
        (Some(a), Some(b)) => b.1 - a.1,
        _ => 0.0,
    };
    let (lo, hi) = samples
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), s| (lo.min(s.1), hi.max(s.1)));
    if n == 0 || hi - lo <= p.min_growth_bytes {
        // Never moved by more than the floor: nothing to test (and the common case: most
        // sites of a process hold steady).
        return Trend {
            verdict: Verdict::Stable,
            confidence: 1.0,
            rate_per_s: 0.0,
            recent_rate_per_s: 0.0,
            gained,
            samples: n,
        };
    }
    if n < 3 {
        let span = samples[n - 1].0 - samples[0].0;
        let rate = if span > 0.0 { gained / span } else { 0.0 };
        let verdict = if gained > p.min_growth_bytes { Verdict::Growing } else { Verdict::Stable };
        return Trend {
            verdict,
            confidence: 0.0,
            rate_per_s: rate,
            recent_rate_per_s: rate,
            gained,
            samples: n,
        };
    }
    let rate = theil_sen(&samples);
    let line = Line::through(&samples, rate);
    // Noise: robust standard deviation of the residuals around the trend line.
    let sigma = 1.4826
        * median(&mut samples.iter().map(|s| (s.1 - line.at(s.0)).abs()).collect::<Vec<_>>());
    let span = samples[n - 1].0 - samples[0].0;
    let rise = rate * span;
    let floor = p.min_growth_bytes.max(2.0 * sigma);
    let grew = rate > 0.0 && rise > floor && gained > p.min_growth_bytes;
    // Memory series are autocorrelated (queues, buffers in flight): the trend test's variance
    // is inflated for that, or a random walk would pass for a leak.
    let residuals = two_segment_residuals(&samples, line);
    let p_up = mann_kendall_p_up_scaled(&samples, autocorrelation_factor(&residuals));
    let recent = &samples[n - share_of(n, p.min_flat_share).clamp(3, n)..];
    let recent_rate = theil_sen(recent);
    // Still rising at the end: the recent part alone grows beyond the noise. A series that
    // jumped (a working set filling at startup) and then keeps growing is not a plateau.
    let still_rising = recent_rate * (recent[recent.len() - 1].0 - recent[0].0) > floor;
    // Net growth beyond the noise, even if the robust slope is 0 (a cache that filled early
    // in the window and has held since: most pairs of samples are level).
    let net_rise = grew || gained > floor;
    // How much better "grew, then flat" fits than a straight line (1: no better).
    let plateau_ratio = if net_rise && !still_rising {
        plateau_fit(&samples, &line, p.min_flat_share)
    } else {
        1.0
    };

    let (verdict, confidence) = if plateau_ratio < p.plateau_fit && p_up < 0.2 {
        // How far growth has slowed: the recent slope against the average over the window.
        let average = gained / span.max(f64::MIN_POSITIVE);
        (Verdict::Plateau, 1.0 - recent_rate.max(0.0) / average)
    } else if grew && p_up < p.alpha {
        // Level for the last quarter (or at least the last two samples): growth may have
        // stopped, too early to tell a leak from a cache that just filled.
        // Level means: at the window's rate it would have risen clearly beyond the noise
        // meanwhile, and rose by less than a quarter of that. The noise here is measured on
        // successive differences, which a ramp-then-flat shape does not inflate.
        let step_floor = p.min_growth_bytes.max(2.0 * difference_noise(&samples));
        let tail = flat_tail(&samples, step_floor).max(1);
        let (first, last) = (samples[n - tail], samples[n - 1]);
        let expected = rate * (last.0 - first.0);
        let settled = tail >= share_of(n, p.min_flat_share).max(2)
            && expected > step_floor
            && last.1 - first.1 < 0.25 * expected;
        if n >= p.min_samples && !settled {
            (Verdict::Leak, 1.0 - p_up)
        } else {
            (Verdict::Growing, 1.0 - p_up)
        }
    } else if grew && p_up < 0.2 {
        (Verdict::Growing, 1.0 - p_up)
    } else {
        // How far below the growth floor it stays.
        (Verdict::Stable, 1.0 - (rise.max(gained).max(0.0) / floor).min(1.0))
    };
    Trend {
        verdict,
        confidence: confidence.clamp(0.0, 1.0),
        rate_per_s: rate,
        recent_rate_per_s: recent_rate,
        gained,
        samples: n,
    }
}

/// Robust standard deviation of the noise from successive differences (their spread around
/// their median, over the square root of 2): a level or a steady trend does not count.
fn difference_noise(samples: &[(f64, f64)]) -> f64 {
    let mut diffs: Vec<f64> = samples.windows(2).map(|w| w[1].1 - w[0].1).collect();
    let mid = median(&mut diffs);
    let mut dev: Vec<f64> = diffs.iter().map(|d| (d - mid).abs()).collect();
    1.4826 * median(&mut dev) / std::f64::consts::SQRT_2
}

/// How many samples at the end stay within `tolerance` of each other.
fn flat_tail(samples: &[(f64, f64)], tolerance: f64) -> usize {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut count = 0;
    for s in samples.iter().rev() {
        lo = lo.min(s.1);
        hi = hi.max(s.1);
        if hi - lo > tolerance {
            break;
        }
        count += 1;
    }
    count
}

/// A line `a + b t`, robustly placed (intercept: median of `y - b t`).
#[derive(Clone, Copy, Debug)]
struct Line {
    a: f64,
    b: f64,
}

impl Line {
    fn through(samples: &[(f64, f64)], slope: f64) -> Self {
        let mut icepts: Vec<f64> = samples.iter().map(|s| s.1 - slope * s.0).collect();
        Self { a: median(&mut icepts), b: slope }
    }

    fn at(self, t: f64) -> f64 {
        self.a + self.b * t
    }
}

/// The intercept of the line with slope `slope` that `samples` sit around: the median of
/// `y - slope * t` (how the classifier places its Theil-Sen line; the HTML report draws it).
#[must_use]
pub fn intercept(samples: &[(f64, f64)], slope: f64) -> f64 {
    Line::through(samples, slope).a
}

/// Residuals around the better of `line` and the best two-segment fit (a knee, a line on
/// each side): the autocorrelation correction must see the noise, not the curvature of a
/// deterministic shape (a leak next to a cache that filled). In whole bytes: rounding noise
/// of a perfect line must not look like structure.
fn two_segment_residuals(samples: &[(f64, f64)], line: Line) -> Vec<f64> {
    let around = |l: Line, r: Line, knee: f64| -> Vec<f64> {
        samples
            .iter()
            .map(|s| (s.1 - if s.0 <= knee { l.at(s.0) } else { r.at(s.0) }).round())
            .collect()
    };
    let single = around(line, line, f64::INFINITY);
    let thinned = thin(samples, PLATEAU_POINTS);
    let count = thinned.len();
    if count < 12 {
        return single;
    }
    let sad = |v: &[f64]| v.iter().map(|x| x.abs()).sum::<f64>();
    let mut best: Option<(f64, Line, Line, f64)> = None;
    for j in 0..PLATEAU_KNEES {
        let knee_at = 3 + j * (count - 7) / (PLATEAU_KNEES - 1);
        let (early, late) = (&thinned[..=knee_at], &thinned[knee_at..]);
        let left = Line::through(early, theil_sen(early));
        let right = Line::through(late, theil_sen(late));
        let cost = early.iter().map(|x| (x.1 - left.at(x.0)).abs()).sum::<f64>()
            + late[1..].iter().map(|x| (x.1 - right.at(x.0)).abs()).sum::<f64>();
        if best.is_none_or(|b| cost < b.0) {
            best = Some((cost, left, right, thinned[knee_at].0));
        }
    }
    match best {
        Some((_, left, right, knee)) => {
            let two = around(left, right, knee);
            // Only a clearly better fit is a shape; a slightly better one is fitting noise.
            if sad(&two) < 0.5 * sad(&single) { two } else { single }
        }
        None => single,
    }
}

/// The best "line until a knee, then flat" model's sum of absolute residuals, as a share of
/// `line`'s. The flat part covers at least `min_flat_share` of the samples, at the end.
fn plateau_fit(samples: &[(f64, f64)], line: &Line, min_flat_share: f64) -> f64 {
    let s = thin(samples, PLATEAU_POINTS);
    let n = s.len();
    let sad_line: f64 = s.iter().map(|x| (x.1 - line.at(x.0)).abs()).sum();
    if sad_line <= 0.0 || n < 6 {
        return 1.0;
    }
    let min_flat = share_of(n, min_flat_share).max(3);
    let last_knee = n - min_flat;
    let first_knee = 2;
    if last_knee < first_knee {
        return 1.0;
    }
    let mut best = f64::INFINITY;
    for j in 0..PLATEAU_KNEES {
        let k = first_knee + j * (last_knee - first_knee) / (PLATEAU_KNEES - 1).max(1);
        let early = &s[..=k];
        let e = Line::through(early, theil_sen(early));
        let level = median(&mut s[k..].iter().map(|x| x.1).collect::<Vec<_>>());
        let sad: f64 = early.iter().map(|x| (x.1 - e.at(x.0)).abs()).sum::<f64>()
            + s[k + 1..].iter().map(|x| (x.1 - level).abs()).sum::<f64>();
        best = best.min(sad);
    }
    best / sad_line
}

/// Sample counts stay far below 2^52, where `usize` to `f64` is exact.
#[expect(clippy::cast_precision_loss, reason = "sample counts are far below 2^52")]
fn as_f64(n: usize) -> f64 {
    n as f64
}

/// `ceil(n * share)` for a share in [0, 1]: a count of samples, at most `n`.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "the product lies in [0, n]"
)]
fn share_of(n: usize, share: f64) -> usize {
    ((as_f64(n) * share.clamp(0.0, 1.0)).ceil() as usize).min(n)
}

/// At most `max` indices of `0..n`, evenly spaced, both ends kept: how every series is
/// thinned (the trend fit's samples, the reports' charts).
#[must_use]
pub fn thin_indices(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    (0..max).map(|i| i * (n - 1) / (max - 1)).collect()
}

fn thin(samples: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    thin_indices(samples.len(), max).into_iter().map(|i| samples[i]).collect()
}

/// Median of the slopes between every pair of samples with distinct times.
#[must_use]
pub fn theil_sen(samples: &[(f64, f64)]) -> f64 {
    let mut slopes = Vec::with_capacity(samples.len() * samples.len() / 2);
    for (i, a) in samples.iter().enumerate() {
        for b in &samples[i + 1..] {
            let dt = b.0 - a.0;
            if dt > 0.0 {
                slopes.push((b.1 - a.1) / dt);
            }
        }
    }
    median(&mut slopes)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { v[m - 1].midpoint(v[m]) }
}

/// Mann-Kendall test for an upward monotonic trend: the one-sided p-value (small: the series
/// goes up more consistently than chance would make it), with the variance corrected for
/// ties (a flat stretch is many ties).
#[must_use]
pub fn mann_kendall_p_up(samples: &[(f64, f64)]) -> f64 {
    mann_kendall_p_up_scaled(samples, 1.0)
}

/// Hamed and Rao's correction of the Mann-Kendall variance for autocorrelation: `n / n*`
/// from the significant lag autocorrelations of the ranks of the detrended series
/// (`residuals`), at least 1 (negative autocorrelation is not allowed to shrink it).
#[must_use]
pub fn autocorrelation_factor(residuals: &[f64]) -> f64 {
    let n = residuals.len();
    if n < 4 {
        return 1.0;
    }
    let ranks = ranks(residuals);
    let mean = ranks.iter().sum::<f64>() / as_f64(n);
    let dev: Vec<f64> = ranks.iter().map(|r| r - mean).collect();
    let denom: f64 = dev.iter().map(|d| d * d).sum();
    if denom <= 0.0 {
        return 1.0;
    }
    let nf = as_f64(n);
    let bound = 1.96 / nf.sqrt();
    let mut sum = 0.0;
    for lag in 1..n - 1 {
        let rho = dev.iter().zip(&dev[lag..]).map(|(a, b)| a * b).sum::<f64>() / denom;
        if rho.abs() > bound {
            let k = as_f64(n - lag);
            sum += k * (k - 1.0) * (k - 2.0) * rho;
        }
    }
    let hamed_rao = 1.0 + 2.0 * sum / (nf * (nf - 1.0) * (nf - 2.0));
    // Lag-1 alone, as an AR(1) process (Bayley and Hammersley): a slow wander's ranks lose
    // most of their correlation to detrending, its lag-1 correlation much less.
    let r1 = dev.iter().zip(&dev[1..]).map(|(a, b)| a * b).sum::<f64>() / denom;
    let ar1 = if r1 > bound { (1.0 + r1) / (1.0 - r1.min(0.98)) } else { 1.0 };
    hamed_rao.max(ar1).max(1.0)
}

/// Ranks (1-based, ties get their mean rank).
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_unstable_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut out = vec![0.0; values.len()];
    let mut start = 0;
    for group in order.chunk_by(|&a, &b| values[a].total_cmp(&values[b]).is_eq()) {
        let mean_rank = as_f64(start) + as_f64(group.len()).midpoint(1.0);
        for &i in group {
            out[i] = mean_rank;
        }
        start += group.len();
    }
    out
}

/// [`mann_kendall_p_up`] with the variance multiplied by `variance_factor`.
fn mann_kendall_p_up_scaled(samples: &[(f64, f64)], variance_factor: f64) -> f64 {
    let n = samples.len();
    if n < 3 {
        return 1.0;
    }
    // S: concordant minus discordant pairs.
    let mut score = 0.0_f64;
    for (i, a) in samples.iter().enumerate() {
        for b in &samples[i + 1..] {
            score += match b.1.total_cmp(&a.1) {
                std::cmp::Ordering::Greater => 1.0,
                std::cmp::Ordering::Less => -1.0,
                std::cmp::Ordering::Equal => 0.0,
            };
        }
    }
    // Tie groups: sum over groups of t(t-1)(2t+5).
    let mut values: Vec<f64> = samples.iter().map(|x| x.1).collect();
    values.sort_unstable_by(f64::total_cmp);
    let mut ties = 0.0;
    for group in values.chunk_by(|x, y| x.total_cmp(y).is_eq()) {
        let size = as_f64(group.len());
        ties += size * (size - 1.0) * (2.0 * size + 5.0);
    }
    let nf = as_f64(n);
    let var = (nf * (nf - 1.0) * (2.0 * nf + 5.0) - ties) / 18.0 * variance_factor;
    if var <= 0.0 {
        return 1.0;
    }
    // Continuity correction.
    let z = score.signum() * (score.abs() - 1.0).max(0.0) / var.sqrt();
    1.0 - normal_cdf(z)
}

/// Standard normal CDF (Abramowitz-Stegun 7.1.26 erf, error < 1.5e-7).
fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 { 0.5 * (1.0 + erf) } else { 0.5 * (1.0 - erf) }
}

#[cfg(test)]
mod tests;
