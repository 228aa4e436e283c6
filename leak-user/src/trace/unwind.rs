//! Unwind tables for code built without frame pointers (#7): each object's call frame
//! information (`.eh_frame`, else `.debug_frame`) reduced to the rows an x86-64 unwinder
//! needs, and a reference unwinder over them. Pure: the BPF unwinder walks the same rows.
//!
//! On x86-64 nearly every row says "CFA = rsp + N" (no frame pointer) or "CFA = rbp + 16"
//! (a frame pointer), with the return address at CFA - 8 and `rbp` either untouched or saved
//! at CFA + M. Anything else (DWARF expressions: the PLT, signal frames) is marked
//! unsupported: a walk stops there and says why.
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, RegisterRule,
    UnwindContext, UnwindSection, X86_64,
};
use leak_common::{
    CFA_NONE, CFA_OUTERMOST, CFA_RBP, CFA_RSP, CFA_UNSUPPORTED, RBP_AT_CFA, RBP_SAME, UnwindRow,
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
            collect(&EhFrame::new(bytes, LittleEndian), &bases, &mut ranges)
        }
        _ => match section(".debug_frame") {
            Some((_, bytes)) => collect(&DebugFrame::new(bytes, LittleEndian), &bases, &mut ranges),
            None => Ok(0),
        },
    }
    .map_err(|e| format!("reading call frame information: {e}"))?;
    Ok(UnwindTable { rows: to_rows(ranges), fdes })
}

/// One address range of an FDE with its rule (an [`UnwindRow`] whose `pc` is `start`).
type Range = (u64, u64, UnwindRow);

fn collect<'a, S: UnwindSection<EndianSlice<'a, LittleEndian>>>(
    section: &S,
    bases: &BaseAddresses,
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
            let (ra, rbp) = (row.register(X86_64::RA), row.register(X86_64::RBP));
            let rule = row_rule(row.cfa(), ra.as_ref(), rbp.as_ref());
            out.push((row.start_address(), row.end_address(), rule));
        }
    }
    Ok(fdes)
}

/// The rule of one CFI row (its `pc` left zero).
fn row_rule<T: gimli::ReaderOffset>(
    cfa: &CfaRule<T>,
    ra: Option<&RegisterRule<T>>,
    rbp: Option<&RegisterRule<T>>,
) -> UnwindRow {
    let unsupported = UnwindRow { cfa_reg: CFA_UNSUPPORTED, ..UnwindRow::default() };
    match ra {
        Some(RegisterRule::Undefined) => {
            return UnwindRow { cfa_reg: CFA_OUTERMOST, ..UnwindRow::default() };
        }
        Some(RegisterRule::Offset(-8)) => {}
        _ => return unsupported,
    }
    let (cfa_reg, offset) = match *cfa {
        CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RSP => {
            (CFA_RSP, offset)
        }
        CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RBP => {
            (CFA_RBP, offset)
        }
        _ => return unsupported,
    };
    let Ok(cfa_offset) = i32::try_from(offset) else { return unsupported };
    let (rbp_rule, rbp_offset) = match rbp {
        None | Some(RegisterRule::SameValue | RegisterRule::Undefined) => (RBP_SAME, 0),
        Some(RegisterRule::Offset(n)) => match i16::try_from(*n) {
            Ok(n) => (RBP_AT_CFA, n),
            Err(_) => return unsupported,
        },
        Some(_) => return unsupported,
    };
    UnwindRow { pc: 0, cfa_offset, rbp_offset, cfa_reg, rbp_rule }
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

/// Registers at a call site: instruction, stack and frame pointers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regs {
    /// `rip`: a return address (the walk starts in a return probe).
    pub ip: u64,
    /// `rsp`.
    pub sp: u64,
    /// `rbp`.
    pub bp: u64,
}

