//! `cargo xtask image` (#16): `deploy/Dockerfile`, the file users build, built here with
//! podman on a machine that reaches Debian's archive but no container registry. The
//! Dockerfile's two base images are build arguments; here they are local stand-ins:
//! - the runtime base: a Debian bookworm root file system made with `debootstrap`, with the
//!   same APT sources as Docker Hub's `debian:bookworm` (security updates included);
//! - the builder: that same system with the environment of Docker Hub's `rust:1-bookworm`
//!   (`RUSTUP_HOME`, `CARGO_HOME`, `PATH`), and this machine's own Rust toolchain and cargo
//!   home mounted there during the build (rustup cannot download one here).
//!
//! One image per architecture (amd64, arm64: #27) and a manifest list of them; the arm64
//! runtime base is debootstrapped under qemu-user-static, and the builder cross-builds.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cross,
    util::{apt_install, is_root, output, run, workspace_root},
    vm::Arch,
};

/// The runtime base image's stand-in.
pub const BASE: &str = "localhost/debian:bookworm";
/// The builder image's stand-in.
pub const BUILDER: &str = "localhost/leak-builder:bookworm";
/// APT sources of Docker Hub's `debian:bookworm` (debootstrap writes only the first).
const SOURCES: &str = "deb http://deb.debian.org/debian bookworm main\n\
                       deb http://deb.debian.org/debian bookworm-updates main\n\
                       deb http://deb.debian.org/debian-security bookworm-security main\n";
/// `rust:1-bookworm`'s environment.
const RUST_ENV: &str = "ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
                        PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:\
                        /usr/bin:/sbin:/bin\n";

/// `podman` as this kind of machine runs it: crun refuses a host that mounts cgroup v1
/// controllers next to v2, runc does not.
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc"]);
    c
}

/// Options `podman run` and `podman build` need here: without them runc fails to raise
/// `RLIMIT_NOFILE` and `RLIMIT_NPROC` past this machine's hard limits (`setrlimit ...:
/// Operation not permitted`).
pub const LIMITS: [&str; 4] = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"];

/// podman, runc, debootstrap, and qemu-user-static for the arm64 image (Debian's packages).
pub fn ensure_tools() -> Result<()> {
    apt_install(
        &["podman", "runc", "debootstrap", "qemu-user-static", "binfmt-support"],
        "podman, runc, debootstrap and qemu-user-static (the image is built and run with them)",
    )
}

/// Builds `tag` from `deploy/Dockerfile` for each of `arches` (#27): one image per
/// architecture, `TAG-amd64` and `TAG-arm64`, and `tag` a manifest list of them, as a
/// registry serves a multi-arch image (`podman run tag` picks the host's). The builder
/// stage runs on the host and cross-builds for the others; the arm64 stage's own step
/// (`useradd`) runs under qemu-user-static.
pub fn build(tag: &str, arches: &[Arch]) -> Result<()> {
    if !is_root() {
        bail!("building the image needs root (debootstrap, rootful podman): run it with sudo");
    }
    ensure_tools()?;
    ensure_base(Arch::host())?;
    ensure_builder()?;
    let mut images = Vec::new();
    for &arch in arches {
        let one = format!("{tag}-{}", arch.debian());
        build_one(&one, arch)?;
        images.push(one);
    }
    // The list is made anew: `manifest add` appends, and an old list names old images (it
    // may name removed ones: `image inspect` then fails on it, so no lookup first). The name
    // may also be a plain image, as `cargo xtask image` made it before #27.
    let _ = podman().args(["manifest", "rm", tag]).output();
    let _ = podman().args(["rmi", "--force", tag]).output();
    run(podman().args(["manifest", "create", tag]))?;
    for one in &images {
        run(podman().args(["manifest", "add", tag]).arg(format!("containers-storage:{one}")))?;
    }
    eprintln!("image: {tag} is a manifest list of {}", images.join(", "));
    Ok(())
}

/// `tag`: the image for `arch`.
fn build_one(tag: &str, arch: Arch) -> Result<()> {
    let base = ensure_base(arch)?;
    let home = PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let rustup = env::var_os("RUSTUP_HOME").map_or_else(|| home.join(".rustup"), PathBuf::from);
    let cargo_home = env::var_os("CARGO_HOME").map_or_else(|| home.join(".cargo"), PathBuf::from);
    let root = workspace_root();
    if let Some(triple) = arch.rust_target() {
        // The builder mounts this machine's toolchain read-only: it needs the target's
        // standard library already.
        cross::ensure(triple)?;
    }
    eprintln!("image: building {tag} from deploy/Dockerfile (a release build: minutes)");
    let old = image_id(tag);
    run(podman()
        .arg("build")
        .args(LIMITS)
        .args(["--platform", &format!("linux/{}", arch.debian())])
        // buildah 1.28 (podman 4.3, Debian 12's) does not set it (see the Dockerfile).
        .args(["--build-arg", &format!("BUILDPLATFORM=linux/{}", Arch::host().debian())])
        .args(["--network", "host", "--build-arg", &format!("BUILDER={BUILDER}")])
        .args(["--build-arg", &format!("BASE={base}")])
        .arg("--volume")
        .arg(format!("{}:/usr/local/rustup:ro", rustup.display()))
        .arg("--volume")
        .arg(format!("{}:/usr/local/cargo", cargo_home.display()))
        .args(["-f", "deploy/Dockerfile", "-t", tag, "."])
        .current_dir(&root))?;
    forget(tag, old.as_deref());
    let size = output(podman().args(["image", "inspect", "--format", "{{.Size}}", tag]))
        .and_then(|s| s.trim().parse::<u64>().ok())
        .context("podman image inspect")?;
    #[expect(clippy::cast_precision_loss, reason = "a size in MB")]
    let mb = size as f64 / 1e6;
    eprintln!("image: {tag} is {mb:.1} MB");
    Ok(())
}

