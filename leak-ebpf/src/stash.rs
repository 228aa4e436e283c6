//! The per-thread stash: what an allocator call's entry probe read, kept in the thread's
//! `PENDING` slot until its return probe records the block. Also the thread's clock, its
//! sampling countdown, and the filter on the traced process.
//!
//! One stash per thread: a hooked function called by a hooked function (glibc's
//! `posix_memalign` calls `malloc`; `realloc(NULL, n)` and `reallocarray` are tail calls to
//! `malloc` and `realloc`; `realloc(p, 0)` calls `free(p)`) finds the outer call's stash at
//! entry and does nothing: the outer call accounts for the block. Deciding at entry keeps the
//! result independent of the order in which chained return probes run.
use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{
        bpf_get_current_pid_tgid, generated::bpf_get_prandom_u32, generated::bpf_jiffies64,
        generated::bpf_ktime_get_ns,
    },
    maps::{Array, LruHashMap},
};
use leak_common::{
    DropReason, PENDING_IDLE, PENDING_UNSAMPLED, Pending, SAMPLE_GAP_BITS, SAMPLE_GAP_SHIFT,
    STALE_PENDING_NS, sample_gap, sample_step,
};

use crate::maps::{
    FILTER_TGID, PENDING, SAMPLE_GAPS, SAMPLE_MEAN, ZERO_PENDING, count_drop, count_hit,
};

/// The process (thread group) of a `pid_tgid`.
#[inline(always)]
pub(crate) fn tgid(pid_tgid: u64) -> u32 {
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
pub(crate) fn now_ns() -> u64 {
    // SAFETY: helper without pointer arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The arguments of an allocator call, as its entry probe read them.
#[derive(Clone, Copy, Default)]
pub(crate) struct Call {
    pub size: u64,
    pub old_ptr: u64,
    pub out_ptr: u64,
    pub kind: u32,
    pub flags: u32,
    /// The compatible object: the stack pointer at entry (see `Pending::entry_sp`).
    pub sp: u64,
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
pub(crate) fn stash(pid_tgid: u64, call: Call, sample: bool) -> Option<*mut Pending> {
    stash_with(pid_tgid, call, sample, false)
}

/// [`stash`]; `skip`: a call sampling leaves out is not stashed either (its thread's
/// countdown still counts it), for a session's entry, which then skips the call's return.
#[inline(always)]
pub(crate) fn stash_with(
    pid_tgid: u64,
    call: Call,
    sample: bool,
    skip: bool,
) -> Option<*mut Pending> {
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
            if skip {
                return None;
            }
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
pub(crate) fn thread_clock(slot: Option<*mut Pending>) -> u64 {
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
pub(crate) fn new_slot(pid_tgid: u64) -> Option<*mut Pending> {
    let slot = insert_zeroed(&PENDING, &ZERO_PENDING, pid_tgid)?;
    // SAFETY: this thread's own new slot. Kind 0 would be hook 0's call in flight.
    unsafe { (*slot).kind = PENDING_IDLE };
    Some(slot)
}

/// Inserts a zeroed value for this thread into `map` and returns it. From a zeroed map value
/// (`zero`'s only entry): the per-thread values do not fit on the 512-byte BPF stack.
#[inline(always)]
pub(crate) fn insert_zeroed<V>(
    map: &LruHashMap<u64, V>,
    zero: &Array<V>,
    pid_tgid: u64,
) -> Option<*mut V> {
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
pub(crate) fn decide_sample(left: u64, size: u64) -> (bool, u64) {
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
pub(crate) fn count_unknown_free() {
    if SAMPLE_MEAN.load() == 0 {
        count_drop(DropReason::UnknownFree);
    }
}

/// This thread is inside a hooked call.
#[inline(always)]
pub(crate) fn in_call(pid_tgid: u64) -> bool {
    // SAFETY: live map value, read only.
    PENDING.get_ptr(pid_tgid).is_some_and(|p| unsafe { (*p).kind } != PENDING_IDLE)
}

/// Takes this thread's stash if it belongs to the call returning now (`f`), marking the slot
/// idle; returns it with the call's hook. A stash of another call means this return is of a
/// nested call (see the module comment): left to the outer one.
///
/// Which call returns: the full object's attach cookie names the function; the compatible
/// object has none, and matches the stack pointer instead, which at a return is
/// `regs::RETURN_POPS` above the entry's (x86-64's return pops its return address). A call chained to another by a jump
/// (`realloc(NULL, n)` to `malloc`) shares its frame: both returns come at once, the inner
/// first, which takes the stash; the second finds it taken at the same point and is not a
/// missed entry.
///
/// Returns the slot itself, not a copy: until this program ends nothing else writes it (the
/// thread is in this probe, and other threads have their own slots), and the return probe
/// uses its stack window.
#[inline(always)]
pub(crate) fn take_pending(pid_tgid: u64, f: Fired) -> Option<(&'static mut Pending, u32)> {
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
        if pending.entry_sp.wrapping_add(crate::regs::RETURN_POPS) != f.sp {
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
