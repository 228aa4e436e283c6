//! The verbs every hook is built from (after bcc memleak's `gen_alloc_enter` /
//! `gen_alloc_exit2` / `gen_free_enter`): allocation entry and return, realloc (a free and an
//! allocation), `posix_memalign` (the block comes back through an out-pointer), and free.
//!
//! One stash per thread: a hooked function called by a hooked function (glibc's
//! `posix_memalign` calls `malloc`; `realloc(NULL, n)` and `reallocarray` are tail calls to
//! `malloc` and `realloc`; `realloc(p, 0)` calls `free(p)`) finds the outer call's stash at
//! entry and does nothing: the outer call accounts for the block. Deciding at entry keeps the
//! result independent of the order in which chained return probes run.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_ANY, BPF_NOEXIST, pt_regs},
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_buf,
        generated::bpf_for_each_map_elem, generated::bpf_get_prandom_u32, generated::bpf_jiffies64,
        generated::bpf_ktime_get_ns,
    },
    maps::{Array, HashMap, LruHashMap},
};
use aya_log_ebpf::debug;

use leak_common::{
    AllocInfo, AllocKey, DropReason, FAULT_HOOK, MAX_STACK_DEPTH, PENDING_IDLE, PENDING_MMAP_FIXED,
    PENDING_MMAP_TRACKED, PENDING_OVERFLOW, PENDING_UNSAMPLED, Pending, SAMPLE_GAP_BITS,
    SAMPLE_GAP_SHIFT, STACK_ID_NONE, STACK_WINDOW_WORDS, STALE_PENDING_NS, StackTrace,
    UNMAP_MAX_OVERLAPS, UNMAP_PROBE_PAGES, UNWIND_FP, UnmapScratch, sample_gap, sample_step,
};

use crate::{
    maps::{
        FAULT_STACKS, FILTER_TGID, LAST_FREE, MMAP_COUNTS, MMAPS, PAGES, PENDING, SAMPLE_GAPS,
        SAMPLE_MEAN, STACK_SCRATCH, STACKS, TRACE, UNWIND, UNWIND_GENERATION, UNWIND_MAPS,
        ZERO_PENDING, ZERO_STACK, atomic_add, count_drop, count_hit,
    },
    table::{leak_insert_record, remove_record},
    unwind::{cache_key, memoized, walk_tables},
};

/// -EEXIST as returned by map helpers.
const EEXIST: i32 = -17;

/// The process (thread group) of a `pid_tgid`.
#[inline(always)]
fn tgid(pid_tgid: u64) -> u32 {
    (pid_tgid >> 32) as u32
}

/// The calling thread's `pid_tgid`, or `None` if its process is filtered out.
#[inline(always)]
pub fn traced_pid_tgid() -> Option<u64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let filter = FILTER_TGID.load();
    if filter != 0 && (pid_tgid >> 32) as u32 != filter {
        return None;
    }
    Some(pid_tgid)
}

/// `CLOCK_MONOTONIC`. (`bpf_ktime_get_coarse_ns` would save the TSC read, but uprobe programs
/// may not call it: its seqlock could deadlock under an NMI.)
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without pointer arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The arguments of an allocator call, as its entry probe read them.
#[derive(Clone, Copy, Default)]
struct Call {
    size: u64,
    old_ptr: u64,
    out_ptr: u64,
    kind: u32,
    flags: u32,
    /// The compatible object: the stack pointer at entry (see `Pending::entry_sp`).
    sp: u64,
}

/// A probe that fired: its hook (`leak_common::MAX_HOOKS`), and in the compatible object
/// the stack pointer.
#[derive(Clone, Copy)]
pub struct Fired {
    /// The hook index; [`FUNC_BY_STACK`] in a return probe of the compatible object.
    pub func: u32,
    /// `rsp` (the compatible object only; 0 otherwise).
    pub sp: u64,
}

