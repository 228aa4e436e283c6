//! A language runtime's allocation plumbing, and a project's own allocator wrappers, folded
//! out of the top of a stack: the site a person reads is the function that asked for memory,
//! not the layers between it and `malloc`. C and C++ call the hooked entries directly
//! (`operator new` included), but projects wrap them: redis's `zmalloc`, git's and GCC's
//! `xmalloc`, `GLib`'s `g_malloc`, `CPython`'s `PyMem_Malloc`, nginx's `ngx_palloc`; a site named
//! `zmalloc` is every site of redis. [`WRAPPERS`] names the common ones, `--fold` adds more.
//!
//! Rust: `Box::new`, `Vec::with_capacity` and the rest reach `malloc` through
//! `alloc::alloc::alloc`, `alloc::raw_vec`, `__rust_alloc` and std's `__rdl_alloc` (or the
//! `#[global_allocator]`'s `__rg_alloc`). With full symbols they are named by path; line
//! tables alone name inlined functions without one (`alloc`, `allocate`, `new<T>`), and then
//! the source file tells: rustc's own library under `library/alloc/src/`. A
//! `#[global_allocator]` (jemalloc, mimalloc) sits under `__rust_alloc`/`__rg_alloc`: all
//! above the outermost of those is the allocator's, whatever its frames are named.
use crate::analysis::{model::Frame, pattern::glob};

/// Functions that first touch memory on behalf of their caller, folded off the top of a growth
/// profile's stacks (shell patterns): the allocator writing a new chunk's header at the heap's
/// top, and the C library's string functions filling a block. The site a person reads is the
/// code that called them; the outermost one folded is named as the site's `wrapper`.
pub const TOUCHERS: &[&str] = &[
    // glibc's malloc: its chunk headers (`set_head` at the new top, `sysmalloc`'s fenceposts).
    "_int_malloc",
    "_int_memalign",
    "_int_realloc",
    "_int_free*",
    "sysmalloc",
    "malloc_consolidate",
    "tcache_init*",
    "malloc",
    "__libc_malloc*",
    // glibc's internal aliases, as inlined frames are named.
    "__GI___libc_*",
    "__GI_mem*",
    "calloc",
    "__libc_calloc",
    "realloc",
    "__libc_realloc",
    "free",
    "__libc_free",
    "operator new*",
    // The string functions, under their ifunc variants' names too.
    "memset",
    "memcpy",
    "memmove",
    "mempcpy",
    "__memset_*",
    "__memcpy_*",
    "__memmove_*",
    "__mempcpy_*",
    "__wmemset_*",
    "strcpy",
    "__strcpy_*",
    "__stpcpy_*",
    // Rust's library filling and growing what it allocated (`vec![x; n]`, `Vec::extend`,
    // `HashMap` growth): its caller is the site.
    "core::ptr::*",
    "core::intrinsics::*",
    "core::slice::*",
    "alloc::*",
    "<alloc::*",
    "<* as alloc::*",
    "hashbrown::*",
    "<hashbrown::*",
    "std::collections::*",
    "<std::collections::*",
];

/// Libraries whose frames at the top of a growth profile's stacks are folded whatever they are
/// named: the C library and the allocators, whose internal functions (`_int_malloc`,
/// `__memset_avx2_unaligned_erms`) have no name without their debug symbols. What they touch
/// they touch for their caller.
pub const TOUCHER_MODULES: &[&str] = &[
    "libc.so*",
    "libc-*.so",
    "libjemalloc.so*",
    "libtcmalloc*.so*",
    "libmimalloc.so*",
    "libstdc++.so*",
];

