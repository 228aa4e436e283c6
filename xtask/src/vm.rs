//! `cargo xtask vm`: the kernel matrix. Boots Debian's kernels in QEMU and runs the kernel
//! suite (`tests/tests/kernel.rs`) in each guest, as root, next to the host's own run.
//!
//! - Kernels come from Debian's archive, the newest cloud image of each suite (the
//!   `linux-image-cloud-amd64` or `-arm64` meta-package's dependency; an older version of it
//!   when the archive copy lacks the newest's package, which the run prints), fetched with apt
//!   under a configuration of our own (`APT_CONFIG`: nothing of the host's apt set-up
//!   applies) and cached under `target/vm/kernels`. The Release files' signatures are checked
//!   with Debian's keyring, as apt always does; sid's mirror copy may be past its Valid-Until
//!   date, so that check alone is off. A suite none of whose images can be fetched fails the
//!   run.
//! - The guest needs no disk image: an initramfs (written here, `newc` cpio) holds busybox
//!   as `/init`'s shell, the suite, `leak`, the fixtures and every library they link, each at
//!   its host path, so the suite finds them where it was built to.
//! - QEMU emulates the CPU (TCG, one CPU): these machines have no nested KVM (`-enable-kvm`
//!   hangs).
//!   The verifier runs about five times slower there; a kernel boots in a few seconds.
//!
//! Design as in aya's `xtask integration-test vm` and the OpenTelemetry profiler's
//! `run-tests.sh` (an initramfs per test binary), written for this project.

#[path = "../../tests/src/matrix.rs"]
#[allow(dead_code, reason = "xtask reads the kernel subset only")]
mod matrix;
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{
    cross,
    util::{apt_install, cargo, output, run, workspace_root},
};

/// The architecture of the guests: the host's (x86-64), or arm64 (#27), whose kernels,
/// busybox and C library come from Debian's arm64 packages and whose suite is cross-built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// x86-64 (Debian's `amd64`), emulated like the others: these machines have no KVM.
    Amd64,
    /// aarch64 (Debian's `arm64`): `qemu-system-aarch64 -M virt`, a CPU with pointer
    /// authentication.
    Arm64,
}

impl Arch {
    /// The architecture this task runs on.
    pub fn host() -> Self {
        if cfg!(target_arch = "aarch64") { Self::Arm64 } else { Self::Amd64 }
    }

    /// Debian's name.
    pub fn debian(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }

    /// The Rust target the suite is cross-built for (none: the host's).
    pub fn rust_target(self) -> Option<&'static str> {
        match self {
            Self::Amd64 => None,
            Self::Arm64 => Some(cross::AARCH64),
        }
    }

    /// Where the cached kernels and apt lists of a suite go (amd64's where they always were).
    fn dir(self, suite: &str) -> String {
        match self {
            Self::Amd64 => suite.to_owned(),
            Self::Arm64 => format!("arm64-{suite}"),
        }
    }
}

/// A kernel of the matrix.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// Its name in the matrix (`--kernel`).
    pub name: &'static str,
    /// The Debian suite it comes from.
    pub suite: &'static str,
    /// What its release must start with (empty: any, the newest of sid).
    pub release_prefix: &'static str,
}

/// The matrix, oldest first: Debian 11, 12 and 13's kernels and sid's newest.
pub const KERNELS: [Kernel; 4] = [
    Kernel { name: "5.10", suite: "bullseye", release_prefix: "5.10." },
    Kernel { name: "6.1", suite: "bookworm", release_prefix: "6.1." },
    Kernel { name: "6.12", suite: "trixie", release_prefix: "6.12." },
    Kernel { name: "newest", suite: "sid", release_prefix: "" },
];

/// How long one guest may run before it is killed and fails.
const GUEST_TIMEOUT: Duration = Duration::from_mins(15);

/// Marker lines the guest's `/init` prints around the suite.
const BEGIN: &str = "LEAK-VM-BEGIN";
const EXIT: &str = "LEAK-VM-EXIT";

fn vm_dir() -> PathBuf {
    workspace_root().join("target/vm")
}

/// Installs what the matrix needs on the host (idempotent).
pub fn ensure_tools() -> Result<()> {
    apt_install(
        &["qemu-system-x86", "qemu-system-arm", "busybox-static", "binutils"],
        "QEMU and busybox (the kernel matrix boots Debian's kernels)",
    )
}