/// [`Fired::func`] of a return probe that knows its call only by the stack pointer (the
/// compatible object: no attach cookies).
pub const FUNC_BY_STACK: u32 = leak_common::MAX_HOOKS;

/// Stashes the arguments of a call, stamped with the time, and returns the stash. `None` when
/// the call is nested in another hooked call of this thread (which then accounts for
/// everything), or cannot be stashed. `sample`: the call makes a new block of `call.size` bytes, which
/// sampling may leave out.
///
/// Each thread keeps its slot: an ended call marks it idle (`PENDING_IDLE`) rather than
/// deleting it, so the next call writes it in place. An LRU insert and delete per call cost
/// about 250 ns here; a lookup, a tenth of that. The LRU still evicts the slots of threads
/// that have gone. Written field by field: a whole `Pending` built on the stack is zeroed by
/// a call to a BPF `memset` (about 5% of `alloc_enter`'s time), and is too large anyway.
#[inline(always)]
fn stash(pid_tgid: u64, call: Call, sample: bool) -> Option<*mut Pending> {
    let found = PENDING.get_ptr_mut(pid_tgid);
    let start_ns = thread_clock(found);
    let slot = if let Some(slot) = found {
        // SAFETY: this thread's own slot: no other program writes it.
        let (kind, started) = unsafe { ((*slot).kind, (*slot).start_ns) };
        if kind != PENDING_IDLE {
            if start_ns.wrapping_sub(started) < STALE_PENDING_NS {
                return None;
            }
            // Left by a call whose return never arrived: replace it.
            count_drop(DropReason::StalePending);
        }
        slot
    } else if let Some(slot) = new_slot(pid_tgid) {
        slot
    } else {
        count_drop(DropReason::PendingFull);
        return None;
    };
    let stash = slot;
    // SAFETY: as above.
    let slot = unsafe { &mut *slot };
    let mut flags = call.flags;
    if sample {
        let (sampled, left) = decide_sample(slot.sample_left, call.size);
        slot.sample_left = left;
        if !sampled {
            flags |= PENDING_UNSAMPLED;
        }
    }
    slot.size = call.size;
    slot.old_ptr = call.old_ptr;
    slot.out_ptr = call.out_ptr;
    slot.start_ns = start_ns;
    slot.has_old = 0;
    slot.flags = flags;
    slot.kind = call.kind;
    if crate::COMPAT {
        slot.entry_sp = call.sp;
        slot.taken_sp = 0;
    }
    Some(stash)
}

/// `CLOCK_MONOTONIC` for a call's start, from the thread's slot when it read the clock
/// within the same jiffy (then at most one jiffy early: 1 to 10 ms, against ages reported
/// in seconds). Reading the clock costs about 25 ns in this VM (the TSC read under nested
/// virtualization); `jiffies` is a variable. A loop of allocations reads the clock once a
/// jiffy instead of once a call.
#[inline(always)]
fn thread_clock(slot: Option<*mut Pending>) -> u64 {
    // SAFETY: helper without arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    if let Some(slot) = slot {
        // SAFETY: this thread's own slot: no other program writes it.
        let slot = unsafe { &mut *slot };
        if slot.clock_jiffies == jiffies && slot.clock_ns != 0 {
            return slot.clock_ns;
        }
        let now = now_ns();
        slot.clock_ns = now;
        slot.clock_jiffies = jiffies;
        return now;
    }
    now_ns()
}

/// Creates this thread's slot (zeroed, so no sampling countdown drawn yet; idle, as no call
/// is in flight) on its first call.
#[inline(always)]
fn new_slot(pid_tgid: u64) -> Option<*mut Pending> {
    let slot = insert_zeroed(&PENDING, &ZERO_PENDING, pid_tgid)?;
    // SAFETY: this thread's own new slot. Kind 0 would be hook 0's call in flight.
    unsafe { (*slot).kind = PENDING_IDLE };
    Some(slot)
}

