//! Where a mapped object's symbols come from: its own DWARF, a separate debug file found by
//! build id or by `.gnu_debuglink` (as gdb looks for them), or only its symbol tables. The
//! report names the answer per module, so a stack without `file:line` says why.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use crate::{procfs::RootPath, trace::elf::ElfImage};

/// Where distributions install separate debug files (Debian's `*-dbg`/`-dbgsym` packages,
/// Fedora's `debuginfo`).
pub const SYSTEM_DEBUG_DIR: &str = "/usr/lib/debug";

/// The source of an object's symbols, best first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Symbols {
    /// DWARF in the file itself.
    DebugInfo,
    /// A separate debug file found as `DIR/.build-id/xx/yyyy.debug`.
    BuildId(PathBuf),
    /// A separate debug file named by `.gnu_debuglink` (its CRC checked).
    Debuglink(PathBuf),
    /// No debug info: the full symbol table (function names, no `file:line`).
    Symtab,
    /// Only the dynamic symbol table (exported functions).
    Dynsym,
    /// Nothing: addresses only.
    None,
}

impl Symbols {
    /// Its name in reports: `debug_info`, `build-id`, `debuglink`, `symtab`, `dynsym`, `none`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::DebugInfo => "debug_info",
            Self::BuildId(_) => "build-id",
            Self::Debuglink(_) => "debuglink",
            Self::Symtab => "symtab",
            Self::Dynsym => "dynsym",
            Self::None => "none",
        }
    }

    /// The separate debug file, if the symbols are in one.
    #[must_use]
    pub fn debug_file(&self) -> Option<&Path> {
        match self {
            Self::BuildId(p) | Self::Debuglink(p) => Some(p),
            _ => None,
        }
    }

    /// Whether DWARF (`file:line`, inlined calls) is available.
    #[must_use]
    pub fn has_dwarf(&self) -> bool {
        matches!(self, Self::DebugInfo | Self::BuildId(_) | Self::Debuglink(_))
    }
}

/// Where separate debug files are looked for: `--debug-dir`s first, then the system's (in
/// the target's root, then in ours).
#[derive(Clone, Debug, Default)]
pub struct DebugDirs {
    dirs: Vec<PathBuf>,
}