/// One guest's outcome.
#[derive(Debug)]
pub struct Outcome {
    pub kernel: Kernel,
    pub arch: Arch,
    pub release: String,
    pub passed: bool,
    /// The suite's `test result:` line.
    pub summary: String,
    pub took: Duration,
    pub log: PathBuf,
}

/// Runs the suite on `only` (names; empty: every kernel) of `arch`. `filter`: arguments for
/// the suite (a test name). Fails unless every guest passes.
pub fn matrix(arch: Arch, only: &[String], filter: &[String]) -> Result<()> {
    matrices(&[(arch, only)], filter)
}

/// [`matrix`] for several architectures at once: each one's suite is built first (one build
/// at a time), then each architecture's guests boot one after another on a thread of their
/// own. A guest emulates one CPU, so two architectures take the machine's two cores and
/// the slower one's time (the x86-64 four take about 18 minutes, arm64's oldest and
/// newest about 13).
pub fn matrices(runs: &[(Arch, &[String])], filter: &[String]) -> Result<()> {
    ensure_tools()?;
    let mut plans = Vec::new();
    for &(arch, only) in runs {
        let kernels: Vec<Kernel> = KERNELS
            .iter()
            .copied()
            .filter(|k| only.is_empty() || only.iter().any(|o| o == k.name))
            .collect();
        if kernels.is_empty() {
            let names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
            bail!("no kernel named {only:?} in the matrix: use one of {names:?}");
        }
        let suite = build_suite(arch)?;
        let initrd = initramfs(&suite, filter)?;
        let mut guests = Vec::new();
        for kernel in kernels {
            let (vmlinuz, release) = fetch(kernel, arch)
                .with_context(|| format!("fetching kernel {} ({})", kernel.name, arch.debian()))?;
            guests.push((kernel, vmlinuz, release));
        }
        plans.push((arch, initrd, guests));
    }
    let results: Vec<Result<Vec<Outcome>>> = std::thread::scope(|scope| {
        let threads: Vec<_> = plans
            .iter()
            .map(|(arch, initrd, guests)| {
                scope.spawn(move || {
                    let mut outcomes = Vec::new();
                    for (kernel, vmlinuz, release) in guests {
                        eprintln!("vm: booting {release} ({} from {})", kernel.name, kernel.suite);
                        let outcome = boot(*kernel, *arch, release, vmlinuz, initrd)?;
                        eprintln!(
                            "vm: {release}: {} in {:.0} s: {}",
                            if outcome.passed { "passed" } else { "FAILED" },
                            outcome.took.as_secs_f64(),
                            outcome.summary
                        );
                        outcomes.push(outcome);
                    }
                    Ok(outcomes)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| Err(anyhow!("a guest's thread panicked"))))
            .collect()
    });
    let mut outcomes = Vec::new();
    for r in results {
        outcomes.extend(r?);
    }
    let table = results_table(&outcomes);
    eprintln!("\n{table}");
    fs::write(vm_dir().join("results.md"), &table)?;
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| format!("{} (log: {})", o.release, o.log.display()))
        .collect();
    if !failed.is_empty() {
        bail!("the kernel suite failed on {}", failed.join(", "));
    }
    Ok(())
}

fn results_table(outcomes: &[Outcome]) -> String {
    let mut t = String::from(
        "| kernel | arch | release | suite | result | time |\n|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {:.0} s |",
            o.kernel.name,
            o.arch.debian(),
            o.release,
            o.kernel.suite,
            if o.passed { &o.summary } else { "FAILED" },
            o.took.as_secs_f64()
        );
    }
    t
}

// ---------------------------------------------------------------------------------------------
// kernels

