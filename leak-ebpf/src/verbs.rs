//! The verbs every hook is built from (after bcc memleak's `gen_alloc_enter` /
//! `gen_alloc_exit2` / `gen_free_enter`): allocation entry and return, realloc (a free and an
//! allocation), `posix_memalign` (the block comes back through an out-pointer), and free; and
//! a growth profile's page fault. Each entry stashes its call (`stash`), each return records
//! the block with its stack (`stack`); the mmap family's verbs are `mappings`'.
use aya_ebpf::{EbpfContext, bindings::BPF_ANY, helpers::bpf_probe_read_user};
use aya_log_ebpf::debug;
use leak_common::{
    AllocInfo, AllocKey, DropReason, FAULT_HOOK, PENDING_OVERFLOW, PENDING_UNSAMPLED, Pending,
    STACK_ID_NONE,
};

use crate::{
    maps::{LAST_FREE, PAGES, PENDING, TRACE, count_drop},
    stack::{leak_store_fault_stack, take_stack},
    stash::{
        Call, Fired, count_unknown_free, in_call, new_slot, now_ns, stash, take_pending, tgid,
        traced_pid_tgid,
    },
    table::{leak_insert_record, remove_record},
};

/// The page size (x86-64's base pages): a page fault records one, and mappings are counted
/// in whole pages.
pub(crate) const PAGE: u64 = 4096;

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

/// Records the block `addr` of the call `call` to hook `func` with the current user stack.
/// Its time is the call's start: one clock read per allocation, not two.
#[inline(always)]
pub(crate) fn record<C: EbpfContext>(
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
pub fn page_fault(pid_tgid: u64, addr: u64, ((ip, sp, fp), lr): crate::regs::FaultRegs) {
    let key = AllocKey::new(addr & !(PAGE - 1), tgid(pid_tgid));
    // The walk by tables keeps its state in the thread's slot: a thread that never called a
    // hooked function has none yet. The fault's `ip` is the instruction that faulted, not a
    // return address: plus one, as the walk and the symbolizer look up the instruction
    // before each frame's address.
    let stack_id = if ip == 0 {
        STACK_ID_NONE
    } else if PENDING.get_ptr(pid_tgid).is_some() || new_slot(pid_tgid).is_some() {
        leak_store_fault_stack(pid_tgid, ip.wrapping_add(1), sp, fp, lr)
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
