//! `leak run`: stop the child at its ELF entry point, after the dynamic linker has mapped its
//! libraries and before `main`, so the loader can find the allocator in `/proc/PID/maps` and
//! attach before the program allocates.
use aya_ebpf::{helpers::generated::bpf_send_signal, macros::uprobe, programs::ProbeContext};
use aya_log_ebpf::debug;

/// SIGSTOP on x86-64 Linux.
const SIGSTOP: u32 = 19;

#[uprobe]
pub fn entry_stop(ctx: ProbeContext) -> u32 {
    // Delivered on return to user space, so the process stops right at the entry point. The
    // loader attaches only to the child's pid and detaches this program before resuming it.
    // SAFETY: bpf_send_signal takes a signal number and no pointers.
    let rc = unsafe { bpf_send_signal(SIGSTOP) };
    debug!(&ctx, "entry_stop: SIGSTOP sent, rc={}", rc);
    0
}
