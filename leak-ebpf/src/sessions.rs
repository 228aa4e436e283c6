//! Uprobe sessions (kernel 6.13+, full object only): one program runs at a function's entry
//! and at its return, and an entry that returns 1 cancels that call's return. The entry
//! returns 1 for every call it does not stash (sampled out, nested in another hooked call,
//! another process), so `--sample` pays no return trap for the calls it leaves out. Only the
//! functions that return a new block have sessions: realloc's return must run for every call
//! (it may move a sampled block), and the mmap family is not sampled.
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    programs::{ProbeContext, RetProbeContext},
};
use leak_common::SENTINEL_SESSION_IS_RETURN;

use crate::{
    probes::{Hook, begin, checked_product},
    stash::{Call, Fired, stash_with, traced_pid_tgid},
    verbs,
};

/// `bpf_session_is_return(ctx)`, a kfunc: called here through a helper number no helper has,
/// which the loader makes the kfunc call. The kfunc took no argument before 7.0 and takes the
/// context since; passing it suits both (an unused argument register is not checked).
#[inline(always)]
fn is_return(ctx: &ProbeContext) -> bool {
    // SAFETY: the loader patches this call into the kfunc's, which only reads the context.
    let f: unsafe extern "C" fn(*mut core::ffi::c_void) -> u64 =
        unsafe { core::mem::transmute(SENTINEL_SESSION_IS_RETURN as usize) };
    // SAFETY: as above.
    unsafe { f(ctx.as_ptr()) & 1 != 0 }
}

/// `verbs::alloc_enter` for a session: whether the return is wanted (the call was stashed;
/// one that sampling leaves out is not).
#[inline(always)]
fn alloc_enter(f: Fired, size: u64) -> bool {
    let Some(pid_tgid) = traced_pid_tgid() else { return false };
    let call = Call { size, kind: f.func, sp: f.sp, ..Call::default() };
    stash_with(pid_tgid, call, true, true).is_some()
}

/// `verbs::posix_memalign_enter` for a session: whether the return is wanted.
#[inline(always)]
fn posix_memalign_enter(f: Fired, out_ptr: u64, size: u64) -> bool {
    let Some(pid_tgid) = traced_pid_tgid() else { return false };
    let call = Call { size, out_ptr, kind: f.func, sp: f.sp, ..Call::default() };
    stash_with(pid_tgid, call, true, true).is_some()
}

/// The entry's verdict: 0 runs the return, 1 skips it. (aya's `#[uprobe]` returns 0 whatever
/// the function returns: the sessions' entry points are written out here instead.)
#[inline(always)]
fn wanted(stashed: bool) -> u32 {
    u32::from(!stashed)
}

/// What a session does at the return.
#[derive(Clone, Copy)]
enum Exit {
    /// Records the block the function returns.
    Alloc,
    /// Records the block `posix_memalign` wrote, if it returned 0.
    PosixMemalign,
}

/// A session's run: at the return, `exit` (the hit counted); at the entry, `entry`, and the
/// verdict on the return from whether it stashed the call.
#[inline(always)]
fn run(ctx: &ProbeContext, entry: impl FnOnce(Fired) -> bool, exit: Exit) -> u32 {
    if is_return(ctx) {
        let ret = RetProbeContext::new(ctx.as_ptr());
        if let Some(f) = begin(&ret, true).map(Hook::fired) {
            let r: u64 = ret.ret();
            match exit {
                Exit::Alloc => verbs::alloc_exit(&ret, f, r),
                // The int result is in the low half of the return register.
                #[expect(clippy::cast_possible_truncation, reason = "int return value")]
                Exit::PosixMemalign => verbs::posix_memalign_exit(&ret, f, r as u32),
            }
        }
        return 0;
    }
    let Some(f) = begin(ctx, false).map(Hook::fired) else { return 1 };
    wanted(entry(f))
}

/// `alloc_enter` and `alloc_exit` in one program.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub extern "C" fn alloc_session(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    run(&ctx, |f| alloc_enter(f, ctx.arg(0).unwrap_or(0)), Exit::Alloc)
}

/// `memalign_enter` and `alloc_exit` in one program.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub extern "C" fn memalign_session(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    run(&ctx, |f| alloc_enter(f, ctx.arg(1).unwrap_or(0)), Exit::Alloc)
}

/// `calloc_enter` and `alloc_exit` in one program. An overflowing product makes calloc fail:
/// nothing to record, no return wanted.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub extern "C" fn calloc_session(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    let entry = |f| {
        checked_product(ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0))
            .is_some_and(|size| alloc_enter(f, size))
    };
    run(&ctx, entry, Exit::Alloc)
}

/// `posix_memalign_enter` and `posix_memalign_exit` in one program.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub extern "C" fn posix_memalign_session(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    let entry = |f| posix_memalign_enter(f, ctx.arg(0).unwrap_or(0), ctx.arg(2).unwrap_or(0));
    run(&ctx, entry, Exit::PosixMemalign)
}
