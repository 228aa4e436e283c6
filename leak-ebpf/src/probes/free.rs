//! Functions that free their first argument: free, C++ operator delete.
use aya_ebpf::{macros::uprobe, programs::ProbeContext};

use leak_common::COOKIE_NOTE_FREE;

use super::begin;
use crate::verbs;

#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    let Some(hook) = begin(&ctx, false) else { return 0 };
    verbs::free_enter(ctx.arg(0).unwrap_or(0), hook.has(COOKIE_NOTE_FREE));
    0
}