/// Inserts a zeroed value for this thread into `map` and returns it. From a zeroed map value
/// (`zero`'s only entry): the per-thread values do not fit on the 512-byte BPF stack.
#[inline(always)]
fn insert_zeroed<V>(map: &LruHashMap<u64, V>, zero: &Array<V>, pid_tgid: u64) -> Option<*mut V> {
    let zero = zero.get_ptr(0)?;
    // SAFETY: `zero` is a valid map value of the map's value type; passed by reference, as
    // a copy would not fit on the BPF stack.
    map.insert(pid_tgid, unsafe { &*zero }, u64::from(BPF_ANY)).ok()?;
    map.get_ptr_mut(pid_tgid)
}

/// Sampling (`SAMPLE_MEAN` set): counts a call's `size` bytes against the thread's countdown
/// `left` and says whether a sample point falls in them (`leak_common::sample_step`), with
/// the new countdown. Without sampling every call is sampled.
#[inline(always)]
fn decide_sample(left: u64, size: u64) -> (bool, u64) {
    let mean = SAMPLE_MEAN.load();
    if mean == 0 {
        return (true, left);
    }
    sample_step(left, size, || {
        // SAFETY: helper without arguments.
        let r = unsafe { bpf_get_prandom_u32() };
        let entry =
            SAMPLE_GAPS.get(r >> (32 - SAMPLE_GAP_BITS)).copied().unwrap_or(1 << SAMPLE_GAP_SHIFT);
        sample_gap(mean, entry)
    })
}

/// Sampling leaves frees of blocks it never recorded: not a lost event.
#[inline(always)]
fn count_unknown_free() {
    if SAMPLE_MEAN.load() == 0 {
        count_drop(DropReason::UnknownFree);
    }
}

/// This thread is inside a hooked call.
#[inline(always)]
fn in_call(pid_tgid: u64) -> bool {
    // SAFETY: live map value, read only.
    PENDING.get_ptr(pid_tgid).is_some_and(|p| unsafe { (*p).kind } != PENDING_IDLE)
}

/// Takes this thread's stash if it belongs to the call returning now (`f`), marking the slot
/// idle; returns it with the call's hook. A stash of another call means this return is of a
/// nested call (see the module comment): left to the outer one.
///
/// Which call returns: the full object's attach cookie names the function; the compatible
/// object has none, and matches the stack pointer instead, which at a return is one word
/// above the entry's (the return address popped). A call chained to another by a jump
/// (`realloc(NULL, n)` to `malloc`) shares its frame: both returns come at once, the inner
/// first, which takes the stash; the second finds it taken at the same point and is not a
/// missed entry.
///
/// Returns the slot itself, not a copy: until this program ends nothing else writes it (the
/// thread is in this probe, and other threads have their own slots), and the return probe
/// uses its stack window.
#[inline(always)]
fn take_pending(pid_tgid: u64, f: Fired) -> Option<(&'static mut Pending, u32)> {
    let Some(slot) = PENDING.get_ptr_mut(pid_tgid) else {
        count_drop(DropReason::MissingEntry);
        return None;
    };
    // SAFETY: this thread's own slot, see above.
    let pending = unsafe { &mut *slot };
    if crate::COMPAT {
        if pending.kind == PENDING_IDLE {
            // Kept for a third call in the chain (`reallocarray(NULL, ..)` to `realloc` to
            // `malloc`); the next stash resets it.
            if pending.taken_sp != f.sp {
                count_drop(DropReason::MissingEntry);
            }
            return None;
        }
        count_hit(pending.kind, true);
        if pending.entry_sp.wrapping_add(8) != f.sp {
            return None;
        }
        pending.taken_sp = f.sp;
    } else {
        if pending.kind == PENDING_IDLE {
            count_drop(DropReason::MissingEntry);
            return None;
        }
        if pending.kind != f.func {
            return None;
        }
    }
    let kind = pending.kind;
    pending.kind = PENDING_IDLE;
    Some((pending, kind))
}

