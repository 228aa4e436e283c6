//! The growth profile: a `perf_event` program on the software page-fault event of each
//! profiled thread (`PERF_COUNT_SW_PAGE_FAULTS`, period 1, inherited by the threads and
//! children it starts). The event fires at the fault's entry, before the page exists and
//! whether or not one will: user space keeps only the pages `/proc/PID/pagemap` shows
//! resident and the process's own.
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_task_btf, bpf_task_pt_regs},
    macros::perf_event,
    programs::PerfEventContext,
};
use leak_common::{DropReason, FAULT_HOOK};

use crate::{
    maps::{count_drop, count_hit, floor},
    regs, stash, verbs,
};

/// User addresses end below this (x86-64's 4-level paging, and 5-level, stay below 2^56;
/// arm64's user addresses are below 2^52, and a fault's is untagged).
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
    let (addr, user, regs) = unsafe {
        let data = &*ctx.ctx;
        (data.addr, regs::user_mode(&data.regs), regs::fault_regs(&data.regs))
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
    let regs = if user {
        regs
    } else if crate::COMPAT {
        // `bpf_task_pt_regs` is 5.15, `bpf_get_current_task_btf` 5.11: the compatible
        // object (kernels before 5.17) has neither.
        count_drop(DropReason::FaultInKernel);
        ((0, 0, 0), 0)
    } else {
        syscall_regs()
    };
    verbs::page_fault(pid_tgid, addr, regs);
    0
}

/// The user registers saved at the current task's system-call entry, the ones the walk
/// needs (see `regs::saved_walk_regs`). All zero when they cannot be read.
#[inline(always)]
fn syscall_regs() -> regs::FaultRegs {
    // SAFETY: the helpers take the current task (a BTF pointer the verifier tracks); the
    // registers are read through `bpf_probe_read_kernel`, which handles faults.
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const pt_regs;
        if regs.is_null() {
            return ((0, 0, 0), 0);
        }
        regs::saved_walk_regs(regs)
    }
}
