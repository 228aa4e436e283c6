//! User space's view of the allocation table (`leak_common::AllocBucket`): the BPF arrays
//! `ALLOC_TABLE` and `ALLOC_SPILLS` mapped into our memory. A snapshot of a million records
//! reads them in place instead of copying them out through syscalls, and forks and exits
//! write them with the same compare-and-swap protocol the BPF programs follow.
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::{Ebpf, maps::Map};
use leak_common::{
    ALLOC_BUCKET_SLOTS, ALLOC_INFO_OWNER_OFFSET, AllocBucket, AllocInfo, AllocKey, AllocLayout,
    MAP_ALLOC_SPILLS, MAP_ALLOC_TABLE, MAP_SITE_TABLE, SITE_BUCKET_SLOTS, SiteBucket, SiteTotal,
    table_bucket,
};

/// Reads of a slot's fields, at most, before a snapshot leaves a record that keeps changing
/// to the next one (see [`AllocTable::records`]).
const SETTLE_READS: usize = 4;

/// One BPF array's values, mapped shared and writable.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes of the values of the mmappable array `name`.
    fn new(ebpf: &Ebpf, name: &'static str, len: usize) -> io::Result<Self> {
        let Some(Map::Array(data)) = ebpf.map(name) else {
            return Err(io::Error::other(format!("BPF map {name} is not an array")));
        };
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks the length
        // against the array's size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("mapping BPF map {name}: {e}")));
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned 0"))?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The allocation table and its per-bucket spill counts.
pub struct AllocTable {
    table: NonNull<AllocBucket>,
    spills: NonNull<AtomicU64>,
    layout: AllocLayout,
    /// What keeps `table` and `spills` alive.
    _backing: Backing,
}

enum Backing {
    /// The BPF arrays.
    Mapped { _table: Mapping, _spills: Mapping },
    /// Our own memory (unit tests: the slot protocol without a kernel).
    #[cfg(test)]
    Memory { _table: Box<[AllocBucket]>, _spills: Box<[AtomicU64]> },
}

// SAFETY: the mappings are shared memory that BPF programs on every CPU write concurrently;
// every access goes through atomics or volatile reads validated by the slot protocol, so
// using them from another thread adds nothing new.
unsafe impl Send for AllocTable {}
// SAFETY: as above.
unsafe impl Sync for AllocTable {}

/// Where one slot lives.
#[derive(Clone, Copy)]
struct Slot {
    addr: *const AtomicU64,
    owner: *const AtomicU64,
    info: *const AllocInfo,
}

impl Slot {
    fn addr(&self) -> &AtomicU64 {
        // SAFETY: an aligned u64 inside a live mapping (see `AllocTable::slot`).
        unsafe { &*self.addr }
    }

    fn owner(&self) -> &AtomicU64 {
        // SAFETY: as above.
        unsafe { &*self.owner }
    }

    /// The record's size, time and stack (read while the owner word says it is published).
    /// Ordered before any load after it (the owner word's check that follows): a seqlock
    /// reader's fence, nothing on x86-64, a barrier on aarch64.
    fn fields(&self) -> (u64, u64, u64) {
        // SAFETY: aligned fields inside a live mapping; volatile: BPF programs write them.
        let fields = unsafe {
            (
                std::ptr::read_volatile(&raw const (*self.info).size),
                std::ptr::read_volatile(&raw const (*self.info).timestamp_ns),
                std::ptr::read_volatile(&raw const (*self.info).stack_id),
            )
        };
        std::sync::atomic::fence(Ordering::Acquire);
        fields
    }

    /// Writes a record's fields into a slot this thread has claimed.
    fn write_fields(&self, info: &AllocInfo) {
        let info_mut = self.info.cast_mut();
        // SAFETY: as above; the slot is claimed, so nothing else writes these fields.
        unsafe {
            std::ptr::write_volatile(&raw mut (*info_mut).size, info.size);
            std::ptr::write_volatile(&raw mut (*info_mut).timestamp_ns, info.timestamp_ns);
            std::ptr::write_volatile(&raw mut (*info_mut).stack_id, info.stack_id);
        }
    }
}

impl AllocTable {
    /// Maps the loaded object's table, laid out as `layout` says.
    ///
    /// # Errors
    /// The arrays are missing or cannot be mapped.
    pub fn new(ebpf: &Ebpf, layout: AllocLayout) -> io::Result<Self> {
        let buckets = layout.buckets as usize;
        let table = Mapping::new(
            ebpf,
            MAP_ALLOC_TABLE,
            page_round(buckets * std::mem::size_of::<AllocBucket>()),
        )?;
        let spills = Mapping::new(ebpf, MAP_ALLOC_SPILLS, page_round(buckets * 8))?;
        Ok(Self {
            table: table.ptr.cast(),
            spills: spills.ptr.cast(),
            layout,
            _backing: Backing::Mapped { _table: table, _spills: spills },
        })
    }

    /// A table in our own memory.
    #[cfg(test)]
    fn in_memory(layout: AllocLayout) -> Self {
        let mut table = vec![AllocBucket::default(); layout.buckets as usize].into_boxed_slice();
        let spills: Box<[AtomicU64]> = (0..layout.buckets).map(|_| AtomicU64::new(0)).collect();
        Self {
            // Pointers to the whole slices (the boxes' heap memory does not move with them).
            table: NonNull::new(table.as_mut_ptr()).expect("a box"),
            spills: NonNull::new(spills.as_ptr().cast_mut()).expect("a box"),
            layout,
            _backing: Backing::Memory { _table: table, _spills: spills },
        }
    }

    fn slot(&self, bucket: usize, s: usize) -> Slot {
        debug_assert!(bucket < self.layout.buckets as usize && s < ALLOC_BUCKET_SLOTS);
        // SAFETY: bucket < buckets: inside the mapping, which holds `buckets` buckets laid out
        // as `AllocBucket`s (an array's values are contiguous, each 8-byte aligned).
        unsafe {
            let b = self.table.as_ptr().add(bucket);
            let info = (&raw const (*b).infos).cast::<AllocInfo>().add(s);
            Slot {
                addr: (&raw const (*b).addrs).cast::<AtomicU64>().add(s),
                owner: info.cast::<u8>().add(ALLOC_INFO_OWNER_OFFSET).cast(),
                info,
            }
        }
    }

    /// Bucket `i`'s count of records in `ALLOCS`.
    fn spill_count(&self, i: u32) -> &AtomicU64 {
        assert!(i < self.layout.buckets);
        // SAFETY: i < buckets: an aligned u64 inside the mapping.
        unsafe { &*self.spills.as_ptr().add(i as usize) }
    }

    fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        (0..self.layout.buckets as usize)
            .flat_map(move |b| (0..self.layout.slots as usize).map(move |s| self.slot(b, s)))
    }

    /// Every record published in the table. A slot that changes while it is read (freed,
    /// or freed and taken again) is left out: that block is being freed or made right now.
    pub fn records(&self, mut each: impl FnMut(AllocKey, AllocInfo)) {
        for slot in self.slots() {
            let addr = slot.addr().load(Ordering::Acquire);
            if addr == 0 {
                continue;
            }
            let word = slot.owner().load(Ordering::Acquire);
            let (tgid, kind) = split_owner(word);
            if tgid == 0 {
                continue;
            }
            // The same address and owner word before and after is not enough: the block can
            // be freed and its address handed out again in the same process by the same
            // allocator function (glibc carves a 1 KiB block out of a freed 4 KiB one), and a
            // read across that rewrite pairs one record's size with another's stack (seen
            // here as a 1 KiB-per-block site 3 KiB off under a churn of 3 million calls a
            // second). So the fields are read twice with the owner word checked between and
            // after, as a seqlock reader retries: a half-written record exists only while its
            // owner word is 0 (written last, cleared first), so a read between two checks
            // that saw the word is of one whole record. (Two reads alone agreed on a mix
            // once, the writer preempted across both and done before the last check, with
            // the same owner word as before: CI, under load.) A slot still changing after
            // that is in flight and left to the next snapshot.
            let same = || {
                slot.owner().load(Ordering::Acquire) == word
                    && slot.addr().load(Ordering::Acquire) == addr
            };
            let stable = (0..SETTLE_READS).find_map(|_| {
                let first = slot.fields();
                if !same() {
                    return None;
                }
                let second = slot.fields();
                (first == second && same()).then_some(first)
            });
            let Some((size, timestamp_ns, stack_id)) = stable else { continue };
            each(AllocKey::new(addr, tgid), AllocInfo { size, timestamp_ns, stack_id, tgid, kind });
        }
    }

    /// Removes every record of process `tgid` from the table. Returns how many.
    pub fn remove_process(&self, tgid: u32) -> usize {
        let mut n = 0;
        for slot in self.slots() {
            let word = slot.owner().load(Ordering::Acquire);
            if word == 0 || split_owner(word).0 != tgid {
                continue;
            }
            // As the BPF removal does: the owner word first, then the slot.
            if slot.owner().compare_exchange(word, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                slot.addr().store(0, Ordering::Release);
                n += 1;
            }
        }
        n
    }

    /// Records `info` at `key` in a free slot of its bucket. Returns false when the bucket is
    /// full (the record then belongs in `ALLOCS`: see [`Self::note_spilled`]).
    pub fn insert(&self, key: AllocKey, info: &AllocInfo) -> bool {
        let b = self.bucket_of(key);
        for s in 0..self.layout.slots as usize {
            let slot = self.slot(b as usize, s);
            if slot.addr().load(Ordering::Acquire) == 0
                && slot
                    .addr()
                    .compare_exchange(0, key.addr, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                slot.write_fields(info);
                slot.owner().store(info.owner_word(), Ordering::Release);
                return true;
            }
        }
        false
    }

    /// Counts records of `key`'s bucket added to (`delta` 1) or removed from (`u64::MAX`)
    /// `ALLOCS`.
    pub fn note_spilled(&self, key: AllocKey, delta: u64) {
        self.spill_count(self.bucket_of(key)).fetch_add(delta, Ordering::AcqRel);
    }

    /// Whether full buckets spill into `ALLOCS`.
    #[must_use]
    pub fn spills(&self) -> bool {
        self.layout.spill > 0
    }

    fn bucket_of(&self, key: AllocKey) -> u32 {
        table_bucket(key.addr, key.tgid, self.layout.buckets - 1)
    }
}

