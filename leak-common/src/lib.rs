//! Types shared between leak's BPF programs (`leak-ebpf`) and its user-space side (`leak-user`).
//!
//! Design constraints:
//! - Every type that crosses the kernel boundary is `#[repr(C)]`, `Copy`, fixed-size and has
//!   explicit padding: the BPF side writes raw bytes, the user side reads them back as `Pod`.
//! - No `bool` fields (hidden padding, and the verifier needs every byte initialized).
//! - Enum discriminants are explicit and stable: they index counter arrays and appear in reports.
//!   Add new ones at the end; never reuse a retired number.
#![no_std]
#![deny(missing_docs)]

/// Name of the array of [`AllocBucket`]s: the table of outstanding allocations (see
/// [`AllocBucket`]).
pub const MAP_ALLOC_TABLE: &str = "ALLOC_TABLE";
/// Name of the array of per-bucket counts of records in [`MAP_ALLOCS`] (a bucket of
/// [`MAP_ALLOC_TABLE`] that was full when they were made).
pub const MAP_ALLOC_SPILLS: &str = "ALLOC_SPILLS";
/// Name of the hash map [`AllocKey`] `-> AllocInfo` of outstanding allocations that found
/// their bucket of [`MAP_ALLOC_TABLE`] full.
pub const MAP_ALLOCS: &str = "ALLOCS";
/// Name of the hash map `stack id -> StackTrace` of user stacks.
pub const MAP_STACKS: &str = "STACKS";
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
/// Name of the LRU map `pid_tgid -> pointer` of the last pointer a wrapper freed (see
/// [`COOKIE_NOTE_FREE`]).
pub const MAP_LAST_FREE: &str = "LAST_FREE";
/// Name of the LRU map carrying arguments from an entry probe to its return probe.
pub const MAP_PENDING: &str = "PENDING";
/// Name of the per-CPU array of drop counters, indexed by [`DropReason`].
pub const MAP_DROPS: &str = "DROPS";
/// Name of the per-CPU array of probe hit counters, indexed by [`hit_index`].
pub const MAP_HITS: &str = "HITS";
/// Name of the per-thread buffers the exit probes collect a stack into.
pub const MAP_STACK_SCRATCH: &str = "STACK_SCRATCH";
/// Name of the one-entry array of zeros that new [`MAP_STACK_SCRATCH`] entries are copied from.
pub const MAP_ZERO_STACK: &str = "ZERO_STACK";

/// Read-only global: only this tgid is traced (0: no filter).
pub const GLOBAL_FILTER_TGID: &str = "FILTER_TGID";
/// Read-only global: non-zero turns on per-event BPF logging (very slow; debugging only).
pub const GLOBAL_TRACE: &str = "TRACE";
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

/// Name of the map, for the compatible object, from a process to `[recorded mappings, ones
/// ever recorded larger than UNMAP_PROBE_PAGES pages]`: an unmap search that cannot be
/// exhaustive misses nothing in a process with none, and nothing before its start in one
/// without large ones.
pub const MAP_MMAP_COUNTS: &str = "MMAP_COUNTS";
/// Pages the compatible object's `munmap` searches before and after its start for recorded
/// mappings (it cannot iterate [`MAP_MMAPS`]): a search that cannot be exhaustive is counted
/// ([`DropReason::UnmapUnchecked`]).
pub const UNMAP_PROBE_PAGES: u64 = 32;

/// Name of the hash map from a probe's address (and process) to its hook's cookie, for the
/// compatible object (kernels without attach cookies): key [`AllocKey`] with the probed
/// instruction's address, value the cookie the full object's probe would carry.
pub const MAP_HOOK_IPS: &str = "HOOK_IPS";
/// Capacity of [`MAP_HOOK_IPS`].
pub const MAX_HOOK_IPS: u32 = 1 << 16;
/// Read-only global: leak's own process id. The compatible object, which has no attach cookie
/// to mark the calibration probes with, knows them by it.
pub const GLOBAL_LEAK_TGID: &str = "LEAK_TGID";