/// The kernel image of `kernel` and its release, fetched once into `target/vm/kernels`.
pub fn fetch(kernel: Kernel, arch: Arch) -> Result<(PathBuf, String)> {
    let dir = vm_dir().join("kernels").join(arch.dir(kernel.suite));
    let (image, release_file) = (dir.join("vmlinuz"), dir.join("release"));
    if image.exists()
        && let Ok(release) = fs::read_to_string(&release_file)
    {
        return Ok((image, release.trim().to_owned()));
    }
    fs::create_dir_all(&dir)?;
    let apt = Apt::new(kernel.suite, arch)?;
    apt.update()?;
    let meta = format!("linux-image-cloud-{}", arch.debian());
    // Each version of the meta-package's image, the newest tried first: the archive's copy
    // here may lack a package its index lists (bullseye-security's arm64 5.10 images).
    let mut candidates = Vec::new();
    for version in apt.versions(&meta)?.iter().rev() {
        candidates.extend(apt.depends(&format!("{meta}={version}"), kernel.release_prefix)?);
    }
    let mut tried = BTreeSet::new();
    while let Some(package) = candidates.pop() {
        if !tried.insert(package.clone()) || tried.len() > 8 {
            continue;
        }
        let unpacked = dir.join("unpacked");
        let _ = fs::remove_dir_all(&unpacked);
        let deb = match apt.download(&package, &dir) {
            Ok(deb) => deb,
            Err(e) => {
                eprintln!("vm: {package} could not be fetched ({e:#}); trying an older one");
                continue;
            }
        };
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
        let found = find_vmlinuz(&unpacked);
        if let Some((path, release)) = found {
            fs::copy(&path, &image)?;
            fs::write(&release_file, &release)?;
            let _ = fs::remove_dir_all(&unpacked);
            let _ = fs::remove_file(&deb);
            eprintln!("vm: kernel {release} from {package} ({})", kernel.suite);
            return Ok((image, release));
        }
        let _ = fs::remove_dir_all(&unpacked);
        let _ = fs::remove_file(&deb);
        // A meta-package (sid's `linux-image-VER` pulls in `linux-binary-VER`): its
        // dependencies hold the image.
        candidates.extend(apt.depends(&package, kernel.release_prefix)?);
    }
    bail!("no kernel image found in {} (tried {tried:?})", kernel.suite)
}

/// `boot/vmlinuz-REL` (up to trixie) or `usr/lib/modules/REL/vmlinuz*` (later) in an
/// unpacked package: the image and its release.
fn find_vmlinuz(root: &Path) -> Option<(PathBuf, String)> {
    if let Ok(entries) = fs::read_dir(root.join("boot")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(release) = name.strip_prefix("vmlinuz-") {
                return Some((e.path(), release.to_owned()));
            }
        }
    }
    for e in fs::read_dir(root.join("usr/lib/modules")).ok()?.flatten() {
        for f in fs::read_dir(e.path()).ok()?.flatten() {
            if f.file_name().to_string_lossy().starts_with("vmlinuz") {
                return Some((f.path(), e.file_name().to_string_lossy().into_owned()));
            }
        }
    }
    None
}

/// apt with a configuration of its own for one suite.
struct Apt {
    config: PathBuf,
}