/// Entry of a call that returns a new block of `size` bytes.
#[inline(always)]
pub fn alloc_enter(f: Fired, size: u64, flags: u32) {
    let Some(pid_tgid) = traced_pid_tgid() else { return };
    stash(pid_tgid, Call { size, kind: f.func, flags, sp: f.sp, ..Call::default() }, true);
}

/// Entry of `posix_memalign(out_ptr, alignment, size)`.
#[inline(always)]
pub fn posix_memalign_enter(f: Fired, out_ptr: u64, size: u64) {
    let Some(pid_tgid) = traced_pid_tgid() else { return };
    stash(pid_tgid, Call { size, out_ptr, kind: f.func, sp: f.sp, ..Call::default() }, true);
}

/// Return of a call that returns the new block: record `ret`.
#[inline(always)]
pub fn alloc_exit<C: EbpfContext>(ctx: &C, f: Fired, ret: u64) {
    let Some(pid_tgid) = traced_pid_tgid() else { return };
    let Some((pending, func)) = take_pending(pid_tgid, f) else { return };
    // NULL: the allocation failed, nothing is outstanding.
    if ret != 0 {
        record(ctx, pid_tgid, ret, func, pending);
    }
}

/// Return of `posix_memalign`: on success (0) the block is in `*out_ptr`.
#[inline(always)]
pub fn posix_memalign_exit<C: EbpfContext>(ctx: &C, f: Fired, ret: u32) {
    let Some(pid_tgid) = traced_pid_tgid() else { return };
    let Some((pending, func)) = take_pending(pid_tgid, f) else { return };
    if ret != 0 || pending.flags & PENDING_UNSAMPLED != 0 {
        return;
    }
    // SAFETY: reads user memory through the helper, which handles faults.
    match unsafe { bpf_probe_read_user(pending.out_ptr as *const u64) } {
        Ok(addr) if addr != 0 => {
            record(ctx, pid_tgid, addr, func, pending);
        }
        Ok(_) => {}
        Err(_) => count_drop(DropReason::ReadFailed),
    }
}

/// `free(ptr)` and the like. `note`: a freeing function other than `free` itself, which may
/// pass the pointer on to `free`.
#[inline(always)]
pub fn free_enter(ptr: u64, note: bool) {
    if ptr == 0 {
        return;
    }
    let Some(pid_tgid) = traced_pid_tgid() else { return };
    if note && LAST_FREE.insert(pid_tgid, ptr, u64::from(BPF_ANY)).is_err() {
        count_drop(DropReason::PendingFull);
    }
    // The compatible object notes the pointer for the unmap `free` may make next (see
    // `munmap`), in the thread's slot, made for it if the thread has not allocated yet.
    if crate::COMPAT
        && let Some(slot) = PENDING.get_ptr_mut(pid_tgid).or_else(|| new_slot(pid_tgid))
    {
        // SAFETY: this thread's own slot.
        unsafe { (*slot).freed = ptr };
    }
    if remove_record(AllocKey::new(ptr, tgid(pid_tgid))).is_some() {
        return;
    }
    // Inside a hooked call (glibc's realloc(p, 0) frees p through free(); realloc's entry
    // already took p out): not an unknown pointer.
    if in_call(pid_tgid) {
        return;
    }
    // Freed by a wrapper a moment ago (je_free -> free): counted there.
    if let Some(last) = LAST_FREE.get_ptr(pid_tgid)
        // SAFETY: live map value, read only.
        && unsafe { *last } == ptr
    {
        return;
    }
    count_unknown_free();
}

