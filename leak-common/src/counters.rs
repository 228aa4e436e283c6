//! Drop and hit counters: why an event was lost or only partly recorded, and each hook's
//! hits.

/// Name of the per-CPU array of drop counters, indexed by [`DropReason`].
pub const MAP_DROPS: &str = "DROPS";

/// Name of the per-CPU array of probe hit counters, indexed by [`hit_index`].
pub const MAP_HITS: &str = "HITS";

/// Length of the counter arrays [`MAP_DROPS`] and [`MAP_HITS`].
pub const COUNTER_SLOTS: u32 = 2 * MAX_HOOKS;

/// Hooks per traced process at most. A hook is one hooked function (a symbol in one object);
/// its index in the loader's hook list is the attach cookie of its probes, the `kind` of the
/// allocations it makes, and (times two, plus one for the return) its index in [`MAP_HITS`].
pub const MAX_HOOKS: u32 = 128;

/// Index of hook `cookie`'s entry (`exit` false) or return (`exit` true) counter in [`MAP_HITS`].
#[must_use]
pub const fn hit_index(cookie: u32, exit: bool) -> u32 {
    cookie * 2 + exit as u32
}

/// Why an event was lost or only partly recorded: indexes of [`MAP_DROPS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// The allocation table and [`MAP_ALLOCS`](crate::MAP_ALLOCS) had no room: an allocation was not recorded.
    AllocMapFull = 0,
    /// No buffer or thread slot for the stack walk: the allocation is recorded without a
    /// stack.
    StackMissing = 1,
    /// [`MAP_STACKS`](crate::MAP_STACKS) was full: the allocation is recorded, its stack is not.
    StackMapFull = 2,
    /// A return probe found no arguments from its entry probe (entry missed, or stash evicted).
    MissingEntry = 3,
    /// `free` (or `realloc`) of a pointer that is not recorded: allocated before the probes
    /// were attached, or its allocation was dropped.
    UnknownFree = 4,
    /// The entry probe could not stash its arguments.
    PendingFull = 5,
    /// A thread's stash was left by a call whose return never arrived, and was replaced.
    StalePending = 6,
    /// `posix_memalign` succeeded but its out-pointer could not be read.
    ReadFailed = 7,
    /// An `munmap` range overlapped more recorded mappings than one call can trim: some
    /// stay recorded although unmapped.
    UnmapOverflow = 8,
    /// [`MAP_SITES`](crate::MAP_SITES) was full: a block is recorded but its site's totals leave it out (growth
    /// samples then undercount the site; reports, which sum the records, do not).
    SiteMapFull = 9,
    /// An `munmap` (or `MAP_FIXED` mapping) range that a kernel without map iteration (before
    /// 5.13, the compatible object) could not search whole: a recorded mapping in it may stay
    /// recorded although unmapped.
    UnmapUnchecked = 10,
    /// A probe fired at an address leak did not register for the process (the compatible
    /// object finds hooks by address): the call was not followed.
    UnknownHook = 11,
    /// A growth profile's page map ([`MAP_PAGES`](crate::MAP_PAGES)) was full: a page made
    /// resident was not recorded.
    PageMapFull = 12,
    /// A page fault taken inside a system call (a `read()` into fresh memory) by the
    /// compatible object (kernels before 5.17), which uses no `bpf_task_pt_regs`: the page is
    /// recorded without a stack.
    FaultInKernel = 13,
}

impl DropReason {
    /// Every reason, in index order.
    pub const ALL: [Self; 14] = [
        Self::AllocMapFull,
        Self::StackMissing,
        Self::StackMapFull,
        Self::MissingEntry,
        Self::UnknownFree,
        Self::PendingFull,
        Self::StalePending,
        Self::ReadFailed,
        Self::UnmapOverflow,
        Self::SiteMapFull,
        Self::UnmapUnchecked,
        Self::UnknownHook,
        Self::PageMapFull,
        Self::FaultInKernel,
    ];

    /// Stable name used in reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::AllocMapFull => "alloc_map_full",
            Self::StackMissing => "stack_missing",
            Self::StackMapFull => "stack_map_full",
            Self::MissingEntry => "missing_entry",
            Self::UnknownFree => "unknown_free",
            Self::PendingFull => "pending_full",
            Self::StalePending => "stale_pending",
            Self::ReadFailed => "read_failed",
            Self::UnmapOverflow => "unmap_overflow",
            Self::SiteMapFull => "site_map_full",
            Self::UnmapUnchecked => "unmap_unchecked",
            Self::UnknownHook => "unknown_hook",
            Self::PageMapFull => "page_map_full",
            Self::FaultInKernel => "fault_in_kernel",
        }
    }

    /// What a count of this reason means to a reader of a report, and what to do about it
    /// (the JSON reference, docs/json.md, lists these).
    #[must_use]
    pub const fn meaning(self) -> &'static str {
        match self {
            Self::AllocMapFull => {
                "Allocations not recorded: the table of outstanding allocations was full. \
                 Raise --max-allocs."
            }
            Self::StackMissing => {
                "Allocations recorded without a stack: the kernel could not walk it. They \
                 appear under `[no stack]`."
            }
            Self::StackMapFull => {
                "Allocations recorded without a stack: the stack map was full. Raise \
                 --max-stacks."
            }
            Self::MissingEntry => {
                "Returns of an allocator call whose entry was not seen (the call began before \
                 the probes were attached, or its stash was evicted): the block is not recorded."
            }
            Self::UnknownFree => {
                "Frees of blocks not recorded: allocated before the probes were attached \
                 (normal when attaching to a running process), or dropped above."
            }
            Self::PendingFull => {
                "Allocator calls not followed: the per-thread stash of call arguments was full \
                 (more threads in allocator calls at once than it holds)."
            }
            Self::StalePending => {
                "Calls whose return never arrived (a thread exited or longjmp'd inside the \
                 allocator): their stash was replaced."
            }
            Self::ReadFailed => {
                "posix_memalign calls whose result could not be read from the process: the \
                 block is not recorded."
            }
            Self::UnmapOverflow => {
                "munmap calls that overlapped more recorded mappings than one call can trim: \
                 some stay recorded although unmapped."
            }
            Self::SiteMapFull => {
                "Blocks recorded but left out of their site's running totals (the site map was \
                 full): growth samples undercount the site; reports, which sum the records, do \
                 not."
            }
            Self::UnmapUnchecked => {
                "munmap ranges a kernel before 5.13 (the compatible object) could not search \
                 whole: a recorded mapping in them may stay recorded although unmapped."
            }
            Self::UnknownHook => {
                "Probe hits at an address not registered for the process (compatible object): \
                 the call was not followed."
            }
            Self::PageMapFull => {
                "Pages made resident that a growth profile could not record: its page map was \
                 full. Raise --max-pages."
            }
            Self::FaultInKernel => {
                "Pages a system call made resident (a read() into fresh memory) under the \
                 compatible object (kernels before 5.17), which does not read the caller's \
                 registers there: recorded under `[no stack]`."
            }
        }
    }
}
