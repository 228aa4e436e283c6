//! Pure: where to put a probe inside an aarch64 function (#27).
//!
//! An arm64 uprobe replaces one instruction with `brk`. The kernel simulates a few kinds
//! in the trap handler (branches, `adr`/`adrp`: [`simulated`]) and single-steps every other
//! one out of line, which costs a second exception per hit; it rejects literal loads
//! (since the fix for CVE-2024-50099), exclusives and the authenticating hints. Debian's
//! arm64 code starts most functions with `bti c` or `paciasp`, both stepped: glibc's `free`
//! is `bti c; cbz x0, ...`, so a probe on the `cbz` sees the same `x0` and costs one
//! exception, not two.
//!
//! The rules are the x86 ones (`super`), with aarch64's reasons:
//! - the point is reached on every call: every instruction before it falls through, and no
//!   branch in the function targets a point in `(0, P]`;
//! - an entry probe reads the argument registers `x0..` as the call left them: nothing
//!   before the point writes one;
//! - a return probe swaps `x30` for its trampoline when it fires, so before its point `x30`
//!   must still hold the unsigned return address and be the one the function returns
//!   through: nothing signs it (`paciasp`: `autiasp` would fail on the trampoline's
//!   address), writes it, stores to memory (a saved `x30` would be reloaded) or moves `sp`
//!   (the kernel matches a return to its call by `sp`).
//!
//! Only instructions whose effects are known are skipped: hints that do nothing here (`nop`,
//! `bti`), `paciasp`/`pacibsp`, data processing, and plain loads and stores. Decoding is
//! yaxpeax-arm's; which instructions the kernel simulates is matched on the kernel's own
//! masks.
use yaxpeax_arch::{Decoder as _, U8Reader};
use yaxpeax_arm::armv8::a64::{InstDecoder, Instruction, Opcode, Operand};

use super::{MAX_INSNS, Needs, Placement};

/// The link register, which holds the return address at a call.
const LR: u16 = 30;
/// `sp` where an operand can name it (`RegisterOrSP`, a memory operand's base).
const SP: u16 = 31;
/// The integer argument registers of the AAPCS64: x0-x7.
const ARG_REGS: u8 = 8;

/// One offset for all probes of an aarch64 function (see the module's comment); the
/// first instruction when no later one is both simulated and safe.
pub fn choose(code: &[u8], needs: Needs) -> Placement {
    let words: Vec<u32> = code
        .chunks_exact(4)
        .take(MAX_INSNS)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    for (offset, &w) in (0u64..).step_by(4).zip(&words) {
        if simulated(w) {
            if offset > 0 && branched_into(code, offset) {
                break;
            }
            return point(offset, w);
        }
        if !decode(w).is_some_and(|insn| skippable(&insn, needs)) {
            break;
        }
    }
    words.first().map_or(
        Placement { offset: 0, emulated: false, instruction: String::new(), after_syscall: false },
        |&w| point(0, w),
    )
}

fn point(offset: u64, w: u32) -> Placement {
    let instruction = decode(w).map_or_else(|| format!(".inst {w:#010x}"), |i| i.to_string());
    Placement { offset, emulated: simulated(w), instruction, after_syscall: false }
}

fn decode(w: u32) -> Option<Instruction> {
    let bytes = w.to_le_bytes();
    InstDecoder::default().decode(&mut U8Reader::new(&bytes)).ok()
}

/// The aarch64 instructions every kernel's uprobes simulate instead of stepping: the
/// kernel's own masks (`arch/arm64/include/asm/insn.h`) for `b`/`bl`, `b.cond`, `cbz`/`cbnz`,
/// `tbz`/`tbnz`, `adr`/`adrp` and `br`/`blr`/`ret`. (`nop` too from 6.13: not counted.)
pub fn simulated(w: u32) -> bool {
    const FORMS: [(u32, u32); 8] = [
        (0x7c00_0000, 0x1400_0000), // b, bl
        (0xff00_0010, 0x5400_0000), // b.cond
        (0x7e00_0000, 0x3400_0000), // cbz, cbnz
        (0x7e00_0000, 0x3600_0000), // tbz, tbnz
        (0x1f00_0000, 0x1000_0000), // adr, adrp
        (0xffff_fc1f, 0xd61f_0000), // br
        (0xffff_fc1f, 0xd63f_0000), // blr
        (0xffff_fc1f, 0xd65f_0000), // ret
    ];
    FORMS.iter().any(|&(mask, value)| w & mask == value)
}

