//! What the running kernel offers leak's BPF programs, probed at start as libbpf and aya probe
//! (a tiny program per feature, loaded and closed), and which of the two BPF objects it can
//! run: the full one, or the compatible one for kernels before 5.17 (see `leak-ebpf`'s
//! `COMPAT`).
use std::{fmt, fs, path::Path};

use aya::{
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported},
};

/// The BPF objects leak carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BpfObject {
    /// Every feature below: the allocation table, attach cookies, the walk in `bpf_loop`.
    Full,
    /// 5.10's features only (see [`Features::degradations`]).
    Compat,
}

impl BpfObject {
    /// Its name in reports and `leak check`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Compat => "compat",
        }
    }
}

impl fmt::Display for BpfObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kernel's features that matter to leak.
#[derive(Clone, Debug, PartialEq, Eq)]
#[expect(clippy::struct_excessive_bools, reason = "each one a yes or no of the kernel's")]
pub struct Features {
    /// `uname -r`.
    pub release: String,
    /// `/sys/kernel/btf/vmlinux` exists (not needed by leak's programs; shown).
    pub btf: bool,
    /// The perf `uprobe` event source exists (`CONFIG_UPROBE_EVENTS`): needed.
    pub uprobes: bool,
    /// `bpf_loop` (5.17): the unwind-table walk verified once per step.
    pub bpf_loop: bool,
    /// `bpf_get_attach_cookie` (5.15): one program serves many hooks.
    pub attach_cookie: bool,
    /// `bpf_for_each_map_elem` (5.13): an unmap that starts inside a mapping.
    pub for_each_map_elem: bool,
    /// Atomic compare-and-swap (5.12): the table of outstanding allocations.
    pub cmpxchg: bool,
}

/// The kernel features each one stands for, for `leak check` and the report.
pub const FEATURE_NAMES: [(&str, &str); 4] = [
    ("bpf_loop", "5.17"),
    ("bpf_get_attach_cookie", "5.15"),
    ("bpf_for_each_map_elem", "5.13"),
    ("atomic compare-and-swap", "5.12"),
];

impl Features {
    /// Probes the running kernel. Needs the privileges to load BPF programs; without them
    /// every feature reads as missing.
    #[must_use]
    pub fn probe() -> Self {
        let helper = |h| is_helper_supported(ProgramType::KProbe, h).unwrap_or(false);
        Self {
            release: release(),
            btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
            uprobes: Path::new("/sys/bus/event_source/devices/uprobe/type").exists(),
            bpf_loop: helper(BpfHelper::BPF_FUNC_loop),
            attach_cookie: helper(BpfHelper::BPF_FUNC_get_attach_cookie),
            for_each_map_elem: helper(BpfHelper::BPF_FUNC_for_each_map_elem),
            cmpxchg: cmpxchg_supported(),
        }
    }

    /// Each feature with whether the kernel has it, in [`FEATURE_NAMES`] order.
    #[must_use]
    pub fn list(&self) -> [(&'static str, &'static str, bool); 4] {
        let has = [self.bpf_loop, self.attach_cookie, self.for_each_map_elem, self.cmpxchg];
        let mut out = [("", "", false); 4];
        for (o, ((name, since), has)) in out.iter_mut().zip(FEATURE_NAMES.into_iter().zip(has)) {
            *o = (name, since, has);
        }
        out
    }

    /// The object this kernel runs: the full one when it has every feature.
    #[must_use]
    pub fn object(&self) -> BpfObject {
        if self.list().iter().all(|(_, _, has)| *has) { BpfObject::Full } else { BpfObject::Compat }
    }

    /// What the compatible object does differently, in words a report can show.
    #[must_use]
    pub fn degradations(object: BpfObject) -> &'static [&'static str] {
        match object {
            BpfObject::Full => &[],
            BpfObject::Compat => &[
                "outstanding allocations and site totals in hash maps (no compare-and-swap \
                 before 5.12): each probe costs more",
                "hooks told apart by address and stack pointer (no attach cookies before \
                 5.15): return-probe hits of nested calls are not counted",
                "recorded mappings an munmap overlaps are searched 32 pages around its start \
                 (no map iteration before 5.13): where that cannot be exhaustive, an \
                 unmap_unchecked drop is counted",
                "unwind-table walks verified as a bounded loop (no bpf_loop before 5.17): \
                 slower to load, no memo of the last walk",
                "a growth profile's pages first touched inside a system call (a read() into \
                 fresh memory) are recorded without a stack (bpf_task_pt_regs, 5.15, is \
                 left to the full object): a fault_in_kernel drop is counted",
            ],
        }
    }
}

/// `uname -r`.
fn release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".into(), |s| s.trim().into())
}

/// Whether the verifier accepts a 64-bit compare-and-swap (`BPF_ATOMIC | BPF_CMPXCHG`, 5.12):
/// loads a five-instruction program that swaps a stack word. aya probes helpers, not
/// instructions, so this one is ours.
fn cmpxchg_supported() -> bool {
    const BPF_PROG_LOAD: libc::c_long = 5;
    // r1 = 0; *(u64 *)(r10 - 8) = r1; r0 = 0; r2 = 1;
    // r0 = cmpxchg_64(r10 - 8, r0, r2); r0 = 0; exit
    let insns: [[u8; 8]; 7] = [
        [0xb7, 0x01, 0, 0, 0, 0, 0, 0],
        [0x7b, 0x1a, 0xf8, 0xff, 0, 0, 0, 0],
        [0xb7, 0x00, 0, 0, 0, 0, 0, 0],
        [0xb7, 0x02, 0, 0, 1, 0, 0, 0],
        [0xdb, 0x2a, 0xf8, 0xff, 0xf1, 0, 0, 0],
        [0xb7, 0x00, 0, 0, 0, 0, 0, 0],
        [0x95, 0, 0, 0, 0, 0, 0, 0],
    ];
    let license = c"GPL";
    // `union bpf_attr` for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license; the rest
    // zero (the kernel accepts trailing zeros it does not know).
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&2u32.to_ne_bytes()); // BPF_PROG_TYPE_KPROBE
    attr[4..8].copy_from_slice(&7u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: a valid bpf_attr of the size passed; the instructions and license outlive the
    // call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        return false;
    }
    // SAFETY: the descriptor the call returned, ours to close.
    unsafe { libc::close(i32::try_from(fd).unwrap_or(-1)) };
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(has: bool) -> Features {
        Features {
            release: "6.1.0".into(),
            btf: true,
            uprobes: true,
            bpf_loop: has,
            attach_cookie: has,
            for_each_map_elem: has,
            cmpxchg: has,
        }
    }

    #[test]
    fn the_full_object_needs_every_feature() {
        assert_eq!(all(true).object(), BpfObject::Full);
        assert_eq!(all(false).object(), BpfObject::Compat);
        // 5.15: cookies, cmpxchg and map iteration, but no bpf_loop.
        let f = Features { bpf_loop: false, ..all(true) };
        assert_eq!(f.object(), BpfObject::Compat);
        assert!(Features::degradations(BpfObject::Full).is_empty());
        assert_eq!(Features::degradations(BpfObject::Compat).len(), 5);
    }
}
