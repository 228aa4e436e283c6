//! Which object serves `malloc` in a process, and where each probe goes in it.
use std::path::{Path, PathBuf};

use leak_common::{Func, Program};
use log::{debug, info, warn};

use crate::{
    elf::{ElfError, ElfImage},
    placement::{self, Needs, Placement},
    procfs::{self, RootPath},
};

/// Bytes decoded for a function whose symbol has no size.
const CODE_WINDOW: usize = 64;
/// At most this much of a function is decoded (allocator entry points are far smaller).
const MAX_FUNCTION_BYTES: usize = 64 * 1024;

/// Errors finding the allocator.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// `/proc/PID` is gone.
    #[error("no such process: {pid}")]
    NoSuchProcess {
        /// Pid.
        pid: u32,
    },
    /// `/proc/PID/maps` is unreadable.
    #[error("cannot read the memory map of process {pid} ({source}): run leak as root")]
    Maps {
        /// Pid.
        pid: u32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No mapped object defines malloc.
    #[error(
        "no malloc symbol in process {pid} ({exe}) or its libraries: it may be statically linked \
         without a symbol table; pass --lib PATH to name the object that defines malloc"
    )]
    NoMalloc {
        /// Pid.
        pid: u32,
        /// Its executable.
        exe: String,
    },
    /// `--lib` names an object without malloc.
    #[error("{path} does not define malloc: pass --lib the object that serves malloc")]
    LibWithoutMalloc {
        /// The object.
        path: String,
    },
    /// The object defines malloc but not a function that must be hooked with it.
    #[error("{path} defines malloc but not {symbol}: leak cannot account for its frees")]
    MissingRequired {
        /// The object.
        path: String,
        /// The missing symbol.
        symbol: &'static str,
    },
    /// `--lib` names an unreadable or non-ELF file.
    #[error("--lib: {0}")]
    Lib(#[source] ElfError),
}

/// One BPF program and the file offset it attaches at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    /// The hooked function (the attach cookie).
    pub func: Func,
    /// The symbol it was found under.
    pub symbol: &'static str,
    /// The program.
    pub program: Program,
    /// File offset of the function's first instruction.
    pub function_offset: u64,
    /// Where inside the function the probe sits.
    pub placement: Placement,
}

impl ProbePoint {
    /// File offset the probe attaches at.
    #[must_use]
    pub fn file_offset(&self) -> u64 {
        self.function_offset + self.placement.offset
    }
}

/// The allocator object of a process and the probes to attach to it.
#[derive(Clone, Debug)]
pub struct AllocatorPlan {
    /// The object's path as the target process sees it.
    pub path: String,
    /// The same file, reachable from our mount namespace.
    pub host_path: PathBuf,
    /// Probes to attach.
    pub probes: Vec<ProbePoint>,
    /// Allocator functions the object does not define (skipped).
    pub missing: Vec<&'static str>,
}

impl AllocatorPlan {
    /// The functions hooked, each once.
    #[must_use]
    pub fn funcs(&self) -> Vec<Func> {
        let mut funcs: Vec<Func> = self.probes.iter().map(|p| p.func).collect();
        funcs.sort_unstable();
        funcs.dedup();
        funcs
    }
}