/// The target of a direct branch at `at`, as an offset in the function.
fn branch_target(w: u32, at: u64) -> Option<i64> {
    // Sign-extends the low `bits` bits of `v`, in instructions (4 bytes).
    let sext = |v: u32, bits: u32| i64::from(((v << (32 - bits)).cast_signed()) >> (32 - bits));
    let words = if w & 0x7c00_0000 == 0x1400_0000 {
        sext(w & 0x03ff_ffff, 26) // b, bl: imm26
    } else if w & 0xff00_0000 == 0x5400_0000 || w & 0x7e00_0000 == 0x3400_0000 {
        sext((w >> 5) & 0x7_ffff, 19) // b.cond, bc.cond (FEAT_HBC), cbz, cbnz: imm19
    } else if w & 0x7e00_0000 == 0x3600_0000 {
        sext((w >> 5) & 0x3fff, 14) // tbz, tbnz: imm14
    } else {
        return None;
    };
    Some(i64::try_from(at).ok()? + 4 * words)
}

/// Whether a direct branch in `code` targets an offset in `4..=offset`. (Indirect branches
/// cannot be followed; compilers do not aim jump tables at a function's first instructions.)
fn branched_into(code: &[u8], offset: u64) -> bool {
    let Ok(offset) = i64::try_from(offset) else { return true };
    (0u64..).step_by(4).zip(code.chunks_exact(4)).any(|(at, b)| {
        let w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        branch_target(w, at).is_some_and(|t| (1..=offset).contains(&t))
    })
}

/// A general-purpose register an operand writes as a destination (`sp` as 31; `xzr` as
/// nothing).
fn register(op: Operand) -> Option<u16> {
    match op {
        Operand::Register(_, n) if n != 31 => Some(n),
        Operand::RegisterOrSP(_, n) => Some(n),
        _ => None,
    }
}

/// The base register a memory operand writes back (pre- or post-indexed), if any.
fn writeback(ops: &[Operand]) -> Option<u16> {
    ops.iter().find_map(|&op| match op {
        Operand::RegPreIndex(n, _, true)
        | Operand::RegPostIndex(n, _)
        | Operand::RegPostIndexReg(n, _) => Some(n),
        _ => None,
    })
}

