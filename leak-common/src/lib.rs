//! Types shared between leak's BPF programs (`leak-ebpf`) and its user-space side (`leak-user`).
//!
//! Design constraints:
//! - Every type that crosses the kernel boundary is `#[repr(C)]`, `Copy`, fixed-size and has
//!   explicit padding: the BPF side writes raw bytes, the user side reads them back as `Pod`.
//! - No `bool` fields (hidden padding, and the verifier needs every byte initialized).
//! - Enum discriminants are explicit and stable: they index counter arrays and appear in reports.
//!   Add new ones at the end; never reuse a retired number.
#![no_std]
#![deny(missing_docs)]

/// Name of the hash map `address -> AllocInfo` of outstanding allocations.
pub const MAP_ALLOCS: &str = "ALLOCS";
/// Name of the hash map `stack id -> StackTrace` of user stacks.
pub const MAP_STACKS: &str = "STACKS";
/// Name of the LRU map carrying arguments from an entry probe to its return probe.
pub const MAP_PENDING: &str = "PENDING";
/// Name of the per-CPU array of drop counters, indexed by [`DropReason`].
pub const MAP_DROPS: &str = "DROPS";
/// Name of the per-CPU array of probe hit counters, indexed by [`Probe`].
pub const MAP_HITS: &str = "HITS";
/// Name of the per-thread buffers the exit probes collect a stack into.
pub const MAP_STACK_SCRATCH: &str = "STACK_SCRATCH";
/// Name of the one-entry array of zeros that new [`MAP_STACK_SCRATCH`] entries are copied from.
pub const MAP_ZERO_STACK: &str = "ZERO_STACK";

/// Read-only global: only this tgid is traced (0: no filter).
pub const GLOBAL_FILTER_TGID: &str = "FILTER_TGID";
/// Read-only global: non-zero turns on per-event BPF logging (very slow; debugging only).
pub const GLOBAL_TRACE: &str = "TRACE";

/// Default capacity of [`MAP_ALLOCS`] (outstanding allocations).
pub const DEFAULT_MAX_ALLOCS: u32 = 1 << 20;
/// Default capacity of [`MAP_STACKS`] (distinct allocation stacks).
pub const DEFAULT_MAX_STACKS: u32 = 1 << 16;
/// Capacity of [`MAP_PENDING`]: threads in flight inside an allocator at once.
pub const MAX_PENDING: u32 = 1 << 14;
/// Capacity of [`MAP_STACK_SCRATCH`]: threads with a stack buffer (LRU: idle ones are evicted).
pub const MAX_SCRATCH_THREADS: u32 = 1 << 12;
/// Frames kept per stack; the kernel's default `perf_event_max_stack`.
pub const MAX_STACK_DEPTH: usize = 127;
/// Length of the counter arrays [`MAP_DROPS`] and [`MAP_HITS`]; room to add entries.
pub const COUNTER_SLOTS: u32 = 32;

/// `AllocInfo::stack_id` when no stack could be taken (see [`DropReason::StackMissing`]).
pub const STACK_ID_NONE: u64 = 0;

/// Keys of [`MAP_PENDING`] are the thread's `pid_tgid` with one of these bits set for the calls
/// that may run another hooked function inside them (glibc's `realloc(NULL, n)` calls `malloc`),
/// so the inner call's entry cannot overwrite the outer call's arguments. `pid_tgid` has the tgid
/// in bits 32..54 (`PID_MAX_LIMIT` is 2^22), so bits 62 and 63 are always free.
pub const PENDING_KEY_CALLOC: u64 = 1 << 62;
/// See [`PENDING_KEY_CALLOC`].
pub const PENDING_KEY_REALLOC: u64 = 1 << 63;

/// Which allocator function made an allocation.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AllocKind {
    /// `malloc`
    Malloc = 0,
    /// `calloc`
    Calloc = 1,
    /// `realloc`
    Realloc = 2,
}

impl AllocKind {
    /// Decodes a raw value, `None` for values this build does not know.
    #[must_use]
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Malloc),
            1 => Some(Self::Calloc),
            2 => Some(Self::Realloc),
            _ => None,
        }
    }

    /// The C function name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Malloc => "malloc",
            Self::Calloc => "calloc",
            Self::Realloc => "realloc",
        }
    }
}

