//! The checks: `cargo xtask test` (unit tests, the image, the root integration tests, the
//! kernel matrix), `cargo xtask soak` and `cargo xtask lint`.
use std::{
    env,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    IMAGE,
    demo::build_release,
    image,
    setup::{ensure_nightly_component, setup},
    util::{as_root, cargo, is_root, run, workspace_root},
    vm,
};

pub fn test(extra: &[String], kernels: bool) -> Result<()> {
    setup()?;
    eprintln!("test: unit tests");
    run(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "leak-tests",
        "--exclude",
        "leak-ebpf",
    ]))?;
    eprintln!("test: the container image (tests/tests/integration/image.rs runs it)");
    if is_root() {
        image::build(IMAGE, &[vm::Arch::Amd64, vm::Arch::Arm64])?;
    } else {
        run(as_root(&env::current_exe()?).arg("image"))?;
    }
    eprintln!("test: root integration tests");
    // The integration tests run the `leak` binary: build it in the same profile first.
    run(cargo().args(["build", "-p", "leak-user", "--bin", "leak"]))?;
    let (flags, filters) = split_test_args(extra);
    run(leak_tests().args(["--lib", "--bins", "--test", "kernel", "--"]).args(extra))?;
    for (area, names) in integration_areas()? {
        let names: Vec<String> = names
            .into_iter()
            .filter(|n| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str())))
            .collect();
        if names.is_empty() {
            continue;
        }
        eprintln!("test: integration tests: {area} ({} tests)", names.len());
        run(leak_tests()
            .args(["--test", "integration", "--"])
            .args(&flags)
            .arg("--exact")
            .args(&names))?;
    }
    if kernels {
        // arm64 on its oldest and newest kernels, beside x86-64's four (#27): two guests at
        // a time, one per core.
        eprintln!(
            "test: the kernel matrix (QEMU): x86-64 on every kernel, arm64 on 5.10 and newest"
        );
        let arm64 = ["5.10".to_owned(), "newest".to_owned()];
        vm::matrices(&[(vm::Arch::Amd64, &[]), (vm::Arch::Arm64, &arm64)], &[])?;
    }
    Ok(())
}

/// libtest's arguments as flags (with the values of those that take one) and name filters:
/// a filter picks tests by name, as libtest's does, and the flags go to every run.
fn split_test_args(args: &[String]) -> (Vec<&String>, Vec<&String>) {
    const TAKE_VALUE: [&str; 5] = ["--skip", "--test-threads", "--format", "--color", "--logfile"];
    let (mut flags, mut filters) = (Vec::new(), Vec::new());
    let mut args = args.iter();
    while let Some(a) = args.next() {
        if a.starts_with('-') {
            flags.push(a);
            if TAKE_VALUE.contains(&a.as_str())
                && let Some(value) = args.next()
            {
                flags.push(value);
            }
        } else {
            filters.push(a);
        }
    }
    (flags, filters)
}

/// `cargo test -p leak-tests`, with the test binaries run as root.
fn leak_tests() -> Command {
    let mut cmd = cargo();
    cmd.args(["test", "-p", "leak-tests"]);
    if !is_root() {
        // Only the integration test binary runs as root, not cargo (KUN's sudo-runner).
        cmd.args(["--config", "target.x86_64-unknown-linux-gnu.runner = 'sudo -E'"]);
    }
    cmd
}

/// The integration binary's tests by area (module), in order. The areas run one after
/// another, each area's tests side by side: some tests look at the whole host (its pod
/// cgroups, the `leak` processes and BPF programs left) and were written for the company
/// of their own area only, as when each area was a binary of its own.
fn integration_areas() -> Result<Vec<(String, Vec<String>)>> {
    // stderr shown: a build error is said where it happens.
    let listed = cargo()
        .args(["test", "-p", "leak-tests", "--test", "integration", "--", "--list"])
        .args(["--format", "terse"])
        .stderr(Stdio::inherit())
        .output()
        .context("listing the integration tests")?;
    if !listed.status.success() {
        bail!("cannot list the integration tests: {}", listed.status);
    }
    let list = String::from_utf8_lossy(&listed.stdout);
    let mut areas: Vec<(String, Vec<String>)> = Vec::new();
    for name in list.lines().filter_map(|l| l.strip_suffix(": test")) {
        let area = name.split_once("::").map_or(name, |(a, _)| a);
        match areas.last_mut() {
            Some((a, names)) if a == area => names.push(name.to_owned()),
            _ => areas.push((area.to_owned(), vec![name.to_owned()])),
        }
    }
    if areas.is_empty() {
        bail!("the integration binary lists no test");
    }
    Ok(areas)
}

pub fn soak(minutes: f64, out: &Path) -> Result<()> {
    setup()?;
    build_release()?;
    // The driver and its fixtures are test code: the debug build is enough for them.
    run(cargo().args(["build", "-p", "leak-tests", "--bin", "soak"]))?;
    let root = workspace_root();
    let mut cmd = as_root(&root.join("target/debug/soak"));
    cmd.env("LEAK_BIN", root.join("target/release/leak"))
        .arg("--minutes")
        .arg(minutes.to_string())
        .arg("--out")
        .arg(root.join(out))
        .current_dir(&root);
    run(&mut cmd)
}

pub fn lint() -> Result<()> {
    setup()?;
    ensure_nightly_component("clippy")?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "leak-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The BPF crate only builds for the BPF target, with the nightly toolchain (build-std):
    // once for each architecture whose registers it reads (`leak-ebpf/src/regs.rs`).
    for arch in ["x86_64", "aarch64"] {
        run(Command::new("rustup")
            .current_dir(workspace_root().join("leak-ebpf"))
            .env("AYA_BUILD_SKIP", "1")
            .env("AYA_BPF_TARGET_ARCH", arch)
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ])
            .args(["--", "-D", "warnings"]))?;
    }
    Ok(())
}
