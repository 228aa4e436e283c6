//! Pure: where to put a probe inside a function so the kernel emulates the probed instruction.
//!
//! An x86 uprobe replaces one instruction with `int3`. After the BPF program runs, the kernel
//! must execute the original instruction: a few kinds (push of a register, relative jmp/call,
//! jcc, nop) it emulates in the trap handler; any other it single-steps out of line, which
//! costs a second trap (about 14 us more per call in a nested VM, ../shared/TOOLCHAIN.md).
//! glibc's `free` starts with `test %rdi,%rdi`, which is single-stepped: a probe three bytes
//! later, on the `je`, sees the same `%rdi` and costs a fifteenth as much.
//!
//! A point later in the function is equivalent to the entry when every instruction before it
//! falls through (no branch: the point is reached on every call) and, for an entry probe,
//! leaves the argument registers the program reads untouched. A return probe (uretprobe)
//! swaps the word at `%rsp` for its trampoline when the probe fires, so before its point
//! nothing may move `%rsp` or write memory (the return address must still be at `%rsp`).
//!
//! On aarch64 (#27) the same rules apply to other instructions: see [`aarch64`].
mod aarch64;

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Formatter as _, GasFormatter, Instruction,
    InstructionInfoFactory, OpAccess, Register,
};

/// Instructions examined past the entry.
const MAX_INSNS: usize = 12;

/// System V x86-64 integer argument registers, in order.
const ARG_REGS: [Register; 6] =
    [Register::RDI, Register::RSI, Register::RDX, Register::RCX, Register::R8, Register::R9];

/// What the probes at one function need to stay correct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// An entry program reads this many leading argument registers (0: no entry program).
    pub entry_args: u8,
    /// A return program is attached too.
    pub ret: bool,
}

/// The chosen probe offset within a function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Byte offset from the function's first instruction.
    pub offset: u64,
    /// The instruction at `offset` is one the kernel emulates (no single-step trap).
    pub emulated: bool,
    /// The instruction at `offset`, for logs.
    pub instruction: String,
    /// The point is after the function's `syscall` instruction (see [`after_syscall`]).
    pub after_syscall: bool,
}

/// Chooses one offset for all probes of a function (entry and return share a single trap when
/// they share an address). `code` is the whole function (its first bytes at least). Falls
/// back to offset 0 when no safe emulated point exists.
#[must_use]
pub fn choose(code: &[u8], needs: Needs) -> Placement {
    if cfg!(target_arch = "aarch64") {
        return aarch64::choose(code, needs);
    }
    let insns = decode(code);
    let mut info = InstructionInfoFactory::new();
    for (i, insn) in insns.iter().enumerate() {
        if let Some(emu_bytes) = insn_bytes(code, insn)
            && is_emulated(emu_bytes)
        {
            // A branch inside the function to the point (or before it, past the entry) would
            // reach it without a call: the probe would fire twice for one call.
            if insn.ip() > 0 && branched_into(code, insn.ip()) {
                break;
            }
            return Placement {
                offset: insn.ip(),
                emulated: true,
                instruction: att(insn),
                after_syscall: false,
            };
        }
        // `insn` is not emulated: can we move past it?
        if !falls_through_safely(insn, needs, &mut info) {
            break;
        }
        if i + 1 == insns.len() {
            break;
        }
    }
    let first = insns.first().map(att).unwrap_or_default();
    let emulated = insns.first().and_then(|i| insn_bytes(code, i)).is_some_and(is_emulated);
    Placement { offset: 0, emulated, instruction: first, after_syscall: false }
}

/// For a syscall wrapper whose probe needs only its arguments and the result (`munmap`):
/// the first emulated instruction after the `syscall`, if nothing before it branches and
/// nothing writes the `args` argument registers (the syscall itself clobbers only `%rax`,
/// `%rcx` and `%r11`, so at most three arguments may be read). glibc's wrappers read
/// `mov $nr,%eax; syscall; cmp $-4095,%rax; jae error`: none of the first three is emulated,
/// the `jae` is.
///
/// Not on aarch64: `svc` returns its result in x0, the first argument.
#[must_use]
pub fn after_syscall(code: &[u8], args: u8) -> Option<Placement> {
    if args > 3 || cfg!(target_arch = "aarch64") {
        return None;
    }
    let needs = Needs { entry_args: args, ret: false };
    let mut info = InstructionInfoFactory::new();
    let mut seen_syscall = false;
    for insn in decode(code) {
        if seen_syscall
            && let Some(bytes) = insn_bytes(code, &insn)
            && is_emulated(bytes)
        {
            return Some(Placement {
                offset: insn.ip(),
                emulated: true,
                instruction: att(&insn),
                after_syscall: true,
            });
        }
        if insn.code() == Code::Syscall && !seen_syscall {
            seen_syscall = true;
            continue;
        }
        if !falls_through_safely(&insn, needs, &mut info) {
            return None;
        }
    }
    None
}

