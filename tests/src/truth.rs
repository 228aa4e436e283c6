//! The fixtures' ground truth, asserted by the tests of each feature and by the kernel suite
//! (`tests/kernel.rs`), which checks the same on every kernel of the matrix.
pub use leak_user::analysis::{model::StackEnd, report::StackFrame as Frame};
use leak_user::analysis::{report::Mode, trend::Verdict};

use crate::{
    Fixture, Leak, Report, Site, assert_absent, assert_no_drops, assert_site, frame0,
    matrix::{Case, DEBUG_DIR, Debug, Lang},
    read_report, summary, under,
};

/// The leaker fixture's ground truth (see fixtures/leaker.c); `memalign` names the function
/// reported for memalign calls (the allocator's own, or `aligned_alloc` where both are one
/// function), `module` the object the fixture's frames are in.
pub fn assert_leaker_truth_via(report: &Report, memalign: &str, module: &str) {
    let expect = [
        ("leak_malloc", 40_960, 10, "malloc"),
        ("leak_calloc", 1_500, 5, "calloc"),
        ("leak_realloc", 5_000, 1, "realloc"),
        ("leak_realloc_null", 200, 1, "realloc"),
        ("realloc_fail_keeps", 300, 1, "malloc"),
        ("leak_posix_memalign", 3_000, 3, "posix_memalign"),
        ("leak_posix_memalign_small", 96, 2, "posix_memalign"),
        ("leak_aligned_alloc", 1_024, 2, "aligned_alloc"),
        ("leak_memalign", 640, 1, memalign),
        ("leak_memalign_small", 72, 1, memalign),
        ("leak_valloc", 200, 2, "valloc"),
        ("leak_pvalloc", 5_000, 1, "pvalloc"),
        ("leak_reallocarray", 300, 1, "reallocarray"),
        ("reallocarray_overflow_keeps", 50, 1, "malloc"),
    ];
    for (function, bytes, allocs, via) in expect {
        let s = assert_site(report, function, (bytes, allocs));
        assert_eq!(s.allocator_fn.as_deref(), Some(via), "{function}");
        // Frame 0 is the caller of the allocator; the fixture's main called it.
        assert_eq!(s.stack.get(1).and_then(|f| f.function.as_deref()), Some("main"), "{function}");
        let f0 = &s.stack[0];
        assert!(f0.file.as_deref().is_some_and(|f| f.ends_with("leaker.c")), "{f0:?}");
        assert!(f0.line.is_some_and(|l| l > 0), "{f0:?}");
        assert_eq!(f0.module.as_deref(), Some(module));
    }
    for function in
        ["no_leak", "realloc_then_free", "realloc_zero", "failed_allocs", "aligned_no_leak"]
    {
        assert_absent(report, function);
    }
    // Every allocation, realloc and free of the run was seen and matched: nothing dropped.
    assert_no_drops(report);
}

/// The leaker fixture's ground truth on glibc's malloc.
pub fn assert_leaker_truth(report: &Report) {
    // glibc 2.36's aligned_alloc and memalign are one function, hooked once under the first
    // name; 2.41's (Debian 13, the arm64 guests' user space) are two, each hooked.
    let memalign = if report.allocator.probes.iter().any(|p| p.function == "memalign") {
        "memalign"
    } else {
        "aligned_alloc"
    };
    assert_leaker_truth_via(report, memalign, "leaker");
}