/// Read-only global: non-zero makes every program return at once (benchmarks: the cost of
/// the probes themselves at exactly the points the tool uses).
pub const GLOBAL_PROBE_FLOOR: &str = "PROBE_FLOOR";

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
/// Default capacity of [`MAP_STACKS`] (distinct allocation stacks).
pub const DEFAULT_MAX_STACKS: u32 = 1 << 16;
/// Capacity of [`MAP_PENDING`]: threads in flight inside an allocator at once.
pub const MAX_PENDING: u32 = 1 << 14;
/// Capacity of [`MAP_STACK_SCRATCH`]: threads with a stack buffer (LRU: idle ones are evicted).
pub const MAX_SCRATCH_THREADS: u32 = 1 << 12;
/// Frames kept per stack; the kernel's default `perf_event_max_stack`.
pub const MAX_STACK_DEPTH: usize = 127;
/// Length of the counter arrays [`MAP_DROPS`] and [`MAP_HITS`].
pub const COUNTER_SLOTS: u32 = 2 * MAX_HOOKS;

/// `AllocInfo::stack_id` when no stack could be taken (see [`DropReason::StackMissing`]).
pub const STACK_ID_NONE: u64 = 0;

/// A stash in [`MAP_PENDING`] older than this is not an outer call in flight but one whose
/// return never arrived: a new call replaces it (counted as [`DropReason::StalePending`]).
pub const STALE_PENDING_NS: u64 = 1_000_000_000;

/// Hooks per traced process at most. A hook is one hooked function (a symbol in one object);
/// its index in the loader's hook list is the attach cookie of its probes, the `kind` of the
/// allocations it makes, and (times two, plus one for the return) its index in [`MAP_HITS`].
pub const MAX_HOOKS: u32 = 128;

/// Attach-cookie flag of a `munmap` probe placed right after the `syscall` instruction: it
/// sees the arguments and the result (`%rax`), and acts only on success.
pub const COOKIE_AFTER_SYSCALL: u64 = 1 << 31;

/// Attach-cookie flag of a freeing function other than `free` itself (`operator delete`,
/// `je_free`, `sdallocx`, `mi_free`...): it notes the pointer it frees in [`MAP_LAST_FREE`],
/// so that a `free` it calls on the same pointer is not counted as unknown.
pub const COOKIE_NOTE_FREE: u64 = 1 << 30;
/// Attach-cookie flag: a probe on leak's own calibration function (measuring what a hit
/// costs): the program counts the hit and returns.
pub const COOKIE_CALIBRATION: u64 = 1 << 29;

/// `Pending::flags` of an `mmap`: an anonymous private mapping (not a thread stack), recorded.
pub const PENDING_MMAP_TRACKED: u32 = 1 << 1;
/// `Pending::flags` of an `mmap` with `MAP_FIXED`: it replaces whatever was mapped there.
pub const PENDING_MMAP_FIXED: u32 = 1 << 2;

/// Index of hook `cookie`'s entry (`exit` false) or return (`exit` true) counter in [`MAP_HITS`].
#[must_use]
pub const fn hit_index(cookie: u32, exit: bool) -> u32 {
    cookie * 2 + exit as u32
}

/// A BPF program: one per argument shape, shared by the functions of that shape (the attach
/// cookie says which function fired).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Program {
    /// Entry, size in the first argument.
    AllocEnter,
    /// Entry, size in the second argument (after the alignment).
    MemalignEnter,
    /// Entry of calloc: `nmemb * size`.
    CallocEnter,
    /// Entry of realloc: pointer and size.
    ReallocEnter,
    /// Entry of reallocarray: pointer, `nmemb * size`.
    ReallocarrayEnter,
    /// Entry of `posix_memalign`: out-pointer and size.
    PosixMemalignEnter,
    /// Return of a function returning the new block.
    AllocExit,
    /// Return of realloc or reallocarray.
    ReallocExit,
    /// Return of `posix_memalign`: the block is read from the out-pointer.
    PosixMemalignExit,
    /// Entry of a function freeing its first argument.
    FreeEnter,
    /// Entry of `mmap`: address, length, flags.
    MmapEnter,
    /// Return of `mmap`: the mapping.
    MmapExit,
    /// `munmap`: at entry, or right after its `syscall` (see [`COOKIE_AFTER_SYSCALL`]).
    MunmapEnter,
    /// Entry of `mremap`: old address, old and new sizes.
    MremapEnter,
    /// Return of `mremap`: the moved or resized mapping.
    MremapExit,
}

impl Program {
    /// Every program.
    pub const ALL: [Self; 15] = [
        Self::AllocEnter,
        Self::MemalignEnter,
        Self::CallocEnter,
        Self::ReallocEnter,
        Self::ReallocarrayEnter,
        Self::PosixMemalignEnter,
        Self::AllocExit,
        Self::ReallocExit,
        Self::PosixMemalignExit,
        Self::FreeEnter,
        Self::MmapEnter,
        Self::MmapExit,
        Self::MunmapEnter,
        Self::MremapEnter,
        Self::MremapExit,
    ];

