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

/// The attach cookie: the hook index, plus flags such as `COOKIE_AFTER_SYSCALL`.
#[inline(always)]
fn cookie<C: EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: the helper only reads the context's run-time cookie.
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }
}

/// The hook this program fired for (below `leak_common::MAX_HOOKS`).
#[inline(always)]
fn func<C: EbpfContext>(ctx: &C) -> u32 {
    #[expect(clippy::cast_possible_truncation, reason = "hook indexes are < 2^31")]
    let f = (cookie(ctx) & !(COOKIE_AFTER_SYSCALL | COOKIE_NOTE_FREE | COOKIE_CALIBRATION)) as u32;
    f
}

/// Every program's start: under the probe floor nothing at all; else the hit is counted and
/// the hook returned, unless the probe is on leak's own calibration function (then only
/// counted). `exit`: a return probe.
#[inline(always)]
fn begin<C: EbpfContext>(ctx: &C, exit: bool) -> Option<u32> {
    if floor() {
        return None;
    }
    let f = func(ctx);
    count_hit(f, exit);
    if cookie(ctx) & COOKIE_CALIBRATION != 0 {
        return None;
    }
    Some(f)
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
