//! The user registers the programs read, by architecture: where a stack walk starts
//! (instruction, stack and frame pointers), the stack pointer a return leaves, a system
//! call's result, whether a fault came from user mode, and the user registers the kernel
//! saved at a system call's entry. The rest is the same on every architecture (aya-ebpf's
//! `arg()` and `ret()` read the calling convention's registers already). Which one is
//! `bpf_target_arch`, set by aya-build from the target `leak` is built for (and by
//! `build.rs` when the crate is checked alone).
use aya_ebpf::bindings::pt_regs;

/// Instruction, stack and frame pointers: where a stack walk starts.
pub type WalkRegs = (u64, u64, u64);

/// Where a walk from a fault starts: [`WalkRegs`] and the link register (0 on x86-64).
pub type FaultRegs = (WalkRegs, u64);

#[cfg(bpf_target_arch = "x86_64")]
mod arch {
    use super::{FaultRegs, WalkRegs, pt_regs};

    /// A return pops the return address the call pushed: the stack pointer at a return
    /// probe is one word above the entry probe's.
    pub const RETURN_POPS: u64 = 8;

    /// Where a walk starts, from a probe's registers.
    #[inline(always)]
    pub fn walk_regs(r: &pt_regs) -> WalkRegs {
        (r.rip, r.rsp, r.rbp)
    }

    /// The instruction pointer: at an entry probe, the probed instruction.
    #[inline(always)]
    pub fn ip(r: &pt_regs) -> u64 {
        r.rip
    }

    /// Where a walk from a fault in user mode starts: x86-64 has no link register.
    #[inline(always)]
    pub fn fault_regs(r: &pt_regs) -> FaultRegs {
        (walk_regs(r), 0)
    }

    /// The stack pointer.
    #[inline(always)]
    pub fn sp(r: &pt_regs) -> u64 {
        r.rsp
    }

    /// A system call's result, right after the `syscall` instruction.
    #[inline(always)]
    pub fn syscall_result(r: &pt_regs) -> u64 {
        r.rax
    }

    /// The registers are the user's (a fault in user mode): the code segment's privilege
    /// level is 3.
    #[inline(always)]
    pub fn user_mode(r: &pt_regs) -> bool {
        r.cs & 3 != 0
    }

    /// Where a walk starts, from the user registers the kernel saved at `regs` (the top of
    /// the task's kernel stack). Two reads of the 168-byte `pt_regs`, not a copy: the
    /// program's frame shares 512 bytes with the walk's. All zero when they cannot be read.
    ///
    /// # Safety
    /// `regs` is `bpf_task_pt_regs`'s answer for the current task, not null.
    #[inline(always)]
    pub unsafe fn saved_walk_regs(regs: *const pt_regs) -> FaultRegs {
        use aya_ebpf::helpers::bpf_probe_read_kernel;
        // SAFETY: the helper handles faults; the fields are `regs`'s.
        unsafe {
            let bp = bpf_probe_read_kernel(&raw const (*regs).rbp).unwrap_or(0);
            // rip, cs, eflags, rsp: adjacent in x86-64's `pt_regs`.
            let [ip, _, _, sp] = bpf_probe_read_kernel((&raw const (*regs).rip).cast::<[u64; 4]>())
                .unwrap_or([0; 4]);
            ((ip, sp, bp), 0)
        }
    }
}

#[cfg(bpf_target_arch = "aarch64")]
mod arch {
    use super::{FaultRegs, WalkRegs, pt_regs};

    /// A return pops nothing (the return address is in x30): the stack pointer at a return
    /// probe is the entry probe's.
    pub const RETURN_POPS: u64 = 0;

    /// Where a walk starts, from a probe's registers (x29 is the frame pointer).
    #[inline(always)]
    pub fn walk_regs(r: &pt_regs) -> WalkRegs {
        (r.pc, r.sp, r.regs[29])
    }

    /// The instruction pointer: at an entry probe, the probed instruction (the breakpoint
    /// does not advance it).
    #[inline(always)]
    pub fn ip(r: &pt_regs) -> u64 {
        r.pc
    }

    /// Where a walk from a fault in user mode starts, with x30: a leaf, or a function before
    /// its prologue saved it, has its return address there.
    #[inline(always)]
    pub fn fault_regs(r: &pt_regs) -> FaultRegs {
        (walk_regs(r), r.regs[30])
    }

    /// The stack pointer.
    #[inline(always)]
    pub fn sp(r: &pt_regs) -> u64 {
        r.sp
    }

    /// A system call's result, right after the `svc` instruction (in x0).
    #[inline(always)]
    pub fn syscall_result(r: &pt_regs) -> u64 {
        r.regs[0]
    }

    /// The registers are the user's (a fault in user mode): the exception level in
    /// `pstate`'s mode bits is EL0.
    #[inline(always)]
    #[expect(
        clippy::verbose_bit_mask,
        reason = "the mode field M[3:0], as the architecture names it; BPF has no ctz"
    )]
    pub fn user_mode(r: &pt_regs) -> bool {
        r.pstate & 0xf == 0
    }

    /// Where a walk starts, from the user registers the kernel saved at `regs`: x29, x30, sp
    /// and pc are adjacent (`user_pt_regs` opens the kernel's `pt_regs`), one read.
    ///
    /// # Safety
    /// `regs` is `bpf_task_pt_regs`'s answer for the current task, not null.
    #[inline(always)]
    pub unsafe fn saved_walk_regs(regs: *const pt_regs) -> FaultRegs {
        use aya_ebpf::helpers::bpf_probe_read_kernel;
        // SAFETY: the helper handles faults; the fields are `regs`'s.
        unsafe {
            let [fp, lr, sp, pc] =
                bpf_probe_read_kernel((&raw const (*regs).regs[29]).cast::<[u64; 4]>())
                    .unwrap_or([0; 4]);
            ((pc, sp, fp), lr)
        }
    }
}

pub use arch::*;
