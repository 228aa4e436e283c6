//! The mmap family's accounting: anonymous private mappings made outside the allocator are
//! recorded like allocations (`MMAPS` keeps each one's end); `munmap`, `mremap` and a
//! `MAP_FIXED` mapping over a recorded one trim, split or move the records. The compatible
//! object, which cannot iterate a map, searches by page-aligned starts instead and counts
//! what it could not check.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::generated::bpf_for_each_map_elem,
};
use leak_common::{
    AllocInfo, AllocKey, DropReason, PENDING_MMAP_FIXED, PENDING_MMAP_TRACKED, UNMAP_MAX_OVERLAPS,
    UNMAP_PROBE_PAGES, UnmapScratch,
};

use crate::{
    maps::{MMAP_COUNTS, MMAPS, PENDING, atomic_add, count_drop},
    stash::{Call, Fired, in_call, new_slot, stash, take_pending, tgid, traced_pid_tgid},
    table::{leak_insert_record, remove_record},
    verbs::{PAGE, record},
};

/// `MAP_FAILED`.
const MAP_FAILED: u64 = u64::MAX;
/// `MAP_SHARED | MAP_PRIVATE | MAP_SHARED_VALIDATE` mask.
const MAP_TYPE: u64 = 0x0f;
const MAP_PRIVATE: u64 = 0x02;
const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;
/// Thread stacks (glibc's `pthread_create` maps them with it): not heap memory.
const MAP_STACK: u64 = 0x2_0000;
/// Regions an unmap trims by following starts (the common cases: exact, adjacent).
const UNMAP_FAST_STEPS: usize = 8;

#[inline(always)]
fn page_end(start: u64, len: u64) -> u64 {
    start.saturating_add(len).saturating_add(PAGE - 1) & !(PAGE - 1)
}

/// Entry of `mmap(addr, len, prot, flags, ...)`.
#[inline(always)]
pub fn mmap_enter(f: Fired, addr: u64, len: u64, map_flags: u64) {
    let Some(pid_tgid) = traced_pid_tgid() else { return };
    let mut flags = 0;
    if map_flags & MAP_ANONYMOUS != 0
        && map_flags & MAP_TYPE == MAP_PRIVATE
        && map_flags & MAP_STACK == 0
    {
        flags |= PENDING_MMAP_TRACKED;
    }
    if map_flags & MAP_FIXED != 0 {
        flags |= PENDING_MMAP_FIXED;
    }
    // Nested in an allocator call (glibc's malloc maps large blocks itself): the stash fails
    // and the allocator's own accounting covers the memory.
    stash(
        pid_tgid,
        Call { size: len, out_ptr: addr, kind: f.func, flags, sp: f.sp, ..Call::default() },
        flags & PENDING_MMAP_TRACKED != 0,
    );
}

/// Return of `mmap`.
#[inline(always)]
pub fn mmap_exit<C: EbpfContext>(ctx: &C, f: Fired, ret: u64) {
    let Some(pid_tgid) = traced_pid_tgid() else { return };
    let Some((pending, func)) = take_pending(pid_tgid, f) else { return };
    if ret == MAP_FAILED {
        return;
    }
    let end = page_end(ret, pending.size);
    // MAP_FIXED replaces whatever was mapped in the range, recorded mappings included.
    if pending.flags & PENDING_MMAP_FIXED != 0 {
        leak_unmap_range(ret, end, pid_tgid);
    }
    if pending.flags & PENDING_MMAP_TRACKED != 0 && record(ctx, pid_tgid, ret, func, pending) {
        if MMAPS.insert(AllocKey::new(ret, tgid(pid_tgid)), end, u64::from(BPF_ANY)).is_ok() {
            count_mapping(tgid(pid_tgid), ret, end, 1);
        } else {
            count_drop(DropReason::AllocMapFull);
        }
    }
}

/// `munmap(addr, len)` (successful).
#[inline(always)]
pub fn munmap(addr: u64, len: u64) {
    let Some(pid_tgid) = traced_pid_tgid() else { return };
    // The compatible object cannot search the recorded mappings whole: it skips unmaps the
    // allocator makes inside `free` (which has no return probe to mark the call), known by
    // the pointer just freed lying in the range. The note serves this thread's next unmap
    // only, whichever it is.
    if crate::COMPAT
        && let Some(slot) = PENDING.get_ptr_mut(pid_tgid)
    {
        // SAFETY: this thread's own slot.
        let freed = unsafe { core::mem::replace(&mut (*slot).freed, 0) };
        if freed >= addr && freed < addr.saturating_add(len) {
            return;
        }
    }
    // Inside an allocator call: the allocator unmapping its own memory, never recorded.
    if in_call(pid_tgid) {
        return;
    }
    leak_unmap_range(addr & !(PAGE - 1), page_end(addr, len), pid_tgid);
}

/// Entry of `mremap(old, old_size, new_size, ...)`.
#[inline(always)]
pub fn mremap_enter(f: Fired, old: u64, old_size: u64, new_size: u64) {
    let Some(pid_tgid) = traced_pid_tgid() else { return };
    // `out_ptr` carries the old size. Not sampled: a recorded mapping moves with its record.
    stash(
        pid_tgid,
        Call { size: new_size, old_ptr: old, out_ptr: old_size, kind: f.func, flags: 0, sp: f.sp },
        false,
    );
}

