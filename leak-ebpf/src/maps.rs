//! Every map and load-time global of the BPF object. Names match `leak_common::MAP_*`.
use aya_ebpf::{
    Global,
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
#[cfg(bpf_target_arch = "aarch64")]
use core::intrinsics::atomic_xchg;
use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use leak_common::{
    ALLOC_BUCKET_SLOTS, AllocBucket, AllocInfo, AllocKey, COUNTER_SLOTS, DEFAULT_MAX_STACKS,
    DEFAULT_UNWIND_ROWS, DropReason, MAX_HOOK_IPS, MAX_MMAPS, MAX_PENDING, MAX_SCRATCH_THREADS,
    MAX_UNWIND_MAPS, MAX_UNWIND_PROCESSES, Pending, ProcessMaps, ROW_CACHE_SLOTS,
    SAMPLE_GAP_ENTRIES, SiteBucket, SiteKey, SiteTotal, StackTrace, UnwindMap, UnwindRow,
    hit_index,
};

/// Outstanding allocations (see `leak_common::AllocBucket`), sized by the loader from
/// `--max-allocs` (`leak_common::alloc_layout`). Mmappable: user space reads a snapshot of a
/// million records straight from the array, and writes it for forks and exits.
#[map]
pub static ALLOC_TABLE: Array<AllocBucket> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Per bucket of `ALLOC_TABLE`: its records in `ALLOCS`. A lookup that misses in a bucket
/// whose count is 0 ends there, without a hash-map lookup.
#[map]
pub static ALLOC_SPILLS: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Outstanding allocations whose bucket of `ALLOC_TABLE` was full: (address, process) ->
/// record. `BPF_F_NO_PREALLOC`: kernel memory grows with use (since 6.1 from
/// `bpf_mem_alloc`'s per-CPU caches, safe in uprobe context).
#[map]
pub static ALLOCS: HashMap<AllocKey, AllocInfo> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// `ALLOC_TABLE`'s bucket count minus one (`leak_common::GLOBAL_ALLOC_BUCKET_MASK`).
#[unsafe(no_mangle)]
pub static ALLOC_BUCKET_MASK: Global<u32> = Global::new(0);

/// Slots used per bucket (`leak_common::GLOBAL_ALLOC_SLOTS`).
#[unsafe(no_mangle)]
#[expect(clippy::cast_possible_truncation, reason = "8")]
pub static ALLOC_SLOTS: Global<u32> = Global::new(ALLOC_BUCKET_SLOTS as u32);

/// Non-zero: full buckets spill into `ALLOCS` (`leak_common::GLOBAL_ALLOC_SPILL`).
#[unsafe(no_mangle)]
pub static ALLOC_SPILL: Global<u32> = Global::new(1);

/// Stacks by 64-bit hash. Our own map rather than `BPF_MAP_TYPE_STACK_TRACE`: that one keys by a
/// 32-bit bucket index and fails with -EEXIST when two stacks share a bucket, which with a few
/// hundred stacks already loses some (the bcc memleak "stack id collision"). Here two stacks
/// collide only if their 64-bit hashes do.
#[map]
pub static STACKS: HashMap<u64, StackTrace> =
    HashMap::with_max_entries(DEFAULT_MAX_STACKS, BPF_F_NO_PREALLOC);

/// Outstanding bytes and allocations per (stack, process), kept with the records (see
/// `leak_common::MAP_SITES`). Sized by the loader (twice `--max-stacks`).
#[map]
pub static SITES: HashMap<SiteKey, SiteTotal> =
    HashMap::with_max_entries(2 * DEFAULT_MAX_STACKS, BPF_F_NO_PREALLOC);

/// Per-site totals found with array lookups (`leak_common::SiteBucket`); SITES keeps the
/// rest. Sized by the loader; mmappable for user space to read.
#[map]
pub static SITE_TABLE: Array<SiteBucket> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// `SITE_TABLE`'s bucket count minus one (`leak_common::GLOBAL_SITE_BUCKET_MASK`).
#[unsafe(no_mangle)]
pub static SITE_BUCKET_MASK: Global<u32> = Global::new(0);

/// The growth profile's pages: (page, process) -> its first toucher (`leak_common::MAP_PAGES`).
/// Preallocated (flags 0): before 6.1 a `perf_event` program may use no other hash map. The
/// loader sizes it to one entry unless a profile runs.
#[map]
pub static PAGES: HashMap<AllocKey, AllocInfo> = HashMap::with_max_entries(1, 0);

/// The growth profile's stacks, by the same 64-bit hash as `STACKS` (preallocated, as
/// `PAGES`; sized by the loader).
#[map]
pub static FAULT_STACKS: HashMap<u64, StackTrace> = HashMap::with_max_entries(1, 0);

/// Anonymous mappings recorded as allocations: start -> end (page-rounded), for `munmap` ranges.
#[map]
pub static MMAPS: HashMap<AllocKey, u64> = HashMap::with_max_entries(MAX_MMAPS, BPF_F_NO_PREALLOC);

/// Arguments from an entry probe to its return probe, by `pid_tgid` (plus a kind bit).
/// LRU, so returns that never arrive cannot fill it.
#[map]
pub static PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(MAX_PENDING, 0);

/// Last pointer a freeing wrapper freed, per thread (see `leak_common::COOKIE_NOTE_FREE`).
#[map]
pub static LAST_FREE: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_PENDING, 0);

