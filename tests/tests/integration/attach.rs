//! `leak attach` on live fixture processes: exact bytes and counts per leaking function.
use leak_tests::{
    Fixture, Leak, assert_absent, assert_no_drops, assert_site, frame0, read_report, require_root,
    summary, trace_fixture,
    truth::{assert_leaker_truth, assert_leaker_truth_via},
};

#[test]
fn attach_reports_exact_leaks_per_function() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let svg = dir.path().join("report.svg");
    let folded = dir.path().join("report.folded");
    let mut fixture = Fixture::start("leaker");
    let leak = Leak::attach(
        fixture.pid(),
        &[
            "--interval",
            "1s",
            "--json",
            json.to_str().unwrap(),
            "--svg",
            svg.to_str().unwrap(),
            "--folded",
            folded.to_str().unwrap(),
        ],
    );
    fixture.go_and_wait_done();
    let done = leak.interrupt();
    assert_eq!(done.status.code(), Some(0), "stderr: {:#?}", done.stderr);

    let report = read_report(&json);
    assert_eq!(report.version, 1);
    assert_eq!(report.target.pid, fixture.pid());
    assert_eq!(report.target.comm, "leaker");
    assert!(report.target.exe.ends_with("/leaker"), "{}", report.target.exe);
    assert_eq!(report.end_reason, "signal");
    assert_leaker_truth(&report);
    let sum: u64 = report.sites.iter().map(|s| s.outstanding_bytes).sum();
    assert_eq!(report.totals.outstanding_bytes, sum);
    // Sites are sorted by bytes, largest first.
    assert!(report.sites.windows(2).all(|w| w[0].outstanding_bytes >= w[1].outstanding_bytes));

    // The text report names the leaking function with its file:line.
    let text = done.stdout.join("\n");
    assert!(text.contains("final report: pid"), "{text}");
    assert!(text.contains("leak_malloc") && text.contains("leaker.c:"), "{text}");

    // Folded stacks hold the same data, outermost frame first.
    let folded = std::fs::read_to_string(&folded).unwrap();
    let line = folded.lines().find(|l| l.contains(";leak_malloc ")).expect("leak_malloc line");
    assert!(line.ends_with(";main;leak_malloc 40960"), "{line}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("<svg") && svg.contains("leak_malloc"));
    assert!(svg.contains(&format!("pid {}", fixture.pid())));
    assert!(svg.contains("bytes"));
}

#[test]
fn target_exiting_mid_run_still_gets_its_report() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut fixture = Fixture::start("leaker");
    let leak =
        Leak::attach(fixture.pid(), &["--duration", "10m", "--json", json.to_str().unwrap()]);
    let report = fixture.exit_under(leak, &json);
    assert_leaker_truth(&report);
}

#[test]
fn duration_ends_the_run_and_min_age_filters_young_allocations() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let aged = dir.path().join("aged.json");
    let mut fixture = Fixture::start("leaker");
    // A tracer that only reports allocations older than an hour: nothing qualifies. It is
    // attached first and ended by hand: a duration started before the other tracer's attach
    // (seconds on a loaded machine) could run out before the fixture allocates.
    let old_only =
        Leak::attach(fixture.pid(), &["--min-age", "1h", "--json", aged.to_str().unwrap()]);
    let leak = Leak::attach(fixture.pid(), &["--duration", "3s", "--json", json.to_str().unwrap()]);
    fixture.go_and_wait_done();
    let done = leak.wait();
    assert_eq!(done.status.code(), Some(0), "stderr: {:#?}", done.stderr);
    let report = read_report(&json);
    assert_eq!(report.end_reason, "duration");
    assert!(report.duration_s >= 3.0, "{}", report.duration_s);
    assert_leaker_truth(&report);

    let done = old_only.interrupt();
    assert_eq!(done.status.code(), Some(0), "stderr: {:#?}", done.stderr);
    let report = read_report(&aged);
    // It saw the same allocations and held them back.
    assert_eq!(report.probe_hits["malloc_enter"], read_report(&json).probe_hits["malloc_enter"]);
    assert!(report.sites.is_empty(), "{:#?}", summary(&report));
    assert_eq!(report.totals.outstanding_bytes, 0);
    assert!((report.min_age_s - 3600.0).abs() < 1e-9);
}

