//! Anonymous private mappings: `mmap`, `munmap`, `mremap`.
use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use leak_common::COOKIE_AFTER_SYSCALL;

use super::{Hook, begin};
use crate::mappings;

#[uprobe]
pub fn mmap_enter(ctx: ProbeContext) -> u32 {
    let Some(f) = begin(&ctx, false).map(Hook::fired) else { return 0 };
    mappings::mmap_enter(
        f,
        ctx.arg(0).unwrap_or(0),
        ctx.arg(1).unwrap_or(0),
        ctx.arg(3).unwrap_or(0),
    );
    0
}

#[uretprobe]
pub fn mmap_exit(ctx: RetProbeContext) -> u32 {
    let Some(f) = begin(&ctx, true).map(Hook::fired) else { return 0 };
    mappings::mmap_exit(&ctx, f, ctx.ret());
    0
}

/// At `munmap`'s entry, or right after its `syscall` instruction, where the arguments are
/// still in `%rdi`/`%rsi` (the syscall clobbers only `%rax`, `%rcx`, `%r11`) and `%rax` holds
/// the result: glibc's wrapper starts `mov $11,%eax; syscall`, neither of which the kernel
/// emulates, while the `jae` after it is.
#[uprobe]
pub fn munmap_enter(ctx: ProbeContext) -> u32 {
    let Some(hook) = begin(&ctx, false) else { return 0 };
    if hook.has(COOKIE_AFTER_SYSCALL) {
        // SAFETY: `regs` is the probe's register snapshot.
        let ret = crate::regs::syscall_result(unsafe { &*ctx.regs });
        if ret != 0 {
            return 0;
        }
    }
    mappings::munmap(ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0));
    0
}

#[uprobe]
pub fn mremap_enter(ctx: ProbeContext) -> u32 {
    let Some(f) = begin(&ctx, false).map(Hook::fired) else { return 0 };
    mappings::mremap_enter(
        f,
        ctx.arg(0).unwrap_or(0),
        ctx.arg(1).unwrap_or(0),
        ctx.arg(2).unwrap_or(0),
    );
    0
}

#[uretprobe]
pub fn mremap_exit(ctx: RetProbeContext) -> u32 {
    let Some(f) = begin(&ctx, true).map(Hook::fired) else { return 0 };
    mappings::mremap_exit(&ctx, f, ctx.ret());
    0
}
