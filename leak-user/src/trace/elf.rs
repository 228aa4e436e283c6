//! ELF reading: function symbols, virtual address to file offset, code bytes.
use std::{
    collections::{HashMap, HashSet},
    fs, io,
    path::Path,
};

use object::{Object as _, ObjectSegment as _, ObjectSymbol as _, SymbolKind};

/// Errors reading an ELF file.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The file is not an ELF object this tool understands.
    #[error("{path} is not a 64-bit ELF file: {reason}")]
    Parse {
        /// File.
        path: String,
        /// Parser message.
        reason: String,
    },
}

/// A function symbol resolved to where uprobes need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunctionSym {
    /// Virtual address in the file's own address space.
    pub vaddr: u64,
    /// Symbol size (0 if unknown).
    pub size: u64,
    /// File offset of the first instruction (what the kernel's uprobe API takes).
    pub file_offset: u64,
}

/// An ELF file mapped into memory (read-only): only the pages the symbol lookup touches are
/// read, which matters for the 100 MB libraries some processes map.
pub struct ElfImage {
    path: String,
    data: Mapping,
}

/// A read-only private file mapping.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn open(path: &Path) -> io::Result<Self> {
        use std::os::fd::AsRawFd as _;
        let file = fs::File::open(path)?;
        let len = usize::try_from(file.metadata()?.len()).map_err(io::Error::other)?;
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "empty file"));
        }
        // SAFETY: a fresh read-only private mapping of an open file; the fd may be closed
        // after mmap returns.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for the lifetime of `self`. (Truncating the
        // file underneath would fault; shared objects are replaced, not truncated, by package
        // managers, and we only read them briefly.)
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

impl ElfImage {
    /// Reads and validates `path`.
    ///
    /// # Errors
    /// Unreadable file or not an ELF object.
    pub fn open(path: &Path) -> Result<Self, ElfError> {
        let shown = path.display().to_string();
        let data =
            Mapping::open(path).map_err(|source| ElfError::Read { path: shown.clone(), source })?;
        let image = Self { path: shown, data };
        image.parse()?;
        Ok(image)
    }

    fn parse(&self) -> Result<object::File<'_>, ElfError> {
        let file = object::File::parse(self.data.bytes())
            .map_err(|e| ElfError::Parse { path: self.path.clone(), reason: e.to_string() })?;
        if file.format() != object::BinaryFormat::Elf || !file.is_64() {
            return Err(ElfError::Parse {
                path: self.path.clone(),
                reason: "not ELF64".to_owned(),
            });
        }
        Ok(file)
    }

    /// Looks up a defined function by name: the dynamic symbol table first (what the dynamic
    /// linker binds calls to), then the full symbol table (static binaries).
    #[must_use]
    pub fn function(&self, name: &str) -> Option<FunctionSym> {
        let file = self.parse().ok()?;
        let find = |syms: object::SymbolIterator<'_, '_>| {
            syms.filter(|s| s.is_definition() && s.kind() == SymbolKind::Text && s.address() != 0)
                .find(|s| s.name() == Ok(name))
                .map(|s| (s.address(), s.size()))
        };
        let (vaddr, size) = find(file.dynamic_symbols()).or_else(|| find(file.symbols()))?;
        let file_offset = vaddr_to_offset(&file, vaddr)?;
        Some(FunctionSym { vaddr, size, file_offset })
    }

    /// The defined functions among `wanted`, in one pass over each symbol table (dynamic
    /// first, what the dynamic linker binds; then the full table, for static binaries).
    #[must_use]
    pub fn functions(&self, wanted: &HashSet<&str>) -> HashMap<String, FunctionSym> {
        let mut out = HashMap::new();
        let Ok(file) = self.parse() else { return out };
        for syms in [file.dynamic_symbols(), file.symbols()] {
            for s in syms {
                if !(s.is_definition() && s.kind() == SymbolKind::Text && s.address() != 0) {
                    continue;
                }
                let Ok(name) = s.name() else { continue };
                if !wanted.contains(name) || out.contains_key(name) {
                    continue;
                }
                if let Some(file_offset) = vaddr_to_offset(&file, s.address()) {
                    out.insert(
                        name.to_owned(),
                        FunctionSym { vaddr: s.address(), size: s.size(), file_offset },
                    );
                }
            }
        }
        out
    }

    /// Whether it has any symbol table (dynamic or full): a stripped static executable has
    /// neither, and nothing in it can be found by name.
    #[must_use]
    pub fn has_symbols(&self) -> bool {
        self.parse()
            .is_ok_and(|f| f.symbols().next().is_some() || f.dynamic_symbols().next().is_some())
    }

    /// Whether it is a Go program: the Go toolchain writes its build information and its
    /// own line table into sections of their own, stripped or not.
    #[must_use]
    pub fn is_go(&self) -> bool {
        self.parse().is_ok_and(|f| {
            [".go.buildinfo", ".gopclntab", ".note.go.buildid"]
                .iter()
                .any(|name| f.section_by_name(name).is_some())
        })
    }

    /// `DT_SONAME` and the `DT_NEEDED` entries, in order.
    #[must_use]
    pub fn dynamic_deps(&self) -> (Option<String>, Vec<String>) {
        let Ok(object::File::Elf64(elf)) = self.parse() else { return (None, Vec::new()) };
        let Ok(table) = elf.elf_dynamic_table() else { return (None, Vec::new()) };
        let text = |d: object::read::elf::Dynamic| {
            table.string(d).ok().map(|b| String::from_utf8_lossy(b).into_owned())
        };
        let mut soname = None;
        let mut needed = Vec::new();
        for d in &table {
            match d.tag {
                object::elf::DT_NEEDED => needed.extend(text(d)),
                object::elf::DT_SONAME => soname = text(d),
                _ => {}
            }
        }
        (soname, needed)
    }

    /// File offset of the ELF entry point (`e_entry`), if it lies in a loaded segment.
    #[must_use]
    pub fn entry_file_offset(&self) -> Option<u64> {
        let file = self.parse().ok()?;
        vaddr_to_offset(&file, file.entry())
    }

    /// Where its symbols and debug info are (see [`DebugLayout`]).
    #[must_use]
    pub fn debug_layout(&self) -> DebugLayout {
        use object::ObjectSection as _;
        let Ok(file) = self.parse() else { return DebugLayout::default() };
        // A debug section that takes room in the file (a stripped file's debug-only twin has
        // them as NOBITS, and some strippers leave empty ones behind).
        let present = |name: &str| {
            file.section_by_name(name).is_some_and(|s| {
                s.kind() != object::SectionKind::UninitializedData
                    && s.file_range().is_some_and(|(_, size)| size > 0)
            })
        };
        DebugLayout {
            debug_info: present(".debug_info") && present(".debug_line"),
            build_id: file.build_id().ok().flatten().map(<[u8]>::to_vec),
            debuglink: file
                .gnu_debuglink()
                .ok()
                .flatten()
                .map(|(name, crc)| (String::from_utf8_lossy(name).into_owned(), crc)),
            symtab: file.symbols().next().is_some(),
            dynsym: file.dynamic_symbols().next().is_some(),
        }
    }

    /// The loadable segments (program headers).
    #[must_use]
    pub fn segments(&self) -> Vec<crate::trace::unwind::Segment> {
        crate::trace::unwind::load_segments(self.data.bytes())
    }

    /// The CRC-32 of the whole file (what `.gnu_debuglink` records of its target).
    #[must_use]
    pub fn crc32(&self) -> u32 {
        let mut crc = flate2::Crc::new();
        crc.update(self.data.bytes());
        crc.sum()
    }

    /// Up to `len` bytes at a file offset.
    #[must_use]
    pub fn bytes_at(&self, file_offset: u64, len: usize) -> &[u8] {
        let Ok(start) = usize::try_from(file_offset) else { return &[] };
        let data = self.data.bytes();
        let end = start.saturating_add(len).min(data.len());
        data.get(start..end).unwrap_or(&[])
    }
}

