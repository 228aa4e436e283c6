//! The programs, their hooks (attach cookies and their flags), and the per-thread stash an
//! entry probe leaves for its return probe.
use crate::{AllocInfo, STACK_WINDOW_WORDS, StackMemo, UnmapScratch, WalkState};

/// Name of the LRU map `pid_tgid -> pointer` of the last pointer a wrapper freed (see
/// [`COOKIE_NOTE_FREE`]).
pub const MAP_LAST_FREE: &str = "LAST_FREE";

/// Name of the LRU map carrying arguments from an entry probe to its return probe.
pub const MAP_PENDING: &str = "PENDING";

/// Read-only global: only this tgid is traced (0: no filter).
pub const GLOBAL_FILTER_TGID: &str = "FILTER_TGID";

/// Read-only global: non-zero turns on per-event BPF logging (very slow; debugging only).
pub const GLOBAL_TRACE: &str = "TRACE";

/// Name of the hash map from a probe's address (and process) to its hook's cookie, for the
/// compatible object (kernels without attach cookies): key [`AllocKey`](crate::AllocKey) with the probed
/// instruction's address, value the cookie the full object's probe would carry.
pub const MAP_HOOK_IPS: &str = "HOOK_IPS";

/// Capacity of [`MAP_HOOK_IPS`].
pub const MAX_HOOK_IPS: u32 = 1 << 16;

/// Read-only global: leak's own process id. The compatible object, which has no attach cookie
/// to mark the calibration probes with, knows them by it.
pub const GLOBAL_LEAK_TGID: &str = "LEAK_TGID";

/// Read-only global: non-zero makes every program return at once (benchmarks: the cost of
/// the probes themselves at exactly the points the tool uses).
pub const GLOBAL_PROBE_FLOOR: &str = "PROBE_FLOOR";

/// Capacity of [`MAP_PENDING`]: threads in flight inside an allocator at once.
pub const MAX_PENDING: u32 = 1 << 14;

/// A stash in [`MAP_PENDING`] older than this is not an outer call in flight but one whose
/// return never arrived: a new call replaces it (counted as
/// [`DropReason::StalePending`](crate::DropReason::StalePending)).
pub const STALE_PENDING_NS: u64 = 1_000_000_000;

/// Attach-cookie flag of a `munmap` probe placed right after the `syscall` instruction: it
/// sees the arguments and the result (`%rax`), and acts only on success.
pub const COOKIE_AFTER_SYSCALL: u64 = 1 << 31;

/// Attach-cookie flag of a freeing function other than `free` itself (`operator delete`,
/// `je_free`, `sdallocx`, `mi_free`...): it notes the pointer it frees in [`MAP_LAST_FREE`],
/// so that a `free` it calls on the same pointer is not counted as unknown.
pub const COOKIE_NOTE_FREE: u64 = 1 << 30;

/// Attach-cookie flag: a probe on leak's own calibration function (measuring what a hit
/// costs): the program counts the hit and returns.
pub const COOKIE_CALIBRATION: u64 = 1 << 29;

/// `Pending::flags` of an `mmap`: an anonymous private mapping (not a thread stack), recorded.
pub const PENDING_MMAP_TRACKED: u32 = 1 << 1;

/// `Pending::flags` of an `mmap` with `MAP_FIXED`: it replaces whatever was mapped there.
pub const PENDING_MMAP_FIXED: u32 = 1 << 2;

/// A BPF program: one per argument shape, shared by the functions of that shape (the attach
/// cookie says which function fired).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Program {
    /// Entry, size in the first argument.
    AllocEnter,
    /// Entry, size in the second argument (after the alignment).
    MemalignEnter,
    /// Entry of calloc: `nmemb * size`.
    CallocEnter,
    /// Entry of realloc: pointer and size.
    ReallocEnter,
    /// Entry of reallocarray: pointer, `nmemb * size`.
    ReallocarrayEnter,
    /// Entry of `posix_memalign`: out-pointer and size.
    PosixMemalignEnter,
    /// Return of a function returning the new block.
    AllocExit,
    /// Return of realloc or reallocarray.
    ReallocExit,
    /// Return of `posix_memalign`: the block is read from the out-pointer.
    PosixMemalignExit,
    /// Entry of a function freeing its first argument.
    FreeEnter,
    /// Entry of `mmap`: address, length, flags.
    MmapEnter,
    /// Return of `mmap`: the mapping.
    MmapExit,
    /// `munmap`: at entry, or right after its `syscall` (see [`COOKIE_AFTER_SYSCALL`]).
    MunmapEnter,
    /// Entry of `mremap`: old address, old and new sizes.
    MremapEnter,
    /// Return of `mremap`: the moved or resized mapping.
    MremapExit,
    /// A uprobe session (6.13+) of a function of [`Self::AllocEnter`]'s shape: one program
    /// at the entry and at the return, whose entry skips the return of a call it does not
    /// record (sampled out, nested, another process).
    AllocSession,
    /// A session of [`Self::MemalignEnter`]'s shape.
    MemalignSession,
    /// A session of `calloc`.
    CallocSession,
    /// A session of `posix_memalign`.
    PosixMemalignSession,
}

