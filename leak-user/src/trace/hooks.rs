//! Pure: which symbols are hooked and with which BPF programs.
//!
//! Every symbol is resolved on its own, the way the dynamic linker binds it (first definition
//! in the search order; see `target`). A process can use several allocators at once: a Rust
//! program with tikv-jemallocator allocates Rust values with `_rjem_mallocx` from its own
//! executable while libc's `malloc` serves the C code. Each hooked symbol gets an index (the
//! attach cookie), which is the `kind` of its allocations and names it in reports.
use leak_common::Program;

/// How a function takes and returns memory: decides its BPF programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookKind {
    /// Returns a new block; size in the first argument.
    Alloc,
    /// Returns a new block; size in the second argument (after the alignment).
    AllocSizeArg1,
    /// `calloc(nmemb, size)`.
    Calloc,
    /// `realloc(ptr, size)`: frees `ptr`, returns a new block.
    Realloc,
    /// `reallocarray(ptr, nmemb, size)`.
    Reallocarray,
    /// `posix_memalign(&ptr, alignment, size)`.
    PosixMemalign,
    /// Frees its first argument.
    Free,
    /// `mmap(addr, len, prot, flags, fd, off)`: anonymous private mappings are recorded.
    Mmap,
    /// `munmap(addr, len)`.
    Munmap,
    /// `mremap(old, old_size, new_size, ...)`.
    Mremap,
}

impl HookKind {
    /// Entry program, then the return program if any.
    #[must_use]
    pub const fn programs(self) -> &'static [Program] {
        match self {
            Self::Alloc => &[Program::AllocEnter, Program::AllocExit],
            Self::AllocSizeArg1 => &[Program::MemalignEnter, Program::AllocExit],
            Self::Calloc => &[Program::CallocEnter, Program::AllocExit],
            Self::Realloc => &[Program::ReallocEnter, Program::ReallocExit],
            Self::Reallocarray => &[Program::ReallocarrayEnter, Program::ReallocExit],
            Self::PosixMemalign => &[Program::PosixMemalignEnter, Program::PosixMemalignExit],
            Self::Free => &[Program::FreeEnter],
            Self::Mmap => &[Program::MmapEnter, Program::MmapExit],
            Self::Munmap => &[Program::MunmapEnter],
            Self::Mremap => &[Program::MremapEnter, Program::MremapExit],
        }
    }

    /// Its uprobe session (entry and return in one program, 6.13+), if it has one: the
    /// functions that return a new block, whose return sampling may skip.
    #[must_use]
    pub const fn session(self) -> Option<Program> {
        match self {
            Self::Alloc => Some(Program::AllocSession),
            Self::AllocSizeArg1 => Some(Program::MemalignSession),
            Self::Calloc => Some(Program::CallocSession),
            Self::PosixMemalign => Some(Program::PosixMemalignSession),
            Self::Realloc
            | Self::Reallocarray
            | Self::Free
            | Self::Mmap
            | Self::Munmap
            | Self::Mremap => None,
        }
    }

    /// Whether it has a return probe.
    #[must_use]
    pub const fn has_exit(self) -> bool {
        !matches!(self, Self::Free | Self::Munmap)
    }
}

/// A symbol that may be hooked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookSpec {
    /// Symbol name.
    pub symbol: String,
    /// Its shape.
    pub kind: HookKind,
    /// Name shown in reports (the symbol, or the C++ operator's name).
    pub display: String,
}

/// The standard C allocator, in hook order. A symbol at an address already hooked is skipped:
/// glibc's `aligned_alloc` and `memalign` are one function.
const LIBC: &[(&str, HookKind)] = &[
    ("malloc", HookKind::Alloc),
    ("free", HookKind::Free),
    ("calloc", HookKind::Calloc),
    ("realloc", HookKind::Realloc),
    ("posix_memalign", HookKind::PosixMemalign),
    ("aligned_alloc", HookKind::AllocSizeArg1),
    ("memalign", HookKind::AllocSizeArg1),
    ("valloc", HookKind::Alloc),
    ("pvalloc", HookKind::Alloc),
    ("reallocarray", HookKind::Reallocarray),
    ("mmap", HookKind::Mmap),
    ("mmap64", HookKind::Mmap),
    ("munmap", HookKind::Munmap),
    ("mremap", HookKind::Mremap),
];

/// jemalloc's own API (`mallocx` and friends), exported next to the standard names.
const JEMALLOC_EXTRA: &[(&str, HookKind)] = &[
    ("mallocx", HookKind::Alloc),
    ("rallocx", HookKind::Realloc),
    ("sdallocx", HookKind::Free),
    ("dallocx", HookKind::Free),
];

/// Symbol prefixes of jemalloc builds that do not replace the standard names: `je_` (e.g.
/// Redis' bundled jemalloc), `_rjem_` (Rust's tikv-jemalloc-sys).
const JEMALLOC_PREFIXES: &[&str] = &["je_", "_rjem_"];

