//! Unwind tables handed to the BPF stack walk: each object's rows in `UNWIND_ROWS` (once,
//! for every process that maps it) and each process's executable mappings in
//! `UNWIND_MAPPINGS`, switched by generation so a walk never sees half a set. Attaching does
//! not do this: the caller loads a process's tables before attaching its probes, and again
//! as it maps libraries.
use aya::Ebpf;
use log::{debug, warn};

use super::Tracer;

/// The objects whose unwind rows are in `UNWIND_ROWS`.
#[derive(Debug, Default)]
pub(super) struct UnwindTables {
    /// Next free row.
    next: u32,
    /// Capacity of the array.
    capacity: u32,
    /// By (inode, path): its rows (first, count) and loadable segments; `None` when it has
    /// no table or did not fit.
    objects: std::collections::HashMap<(u64, String), Option<ObjectRows>>,
    /// Objects left without rows because the array was full.
    overflowed: usize,
    /// Each process's slot in `UNWIND_MAPPINGS`.
    slots: std::collections::HashMap<u32, u32>,
    /// Mapping sets written so far (each one's generation).
    generations: u64,
    /// Which of its two sets in `UNWIND_MAPPINGS` each process uses now.
    halves: std::collections::HashMap<u32, u32>,
    /// Each process's executable mappings (start, end, inode) when last written.
    written: std::collections::HashMap<u32, Vec<(u64, u64, u64)>>,
}

/// Where one object's rows are, and its loadable segments.
#[derive(Debug)]
struct ObjectRows {
    first: u32,
    count: u32,
    segments: Vec<crate::trace::unwind::Segment>,
}

impl UnwindTables {
    /// Room for `capacity` rows, none used.
    pub(super) fn new(capacity: u32) -> Self {
        Self { capacity, ..Self::default() }
    }
}

impl Tracer {
    /// Gives the stack walk the unwind tables of process `pid`'s executable mappings (each
    /// object's rows are loaded once, for every process that maps it). Without a table, or
    /// when the row array is full, a mapping's frames fall back to the frame pointer (auto)
    /// or end the stack (dwarf). Failures are logged, never fatal: stacks then lose depth.
    /// Called again as the process runs: nothing is done unless its executable mappings
    /// changed (a library loaded with `dlopen`, or unloaded).
    pub fn load_unwind_tables(&mut self, pid: u32) {
        let Some(tables) = self.unwind.as_mut() else { return };
        let began = std::time::Instant::now();
        let Ok(maps) = crate::procfs::read_maps(pid) else { return };
        let executable: Vec<(u64, u64, u64)> = maps
            .iter()
            .filter(|m| m.is_file() && m.perms.contains('x'))
            .map(|m| (m.start, m.end, m.inode))
            .collect();
        if executable.is_empty() || tables.written.get(&pid) == Some(&executable) {
            return;
        }
        tables.written.insert(pid, executable);
        let root = crate::procfs::RootPath::of(pid);
        let mut entries = Vec::new();
        for m in maps.iter().filter(|m| m.is_file() && m.perms.contains('x')) {
            let key = (m.inode, m.file_path().unwrap_or_default().to_owned());
            if !tables.objects.contains_key(&key) {
                let rows = object_rows(&mut self.ebpf, tables, pid, &root, m);
                tables.objects.insert(key.clone(), rows);
            }
            let Some(Some(obj)) = tables.objects.get(&key) else { continue };
            let exec = m.perms.contains('x');
            let Some(vaddr) = crate::trace::unwind::mapping_vaddr(&obj.segments, m.offset, exec)
            else {
                continue;
            };
            entries.push(leak_common::UnwindMap {
                start: m.start,
                end: m.end,
                bias: m.start.wrapping_sub(vaddr),
                first: obj.first,
                count: obj.count,
            });
        }
        entries.sort_by_key(|e| e.start);
        let max = leak_common::MAX_UNWIND_MAPS as usize;
        if entries.len() > max {
            warn!(
                "pid {pid}: {} executable mappings, unwind tables for the first {max} only",
                entries.len()
            );
            entries.truncate(max);
        }
        let next_slot = u32::try_from(tables.slots.len()).unwrap_or(u32::MAX);
        let slot = *tables.slots.entry(pid).or_insert(next_slot);
        if slot >= leak_common::MAX_UNWIND_PROCESSES {
            warn!("pid {pid}: unwind tables for {slot} processes already: frame pointers only");
            return;
        }
        tables.generations += 1;
        let generation = tables.generations;
        // The set the walk is not reading: it switches with the UNWIND_MAPS entry, at once.
        let half = *tables.halves.entry(pid).and_modify(|h| *h ^= 1).or_insert(0);
        let first = (slot * 2 + half) * leak_common::MAX_UNWIND_MAPS;
        match write_mappings(&mut self.ebpf, pid, (first, generation), &entries) {
            Ok(()) => debug!(
                "pid {pid}: unwind tables for {} mappings, {} rows loaded in all, {:?}",
                entries.len(),
                tables.next,
                began.elapsed()
            ),
            Err(e) => warn!("pid {pid}: cannot load unwind tables ({e}): frame pointers only"),
        }
    }
}

