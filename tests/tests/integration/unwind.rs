//! Stacks through code built without frame pointers (#7). The tables against a real stack: a
//! fixture built without frame pointers is stopped with ptrace inside five nested functions,
//! and the reference unwinder walks its stack from the registers to `_start`. Then the BPF
//! walk: the same fixture's leaks are reported with whole stacks and exact bytes, as the same
//! source built with frame pointers is, in the main thread and in another.
use leak_tests::{
    Fixture, Leak, Report, assert_site, read_report, require_root, run_leak_with_stdin, site,
    summary,
    truth::{assert_whole_stacks, chain, trace_until_exit},
};
use leak_user::{
    analysis::model::StackEnd,
    trace::symbolize::{ProcessSymbolizer, Symbolizer as _},
    trace::unwind::{ProcessTables, Regs, return_address_mask, unwind},
};

/// Stops `pid` (ptrace interrupt), returns its registers, and detaches.
fn registers(pid: u32) -> Regs {
    let pid = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: plain ptrace calls on our own child; `regs` is a valid out-pointer.
    unsafe {
        assert_eq!(libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0), 0, "seize");
        assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0), 0, "interrupt");
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &raw mut status, libc::__WALL), pid);
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        assert_eq!(libc::ptrace(libc::PTRACE_GETREGS, pid, 0, &raw mut regs), 0, "getregs");
        assert_eq!(libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0), 0, "detach");
        Regs { ip: regs.rip, sp: regs.rsp, bp: regs.rbp, lr: 0 }
    }
}

#[test]
fn tables_walk_a_stack_without_frame_pointers_to_its_start() {
    require_root();
    let mut target = Fixture::start("nofp");
    // It now waits in level5's fgets.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let regs = registers(target.pid());
    let tables = ProcessTables::of(target.pid());
    let mem = std::fs::File::open(format!("/proc/{}/mem", target.pid())).unwrap();
    let read = |addr: u64| {
        let mut b = [0u8; 8];
        std::os::unix::fs::FileExt::read_exact_at(&mem, &mut b, addr).ok()?;
        Some(u64::from_le_bytes(b))
    };
    let (frames, end) = unwind(|a| tables.lookup(a), read, regs, return_address_mask(), 64);
    let names: Vec<String> = ProcessSymbolizer::new(target.pid(), &[])
        .symbolize(&frames)
        .iter()
        .map(|f| f.last().and_then(|f| f.function.as_deref()).unwrap_or("?").to_owned())
        .collect();
    let chain = ["level5", "level4", "level3", "level2", "level1", "main"];
    let at = names.iter().position(|n| n == "level5").unwrap_or_else(|| panic!("{names:?}"));
    assert_eq!(names[at..at + chain.len()], chain, "{names:?}");
    assert_eq!(end, StackEnd::Complete, "{names:?}");
    assert_eq!(names.last().map(String::as_str), Some("_start"), "{names:?}");
    target.go_and_wait_done();
    target.send("exit");
    assert!(target.wait().success());
}

/// Traces `fixture` (with `args`) through its allocations, with `leak args...`.
fn trace(fixture: &str, fixture_args: &[&str], leak_args: &[&str]) -> Report {
    let report = trace_until_exit(fixture, fixture_args, leak_args, &[]);
    // Attached after its start-up: only the leaks of its header.
    assert_eq!(report.totals.outstanding_bytes, 3100, "{:#?}", summary(&report));
    report
}

#[test]
fn code_without_frame_pointers_has_whole_stacks_as_with_them() {
    require_root();
    // The default (auto): unwind tables.
    let without = trace("nofp", &[], &[]);
    assert_whole_stacks(&without, "main");
    // The same source with frame pointers: the same sites, bytes and chains.
    let with = trace("nofp-fp", &[], &[]);
    assert_whole_stacks(&with, "main");
    // Tables only.
    assert_whole_stacks(&trace("nofp", &[], &["--unwind", "dwarf"]), "main");
    // Frame pointers only, where there are none: the same bytes, but the callers are lost.
    let fp = trace("nofp", &[], &["--unwind", "fp"]);
    let s = assert_site(&fp, "level5", (3000, 3));
    assert!(!chain(s).contains(&"level4"), "{:?}", chain(s));
    assert_ne!(s.stack_end, Some(StackEnd::Complete));
}

#[test]
fn thread_stacks_end_at_the_thread_start() {
    require_root();
    let report = trace("nofp", &["thread"], &[]);
    assert_whole_stacks(&report, "thread_main");
    let s = site(&report, "level5");
    assert!(chain(s).contains(&"start_thread"), "{:?}", chain(s));
    assert!(!chain(s).contains(&"main"), "{:?}", chain(s));
}

