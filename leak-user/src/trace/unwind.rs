//! Unwind tables for code built without frame pointers (#7): each object's call frame
//! information (`.eh_frame`, else `.debug_frame`) reduced to the rows a stack walk needs, and
//! a reference unwinder over them. Pure: the BPF unwinder walks the same rows.
//!
//! On x86-64 nearly every row says "CFA = rsp + N" (no frame pointer) or "CFA = rbp + 16"
//! (a frame pointer), with the return address at CFA - 8 and `rbp` either untouched or saved
//! at CFA + M. On aarch64 the CFA is `sp` or `x29` plus N, and the return address is in `x30`
//! until the prologue saves it (with `x29`, as a frame record) near the CFA. Anything else
//! (DWARF expressions: the PLT, signal frames; other registers) is marked unsupported: a
//! walk stops there and says why.
use gimli::{
    AArch64, BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian,
    Register, RegisterRule, UnwindContext, UnwindSection, Vendor, X86_64,
};
use leak_common::{
    CFA_FP, CFA_NONE, CFA_OUTERMOST, CFA_SP, CFA_UNSUPPORTED, FP_SAME, RA_IN_LR, UnwindRow,
};
use object::{Object as _, ObjectSection as _};

use crate::analysis::model::StackEnd;

/// An object's unwind rows, sorted by address, each valid up to the next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnwindTable {
    /// The rows; gaps between functions are [`CFA_NONE`] rows.
    pub rows: Vec<UnwindRow>,
    /// Frame description entries read.
    pub fdes: usize,
}

impl UnwindTable {
    /// The row covering ELF virtual address `pc`.
    #[must_use]
    pub fn find(&self, pc: u64) -> Option<&UnwindRow> {
        let pc = u32::try_from(pc).ok()?;
        let i = self.rows.partition_point(|r| r.pc <= pc);
        self.rows.get(i.checked_sub(1)?)
    }
}

/// The unwind table of ELF object `data`, from `.eh_frame` or, without one, `.debug_frame`.
///
/// # Errors
/// Not an ELF object, or its call frame information is malformed.
pub fn build(data: &[u8]) -> Result<UnwindTable, String> {
    let file = object::File::parse(data).map_err(|e| format!("not an ELF object: {e}"))?;
    let arch = match file.architecture() {
        object::Architecture::X86_64 => Arch::X86_64,
        object::Architecture::Aarch64 => Arch::Aarch64,
        other => return Err(format!("no unwind rules for {other:?} code")),
    };
    let section =
        |name: &str| file.section_by_name(name).and_then(|s| Some((s.address(), s.data().ok()?)));
    let mut bases = BaseAddresses::default();
    if let Some((addr, _)) = section(".text") {
        bases = bases.set_text(addr);
    }
    if let Some((addr, _)) = section(".eh_frame_hdr") {
        bases = bases.set_eh_frame_hdr(addr);
    }
    if let Some((addr, _)) = section(".got") {
        bases = bases.set_got(addr);
    }
    let mut ranges = Vec::new();
    let fdes = match section(".eh_frame") {
        Some((addr, bytes)) if !bytes.is_empty() => {
            let bases = bases.clone().set_eh_frame(addr);
            let mut eh_frame = EhFrame::new(bytes, LittleEndian);
            eh_frame.set_vendor(arch.vendor());
            collect(&eh_frame, &bases, arch, &mut ranges)
        }
        _ => match section(".debug_frame") {
            Some((_, bytes)) => {
                let mut debug_frame = DebugFrame::new(bytes, LittleEndian);
                debug_frame.set_vendor(arch.vendor());
                collect(&debug_frame, &bases, arch, &mut ranges)
            }
            None => Ok(0),
        },
    }
    .map_err(|e| format!("reading call frame information: {e}"))?;
    Ok(UnwindTable { rows: to_rows(ranges), fdes })
}

/// The architectures whose call frame rules the tables follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// x86-64: `rsp`, `rbp`, the return address always pushed by the call.
    X86_64,
    /// aarch64: `sp`, `x29`, the return address in `x30` until saved.
    Aarch64,
}