/// The per-site totals' table (`leak_common::SiteBucket`), mapped.
pub struct SiteTable {
    buckets: usize,
    map: Mapping,
}

// SAFETY: as for `AllocTable`.
unsafe impl Send for SiteTable {}
// SAFETY: as above.
unsafe impl Sync for SiteTable {}

impl SiteTable {
    /// Maps the loaded object's site table of `buckets` buckets.
    ///
    /// # Errors
    /// The array is missing or cannot be mapped.
    pub fn new(ebpf: &Ebpf, buckets: u32) -> io::Result<Self> {
        let buckets = buckets as usize;
        let len = page_round(buckets * std::mem::size_of::<SiteBucket>());
        Ok(Self { buckets, map: Mapping::new(ebpf, MAP_SITE_TABLE, len)? })
    }

    fn bucket(&self, b: usize) -> *mut SiteBucket {
        assert!(b < self.buckets);
        // SAFETY: b < buckets: inside the mapping (page-aligned, so aligned for the buckets).
        unsafe { self.map.ptr.cast::<SiteBucket>().as_ptr().add(b) }
    }

    /// Every published slot: (stack id, process, bytes, count), the totals as the atomic adds
    /// left them (two's complement for a removal counted first).
    pub fn sites(&self, mut each: impl FnMut(u64, u32, u64, u64)) {
        for b in 0..self.buckets {
            let bucket = self.bucket(b);
            for s in 0..SITE_BUCKET_SLOTS {
                // SAFETY: aligned fields inside the mapping, written by BPF programs (read
                // volatile; a slot being claimed shows process 0 and is skipped).
                unsafe {
                    let stack = std::ptr::read_volatile(&raw const (*bucket).stacks[s]);
                    let tgid = std::ptr::read_volatile(&raw const (*bucket).tgids[s]);
                    if stack == 0 || tgid == 0 {
                        continue;
                    }
                    let total = &raw const (*bucket).totals[s];
                    let read = || {
                        (
                            std::ptr::read_volatile(&raw const (*total).bytes),
                            std::ptr::read_volatile(&raw const (*total).count),
                        )
                    };
                    // Bytes and count are two atomic adds: read until two reads agree, so
                    // that a pair is of one instant (see `AllocTable::records`).
                    let mut pair = read();
                    for _ in 1..SETTLE_READS {
                        let again = read();
                        if again == pair {
                            break;
                        }
                        pair = again;
                    }
                    each(stack, tgid, pair.0, pair.1);
                }
            }
        }
    }

