//! Rebuild the BPF object when bpf-linker changes (a new LLVM can change codegen): cargo does not
//! track the linker, so name it as an input. Same trick as aya-template.
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found on PATH: run `cargo xtask setup`"),
    }
}