/// The mapper fixture's ground truth (see fixtures/mapper.c): mappings recorded with their
/// stacks, trimmed and split by munmap and `MAP_FIXED`, moved by mremap, never counted twice
/// when an allocator maps memory itself.
pub fn assert_mapper_truth(report: &Report) {
    const P: u64 = 4096;
    let sum = summary(report);
    // Every mapping is made through the fixture's anon() helper: attribute by its caller.
    assert_eq!(under(report, "leak_mmap"), (300_000, 3), "{sum:#?}");
    assert_eq!(under(report, "munmap_head"), (6 * P, 1), "{sum:#?}");
    assert_eq!(under(report, "munmap_tail"), (5 * P, 1), "{sum:#?}");
    assert_eq!(under(report, "munmap_middle"), (8 * P, 2), "{sum:#?}");
    assert_eq!(under(report, "fixed_replace_leak"), (8 * P, 3), "{sum:#?}");
    let s = assert_site(report, "mremap_grow_leak", (6 * P, 1));
    assert_eq!(s.allocator_fn.as_deref(), Some("mremap"));
    // glibc maps a 1 MiB block itself: one allocation, by malloc, not a second one by mmap.
    let s = assert_site(report, "malloc_large_leak", (1 << 20, 1));
    assert_eq!(s.allocator_fn.as_deref(), Some("malloc"));
    for gone in
        ["munmap_all", "fixed_then_unmap", "malloc_large_free", "unmap_premapped", "not_heap"]
    {
        assert_absent(report, gone);
    }
    let mmap_sites = report.sites.iter().filter(|s| s.allocator_fn.as_deref() == Some("mmap"));
    assert!(
        mmap_sites.clone().all(|s| s.stack.iter().any(|f| f.function.as_deref() == Some("anon")))
    );
    assert_no_drops(report);
}

/// The function names of a site's stack.
#[must_use]
pub fn chain(site: &Site) -> Vec<&str> {
    site.stack.iter().map(|f| f.function.as_deref().unwrap_or("?")).collect()
}

/// `nofp`'s two leak sites (see its header), each with the chain from frame 0 down to
/// `bottom` (`main`, or `thread_main` in a thread): complete stacks, exact bytes.
pub fn assert_whole_stacks(report: &Report, bottom: &str) {
    let levels = ["level5", "level4", "level3", "level2", "level1", bottom];
    let s = assert_site(report, "level5", (3000, 3));
    assert_eq!(chain(s)[..levels.len()], levels, "{:#?}", s.stack);
    assert_eq!(s.stack_end, Some(StackEnd::Complete), "{:#?}", s.stack);
    // strdup allocates on dup_name's behalf: libc has no frame pointers, yet the walk goes
    // through it to dup_name and everything below (strdup itself, an allocator wrapper, is
    // folded off the top: a walk that stopped in it would leave it as the only frame).
    let dup: Vec<&Site> =
        report.sites.iter().filter(|s| chain(s).first() == Some(&"dup_name")).collect();
    assert_eq!(dup.len(), 1, "{:#?}", summary(report));
    let dup = dup[0];
    assert!(dup.wrapper.as_deref().is_some_and(|w| w.contains("strdup")), "{:?}", dup.wrapper);
    assert_eq!((dup.outstanding_bytes, dup.outstanding_allocs), (100, 1));
    assert_eq!(chain(dup)[1..=levels.len()], levels, "{:?}", chain(dup));
    assert_eq!(dup.stack_end, Some(StackEnd::Complete));
    let last = chain(s).last().copied().unwrap_or_default();
    assert!(leak_user::trace::unwind::is_outermost(last), "ends at a start: {:?}", chain(s));
}

/// Traces `fixture` (with `fixture_args`) through its allocations with `leak attach
/// leak_args...` (and `leak_env`), the fixture exiting under it: its report.
#[must_use]
pub fn trace_until_exit(
    fixture: &str,
    fixture_args: &[&str],
    leak_args: &[&str],
    leak_env: &[(&str, &str)],
) -> Report {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let mut cmd = std::process::Command::new(crate::fixture(fixture));
    cmd.args(fixture_args);
    let mut target = Fixture::start_command(cmd);
    let mut args = vec!["--json", json.to_str().expect("utf-8 path")];
    args.extend_from_slice(leak_args);
    let leak = Leak::attach_env(target.pid(), &args, leak_env);
    // It exits right after its allocations: their stacks are symbolized afterwards.
    target.exit_under(leak, &json)
}

/// `leak run` of fixture `name` with `leak_env`, to its end: its report.
#[must_use]
pub fn run_to_end(
    name: &str,
    fixture_args: &[&str],
    leak_args: &[&str],
    leak_env: &[(&str, &str)],
) -> (crate::Finished, Report) {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let bin = crate::fixture(name);
    let mut args = vec!["run", "--json", json.to_str().expect("utf-8 path")];
    args.extend_from_slice(leak_args);
    args.push("--");
    args.push(bin.to_str().expect("utf-8 path"));
    args.extend_from_slice(fixture_args);
    let done = Leak::spawn_env(&args, leak_env).wait();
    let report = read_report(&json);
    (done, report)
}