/// Walks a stack from `regs` with the rows `lookup` gives for a runtime address, reading
/// stack words with `read`: the return addresses, innermost (`regs.ip`) first, and how the
/// walk ended. Each address looked up is a return address minus one: the call before it.
pub fn unwind(
    lookup: impl Fn(u64) -> Option<UnwindRow>,
    read: impl Fn(u64) -> Option<u64>,
    regs: Regs,
    max: usize,
) -> (Vec<u64>, StackEnd) {
    let Regs { mut ip, mut sp, mut bp } = regs;
    let mut frames = vec![ip];
    loop {
        let Some(row) = lookup(ip.wrapping_sub(1)) else { return (frames, StackEnd::NoUnwindInfo) };
        let base = match row.cfa_reg {
            CFA_RSP => sp,
            CFA_RBP => bp,
            CFA_OUTERMOST => return (frames, StackEnd::Complete),
            CFA_NONE => return (frames, StackEnd::NoUnwindInfo),
            _ => return (frames, StackEnd::Unsupported),
        };
        let cfa = base.wrapping_add_signed(i64::from(row.cfa_offset));
        // The caller's frame lies above this one.
        if cfa <= sp {
            return (frames, StackEnd::BadFrame);
        }
        let Some(ra) = read(cfa - 8) else { return (frames, StackEnd::BadFrame) };
        if row.rbp_rule == RBP_AT_CFA {
            let Some(saved) = read(cfa.wrapping_add_signed(i64::from(row.rbp_offset))) else {
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
        UnwindRow { pc, cfa_offset: off, cfa_reg: CFA_RSP, ..UnwindRow::default() }
    }

    #[test]
    fn rows_are_sorted_merged_and_gaps_marked() {
        let rule = |cfa_reg, cfa_offset| UnwindRow { cfa_reg, cfa_offset, ..UnwindRow::default() };
        let rows = to_rows(vec![
            // Out of order, one contiguous with the next and equal to it, then a gap.
            (0x200, 0x210, rule(CFA_RSP, 8)),
            (0x100, 0x104, rule(CFA_RSP, 8)),
            (0x104, 0x120, rule(CFA_RSP, 16)),
            (0x120, 0x130, rule(CFA_RSP, 16)),
            (0x210, 0x220, rule(CFA_RSP, 8)),
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
            UnwindRow {
                pc: 0x200,
                cfa_offset: 16,
                rbp_offset: -16,
                cfa_reg: CFA_RBP,
                rbp_rule: RBP_AT_CFA,
            },
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
        let regs = Regs { ip: bias + 0x150, sp: 0x1000, bp: 0x1020 };
        let (frames, end) = unwind(lookup, read, regs, 64);
        assert_eq!(frames, [bias + 0x150, bias + 0x250, bias + 0x340, bias + 0x410]);
        assert_eq!(end, StackEnd::Complete);
        // The depth limit, and a return address outside every table.
        assert_eq!(
            unwind(lookup, read, regs, 2),
            (vec![bias + 0x150, bias + 0x250], StackEnd::MaxDepth)
        );
        let regs = Regs { ip: 0x42, ..regs };
        assert_eq!(unwind(lookup, read, regs, 64), (vec![0x42], StackEnd::NoUnwindInfo));
    }

    /// Debian's libc: no frame pointers, `.eh_frame` for nearly all of it, `_start`-style
    /// outermost frames marked (`clone3`'s child).
    #[test]
    fn libc_table() {
        let data = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        let table = build(&data).unwrap();
        assert!(table.fdes > 1000, "{}", table.fdes);
        let count = |k: u8| table.rows.iter().filter(|r| r.cfa_reg == k).count();
        assert!(count(CFA_RSP) > 10 * count(CFA_RBP), "mostly no frame pointer");
        assert!(count(CFA_OUTERMOST) >= 1, "thread start marked");
        assert!(table.rows.windows(2).all(|w| w[0].pc < w[1].pc), "sorted, one row per pc");
    }
}
