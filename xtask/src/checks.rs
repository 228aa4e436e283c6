//! The checks: `cargo xtask test` (unit tests, the image, the root integration tests, the
//! kernel matrix), `cargo xtask soak` and `cargo xtask lint`.
use std::{env, path::Path, process::Command};

use anyhow::{Result, anyhow, bail};

use crate::{
    IMAGE,
    demo::build_release,
    image,
    setup::{ensure_nightly_component, setup},
    util::{as_root, cargo, is_root, output, run, workspace_root},
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
        image::build(IMAGE)?;
    } else {
        run(as_root(&env::current_exe()?).arg("image"))?;
    }
    eprintln!("test: root integration tests");
    // The integration tests run the `leak` binary: build it in the same profile first.
    run(cargo().args(["build", "-p", "leak-user", "--bin", "leak"]))?;
    if !extra.is_empty() {
        // A developer's filter: one run, as asked.
        return run(leak_tests().arg("--").args(extra));
    }
    run(leak_tests().args(["--lib", "--bins", "--test", "kernel"]))?;
    for (area, names) in integration_areas()? {
        eprintln!("test: integration tests: {area} ({} tests)", names.len());
        run(leak_tests().args(["--test", "integration", "--", "--exact"]).args(&names))?;
    }
    if kernels {
        eprintln!("test: the kernel matrix (QEMU)");
        vm::matrix(&[], &[])?;
    }
    Ok(())
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
    let list = output(cargo().args([
        "test",
        "-p",
        "leak-tests",
        "--test",
        "integration",
        "--",
        "--list",
        "--format",
        "terse",
    ]))
    .ok_or_else(|| anyhow!("cannot list the integration tests"))?;
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
