//! Builds the fixtures into `OUT_DIR/fixtures`: the C ones with frame pointers, the build
//! matrix (`src/matrix.rs`) every way its table says, and one test per matrix case.
//!
//! Cross-built (`--target aarch64-unknown-linux-gnu`, for the arm64 kernel matrix): only what
//! the kernel suite runs, with Debian's cross compiler and binutils (`cargo xtask setup`).
use std::{
    env,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

#[path = "src/matrix.rs"]
#[allow(dead_code, reason = "the table's helpers serve the tests")]
mod matrix;

/// The compilers and binutils for the target: the host's, or Debian's cross ones.
struct Tools {
    /// `aarch64-linux-gnu-` when cross-building, else empty.
    prefix: String,
    /// The target's GNU triple (`aarch64-linux-gnu`) when cross-building.
    gnu: Option<String>,
}

impl Tools {
    fn new() -> Self {
        let (target, host) = (env::var("TARGET").expect("TARGET"), env::var("HOST").expect("HOST"));
        if target == host {
            return Self { prefix: String::new(), gnu: None };
        }
        // aarch64-unknown-linux-gnu -> aarch64-linux-gnu
        let gnu = target.replace("-unknown-", "-");
        Self { prefix: format!("{gnu}-"), gnu: Some(gnu) }
    }

    fn cross(&self) -> bool {
        self.gnu.is_some()
    }

    /// A tool of the target's binutils or GCC (`gcc`, `objcopy`, `strip`).
    fn tool(&self, name: &str) -> Command {
        Command::new(format!("{}{name}", self.prefix))
    }

    /// The C compiler. For aarch64 with pointer authentication and BTI, as Debian builds
    /// its arm64 packages since trixie: the return addresses the fixtures save are signed.
    fn cc(&self) -> Command {
        if !self.cross() {
            return Command::new("cc");
        }
        let mut cc = self.tool("gcc");
        cc.args(self.branch_protection());
        cc
    }

    /// `-mbranch-protection=standard` when building for aarch64.
    fn branch_protection(&self) -> &'static [&'static str] {
        match &self.gnu {
            Some(gnu) if gnu.starts_with("aarch64") => &["-mbranch-protection=standard"],
            _ => &[],
        }
    }
}

