//! Addresses -> function, module, `file:line`. The only module that uses blazesym.
//!
//! Addresses are first normalized with our own copy of the target's `/proc/PID/maps` (refreshed
//! while it runs) to (file, file offset), then symbolized from the ELF file. Each mapped file
//! is opened once, while the process lives, through `/proc/PID/map_files` (the exact file, from
//! any mount namespace, even deleted) and kept open; blazesym reads it as `/proc/self/fd/N`.
//! So the final report of a target that has exited, or of a container whose root went away
//! with it, is still symbolized.
//!
//! Each file's symbols come from where [`debuginfo::locate`] finds them (its own DWARF, a
//! debug file by build id or debug link, else its symbol tables); addresses are translated
//! to the object's virtual addresses by [`unwind::mapping_vaddr`], the same translation the
//! unwinder uses, and looked up there (in the debug file, which has the same addresses).
use std::{fs::File, os::fd::AsRawFd as _, path::PathBuf};

use blazesym::symbolize::{self, Input, Symbolized};
use hashbrown::HashMap;
use log::debug;

use crate::{
    analysis::{
        model::{Frame, Text},
        report::ModuleSymbols,
    },
    procfs::{self, MapEntry, RootPath},
    trace::{
        debuginfo::{self, DebugDirs, Symbols},
        elf::ElfImage,
        unwind::{self, Segment},
    },
};

/// A mapped file, opened while the process lived.
struct Opened {
    file: File,
    segments: Vec<Segment>,
    symbols: Symbols,
}

/// Symbolizes return addresses of one process.
pub trait Symbolizer {
    /// Frames for each address (one or more per address: inlined calls expand), innermost first.
    fn symbolize(&mut self, addrs: &[u64]) -> Vec<Vec<Frame>>;
}

/// blazesym over the maps of a live (or recently live) process, with a per-address cache.
pub struct ProcessSymbolizer {
    pid: u32,
    root: RootPath,
    maps: Vec<MapEntry>,
    cache: HashMap<u64, Vec<Frame>>,
    /// Mapped files opened so far, by (inode, path); `None` if unreachable.
    files: HashMap<(u64, String), Option<Opened>>,
    /// Where symbols are looked for.
    debug_dirs: DebugDirs,
    /// Where each module's symbols came from, by module name, for the modules symbolized.
    modules: std::collections::BTreeMap<String, ModuleSymbols>,
    /// The main executable's path and the name the process ran it by, where they differ
    /// (see [`procfs::run_name`]): frames name the program the user started.
    exe_alias: Option<(String, String)>,
    blaze: symbolize::Symbolizer,
}

impl ProcessSymbolizer {
    /// A symbolizer for `pid` that also looks for debug files in `debug_dirs`; reads its
    /// maps now.
    #[must_use]
    pub fn new(pid: u32, debug_dirs: &[PathBuf]) -> Self {
        let root = RootPath::of(pid);
        let exe_alias = procfs::exe(pid).and_then(|exe| {
            let exe = exe.to_string_lossy().into_owned();
            let cmdline = procfs::cmdline(pid).unwrap_or_default();
            let comm = procfs::comm(pid).unwrap_or_default();
            procfs::run_name(&exe, &cmdline, &comm).map(|name| (exe, name))
        });
        let mut s = Self {
            exe_alias,
            pid,
            debug_dirs: DebugDirs::new(debug_dirs, &root),
            root,
            maps: Vec::new(),
            cache: HashMap::new(),
            files: HashMap::new(),
            modules: std::collections::BTreeMap::new(),
            blaze: symbolize::Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .build(),
        };
        s.refresh();
        s
    }