    /// Its name in the BPF object.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::AllocEnter => "alloc_enter",
            Self::MemalignEnter => "memalign_enter",
            Self::CallocEnter => "calloc_enter",
            Self::ReallocEnter => "realloc_enter",
            Self::ReallocarrayEnter => "reallocarray_enter",
            Self::PosixMemalignEnter => "posix_memalign_enter",
            Self::AllocExit => "alloc_exit",
            Self::ReallocExit => "realloc_exit",
            Self::PosixMemalignExit => "posix_memalign_exit",
            Self::FreeEnter => "free_enter",
            Self::MmapEnter => "mmap_enter",
            Self::MmapExit => "mmap_exit",
            Self::MunmapEnter => "munmap_enter",
            Self::MremapEnter => "mremap_enter",
            Self::MremapExit => "mremap_exit",
        }
    }

    /// Whether this is a return probe (uretprobe).
    #[must_use]
    pub const fn is_return(self) -> bool {
        matches!(
            self,
            Self::AllocExit
                | Self::ReallocExit
                | Self::PosixMemalignExit
                | Self::MmapExit
                | Self::MremapExit
        )
    }

    /// Argument registers (System V x86-64 order) the entry program reads; the probe may be
    /// moved past instructions that leave these untouched.
    #[must_use]
    pub const fn args_read(self) -> u8 {
        match self {
            Self::AllocEnter | Self::FreeEnter => 1,
            Self::MemalignEnter | Self::CallocEnter | Self::ReallocEnter | Self::MunmapEnter => 2,
            Self::ReallocarrayEnter | Self::PosixMemalignEnter | Self::MremapEnter => 3,
            Self::MmapEnter => 4,
            Self::AllocExit
            | Self::ReallocExit
            | Self::PosixMemalignExit
            | Self::MmapExit
            | Self::MremapExit => 0,
        }
    }
}

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
    /// Key into [`MAP_STACKS`]: a 64-bit hash of the frames, [`STACK_ID_NONE`] if none.
    pub stack_id: u64,
    /// Thread group (process) id that allocated.
    pub tgid: u32,
    /// The hook (attach cookie, see [`MAX_HOOKS`]) of the function that made it.
    pub kind: u32,
}

/// `Pending::flags`: `nmemb * size` overflowed (calloc and reallocarray then fail).
pub const PENDING_OVERFLOW: u32 = 1;

/// Arguments of an allocator call in flight, the value of [`MAP_PENDING`] (key: the thread's
/// `pid_tgid`). One per thread: a hooked function that a hooked function calls (glibc's
/// `posix_memalign` calls `malloc`, its `reallocarray` tail-calls `realloc`) finds the outer
/// call's stash and leaves the accounting to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Requested size in bytes (for calloc and reallocarray, the checked product).
    pub size: u64,
    /// realloc: the pointer passed in (0 for none).
    pub old_ptr: u64,
    /// `posix_memalign`: where the new pointer is written.
    pub out_ptr: u64,
    /// `bpf_ktime_get_ns()` at entry (see [`STALE_PENDING_NS`]).
    pub start_ns: u64,
    /// realloc: the record of `old_ptr`, taken out of [`MAP_ALLOCS`] at entry so that a
    /// failed realloc can put it back.
    pub old: AllocInfo,
    /// The hook (attach cookie) of the function called.
    pub kind: u32,
    /// realloc: 1 if `old` holds a record.
    pub has_old: u32,
    /// [`PENDING_OVERFLOW`], [`PENDING_UNSAMPLED`], ...
    pub flags: u32,
    /// Explicit padding.
    pub pad: u32,
    /// The compatible object: the stack pointer at the call's entry (its return address's
    /// slot), which tells the call's return from a nested call's.
    pub entry_sp: u64,
    /// The compatible object: the stack pointer of the last return that took a stash (a call
    /// chained to it by a jump returns at the same point right after).
    pub taken_sp: u64,
    /// The compatible object: the last pointer this thread passed to `free`, until an
    /// `munmap` of the allocator's that holds it (glibc unmapping a large block) consumes it.
    pub freed: u64,
    /// Sampling: bytes this thread allocates before its next sample (0: not drawn yet). Kept
    /// across calls, unlike the other fields.
    pub sample_left: u64,
    /// The clock (`bpf_ktime_get_ns`) as last read on this thread, and `jiffies` then: a
    /// call within the same jiffy reuses it (kept across calls, see the BPF `stash`).
    pub clock_ns: u64,
    /// As above.
    pub clock_jiffies: u64,
    /// This thread's last walk by unwind tables (kept across calls).
    pub memo: StackMemo,
    /// A walk by unwind tables in progress (scratch space, like what follows).
    pub walk: WalkState,
    /// An unmapped range's overlapping regions, as an `munmap` gathers them.
    pub unmap: UnmapScratch,
    /// The top of the user stack at the return, copied in one read for the frame walk
    /// (scratch space; kept here because the return probe has this slot at hand).
    pub window: [u64; STACK_WINDOW_WORDS],
}

