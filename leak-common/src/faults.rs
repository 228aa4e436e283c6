//! The growth profile: pages made resident, recorded by the page-fault program with the user
//! stack that touched them first. A page's record is an [`AllocKey`](crate::AllocKey) (its
//! address and process) mapped to an [`AllocInfo`](crate::AllocInfo) whose `size` is the
//! page's, so a profile is read, aggregated and reported like the allocations of an exact
//! trace.

/// Name of the hash map `(page, process) -> AllocInfo` of recorded pages. Preallocated: the
/// kernels before 6.1 let `perf_event` programs use no other hash map.
pub const MAP_PAGES: &str = "PAGES";

/// Name of the stack map of the growth profile (as [`MAP_STACKS`](crate::MAP_STACKS), which
/// is not preallocated and so out of a `perf_event` program's reach before 6.1).
pub const MAP_FAULT_STACKS: &str = "FAULT_STACKS";

/// Name of the `perf_event` program that runs on each page fault of a profiled process.
pub const PROGRAM_PAGE_FAULT: &str = "page_fault";

/// Default capacity of [`MAP_PAGES`] (`--max-pages`): 1 GiB of 4 KiB pages made resident
/// during the profile (a huge page takes one entry).
pub const DEFAULT_MAX_PAGES: u32 = 1 << 18;

/// The hook index of page faults: their hit counter, and the `kind` of their records.
pub const FAULT_HOOK: u32 = 0;

/// The size of a base page on the architectures leak supports.
pub const PAGE_SIZE: u64 = 4096;