impl Apt {
    fn new(suite: &str, arch: Arch) -> Result<Self> {
        let dir = vm_dir().join("apt").join(arch.dir(suite));
        for sub in ["lists/partial", "cache/archives/partial", "empty"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        if !Path::new(keyring).exists() {
            bail!("{keyring} is missing: install Debian's debian-archive-keyring");
        }
        let mut sources =
            format!("deb [signed-by={keyring}] http://deb.debian.org/debian {suite} main\n");
        if suite != "sid" {
            let _ = write!(
                sources,
                "deb [signed-by={keyring}] http://deb.debian.org/debian {suite}-updates main\n\
                 deb [signed-by={keyring}] http://deb.debian.org/debian-security \
                 {suite}-security main\n"
            );
        }
        fs::write(dir.join("sources.list"), sources)?;
        let d = dir.display();
        // Every file and directory apt reads is ours: nothing of the host's configuration
        // (its sources, pins, proxies or apt.conf.d) applies.
        let config = format!(
            "Dir::Etc::SourceList \"{d}/sources.list\";\n\
             Dir::Etc::SourceParts \"/dev/null\";\n\
             Dir::Etc::Parts \"{d}/empty\";\n\
             Dir::Etc::Main \"/dev/null\";\n\
             Dir::Etc::TrustedParts \"{d}/empty\";\n\
             Dir::Etc::Trusted \"{d}/empty/none.gpg\";\n\
             Dir::Etc::Preferences \"/dev/null\";\n\
             Dir::Etc::PreferencesParts \"/dev/null\";\n\
             Dir::State::Lists \"{d}/lists\";\n\
             Dir::State::Status \"/dev/null\";\n\
             Dir::Cache \"{d}/cache\";\n\
             APT::Architecture \"{arch}\";\n\
             APT::Architectures \"{arch}\";\n\
             APT::Sandbox::User \"root\";\n\
             Acquire::Languages \"none\";\n\
             Acquire::Retries \"3\";\n\
             Acquire::Check-Valid-Until \"false\";\n",
            arch = arch.debian()
        );
        let path = dir.join("apt.conf");
        fs::write(&path, config)?;
        Ok(Self { config: path })
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("APT_CONFIG", &self.config);
        c
    }

    fn update(&self) -> Result<()> {
        run(self.command("apt-get").args(["update", "-q"]))
    }

    /// `package`'s dependencies that are kernel packages (`linux-image-*`, `linux-binary-*`)
    /// of a release starting with `prefix`.
    fn depends(&self, package: &str, prefix: &str) -> Result<Vec<String>> {
        let out = output(self.command("apt-cache").args(["depends", package]))
            .ok_or_else(|| anyhow!("apt-cache depends {package} failed"))?;
        Ok(out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .map(str::trim)
            .filter(|p| {
                ["linux-image-", "linux-binary-unsigned-", "linux-binary-"]
                    .iter()
                    .any(|k| p.strip_prefix(k).is_some_and(|rest| rest.starts_with(prefix)))
            })
            .map(str::to_owned)
            .collect())
    }

    /// The versions of `package` the suite has, newest first.
    fn versions(&self, package: &str) -> Result<Vec<String>> {
        let out = output(self.command("apt-cache").args(["madison", package]))
            .ok_or_else(|| anyhow!("apt-cache madison {package} failed"))?;
        let mut versions: Vec<String> = Vec::new();
        for v in out.lines().filter_map(|l| Some(l.split('|').nth(1)?.trim().to_owned())) {
            if !versions.contains(&v) {
                versions.push(v);
            }
        }
        if versions.is_empty() {
            bail!("{package} is not in the suite");
        }
        Ok(versions)
    }

    /// Downloads `package` into `dir`; the .deb's path.
    fn download(&self, package: &str, dir: &Path) -> Result<PathBuf> {
        run(self.command("apt-get").args(["download", "-q", package]).current_dir(dir))?;
        fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.extension().is_some_and(|e| e == "deb")
                    && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(package))
            })
            .ok_or_else(|| anyhow!("apt-get download {package} left no .deb"))
    }
}

// ---------------------------------------------------------------------------------------------
// the guest's files

/// What the guest runs: the suite's test executable and the `leak` it tests.
pub struct Suite {
    pub arch: Arch,
    pub executable: PathBuf,
    pub leak: PathBuf,
    pub fixtures: PathBuf,
}

/// `cargo` for the guests' architecture: cross-building with Debian's cross compiler.
fn cargo_for(arch: Arch) -> Result<Command> {
    match arch.rust_target() {
        Some(triple) => cross::cargo_for(triple),
        None => Ok(cargo()),
    }
}

