//! Developer tasks cargo cannot do alone: set-up, demo, root integration tests, lints, bench.
//!
//! `cargo xtask setup` is idempotent: it installs only what is missing (nightly rust-src,
//! Debian's llvm-22-dev, bpf-linker 0.13 built against it, a C compiler) and says in one line
//! what to do where it cannot.
use std::{
    env, fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Parser, Subcommand};

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const APT_PACKAGES: [&str; 3] = ["llvm-22-dev", "libzstd-dev", "zlib1g-dev"];

#[derive(Parser)]
#[command(name = "xtask", about = "leak developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build needs (idempotent).
    Setup,
    /// Set up and build the release binary (target/release/leak).
    Build,
    /// Set up, build, trace the bundled demo for 10 s; writes leaks.svg and leaks.json.
    Demo {
        /// Seconds to trace.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Set up, run the unit tests, then the root integration tests.
    Test {
        /// Extra arguments for the integration test binary (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// rustfmt check and clippy (host crates with -D warnings, and the BPF crate).
    Lint,
    /// Measure tracing cost on a malloc+free churn loop against the untraced run.
    Bench {
        /// malloc+free pairs in the traced run (the untraced run does 50x more).
        #[arg(long, default_value_t = 200_000)]
        pairs: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup(),
        Task::Build => setup().and_then(|()| build_release()),
        Task::Demo { seconds } => demo(seconds),
        Task::Test { args } => test(&args),
        Task::Lint => lint(),
        Task::Bench { pairs } => bench(pairs),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace").to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn cargo() -> Command {
    let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

// ---------------------------------------------------------------------------------------------
// setup

fn setup() -> Result<()> {
    ensure_nightly_component("rust-src")?;
    ensure_c_compiler()?;
    ensure_bpf_linker()?;
    ensure_test_allocators()?;
    Ok(())
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

fn ensure_nightly_component(name: &str) -> Result<()> {
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
    let version = output(Command::new("bpf-linker").arg("--version"));
    if version.as_deref().is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
        apt_install(&APT_PACKAGES, "LLVM 22, which bpf-linker links against")?;
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

fn apt_install(packages: &[&str], why: &str) -> Result<()> {
    let list = packages.join(" ");
    if !Path::new("/etc/debian_version").exists() {
        bail!("{why} is missing: install the equivalent of Debian's `{list}` and rerun");
    }
    if !is_root() {
        bail!(
            "{why} is missing: run `sudo apt-get install -y {list}` (or this task as root) and rerun"
        );
    }
    eprintln!("setup: apt-get install {list}");
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages))
}

// ---------------------------------------------------------------------------------------------
// build, demo

fn build_release() -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "leak-user"]))
}

fn compile_c(src: &Path, out: &Path) -> Result<()> {
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    run(Command::new("cc").args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"]).arg(out).arg(src))
}

/// A command that runs `program` as root: directly when we are root, else through `sudo -E`.
fn as_root(program: &Path) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(program);
        c
    }
}

