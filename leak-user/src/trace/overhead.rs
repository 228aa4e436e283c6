//! `--max-overhead`: the share of a CPU a traced process spends in the probes, estimated from
//! the hits between two samples times the cost of a hit (measured at start, see
//! `loader::calibrate`). Both loops stop tracing when it goes over.
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
