//! Outstanding allocations and their per-site sums: the keys and records the BPF tables and
//! maps hold, the tables' layout, and the anonymous mappings recorded as allocations.

/// Name of the array of [`AllocBucket`]s: the table of outstanding allocations (see
/// [`AllocBucket`]).
pub const MAP_ALLOC_TABLE: &str = "ALLOC_TABLE";

/// Name of the array of per-bucket counts of records in [`MAP_ALLOCS`] (a bucket of
/// [`MAP_ALLOC_TABLE`] that was full when they were made).
pub const MAP_ALLOC_SPILLS: &str = "ALLOC_SPILLS";

/// Name of the hash map [`AllocKey`] `-> AllocInfo` of outstanding allocations that found
/// their bucket of [`MAP_ALLOC_TABLE`] full.
pub const MAP_ALLOCS: &str = "ALLOCS";

/// Name of the hash map [`SiteKey`] `->` [`SiteTotal`]: outstanding bytes and allocations per
/// stack and process, kept up to date by every record and removal in [`MAP_ALLOCS`], so that
/// growth samples read one entry per site instead of one per allocation.
pub const MAP_SITES: &str = "SITES";

/// Name of the array of [`SiteBucket`]s: the per-site totals, as [`MAP_SITES`] but found
/// with array lookups. A site whose bucket is full (or whose stack id is 0) is kept in
/// [`MAP_SITES`]; a site can have entries in both (readers add them up).
pub const MAP_SITE_TABLE: &str = "SITE_TABLE";

/// Read-only global: [`MAP_SITE_TABLE`]'s bucket count minus one.
pub const GLOBAL_SITE_BUCKET_MASK: &str = "SITE_BUCKET_MASK";

/// Slots of one [`SiteBucket`].
pub const SITE_BUCKET_SLOTS: usize = 8;

/// Buckets of [`MAP_SITE_TABLE`] for `max_stacks` stacks: a power of two, room for twice
/// as many sites (a stack can be a site in a parent and in its forked children).
#[must_use]
pub fn site_buckets(max_stacks: u32) -> u32 {
    #[expect(clippy::cast_possible_truncation, reason = "8")]
    let slots = SITE_BUCKET_SLOTS as u32;
    (max_stacks.saturating_mul(2) / slots).max(1).next_power_of_two()
}

/// One bucket of [`MAP_SITE_TABLE`], found by [`table_bucket`]. A slot is claimed by swapping
/// its stack id in (from 0), then published by writing its process; until then it matches no
/// lookup (a lookup racing with the claim may claim a second slot for the same site: readers
/// add them up).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteBucket {
    /// Each slot's stack id; 0: free.
    pub stacks: [u64; SITE_BUCKET_SLOTS],
    /// Each slot's process; 0: not published.
    pub tgids: [u32; SITE_BUCKET_SLOTS],
    /// Each slot's totals (atomic adds, as in [`MAP_SITES`]).
    pub totals: [SiteTotal; SITE_BUCKET_SLOTS],
}

/// Name of the hash map [`AllocKey`] (start) `-> end` indexing the anonymous mappings recorded
/// in [`MAP_ALLOCS`], for `munmap` ranges.
pub const MAP_MMAPS: &str = "MMAPS";

/// Name of the map, for the compatible object, from a process to `[recorded mappings, ones
/// ever recorded larger than UNMAP_PROBE_PAGES pages]`: an unmap search that cannot be
/// exhaustive misses nothing in a process with none, and nothing before its start in one
/// without large ones.
pub const MAP_MMAP_COUNTS: &str = "MMAP_COUNTS";

/// Pages the compatible object's `munmap` searches before and after its start for recorded
/// mappings (it cannot iterate [`MAP_MMAPS`]): a search that cannot be exhaustive is counted
/// ([`DropReason::UnmapUnchecked`](crate::DropReason::UnmapUnchecked)).
pub const UNMAP_PROBE_PAGES: u64 = 32;

/// Default capacity for outstanding allocations (`--max-allocs`).
pub const DEFAULT_MAX_ALLOCS: u32 = 1 << 20;