fn image_id(name: &str) -> Option<String> {
    output(podman().args(["image", "inspect", "--format", "{{.Id}}", name]))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Removes what a build leaves behind: the image `tag` named before it (now untagged) and
/// the builder stages of earlier builds, kept as layer caches (they took 2.8 GB each and
/// filled this machine's disk after a day of builds). Only images that are ours (the
/// builder stage's label) or were `tag` are removed; a failure to remove is only said.
fn forget(tag: &str, old: Option<&str>) {
    if let Some(old) = old
        && image_id(tag).as_deref() != Some(old)
    {
        let _ = podman().args(["rmi", "--force", old]).output();
    }
    let pruned = podman()
        .args(["image", "prune", "--force", "--filter", "label=dev.leak.stage=builder"])
        .output();
    if !pruned.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "image: could not remove the builder stages of earlier builds (podman image prune)"
        );
    }
}

fn image_exists(name: &str) -> bool {
    podman().args(["image", "exists", name]).status().is_ok_and(|s| s.success())
}

/// The runtime base's stand-in for `arch`: `debootstrap --variant=minbase bookworm`,
/// imported as an image of that architecture (arm64's second stage runs under
/// qemu-user-static).
fn ensure_base(arch: Arch) -> Result<String> {
    let name =
        if arch == Arch::host() { BASE.to_owned() } else { format!("{BASE}-{}", arch.debian()) };
    // The arm64 stage's own step (useradd) runs emulated too: registered at every build,
    // as a reboot forgets it.
    if arch != Arch::host() {
        ensure_emulation(arch)?;
    }
    if image_exists(&name) {
        return Ok(name);
    }
    let rootfs = workspace_root().join(format!("target/image/rootfs-{}", arch.debian()));
    if rootfs.exists() {
        fs::remove_dir_all(&rootfs).context("removing an old root file system")?;
    }
    fs::create_dir_all(&rootfs)?;
    eprintln!(
        "image: debootstrap bookworm ({}) into {} (a minute; minutes under emulation)",
        arch.debian(),
        rootfs.display()
    );
    run(Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--arch={}", arch.debian()), "bookworm"])
        .arg(&rootfs)
        .arg("http://deb.debian.org/debian"))?;
    fs::write(rootfs.join("etc/apt/sources.list"), SOURCES)?;
    clear(&rootfs.join("var/cache/apt/archives"))?;
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["-c", "."])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting tar")?;
    let imported = podman()
        .args(["import", "--arch", arch.debian(), "-", &name])
        .stdin(tar.stdout.context("tar's stdout")?)
        .status()
        .context("podman import")?;
    if !imported.success() {
        bail!("podman import of {} failed", rootfs.display());
    }
    fs::remove_dir_all(&rootfs)?;
    Ok(name)
}

/// Programs of `arch` run here under qemu-user-static: its `binfmt_misc` entry, which a
/// machine loses at each boot, registered (`update-binfmts`, with the F flag: the emulator
/// is opened at registration, so it works inside containers too).
pub fn ensure_emulation(arch: Arch) -> Result<()> {
    ensure_tools()?;
    let qemu = match arch {
        Arch::Amd64 => "qemu-x86_64",
        Arch::Arm64 => "qemu-aarch64",
    };
    let misc = Path::new("/proc/sys/fs/binfmt_misc");
    if !misc.join("register").exists() {
        run(Command::new("mount").args(["-t", "binfmt_misc", "binfmt_misc"]).arg(misc))?;
    }
    let entry = misc.join(qemu);
    if !fs::read_to_string(&entry).is_ok_and(|s| s.starts_with("enabled")) {
        run(Command::new("update-binfmts").args(["--enable", qemu]))?;
    }
    if !fs::read_to_string(&entry).is_ok_and(|s| s.starts_with("enabled")) {
        bail!(
            "{} is not enabled after update-binfmts: programs of {} cannot run here",
            entry.display(),
            arch.debian()
        );
    }
    Ok(())
}

/// The builder: the base with `rust:1-bookworm`'s environment.
fn ensure_builder() -> Result<()> {
    if image_exists(BUILDER) {
        return Ok(());
    }
    let dir = workspace_root().join("target/image/builder");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("Containerfile"), format!("FROM {BASE}\n{RUST_ENV}"))?;
    run(podman().arg("build").args(LIMITS).args(["-t", BUILDER]).arg(&dir))
}

/// Removes the `.deb` files in `dir`.
fn clear(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "deb") {
            fs::remove_file(p)?;
        }
    }
    Ok(())
}