/// Allocator wrappers of widely used C projects and libraries (shell patterns): functions
/// whose job is to call the allocator, so that their callers are the sites.
pub const WRAPPERS: &[&str] = &[
    // redis, KeyDB, Valkey (src/zmalloc.c).
    "zmalloc*",
    "zcalloc*",
    "zrealloc*",
    "ztrymalloc*",
    "ztrycalloc*",
    "ztryrealloc*",
    "zstrdup",
    // The x-family that aborts on failure: git, GCC, binutils, OpenSSH, util-linux, gnulib.
    "xmalloc",
    "xcalloc",
    "xrealloc",
    "xzalloc",
    "xmallocz",
    "xstrdup",
    "xstrndup",
    "xmemdup*",
    "xnmalloc",
    "xcharalloc",
    "xreallocarray",
    // GLib.
    "g_malloc*",
    "g_try_malloc*",
    "g_realloc*",
    "g_try_realloc*",
    "g_strdup*",
    "g_strndup",
    "g_memdup*",
    "g_slice_alloc*",
    // CPython.
    "PyMem_Malloc",
    "PyMem_Calloc",
    "PyMem_Realloc",
    "PyMem_RawMalloc",
    "PyMem_RawCalloc",
    "PyMem_RawRealloc",
    "_PyMem_*",
    "PyObject_Malloc",
    "PyObject_Calloc",
    "PyObject_Realloc",
    "_PyObject_Malloc",
    "_PyObject_Calloc",
    "_PyObject_Realloc",
    "pymalloc_*",
    "_PyMem_Raw*",
    // nginx.
    "ngx_alloc",
    "ngx_calloc",
    "ngx_memalign",
    "ngx_palloc*",
    "ngx_pnalloc",
    "ngx_pcalloc",
    // OpenSSL, APR, SQLite, FFmpeg.
    "CRYPTO_malloc",
    "CRYPTO_zalloc",
    "CRYPTO_realloc",
    "CRYPTO_strdup",
    "CRYPTO_strndup",
    "apr_palloc",
    "apr_pcalloc",
    "sqlite3Malloc*",
    "sqlite3DbMalloc*",
    "sqlite3Realloc",
    "sqlite3DbRealloc*",
    "av_malloc*",
    "av_realloc*",
    // The C library's own: a copy's caller is the site.
    "strdup",
    "__strdup",
    "__GI___strdup",
    "strndup",
    "__strndup",
    "__GI___strndup",
    "wcsdup",
];

/// What is folded off the top of every stack: [`WRAPPERS`] and the patterns of `--fold`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Folding {
    /// Extra patterns (`--fold`).
    pub patterns: Vec<String>,
    /// Patterns of module file names whose frames are folded whatever their names (a growth
    /// profile's [`TOUCHER_MODULES`]).
    pub modules: Vec<String>,
}

impl Folding {
    /// Whether `frame` is an allocator wrapper, built in or named with `--fold`.
    #[must_use]
    pub fn is_wrapper(&self, frame: &Frame) -> bool {
        let in_module =
            frame.module.as_deref().is_some_and(|m| self.modules.iter().any(|p| glob(p, m)));
        in_module
            || frame.function.as_deref().is_some_and(|f| {
                WRAPPERS
                    .iter()
                    .copied()
                    .chain(self.patterns.iter().map(String::as_str))
                    .any(|p| glob(p, f))
            })
    }
}

/// Whether `frame` is Rust's allocation plumbing.
#[must_use]
pub fn is_plumbing(frame: &Frame) -> bool {
    let by_name = frame.function.as_deref().map(unprefixed).is_some_and(|f| {
        const PREFIXES: [&str; 9] = [
            "__rust_alloc",
            "__rust_realloc",
            "__rdl_",
            "__rg_",
            "alloc::",
            "<alloc::",
            "std::alloc::",
            "<std::alloc::",
            "core::alloc::",
        ];
        PREFIXES.iter().any(|p| f.starts_with(p))
            || f.contains(" as core::alloc::global::GlobalAlloc>::")
            || f.contains(" as core::alloc::Allocator>::")
    });
    let by_file = frame.file.as_deref().is_some_and(|f| {
        ["/library/alloc/src/", "/library/std/src/alloc.rs", "/library/core/src/alloc/"]
            .iter()
            .any(|p| f.contains(p))
    });
    by_name || by_file
}

/// Whether `frame` is one of the shims through which Rust calls its global allocator.
fn is_shim(frame: &Frame) -> bool {
    frame.function.as_deref().map(unprefixed).is_some_and(|f| {
        ["__rust_alloc", "__rust_realloc", "__rg_", "__rdl_"].iter().any(|p| f.starts_with(p))
    })
}