/// Scratch space for one stack per thread: 1016 bytes do not fit on the 512-byte BPF stack.
///
/// Per thread, not per CPU: since uprobe programs became sleepable-capable (6.1), they run
/// with only migration disabled, not preemption (`bpf_prog_run_array_uprobe`), so on a
/// preemptible kernel another task can run the same program on this CPU between our
/// walk into the buffer and our reading of it. A thread cannot run two of these programs
/// at once, so its own buffer is never written under it.
#[map]
pub static STACK_SCRATCH: LruHashMap<u64, StackTrace> =
    LruHashMap::with_max_entries(MAX_SCRATCH_THREADS, 0);

/// Zeros to create a thread's `STACK_SCRATCH` entry from; never written.
#[map]
pub static ZERO_STACK: Array<StackTrace> = Array::with_max_entries(1, 0);

/// Zeros to create a thread's `PENDING` slot from; never written.
#[map]
pub static ZERO_PENDING: Array<Pending> = Array::with_max_entries(1, 0);

/// Drop counters by `DropReason`. Per-CPU: a shared array loses increments across CPUs.
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Hit counters by `leak_common::hit_index`.
#[map]
pub static HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Only this tgid is traced; 0 traces every process the probes fire in. Read-only at load
/// time, so the verifier sees a constant.
#[unsafe(no_mangle)]
pub static FILTER_TGID: Global<u32> = Global::new(0);

/// Non-zero: log every event through aya-log (debugging; costs a ring-buffer write per call).
#[unsafe(no_mangle)]
pub static TRACE: Global<u32> = Global::new(0);

/// Mean bytes between samples; 0 records every allocation (see `leak_common::sample_step`).
#[unsafe(no_mangle)]
pub static SAMPLE_MEAN: Global<u64> = Global::new(0);

/// Exponential quantiles the sampling gaps are drawn from (`leak_common::sample_gap_entry`),
/// filled by the loader: BPF has no floating point to take a logarithm.
#[map]
pub static SAMPLE_GAPS: Array<u32> = Array::with_max_entries(SAMPLE_GAP_ENTRIES, 0);

/// Non-zero: every program returns at once (see `leak_common::GLOBAL_PROBE_FLOOR`).
#[unsafe(no_mangle)]
pub static PROBE_FLOOR: Global<u32> = Global::new(0);

/// How stacks are walked: `leak_common::UNWIND_FP`, `UNWIND_DWARF` or `UNWIND_AUTO`. A
/// load-time constant: the frame-pointer-only build keeps none of the table walk.
#[unsafe(no_mangle)]
pub static UNWIND: Global<u32> = Global::new(0);

/// The bits of a return address that are its address (`leak_common::GLOBAL_RA_MASK`): the
/// rest, on aarch64, is a pointer-authentication code.
#[unsafe(no_mangle)]
pub static RA_MASK: Global<u64> = Global::new(u64::MAX);

/// Every loaded object's unwind rows, one table after another (filled by the loader; sized
/// by `--unwind-rows`).
#[map]
pub static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(DEFAULT_UNWIND_ROWS, 0);

/// Where a traced process's mappings are in `UNWIND_MAPPINGS`, by tgid.
#[map]
pub static UNWIND_MAPS: HashMap<u32, ProcessMaps> =
    HashMap::with_max_entries(MAX_UNWIND_PROCESSES, 0);

/// The generation of the mapping set written last (`leak_common::MAP_UNWIND_GENERATION`).
#[map]
pub static UNWIND_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

/// Rows the walk has looked up: `[tag, packed row]` at a slot chosen by a hash of the
/// process, its mappings' generation and the address. The tag is the key mixed with the
/// row, so an entry another CPU is halfway through writing does not match (a torn read
/// would pair one key's tag with another's row).
#[map]
pub static ROW_CACHE: Array<[u64; 2]> = Array::with_max_entries(ROW_CACHE_SLOTS, 0);

