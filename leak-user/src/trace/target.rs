//! Which objects serve the allocator functions of a process, and where each probe goes.
//!
//! Each symbol is resolved as the dynamic linker binds it: its first definition in the search
//! order (the executable, `LD_PRELOAD` objects, then the `DT_NEEDED` dependencies breadth
//! first, then objects loaded later with `dlopen`).
use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::{Path, PathBuf},
};

use log::{debug, info, warn};

use crate::{
    analysis::model::HookInfo,
    analysis::report::{AllocatorInfo, ProbeInfo},
    procfs::{self, MapEntry, RootPath},
    trace::elf::{ElfError, ElfImage, FunctionSym},
    trace::hooks::{self, HookKind, HookSpec},
    trace::placement::{self, Needs, Placement},
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
    #[error("cannot read the memory map of process {pid} ({source}): {hint}")]
    Maps {
        /// Pid.
        pid: u32,
        /// Cause.
        #[source]
        source: std::io::Error,
        /// What to do, true for who leak runs as.
        hint: &'static str,
    },
    /// A kernel thread: no user memory, no allocator.
    #[error(
        "process {pid} ({comm}) is a kernel thread: it has no user memory or allocator to trace"
    )]
    KernelThread {
        /// Pid.
        pid: u32,
        /// Its name.
        comm: String,
    },
    /// A Go program without a C allocator (no cgo).
    #[error(
        "process {pid} ({exe}) is a Go program: its heap is the Go runtime's, not malloc's, and \
         it uses no C allocator leak can hook; watch its memory with `leak watch --pid {pid}` \
         and find what grows with Go's heap profile (net/http/pprof, go tool pprof)"
    )]
    Go {
        /// Pid.
        pid: u32,
        /// Its executable.
        exe: String,
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
    /// The executable has no symbol table at all, and no library defines malloc.
    #[error(
        "{path} is stripped (no symbol table) and no library it uses defines malloc: leak cannot \
         find its allocator; trace an unstripped build, or pass --lib an object that defines malloc"
    )]
    Stripped {
        /// The executable.
        path: String,
    },
    /// malloc is defined but free is not.
    #[error("{path} defines malloc but no object defines free: leak cannot account for frees")]
    MissingFree {
        /// The object that defines malloc.
        path: String,
    },
    /// `--lib` names an unreadable or non-ELF file.
    #[error("--lib: {0}")]
    Lib(#[source] ElfError),
}

/// What to do when a process's memory map is refused: true for who leak runs as (root is not
/// told to run as root).
#[must_use]
pub fn maps_hint(root: bool, sys_ptrace: bool) -> &'static str {
    match (root, sys_ptrace) {
        (false, _) => "run leak as root",
        (true, false) => {
            "leak runs as root without CAP_SYS_PTRACE, which reading another user's process \
             needs: add it"
        }
        // Root with every means and still refused: the process is protected from us.
        (true, true) => {
            "the kernel refuses it although leak runs as root (a process of a parent user \
             namespace, or guarded by a security module): leak cannot trace it"
        }
    }
}

/// An object (executable or shared library) with hooked functions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    /// Path as the target process sees it.
    pub path: String,
    /// The same file, reachable from our mount namespace.
    pub host_path: PathBuf,
}

/// One hooked function: a symbol in one object, with its probe point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    /// What is hooked.
    pub spec: HookSpec,
    /// Index into [`AllocatorPlan::objects`].
    pub object: usize,
    /// File offset of the function's first instruction.
    pub function_offset: u64,
    /// Where inside the function its probes sit.
    pub placement: Placement,
}

impl Hook {
    /// File offset the probes attach at.
    #[must_use]
    pub fn file_offset(&self) -> u64 {
        self.function_offset + self.placement.offset
    }
}

/// The hooks of a process. A hook's index is its attach cookie (`leak_common::MAX_HOOKS`).
#[derive(Clone, Debug)]
pub struct AllocatorPlan {
    /// Objects with hooks.
    pub objects: Vec<Object>,
    /// Hooks, `malloc` first.
    pub hooks: Vec<Hook>,
}

