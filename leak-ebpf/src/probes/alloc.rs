//! Functions that allocate: `malloc`, `calloc`, `realloc`, `reallocarray`, `posix_memalign`,
//! `aligned_alloc`, `memalign`, `valloc`, `pvalloc`, C++ `operator new`.
use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use leak_common::PENDING_OVERFLOW;

use super::{Hook, begin, checked_product};
use crate::verbs;

/// Size in the first argument: malloc, valloc, pvalloc, operator new.
#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    let Some(f) = begin(&ctx, false).map(Hook::fired) else { return 0 };
    verbs::alloc_enter(f, ctx.arg(0).unwrap_or(0), 0);
    0
}

/// Size in the second argument: `aligned_alloc`, `memalign`.
#[uprobe]
pub fn memalign_enter(ctx: ProbeContext) -> u32 {
    let Some(f) = begin(&ctx, false).map(Hook::fired) else { return 0 };
    verbs::alloc_enter(f, ctx.arg(1).unwrap_or(0), 0);
    0
}

#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    let Some(f) = begin(&ctx, false).map(Hook::fired) else { return 0 };
    // An overflowing product makes calloc fail with ENOMEM; stash anyway so the return probe
    // does not count a missing entry.
    match checked_product(ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0)) {
        Some(size) => verbs::alloc_enter(f, size, 0),
        None => verbs::alloc_enter(f, 0, PENDING_OVERFLOW),
    }
    0
}

#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    let Some(f) = begin(&ctx, false).map(Hook::fired) else { return 0 };
    verbs::realloc_enter(f, ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0), 0);
    0
}

#[uprobe]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    let Some(f) = begin(&ctx, false).map(Hook::fired) else { return 0 };
    let ptr: u64 = ctx.arg(0).unwrap_or(0);
    // Overflow: reallocarray fails with ENOMEM and leaves `ptr` alone.
    match checked_product(ctx.arg(1).unwrap_or(0), ctx.arg(2).unwrap_or(0)) {
        Some(size) => verbs::realloc_enter(f, ptr, size, 0),
        None => verbs::realloc_enter(f, ptr, 0, PENDING_OVERFLOW),
    }
    0
}

#[uprobe]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    let Some(f) = begin(&ctx, false).map(Hook::fired) else { return 0 };
    verbs::posix_memalign_enter(f, ctx.arg(0).unwrap_or(0), ctx.arg(2).unwrap_or(0));
    0
}

/// Return of a function that returns the new block.
#[uretprobe]
pub fn alloc_exit(ctx: RetProbeContext) -> u32 {
    let Some(f) = begin(&ctx, true).map(Hook::fired) else { return 0 };
    verbs::alloc_exit(&ctx, f, ctx.ret());
    0
}

#[uretprobe]
pub fn realloc_exit(ctx: RetProbeContext) -> u32 {
    let Some(f) = begin(&ctx, true).map(Hook::fired) else { return 0 };
    verbs::realloc_exit(&ctx, f, ctx.ret());
    0
}

#[uretprobe]
pub fn posix_memalign_exit(ctx: RetProbeContext) -> u32 {
    let Some(f) = begin(&ctx, true).map(Hook::fired) else { return 0 };
    let ret: u64 = ctx.ret();
    // The int result is in %eax; the upper half of %rax is undefined.
    #[expect(clippy::cast_possible_truncation, reason = "int return value")]
    verbs::posix_memalign_exit(&ctx, f, ret as u32);
    0
}