/// What the kernel suite (`tests/kernel.rs`) runs: all a cross build makes.
const KERNEL_FIXTURES: [&str; 7] =
    ["leaker", "mapper", "runner", "grower", "sampled", "nofp", "nofp-fp"];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("fixtures");
    fs::create_dir_all(&out).expect("create fixtures dir");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed=src/matrix.rs");
    let tools = Tools::new();
    build_c_fixtures(&src, &out, &tools);
    // Optimised without frame pointers (#7): only unwind tables give its callers. And the
    // same source with them, as the reference.
    for (name, flags) in [
        ("nofp", &["-O2", "-fomit-frame-pointer", "-fno-optimize-sibling-calls"][..]),
        ("nofp-fp", &["-O0", "-fno-omit-frame-pointer", "-fno-inline"][..]),
    ] {
        let status = tools
            .cc()
            .args(flags)
            .args(["-g", "-pthread", "-o"])
            .arg(out.join(name))
            .arg(src.join("nofp.c"))
            .status()
            .expect("run cc");
        assert!(status.success(), "cc failed for fixture {name}");
    }
    if tools.cross() {
        build_matrix(&src, &out, &tools);
        println!("cargo:rustc-env=FIXTURES_DIR={}", out.display());
        return;
    }
    // A library loaded after leak attached, and its loader, without frame pointers.
    let nofp = ["-O2", "-g", "-fomit-frame-pointer", "-fno-optimize-sibling-calls"];
    for (name, source, extra) in [
        ("libplugin.so", "plugin", &["-shared", "-fPIC"][..]),
        (
            "libreuse.so",
            "plugin",
            &[
                "-shared",
                "-fPIC",
                "-DSIZE=555",
                "-DPAD",
                "-Dplugin_level3=reuse_level3",
                "-Dplugin_level2=reuse_level2",
            ][..],
        ),
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
    // The demo's program (`cargo xtask demo`), as the demo builds it: tests/integration/html.rs.
    let demo = src.join("../../xtask/programs/demo.c");
    println!("cargo:rerun-if-changed={}", demo.display());
    let status = Command::new("cc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(out.join("demo"))
        .arg(&demo)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed for the demo");
    cxx_fixtures(&src, &out);
    rust_fixtures(&src, &out);
    build_matrix(&src, &out, &tools);
    println!("cargo:rustc-env=FIXTURES_DIR={}", out.display());
}

/// The C fixtures built the one way: at -O0 with frame pointers, each its own flags.
fn build_c_fixtures(src: &Path, out: &Path, tools: &Tools) {
    // -O0 with frame pointers and no inlining: every fixture function is a frame of its own,
    // and the frame-pointer walk sees the whole chain.
    // -w: the fixtures call allocators with sizes gcc knows to fail, on purpose.
    let common = ["-O0", "-g", "-fno-omit-frame-pointer", "-fno-inline", "-w"];
    let jemalloc_archive = "/usr/lib/x86_64-linux-gnu/libjemalloc.a";
    // (output, source, flags before the source, flags after it)
    let tcmalloc_archive = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.a";
    let builds: [(&str, &str, &[&str], &[&str]); 19] = [
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
        // Allocations through allocator wrappers (zmalloc, a project's own).
        ("wrapped", "wrapped", &[], &[]),
        ("sampled", "sampled", &[], &[]),
        // The growth profile's busy process.
        ("grower", "grower", &["-pthread"], &[]),
        (
            "grower-jemalloc",
            "grower",
            &["-pthread"],
            &[jemalloc_archive, "-lstdc++", "-lpthread", "-lm"],
        ),
        // The soak's population (`cargo xtask soak`).
        ("soaker", "soaker", &["-pthread"], &["-ldl"]),
        (
            "nomalloc",
            "nomalloc",
            &["-static", "-nostdlib", "-ffreestanding", "-fno-stack-protector"],
            &[],
        ),
    ];
    for (name, source, before, after) in builds {
        if tools.cross() && !KERNEL_FIXTURES.contains(&name) {
            continue;
        }
        let status = tools
            .cc()
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
}

/// The C++ fixtures, through libstdc++'s operator new/delete.
fn cxx_fixtures(src: &Path, out: &Path) {
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
    let status = Command::new("c++")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-fno-inline", "-pthread", "-o"])
        .arg(out.join("grower-cxx"))
        .arg(src.join("grower.cpp"))
        .status()
        .expect("run c++");
    assert!(status.success(), "c++ failed for fixture grower-cxx");
}

/// The Rust fixtures, on the system allocator.
fn rust_fixtures(src: &Path, out: &Path) {
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
    // The growth profile's busy process (optimised enough that filling a block is a memset).
    let status = Command::new(&rustc)
        .args(["--edition", "2024", "-C", "opt-level=1", "-C", "force-frame-pointers=yes"])
        .args(["-C", "debuginfo=2", "-o"])
        .arg(out.join("rust-grower"))
        .arg(src.join("rust_grower.rs"))
        .status()
        .expect("run rustc");
    assert!(status.success(), "rustc failed for fixture rust-grower");
}

/// Runs `cmd`, panicking with `what` if it fails.
fn check(cmd: &mut Command, what: &str) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{what}: {e} (cargo xtask setup)"));
    assert!(status.success(), "{what} failed: {cmd:?}");
}

/// Builds every case of the matrix and writes `OUT_DIR/matrix_tests.rs`, a test per case.
fn build_matrix(src: &Path, out: &Path, tools: &Tools) {
    use matrix::{Compiler, Debug, Lang, Link, Linker};
    let mut tests = String::new();
    for case in matrix::CASES {
        let name = case.name();
        if tools.cross() && !matrix::KERNEL_SUBSET.contains(&name.as_str()) {
            continue;
        }
        let bin = out.join(&name);
        let mut cmd = match case.compiler {
            Compiler::Rustc => {
                let mut cmd = Command::new(env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()));
                cmd.args(["--edition", "2021", "-C", "opt-level=3", "-C"]);
                cmd.arg("force-frame-pointers=".to_owned() + yes_no(case.frame_pointers));
                // debug = 1 (line tables), or debug = 0 as cargo's release builds it: std's
                // prebuilt debug info stripped too.
                match case.debug {
                    Debug::Symtab => cmd.args(["-C", "debuginfo=0", "-C", "strip=debuginfo"]),
                    _ => cmd.args(["-C", "debuginfo=1"]),
                };
                match case.linker {
                    Linker::Lld => {}
                    Linker::Bfd => {
                        cmd.args(["-C", "linker-features=-lld"]);
                    }
                    other => {
                        cmd.args(["-C", "linker-features=-lld", "-C"]);
                        cmd.arg(format!("link-arg=-fuse-ld={}", other.ld()));
                    }
                }
                cmd.arg(src.join("rust_leaker.rs"));
                cmd
            }
            compiler => {
                let (driver, source) = match (compiler, case.lang) {
                    (Compiler::Gcc, Lang::Cxx) => ("g++", "matrix.cpp"),
                    (Compiler::Clang, Lang::Cxx) => ("clang++", "matrix.cpp"),
                    (Compiler::Gcc, _) => ("gcc", "matrix.c"),
                    _ => ("clang", "matrix.c"),
                };
                let mut cmd = match (&tools.gnu, compiler) {
                    (None, _) => Command::new(driver),
                    (Some(_), Compiler::Gcc) => tools.tool(driver),
                    (Some(gnu), _) => {
                        let mut c = Command::new(driver);
                        c.arg(format!("--target={gnu}"));
                        c
                    }
                };
                cmd.args(tools.branch_protection());
                cmd.args(["-O2", "-g", "-w", "-fno-optimize-sibling-calls"]);
                cmd.arg(if case.frame_pointers {
                    "-fno-omit-frame-pointer"
                } else {
                    "-fomit-frame-pointer"
                });
                if tools.cross() && case.linker == Linker::Mold {
                    // A cross GCC looks for `<triple>-ld.mold`: mold's own directory instead.
                    cmd.arg("-B/usr/libexec/mold");
                } else {
                    cmd.arg(format!("-fuse-ld={}", case.linker.ld()));
                }
                cmd.args(match case.link {
                    Link::Pie => &["-fPIE", "-pie"][..],
                    Link::NoPie => &["-fno-pie", "-no-pie"],
                    Link::Static => &["-static"],
                    Link::StaticPie => &["-fPIE", "-static-pie"],
                });
                if case.debug == Debug::Dynsym {
                    cmd.arg("-rdynamic");
                }
                // Each case a build of its own (its own build id), as every build in the world.
                cmd.arg(format!("-DMATRIX_CASE=\"{name}\""));
                cmd.arg(src.join(source));
                cmd
            }
        };
        check(cmd.arg("-o").arg(&bin), &format!("building matrix case {name}"));
        split_debug(case.debug, &bin, out, tools);
        let test = name.replace('-', "_");
        let _ = write!(tests, "#[test]\nfn {test}() {{\n    matrix_case(\"{name}\");\n}}\n\n");
    }
    let generated = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("matrix_tests.rs");
    fs::write(generated, tests).expect("write matrix_tests.rs");
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Moves or compresses `bin`'s debug info as `debug` says, with binutils as distributions do.
fn split_debug(debug: matrix::Debug, bin: &Path, out: &Path, tools: &Tools) {
    use matrix::Debug;
    let objcopy = || tools.tool("objcopy");
    let file_name = bin.file_name().expect("file name").to_str().expect("utf-8");
    match debug {
        Debug::InFile => {}
        Debug::Zlib | Debug::Zstd => {
            let kind = if debug == Debug::Zlib { "zlib" } else { "zstd" };
            check(
                objcopy().arg(format!("--compress-debug-sections={kind}")).arg(bin),
                "objcopy --compress-debug-sections",
            );
        }
        Debug::Symtab => check(tools.tool("strip").arg("--strip-debug").arg(bin), "strip"),
        Debug::Dynsym => check(tools.tool("strip").arg("--strip-all").arg(bin), "strip"),
        Debug::Debuglink => {
            // The link names the file; it is looked for next to the executable.
            let debug_file = out.join(format!("{file_name}.debug"));
            check(objcopy().arg("--only-keep-debug").arg(bin).arg(&debug_file), "objcopy");
            check(
                objcopy()
                    .arg("--strip-debug")
                    .arg(format!("--add-gnu-debuglink={file_name}.debug"))
                    .arg(bin)
                    .current_dir(out),
                "objcopy --add-gnu-debuglink",
            );
        }
        Debug::BuildId => {
            let id = build_id(bin);
            let dir = out.join(matrix::DEBUG_DIR).join(".build-id").join(&id[..2]);
            fs::create_dir_all(&dir).expect("create the build-id directory");
            let debug_file = dir.join(format!("{}.debug", &id[2..]));
            check(objcopy().arg("--only-keep-debug").arg(bin).arg(&debug_file), "objcopy");
            check(tools.tool("strip").arg("--strip-debug").arg(bin), "strip");
        }
    }
}

/// `bin`'s GNU build id in hex (every linker here writes one by default through the drivers).
fn build_id(bin: &Path) -> String {
    let out = Command::new("readelf").arg("-n").arg(bin).output().expect("run readelf");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("{} has no build id", bin.display()))
        .trim()
        .to_owned()
}