    /// Frees every slot of process `tgid` (it exited: no program adds to them any more).
    pub fn remove_process(&self, tgid: u32) {
        for b in 0..self.buckets {
            let bucket = self.bucket(b);
            for s in 0..SITE_BUCKET_SLOTS {
                // SAFETY: as above; the slot is freed last (its stack id), as BPF claims it.
                unsafe {
                    if std::ptr::read_volatile(&raw const (*bucket).tgids[s]) != tgid {
                        continue;
                    }
                    std::ptr::write_volatile(&raw mut (*bucket).totals[s], SiteTotal::default());
                    std::ptr::write_volatile(&raw mut (*bucket).tgids[s], 0);
                    std::sync::atomic::fence(Ordering::Release);
                    std::ptr::write_volatile(&raw mut (*bucket).stacks[s], 0);
                }
            }
        }
    }
}

/// The process and the hook of an owner word.
fn split_owner(word: u64) -> (u32, u32) {
    #[expect(clippy::cast_possible_truncation, reason = "the word's two halves")]
    let halves = (word as u32, (word >> 32) as u32);
    halves
}

fn page_round(len: usize) -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    len.div_ceil(page) * page
}

#[cfg(test)]
mod tests {
    use leak_common::alloc_layout;

    use super::*;

    fn info(size: u64, tgid: u32) -> AllocInfo {
        AllocInfo { size, timestamp_ns: 5, stack_id: 7, tgid, kind: 3 }
    }

