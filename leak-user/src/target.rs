//! Which object serves `malloc` in a process, and where each probe goes in it.
use std::path::{Path, PathBuf};

use leak_common::Probe;
use log::{debug, info};

use crate::{
    elf::{ElfError, ElfImage},
    placement::{self, Needs, Placement},
    procfs::{self, RootPath},
};

/// Bytes decoded at the start of each function to choose the probe point.
const CODE_WINDOW: usize = 64;

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
        // A path that exists here is taken as is; otherwise as a path inside the target's root.
        let host =
            if lib.exists() { lib.to_path_buf() } else { root.resolve(&lib.to_string_lossy()) };
        let image = ElfImage::open(&host).map_err(TargetError::Lib)?;
        let shown = lib.display().to_string();
        return plan_object(&image, shown.clone(), host)
            .ok_or(TargetError::LibWithoutMalloc { path: shown });
    }
    let exe = procfs::exe(pid).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    for path in candidates(&maps, &exe) {
        let host = root.resolve(&path);
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

/// Mapped files in the order the dynamic linker searches them for a symbol: the executable,
/// then libc, then the rest in address order. (`LD_PRELOAD` order is refined later.)
fn candidates(maps: &[procfs::MapEntry], exe: &str) -> Vec<String> {
    let mut files: Vec<String> = Vec::new();
    for m in maps.iter().filter(|m| m.is_file()) {
        if let Some(p) = m.file_path()
            && !files.iter().any(|f| f == p)
        {
            files.push(p.to_owned());
        }
    }
    let is_libc = |p: &str| {
        let base = p.rsplit('/').next().unwrap_or(p);
        base.starts_with("libc.so")
            || (base.starts_with("libc-")
                && Path::new(base).extension().is_some_and(|e| e.eq_ignore_ascii_case("so")))
    };
    let rank = |p: &str| {
        if p == exe {
            0
        } else if is_libc(p) {
            1
        } else {
            2
        }
    };
    files.sort_by_key(|p| rank(p));
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
        let window = if sym.size == 0 {
            CODE_WINDOW
        } else {
            CODE_WINDOW.min(usize::try_from(sym.size).unwrap_or(CODE_WINDOW))
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
    fn exe_then_libc_then_the_rest() {
        let maps = parse_maps(
            "1000-2000 r-xp 0 fe:01 5 /usr/lib/libfoo.so\n\
             2000-3000 r-xp 0 fe:01 6 /usr/lib/x86_64-linux-gnu/libc.so.6\n\
             3000-4000 r-xp 0 fe:01 7 /opt/app\n\
             4000-5000 r--p 0 fe:01 7 /opt/app\n\
             5000-6000 rw-p 0 00:00 0 [heap]\n",
        );
        assert_eq!(
            candidates(&maps, "/opt/app"),
            ["/opt/app", "/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/libfoo.so"]
        );
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