/// Return of `mremap`: a recorded mapping starting at `old` moves to (or is resized at) `ret`
/// and takes `mremap`'s stack, as realloc's result does.
#[inline(always)]
pub fn mremap_exit<C: EbpfContext>(ctx: &C, f: Fired, ret: u64) {
    let Some(pid_tgid) = traced_pid_tgid() else { return };
    let Some((pending, func)) = take_pending(pid_tgid, f) else { return };
    let t = tgid(pid_tgid);
    if ret == MAP_FAILED || MMAPS.get_ptr(AllocKey::new(pending.old_ptr, t)).is_none() {
        return;
    }
    // The remapped part leaves its old place (a partial remap leaves the rest recorded).
    leak_unmap_range(pending.old_ptr, page_end(pending.old_ptr, pending.out_ptr), pid_tgid);
    record(ctx, pid_tgid, ret, func, pending);
    let end = page_end(ret, pending.size);
    if MMAPS.insert(AllocKey::new(ret, t), end, u64::from(BPF_ANY)).is_ok() {
        count_mapping(t, ret, end, 1);
    } else {
        count_drop(DropReason::AllocMapFull);
    }
}

/// Removes `[a, b)` from the recorded mappings of the calling thread's process
/// (`pid_tgid`): whole regions go, overlapping ones shrink or split in two.
///
/// A BPF global function (exported, scalar arguments only): the verifier checks it once, on
/// its own. Inlined into each caller, its loops times `trim`'s branches times the callers'
/// own paths (the 127-frame stack hash in `mmap_exit`) exceed the verifier's 1M-instruction
/// budget.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn leak_unmap_range(a: u64, b: u64, pid_tgid: u64) -> i32 {
    unmap_range(a, b, pid_tgid);
    0
}

#[inline(always)]
fn unmap_range(a: u64, b: u64, pid_tgid: u64) {
    let process = tgid(pid_tgid);
    // Fast path: regions starting exactly at `a`, then at each one's end.
    let mut cur = a;
    let mut step = 0;
    while step < UNMAP_FAST_STEPS {
        if cur >= b {
            return;
        }
        let Some(end) = MMAPS.get_ptr(AllocKey::new(cur, process)) else { break };
        // SAFETY: live map value, copied out.
        let end = unsafe { *end };
        leak_trim(cur, end, a, b, u64::from(process));
        cur = end;
        step += 1;
    }
    if cur >= b {
        return;
    }
    // Slow path: a range starting inside a region (a tail or a middle), or past a gap.
    if crate::COMPAT {
        unmap_searched(a, b, cur, process);
        return;
    }
    // What
    // the search finds goes in the thread's slot: four regions' bounds do not fit the stack
    // next to the callers' frames.
    let Some(slot) = PENDING.get_ptr_mut(pid_tgid).or_else(|| new_slot(pid_tgid)) else {
        count_drop(DropReason::PendingFull);
        return;
    };
    // SAFETY: a field of the thread's own slot; nothing else of this thread runs now.
    let mut found = unsafe { &raw mut (*slot).unmap };
    // SAFETY: as above.
    unsafe {
        (*found).tgid = process;
        (*found).a = cur;
        (*found).b = b;
        (*found).n = 0;
    }
    // SAFETY: the map pointer is MMAPS' definition, the callback a static function with the
    // helper's signature, the context a live stack value (the helper takes only those)
    // holding the scratch's address.
    unsafe {
        bpf_for_each_map_elem(
            (&raw const MMAPS).cast_mut().cast(),
            collect_overlaps as *mut core::ffi::c_void,
            (&raw mut found).cast(),
            0,
        );
    }
    let mut j = 0;
    while j < UNMAP_MAX_OVERLAPS {
        // SAFETY: as above; j < UNMAP_MAX_OVERLAPS.
        let (n, start, end) = unsafe { ((*found).n, (*found).starts[j], (*found).ends[j]) };
        if (j as u64) < n {
            leak_trim(start, end, a, b, u64::from(process));
        }
        j += 1;
    }
    // SAFETY: as above.
    if unsafe { (*found).n } > UNMAP_MAX_OVERLAPS as u64 {
        count_drop(DropReason::UnmapOverflow);
    }
}