/// Builds the unwind table of mapping `m`'s object and appends its rows to `UNWIND_ROWS`.
fn object_rows(
    ebpf: &mut Ebpf,
    tables: &mut UnwindTables,
    pid: u32,
    root: &crate::procfs::RootPath,
    m: &crate::procfs::MapEntry,
) -> Option<ObjectRows> {
    let name = m.file_path().unwrap_or_default();
    let path = crate::procfs::locate(pid, root, m)?;
    let data = std::fs::read(&path).map_err(|e| debug!("reading {name}: {e}")).ok()?;
    let table = crate::trace::unwind::build(&data).map_err(|e| debug!("{name}: {e}")).ok()?;
    let count = u32::try_from(table.rows.len()).ok()?;
    if count == 0 {
        debug!("{name}: no call frame information");
        return None;
    }
    let first = tables.next;
    if tables.capacity.saturating_sub(first) < count {
        tables.overflowed += 1;
        warn!(
            "{name}: no room for its {count} unwind rows ({} of {} used): raise --unwind-rows",
            first, tables.capacity
        );
        return None;
    }
    let map = ebpf.map_mut(leak_common::MAP_UNWIND_ROWS)?;
    let mut array = aya::maps::Array::<_, leak_common::UnwindRow>::try_from(map).ok()?;
    for (i, row) in (first..).zip(&table.rows) {
        if let Err(e) = array.set(i, row, 0) {
            warn!("{name}: writing its unwind rows: {e}");
            return None;
        }
    }
    tables.next = first + count;
    Some(ObjectRows { first, count, segments: crate::trace::unwind::load_segments(&data) })
}

/// Writes process `pid`'s mappings at `first` in `UNWIND_MAPPINGS`, then points its
/// `UNWIND_MAPS` entry at them.
fn write_mappings(
    ebpf: &mut Ebpf,
    pid: u32,
    (first, generation): (u32, u64),
    entries: &[leak_common::UnwindMap],
) -> Result<(), aya::maps::MapError> {
    let missing = |name: &str| aya::maps::MapError::InvalidName { name: name.into() };
    let map = ebpf
        .map_mut(leak_common::MAP_UNWIND_MAPPINGS)
        .ok_or_else(|| missing(leak_common::MAP_UNWIND_MAPPINGS))?;
    let mut array = aya::maps::Array::<_, leak_common::UnwindMap>::try_from(map)?;
    for (i, e) in (first..).zip(entries) {
        array.set(i, e, 0)?;
    }
    let n = u32::try_from(entries.len()).unwrap_or(0);
    let map = ebpf
        .map_mut(leak_common::MAP_UNWIND_MAPS)
        .ok_or_else(|| missing(leak_common::MAP_UNWIND_MAPS))?;
    aya::maps::HashMap::<_, u32, leak_common::ProcessMaps>::try_from(map)?.insert(
        pid,
        leak_common::ProcessMaps { first, n, generation },
        0,
    )?;
    // After the switch: a walk that sees this generation sees the new set (see
    // `leak_common::MAP_UNWIND_GENERATION`).
    let map = ebpf
        .map_mut(leak_common::MAP_UNWIND_GENERATION)
        .ok_or_else(|| missing(leak_common::MAP_UNWIND_GENERATION))?;
    aya::maps::Array::<_, u64>::try_from(map)?.set(0, generation, 0)
}