/// One outstanding allocation, the value of [`MAP_ALLOCS`] (key: the returned address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocInfo {
    /// Requested size in bytes.
    pub size: u64,
    /// `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`) at the allocator's return.
    pub timestamp_ns: u64,
    /// Key into [`MAP_STACKS`]: a 64-bit hash of the frames, [`STACK_ID_NONE`] if none.
    pub stack_id: u64,
    /// Thread group (process) id that allocated.
    pub tgid: u32,
    /// An [`AllocKind`] value.
    pub kind: u32,
}

/// `Pending::flags`: calloc's `nmemb * size` overflowed (calloc then returns NULL).
pub const PENDING_OVERFLOW: u32 = 1;

/// Arguments of an allocator call in flight, the value of [`MAP_PENDING`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Requested size in bytes (for calloc, the checked product).
    pub size: u64,
    /// realloc: the pointer passed in (0 for none).
    pub old_ptr: u64,
    /// realloc: the record of `old_ptr`, taken out of [`MAP_ALLOCS`] at entry so that a
    /// failed realloc can put it back.
    pub old: AllocInfo,
    /// realloc: 1 if `old` holds a record.
    pub has_old: u32,
    /// [`PENDING_OVERFLOW`].
    pub flags: u32,
}

/// A user stack, the value of [`MAP_STACKS`]: return addresses, innermost first, zero-filled.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackTrace {
    /// Instruction pointers; the first zero ends the stack.
    pub ips: [u64; MAX_STACK_DEPTH],
}

impl StackTrace {
    /// The non-zero frames.
    #[must_use]
    pub fn frames(&self) -> &[u64] {
        let n = self.ips.iter().position(|&ip| ip == 0).unwrap_or(MAX_STACK_DEPTH);
        &self.ips[..n]
    }
}

/// Why an event was lost or only partly recorded: indexes of [`MAP_DROPS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// [`MAP_ALLOCS`] was full: an allocation was not recorded.
    AllocMapFull = 0,
    /// `bpf_get_stack` failed: the allocation is recorded without a stack.
    StackMissing = 1,
    /// [`MAP_STACKS`] was full: the allocation is recorded, its stack is not.
    StackMapFull = 2,
    /// A return probe found no arguments from its entry probe (entry missed, or stash evicted).
    MissingEntry = 3,
    /// `free` (or `realloc`) of a pointer that is not recorded: allocated before the probes
    /// were attached, or its allocation was dropped.
    UnknownFree = 4,
    /// The entry probe could not stash its arguments.
    PendingFull = 5,
}

impl DropReason {
    /// Every reason, in index order.
    pub const ALL: [Self; 6] = [
        Self::AllocMapFull,
        Self::StackMissing,
        Self::StackMapFull,
        Self::MissingEntry,
        Self::UnknownFree,
        Self::PendingFull,
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
        }
    }
}

/// Each BPF program that counts its hits: indexes of [`MAP_HITS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Probe {
    /// `malloc` entry.
    MallocEnter = 0,
    /// `malloc` return.
    MallocExit = 1,
    /// `calloc` entry.
    CallocEnter = 2,
    /// `calloc` return.
    CallocExit = 3,
    /// `realloc` entry.
    ReallocEnter = 4,
    /// `realloc` return.
    ReallocExit = 5,
    /// `free` entry.
    FreeEnter = 6,
}

impl Probe {
    /// Every probe, in index order.
    pub const ALL: [Self; 7] = [
        Self::MallocEnter,
        Self::MallocExit,
        Self::CallocEnter,
        Self::CallocExit,
        Self::ReallocEnter,
        Self::ReallocExit,
        Self::FreeEnter,
    ];