/// Read-only global: [`MAP_ALLOC_TABLE`]'s bucket count minus one (a power of two minus one).
pub const GLOBAL_ALLOC_BUCKET_MASK: &str = "ALLOC_BUCKET_MASK";

/// Read-only global: slots used in each bucket, at most [`ALLOC_BUCKET_SLOTS`] (fewer only
/// for a capacity under that).
pub const GLOBAL_ALLOC_SLOTS: &str = "ALLOC_SLOTS";

/// Read-only global: non-zero when [`MAP_ALLOCS`] takes the records of full buckets.
pub const GLOBAL_ALLOC_SPILL: &str = "ALLOC_SPILL";

/// Slots of one [`AllocBucket`].
pub const ALLOC_BUCKET_SLOTS: usize = 8;

/// Buckets of [`MAP_ALLOC_TABLE`] at most: 4M slots, 160 MiB of kernel memory. Records past
/// what the table holds go to [`MAP_ALLOCS`], which grows with use.
pub const MAX_ALLOC_BUCKETS: u32 = 1 << 19;

/// How a capacity of `max_allocs` outstanding allocations is laid out: the table's buckets,
/// the slots used in each, and the capacity of [`MAP_ALLOCS`] for records whose bucket is
/// full (0: none).
///
/// The table holds between half and all of the capacity (buckets a power of two), and
/// [`MAP_ALLOCS`] the rest plus a quarter of the table: records do not spread evenly over
/// the buckets, so some spill before the table is full.
#[must_use]
pub fn alloc_layout(max_allocs: u32) -> AllocLayout {
    let slots = (max_allocs as usize).clamp(1, ALLOC_BUCKET_SLOTS);
    #[expect(clippy::cast_possible_truncation, reason = "at most 8")]
    let slots = slots as u32;
    let wanted = (max_allocs / slots).max(1);
    // The largest power of two not above `wanted`.
    let buckets = (1u32 << wanted.ilog2()).min(MAX_ALLOC_BUCKETS);
    let table = buckets * slots;
    // A capacity within one bucket is exact; any other has room for uneven buckets.
    let spill = if max_allocs <= slots {
        0
    } else {
        max_allocs.saturating_sub(table).saturating_add(table / 4)
    };
    AllocLayout { buckets, slots, spill }
}

/// The compatible object's layout for `max_allocs` records: no table slots (claiming one
/// takes a compare-and-swap, which kernels before 5.12 lack), every record in
/// [`MAP_ALLOCS`].
#[must_use]
pub const fn compat_alloc_layout(max_allocs: u32) -> AllocLayout {
    AllocLayout { buckets: 1, slots: 0, spill: if max_allocs == 0 { 1 } else { max_allocs } }
}

/// See [`alloc_layout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocLayout {
    /// Buckets of [`MAP_ALLOC_TABLE`], a power of two.
    pub buckets: u32,
    /// Slots used in each.
    pub slots: u32,
    /// Capacity of [`MAP_ALLOCS`]; 0: records of a full bucket are dropped.
    pub spill: u32,
}

/// The bucket of a table of ours (`mask`: its bucket count minus one) that holds `key` of
/// process `tgid`: a block's address in [`MAP_ALLOC_TABLE`], a stack id in
/// [`MAP_SITE_TABLE`]. A multiplicative hash: allocator addresses share their low bits.
#[expect(clippy::inline_always, reason = "BPF: inlined into each program, no BPF-to-BPF call")]
#[inline(always)]
#[must_use]
pub fn table_bucket(key: u64, tgid: u32, mask: u32) -> u32 {
    let h = (key ^ (u64::from(tgid) << 47)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let high = (h >> 32) as u32;
    high & mask
}

/// One bucket of [`MAP_ALLOC_TABLE`]: eight slots of outstanding allocations, found by
/// [`table_bucket`]. A table of our own in an array rather than a BPF hash map: a hash map's
/// insert and delete take a bucket lock and a free-list node each, about 140 ns per
/// malloc+free here; a slot is claimed and released with one compare-and-swap each.
///
/// A slot is free when its address is 0. The BPF program that records a block claims a free
/// slot by swapping its address in, writes the record, and publishes it by writing
/// [`AllocInfo::tgid`] (with `kind`, one 64-bit word) last; until then the slot matches no
/// lookup. Removal swaps that word to 0 (of two racing removals only one wins), then frees
/// the slot. The addresses come first, in one cache line: a lookup reads the record of the
/// matching slot only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocBucket {
    /// Each slot's block address; 0: free.
    pub addrs: [u64; ALLOC_BUCKET_SLOTS],
    /// Each slot's record; `tgid` 0: not (or no longer) published.
    pub infos: [AllocInfo; ALLOC_BUCKET_SLOTS],
}