/// A stack walk by unwind tables in progress (`leak-ebpf`'s `unwind::step`). In the thread's
/// [`Pending`] slot, not on the BPF stack: the verifiers of 5.10-6.12 allow 512 bytes for a
/// program's whole chain of calls, and the walk runs three calls deep.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkState {
    /// Registers of the frame being stepped from.
    pub ip: u64,
    /// As above.
    pub sp: u64,
    /// As above.
    pub bp: u64,
    /// The hash of the frames so far.
    pub hash: u64,
    /// Frames so far.
    pub n: u64,
    /// How the walk ended (`STACK_END_*`), once it has.
    pub end: u64,
    /// The process's mappings: first index in [`MAP_UNWIND_MAPPINGS`].
    pub maps_first: u32,
    /// Their count.
    pub maps_n: u32,
    /// The process and its mappings' generation, mixed: keys [`MAP_ROW_CACHE`].
    pub cache_key: u64,
    /// Where the stack window was last copied from.
    pub sp0: u64,
    /// The window's first address as copied at the probe: while `sp0` is still it, the
    /// words read are the ones a memo checks.
    pub sp_start: u64,
    /// Index of each pair read from the window (see [`StackMemo`]).
    pub reads: [u8; MEMO_READS],
    /// Non-zero while every word read came from the first window, and few enough of them
    /// to memoize the walk.
    pub memo_ok: u32,
    /// Explicit padding.
    pub pad: u32,
}

/// Recorded mappings an `munmap` range overlaps that one call trims after searching them all.
pub const UNMAP_MAX_OVERLAPS: usize = 4;

/// The recorded mappings that overlap an unmapped range `[a, b)`, gathered by a search of
/// [`MAP_MMAPS`] (scratch space in the thread's [`Pending`] slot, off the BPF stack).
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

/// Pairs of stack-window words a walk may read and still be memoized ([`StackMemo`]): two
/// per frame, for 8 frames.
pub const MEMO_READS: usize = 16;
/// [`StackMemo::reads`] entry of no read.
pub const MEMO_NO_READ: u8 = 0xff;

/// A thread's last walk by unwind tables and what it depended on: the registers, the
/// process's tables (their generation) and the window words it read. A walk is a function of
/// these alone, so when they all match again (an allocation site called in a loop, at the
/// same depth) its stack is the memo's without a step or a row lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackMemo {
    /// Registers at the return.
    pub ip: u64,
    /// As above.
    pub sp: u64,
    /// As above.
    pub bp: u64,
    /// The process and the last generation of any mapping set, mixed (see
    /// [`MAP_UNWIND_GENERATION`]).
    pub key: u64,
    /// A hash of the window words read, in order.
    pub digest: u64,
    /// The stack's id.
    pub hash: u64,
    /// Non-zero: the memo holds a walk.
    pub valid: u32,
    /// Explicit padding.
    pub pad: u32,
    /// Index in the window of each pair's first word: frame `i`'s reads at `2i` and `2i + 1`,
    /// [`MEMO_NO_READ`] where there was none.
    pub reads: [u8; MEMO_READS],
}

impl Default for Pending {
    fn default() -> Self {
        Self {
            size: 0,
            old_ptr: 0,
            out_ptr: 0,
            start_ns: 0,
            old: AllocInfo::default(),
            kind: 0,
            has_old: 0,
            flags: 0,
            pad: 0,
            entry_sp: 0,
            taken_sp: 0,
            freed: 0,
            sample_left: 0,
            clock_ns: 0,
            clock_jiffies: 0,
            memo: StackMemo::default(),
            walk: WalkState::default(),
            unmap: UnmapScratch::default(),
            window: [0; STACK_WINDOW_WORDS],
        }
    }
}

