//! The kernel suite: what must hold on every kernel of the matrix. `cargo xtask test` runs it
//! here, on the host's kernel, with the other integration tests, then in a QEMU guest on each
//! of Debian's kernels (`cargo xtask vm`: 5.10, 6.1, 6.12 and sid's newest).
//!
//! Each test runs with the BPF object this kernel gets; on a kernel that gets the full one,
//! again with the compatible one, so that both objects are proven on every new kernel and the
//! compatible one on the old kernels that need it.
use leak_tests::{
    assert_absent, assert_no_drops, assert_site, require_root, site, summary, trace_fixture_env,
    truth::{
        assert_grower, assert_leaker_truth, assert_mapper_truth, assert_whole_stacks,
        grower_leaked, run_to_end, run_until_oom_killed, trace_until_exit,
    },
};
use leak_user::trace::loader::{BPF_OBJECT_ENV, BpfObject};

/// Whether this kernel is `major.minor` or later.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = &leak_user::trace::loader::kernel().0.release;
    let version: Vec<u32> =
        release.split(['.', '-', '+']).take(2).map_while(|n| n.parse().ok()).collect();
    version >= vec![major, minor]
}

/// The environments to run `leak` in: this kernel's object, and the compatible one too where
/// that is not it.
fn objects() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    require_root();
    let mut all = vec![("this kernel's object", vec![])];
    if leak_user::trace::loader::kernel().1 == BpfObject::Full {
        all.push(("the compatible object", vec![(BPF_OBJECT_ENV, "compat")]));
    }
    all
}

#[test]
fn check_says_yes_and_loads_every_program_in_each_unwind_mode() {
    for (object, env) in objects() {
        let done = leak_tests::Leak::spawn_env(&["check", "-v"], &env).wait();
        let out = done.stdout.join("\n");
        assert_eq!(done.status.code(), Some(0), "{object}: {out}\n{:#?}", done.stderr);
        assert!(out.contains("OK: this node can trace"), "{object}: {out}");
        for unwind in ["fp", "dwarf", "auto"] {
            let line = done
                .stdout
                .iter()
                .find(|l| l.starts_with(&format!("programs, --unwind {unwind} ")))
                .unwrap_or_else(|| panic!("{object}: no line for --unwind {unwind}: {out}"));
            // "N of N load (T s)"
            let counts: Vec<&str> = line.split_whitespace().skip(3).take(3).collect();
            assert_eq!(counts.len(), 3, "{line}");
            assert_eq!(counts[0], counts[2], "{object}: {line}");
            assert!(counts[0].parse::<u32>().is_ok_and(|n| n >= 16), "{line}");
        }
        // The figures of every program's deepest chain, within the classic limit.
        let chains: Vec<&String> =
            done.stdout.iter().filter(|l| l.contains(" of 512 bytes")).collect();
        assert!(chains.len() >= 16, "{object}: {out}");
    }
}

#[test]
fn every_hooked_function_is_counted_exactly() {
    for (object, env) in objects() {
        let report = trace_fixture_env("leaker", &[], &[], &env);
        eprintln!("{object}: {:#?}", summary(&report));
        assert_leaker_truth(&report);
    }
}

#[test]
fn mappings_are_counted_exactly() {
    for (object, env) in objects() {
        let report = trace_fixture_env("mapper", &[], &[], &env);
        eprintln!("{object}: {:#?}", summary(&report));
        assert_mapper_truth(&report);
    }
}

#[test]
fn stacks_through_code_without_frame_pointers_reach_main() {
    for (object, env) in objects() {
        let report = trace_until_exit("nofp", &[], &[], &env);
        eprintln!("{object}: {:#?}", summary(&report));
        assert_eq!(report.totals.outstanding_bytes, 3100, "{object}");
        assert_whole_stacks(&report, "main");
    }
}

#[test]
fn run_traces_from_the_first_instruction() {
    for (object, env) in objects() {
        let (done, report) = run_to_end("runner", &[], &[], &env);
        assert_eq!(done.status.code(), Some(3), "{object}: {:#?}", done.stderr);
        assert_eq!(report.end_reason, "target_exited");
        // Allocated by a constructor, before main: the probes were already there.
        assert_site(&report, "ctor_leak", (1024, 2));
        assert_site(&report, "leak_at_start", (3000, 3));
        assert_absent(&report, "no_leak");
    }
}

/// The full object attaches each program's probes in one file as one `uprobe_multi` link
/// where the kernel makes such links with a reliable pid filter (6.10+), and a perf event per
/// probe elsewhere (older kernels, the compatible object, `LEAK_UPROBE_MULTI=0`); the counts
/// are exact either way, from the first instruction.
#[test]
fn probes_attach_as_uprobe_multi_links_where_the_kernel_has_them() {
    let new_kernel = kernel_at_least(6, 10);
    for (object, env) in objects() {
        for multi in [true, false] {
            let mut env = env.clone();
            if !multi {
                env.push((leak_user::trace::loader::multi::MULTI_ENV, "0"));
            }
            let (done, report) = run_to_end("runner", &[], &["-vv"], &env);
            assert_eq!(done.status.code(), Some(3), "{object}: {:#?}", done.stderr);
            let links = done.stderr.iter().filter(|l| l.ends_with(" as one link")).count();
            let full = report.kernel.as_ref().is_some_and(|k| k.bpf_object == "full");
            let probes = report.kernel.as_ref().map(|k| k.probes.as_str());
            if multi && new_kernel && full {
                assert!(links >= 5, "{object}: {links} links: {:#?}", done.stderr);
                assert_eq!(probes, Some("uprobe_multi"), "{object}");
            } else {
                assert_eq!(links, 0, "{object}, multi {multi}: {:#?}", done.stderr);
                assert_eq!(probes, Some("perf_event"), "{object}");
            }
            assert_site(&report, "ctor_leak", (1024, 2));
            assert_site(&report, "leak_at_start", (3000, 3));
            assert_absent(&report, "no_leak");
            assert_no_drops(&report);
        }
    }
}