/// Whether a probe may be placed after `insn` and still see what it would see at `insn`.
fn skippable(insn: &Instruction, needs: Needs) -> bool {
    let ops = &insn.operands;
    // Registers it writes, and whether it writes memory.
    let (written, stores): ([Option<u16>; 3], bool) = match insn.opcode {
        // nop, and bti's four forms (hint #32, #34, #36, #38): no effect a probe sees.
        Opcode::HINT => {
            let hint = match (ops[0], ops[1]) {
                (Operand::ControlReg(crm), Operand::Immediate(op2)) => u32::from(crm) << 3 | op2,
                _ => return false,
            };
            if !matches!(hint, 0 | 32 | 34 | 36 | 38) {
                return false;
            }
            ([None; 3], false)
        }
        Opcode::PACIASP | Opcode::PACIBSP => ([Some(LR), None, None], false),
        Opcode::MOVZ
        | Opcode::MOVN
        | Opcode::MOVK
        | Opcode::ADD
        | Opcode::ADDS
        | Opcode::SUB
        | Opcode::SUBS
        | Opcode::AND
        | Opcode::ANDS
        | Opcode::ORR
        | Opcode::ORN
        | Opcode::EOR
        | Opcode::EON
        | Opcode::BIC
        | Opcode::BICS
        | Opcode::BFM
        | Opcode::UBFM
        | Opcode::SBFM
        | Opcode::EXTR
        | Opcode::MADD
        | Opcode::MSUB
        | Opcode::MUL
        | Opcode::SMADDL
        | Opcode::UMADDL
        | Opcode::SMULH
        | Opcode::UMULH
        | Opcode::UDIV
        | Opcode::SDIV
        | Opcode::LSLV
        | Opcode::LSRV
        | Opcode::ASRV
        | Opcode::RORV
        | Opcode::CSEL
        | Opcode::CSINC
        | Opcode::CSINV
        | Opcode::CSNEG
        | Opcode::CLZ
        | Opcode::CLS
        | Opcode::RBIT
        | Opcode::REV
        | Opcode::REV16
        | Opcode::REV32 => ([register(ops[0]), None, None], false),
        Opcode::LDR
        | Opcode::LDRB
        | Opcode::LDRH
        | Opcode::LDRSB
        | Opcode::LDRSH
        | Opcode::LDRSW
        | Opcode::LDUR
        | Opcode::LDURB
        | Opcode::LDURH
        | Opcode::LDURSB
        | Opcode::LDURSH
        | Opcode::LDURSW => ([register(ops[0]), writeback(ops), None], false),
        Opcode::LDP | Opcode::LDPSW => {
            ([register(ops[0]), register(ops[1]), writeback(ops)], false)
        }
        Opcode::STR
        | Opcode::STRB
        | Opcode::STRH
        | Opcode::STUR
        | Opcode::STURB
        | Opcode::STURH
        | Opcode::STP => ([writeback(ops), None, None], true),
        _ => return false,
    };
    let args = u16::from(needs.entry_args.min(ARG_REGS));
    let written = written.into_iter().flatten();
    if written.clone().any(|r| r < args) {
        return false;
    }
    // A copy of x30 (`mov x16, x30`) would let the function return past the trampoline.
    !(needs.ret
        && (stores || written.clone().any(|r| r == LR || r == SP) || ops.iter().any(names_lr)))
}