/// Words of user stack a return probe reads at once ([`Pending::window`]). One
/// `bpf_probe_read_user` costs about 100 ns here whatever its size up to a page, so frames
/// that lie within the first 512 bytes above the stack pointer (most of a stack's innermost
/// frames) cost nothing more.
pub const STACK_WINDOW_WORDS: usize = 64;

/// `Pending::flags`: the call's block is not sampled: its return records nothing (a realloc
/// still frees the old block).
pub const PENDING_UNSAMPLED: u32 = 1 << 3;

/// [`Pending::kind`] of a thread's slot between calls (slots are kept, see the BPF `stash`).
pub const PENDING_IDLE: u32 = u32::MAX;

/// A user stack, the value of [`MAP_STACKS`]: return addresses, innermost first, ended by the
/// first zero (what follows it is left over from an earlier stack).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackTrace {
    /// Instruction pointers; the first zero ends the stack.
    pub ips: [u64; MAX_STACK_DEPTH],
}

impl StackTrace {
    /// The non-zero frames.
    #[must_use]
    pub fn frames(&self) -> &[u64] {
        let n = self.ips.iter().position(|&ip| ip == 0).unwrap_or(MAX_STACK_DEPTH);
        &self.ips[..n]
    }

    /// How its walk ended (`STACK_END_*`); `None`: it filled every slot (the depth limit).
    #[must_use]
    pub fn end(&self) -> Option<u64> {
        let n = self.ips.iter().position(|&ip| ip == 0)?;
        Some(self.ips.get(n + 1).copied().unwrap_or(STACK_END_UNKNOWN))
    }
}

/// How to find the caller's frame from a code address (a call site): one row of an object's
/// unwind table, valid from `pc` up to the next row's. x86-64 only: the return address is
/// always at `CFA - 8`, and the caller's stack pointer is the CFA.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnwindRow {
    /// First address it covers: its ELF virtual address (objects lie far below 4 GiB).
    pub pc: u32,
    /// `CFA = <cfa_reg> + cfa_offset`.
    pub cfa_offset: i32,
    /// Where the caller's `rbp` was saved: `CFA + rbp_offset` when `rbp_rule` is
    /// [`RBP_AT_CFA`].
    pub rbp_offset: i16,
    /// [`CFA_RSP`], [`CFA_RBP`], [`CFA_UNSUPPORTED`], [`CFA_NONE`] or [`CFA_OUTERMOST`].
    pub cfa_reg: u8,
    /// [`RBP_SAME`] or [`RBP_AT_CFA`].
    pub rbp_rule: u8,
}

/// [`UnwindRow::cfa_reg`]: the CFA is `rsp` plus the offset.
pub const CFA_RSP: u8 = 0;
/// [`UnwindRow::cfa_reg`]: the CFA is `rbp` plus the offset (code with a frame pointer).
pub const CFA_RBP: u8 = 1;
/// [`UnwindRow::cfa_reg`]: a rule this unwinder does not follow (a DWARF expression, as in
/// the PLT and signal frames, or another register).
pub const CFA_UNSUPPORTED: u8 = 2;
/// [`UnwindRow::cfa_reg`]: no unwind information covers these addresses.
pub const CFA_NONE: u8 = 3;
/// [`UnwindRow::cfa_reg`]: the outermost frame: its return address is marked undefined
/// (glibc's `_start` and the start of its threads do so). A stack that ends here is complete.
pub const CFA_OUTERMOST: u8 = 4;
/// [`UnwindRow::rbp_rule`]: the caller's `rbp` is this frame's.
pub const RBP_SAME: u8 = 0;
/// [`UnwindRow::rbp_rule`]: the caller's `rbp` is saved at `CFA + rbp_offset`.
pub const RBP_AT_CFA: u8 = 1;

const _: () = assert!(core::mem::size_of::<UnwindRow>() == 12);

/// How a stack walk ended, stored in [`StackTrace::ips`] right after the terminating zero
/// (a stack that fills every slot hit the depth limit): nothing recorded (frame pointers).
pub const STACK_END_UNKNOWN: u64 = 0;
/// At the outermost frame.
pub const STACK_END_COMPLETE: u64 = 1;
/// At an address without unwind information.
pub const STACK_END_NO_UNWIND_INFO: u64 = 2;
/// At a rule the unwinder does not follow.
pub const STACK_END_UNSUPPORTED: u64 = 3;
/// Reading the stack failed, or a frame was not above the one before it.
pub const STACK_END_BAD_FRAME: u64 = 4;