    /// Re-reads the process's maps (libraries loaded since). Mappings gone since are kept
    /// unless a new one overlaps them: a process that is exiting tears its mappings down
    /// while we read (a read then lists a few of them, or none), and its stacks still have to
    /// be symbolized.
    pub fn refresh(&mut self) {
        let Ok(mut maps) = procfs::read_maps(self.pid) else { return };
        // Open new files now, while /proc/PID/map_files exists: a target that exits before
        // its stacks are symbolized takes it (and a container's root) along.
        for m in maps.iter().filter(|m| m.is_file()) {
            let _ = self.file_of(m);
        }
        let overlaps = |a: &MapEntry, b: &MapEntry| a.start < b.end && b.start < a.end;
        let (replaced, kept): (Vec<MapEntry>, Vec<MapEntry>) =
            self.maps.iter().cloned().partition(|old| maps.iter().any(|m| overlaps(m, old)));
        // A library unloaded and another mapped at its addresses: what was cached there
        // named the old one.
        for old in replaced {
            let same = |m: &MapEntry| {
                m.start == old.start && m.inode == old.inode && m.offset == old.offset
            };
            if !maps.iter().any(same) {
                self.cache.retain(|a, _| !(old.start < *a && *a <= old.end));
            }
        }
        maps.extend(kept);
        maps.sort_by_key(|m| m.start);
        if maps.len() != self.maps.len() {
            debug!("pid {}: {} mappings", self.pid, maps.len());
        }
        self.maps = maps;
    }

    /// Our open copy of mapping `m`'s file, and where its symbols are.
    fn file_of(&mut self, m: &MapEntry) -> Option<&Opened> {
        let shown = m.file_path().unwrap_or_default().to_owned();
        let key = (m.inode, shown.clone());
        let (pid, root, dirs) = (self.pid, &self.root, &self.debug_dirs);
        let file = self.files.entry(key).or_insert_with(|| {
            let path = procfs::locate(pid, root, m)?;
            let file =
                File::open(&path).map_err(|e| debug!("opening {}: {e}", path.display())).ok()?;
            let fd_path = fd_path(&file);
            let image = ElfImage::open(&fd_path).ok()?;
            // Debug links are looked for beside the file: its directory, through the root.
            let beside = root.resolve(&shown);
            let host = std::fs::metadata(&beside)
                .is_ok_and(|md| std::os::unix::fs::MetadataExt::ino(&md) == m.inode)
                .then_some(beside.as_path());
            let symbols = debuginfo::locate(&image, host, &shown, dirs);
            debug!("{shown}: symbols from {}", symbols.name());
            Some(Opened { segments: image.segments(), symbols, file })
        });
        file.as_ref()
    }

    /// Where the symbols of each module symbolized so far came from.
    #[must_use]
    pub fn modules(&self) -> Vec<ModuleSymbols> {
        self.modules.values().cloned().collect()
    }

    fn resolve_uncached(&mut self, addrs: &[u64]) -> Vec<Vec<Frame>> {
        // Group addresses by file so each file is symbolized in one call.
        let mut by_file: HashMap<(PathBuf, bool, String), Vec<(usize, u64)>> = HashMap::new();
        let mut out: Vec<Vec<Frame>> = addrs.iter().map(|&a| vec![Frame::unknown(a)]).collect();
        for (i, &addr) in addrs.iter().enumerate() {
            // Return addresses point after the call; the call itself is one byte earlier.
            let lookup = addr.saturating_sub(1);
            let Some(m) = procfs::find_mapping(&self.maps, lookup).cloned() else { continue };
            let Some(path) = m.file_path().filter(|_| m.is_file()) else {
                out[i][0].module = m.path.as_deref().map(Text::from);
                continue;
            };
            let module = match &self.exe_alias {
                Some((exe, name)) if exe == path => name.clone(),
                _ => path.rsplit('/').next().unwrap_or(path).to_owned(),
            };
            out[i][0].module = Some(module.as_str().into());
            let shown = path.to_owned();
            let Some(opened) = self.file_of(&m) else { continue };
            let exec = m.perms.contains('x');
            let Some(vaddr) = unwind::mapping_vaddr(&opened.segments, m.offset, exec) else {
                continue;
            };
            let symbols = opened.symbols.clone();
            let (elf, dwarf) = match symbols.debug_file() {
                Some(debug_file) => (debug_file.to_path_buf(), true),
                None => (fd_path(&opened.file), symbols.has_dwarf()),
            };
            self.modules.entry(module.clone()).or_insert_with(|| ModuleSymbols {
                name: module.clone(),
                path: shown,
                symbols: symbols.name().to_owned(),
                debug_file: symbols.debug_file().map(|p| p.display().to_string()),
            });
            let virt = vaddr.wrapping_add(lookup - m.start);
            by_file.entry((elf, dwarf, module)).or_default().push((i, virt));
        }
        for ((elf, dwarf, module), items) in by_file {
            let virts: Vec<u64> = items.iter().map(|&(_, v)| v).collect();
            let mut source = symbolize::source::Elf::new(&elf);
            source.debug_syms = dwarf;
            let src = symbolize::source::Source::Elf(source);
            let host_path = &elf;
            let results = match self.blaze.symbolize(&src, Input::VirtOffset(&virts)) {
                Ok(r) => r,
                Err(e) => {
                    debug!("symbolizing {}: {e}", host_path.display());
                    continue;
                }
            };
            for ((i, _), sym) in items.into_iter().zip(results) {
                if let Symbolized::Sym(sym) = sym {
                    out[i] = frames_of(&sym, addrs[i], &module);
                }
            }
        }
        out
    }
}

