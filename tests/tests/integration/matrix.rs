//! The build matrix (`src/matrix.rs`): the same fixture built by each compiler, linker, link
//! mode and debug info layout, each traced and held to the same promises: exact bytes per
//! site, whole stacks marked complete, demangled names, `file:line` for the fixture's own
//! frames wherever there is debug info, and the report naming where the symbols came from.
use leak_tests::trace_fixture;

include!(concat!(env!("OUT_DIR"), "/matrix_tests.rs"));

fn matrix_case(name: &str) {
    leak_tests::truth::assert_matrix_case(name, &[]);
}

/// Debian's `libc6-dbg` (installed by `cargo xtask setup`) puts glibc's DWARF under
/// `/usr/lib/debug/.build-id/`: the C library's frames get `file:line` from it, and the report
/// says so.
#[test]
fn libc_frames_get_file_and_line_from_its_debug_package() {
    let name = "c-gcc-bfd-pie";
    let report = trace_fixture(name, &[], &[]);
    let libc = report.modules.iter().find(|m| m.name == "libc.so.6");
    let libc = libc.unwrap_or_else(|| panic!("libc in no stack: {:#?}", report.modules));
    assert_eq!(libc.symbols, "build-id", "{libc:#?}");
    assert!(
        libc.debug_file.as_deref().is_some_and(|f| f.starts_with("/usr/lib/debug/.build-id/")),
        "{libc:#?}"
    );
    let start = report
        .sites
        .iter()
        .flat_map(|s| &s.stack)
        .find(|f| f.module.as_deref() == Some("libc.so.6"))
        .expect("a libc frame below main");
    assert!(start.file.is_some() && start.line.is_some_and(|l| l > 0), "{start:?}");
}

/// `docs/binaries.md` lists every case as the table is: the page cannot drift from the tests.
#[test]
fn the_docs_list_every_case() {
    let page = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/binaries.md");
    let text = std::fs::read_to_string(page).unwrap_or_default();
    let table = leak_tests::matrix::markdown_table();
    assert!(text.contains(&table), "docs/binaries.md must hold this table:\n{table}");
}