    fn all(t: &AllocTable) -> Vec<(AllocKey, AllocInfo)> {
        let mut v = Vec::new();
        t.records(|k, i| v.push((k, i)));
        v.sort_by_key(|(k, _)| (k.tgid, k.addr));
        v
    }

    /// The table shared between threads, as it is with the BPF programs: its memory is only
    /// read and written through atomics and volatile accesses.
    struct Shared<'a>(&'a AllocTable);
    // SAFETY: see above; the kernel's programs share the real one the same way.
    unsafe impl Sync for Shared<'_> {}

    #[test]
    fn a_record_rewritten_while_read_is_never_read_torn() {
        // One slot whose block is freed and its address handed out again to the same process
        // by the same allocator function, over and over (the owner word and the address are
        // the same before and after): every record read is one of the two, whole.
        let t = AllocTable::in_memory(alloc_layout(8));
        let key = AllocKey::new(0x1000, 9);
        let a = AllocInfo { size: 4096, timestamp_ns: 1, stack_id: 0xa, tgid: 9, kind: 0 };
        let b = AllocInfo { size: 1024, timestamp_ns: 2, stack_id: 0xb, tgid: 9, kind: 0 };
        let stop = std::sync::atomic::AtomicBool::new(false);
        let shared = Shared(&t);
        let (mut reads, mut torn) = (0u64, Vec::new());
        std::thread::scope(|s| {
            s.spawn(|| {
                let t = shared.0;
                for i in 0u64.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    t.insert(key, if i % 2 == 0 { &a } else { &b });
                    // Published a moment, so that whole reads happen too (without it, a
                    // loaded machine saw none in 200,000).
                    for _ in 0..64 {
                        std::hint::spin_loop();
                    }
                    t.remove_process(9);
                }
            });
            for _ in 0..200_000 {
                t.records(|k, r| {
                    if k != key || (r != a && r != b) {
                        torn.push(r);
                    }
                    reads += 1;
                });
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert!(torn.is_empty(), "torn records: {torn:?}");
        assert!(reads > 0, "the record was seen");
    }

    #[test]
    fn records_read_back_as_written() {
        let t = AllocTable::in_memory(alloc_layout(1000));
        let a = AllocKey::new(0x1000, 10);
        // The same address in another process (a forked child) is another record.
        let b = AllocKey::new(0x1000, 11);
        assert!(t.insert(a, &info(16, 10)));
        assert!(t.insert(b, &info(32, 11)));
        assert_eq!(all(&t), [(a, info(16, 10)), (b, info(32, 11))]);
        assert_eq!(t.remove_process(10), 1);
        assert_eq!(all(&t), [(b, info(32, 11))]);
        assert_eq!(t.remove_process(10), 0);
    }

    #[test]
    fn a_full_bucket_refuses_and_its_spills_are_counted() {
        // One bucket of 8 slots.
        let t = AllocTable::in_memory(alloc_layout(12));
        assert!(t.spills());
        for i in 0..8 {
            assert!(t.insert(AllocKey::new(0x100 + i * 16, 1), &info(i, 1)), "slot {i}");
        }
        let ninth = AllocKey::new(0x900, 1);
        assert!(!t.insert(ninth, &info(9, 1)));
        assert_eq!(all(&t).len(), 8);
        t.note_spilled(ninth, 1);
        assert_eq!(t.spill_count(0).load(Ordering::Relaxed), 1);
        t.note_spilled(ninth, u64::MAX);
        assert_eq!(t.spill_count(0).load(Ordering::Relaxed), 0);
        // A freed slot is taken again.
        assert_eq!(t.remove_process(1), 8);
        assert!(t.insert(ninth, &info(9, 1)));
    }

    #[test]
    fn an_unpublished_slot_is_not_a_record() {
        let t = AllocTable::in_memory(alloc_layout(8));
        // Claimed (address in) but its owner word not written yet: a BPF program between
        // the two steps.
        t.slot(0, 3).addr().store(0x5000, Ordering::Release);
        assert!(all(&t).is_empty());
        // Being removed: owner word swapped to 0, address not yet cleared.
        assert!(t.insert(AllocKey::new(0x6000, 2), &info(1, 2)));
        let slot =
            (0..8).map(|s| t.slot(0, s)).find(|s| s.addr().load(Ordering::Relaxed) == 0x6000);
        slot.expect("inserted").owner().store(0, Ordering::Release);
        assert!(all(&t).is_empty());
        // A capacity under one bucket uses that many slots only.
        let small = AllocTable::in_memory(alloc_layout(4));
        assert!(!small.spills());
        let inserted =
            (0..6).filter(|i| small.insert(AllocKey::new(0x10 * (i + 1), 1), &info(1, 1)));
        assert_eq!(inserted.count(), 4);
    }
}
