//! BPF programs, one per argument shape; the attach cookie says which hooked function fired (an
//! index into the loader's hook list). Entry points are thin: count the hit, read the
//! arguments, call a verb.
mod alloc;
mod fault;
mod free;
mod mmap;
mod run;

use aya_ebpf::{
    EbpfContext,
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_attach_cookie},
};
use leak_common::{
    AllocKey, COOKIE_AFTER_SYSCALL, COOKIE_CALIBRATION, COOKIE_NOTE_FREE, DropReason, MAX_HOOKS,
};

use crate::{
    maps::{HOOK_IPS, LEAK_TGID, count_drop, count_hit, floor},
    stash::{FUNC_BY_STACK, Fired},
};

/// The hook a program fired for: the attach cookie, read once (a helper call each time).
#[derive(Clone, Copy)]
pub(crate) struct Hook {
    /// The hook index plus flags such as `COOKIE_AFTER_SYSCALL`.
    cookie: u64,
    /// The compatible object: the stack pointer (0 in the full object, which needs none).
    sp: u64,
}

impl Hook {
    /// The hook index (below `leak_common::MAX_HOOKS`), or `stash::FUNC_BY_STACK` for a
    /// return probe of the compatible object.
    #[inline(always)]
    fn func(self) -> u32 {
        #[expect(clippy::cast_possible_truncation, reason = "hook indexes are < 2^31")]
        let f =
            (self.cookie & !(COOKIE_AFTER_SYSCALL | COOKIE_NOTE_FREE | COOKIE_CALIBRATION)) as u32;
        f
    }

    /// Whether the cookie carries `flag`.
    #[inline(always)]
    fn has(self, flag: u64) -> bool {
        self.cookie & flag != 0
    }

    /// What the verbs take.
    #[inline(always)]
    pub(crate) fn fired(self) -> Fired {
        Fired { func: self.func(), sp: self.sp }
    }
}

/// Every program's start: under the probe floor nothing at all; else the hit is counted and
/// the hook returned, unless the probe is on leak's own calibration function (then only
/// counted). `exit`: a return probe.
#[inline(always)]
pub(crate) fn begin<C: EbpfContext>(ctx: &C, exit: bool) -> Option<Hook> {
    if floor() {
        return None;
    }
    if crate::COMPAT {
        return begin_without_cookie(ctx, exit);
    }
    // SAFETY: the helper only reads the context's run-time cookie.
    let hook = Hook { cookie: unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }, sp: 0 };
    count_hit(hook.func(), exit);
    if hook.has(COOKIE_CALIBRATION) {
        return None;
    }
    Some(hook)
}

/// [`begin`] on kernels without attach cookies (before 5.15). An entry probe finds its hook in
/// `HOOK_IPS` by its own address (a uprobe's instruction pointer is the probed instruction's)
/// and process;
/// a return probe's call is the one its thread stashed, matched by the stack pointer (see
/// `stash::take_pending`), and counted there. The calibration probes are the ones that fire
/// in leak's own process.
#[inline(always)]
fn begin_without_cookie<C: EbpfContext>(ctx: &C, exit: bool) -> Option<Hook> {
    // SAFETY: a uprobe's context is its pt_regs.
    let regs = unsafe { &*(ctx.as_ptr() as *const pt_regs) };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == LEAK_TGID.load() {
        count_hit(MAX_HOOKS - 1, exit);
        return None;
    }
    if exit {
        return Some(Hook { cookie: u64::from(FUNC_BY_STACK), sp: crate::regs::sp(regs) });
    }
    let Some(cookie) = HOOK_IPS.get_ptr(AllocKey::new(crate::regs::ip(regs), tgid)) else {
        count_drop(DropReason::UnknownHook);
        return None;
    };
    // SAFETY: a live map value, copied out.
    let hook = Hook { cookie: unsafe { *cookie }, sp: crate::regs::sp(regs) };
    count_hit(hook.func(), false);
    Some(hook)
}

/// `a * b`, or `None` on overflow. BPF has no 128-bit multiply (`__multi3`), which is what
/// `checked_mul` lowers to, and LLVM turns `b > MAX / a` back into it: the volatile read of
/// the quotient keeps the division.
#[inline(always)]
pub(crate) fn checked_product(a: u64, b: u64) -> Option<u64> {
    if (a | b) >> 32 != 0 {
        let limit = u64::MAX / a.max(1);
        // SAFETY: reads a local.
        if b > unsafe { core::ptr::read_volatile(&raw const limit) } {
            return None;
        }
    }
    Some(a.wrapping_mul(b))
}
