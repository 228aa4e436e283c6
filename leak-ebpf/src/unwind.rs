//! Stack walk with unwind tables (#7): for code without frame pointers. The loader puts each
//! object's rows (`leak_common::UnwindRow`, from its `.eh_frame`) in `UNWIND_ROWS` and each
//! traced process's executable mappings in `UNWIND_MAPS`; a walk looks up the row of each
//! return address (two binary searches) and steps to the caller: CFA from `rsp` or `rbp`,
//! return address at CFA - 8, `rbp` restored from where the row says it was saved. The same
//! algorithm as `leak_user::unwind::unwind`, which the tests check against real stacks.
//!
//! One frame per `bpf_loop` iteration: the verifier checks the step once, instead of a
//! 127-frame loop with two searches inside. For that, nothing in the step may be a value
//! the verifier tracks exactly from one iteration to the next: the frame count is the loop's
//! index (unknown to it), and both searches index arrays through map lookups.
#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    reason = "packing rows into scalars and back, and stack words as offsets: each bounded by \
              the check before it"
)]
use aya_ebpf::helpers::{bpf_probe_read_user, bpf_probe_read_user_buf, generated::bpf_loop};
use core::ptr::read_volatile;
use leak_common::{
    CFA_NONE, CFA_OUTERMOST, CFA_RBP, CFA_RSP, MAX_STACK_DEPTH, MEMO_NO_READ, MEMO_READS,
    ProcessMaps, RBP_AT_CFA, STACK_END_BAD_FRAME, STACK_END_COMPLETE, STACK_END_NO_UNWIND_INFO,
    STACK_END_UNKNOWN, STACK_END_UNSUPPORTED, STACK_WINDOW_WORDS, StackMemo, UNWIND_AUTO,
    UnwindRow, WalkState,
};

use crate::maps::{ROW_CACHE, UNWIND, UNWIND_MAPPINGS, UNWIND_ROWS};

/// Steps of the search among a process's mappings: enough for `MAX_UNWIND_MAPS`.
const MAP_SEARCH_STEPS: usize = 8;
/// Steps of the search among an object's rows: enough for 2^22 rows.
const ROW_SEARCH_STEPS: usize = 23;

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

/// Mixes frame `ip` into `hash` (as the frame-pointer walk does).
#[inline(always)]
pub fn mix(hash: u64, ip: u64) -> u64 {
    let h = (hash ^ ip).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 32)
}

/// The row for runtime address `pc` among the `n` mappings from `first`, packed into a
/// scalar ([`pack`]; `CFA_NONE` when there is none). A BPF global function: the verifier
/// checks its two searches once, not once per state of the walk's loop (which took it past
/// half a million instructions and seconds per program).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn leak_find_row(first: u64, n: u64, pc: u64) -> u64 {
    #[expect(clippy::cast_possible_truncation, reason = "indexes passed as scalars")]
    let row = find_row(first as u32, n as u32, pc);
    pack(row.unwrap_or(UnwindRow { cfa_reg: CFA_NONE, ..UnwindRow::default() }))
}

/// A row's rule in one scalar (its `pc` left out).
#[inline(always)]
fn pack(r: UnwindRow) -> u64 {
    u64::from(r.cfa_offset as u32)
        | (u64::from(r.rbp_offset as u16) << 32)
        | (u64::from(r.cfa_reg) << 48)
        | (u64::from(r.rbp_rule) << 56)
}

/// See [`pack`].
#[inline(always)]
fn unpack(v: u64) -> UnwindRow {
    UnwindRow {
        pc: 0,
        cfa_offset: v as u32 as i32,
        rbp_offset: (v >> 32) as u16 as i16,
        cfa_reg: (v >> 48) as u8,
        rbp_rule: (v >> 56) as u8,
    }
}

#[inline(always)]
fn find_row(first: u32, n: u32, pc: u64) -> Option<UnwindRow> {
    // The mapping that starts last at or before `pc` may hold it.
    let at = last_at_or_before(first, n, MAP_SEARCH_STEPS, pc, |i| {
        UNWIND_MAPPINGS.get(i).map(|m| m.start)
    })?;
    let m = UNWIND_MAPPINGS.get(at)?;
    if pc >= m.end {
        return None;
    }
    let vaddr = pc.wrapping_sub(m.bias);
    if vaddr > u64::from(u32::MAX) {
        return None;
    }
    let at = last_at_or_before(m.first, m.count, ROW_SEARCH_STEPS, vaddr, |i| {
        UNWIND_ROWS.get(i).map(|r| u64::from(r.pc))
    })?;
    UNWIND_ROWS.get(at).copied()
}

/// Binary search in `steps` steps among the `n` entries from `first`, sorted by `key`: the
/// last one whose key is at or before `target`.
#[inline(always)]
fn last_at_or_before(
    first: u32,
    n: u32,
    steps: usize,
    target: u64,
    key: impl Fn(u32) -> Option<u64>,
) -> Option<u32> {
    let (mut lo, mut hi) = (first, first.saturating_add(n));
    let mut step = 0;
    while step < steps {
        if lo < hi {
            let mid = lo + (hi - lo) / 2;
            if key(mid)? <= target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        step += 1;
    }
    (lo != first).then(|| lo - 1)
}

/// The packed row for `pc` (see [`leak_find_row`]), from `ROW_CACHE` when there: a stack's
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
    let row = Some(unpack(cached_row(w, w.ip.wrapping_sub(1))));
    let (cfa, rbp_at) = match row {
        Some(r) if r.cfa_reg == CFA_RSP || r.cfa_reg == CFA_RBP => {
            let base = if r.cfa_reg == CFA_RSP { w.sp } else { w.bp };
            let cfa = base.wrapping_add_signed(i64::from(r.cfa_offset));
            let at = (r.rbp_rule == RBP_AT_CFA)
                .then(|| cfa.wrapping_add_signed(i64::from(r.rbp_offset)));
            (cfa, at)
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
        // pointer, which such code usually keeps.
        _ if UNWIND.load() == UNWIND_AUTO && w.bp > w.sp && w.bp.is_multiple_of(8) => {
            (w.bp.wrapping_add(16), Some(w.bp))
        }
        _ => {
            w.end = STACK_END_NO_UNWIND_INFO;
            return 1;
        }
    };
    // The caller's frame lies above this one.
    if cfa <= w.sp {
        w.end = STACK_END_BAD_FRAME;
        return 1;
    }
    // The return address, and the saved rbp when it sits right below it (a frame pointer's
    // push, the usual case): one read.
    let Some([below, ra]) = read_pair(walk, w, cfa.wrapping_sub(16), 2 * index) else {
        w.end = STACK_END_BAD_FRAME;
        return 1;
    };
    if let Some(at) = rbp_at {
        if at == cfa.wrapping_sub(16) {
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

/// Walks the stack from `ip`/`sp`/`bp` with the tables of `maps`: the stack's hash (as
/// `walk_stack`'s, never `STACK_ID_NONE`). With `ips` non-null, also stores the frames there,
/// ended by a zero and the end code. With `memo` non-null (and a window), records the walk
/// there under `memo_key` when it can be memoized, and marks it invalid otherwise. `w`: the
/// thread's walk state, overwritten.
#[inline(always)]
pub fn walk_tables(
    maps: &ProcessMaps,
    tgid: u32,
    (ip, sp, bp): (u64, u64, u64),
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
    state.hash = mix(0x9e37_79b9_7f4a_7c15, ip);
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
    let hash = state.hash ^ state.n;
    let hash = if hash == leak_common::STACK_ID_NONE { 1 } else { hash };
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