/// The path through which blazesym reads our open copy of a file.
fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// One symbol -> frames, innermost (deepest inlined call) first.
fn frames_of(sym: &symbolize::Sym<'_>, address: u64, module: &str) -> Vec<Frame> {
    let module: Text = module.into();
    let frame = |name: &str, ci: Option<&symbolize::CodeInfo<'_>>| Frame {
        function: Some(name.into()),
        module: Some(module.clone()),
        file: ci
            .map(|c| c.to_path().display().to_string())
            .filter(|f| !f.is_empty())
            .map(Text::from),
        line: ci.and_then(|c| c.line),
        address,
    };
    // blazesym lists inlined calls outermost first; the code location of each inlined entry is
    // where the call sits inside it.
    sym.inlined
        .iter()
        .rev()
        .map(|inl| frame(&inl.name, inl.code_info.as_ref()))
        .chain(std::iter::once(frame(&sym.name, sym.code_info.as_deref())))
        .collect()
}

impl Symbolizer for ProcessSymbolizer {
    fn symbolize(&mut self, addrs: &[u64]) -> Vec<Vec<Frame>> {
        let missing: Vec<u64> = {
            let mut seen = hashbrown::HashSet::new();
            addrs
                .iter()
                .copied()
                .filter(|a| !self.cache.contains_key(a) && seen.insert(*a))
                .collect()
        };
        if !missing.is_empty() {
            let resolved = self.resolve_uncached(&missing);
            let mut fresh: HashMap<u64, Vec<Frame>> = HashMap::new();
            for (addr, frames) in missing.into_iter().zip(resolved) {
                // An address outside every known mapping may be in a library mapped since the
                // last refresh: do not cache the miss, try again next time.
                if frames.iter().all(|f| f.module.is_some()) {
                    self.cache.insert(addr, frames);
                } else {
                    fresh.insert(addr, frames);
                }
            }
            return addrs
                .iter()
                .map(|a| {
                    self.cache
                        .get(a)
                        .or_else(|| fresh.get(a))
                        .cloned()
                        .unwrap_or_else(|| vec![Frame::unknown(*a)])
                })
                .collect();
        }
        addrs
            .iter()
            .map(|a| self.cache.get(a).cloned().unwrap_or_else(|| vec![Frame::unknown(*a)]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_named_function() -> u64 {
        // The address of an instruction inside this function, plus one (like a return address).
        a_named_function as *const () as u64 + 1
    }

    #[test]
    fn symbolizes_our_own_functions() {
        let mut s = ProcessSymbolizer::new(std::process::id(), &[]);
        let addr = a_named_function() + 1;
        let frames = s.symbolize(&[addr, addr, 0x10]);
        assert_eq!(frames.len(), 3);
        let f = frames[0].last().unwrap();
        assert!(f.function.as_deref().unwrap_or_default().contains("a_named_function"), "{f:?}");
        assert_eq!(f.address, addr);
        assert!(f.module.is_some());
        assert_eq!(frames[0], frames[1], "cached");
        assert_eq!(frames[2], vec![Frame::unknown(0x10)]);
    }
}