/// Traces build matrix case `name` (see [`crate::matrix`]), `leak` run with `leak_env`, and
/// checks everything the case promises.
pub fn assert_matrix_case(name: &str, leak_env: &[(&str, &str)]) {
    let case = Case::named(name).expect("a case of the table");
    let env: Vec<(&str, &str)> = case.preload.map(|p| vec![("LD_PRELOAD", p)]).unwrap_or_default();
    let debug_dir = crate::fixture(DEBUG_DIR);
    let mut args = Vec::new();
    if case.debug == Debug::BuildId {
        args = vec!["--debug-dir", debug_dir.to_str().expect("utf-8 path")];
    }
    let report = crate::trace_fixture_env(name, &env, &args, leak_env);
    let sites: &[(&str, (u64, u64), &[&str])] = match case.lang {
        Lang::C => &[
            ("leak_direct", (4096, 4), &["leak_direct", "main"]),
            ("leak_deep", (2000, 2), &["leak_deep", "level2", "level1", "main"]),
        ],
        Lang::Cxx => &[
            ("matrix::Registry::add(int)", (144, 3), &["matrix::Registry::add(int)", "main"]),
            ("matrix::leak_buffer()", (500, 1), &["matrix::leak_buffer()", "main"]),
        ],
        Lang::Rust => &[
            ("leak_box", (3000, 3), &["leak_box", "main"]),
            ("forget_vec", (4096, 1), &["forget_vec", "main"]),
        ],
    };
    let source = match case.lang {
        Lang::C => "matrix.c",
        Lang::Cxx => "matrix.cpp",
        Lang::Rust => "rust_leaker.rs",
    };
    for &(function, expected, chain) in sites {
        let mine: Vec<&Site> = report.sites.iter().filter(|s| top_is(s, function)).collect();
        let total = mine
            .iter()
            .fold((0, 0), |(b, n), s| (b + s.outstanding_bytes, n + s.outstanding_allocs));
        assert_eq!(total, expected, "{name}: {function}: {:#?}", summary(&report));
        for s in mine {
            let names = names(s);
            // The fixture's frames in this order (the allocator's own, and the language
            // runtime's between its main and the C library's, aside).
            let mut wanted = chain.iter().peekable();
            for n in &names {
                if wanted.peek().is_some_and(|c| same(n, c)) {
                    wanted.next();
                }
            }
            assert!(wanted.peek().is_none(), "{name}: {function}: {names:?}");
            assert_eq!(s.stack_end, Some(StackEnd::Complete), "{name}: {names:?}");
            let top = &s.stack[0];
            assert_eq!(top.module.as_deref(), Some(name), "{name}: {top:?}");
            if case.debug.has_lines() {
                // (Rust's C-ABI `main`, which rustc generates, has no source.)
                let rust_shim =
                    |f: &Frame| case.lang == Lang::Rust && f.function.as_deref() == Some("main");
                for f in
                    s.stack.iter().filter(|f| chain.iter().any(|c| named(f, c)) && !rust_shim(f))
                {
                    assert!(
                        f.file.as_deref().is_some_and(|p| p.ends_with(source))
                            && f.line.is_some_and(|l| l > 0),
                        "{name}: no file:line: {f:?}"
                    );
                }
            }
        }
    }
    for s in &report.sites {
        assert!(
            !s.stack.iter().any(|f| named(f, "no_leak") || named(f, "matrix::no_leak()")),
            "{name}: no_leak holds memory: {:#?}",
            summary(&report)
        );
    }
    let module = report.modules.iter().find(|m| m.name == name);
    assert_eq!(
        module.map(|m| m.symbols.as_str()),
        Some(case.debug.source()),
        "{name}: {:#?}",
        report.modules
    );
    assert_no_drops(&report);
}

/// A function's name as reported, with or without its path (line tables name Rust's inlined
/// functions without one).
fn same(reported: &str, wanted: &str) -> bool {
    reported == wanted || reported.ends_with(&format!("::{wanted}"))
}