/// Byte offset of the word holding [`AllocInfo::tgid`] (low half) and `kind` (high half).
pub const ALLOC_INFO_OWNER_OFFSET: usize = 24;

impl AllocInfo {
    /// The word at [`ALLOC_INFO_OWNER_OFFSET`]: `tgid` and `kind` (little-endian).
    #[must_use]
    pub const fn owner_word(&self) -> u64 {
        (self.kind as u64) << 32 | self.tgid as u64
    }
}

/// Capacity of [`MAP_MMAPS`]: anonymous mappings outstanding at once.
pub const MAX_MMAPS: u32 = 1 << 16;

/// Key of [`MAP_ALLOCS`] and [`MAP_MMAPS`]: an address in one process. A forked child has the
/// same addresses as its parent, so the address alone does not name a block.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllocKey {
    /// The block's (or mapping's) address.
    pub addr: u64,
    /// The process it belongs to.
    pub tgid: u32,
    /// Explicit padding (zero).
    pub pad: u32,
}

impl AllocKey {
    /// Key of `addr` in process `tgid`.
    #[must_use]
    pub const fn new(addr: u64, tgid: u32) -> Self {
        Self { addr, tgid, pad: 0 }
    }
}

/// Key of [`MAP_SITES`]: a stack in one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SiteKey {
    /// The stack id ([`AllocInfo::stack_id`]).
    pub stack_id: u64,
    /// The process.
    pub tgid: u32,
    /// Explicit padding (zero).
    pub pad: u32,
}

impl SiteKey {
    /// Key of stack `stack_id` in process `tgid`.
    #[must_use]
    pub const fn new(stack_id: u64, tgid: u32) -> Self {
        Self { stack_id, tgid, pad: 0 }
    }
}

/// Value of [`MAP_SITES`]: what a site holds now. Updated with atomic adds; a removal adds the
/// two's complement, so a removal counted before its record (a race the maps allow between
/// CPUs) shows for a moment as a value just below 2^64, read as negative.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteTotal {
    /// Outstanding bytes.
    pub bytes: u64,
    /// Outstanding allocations.
    pub count: u64,
}

/// One outstanding allocation, the value of [`MAP_ALLOCS`] (key: the returned address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocInfo {
    /// Requested size in bytes.
    pub size: u64,
    /// `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`) at the allocator call's entry.
    pub timestamp_ns: u64,
    /// Key into [`MAP_STACKS`](crate::MAP_STACKS): a 64-bit hash of the frames, [`STACK_ID_NONE`](crate::STACK_ID_NONE) if none.
    pub stack_id: u64,
    /// Thread group (process) id that allocated.
    pub tgid: u32,
    /// The hook (attach cookie, see [`MAX_HOOKS`](crate::MAX_HOOKS)) of the function that made it.
    pub kind: u32,
}

/// Recorded mappings an `munmap` range overlaps that one call trims after searching them all.
pub const UNMAP_MAX_OVERLAPS: usize = 4;

/// The recorded mappings that overlap an unmapped range `[a, b)`, gathered by a search of
/// [`MAP_MMAPS`] (scratch space in the thread's [`Pending`](crate::Pending) slot, off the BPF stack).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnmapScratch {
    /// The range.
    pub a: u64,
    /// As above.
    pub b: u64,
    /// Regions found (may exceed [`UNMAP_MAX_OVERLAPS`] by one: more than fit).
    pub n: u64,
    /// The process.
    pub tgid: u32,
    /// Explicit padding.
    pub pad: u32,
    /// The regions found: starts.
    pub starts: [u64; UNMAP_MAX_OVERLAPS],
    /// Their ends.
    pub ends: [u64; UNMAP_MAX_OVERLAPS],
}
