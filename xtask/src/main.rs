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

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod fuzz;
mod image;
mod servers;
mod vm;

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The image `cargo xtask image` builds.
const IMAGE: &str = "localhost/leak:dev";
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
    /// Install what the build needs and build the release binary (target/release/leak).
    Build,
    /// Build the container image from deploy/Dockerfile with podman, on local base images
    /// made with debootstrap (no registry needed); says its size.
    Image {
        /// The image's name.
        #[arg(long, default_value = IMAGE)]
        tag: String,
    },
    /// Set up, build, trace the bundled demo for 10 s; writes leaks.html, leaks.svg and
    /// leaks.json.
    Demo {
        /// Seconds to trace.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Set up, run the unit tests, the root integration tests, then the kernel suite in a
    /// QEMU guest on each kernel of the matrix (5.10, 6.1, 6.12, the newest).
    Test {
        /// Skip the kernel matrix (a quicker run while developing; CI runs it).
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for the integration test binary (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the kernel suite (tests/tests/kernel.rs) in QEMU guests booting Debian's kernels.
    Vm {
        /// Only these kernels (5.10, 6.1, 6.12, newest; repeat). Default: all.
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Arguments for the suite in the guest (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Fuzz every parser of tenant-controlled input (leak-user/tests/fuzz.rs) for a while.
    Fuzz {
        /// Minutes per target.
        #[arg(long, default_value_t = 1.0)]
        minutes: f64,
        /// Targets fuzzed at once.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
    },
    /// Run the release `leak agent` and a long `leak attach` over a churning population and
    /// judge leak's own memory, descriptors and maps (tests/src/bin/soak.rs).
    Soak {
        /// Minutes to run (docs/reliability.md's figures are from an hour).
        #[arg(long, default_value_t = 3.0)]
        minutes: f64,
        /// Where soak.md and samples.csv go.
        #[arg(long, default_value = "target/soak")]
        out: PathBuf,
    },
    /// rustfmt check and clippy (host crates with -D warnings, and the BPF crate).
    Lint,
    /// Measure tracing cost against the untraced run, the probe floor and the peer tools
    /// (installed when missing), as ratios taken in the same run.
    Bench {
        /// malloc+free pairs per traced churn run (the untraced run does 50x more).
        #[arg(long, default_value_t = 200_000)]
        pairs: u64,
        /// Run only these parts (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<bench::Part>,
        /// Another `leak` binary (e.g. the code before a change, built in a git worktree)
        /// traced with the full trace beside this one, interleaved in the same run.
        #[arg(long, value_name = "LEAK")]
        baseline: Option<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup(),
        Task::Build => setup_build().and_then(|()| build_release()),
        Task::Image { tag } => image::build(&tag),
        Task::Demo { seconds } => demo(seconds),
        Task::Test { no_vm, args } => test(&args, !no_vm),
        Task::Vm { kernels, args } => setup().and_then(|()| vm::matrix(&kernels, &args)),
        Task::Fuzz { minutes, jobs } => fuzz::fuzz(minutes, jobs),
        Task::Soak { minutes, out } => soak(minutes, &out),
        Task::Lint => lint(),
        Task::Bench { pairs, only, baseline } => bench::bench(pairs, &only, baseline.as_deref()),
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

/// What building `leak` needs, and no more (the image's builder runs this).
fn setup_build() -> Result<()> {
    ensure_nightly_component("rust-src")?;
    ensure_c_compiler()?;
    ensure_bpf_linker()
}

fn setup() -> Result<()> {
    setup_build()?;
    ensure_test_allocators()?;
    ensure_build_matrix()?;
    ensure_go()?;
    ensure_kubernetes_validate()?;
    ensure_prometheus()?;
    image::ensure_tools()?;
    apt_install(&["chromium"], "Chromium (tests/tests/html.rs loads the HTML report in it)")?;
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

/// `kubernetes-validate` in a virtualenv under `target/tools` (tests/tests/deploy.rs runs it
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

/// Installs the Debian packages of `packages` that are not installed yet.
fn apt_install(packages: &[&str], why: &str) -> Result<()> {
    let installed = |p: &str| {
        output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
            .is_some_and(|s| s.contains("install ok installed"))
    };
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages = missing.as_slice();
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
        .args(["--folded", "leaks.folded", "--html", "leaks.html", "--limit", "256M"])
        .current_dir(&root);
    let result = run(&mut cmd);
    let _ = demo.kill();
    let _ = demo.wait();
    result?;
    eprintln!(
        "\ndemo: the leak is parse_request's malloc(512); open {} in a browser (the charts \
         and both flame graphs), or {} (the flame graph alone)",
        root.join("leaks.html").display(),
        root.join("leaks.svg").display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// test, soak, lint

fn test(extra: &[String], kernels: bool) -> Result<()> {
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
    eprintln!("test: the container image (tests/tests/container.rs runs it)");
    if is_root() {
        image::build(IMAGE)?;
    } else {
        run(as_root(&env::current_exe()?).arg("image"))?;
    }
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
    run(&mut cmd)?;
    if kernels {
        eprintln!("test: the kernel matrix (QEMU)");
        vm::matrix(&[], &[])?;
    }
    Ok(())
}

fn soak(minutes: f64, out: &Path) -> Result<()> {
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
