//! The unwind tables' lookup (#7): the row that covers a return address. The loader puts
//! each object's rows (`leak_common::UnwindRow`, from its `.eh_frame`) in `UNWIND_ROWS` and
//! each traced process's executable mappings in `UNWIND_MAPPINGS` (`UNWIND_MAPS` says where
//! each process's are); a row is found by two binary
//! searches (the mapping, then the row). The walk that uses them, and its cache of recent
//! answers, are `stack`'s.
use leak_common::{CFA_NONE, UnwindRow, pack_rule};

use crate::maps::{UNWIND_MAPPINGS, UNWIND_ROWS};

/// Steps of the search among a process's mappings: enough for `MAX_UNWIND_MAPS`.
const MAP_SEARCH_STEPS: usize = 8;
/// Steps of the search among an object's rows: enough for 2^22 rows.
const ROW_SEARCH_STEPS: usize = 23;

/// The row for runtime address `pc` among the `n` mappings from `first`, packed into a
/// scalar (`leak_common::pack_rule`; `CFA_NONE` when there is none). A BPF global function: the verifier
/// checks its two searches once, not once per state of the walk's loop (which took it past
/// half a million instructions and seconds per program).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn leak_find_row(first: u64, n: u64, pc: u64) -> u64 {
    #[expect(clippy::cast_possible_truncation, reason = "indexes passed as scalars")]
    let row = find_row(first as u32, n as u32, pc);
    pack_rule(row.unwrap_or(UnwindRow { cfa_reg: CFA_NONE, ..UnwindRow::default() }))
}

#[inline(always)]
fn find_row(first: u32, n: u32, pc: u64) -> Option<UnwindRow> {
    // The mapping that starts last at or before `pc` may hold it.
    let at = last_at_or_before(first, n, MAP_SEARCH_STEPS, pc, |i| {
        UNWIND_MAPPINGS.get(i).map(|m| m.start)
    })?;
    let m = UNWIND_MAPPINGS.get(at)?;
    if pc >= m.end {
        return None;
    }
    let vaddr = pc.wrapping_sub(m.bias);
    if vaddr > u64::from(u32::MAX) {
        return None;
    }
    let at = last_at_or_before(m.first, m.count, ROW_SEARCH_STEPS, vaddr, |i| {
        UNWIND_ROWS.get(i).map(|r| u64::from(r.pc))
    })?;
    UNWIND_ROWS.get(at).copied()
}

/// Binary search in `steps` steps among the `n` entries from `first`, sorted by `key`: the
/// last one whose key is at or before `target`.
#[inline(always)]
fn last_at_or_before(
    first: u32,
    n: u32,
    steps: usize,
    target: u64,
    key: impl Fn(u32) -> Option<u64>,
) -> Option<u32> {
    let (mut lo, mut hi) = (first, first.saturating_add(n));
    let mut step = 0;
    while step < steps {
        if lo < hi {
            let mid = lo + (hi - lo) / 2;
            if key(mid)? <= target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        step += 1;
    }
    (lo != first).then(|| lo - 1)
}
