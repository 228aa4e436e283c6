//! What the verifier of the oldest kernel leak supports will count in a BPF object, counted
//! here from the object itself: each program's stack over its deepest chain of BPF-to-BPF
//! calls and callbacks, and the instructions and helpers it uses that only newer kernels
//! know. Pure (an ELF in, figures out), so a unit test holds every program to the classic
//! limits without a kernel, and `leak check -v` shows the figures.
//!
//! The stack is counted as 5.10-6.12 count it (`check_max_stack_depth`): each frame rounded
//! up to 32 bytes, an empty one charged 32, summed over the call chain, 512 in all. (6.13+
//! kernels with private stacks skip the sum for some programs; most users' kernels do not.)
use std::collections::{BTreeMap, BTreeSet};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionIndex};

/// The verifier's limit for a whole call chain.
pub const MAX_STACK: u32 = 512;

/// The last helper 5.10 has (`bpf_redirect_peer`): any helper numbered above it is newer.
pub const LAST_5_10_HELPER: i32 = 155;

/// Helpers (by `enum bpf_func_id` number) that arrived after 5.10 and that leak uses, with
/// the kernel that brought them (names for the report; any helper above
/// [`LAST_5_10_HELPER`] counts as late).
pub const LATE_HELPERS: [(i32, &str, &str); 5] = [
    (164, "bpf_for_each_map_elem", "5.13"),
    (174, "bpf_get_attach_cookie", "5.15"),
    (181, "bpf_loop", "5.17"),
    (186, "bpf_ktime_get_tai_ns", "6.1"),
    // The sessions' sentinel, which the loader makes the kfunc call (see `multi`).
    (leak_common::SENTINEL_SESSION_IS_RETURN, "bpf_session_is_return (kfunc)", "6.13"),
];

/// One function of the object: a program or a subprogram.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Function {
    /// Bytes of stack it addresses below its frame pointer (r10).
    pub stack: u32,
    /// Functions it calls or passes as a callback.
    pub calls: BTreeSet<String>,
    /// Helpers newer than 5.10 it calls (named where [`LATE_HELPERS`] knows them).
    pub late_helpers: BTreeSet<String>,
    /// Atomic instructions other than a plain add (`BPF_CMPXCHG`, `BPF_XCHG`, fetch
    /// variants: 5.12+).
    pub late_atomics: u32,
    /// Instructions of the v4 instruction set (sign-extending loads and moves, signed
    /// division, 32-bit-offset jumps, unconditional byte swaps: 6.6+).
    pub v4_insns: u32,
    /// Calls or callback references whose target is not a known function: their stack is
    /// not counted, so the figure is not to be trusted.
    pub unresolved: u32,
}

/// A program's deepest chain, as the verifier charges it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Calls somewhere in the program whose target is not a known function: the figure
    /// leaves their stack out.
    pub unresolved: u32,
    /// The program.
    pub program: String,
    /// Bytes charged: every frame rounded up to 32, an empty frame 32.
    pub charged: u32,
    /// The functions of the chain with their own stack, outermost first.
    pub frames: Vec<(String, u32)>,
}

/// The figures of one object.
#[derive(Clone, Debug, Default)]
pub struct Budget {
    /// Every function, by symbol name.
    pub functions: BTreeMap<String, Function>,
    /// The programs (functions in a section of their own, such as `uprobe`).
    pub programs: Vec<String>,
}

/// What the 5.10-6.12 verifiers charge for a frame of `stack` bytes.
#[must_use]
pub fn charged(stack: u32) -> u32 {
    stack.max(1).div_ceil(32) * 32
}

const BPF_LD: u8 = 0x00;
const BPF_LDX: u8 = 0x01;
const BPF_ST: u8 = 0x02;
const BPF_STX: u8 = 0x03;
const BPF_ALU64: u8 = 0x07;
const BPF_JMP: u8 = 0x05;
const BPF_ATOMIC_MODE: u8 = 0xc0;
const BPF_CALL: u8 = 0x80;
const BPF_MOV_X: u8 = 0xbf;
const BPF_ADD_K: u8 = 0x07;
const BPF_LD_IMM64: u8 = 0x18;
const BPF_PSEUDO_CALL: u8 = 1;
const FRAME_POINTER: u8 = 10;

