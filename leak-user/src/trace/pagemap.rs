//! Which recorded pages of a growth profile are still resident and the process's own, read
//! from `/proc/PID/pagemap` (one u64 per virtual page, `Documentation/admin-guide/mm/
//! pagemap.rst`). The cost follows the pages recorded, not the calls: contiguous pages are
//! read in one `pread` (about 90 ns an entry here, against 1.2 µs for a read of one).
use std::{collections::HashSet, fs::File, io, os::unix::fs::FileExt as _, sync::OnceLock};

use leak_common::PAGE_SIZE;

/// Bit 63: the page is present in memory.
const PRESENT: u64 = 1 << 63;
/// Bit 62: the page is in swap.
const SWAPPED: u64 = 1 << 62;
/// Bit 61: a file page or shared anonymous memory (not growth of the process's own).
const FILE_OR_SHARED: u64 = 1 << 61;
/// Bit 56: mapped by this process only (4.2+). The zero page, which a read of fresh memory
/// maps, and pages shared with a parent since a fork are not.
const EXCLUSIVE: u64 = 1 << 56;
/// Bits 0-54: the page frame, zero unless the reader has `CAP_SYS_ADMIN`.
const PFN: u64 = (1 << 55) - 1;

/// Pages in a transparent huge page (2 MiB on x86-64 and 4 KiB-page arm64).
const HUGE_PAGES: u64 = 512;

/// Gaps up to this many pages between recorded pages are read through rather than split into
/// another `pread`.
const READ_THROUGH: u64 = 64;

/// What a recorded page is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    /// Resident and the process's own: counts, with its size (a huge page's whole 2 MiB).
    Resident(u64),
    /// Mapped but not (yet) the process's own: the zero page, or shared with a parent since a
    /// fork. The record stays: a write fault will make it the process's own.
    NotOwn,
    /// In swap: still the process's memory but not resident; the record stays, so its
    /// swap-in is not taken for new growth.
    Swapped,
    /// Released (unmapped, `MADV_DONTNEED`, a freed page reclaimed) or a file's page: the
    /// record goes; the next fault there is new growth.
    Gone,
}

/// A process's pages at the last look that could read them: what its final report holds
/// once it has exited (or been killed) and its pagemap is gone.
#[derive(Debug, Default)]
pub struct LastLook {
    /// When the look began (`CLOCK_MONOTONIC`, as the records' times).
    pub taken_ns: u64,
    /// Each recorded page seen: its size if it was resident (and counted), 0 if released.
    pub pages: hashbrown::HashMap<u64, u64>,
}

impl LastLook {
    /// The state of the page at `addr`, recorded at `recorded_ns` (a page of `size`), once the
    /// process is gone. As last seen if seen; a page faulted since the look at an address it
    /// did not know is new growth and counted (at the victim's rate a look 250 ms old missed a
    /// tenth of its memory, and one three seconds old under an emulated CPU half); a page at an
    /// address seen released is churn (a buffer mapped again where the last was unmapped) and
    /// is not. Older records it did not count (not the process's own, swapped) stay uncounted.
    #[must_use]
    pub fn state(&self, addr: u64, recorded_ns: u64, size: u64) -> PageState {
        match self.pages.get(&addr) {
            Some(0) => PageState::Gone,
            Some(&seen) => PageState::Resident(seen),
            None if recorded_ns >= self.taken_ns => PageState::Resident(size),
            None => PageState::Swapped,
        }
    }
}

/// The state of a page from its pagemap entry; `huge`: the entries of its 2 MiB block, when
/// read, to tell a huge page (one fault mapped all 512) from base pages.
#[must_use]
pub fn classify(entry: u64) -> PageState {
    if entry & PRESENT == 0 {
        return if entry & SWAPPED != 0 { PageState::Swapped } else { PageState::Gone };
    }
    if entry & FILE_OR_SHARED != 0 {
        return PageState::Gone;
    }
    if entry & EXCLUSIVE == 0 {
        return PageState::NotOwn;
    }
    PageState::Resident(PAGE_SIZE)
}

/// [`classify`], telling the zero page by its frame where frames can be read (`zero_pfn` not
/// 0): then a page shared with a forked child (not exclusive, but the process's memory all
/// the same) still counts, where without frames it reads as not the process's own.
#[must_use]
pub fn classify_by_frame(entry: u64, zero_pfn: u64) -> PageState {
    let state = classify(entry);
    let pfn = entry & PFN;
    if state == PageState::NotOwn && pfn != 0 && zero_pfn != 0 && pfn != zero_pfn {
        return PageState::Resident(PAGE_SIZE);
    }
    state
}

