//! Builds the BPF object (`leak-ebpf`, nightly, `bpfel-unknown-none`) into `OUT_DIR`, where
//! `loader` embeds it. Needs bpf-linker: `cargo xtask setup` installs it.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "leak-ebpf")
        .ok_or_else(|| anyhow!("leak-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("leak-ebpf manifest has no parent"))?
        .as_str()
        .to_owned();
    aya_build::build_ebpf(
        [Package { name: "leak-ebpf", root_dir: &root_dir, ..Default::default() }],
        Toolchain::default(),
    )
}
