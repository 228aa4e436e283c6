//! Pure: what a sampled allocation stands for.
//!
//! With byte-based Poisson sampling of mean `R` (`leak_common::sample_step`), an allocation
//! of `S` bytes is sampled with probability `p = 1 - exp(-S/R)`. Counting each sampled one as
//! `S/p` bytes and `1/p` allocations makes the totals unbiased (Horvitz-Thompson): the
//! expectation of `S/p` over the sampling is `p * S/p = S`.

/// Sampling of one mean gap, in bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    mean: f64,
}

impl Sampling {
    /// One sample every `mean_bytes` allocated, on average (at least 1).
    #[must_use]
    pub fn new(mean_bytes: u64) -> Self {
        #[expect(clippy::cast_precision_loss, reason = "at most 2^40")]
        let mean = mean_bytes.clamp(1, leak_common::MAX_SAMPLE_MEAN) as f64;
        Self { mean }
    }

    /// The mean gap, bytes.
    #[must_use]
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Probability that an allocation of `size` bytes is sampled.
    #[must_use]
    pub fn probability(&self, size: u64) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "sizes far below 2^52")]
        let s = size as f64;
        // -expm1(-x) = 1 - exp(-x), exact for small x.
        -(-s / self.mean).exp_m1()
    }

    /// What one sampled allocation of `size` bytes stands for: (bytes, allocations).
    #[must_use]
    pub fn weight(&self, size: u64) -> (f64, f64) {
        let p = self.probability(size);
        if p <= 0.0 {
            return (0.0, 0.0);
        }
        #[expect(clippy::cast_precision_loss, reason = "sizes far below 2^52")]
        let s = size as f64;
        (s / p, 1.0 / p)
    }
}

/// The table of exponential quantiles the BPF programs draw sampling gaps from.
#[must_use]
pub fn gap_table() -> Vec<u32> {
    (0..leak_common::SAMPLE_GAP_ENTRIES)
        .map(|i| leak_common::sample_gap_entry(i, f64::ln))
        .collect()
}

#[cfg(test)]
#[expect(clippy::cast_precision_loss, reason = "test statistics on small counts")]
mod tests {
    use super::*;
    use leak_common::{SAMPLE_GAP_BITS, SAMPLE_GAP_SHIFT, sample_gap, sample_step};

    /// xorshift64*: deterministic draws standing in for `bpf_get_prandom_u32`.
    struct Rng(u64);

    impl Rng {
        fn next_u32(&mut self) -> u32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
        }
    }

    #[test]
    fn the_table_is_the_exponential_distribution() {
        let table = gap_table();
        assert_eq!(table.len(), 1 << SAMPLE_GAP_BITS);
        // Decreasing quantiles of -ln(u); the mean of the midpoints is close to 1.
        assert!(table.windows(2).all(|w| w[0] > w[1]));
        let scale = f64::from(1u32 << SAMPLE_GAP_SHIFT);
        let mean: f64 =
            table.iter().map(|&e| f64::from(e) / scale).sum::<f64>() / table.len() as f64;
        assert!((mean - 1.0).abs() < 0.001, "{mean}");
        assert_eq!(sample_gap(1000, 1 << SAMPLE_GAP_SHIFT), 1000);
        assert_eq!(sample_gap(0, 5), 1, "never a zero gap");
    }

    #[test]
    fn weights_invert_the_probability() {
        let s = Sampling::new(512 * 1024);
        assert_eq!(s.weight(0), (0.0, 0.0));
        // Tiny blocks: p ~ S/R, each sample stands for about R bytes.
        let (bytes, count) = s.weight(16);
        assert!((bytes - 512.0 * 1024.0).abs() < 10.0, "{bytes}");
        assert!((count - 32768.0).abs() < 1.0, "{count}");
        // Huge blocks: always sampled, weight 1.
        let (bytes, count) = s.weight(64 << 20);
        assert!((bytes - f64::from(64u32 << 20)).abs() < 1.0 && (count - 1.0).abs() < 1e-9);
    }

    /// The BPF countdown (`sample_step` with the table) and these weights, over a simulated
    /// stream: the estimates of bytes and allocations are unbiased for every size.
    #[test]
    fn estimates_are_unbiased_over_a_simulated_stream() {
        let table = gap_table();
        let mean: u64 = 4096;
        let sampling = Sampling::new(mean);
        // Four sites of different sizes, interleaved as a program would call them.
        let sizes = [16u64, 1000, 40 * 1024, 1 << 20];
        let calls_per_site: u64 = 50_000;
        let runs = 40;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut errors = vec![Vec::new(); sizes.len()];
        for _ in 0..runs {
            let mut left = 0;
            let mut est = vec![(0.0, 0.0); sizes.len()];
            for i in 0..calls_per_site * sizes.len() as u64 {
                let site = usize::try_from(i).unwrap() % sizes.len();
                let bytes = sizes[site];
                let (sampled, next) = sample_step(left, bytes, || {
                    sample_gap(mean, table[(rng.next_u32() >> (32 - SAMPLE_GAP_BITS)) as usize])
                });
                left = next;
                if sampled {
                    let (b, c) = sampling.weight(bytes);
                    est[site].0 += b;
                    est[site].1 += c;
                }
            }
            for (site, &size) in sizes.iter().enumerate() {
                let truth = (size * calls_per_site) as f64;
                errors[site]
                    .push((est[site].0 / truth - 1.0, est[site].1 / calls_per_site as f64 - 1.0));
            }
        }
        for (site, errs) in errors.iter().enumerate() {
            let n = errs.len() as f64;
            let bias_bytes = errs.iter().map(|e| e.0).sum::<f64>() / n;
            let bias_count = errs.iter().map(|e| e.1).sum::<f64>() / n;
            let spread = (errs.iter().map(|e| e.0 * e.0).sum::<f64>() / n).sqrt();
            // The mean over runs is within 3% (unbiased: the 16-byte site, sampled about 200
            // times a run, varies by about 7% a run, 1.1% over 40); one run within 10%.
            assert!(bias_bytes.abs() < 0.03, "size {}: bias {bias_bytes}", sizes[site]);
            assert!(bias_count.abs() < 0.03, "size {}: bias {bias_count}", sizes[site]);
            assert!(spread < 0.1, "size {}: spread {spread}", sizes[site]);
        }
    }
}
