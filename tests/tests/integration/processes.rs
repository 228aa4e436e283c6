//! `leak run` across exec and fork: the program a process execs is traced in its place (its
//! old image forgotten), and with `--follow-forks` every child gets its own exact report. A pid
//! reused by a later child is another process with another report.
use std::{fs, path::PathBuf};

use leak_tests::{
    assert_absent, assert_no_drops, assert_site, fixture, read_report, require_root,
    run_leak_with_stdin, run_with_report, summary, under,
};

/// The per-process reports `<stem>-<pid>*.json` next to `main`.
fn child_reports(main: &std::path::Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(main.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != main && p.extension().is_some_and(|e| e == "json"))
        .collect();
    out.sort();
    out
}

#[test]
fn run_follows_exec_into_another_allocator() {
    let (execer, runner) = (fixture("execer"), fixture("runner"));
    let (done, _dir, json) =
        run_with_report(&[], &[execer.to_str().unwrap(), runner.to_str().unwrap()]);
    assert_eq!(done.status.code(), Some(3), "the exec'd program's exit code; {:#?}", done.stderr);
    let report = read_report(&json);
    assert_eq!(report.target.comm, "runner");
    // The new image preloads jemalloc: its probes were planned again at its entry point.
    assert!(report.allocator.path.contains("libjemalloc"), "{}", report.allocator.path);
    assert_site(&report, "ctor_leak", (1024, 2));
    assert_site(&report, "leak_at_start", (3000, 3));
    // The exec replaced the old image's memory: its blocks are not leaks of anyone.
    assert_absent(&report, "leak_before_exec");
    assert_no_drops(&report);
}

#[test]
fn follow_forks_reports_each_process_exactly() {
    let forker = fixture("forker");
    let (done, _dir, json) = run_with_report(&["--follow-forks"], &[forker.to_str().unwrap()]);
    assert_eq!(done.status.code(), Some(4), "stderr: {:#?}", done.stderr);

    let parent = read_report(&json);
    assert_eq!(under(&parent, "before_fork"), (1400, 2), "{:#?}", summary(&parent));
    assert_eq!(under(&parent, "after_fork"), (900, 1), "{:#?}", summary(&parent));
    assert_absent(&parent, "child_leak");
    assert_no_drops(&parent);

    let children = child_reports(&json);
    assert_eq!(children.len(), 1, "{children:?}");
    let child = read_report(&children[0]);
    assert_ne!(child.target.pid, parent.target.pid);
    assert!(children[0].ends_with(format!("report-{}.json", child.target.pid)), "{children:?}");
    // A copy of the parent's two blocks, one freed by the child.
    assert_eq!(under(&child, "before_fork"), (700, 1), "{:#?}", summary(&child));
    assert_eq!(under(&child, "child_leak"), (1500, 5), "{:#?}", summary(&child));
    assert_absent(&child, "after_fork");
    assert_no_drops(&child);
}

#[test]
fn without_follow_forks_children_are_not_traced() {
    let forker = fixture("forker");
    let (done, _dir, json) = run_with_report(&[], &[forker.to_str().unwrap()]);
    assert_eq!(done.status.code(), Some(4), "stderr: {:#?}", done.stderr);
    let parent = read_report(&json);
    assert_eq!(under(&parent, "before_fork"), (1400, 2), "{:#?}", summary(&parent));
    assert_eq!(under(&parent, "after_fork"), (900, 1));
    assert_absent(&parent, "child_leak");
    assert!(child_reports(&json).is_empty());
}

#[test]
fn a_reused_pid_is_another_process() {
    let bin = fixture("pidreuse");
    let (done, dir, _json) = run_with_report(&["--follow-forks"], &[bin.to_str().unwrap()]);
    assert_eq!(done.status.code(), Some(0), "stderr: {:#?}", done.stderr);
    let pid: u32 = done
        .stdout
        .iter()
        .find_map(|l| l.strip_prefix("reused "))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid reuse: {:#?}", done.stdout));
    let first = read_report(&dir.path().join(format!("report-{pid}.json")));
    let second = read_report(&dir.path().join(format!("report-{pid}-2.json")));
    assert_eq!((first.target.pid, second.target.pid), (pid, pid));
    assert_eq!(under(&first, "a_leak"), (333, 3), "{:#?}", summary(&first));
    assert_absent(&first, "b_leak");
    assert_eq!(under(&second, "b_leak"), (888, 4), "{:#?}", summary(&second));
    assert_absent(&second, "a_leak");
}

#[test]
fn threads_under_follow_forks() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let bin = fixture("threads");
    // Threads are clones too: each stops once at its creation and is resumed.
    let done = run_leak_with_stdin(
        &["run", "--follow-forks", "--json", json.to_str().unwrap(), "--", bin.to_str().unwrap()],
        "go\nexit\n",
    );
    assert_eq!(done.status.code(), Some(0), "stderr: {:#?}", done.stderr);
    let report = read_report(&json);
    assert_site(&report, "thread_leak", (414_400, 400));
    assert_absent(&report, "thread_churn");
    assert_absent(&report, "handoff_alloc");
    assert!(child_reports(&json).is_empty(), "threads are not processes");
}