impl Arch {
    /// DWARF's numbers for the stack pointer, the frame pointer and the return address.
    fn registers(self) -> (Register, Register, Register) {
        match self {
            Self::X86_64 => (X86_64::RSP, X86_64::RBP, X86_64::RA),
            Self::Aarch64 => (AArch64::SP, AArch64::X29, AArch64::X30),
        }
    }

    /// Which vendor's call frame instructions: aarch64's own (`DW_CFA_AARCH64_negate_ra_state`,
    /// in every function built with pointer authentication, as Debian's arm64 packages are)
    /// share a number with SPARC's; gimli rejects the FDE unless told.
    fn vendor(self) -> Vendor {
        match self {
            Self::X86_64 => Vendor::Default,
            Self::Aarch64 => Vendor::AArch64,
        }
    }
}

/// One address range of an FDE with its rule (an [`UnwindRow`] whose `pc` is `start`).
type Range = (u64, u64, UnwindRow);

fn collect<'a, S: UnwindSection<EndianSlice<'a, LittleEndian>>>(
    section: &S,
    bases: &BaseAddresses,
    arch: Arch,
    out: &mut Vec<Range>,
) -> gimli::Result<usize> {
    let mut ctx = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    let mut fdes = 0;
    while let Some(entry) = entries.next()? {
        let CieOrFde::Fde(partial) = entry else { continue };
        // A malformed FDE is skipped, not fatal: its addresses get no row.
        let Ok(fde) = partial.parse(S::cie_from_offset) else { continue };
        fdes += 1;
        let Ok(mut table) = fde.rows(section, bases, &mut ctx) else { continue };
        while let Ok(Some(row)) = table.next_row() {
            let (_, fp, ra) = arch.registers();
            let (ra, fp) = (row.register(ra), row.register(fp));
            let rule = row_rule(arch, row.cfa(), ra.as_ref(), fp.as_ref());
            out.push((row.start_address(), row.end_address(), rule));
        }
    }
    Ok(fdes)
}

/// The rule of one CFI row (its `pc` left zero): the CFA's, the return address's (`ra`)
/// and the frame pointer's (`fp`).
fn row_rule<T: gimli::ReaderOffset>(
    arch: Arch,
    cfa: &CfaRule<T>,
    ra: Option<&RegisterRule<T>>,
    fp: Option<&RegisterRule<T>>,
) -> UnwindRow {
    let unsupported = UnwindRow { cfa_reg: CFA_UNSUPPORTED, ..UnwindRow::default() };
    let ra_offset = match (arch, ra) {
        (_, Some(RegisterRule::Undefined)) => {
            return UnwindRow { cfa_reg: CFA_OUTERMOST, ..UnwindRow::default() };
        }
        (Arch::X86_64, Some(RegisterRule::Offset(-8))) => -1,
        // Saved near the CFA, in 8-byte words (a frame record's `stp` reaches 512 bytes).
        (Arch::Aarch64, Some(RegisterRule::Offset(n))) if n % 8 == 0 => match i8::try_from(n / 8) {
            Ok(words) if words != RA_IN_LR => words,
            _ => return unsupported,
        },
        // Not saved yet: still in x30 (a leaf function, or before the prologue's `stp`).
        (Arch::Aarch64, None | Some(RegisterRule::SameValue)) => RA_IN_LR,
        _ => return unsupported,
    };
    let (sp, fp_reg, _) = arch.registers();
    let (cfa_reg, offset) = match *cfa {
        CfaRule::RegisterAndOffset { register, offset } if register == sp => (CFA_SP, offset),
        CfaRule::RegisterAndOffset { register, offset } if register == fp_reg => (CFA_FP, offset),
        _ => return unsupported,
    };
    let Ok(cfa_offset) = i32::try_from(offset) else { return unsupported };
    let fp_offset = match fp {
        None | Some(RegisterRule::SameValue | RegisterRule::Undefined) => FP_SAME,
        Some(RegisterRule::Offset(n)) => match i16::try_from(*n) {
            Ok(n) if n != FP_SAME => n,
            _ => return unsupported,
        },
        Some(_) => return unsupported,
    };
    UnwindRow { pc: 0, cfa_offset, fp_offset, ra_offset, cfa_reg }
}