/// Entry of `realloc(ptr, size)` or `reallocarray`. The old block's record is taken out here,
/// not at the return: once realloc has freed it internally another thread may be handed the
/// same address, and a removal at the return would then delete that thread's record. A failed
/// realloc leaves the old block live, so its record travels in the stash and is put back at
/// the return. `flags` has `PENDING_OVERFLOW` when reallocarray's product overflowed (it then
/// fails without touching `ptr`).
#[inline(always)]
pub fn realloc_enter(f: Fired, ptr: u64, size: u64, flags: u32) {
    let Some(pid_tgid) = traced_pid_tgid() else { return };
    let call = Call { size, old_ptr: ptr, kind: f.func, flags, sp: f.sp, ..Call::default() };
    // Stash first: a nested realloc (inside reallocarray) must not touch the old block, which
    // the outer call has already taken out.
    let Some(stashed) = stash(pid_tgid, call, true) else { return };
    if ptr == 0 || flags & PENDING_OVERFLOW != 0 {
        return;
    }
    let Some(old) = remove_record(AllocKey::new(ptr, tgid(pid_tgid))) else {
        count_unknown_free();
        return;
    };
    // SAFETY: this thread's own stash; no other program writes it.
    unsafe {
        (*stashed).old = old;
        (*stashed).has_old = 1;
    }
}

/// Return of `realloc` or `reallocarray`.
#[inline(always)]
pub fn realloc_exit<C: EbpfContext>(ctx: &C, f: Fired, ret: u64) {
    let Some(pid_tgid) = traced_pid_tgid() else { return };
    let Some((pending, func)) = take_pending(pid_tgid, f) else { return };
    if ret == 0 {
        // realloc(p, n > 0) failed: p is still allocated. realloc(p, 0) returning NULL freed p.
        if pending.size != 0 && pending.has_old != 0 {
            let old = &pending.old;
            let owner = old.owner_word();
            leak_insert_record(pending.old_ptr, old.size, old.timestamp_ns, old.stack_id, owner);
        }
        return;
    }
    record(ctx, pid_tgid, ret, func, pending);
}

/// This thread's stack buffer, created on its first allocation.
#[inline(always)]
fn scratch(pid_tgid: u64) -> Option<*mut StackTrace> {
    if let Some(buf) = STACK_SCRATCH.get_ptr_mut(pid_tgid) {
        return Some(buf);
    }
    insert_zeroed(&STACK_SCRATCH, &ZERO_STACK, pid_tgid)
}

/// Records the block `addr` of the call `call` to hook `func` with the current user stack.
/// Its time is the call's start: one clock read per allocation, not two.
#[inline(always)]
fn record<C: EbpfContext>(
    ctx: &C,
    pid_tgid: u64,
    addr: u64,
    func: u32,
    call: &mut Pending,
) -> bool {
    if call.flags & PENDING_UNSAMPLED != 0 {
        return false;
    }
    let stack_id = take_stack(ctx, pid_tgid, call);
    let size = call.size;
    let owner = u64::from(func) << 32 | (pid_tgid >> 32);
    leak_insert_record(addr, size, call.start_ns, stack_id, owner);
    if TRACE.load() != 0 {
        leak_trace_alloc(u64::from(func), size, addr, stack_id);
    }
    true
}

/// Logs one allocation (`--bpf-trace`). A global function: the log record is assembled in
/// its own frame, not in every return program's (which shares 512 bytes with the walk's).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn leak_trace_alloc(func: u64, size: u64, addr: u64, stack_id: u64) -> i32 {
    // aya-log writes to its ring buffer; the context argument is unused.
    debug!(&(), "alloc kind={} size={} addr={:x} stack={:x}", func, size, addr, stack_id);
    0
}

