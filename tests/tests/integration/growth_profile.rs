//! The growth profile (`--mode growth`): page faults, not allocator calls, attributed to the
//! stack that first touched each page, kept while the page is resident. The busy fixture
//! (`grower`) churns millions of malloc/free calls a second beside a slow leak, a cache that
//! fills and then reuses its memory, and a 4 MiB scratch buffer mapped and unmapped every 20
//! ms. Its ground truth: the bytes `leak_fn` leaked (it prints them). Pages make the figure
//! approximate: the bound is 25%.
use leak_tests::{
    Fixture, Leak, fixture, read_report, require_root, run_with_report,
    truth::{
        assert_grower, assert_only_leak_fn_leaks, grower_leaked, growth_overview, relative_error,
        resident, sites_of,
    },
};
use leak_user::analysis::trend::Verdict;

/// `leak run --mode growth` of `fixture` (its arguments `args`) to its end: the report,
/// checked against what the fixture says it leaked; and leak's stderr.
fn profile_run(fixture_name: &str, args: &[&str]) -> (leak_tests::Report, Vec<String>) {
    let grower = fixture(fixture_name);
    let mut command = vec![grower.to_str().unwrap()];
    command.extend_from_slice(args);
    let (done, _dir, json) = run_with_report(&["--mode", "growth"], &command);
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
    let report = read_report(&json);
    assert_grower(&report, grower_leaked(&done.stdout));
    (report, done.stderr)
}

/// `leak run --mode growth`: the whole run profiled from the first instruction.
#[test]
fn a_run_names_the_leak_of_a_busy_process() {
    let (report, stderr) = profile_run("grower", &["10", "64"]);
    assert!(
        stderr.iter().any(|l| l.starts_with("attached to PID ") && l.contains("growth profile")),
        "{stderr:#?}"
    );
    assert!(report.probe_hits["page_fault_enter"] > 0);
}

/// Leaked blocks that are mappings of their own (the first touch is the code's `memset`).
#[test]
fn a_leak_of_mappings_is_named_too() {
    let _ = profile_run("grower", &["10", "64", "mmap"]);
}

/// The same on jemalloc, which never touches the memory it hands out.
#[test]
fn a_leak_on_jemalloc_is_named_too() {
    let _ = profile_run("grower-jemalloc", &["10", "64"]);
}

/// A C++ program: the leak through `new[]`, the cache through `unique_ptr`, the scratch
/// buffer a `std::vector`.
#[test]
fn a_leak_in_cxx_is_named_too() {
    let _ = profile_run("grower-cxx", &["10", "64"]);
}

/// A Rust program: `Box::leak`, boxes and a `Vec` (Rust's allocation plumbing folded off).
#[test]
fn a_leak_in_rust_is_named_too() {
    let _ = profile_run("rust-grower", &["10", "64"]);
}

/// `leak attach --mode growth` to a process already running: what it leaks while profiled,
/// as it says when asked (SIGUSR1) at the start and at the end of the profile.
#[test]
fn an_attach_profiles_a_running_process() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let mut cmd = std::process::Command::new(fixture("grower"));
    cmd.args(["30", "64"]);
    let mut grower = Fixture::start_command(cmd);
    // Its start-up's pages are behind it.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pid = grower.pid();
    let mut leaked_so_far = || {
        // SAFETY: plain kill(2) of our child.
        unsafe { libc::kill(pid.cast_signed(), libc::SIGUSR1) };
        let line = grower.stdout.wait_for("its count", |l| l.starts_with("leaked "));
        grower_leaked(&[line])
    };
    // Every page touched while profiled counts (--min-age 0s): the truth is between the
    // two counts.
    let leak = Leak::attach(
        pid,
        &[
            "--mode",
            "growth",
            "--duration",
            "8s",
            "--min-age",
            "0s",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let before = leaked_so_far();
    let done = leak.wait();
    let after = leaked_so_far();
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
    let report = read_report(&json);
    let expected = after - before;
    let leaks = sites_of(&report, "leak_fn");
    let bytes = resident(&leaks);
    let off = relative_error(bytes, expected);
    assert!(
        off <= 0.25,
        "leak_fn: {bytes} resident, {expected} leaked: {:#?}",
        growth_overview(&report)
    );
    assert!(
        leaks.iter().any(|s| s.trend.verdict == Verdict::Leak),
        "{:#?}",
        growth_overview(&report)
    );
    assert_only_leak_fn_leaks(&report);
}

/// A busy process that does not leak gets no leak verdict: the churn, the cache and the
/// scratch buffer are not growth.
#[test]
fn a_steady_busy_process_gets_no_leak_verdict() {
    let grower = fixture("grower");
    let (done, _dir, json) =
        run_with_report(&["--mode", "growth"], &[grower.to_str().unwrap(), "12", "0"]);
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
    let report = read_report(&json);
    assert!(
        report.sites.iter().all(|s| s.trend.verdict != Verdict::Leak),
        "{:#?}",
        growth_overview(&report)
    );
}
