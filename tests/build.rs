//! Builds the C fixtures with frame pointers into `OUT_DIR/fixtures`.
use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("fixtures");
    fs::create_dir_all(&out).expect("create fixtures dir");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    println!("cargo:rerun-if-changed={}", src.display());
    // -O0 with frame pointers and no inlining: every fixture function is a frame of its own,
    // and the frame-pointer walk sees the whole chain.
    let common = ["-O0", "-g", "-fno-omit-frame-pointer", "-fno-inline"];
    let builds: [(&str, &[&str]); 4] = [
        ("leaker", &[]),
        ("threads", &["-pthread"]),
        ("runner", &[]),
        ("nomalloc", &["-static", "-nostdlib", "-ffreestanding", "-fno-stack-protector"]),
    ];
    for (name, extra) in builds {
        let status = Command::new("cc")
            .args(common)
            .args(extra)
            .arg("-o")
            .arg(out.join(name))
            .arg(src.join(format!("{name}.c")))
            .status()
            .expect("run cc (install a C compiler: cargo xtask setup)");
        assert!(status.success(), "cc failed for fixture {name}");
    }
    println!("cargo:rustc-env=FIXTURES_DIR={}", out.display());
}