/// mimalloc's API, as the Rust `mimalloc` crate calls it (`mi_malloc_aligned`, ...).
const MIMALLOC: &[(&str, HookKind)] = &[
    ("mi_malloc", HookKind::Alloc),
    ("mi_zalloc", HookKind::Alloc),
    ("mi_calloc", HookKind::Calloc),
    ("mi_realloc", HookKind::Realloc),
    ("mi_malloc_aligned", HookKind::Alloc),
    ("mi_zalloc_aligned", HookKind::Alloc),
    ("mi_calloc_aligned", HookKind::Calloc),
    ("mi_realloc_aligned", HookKind::Realloc),
    ("mi_free", HookKind::Free),
];

/// C++ operators (mangled, every variant) where an allocator defines them (jemalloc,
/// tcmalloc); libstdc++'s call `malloc` and `free`, which are hooked anyway.
const CXX: &[(&str, &str, HookKind)] = &[
    ("_Znwm", "operator new", HookKind::Alloc),
    ("_ZnwmRKSt9nothrow_t", "operator new", HookKind::Alloc),
    ("_ZnwmSt11align_val_t", "operator new", HookKind::Alloc),
    ("_ZnwmSt11align_val_tRKSt9nothrow_t", "operator new", HookKind::Alloc),
    ("_Znam", "operator new[]", HookKind::Alloc),
    ("_ZnamRKSt9nothrow_t", "operator new[]", HookKind::Alloc),
    ("_ZnamSt11align_val_t", "operator new[]", HookKind::Alloc),
    ("_ZnamSt11align_val_tRKSt9nothrow_t", "operator new[]", HookKind::Alloc),
    ("_ZdlPv", "operator delete", HookKind::Free),
    ("_ZdlPvm", "operator delete", HookKind::Free),
    ("_ZdlPvRKSt9nothrow_t", "operator delete", HookKind::Free),
    ("_ZdlPvSt11align_val_t", "operator delete", HookKind::Free),
    ("_ZdlPvmSt11align_val_t", "operator delete", HookKind::Free),
    ("_ZdlPvSt11align_val_tRKSt9nothrow_t", "operator delete", HookKind::Free),
    ("_ZdaPv", "operator delete[]", HookKind::Free),
    ("_ZdaPvm", "operator delete[]", HookKind::Free),
    ("_ZdaPvRKSt9nothrow_t", "operator delete[]", HookKind::Free),
    ("_ZdaPvSt11align_val_t", "operator delete[]", HookKind::Free),
    ("_ZdaPvmSt11align_val_t", "operator delete[]", HookKind::Free),
    ("_ZdaPvSt11align_val_tRKSt9nothrow_t", "operator delete[]", HookKind::Free),
];

/// Every symbol that may be hooked, in hook order.
#[must_use]
pub fn specs() -> Vec<HookSpec> {
    let plain = |(symbol, kind): &(&str, HookKind)| HookSpec {
        symbol: (*symbol).to_owned(),
        kind: *kind,
        display: (*symbol).to_owned(),
    };
    let mut out: Vec<HookSpec> = LIBC.iter().map(plain).collect();
    out.extend(CXX.iter().map(|(symbol, display, kind)| HookSpec {
        symbol: (*symbol).to_owned(),
        kind: *kind,
        display: (*display).to_owned(),
    }));
    out.extend(JEMALLOC_EXTRA.iter().map(plain));
    for prefix in JEMALLOC_PREFIXES {
        // The prefixed jemalloc has the standard functions (but reallocarray and pvalloc,
        // which jemalloc does not define) and its own API.
        for (name, kind) in LIBC.iter().chain(JEMALLOC_EXTRA) {
            if matches!(*name, "reallocarray" | "pvalloc" | "mmap" | "mmap64" | "munmap" | "mremap")
            {
                continue;
            }
            let symbol = format!("{prefix}{name}");
            out.push(HookSpec { display: symbol.clone(), symbol, kind: *kind });
        }
    }
    out.extend(MIMALLOC.iter().map(plain));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        let specs = specs();
        let mut symbols: Vec<&str> = specs.iter().map(|s| s.symbol.as_str()).collect();
        assert_eq!(&symbols[..2], ["malloc", "free"], "the required ones first");
        symbols.sort_unstable();
        let n = symbols.len();
        symbols.dedup();
        assert_eq!(symbols.len(), n, "no symbol twice");
        assert!(u32::try_from(n).unwrap() <= leak_common::MAX_HOOKS, "{n} hooks");
        let find = |s: &str| specs.iter().find(|x| x.symbol == s).unwrap();
        assert_eq!(find("_rjem_mallocx").kind, HookKind::Alloc);
        assert_eq!(find("je_free").kind, HookKind::Free);
        assert_eq!(find("_ZdlPvm").display, "operator delete");
        assert!(!specs.iter().any(|s| s.symbol == "je_reallocarray"));
        for spec in &specs {
            let programs = spec.kind.programs();
            assert_eq!(programs.len(), if spec.kind.has_exit() { 2 } else { 1 });
            assert!(!programs[0].is_return());
        }
    }
}
