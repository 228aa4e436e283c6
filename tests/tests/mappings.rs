//! Anonymous private mappings: recorded with their stacks, trimmed and split by munmap and
//! `MAP_FIXED`, moved by mremap, never counted twice when an allocator maps memory itself.
use leak_tests::{assert_absent, assert_no_drops, assert_site, summary, trace_fixture, under};

const P: u64 = 4096;

#[test]
fn mappings_are_tracked_exactly() {
    let report = trace_fixture("mapper", &[], &[]);
    let sum = summary(&report);
    // Every mapping is made through the fixture's anon() helper: attribute by its caller.
    assert_eq!(under(&report, "leak_mmap"), (300_000, 3), "{sum:#?}");
    assert_eq!(under(&report, "munmap_head"), (6 * P, 1), "{sum:#?}");
    assert_eq!(under(&report, "munmap_tail"), (5 * P, 1), "{sum:#?}");
    assert_eq!(under(&report, "munmap_middle"), (8 * P, 2), "{sum:#?}");
    assert_eq!(under(&report, "fixed_replace_leak"), (8 * P, 3), "{sum:#?}");
    let s = assert_site(&report, "mremap_grow_leak", (6 * P, 1));
    assert_eq!(s.allocator_fn.as_deref(), Some("mremap"));
    // glibc maps a 1 MiB block itself: one allocation, by malloc, not a second one by mmap.
    let s = assert_site(&report, "malloc_large_leak", (1 << 20, 1));
    assert_eq!(s.allocator_fn.as_deref(), Some("malloc"));
    for gone in
        ["munmap_all", "fixed_then_unmap", "malloc_large_free", "unmap_premapped", "not_heap"]
    {
        assert_absent(&report, gone);
    }
    let mmap_sites = report.sites.iter().filter(|s| s.allocator_fn.as_deref() == Some("mmap"));
    assert!(
        mmap_sites.clone().all(|s| s.stack.iter().any(|f| f.function.as_deref() == Some("anon")))
    );
    assert_no_drops(&report);
}