/// One instruction's fields.
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    dst: u8,
    src: u8,
    off: i16,
    imm: i32,
}

fn decode(b: &[u8]) -> Insn {
    Insn {
        code: b[0],
        dst: b[1] & 0x0f,
        src: b[1] >> 4,
        off: i16::from_le_bytes([b[2], b[3]]),
        imm: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
    }
}

/// Reads the functions of BPF object `elf`.
///
/// # Errors
/// Not a BPF ELF object.
pub fn analyze(elf: &[u8]) -> Result<Budget, String> {
    let file = object::File::parse(elf).map_err(|e| format!("not an ELF object: {e}"))?;
    // Function symbols by (section, offset): where each function starts and ends.
    let mut starts: BTreeMap<(usize, u64), (String, u64)> = BTreeMap::new();
    for sym in file.symbols() {
        if sym.kind() != object::SymbolKind::Text || sym.size() == 0 {
            continue;
        }
        let (Some(section), Ok(name)) = (sym.section_index(), sym.name()) else { continue };
        starts.insert((section.0, sym.address()), (name.to_owned(), sym.size()));
    }
    let mut budget = Budget::default();
    for section in file.sections() {
        if section.kind() != object::SectionKind::Text {
            continue;
        }
        let data = section.data().map_err(|e| e.to_string())?;
        let relocs: BTreeMap<u64, RelocationTarget> =
            section.relocations().map(|(at, r)| (at, r.target())).collect();
        let is_program_section = section.name().is_ok_and(|n| n != ".text");
        for (&(sec, start), (name, size)) in starts.range((section.index().0, 0)..) {
            if sec != section.index().0 {
                break;
            }
            let Some(code) = data.get(usize_of(start)..usize_of(start + size)) else { continue };
            let f = function(code, start, &relocs, Some(&file), &starts, Some(section.index().0));
            if is_program_section {
                budget.programs.push(name.clone());
            }
            budget.functions.insert(name.clone(), f);
        }
    }
    budget.programs.sort();
    Ok(budget)
}

fn usize_of(x: u64) -> usize {
    usize::try_from(x).unwrap_or(usize::MAX)
}

/// The function whose code is at `offset` of `section`, by name.
fn function_at(
    starts: &BTreeMap<(usize, u64), (String, u64)>,
    section: SectionIndex,
    offset: u64,
) -> Option<String> {
    starts.get(&(section.0, offset)).map(|(n, _)| n.clone())
}

/// Whether `insn` belongs to the v4 instruction set (LLVM's `-mcpu=v4`, kernel 6.6+).
fn is_v4(insn: Insn) -> bool {
    let class = insn.code & 0x07;
    let op = insn.code & 0xf0;
    match class {
        // Sign-extending loads (BPF_MEMSX).
        BPF_LDX => insn.code & 0xe0 == 0x80,
        // Sign-extending moves (off 8, 16, 32), signed division and modulo (off 1), byte
        // swaps whatever the host's order (ALU64 END).
        BPF_ALU64 | 0x04 => {
            (op == 0xb0 && insn.off != 0)
                || ((op == 0x30 || op == 0x90) && insn.off == 1)
                || (class == BPF_ALU64 && op == 0xd0)
        }
        // `gotol`: an unconditional jump with a 32-bit offset (JMP32 | JA).
        0x06 => op == 0x00,
        _ => false,
    }
}

