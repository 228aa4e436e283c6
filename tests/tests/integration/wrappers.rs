//! Sites named after the code that asked for memory, not the project's allocator wrapper
//! (fixture `wrapped`: a redis-style `zmalloc` and a wrapper of its own), and the module named
//! after the program the user ran (a link to another file, as Debian's `redis-server` is).
use leak_tests::{
    assert_site, fixture, read_report, require_root, run_leak_with_stdin, summary, trace_fixture,
};

#[test]
fn a_redis_style_wrapper_is_folded_and_named() {
    let report = trace_fixture("wrapped", &[], &["--fold", "my_*"]);
    for (function, truth, wrapper) in [
        ("keys_add", (2000, 20), "zmalloc"),
        ("values_add", (10_000, 10), "zmalloc"),
        ("cache_add", (320, 5), "my_alloc"),
    ] {
        let site = assert_site(&report, function, truth);
        assert_eq!(site.wrapper.as_deref(), Some(wrapper), "{function}: {:#?}", summary(&report));
        assert_eq!(site.stack[1].function.as_deref(), Some("main"), "{:#?}", site.stack);
    }
    let names: Vec<_> =
        report.sites.iter().filter_map(|s| s.stack.first()?.function.as_deref()).collect();
    assert!(!names.contains(&"zmalloc") && !names.contains(&"my_alloc"), "{names:?}");
    // Without --fold, the project's own wrapper is a site like any function; zmalloc is still
    // folded (built in).
    let report = trace_fixture("wrapped", &[], &[]);
    let own = assert_site(&report, "my_alloc", (320, 5));
    assert_eq!(own.wrapper, None);
    assert_eq!(own.stack[1].function.as_deref(), Some("cache_add"));
    assert_site(&report, "keys_add", (2000, 20));
}

#[test]
fn the_module_is_the_program_the_user_ran() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("my-service");
    std::os::unix::fs::symlink(fixture("wrapped"), &link).unwrap();
    let json = dir.path().join("r.json");
    let done = run_leak_with_stdin(
        &["run", "--json", json.to_str().unwrap(), "--", link.to_str().unwrap()],
        "go\n\n",
    );
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
    let report = read_report(&json);
    let site = assert_site(&report, "keys_add", (2000, 20));
    assert_eq!(site.stack[0].module.as_deref(), Some("my-service"), "{:#?}", site.stack);
    let module = report.modules.iter().find(|m| m.name == "my-service").expect("its module");
    assert!(module.path.ends_with("/wrapped"), "the file it is: {module:?}");
}
