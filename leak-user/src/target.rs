//! Which object serves `malloc` in a process, and where each probe goes in it.
use std::path::{Path, PathBuf};

use leak_common::Probe;
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
    /// `--lib` names an unreadable or non-ELF file.
    #[error("--lib: {0}")]
    Lib(#[source] ElfError),
}

/// One BPF program and the file offset it attaches at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    /// The program.
    pub probe: Probe,
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

/// Functions hooked, whether each is required, and what its probes need.
const FUNCTIONS: [(&str, bool, &[Probe]); 4] = [
    ("malloc", true, &[Probe::MallocEnter, Probe::MallocExit]),
    ("free", true, &[Probe::FreeEnter]),
    ("calloc", false, &[Probe::CallocEnter, Probe::CallocExit]),
    ("realloc", false, &[Probe::ReallocEnter, Probe::ReallocExit]),
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
        return plan_object(&image, shown.clone(), host)
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
        if let Some(plan) = plan_object(&image, path, host) {
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

/// Plans probes in one object; `None` if it does not define malloc.
fn plan_object(image: &ElfImage, path: String, host_path: PathBuf) -> Option<AllocatorPlan> {
    image.function("malloc")?;
    let mut probes = Vec::new();
    let mut missing = Vec::new();
    for (name, required, progs) in FUNCTIONS {
        let Some(sym) = image.function(name) else {
            if required {
                // An allocator without free is not one we can account for.
                return None;
            }
            missing.push(name);
            continue;
        };
        // The whole function: placement checks that no branch in it lands on the probe point.
        let window = if sym.size == 0 {
            CODE_WINDOW
        } else {
            usize::try_from(sym.size).unwrap_or(MAX_FUNCTION_BYTES).min(MAX_FUNCTION_BYTES)
        };
        let code = image.bytes_at(sym.file_offset, window);
        let entry_args = progs.iter().map(|p| p.args_read()).max().unwrap_or(0);
        let ret = progs.iter().any(|p| p.is_return());
        let placement = placement::choose(code, Needs { entry_args, ret });
        info!(
            "{name}: probe at {path}+{:#x} (function +{}: {}{})",
            sym.file_offset + placement.offset,
            placement.offset,
            placement.instruction,
            if placement.emulated { ", emulated" } else { ", single-stepped" }
        );
        for &probe in progs {
            probes.push(ProbePoint {
                probe,
                function_offset: sym.file_offset,
                placement: placement.clone(),
            });
        }
    }
    if !missing.is_empty() {
        info!("{path} does not define {}: not hooked", missing.join(", "));
    }
    Some(AllocatorPlan { path, host_path, probes, missing })
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
        let progs: Vec<Probe> = plan.probes.iter().map(|p| p.probe).collect();
        assert!(progs.contains(&Probe::MallocEnter) && progs.contains(&Probe::FreeEnter));
        // Entry and return probes of one function share the offset (one trap per call).
        let at = |p: Probe| plan.probes.iter().find(|x| x.probe == p).unwrap().file_offset();
        assert_eq!(at(Probe::MallocEnter), at(Probe::MallocExit));
    }

    #[test]
    fn missing_pid_and_lib_without_malloc() {
        assert!(matches!(plan_for_pid(u32::MAX - 1, None), Err(TargetError::NoSuchProcess { .. })));
        let me = std::process::id();
        let err = plan_for_pid(me, Some(Path::new("/nonexistent/libx.so"))).unwrap_err();
        assert!(matches!(err, TargetError::Lib(_)), "{err}");
    }
}