/// The sentinel helper number a session program calls for the kfunc
/// `bpf_session_is_return`; the loader makes each such call a kfunc call (a BPF `call` with
/// source register 2 and the function's BTF id) before loading the program. No helper has
/// this number: a program still calling it is rejected, never run.
pub const SENTINEL_SESSION_IS_RETURN: i32 = 0x6c6b_0001;

impl Program {
    /// The sessions: loaded only for `uprobe_multi` session links (6.13+).
    pub const SESSIONS: [Self; 4] = [
        Self::AllocSession,
        Self::MemalignSession,
        Self::CallocSession,
        Self::PosixMemalignSession,
    ];

    /// Every program but the sessions.
    pub const ALL: [Self; 15] = [
        Self::AllocEnter,
        Self::MemalignEnter,
        Self::CallocEnter,
        Self::ReallocEnter,
        Self::ReallocarrayEnter,
        Self::PosixMemalignEnter,
        Self::AllocExit,
        Self::ReallocExit,
        Self::PosixMemalignExit,
        Self::FreeEnter,
        Self::MmapEnter,
        Self::MmapExit,
        Self::MunmapEnter,
        Self::MremapEnter,
        Self::MremapExit,
    ];

    /// Its name in the BPF object.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::AllocEnter => "alloc_enter",
            Self::MemalignEnter => "memalign_enter",
            Self::CallocEnter => "calloc_enter",
            Self::ReallocEnter => "realloc_enter",
            Self::ReallocarrayEnter => "reallocarray_enter",
            Self::PosixMemalignEnter => "posix_memalign_enter",
            Self::AllocExit => "alloc_exit",
            Self::ReallocExit => "realloc_exit",
            Self::PosixMemalignExit => "posix_memalign_exit",
            Self::FreeEnter => "free_enter",
            Self::MmapEnter => "mmap_enter",
            Self::MmapExit => "mmap_exit",
            Self::MunmapEnter => "munmap_enter",
            Self::MremapEnter => "mremap_enter",
            Self::MremapExit => "mremap_exit",
            Self::AllocSession => "alloc_session",
            Self::MemalignSession => "memalign_session",
            Self::CallocSession => "calloc_session",
            Self::PosixMemalignSession => "posix_memalign_session",
        }
    }

    /// Whether this is a return probe (uretprobe), or a session, which is one too.
    #[must_use]
    pub const fn is_return(self) -> bool {
        matches!(
            self,
            Self::AllocExit
                | Self::ReallocExit
                | Self::PosixMemalignExit
                | Self::MmapExit
                | Self::MremapExit
        ) || self.is_session()
    }

    /// Whether this is a uprobe session (entry and return in one program).
    #[must_use]
    pub const fn is_session(self) -> bool {
        matches!(
            self,
            Self::AllocSession
                | Self::MemalignSession
                | Self::CallocSession
                | Self::PosixMemalignSession
        )
    }

    /// Argument registers (System V x86-64 order) the entry program reads; the probe may be
    /// moved past instructions that leave these untouched.
    #[must_use]
    pub const fn args_read(self) -> u8 {
        match self {
            Self::AllocEnter | Self::FreeEnter | Self::AllocSession => 1,
            Self::MemalignEnter
            | Self::CallocEnter
            | Self::ReallocEnter
            | Self::MunmapEnter
            | Self::MemalignSession
            | Self::CallocSession => 2,
            Self::ReallocarrayEnter
            | Self::PosixMemalignEnter
            | Self::MremapEnter
            | Self::PosixMemalignSession => 3,
            Self::MmapEnter => 4,
            Self::AllocExit
            | Self::ReallocExit
            | Self::PosixMemalignExit
            | Self::MmapExit
            | Self::MremapExit => 0,
        }
    }
}

