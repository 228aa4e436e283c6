//! The table of outstanding allocations (`leak_common::AllocBucket` explains the slot
//! protocol), with `ALLOCS` for records whose bucket is full.
//!
//! Slot accesses are volatile; a record's owner word is published after its fields, and its
//! address given back after its fields were read, with `maps::publish`: a plain store on
//! x86-64 (which keeps stores after earlier stores and loads), an ordered exchange on
//! aarch64. A reader that checked the owner word first sees a record whole.
use core::ptr::read_volatile;

use aya_ebpf::bindings::BPF_NOEXIST;
use leak_common::{
    ALLOC_BUCKET_SLOTS, ALLOC_INFO_OWNER_OFFSET, AllocBucket, AllocInfo, AllocKey, DropReason,
    table_bucket,
};

use crate::{
    maps::{
        ALLOC_BUCKET_MASK, ALLOC_SLOTS, ALLOC_SPILL, ALLOC_SPILLS, ALLOC_TABLE, ALLOCS, atomic_add,
        cas, count_drop, publish,
    },
    sites::site_add,
};

/// The bucket of `key`: its address-slot array, its record array, and its index.
#[inline(always)]
fn bucket_of(key: AllocKey) -> Option<(*mut u64, *mut AllocInfo, u32)> {
    let i = table_bucket(key.addr, key.tgid, ALLOC_BUCKET_MASK.load());
    let b: *mut AllocBucket = ALLOC_TABLE.get_ptr_mut(i)?;
    // SAFETY: fields of a live map value.
    unsafe { Some(((&raw mut (*b).addrs).cast(), (&raw mut (*b).infos).cast(), i)) }
}

/// The owner word (`tgid` and `kind`) of the record at `rec`.
#[inline(always)]
fn owner(rec: *mut AllocInfo) -> *mut u64 {
    // SAFETY: an offset inside the record (`leak_common` checks it).
    unsafe { rec.cast::<u8>().add(ALLOC_INFO_OWNER_OFFSET).cast() }
}

/// Bucket `i`'s count of records in `ALLOCS`, when full buckets spill there.
#[inline(always)]
fn spills(i: u32) -> Option<*mut u64> {
    if ALLOC_SPILL.load() == 0 {
        return None;
    }
    ALLOC_SPILLS.get_ptr_mut(i)
}

/// Records `info` at `key` and adds it to its site. A record already there (a block whose free
/// was missed, the address since reused) leaves its site first and is replaced.
#[inline(always)]
pub fn insert_record(key: AllocKey, info: &AllocInfo) {
    let Some((addrs, infos, i)) = bucket_of(key) else {
        count_drop(DropReason::AllocMapFull);
        return;
    };
    // The compatible object keeps every record in ALLOCS: without compare-and-swap (5.12)
    // a slot cannot be claimed (the loader gives it a table of no slots).
    let slots = if crate::COMPAT { 0 } else { ALLOC_SLOTS.load() as usize };
    let mut s = 0;
    while s < ALLOC_BUCKET_SLOTS && s < slots {
        // SAFETY: s < ALLOC_BUCKET_SLOTS: slots of a live map value. The key is this call's
        // result, so no other program removes or records it now.
        unsafe {
            let rec = infos.add(s);
            if read_volatile(addrs.add(s)) == key.addr
                && read_volatile(&raw const (*rec).tgid) == key.tgid
            {
                site_add(&*rec, false);
                (*rec).size = info.size;
                (*rec).timestamp_ns = info.timestamp_ns;
                (*rec).stack_id = info.stack_id;
                (*rec).kind = info.kind;
                site_add(info, true);
                return;
            }
        }
        s += 1;
    }
    let spilled = spills(i);
    if let Some(n) = spilled
        // SAFETY: a live map value.
        && unsafe { read_volatile(n) } != 0
        && let Some(old) = ALLOCS.get_ptr_mut(key)
    {
        // SAFETY: a live map value; the key is this call's result, as above.
        unsafe {
            site_add(&*old, false);
            *old = *info;
        }
        site_add(info, true);
        return;
    }
    s = 0;
    while s < ALLOC_BUCKET_SLOTS && s < slots {
        // SAFETY: as above; the slot is ours once the swap succeeds.
        unsafe {
            let addr = addrs.add(s);
            if read_volatile(addr) == 0 && cas(addr, 0, key.addr) {
                let rec = infos.add(s);
                (*rec).size = info.size;
                (*rec).timestamp_ns = info.timestamp_ns;
                (*rec).stack_id = info.stack_id;
                publish(owner(rec), info.owner_word());
                site_add(info, true);
                return;
            }
        }
        s += 1;
    }
    let Some(n) = spilled else {
        count_drop(DropReason::AllocMapFull);
        return;
    };
    if ALLOCS.insert(key, info, u64::from(BPF_NOEXIST)).is_err() {
        count_drop(DropReason::AllocMapFull);
        return;
    }
    // SAFETY: a live map value.
    unsafe { atomic_add(n, 1) };
    site_add(info, true);
}

/// [`insert_record`] as a BPF global function, its record passed as scalars (`owner`:
/// `AllocInfo::owner_word`, the process and the hook). Called from programs whose stack is
/// already deep (a return probe's, an unmap's): its frame is its own, a leaf next to the
/// stack walk's chain instead of on it.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn leak_insert_record(
    addr: u64,
    size: u64,
    timestamp_ns: u64,
    stack_id: u64,
    owner: u64,
) -> i32 {
    #[expect(clippy::cast_possible_truncation, reason = "the two halves of the owner word")]
    let info =
        AllocInfo { size, timestamp_ns, stack_id, tgid: owner as u32, kind: (owner >> 32) as u32 };
    insert_record(AllocKey::new(addr, info.tgid), &info);
    0
}

/// Removes the record at `key` and takes it out of its site. Returns it, if there was one (of
/// two threads racing to free one block, only one gets it).
#[inline(always)]
pub fn remove_record(key: AllocKey) -> Option<AllocInfo> {
    let (addrs, infos, i) = bucket_of(key)?;
    let slots = if crate::COMPAT { 0 } else { ALLOC_SLOTS.load() as usize };
    let mut s = 0;
    while s < ALLOC_BUCKET_SLOTS && s < slots {
        // SAFETY: s < ALLOC_BUCKET_SLOTS: slots of a live map value; the record is ours once
        // the owner word is swapped to 0, until the address is.
        unsafe {
            let addr = addrs.add(s);
            if read_volatile(addr) == key.addr {
                let rec = infos.add(s);
                let word = read_volatile(owner(rec));
                #[expect(clippy::cast_possible_truncation, reason = "the tgid half")]
                if word as u32 == key.tgid && cas(owner(rec), word, 0) {
                    let info = AllocInfo {
                        size: (*rec).size,
                        timestamp_ns: (*rec).timestamp_ns,
                        stack_id: (*rec).stack_id,
                        tgid: key.tgid,
                        kind: (word >> 32) as u32,
                    };
                    publish(addr, 0);
                    site_add(&info, false);
                    return Some(info);
                }
            }
        }
        s += 1;
    }
    let n = spills(i)?;
    // SAFETY: a live map value.
    if unsafe { read_volatile(n) } == 0 {
        return None;
    }
    // SAFETY: a live map value, copied out.
    let info = unsafe { *ALLOCS.get_ptr(key)? };
    // Only the thread whose delete succeeds takes the block out (a double free racing).
    ALLOCS.remove(key).ok()?;
    // SAFETY: a live map value.
    unsafe { atomic_add(n, u64::MAX) };
    site_add(&info, false);
    Some(info)
}
