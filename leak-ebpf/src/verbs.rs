//! The three verbs every hook is built from (after bcc memleak's `gen_alloc_enter` /
//! `gen_alloc_exit2` / `gen_free_enter`), plus realloc, which is a free and an allocation.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_ANY, BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_stack, generated::bpf_ktime_get_ns},
};
use aya_log_ebpf::debug;
use leak_common::{
    AllocInfo, AllocKind, DropReason, MAX_STACK_DEPTH, PENDING_KEY_REALLOC, Pending, STACK_ID_NONE,
    StackTrace,
};

use crate::maps::{
    ALLOCS, FILTER_TGID, PENDING, STACK_SCRATCH, STACKS, TRACE, ZERO_STACK, count_drop,
};

/// -EEXIST as returned by map helpers.
const EEXIST: i32 = -17;

/// The calling thread's `pid_tgid`, or `None` if its process is filtered out.
#[inline(always)]
fn traced_pid_tgid() -> Option<u64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let filter = FILTER_TGID.load();
    if filter != 0 && (pid_tgid >> 32) as u32 != filter {
        return None;
    }
    Some(pid_tgid)
}

/// Entry of an allocating call: stash its arguments for the return probe.
#[inline(always)]
pub fn alloc_enter(key_bits: u64, pending: &Pending) {
    let Some(pid_tgid) = traced_pid_tgid() else { return };
    if PENDING.insert(pid_tgid | key_bits, pending, u64::from(BPF_ANY)).is_err() {
        count_drop(DropReason::PendingFull);
    }
}

/// Return of an allocating call: record `ret` with the size stashed at entry.
#[inline(always)]
pub fn alloc_exit<C: EbpfContext>(ctx: &C, key_bits: u64, kind: AllocKind, ret: u64) {
    let Some(pid_tgid) = traced_pid_tgid() else { return };
    let Some(pending) = take_pending(pid_tgid | key_bits) else { return };
    // NULL: the allocation failed, nothing is outstanding.
    if ret == 0 {
        return;
    }
    record(ctx, pid_tgid, ret, pending.size, kind);
}

/// Takes the arguments stashed by the entry probe out of PENDING; counts a missing entry.
#[inline(always)]
fn take_pending(key: u64) -> Option<Pending> {
    let Some(pending) = PENDING.get_ptr(key) else {
        count_drop(DropReason::MissingEntry);
        return None;
    };
    // SAFETY: the pointer is to a live map value; copy it out before removing the entry.
    let pending = unsafe { *pending };
    let _ = PENDING.remove(key);
    Some(pending)
}

/// `free(ptr)`.
#[inline(always)]
pub fn free_enter(ptr: u64) {
    if ptr == 0 {
        return;
    }
    let Some(pid_tgid) = traced_pid_tgid() else { return };
    if ALLOCS.remove(ptr).is_ok() {
        return;
    }
    // glibc's realloc(p, 0) frees p by calling free(p); realloc's entry already took p out of
    // ALLOCS, so this is not an unknown pointer.
    if let Some(pending) = PENDING.get_ptr(pid_tgid | PENDING_KEY_REALLOC) {
        // SAFETY: live map value, read only.
        if unsafe { (*pending).old_ptr } == ptr {
            return;
        }
    }
    count_drop(DropReason::UnknownFree);
}

/// Entry of `realloc(ptr, size)`. The old block is taken out of ALLOCS here, not at the return:
/// once realloc has freed it internally another thread may be handed the same address, and a
/// removal at the return would then delete that thread's record. A failed realloc leaves the
/// old block live, so its record travels in the stash and is put back at the return.
#[inline(always)]
pub fn realloc_enter(ptr: u64, size: u64) {
    let Some(pid_tgid) = traced_pid_tgid() else { return };
    let mut pending = Pending { size, old_ptr: ptr, ..Pending::default() };
    if ptr != 0 {
        if let Some(old) = ALLOCS.get_ptr(ptr) {
            // SAFETY: live map value, copied out.
            pending.old = unsafe { *old };
            pending.has_old = 1;
        } else {
            count_drop(DropReason::UnknownFree);
        }
    }
    // Stash first: the old record leaves ALLOCS only once it is safe in the stash, so a failed
    // insert cannot lose a block that a failing realloc leaves allocated.
    if PENDING.insert(pid_tgid | PENDING_KEY_REALLOC, pending, u64::from(BPF_ANY)).is_err() {
        count_drop(DropReason::PendingFull);
        return;
    }
    if pending.has_old != 0 {
        let _ = ALLOCS.remove(ptr);
    }
}

