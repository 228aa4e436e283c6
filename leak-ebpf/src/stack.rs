//! The user stack of an allocation or a page fault, walked in the probe: by frame pointers,
//! or with unwind tables (#7) for code without them. Both walks hash the frames the same way
//! ([`mix`], [`stack_id`]): the hash is the stack's id in `STACKS`, so the user-space unwinder
//! and the tests can check one walk against the other.
//!
//! The table walk looks up the row of each return address (`unwind`) and steps to the caller:
//! CFA from the stack or frame pointer, the return address and the frame pointer restored
//! from where the row says they were saved. The same algorithm as `leak_user::trace::unwind::unwind`, which the tests
//! check against real stacks. One frame per `bpf_loop` iteration: the verifier checks the step
//! once, instead of a 127-frame loop with two searches inside. For that, nothing in the step
//! may be a value the verifier tracks exactly from one iteration to the next: the frame count
//! is the loop's index (unknown to it), and both searches index arrays through map lookups.
#![expect(
    clippy::cast_possible_truncation,
    reason = "stack words as offsets and indexes: each bounded by the check before it"
)]
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_NOEXIST, pt_regs},
    helpers::{bpf_probe_read_user, bpf_probe_read_user_buf, generated::bpf_loop},
    maps::HashMap,
};
use core::ptr::read_volatile;
use leak_common::{
    CFA_FP, CFA_NONE, CFA_OUTERMOST, CFA_SP, DropReason, FP_SAME, MAX_STACK_DEPTH, MEMO_NO_READ,
    MEMO_READS, Pending, ProcessMaps, RA_IN_LR, STACK_END_BAD_FRAME, STACK_END_COMPLETE,
    STACK_END_NO_UNWIND_INFO, STACK_END_UNKNOWN, STACK_END_UNSUPPORTED, STACK_ID_NONE,
    STACK_WINDOW_WORDS, StackMemo, StackTrace, UNWIND_AUTO, UNWIND_FP, WalkState, unpack_rule,
};

use crate::{
    maps::{
        FAULT_STACKS, PENDING, RA_MASK, ROW_CACHE, STACK_SCRATCH, STACKS, UNWIND,
        UNWIND_GENERATION, UNWIND_MAPS, ZERO_STACK, count_drop,
    },
    stash::{insert_zeroed, tgid},
    unwind::leak_find_row,
};

/// -EEXIST as returned by map helpers.
const EEXIST: i32 = -17;

/// Where every stack's hash starts.
const HASH_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Mixes frame `ip` into `hash`.
#[inline(always)]
pub fn mix(hash: u64, ip: u64) -> u64 {
    let h = (hash ^ ip).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 32)
}

/// The id of a stack of `n` frames whose frames mixed into `hash`: never `STACK_ID_NONE`.
#[inline(always)]
fn stack_id(hash: u64, n: u64) -> u64 {
    let id = hash ^ n;
    if id == STACK_ID_NONE { 1 } else { id }
}

/// This thread's stack buffer, created on its first allocation.
#[inline(always)]
fn scratch(pid_tgid: u64) -> Option<*mut StackTrace> {
    if let Some(buf) = STACK_SCRATCH.get_ptr_mut(pid_tgid) {
        return Some(buf);
    }
    insert_zeroed(&STACK_SCRATCH, &ZERO_STACK, pid_tgid)
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
pub(crate) fn take_stack<C: EbpfContext>(ctx: &C, pid_tgid: u64, call: &mut Pending) -> u64 {
    // SAFETY: a uprobe's context is its pt_regs.
    let (ip, sp, fp) = crate::regs::walk_regs(unsafe { &*(ctx.as_ptr() as *const pt_regs) });
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
            walk_tables(maps, tgid(pid_tgid), (ip, sp, fp, 0), no_ips, window, (memo, key), w)
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
    let mut hash = mix(HASH_SEED, ip);
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
        let ra = frame[1] & RA_MASK.load();
        if ra == 0 {
            break;
        }
        if store {
            // SAFETY: n < MAX_STACK_DEPTH, inside the StackTrace.
            unsafe { *ips.add(n) = ra };
        }
        hash = mix(hash, ra);
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
    stack_id(hash, n as u64)
}

/// Stores a stack not in STACKS yet: walks it again into the thread's buffer and inserts it.
/// Returns its id, or `STACK_ID_NONE` when the thread has no buffer (the stack is then lost).
/// A BPF global function (scalar arguments): verified once on its own instead of a second
/// 127-frame loop inlined into every return program.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn leak_store_stack(pid_tgid: u64, ip: u64, sp: u64, fp: u64) -> u64 {
    // A return probe's: no link register (see `WalkState::lr`).
    store_stack(&STACKS, pid_tgid, (ip, sp, fp, 0))
}