/// The zero page's frame, read once from a page of our own that maps it (0 without
/// `CAP_SYS_ADMIN`, which frames need).
fn zero_pfn() -> u64 {
    static ZERO: OnceLock<u64> = OnceLock::new();
    *ZERO.get_or_init(|| {
        let page = 4096_usize;
        // SAFETY: a private anonymous mapping of one page, read once and unmapped.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return 0;
            }
            // A read fault maps the zero page.
            std::ptr::read_volatile(p.cast::<u8>());
            let entry = Pagemap::open(std::process::id()).and_then(|m| m.read(p as u64, 1)).ok();
            libc::munmap(p, page);
            entry.and_then(|e| e.first().copied()).map_or(0, |e| e & PFN)
        }
    })
}

/// Whether `entry`, the entry of the page at `addr`, could be part of a huge page: its frame
/// is where a 2 MiB-aligned run of frames would put it. Only then is the block read (one
/// page in 512 passes by chance). Without `CAP_SYS_ADMIN` frames read as 0 and no page does.
#[must_use]
pub fn may_be_huge(addr: u64, entry: u64) -> bool {
    let pfn = entry & PFN;
    pfn != 0 && pfn % HUGE_PAGES == (addr / PAGE_SIZE) % HUGE_PAGES
}

/// Whether the 512 entries of a 2 MiB-aligned block are one huge page: every page present
/// and the process's own, the frames one aligned run.
#[must_use]
pub fn is_huge(block: &[u64]) -> bool {
    let Some(first) = block.first() else { return false };
    let head = first & PFN;
    block.len() as u64 == HUGE_PAGES
        && head != 0
        && head.is_multiple_of(HUGE_PAGES)
        && block.iter().enumerate().all(|(i, e)| {
            classify(*e) == PageState::Resident(PAGE_SIZE) && e & PFN == head + i as u64
        })
}

/// Runs of sorted page addresses to read in one go: `(first page, pages)`.
#[must_use]
pub fn runs(sorted: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &addr in sorted {
        match out.last_mut() {
            Some((start, n))
                if addr >= *start && addr < *start + (*n + READ_THROUGH) * PAGE_SIZE =>
            {
                *n = (addr - *start) / PAGE_SIZE + 1;
            }
            _ => out.push((addr, 1)),
        }
    }
    out
}

/// A process's pagemap, open.
pub struct Pagemap(File);

impl Pagemap {
    /// Opens the pagemap of `pid` (ptrace-read rights: root, or the same user).
    ///
    /// # Errors
    /// The process is gone, or the file cannot be opened.
    pub fn open(pid: u32) -> io::Result<Self> {
        File::open(format!("/proc/{pid}/pagemap")).map(Self)
    }

    /// The entries of `n` pages from `addr`; pages past the end of the address space read as
    /// 0 (not present).
    ///
    /// # Errors
    /// The read failed (the process exited: its entries are then unknown, not "gone").
    pub fn read(&self, addr: u64, n: u64) -> io::Result<Vec<u64>> {
        let n = usize::try_from(n).unwrap_or(0);
        let mut buf = vec![0u8; n * 8];
        let mut done = 0;
        while done < buf.len() {
            let read = self.0.read_at(&mut buf[done..], (addr / PAGE_SIZE) * 8 + done as u64)?;
            if read == 0 {
                if done == 0 {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                }
                break;
            }
            done += read;
        }
        Ok(buf
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
            .collect())
    }

    /// The state of each page of `sorted` (ascending addresses), in order.
    ///
    /// # Errors
    /// A read failed.
    pub fn states(&self, sorted: &[u64]) -> io::Result<Vec<PageState>> {
        let mut out = Vec::with_capacity(sorted.len());
        let zero = zero_pfn();
        // Each 2 MiB block read once, however many records it holds.
        let mut blocks: hashbrown::HashMap<u64, bool> = hashbrown::HashMap::new();
        let mut i = 0;
        for (start, n) in runs(sorted) {
            let entries = self.read(start, n)?;
            while i < sorted.len() && sorted[i] < start + n * PAGE_SIZE {
                let addr = sorted[i];
                let entry =
                    entries.get(((addr - start) / PAGE_SIZE) as usize).copied().unwrap_or(0);
                let mut state = classify_by_frame(entry, zero);
                if state == PageState::Resident(PAGE_SIZE) && may_be_huge(addr, entry) {
                    let block = addr & !(HUGE_PAGES * PAGE_SIZE - 1);
                    let huge = if let Some(h) = blocks.get(&block) {
                        *h
                    } else {
                        let h = is_huge(&self.read(block, HUGE_PAGES)?);
                        blocks.insert(block, h);
                        h
                    };
                    if huge {
                        state = PageState::Resident(HUGE_PAGES * PAGE_SIZE);
                    }
                }
                out.push(state);
                i += 1;
            }
        }
        share_huge_pages(sorted, &mut out);
        Ok(out)
    }
}