/// Builds the kernel suite (and `leak`, which it runs) and finds their files.
fn build_suite(arch: Arch) -> Result<Suite> {
    let target: Vec<&str> = arch.rust_target().map(|t| vec!["--target", t]).unwrap_or_default();
    run(cargo_for(arch)?.args(["build", "-p", "leak-user", "--bin", "leak"]).args(&target))?;
    let out = cargo_for(arch)?
        .args(["test", "-p", "leak-tests", "--test", "kernel", "--no-run"])
        .args(&target)
        .args(["--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .context("building the kernel suite")?;
    if !out.status.success() {
        bail!("building the kernel suite failed");
    }
    let mut executable = None;
    let mut fixtures = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if v["reason"] == "compiler-artifact"
            && v["target"]["name"] == "kernel"
            && let Some(exe) = v["executable"].as_str()
        {
            executable = Some(PathBuf::from(exe));
        }
        if v["reason"] == "build-script-executed"
            && v["package_id"].as_str().is_some_and(|p| p.contains("leak-tests"))
            && let Some(dir) = v["out_dir"].as_str()
        {
            fixtures = Some(Path::new(dir).join("fixtures"));
        }
    }
    let executable = executable.ok_or_else(|| anyhow!("cargo built no kernel suite"))?;
    let fixtures = fixtures.ok_or_else(|| anyhow!("cargo reported no fixtures directory"))?;
    let dir = match arch.rust_target() {
        Some(t) => workspace_root().join("target").join(t),
        None => workspace_root().join("target"),
    };
    Ok(Suite { arch, executable, leak: dir.join("debug/leak"), fixtures })
}

/// Writes the initramfs: busybox, `/init`, the suite, `leak`, the fixtures and the libraries
/// of all of them, at their host paths.
fn initramfs(suite: &Suite, filter: &[String]) -> Result<PathBuf> {
    let stage = vm_dir().join(format!("stage-{}", suite.arch.debian()));
    fs::create_dir_all(&stage)?;
    let mut files: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    // The two big binaries without their debug info (hundreds of MB the guest never reads:
    // leak symbolizes the fixtures, not itself).
    for bin in [&suite.executable, &suite.leak] {
        let name = bin.file_name().ok_or_else(|| anyhow!("{} has no name", bin.display()))?;
        let stripped = stage.join(name);
        let objcopy = match suite.arch {
            Arch::Amd64 => "objcopy".to_owned(),
            Arch::Arm64 => format!("{ARM64_GNU}-objcopy"),
        };
        run(Command::new(objcopy).arg("--strip-debug").arg(bin).arg(&stripped))?;
        files.insert(bin.clone(), stripped);
    }
    let mut elves: Vec<PathBuf> = vec![suite.executable.clone(), suite.leak.clone()];
    for e in fs::read_dir(&suite.fixtures)
        .with_context(|| format!("reading {}", suite.fixtures.display()))?
        .flatten()
    {
        let p = e.path();
        // Of the build matrix, only the cases the kernel suite runs (the rest are tested on
        // the host; each guest would unpack tens of MB more).
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let case = name.strip_suffix(".debug").unwrap_or(name);
        if matrix::Case::named(case).is_some() && !matrix::KERNEL_SUBSET.contains(&case) {
            continue;
        }
        if p.is_file() {
            files.insert(p.clone(), p.clone());
            elves.push(p);
        }
    }
    let busybox = match suite.arch {
        Arch::Amd64 => {
            for elf in &elves {
                for lib in libraries(elf)? {
                    files.insert(lib.clone(), lib);
                }
            }
            ["/bin/busybox", "/usr/bin/busybox"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .ok_or_else(|| anyhow!("busybox is missing: install Debian's busybox-static"))?
        }
        Arch::Arm64 => {
            let userland = arm64_userland()?;
            for elf in &elves {
                for (guest, host) in arm64_libraries(elf, &userland)? {
                    files.insert(guest, host);
                }
            }
            // Merged /usr since trixie.
            userland.join("usr/bin/busybox")
        }
    };
    files.insert(PathBuf::from("/bin/busybox"), busybox);
    let init = stage.join("init");
    fs::write(&init, init_script(suite, filter))?;
    files.insert(PathBuf::from("/init"), init);

    let path = vm_dir().join(format!("initramfs-{}.cpio", suite.arch.debian()));
    let mut cpio = Cpio::default();
    for dir in ["/proc", "/sys", "/dev", "/tmp", "/run", "/bin", "/sbin", "/usr/bin", "/usr/sbin"] {
        cpio.dir(Path::new(dir));
    }
    for (guest, host) in &files {
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        cpio.file(guest, &data, 0o755);
    }
    fs::write(&path, cpio.finish())?;
    Ok(path)
}

/// The guest's `/init`: mounts the kernel's file systems, runs the suite, prints its exit
/// status between markers, powers off. Nothing is mounted over `/tmp`: the initramfs's own
/// root is writable, and the checkout (hence the suite and its fixtures) may lie under it.
fn init_script(suite: &Suite, filter: &[String]) -> String {
    let args: Vec<String> = filter.iter().map(|a| format!("'{}'", a.replace('\'', ""))).collect();
    format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/tmp TMPDIR=/tmp\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         echo \"{BEGIN} $(uname -r)\"\n\
         grep -m1 Features /proc/cpuinfo\n\
         cd /tmp\n\
         {leak} check -v\n\
         LEAK_BIN={leak} LEAK_TEST_TIMEOUT=240 RUST_BACKTRACE=1 {exe} --test-threads=1 {args}\n\
         echo \"{EXIT} $?\"\n\
         poweroff -f\n",
        leak = suite.leak.display(),
        exe = suite.executable.display(),
        args = args.join(" ")
    )
}

/// The shared libraries `elf` loads (and the dynamic loader), from `ldd`. None for a static
/// executable.
fn libraries(elf: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(elf).output().context("running ldd")?;
    if !out.status.success() {
        // "not a dynamic executable"
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.trim().split(' ').next().unwrap_or(""),
            None => line.trim().split(' ').next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// Debian's GNU triple for arm64: its cross tools' prefix and its multiarch directory.
const ARM64_GNU: &str = "aarch64-linux-gnu";

/// The Debian release whose arm64 user space the guests run: trixie's glibc and libgcc
/// are built with pointer authentication and BTI (bookworm's are not), so the return
/// addresses the walk reads in them are signed, as on a current arm64 distribution.
const ARM64_USERLAND_SUITE: &str = "trixie";

/// Debian's arm64 packages the guests' user space is made of: busybox, the C library and
/// libgcc (Rust executables need it).
const ARM64_USERLAND: [&str; 3] = ["busybox-static", "libc6", "libgcc-s1"];

/// [`ARM64_USERLAND`] unpacked into one root, fetched once.
fn arm64_userland() -> Result<PathBuf> {
    let root = vm_dir().join(format!("arm64-userland-{ARM64_USERLAND_SUITE}"));
    let done = root.join(".complete");
    if done.exists() {
        return Ok(root);
    }
    let _ = fs::remove_dir_all(&root);
    let debs = vm_dir().join("arm64-debs");
    fs::create_dir_all(&debs)?;
    let apt = Apt::new(ARM64_USERLAND_SUITE, Arch::Arm64)?;
    apt.update()?;
    for package in ARM64_USERLAND {
        let deb = apt.download(package, &debs)?;
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
        let _ = fs::remove_file(&deb);
    }
    fs::write(&done, "")?;
    Ok(root)
}

/// The shared libraries an arm64 `elf` loads, and its dynamic loader, from the user space
/// `userland`: (guest path, host path). `ldd` cannot run a foreign executable: `NEEDED`
/// entries are read with `readelf` (a library needing others pulls them in).
fn arm64_libraries(elf: &Path, userland: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let dirs = [userland.join("usr/lib").join(ARM64_GNU), userland.join("lib").join(ARM64_GNU)];
    let find = |name: &str| dirs.iter().map(|d| d.join(name)).find(|p| p.exists());
    let mut out = Vec::new();
    let mut pending = vec![elf.to_path_buf()];
    let mut seen = BTreeSet::new();
    while let Some(file) = pending.pop() {
        let dynamic = Command::new("readelf").arg("-d").arg(&file).output();
        let text =
            String::from_utf8_lossy(&dynamic.context("running readelf")?.stdout).into_owned();
        for name in text.lines().filter(|l| l.contains("(NEEDED)")).filter_map(|l| {
            let start = l.find('[')? + 1;
            Some(l[start..l.rfind(']')?].to_owned())
        }) {
            if !seen.insert(name.clone()) {
                continue;
            }
            let host = find(&name).ok_or_else(|| {
                anyhow!("{} needs {name}, not in {}", file.display(), userland.display())
            })?;
            out.push((Path::new("/lib").join(ARM64_GNU).join(&name), host.clone()));
            pending.push(host);
        }
    }
    let loader = "ld-linux-aarch64.so.1";
    if !seen.is_empty() {
        let host = find(loader).ok_or_else(|| anyhow!("{loader} not in {}", userland.display()))?;
        out.push((Path::new("/lib").join(loader), host));
    }
    Ok(out)
}

/// A `newc` cpio archive, what the kernel unpacks an initramfs from: every parent directory
/// before what it holds (older kernels do not create them).
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    dirs: BTreeSet<PathBuf>,
    ino: u32,
}

impl Cpio {
    fn header(&mut self, name: &str, mode: u32, size: usize) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            u32::try_from(size).unwrap_or(u32::MAX),
            0,
            0,
            0,
            0,
            u32::try_from(namesize).unwrap_or(u32::MAX),
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, path: &Path) {
        if path == Path::new("/") || self.dirs.contains(path) {
            return;
        }
        if let Some(parent) = path.parent() {
            self.dir(parent);
        }
        self.dirs.insert(path.to_path_buf());
        let name = path.to_string_lossy().trim_start_matches('/').to_owned();
        self.header(&name, 0o040_755, 0);
    }

    fn file(&mut self, path: &Path, data: &[u8], perm: u32) {
        if let Some(parent) = path.parent() {
            self.dir(parent);
        }
        let name = path.to_string_lossy().trim_start_matches('/').to_owned();
        self.header(&name, 0o100_000 | perm, data.len());
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0);
        self.out
    }
}

