//! `cargo xtask build --target T`: the release binary for another architecture, cross-built on
//! this machine with both BPF objects for it (aya-build builds them for the target's
//! architecture: `bpf_target_arch` selects `leak-ebpf/src/regs.rs`'s registers). Debian's
//! cross compiler links it and compiles the C of its dependencies (ring, zstd).
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{
    setup::setup_build,
    util::{apt_install, cargo, output, run, workspace_root},
};

/// The arm64 target, which the tests also need the C library of (`cargo xtask setup`).
pub const AARCH64: &str = "aarch64-unknown-linux-gnu";

/// A target `leak` cross-builds for: its triple, Debian's cross packages, the C compiler they
/// install, and the ELF machine its binaries carry.
pub struct Cross {
    triple: &'static str,
    packages: &'static [&'static str],
    /// The C compiler (and linker driver) for the target.
    cc: &'static str,
    machine: u16,
}

const TARGETS: [Cross; 2] = [
    Cross { triple: "x86_64-unknown-linux-gnu", packages: &[], cc: "cc", machine: 0x3e },
    Cross {
        triple: "aarch64-unknown-linux-gnu",
        packages: &["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"],
        cc: "aarch64-linux-gnu-gcc",
        machine: 0xb7,
    },
];

/// Installs what building for `triple` needs (idempotent): Debian's cross compiler and C
/// library, and the target's Rust standard library.
pub fn ensure(triple: &str) -> Result<&'static Cross> {
    let Some(cross) = TARGETS.iter().find(|t| t.triple == triple) else {
        let known: Vec<&str> = TARGETS.iter().map(|t| t.triple).collect();
        bail!("no cross toolchain known for {triple}: use one of {}", known.join(", "));
    };
    apt_install(cross.packages, &format!("A C cross compiler and C library for {triple}"))?;
    ensure_rust_target(triple)?;
    Ok(cross)
}

/// `cargo` building for `triple` (after [`ensure`]): the target's C compiler links it and
/// compiles its dependencies' C.
pub fn cargo_for(triple: &str) -> Result<Command> {
    let cross = ensure(triple)?;
    let mut c = cargo();
    let upper = triple.to_uppercase().replace('-', "_");
    c.env(format!("CARGO_TARGET_{upper}_LINKER"), cross.cc)
        .env(format!("CC_{}", triple.replace('-', "_")), cross.cc);
    Ok(c)
}

/// Builds `target/<triple>/release/leak` and returns its path.
pub fn build(triple: &str) -> Result<std::path::PathBuf> {
    setup_build()?;
    let cross = ensure(triple)?;
    run(cargo_for(triple)?.args(["build", "--release", "-p", "leak-user", "--target", triple]))?;
    let bin = workspace_root().join("target").join(triple).join("release/leak");
    let data = std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    // e_machine: bytes 18-19 of the ELF header (little-endian on both targets).
    let machine = data.get(18..20).map(|b| u16::from_le_bytes([b[0], b[1]]));
    if !data.starts_with(b"\x7fELF") || machine != Some(cross.machine) {
        bail!("{} is not a {triple} executable (ELF machine {machine:?})", bin.display());
    }
    #[expect(clippy::cast_precision_loss, reason = "a size in MiB, to one decimal")]
    let mib = data.len() as f64 / f64::from(1 << 20);
    eprintln!("build: {} ({triple}, {mib:.1} MiB)", bin.display());
    Ok(bin)
}

/// The standard library for `triple`, added to the toolchain that runs this task.
fn ensure_rust_target(triple: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))
        .context("rustup is needed to add the target's standard library")?;
    if installed.lines().any(|l| l.trim() == triple) {
        return Ok(());
    }
    eprintln!("setup: rustup target add {triple}");
    run(Command::new("rustup").args(["target", "add", triple]))
}
