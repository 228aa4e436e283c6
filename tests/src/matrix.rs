//! The build matrix: one fixture built every way binaries are built (compilers, linkers,
//! position independence, where the debug info is), from this one table. `build.rs` includes
//! this file to build each case and to write one test per case (`tests/integration/matrix.rs`), which
//! asserts what the case promises: exact bytes per site, whole stacks, demangled names,
//! `file:line` where there is debug info, and where the symbols came from.

/// The fixture's language (and source: `fixtures/matrix.c`, `matrix.cpp`, `rust_leaker.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// C.
    C,
    /// C++ through libstdc++'s `operator new`.
    Cxx,
    /// Rust on the system allocator, release profile.
    Rust,
}

/// The compiler driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compiler {
    /// gcc / g++.
    Gcc,
    /// clang / clang++.
    Clang,
    /// rustc (its linker driver is cc).
    Rustc,
}

/// The linker (`-fuse-ld=`; for rustc, its self-contained LLD or cc's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linker {
    /// GNU ld (bfd).
    Bfd,
    /// GNU gold.
    Gold,
    /// LLVM's LLD (rustc's default on x86-64 Linux since 1.90).
    Lld,
    /// mold.
    Mold,
}

impl Linker {
    /// Its `-fuse-ld=` name (and its part of a case's name).
    #[must_use]
    pub fn ld(self) -> &'static str {
        match self {
            Self::Bfd => "bfd",
            Self::Gold => "gold",
            Self::Lld => "lld",
            Self::Mold => "mold",
        }
    }
}

/// How the executable is linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Position-independent, dynamically linked (distributions' default).
    Pie,
    /// At a fixed address, dynamically linked.
    NoPie,
    /// Static: the allocator inside the executable.
    Static,
    /// Static and position-independent.
    StaticPie,
}

/// Where the executable's debug info is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Debug {
    /// `-g` in the file (for Rust: `debug = 1`, line tables).
    InFile,
    /// Stripped, with `.gnu_debuglink` naming `NAME.debug` next to it.
    Debuglink,
    /// Stripped, the debug file only under `DIR/.build-id/xx/yyyy.debug` (`--debug-dir DIR`).
    BuildId,
    /// In the file, sections compressed with zlib.
    Zlib,
    /// In the file, sections compressed with zstd.
    Zstd,
    /// None: `.symtab` only (`strip --strip-debug`; for Rust `debug = 0`, cargo's release).
    Symtab,
    /// None and no `.symtab`: names from `.dynsym` (`-rdynamic`, `strip --strip-all`).
    Dynsym,
}

impl Debug {
    /// `file:line` expected for the fixture's own frames.
    #[must_use]
    pub fn has_lines(self) -> bool {
        !matches!(self, Self::Symtab | Self::Dynsym)
    }

    /// What the report says the executable's symbols came from.
    #[must_use]
    pub fn source(self) -> &'static str {
        match self {
            Self::InFile | Self::Zlib | Self::Zstd => "debug_info",
            Self::Debuglink => "debuglink",
            Self::BuildId => "build-id",
            Self::Symtab => "symtab",
            Self::Dynsym => "dynsym",
        }
    }
}

/// One way of building the fixture.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// Source language.
    pub lang: Lang,
    /// Compiler.
    pub compiler: Compiler,
    /// Linker.
    pub linker: Linker,
    /// Link mode.
    pub link: Link,
    /// Debug info layout.
    pub debug: Debug,
    /// Built with frame pointers (otherwise optimised without: only unwind tables help).
    pub frame_pointers: bool,
    /// A library preloaded when it runs (jemalloc: every `malloc` is jemalloc's).
    pub preload: Option<&'static str>,
}

/// Debian's jemalloc, for the preloaded cases.
pub const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

const fn case(lang: Lang, compiler: Compiler, linker: Linker, link: Link, debug: Debug) -> Case {
    Case { lang, compiler, linker, link, debug, frame_pointers: false, preload: None }
}

use Compiler::{Clang, Gcc, Rustc};
use Debug::{BuildId, Debuglink, Dynsym, InFile, Symtab, Zlib, Zstd};
use Lang::{C, Cxx, Rust};
use Link::{NoPie, Pie, Static, StaticPie};
use Linker::{Bfd, Gold, Lld, Mold};

