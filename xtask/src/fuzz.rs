//! `cargo xtask fuzz`: runs each property-based fuzz target of `leak-user/tests/fuzz.rs` for a
//! given time, with fresh random seeds every round, and prints how many cases each ran. A
//! failure stops it; proptest has saved the case to `leak-user/tests/fuzz.proptest-regressions`
//! (commit it: it is replayed first by every later run, `cargo test` included).
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::util::{cargo, workspace_root};

/// The targets (test names in `leak-user/tests/fuzz.rs`).
pub const TARGETS: [&str; 6] = [
    "proc_maps",
    "proc_memory_files",
    "cgroup_paths",
    "kubernetes_pod_lists",
    "agent_config_files",
    "elf_and_unwind_tables",
];

/// Cases a round: a round is one run of the test binary, with its own seed.
const CASES_A_ROUND: u64 = 20_000;

/// Runs each target for `minutes`, `jobs` targets at once.
pub fn fuzz(minutes: f64, jobs: usize) -> Result<()> {
    let exe = build()?;
    let budget = Duration::from_secs_f64(minutes * 60.0);
    let queue = Arc::new(Mutex::new(TARGETS.to_vec()));
    let results = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..jobs.max(1))
        .map(|_| {
            let (queue, results, exe) = (Arc::clone(&queue), Arc::clone(&results), exe.clone());
            std::thread::spawn(move || -> Result<()> {
                loop {
                    let Some(target) = queue.lock().map_err(|_| anyhow!("poisoned"))?.pop() else {
                        return Ok(());
                    };
                    let (cases, took) = run_target(&exe, target, budget)?;
                    eprintln!(
                        "fuzz: {target}: {cases} cases in {:.0} s, no failure",
                        took.as_secs_f64()
                    );
                    results.lock().map_err(|_| anyhow!("poisoned"))?.push((target, cases, took));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| anyhow!("a fuzz worker panicked"))??;
    }
    let mut results = results.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    results.sort_by_key(|r| TARGETS.iter().position(|t| *t == r.0));
    println!("| target | cases | minutes | failures |\n|---|---|---|---|");
    for (target, cases, took) in results {
        println!("| `{target}` | {cases} | {:.1} | 0 |", took.as_secs_f64() / 60.0);
    }
    Ok(())
}

/// Builds the fuzz tests (release: several times the cases a minute): the executable.
fn build() -> Result<PathBuf> {
    let out = cargo()
        .args(["test", "--release", "-p", "leak-user", "--test", "fuzz", "--no-run"])
        .args(["--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .context("building the fuzz targets")?;
    if !out.status.success() {
        bail!("building the fuzz targets failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "fuzz")
        .and_then(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| anyhow!("cargo built no fuzz test executable"))
}

/// Rounds of `target` until `budget` is spent: the cases run and the time taken.
fn run_target(exe: &PathBuf, target: &str, budget: Duration) -> Result<(u64, Duration)> {
    let start = Instant::now();
    let mut cases = 0;
    while start.elapsed() < budget {
        let out = Command::new(exe)
            .args([target, "--exact", "--test-threads=1"])
            .env("LEAK_FUZZ_CASES", CASES_A_ROUND.to_string())
            // The regressions file is found relative to the package.
            .current_dir(workspace_root().join("leak-user"))
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "fuzz target {target} failed (the case is saved in \
                 leak-user/tests/fuzz.proptest-regressions):\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        cases += CASES_A_ROUND;
    }
    Ok((cases, start.elapsed()))
}
