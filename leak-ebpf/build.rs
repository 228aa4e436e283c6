//! Rebuild the BPF object when bpf-linker changes (a new LLVM can change codegen): cargo does not
//! track the linker, so name it as an input. Same trick as aya-template. And say which
//! architecture's registers the programs read (`bpf_target_arch`, see `src/regs.rs`) when
//! aya-build has not (the crate checked on its own: `AYA_BPF_TARGET_ARCH`, else the host's).
use which::which;

fn main() {
    if let Err(e) = aya_build::emit_bpf_target_arch_cfg() {
        println!("cargo:warning=cannot tell the BPF target architecture: {e}");
    }
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found on PATH: run `cargo xtask setup`"),
    }
}