/// Name of the array of every loaded object's [`UnwindRow`]s, one table after another.
pub const MAP_UNWIND_ROWS: &str = "UNWIND_ROWS";
/// Name of the map from a traced process (tgid) to its [`ProcessMaps`].
pub const MAP_UNWIND_MAPS: &str = "UNWIND_MAPS";
/// Name of the load-time global that selects how stacks are walked ([`UNWIND_FP`],
/// [`UNWIND_DWARF`] or [`UNWIND_AUTO`]).
pub const GLOBAL_UNWIND: &str = "UNWIND";
/// Frame pointers only.
pub const UNWIND_FP: u32 = 0;
/// Unwind tables only: a frame without a row ends the stack.
pub const UNWIND_DWARF: u32 = 1;
/// Unwind tables, and the frame pointer for a frame without a row (code without tables).
pub const UNWIND_AUTO: u32 = 2;
/// Default capacity of [`MAP_UNWIND_ROWS`]: 12 MiB of kernel memory.
pub const DEFAULT_UNWIND_ROWS: u32 = 1 << 20;
/// Executable mappings of one process with unwind tables, at most.
pub const MAX_UNWIND_MAPS: u32 = 128;
/// Processes with tables at once, at most (the capacity of [`MAP_UNWIND_MAPS`]).
pub const MAX_UNWIND_PROCESSES: u32 = 64;
/// Name of the array of [`UnwindMap`]s: two sets of [`MAX_UNWIND_MAPS`] slots per process
/// with tables, written in turn, so that a walk never sees a set half rewritten.
pub const MAP_UNWIND_MAPPINGS: &str = "UNWIND_MAPPINGS";

/// One executable mapping of a traced process and where its object's rows are.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMap {
    /// First address.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// Load bias: a runtime address minus it is the object's ELF virtual address.
    pub bias: u64,
    /// Index of the object's first row in [`MAP_UNWIND_ROWS`].
    pub first: u32,
    /// Its rows.
    pub count: u32,
}

/// Where a traced process's mappings are in [`MAP_UNWIND_MAPPINGS`] (sorted by start): the
/// value of [`MAP_UNWIND_MAPS`]. Arrays rather than one value holding them all: the BPF walk
/// then indexes them through the map, which the verifier checks once, instead of tracking
/// every index of a binary search into a value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessMaps {
    /// Index of its first mapping.
    pub first: u32,
    /// Its mappings.
    pub n: u32,
    /// Changes each time the loader writes a process's mappings: rows the walk cached
    /// (`MAP_ROW_CACHE`) for an earlier set (before an exec) are not taken for this one.
    pub generation: u64,
}

/// Name of the one-entry array holding the generation of the mapping set the loader wrote
/// last (in any process): a thread's memoized walk ([`StackMemo`]) is keyed by it, so that
/// checking the memo needs no lookup of the process's [`ProcessMaps`].
pub const MAP_UNWIND_GENERATION: &str = "UNWIND_GENERATION";

/// Name of the cache of rows the walk has looked up, by process and address.
pub const MAP_ROW_CACHE: &str = "ROW_CACHE";
/// Entries of [`MAP_ROW_CACHE`]: a power of two.
pub const ROW_CACHE_SLOTS: u32 = 1 << 12;

/// Why an event was lost or only partly recorded: indexes of [`MAP_DROPS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// The allocation table and [`MAP_ALLOCS`] had no room: an allocation was not recorded.
    AllocMapFull = 0,
    /// `bpf_get_stack` failed: the allocation is recorded without a stack.
    StackMissing = 1,
    /// [`MAP_STACKS`] was full: the allocation is recorded, its stack is not.
    StackMapFull = 2,
    /// A return probe found no arguments from its entry probe (entry missed, or stash evicted).
    MissingEntry = 3,
    /// `free` (or `realloc`) of a pointer that is not recorded: allocated before the probes
    /// were attached, or its allocation was dropped.
    UnknownFree = 4,
    /// The entry probe could not stash its arguments.
    PendingFull = 5,
    /// A thread's stash was left by a call whose return never arrived, and was replaced.
    StalePending = 6,
    /// `posix_memalign` succeeded but its out-pointer could not be read.
    ReadFailed = 7,
    /// An `munmap` range overlapped more recorded mappings than one call can trim: some
    /// stay recorded although unmapped.
    UnmapOverflow = 8,
    /// [`MAP_SITES`] was full: a block is recorded but its site's totals leave it out (growth
    /// samples then undercount the site; reports, which sum the records, do not).
    SiteMapFull = 9,
    /// An `munmap` (or `MAP_FIXED` mapping) range that a kernel without map iteration (before
    /// 5.13, the compatible object) could not search whole: a recorded mapping in it may stay
    /// recorded although unmapped.
    UnmapUnchecked = 10,
    /// A probe fired at an address leak did not register for the process (the compatible
    /// object finds hooks by address): the call was not followed.
    UnknownHook = 11,
}