/// Sorted, contiguous rows from FDE ranges: gaps become [`CFA_NONE`] rows, and a row equal
/// to the one before it (same rule, contiguous) is dropped.
fn to_rows(mut ranges: Vec<Range>) -> Vec<UnwindRow> {
    ranges.sort_by_key(|r| r.0);
    let mut rows: Vec<UnwindRow> = Vec::with_capacity(ranges.len());
    let mut end = 0u64;
    let push = |rows: &mut Vec<UnwindRow>, pc: u64, rule: UnwindRow| {
        // Objects are far below 4 GiB; an address above is skipped rather than wrapped.
        let Ok(pc) = u32::try_from(pc) else { return };
        if let Some(last) = rows.last_mut() {
            if (UnwindRow { pc: last.pc, ..rule }) == *last {
                return;
            }
            if last.pc == pc {
                *last = UnwindRow { pc, ..rule };
                return;
            }
        }
        rows.push(UnwindRow { pc, ..rule });
    };
    for (start, stop, rule) in ranges {
        if start >= stop {
            continue;
        }
        if start > end && !rows.is_empty() {
            push(&mut rows, end, UnwindRow { cfa_reg: CFA_NONE, ..UnwindRow::default() });
        }
        push(&mut rows, start, rule);
        end = end.max(stop);
    }
    if !rows.is_empty() {
        push(&mut rows, end, UnwindRow { cfa_reg: CFA_NONE, ..UnwindRow::default() });
    }
    rows
}

/// A loadable segment (`PT_LOAD`) of an ELF object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// File offset.
    pub offset: u64,
    /// Bytes in the file.
    pub filesz: u64,
    /// Virtual address.
    pub vaddr: u64,
    /// `PF_X`.
    pub executable: bool,
}

/// The loadable segments of ELF object `data`.
#[must_use]
pub fn load_segments(data: &[u8]) -> Vec<Segment> {
    use object::read::elf::{ElfFile64, ProgramHeader as _};
    let Ok(elf) = ElfFile64::<object::LittleEndian>::parse(data) else { return Vec::new() };
    let endian = elf.endian();
    elf.elf_program_headers()
        .iter()
        .filter(|ph| ph.p_type(endian) == object::elf::PT_LOAD)
        .map(|ph| Segment {
            offset: ph.p_offset(endian),
            filesz: ph.p_filesz(endian),
            vaddr: ph.p_vaddr(endian),
            executable: ph.p_flags(endian) & object::elf::PF_X != 0,
        })
        .collect()
}

/// The virtual address of file offset `offset` where a mapping of the object starts, the
/// mapping being executable or not. The one translation from a mapping to the object's
/// addresses (the unwind tables' and the BPF walk's load bias).
///
/// A mapping starts at a page: with linkers that pack segments into shared file pages (LLD,
/// mold: the end of read-only data and the start of code in one page, mapped twice), its
/// offset lies in the page-rounded range of two segments, which put that page at different
/// addresses; the mapping's permissions tell which one it is.
#[must_use]
pub fn mapping_vaddr(segments: &[Segment], offset: u64, executable: bool) -> Option<u64> {
    const PAGE: u64 = 4096;
    let holds =
        |s: &&Segment| s.offset & !(PAGE - 1) <= offset && offset < s.offset + s.filesz.max(1);
    let s = segments
        .iter()
        .filter(holds)
        .find(|s| s.executable == executable)
        .or_else(|| segments.iter().find(holds))?;
    Some(s.vaddr.wrapping_add(offset.wrapping_sub(s.offset)))
}

/// A mapped file's bytes and table.
type Built = (Vec<u8>, std::sync::Arc<UnwindTable>);

/// The unwind tables of a process's executable mappings (impure: reads `/proc` and the
/// mapped files). A table is built once per file.
#[derive(Default)]
pub struct ProcessTables {
    /// (start, end, load bias, table) per executable mapping, by start.
    maps: Vec<(u64, u64, u64, std::sync::Arc<UnwindTable>)>,
}

