//! Anonymous private mappings: recorded with their stacks, trimmed and split by munmap and
//! `MAP_FIXED`, moved by mremap, never counted twice when an allocator maps memory itself.
use leak_tests::{trace_fixture, truth::assert_mapper_truth};

#[test]
fn mappings_are_tracked_exactly() {
    assert_mapper_truth(&trace_fixture("mapper", &[], &[]));
}
