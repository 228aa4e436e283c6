//! Developer tasks cargo cannot do alone: set-up, demo, root integration tests, lints, bench.
//! This file is the command line and its dispatch; each task is in a file of its own, the
//! helpers they share in `util`.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod bench;
mod checks;
mod cross;
mod demo;
mod fuzz;
mod image;
mod measure;
mod servers;
mod setup;
mod util;
mod vm;

/// The image `cargo xtask image` builds.
const IMAGE: &str = "localhost/leak:dev";

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
    Build {
        /// Cross-build for this target instead (aarch64-unknown-linux-gnu): installs Debian's
        /// cross compiler and the target's standard library; writes
        /// target/<target>/release/leak.
        #[arg(long)]
        target: Option<String>,
    },
    /// Build the container image from deploy/Dockerfile with podman, on local base images
    /// made with debootstrap (no registry needed); says its size.
    Image {
        /// The image's name.
        #[arg(long, default_value = IMAGE)]
        tag: String,
        /// The architectures (repeat): one image each, TAG-ARCH, and TAG their manifest
        /// list.
        #[arg(long, value_enum, default_values = ["amd64", "arm64"])]
        arch: Vec<vm::Arch>,
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
        /// The guests' architecture: arm64 cross-builds the suite and boots Debian's arm64
        /// kernels in qemu-system-aarch64.
        #[arg(long, value_enum, default_value = "amd64")]
        arch: vm::Arch,
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
        Task::Setup => setup::setup(),
        Task::Build { target: None } => setup::setup_build().and_then(|()| demo::build_release()),
        Task::Build { target: Some(target) } => cross::build(&target).map(drop),
        Task::Image { tag, arch } => image::build(&tag, &arch),
        Task::Demo { seconds } => demo::demo(seconds),
        Task::Test { no_vm, args } => checks::test(&args, !no_vm),
        Task::Vm { arch, kernels, args } => {
            setup::setup().and_then(|()| vm::matrix(arch, &kernels, &args))
        }
        Task::Fuzz { minutes, jobs } => fuzz::fuzz(minutes, jobs),
        Task::Soak { minutes, out } => checks::soak(minutes, &out),
        Task::Lint => checks::lint(),
        Task::Bench { pairs, only, baseline } => bench::bench(pairs, &only, baseline.as_deref()),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}