impl AllocatorPlan {
    /// The hooks whose breakpoint is not in process `pid`'s memory: the kernel writes an
    /// `int3` (0xcc) over the probed instruction of every process a uprobe is armed in, so
    /// reading the instruction back through `/proc/PID/mem` tells whether it is. Hooks whose
    /// code is not mapped, or cannot be read, are not listed.
    #[must_use]
    pub fn unarmed(&self, pid: u32) -> Vec<&Hook> {
        use std::os::unix::fs::FileExt as _;
        let (Ok(maps), Ok(mem)) =
            (crate::procfs::read_maps(pid), std::fs::File::open(format!("/proc/{pid}/mem")))
        else {
            return Vec::new();
        };
        self.hooks
            .iter()
            .filter(|h| {
                let Some(addr) = self.runtime_address(h, &maps) else { return false };
                let mut byte = [0u8];
                mem.read_exact_at(&mut byte, addr).is_ok() && byte[0] != 0xcc
            })
            .collect()
    }

    /// Where each hook's probe lies in process `pid`'s memory (by hook index), where its
    /// object is mapped.
    #[must_use]
    pub fn runtime_addresses(&self, pid: u32) -> Vec<Option<u64>> {
        let maps = crate::procfs::read_maps(pid).unwrap_or_default();
        self.hooks.iter().map(|h| self.runtime_address(h, &maps)).collect()
    }

    /// Where hook `h`'s probe lies in a process with mappings `maps`.
    fn runtime_address(&self, h: &Hook, maps: &[crate::procfs::MapEntry]) -> Option<u64> {
        let path = &self.objects[h.object].path;
        let off = h.file_offset();
        let m = maps.iter().find(|m| {
            m.perms.contains('x')
                // A library replaced on disk since it was mapped is still the object.
                && m.file_path() == Some(path.as_str())
                && (m.offset..m.offset + (m.end - m.start)).contains(&off)
        })?;
        Some(m.start + (off - m.offset))
    }

    /// The allocator and where its probes sit, for the report.
    #[must_use]
    pub fn allocator_info(&self) -> AllocatorInfo {
        AllocatorInfo {
            path: self.malloc_object().path.clone(),
            probes: self
                .hooks
                .iter()
                .flat_map(|h| {
                    h.spec.kind.programs().iter().map(move |p| ProbeInfo {
                        function: h.spec.display.clone(),
                        object: self.objects[h.object].path.clone(),
                        symbol: h.spec.symbol.clone(),
                        program: p.name().to_owned(),
                        function_offset: h.placement.offset,
                        emulated: h.placement.emulated,
                    })
                })
                .collect(),
        }
    }

    /// What the report needs to know of each hook, by cookie.
    #[must_use]
    pub fn hook_infos(&self) -> Vec<HookInfo> {
        self.hooks
            .iter()
            .map(|h| HookInfo {
                symbol: h.spec.symbol.clone(),
                display: h.spec.display.clone(),
                has_exit: h.spec.kind.has_exit(),
            })
            .collect()
    }

    /// The object serving `malloc`.
    #[must_use]
    pub fn malloc_object(&self) -> &Object {
        &self.objects[self.hooks[0].object]
    }

    /// Report names of the hooks, by cookie.
    #[must_use]
    pub fn names(&self) -> Vec<String> {
        self.hooks.iter().map(|h| h.spec.display.clone()).collect()
    }

    /// Number of BPF programs to attach.
    #[must_use]
    pub fn probe_count(&self) -> usize {
        self.hooks.iter().map(|h| h.spec.kind.programs().len()).sum()
    }
}