#[test]
fn threads_allocating_at_once_are_counted_exactly() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut fixture = Fixture::start("threads");
    let leak = Leak::attach(fixture.pid(), &["--json", json.to_str().unwrap()]);
    fixture.go_and_wait_done();
    let done = leak.interrupt();
    assert_eq!(done.status.code(), Some(0), "stderr: {:#?}", done.stderr);
    let report = read_report(&json);
    let s = assert_site(&report, "thread_leak", (414_400, 400));
    assert_eq!(s.stack.get(1).and_then(|f| f.function.as_deref()), Some("worker"));
    assert_absent(&report, "thread_churn");
    // Allocated on the workers, freed by main: cross-thread frees are matched.
    assert_absent(&report, "handoff_alloc");
    for name in ["missing_entry", "alloc_map_full", "pending_full", "stack_map_full"] {
        assert_eq!(report.drops[name], 0, "drop counter {name}");
    }
}

#[test]
fn sigterm_ends_the_run_with_a_report() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut fixture = Fixture::start("leaker");
    let leak = Leak::attach(fixture.pid(), &["--json", json.to_str().unwrap()]);
    fixture.go_and_wait_done();
    let done = leak.terminate();
    assert_eq!(done.status.code(), Some(0), "stderr: {:#?}", done.stderr);
    let report = read_report(&json);
    assert_eq!(report.end_reason, "signal");
    assert_leaker_truth(&report);
}

#[test]
fn a_full_allocation_map_is_counted_and_shown() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut fixture = Fixture::start("leaker");
    // Room for 4 outstanding allocations: the fixture leaks 32.
    let leak =
        Leak::attach(fixture.pid(), &["--max-allocs", "4", "--json", json.to_str().unwrap()]);
    fixture.go_and_wait_done();
    let done = leak.interrupt();
    assert_eq!(done.status.code(), Some(0), "stderr: {:#?}", done.stderr);
    let report = read_report(&json);
    assert_eq!(report.totals.outstanding_allocs, 4, "{:#?}", summary(&report));
    // 32 leaked blocks, 4 recorded: at least the other 28 inserts failed (more when churn
    // found the map full too).
    let full = report.drops["alloc_map_full"];
    assert!(full >= 28, "alloc_map_full = {full}");
    let text = done.stdout.join("\n");
    assert!(text.contains(&format!("alloc_map_full={full}")), "{text}");
}

/// A stack map too small for the fixture's call stacks: the stacks that do not fit are
/// counted (`stack_map_full`) and shown, tracing goes on: every block is still recorded
/// (under `[no stack]` where its stack did not fit), and the stacks that fit are named.
#[test]
fn a_full_stack_map_is_counted_and_shown() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut fixture = Fixture::start("leaker");
    // Room for 3 stacks: the fixture allocates from more than 20.
    let leak =
        Leak::attach(fixture.pid(), &["--max-stacks", "3", "--json", json.to_str().unwrap()]);
    fixture.go_and_wait_done();
    let done = leak.interrupt();
    assert_eq!(done.status.code(), Some(0), "stderr: {:#?}", done.stderr);
    let report = read_report(&json);
    let full = report.drops["stack_map_full"];
    assert!(full > 0, "stack_map_full = {full}: {:#?}", summary(&report));
    let text = done.stdout.join("\n");
    assert!(text.contains(&format!("stack_map_full={full}")), "{text}");
    assert_eq!(report.totals.outstanding_allocs, 32, "{:#?}", summary(&report));
    let named = report.sites.iter().filter(|s| frame0(s).is_some()).count();
    assert!((1..=3).contains(&named), "{:#?}", summary(&report));
}