/// AT&T syntax, as `objdump -d` prints it.
fn att(insn: &Instruction) -> String {
    let mut out = String::new();
    GasFormatter::new().format(insn, &mut out);
    out
}

/// Whether a direct branch in `code` targets an offset in `1..=offset`. (Indirect branches
/// cannot be followed; compilers do not aim jump tables at a function's first instructions.)
fn branched_into(code: &[u8], offset: u64) -> bool {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut insn);
        // Invalid bytes (data, padding) decode as 1-byte invalid instructions: keep going.
        let target = insn.near_branch_target();
        if (1..=offset).contains(&target) && insn.near_branch64() == target {
            return true;
        }
    }
    false
}

fn decode(code: &[u8]) -> Vec<Instruction> {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() && out.len() < MAX_INSNS {
        let insn = decoder.decode();
        if insn.is_invalid() {
            break;
        }
        out.push(insn);
    }
    out
}

fn insn_bytes<'a>(code: &'a [u8], insn: &Instruction) -> Option<&'a [u8]> {
    let start = usize::try_from(insn.ip()).ok()?;
    code.get(start..start + insn.len())
}

/// The instruction forms the x86 uprobe code emulates, matched on raw bytes so that prefixed
/// variants (which some kernels refuse to emulate) are not taken for emulated ones.
fn is_emulated(b: &[u8]) -> bool {
    // push %reg, push %r8..%r15
    let push = matches!(b, [0x50..=0x57] | [0x41, 0x50..=0x57]);
    // jcc rel8, jmp rel8; call rel32, jmp rel32; jcc rel32
    let branch = matches!(
        b,
        [0x70..=0x7f | 0xeb, _] | [0xe8 | 0xe9, _, _, _, _] | [0x0f, 0x80..=0x8f, _, _, _, _]
    );
    // nop, optionally with 0x66 prefixes (skipped by every kernel with uprobes)
    let nop = matches!(b, [prefixes @ .., 0x90] if prefixes.iter().all(|&p| p == 0x66));
    push || branch || nop
}