/// Finds the objects that serve the allocator functions of process `pid` (or only `lib`) and
/// plans the probes.
///
/// # Errors
/// See [`TargetError`].
pub fn plan_for_pid(pid: u32, lib: Option<&Path>) -> Result<AllocatorPlan, TargetError> {
    if !procfs::pid_exists(pid) {
        return Err(TargetError::NoSuchProcess { pid });
    }
    if procfs::is_kernel_thread(pid) {
        return Err(TargetError::KernelThread { pid, comm: procfs::comm(pid).unwrap_or_default() });
    }
    let maps = procfs::read_maps(pid).map_err(|source| {
        if !procfs::pid_exists(pid) {
            return TargetError::NoSuchProcess { pid };
        }
        let ptrace = crate::trace::caps::has_capability(crate::trace::caps::CAP_SYS_PTRACE);
        TargetError::Maps { pid, source, hint: maps_hint(procfs::is_root(), ptrace) }
    })?;
    let root = RootPath::of(pid);
    if let Some(lib) = lib {
        // A path as the target sees it (inside its root, for a container) first, else ours.
        let inside = root.resolve(&lib.to_string_lossy());
        let host = if inside.exists() { inside } else { lib.to_path_buf() };
        let image = ElfImage::open(&host).map_err(TargetError::Lib)?;
        let shown = lib.display().to_string();
        let objects = vec![(Object { path: shown.clone(), host_path: host }, image)];
        return plan(&objects)?.ok_or(TargetError::LibWithoutMalloc { path: shown });
    }
    let exe = procfs::exe(pid).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    // One entry per mapped file, opened once.
    let mut files: Vec<(Object, ElfImage)> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for m in maps.iter().filter(|m| m.is_file()) {
        let path = m.file_path().unwrap_or_default();
        if !seen.insert(path) {
            continue;
        }
        let host = object_path(pid, &root, m);
        match ElfImage::open(&host) {
            Ok(image) => files.push((Object { path: path.to_owned(), host_path: host }, image)),
            Err(e) => debug!("skipping {path}: {e}"),
        }
    }
    let linked: Vec<Linked> = files
        .iter()
        .map(|(o, image)| {
            let (soname, needed) = image.dynamic_deps();
            Linked { path: o.path.clone(), soname, needed }
        })
        .collect();
    let order = link_order(&linked, &exe, &procfs::ld_preload(pid));
    debug!(
        "search order: {}",
        order.iter().map(|&i| linked[i].path.as_str()).collect::<Vec<_>>().join(" ")
    );
    let mut ordered: Vec<Option<(Object, ElfImage)>> = files.into_iter().map(Some).collect();
    let ordered: Vec<(Object, ElfImage)> =
        order.iter().filter_map(|&i| ordered[i].take()).collect();
    if let Some(plan) = plan(&ordered)? {
        return Ok(plan);
    }
    let main = ordered.iter().find(|(o, _)| o.path == exe).map(|(_, image)| image);
    Err(if main.is_some_and(ElfImage::is_go) {
        TargetError::Go { pid, exe }
    } else if main.is_some_and(|image| !image.has_symbols()) {
        TargetError::Stripped { path: exe }
    } else {
        TargetError::NoMalloc { pid, exe }
    })
}

/// Dynamic-linking facts of one object, for [`link_order`].
#[derive(Clone, Debug, Default)]
pub struct Linked {
    /// Path.
    pub path: String,
    /// `DT_SONAME`.
    pub soname: Option<String>,
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
}

/// The dynamic linker's symbol search order over `objs` (indexes): the executable, the
/// `LD_PRELOAD` objects, their dependencies breadth first, then the objects no dependency
/// names (loaded later with `dlopen`), in address order.
#[must_use]
pub fn link_order(objs: &[Linked], exe: &str, preload: &[String]) -> Vec<usize> {
    let base = |p: &str| p.rsplit('/').next().unwrap_or(p).to_owned();
    let find = |name: &str| {
        // By path, or by name against the soname or the file name: LD_PRELOAD and DT_NEEDED
        // often name a symlink (libtcmalloc_minimal.so.4 -> libtcmalloc_minimal.so.4.5.10).
        let wanted = base(name);
        objs.iter().position(|o| {
            o.path == name
                || o.soname.as_deref() == Some(wanted.as_str())
                || base(&o.path) == wanted
        })
    };
    let mut order: Vec<usize> = Vec::new();
    let push = |i: usize, order: &mut Vec<usize>| {
        if !order.contains(&i) {
            order.push(i);
        }
    };
    if let Some(i) = objs.iter().position(|o| o.path == exe) {
        push(i, &mut order);
    }
    for p in preload {
        if let Some(i) = find(p) {
            push(i, &mut order);
        }
    }
    let mut queue: VecDeque<usize> = order.iter().copied().collect();
    while let Some(i) = queue.pop_front() {
        for n in &objs[i].needed {
            if let Some(j) = find(n)
                && !order.contains(&j)
            {
                order.push(j);
                queue.push_back(j);
            }
        }
    }
    for i in 0..objs.len() {
        push(i, &mut order);
    }
    order
}