/// [`unmap_range`]'s slow path on kernels that cannot iterate a map (before 5.13): the
/// recorded mappings that overlap `[cur, b)` found by their starts, which are page-aligned.
/// The one containing `cur` starts within `UNMAP_PROBE_PAGES` pages before it unless the
/// process has recorded a larger mapping; those starting inside the range are all found when
/// it is that short. Otherwise the search is counted as unchecked.
#[inline(always)]
fn unmap_searched(a: u64, b: u64, cur: u64, tgid: u32) {
    // No recorded mapping in the process: nothing to search for (the common case: most
    // programs map memory through their allocator only).
    // SAFETY: live map value, read.
    if MMAP_COUNTS.get_ptr(tgid).is_none_or(|n| unsafe { (*n)[0] } == 0) {
        return;
    }
    let mut before_found = false;
    let mut back = 1;
    while back <= UNMAP_PROBE_PAGES {
        let start = cur.wrapping_sub(back * PAGE);
        if let Some(end) = MMAPS.get_ptr(AllocKey::new(start, tgid)) {
            // SAFETY: live map value, copied out.
            let end = unsafe { *end };
            if end > cur {
                leak_trim(start, end, a, b, u64::from(tgid));
            }
            // Recorded mappings do not overlap: none further down reaches `cur`.
            before_found = true;
            break;
        }
        back += 1;
    }
    let mut page = cur;
    let mut ahead = 0;
    while ahead < UNMAP_PROBE_PAGES && page < b {
        if let Some(end) = MMAPS.get_ptr(AllocKey::new(page, tgid)) {
            // SAFETY: live map value, copied out.
            let end = unsafe { *end };
            leak_trim(page, end, a, b, u64::from(tgid));
        }
        page += PAGE;
        ahead += 1;
    }
    // SAFETY: live map value, read.
    let large = MMAP_COUNTS.get_ptr(tgid).is_some_and(|n| unsafe { (*n)[1] } != 0);
    if page < b || (large && !before_found) {
        count_drop(DropReason::UnmapUnchecked);
    }
}

/// The compatible object counts the process's recorded mappings (`delta` 1 or -1), and those
/// ever recorded longer than its unmap search looks (see [`unmap_searched`]).
#[inline(always)]
fn count_mapping(tgid: u32, start: u64, end: u64, delta: u64) {
    if !crate::COMPAT {
        return;
    }
    if MMAP_COUNTS.get_ptr(tgid).is_none() {
        // EEXIST: another thread of the process created it first.
        let _ = MMAP_COUNTS.insert(tgid, [0, 0], u64::from(BPF_NOEXIST));
    }
    let Some(n) = MMAP_COUNTS.get_ptr_mut(tgid) else {
        // Full: the process's unmaps will skip their search (it looks as if it had recorded
        // nothing), so say so now.
        count_drop(DropReason::UnmapUnchecked);
        return;
    };
    // SAFETY: aligned u64s of a live map value.
    unsafe {
        atomic_add(&raw mut (*n)[0], delta);
        if delta == 1 && end - start > UNMAP_PROBE_PAGES * PAGE {
            atomic_add(&raw mut (*n)[1], 1);
        }
    }
}

/// `bpf_for_each_map_elem` callback over MMAPS. Returns 0: visit every element.
#[inline(never)]
extern "C" fn collect_overlaps(
    _map: *mut core::ffi::c_void,
    key: *const AllocKey,
    value: *const u64,
    found: *mut *mut UnmapScratch,
) -> i64 {
    // SAFETY: the kernel passes the current key and value, and our context: the address of
    // the thread's scratch.
    unsafe {
        let (start, end) = ((*key).addr, *value);
        let f = &mut **found;
        if (*key).tgid == f.tgid && start < f.b && f.a < end {
            let n = f.n;
            if n < UNMAP_MAX_OVERLAPS as u64 {
                #[expect(clippy::cast_possible_truncation, reason = "below 4")]
                let at = n as usize;
                f.starts[at] = start;
                f.ends[at] = end;
            }
            // Saturate: the verifier runs this callback as a loop until its states repeat; an
            // unbounded count never repeats.
            if n <= UNMAP_MAX_OVERLAPS as u64 {
                f.n = n + 1;
            }
        }
    }
    0
}

/// Removes `[a, b)` from region `[s, e)`: what remains before `a` and after `b` stays
/// recorded, with the requested bytes that fall in each part. A global function, like
/// [`leak_unmap_range`].
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn leak_trim(s: u64, e: u64, a: u64, b: u64, tgid: u64) -> i32 {
    #[expect(clippy::cast_possible_truncation, reason = "a tgid passed as a scalar")]
    trim(s, e, a, b, tgid as u32);
    0
}

#[inline(always)]
fn trim(s: u64, e: u64, a: u64, b: u64, tgid: u32) {
    let key = AllocKey::new(s, tgid);
    if MMAPS.remove(key).is_ok() {
        count_mapping(tgid, s, e, u64::MAX);
    }
    let Some(info) = remove_record(key) else { return };
    if s < a {
        keep(s, a, &info, info.size.min(a - s));
    }
    if b < e {
        keep(b, e, &info, (e - b).min(info.size.saturating_sub(b - s)));
    }
}

/// Keeps `[start, end)` of a trimmed region recorded, with `size` of its requested bytes.
#[inline(always)]
fn keep(start: u64, end: u64, info: &AllocInfo, size: u64) {
    leak_insert_record(start, size, info.timestamp_ns, info.stack_id, info.owner_word());
    if MMAPS.insert(AllocKey::new(start, info.tgid), end, u64::from(BPF_ANY)).is_ok() {
        count_mapping(info.tgid, start, end, 1);
    } else {
        count_drop(DropReason::AllocMapFull);
    }
}
