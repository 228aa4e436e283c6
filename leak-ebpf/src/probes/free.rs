//! Functions that free their first argument: free, C++ operator delete.
use aya_ebpf::{macros::uprobe, programs::ProbeContext};

use leak_common::COOKIE_NOTE_FREE;

use super::{cookie, func};
use crate::{
    maps::{count_hit, floor},
    verbs,
};

#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    if floor() {
        return 0;
    }
    let f = func(&ctx);
    count_hit(f, false);
    verbs::free_enter(ctx.arg(0).unwrap_or(0), cookie(&ctx) & COOKIE_NOTE_FREE != 0);
    0
}
