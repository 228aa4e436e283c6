//! Unwind tables for the BPF stack walk: rows reduced from `.eh_frame`, and each traced
//! process's executable mappings.

/// How to find the caller's frame from a code address (a call site): one row of an object's
/// unwind table, valid from `pc` up to the next row's. The same rules on x86-64 and aarch64:
/// the CFA (the caller's stack pointer) is the stack or frame pointer plus an offset, the
/// caller's frame pointer is this frame's or saved near the CFA, and so is the return address
/// (always at `CFA - 8` on x86-64; on aarch64 still in `x30` until the prologue saves it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnwindRow {
    /// First address it covers: its ELF virtual address (objects lie far below 4 GiB).
    pub pc: u32,
    /// `CFA = <cfa_reg> + cfa_offset`.
    pub cfa_offset: i32,
    /// Where the caller's frame pointer (`rbp`, `x29`) was saved: `CFA + fp_offset`; 0 when
    /// it was not (the caller's is this frame's; nothing is ever saved at the CFA itself,
    /// which is the caller's frame).
    pub fp_offset: i16,
    /// Where the return address was saved, in 8-byte words from the CFA (`-1` on x86-64);
    /// [`RA_IN_LR`] while it is still in the link register (`x30`), which only the frame a
    /// walk starts in can be in (the others have called).
    pub ra_offset: i8,
    /// [`CFA_SP`], [`CFA_FP`], [`CFA_UNSUPPORTED`], [`CFA_NONE`] or [`CFA_OUTERMOST`].
    pub cfa_reg: u8,
}

/// [`UnwindRow::cfa_reg`]: the CFA is the stack pointer (`rsp`, `sp`) plus the offset.
pub const CFA_SP: u8 = 0;

/// [`UnwindRow::cfa_reg`]: the CFA is the frame pointer (`rbp`, `x29`) plus the offset
/// (code with a frame pointer).
pub const CFA_FP: u8 = 1;

/// [`UnwindRow::cfa_reg`]: a rule this unwinder does not follow (a DWARF expression, as in
/// the PLT and signal frames, or another register).
pub const CFA_UNSUPPORTED: u8 = 2;

/// [`UnwindRow::cfa_reg`]: no unwind information covers these addresses.
pub const CFA_NONE: u8 = 3;

/// [`UnwindRow::cfa_reg`]: the outermost frame: its return address is marked undefined
/// (glibc's `_start` and the start of its threads do so). A stack that ends here is complete.
pub const CFA_OUTERMOST: u8 = 4;

/// [`UnwindRow::fp_offset`]: the caller's frame pointer is this frame's.
pub const FP_SAME: i16 = 0;

/// [`UnwindRow::ra_offset`]: the return address is in the link register.
pub const RA_IN_LR: i8 = 0;

/// The row's rule in one scalar, its `pc` left out: how the BPF row lookup (a global
/// function, which returns a scalar) hands it back.
#[must_use]
#[expect(clippy::inline_always, reason = "BPF: inlined into each program, no BPF-to-BPF call")]
#[inline(always)]
#[expect(clippy::cast_sign_loss, reason = "each field's bits, as they are")]
pub fn pack_rule(r: UnwindRow) -> u64 {
    u64::from(r.cfa_offset as u32)
        | (u64::from(r.fp_offset as u16) << 32)
        | (u64::from(r.ra_offset as u8) << 48)
        | (u64::from(r.cfa_reg) << 56)
}

/// See [`pack_rule`].
#[must_use]
#[expect(clippy::inline_always, reason = "BPF: inlined into each program, no BPF-to-BPF call")]
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "each field's bits, as packed"
)]
pub fn unpack_rule(v: u64) -> UnwindRow {
    UnwindRow {
        pc: 0,
        cfa_offset: v as u32 as i32,
        fp_offset: (v >> 32) as u16 as i16,
        ra_offset: (v >> 48) as u8 as i8,
        cfa_reg: (v >> 56) as u8,
    }
}

/// Name of the array of every loaded object's [`UnwindRow`]s, one table after another.
pub const MAP_UNWIND_ROWS: &str = "UNWIND_ROWS";

/// Name of the map from a traced process (tgid) to its [`ProcessMaps`].
pub const MAP_UNWIND_MAPS: &str = "UNWIND_MAPS";

/// Name of the load-time global that selects how stacks are walked ([`UNWIND_FP`],
/// [`UNWIND_DWARF`] or [`UNWIND_AUTO`]).
pub const GLOBAL_UNWIND: &str = "UNWIND";

/// Name of the load-time global that masks every return address a walk reads: the bits of a
/// user address (aarch64's pointer authentication signs return addresses in the bits above
/// them); all ones where nothing is signed.
pub const GLOBAL_RA_MASK: &str = "RA_MASK";

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
