//! BPF programs, one per argument shape; the attach cookie says which hooked function fired (an
//! index into the loader's hook list). Entry points are thin: count the hit, read the
//! arguments, call a verb.
mod alloc;
mod free;
mod run;

use aya_ebpf::{EbpfContext, helpers::generated::bpf_get_attach_cookie};

/// The hook this program fired for (the attach cookie, below `leak_common::MAX_HOOKS`).
#[inline(always)]
fn func<C: EbpfContext>(ctx: &C) -> u32 {
    // SAFETY: the helper only reads the context's run-time cookie.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    #[expect(clippy::cast_possible_truncation, reason = "cookies are hook indexes < 2^32")]
    let f = cookie as u32;
    f
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