fn named(f: &Frame, wanted: &str) -> bool {
    f.function.as_deref().is_some_and(|n| same(n, wanted))
}

fn names(s: &Site) -> Vec<&str> {
    s.stack.iter().map(|f| f.function.as_deref().unwrap_or("?")).collect()
}

/// The site's first frame is `function`'s: the allocator's and the language's allocation
/// plumbing are folded out of the reported site.
fn top_is(s: &Site, function: &str) -> bool {
    s.stack.first().is_some_and(|f| named(f, function))
}

/// The growth profile's fixture (`grower`): sites whose innermost frame (after the allocator and memset folded off) is `function`.
#[must_use]
pub fn sites_of<'a>(report: &'a Report, function: &str) -> Vec<&'a Site> {
    report.sites.iter().filter(|s| frame0(s) == Some(function)).collect()
}

/// Their resident bytes.
#[must_use]
pub fn resident(sites: &[&Site]) -> u64 {
    sites
        .iter()
        .map(|s| s.resident_bytes.expect("a growth profile's site has resident_bytes"))
        .sum()
}

/// `(frame 0, bytes, verdict)` of every site, for failure messages.
#[must_use]
pub fn growth_overview(report: &Report) -> Vec<(String, u64, Verdict)> {
    report
        .sites
        .iter()
        .map(|s| {
            // A frame without a name says where it is.
            let name = frame0(s).map_or_else(
                || {
                    s.stack.first().map_or_else(
                        || "[no stack]".to_owned(),
                        |f| format!("{} in {:?}", f.address, f.module),
                    )
                },
                str::to_owned,
            );
            (name, s.outstanding_bytes, s.trend.verdict)
        })
        .collect()
}