impl ProcessTables {
    /// The tables of process `pid`'s executable file mappings now; mappings whose file
    /// cannot be read or parsed get none.
    #[must_use]
    pub fn of(pid: u32) -> Self {
        let root = crate::procfs::RootPath::of(pid);
        let maps = crate::procfs::read_maps(pid).unwrap_or_default();
        let mut built: std::collections::HashMap<(u64, String), Option<Built>> =
            std::collections::HashMap::new();
        let mut out = Vec::new();
        for m in maps.iter().filter(|m| m.is_file() && m.perms.contains('x')) {
            let key = (m.inode, m.file_path().unwrap_or_default().to_owned());
            let entry = built.entry(key).or_insert_with(|| {
                let path = crate::procfs::locate(pid, &root, m)?;
                let data = std::fs::read(path).ok()?;
                let table = build(&data).ok()?;
                Some((data, std::sync::Arc::new(table)))
            });
            let Some((data, table)) = entry else { continue };
            let exec = m.perms.contains('x');
            let Some(vaddr) = mapping_vaddr(&load_segments(data), m.offset, exec) else { continue };
            out.push((m.start, m.end, m.start.wrapping_sub(vaddr), std::sync::Arc::clone(table)));
        }
        out.sort_by_key(|m| m.0);
        Self { maps: out }
    }

    /// The row for runtime address `addr`.
    #[must_use]
    pub fn lookup(&self, addr: u64) -> Option<UnwindRow> {
        let i = self.maps.partition_point(|m| m.0 <= addr).checked_sub(1)?;
        let (_, end, bias, table) = &self.maps[i];
        if addr >= *end {
            return None;
        }
        table.find(addr.wrapping_sub(*bias)).copied()
    }
}

/// The functions a complete stack ends in: the program's and a thread's start.
#[must_use]
pub fn is_outermost(function: &str) -> bool {
    matches!(function, "_start" | "start_thread" | "clone" | "clone3" | "__clone3" | "thread_start")
}

/// Registers where a walk starts: instruction, stack and frame pointers, and the link
/// register where there is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regs {
    /// `rip`, `pc`: a return address (the walk starts in a return probe) or where a thread
    /// stopped.
    pub ip: u64,
    /// `rsp`, `sp`.
    pub sp: u64,
    /// `rbp`, `x29`.
    pub bp: u64,
    /// `x30` on aarch64 (the return address of a frame that has not saved it); 0 on x86-64.
    pub lr: u64,
}

/// The bits of a user return address that are the address: on aarch64, pointer
/// authentication signs return addresses in the bits above the user address space's, whose
/// size is read off this thread's stack (the kernel puts the main stack at its top, and
/// threads' stacks are mapped high too); all ones elsewhere. The BPF walk gets the same mask
/// (`leak_common::GLOBAL_RA_MASK`).
#[must_use]
pub fn return_address_mask() -> u64 {
    if cfg!(target_arch = "aarch64") {
        let local = 0u8;
        address_bits_mask(std::hint::black_box(&raw const local).addr() as u64)
    } else {
        u64::MAX
    }
}

/// All ones up to the highest bit set in `top`, an address near the top of the user address
/// space.
fn address_bits_mask(top: u64) -> u64 {
    match 64 - top.leading_zeros() {
        64 => u64::MAX,
        bits => (1 << bits) - 1,
    }
}

