//! Functions that free their first argument: free, C++ operator delete.
use aya_ebpf::{macros::uprobe, programs::ProbeContext};

use leak_common::COOKIE_NOTE_FREE;

use super::{begin, cookie};
use crate::verbs;

#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    if begin(&ctx, false).is_none() {
        return 0;
    }
    verbs::free_enter(ctx.arg(0).unwrap_or(0), cookie(&ctx) & COOKIE_NOTE_FREE != 0);
    0
}
