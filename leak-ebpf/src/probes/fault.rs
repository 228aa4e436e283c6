//! The growth profile: a `perf_event` program on the software page-fault event of each
//! profiled thread (`PERF_COUNT_SW_PAGE_FAULTS`, period 1, inherited by the threads and
//! children it starts). The event fires at the fault's entry, before the page exists and
//! whether or not one will: user space keeps only the pages `/proc/PID/pagemap` shows
//! resident and the process's own.
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_task_pt_regs},
    macros::perf_event,
    programs::PerfEventContext,
};
use leak_common::{DropReason, FAULT_HOOK};

use crate::{
    maps::{count_drop, count_hit, floor},
    stash, verbs,
};

/// User addresses end below this on x86-64 (4-level paging; 5-level stays below 2^56).
const USER_END: u64 = 1 << 56;

#[perf_event]
pub fn page_fault(ctx: PerfEventContext) -> u32 {
    if floor() {
        return 0;
    }
    // Children not followed inherit the event too: neither counted nor recorded.
    let Some(pid_tgid) = stash::traced_pid_tgid() else { return 0 };
    count_hit(FAULT_HOOK, false);
    // SAFETY: a perf_event program's context; every field read as a whole u64 (the
    // verifier's rule for `regs`).
    let (addr, cs, regs) = unsafe {
        let data = &*ctx.ctx;
        (data.addr, data.regs.cs, (data.regs.rip, data.regs.rsp, data.regs.rbp))
    };
    // 0 is "no address" (and since 6.1 the field is not even written then).
    if addr == 0 || addr >= USER_END {
        return 0;
    }
    // A fault in user mode has the user's registers; one inside a system call (`read()` into
    // fresh memory, `copy_to_user`) the kernel's, and the user's are at the top of the task's
    // kernel stack.
    // (A zero `ip` is "unknown", not an `Option`: LLVM leaves a `None`'s fields undefined,
    // and the verifier rejects a spill of a register never written.)
    let regs = if cs & 3 != 0 {
        regs
    } else if crate::COMPAT {
        // `bpf_task_pt_regs` is 5.15, `bpf_get_current_task_btf` 5.11: the compatible
        // object (kernels before 5.17) has neither.
        count_drop(DropReason::FaultInKernel);
        (0, 0, 0)
    } else {
        syscall_regs()
    };
    verbs::page_fault(pid_tgid, addr, regs);
    0
}

/// The user registers saved at the current task's system-call entry. Only the three the walk
/// needs are read (`rbp`, and `rip`..`rsp`), not the 168-byte `pt_regs`: the program's frame
/// shares 512 bytes with the walk's.
/// All zero when they cannot be read.
#[inline(always)]
fn syscall_regs() -> (u64, u64, u64) {
    // SAFETY: the helpers take the current task (a BTF pointer the verifier tracks) and
    // `bpf_probe_read_kernel` handles faults.
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const pt_regs;
        if regs.is_null() {
            return (0, 0, 0);
        }
        let bp = bpf_probe_read_kernel(&raw const (*regs).rbp).unwrap_or(0);
        // rip, cs, eflags, rsp: adjacent in x86-64's `pt_regs`.
        let [ip, _, _, sp] =
            bpf_probe_read_kernel((&raw const (*regs).rip).cast::<[u64; 4]>()).unwrap_or([0; 4]);
        (ip, sp, bp)
    }
}