impl DropReason {
    /// Every reason, in index order.
    pub const ALL: [Self; 12] = [
        Self::AllocMapFull,
        Self::StackMissing,
        Self::StackMapFull,
        Self::MissingEntry,
        Self::UnknownFree,
        Self::PendingFull,
        Self::StalePending,
        Self::ReadFailed,
        Self::UnmapOverflow,
        Self::SiteMapFull,
        Self::UnmapUnchecked,
        Self::UnknownHook,
    ];

    /// Stable name used in reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::AllocMapFull => "alloc_map_full",
            Self::StackMissing => "stack_missing",
            Self::StackMapFull => "stack_map_full",
            Self::MissingEntry => "missing_entry",
            Self::UnknownFree => "unknown_free",
            Self::PendingFull => "pending_full",
            Self::StalePending => "stale_pending",
            Self::ReadFailed => "read_failed",
            Self::UnmapOverflow => "unmap_overflow",
            Self::SiteMapFull => "site_map_full",
            Self::UnmapUnchecked => "unmap_unchecked",
            Self::UnknownHook => "unknown_hook",
        }
    }
}

/// Name of the uprobe that stops a `leak run` child at its ELF entry point.
pub const PROGRAM_ENTRY_STOP: &str = "entry_stop";

// Layouts are part of the kernel/user contract: fail the build if they drift.
const _: () = assert!(core::mem::size_of::<AllocKey>() == 16);
const _: () = assert!(core::mem::size_of::<AllocInfo>() == 32);
const _: () = assert!(core::mem::align_of::<AllocInfo>() == 8);
const _: () = assert!(core::mem::offset_of!(AllocInfo, tgid) == ALLOC_INFO_OWNER_OFFSET);
const _: () = assert!(core::mem::size_of::<AllocBucket>() == 320);
const _: () = assert!(core::mem::size_of::<SiteBucket>() == 224);
const _: () = assert!(core::mem::size_of::<StackMemo>() == 72);
const _: () = assert!(core::mem::size_of::<WalkState>() == 104);
const _: () = assert!(core::mem::size_of::<UnmapScratch>() == 96);
const _: () =
    assert!(core::mem::size_of::<Pending>() == 128 + 72 + 104 + 96 + STACK_WINDOW_WORDS * 8);
const _: () = assert!(core::mem::size_of::<SiteKey>() == 16);
const _: () = assert!(core::mem::size_of::<SiteTotal>() == 16);
const _: () = assert!(core::mem::size_of::<StackTrace>() == 8 * MAX_STACK_DEPTH);
const _: () = assert!(DropReason::ALL.len() <= COUNTER_SLOTS as usize);

#[cfg(feature = "user")]
mod user {
    use super::{
        AllocBucket, AllocInfo, AllocKey, Pending, ProcessMaps, SiteBucket, SiteKey, SiteTotal,
        StackTrace, UnwindMap, UnwindRow,
    };

    // SAFETY: all three are `#[repr(C)]`, `Copy`, contain only integers and have no padding
    // (checked by the size assertions above), so any byte pattern is a valid value.
    unsafe impl aya::Pod for AllocInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AllocKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AllocBucket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SiteBucket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Pending {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StackTrace {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SiteKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SiteTotal {}
    // SAFETY: as above.
    unsafe impl aya::Pod for UnwindRow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ProcessMaps {}
    // SAFETY: as above.
    unsafe impl aya::Pod for UnwindMap {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn drop_values_and_hit_indexes_are_stable() {
        // These numbers are on the wire and in saved reports: changing one is a breaking change.
        let drops: std::vec::Vec<(u32, &str)> =
            DropReason::ALL.iter().map(|d| (*d as u32, d.name())).collect();
        assert_eq!(
            drops,
            [
                (0, "alloc_map_full"),
                (1, "stack_missing"),
                (2, "stack_map_full"),
                (3, "missing_entry"),
                (4, "unknown_free"),
                (5, "pending_full"),
                (6, "stale_pending"),
                (7, "read_failed"),
                (8, "unmap_overflow"),
                (9, "site_map_full"),
                (10, "unmap_unchecked"),
                (11, "unknown_hook"),
            ]
        );
        assert_eq!(hit_index(0, false), 0);
        assert_eq!(hit_index(1, true), 3);
        assert_eq!(hit_index(MAX_HOOKS - 1, true), COUNTER_SLOTS - 1);
    }

