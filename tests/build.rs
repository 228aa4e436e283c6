//! Builds the C fixtures with frame pointers into `OUT_DIR/fixtures`.
use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("fixtures");
    fs::create_dir_all(&out).expect("create fixtures dir");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    println!("cargo:rerun-if-changed={}", src.display());
    // -O0 with frame pointers and no inlining: every fixture function is a frame of its own,
    // and the frame-pointer walk sees the whole chain.
    // -w: the fixtures call allocators with sizes gcc knows to fail, on purpose.
    let common = ["-O0", "-g", "-fno-omit-frame-pointer", "-fno-inline", "-w"];
    let jemalloc_archive = "/usr/lib/x86_64-linux-gnu/libjemalloc.a";
    // (output, source, flags before the source, flags after it)
    let tcmalloc_archive = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.a";
    let builds: [(&str, &str, &[&str], &[&str]); 15] = [
        ("leaker", "leaker", &[], &[]),
        // glibc's malloc inside the executable: symbols from .symtab, no dynamic linking.
        ("leaker-static", "leaker", &["-static"], &[]),
        // jemalloc linked into a dynamic executable (as Rust's jemallocator does): the
        // executable's malloc comes before libc's.
        ("leaker-jemalloc", "leaker", &[], &[jemalloc_archive, "-lstdc++", "-lpthread", "-lm"]),
        ("leaker-tcmalloc", "leaker", &[], &[tcmalloc_archive, "-lstdc++", "-lpthread", "-lm"]),
        // Static and stripped: no symbol table to find malloc in.
        ("leaker-stripped", "leaker", &["-static", "-s"], &[]),
        ("threads", "threads", &["-pthread"], &[]),
        ("mapper", "mapper", &[], &[]),
        ("execer", "execer", &[], &[]),
        ("forker", "forker", &[], &[]),
        ("pidreuse", "pidreuse", &[], &[]),
        // Exported prefixed allocator names (-rdynamic: in the dynamic symbol table too).
        ("prefixed", "prefixed", &["-rdynamic"], &[]),
        ("runner", "runner", &[], &[]),
        ("cacher", "cacher", &[], &[]),
        ("sampled", "sampled", &[], &[]),
        (
            "nomalloc",
            "nomalloc",
            &["-static", "-nostdlib", "-ffreestanding", "-fno-stack-protector"],
            &[],
        ),
    ];
    for (name, source, before, after) in builds {
        let status = Command::new("cc")
            .args(common)
            .args(before)
            .arg("-o")
            .arg(out.join(name))
            .arg(src.join(format!("{source}.c")))
            .args(after)
            .status()
            .expect("run cc (install a C compiler: cargo xtask setup)");
        assert!(
            status.success(),
            "cc failed for fixture {name} (missing libraries: cargo xtask setup)"
        );
    }
    // Optimised without frame pointers (#7): only unwind tables give its callers. And the
    // same source with them, as the reference.
    for (name, flags) in [
        ("nofp", &["-O2", "-fomit-frame-pointer", "-fno-optimize-sibling-calls"][..]),
        ("nofp-fp", &["-O0", "-fno-omit-frame-pointer", "-fno-inline"][..]),
    ] {
        let status = Command::new("cc")
            .args(flags)
            .args(["-g", "-pthread", "-o"])
            .arg(out.join(name))
            .arg(src.join("nofp.c"))
            .status()
            .expect("run cc");
        assert!(status.success(), "cc failed for fixture {name}");
    }
    // A library loaded after leak attached, and its loader, without frame pointers.
    let nofp = ["-O2", "-g", "-fomit-frame-pointer", "-fno-optimize-sibling-calls"];
    for (name, source, extra) in [
        ("libplugin.so", "plugin", &["-shared", "-fPIC"][..]),
        ("dlopener", "dlopener", &["-ldl"][..]),
    ] {
        let status = Command::new("cc")
            .args(nofp)
            .arg("-o")
            .arg(out.join(name))
            .arg(src.join(format!("{source}.c")))
            .args(extra)
            .status()
            .expect("run cc");
        assert!(status.success(), "cc failed for fixture {name}");
    }
    // C++ through libstdc++'s operator new/delete.
    let status = Command::new("c++")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-fno-inline", "-o"])
        .arg(out.join("cxx-leaker"))
        .arg(src.join("cxx_leaker.cpp"))
        .status()
        .expect("run c++ (install g++: cargo xtask setup)");
    assert!(status.success(), "c++ failed for fixture cxx-leaker");
    // The same, optimised without frame pointers (#7).
    let status = Command::new("c++")
        .args(["-O2", "-g", "-fomit-frame-pointer", "-fno-optimize-sibling-calls", "-o"])
        .arg(out.join("cxx-leaker-nofp"))
        .arg(src.join("cxx_leaker.cpp"))
        .status()
        .expect("run c++");
    assert!(status.success(), "c++ failed for fixture cxx-leaker-nofp");
    rust_fixtures(&src, &out);
    println!("cargo:rustc-env=FIXTURES_DIR={}", out.display());
}

/// The Rust fixtures, on the system allocator.
fn rust_fixtures(src: &std::path::Path, out: &std::path::Path) {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let builds: [(&str, &[&str]); 2] = [
        // Frame pointers in the fixture's own code (std is prebuilt without them).
        (
            "rust-leaker",
            &["-C", "force-frame-pointers=yes", "-C", "debuginfo=2", "-C", "opt-level=0"],
        ),
        // As Rust builds a release by default: optimised, no frame pointers, linked by rustc's
        // own LLD (the default on x86-64 Linux since 1.90), line tables only.
        (
            "rust-leaker-release",
            &[
                "-C",
                "opt-level=3",
                "-C",
                "debuginfo=line-tables-only",
                "-C",
                "force-frame-pointers=no",
            ],
        ),
    ];
    for (name, flags) in builds {
        let status = Command::new(&rustc)
            .args(["--edition", "2021"])
            .args(flags)
            .arg("-o")
            .arg(out.join(name))
            .arg(src.join("rust_leaker.rs"))
            .status()
            .expect("run rustc");
        assert!(status.success(), "rustc failed for fixture {name}");
    }
}
