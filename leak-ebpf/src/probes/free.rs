//! free.
use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use leak_common::Probe;

use crate::{maps::count_hit, verbs};

#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    count_hit(Probe::FreeEnter);
    let ptr: u64 = ctx.arg(0).unwrap_or(0);
    verbs::free_enter(ptr);
    0
}