/// Walks a stack from `regs` with the rows `lookup` gives for a runtime address, reading
/// stack words with `read`: the return addresses, innermost (`regs.ip`) first, and how the
/// walk ended. Each address looked up is a return address minus one: the call before it.
/// Return addresses are masked with `ra_mask` ([`return_address_mask`]).
pub fn unwind(
    lookup: impl Fn(u64) -> Option<UnwindRow>,
    read: impl Fn(u64) -> Option<u64>,
    regs: Regs,
    ra_mask: u64,
    max: usize,
) -> (Vec<u64>, StackEnd) {
    let Regs { mut ip, mut sp, mut bp, lr } = regs;
    let mut frames = vec![ip];
    loop {
        let Some(row) = lookup(ip.wrapping_sub(1)) else { return (frames, StackEnd::NoUnwindInfo) };
        let base = match row.cfa_reg {
            CFA_SP => sp,
            CFA_FP => bp,
            CFA_OUTERMOST => return (frames, StackEnd::Complete),
            CFA_NONE => return (frames, StackEnd::NoUnwindInfo),
            _ => return (frames, StackEnd::Unsupported),
        };
        let cfa = base.wrapping_add_signed(i64::from(row.cfa_offset));
        // The caller's frame lies above this one, or is this one's where a call has pushed
        // nothing and the return address is still in the link register (an aarch64 leaf).
        if cfa < sp || (cfa == sp && row.ra_offset != RA_IN_LR) {
            return (frames, StackEnd::BadFrame);
        }
        let ra = if row.ra_offset == RA_IN_LR {
            // Only the first frame can still hold it in the link register.
            if frames.len() > 1 || lr == 0 {
                return (frames, StackEnd::Unsupported);
            }
            lr
        } else {
            let Some(ra) = read(cfa.wrapping_add_signed(i64::from(row.ra_offset) * 8)) else {
                return (frames, StackEnd::BadFrame);
            };
            ra
        } & ra_mask;
        if row.fp_offset != FP_SAME {
            let Some(saved) = read(cfa.wrapping_add_signed(i64::from(row.fp_offset))) else {
                return (frames, StackEnd::BadFrame);
            };
            bp = saved;
        }
        // A zero return address ends a stack whose outermost frame is not marked.
        if ra == 0 {
            return (frames, StackEnd::Complete);
        }
        if frames.len() == max {
            return (frames, StackEnd::MaxDepth);
        }
        frames.push(ra);
        (ip, sp) = (ra, cfa);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The program headers of one small C program as each linker lays it out (`readelf -l`
    /// of `cc -O2 -fuse-ld=...` here), and of rustc's default (LLD) for a Rust release build.
    /// The code's mapping starts at the page of its segment's file offset; its address there
    /// is what the tables' bias is computed from.
    #[test]
    fn each_linkers_code_mapping_gets_its_segments_address() {
        let seg = |offset, filesz, vaddr, executable| Segment { offset, filesz, vaddr, executable };
        // (linker, segments, the code mapping's file offset, the address it must get)
        let cases = [
            // GNU ld: every segment on pages of its own.
            (
                "bfd",
                vec![
                    seg(0, 0x650, 0, false),
                    seg(0x1000, 0x185, 0x1000, true),
                    seg(0x2000, 0xdc, 0x2000, false),
                    seg(0x2dd0, 0x250, 0x3dd0, false),
                ],
                0x1000,
                0x1000,
            ),
            // gold: headers and code in one segment.
            ("gold", vec![seg(0, 0x7f8, 0, true), seg(0xdc0, 0x268, 0x1dc0, false)], 0, 0),
            // LLD and mold: read-only data and code share file page 0, mapped twice.
            (
                "lld",
                vec![
                    seg(0, 0x64c, 0, false),
                    seg(0x650, 0x180, 0x1650, true),
                    seg(0x7d0, 0x1d8, 0x27d0, false),
                    seg(0x9a8, 0x40, 0x39a8, false),
                ],
                0,
                0x1000,
            ),
            (
                "mold",
                vec![
                    seg(0, 0x584, 0, false),
                    seg(0x590, 0x196, 0x1590, true),
                    seg(0x728, 0x220, 0x2728, false),
                    seg(0x948, 0x38, 0x3948, false),
                ],
                0,
                0x1000,
            ),
            (
                "rust-lld",
                vec![
                    seg(0, 0x12d4c, 0, false),
                    seg(0x12d50, 0x3d4d0, 0x13d50, true),
                    seg(0x50220, 0x2748, 0x52220, false),
                    seg(0x52968, 0x9c0, 0x55968, false),
                ],
                0x12000,
                0x13000,
            ),
        ];
        for (linker, segments, offset, vaddr) in cases {
            assert_eq!(mapping_vaddr(&segments, offset, true), Some(vaddr), "{linker}");
        }
        // The read-only mapping of the shared page keeps the read-only segment's address.
        let lld = [seg(0, 0x64c, 0, false), seg(0x650, 0x180, 0x1650, true)];
        assert_eq!(mapping_vaddr(&lld, 0, false), Some(0));
        // A code address well inside the segment: offset and address move together.
        assert_eq!(mapping_vaddr(&lld, 0x700, true), Some(0x1700));
        assert_eq!(mapping_vaddr(&lld, 0x10_000, true), None);
    }

    fn rsp(pc: u32, off: i32) -> UnwindRow {
        UnwindRow { pc, cfa_offset: off, ra_offset: -1, cfa_reg: CFA_SP, ..UnwindRow::default() }
    }

    #[test]
    fn rows_are_sorted_merged_and_gaps_marked() {
        let rule = |cfa_reg, cfa_offset| UnwindRow {
            cfa_reg,
            cfa_offset,
            ra_offset: -1,
            ..UnwindRow::default()
        };
        let rows = to_rows(vec![
            // Out of order, one contiguous with the next and equal to it, then a gap.
            (0x200, 0x210, rule(CFA_SP, 8)),
            (0x100, 0x104, rule(CFA_SP, 8)),
            (0x104, 0x120, rule(CFA_SP, 16)),
            (0x120, 0x130, rule(CFA_SP, 16)),
            (0x210, 0x220, rule(CFA_SP, 8)),
        ]);
        assert_eq!(
            rows,
            [
                rsp(0x100, 8),
                rsp(0x104, 16),
                UnwindRow { pc: 0x130, cfa_reg: CFA_NONE, ..UnwindRow::default() },
                rsp(0x200, 8),
                UnwindRow { pc: 0x220, cfa_reg: CFA_NONE, ..UnwindRow::default() },
            ]
        );
        let table = UnwindTable { rows, fdes: 4 };
        assert_eq!(table.find(0x0ff), None);
        assert_eq!(table.find(0x12f).map(|r| r.cfa_offset), Some(16));
        assert_eq!(table.find(0x150).map(|r| r.cfa_reg), Some(CFA_NONE));
        assert_eq!(table.find(0x215).map(|r| r.pc), Some(0x200));
    }

    /// A stack of three frames without frame pointers and one with, in memory from 0x1000.
    #[test]
    fn walks_frames_with_and_without_frame_pointers() {
        // Code: f at 0x100.. (CFA rsp+24), g at 0x200.. (CFA rbp+16, rbp saved at CFA-16),
        // h at 0x300.. (CFA rsp+8), _start at 0x400 (outermost).
        let rows = vec![
            rsp(0x100, 24),
            UnwindRow { pc: 0x200, cfa_offset: 16, fp_offset: -16, ra_offset: -1, cfa_reg: CFA_FP },
            rsp(0x300, 8),
            UnwindRow { pc: 0x400, cfa_reg: CFA_OUTERMOST, ..UnwindRow::default() },
            UnwindRow { pc: 0x500, cfa_reg: CFA_NONE, ..UnwindRow::default() },
        ];
        let table = UnwindTable { rows, fdes: 4 };
        // Loaded at 0x7000_0000.
        let bias = 0x7000_0000;
        let lookup = |addr: u64| table.find(addr.checked_sub(bias)?).copied();
        // Stack (address: value): f's frame from 0x1000 (CFA 0x1018: return into g at
        // 0x1010); g's frame pushed rbp at 0x1020 (CFA 0x1030), return into h at 0x1028;
        // h's CFA 0x1038, return into _start at 0x1030.
        let stack: std::collections::HashMap<u64, u64> = [
            (0x1010, bias + 0x250),
            (0x1020, 0xdead),
            (0x1028, bias + 0x340),
            (0x1030, bias + 0x410),
        ]
        .into_iter()
        .collect();
        let read = |a: u64| stack.get(&a).copied();
        let regs = Regs { ip: bias + 0x150, sp: 0x1000, bp: 0x1020, lr: 0 };
        let (frames, end) = unwind(lookup, read, regs, u64::MAX, 64);
        assert_eq!(frames, [bias + 0x150, bias + 0x250, bias + 0x340, bias + 0x410]);
        assert_eq!(end, StackEnd::Complete);
        // The depth limit, and a return address outside every table.
        assert_eq!(
            unwind(lookup, read, regs, u64::MAX, 2),
            (vec![bias + 0x150, bias + 0x250], StackEnd::MaxDepth)
        );
        let regs = Regs { ip: 0x42, ..regs };
        assert_eq!(unwind(lookup, read, regs, u64::MAX, 64), (vec![0x42], StackEnd::NoUnwindInfo));
    }

    /// The user address space's bits, from an address at its top: 48-bit (4 KiB pages, 4
    /// levels, and 64 KiB pages, 3), 39-bit (4 KiB pages, 3 levels), x86-64's 47.
    #[test]
    fn return_address_masks() {
        assert_eq!(address_bits_mask(0x0000_ffff_d3c0_1230), 0x0000_ffff_ffff_ffff);
        assert_eq!(address_bits_mask(0x0000_007f_c0de_0000), (1 << 39) - 1);
        assert_eq!(address_bits_mask(0x0000_7ffd_1234_5678), (1 << 47) - 1);
        assert_eq!(address_bits_mask(u64::MAX), u64::MAX);
        // A signed return address (PAC in bits 48-54) keeps its address.
        assert_eq!(
            0x002a_aaaa_aaab_0a64 & address_bits_mask(0x0000_ffff_d3c0_1230),
            0xaaaa_aaab_0a64
        );
        let mask = return_address_mask();
        let code = (return_address_mask as *const ()).addr() as u64;
        assert_eq!(code & mask, code, "this function's address survives its own mask");
    }

    /// aarch64's rules as GCC and Clang emit them: at entry (CFA = sp, x30 unsaved), after
    /// `stp x29, x30, [sp, #-48]!` (both saved at the CFA - 48 frame record), after `mov x29,
    /// sp` (CFA from x29), and what this unwinder does not follow.
    #[test]
    fn aarch64_rows() {
        type Rule = RegisterRule<usize>;
        let cfa = |register, offset| CfaRule::RegisterAndOffset { register, offset };
        let row = |c: CfaRule<usize>, ra: Option<Rule>, fp: Option<Rule>| {
            row_rule(Arch::Aarch64, &c, ra.as_ref(), fp.as_ref())
        };
        let at = |n| Some(Rule::Offset(n));
        let aarch64 = |cfa_reg, cfa_offset, fp_offset, ra_offset| UnwindRow {
            pc: 0,
            cfa_offset,
            fp_offset,
            ra_offset,
            cfa_reg,
        };
        assert_eq!(row(cfa(AArch64::SP, 0), None, None), aarch64(CFA_SP, 0, FP_SAME, RA_IN_LR));
        assert_eq!(row(cfa(AArch64::SP, 48), at(-40), at(-48)), aarch64(CFA_SP, 48, -48, -5));
        assert_eq!(row(cfa(AArch64::X29, 48), at(-40), at(-48)), aarch64(CFA_FP, 48, -48, -5));
        // A leaf that saved other registers only.
        assert_eq!(
            row(cfa(AArch64::SP, 32), Some(Rule::SameValue), None),
            aarch64(CFA_SP, 32, FP_SAME, RA_IN_LR)
        );
        assert_eq!(row(cfa(AArch64::SP, 0), Some(Rule::Undefined), None).cfa_reg, CFA_OUTERMOST);
        let unsupported = [
            row(cfa(AArch64::X19, 16), at(-8), None),
            row(cfa(AArch64::SP, 16), at(-12), None),
            row(cfa(AArch64::SP, 4096), at(-4096), None),
            row(cfa(AArch64::SP, 16), Some(Rule::Register(AArch64::X19)), None),
            row(cfa(AArch64::SP, 16), at(-8), Some(Rule::Register(AArch64::X19))),
        ];
        assert!(unsupported.iter().all(|r| r.cfa_reg == CFA_UNSUPPORTED), "{unsupported:?}");
        // x86-64's return address is always the call's push.
        let x86 = row_rule(Arch::X86_64, &cfa(X86_64::RSP, 8), Some(&Rule::Offset(-8)), None);
        assert_eq!(x86, UnwindRow { cfa_offset: 8, ra_offset: -1, ..UnwindRow::default() });
        let x86 = row_rule::<usize>(Arch::X86_64, &cfa(X86_64::RSP, 8), None, None);
        assert_eq!(x86.cfa_reg, CFA_UNSUPPORTED);
    }

    /// An aarch64 walk that starts in a leaf (its return address in x30), then steps through
    /// frame records.
    #[test]
    fn walks_from_the_link_register_in_the_first_frame_only() {
        // leaf at 0x100 (nothing saved), f at 0x200 (frame record at CFA - 32), outermost 0x300.
        let rows = vec![
            UnwindRow { pc: 0x100, ..UnwindRow::default() },
            UnwindRow { pc: 0x200, cfa_offset: 32, fp_offset: -32, ra_offset: -3, cfa_reg: CFA_FP },
            UnwindRow { pc: 0x300, cfa_reg: CFA_OUTERMOST, ..UnwindRow::default() },
        ];
        let table = UnwindTable { rows, fdes: 3 };
        let lookup = |addr: u64| table.find(addr).copied();
        // f's frame record at 0x2000 (x29 points to it): saved x29 0x2100, x30 into 0x310.
        let stack: std::collections::HashMap<u64, u64> =
            [(0x2000, 0x2100), (0x2008, 0x310)].into_iter().collect();
        let read = |a: u64| stack.get(&a).copied();
        let regs = Regs { ip: 0x104, sp: 0x1ff0, bp: 0x2000, lr: 0x250 };
        assert_eq!(
            unwind(lookup, read, regs, u64::MAX, 64),
            (vec![0x104, 0x250, 0x310], StackEnd::Complete)
        );
        // Without the link register (a return probe's registers), the leaf ends the walk;
        // so does a frame past the first whose row says the link register.
        assert_eq!(
            unwind(lookup, read, Regs { lr: 0, ..regs }, u64::MAX, 64),
            (vec![0x104], StackEnd::Unsupported)
        );
        let regs = Regs { ip: 0x204, sp: 0x2000, bp: 0x2000, lr: 0 };
        let stack: std::collections::HashMap<u64, u64> =
            [(0x2000, 0x2100), (0x2008, 0x110)].into_iter().collect();
        let read = |a: u64| stack.get(&a).copied();
        assert_eq!(
            unwind(lookup, read, regs, u64::MAX, 64),
            (vec![0x204, 0x110], StackEnd::Unsupported)
        );
    }

    /// Debian's arm64 libc (`libc6-arm64-cross`, which `cargo xtask setup` installs), as
    /// the tables of an arm64 process would read it: functions start with the return
    /// address in x30, their bodies say where the prologue saved it, and thread starts are
    /// marked outermost.
    #[test]
    fn arm64_libc_table() {
        let path = "/usr/aarch64-linux-gnu/lib/libc.so.6";
        let data = std::fs::read(path)
            .unwrap_or_else(|e| panic!("{path}: {e} (cargo xtask setup installs it)"));
        let table = build(&data).unwrap();
        assert!(table.fdes > 1000, "{}", table.fdes);
        let rows = &table.rows;
        let count = |f: &dyn Fn(&UnwindRow) -> bool| rows.iter().filter(|r| f(r)).count();
        let in_lr = count(&|r| r.cfa_reg == CFA_SP && r.ra_offset == RA_IN_LR);
        let saved = count(&|r| matches!(r.cfa_reg, CFA_SP | CFA_FP) && r.ra_offset < 0);
        let unsupported = count(&|r| r.cfa_reg == CFA_UNSUPPORTED);
        // Glibc 2.36 here: 12,683 rows, 5,886 with x30 unsaved, 4,336 after a save, 169
        // unsupported (1.3%).
        assert!(in_lr > 1000, "function entries and leaves: {in_lr}");
        assert!(saved > 1000, "bodies after the prologue: {saved}");
        assert!(unsupported * 50 < rows.len(), "{unsupported} of {} unsupported", rows.len());
        assert!(count(&|r| r.cfa_reg == CFA_OUTERMOST) >= 1, "thread start marked");
        // Where a frame record is saved, x29 sits right below x30 (one read in the BPF walk).
        let records = count(&|r| r.ra_offset < 0 && r.fp_offset == i16::from(r.ra_offset) * 8 - 8);
        assert!(records * 10 > saved * 9, "{records} frame records of {saved}");
        assert!(rows.windows(2).all(|w| w[0].pc < w[1].pc), "sorted, one row per pc");
    }

    /// Debian's libc: no frame pointers, `.eh_frame` for nearly all of it, `_start`-style
    /// outermost frames marked (`clone3`'s child).
    #[test]
    fn libc_table() {
        let data = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        let table = build(&data).unwrap();
        assert!(table.fdes > 1000, "{}", table.fdes);
        let count = |k: u8| table.rows.iter().filter(|r| r.cfa_reg == k).count();
        assert!(count(CFA_SP) > 10 * count(CFA_FP), "mostly no frame pointer");
        assert!(count(CFA_OUTERMOST) >= 1, "thread start marked");
        assert!(table.rows.windows(2).all(|w| w[0].pc < w[1].pc), "sorted, one row per pc");
    }
}