/// Collects the user stack into STACKS and returns its id (a hash of the frames).
///
/// Called from return probes only: at a function's entry the frame-pointer walk misses the
/// immediate caller (its frame is not set up yet), at the return the registers are the
/// caller's.
///
/// Walks the frame pointers itself instead of calling `bpf_get_stack`: the kernel's walk reads
/// a frame before checking it, so the zero frame pointer at the bottom of every stack
/// (`_start` clears it) faulted on each call, and the fault cost more than the whole walk
/// (`alloc_exit` went from 1960 to 1040 ns a run here).
///
/// The first walk only hashes, reading frames from `window`, a copy of the top of the stack
/// taken in one read (one read per frame cost 40% of `alloc_exit`). Nearly every stack has
/// been seen before, and then nothing else is needed: no per-thread buffer is looked up or
/// written. A new stack is walked again by [`leak_store_stack`] (the same registers over the
/// same memory give the same frames).
///
/// With tables, a walk that repeats the thread's last one (same registers, tables and stack
/// words read: an allocation site called in a loop) takes its stack from the memo in the
/// thread's slot (`leak_common::StackMemo`): a comparison of the words instead of a step and
/// a row lookup per frame, and no STACKS lookup, as the memo's stack was stored.
#[inline(always)]
fn take_stack<C: EbpfContext>(ctx: &C, pid_tgid: u64, call: &mut Pending) -> u64 {
    // SAFETY: a uprobe's context is its pt_regs.
    let regs = unsafe { &*(ctx.as_ptr() as *const pt_regs) };
    let (ip, sp, fp) = (regs.rip, regs.rsp, regs.rbp);
    // SAFETY: the window's bytes, written only through this slice.
    let bytes = unsafe {
        core::slice::from_raw_parts_mut(
            call.window.as_mut_ptr().cast::<u8>(),
            STACK_WINDOW_WORDS * 8,
        )
    };
    // Fails when the window runs past the stack's mapping: frames are then read one by one.
    // SAFETY: the helper handles faults.
    // An unaligned `sp` (never at a call's return on x86-64) would misplace the frames.
    if crate::COMPAT {
        // One walk straight into the thread's buffer, in a global function verified once:
        // the compatible object's walk is a bounded loop, too costly to verify twice per
        // program (and no memo: it would add to what the verifier follows).
        return leak_store_stack(pid_tgid, ip, sp, fp);
    }
    let copied = sp % 8 == 0 && unsafe { bpf_probe_read_user_buf(sp as *const u8, bytes) }.is_ok();
    let window = if copied { call.window.as_mut_ptr() } else { core::ptr::null_mut() };
    let memo = &raw mut call.memo;
    let mut key = 0;
    if UNWIND.load() != UNWIND_FP && copied {
        let generation = UNWIND_GENERATION.get(0).copied().unwrap_or(0);
        key = cache_key(tgid(pid_tgid), generation);
        // SAFETY: this thread's own slot (see `take_pending`).
        if let Some(hash) = memoized(unsafe { &*memo }, key, (ip, sp, fp), window) {
            return hash;
        }
    }
    let hash = match tables(pid_tgid) {
        Some(maps) => {
            let no_ips = core::ptr::null_mut();
            let w = &raw mut call.walk;
            walk_tables(maps, tgid(pid_tgid), (ip, sp, fp), no_ips, window, (memo, key), w)
        }
        None => walk_stack(ip, sp, fp, core::ptr::null_mut(), window.cast_const()),
    };
    if STACKS.get_ptr(hash).is_none() && leak_store_stack(pid_tgid, ip, sp, fp) == STACK_ID_NONE {
        // SAFETY: as above.
        unsafe { (*memo).valid = 0 };
        return STACK_ID_NONE;
    }
    hash
}

/// The unwind tables of the thread's process, unless stacks are walked by frame pointers
/// (then, or without tables, the frame-pointer walk is used).
#[inline(always)]
fn tables(pid_tgid: u64) -> Option<&'static leak_common::ProcessMaps> {
    if UNWIND.load() == UNWIND_FP {
        return None;
    }
    // SAFETY: a live map value (not copied: the stack is for what cannot go elsewhere).
    UNWIND_MAPS.get_ptr(tgid(pid_tgid)).map(|p| unsafe { &*p })
}

