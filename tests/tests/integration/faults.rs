//! Faults on a busy node (#15): what users are promised when things go wrong around leak.
//! Each test asserts the behaviour: a full disk fails in one line and keeps the previous
//! report, a closed stdout costs nothing but the text, leak killed outright leaves the target
//! unharmed and no probe behind, two leaks on one process both count exactly, a target gone
//! during attach ends in one line.
//!
//! The tests run one at a time: one checks that none of leak's programs is left in the kernel
//! (`cargo xtask test` runs each area of the integration tests on its own, so no other
//! area's trace is loaded meanwhile).
use std::{
    path::Path,
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use leak_tests::{Fixture, Leak, read_report, require_root, truth::assert_leaker_truth};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A tmpfs of `size` mounted at a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(ok.success(), "mount a tmpfs");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills what is left of it.
    fn fill(&self) {
        use std::io::Write as _;
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        let block = vec![0xa5u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// The output directory fills up while tracing: the final write fails with one line that
/// names the file and the cause, the report written before is intact, no temporary file is
/// left behind.
#[test]
fn a_full_disk_fails_in_one_line_and_keeps_the_previous_report() {
    require_root();
    let _serial = serial();
    let disk = SmallDisk::new("512k");
    let json = disk.path().join("report.json");
    std::fs::write(&json, "{\"previous\": true}\n").unwrap();
    let mut target = Fixture::start("leaker");
    let leak = Leak::attach(target.pid(), &["--json", json.to_str().unwrap()]);
    disk.fill();
    target.go_and_wait_done();
    let done = leak.interrupt();
    assert_ne!(done.status.code(), Some(0), "{:#?}", done.stderr);
    let errors: Vec<&String> = done.stderr.iter().filter(|l| l.contains("No space left")).collect();
    assert_eq!(errors.len(), 1, "{:#?}", done.stderr);
    assert!(errors[0].starts_with("leak: ") && errors[0].contains("report.json"), "{errors:?}");
    assert!(!done.stderr.iter().any(|l| l.contains("panicked")), "{:#?}", done.stderr);
    assert_eq!(std::fs::read_to_string(&json).unwrap(), "{\"previous\": true}\n");
    let names: Vec<String> = std::fs::read_dir(disk.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "only the report and the filler: {names:?}");
}

/// `leak attach ... | head -1`: the reader goes away; leak goes on (its text is lost, nothing
/// else), writes the JSON report and ends successfully.
#[test]
fn a_closed_stdout_costs_only_the_text() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut target = Fixture::start("leaker");
    let mut child = Command::new(leak_tests::leak_bin())
        .args(["attach", "--pid", &target.pid().to_string(), "--interval", "200ms"])
        .args(["--json", json.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end at once: every write to stdout now fails with EPIPE.
    drop(child.stdout.take());
    let mut stderr = leak_tests::Lines::spawn(child.stderr.take().unwrap());
    stderr.wait_for("the attached line", |l| l.starts_with("attached to PID"));
    target.go_and_wait_done();
    // Interval reports are printed (and lost) meanwhile.
    std::thread::sleep(Duration::from_millis(600));
    // SAFETY: plain syscall.
    unsafe { libc::kill(child.id().cast_signed(), libc::SIGINT) };
    let status = child.wait().unwrap();
    let lines = stderr.drain();
    assert_eq!(status.code(), Some(0), "{lines:#?}");
    assert!(
        !lines.iter().any(|l| l.contains("panicked") || l.contains("internal error")),
        "{lines:#?}"
    );
    assert_leaker_truth(&read_report(&json));
}

/// SIGKILL: leak cannot clean up, the kernel does. The target runs on and finishes, and once
/// leak's descriptors are gone none of its programs is left loaded.
#[test]
fn leak_killed_outright_leaves_the_target_unharmed_and_nothing_loaded() {
    require_root();
    let _serial = serial();
    let mut target = Fixture::start("leaker");
    let leak = Leak::attach(target.pid(), &[]);
    let killed = leak.kill();
    assert_eq!(killed.status.code(), None, "killed by a signal");
    // Its allocations run through the (former) probe sites; it exits by itself, cleanly.
    target.go_and_wait_done();
    target.send("exit");
    assert!(target.wait().success());
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let left = loaded_programs();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still loaded a minute after SIGKILL: {left:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The names of leak's programs that are loaded now.
fn loaded_programs() -> Vec<String> {
    let out = Command::new("bpftool").args(["-j", "prog", "show"]).output().unwrap();
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    progs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .filter(|n| leak_common::Program::ALL.iter().any(|ours| ours.name() == *n))
        .map(str::to_owned)
        .collect()
}

/// Two leaks on one process (two people debugging the same service): each loads its own
/// programs and maps, each counts every allocation exactly.
#[test]
fn two_leaks_on_one_process_both_count_exactly() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    let mut target = Fixture::start("leaker");
    let first = Leak::attach(target.pid(), &["--json", a.to_str().unwrap()]);
    let second = Leak::attach(target.pid(), &["--json", b.to_str().unwrap()]);
    target.go_and_wait_done();
    for (leak, json) in [(first, &a), (second, &b)] {
        let done = leak.interrupt();
        assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
        assert_leaker_truth(&read_report(json));
    }
}

/// The target exits while leak loads and attaches: at any moment of the race, a report for
/// what was seen (0), or one line saying the process is gone (2 before attaching, 1 while the
/// probes were being attached); never a panic.
#[test]
fn a_target_that_exits_during_attach_ends_in_one_line() {
    require_root();
    let _serial = serial();
    for delay_ms in [0, 20, 60, 150, 400] {
        let mut victim =
            Command::new("sleep").arg(format!("{}", f64::from(delay_ms) / 1000.0)).spawn().unwrap();
        let pid = victim.id().to_string();
        let done = leak_tests::run_leak(&["attach", "--pid", &pid, "--duration", "2s"]);
        let _ = victim.wait();
        let code = done.status.code();
        assert!(matches!(code, Some(0..=2)), "after {delay_ms} ms: {code:?} {:#?}", done.stderr);
        assert!(
            done.stderr.iter().all(|l| !l.contains("panicked") && !l.contains("internal error")),
            "after {delay_ms} ms: {:#?}",
            done.stderr
        );
        if code != Some(0) {
            assert_eq!(
                done.stderr.iter().filter(|l| l.starts_with("leak: ")).count(),
                1,
                "{:#?}",
                done.stderr
            );
        }
    }
}