/// Symbols hooked, in order, and the function each one is. A symbol at an address already
/// hooked is skipped: glibc's `aligned_alloc` and `memalign` are one function, and two sets of
/// probes there would count each call twice. `malloc` and `free` are required.
///
/// C++ `operator new`/`delete` (all variants) are hooked where the allocator object itself
/// defines them (jemalloc, tcmalloc); libstdc++'s call `malloc` and `free`, which are hooked.
const SYMBOLS: &[(&str, Func)] = &[
    ("malloc", Func::Malloc),
    ("free", Func::Free),
    ("calloc", Func::Calloc),
    ("realloc", Func::Realloc),
    ("posix_memalign", Func::PosixMemalign),
    ("aligned_alloc", Func::AlignedAlloc),
    ("memalign", Func::Memalign),
    ("valloc", Func::Valloc),
    ("pvalloc", Func::Pvalloc),
    ("reallocarray", Func::Reallocarray),
    ("_Znwm", Func::OperatorNew),
    ("_ZnwmRKSt9nothrow_t", Func::OperatorNew),
    ("_ZnwmSt11align_val_t", Func::OperatorNew),
    ("_ZnwmSt11align_val_tRKSt9nothrow_t", Func::OperatorNew),
    ("_Znam", Func::OperatorNewArray),
    ("_ZnamRKSt9nothrow_t", Func::OperatorNewArray),
    ("_ZnamSt11align_val_t", Func::OperatorNewArray),
    ("_ZnamSt11align_val_tRKSt9nothrow_t", Func::OperatorNewArray),
    ("_ZdlPv", Func::OperatorDelete),
    ("_ZdlPvm", Func::OperatorDelete),
    ("_ZdlPvRKSt9nothrow_t", Func::OperatorDelete),
    ("_ZdlPvSt11align_val_t", Func::OperatorDelete),
    ("_ZdlPvmSt11align_val_t", Func::OperatorDelete),
    ("_ZdlPvSt11align_val_tRKSt9nothrow_t", Func::OperatorDelete),
    ("_ZdaPv", Func::OperatorDeleteArray),
    ("_ZdaPvm", Func::OperatorDeleteArray),
    ("_ZdaPvRKSt9nothrow_t", Func::OperatorDeleteArray),
    ("_ZdaPvSt11align_val_t", Func::OperatorDeleteArray),
    ("_ZdaPvmSt11align_val_t", Func::OperatorDeleteArray),
    ("_ZdaPvSt11align_val_tRKSt9nothrow_t", Func::OperatorDeleteArray),
];

/// Finds the object that serves malloc in process `pid` (or uses `lib`) and plans the probes.
///
/// # Errors
/// See [`TargetError`].
pub fn plan_for_pid(pid: u32, lib: Option<&Path>) -> Result<AllocatorPlan, TargetError> {
    if !procfs::pid_exists(pid) {
        return Err(TargetError::NoSuchProcess { pid });
    }
    let maps = procfs::read_maps(pid).map_err(|source| {
        if procfs::pid_exists(pid) {
            TargetError::Maps { pid, source }
        } else {
            TargetError::NoSuchProcess { pid }
        }
    })?;
    let root = RootPath::of(pid);
    if let Some(lib) = lib {
        // A path as the target sees it (inside its root, for a container) first, else ours.
        let inside = root.resolve(&lib.to_string_lossy());
        let host = if inside.exists() { inside } else { lib.to_path_buf() };
        let image = ElfImage::open(&host).map_err(TargetError::Lib)?;
        let shown = lib.display().to_string();
        return plan_object(&image, shown.clone(), host)?
            .ok_or(TargetError::LibWithoutMalloc { path: shown });
    }
    let exe = procfs::exe(pid).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let preload = procfs::ld_preload(pid);
    for m in candidates(&maps, &exe, &preload) {
        let path = m.file_path().unwrap_or_default().to_owned();
        let host = object_path(pid, &root, m);
        let Ok(image) = ElfImage::open(&host) else {
            debug!("skipping {path}: not a readable ELF file");
            continue;
        };
        if let Some(plan) = plan_object(&image, path, host)? {
            return Ok(plan);
        }
    }
    Err(TargetError::NoMalloc { pid, exe })
}