/// Walks the frame-pointer chain from `ip`/`sp`/`fp` and returns the stack's hash (never
/// `STACK_ID_NONE`). With `ips` non-null, also stores the frames there, ended by a zero. With
/// `window` non-null, it holds the `STACK_WINDOW_WORDS` words at `sp`: frames inside it are
/// taken from there.
#[inline(always)]
fn walk_stack(ip: u64, sp: u64, mut fp: u64, ips: *mut u64, window: *const u64) -> u64 {
    let store = !ips.is_null();
    if store {
        // SAFETY: index 0 of a StackTrace.
        unsafe { *ips = ip };
    }
    let mut hash: u64 = 0x9e37_79b9_7f4a_7c15;
    hash = (hash ^ ip).wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 32;
    let mut n = 1;
    while n < MAX_STACK_DEPTH {
        // A frame pointer lies above the stack pointer, aligned, and each caller's above its
        // callee's: anything else ends the chain (reading it would fault, which costs more
        // than the whole walk).
        if fp < sp || fp & 7 != 0 {
            break;
        }
        let off = fp - sp;
        // `off <= 8 * (WORDS - 2)`, not `off / 8 + 1 < WORDS`: the verifier bounds the byte
        // offset, not the index.
        let frame = if !window.is_null() && off <= (STACK_WINDOW_WORDS as u64 - 2) * 8 {
            let i = (off >> 3) as usize;
            // SAFETY: i + 1 < STACK_WINDOW_WORDS.
            unsafe { [*window.add(i), *window.add(i + 1)] }
        } else {
            // SAFETY: the helper handles faults.
            let Ok(frame) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
                break;
            };
            frame
        };
        if frame[1] == 0 {
            break;
        }
        if store {
            // SAFETY: n < MAX_STACK_DEPTH, inside the StackTrace.
            unsafe { *ips.add(n) = frame[1] };
        }
        hash = (hash ^ frame[1]).wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 32;
        n += 1;
        if frame[0] <= fp {
            break;
        }
        fp = frame[0];
    }
    if store && n < MAX_STACK_DEPTH {
        // SAFETY: n < MAX_STACK_DEPTH: ends the stack (what follows is left from earlier).
        unsafe { *ips.add(n) = 0 };
        // The end code after it (`StackTrace::end`): this walk records none. Masked on its
        // own, for the verifier.
        let after = (n + 1) & 127;
        if after < MAX_STACK_DEPTH && n + 1 < MAX_STACK_DEPTH {
            // SAFETY: after < MAX_STACK_DEPTH.
            unsafe { *ips.add(after) = leak_common::STACK_END_UNKNOWN };
        }
    }
    hash ^= n as u64;
    if hash == STACK_ID_NONE {
        hash = 1;
    }
    hash
}

/// Stores a stack not in STACKS yet: walks it again into the thread's buffer and inserts it.
/// Returns its id, or `STACK_ID_NONE` when the thread has no buffer (the stack is then lost).
/// A BPF global function (scalar arguments): verified once on its own instead of a second
/// 127-frame loop inlined into every return program.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn leak_store_stack(pid_tgid: u64, ip: u64, sp: u64, fp: u64) -> u64 {
    store_stack(&STACKS, pid_tgid, ip, sp, fp)
}

/// [`leak_store_stack`] into the growth profile's `FAULT_STACKS`, which a `perf_event`
/// program may use (it is preallocated, `STACKS` is not).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn leak_store_fault_stack(pid_tgid: u64, ip: u64, sp: u64, fp: u64) -> u64 {
    store_stack(&FAULT_STACKS, pid_tgid, ip, sp, fp)
}

