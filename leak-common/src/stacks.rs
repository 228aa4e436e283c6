//! User stacks: the stack map's values, each thread's scratch buffer, the walk's state and
//! memo, and how a walk ended.

/// Name of the hash map `stack id -> StackTrace` of user stacks.
pub const MAP_STACKS: &str = "STACKS";

/// Name of the per-thread buffers the exit probes collect a stack into.
pub const MAP_STACK_SCRATCH: &str = "STACK_SCRATCH";

/// Name of the one-entry array of zeros that new [`MAP_STACK_SCRATCH`] entries are copied from.
pub const MAP_ZERO_STACK: &str = "ZERO_STACK";

/// Default capacity of [`MAP_STACKS`] (distinct allocation stacks).
pub const DEFAULT_MAX_STACKS: u32 = 1 << 16;

/// Capacity of [`MAP_STACK_SCRATCH`]: threads with a stack buffer (LRU: idle ones are evicted).
pub const MAX_SCRATCH_THREADS: u32 = 1 << 12;

/// Frames kept per stack; the kernel's default `perf_event_max_stack`.
pub const MAX_STACK_DEPTH: usize = 127;

/// `AllocInfo::stack_id` when no stack could be taken (see
/// [`DropReason::StackMissing`](crate::DropReason::StackMissing)).
pub const STACK_ID_NONE: u64 = 0;

/// A stack walk by unwind tables in progress (`leak-ebpf`'s `stack::step`). In the thread's
/// [`Pending`](crate::Pending) slot, not on the BPF stack: the verifiers of 5.10-6.12 allow
/// 512 bytes for a program's whole chain of calls, and the walk runs three calls deep.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkState {
    /// Registers of the frame being stepped from.
    pub ip: u64,
    /// As above.
    pub sp: u64,
    /// As above.
    pub bp: u64,
    /// The link register (aarch64's x30) where the walk starts, 0 where it is not known
    /// (return probes: the kernel's trampoline address is there) or there is none (x86-64).
    pub lr: u64,
    /// The hash of the frames so far.
    pub hash: u64,
    /// Frames so far.
    pub n: u64,
    /// How the walk ended (`STACK_END_*`), once it has.
    pub end: u64,
    /// The process's mappings: first index in [`MAP_UNWIND_MAPPINGS`](crate::MAP_UNWIND_MAPPINGS).
    pub maps_first: u32,
    /// Their count.
    pub maps_n: u32,
    /// The process and its mappings' generation, mixed: keys
    /// [`MAP_ROW_CACHE`](crate::MAP_ROW_CACHE).
    pub cache_key: u64,
    /// Where the stack window was last copied from.
    pub sp0: u64,
    /// The window's first address as copied at the probe: while `sp0` is still it, the
    /// words read are the ones a memo checks.
    pub sp_start: u64,
    /// Index of each pair read from the window (see [`StackMemo`]).
    pub reads: [u8; MEMO_READS],
    /// Non-zero while every word read came from the first window, and few enough of them
    /// to memoize the walk.
    pub memo_ok: u32,
    /// Explicit padding.
    pub pad: u32,
}

/// Pairs of stack-window words a walk may read and still be memoized ([`StackMemo`]): two
/// per frame, for 8 frames.
pub const MEMO_READS: usize = 16;

/// [`StackMemo::reads`] entry of no read.
pub const MEMO_NO_READ: u8 = 0xff;

/// A thread's last walk by unwind tables and what it depended on: the registers, the
/// process's tables (their generation) and the window words it read. A walk is a function of
/// these alone, so when they all match again (an allocation site called in a loop, at the
/// same depth) its stack is the memo's without a step or a row lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackMemo {
    /// Registers at the return.
    pub ip: u64,
    /// As above.
    pub sp: u64,
    /// As above.
    pub bp: u64,
    /// The process and the last generation of any mapping set, mixed (see
    /// [`MAP_UNWIND_GENERATION`](crate::MAP_UNWIND_GENERATION)).
    pub key: u64,
    /// A hash of the window words read, in order.
    pub digest: u64,
    /// The stack's id.
    pub hash: u64,
    /// Non-zero: the memo holds a walk.
    pub valid: u32,
    /// Explicit padding.
    pub pad: u32,
    /// Index in the window of each pair's first word: frame `i`'s reads at `2i` and `2i + 1`,
    /// [`MEMO_NO_READ`] where there was none.
    pub reads: [u8; MEMO_READS],
}

/// Words of user stack a return probe reads at once ([`Pending::window`](crate::Pending::window)).
/// One
/// `bpf_probe_read_user` costs about 100 ns here whatever its size up to a page, so frames
/// that lie within the first 512 bytes above the stack pointer (most of a stack's innermost
/// frames) cost nothing more.
pub const STACK_WINDOW_WORDS: usize = 64;

/// A user stack, the value of [`MAP_STACKS`]: return addresses, innermost first, ended by the
/// first zero (what follows it is left over from an earlier stack).
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

    /// How its walk ended (`STACK_END_*`); `None`: it filled every slot (the depth limit).
    #[must_use]
    pub fn end(&self) -> Option<u64> {
        let n = self.ips.iter().position(|&ip| ip == 0)?;
        Some(self.ips.get(n + 1).copied().unwrap_or(STACK_END_UNKNOWN))
    }
}

/// How a stack walk ended, stored in [`StackTrace::ips`] right after the terminating zero
/// (a stack that fills every slot hit the depth limit): nothing recorded (frame pointers).
pub const STACK_END_UNKNOWN: u64 = 0;

/// At the outermost frame.
pub const STACK_END_COMPLETE: u64 = 1;

/// At an address without unwind information.
pub const STACK_END_NO_UNWIND_INFO: u64 = 2;

/// At a rule the unwinder does not follow.
pub const STACK_END_UNSUPPORTED: u64 = 3;

/// Reading the stack failed, or a frame was not above the one before it.
pub const STACK_END_BAD_FRAME: u64 = 4;