#[test]
fn run_loads_the_tables_before_main() {
    // (Traced from its start, it also holds stdio's buffers.)
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let done = run_leak_with_stdin(
        &[
            "run",
            "--json",
            json.to_str().unwrap(),
            "--",
            leak_tests::fixture("nofp").to_str().unwrap(),
        ],
        "go\nexit\n",
    );
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
    assert_whole_stacks(&read_report(&json), "main");
}

#[test]
fn a_library_loaded_after_attaching_gets_its_table() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut cmd = std::process::Command::new(leak_tests::fixture("dlopener"));
    cmd.arg(leak_tests::fixture("libplugin.so"));
    let mut target = Fixture::start_command(cmd);
    let leak = Leak::attach(target.pid(), &["--json", json.to_str().unwrap()]);
    target.send("go");
    target.stdout.wait_for("loaded", |l| l.starts_with("loaded "));
    // leak re-reads the maps every second: the new library's table is loaded by then.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let report = target.exit_under(leak, &json);
    let s = assert_site(&report, "plugin_level3", (1554, 2));
    let want = ["plugin_level3", "plugin_level2", "plugin_entry", "call_plugin", "main"];
    assert_eq!(chain(s)[..want.len()], want, "{:?}", chain(s));
    assert_eq!(s.stack_end, Some(StackEnd::Complete), "{:?}", chain(s));
}

/// A library closed with its leaks outstanding, and another mapped at its address: each
/// leak is named after the library that made it (the address cache is dropped where the
/// mapping changed; stacks seen in a report before keep their names), each stack whole.
#[test]
fn a_library_mapped_where_a_closed_one_was_is_named_as_itself() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut cmd = std::process::Command::new(leak_tests::fixture("dlopener"));
    cmd.arg(leak_tests::fixture("libplugin.so")).arg(leak_tests::fixture("libreuse.so"));
    let mut target = Fixture::start_command(cmd);
    let leak = Leak::attach(target.pid(), &["--interval", "1s", "--json", json.to_str().unwrap()]);
    target.send("go");
    let first = target.stdout.wait_for("loaded", |l| l.starts_with("loaded "));
    // leak re-reads the maps every second: the library's table is loaded by then.
    let settle = std::time::Duration::from_millis(2500);
    std::thread::sleep(settle);
    target.send("leak");
    target.wait_line("closed");
    // A report (every second) symbolizes the first library's stacks while it is mapped.
    std::thread::sleep(settle);
    target.send("open");
    let second = target.stdout.wait_for("loaded", |l| l.starts_with("loaded "));
    assert_eq!(first, second, "the second library is not where the first was: nothing tested");
    std::thread::sleep(settle);
    let report = target.exit_under(leak, &json);
    let a = assert_site(&report, "plugin_level3", (1554, 2));
    let b = assert_site(&report, "reuse_level3", (1110, 2));
    for (s, module, top) in
        [(a, "libplugin.so", "plugin_level3"), (b, "libreuse.so", "reuse_level3")]
    {
        assert_eq!(s.stack[0].module.as_deref(), Some(module), "{:?}", chain(s));
        let want = [top, &top.replace('3', "2"), "plugin_entry", "call_plugin", "main"];
        assert_eq!(chain(s)[..want.len()], want, "{:?}", chain(s));
        assert_eq!(s.stack_end, Some(StackEnd::Complete), "{:?}", chain(s));
    }
}

#[test]
fn a_table_that_does_not_fit_is_left_out_with_a_warning() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut target = Fixture::start("nofp");
    // Room for the fixture's own table, not libc's (about 28,000 rows).
    let leak =
        Leak::attach(target.pid(), &["--unwind-rows", "5000", "--json", json.to_str().unwrap()]);
    target.go_and_wait_done();
    let done = leak.interrupt();
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
    assert!(
        done.stderr
            .iter()
            .any(|l| l.contains("libc.so.6: no room for its") && l.contains("raise --unwind-rows")),
        "{:#?}",
        done.stderr
    );
    // The fixture's frames still come from its table: the same bytes, down to main.
    let report = read_report(&json);
    let s = assert_site(&report, "level5", (3000, 3));
    let levels = ["level5", "level4", "level3", "level2", "level1", "main"];
    assert_eq!(chain(s)[..levels.len()], levels, "{:?}", chain(s));
}