/// Scans one function's instructions (`code`, at `base` in section `own_section`).
fn function(
    code: &[u8],
    base: u64,
    relocs: &BTreeMap<u64, RelocationTarget>,
    file: Option<&object::File<'_>>,
    starts: &BTreeMap<(usize, u64), (String, u64)>,
    own_section: Option<usize>,
) -> Function {
    let mut f = Function::default();
    // Registers known to hold r10 plus an offset.
    let mut frame_regs: [Option<i64>; 11] = [None; 11];
    frame_regs[usize::from(FRAME_POINTER)] = Some(0);
    let mut deepest: i64 = 0;
    let mut i = 0;
    while i + 8 <= code.len() {
        let insn = decode(&code[i..i + 8]);
        let at = base + i as u64;
        let class = insn.code & 0x07;
        let wide = insn.code == BPF_LD_IMM64;
        // A function's address in an instruction (a call or a callback argument): the
        // relocation names its symbol, or its section and the offset.
        let target = relocs.get(&at).and_then(|t| match *t {
            RelocationTarget::Symbol(s) => file?.symbol_by_index(s).ok(),
            _ => None,
        });
        if let Some(sym) = target
            && let Some(section) = sym.section_index()
            && file.is_some_and(|file| {
                file.section_by_index(section).is_ok_and(|s| s.kind() == object::SectionKind::Text)
            })
        {
            // A call's imm counts instructions after the next one; ld_imm64's counts bytes.
            let offset = if wide { i64::from(insn.imm) } else { (i64::from(insn.imm) + 1) * 8 };
            let addr = sym.address().wrapping_add_signed(offset);
            match function_at(starts, section, addr) {
                Some(name) => {
                    f.calls.insert(name);
                }
                None => f.unresolved += 1,
            }
        } else if insn.code == (BPF_JMP | BPF_CALL) && insn.src == BPF_PSEUDO_CALL {
            // A call inside the function's own section, already resolved.
            let addr = at.wrapping_add_signed((i64::from(insn.imm) + 1) * 8);
            match own_section.and_then(|sec| function_at(starts, SectionIndex(sec), addr)) {
                Some(name) => {
                    f.calls.insert(name);
                }
                None => f.unresolved += 1,
            }
        } else if insn.code == (BPF_JMP | BPF_CALL) && insn.src == 0 && insn.imm > LAST_5_10_HELPER
        {
            let name = LATE_HELPERS.iter().find(|(id, ..)| *id == insn.imm).map_or_else(
                || format!("helper #{} (newer than 5.10)", insn.imm),
                |(_, name, _)| (*name).to_owned(),
            );
            f.late_helpers.insert(name);
        }
        if is_v4(insn) {
            f.v4_insns += 1;
        }
        if (class == BPF_STX) && insn.code & 0xe0 == BPF_ATOMIC_MODE && insn.imm != 0 {
            // imm 0 is the plain add every kernel has (BPF_XADD); anything else (fetch,
            // and, or, xor, xchg, cmpxchg) is 5.12+.
            f.late_atomics += 1;
        }
        // Stack addresses: loads and stores through r10 or a register derived from it.
        if matches!(class, BPF_LDX | BPF_ST | BPF_STX) {
            let base_reg = if class == BPF_LDX { insn.src } else { insn.dst };
            if let Some(Some(off)) = frame_regs.get(usize::from(base_reg)) {
                deepest = deepest.min(off + i64::from(insn.off));
            }
        }
        // Track which registers point into the frame (by the straight-line order LLVM
        // emits them in: `rX = r10; rX += -N` right before the use).
        let dst = usize::from(insn.dst);
        if dst < frame_regs.len() && dst != usize::from(FRAME_POINTER) {
            match insn.code {
                BPF_MOV_X => {
                    frame_regs[dst] = frame_regs.get(usize::from(insn.src)).copied().flatten();
                }
                c if c == (BPF_ALU64 | BPF_ADD_K) => {
                    if let Some(off) = frame_regs[dst] {
                        let off = off + i64::from(insn.imm);
                        frame_regs[dst] = Some(off);
                        deepest = deepest.min(off);
                    }
                }
                _ if class == BPF_LDX || class == BPF_ALU64 || class == 0x04 || class == BPF_LD => {
                    frame_regs[dst] = None;
                }
                _ => {}
            }
        }
        if insn.code == (BPF_JMP | BPF_CALL) {
            // Calls clobber r0-r5.
            for r in &mut frame_regs[..6] {
                *r = None;
            }
        }
        i += if wide { 16 } else { 8 };
    }
    f.stack = u32::try_from(-deepest).unwrap_or(u32::MAX);
    f
}

impl Budget {
    /// Program `program`'s deepest chain.
    #[must_use]
    pub fn chain(&self, program: &str) -> Chain {
        let (charged, frames) = self.deepest(program, &mut Vec::new());
        let unresolved = self.reachable(program).iter().map(|f| f.unresolved).sum();
        Chain { program: program.to_owned(), charged, frames, unresolved }
    }