// ---------------------------------------------------------------------------------------------
// the guest

/// Boots `vmlinuz` with the initramfs and waits for the suite's exit status.
fn boot(
    kernel: Kernel,
    arch: Arch,
    release: &str,
    vmlinuz: &Path,
    initrd: &Path,
) -> Result<Outcome> {
    let logs = vm_dir().join("logs");
    fs::create_dir_all(&logs)?;
    let name = match arch {
        Arch::Amd64 => kernel.name.to_owned(),
        Arch::Arm64 => format!("arm64-{}", kernel.name),
    };
    let log_path = logs.join(format!("{name}.log"));
    let mut log = fs::File::create(&log_path)?;
    let started = Instant::now();
    let (qemu, machine, console): (&str, &[&str], &str) = match arch {
        // One CPU: with two, a guest kernel patching its text (a static key flipped by the
        // first perf event) under TCG hit its own int3 on the other CPU and panicked (seen
        // once on 7.2). The suite needs no parallelism.
        Arch::Amd64 => {
            ("qemu-system-x86_64", &["-accel", "tcg", "-cpu", "max", "-smp", "1"], "ttyS0")
        }
        // `max` has pointer authentication (the return addresses the walk reads are
        // signed where the code asks); QEMU's own cipher for it, not the architected one,
        // which costs several times more to emulate.
        Arch::Arm64 => (
            "qemu-system-aarch64",
            &["-M", "virt", "-accel", "tcg", "-cpu", "max,pauth-impdef=on", "-smp", "1"],
            "ttyAMA0",
        ),
    };
    let mut child = Command::new(qemu)
        .args(machine)
        .args(["-m", "2G", "-nographic", "-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &format!("console={console} panic=-1 quiet")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {qemu}"))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let (tx, rx) = mpsc::channel();
    // Both pipes read to their end, whatever bytes they carry (the console is not all
    // UTF-8): a pipe left unread would block QEMU once full.
    for pipe in [Box::new(stdout) as Box<dyn std::io::Read + Send>, Box::new(stderr)] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                buf.clear();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut exit = None;
    let mut summary = String::from("no test result");
    let mut begun = false;
    let mut deadline = started + GUEST_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                writeln!(log, "{line}")?;
                // The console's escape sequences may precede a marker on its line.
                if line.contains(BEGIN) {
                    begun = true;
                } else if let Some((_, code)) = line.split_once(EXIT) {
                    exit = code.trim().parse::<i32>().ok();
                    // The suite is done: the guest gets a few seconds to power off.
                    deadline = deadline.min(Instant::now() + Duration::from_secs(20));
                } else if line.starts_with("test result:") {
                    line.trim_start_matches("test result: ").clone_into(&mut summary);
                }
                if begun && (line.starts_with("test ") || line.contains("panicked")) {
                    eprintln!("vm [{name}] {line}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                if exit.is_none() {
                    writeln!(log, "(xtask: killed after {GUEST_TIMEOUT:?})")?;
                    summary = format!("timed out after {} s", GUEST_TIMEOUT.as_secs());
                } else {
                    writeln!(log, "(xtask: killed: no power-off after the suite)")?;
                }
                break;
            }
        }
    }
    // Both pipes are closed or QEMU was killed: it exits.
    let _ = child.kill();
    let _ = child.wait();
    if !begun {
        summary = format!("the guest never ran the suite (see {})", log_path.display());
    }
    Ok(Outcome {
        kernel,
        arch,
        release: release.to_owned(),
        passed: exit == Some(0),
        summary,
        took: started.elapsed(),
        log: log_path,
    })
}