/// The walk of [`leak_store_stack`] into `stacks`.
#[inline(always)]
fn store_stack(stacks: &HashMap<u64, StackTrace>, pid_tgid: u64, ip: u64, sp: u64, fp: u64) -> u64 {
    let Some(buf) = scratch(pid_tgid) else {
        count_drop(DropReason::StackMissing);
        return STACK_ID_NONE;
    };
    let hash = match tables(pid_tgid) {
        Some(maps) => {
            // The walk's state: in the thread's slot, which the hashing walk is done with.
            let Some(slot) = PENDING.get_ptr_mut(pid_tgid) else {
                count_drop(DropReason::StackMissing);
                return STACK_ID_NONE;
            };
            let (no_window, no_memo) = (core::ptr::null_mut(), core::ptr::null_mut());
            // SAFETY: a field of the thread's own slot.
            let w = unsafe { &raw mut (*slot).walk };
            walk_tables(
                maps,
                tgid(pid_tgid),
                (ip, sp, fp),
                buf.cast::<u64>(),
                no_window,
                (no_memo, 0),
                w,
            )
        }
        None => walk_stack(ip, sp, fp, buf.cast::<u64>(), core::ptr::null()),
    };
    // Known already (always possible for the compatible object, which walks each time
    // without looking first): a lookup, lock-free, instead of an insert that takes the
    // bucket's lock to find it there.
    if stacks.get_ptr(hash).is_some() {
        return hash;
    }
    // SAFETY: `buf` is a valid map value of the map's value type.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value would copy 1016 bytes onto the 512-byte BPF stack"
    )]
    let inserted = stacks.insert(hash, unsafe { &*buf }, u64::from(BPF_NOEXIST));
    match inserted {
        // EEXIST: another CPU inserted the same stack first.
        Ok(()) | Err(EEXIST) => {}
        Err(_) => count_drop(DropReason::StackMapFull),
    }
    hash
}

/// A page fault at `addr` in profiled thread `pid_tgid`, with the user registers of the code that
/// touched it (`ip` 0: not known, see `DropReason::FaultInKernel`). Records the page with the
/// stack and the time; a later fault on the same page replaces the record. A fault on a page
/// already recorded means it was released and touched again (a scratch buffer mapped and
/// unmapped at the same address between two snapshots), or a read that mapped the zero page
/// is followed by the write that makes it the process's own: in both the latest toucher is
/// the right one, and the fresh time keeps a short-lived buffer young (`--min-age`). Faults
/// are few (they follow the growth, not the calls), so every one walks its stack: no memo,
/// no window.
#[inline(always)]
pub fn page_fault(pid_tgid: u64, addr: u64, (ip, sp, fp): (u64, u64, u64)) {
    let key = AllocKey::new(addr & !(PAGE - 1), tgid(pid_tgid));
    // The walk by tables keeps its state in the thread's slot: a thread that never called a
    // hooked function has none yet. The fault's `ip` is the instruction that faulted, not a
    // return address: plus one, as the walk and the symbolizer look up the instruction
    // before each frame's address.
    let stack_id = if ip == 0 {
        STACK_ID_NONE
    } else if PENDING.get_ptr(pid_tgid).is_some() || new_slot(pid_tgid).is_some() {
        leak_store_fault_stack(pid_tgid, ip.wrapping_add(1), sp, fp)
    } else {
        count_drop(DropReason::StackMissing);
        STACK_ID_NONE
    };
    let info = AllocInfo {
        size: PAGE,
        timestamp_ns: now_ns(),
        stack_id,
        tgid: tgid(pid_tgid),
        kind: FAULT_HOOK,
    };
    if PAGES.insert(key, info, 0).is_err() {
        count_drop(DropReason::PageMapFull);
    }
}

/// `MAP_FAILED`.
const MAP_FAILED: u64 = u64::MAX;
/// `MAP_SHARED | MAP_PRIVATE | MAP_SHARED_VALIDATE` mask.
const MAP_TYPE: u64 = 0x0f;
const MAP_PRIVATE: u64 = 0x02;
const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;
/// Thread stacks (glibc's `pthread_create` maps them with it): not heap memory.
const MAP_STACK: u64 = 0x2_0000;
const PAGE: u64 = 4096;
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
