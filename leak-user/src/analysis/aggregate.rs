//! Pure: outstanding allocations -> per-stack totals.
use hashbrown::HashMap;

use crate::{
    analysis::model::{Allocation, SiteTotal},
    analysis::sampling::Sampling,
};

/// Upper bounds of the age buckets, ns: under 10 s, under 1 min, under 10 min; then older.
pub const AGE_BOUNDS_NS: [u64; 3] = [10_000_000_000, 60_000_000_000, 600_000_000_000];
/// Names of the age buckets, youngest first.
pub const AGE_NAMES: [&str; 4] = ["<10s", "10s-1m", "1m-10m", ">10m"];

/// Outstanding bytes by allocation age ([`AGE_NAMES`]).
pub type AgeBytes = [u64; 4];

/// Index of the age bucket of an allocation `age_ns` old.
#[must_use]
pub fn age_bucket(age_ns: u64) -> usize {
    AGE_BOUNDS_NS.iter().position(|b| age_ns < *b).unwrap_or(AGE_BOUNDS_NS.len())
}

/// Outstanding memory of one allocation site (one distinct stack).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteStats {
    /// Stack id.
    pub stack_id: u64,
    /// Outstanding bytes.
    pub bytes: u64,
    /// Outstanding allocations.
    pub count: u64,
    /// Hook of the allocator function used at this site (a call site calls one function).
    pub kind: u32,
    /// Timestamp of the oldest outstanding allocation, `CLOCK_MONOTONIC` ns.
    pub oldest_ns: u64,
    /// Outstanding bytes by age.
    pub age_bytes: AgeBytes,
}

/// Per-site totals of one snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Aggregate {
    /// Sites, largest outstanding bytes first (ties: more allocations first, then stack id).
    pub sites: Vec<SiteStats>,
    /// Sum of `bytes` over sites.
    pub total_bytes: u64,
    /// Sum of `count` over sites.
    pub total_count: u64,
    /// Outstanding bytes by age, over sites.
    pub age_bytes: AgeBytes,
    /// Outstanding allocations by age, over sites.
    pub age_counts: [u64; 4],
    /// Records summed (sampled allocations, when sampling: what the estimates rest on).
    pub records: u64,
}

impl Aggregate {
    /// Sums allocations by stack, keeping those at least `min_age_ns` old at `now_ns`
    /// (allocations stamped after `now_ns` count as age 0).
    #[must_use]
    pub fn from_allocations(allocs: &[Allocation], now_ns: u64, min_age_ns: u64) -> Self {
        Self::estimate(allocs.iter(), now_ns, min_age_ns, None)
    }

    /// As [`Self::from_allocations`]; with `sampling`, the allocations are a sample and each
    /// stands for its weight ([`Sampling::weight`]): the sums are estimates, rounded.
    #[must_use]
    pub fn estimate<'a>(
        allocs: impl IntoIterator<Item = &'a Allocation>,
        now_ns: u64,
        min_age_ns: u64,
        sampling: Option<&Sampling>,
    ) -> Self {
        /// Sums in f64 (exact for integers below 2^53: exact mode stays exact).
        #[derive(Default)]
        struct Sums {
            bytes: f64,
            count: f64,
            age_bytes: [f64; 4],
        }
        let mut by_stack: HashMap<u64, (SiteStats, Sums)> = HashMap::new();
        let mut age_counts = [0.0; 4];
        let mut records = 0;
        for a in allocs {
            let age = now_ns.saturating_sub(a.timestamp_ns);
            if age < min_age_ns {
                continue;
            }
            records += 1;
            #[expect(clippy::cast_precision_loss, reason = "sizes far below 2^52")]
            let (bytes, count) = sampling.map_or((a.size as f64, 1.0), |s| s.weight(a.size));
            let bucket = age_bucket(age);
            age_counts[bucket] += count;
            let (site, sums) = by_stack.entry(a.stack_id).or_insert_with(|| {
                let site = SiteStats {
                    stack_id: a.stack_id,
                    bytes: 0,
                    count: 0,
                    kind: a.kind,
                    oldest_ns: a.timestamp_ns,
                    age_bytes: [0; 4],
                };
                (site, Sums::default())
            });
            sums.age_bytes[bucket] += bytes;
            sums.bytes += bytes;
            sums.count += count;
            site.oldest_ns = site.oldest_ns.min(a.timestamp_ns);
        }
        let mut sites: Vec<SiteStats> = by_stack
            .into_values()
            .map(|(mut site, sums)| {
                site.bytes = round(sums.bytes);
                site.count = round(sums.count);
                site.age_bytes = sums.age_bytes.map(round);
                site
            })
            .collect();
        sort_sites(&mut sites);
        let total_bytes = sites.iter().map(|s| s.bytes).sum();
        let total_count = sites.iter().map(|s| s.count).sum();
        let mut age_bytes = [0; 4];
        for s in &sites {
            for (total, b) in age_bytes.iter_mut().zip(s.age_bytes) {
                *total += b;
            }
        }
        Self {
            sites,
            total_bytes,
            total_count,
            age_bytes,
            age_counts: age_counts.map(round),
            records,
        }
    }

    /// Per-site totals as the kernel keeps them (`sites` of one process): no ages, no kinds.
    /// What a growth sample needs, without reading every record.
    #[must_use]
    pub fn from_totals<'a>(sites: impl IntoIterator<Item = &'a SiteTotal>) -> Self {
        let mut sites: Vec<SiteStats> = sites
            .into_iter()
            .filter(|t| t.count > 0)
            .map(|t| SiteStats {
                stack_id: t.stack_id,
                bytes: t.bytes,
                count: t.count,
                kind: 0,
                oldest_ns: 0,
                age_bytes: [0; 4],
            })
            .collect();
        sort_sites(&mut sites);
        let total_bytes = sites.iter().map(|s| s.bytes).sum();
        let total_count = sites.iter().map(|s| s.count).sum();
        Self { sites, total_bytes, total_count, records: total_count, ..Self::default() }
    }

    /// Bytes at `stack_id`, 0 if the site has nothing outstanding.
    #[must_use]
    pub fn bytes_of(&self, stack_id: u64) -> u64 {
        self.sites.iter().find(|s| s.stack_id == stack_id).map_or(0, |s| s.bytes)
    }

    /// Change of each current site's bytes since `prev` (sites new since then count from 0).
    #[must_use]
    pub fn deltas_since(&self, prev: &Self) -> HashMap<u64, i64> {
        let before: HashMap<u64, u64> = prev.sites.iter().map(|s| (s.stack_id, s.bytes)).collect();
        self.sites
            .iter()
            .map(|s| {
                let b = before.get(&s.stack_id).copied().unwrap_or(0);
                (s.stack_id, signed_diff(s.bytes, b))
            })
            .collect()
    }
}