/// Return of `realloc`.
#[inline(always)]
pub fn realloc_exit<C: EbpfContext>(ctx: &C, ret: u64) {
    let Some(pid_tgid) = traced_pid_tgid() else { return };
    let Some(pending) = take_pending(pid_tgid | PENDING_KEY_REALLOC) else { return };
    if ret == 0 {
        // realloc(p, n > 0) failed: p is still allocated. realloc(p, 0) returning NULL freed p.
        if pending.size != 0
            && pending.has_old != 0
            && ALLOCS.insert(pending.old_ptr, pending.old, u64::from(BPF_ANY)).is_err()
        {
            count_drop(DropReason::AllocMapFull);
        }
        return;
    }
    // glibc's realloc(NULL, n) is `jmp malloc`: malloc's return probe fires at the same
    // return and has already recorded `ret`. The kernel runs chained return probes innermost
    // first (handle_trampoline walks the return instances from the most recent), so this
    // insert overwrites that record with realloc's own.
    record(ctx, pid_tgid, ret, pending.size, AllocKind::Realloc);
}

/// This thread's stack buffer, created on its first allocation.
#[inline(always)]
fn scratch(pid_tgid: u64) -> Option<*mut StackTrace> {
    if let Some(buf) = STACK_SCRATCH.get_ptr_mut(pid_tgid) {
        return Some(buf);
    }
    let zero = ZERO_STACK.get_ptr(0)?;
    // SAFETY: `zero` is a valid map value of the map's value type (by reference: 1016 bytes
    // would not fit on the BPF stack).
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value would copy 1016 bytes onto the 512-byte BPF stack"
    )]
    STACK_SCRATCH.insert(pid_tgid, unsafe { &*zero }, u64::from(BPF_ANY)).ok()?;
    STACK_SCRATCH.get_ptr_mut(pid_tgid)
}

/// Records one outstanding allocation with the current user stack.
#[inline(always)]
fn record<C: EbpfContext>(ctx: &C, pid_tgid: u64, addr: u64, size: u64, kind: AllocKind) {
    let stack_id = take_stack(ctx, pid_tgid);
    let info = AllocInfo {
        size,
        // SAFETY: helper without pointer arguments.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        stack_id,
        tgid: (pid_tgid >> 32) as u32,
        kind: kind as u32,
    };
    if ALLOCS.insert(addr, info, u64::from(BPF_ANY)).is_err() {
        count_drop(DropReason::AllocMapFull);
    }
    if TRACE.load() != 0 {
        debug!(
            ctx,
            "alloc kind={} size={} addr={:x} stack={:x}", kind as u32, size, addr, stack_id
        );
    }
}

/// Collects the user stack into STACKS and returns its id (a hash of the frames).
///
/// Called from return probes only: at a function's entry the frame-pointer walk misses the
/// immediate caller (its frame is not set up yet), at the return the registers are the
/// caller's.
#[inline(always)]
fn take_stack<C: EbpfContext>(ctx: &C, pid_tgid: u64) -> u64 {
    let Some(buf) = scratch(pid_tgid) else {
        count_drop(DropReason::StackMissing);
        return STACK_ID_NONE;
    };
    #[expect(clippy::cast_possible_truncation, reason = "1016 bytes")]
    let size = core::mem::size_of::<StackTrace>() as u32;
    // SAFETY: `buf` points to a map value of exactly `size` bytes. The helper zero-fills the
    // bytes past the last frame, so equal stacks are equal byte for byte.
    let len = unsafe { bpf_get_stack(ctx.as_ptr(), buf.cast(), size, u64::from(BPF_F_USER_STACK)) };
    if len <= 0 {
        count_drop(DropReason::StackMissing);
        return STACK_ID_NONE;
    }
    // len > 0 here and at most `size`.
    #[expect(clippy::cast_sign_loss, clippy::cast_possible_truncation, reason = "0 < len <= 1016")]
    let n = (len as usize) / 8;
    let mut hash: u64 = 0x9e37_79b9_7f4a_7c15 ^ n as u64;
    let ips = buf.cast::<u64>();
    let mut i = 0;
    // Constant bound for the verifier; `n <= MAX_STACK_DEPTH` always holds.
    while i < MAX_STACK_DEPTH {
        if i >= n {
            break;
        }
        // SAFETY: i < MAX_STACK_DEPTH, inside the scratch value.
        let ip = unsafe { *ips.add(i) };
        hash = (hash ^ ip).wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 32;
        i += 1;
    }
    if hash == STACK_ID_NONE {
        hash = 1;
    }
    if STACKS.get_ptr(hash).is_none() {
        // SAFETY: `buf` is a valid map value of the map's value type.
        #[expect(
            clippy::needless_borrows_for_generic_args,
            reason = "by value would copy 1016 bytes onto the 512-byte BPF stack"
        )]
        let inserted = STACKS.insert(hash, unsafe { &*buf }, u64::from(BPF_NOEXIST));
        match inserted {
            // EEXIST: another CPU inserted the same stack first.
            Ok(()) | Err(EEXIST) => {}
            Err(_) => count_drop(DropReason::StackMapFull),
        }
    }
    hash
}