/// Resolves every hookable symbol to its first definition among `objects` (in search order)
/// and places its probes. `Ok(None)` if no object defines `malloc`.
fn plan(objects: &[(Object, ElfImage)]) -> Result<Option<AllocatorPlan>, TargetError> {
    let specs = hooks::specs();
    let wanted: HashSet<&str> = specs.iter().map(|s| s.symbol.as_str()).collect();
    let defined: Vec<HashMap<String, FunctionSym>> =
        objects.iter().map(|(_, image)| image.functions(&wanted)).collect();
    let mut used: Vec<usize> = Vec::new();
    let mut hooks: Vec<Hook> = Vec::new();
    let mut missing: Vec<&str> = Vec::new();
    for spec in &specs {
        let Some((obj, sym)) =
            defined.iter().enumerate().find_map(|(i, d)| d.get(&spec.symbol).map(|s| (i, *s)))
        else {
            missing.push(&spec.symbol);
            continue;
        };
        // A C++ operator delete outside an allocator (libstdc++'s is `jmp free@plt`) frees
        // through the hooked free; hooked itself, it would leave free an unknown pointer.
        // (Its operator new is hooked: it has no frame pointer, so only at its own return is
        // the function that called new frame 0.)
        if spec.kind == HookKind::Free
            && spec.symbol.starts_with("_Zd")
            && !defined[obj].contains_key("free")
        {
            debug!(
                "{}: {} does not define free, its delete calls free",
                spec.symbol, objects[obj].0.path
            );
            continue;
        }
        let path = &objects[obj].0.path;
        if let Some(first) =
            hooks.iter().find(|h| used[h.object] == obj && h.function_offset == sym.file_offset)
        {
            info!("{} is {} (same address in {path}): hooked once", spec.symbol, first.spec.symbol);
            continue;
        }
        let object = used.iter().position(|&o| o == obj).unwrap_or_else(|| {
            used.push(obj);
            used.len() - 1
        });
        let placement = place(&objects[obj].1, &sym, spec);
        info!(
            "{}: probe at {path}+{:#x} (function +{}: {}{})",
            spec.symbol,
            sym.file_offset + placement.offset,
            placement.offset,
            placement.instruction,
            if placement.emulated { ", emulated" } else { ", single-stepped" }
        );
        hooks.push(Hook {
            spec: spec.clone(),
            object,
            function_offset: sym.file_offset,
            placement,
        });
    }
    if hooks.first().is_none_or(|h| h.spec.symbol != "malloc") {
        return Ok(None);
    }
    if !hooks.iter().any(|h| h.spec.symbol == "free") {
        return Err(TargetError::MissingFree { path: objects[used[0]].0.path.clone() });
    }
    info!("not defined by any object, not hooked: {}", missing.join(" "));
    let objects = used.iter().map(|&i| objects[i].0.clone()).collect();
    Ok(Some(AllocatorPlan { objects, hooks }))
}

/// Chooses the probe point of one function (the whole function is decoded: placement checks
/// that no branch in it lands on the point).
fn place(image: &ElfImage, sym: &FunctionSym, spec: &HookSpec) -> Placement {
    let window = if sym.size == 0 {
        CODE_WINDOW
    } else {
        usize::try_from(sym.size).unwrap_or(MAX_FUNCTION_BYTES).min(MAX_FUNCTION_BYTES)
    };
    let code = image.bytes_at(sym.file_offset, window);
    let programs = spec.kind.programs();
    let entry_args = programs.iter().map(|p| p.args_read()).max().unwrap_or(0);
    let ret = programs.iter().any(|p| p.is_return());
    // munmap needs no stack and acts on success: after its syscall is as good as its entry.
    if spec.kind == HookKind::Munmap
        && let Some(after) = placement::after_syscall(code, entry_args)
    {
        return after;
    }
    placement::choose(code, Needs { entry_args, ret })
}