/// A growth profile (page faults, `--mode growth`) names the busy fixture's leak, within 25%
/// of what it leaked, and nothing else (see `tests/integration/growth_profile.rs`).
#[test]
fn a_growth_profile_names_the_leak_of_a_busy_process() {
    for (object, env) in objects() {
        let started = std::time::Instant::now();
        let (done, report) = run_to_end("grower", &["10", "64"], &["--mode", "growth"], &env);
        assert_eq!(done.status.code(), Some(0), "{object}: {:#?}", done.stderr);
        eprintln!(
            "{object}: {:.1?}: {:#?}",
            started.elapsed(),
            leak_tests::truth::growth_overview(&report)
        );
        assert_grower(&report, grower_leaked(&done.stdout));
    }
}

/// The OOM killer's victim told by its pid (the `oom:mark_victim` event's format changed in
/// 6.8) in a cgroup v2 memory limit; a growth profile, the cheaper mode on an emulated CPU,
/// of a faster leak (the emulated CPU slows the fixture's ticks: at the host's 6 MiB/s the
/// kill took most of a minute on 7.2). The verdicts are `tests/integration/oom.rs`'s: here the ticks slow
/// down unevenly, and the cache may still be filling at the kill.
#[test]
fn an_oom_kill_ends_the_report_with_its_cause() {
    run_until_oom_killed("growth", 16 << 10, &[], false);
}

#[test]
fn sampling_finds_each_site_near_its_truth() {
    // (function, bytes, allocations) of fixture `sampled` at scale 1.
    let truth = [
        ("leak_small", 32768 * 64, 32768),
        ("leak_medium", 2048 * 4000, 2048),
        ("leak_large", 64 * 128 * 1024, 64),
    ];
    for (object, env) in objects() {
        let (done, report) = run_to_end("sampled", &["1"], &["--sample", "16K"], &env);
        assert_eq!(done.status.code(), Some(0), "{object}: {:#?}", done.stderr);
        assert_no_drops(&report);
        let sampling = report.sampling.as_ref().expect("the report says it was sampled");
        assert!(sampling.samples > 300, "{object}: {sampling:?}");
        // From 6.13 the full object's sessions skip the return of every call sampling leaves
        // out (`--sample 16K`: about one malloc in 200 here); elsewhere every call returns
        // through a probe, as the report says.
        let full = report.kernel.as_ref().is_some_and(|k| k.bpf_object == "full");
        let probes = report.kernel.as_ref().map(|k| k.probes.as_str());
        let hits = |name: &str| report.probe_hits.get(name).copied().unwrap_or(0);
        let (entries, returns) = (hits("malloc_enter"), hits("malloc_exit"));
        if full && kernel_at_least(6, 13) {
            assert_eq!(probes, Some("uprobe_session"), "{object}");
            assert!(returns * 20 < entries, "{object}: {returns} returns of {entries} calls");
        } else {
            let multi = if full && kernel_at_least(6, 10) { "uprobe_multi" } else { "perf_event" };
            assert_eq!(probes, Some(multi), "{object}");
            assert!(returns * 20 >= entries * 19, "{object}: {returns} returns of {entries} calls");
        }
        for (function, bytes, allocs) in truth {
            let s = site(&report, function);
            // About 128 samples for the smallest site: a relative error near 9%; 35% is more
            // than three of those.
            #[expect(clippy::cast_precision_loss, reason = "ratios")]
            let err = |est: u64, truth: u64| (est as f64 / truth as f64 - 1.0).abs();
            assert!(
                err(s.outstanding_bytes, bytes) < 0.35 && err(s.outstanding_allocs, allocs) < 0.35,
                "{object}: {function}: estimated {} B in {}, truth {bytes} B in {allocs}",
                s.outstanding_bytes,
                s.outstanding_allocs,
            );
        }
    }
}

/// The kernel's features as `leak` sees them are in its report, with what the compatible
/// object does differently when it runs.
#[test]
fn the_report_names_the_kernel_and_its_object() {
    for (object, env) in objects() {
        let (done, report) = run_to_end("runner", &[], &[], &env);
        assert_eq!(done.status.code(), Some(3), "{object}: {:#?}", done.stderr);
        let k = report.kernel.as_ref().expect("kernel in the report");
        assert_eq!(
            k.release,
            std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap().trim()
        );
        let compat = env.iter().any(|(k, v)| *k == BPF_OBJECT_ENV && *v == "compat")
            || leak_user::trace::loader::kernel().1 == BpfObject::Compat;
        assert_eq!(k.bpf_object, if compat { "compat" } else { "full" }, "{object}");
        assert_eq!(k.degraded.is_empty(), !compat, "{object}: {k:?}");
    }
}

/// One build of each linker (and a separate debug file) from the build matrix
/// (`leak_tests::matrix::KERNEL_SUBSET`): exact bytes, whole stacks, `file:line`.
#[test]
fn binaries_from_every_linker() {
    for (object, env) in objects() {
        for name in leak_tests::matrix::KERNEL_SUBSET {
            eprintln!("{object}: {name}");
            leak_tests::truth::assert_matrix_case(name, &env);
        }
    }
}
