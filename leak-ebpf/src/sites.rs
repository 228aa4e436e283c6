//! Per-site totals: the outstanding bytes and allocations of each (stack, process), kept with
//! the records so that a growth sample reads one entry per site instead of every record.
//! Used by the allocation table (`table`) as records come and go.
use core::{
    ptr::{read_volatile, write_volatile},
    sync::atomic::{Ordering, compiler_fence},
};

use aya_ebpf::bindings::BPF_NOEXIST;
use leak_common::{
    AllocInfo, DropReason, SITE_BUCKET_SLOTS, SiteBucket, SiteKey, SiteTotal, table_bucket,
};

use crate::maps::{SITE_BUCKET_MASK, SITE_TABLE, SITES, atomic_add, cas, count_drop};

/// Adds the block `info` to its site's totals (`add`), or takes it out.
///
/// A lookup and two atomic adds per allocation and per free: what lets a growth sample read
/// one entry per site instead of every record. The lookup is in `SITE_TABLE` (array lookups
/// and compares: a hash-map lookup cost about 20 ns of each probe here); SITES serves a site
/// whose bucket is full.
#[inline(always)]
pub fn site_add(info: &AllocInfo, add: bool) {
    let (bytes, count) = if add { (info.size, 1) } else { (info.size.wrapping_neg(), u64::MAX) };
    let slot = match site_slot(info.stack_id, info.tgid, add) {
        Some(slot) => slot,
        None => match site_in_map(info, add) {
            Some(slot) => slot,
            None => return,
        },
    };
    // SAFETY: aligned u64 fields of a live map value.
    unsafe {
        atomic_add(&raw mut (*slot).bytes, bytes);
        atomic_add(&raw mut (*slot).count, count);
    }
}

/// The totals of site (`stack_id`, `tgid`) in `SITE_TABLE`, claiming a free slot of its
/// bucket when `claim`. `None`: not there (stack id 0 is never there: 0 marks a free slot).
#[inline(always)]
fn site_slot(stack_id: u64, tgid: u32, claim: bool) -> Option<*mut SiteTotal> {
    // The compatible object: SITES only (no compare-and-swap to claim a slot with).
    if stack_id == 0 || crate::COMPAT {
        return None;
    }
    let b: *mut SiteBucket =
        SITE_TABLE.get_ptr_mut(table_bucket(stack_id, tgid, SITE_BUCKET_MASK.load()))?;
    // SAFETY: fields of a live map value; indexes below SITE_BUCKET_SLOTS.
    unsafe {
        let stacks = (&raw mut (*b).stacks).cast::<u64>();
        let tgids = (&raw mut (*b).tgids).cast::<u32>();
        let totals = (&raw mut (*b).totals).cast::<SiteTotal>();
        let mut i = 0;
        while i < SITE_BUCKET_SLOTS {
            if read_volatile(stacks.add(i)) == stack_id && read_volatile(tgids.add(i)) == tgid {
                return Some(totals.add(i));
            }
            i += 1;
        }
        if !claim {
            return None;
        }
        i = 0;
        while i < SITE_BUCKET_SLOTS {
            let s = stacks.add(i);
            if read_volatile(s) == 0 && cas(s, 0, stack_id) {
                compiler_fence(Ordering::Release);
                write_volatile(tgids.add(i), tgid);
                return Some(totals.add(i));
            }
            i += 1;
        }
    }
    None
}

/// The totals of `info`'s site in SITES, created when adding.
#[inline(always)]
fn site_in_map(info: &AllocInfo, add: bool) -> Option<*mut SiteTotal> {
    let key = SiteKey::new(info.stack_id, info.tgid);
    if let Some(slot) = SITES.get_ptr_mut(key) {
        return Some(slot);
    }
    // Taking out a block the totals never had (see `DropReason::SiteMapFull`).
    if !add {
        return None;
    }
    // EEXIST: another CPU created it first.
    // Zeroed field by field: `SiteTotal::default()` compiles to a call to a BPF `memset`,
    // a subprogram the verifier charges 32 bytes of stack on every chain through here.
    let mut zero = core::mem::MaybeUninit::<SiteTotal>::uninit();
    let z = zero.as_mut_ptr();
    // SAFETY: initializes both fields of a local.
    let zero = unsafe {
        write_volatile(&raw mut (*z).bytes, 0);
        write_volatile(&raw mut (*z).count, 0);
        zero.assume_init_ref()
    };
    let _ = SITES.insert(key, zero, u64::from(BPF_NOEXIST));
    let slot = SITES.get_ptr_mut(key);
    if slot.is_none() {
        count_drop(DropReason::SiteMapFull);
    }
    slot
}
