//! A language runtime's allocation plumbing, folded out of the top of a stack: the site a
//! person reads is the function that asked for memory, not the layers between it and
//! `malloc`. (C and C++ need none of this: the hooks sit on the outermost allocator entry,
//! `operator new` included, so frame 0 is already the caller.)
//!
//! Rust: `Box::new`, `Vec::with_capacity` and the rest reach `malloc` through
//! `alloc::alloc::alloc`, `alloc::raw_vec`, `__rust_alloc` and std's `__rdl_alloc` (or the
//! `#[global_allocator]`'s `__rg_alloc`). With full symbols they are named by path; line
//! tables alone name inlined functions without one (`alloc`, `allocate`, `new<T>`), and then
//! the source file tells: rustc's own library under `library/alloc/src/`. A
//! `#[global_allocator]` (jemalloc, mimalloc) sits under `__rust_alloc`/`__rg_alloc`: all
//! above the outermost of those is the allocator's, whatever its frames are named.
use crate::analysis::model::Frame;

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
/// everything up to the outermost allocator shim near the top, then the plumbing after it.
pub fn fold_top(frames: &mut Vec<Frame>) {
    let shim = frames.iter().take(SHIM_DEPTH).rposition(is_shim).map_or(0, |i| i + 1);
    let plumbing = shim + frames[shim..].iter().take_while(|f| is_plumbing(f)).count();
    frames.drain(..plumbing.min(frames.len().saturating_sub(1)));
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
        fold_top(&mut frames);
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
        fold_top(&mut frames);
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
        fold_top(&mut frames);
        assert_eq!(names(&frames), ["server::leak_box", "main"]);
    }

    #[test]
    fn c_stacks_and_all_plumbing_stacks_keep_a_frame() {
        let mut c = vec![frame("leak_direct", Some("/src/a.c")), frame("main", Some("/src/a.c"))];
        fold_top(&mut c);
        assert_eq!(names(&c), ["leak_direct", "main"]);
        let mut only = vec![frame("__rust_alloc", None), frame("alloc::alloc::alloc", None)];
        fold_top(&mut only);
        assert_eq!(names(&only), ["alloc::alloc::alloc"]);
        let mut empty: Vec<Frame> = Vec::new();
        fold_top(&mut empty);
        assert!(empty.is_empty());
    }
}
