//! malloc, calloc, realloc.
use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use leak_common::{AllocKind, PENDING_KEY_CALLOC, PENDING_OVERFLOW, Pending, Probe};

use crate::{
    maps::count_hit,
    verbs::{self, alloc_enter, alloc_exit},
};

#[uprobe]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    count_hit(Probe::MallocEnter);
    let size: u64 = ctx.arg(0).unwrap_or(0);
    alloc_enter(0, &Pending { size, ..Pending::default() });
    0
}

#[uretprobe]
pub fn malloc_exit(ctx: RetProbeContext) -> u32 {
    count_hit(Probe::MallocExit);
    let ret: u64 = ctx.ret();
    alloc_exit(&ctx, 0, AllocKind::Malloc, ret);
    0
}

#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    count_hit(Probe::CallocEnter);
    let nmemb: u64 = ctx.arg(0).unwrap_or(0);
    let size: u64 = ctx.arg(1).unwrap_or(0);
    // An overflowing product makes calloc fail with ENOMEM; stash anyway so the return probe
    // does not count a missing entry. BPF has no 128-bit multiply (__multi3), which is what
    // `overflowing_mul` lowers to, and LLVM rewrites `size > MAX / nmemb` back into it; the
    // volatile read of the quotient keeps the division.
    let overflow = if (nmemb | size) >> 32 == 0 {
        false
    } else {
        let limit = u64::MAX / nmemb.max(1);
        // SAFETY: reads a local.
        size > unsafe { core::ptr::read_volatile(&raw const limit) }
    };
    let total = nmemb.wrapping_mul(size);
    let pending = Pending {
        size: if overflow { 0 } else { total },
        flags: if overflow { PENDING_OVERFLOW } else { 0 },
        ..Pending::default()
    };
    alloc_enter(PENDING_KEY_CALLOC, &pending);
    0
}

#[uretprobe]
pub fn calloc_exit(ctx: RetProbeContext) -> u32 {
    count_hit(Probe::CallocExit);
    let ret: u64 = ctx.ret();
    alloc_exit(&ctx, PENDING_KEY_CALLOC, AllocKind::Calloc, ret);
    0
}

#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    count_hit(Probe::ReallocEnter);
    let ptr: u64 = ctx.arg(0).unwrap_or(0);
    let size: u64 = ctx.arg(1).unwrap_or(0);
    verbs::realloc_enter(ptr, size);
    0
}

#[uretprobe]
pub fn realloc_exit(ctx: RetProbeContext) -> u32 {
    count_hit(Probe::ReallocExit);
    let ret: u64 = ctx.ret();
    verbs::realloc_exit(&ctx, ret);
    0
}