/// Largest outstanding bytes first; ties: more allocations first, then stack id.
fn sort_sites(sites: &mut [SiteStats]) {
    sites.sort_unstable_by(|a, b| {
        b.bytes.cmp(&a.bytes).then(b.count.cmp(&a.count)).then(a.stack_id.cmp(&b.stack_id))
    });
}

/// A non-negative sum, rounded to the nearest integer.
#[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "saturating")]
fn round(x: f64) -> u64 {
    x.round() as u64
}

/// `a - b` as i64, saturating.
#[must_use]
pub fn signed_diff(a: u64, b: u64) -> i64 {
    if a >= b {
        i64::try_from(a - b).unwrap_or(i64::MAX)
    } else {
        i64::try_from(b - a).map_or(i64::MIN, |d| -d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(addr: u64, size: u64, stack_id: u64, ts: u64) -> Allocation {
        Allocation { addr, size, timestamp_ns: ts, stack_id, tgid: 1, kind: 0 }
    }

    #[test]
    fn sampled_allocations_stand_for_their_weight() {
        // Mean 1024: a 16-byte block is sampled with p = 1 - exp(-1/64) and stands for
        // 16 / p = 1032 bytes and 1 / p = 64.5 blocks; a 1 MiB one is always sampled.
        let sampling = Sampling::new(1024);
        let allocs = [alloc(0x10, 16, 7, 1), alloc(0x20, 16, 7, 2), alloc(0x30, 1 << 20, 9, 3)];
        let agg = Aggregate::estimate(&allocs, 10, 0, Some(&sampling));
        assert_eq!(agg.sites[0].stack_id, 9);
        assert_eq!((agg.sites[0].bytes, agg.sites[0].count), (1 << 20, 1));
        assert_eq!((agg.sites[1].bytes, agg.sites[1].count), (2064, 129));
        assert_eq!(agg.total_bytes, (1 << 20) + 2064);
        assert_eq!(agg.age_counts.iter().sum::<u64>(), 130);
        assert_eq!(agg.records, 3, "what the estimates rest on");
        // Unsampled: the same records counted as they are.
        let exact = Aggregate::estimate(&allocs, 10, 0, None);
        assert_eq!(exact, Aggregate::from_allocations(&allocs, 10, 0));
        assert_eq!((exact.sites[1].bytes, exact.sites[1].count), (32, 2));
    }

    #[test]
    fn kernel_totals_give_the_same_sites_and_sums_as_the_records() {
        let allocs = [
            alloc(0x10, 100, 7, 1),
            alloc(0x20, 100, 7, 2),
            alloc(0x30, 300, 9, 3),
            alloc(0x40, 50, 5, 4),
        ];
        let totals = [
            SiteTotal { stack_id: 5, tgid: 1, bytes: 50, count: 1 },
            SiteTotal { stack_id: 9, tgid: 1, bytes: 300, count: 1 },
            // A site whose blocks were all freed: its entry stays in the kernel map.
            SiteTotal { stack_id: 3, tgid: 1, bytes: 0, count: 0 },
            SiteTotal { stack_id: 7, tgid: 1, bytes: 200, count: 2 },
        ];
        let from_totals = Aggregate::from_totals(&totals);
        let from_records = Aggregate::from_allocations(&allocs, 10, 0);
        let key = |a: &Aggregate| -> Vec<(u64, u64, u64)> {
            a.sites.iter().map(|s| (s.stack_id, s.bytes, s.count)).collect()
        };
        assert_eq!(key(&from_totals), key(&from_records));
        assert_eq!(key(&from_totals), [(9, 300, 1), (7, 200, 2), (5, 50, 1)]);
        assert_eq!(
            (from_totals.total_bytes, from_totals.total_count),
            (from_records.total_bytes, from_records.total_count)
        );
    }

    #[test]
    fn sums_by_stack_and_sorts_largest_first() {
        let allocs = [
            alloc(0x10, 100, 7, 1),
            alloc(0x20, 100, 7, 2),
            alloc(0x30, 4096, 9, 3),
            alloc(0x40, 1, 5, 4),
        ];
        let agg = Aggregate::from_allocations(&allocs, 10, 0);
        let got: Vec<(u64, u64, u64)> =
            agg.sites.iter().map(|s| (s.stack_id, s.bytes, s.count)).collect();
        assert_eq!(got, [(9, 4096, 1), (7, 200, 2), (5, 1, 1)]);
        assert_eq!(agg.total_bytes, 4297);
        assert_eq!(agg.total_count, 4);
        assert_eq!(agg.sites[1].oldest_ns, 1);
    }

    #[test]
    fn ages_fall_into_buckets() {
        const S: u64 = 1_000_000_000;
        let now = 1000 * S;
        let allocs = [
            alloc(0x10, 1, 1, now),
            alloc(0x20, 2, 1, now - 10 * S + 1),
            alloc(0x30, 4, 1, now - 10 * S),
            alloc(0x40, 8, 2, now - 599 * S),
            alloc(0x50, 16, 2, now - 600 * S),
            alloc(0x60, 32, 2, 0),
        ];
        let agg = Aggregate::from_allocations(&allocs, now, 0);
        assert_eq!(agg.age_bytes, [3, 4, 8, 48]);
        assert_eq!(agg.age_counts, [2, 1, 1, 2]);
        let site1 = agg.sites.iter().find(|s| s.stack_id == 1).unwrap();
        assert_eq!(site1.age_bytes, [3, 4, 0, 0]);
        assert_eq!(age_bucket(u64::MAX), 3);
    }

    #[test]
    fn min_age_keeps_only_old_allocations() {
        let allocs = [alloc(0x10, 10, 1, 100), alloc(0x20, 20, 1, 900), alloc(0x30, 30, 2, 999)];
        // now = 1000, min age 500: only the allocation from t=100 qualifies.
        let agg = Aggregate::from_allocations(&allocs, 1000, 500);
        assert_eq!(agg.total_bytes, 10);
        assert_eq!(agg.sites.len(), 1);
        // Allocations stamped after `now` (clock read before the map walk) have age 0.
        let agg = Aggregate::from_allocations(&allocs, 50, 0);
        assert_eq!(agg.total_count, 3);
        let agg = Aggregate::from_allocations(&allocs, 50, 1);
        assert_eq!(agg.total_count, 0);
    }

    #[test]
    fn ties_break_deterministically() {
        let allocs = [alloc(1, 8, 3, 0), alloc(2, 8, 2, 0), alloc(3, 4, 1, 0), alloc(4, 4, 1, 0)];
        let agg = Aggregate::from_allocations(&allocs, 0, 0);
        let ids: Vec<u64> = agg.sites.iter().map(|s| s.stack_id).collect();
        assert_eq!(ids, [1, 2, 3]);
    }

    #[test]
    fn deltas_count_new_sites_from_zero() {
        let prev = Aggregate::from_allocations(&[alloc(1, 100, 1, 0), alloc(2, 50, 2, 0)], 0, 0);
        let cur = Aggregate::from_allocations(&[alloc(1, 300, 1, 0), alloc(3, 7, 3, 0)], 0, 0);
        let d = cur.deltas_since(&prev);
        assert_eq!(d[&1], 200);
        assert_eq!(d[&3], 7);
        assert!(!d.contains_key(&2));
        assert_eq!(signed_diff(0, u64::MAX), i64::MIN);
        assert_eq!(signed_diff(5, 9), -4);
    }

    /// Property: the order in which allocations arrive does not change the totals or the
    /// per-site result (a deterministic shuffle over many permutations).
    #[test]
    fn order_does_not_change_totals() {
        let mut allocs: Vec<Allocation> =
            (0..200u64).map(|i| alloc(0x1000 + i * 16, (i * 37) % 1000 + 1, i % 13, i)).collect();
        let reference = Aggregate::from_allocations(&allocs, 10_000, 0);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..50 {
            for i in (1..allocs.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let j = usize::try_from(state % (i as u64 + 1)).unwrap();
                allocs.swap(i, j);
            }
            assert_eq!(Aggregate::from_allocations(&allocs, 10_000, 0), reference);
        }
    }
}