    #[test]
    fn program_names_are_distinct() {
        let names: std::collections::BTreeSet<&str> =
            Program::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), Program::ALL.len());
        assert_eq!(Program::ALL.iter().filter(|p| p.is_return()).count(), 5);
    }

    #[test]
    fn stack_frames_stop_at_first_zero() {
        let mut s = StackTrace { ips: [0; MAX_STACK_DEPTH] };
        s.ips[0] = 0x10;
        s.ips[1] = 0x20;
        assert_eq!(s.frames(), &[0x10, 0x20]);
        s.ips = [7; MAX_STACK_DEPTH];
        assert_eq!(s.frames().len(), MAX_STACK_DEPTH);
    }

    #[test]
    fn alloc_layout_holds_the_capacity() {
        // The exact capacity below one bucket's slots (the map-full test uses 4).
        assert_eq!(alloc_layout(4), AllocLayout { buckets: 1, slots: 4, spill: 0 });
        assert_eq!(alloc_layout(1), AllocLayout { buckets: 1, slots: 1, spill: 0 });
        assert_eq!(alloc_layout(8), AllocLayout { buckets: 1, slots: 8, spill: 0 });
        assert_eq!(alloc_layout(12), AllocLayout { buckets: 1, slots: 8, spill: 6 });
        // The default: a table of 1M slots (40 MiB), and a spill map for what does not fit.
        let d = alloc_layout(DEFAULT_MAX_ALLOCS);
        assert_eq!(d, AllocLayout { buckets: 1 << 17, slots: 8, spill: 1 << 18 });
        // 10M: the table at its largest, the rest in the spill map.
        let big = alloc_layout(10_000_000);
        assert_eq!(big.buckets, MAX_ALLOC_BUCKETS);
        assert_eq!(big.spill, 10_000_000 - (4 << 20) + (1 << 20));
        for max in [1, 3, 9, 100, 1000, 5000, 1 << 20, (1 << 20) + 1, u32::MAX] {
            let l = alloc_layout(max);
            assert!(l.buckets.is_power_of_two(), "{max}: {l:?}");
            assert!(
                u64::from(l.buckets) * u64::from(l.slots) + u64::from(l.spill) >= u64::from(max),
                "{max}: {l:?}"
            );
        }
    }

    #[test]
    fn table_buckets_spread_heap_addresses() {
        // 16-byte aligned blocks of one heap, 4096 buckets: no bucket far above the mean.
        let mask = 4095;
        let mut count = std::vec![0u32; 4096];
        for i in 0..32768u64 {
            count[table_bucket(0x5555_5555_0000 + i * 48, 1234, mask) as usize] += 1;
        }
        let max = count.iter().copied().max().unwrap_or(0);
        assert!(max <= 24, "fullest bucket {max} (mean 8)");
        // The process is part of the key.
        assert_ne!(table_bucket(0x1000, 1, u32::MAX), table_bucket(0x1000, 2, u32::MAX));
    }

    #[test]
    fn owner_word_is_tgid_and_kind() {
        let a = AllocInfo { size: 1, timestamp_ns: 2, stack_id: 3, tgid: 42, kind: 7 };
        // SAFETY: AllocInfo is repr(C) with no padding.
        let bytes: [u8; 32] = unsafe { core::mem::transmute(a) };
        assert_eq!(&bytes[ALLOC_INFO_OWNER_OFFSET..], &a.owner_word().to_le_bytes());
    }

    #[test]
    fn alloc_info_bytes_round_trip() {
        let a = AllocInfo { size: 4096, timestamp_ns: 5, stack_id: 0xdead_beef, tgid: 42, kind: 1 };
        // SAFETY: AllocInfo is repr(C) with no padding.
        let bytes: [u8; 32] = unsafe { core::mem::transmute(a) };
        assert_eq!(&bytes[0..8], &4096u64.to_ne_bytes());
        assert_eq!(&bytes[24..28], &42u32.to_ne_bytes());
        // SAFETY: any 32 bytes are a valid AllocInfo.
        let back: AllocInfo = unsafe { core::mem::transmute(bytes) };
        assert_eq!(back, a);
    }
}