/// The file behind mapping `m`, reachable from here. `/proc/PID/map_files` is the mapped file
/// itself even when the path now names another one (a library upgraded under a running
/// process, its old file deleted): probes attached through the path would sit in the new
/// file's inode and never fire. Opening it needs `CAP_SYS_ADMIN`; without it, the path
/// through the process's root, if it is still the same inode.
fn object_path(pid: u32, root: &RootPath, m: &procfs::MapEntry) -> PathBuf {
    use std::os::unix::fs::MetadataExt as _;
    let same_inode = |p: &Path| std::fs::metadata(p).is_ok_and(|md| md.ino() == m.inode);
    let direct = procfs::map_files_path(pid, m);
    if same_inode(&direct) {
        return direct;
    }
    let path = root.resolve(m.file_path().unwrap_or_default());
    if !same_inode(&path) {
        warn!(
            "{} was replaced on disk after process {pid} mapped it, and /proc/{pid}/map_files is \
             not readable: probes on it may never fire (run leak as root)",
            path.display()
        );
    }
    path
}

/// One mapping per mapped file, in the order the dynamic linker searches objects for `malloc`:
/// the executable, the `LD_PRELOAD` objects, the other libraries in address order, libc last
/// (a library the program links, such as libjemalloc, is loaded and searched before libc,
/// which every other library depends on).
fn candidates<'a>(
    maps: &'a [procfs::MapEntry],
    exe: &str,
    preload: &[String],
) -> Vec<&'a procfs::MapEntry> {
    let mut files: Vec<&procfs::MapEntry> = Vec::new();
    for m in maps.iter().filter(|m| m.is_file()) {
        if !files.iter().any(|f| f.file_path() == m.file_path()) {
            files.push(m);
        }
    }
    let base = |p: &str| p.rsplit('/').next().unwrap_or(p).to_owned();
    let is_libc = |p: &str| {
        let b = base(p);
        b.starts_with("libc.so")
            || b.starts_with("ld-musl")
            || (b.starts_with("libc-")
                && Path::new(&b).extension().is_some_and(|e| e.eq_ignore_ascii_case("so")))
    };
    let preload_rank = |p: &str| {
        preload
            .iter()
            .position(|want| if want.contains('/') { want == p } else { *want == base(p) })
    };
    let rank = |m: &&procfs::MapEntry| {
        let p = m.file_path().unwrap_or_default();
        if p == exe {
            (0, 0)
        } else if let Some(i) = preload_rank(p) {
            (1, i)
        } else if is_libc(p) {
            (3, 0)
        } else {
            (2, 0)
        }
    };
    // Stable: address order within a rank.
    files.sort_by_key(rank);
    files
}