/// Pages resident when a profile started: not its growth, whatever faults them again (a
/// swap-in, a NUMA hint, a copy after a fork), until each is released once.
#[derive(Debug, Default)]
pub struct Baseline {
    /// Runs of resident pages, `[start, end)`, ascending.
    ranges: Vec<(u64, u64)>,
    /// Pages of `ranges` released since.
    released: HashSet<u64>,
}

/// Pages of private writable mappings read for a baseline at the most (128 GiB of address
/// space, about 3 s of reads): a sanitizer's shadow reserves terabytes, nearly all empty.
const BASELINE_MAX_PAGES: u64 = 1 << 25;

/// Entries read at a time for a baseline.
const BASELINE_CHUNK: u64 = 1 << 16;

impl Baseline {
    /// The pages of `pid`'s private writable mappings resident now.
    ///
    /// # Errors
    /// Its maps or pagemap could not be read.
    pub fn read(pid: u32) -> io::Result<Self> {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
        let pagemap = Pagemap::open(pid)?;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut budget = BASELINE_MAX_PAGES;
        for (start, end) in maps.lines().filter_map(private_writable) {
            let mut at = start;
            while at < end && budget > 0 {
                let n = ((end - at) / PAGE_SIZE).min(BASELINE_CHUNK).min(budget);
                budget -= n;
                let Ok(entries) = pagemap.read(at, n) else { break };
                for (i, e) in entries.iter().enumerate() {
                    if e & PRESENT == 0 {
                        continue;
                    }
                    let page = at + i as u64 * PAGE_SIZE;
                    match ranges.last_mut() {
                        Some((_, last)) if *last == page => *last = page + PAGE_SIZE,
                        _ => ranges.push((page, page + PAGE_SIZE)),
                    }
                }
                at += n * PAGE_SIZE;
            }
        }
        Ok(Self { ranges, released: HashSet::new() })
    }

    /// Pages in it.
    #[must_use]
    pub fn pages(&self) -> u64 {
        self.ranges.iter().map(|(a, b)| (b - a) / PAGE_SIZE).sum()
    }

    /// Whether the page at `addr` was resident at the start and has not been released since.
    #[must_use]
    pub fn contains(&self, addr: u64) -> bool {
        let i = self.ranges.partition_point(|(_, end)| *end <= addr);
        self.ranges.get(i).is_some_and(|(start, _)| *start <= addr)
            && !self.released.contains(&addr)
    }

    /// The page at `addr` was released: a fault there from now on is growth.
    pub fn release(&mut self, addr: u64) {
        if self.contains(addr) {
            self.released.insert(addr);
        }
    }
}

/// `[start, end)` of a `/proc/PID/maps` line for a private writable mapping.
fn private_writable(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    let (range, perms) = (fields.next()?, fields.next()?);
    if !(perms.starts_with("rw") && perms.ends_with('p')) {
        return None;
    }
    let (a, b) = range.split_once('-')?;
    Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
}