    /// The BPF program's name (`<libc_fn>_enter` / `<libc_fn>_exit`).
    #[must_use]
    pub const fn program(self) -> &'static str {
        match self {
            Self::MallocEnter => "malloc_enter",
            Self::MallocExit => "malloc_exit",
            Self::CallocEnter => "calloc_enter",
            Self::CallocExit => "calloc_exit",
            Self::ReallocEnter => "realloc_enter",
            Self::ReallocExit => "realloc_exit",
            Self::FreeEnter => "free_enter",
        }
    }

    /// The hooked C function.
    #[must_use]
    pub const fn function(self) -> &'static str {
        match self {
            Self::MallocEnter | Self::MallocExit => "malloc",
            Self::CallocEnter | Self::CallocExit => "calloc",
            Self::ReallocEnter | Self::ReallocExit => "realloc",
            Self::FreeEnter => "free",
        }
    }

    /// Whether this is a return probe (uretprobe).
    #[must_use]
    pub const fn is_return(self) -> bool {
        matches!(self, Self::MallocExit | Self::CallocExit | Self::ReallocExit)
    }

    /// Argument registers (System V x86-64 order, 0-based) the entry program reads; the probe
    /// may be moved past instructions that leave these untouched.
    #[must_use]
    pub const fn args_read(self) -> u8 {
        match self {
            Self::MallocEnter | Self::FreeEnter => 1,
            Self::CallocEnter | Self::ReallocEnter => 2,
            Self::MallocExit | Self::CallocExit | Self::ReallocExit => 0,
        }
    }
}

/// Name of the uprobe that stops a `leak run` child at its ELF entry point.
pub const PROGRAM_ENTRY_STOP: &str = "entry_stop";

// Layouts are part of the kernel/user contract: fail the build if they drift.
const _: () = assert!(core::mem::size_of::<AllocInfo>() == 32);
const _: () = assert!(core::mem::align_of::<AllocInfo>() == 8);
const _: () = assert!(core::mem::size_of::<Pending>() == 56);
const _: () = assert!(core::mem::size_of::<StackTrace>() == 8 * MAX_STACK_DEPTH);
const _: () = assert!(DropReason::ALL.len() <= COUNTER_SLOTS as usize);
const _: () = assert!(Probe::ALL.len() <= COUNTER_SLOTS as usize);

#[cfg(feature = "user")]
mod user {
    use super::{AllocInfo, Pending, StackTrace};

    // SAFETY: all three are `#[repr(C)]`, `Copy`, contain only integers and have no padding
    // (checked by the size assertions above), so any byte pattern is a valid value.
    unsafe impl aya::Pod for AllocInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Pending {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StackTrace {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn drop_and_probe_indexes_are_stable() {
        // These numbers are on the wire and in saved reports: changing one is a breaking change.
        let drops: std::vec::Vec<(u32, &str)> =
            DropReason::ALL.iter().map(|d| (*d as u32, d.name())).collect();
        assert_eq!(
            drops,
            [
                (0, "alloc_map_full"),
                (1, "stack_missing"),
                (2, "stack_map_full"),
                (3, "missing_entry"),
                (4, "unknown_free"),
                (5, "pending_full"),
            ]
        );
        for (i, p) in Probe::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i);
        }
    }

    #[test]
    fn alloc_kind_round_trips() {
        for k in [AllocKind::Malloc, AllocKind::Calloc, AllocKind::Realloc] {
            assert_eq!(AllocKind::from_u32(k as u32), Some(k));
        }
        assert_eq!(AllocKind::from_u32(99), None);
    }

    #[test]
    fn stack_frames_stop_at_first_zero() {
        let mut s = StackTrace { ips: [0; MAX_STACK_DEPTH] };
        s.ips[0] = 0x10;
        s.ips[1] = 0x20;
        assert_eq!(s.frames(), &[0x10, 0x20]);
        s.ips = [7; MAX_STACK_DEPTH];
        assert_eq!(s.frames().len(), MAX_STACK_DEPTH);
    }

    #[test]
    fn alloc_info_bytes_round_trip() {
        let a = AllocInfo { size: 4096, timestamp_ns: 5, stack_id: 0xdead_beef, tgid: 42, kind: 1 };
        // SAFETY: AllocInfo is repr(C) with no padding.
        let bytes: [u8; 32] = unsafe { core::mem::transmute(a) };
        assert_eq!(&bytes[0..8], &4096u64.to_ne_bytes());
        assert_eq!(&bytes[24..28], &42u32.to_ne_bytes());
        // SAFETY: any 32 bytes are a valid AllocInfo.
        let back: AllocInfo = unsafe { core::mem::transmute(bytes) };
        assert_eq!(back, a);
    }
}