/// A table too small for the fixture: records whose bucket is full go to the spill map,
/// are freed from it and read back from it, with the same exact results.
#[test]
fn records_past_a_full_bucket_spill_and_stay_exact() {
    // 2 buckets of 8 slots (16 records) and room for 19 more in the spill map
    // (`leak_common::alloc_layout`).
    let report = trace_fixture("leaker", &[], &["--max-allocs", "31"]);
    assert_leaker_truth(&report);
    // The 32 blocks the fixture leaks: twice what the table holds.
    assert_eq!(report.totals.outstanding_allocs, 32);
    assert_eq!(report.drops["alloc_map_full"], 0);
}

/// The leaker fixture on another allocator: exact results, nothing dropped.
fn leaker_on(fixture_name: &str, env: &[(&str, &str)], memalign: &str, allocator: &str) {
    let report = trace_fixture(fixture_name, env, &[]);
    assert!(
        report.allocator.path.contains(allocator),
        "malloc served by {}, expected {allocator}",
        report.allocator.path
    );
    assert_leaker_truth_via(&report, memalign, fixture_name);
}

#[test]
fn jemalloc_through_ld_preload() {
    let lib = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
    // jemalloc has its own memalign; it lacks pvalloc and reallocarray, which then come from
    // libc (whose reallocarray calls jemalloc's realloc: a nested call, counted once).
    leaker_on("leaker", &[("LD_PRELOAD", lib)], "memalign", "libjemalloc");
}

#[test]
fn tcmalloc_through_ld_preload() {
    // A symlink to libtcmalloc_minimal.so.4.5.10: matched by its soname.
    let lib = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4";
    leaker_on("leaker", &[("LD_PRELOAD", lib)], "aligned_alloc", "libtcmalloc_minimal");
}

#[test]
fn statically_linked_executable() {
    leaker_on("leaker-static", &[], "aligned_alloc", "leaker-static");
}

#[test]
fn jemalloc_linked_into_the_executable() {
    leaker_on("leaker-jemalloc", &[], "memalign", "leaker-jemalloc");
}

#[test]
fn tcmalloc_linked_into_the_executable() {
    leaker_on("leaker-tcmalloc", &[], "aligned_alloc", "leaker-tcmalloc");
}

#[test]
fn prefixed_jemalloc_names_are_hooked_where_defined() {
    let report = trace_fixture("prefixed", &[], &[]);
    let s = assert_site(&report, "leak_je", (192, 3));
    assert_eq!(s.allocator_fn.as_deref(), Some("je_malloc"));
    let s = assert_site(&report, "leak_rjem", (256, 2));
    assert_eq!(s.allocator_fn.as_deref(), Some("_rjem_mallocx"));
    assert_absent(&report, "no_leak_prefixed");
    // The malloc inside each wrapper is nested, the free inside je_free and _rjem_sdallocx
    // is of a pointer the wrapper just freed: nothing counted twice, nothing unknown.
    assert_no_drops(&report);
}

#[test]
fn max_overhead_stops_a_costly_trace_early_with_its_report() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    // Ticks without sleeping: allocations as fast as the probes let it, far over 1% of a CPU.
    let mut cmd = std::process::Command::new(leak_tests::fixture("cacher"));
    cmd.args(["100000000", "0"]);
    let target = Fixture::start_command(cmd);
    let leak = Leak::attach(
        target.pid(),
        &["--max-overhead", "1%", "--sample-interval", "200ms", "--json", json.to_str().unwrap()],
    );
    let done = leak.wait();
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
    assert!(
        done.stderr.iter().any(|l| l.contains("over --max-overhead 1.0%")),
        "{:#?}",
        done.stderr
    );
    let report = read_report(&json);
    assert_eq!(report.end_reason, "overhead_budget");
    assert!(report.duration_s < 5.0, "stopped at the first samples: {}", report.duration_s);
    // What was traced until then is reported, whole blocks at each site.
    let leak_site = leak_tests::site(&report, "leak_fn");
    assert_eq!(leak_site.outstanding_bytes, leak_site.outstanding_allocs * 1024);
}