/// Whether an operand reads or names x30.
fn names_lr(op: &Operand) -> bool {
    match *op {
        Operand::Register(_, n)
        | Operand::RegisterOrSP(_, n)
        | Operand::RegShift(_, _, _, n)
        | Operand::RegPreIndex(n, _, _)
        | Operand::RegPostIndex(n, _) => n == LR,
        Operand::RegRegOffset(a, b, ..) | Operand::RegPostIndexReg(a, b) => a == LR || b == LR,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRY1: Needs = Needs { entry_args: 1, ret: false };
    const ENTRY_RET: Needs = Needs { entry_args: 1, ret: true };

    fn code(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    // The first instructions of Debian 13's arm64 glibc 2.41 (objdump -d).
    const BTI_C: u32 = 0xd503_245f;
    const PACIASP: u32 = 0xd503_233f;
    const STP_FP_LR: u32 = 0xa9bc_7bfd; // stp x29, x30, [sp, #-64]!
    const MOV_FP_SP: u32 = 0x9100_03fd; // mov x29, sp

    #[test]
    fn glibc_free_moves_past_bti_to_the_cbz() {
        // bti c; cbz x0, +0x1d4; paciasp
        let p = choose(&code(&[BTI_C, 0xb400_0ea0, PACIASP, STP_FP_LR]), ENTRY1);
        assert_eq!((p.offset, p.emulated), (4, true), "{p:?}");
        assert!(p.instruction.starts_with("cbz x0"), "{p:?}");
    }

    #[test]
    fn glibc_posix_memalign_moves_to_the_adrp_with_its_return_probe() {
        // bti c; adrp x3, ...; paciasp; stp x29, x30, [sp, #-48]!
        let f = code(&[BTI_C, 0xb000_08e3, PACIASP, 0xa9bd_7bfd]);
        let p = choose(&f, Needs { entry_args: 3, ret: true });
        assert_eq!((p.offset, p.emulated), (4, true), "{p:?}");
    }

    #[test]
    fn glibc_mmap_moves_past_a_flags_only_test_to_the_branch() {
        // bti c; tst x5, #0xfff; b.ne ...; sxtw x2, w2
        let f = code(&[BTI_C, 0xf240_2cbf, 0x5400_0121, 0x9340_7c42]);
        let p = choose(&f, Needs { entry_args: 6, ret: true });
        assert_eq!((p.offset, p.emulated), (8, true), "{p:?}");
    }

    #[test]
    fn a_return_probe_never_passes_paciasp() {
        // glibc malloc: paciasp; stp x29, x30, [sp, #-64]!; mov x29, sp; str x23, [sp, #48];
        // adrp x23, ...
        let f = code(&[PACIASP, STP_FP_LR, MOV_FP_SP, 0xf900_1bf7, 0xf000_08f7]);
        let p = choose(&f, ENTRY_RET);
        assert_eq!((p.offset, p.emulated), (0, false), "{p:?}");
        // An entry probe alone may: nothing before the adrp writes x0.
        assert_eq!(choose(&f, ENTRY1).offset, 16);
    }

    #[test]
    fn a_return_probe_never_passes_a_store_or_an_sp_move() {
        // bti c; sub sp, sp, #0x50; adrp
        let f = code(&[BTI_C, 0xd101_43ff, 0xb000_0605]);
        assert_eq!(choose(&f, ENTRY_RET).offset, 0);
        assert_eq!(choose(&f, ENTRY1).offset, 8);
        // bti c; str x19, [sp, #16]; adrp
        let f = code(&[BTI_C, 0xf900_0bf3, 0xb000_0605]);
        assert_eq!(choose(&f, ENTRY_RET).offset, 0);
    }

    #[test]
    fn an_argument_write_before_the_point_keeps_the_entry() {
        // glibc reallocarray: bti c; umulh x3, x1, x2; mul x1, x1, x2; cbnz x3, ...
        let f = code(&[BTI_C, 0x9bc2_7c23, 0x9b02_7c21, 0xb500_0043]);
        assert_eq!(choose(&f, Needs { entry_args: 3, ret: true }).offset, 0);
        // An entry probe that reads x0 alone may move past the writes of x3 and x1.
        assert_eq!(choose(&f, Needs { entry_args: 1, ret: false }).offset, 12);
    }

    #[test]
    fn a_return_probe_never_passes_a_copy_of_x30() {
        // bti c; mov x16, x30; adrp: the function could return through x16.
        let f = code(&[BTI_C, 0xaa1e_03f0, 0xb000_0605]);
        assert_eq!(choose(&f, ENTRY_RET).offset, 0);
        assert_eq!(choose(&f, ENTRY1).offset, 8);
    }

    #[test]
    fn never_moves_past_a_system_call_or_an_unknown_instruction() {
        // glibc munmap: bti c; mov x8, #0xd7; svc #0; cmn x0, #0xfff; b.cs ...
        let f = code(&[BTI_C, 0xd280_1ae8, 0xd400_0001, 0xb13f_fc1f, 0x5400_0042]);
        assert_eq!(choose(&f, Needs { entry_args: 2, ret: false }).offset, 0);
        // ldxr x1, [x0]: an exclusive load is not skipped.
        let f = code(&[BTI_C, 0xc85f_7c01, 0xb400_0ea0]);
        assert_eq!(choose(&f, ENTRY1).offset, 0);
    }

    #[test]
    fn not_to_a_point_that_a_branch_in_the_function_reaches() {
        // bti c; cbz x0, +0x1d4; nop; b.ne -8 (back to the cbz at 4)
        let f = code(&[BTI_C, 0xb400_0ea0, 0xd503_201f, 0x54ff_ffc1]);
        assert_eq!(choose(&f, ENTRY1).offset, 0, "the b.ne at 12 branches back to 4");
        let f = code(&[BTI_C, 0xb400_0ea0, 0xd503_201f, 0x5400_0041]);
        assert_eq!(choose(&f, ENTRY1).offset, 4);
    }

    /// Entry instructions of Debian's arm64 allocators (glibc 2.36 and 2.41, jemalloc 5.3):
    /// which the kernel simulates.
    #[test]
    fn simulated_forms() {
        let sim = simulated;
        let simulated = [
            0x9400_0010, // bl
            0x1400_0004, // b
            0x5400_0088, // b.hi
            0xb400_0040, // cbz x0
            0x3500_0040, // cbnz w0
            0x3600_0040, // tbz w0, #0
            0x9000_0003, // adrp x3
            0x1000_0003, // adr x3
            0xd65f_03c0, // ret
            0xd61f_0220, // br x17
            0xd63f_0020, // blr x1
        ];
        let stepped = [
            0xa9bc_7bfd, // stp x29, x30, [sp, #-64]!
            0x9100_03fd, // mov x29, sp
            0xd503_233f, // paciasp
            0xd503_245f, // bti c
            0xd503_201f, // nop (simulated from 6.13 only)
            0xf100_041f, // cmp x0, #1
            0xd10c_03ff, // sub sp, sp, #0x300
            0x5800_0040, // ldr x0, literal (rejected since CVE-2024-50099's fix)
            0xd65f_0bff, // retaa
        ];
        assert!(simulated.iter().all(|&w| sim(w)), "{simulated:x?}");
        assert!(!stepped.iter().any(|&w| sim(w)), "{stepped:x?}");
    }

    /// Debian 12's arm64 glibc 2.36 (the cross C library `cargo xtask setup` installs), built
    /// without branch protection: `free` starts on its `cbz`, `mmap` moves past a `tst`, and
    /// the functions whose return is probed stay on their `stp x29, x30` (a store).
    #[test]
    fn arm64_libc_placements() {
        use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
        let path = "/usr/aarch64-linux-gnu/lib/libc.so.6";
        let data = std::fs::read(path)
            .unwrap_or_else(|e| panic!("{path}: {e} (cargo xtask setup installs it)"));
        let file = object::File::parse(&*data).unwrap();
        let text = file.section_by_name(".text").unwrap();
        let code = |name: &str| {
            let sym = file.dynamic_symbols().find(|s| s.name() == Ok(name)).unwrap();
            let data = text.data().unwrap();
            let at = usize::try_from(sym.address() - text.address()).unwrap();
            &data[at..at + usize::try_from(sym.size()).unwrap()]
        };
        let place = |name: &str, entry_args, ret| {
            let p = choose(code(name), Needs { entry_args, ret });
            (p.offset, p.emulated, p.instruction)
        };
        let (offset, emulated, insn) = place("free", 1, false);
        assert_eq!((offset, emulated), (0, true), "{insn}");
        let (offset, emulated, insn) = place("mmap", 2, true);
        assert_eq!((offset, emulated), (4, true), "{insn}");
        assert!(insn.starts_with("b.ne"), "{insn}");
        for f in ["malloc", "calloc", "realloc", "posix_memalign", "memalign"] {
            let (offset, emulated, insn) = place(f, 3, true);
            assert_eq!((offset, emulated), (0, false), "{f}: {insn}");
            assert!(insn.starts_with("stp x29, x30"), "{f}: {insn}");
        }
        // An entry probe alone on malloc may move to its adrp, past the prologue's stores.
        let (offset, emulated, insn) = place("malloc", 1, false);
        assert_eq!((offset, emulated), (12, true), "{insn}");
    }

    #[test]
    fn branch_targets() {
        assert_eq!(branch_target(0x54ff_ffc1, 12), Some(4)); // b.ne -8
        assert_eq!(branch_target(0x17ff_fbf0, 0x10), Some(0x10 - 4 * 1040)); // b backwards
        assert_eq!(branch_target(0x3600_0042, 0xc), Some(0x14)); // tbz w2, #0, +8
        assert_eq!(branch_target(BTI_C, 0), None);
    }
}