/// Several recorded pages in one huge page (4 KiB pages that khugepaged collapsed, each
/// faulted on its own before): the huge page counts once. Each record keeps its base page, the
/// first in the block also the rest of the 2 MiB (the collapse's growth, which no fault shows).
fn share_huge_pages(sorted: &[u64], states: &mut [PageState]) {
    let huge = HUGE_PAGES * PAGE_SIZE;
    let mut i = 0;
    while i < states.len() {
        if states[i] != PageState::Resident(huge) {
            i += 1;
            continue;
        }
        let block = sorted[i] & !(huge - 1);
        let end =
            (i..states.len()).find(|&j| sorted[j] & !(huge - 1) != block).unwrap_or(states.len());
        let others = (end - i - 1) as u64;
        states[i] = PageState::Resident(huge - others * PAGE_SIZE);
        for s in &mut states[i + 1..end] {
            *s = PageState::Resident(PAGE_SIZE);
        }
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gone_process_keeps_its_last_look_and_the_new_addresses_faulted_since() {
        let look = LastLook {
            taken_ns: 1_000,
            pages: [(0x1000, PAGE_SIZE), (0x2000, 0), (0x3000, 2 << 20)].into_iter().collect(),
        };
        // As seen: resident (a huge page keeps its size), released.
        assert_eq!(look.state(0x1000, 900, PAGE_SIZE), PageState::Resident(PAGE_SIZE));
        assert_eq!(look.state(0x3000, 1_500, PAGE_SIZE), PageState::Resident(2 << 20));
        assert_eq!(look.state(0x2000, 1_500, PAGE_SIZE), PageState::Gone);
        // New since: counted; older and not counted then: not now.
        assert_eq!(look.state(0x4000, 1_000, PAGE_SIZE), PageState::Resident(PAGE_SIZE));
        assert_eq!(look.state(0x5000, 999, PAGE_SIZE), PageState::Swapped);
    }

    #[test]
    fn entries_classify_as_pagemap_rst_says() {
        assert_eq!(classify(PRESENT | EXCLUSIVE | 0x4d2), PageState::Resident(PAGE_SIZE));
        // The zero page: present, not exclusive, not a file's.
        assert_eq!(classify(PRESENT | 0x4d), PageState::NotOwn);
        assert_eq!(classify(PRESENT | EXCLUSIVE | FILE_OR_SHARED), PageState::Gone);
        assert_eq!(classify(SWAPPED | 0x5), PageState::Swapped);
        assert_eq!(classify(0), PageState::Gone);
    }

    #[test]
    fn a_huge_page_is_one_aligned_run_of_frames() {
        let head = 512 * 9;
        let block: Vec<u64> = (0..512).map(|i| PRESENT | EXCLUSIVE | (head + i)).collect();
        assert!(is_huge(&block));
        // The fault's page anywhere in the block passes the cheap test.
        assert!(may_be_huge(0x4000_0000 + 7 * PAGE_SIZE, block[7]));
        assert!(!may_be_huge(0x4000_0000 + 8 * PAGE_SIZE, block[7]));
        // No frames (not CAP_SYS_ADMIN): never huge.
        assert!(!may_be_huge(0x4000_0000, PRESENT | EXCLUSIVE));
        let mut broken = block.clone();
        broken[300] = PRESENT | EXCLUSIVE | 1;
        assert!(!is_huge(&broken));
        assert!(!is_huge(&block[..511]));
        let mut zero_page = block;
        zero_page[0] &= !EXCLUSIVE;
        assert!(!is_huge(&zero_page));
    }

    #[test]
    fn a_huge_page_counts_once_whatever_its_records() {
        let huge = HUGE_PAGES * PAGE_SIZE;
        let base = 0x4000_0000;
        let sorted = [base, base + PAGE_SIZE, base + 9 * PAGE_SIZE, base + huge];
        let mut states = [PageState::Resident(huge); 4];
        share_huge_pages(&sorted, &mut states);
        assert_eq!(
            states.map(|s| match s {
                PageState::Resident(n) => n,
                _ => 0,
            }),
            [huge - 2 * PAGE_SIZE, PAGE_SIZE, PAGE_SIZE, huge]
        );
        let total: u64 =
            states[..3].iter().map(|s| if let PageState::Resident(n) = s { *n } else { 0 }).sum();
        assert_eq!(total, huge);
    }

    #[test]
    fn a_shared_page_counts_when_frames_tell_the_zero_page() {
        let zero = 0x777;
        // Shared with a forked child: the process's memory all the same.
        assert_eq!(classify_by_frame(PRESENT | 0x1234, zero), PageState::Resident(PAGE_SIZE));
        assert_eq!(classify_by_frame(PRESENT | zero, zero), PageState::NotOwn);
        // Without frames: only exclusive pages count.
        assert_eq!(classify_by_frame(PRESENT, zero), PageState::NotOwn);
        assert_eq!(classify_by_frame(PRESENT | 0x1234, 0), PageState::NotOwn);
    }

    #[test]
    fn a_baseline_holds_runs_until_each_page_is_released() {
        let p = |i: u64| 0x10_0000 + i * PAGE_SIZE;
        let mut b = Baseline { ranges: vec![(p(0), p(3)), (p(10), p(11))], ..Baseline::default() };
        assert_eq!(b.pages(), 4);
        assert!(b.contains(p(0)) && b.contains(p(2)) && b.contains(p(10)));
        assert!(!b.contains(p(3)) && !b.contains(p(9)) && !b.contains(p(11)));
        b.release(p(1));
        assert!(!b.contains(p(1)) && b.contains(p(2)));
        assert_eq!(
            private_writable("7f00-7f10 rw-p 00000000 00:00 0 [heap]"),
            Some((0x7f00, 0x7f10))
        );
        assert_eq!(private_writable("7f00-7f10 r-xp 00000000 08:01 5 /lib/libc.so.6"), None);
        assert_eq!(private_writable("7f00-7f10 rw-s 00000000 00:01 5 /dev/shm/x"), None);
    }

    #[test]
    fn nearby_pages_are_read_in_one_go() {
        let p = |i: u64| 0x10_0000 + i * PAGE_SIZE;
        assert_eq!(runs(&[p(0), p(1), p(5), p(200), p(201)]), [(p(0), 6), (p(200), 2)]);
        assert_eq!(runs(&[]), []);
        assert_eq!(runs(&[p(3)]), [(p(3), 1)]);
    }
}
