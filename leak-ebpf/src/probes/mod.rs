//! BPF programs, one per argument shape; the attach cookie says which hooked function fired (an
//! index into the loader's hook list). Entry points are thin: count the hit, read the
//! arguments, call a verb.
mod alloc;
mod free;
mod mmap;
mod run;

use aya_ebpf::{EbpfContext, helpers::generated::bpf_get_attach_cookie};
use leak_common::{COOKIE_AFTER_SYSCALL, COOKIE_CALIBRATION, COOKIE_NOTE_FREE};

use crate::maps::{count_hit, floor};

/// The hook a program fired for: the attach cookie, read once (a helper call each time).
#[derive(Clone, Copy)]
struct Hook {
    /// The hook index plus flags such as `COOKIE_AFTER_SYSCALL`.
    cookie: u64,
}

impl Hook {
    /// The hook index (below `leak_common::MAX_HOOKS`).
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
}

/// Every program's start: under the probe floor nothing at all; else the hit is counted and
/// the hook returned, unless the probe is on leak's own calibration function (then only
/// counted). `exit`: a return probe.
#[inline(always)]
fn begin<C: EbpfContext>(ctx: &C, exit: bool) -> Option<Hook> {
    if floor() {
        return None;
    }
    // SAFETY: the helper only reads the context's run-time cookie.
    let hook = Hook { cookie: unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } };
    count_hit(hook.func(), exit);
    if hook.has(COOKIE_CALIBRATION) {
        return None;
    }
    Some(hook)
}

/// `a * b`, or `None` on overflow. BPF has no 128-bit multiply (`__multi3`), which is what
/// `checked_mul` lowers to, and LLVM turns `b > MAX / a` back into it: the volatile read of
/// the quotient keeps the division.
#[inline(always)]
fn checked_product(a: u64, b: u64) -> Option<u64> {
    if (a | b) >> 32 != 0 {
        let limit = u64::MAX / a.max(1);
        // SAFETY: reads a local.
        if b > unsafe { core::ptr::read_volatile(&raw const limit) } {
            return None;
        }
    }
    Some(a.wrapping_mul(b))
}