impl DebugDirs {
    /// The user's directories, then [`SYSTEM_DEBUG_DIR`] as process `root` sees it and as we do.
    #[must_use]
    pub fn new(user: &[PathBuf], root: &RootPath) -> Self {
        let mut dirs: Vec<PathBuf> = user.to_vec();
        for d in [root.resolve(SYSTEM_DEBUG_DIR), PathBuf::from(SYSTEM_DEBUG_DIR)] {
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        Self { dirs }
    }

    /// The candidate paths of the debug file of build id `id`.
    #[must_use]
    pub fn build_id_candidates(&self, id: &[u8]) -> Vec<PathBuf> {
        // Fewer than 2 bytes cannot be split into a directory and a name.
        let [first, rest @ ..] = id else { return Vec::new() };
        if rest.is_empty() {
            return Vec::new();
        }
        let name = rest.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        self.dirs
            .iter()
            .map(|d| d.join(".build-id").join(format!("{first:02x}")).join(format!("{name}.debug")))
            .collect()
    }

    /// The candidate paths of debug link `link` of the object at `object` (a path we can
    /// open): next to it, in `.debug/` beside it, under each debug directory by its path.
    #[must_use]
    pub fn debuglink_candidates(&self, object: &Path, shown: &str, link: &str) -> Vec<PathBuf> {
        // The link is a file name; anything with a separator is not followed.
        if link.is_empty() || link.contains('/') {
            return Vec::new();
        }
        let mut out = Vec::new();
        if let Some(dir) = object.parent() {
            out.push(dir.join(link));
            out.push(dir.join(".debug").join(link));
        }
        // gdb's global form: DEBUGDIR + the object's directory as the process sees it.
        if let Some(dir) = Path::new(shown).parent() {
            let rel = dir.strip_prefix("/").unwrap_or(dir);
            out.extend(self.dirs.iter().map(|d| d.join(rel).join(link)));
        }
        out
    }
}

/// Finds the symbols of `image`, which the process maps from `shown` and we read at `host`
/// (a path through its root; `/proc/PID/map_files` paths have no directory to look in).
#[must_use]
pub fn locate(image: &ElfImage, host: Option<&Path>, shown: &str, dirs: &DebugDirs) -> Symbols {
    let layout = image.debug_layout();
    if layout.debug_info {
        return Symbols::DebugInfo;
    }
    let has_dwarf = |p: &Path| ElfImage::open(p).is_ok_and(|d| d.debug_layout().debug_info);
    if let Some(id) = &layout.build_id {
        let found = dirs.build_id_candidates(id).into_iter().find(|p| {
            // The name says which build it is; the file must still carry DWARF (and its id).
            ElfImage::open(p).is_ok_and(|d| {
                let l = d.debug_layout();
                l.debug_info && l.build_id.as_deref() == Some(id)
            })
        });
        if let Some(p) = found {
            return Symbols::BuildId(p);
        }
    }
    if let (Some((link, crc)), Some(host)) = (&layout.debuglink, host) {
        let found = dirs.debuglink_candidates(host, shown, link).into_iter().find(|p| {
            p.is_file() && ElfImage::open(p).is_ok_and(|d| d.crc32() == *crc) && has_dwarf(p)
        });
        if let Some(p) = found {
            return Symbols::Debuglink(p);
        }
    }
    if layout.symtab {
        Symbols::Symtab
    } else if layout.dynsym {
        Symbols::Dynsym
    } else {
        Symbols::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(user: &[&str]) -> DebugDirs {
        let user: Vec<PathBuf> = user.iter().map(PathBuf::from).collect();
        DebugDirs::new(&user, &RootPath::of(std::process::id()))
    }

    #[test]
    fn build_id_paths_split_the_first_byte_off() {
        let d = dirs(&["/srv/dbg"]);
        assert_eq!(
            d.build_id_candidates(&[0xbe, 0xef, 0x01]),
            [
                PathBuf::from("/srv/dbg/.build-id/be/ef01.debug"),
                PathBuf::from("/usr/lib/debug/.build-id/be/ef01.debug")
            ]
        );
        assert!(d.build_id_candidates(&[0xbe]).is_empty());
        assert!(d.build_id_candidates(&[]).is_empty());
    }

    #[test]
    fn debuglink_paths_are_gdbs() {
        let d = dirs(&[]);
        assert_eq!(
            d.debuglink_candidates(
                Path::new("/proc/7/root/opt/app/bin/server"),
                "/opt/app/bin/server",
                "server.debug"
            ),
            [
                PathBuf::from("/proc/7/root/opt/app/bin/server.debug"),
                PathBuf::from("/proc/7/root/opt/app/bin/.debug/server.debug"),
                PathBuf::from("/usr/lib/debug/opt/app/bin/server.debug"),
            ]
        );
        // A link is a file name, never a path to follow.
        assert!(
            d.debuglink_candidates(Path::new("/bin/x"), "/bin/x", "../../etc/shadow").is_empty()
        );
        assert!(d.debuglink_candidates(Path::new("/bin/x"), "/bin/x", "").is_empty());
    }

    #[test]
    fn our_own_binary_has_debug_info_or_a_symbol_table() {
        // The test binary is built with debug info (the dev profile).
        let exe = std::env::current_exe().unwrap();
        let image = ElfImage::open(&exe).unwrap();
        let found = locate(&image, Some(&exe), &exe.display().to_string(), &dirs(&[]));
        assert!(matches!(found, Symbols::DebugInfo | Symbols::Symtab), "{found:?}");
    }
}