/// Plans probes in one object; `Ok(None)` if it does not define malloc.
fn plan_object(
    image: &ElfImage,
    path: String,
    host_path: PathBuf,
) -> Result<Option<AllocatorPlan>, TargetError> {
    if image.function("malloc").is_none() {
        return Ok(None);
    }
    let mut probes: Vec<ProbePoint> = Vec::new();
    let mut missing: Vec<&'static str> = Vec::new();
    let mut hooked: Vec<(u64, &'static str)> = Vec::new();
    for &(symbol, func) in SYMBOLS {
        let Some(sym) = image.function(symbol) else {
            if func == Func::Free {
                // An allocator without free is not one we can account for.
                return Err(TargetError::MissingRequired { path, symbol });
            }
            if !missing.contains(&func.name()) {
                missing.push(func.name());
            }
            continue;
        };
        if let Some((_, first)) = hooked.iter().find(|(off, _)| *off == sym.file_offset) {
            info!("{symbol} is {first} (same address): hooked once");
            continue;
        }
        hooked.push((sym.file_offset, symbol));
        // The whole function: placement checks that no branch in it lands on the probe point.
        let window = if sym.size == 0 {
            CODE_WINDOW
        } else {
            usize::try_from(sym.size).unwrap_or(MAX_FUNCTION_BYTES).min(MAX_FUNCTION_BYTES)
        };
        let code = image.bytes_at(sym.file_offset, window);
        let programs = func.programs();
        let entry_args = programs.iter().map(|p| p.args_read()).max().unwrap_or(0);
        let ret = programs.iter().any(|p| p.is_return());
        let placement = placement::choose(code, Needs { entry_args, ret });
        info!(
            "{symbol}: probe at {path}+{:#x} (function +{}: {}{})",
            sym.file_offset + placement.offset,
            placement.offset,
            placement.instruction,
            if placement.emulated { ", emulated" } else { ", single-stepped" }
        );
        for &program in programs {
            probes.push(ProbePoint {
                func,
                symbol,
                program,
                function_offset: sym.file_offset,
                placement: placement.clone(),
            });
        }
    }
    // Defined under another symbol of the same function (e.g. only the sized delete).
    missing.retain(|name| !probes.iter().any(|p| p.func.name() == *name));
    if !missing.is_empty() {
        info!("{path} does not define {}: not hooked", missing.join(", "));
    }
    Ok(Some(AllocatorPlan { path, host_path, probes, missing }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::parse_maps;

    #[test]
    fn exe_then_preload_then_libraries_then_libc() {
        let maps = parse_maps(
            "1000-2000 r-xp 0 fe:01 5 /usr/lib/libfoo.so\n\
             2000-3000 r-xp 0 fe:01 6 /usr/lib/x86_64-linux-gnu/libc.so.6\n\
             3000-4000 r-xp 0 fe:01 7 /opt/app\n\
             4000-5000 r--p 0 fe:01 7 /opt/app\n\
             5000-6000 rw-p 0 00:00 0 [heap]\n\
             6000-7000 r-xp 0 fe:01 8 /usr/lib/libjemalloc.so.2\n\
             7000-8000 r-xp 0 fe:01 9 /usr/lib/libtcmalloc.so.4\n",
        );
        let order = |exe: &str, preload: &[&str]| -> Vec<String> {
            let preload: Vec<String> = preload.iter().map(|s| (*s).to_owned()).collect();
            candidates(&maps, exe, &preload)
                .iter()
                .map(|m| m.file_path().unwrap().rsplit('/').next().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            order("/opt/app", &[]),
            ["app", "libfoo.so", "libjemalloc.so.2", "libtcmalloc.so.4", "libc.so.6"]
        );
        assert_eq!(
            order("/opt/app", &["libtcmalloc.so.4", "/usr/lib/libjemalloc.so.2"]),
            ["app", "libtcmalloc.so.4", "libjemalloc.so.2", "libfoo.so", "libc.so.6"]
        );
        // One entry per file: the first mapping of /opt/app (address order).
        assert_eq!(candidates(&maps, "/opt/app", &[])[0].start, 0x3000);
    }

    #[test]
    fn plans_our_own_process() {
        let plan = plan_for_pid(std::process::id(), None).unwrap();
        assert!(plan.path.contains("libc"), "{}", plan.path);
        let funcs = plan.funcs();
        assert!(funcs.contains(&Func::Malloc) && funcs.contains(&Func::Free), "{funcs:?}");
        // Entry and return probes of one function share the offset (one trap per call).
        let at = |f: Func, p: Program| {
            plan.probes.iter().find(|x| x.func == f && x.program == p).unwrap().file_offset()
        };
        assert_eq!(at(Func::Malloc, Program::AllocEnter), at(Func::Malloc, Program::AllocExit));
        // No address is hooked twice (glibc's aligned_alloc is its memalign).
        let mut offsets: Vec<u64> = plan
            .probes
            .iter()
            .filter(|p| !p.program.is_return())
            .map(ProbePoint::file_offset)
            .collect();
        let n = offsets.len();
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(offsets.len(), n, "{:#?}", plan.probes);
    }

    #[test]
    fn missing_pid_and_lib_without_malloc() {
        assert!(matches!(plan_for_pid(u32::MAX - 1, None), Err(TargetError::NoSuchProcess { .. })));
        let me = std::process::id();
        let err = plan_for_pid(me, Some(Path::new("/nonexistent/libx.so"))).unwrap_err();
        assert!(matches!(err, TargetError::Lib(_)), "{err}");
    }
}