    fn deepest(&self, name: &str, path: &mut Vec<String>) -> (u32, Vec<(String, u32)>) {
        let Some(f) = self.functions.get(name) else { return (0, Vec::new()) };
        path.push(name.to_owned());
        let mut best = (0, Vec::new());
        for callee in &f.calls {
            // Recursion does not verify anyway; do not loop here.
            if path.contains(callee) {
                continue;
            }
            let below = self.deepest(callee, path);
            if below.0 > best.0 {
                best = below;
            }
        }
        path.pop();
        let mut frames = vec![(name.to_owned(), f.stack)];
        frames.extend(best.1);
        (charged(f.stack) + best.0, frames)
    }

    /// The functions `program` reaches, itself included.
    fn reachable(&self, program: &str) -> Vec<&Function> {
        let mut out = Vec::new();
        let mut todo = vec![program.to_owned()];
        let mut seen = BTreeSet::new();
        while let Some(name) = todo.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            let Some(f) = self.functions.get(&name) else { continue };
            out.push(f);
            todo.extend(f.calls.iter().cloned());
        }
        out
    }

    /// Late helpers, atomics and instructions anywhere in `program`'s call graph.
    #[must_use]
    pub fn late_features(&self, program: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for f in self.reachable(program) {
            for h in &f.late_helpers {
                let since = LATE_HELPERS.iter().find(|(_, n, _)| n == h).map_or("5.11", |x| x.2);
                out.insert(format!("{h} ({since}+)"));
            }
            if f.late_atomics > 0 {
                out.insert("atomic compare-and-swap or fetch (5.12+)".to_owned());
            }
            if f.v4_insns > 0 {
                out.insert("v4 instructions (6.6+)".to_owned());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_charged_as_old_verifiers_charge_them() {
        assert_eq!(charged(0), 32);
        assert_eq!(charged(8), 32);
        assert_eq!(charged(32), 32);
        assert_eq!(charged(33), 64);
        assert_eq!(charged(312), 320);
    }

    #[test]
    fn stack_offsets_are_read_through_derived_registers() {
        // r1 = r10; r1 += -48; *(u64 *)(r1 + 8) = r2; *(u32 *)(r10 - 16) = r3; exit
        let code = [
            [0xbf, 0xa1, 0, 0, 0, 0, 0, 0],
            [0x07, 0x01, 0, 0, 0xd0, 0xff, 0xff, 0xff],
            [0x7b, 0x21, 8, 0, 0, 0, 0, 0],
            [0x63, 0x3a, 0xf0, 0xff, 0, 0, 0, 0],
            [0x95, 0, 0, 0, 0, 0, 0, 0],
        ]
        .concat();
        let f = function(&code, 0, &BTreeMap::new(), None, &BTreeMap::new(), None);
        assert_eq!(f.stack, 48);
        assert!(f.calls.is_empty());
    }

    #[test]
    fn late_helpers_and_atomics_are_found() {
        // call bpf_loop; r0 = cmpxchg_64(r1 + 0, r0, r2); lock *(u64 *)(r1 + 0) += r2; exit
        let code = [
            [0x85, 0, 0, 0, 181, 0, 0, 0],
            [0xdb, 0x21, 0, 0, 0xf1, 0, 0, 0],
            [0xdb, 0x21, 0, 0, 0, 0, 0, 0],
            [0x95, 0, 0, 0, 0, 0, 0, 0],
        ]
        .concat();
        let f = function(&code, 0, &BTreeMap::new(), None, &BTreeMap::new(), None);
        assert_eq!(f.late_helpers.iter().cloned().collect::<Vec<_>>(), ["bpf_loop"]);
        assert_eq!(f.late_atomics, 1);
        assert_eq!(f.v4_insns, 0);
        // An unknown helper past 5.10's last; a sign-extending move (r1 = (s32)r2); a call
        // to nowhere known.
        let code = [
            [0x85, 0, 0, 0, 160, 0, 0, 0],
            [0xbf, 0x21, 32, 0, 0, 0, 0, 0],
            [0x85, 0x10, 0, 0, 5, 0, 0, 0],
            [0x95, 0, 0, 0, 0, 0, 0, 0],
        ]
        .concat();
        let f = function(&code, 0, &BTreeMap::new(), None, &BTreeMap::new(), None);
        assert_eq!(
            f.late_helpers.iter().cloned().collect::<Vec<_>>(),
            ["helper #160 (newer than 5.10)"]
        );
        assert_eq!(f.v4_insns, 1);
        assert_eq!(f.unresolved, 1);
    }
}
