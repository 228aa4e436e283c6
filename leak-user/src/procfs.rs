//! `/proc/PID/*`: parsers are pure functions of the file text; readers are thin wrappers.
use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

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

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c8a00000-55d0c8a01000 r--p 00000000 fe:01 1311 /work/demo
55d0c8a01000-55d0c8a02000 r-xp 00001000 fe:01 1311 /work/demo
55d0c9d6e000-55d0c9d8f000 rw-p 00000000 00:00 0                          [heap]
7f1c2a400000-7f1c2a428000 r--p 00000000 fe:01 2061                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a428000-7f1c2a5bd000 r-xp 00028000 fe:01 2061                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a600000-7f1c2a601000 r-xp 00000000 fe:01 99 /tmp/my lib.so (deleted)
7ffd1e3f0000-7ffd1e3f2000 r-xp 00000000 00:00 0                          [vdso]
";

    #[test]
    fn parses_maps_lines() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps.len(), 7);
        let libc_text = &maps[4];
        assert_eq!(libc_text.start, 0x7f1c_2a42_8000);
        assert_eq!(libc_text.offset, 0x28000);
        assert_eq!(libc_text.inode, 2061);
        assert!(libc_text.is_exec() && libc_text.is_file());
        assert_eq!(libc_text.path.as_deref(), Some("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(!maps[2].is_file(), "[heap] is not a file");
        assert!(!maps[6].is_file(), "[vdso] is not a file");
        assert_eq!(maps[5].file_path(), Some("/tmp/my lib.so"));
        assert!(parse_maps("garbage\n\n1-2 r--p zz 00:00 0").is_empty());
    }

    #[test]
    fn finds_the_mapping_of_an_address() {
        let maps = parse_maps(MAPS);
        let m = find_mapping(&maps, 0x7f1c_2a42_8010).unwrap();
        assert_eq!(m.offset + (0x7f1c_2a42_8010 - m.start), 0x28010);
        assert!(find_mapping(&maps, 0x1000).is_none());
        assert!(find_mapping(&maps, 0x55d0_c8a0_2000).is_none(), "end is exclusive");
        assert_eq!(find_mapping(&maps, 0x55d0_c8a0_1fff).unwrap().offset, 0x1000);
    }

    #[test]
    fn status_and_environ_fields() {
        assert_eq!(parse_status_tgid("Name:\tx\nTgid:\t4321\nPid:\t4322\n"), Some(4321));
        assert_eq!(parse_status_tgid("Name:\tx\n"), None);
        let env = b"PATH=/bin\0LD_PRELOAD=/usr/lib/libjemalloc.so.2:libfoo.so libbar.so\0X=1\0";
        assert_eq!(parse_ld_preload(env), ["/usr/lib/libjemalloc.so.2", "libfoo.so", "libbar.so"]);
        assert!(parse_ld_preload(b"PATH=/bin\0").is_empty());
    }

    #[test]
    fn start_time_field() {
        let stat =
            "1234 (a) b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000";
        assert_eq!(parse_stat_start_time(stat), Some(987_654));
        assert_eq!(parse_stat_start_time("garbage"), None);
        assert!(start_time(std::process::id()).is_some_and(|t| t > 0));
    }

    #[test]
    fn our_own_process() {
        use std::os::unix::fs::MetadataExt as _;

        let me = std::process::id();
        assert_eq!(tgid(me), Some(me));
        assert!(is_running(me));
        assert!(!is_running(u32::MAX - 1));
        let maps = read_maps(me).unwrap();
        let exe = maps.iter().find(|m| m.is_file()).unwrap();
        let via = map_files_path(me, exe);
        assert_eq!(fs::metadata(&via).unwrap().ino(), exe.inode, "{}", via.display());
    }
}
