//! Byte-based Poisson sampling, shared so that the BPF programs and the unit tests run the
//! same countdown.

/// Read-only global: mean bytes between samples; 0 records every allocation. See
/// [`sample_step`].
pub const GLOBAL_SAMPLE_MEAN: &str = "SAMPLE_MEAN";

/// Name of the array of [`SAMPLE_GAP_ENTRIES`] quantiles of the unit exponential distribution
/// (see [`sample_gap`]), filled by the loader.
pub const MAP_SAMPLE_GAPS: &str = "SAMPLE_GAPS";

/// Entries of [`MAP_SAMPLE_GAPS`]: a power of two.
pub const SAMPLE_GAP_ENTRIES: u32 = 1 << SAMPLE_GAP_BITS;

/// log2 of [`SAMPLE_GAP_ENTRIES`].
pub const SAMPLE_GAP_BITS: u32 = 10;

/// [`MAP_SAMPLE_GAPS`] entries are fixed point with this many fraction bits.
pub const SAMPLE_GAP_SHIFT: u32 = 16;

/// The largest mean sampling gap: keeps `mean * entry` within 64 bits.
pub const MAX_SAMPLE_MEAN: u64 = 1 << 40;

/// Entry `i` of [`MAP_SAMPLE_GAPS`]: `-ln((i + 0.5) / N)` in fixed point, the exponential
/// quantile at the middle of bin `i` of a uniform draw cut into `N` bins.
#[must_use]
pub fn sample_gap_entry(i: u32, ln: impl Fn(f64) -> f64) -> u32 {
    let u = (f64::from(i) + 0.5) / f64::from(SAMPLE_GAP_ENTRIES);
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "0 < x < 2^20")]
    let x = (-ln(u) * f64::from(1u32 << SAMPLE_GAP_SHIFT) + 0.5) as u32;
    x
}

/// Bytes to the next sample: `mean` times the exponential quantile `entry` (fixed point), at
/// least 1.
#[expect(clippy::inline_always, reason = "BPF: inlined into each program, no BPF-to-BPF call")]
#[inline(always)]
#[must_use]
pub fn sample_gap(mean: u64, entry: u32) -> u64 {
    ((mean.min(MAX_SAMPLE_MEAN) * u64::from(entry)) >> SAMPLE_GAP_SHIFT).max(1)
}

/// Byte-based Poisson sampling, as jemalloc and tcmalloc do it: sample points fall on the
/// stream of allocated bytes at exponentially distributed gaps of mean `R`, and an allocation
/// is sampled when a point falls in its bytes, with probability `1 - exp(-size / R)`.
///
/// One allocation of `size` bytes against a thread's countdown `left` (bytes to its next
/// point; 0 when none is drawn yet): returns whether it is sampled and the new countdown.
/// `gap` draws a gap. Memoryless: after a sampled allocation the next point is a fresh gap
/// past its end. An empty allocation holds no bytes and is never sampled.
#[expect(clippy::inline_always, reason = "BPF: inlined into each program, no BPF-to-BPF call")]
#[inline(always)]
pub fn sample_step(left: u64, size: u64, mut gap: impl FnMut() -> u64) -> (bool, u64) {
    let left = if left == 0 { gap() } else { left };
    if size == 0 {
        (false, left)
    } else if size < left {
        (false, left - size)
    } else {
        (true, gap())
    }
}