/// The shims' names without the `__rustc::` path rustc gives them since 1.88 (v0 mangling).
fn unprefixed(f: &str) -> &str {
    f.strip_prefix("__rustc::").unwrap_or(f)
}

/// How far from the top a shim is looked for: the allocator's own depth.
const SHIM_DEPTH: usize = 16;

/// Drops the plumbing frames at the top of `frames` (innermost first), keeping at least one:
/// everything up to the outermost allocator shim near the top, then the plumbing after it,
/// then the allocator wrappers of `folding`. Returns the outermost wrapper folded (what the
/// site's code called: `zmalloc`), if any.
pub fn fold_top(frames: &mut Vec<Frame>, folding: &Folding) -> Option<String> {
    let mut outermost = None;
    // Again while something folds: a growth profile's stack can start with the C library
    // (`memset`, a wrapper by module) above Rust's plumbing.
    loop {
        let before = frames.len();
        let shim = frames.iter().take(SHIM_DEPTH).rposition(is_shim).map_or(0, |i| i + 1);
        let plumbing = shim + frames[shim..].iter().take_while(|f| is_plumbing(f)).count();
        frames.drain(..plumbing.min(frames.len().saturating_sub(1)));
        let wrappers = frames.iter().take_while(|f| folding.is_wrapper(f)).count();
        let folded = wrappers.min(frames.len().saturating_sub(1));
        if let Some(name) = folded.checked_sub(1).and_then(|i| frames[i].function.as_deref()) {
            outermost = Some(name.to_owned());
        }
        frames.drain(..folded);
        if frames.len() == before {
            return outermost;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, file: Option<&str>) -> Frame {
        Frame {
            function: Some(function.into()),
            file: file.map(Into::into),
            line: file.map(|_| 1),
            ..Frame::unknown(0x10)
        }
    }

    fn names(frames: &[Frame]) -> Vec<&str> {
        frames.iter().filter_map(|f| f.function.as_deref()).collect()
    }

    /// A growth profile's folding: the C library by module (named or not), the touchers by
    /// name, Rust's plumbing in between, whatever the order.
    #[test]
    fn growth_stacks_fold_to_the_code_that_touched_memory() {
        let growth = Folding {
            patterns: TOUCHERS.iter().map(|p| (*p).to_owned()).collect(),
            modules: TOUCHER_MODULES.iter().map(|p| (*p).to_owned()).collect(),
        };
        let libc = |name: Option<&str>| Frame {
            function: name.map(Into::into),
            module: Some("libc.so.6".into()),
            ..Frame::unknown(0x20)
        };
        let mut filled = vec![
            libc(None),
            frame("core::ptr::write_bytes", None),
            frame("<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem", None),
            frame("alloc::vec::from_elem", None),
            frame("leak_fn", None),
            frame("main", None),
        ];
        assert_eq!(fold_top(&mut filled, &growth).as_deref(), Some("alloc::vec::from_elem"));
        assert_eq!(names(&filled), ["leak_fn", "main"]);
        let mut allocated = vec![
            libc(Some("_int_malloc")),
            libc(Some("__GI___libc_malloc")),
            frame("__rdl_alloc", None),
            frame("__rust_alloc", None),
            frame("<alloc::raw_vec::RawVecInner>::try_allocate_in", None),
            frame("leak_fn", None),
        ];
        fold_top(&mut allocated, &growth);
        assert_eq!(names(&allocated), ["leak_fn"]);
        // The exact trace's folding is unchanged: no toucher is folded there.
        let mut exact = vec![frame("memset_wrapper_caller", None), frame("main", None)];
        assert_eq!(fold_top(&mut exact, &Folding::default()), None);
        assert_eq!(names(&exact), ["memset_wrapper_caller", "main"]);
    }

    #[test]
    fn symbol_table_names_fold_to_the_callers_function() {
        let mut frames = vec![
            frame("__rdl_alloc", None),
            frame("alloc::raw_vec::RawVecInner<A>::try_allocate_in", None),
            frame(
                "<alloc::vec::Vec<T> as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
                None,
            ),
            frame("server::cache::insert", None),
            frame("alloc::vec::Vec<T>::push", None),
            frame("main", None),
        ];
        fold_top(&mut frames, &Folding::default());
        // Only the top: plumbing further down is a caller like any other.
        assert_eq!(names(&frames), ["server::cache::insert", "alloc::vec::Vec<T>::push", "main"]);
    }

    #[test]
    fn line_table_names_fold_by_their_source_file() {
        let lib = "/rustc/0123abcd/library/alloc/src/alloc.rs";
        let mut frames = vec![
            frame("alloc", Some(lib)),
            frame("new<[u8; 1000]>", Some("/rustc/0123abcd/library/alloc/src/boxed.rs")),
            frame("leak_box", Some("/src/main.rs")),
            frame("main", Some("/src/main.rs")),
        ];
        fold_top(&mut frames, &Folding::default());
        assert_eq!(names(&frames), ["leak_box", "main"]);
    }

    #[test]
    fn a_global_allocators_frames_fold_whatever_their_names() {
        let mut frames = vec![
            frame("imalloc_body", Some("/src/jemalloc.c")),
            frame("_rjem_mallocx", None),
            frame("alloc", Some("/cargo/tikv-jemallocator/src/lib.rs")),
            frame("<tikv_jemallocator::Jemalloc as core::alloc::global::GlobalAlloc>::alloc", None),
            frame("__rustc::__rust_alloc", None),
            frame("alloc::alloc::alloc", None),
            frame("server::leak_box", None),
            frame("main", None),
        ];
        fold_top(&mut frames, &Folding::default());
        assert_eq!(names(&frames), ["server::leak_box", "main"]);
    }

    #[test]
    fn c_allocator_wrappers_fold_to_their_callers() {
        // redis: every site was zmalloc's.
        let mut redis = vec![
            frame("ztrymalloc_usable_internal", Some("/src/zmalloc.c")),
            frame("zmalloc", Some("/src/zmalloc.c")),
            frame("createStringObject", Some("/src/object.c")),
            frame("main", Some("/src/server.c")),
        ];
        let folded = fold_top(&mut redis, &Folding::default());
        assert_eq!(names(&redis), ["createStringObject", "main"]);
        assert_eq!(folded.as_deref(), Some("zmalloc"));
        // A wrapper deeper down is a caller like any other.
        let mut deep = vec![frame("parse", None), frame("xmalloc", None), frame("main", None)];
        assert_eq!(fold_top(&mut deep, &Folding::default()), None);
        assert_eq!(names(&deep), ["parse", "xmalloc", "main"]);
        // A project's own, named with --fold; never the last frame.
        let mine = Folding { patterns: vec!["my_alloc*".into()], modules: Vec::new() };
        let mut own = vec![frame("my_alloc_zeroed", None), frame("handler", None)];
        assert_eq!(fold_top(&mut own, &mine).as_deref(), Some("my_alloc_zeroed"));
        assert_eq!(names(&own), ["handler"]);
        let mut alone = vec![frame("g_malloc0", None)];
        assert_eq!(fold_top(&mut alone, &Folding::default()), None);
        assert_eq!(names(&alone), ["g_malloc0"]);
        // Rust's plumbing first, then a wrapper under it.
        let mut both = vec![
            frame("__rust_alloc", None),
            frame("alloc::alloc::alloc", None),
            frame("xmalloc", None),
            frame("caller", None),
        ];
        assert_eq!(fold_top(&mut both, &Folding::default()).as_deref(), Some("xmalloc"));
        assert_eq!(names(&both), ["caller"]);
    }

    #[test]
    fn c_stacks_and_all_plumbing_stacks_keep_a_frame() {
        let mut c = vec![frame("leak_direct", Some("/src/a.c")), frame("main", Some("/src/a.c"))];
        fold_top(&mut c, &Folding::default());
        assert_eq!(names(&c), ["leak_direct", "main"]);
        let mut only = vec![frame("__rust_alloc", None), frame("alloc::alloc::alloc", None)];
        fold_top(&mut only, &Folding::default());
        assert_eq!(names(&only), ["alloc::alloc::alloc"]);
        let mut empty: Vec<Frame> = Vec::new();
        fold_top(&mut empty, &Folding::default());
        assert!(empty.is_empty());
    }
}
