//! Where snapshots come from: a trait the session (and the loops of `attach` and
//! `controller`) read through, and its implementation over the live BPF maps.
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use leak_common::{
    AllocInfo, AllocKey, MAP_ALLOCS, MAP_DROPS, MAP_FAULT_STACKS, MAP_HITS, MAP_HOOK_IPS,
    MAP_MMAP_COUNTS, MAP_MMAPS, MAP_PAGES, MAP_SITES, MAP_STACKS, SiteKey,
    SiteTotal as BpfSiteTotal, StackTrace,
};

use crate::{
    analysis::model::{Allocation, DropCounts, ProbeHits, SiteTotal, Snapshot, Totals},
    trace::loader::Tracer,
    trace::pagemap::{LastLook, PageState, Pagemap},
};

/// Errors reading the maps.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A map is missing from the object.
    #[error("BPF map {0} not found")]
    MissingMap(&'static str),
    /// A map read failed.
    #[error("reading BPF map {map}: {source}")]
    Read {
        /// Map name.
        map: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// A source of allocation snapshots.
pub trait AllocSource {
    /// Everything outstanding now, with counters.
    ///
    /// # Errors
    /// The source could not be read.
    fn snapshot(&mut self) -> Result<Snapshot, SourceError>;

    /// Every site's outstanding bytes and allocations now, from running totals (one entry
    /// per site: cheap where a snapshot of millions of records is not).
    ///
    /// # Errors
    /// The source could not be read.
    fn totals(&mut self) -> Result<Totals, SourceError>;

    /// The frames of one stack (innermost first), `None` if unknown.
    ///
    /// # Errors
    /// The source could not be read.
    fn stack(&mut self, stack_id: u64) -> Result<Option<RawStack>, SourceError>;

    /// Forgets every record of process `tgid` (it exec'd or exited). Returns how many.
    ///
    /// # Errors
    /// The source could not be written.
    fn purge(&mut self, tgid: u32) -> Result<usize, SourceError>;

    /// Gives process `to` a copy of every record of process `from`: a forked child holds a
    /// copy of its parent's memory. Returns how many.
    ///
    /// # Errors
    /// The source could not be written.
    fn copy_process(&mut self, from: u32, to: u32) -> Result<usize, SourceError>;
}

/// A stack as the BPF walk stored it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawStack {
    /// Return addresses, innermost first.
    pub ips: Vec<u64>,
    /// How the walk ended, when it says (walks by unwind tables do).
    pub end: Option<crate::analysis::model::StackEnd>,
}

impl AllocSource for Tracer {
    fn snapshot(&mut self) -> Result<Snapshot, SourceError> {
        if self.growth {
            return self.resident_pages();
        }
        // Read the clock before walking the map: allocations made during the walk then have
        // timestamps after `taken_ns` and count as age 0, never as negative ages.
        let taken_ns = monotonic_ns();
        let started = std::time::Instant::now();
        let convert = |key: AllocKey, info: AllocInfo| Allocation {
            addr: key.addr,
            size: info.size,
            timestamp_ns: info.timestamp_ns,
            stack_id: info.stack_id,
            tgid: key.tgid,
            kind: info.kind,
        };
        let mut allocations = Vec::new();
        self.table.records(|k, v| allocations.push(convert(k, v)));
        if self.table.spills() {
            let Some(Map::HashMap(map)) = self.ebpf.map(MAP_ALLOCS) else {
                return Err(SourceError::MissingMap(MAP_ALLOCS));
            };
            let spilled = lookup_batch(map.fd().as_fd(), convert)
                .map_err(|source| SourceError::Read { map: MAP_ALLOCS, source })?;
            allocations.extend(spilled);
        }
        let mut drops = DropCounts::default();
        read_counters(&self.ebpf, MAP_DROPS, &mut drops.0)?;
        let mut hits = ProbeHits::default();
        read_counters(&self.ebpf, MAP_HITS, &mut hits.0)?;
        log::debug!("snapshot of {} records in {:.1?}", allocations.len(), started.elapsed());
        Ok(Snapshot { taken_ns, allocations, drops, hits })
    }

    fn totals(&mut self) -> Result<Totals, SourceError> {
        if self.growth {
            return Ok(totals_of(&self.resident_pages()?));
        }
        let taken_ns = monotonic_ns();
        let Some(Map::HashMap(map)) = self.ebpf.map(MAP_SITES) else {
            return Err(SourceError::MissingMap(MAP_SITES));
        };
        // A site can have a slot in the table and an entry in SITES (a full bucket, a forked
        // child's copied totals), even two slots (a claim race): added up, wrapping, as the
        // atomic adds were.
        let mut sum: hashbrown::HashMap<(u64, u32), (u64, u64)> = hashbrown::HashMap::new();
        let mut add = |stack_id: u64, tgid: u32, bytes: u64, count: u64| {
            let e = sum.entry((stack_id, tgid)).or_default();
            e.0 = e.0.wrapping_add(bytes);
            e.1 = e.1.wrapping_add(count);
        };
        self.sites.sites(&mut add);
        let in_map =
            lookup_batch(map.fd().as_fd(), |key: SiteKey, total: BpfSiteTotal| (key, total))
                .map_err(|source| SourceError::Read { map: MAP_SITES, source })?;
        for (key, total) in in_map {
            add(key.stack_id, key.tgid, total.bytes, total.count);
        }
        // A removal may be counted a moment before its record (see
        // `leak_common::SiteTotal`): a negative value is read as nothing.
        let positive = |v: u64| if i64::try_from(v).is_ok() { v } else { 0 };
        let sites = sum
            .into_iter()
            .map(|((stack_id, tgid), (bytes, count))| SiteTotal {
                stack_id,
                tgid,
                bytes: positive(bytes),
                count: positive(count),
            })
            .collect();
        let mut hits = ProbeHits::default();
        read_counters(&self.ebpf, MAP_HITS, &mut hits.0)?;
        Ok(Totals { taken_ns, sites, hits })
    }

    fn purge(&mut self, tgid: u32) -> Result<usize, SourceError> {
        if self.growth {
            let pages = self.entries_of::<AllocKey, AllocInfo>(MAP_PAGES, |k| k.tgid == tgid)?;
            delete_all(&self.ebpf, MAP_PAGES, &pages)?;
            self.last_look.remove(&tgid);
            self.baseline.remove(&tgid);
            return Ok(pages.len());
        }
        let mut n = self.table.remove_process(tgid);
        self.sites.remove_process(tgid);
        let allocs = self.entries_of::<AllocKey, AllocInfo>(MAP_ALLOCS, |k| k.tgid == tgid)?;
        let mmaps = self.entries_of::<AllocKey, u64>(MAP_MMAPS, |k| k.tgid == tgid)?;
        let sites = self.entries_of::<SiteKey, BpfSiteTotal>(MAP_SITES, |k| k.tgid == tgid)?;
        delete_all(&self.ebpf, MAP_ALLOCS, &allocs)?;
        for (k, _) in &allocs {
            self.table.note_spilled(*k, u64::MAX);
        }
        delete_all(&self.ebpf, MAP_MMAPS, &mmaps)?;
        delete_all(&self.ebpf, MAP_SITES, &sites)?;
        // The compatible object's per-process state: its hooks by address and its counts of
        // recorded mappings.
        let hooks = self.entries_of::<AllocKey, u64>(MAP_HOOK_IPS, |k| k.tgid == tgid)?;
        delete_all(&self.ebpf, MAP_HOOK_IPS, &hooks)?;
        let counts = self.entries_of::<u32, [u64; 2]>(MAP_MMAP_COUNTS, |k| *k == tgid)?;
        delete_all(&self.ebpf, MAP_MMAP_COUNTS, &counts)?;
        n += allocs.len();
        Ok(n)
    }

    fn copy_process(&mut self, from: u32, to: u32) -> Result<usize, SourceError> {
        // A growth profile: the pages a child shares with its parent are the parent's; what
        // it writes it copies, faulting, and that is its own growth.
        if self.growth {
            return Ok(0);
        }
        let mut allocs = Vec::new();
        self.table.records(|k, v| {
            if k.tgid == from {
                allocs.push((k, v));
            }
        });
        allocs.extend(self.entries_of::<AllocKey, AllocInfo>(MAP_ALLOCS, |k| k.tgid == from)?);
        let mmaps = self.entries_of::<AllocKey, u64>(MAP_MMAPS, |k| k.tgid == from)?;
        // The child's site totals are those of the records it gets (the parent's other
        // threads may allocate meanwhile, so the parent's totals could differ).
        let mut sites: hashbrown::HashMap<u64, BpfSiteTotal> = hashbrown::HashMap::new();
        let mut copied = 0;
        for (k, v) in &allocs {
            let key = AllocKey::new(k.addr, to);
            let info = AllocInfo { tgid: to, ..*v };
            if !self.table.insert(key, &info) {
                if !self.table.spills() {
                    continue;
                }
                let mut map = self.hash_mut::<AllocKey, AllocInfo>(MAP_ALLOCS)?;
                map.insert(key, info, 0).map_err(write_err(MAP_ALLOCS))?;
                self.table.note_spilled(key, 1);
            }
            copied += 1;
            let site = sites.entry(v.stack_id).or_default();
            site.bytes += v.size;
            site.count += 1;
        }
        let mut map = self.hash_mut::<AllocKey, u64>(MAP_MMAPS)?;
        for (k, end) in &mmaps {
            map.insert(AllocKey::new(k.addr, to), *end, 0).map_err(write_err(MAP_MMAPS))?;
        }
        // The compatible object counts each process's recorded mappings: the child's are
        // those it got, and it has the parent's large ones.
        let large = self
            .entries_of::<u32, [u64; 2]>(MAP_MMAP_COUNTS, |k| *k == from)?
            .first()
            .map_or(0, |(_, c)| c[1]);
        if !mmaps.is_empty() || large > 0 {
            let mut map = self.hash_mut::<u32, [u64; 2]>(MAP_MMAP_COUNTS)?;
            let counts = [mmaps.len() as u64, large];
            map.insert(to, counts, 0).map_err(write_err(MAP_MMAP_COUNTS))?;
        }
        let mut map = self.hash_mut::<SiteKey, BpfSiteTotal>(MAP_SITES)?;
        for (stack_id, total) in &sites {
            map.insert(SiteKey::new(*stack_id, to), total, 0).map_err(write_err(MAP_SITES))?;
        }
        Ok(copied)
    }

    fn stack(&mut self, stack_id: u64) -> Result<Option<RawStack>, SourceError> {
        let name = if self.growth { MAP_FAULT_STACKS } else { MAP_STACKS };
        let map = self.ebpf.map(name).ok_or(SourceError::MissingMap(name))?;
        let stacks: BpfHashMap<&MapData, u64, StackTrace> = BpfHashMap::try_from(map)
            .map_err(|e| SourceError::Read { map: name, source: io::Error::other(e) })?;
        match stacks.get(&stack_id, 0) {
            Ok(trace) => Ok(Some(RawStack {
                ips: trace.frames().to_vec(),
                end: crate::analysis::model::StackEnd::from_code(trace.end()),
            })),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(SourceError::Read { map: name, source: io::Error::other(e) }),
        }
    }
}

impl Tracer {
    /// A growth profile's snapshot: the recorded pages that `/proc/PID/pagemap` shows
    /// resident and the process's own, each an allocation of its page's size. Pages released
    /// since are deleted (the next fault there is new growth). Pages that were resident when
    /// the profile started are not its growth, whatever faults them again (a swap-in, a NUMA
    /// hint, a copy after a fork), until they have been released once. A process whose
    /// pagemap cannot be read (it has exited: its memory at the end) holds its last look's
    /// pages and those faulted since at new addresses (`LastLook::state`); nothing of it is
    /// deleted.
    fn resident_pages(&mut self) -> Result<Snapshot, SourceError> {
        let taken_ns = monotonic_ns();
        let started = std::time::Instant::now();
        let mut pages = self.entries_of::<AllocKey, AllocInfo>(MAP_PAGES, |_| true)?;
        pages.sort_unstable_by_key(|(k, _)| (k.tgid, k.addr));
        let mut allocations = Vec::new();
        let mut gone = Vec::new();
        for group in pages.chunk_by(|a, b| a.0.tgid == b.0.tgid) {
            let tgid = group[0].0.tgid;
            let addrs: Vec<u64> = group.iter().map(|(k, _)| k.addr).collect();
            let read = Pagemap::open(tgid).and_then(|p| p.states(&addrs));
            let alive = procfs_alive(tgid);
            let states: Vec<PageState> = match read {
                Ok(states) if alive => states,
                failed => {
                    if alive && let Err(e) = failed {
                        log::warn!(
                            "pid {tgid}: cannot read its pagemap ({e}): its last pages kept"
                        );
                    }
                    let last = self.last_look.get(&tgid).unwrap_or(&self.no_look);
                    // Nothing is deleted: a page read as gone here was released.
                    group.iter().map(|(k, i)| last.state(k.addr, i.timestamp_ns, i.size)).collect()
                }
            };
            let baseline = self.baseline.get_mut(&tgid);
            let mut seen = hashbrown::HashMap::new();
            let mut before_profile = baseline;
            for ((key, info), state) in group.iter().zip(states) {
                let old = before_profile.as_mut().is_some_and(|b| b.contains(key.addr));
                let size = match state {
                    PageState::Resident(_) if old => continue,
                    PageState::Resident(size) => size,
                    PageState::Gone if !alive => continue,
                    PageState::Gone => {
                        if let Some(b) = before_profile.as_mut() {
                            b.release(key.addr);
                        }
                        seen.insert(key.addr, 0);
                        gone.push((*key, info.timestamp_ns));
                        continue;
                    }
                    PageState::NotOwn | PageState::Swapped => continue,
                };
                seen.insert(key.addr, size);
                allocations.push(Allocation {
                    addr: key.addr,
                    size,
                    timestamp_ns: info.timestamp_ns,
                    stack_id: info.stack_id,
                    tgid: key.tgid,
                    kind: info.kind,
                });
            }
            if alive {
                self.last_look.insert(tgid, LastLook { taken_ns, pages: seen });
            }
        }
        if !gone.is_empty() {
            // Only records not faulted again since they were read: a page released and
            // touched again meanwhile (a buffer mapped anew at the same address) is resident.
            let map = self.hash_mut::<AllocKey, AllocInfo>(MAP_PAGES)?;
            let gone: Vec<(AllocKey, ())> = gone
                .into_iter()
                .filter(|(k, t)| map.get(k, 0).is_ok_and(|now| now.timestamp_ns == *t))
                .map(|(k, _)| (k, ()))
                .collect();
            delete_all(&self.ebpf, MAP_PAGES, &gone)?;
        }
        let mut drops = DropCounts::default();
        read_counters(&self.ebpf, MAP_DROPS, &mut drops.0)?;
        let mut hits = ProbeHits::default();
        read_counters(&self.ebpf, MAP_HITS, &mut hits.0)?;
        log::debug!(
            "growth snapshot: {} pages resident of {} recorded, in {:.1?}",
            allocations.len(),
            pages.len(),
            started.elapsed()
        );
        Ok(Snapshot { taken_ns, allocations, drops, hits })
    }

    /// The entries of a hash map whose key passes `keep`.
    fn entries_of<K: aya::Pod + Default, V: aya::Pod + Default>(
        &self,
        name: &'static str,
        keep: impl Fn(&K) -> bool,
    ) -> Result<Vec<(K, V)>, SourceError> {
        let map = self.ebpf.map(name).ok_or(SourceError::MissingMap(name))?;
        let Map::HashMap(data) = map else { return Err(SourceError::MissingMap(name)) };
        let all = lookup_batch(data.fd().as_fd(), |k: K, v: V| (k, v))
            .map_err(|source| SourceError::Read { map: name, source })?;
        Ok(all.into_iter().filter(|(k, _)| keep(k)).collect())
    }

    fn hash_mut<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<BpfHashMap<&mut MapData, K, V>, SourceError> {
        let map = self.ebpf.map_mut(name).ok_or(SourceError::MissingMap(name))?;
        BpfHashMap::try_from(map)
            .map_err(|e| SourceError::Read { map: name, source: io::Error::other(e) })
    }
}

/// Whether process `tgid` still has its memory (not exited, not a zombie).
fn procfs_alive(tgid: u32) -> bool {
    std::fs::metadata(format!("/proc/{tgid}/pagemap")).is_ok()
        && std::fs::read_to_string(format!("/proc/{tgid}/statm"))
            .is_ok_and(|s| !s.starts_with("0 "))
}

/// Per-site totals summed from a snapshot's records.
fn totals_of(snap: &Snapshot) -> Totals {
    let mut sum: hashbrown::HashMap<(u64, u32), (u64, u64)> = hashbrown::HashMap::new();
    for a in &snap.allocations {
        let e = sum.entry((a.stack_id, a.tgid)).or_default();
        e.0 += a.size;
        e.1 += 1;
    }
    let sites = sum
        .into_iter()
        .map(|((stack_id, tgid), (bytes, count))| SiteTotal { stack_id, tgid, bytes, count })
        .collect();
    Totals { taken_ns: snap.taken_ns, sites, hits: snap.hits.clone() }
}

/// Deletes the keys of `entries` from hash map `name`.
fn delete_all<K: Copy, V>(
    ebpf: &aya::Ebpf,
    name: &'static str,
    entries: &[(K, V)],
) -> Result<(), SourceError> {
    let Some(Map::HashMap(map)) = ebpf.map(name) else {
        return Err(SourceError::MissingMap(name));
    };
    let keys: Vec<K> = entries.iter().map(|(k, _)| *k).collect();
    delete_batch(map.fd().as_fd(), &keys).map_err(|source| SourceError::Read { map: name, source })
}

/// A map write error as a `SourceError`.
fn write_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> SourceError {
    move |e| SourceError::Read { map, source: io::Error::other(e) }
}

fn read_counters(ebpf: &aya::Ebpf, name: &'static str, out: &mut [u64]) -> Result<(), SourceError> {
    let map = ebpf.map(name).ok_or(SourceError::MissingMap(name))?;
    let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)
        .map_err(|e| SourceError::Read { map: name, source: io::Error::other(e) })?;
    for (i, slot) in out.iter_mut().enumerate() {
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        let values = array
            .get(&index, 0)
            .map_err(|e| SourceError::Read { map: name, source: io::Error::other(e) })?;
        *slot = values.iter().sum();
    }
    Ok(())
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns` reads.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// `BPF_MAP_LOOKUP_BATCH` command number.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// `BPF_MAP_DELETE_BATCH` command number.
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Runs a batch command of the `bpf` syscall.
///
/// # Safety
/// `attr`'s pointers must be valid for what `cmd` reads and writes through them.
unsafe fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: the caller's contract; `attr` is a live `union bpf_attr` prefix of its size.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, &raw mut *attr, std::mem::size_of::<BatchAttr>())
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Deletes `keys` from a hash map with `BPF_MAP_DELETE_BATCH`: a few syscalls instead of one
/// per key (a million records took 1.6 s one by one). A key already gone (freed meanwhile)
/// stops the kernel's batch at that key with ENOENT; the rest goes on from the next one.
fn delete_batch<K>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    let mut done = 0;
    while done < keys.len() {
        let rest = &keys[done..];
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: u32::try_from(rest.len()).unwrap_or(u32::MAX),
            map_fd: u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX),
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points to `count` keys of the map's key type (the caller's K matches
        // the map definition), alive for the call; the kernel only reads them.
        let Err(err) = (unsafe { bpf_batch(BPF_MAP_DELETE_BATCH, &mut attr) }) else {
            return Ok(());
        };
        if err.raw_os_error() != Some(libc::ENOENT) {
            return Err(err);
        }
        // attr.count keys were deleted; the next one was missing.
        done += attr.count as usize + 1;
    }
    Ok(())
}

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Reads a whole hash map with `BPF_MAP_LOOKUP_BATCH` (aya 0.14 has no batch API).
///
/// Walking a hash map key by key (`get_next_key`) restarts from the first key whenever the
/// current key was deleted meanwhile, which under allocation churn repeats entries or never
/// ends. The batch walk goes bucket by bucket (the cursor is a bucket index), so every entry
/// present for the whole walk is seen exactly once. It also needs a few syscalls per
/// thousands of entries instead of two per entry.
fn lookup_batch<K: Copy + Default, V: Copy + Default, T>(
    fd: BorrowedFd<'_>,
    mut convert: impl FnMut(K, V) -> T,
) -> io::Result<Vec<T>> {
    let mut chunk: usize = 4096;
    let mut out = Vec::new();
    // Hash maps use a u32 bucket index as the batch cursor.
    let mut cursor_in: u32 = 0;
    let mut cursor_out: u32 = 0;
    let mut first = true;
    loop {
        let mut keys = vec![K::default(); chunk];
        let mut values = vec![V::default(); chunk];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw const cursor_in) as u64 },
            out_batch: (&raw mut cursor_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(chunk).unwrap_or(u32::MAX),
            map_fd: u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX),
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points to buffers of `chunk` keys and values of the map's key and
        // value types (the caller's K and V match the map definition) and to the cursors,
        // all alive for the call.
        let err = unsafe { bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr) }.err();
        let n = attr.count as usize;
        match err.as_ref().and_then(io::Error::raw_os_error) {
            // A bucket holds more entries than fit: retry it with a bigger chunk.
            Some(libc::ENOSPC) => {
                chunk *= 2;
                continue;
            }
            None | Some(libc::ENOENT) => {}
            Some(_) => return Err(err.unwrap_or_else(|| io::Error::other("batch lookup"))),
        }
        out.extend(keys.into_iter().zip(values).take(n).map(|(k, v)| convert(k, v)));
        if err.is_some() {
            // ENOENT: the walk is complete.
            return Ok(out);
        }
        cursor_in = cursor_out;
        first = false;
    }
}