/// What an ELF object carries for symbolization.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DebugLayout {
    /// DWARF line tables and units in the file itself (compressed or not).
    pub debug_info: bool,
    /// `NT_GNU_BUILD_ID`.
    pub build_id: Option<Vec<u8>>,
    /// `.gnu_debuglink`: the debug file's name and CRC-32.
    pub debuglink: Option<(String, u32)>,
    /// A `.symtab`.
    pub symtab: bool,
    /// A `.dynsym`.
    pub dynsym: bool,
}

fn vaddr_to_offset(file: &object::File<'_>, vaddr: u64) -> Option<u64> {
    file.segments().find_map(|seg| {
        let (offset, filesz) = seg.file_range();
        let start = seg.address();
        (start <= vaddr && vaddr < start + filesz).then(|| vaddr - start + offset)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_functions_in_our_own_libc() {
        // Every Linux test host has a libc; find it through our own maps.
        let maps = crate::procfs::read_maps(std::process::id()).unwrap();
        let libc = maps
            .iter()
            .filter_map(|m| m.file_path())
            .find(|p| p.contains("libc.so") || p.contains("libc-"))
            .expect("test binary links libc");
        let image = ElfImage::open(Path::new(libc)).unwrap();
        let malloc = image.function("malloc").expect("libc defines malloc");
        assert!(malloc.file_offset > 0);
        assert!(!image.bytes_at(malloc.file_offset, 16).is_empty());
        assert!(image.function("no_such_function_xyz").is_none());
        assert!(image.entry_file_offset().is_some());
        let wanted: HashSet<&str> = ["malloc", "free", "no_such_function_xyz"].into();
        let found = image.functions(&wanted);
        assert_eq!(found.get("malloc"), Some(&malloc));
        assert!(found.contains_key("free") && !found.contains_key("no_such_function_xyz"));
        let (soname, needed) = image.dynamic_deps();
        assert_eq!(soname.as_deref(), Some("libc.so.6"));
        assert!(needed.iter().any(|n| n.starts_with("ld-linux")), "{needed:?}");
    }

    #[test]
    fn rejects_non_elf() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        fs::write(&p, b"#!/bin/sh\necho hi\n").unwrap();
        assert!(matches!(ElfImage::open(&p), Err(ElfError::Parse { .. })));
        assert!(matches!(ElfImage::open(&dir.path().join("missing")), Err(ElfError::Read { .. })));
    }
}