fn demo(seconds: u64) -> Result<()> {
    setup()?;
    build_release()?;
    let root = workspace_root();
    let demo_bin = root.join("target/demo/leak-demo");
    compile_c(&root.join("xtask/programs/demo.c"), &demo_bin)?;
    let mut demo =
        Command::new(&demo_bin).stdout(Stdio::piped()).spawn().context("starting the demo")?;
    // Wait for its first line: it is running and has allocated.
    if let Some(stdout) = demo.stdout.take() {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        eprint!("{line}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let leak = root.join("target/release/leak");
    let pid = demo.id().to_string();
    let duration = format!("{seconds}s");
    let mut cmd = as_root(&leak);
    cmd.args(["attach", "--pid", &pid, "--duration", &duration, "--interval", "2s", "--top", "3"])
        .args(["--svg", "leaks.svg", "--svg-diff", "leaks-diff.svg", "--json", "leaks.json"])
        .args(["--folded", "leaks.folded", "--limit", "256M"])
        .current_dir(&root);
    let result = run(&mut cmd);
    let _ = demo.kill();
    let _ = demo.wait();
    result?;
    eprintln!(
        "\ndemo: the leak is parse_request's malloc(512); open {} in a browser",
        root.join("leaks.svg").display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// test, lint

fn test(extra: &[String]) -> Result<()> {
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
    eprintln!("test: root integration tests");
    // The integration tests run the `leak` binary: build it in the same profile first.
    run(cargo().args(["build", "-p", "leak-user", "--bin", "leak"]))?;
    let mut cmd = cargo();
    cmd.args(["test", "-p", "leak-tests"]);
    if !is_root() {
        // Only the integration test binary runs as root, not cargo (KUN's sudo-runner).
        cmd.args(["--config", "target.x86_64-unknown-linux-gnu.runner = 'sudo -E'"]);
    }
    cmd.arg("--").args(extra);
    run(&mut cmd)
}

fn lint() -> Result<()> {
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
    // The BPF crate only builds for the BPF target, with the nightly toolchain (build-std).
    run(Command::new("rustup")
        .current_dir(workspace_root().join("leak-ebpf"))
        .env("AYA_BUILD_SKIP", "1")
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
        .args(["--", "-D", "warnings"]))
}

// ---------------------------------------------------------------------------------------------
// bench

fn bench(pairs: u64) -> Result<()> {
    setup()?;
    build_release()?;
    let root = workspace_root();
    let churn = root.join("target/bench/churn");
    // -O2 and frame pointers: the allocation sites' stacks stay walkable under the tracer.
    fs::create_dir_all(churn.parent().unwrap_or(&root))?;
    run(Command::new("cc")
        .args(["-O2", "-fno-omit-frame-pointer", "-o"])
        .arg(&churn)
        .arg(root.join("xtask/programs/churn.c")))?;
    let untraced_pairs = (pairs * 50).to_string();
    let base = measure(Command::new(&churn).arg(&untraced_pairs))?;
    let leak = root.join("target/release/leak");
    let mut traced_cmd = as_root(&leak);
    traced_cmd.args(["run", "--interval", "60s", "--"]).arg(&churn).arg(pairs.to_string());
    let traced = measure(&mut traced_cmd)?;
    let kernel = output(Command::new("uname").arg("-r")).unwrap_or_default();
    println!(
        "churn loop, malloc+free pairs of 8 mixed sizes (16 B..4000 B), kernel {}",
        kernel.trim()
    );
    println!("{:<22} {:>14} {:>10}", "configuration", "ns per pair", "ratio");
    println!("{:<22} {:>14.1} {:>10}", "no tracer", base, "1.0x");
    println!("{:<22} {:>14.1} {:>9.0}x", "leak (full trace)", traced, traced / base);
    println!("added cost per pair: {:.0} ns", traced - base);
    bench_watch(&leak)
}

/// `leak watch --all`: the CPU it uses against the wall time it watches, sampling every
/// process of the machine ten times a second (ten times the default rate).
fn bench_watch(leak: &Path) -> Result<()> {
    let seconds = 5.0;
    let before = children_cpu_s();
    let started = std::time::Instant::now();
    let out = Command::new(leak)
        .args(["watch", "--all", "--sample-interval", "100ms", "--interval", "1h"])
        .args(["--duration", &format!("{seconds}s")])
        .stderr(Stdio::inherit())
        .output()
        .context("running leak watch")?;
    if !out.status.success() {
        bail!("leak watch failed: {}", out.status);
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = children_cpu_s() - before;
    let text = String::from_utf8_lossy(&out.stdout);
    let procs: f64 = text
        .lines()
        .find_map(|l| l.split_once(": ")?.1.split_once(" process")?.0.parse().ok())
        .unwrap_or(0.0);
    let samples = seconds / 0.1;
    println!(
        "\nleak watch --all, {procs} processes sampled every 100 ms for {wall:.1} s: CPU {cpu:.3} s \
         = {:.2}% of one CPU; {:.0} us per process sample",
        100.0 * cpu / wall,
        1e6 * cpu / (samples * procs.max(1.0))
    );
    Ok(())
}

/// User + system CPU seconds of the waited-for children so far.
fn children_cpu_s() -> f64 {
    // SAFETY: zeroed rusage is a valid out-value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &raw mut ru) };
    #[expect(clippy::cast_precision_loss, reason = "CPU seconds: far below 2^52")]
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs the churn program and parses its `<ns> ns per malloc+free pair` line.
fn measure(cmd: &mut Command) -> Result<f64> {
    let out = cmd.stderr(Stdio::inherit()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.strip_suffix(")").and_then(|l| l.split_once(" ns per malloc+free pair")))
        .find_map(|(ns, _)| ns.trim().parse().ok())
        .ok_or_else(|| {
            anyhow!("no timing in the output of {}: {text}", cmd.get_program().display())
        })
}
