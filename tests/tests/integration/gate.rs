//! `--fail-on-leak` as CI meets it: a short leaking test fails, so does the same test run
//! through a shell, a run too short to judge fails unless allowed, `LeakSanitizer`'s rule (blocks
//! left at exit) is there on request, and the gate's flag given to the command by mistake is
//! refused before anything runs. Every outcome is said on stderr, where CI logs keep it.
use leak_tests::{fixture, read_report, require_root, run_leak, run_with_report};
use leak_user::config::LEAK_FOUND_EXIT;

const FAILED: Option<i32> = Some(LEAK_FOUND_EXIT as i32);

/// The lines of `lines` that contain `needle`.
fn with<'a>(lines: &'a [String], needle: &str) -> Vec<&'a String> {
    lines.iter().filter(|l| l.contains(needle)).collect()
}

/// A test of two seconds that leaks 1 KiB every 25 ms: the gate fails it by growth, names the
/// site, and the command's own stdout carries only the command's output.
#[test]
fn a_two_second_leaking_test_fails_the_gate() {
    let cacher = fixture("cacher");
    let (done, _dir, json) =
        run_with_report(&["--fail-on-leak"], &[cacher.to_str().unwrap(), "80", "25"]);
    assert_eq!(done.status.code(), FAILED, "stderr: {:#?}", done.stderr);
    let fail = with(&done.stderr, "leak: FAIL (growth rule): pid ");
    assert_eq!(fail.len(), 1, "{:#?}", done.stderr);
    assert!(fail[0].contains("(cacher): leak at leak_fn <- main: +80.0 KiB at "), "{}", fail[0]);
    assert!(
        done.stderr
            .iter()
            .any(|l| l == "leak: --fail-on-leak failed (growth rule): 1 of 1 traced process"),
        "the gate's last word: {:#?}",
        done.stderr
    );
    assert_eq!(done.stdout, ["ready"], "reports stay off the command's stdout");
    let report = read_report(&json);
    assert!(report.growth.leak_sites.len() == 1, "{:#?}", report.growth);
}

/// The same test run through a shell that forks it: the gate traces what the command
/// starts, and fails.
#[test]
fn a_forking_wrapper_fails_the_gate_too() {
    let cacher = fixture("cacher");
    let script = format!("{} 80 25; true", cacher.display());
    let (done, _dir, _json) = run_with_report(&["--fail-on-leak"], &["bash", "-c", &script]);
    assert_eq!(done.status.code(), FAILED, "stderr: {:#?}", done.stderr);
    let fail = with(&done.stderr, "leak: FAIL (growth rule): pid ");
    assert_eq!(fail.len(), 1, "{:#?}", done.stderr);
    assert!(fail[0].contains("(cacher): leak at leak_fn <- main: "), "{}", fail[0]);
    let last = with(&done.stderr, "leak: --fail-on-leak failed (growth rule): 1 of ");
    assert_eq!(last.len(), 1, "{:#?}", done.stderr);
    assert!(!last[0].ends_with(" 1 traced process"), "the shell was judged too: {}", last[0]);
}

/// `leak run -- ./test --fail-on-leak`: the flag would go to the test and the run would pass
/// unchecked; it is refused with the fix.
#[test]
fn the_gates_flag_after_the_command_is_refused() {
    require_root();
    let cacher = fixture("cacher");
    let path = cacher.to_str().unwrap();
    let done = run_leak(&["run", "--", path, "8", "25", "--fail-on-leak"]);
    done.assert_bad_input("--fail-on-leak comes after the command, so it goes to ");
    assert!(done.stderr[0].contains("(leak run --fail-on-leak -- "), "{}", done.stderr[0]);
    // Without `--` too.
    run_leak(&["run", path, "8", "25", "--follow-forks"])
        .assert_bad_input("--follow-forks comes after the command");
}

/// A run of 0.2 s is too short for a verdict: it fails as inconclusive, saying what to do;
/// allowed, it passes with the same words as a warning.
#[test]
fn an_inconclusive_run_fails_unless_allowed() {
    let cacher = fixture("cacher");
    let command = [cacher.to_str().unwrap(), "8", "25", "clean"];
    let (done, _dir, _json) = run_with_report(&["--fail-on-leak"], &command);
    assert_eq!(done.status.code(), FAILED, "stderr: {:#?}", done.stderr);
    let fail = with(&done.stderr, "leak: FAIL (inconclusive): pid ");
    assert_eq!(fail.len(), 1, "{:#?}", done.stderr);
    assert!(
        fail[0].contains("(cacher): growing at cache_put <- main: +32.0 KiB over "),
        "{}",
        fail[0]
    );
    assert!(fail[0].contains("run it longer, or sample faster"), "{}", fail[0]);
    let (done, _dir, _json) =
        run_with_report(&["--fail-on-leak", "--allow-inconclusive"], &command);
    assert_eq!(done.status.code(), Some(0), "stderr: {:#?}", done.stderr);
    assert_eq!(with(&done.stderr, "leak: warning, allowed (inconclusive): pid ").len(), 1);
    assert!(
        done.stderr
            .iter()
            .any(|l| l == "leak: --fail-on-leak passed: 1 traced process, no leak by growth"),
        "{:#?}",
        done.stderr
    );
}

/// `LeakSanitizer`'s rule, on request: what is still allocated at exit fails the run, exactly,
/// with the C library's own stdio buffer left out.
#[test]
fn the_exit_rule_fails_on_blocks_left_at_exit() {
    let cacher = fixture("cacher");
    let (done, _dir, json) =
        run_with_report(&["--fail-on-leak=exit"], &[cacher.to_str().unwrap(), "8", "25", "clean"]);
    assert_eq!(done.status.code(), FAILED, "stderr: {:#?}", done.stderr);
    let fail = with(&done.stderr, "leak: FAIL (exit rule, LeakSanitizer's): pid ");
    assert_eq!(fail.len(), 1, "{:#?}", done.stderr);
    assert!(
        fail[0].ends_with(
            "(cacher): 32.0 KiB in 8 blocks still allocated at exit, at 1 site: cache_put <- main 32.0 KiB"
        ),
        "{}",
        fail[0]
    );
    let report = read_report(&json);
    assert_eq!(report.end_reason, "target_exited");
    // A floor leaves the small sites out: nothing fails.
    let (done, _dir, _json) = run_with_report(
        &["--fail-on-leak=exit", "--min-growth", "64K"],
        &[cacher.to_str().unwrap(), "8", "25", "clean"],
    );
    assert_eq!(done.status.code(), Some(0), "stderr: {:#?}", done.stderr);
    assert!(
        done.stderr
            .iter()
            .any(|l| l == "leak: --fail-on-leak passed: 1 traced process, no block left at exit"),
        "{:#?}",
        done.stderr
    );
}