/// The file behind mapping `m`, reachable from here (see [`procfs::locate`]). Not the path
/// alone: a library upgraded under a running process is another file now, and probes attached
/// through the path would sit in the new file's inode and never fire.
fn object_path(pid: u32, root: &RootPath, m: &MapEntry) -> PathBuf {
    procfs::locate(pid, root, m).unwrap_or_else(|| {
        let path = root.resolve(m.file_path().unwrap_or_default());
        warn!(
            "{} was replaced on disk after process {pid} mapped it, and /proc/{pid}/map_files is \
             not readable: probes on it may never fire (run leak as root)",
            path.display()
        );
        path
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_memory_map_gets_advice_true_for_who_asks() {
        assert_eq!(maps_hint(false, false), "run leak as root");
        assert!(maps_hint(true, false).contains("without CAP_SYS_PTRACE"));
        let protected = maps_hint(true, true);
        assert!(protected.contains("although leak runs as root"), "{protected}");
        assert!(!maps_hint(true, true).contains("run leak as root"));
        assert!(!maps_hint(true, false).contains("run leak as root"));
    }

    fn linked(path: &str, soname: Option<&str>, needed: &[&str]) -> Linked {
        Linked {
            path: path.into(),
            soname: soname.map(Into::into),
            needed: needed.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn link_order_is_exe_preload_then_breadth_first() {
        let objs = [
            linked("/lib/libc.so.6", Some("libc.so.6"), &["ld-linux-x86-64.so.2"]),
            linked("/lib/libfoo.so.1", Some("libfoo.so.1"), &["libbar.so.2", "libc.so.6"]),
            linked("/opt/app", None, &["libfoo.so.1", "libjemalloc.so.2", "libc.so.6"]),
            linked("/lib/libbar.so.2.0.1", Some("libbar.so.2"), &["libc.so.6"]),
            linked("/lib/libjemalloc.so.2", Some("libjemalloc.so.2"), &["libc.so.6"]),
            linked("/lib/ld-linux-x86-64.so.2", Some("ld-linux-x86-64.so.2"), &[]),
            linked("/lib/libtcmalloc.so.4.5.10", Some("libtcmalloc.so.4"), &["libc.so.6"]),
            linked("/plugins/dlopened.so", Some("dlopened.so"), &["libc.so.6"]),
        ];
        let names = |order: Vec<usize>| -> Vec<String> {
            order.iter().map(|&i| objs[i].path.rsplit('/').next().unwrap().to_owned()).collect()
        };
        assert_eq!(
            names(link_order(&objs, "/opt/app", &[])),
            [
                "app",
                "libfoo.so.1",
                "libjemalloc.so.2",
                "libc.so.6",
                "libbar.so.2.0.1",
                "ld-linux-x86-64.so.2",
                "libtcmalloc.so.4.5.10",
                "dlopened.so",
            ]
        );
        // LD_PRELOAD, here a symlink to the mapped file, comes right after the executable.
        let order = names(link_order(&objs, "/opt/app", &["/lib/libtcmalloc.so.4".into()]));
        assert_eq!(&order[..3], ["app", "libtcmalloc.so.4.5.10", "libfoo.so.1"]);
        // A static executable: nothing needed, itself first.
        let objs = [linked("/lib/libc.so.6", None, &[]), linked("/static", None, &[])];
        assert_eq!(link_order(&objs, "/static", &[]), [1, 0]);
    }

    #[test]
    fn plans_our_own_process() {
        let plan = plan_for_pid(std::process::id(), None).unwrap();
        assert!(plan.malloc_object().path.contains("libc"), "{}", plan.malloc_object().path);
        let names = plan.names();
        assert_eq!(&names[..2], ["malloc", "free"]);
        // No address is hooked twice (glibc's aligned_alloc is its memalign).
        let mut at: Vec<(usize, u64)> =
            plan.hooks.iter().map(|h| (h.object, h.function_offset)).collect();
        let n = at.len();
        at.sort_unstable();
        at.dedup();
        assert_eq!(at.len(), n, "{:#?}", plan.hooks);
        assert!(
            names.contains(&"aligned_alloc".to_owned()) && !names.contains(&"memalign".to_owned())
        );
        // glibc defines the standard set; free has no return probe, the others have two.
        for name in ["calloc", "realloc", "posix_memalign", "valloc", "pvalloc", "reallocarray"] {
            assert!(names.contains(&name.to_owned()), "{name} in {names:?}");
        }
        // Return probes for all but free and munmap.
        assert_eq!(plan.probe_count(), 2 * plan.hooks.len() - 2, "{names:?}");
        // glibc's munmap is `mov $11,%eax; syscall; cmp; jae`: probed on the jae.
        let munmap = plan.hooks.iter().find(|h| h.spec.symbol == "munmap").unwrap();
        assert!(munmap.placement.after_syscall && munmap.placement.emulated, "{munmap:?}");
    }

    #[test]
    fn missing_pid_and_lib_without_malloc() {
        assert!(matches!(plan_for_pid(u32::MAX - 1, None), Err(TargetError::NoSuchProcess { .. })));
        let me = std::process::id();
        let err = plan_for_pid(me, Some(Path::new("/nonexistent/libx.so"))).unwrap_err();
        assert!(matches!(err, TargetError::Lib(_)), "{err}");
    }
}
