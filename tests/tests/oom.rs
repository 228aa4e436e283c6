//! OOM kills, real ones: `grower` leaks in a memory cgroup of its own with a small limit until
//! the kernel's OOM killer kills it; `leak run` and `leak attach`, in either mode, end with
//! `end_reason: "oom_kill"` and the post-mortem report. A process killed otherwise, or that
//! exits, gets no OOM report.
use leak_tests::{
    Leak, oom_cgroup, read_report, require_root, run_with_report,
    truth::{
        OOM_LIMIT as LIMIT, OOM_RATE_KIB as RATE_KIB, assert_grower_oom_killed, grower_in,
        grower_last_leaked, grower_script, run_until_oom_killed,
    },
};

#[test]
fn run_ends_an_exact_trace_with_the_oom_kill() {
    run_until_oom_killed("exact");
}

#[test]
fn run_ends_a_growth_profile_with_the_oom_kill() {
    run_until_oom_killed("growth");
}

#[test]
fn attach_ends_with_the_oom_kill_of_its_target() {
    require_root();
    let cgroup = oom_cgroup(LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    // Slow enough for the attach to be in place well before the kill.
    let rate = RATE_KIB / 4;
    let mut target = grower_in(&cgroup, 120, rate);
    let leak = Leak::attach(target.pid(), &["--mode", "growth", "--json", json.to_str().unwrap()]);
    let status = target.wait();
    let done = leak.wait();
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
    assert_eq!(cgroup.oom_kills(), 1);
    let report = read_report(&json);
    assert_grower_oom_killed(&report, LIMIT, grower_last_leaked(&target.stdout.drain()), rate);
}

#[test]
fn a_process_killed_otherwise_gets_no_oom_report() {
    // Killed by SIGKILL, not by the OOM killer: under `leak run`...
    let (done, _dir, json) = run_with_report(&["-q"], &["sh", "-c", "kill -9 $$"]);
    assert_eq!(done.status.code(), Some(137), "{:#?}", done.stderr);
    assert_eq!(read_report(&json).end_reason, "target_exited");
    // ... and attached to: killed while its memory is limited (the OOM killer is near, and
    // another cgroup's kill must not be taken for it).
    let cgroup = oom_cgroup(LIMIT);
    let other = oom_cgroup(8 << 20);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let target = grower_in(&cgroup, 120, 64);
    let leak = Leak::attach(target.pid(), &["--json", json.to_str().unwrap()]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let killed = std::process::Command::new("sh")
        .args(["-c", &grower_script(&other, 60, 4096)])
        .output()
        .unwrap();
    assert_eq!(other.oom_kills(), 1, "{killed:?}");
    drop(target);
    let done = leak.wait();
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
    assert_eq!(read_report(&json).end_reason, "target_exited");
}