/// [`leak_store_stack`] into the growth profile's `FAULT_STACKS`, which a `perf_event`
/// program may use (it is preallocated, `STACKS` is not), from where a fault stopped the
/// thread: the link register `lr` may hold the first frame's return address (aarch64).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn leak_store_fault_stack(pid_tgid: u64, ip: u64, sp: u64, fp: u64, lr: u64) -> u64 {
    store_stack(&FAULT_STACKS, pid_tgid, (ip, sp, fp, lr))
}

/// The walk of [`leak_store_stack`] into `stacks`, from `(ip, sp, fp, lr)`.
#[inline(always)]
fn store_stack(
    stacks: &HashMap<u64, StackTrace>,
    pid_tgid: u64,
    (ip, sp, fp, lr): (u64, u64, u64, u64),
) -> u64 {
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
                (ip, sp, fp, lr),
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

/// `bpf_loop`'s context: where the walk's state is, and two buffers. Only pointers, on the
/// stack: the state itself is in the thread's `Pending` slot (`leak_common::WalkState`), off
/// the 512-byte stack; a pointer cannot go there (the verifier would give it back as a number).
#[repr(C)]
pub struct Walk {
    /// The state.
    pub w: *mut WalkState,
    /// Where to store the frames (a `StackTrace`), or null to only hash them.
    pub ips: *mut u64,
    /// `STACK_WINDOW_WORDS` words copied from `w.sp0`, or null. Moved up the stack as the
    /// walk leaves it (see [`read_pair`]).
    pub window: *mut u64,
}

/// The packed row for `pc` (see `unwind::leak_find_row`), from `ROW_CACHE` when there: a stack's
/// frames repeat from one allocation to the next, and one lookup costs less than two
/// searches.
#[inline(always)]
fn cached_row(w: &WalkState, pc: u64) -> u64 {
    let key = mix(w.cache_key, pc);
    let slot = (key >> 32) as u32 & (leak_common::ROW_CACHE_SLOTS - 1);
    let Some(entry) = ROW_CACHE.get_ptr_mut(slot) else {
        return leak_find_row(u64::from(w.maps_first), u64::from(w.maps_n), pc);
    };
    // SAFETY: a live map value; another CPU may be writing it (see ROW_CACHE).
    let (tag, packed) = unsafe { ((*entry)[0], (*entry)[1]) };
    if tag == key ^ mix(0, packed) {
        return packed;
    }
    let packed = leak_find_row(u64::from(w.maps_first), u64::from(w.maps_n), pc);
    // SAFETY: as above.
    unsafe {
        (*entry)[0] = key ^ mix(0, packed);
        (*entry)[1] = packed;
    }
    packed
}

/// Two stack words at `addr`: from the window when they lie in it. Past it, the window is
/// read again from `addr`: a read costs about the same for 16 bytes as for 512, and the
/// next frames lie just above (deep stacks, as in servers, went from a read per frame to
/// one per 512 bytes of stack). Without a window, or where the stack ends within 512 bytes
/// (the read fails), the two words are read alone.
#[inline(always)]
///
/// `slot`: where in `w.reads` this read is noted for the memo (two per frame, from the loop
/// index: a count kept in the context would be a value the verifier tracks exactly from one
/// step to the next, which multiplied its states past its limit).
fn read_pair(walk: &mut Walk, w: &mut WalkState, addr: u64, slot: u64) -> Option<[u64; 2]> {
    const LAST: u64 = (STACK_WINDOW_WORDS as u64 - 2) * 8;
    if !walk.window.is_null() && addr.is_multiple_of(8) {
        if addr < w.sp0 || addr - w.sp0 > LAST {
            // SAFETY: the window's bytes, written only through this slice.
            let bytes = unsafe {
                core::slice::from_raw_parts_mut(walk.window.cast::<u8>(), STACK_WINDOW_WORDS * 8)
            };
            // SAFETY: the helper handles faults.
            if unsafe { bpf_probe_read_user_buf(addr as *const u8, bytes) }.is_ok() {
                w.sp0 = addr;
            } else {
                // A failed read zeroes the buffer: no window from here on.
                walk.window = core::ptr::null_mut();
            }
        }
        let off = addr.wrapping_sub(w.sp0);
        // A byte offset bound, for the verifier (see the frame-pointer walk).
        if !walk.window.is_null() && off <= LAST {
            let i = (off >> 3) as usize;
            if w.sp0 == w.sp_start && slot < MEMO_READS as u64 {
                w.reads[(slot as usize) & (MEMO_READS - 1)] = i as u8;
            } else {
                w.memo_ok = 0;
            }
            // SAFETY: i + 1 < STACK_WINDOW_WORDS.
            return Some(unsafe { [*walk.window.add(i), *walk.window.add(i + 1)] });
        }
    }
    w.memo_ok = 0;
    // SAFETY: the helper handles faults.
    unsafe { bpf_probe_read_user(addr as *const [u64; 2]) }.ok()
}

/// The digest of the window pairs at `reads[..n]` (see `StackMemo`).
#[inline(always)]
pub fn window_digest(window: *const u64, reads: &[u8; MEMO_READS]) -> u64 {
    let mut d = 0x2545_f491_4f6c_dd1d;
    let mut j = 0;
    while j < MEMO_READS {
        // Loaded afresh and compared unmasked (see `walk_tables`): MEMO_NO_READ and
        // anything else past the window's last pair is skipped.
        // SAFETY: an element of `reads`.
        let i = usize::from(unsafe { read_volatile(&raw const reads[j]) });
        if i < STACK_WINDOW_WORDS - 1 {
            // SAFETY: i + 1 < STACK_WINDOW_WORDS.
            d = unsafe { mix(mix(d, *window.add(i)), *window.add(i + 1)) };
        }
        j += 1;
    }
    d
}

/// The row cache's key for process `tgid` with mappings of generation `generation`.
#[inline(always)]
pub fn cache_key(tgid: u32, generation: u64) -> u64 {
    mix(u64::from(tgid), generation)
}

/// One frame: from `w`'s registers to its caller's, which is frame `index + 1`. Returns 1
/// (stop) once the walk ends.
#[inline(never)]
extern "C" fn step(index: u64, walk: *mut Walk) -> i64 {
    // SAFETY: our own context, on the caller's stack, and the state it points to (the
    // thread's own slot).
    let (walk, w) = unsafe { (&mut *walk, &mut *(*walk).w) };
    let n = index + 1;
    if n >= MAX_STACK_DEPTH as u64 {
        return 1;
    }
    // A return address: the call is the instruction before it.
    let row = Some(unpack_rule(cached_row(w, w.ip.wrapping_sub(1))));
    let (cfa, fp_at, ra_at) = match row {
        Some(r) if r.cfa_reg == CFA_SP || r.cfa_reg == CFA_FP => {
            let base = if r.cfa_reg == CFA_SP { w.sp } else { w.bp };
            let cfa = base.wrapping_add_signed(i64::from(r.cfa_offset));
            let fp_at =
                (r.fp_offset != FP_SAME).then(|| cfa.wrapping_add_signed(i64::from(r.fp_offset)));
            // Still in the link register (aarch64): only the frame a walk starts in can be,
            // and only a fault's registers have it (see `WalkState::lr`). 0 says so.
            let ra_at = if r.ra_offset == RA_IN_LR {
                if index != 0 || w.lr == 0 {
                    w.end = STACK_END_UNSUPPORTED;
                    return 1;
                }
                0
            } else {
                cfa.wrapping_add_signed(i64::from(r.ra_offset) * 8)
            };
            (cfa, fp_at, ra_at)
        }
        Some(r) if r.cfa_reg == CFA_OUTERMOST => {
            w.end = STACK_END_COMPLETE;
            return 1;
        }
        Some(r) if r.cfa_reg != CFA_NONE => {
            w.end = STACK_END_UNSUPPORTED;
            return 1;
        }
        // No table here (code without one, such as JIT output): with `auto`, the frame
        // pointer, which such code usually keeps: the frame record (saved frame pointer,
        // return address) it points to, on both architectures.
        _ if UNWIND.load() == UNWIND_AUTO && w.bp > w.sp && w.bp.is_multiple_of(8) => {
            (w.bp.wrapping_add(16), Some(w.bp), w.bp.wrapping_add(8))
        }
        _ => {
            w.end = STACK_END_NO_UNWIND_INFO;
            return 1;
        }
    };
    // The caller's frame lies above this one, or is this one's where a call pushed nothing
    // and the return address is still in the link register (an aarch64 leaf).
    if cfa < w.sp || (cfa == w.sp && ra_at != 0) {
        w.end = STACK_END_BAD_FRAME;
        return 1;
    }
    // The return address, and the saved frame pointer when it sits right below it (a frame
    // record: x86-64's push of rbp after the call's push, aarch64's `stp x29, x30`): one read.
    let (below, ra) = if ra_at == 0 {
        (0, w.lr)
    } else {
        let Some([below, ra]) = read_pair(walk, w, ra_at.wrapping_sub(8), 2 * index) else {
            w.end = STACK_END_BAD_FRAME;
            return 1;
        };
        (below, ra)
    };
    // Signed on aarch64 (pointer authentication): the address is the low bits.
    let ra = ra & RA_MASK.load();
    if let Some(at) = fp_at {
        if ra_at != 0 && at == ra_at.wrapping_sub(8) {
            w.bp = below;
        } else {
            let Some([saved, _]) = read_pair(walk, w, at, 2 * index + 1) else {
                w.end = STACK_END_BAD_FRAME;
                return 1;
            };
            w.bp = saved;
        }
    }
    if ra == 0 {
        w.end = STACK_END_COMPLETE;
        return 1;
    }
    if !walk.ips.is_null() {
        // SAFETY: n < MAX_STACK_DEPTH, inside the StackTrace.
        unsafe { *walk.ips.add(n as usize) = ra };
    }
    w.hash = mix(w.hash, ra);
    w.n = n + 1;
    w.ip = ra;
    w.sp = cfa;
    0
}

/// Walks the stack from `ip`/`sp`/`bp` (and the link register `lr`, 0 when unknown) with the
/// tables of `maps`: the stack's hash (as
/// `walk_stack`'s, never `STACK_ID_NONE`). With `ips` non-null, also stores the frames there,
/// ended by a zero and the end code. With `memo` non-null (and a window), records the walk
/// there under `memo_key` when it can be memoized, and marks it invalid otherwise. `w`: the
/// thread's walk state, overwritten.
#[inline(always)]
pub fn walk_tables(
    maps: &ProcessMaps,
    tgid: u32,
    (ip, sp, bp, lr): (u64, u64, u64, u64),
    ips: *mut u64,
    window: *mut u64,
    (memo, memo_key): (*mut StackMemo, u64),
    w: *mut WalkState,
) -> u64 {
    // SAFETY: the thread's own slot, which only this program writes now.
    let state = unsafe { &mut *w };
    state.ip = ip;
    state.sp = sp;
    state.bp = bp;
    state.lr = lr;
    state.hash = mix(HASH_SEED, ip);
    state.n = 1;
    state.end = STACK_END_UNKNOWN;
    state.maps_first = maps.first;
    state.maps_n = maps.n;
    state.cache_key = cache_key(tgid, maps.generation);
    state.sp0 = sp;
    state.sp_start = sp;
    state.reads = [MEMO_NO_READ; MEMO_READS];
    state.memo_ok = 1;
    let mut walk = Walk { w, ips, window };
    if !ips.is_null() {
        // SAFETY: index 0 of a StackTrace.
        unsafe { *ips = ip };
    }
    if crate::COMPAT {
        // No bpf_loop before 5.17: a bounded loop (5.3+), which the verifier follows step by
        // step (the compatible object walks once per new stack only, in a global function).
        let mut i = 0;
        while i < MAX_STACK_DEPTH as u64 {
            if step(i, &raw mut walk) != 0 {
                break;
            }
            i += 1;
        }
    } else {
        // SAFETY: `step` has the callback's signature; the context is a live stack value.
        unsafe {
            let cb = step as *mut core::ffi::c_void;
            bpf_loop(MAX_STACK_DEPTH as u32, cb, (&raw mut walk).cast(), 0);
        }
    }
    // SAFETY: as above.
    let state = unsafe { &mut *w };
    if !ips.is_null() {
        // Each index loaded afresh and compared unmasked: a mask lets the compiler turn
        // `< 127` into `!= 127`, from which 6.1's verifier learns no bound.
        // SAFETY: a field of the thread's slot; both indexes checked below MAX_STACK_DEPTH:
        // the zero ends the stack, the end code follows.
        unsafe {
            let n = read_volatile(&raw const state.n);
            if n < MAX_STACK_DEPTH as u64 {
                *ips.add(n as usize) = 0;
            }
            let after = read_volatile(&raw const state.n).wrapping_add(1);
            if after < MAX_STACK_DEPTH as u64 {
                *ips.add(after as usize) = state.end;
            }
        }
    }
    let hash = stack_id(state.hash, state.n);
    if !memo.is_null() {
        // SAFETY: the caller's thread slot, which only this program writes now.
        let m = unsafe { &mut *memo };
        m.valid = 0;
        if state.memo_ok != 0 && !walk.window.is_null() && state.sp0 == sp {
            m.ip = ip;
            m.sp = sp;
            m.bp = bp;
            m.key = memo_key;
            m.reads = state.reads;
            m.digest = window_digest(walk.window, &state.reads);
            m.hash = hash;
            m.valid = 1;
        }
    }
    hash
}

/// The memoized stack id, when `memo` holds a walk from these registers, over the same tables,
/// that read the same words as `window` holds now.
#[inline(always)]
pub fn memoized(
    memo: &StackMemo,
    key: u64,
    (ip, sp, bp): (u64, u64, u64),
    window: *const u64,
) -> Option<u64> {
    if memo.valid == 0 || memo.ip != ip || memo.sp != sp || memo.bp != bp || memo.key != key {
        return None;
    }
    (window_digest(window, &memo.reads) == memo.digest).then_some(memo.hash)
}
