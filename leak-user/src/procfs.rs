//! `/proc/PID/*`: parsers are pure functions of the file text; readers are thin wrappers.
use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::analysis::history::ProcessMemory;

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Permission string, e.g. `r-xp`.
    pub perms: String,
    /// File offset of `start`.
    pub offset: u64,
    /// Inode of the mapped file (0 for anonymous mappings).
    pub inode: u64,
    /// Path as the process sees it (its mount namespace), or a pseudo name such as `[heap]`.
    pub path: Option<String>,
}

impl MapEntry {
    /// A file-backed mapping (not anonymous, not `[heap]`/`[stack]`/`[vdso]`...).
    #[must_use]
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.as_deref().is_some_and(|p| p.starts_with('/'))
    }

    /// Executable mapping.
    #[must_use]
    pub fn is_exec(&self) -> bool {
        self.perms.as_bytes().get(2) == Some(&b'x')
    }

    /// The path without a trailing ` (deleted)`.
    #[must_use]
    pub fn file_path(&self) -> Option<&str> {
        self.path.as_deref().map(|p| p.strip_suffix(" (deleted)").unwrap_or(p))
    }
}

/// Parses the text of `/proc/PID/maps`. Malformed lines are skipped.
#[must_use]
pub fn parse_maps(text: &str) -> Vec<MapEntry> {
    text.lines().filter_map(parse_maps_line).collect()
}

fn parse_maps_line(line: &str) -> Option<MapEntry> {
    let mut rest = line;
    let mut field = || -> Option<&str> {
        let t = rest.trim_start();
        let end = t.find(' ').unwrap_or(t.len());
        let (f, r) = t.split_at(end);
        rest = r;
        (!f.is_empty()).then_some(f)
    };
    let range = field()?;
    let perms = field()?.to_owned();
    let offset = u64::from_str_radix(field()?, 16).ok()?;
    let _dev = field()?;
    let inode = field()?.parse().ok()?;
    let (s, e) = range.split_once('-')?;
    let start = u64::from_str_radix(s, 16).ok()?;
    let end = u64::from_str_radix(e, 16).ok()?;
    // The path is the rest of the line and may contain spaces.
    let path = rest.trim_start();
    let path = (!path.is_empty()).then(|| path.to_owned());
    Some(MapEntry { start, end, perms, offset, inode, path })
}

/// Finds the mapping containing `addr` in maps sorted by address (as the kernel lists them).
#[must_use]
pub fn find_mapping(maps: &[MapEntry], addr: u64) -> Option<&MapEntry> {
    let i = maps.partition_point(|m| m.end <= addr);
    maps.get(i).filter(|m| m.start <= addr && addr < m.end)
}

/// Reads `/proc/PID/maps`.
///
/// # Errors
/// The process does not exist or is not readable.
pub fn read_maps(pid: u32) -> io::Result<Vec<MapEntry>> {
    Ok(parse_maps(&fs::read_to_string(format!("/proc/{pid}/maps"))?))
}

/// Whether `/proc/PID` exists (a live or zombie process).
#[must_use]
pub fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `/proc/PID/comm` without the newline.
#[must_use]
pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim_end().to_owned())
}

/// Target of `/proc/PID/exe`, as the process sees it.
#[must_use]
pub fn exe(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// The thread group (process) id of task `pid`: a thread id given as `--pid` means its process.
#[must_use]
pub fn tgid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_tgid(&status)
}

/// The `Tgid:` field of a `/proc/PID/status` text.
#[must_use]
pub fn parse_status_tgid(status: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

/// Whether process `pid` is still running: `/proc/PID` exists and it is not a zombie.
#[must_use]
pub fn is_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesized comm, which may itself contain ") ".
        Ok(stat) => {
            stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()) != Some("Z")
        }
        Err(_) => false,
    }
}