/// The cases: every linker and link mode with gcc, every debug layout on the default build,
/// clang across linkers, C++ with and without jemalloc, Rust's release builds on each linker.
/// (gold cannot link `-static-pie`.)
pub const CASES: &[Case] = &[
    // gcc, C: linkers x link modes.
    case(C, Gcc, Bfd, Pie, InFile),
    case(C, Gcc, Bfd, NoPie, InFile),
    case(C, Gcc, Bfd, Static, InFile),
    case(C, Gcc, Bfd, StaticPie, InFile),
    case(C, Gcc, Gold, Pie, InFile),
    case(C, Gcc, Gold, Static, InFile),
    case(C, Gcc, Lld, Pie, InFile),
    case(C, Gcc, Lld, StaticPie, InFile),
    case(C, Gcc, Mold, Pie, InFile),
    case(C, Gcc, Mold, NoPie, InFile),
    Case { frame_pointers: true, ..case(C, Gcc, Bfd, Pie, InFile) },
    // Debug info layouts.
    case(C, Gcc, Bfd, Pie, Debuglink),
    case(C, Gcc, Bfd, Pie, BuildId),
    case(C, Gcc, Bfd, Pie, Zlib),
    case(C, Gcc, Bfd, Pie, Zstd),
    case(C, Gcc, Bfd, Pie, Symtab),
    case(C, Gcc, Bfd, Pie, Dynsym),
    case(C, Gcc, Lld, Static, BuildId),
    // clang, C.
    case(C, Clang, Bfd, Pie, InFile),
    case(C, Clang, Lld, Pie, InFile),
    case(C, Clang, Lld, NoPie, Debuglink),
    case(C, Clang, Mold, StaticPie, InFile),
    case(C, Clang, Gold, NoPie, Zstd),
    // C++, libstdc++.
    case(Cxx, Gcc, Bfd, Pie, InFile),
    Case { preload: Some(JEMALLOC), ..case(Cxx, Gcc, Bfd, Pie, InFile) },
    case(Cxx, Gcc, Gold, NoPie, BuildId),
    case(Cxx, Gcc, Bfd, Static, InFile),
    case(Cxx, Clang, Lld, Pie, InFile),
    Case { preload: Some(JEMALLOC), ..case(Cxx, Clang, Mold, Pie, Symtab) },
    // Rust's release profile: `debug = 1` (line tables) and `debug = 0` (no debug info,
    // cargo strips std's), no frame pointers, on rustc's LLD, GNU ld and mold.
    case(Rust, Rustc, Lld, Pie, InFile),
    case(Rust, Rustc, Lld, Pie, Symtab),
    case(Rust, Rustc, Bfd, Pie, InFile),
    case(Rust, Rustc, Mold, Pie, InFile),
];

impl Case {
    /// The case's name (and its fixture's file name): `c-gcc-bfd-pie`, `rust-lld-pie-symtab`.
    #[must_use]
    pub fn name(&self) -> String {
        let lang = match self.lang {
            C => "c",
            Cxx => "cxx",
            Rust => "rust",
        };
        let compiler = match self.compiler {
            Gcc => "-gcc",
            Clang => "-clang",
            Rustc => "",
        };
        let linker = self.linker.ld();
        let link = match self.link {
            Pie => "pie",
            NoPie => "nopie",
            Static => "static",
            StaticPie => "static-pie",
        };
        let debug = match self.debug {
            InFile => "",
            Debuglink => "-debuglink",
            BuildId => "-buildid",
            Zlib => "-zlib",
            Zstd => "-zstd",
            Symtab => "-symtab",
            Dynsym => "-dynsym",
        };
        let fp = if self.frame_pointers { "-fp" } else { "" };
        let preload = if self.preload.is_some() { "-jemalloc" } else { "" };
        format!("{lang}{compiler}-{linker}-{link}{debug}{fp}{preload}")
    }

    /// The case named `name`.
    #[must_use]
    pub fn named(name: &str) -> Option<Self> {
        CASES.iter().copied().find(|c| c.name() == name)
    }
}

/// The directory (under the fixtures') that `--debug-dir` points at for the build-id cases.
pub const DEBUG_DIR: &str = "debug";

/// The cases the kernel matrix runs (one per linker, and one per debug layout that needs a
/// file of its own).
pub const KERNEL_SUBSET: &[&str] =
    &["c-gcc-bfd-pie-debuglink", "c-gcc-gold-static", "c-clang-lld-pie", "c-gcc-mold-nopie"];

/// The matrix as a Markdown table (`docs/binaries.md` holds it; a test keeps the two equal):
/// what each case is and what its test asserts.
#[must_use]
pub fn markdown_table() -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "| case | language | compiler | linker | link | debug info | stack complete | \
         `file:line` | symbols from |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for c in CASES {
        let lang = match c.lang {
            C => "C",
            Cxx => "C++",
            Rust => "Rust",
        };
        let compiler = match c.compiler {
            Gcc => "gcc",
            Clang => "clang",
            Rustc => "rustc",
        };
        let linker = match c.linker {
            Bfd => "GNU ld",
            Gold => "gold",
            Lld => "LLD",
            Mold => "mold",
        };
        let link = match c.link {
            Pie => "PIE",
            NoPie => "non-PIE",
            Static => "static",
            StaticPie => "static-pie",
        };
        let debug = match (c.debug, c.lang) {
            (InFile, Rust) => "`debug = 1`",
            (Symtab, Rust) => "`debug = 0`",
            (InFile, _) => "`-g`",
            (Debuglink, _) => "`.gnu_debuglink`",
            (BuildId, _) => "`.build-id/`",
            (Zlib, _) => "`-g`, zlib",
            (Zstd, _) => "`-g`, zstd",
            (Symtab, _) => "stripped (`.symtab`)",
            (Dynsym, _) => "stripped (`.dynsym`)",
        };
        let mut extra = String::new();
        if c.frame_pointers {
            extra.push_str(", frame pointers");
        }
        if c.preload.is_some() {
            extra.push_str(", jemalloc preloaded");
        }
        let lines = if c.debug.has_lines() { "yes" } else { "names only" };
        let _ = writeln!(
            out,
            "| `{}` | {lang} | {compiler} | {linker} | {link}{extra} | {debug} | yes | {lines} | \
             `{}` |",
            c.name(),
            c.debug.source()
        );
    }
    out
}
