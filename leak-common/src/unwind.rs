//! Unwind tables for the BPF stack walk: rows reduced from `.eh_frame`, and each traced
//! process's executable mappings.

/// How to find the caller's frame from a code address (a call site): one row of an object's
/// unwind table, valid from `pc` up to the next row's. x86-64 only: the return address is
/// always at `CFA - 8`, and the caller's stack pointer is the CFA.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnwindRow {
    /// First address it covers: its ELF virtual address (objects lie far below 4 GiB).
    pub pc: u32,
    /// `CFA = <cfa_reg> + cfa_offset`.
    pub cfa_offset: i32,
    /// Where the caller's `rbp` was saved: `CFA + rbp_offset` when `rbp_rule` is
    /// [`RBP_AT_CFA`].
    pub rbp_offset: i16,
    /// [`CFA_RSP`], [`CFA_RBP`], [`CFA_UNSUPPORTED`], [`CFA_NONE`] or [`CFA_OUTERMOST`].
    pub cfa_reg: u8,
    /// [`RBP_SAME`] or [`RBP_AT_CFA`].
    pub rbp_rule: u8,
}

/// [`UnwindRow::cfa_reg`]: the CFA is `rsp` plus the offset.
pub const CFA_RSP: u8 = 0;

/// [`UnwindRow::cfa_reg`]: the CFA is `rbp` plus the offset (code with a frame pointer).
pub const CFA_RBP: u8 = 1;

/// [`UnwindRow::cfa_reg`]: a rule this unwinder does not follow (a DWARF expression, as in
/// the PLT and signal frames, or another register).
pub const CFA_UNSUPPORTED: u8 = 2;

/// [`UnwindRow::cfa_reg`]: no unwind information covers these addresses.
pub const CFA_NONE: u8 = 3;

/// [`UnwindRow::cfa_reg`]: the outermost frame: its return address is marked undefined
/// (glibc's `_start` and the start of its threads do so). A stack that ends here is complete.
pub const CFA_OUTERMOST: u8 = 4;

/// [`UnwindRow::rbp_rule`]: the caller's `rbp` is this frame's.
pub const RBP_SAME: u8 = 0;

/// [`UnwindRow::rbp_rule`]: the caller's `rbp` is saved at `CFA + rbp_offset`.
pub const RBP_AT_CFA: u8 = 1;

/// Name of the array of every loaded object's [`UnwindRow`]s, one table after another.
pub const MAP_UNWIND_ROWS: &str = "UNWIND_ROWS";

/// Name of the map from a traced process (tgid) to its [`ProcessMaps`].
pub const MAP_UNWIND_MAPS: &str = "UNWIND_MAPS";

/// Name of the load-time global that selects how stacks are walked ([`UNWIND_FP`],
/// [`UNWIND_DWARF`] or [`UNWIND_AUTO`]).
pub const GLOBAL_UNWIND: &str = "UNWIND";

/// Frame pointers only.
pub const UNWIND_FP: u32 = 0;

/// Unwind tables only: a frame without a row ends the stack.
pub const UNWIND_DWARF: u32 = 1;

/// Unwind tables, and the frame pointer for a frame without a row (code without tables).
pub const UNWIND_AUTO: u32 = 2;

/// Default capacity of [`MAP_UNWIND_ROWS`]: 12 MiB of kernel memory.
pub const DEFAULT_UNWIND_ROWS: u32 = 1 << 20;

/// Executable mappings of one process with unwind tables, at most.
pub const MAX_UNWIND_MAPS: u32 = 128;

/// Processes with tables at once, at most (the capacity of [`MAP_UNWIND_MAPS`]).
pub const MAX_UNWIND_PROCESSES: u32 = 64;

/// Name of the array of [`UnwindMap`]s: two sets of [`MAX_UNWIND_MAPS`] slots per process
/// with tables, written in turn, so that a walk never sees a set half rewritten.
pub const MAP_UNWIND_MAPPINGS: &str = "UNWIND_MAPPINGS";

/// One executable mapping of a traced process and where its object's rows are.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMap {
    /// First address.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// Load bias: a runtime address minus it is the object's ELF virtual address.
    pub bias: u64,
    /// Index of the object's first row in [`MAP_UNWIND_ROWS`].
    pub first: u32,
    /// Its rows.
    pub count: u32,
}

/// Where a traced process's mappings are in [`MAP_UNWIND_MAPPINGS`] (sorted by start): the
/// value of [`MAP_UNWIND_MAPS`]. Arrays rather than one value holding them all: the BPF walk
/// then indexes them through the map, which the verifier checks once, instead of tracking
/// every index of a binary search into a value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessMaps {
    /// Index of its first mapping.
    pub first: u32,
    /// Its mappings.
    pub n: u32,
    /// Changes each time the loader writes a process's mappings: rows the walk cached
    /// (`MAP_ROW_CACHE`) for an earlier set (before an exec) are not taken for this one.
    pub generation: u64,
}

/// Name of the one-entry array holding the generation of the mapping set the loader wrote
/// last (in any process): a thread's memoized walk ([`StackMemo`](crate::StackMemo)) is keyed by it, so that
/// checking the memo needs no lookup of the process's [`ProcessMaps`].
pub const MAP_UNWIND_GENERATION: &str = "UNWIND_GENERATION";

/// Name of the cache of rows the walk has looked up, by process and address.
pub const MAP_ROW_CACHE: &str = "ROW_CACHE";

/// Entries of [`MAP_ROW_CACHE`]: a power of two.
pub const ROW_CACHE_SLOTS: u32 = 1 << 12;