/// Whether a probe may be placed after `insn` and still see what it would see at `insn`.
fn falls_through_safely(
    insn: &Instruction,
    needs: Needs,
    info: &mut InstructionInfoFactory,
) -> bool {
    if insn.flow_control() != FlowControl::Next || insn.code() == Code::INVALID {
        return false;
    }
    let used = info.info(insn);
    let writes = |a: OpAccess| {
        matches!(
            a,
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        )
    };
    let args = &ARG_REGS[..usize::from(needs.entry_args).min(ARG_REGS.len())];
    for r in used.used_registers() {
        if !writes(r.access()) {
            continue;
        }
        let full = r.register().full_register();
        if args.contains(&full) {
            return false;
        }
        if needs.ret && full == Register::RSP {
            return false;
        }
    }
    if needs.ret
        && (insn.stack_pointer_increment() != 0
            || used.used_memory().iter().any(|m| writes(m.access())))
    {
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRY1: Needs = Needs { entry_args: 1, ret: false };
    const ENTRY_RET: Needs = Needs { entry_args: 1, ret: true };

    #[test]
    fn glibc_free_moves_to_the_je() {
        // test %rdi,%rdi ; je +0xbf ; push %rbp
        let code = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55];
        let p = choose(&code, ENTRY1);
        assert_eq!(p.offset, 3);
        assert!(p.emulated);
        assert!(p.instruction.starts_with("je"), "{}", p.instruction);
    }

    #[test]
    fn glibc_malloc_stays_at_the_push() {
        // push %r12 ; push %rbp ; push %rbx ; mov %rdi,%rbx
        let code = [0x41, 0x54, 0x55, 0x53, 0x48, 0x89, 0xfb];
        let p = choose(&code, ENTRY_RET);
        assert_eq!(
            p,
            Placement {
                offset: 0,
                emulated: true,
                instruction: "push %r12".into(),
                after_syscall: false
            }
        );
    }

    #[test]
    fn jemalloc_malloc_moves_to_the_ja() {
        // cmp $0x1000,%rdi ; ja +0x10
        let code = [0x48, 0x81, 0xff, 0x00, 0x10, 0x00, 0x00, 0x77, 0x10];
        let p = choose(&code, ENTRY_RET);
        assert_eq!(p.offset, 7);
        assert!(p.emulated);
    }

    #[test]
    fn an_argument_write_before_the_point_keeps_the_entry() {
        // mov %rsi,%rdi ; push %rbx : moving past would read the clobbered %rdi.
        let code = [0x48, 0x89, 0xf7, 0x53];
        assert_eq!(choose(&code, ENTRY1).offset, 0);
        // Only %rdi matters to a one-argument probe: a %rax write is fine.
        let code = [0x48, 0x89, 0xf8, 0x53];
        assert_eq!(choose(&code, ENTRY1).offset, 3);
        // A 32-bit write to %edi clobbers %rdi too.
        let code = [0x31, 0xff, 0x53];
        assert_eq!(choose(&code, ENTRY1).offset, 0);
    }

    #[test]
    fn return_probes_do_not_move_past_stack_changes() {
        // sub $0x8,%rsp ; push %rbx : the return address is no longer at %rsp.
        let code = [0x48, 0x83, 0xec, 0x08, 0x53];
        assert_eq!(choose(&code, ENTRY_RET).offset, 0);
        // An entry-only probe may move past it.
        assert_eq!(choose(&code, ENTRY1).offset, 4);
        // A memory store before the point could overwrite the return address.
        let code = [0x48, 0x89, 0x04, 0x24, 0x53]; // mov %rax,(%rsp) ; push %rbx
        assert_eq!(choose(&code, ENTRY_RET).offset, 0);
    }

    #[test]
    fn never_moves_past_a_branch_or_call() {
        // jmp *%rax ; push %rbx  (indirect jump is not emulated and does not fall through)
        let code = [0xff, 0xe0, 0x53];
        let p = choose(&code, ENTRY1);
        assert_eq!(p.offset, 0);
        assert!(!p.emulated);
        // ret
        assert_eq!(choose(&[0xc3, 0x53], ENTRY1).offset, 0);
    }

    #[test]
    fn not_to_a_point_that_a_branch_in_the_function_reaches() {
        // 0: test %rdi,%rdi ; 3: je +2 (to 11) ; 9: push %rbp ; 10: pop %rbp ; 11: ret
        let mut code = vec![0x48, 0x85, 0xff, 0x0f, 0x84, 0x02, 0x00, 0x00, 0x00, 0x55, 0x5d, 0xc3];
        assert_eq!(choose(&code, ENTRY1).offset, 3);
        // ... 12: jmp 3 (rel8 -11): a loop back onto the je makes +3 unsafe.
        code.extend_from_slice(&[0xeb, 0xf5]);
        let p = choose(&code, ENTRY1);
        assert_eq!(p.offset, 0);
        assert!(!p.emulated);
        // A backward branch to the entry itself is harmless.
        code.truncate(12);
        code.extend_from_slice(&[0xeb, 0xf2]); // 12: jmp 0
        assert_eq!(choose(&code, ENTRY1).offset, 3);
    }

    #[test]
    fn endbr64_is_skipped() {
        // endbr64 ; push %rbp
        let code = [0xf3, 0x0f, 0x1e, 0xfa, 0x55];
        let p = choose(&code, ENTRY_RET);
        assert_eq!(p.offset, 4);
        assert!(p.emulated);
    }

    #[test]
    fn falls_back_to_entry_when_nothing_is_emulated() {
        // mov %rdi,%rax ; xor %eax,%eax ; ret
        let p = choose(&[0x48, 0x89, 0xf8, 0x31, 0xc0, 0xc3], ENTRY1);
        assert_eq!(p.offset, 0);
        assert!(!p.emulated);
        assert_eq!(choose(&[], ENTRY1).offset, 0);
    }

    #[test]
    fn glibc_munmap_is_probed_after_its_syscall() {
        // mov $0xb,%eax ; syscall ; cmp $-4095,%rax ; jae +1 ; ret
        let code =
            [0xb8, 0x0b, 0, 0, 0, 0x0f, 0x05, 0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, 0x73, 0x01, 0xc3];
        let p = after_syscall(&code, 2).unwrap();
        assert_eq!(p.offset, 13);
        assert!(p.emulated && p.after_syscall);
        // The ordinary placement cannot move past the syscall.
        assert_eq!(choose(&code, Needs { entry_args: 2, ret: false }).offset, 0);
        // A write to an argument register before the syscall rules it out...
        let clobber = [0x31, 0xf6, 0x0f, 0x05, 0x73, 0x01, 0xc3]; // xor %esi,%esi ; syscall ; jae
        assert_eq!(after_syscall(&clobber, 2), None);
        // ...and so do a fourth argument (%rcx does not survive the syscall) and no syscall.
        assert_eq!(after_syscall(&code, 4), None);
        assert_eq!(after_syscall(&[0x55, 0xc3], 1), None);
    }

    #[test]
    fn emulated_forms() {
        assert!(is_emulated(&[0x55]));
        assert!(is_emulated(&[0x41, 0x57]));
        assert!(is_emulated(&[0x90]));
        assert!(is_emulated(&[0x66, 0x90]));
        assert!(is_emulated(&[0x74, 0x05]));
        assert!(is_emulated(&[0x0f, 0x85, 1, 0, 0, 0]));
        assert!(is_emulated(&[0xe8, 1, 2, 3, 4]));
        assert!(!is_emulated(&[0x48, 0x85, 0xff]));
        assert!(!is_emulated(&[0x41, 0x90])); // xchg %r8,%rax
        assert!(!is_emulated(&[0xff, 0x35, 0, 0, 0, 0])); // push mem
    }
}
