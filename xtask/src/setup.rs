//! `cargo xtask setup`, idempotent: installs only what is missing (nightly rust-src, Debian's
//! llvm-22-dev, bpf-linker 0.13 built against it, a C compiler, the arm64 cross compiler and C
//! library, and what the tests run) and says in one line what to do where it cannot.
use std::{path::Path, process::Command};

use anyhow::{Result, bail};

use crate::{
    cross, image,
    util::{apt_install, cargo, output, run, workspace_root},
    vm,
};

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const APT_PACKAGES: [&str; 3] = ["llvm-22-dev", "libzstd-dev", "zlib1g-dev"];

/// What building `leak` needs, and no more (the image's builder runs this).
pub fn setup_build() -> Result<()> {
    ensure_nightly_component("rust-src")?;
    ensure_c_compiler()?;
    ensure_bpf_linker()
}

pub fn setup() -> Result<()> {
    setup_build()?;
    ensure_test_allocators()?;
    ensure_build_matrix()?;
    ensure_go()?;
    ensure_kubernetes_validate()?;
    ensure_prometheus()?;
    // The unwinder's tests read Debian's arm64 libc; the arm64 build needs the rest.
    cross::ensure(cross::AARCH64)?;
    image::ensure_tools()?;
    apt_install(
        &["chromium"],
        "Chromium (tests/tests/integration/html.rs loads the HTML report in it)",
    )?;
    vm::ensure_tools()?;
    Ok(())
}

/// Debian's Prometheus: the agent test has it scrape `leak agent` and query the leak back,
/// and its promtool checks and tests the alerting rules; Alertmanager and amtool check the
/// inhibit rules; bpftool checks that no program of leak's is left after SIGTERM.
fn ensure_prometheus() -> Result<()> {
    apt_install(
        &["prometheus", "prometheus-alertmanager", "bpftool", "curl", "openssl"],
        "Prometheus, Alertmanager, bpftool, curl and openssl (tests scrape the agent, over TLS \
         with a test CA, run the alerting rules, and check its exit)",
    )
}

/// Version of the `kubernetes-validate` package (and its bundled schemas) the tests use.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// `kubernetes-validate` in a virtualenv under `target/tools` (tests/tests/integration/deploy.rs runs it
/// on `deploy/`): the manifests are checked against the Kubernetes schemas offline.
fn ensure_kubernetes_validate() -> Result<()> {
    let venv = workspace_root().join("target/tools/kubernetes-validate");
    if venv.join("bin/kubernetes-validate").exists() {
        return Ok(());
    }
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", KUBERNETES_VALIDATE]))
}

/// Debian's jemalloc and tcmalloc, shared and as archives (the tests link them into fixtures
/// too): the integration tests run the same fixture on each allocator.
fn ensure_test_allocators() -> Result<()> {
    const LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";
    let have = |f: &str| Path::new(LIBDIR).join(f).exists();
    if ["libjemalloc.so.2", "libjemalloc.a", "libtcmalloc_minimal.so.4", "libtcmalloc_minimal.a"]
        .iter()
        .all(|f| have(f))
    {
        return Ok(());
    }
    apt_install(
        &["libjemalloc2", "libjemalloc-dev", "libtcmalloc-minimal4", "libgoogle-perftools-dev"],
        "jemalloc and tcmalloc (the integration tests trace a fixture on each)",
    )
}

/// The build matrix's toolchains (tests/src/matrix.rs): clang, the LLD, gold and mold
/// linkers, binutils to split and compress debug info, and glibc's debug files (libc frames
/// get `file:line` from them, found by build id).
fn ensure_build_matrix() -> Result<()> {
    apt_install(
        &["clang", "lld", "mold", "binutils", "libc6-dbg"],
        "the build matrix's compilers, linkers and libc debug files",
    )
}

/// Go's pprof tool: an integration test checks that it reads leak's profiles.
fn ensure_go() -> Result<()> {
    if output(Command::new("go").arg("version")).is_some() {
        return Ok(());
    }
    apt_install(&["golang-go"], "Go (the tests read leak's pprof output with `go tool pprof`)")
}

pub fn ensure_nightly_component(name: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]));
    let Some(list) = installed else {
        eprintln!("setup: installing the nightly toolchain with {name}");
        return run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            name,
        ]));
    };
    // Components list as `rust-src` or `clippy-x86_64-unknown-linux-gnu`.
    if list.lines().any(|l| l.trim() == name || l.starts_with(&format!("{name}-"))) {
        return Ok(());
    }
    eprintln!("setup: adding {name} to the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", name, "--toolchain", "nightly"]))
}

fn ensure_c_compiler() -> Result<()> {
    if output(Command::new("cc").arg("--version")).is_some()
        && output(Command::new("c++").arg("--version")).is_some()
    {
        return Ok(());
    }
    apt_install(
        &["gcc", "g++", "libc6-dev"],
        "C and C++ compilers (for the test fixtures and the demo)",
    )
}

fn ensure_bpf_linker() -> Result<()> {
    // LLVM first: a bpf-linker already built (a toolchain mounted into a container) runs
    // once its libLLVM is there.
    if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
        apt_install(&APT_PACKAGES, "LLVM 22, which bpf-linker links against")?;
    }
    let version = output(Command::new("bpf-linker").arg("--version"));
    if version.as_deref().is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    // bpf-linker's build script reads LLVM_PREFIX; without it, it finds /usr/bin/llvm-config
    // (Debian's default LLVM 14) and fails with `unable to find library -lLLVM`.
    run(cargo().env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--no-default-features",
        "--features",
        "llvm-22",
    ]))?;
    if output(Command::new("bpf-linker").arg("--version")).is_none() {
        bail!("bpf-linker was installed but does not run: is ~/.cargo/bin on PATH?");
    }
    Ok(())
}
