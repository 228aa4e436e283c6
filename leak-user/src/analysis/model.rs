//! Domain types decoded from the BPF maps. Plain data: no aya, no clock.
use leak_common::{COUNTER_SLOTS, DropReason};

/// One outstanding allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// Address returned by the allocator.
    pub addr: u64,
    /// Requested bytes.
    pub size: u64,
    /// `CLOCK_MONOTONIC` nanoseconds at the allocator's return.
    pub timestamp_ns: u64,
    /// Stack id (`leak_common::STACK_ID_NONE` when no stack was taken).
    pub stack_id: u64,
    /// Process that allocated.
    pub tgid: u32,
    /// Hook (attach cookie) of the allocator function that made it.
    pub kind: u32,
}

/// Per-reason drop counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts(pub [u64; DropReason::ALL.len()]);

impl DropCounts {
    /// Counter for one reason.
    #[must_use]
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    /// `(name, count)` for every reason, in index order.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (r.name(), self.0[*r as usize]))
    }
}

/// Hit counters of each hook's entry and return probes (`leak_common::hit_index`), summed
/// over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeHits(pub Vec<u64>);

impl Default for ProbeHits {
    fn default() -> Self {
        Self(vec![0; COUNTER_SLOTS as usize])
    }
}

impl ProbeHits {
    /// Hits of hook `cookie`'s entry (`exit` false) or return probe.
    #[must_use]
    pub fn get(&self, cookie: usize, exit: bool) -> u64 {
        let index =
            u32::try_from(cookie).map_or(usize::MAX, |c| leak_common::hit_index(c, exit) as usize);
        self.0.get(index).copied().unwrap_or(0)
    }
}

/// Everything read from the kernel at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `CLOCK_MONOTONIC` nanoseconds when the snapshot was taken (same clock as the
    /// allocations' timestamps).
    pub taken_ns: u64,
    /// Outstanding allocations.
    pub allocations: Vec<Allocation>,
    /// Drop counters.
    pub drops: DropCounts,
    /// Probe hit counters.
    pub hits: ProbeHits,
}

/// What one site (a stack in one process) holds, from the kernel's running totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteTotal {
    /// Stack id.
    pub stack_id: u64,
    /// Process.
    pub tgid: u32,
    /// Outstanding bytes.
    pub bytes: u64,
    /// Outstanding allocations.
    pub count: u64,
}

/// Every site's totals at one instant: what a growth sample needs, one entry per site rather
/// than one per allocation.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    /// `CLOCK_MONOTONIC` nanoseconds when they were read.
    pub taken_ns: u64,
    /// Sites holding something.
    pub sites: Vec<SiteTotal>,
    /// Probe hit counters.
    pub hits: ProbeHits,
}

/// Shared text: a frame's strings are cloned into every stack and report that shows it (10,000
/// sites of 14 frames are 140,000 frames, of a few dozen distinct names).
pub type Text = std::sync::Arc<str>;

/// A symbolized frame. A return address may expand into several frames when calls were
/// inlined: innermost first, all with the same address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// Function name (demangled), if known.
    pub function: Option<Text>,
    /// File name of the module (executable or shared object), if known.
    pub module: Option<Text>,
    /// Source file, if debug info is available.
    pub file: Option<Text>,
    /// Source line, if debug info is available.
    pub line: Option<u32>,
    /// The return address as captured.
    pub address: u64,
}

impl Frame {
    /// A frame nothing is known about.
    #[must_use]
    pub fn unknown(address: u64) -> Self {
        Self { address, ..Self::default() }
    }
}

/// What one probe hit costs the thread that hits it (measured by the loader at start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeCost {
    /// An entry probe (uprobe), ns.
    pub entry_ns: u64,
    /// A return probe (uretprobe), ns.
    pub return_ns: u64,
}

/// How a walk ended.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StackEnd {
    /// At the outermost frame (`_start`, a thread's start): the whole stack.
    Complete,
    /// At an address with no unwind information (no object mapped there, or none for it).
    NoUnwindInfo,
    /// At a rule the unwinder does not follow.
    Unsupported,
    /// Reading the stack failed, or a frame was not above the one before it.
    BadFrame,
    /// At the depth limit.
    MaxDepth,
}

impl StackEnd {
    /// The end a BPF walk stored (`StackTrace::end`): `None` for a walk that records none
    /// (frame pointers).
    #[must_use]
    pub fn from_code(code: Option<u64>) -> Option<Self> {
        match code {
            None => Some(Self::MaxDepth),
            Some(leak_common::STACK_END_COMPLETE) => Some(Self::Complete),
            Some(leak_common::STACK_END_NO_UNWIND_INFO) => Some(Self::NoUnwindInfo),
            Some(leak_common::STACK_END_UNSUPPORTED) => Some(Self::Unsupported),
            Some(leak_common::STACK_END_BAD_FRAME) => Some(Self::BadFrame),
            Some(_) => None,
        }
    }

    /// In words, for the text report.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::NoUnwindInfo => "truncated: no unwind information for the next caller",
            Self::Unsupported => "truncated: an unwind rule leak does not follow",
            Self::BadFrame => "truncated: the stack could not be read further",
            Self::MaxDepth => "truncated: depth limit",
        }
    }
}

/// A memory limit and current usage against it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Bytes.
    pub bytes: u64,
    /// Usage now, bytes.
    pub usage: u64,
    /// `cgroup` or `option`.
    pub source: &'static str,
}

/// What a report needs to know about one hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookInfo {
    /// Symbol (names the hit counters).
    pub symbol: String,
    /// Function name for sites.
    pub display: String,
    /// It has a return probe.
    pub has_exit: bool,
}