/// Executable mappings of the processes with tables: two sets of `MAX_UNWIND_MAPS` slots
/// each, written in turn (see `leak_common::MAP_UNWIND_MAPPINGS`).
#[map]
pub static UNWIND_MAPPINGS: Array<UnwindMap> =
    Array::with_max_entries(2 * MAX_UNWIND_PROCESSES * MAX_UNWIND_MAPS, 0);

/// The compatible object's hooks, by probe address and process (`leak_common::MAP_HOOK_IPS`),
/// written by the loader as it attaches.
#[map]
pub static HOOK_IPS: HashMap<AllocKey, u64> = HashMap::with_max_entries(MAX_HOOK_IPS, 0);

/// The compatible object's counts of recorded mappings by process
/// (`leak_common::MAP_MMAP_COUNTS`).
#[map]
pub static MMAP_COUNTS: HashMap<u32, [u64; 2]> =
    HashMap::with_max_entries(MAX_MMAPS, BPF_F_NO_PREALLOC);

/// leak's own process (`leak_common::GLOBAL_LEAK_TGID`): the compatible object's calibration
/// probes fire there.
#[unsafe(no_mangle)]
pub static LEAK_TGID: Global<u32> = Global::new(0);

/// Benchmarks' probe floor: the program should do nothing. A load-time constant, so the
/// verifier prunes whichever branch is dead.
#[inline(always)]
pub fn floor() -> bool {
    PROBE_FLOOR.load() != 0
}

/// Adds `n` to the u64 at `slot` atomically.
///
/// Atomic: uprobe programs can be preempted (see `STACK_SCRATCH`), so another task on this CPU
/// may update the same slot between a plain load and store. The bpf target declares no
/// compare-and-swap, so `AtomicU64::fetch_add` is not available; the intrinsic lowers to
/// BPF's `lock xadd`, which every BPF CPU version has.
///
/// # Safety
/// `slot` points to an aligned u64 in a live map value.
#[inline(always)]
pub unsafe fn atomic_add(slot: *mut u64, n: u64) {
    // SAFETY: the caller's contract.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, n) };
}

/// Stores `value` at `slot` after every access of this program before it, as readers on
/// other CPUs see them (user space reading the mapped allocation table: a record's fields
/// before its owner word; a freed record's fields read before its address is given back).
/// x86-64 keeps a store after earlier stores and loads: a plain store, the compiler kept
/// from reordering by a fence. aarch64 does not: an atomic exchange, which its JIT makes
/// fully ordered (`swpal`, or an exclusive pair and `dmb ish`). The arm64 JIT learned it
/// with compare-and-swap (5.18, to our reading), which the loader tries before it picks the
/// full object; the compatible object, which has no table, keeps the plain store.
///
/// # Safety
/// `slot` points to an aligned u64 in a live map value.
#[inline(always)]
pub unsafe fn publish(slot: *mut u64, value: u64) {
    #[cfg(bpf_target_arch = "aarch64")]
    if !crate::COMPAT {
        // SAFETY: the caller's contract.
        unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(slot, value) };
        return;
    }
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Release);
    // SAFETY: the caller's contract.
    unsafe { core::ptr::write_volatile(slot, value) };
}

/// Compare-and-swap of the u64 at `slot`: whether it held `old` (and now holds `new`).
///
/// # Safety
/// `slot` points to an aligned u64 in a live map value.
#[inline(always)]
pub unsafe fn cas(slot: *mut u64, old: u64, new: u64) -> bool {
    // SAFETY: the caller's contract.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(slot, old, new)
    }
    .1
}

#[inline(always)]
fn bump(array: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = array.get_ptr_mut(index) {
        // SAFETY: `slot` points to an aligned u64 in a live map value.
        unsafe { atomic_add(slot, 1) };
    }
}

/// Counts one lost or partial event.
#[inline(always)]
pub fn count_drop(reason: DropReason) {
    bump(&DROPS, reason as u32);
}

/// Counts one hit of the entry (`exit` false) or return probe of hook `cookie`.
///
/// A plain increment, not an atomic one like the drop counters': a locked add is about 6 ns
/// here, three times per malloc+free pair, and the counter is this CPU's own. Only a task
/// preempted between the load and the store, with another probe hit on this CPU meanwhile,
/// loses one, and hits are a figure for the report (the probes' cost), not a record.
#[inline(always)]
pub fn count_hit(cookie: u32, exit: bool) {
    if let Some(slot) = HITS.get_ptr_mut(hit_index(cookie, exit)) {
        // SAFETY: `slot` points to an aligned u64 in a live map value.
        unsafe { *slot += 1 };
    }
}