/// What every growth report of `grower` shows: the leak judged a leak, within 25% of what
/// was leaked while profiled (`leaked`), and only it; the cache and the scratch buffer not
/// growing; each site's bytes in `resident_bytes`; nothing dropped.
#[track_caller]
pub fn assert_grower(report: &Report, leaked: u64) {
    assert_eq!(report.mode, Mode::Growth);
    let leaks = sites_of(report, "leak_fn");
    let bytes = resident(&leaks);
    let off = relative_error(bytes, leaked);
    assert!(
        off <= 0.25,
        "leak_fn: {bytes} bytes resident, {leaked} leaked: {:#?}",
        growth_overview(report)
    );
    assert!(
        leaks.iter().any(|s| s.trend.verdict == Verdict::Leak),
        "leak_fn judged a leak: {:#?}",
        growth_overview(report)
    );
    assert_only_leak_fn_leaks(report);
    let top = report.sites_by_verdict();
    assert_eq!(frame0(top[0]), Some("leak_fn"), "{:#?}", growth_overview(report));
    for s in sites_of(report, "cache_put").into_iter().chain(sites_of(report, "scratch")) {
        assert!(
            !matches!(s.trend.verdict, Verdict::Leak | Verdict::Growing),
            "{:?} is not growing: {:#?}",
            frame0(s),
            growth_overview(report)
        );
    }
    // The cache: 256 blocks of 8 KiB (and their malloc headers), whatever its sites.
    let cache = resident(&sites_of(report, "cache_put"));
    assert!(
        (1_800_000..=2_400_000).contains(&cache),
        "cache_put: {cache}: {:#?}",
        growth_overview(report)
    );
    for s in &report.sites {
        assert_eq!(s.resident_bytes, Some(s.outstanding_bytes));
    }
    // The compatible object (kernels before 5.17) has no stack for a fault inside a system
    // call (the C library's start-up reads a file into fresh memory), and says so.
    let compat = report.kernel.as_ref().is_some_and(|k| k.bpf_object == "compat");
    let dropped: u64 = report
        .drops
        .iter()
        .filter(|(reason, _)| !(compat && *reason == "fault_in_kernel"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(dropped, 0, "{:?}", report.drops);
    assert!(report.growth.caveats.iter().any(|c| c.starts_with("a growth profile:")));
}

/// Every site judged a leak is on a path through `leak_fn`: its own pages, or (on jemalloc)
/// the allocator's metadata for the slabs it leaks.
#[track_caller]
pub fn assert_only_leak_fn_leaks(report: &Report) {
    let through = |s: &Site| s.stack.iter().any(|f| f.function.as_deref() == Some("leak_fn"));
    assert!(
        report.sites.iter().all(|s| s.trend.verdict != Verdict::Leak || through(s)),
        "only leak_fn leaks: {:#?}",
        growth_overview(report)
    );
}

/// `|estimate - truth| / truth`.
#[must_use]
#[expect(clippy::cast_precision_loss, reason = "a ratio")]
pub fn relative_error(estimate: u64, truth: u64) -> f64 {
    estimate.abs_diff(truth) as f64 / truth.max(1) as f64
}

/// The bytes a finished `grower` says it leaked.
#[must_use]
pub fn grower_leaked(stdout: &[String]) -> u64 {
    stdout
        .iter()
        .find_map(|l| l.strip_prefix("leaked ")?.parse().ok())
        .unwrap_or_else(|| panic!("no 'leaked' line: {stdout:#?}"))
}

/// The bytes `grower` (run with `GROWER_TELL=1`) said it had leaked last: up to its last tick
/// before it was killed.
#[must_use]
pub fn grower_last_leaked(stdout: &[String]) -> u64 {
    stdout
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("leaked ")?.parse().ok())
        .unwrap_or_else(|| panic!("no 'leaked' line: {stdout:#?}"))
}

/// What `grower` leaks in one tick at `rate_kib` KiB/s: whole 4 KiB blocks, one more for the
/// carry.
#[must_use]
pub fn grower_tick_bytes(rate_kib: u64) -> u64 {
    rate_kib * 1024 / 50 + 4096
}

/// What [`assert_grower_oom_killed`] asserts but the verdicts: the end, the triage line,
/// the limit, and `leak_fn` holding most, its resident bytes within 10% of `last_leaked` (a
/// growth profile's). For an emulated CPU, where the fixture's ticks slow down unevenly, the
/// seconds before the kill may not give a verdict. The final report holds the last sample's
/// pages and those faulted since at new addresses (pages cannot be read once the process is
/// gone): the last sample alone, seconds old in QEMU, once held less than half the leak.
#[track_caller]
pub fn assert_oom_killed_holding(report: &Report, limit: u64, last_leaked: u64) {
    assert_eq!(report.end_reason, "oom_kill", "{}", report.growth.summary);
    let summary = &report.growth.summary;
    assert!(summary.starts_with("OOM-killed after +"), "{summary}");
    assert!(summary.ends_with(" limit reached"), "{summary}");
    assert_eq!(report.growth.limit.as_ref().map(|l| l.bytes), Some(limit), "{summary}");
    let bytes = resident(&sites_of(report, "leak_fn"));
    let largest = report.sites.iter().max_by_key(|s| s.outstanding_bytes).map(frame0);
    assert_eq!(largest, Some(Some("leak_fn")), "{:#?}", growth_overview(report));
    eprintln!("leak_fn: {bytes} bytes resident, {last_leaked} leaked at the last tick");
    assert!(
        bytes * 10 >= last_leaked * 9 && bytes * 100 <= last_leaked * 105,
        "leak_fn: {bytes} resident, {last_leaked} leaked: {:#?}",
        growth_overview(report)
    );
}

/// The report of a `grower` (leaking `rate_kib` KiB/s) that the OOM killer killed at its
/// cgroup's `limit`, having said at its last tick that it had leaked `last_leaked`: its end
/// told as it was, the triage line saying so and naming the limit, the leak on top. Exact
/// bytes in a trace (the blocks recorded up to the kill: what it said, and at most the tick
/// it was killed in); within 10% in a growth profile (its pages at the last sample, 250 ms
/// old at most, and those faulted since at new addresses).
#[track_caller]
pub fn assert_grower_oom_killed(report: &Report, limit: u64, last_leaked: u64, rate_kib: u64) {
    assert_eq!(report.end_reason, "oom_kill", "{}", report.growth.summary);
    let summary = &report.growth.summary;
    assert!(summary.starts_with("OOM-killed after +"), "{summary}");
    assert!(summary.ends_with(" limit reached"), "{summary}");
    assert_eq!(report.growth.limit.as_ref().map(|l| l.bytes), Some(limit), "{summary}");
    let top = report.sites_by_verdict()[0];
    assert_eq!(frame0(top), Some("leak_fn"), "{:#?}", growth_overview(report));
    assert_eq!(top.trend.verdict, Verdict::Leak, "{:#?}", growth_overview(report));
    match report.mode {
        Mode::Exact => {
            let (bytes, _) = crate::under(report, "leak_fn");
            assert!(
                (last_leaked..=last_leaked + grower_tick_bytes(rate_kib)).contains(&bytes),
                "leak_fn: {bytes} bytes recorded, {last_leaked} said leaked at the last tick"
            );
        }
        Mode::Growth => {
            let bytes = resident(&sites_of(report, "leak_fn"));
            let off = relative_error(bytes, last_leaked);
            eprintln!("leak_fn: {bytes} bytes resident, {last_leaked} leaked at the last tick");
            assert!(
                off <= 0.10,
                "leak_fn: {bytes} bytes resident, {last_leaked} leaked: {:#?}",
                growth_overview(report)
            );
        }
    }
}

/// The limit of the cgroup `grower` is OOM-killed in: reached in about 15 s at
/// [`OOM_RATE_KIB`], long after its cache levelled off (5 s), long enough for a verdict.
pub const OOM_LIMIT: u64 = 96 << 20;
/// What `grower` leaks until it is OOM-killed, KiB/s.
pub const OOM_RATE_KIB: u64 = 6 << 10;

/// `grower SECONDS RATE_KIB` in `cgroup`, alone (leak and the test are charged elsewhere),
/// saying what it leaked at every tick.
#[must_use]
pub fn grower_in(cgroup: &crate::PodCgroup, seconds: u64, rate_kib: u64) -> Fixture {
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", &grower_script(cgroup, seconds, rate_kib)]);
    Fixture::start_command(cmd)
}

/// The shell command that runs `grower` in `cgroup` (the shell moves itself there and execs
/// it: the same pid).
#[must_use]
pub fn grower_script(cgroup: &crate::PodCgroup, seconds: u64, rate_kib: u64) -> String {
    format!(
        "{} && GROWER_TELL=1 exec {} {seconds} {rate_kib}",
        cgroup.join_command(),
        crate::fixture("grower").display()
    )
}

/// `leak run --mode MODE` of `grower` in a cgroup limited to [`OOM_LIMIT`], until the OOM
/// killer kills it: the command's status, the cgroup's count, the report and the line said.
/// `env` for `leak` (`LEAK_OOM_SOURCE=counters`: without the kernel's event); the fixture
/// leaks `rate_kib` KiB/s. `verdicts`: the leak is judged a leak and on top (see
/// [`assert_grower_oom_killed`]).
pub fn run_until_oom_killed(mode: &str, rate_kib: u64, env: &[(&str, &str)], verdicts: bool) {
    crate::require_root();
    let cgroup = crate::oom_cgroup(OOM_LIMIT);
    let script = grower_script(&cgroup, 120, rate_kib);
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let args = ["run", "--mode", mode, "-q", "--sample-interval", "250ms"];
    let args = [&args[..], &["--json", json.to_str().unwrap(), "--"]].concat();
    let args: Vec<&str> = args.into_iter().chain(["sh", "-c", &script]).collect();
    let done = Leak::spawn_env(&args, env).wait();
    // The command's own status: killed by SIGKILL.
    assert_eq!(done.status.code(), Some(137), "{:#?}", done.stderr);
    assert_eq!(cgroup.oom_kills(), 1);
    let report = read_report(&json);
    eprintln!("{mode}: {}", report.growth.summary);
    let leaked = grower_last_leaked(&done.stdout);
    if verdicts {
        assert_grower_oom_killed(&report, OOM_LIMIT, leaked, rate_kib);
    } else {
        assert_oom_killed_holding(&report, OOM_LIMIT, leaked);
    }
    let said = format!("leak: pid {} (grower): OOM-killed after +", report.target.pid);
    assert!(done.stderr.iter().any(|l| l.starts_with(&said)), "{:#?}", done.stderr);
}
