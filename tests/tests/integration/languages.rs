//! C++ and Rust programs: allocations through libstdc++'s operators and Rust's global
//! allocator are attributed to the functions that made them, exactly.
use leak_tests::{assert_absent, assert_no_drops, assert_site, summary, trace_fixture, under};

#[test]
fn cxx_operator_new_sites_are_the_callers_of_new() {
    let report = trace_fixture("cxx-leaker", &[], &[]);
    // libstdc++'s operator new has no frame pointer: hooked itself, the function that
    // called new is frame 0 (hooking only malloc would lose it).
    let s = assert_site(&report, "leak_new()", (192, 4));
    assert_eq!(s.allocator_fn.as_deref(), Some("operator new"));
    let s = assert_site(&report, "leak_new_array()", (400, 1));
    assert_eq!(s.allocator_fn.as_deref(), Some("operator new[]"));
    // Through std::vector / std::string internals: everything below the leaking function.
    assert_eq!(under(&report, "leak_vector()"), (24 + 1000, 2), "{:#?}", summary(&report));
    assert_site(&report, "leak_string()", (32, 1));
    // The string's 101-byte buffer is allocated inside libstdc++ (std::string::_M_construct),
    // which has no frame pointers: the unwind tables lead from there to leak_string().
    let buffer: Vec<&leak_tests::Site> = report
        .sites
        .iter()
        .filter(|s| leak_tests::frame0(s).is_some_and(|f| f.contains("_M_construct")))
        .collect();
    assert_eq!(buffer.len(), 1, "{:#?}", summary(&report));
    assert_eq!((buffer[0].outstanding_bytes, buffer[0].outstanding_allocs), (101, 1));
    assert_eq!(under(&report, "leak_string()"), (32 + 101, 2), "{:#?}", summary(&report));
    assert_absent(&report, "no_leak_cxx()");
    // delete -> free, new -> malloc: every free matched, every inner call counted once.
    assert_no_drops(&report);
}

/// The same program optimised without frame pointers: the same bytes under each leaking
/// function, through libstdc++'s containers, every stack whole down to main.
#[test]
fn cxx_without_frame_pointers() {
    let report = trace_fixture("cxx-leaker-nofp", &[], &[]);
    for (function, expected) in [
        ("leak_new()", (192, 4)),
        ("leak_new_array()", (400, 1)),
        ("leak_vector()", (1024, 2)),
        ("leak_string()", (133, 2)),
    ] {
        assert_eq!(under(&report, function), expected, "{function}: {:#?}", summary(&report));
    }
    for s in &report.sites {
        let chain: Vec<&str> = s.stack.iter().filter_map(|f| f.function.as_deref()).collect();
        assert!(chain.contains(&"main"), "{chain:?}");
        assert_eq!(s.stack_end, Some(leak_user::analysis::model::StackEnd::Complete), "{chain:?}");
    }
    assert_eq!(report.totals.outstanding_bytes, 192 + 400 + 1024 + 133);
    assert_absent(&report, "no_leak_cxx()");
    assert_no_drops(&report);
}

#[test]
fn rust_box_leak_and_forgotten_vec() {
    let report = trace_fixture("rust-leaker", &[], &[]);
    assert_eq!(under(&report, "rust_leaker::leak_box"), (3000, 3), "{:#?}", summary(&report));
    assert_eq!(under(&report, "rust_leaker::forget_vec"), (4096, 1), "{:#?}", summary(&report));
    assert_absent(&report, "rust_leaker::no_leak");
    assert_no_drops(&report);
}

/// A Rust release build as cargo makes one by default: optimised, without frame pointers,
/// linked by LLD, whose code shares a file page with the read-only data before it (the
/// mapping's address was once taken from the wrong segment, and every stack stopped at its
/// first frame). Whole stacks to main, `file:line` for the fixture's own frames (named as the
/// line tables name them: `leak_box`, inlined or not).
#[test]
fn rust_release_build_linked_by_lld() {
    let bin = std::fs::read(leak_tests::fixture("rust-leaker-release")).unwrap();
    assert!(bin.windows(11).any(|w| w == b"Linker: LLD"), "the fixture is linked by LLD");
    let report = trace_fixture("rust-leaker-release", &[], &[]);
    let named = |f: &leak_tests::truth::Frame, name: &str| {
        f.function.as_deref().is_some_and(|n| n == name || n.ends_with(&format!("::{name}")))
    };
    for (function, expected) in [("leak_box", (3000, 3)), ("forget_vec", (4096, 1))] {
        let sites: Vec<&leak_tests::Site> =
            report.sites.iter().filter(|s| s.stack.iter().any(|f| named(f, function))).collect();
        let total = sites
            .iter()
            .fold((0, 0), |(b, n), s| (b + s.outstanding_bytes, n + s.outstanding_allocs));
        assert_eq!(total, expected, "{function}: {:#?}", summary(&report));
        for s in sites {
            let chain: Vec<&str> = s.stack.iter().filter_map(|f| f.function.as_deref()).collect();
            assert!(s.stack.iter().any(|f| named(f, "main")), "{chain:?}");
            assert_eq!(
                s.stack_end,
                Some(leak_user::analysis::model::StackEnd::Complete),
                "{chain:?}"
            );
            let own = s.stack.iter().find(|f| named(f, function)).unwrap();
            assert!(own.file.as_deref().is_some_and(|f| f.ends_with("rust_leaker.rs")), "{own:?}");
            assert!(own.line.is_some_and(|l| l > 0), "{own:?}");
        }
    }
    assert!(
        !report.sites.iter().any(|s| s.stack.iter().any(|f| named(f, "no_leak"))),
        "{:#?}",
        summary(&report)
    );
    assert_no_drops(&report);
}

/// `#[global_allocator]` set to jemalloc (tikv-jemallocator: `_rjem_mallocx`, `_rjem_sdallocx`)
/// or mimalloc (`mi_malloc_aligned`, `mi_free`), linked into the executable: found there,
/// traced, the same bytes under the same functions, Rust's plumbing folded off the top.
#[test]
fn rust_global_allocators_jemalloc_and_mimalloc() {
    leak_tests::require_root();
    for (bin, allocator) in [
        (env!("CARGO_BIN_EXE_rust_jemalloc"), "_rjem_"),
        (env!("CARGO_BIN_EXE_rust_mimalloc"), "mi_"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("report.json");
        let mut target = leak_tests::Fixture::start_command(std::process::Command::new(bin));
        let leak = leak_tests::Leak::attach(target.pid(), &["--json", json.to_str().unwrap()]);
        let report = target.exit_under(leak, &json);
        let hooked: Vec<&str> = report.allocator.probes.iter().map(|p| p.symbol.as_str()).collect();
        assert!(hooked.iter().any(|h| h.starts_with(allocator)), "{bin}: {hooked:?}");
        for (function, expected) in [("leak_box", (3000, 3)), ("forget_vec", (4096, 1))] {
            let top = |s: &&leak_tests::Site| {
                leak_tests::frame0(s).is_some_and(|f| f.ends_with(&format!("::{function}")))
            };
            let total = report
                .sites
                .iter()
                .filter(top)
                .fold((0, 0), |(b, n), s| (b + s.outstanding_bytes, n + s.outstanding_allocs));
            assert_eq!(total, expected, "{bin}: {function}: {:#?}", summary(&report));
        }
        assert!(
            !report.sites.iter().any(|s| s
                .stack
                .iter()
                .any(|f| f.function.as_deref().is_some_and(|n| n.ends_with("::no_leak")))),
            "{bin}: {:#?}",
            summary(&report)
        );
        assert_no_drops(&report);
    }
}