/// Whether process `pid` is gone or on its way out: a zombie, exiting (`PF_EXITING`), or
/// with a SIGKILL pending (the OOM killer's, before a thread takes it). An OOM victim can
/// take a while to die (its memory is freed as it exits), and samples taken meanwhile must
/// not count the kill as past.
#[must_use]
pub fn is_dying(pid: u32) -> bool {
    let (Ok(stat), Ok(status)) = (
        fs::read_to_string(format!("/proc/{pid}/stat")),
        fs::read_to_string(format!("/proc/{pid}/status")),
    ) else {
        return true;
    };
    parse_dying(&stat, &status)
}

/// [`is_dying`] of a `/proc/PID/stat` and a `/proc/PID/status` text.
#[must_use]
pub fn parse_dying(stat: &str, status: &str) -> bool {
    const PF_EXITING: u64 = 0x4;
    const SIGKILL_BIT: u64 = 1 << (9 - 1);
    let Some(close) = stat.rfind(')') else { return true };
    let mut fields = stat[close + 1..].split_whitespace();
    let state = fields.next();
    let flags = fields.nth(9 - 4).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let pending = status.lines().any(|l| {
        l.strip_prefix("ShdPnd:")
            .or_else(|| l.strip_prefix("SigPnd:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_some_and(|mask| mask & SIGKILL_BIT != 0)
    });
    matches!(state, Some("Z" | "X" | "x")) || flags & PF_EXITING != 0 || pending
}

/// The entries of `LD_PRELOAD` in a NUL-separated environment block (`/proc/PID/environ`).
#[must_use]
pub fn parse_ld_preload(environ: &[u8]) -> Vec<String> {
    environ
        .split(|&b| b == 0)
        .filter_map(|var| var.strip_prefix(b"LD_PRELOAD="))
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split([':', ' ', '\t'])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `LD_PRELOAD` of process `pid` (empty when unset or unreadable).
#[must_use]
pub fn ld_preload(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/environ")).map(|e| parse_ld_preload(&e)).unwrap_or_default()
}

/// `/proc/PID/map_files/<range>` of a mapping: the very file the process mapped, even if it has
/// since been deleted or replaced on disk, and from any mount namespace.
#[must_use]
pub fn map_files_path(pid: u32, m: &MapEntry) -> PathBuf {
    // The kernel names these entries with at least 8 hex digits, like /proc/PID/maps does.
    PathBuf::from(format!("/proc/{pid}/map_files/{:08x}-{:08x}", m.start, m.end))
}

/// Start time of process `pid`, in clock ticks after boot.
#[must_use]
pub fn start_time(pid: u32) -> Option<u64> {
    parse_stat_start_time(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The `starttime` field (22) of a `/proc/PID/stat` text.
#[must_use]
pub fn parse_stat_start_time(stat: &str) -> Option<u64> {
    // comm is in parentheses and may contain spaces and ')': split at the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    // The fields after comm start at field 3 (state).
    after.split_whitespace().nth(22 - 3).and_then(|f| f.parse().ok())
}

/// Longest command line kept (reports name processes by it; a process may set a huge one).
const MAX_CMDLINE: usize = 256;

/// Process `pid`'s command line, its arguments joined by spaces (at most [`MAX_CMDLINE`]
/// characters): three `python3`s are told apart by what they run.
#[must_use]
pub fn cmdline(pid: u32) -> Option<String> {
    let bytes = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(parse_cmdline(&bytes))
}

/// `/proc/PID/cmdline` bytes (NUL-separated) as one line.
#[must_use]
pub fn parse_cmdline(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let joined = text.trim_end_matches('\0').replace('\0', " ");
    match joined.char_indices().nth(MAX_CMDLINE) {
        Some((at, _)) => format!("{}...", &joined[..at]),
        None => joined,
    }
}

/// The program a command line runs: its first word's file name (`/usr/bin/python3 app.py`
/// -> `python3`).
#[must_use]
pub fn program_of(cmdline: &str) -> &str {
    let first = cmdline.split(' ').next().unwrap_or("");
    first.rsplit('/').next().unwrap_or(first)
}

/// The name a process's main executable goes by in its stacks: the program it ran, when that
/// differs from the file's name (`redis-server`, a link to `redis-check-rdb`) and its
/// command line and `comm` (the name exec'd, cut at 15 bytes) agree on it; else `None`, the
/// file's own name.
#[must_use]
pub fn run_name(exe: &str, cmdline: &str, comm: &str) -> Option<String> {
    let file = exe.rsplit('/').next()?;
    let ran = program_of(cmdline);
    if ran.is_empty() || ran == file || comm.is_empty() {
        return None;
    }
    (ran.starts_with(comm) || comm.starts_with(ran)).then(|| ran.to_owned())
}

/// A command line as a table shows it: its program's file name and its arguments
/// (`/usr/bin/python3 app.py` -> `python3 app.py`).
#[must_use]
pub fn short_command(cmdline: &str) -> String {
    match cmdline.split_once(' ') {
        Some((first, rest)) => format!("{} {rest}", program_of(first)),
        None => program_of(cmdline).to_owned(),
    }
}

/// Whether `pid` is a kernel thread (no user memory of its own).
#[must_use]
pub fn is_kernel_thread(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| parse_stat_kernel_thread(&s))
}

/// Whether the `flags` field (9) of a `/proc/PID/stat` text has `PF_KTHREAD`.
#[must_use]
pub fn parse_stat_kernel_thread(stat: &str) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let Some(close) = stat.rfind(')') else { return false };
    stat[close + 1..]
        .split_whitespace()
        .nth(9 - 3)
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// Whether this process runs as root (effective uid 0): advice to "run as root" would not
/// help then.
#[must_use]
pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A path, reachable from here, to the very file behind mapping `m` of process `pid` (the
/// same inode): `/proc/PID/map_files/<range>` (the mapped file itself, from any mount
/// namespace, even deleted; needs `CAP_SYS_ADMIN`), else the path through the process's root
/// (a container's own mounts), else the path itself (a chroot in our mounts: the kernel shows
/// it from our root).
#[must_use]
pub fn locate(pid: u32, root: &RootPath, m: &MapEntry) -> Option<PathBuf> {
    let path = m.file_path()?;
    [map_files_path(pid, m), root.resolve(path), PathBuf::from(path)]
        .into_iter()
        .find(|p| fs::metadata(p).is_ok_and(|md| md.ino() == m.inode))
}

/// How to reach, from our mount namespace, a path that process `pid` sees: through
/// `/proc/PID/root` unless the process shares our root directory.
#[derive(Clone, Debug)]
pub struct RootPath {
    prefix: Option<PathBuf>,
}

impl RootPath {
    /// Root of process `pid`.
    #[must_use]
    pub fn of(pid: u32) -> Self {
        let theirs = PathBuf::from(format!("/proc/{pid}/root"));
        let same = match (fs::metadata(&theirs), fs::metadata("/")) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        Self { prefix: (!same).then_some(theirs) }
    }

    /// Resolves a path of the process.
    #[must_use]
    pub fn resolve(&self, path: &str) -> PathBuf {
        match &self.prefix {
            Some(root) => root.join(path.trim_start_matches('/')),
            None => PathBuf::from(path),
        }
    }
}

/// Resident and anonymous resident bytes of process `pid` from `/proc/PID/statm`: constant
/// time (kernel counters, no page-table walk) and world-readable, so watching every process
/// of a host costs next to nothing. `private` holds the anonymous resident bytes (resident
/// minus file-backed and shared), where heap leaks show.
#[must_use]
pub fn statm_memory(pid: u32) -> Option<ProcessMemory> {
    parse_statm(&fs::read_to_string(format!("/proc/{pid}/statm")).ok()?, page_size())
}

/// `size resident shared ...` (pages) -> resident and resident minus shared, in bytes.
#[must_use]
pub fn parse_statm(text: &str, page: u64) -> Option<ProcessMemory> {
    let mut fields = text.split_whitespace().skip(1).map(|f| f.parse::<u64>().ok());
    let resident = fields.next()??;
    let shared = fields.next()??;
    // Saturating: a garbled file must not overflow (a panic in debug builds, a wrap else).
    Some(ProcessMemory {
        rss: resident.saturating_mul(page),
        private: resident.saturating_sub(shared).saturating_mul(page),
    })
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// The text of `/proc/PID/cgroup`; `None` once it has exited.
#[must_use]
pub fn cgroup_text(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()
}

/// Makes this thread, and the threads it starts from now on, read other processes' cgroup
/// paths as the host does. In a container's own cgroup namespace they are relative to it
/// (`/../../kubepods-burstable.slice/...`), which leaves out the kubepods ancestors and
/// finds no directory under the host's cgroup mount. Enters the cgroup namespace of pid 1
/// (the host's init, with hostPID) or, where that cannot be read, of the nearest ancestor
/// outside ours (a container runtime's shim), when it differs from ours; needs
/// `CAP_SYS_ADMIN`. Returns whether it switched.
///
/// # Errors
/// No other namespace could be entered (paths then stay relative; [`crate::fleet::pods`] copes with
/// most).
pub fn enter_host_cgroup_namespace() -> Result<bool, String> {
    let link = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/cgroup"));
    let ours = link("self").map_err(|e| format!("reading our cgroup namespace: {e}"))?;
    let mut ancestors = Vec::new();
    let mut pid = std::process::id();
    while let Some(parent) = ppid(pid).filter(|&p| p > 1 && !ancestors.contains(&p)) {
        ancestors.push(parent);
        pid = parent;
    }
    let (mut last_error, mut read_one) = (None, false);
    for pid in std::iter::once(1).chain(ancestors) {
        match link(&pid.to_string()) {
            Ok(ns) if ns == ours => {
                if pid == 1 {
                    return Ok(false);
                }
                read_one = true;
            }
            Ok(_) => {
                let path = format!("/proc/{pid}/ns/cgroup");
                let ns = fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
                let fd = std::os::fd::AsRawFd::as_raw_fd(&ns);
                // SAFETY: a valid namespace descriptor; only this thread's cgroup view changes.
                if unsafe { libc::setns(fd, libc::CLONE_NEWCGROUP) } != 0 {
                    return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
                }
                return Ok(true);
            }
            Err(e) => last_error = Some(format!("/proc/{pid}/ns/cgroup: {e}")),
        }
    }
    // Every process we could read shares our namespace.
    match last_error {
        Some(e) if !read_one => Err(e),
        _ => Ok(false),
    }
}

/// The parent of process `pid`.
#[must_use]
pub fn ppid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the name: state, then the parent's pid.
    stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
}

/// The value of `key` in a cgroup `memory.stat` text (`anon 1234` lines).
#[must_use]
pub fn memory_stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Every process id in `/proc` (kernel threads included: they have no memory to read).
#[must_use]
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> =
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    pids.sort_unstable();
    pids
}

/// Resident and private bytes of process `pid` (`/proc/PID/smaps_rollup`); `None` once it
/// has exited or where the kernel lacks the file (before 4.14).
#[must_use]
pub fn memory(pid: u32) -> Option<ProcessMemory> {
    parse_smaps_rollup(&fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?)
}

/// RSS and private (clean + dirty) bytes from a `smaps_rollup` text.
#[must_use]
pub fn parse_smaps_rollup(text: &str) -> Option<ProcessMemory> {
    let kb = |name: &str| -> Option<u64> {
        let line = text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?;
        line.split_whitespace().next()?.parse::<u64>().ok().map(|v| v.saturating_mul(1024))
    };
    let private = kb("Private_Clean")?.saturating_add(kb("Private_Dirty")?);
    Some(ProcessMemory { rss: kb("Rss")?, private })
}

/// The memory limit over process `pid`'s cgroup and its ancestors that leaves the least
/// headroom (a parent's larger limit may be closer, its usage being shared), and that
/// cgroup's usage: `(limit, usage)`. cgroup v2 (`memory.max`) or v1
/// (`memory.limit_in_bytes`), under `cgroupfs` (normally `/sys/fs/cgroup`).
#[must_use]
pub fn cgroup_memory_limit(pid: u32, cgroupfs: &Path) -> Option<(u64, u64)> {
    cgroup_memory_limit_at(pid, cgroupfs).map(|(limit, usage, _)| (limit, usage))
}

/// [`cgroup_memory_limit`], with the directory of the cgroup whose limit it is.
#[must_use]
pub fn cgroup_memory_limit_at(pid: u32, cgroupfs: &Path) -> Option<(u64, u64, PathBuf)> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let (v2, path) = parse_cgroup_memory_path(&text)?;
    let (root, max, current) = if v2 {
        (cgroupfs.to_path_buf(), "memory.max", "memory.current")
    } else {
        (cgroupfs.join("memory"), "memory.limit_in_bytes", "memory.usage_in_bytes")
    };
    let mut best: Option<(u64, u64, PathBuf)> = None;
    let mut dir = Some(path.trim_start_matches('/'));
    while let Some(rel) = dir {
        let at = root.join(rel);
        let limit = fs::read_to_string(at.join(max)).ok().and_then(|t| parse_limit(&t));
        let usage = fs::read_to_string(at.join(current)).ok().and_then(|t| t.trim().parse().ok());
        if let (Some(limit), Some(usage)) = (limit, usage)
            && best
                .as_ref()
                .is_none_or(|(l, u, _)| limit.saturating_sub(usage) < l.saturating_sub(*u))
        {
            best = Some((limit, usage, at));
        }
        dir = if rel.is_empty() { None } else { Some(rel.rsplit_once('/').map_or("", |p| p.0)) };
    }
    best
}

/// The highest memory usage the cgroup at `dir` reached (v2 `memory.peak`, 5.19 and later;
/// v1 `memory.max_usage_in_bytes`): read after an OOM kill, it says whether the kill came
/// at the cgroup's limit.
#[must_use]
pub fn cgroup_memory_peak(dir: &Path) -> Option<u64> {
    ["memory.peak", "memory.max_usage_in_bytes"]
        .iter()
        .find_map(|f| fs::read_to_string(dir.join(f)).ok()?.trim().parse().ok())
}

/// How many times the memory cgroup at `dir` reached its limit with nothing left to reclaim
/// and called the OOM killer (`oom` of v2's `memory.events`). `None` on v1, which counts
/// limit hits only with the page cache's reclaims among them (`memory.failcnt`).
#[must_use]
pub fn cgroup_oom_events(dir: &Path) -> Option<u64> {
    let text = fs::read_to_string(dir.join("memory.events")).ok()?;
    memory_stat_value(&text, "oom")
}

/// Whether the memory cgroup at `dir` (limited to `limit`) killed for its limit since its
/// OOM count was `oom_events`: said by the count where there is one (v2); else (v1) by its
/// peak usage within 10% of the limit (which a container whose page cache fills its limit
/// also reaches).
#[must_use]
pub fn cgroup_limit_reached(dir: &Path, limit: u64, oom_events: Option<u64>) -> bool {
    match (oom_events, cgroup_oom_events(dir)) {
        (Some(before), Some(now)) => now > before,
        _ => {
            cgroup_memory_peak(dir).is_some_and(|p| p.saturating_mul(10) >= limit.saturating_mul(9))
        }
    }
}

/// The memory cgroup of a `/proc/PID/cgroup` text: `(is_v2, path)`. A v1 memory hierarchy
/// wins over the v2 entry (on hybrid hosts the memory controller is on v1).
#[must_use]
pub fn parse_cgroup_memory_path(text: &str) -> Option<(bool, String)> {
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            return Some((false, path.to_owned()));
        }
        if id == "0" && controllers.is_empty() {
            v2 = Some((true, path.to_owned()));
        }
    }
    v2
}

/// A limit file's value; `max` and v1's "unlimited" (close to `i64::MAX`, page-aligned) are
/// no limit.
#[must_use]
pub fn parse_limit(text: &str) -> Option<u64> {
    let v: u64 = text.trim().parse().ok()?;
    (v < 1 << 62).then_some(v)
}

#[cfg(test)]
mod tests;