/// `Pending::flags`: `nmemb * size` overflowed (calloc and reallocarray then fail).
pub const PENDING_OVERFLOW: u32 = 1;

/// Arguments of an allocator call in flight, the value of [`MAP_PENDING`] (key: the thread's
/// `pid_tgid`). One per thread: a hooked function that a hooked function calls (glibc's
/// `posix_memalign` calls `malloc`, its `reallocarray` tail-calls `realloc`) finds the outer
/// call's stash and leaves the accounting to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Requested size in bytes (for calloc and reallocarray, the checked product).
    pub size: u64,
    /// realloc: the pointer passed in (0 for none).
    pub old_ptr: u64,
    /// `posix_memalign`: where the new pointer is written.
    pub out_ptr: u64,
    /// `bpf_ktime_get_ns()` at entry (see [`STALE_PENDING_NS`]).
    pub start_ns: u64,
    /// realloc: the record of `old_ptr`, taken out of [`MAP_ALLOCS`](crate::MAP_ALLOCS) at entry so that a
    /// failed realloc can put it back.
    pub old: AllocInfo,
    /// The hook (attach cookie) of the function called.
    pub kind: u32,
    /// realloc: 1 if `old` holds a record.
    pub has_old: u32,
    /// [`PENDING_OVERFLOW`], [`PENDING_UNSAMPLED`], ...
    pub flags: u32,
    /// Explicit padding.
    pub pad: u32,
    /// The compatible object: the stack pointer at the call's entry (its return address's
    /// slot), which tells the call's return from a nested call's.
    pub entry_sp: u64,
    /// The compatible object: the stack pointer of the last return that took a stash (a call
    /// chained to it by a jump returns at the same point right after).
    pub taken_sp: u64,
    /// The compatible object: the last pointer this thread passed to `free`, until an
    /// `munmap` of the allocator's that holds it (glibc unmapping a large block) consumes it.
    pub freed: u64,
    /// Sampling: bytes this thread allocates before its next sample (0: not drawn yet). Kept
    /// across calls, unlike the other fields.
    pub sample_left: u64,
    /// The clock (`bpf_ktime_get_ns`) as last read on this thread, and `jiffies` then: a
    /// call within the same jiffy reuses it (kept across calls, see the BPF `stash`).
    pub clock_ns: u64,
    /// As above.
    pub clock_jiffies: u64,
    /// This thread's last walk by unwind tables (kept across calls).
    pub memo: StackMemo,
    /// A walk by unwind tables in progress (scratch space, like what follows).
    pub walk: WalkState,
    /// An unmapped range's overlapping regions, as an `munmap` gathers them.
    pub unmap: UnmapScratch,
    /// The top of the user stack at the return, copied in one read for the frame walk
    /// (scratch space; kept here because the return probe has this slot at hand).
    pub window: [u64; STACK_WINDOW_WORDS],
}

impl Default for Pending {
    fn default() -> Self {
        Self {
            size: 0,
            old_ptr: 0,
            out_ptr: 0,
            start_ns: 0,
            old: AllocInfo::default(),
            kind: 0,
            has_old: 0,
            flags: 0,
            pad: 0,
            entry_sp: 0,
            taken_sp: 0,
            freed: 0,
            sample_left: 0,
            clock_ns: 0,
            clock_jiffies: 0,
            memo: StackMemo::default(),
            walk: WalkState::default(),
            unmap: UnmapScratch::default(),
            window: [0; STACK_WINDOW_WORDS],
        }
    }
}

/// `Pending::flags`: the call's block is not sampled: its return records nothing (a realloc
/// still frees the old block).
pub const PENDING_UNSAMPLED: u32 = 1 << 3;

/// [`Pending::kind`] of a thread's slot between calls (slots are kept, see the BPF `stash`).
pub const PENDING_IDLE: u32 = u32::MAX;

/// Name of the uprobe that stops a `leak run` child at its ELF entry point.
pub const PROGRAM_ENTRY_STOP: &str = "entry_stop";
