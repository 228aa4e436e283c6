//! `uprobe_multi` links (kernel 6.6+): every probe of one program in one object file, for one
//! process, attached and detached as one link, instead of a perf event and an RCU grace
//! period per probe.
//!
//! The kernel attaches a program to such a link only if it was loaded for it (expected attach
//! type `BPF_TRACE_UPROBE_MULTI`), and a program loaded so no longer attaches to a perf event.
//! aya 0.14 loads uprobe programs without that type and has no way to set it, so the programs
//! are loaded a second time here: the same object parsed again with `aya-obj` (aya's own
//! parser), relocated against the maps aya created (so both copies share every map), its BTF
//! loaded for the global functions' `func_info`, and loaded with raw `bpf()` calls.
use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use aya::{Ebpf, maps::Map};
use aya_obj::generated::{
    BPF_F_UPROBE_MULTI_RETURN,
    bpf_attach_type::BPF_TRACE_UPROBE_MULTI,
    bpf_attr,
    bpf_cmd::{BPF_BTF_LOAD, BPF_LINK_CREATE, BPF_PROG_LOAD},
    bpf_prog_type::BPF_PROG_TYPE_KPROBE,
};

use super::LoaderError;

/// `LEAK_UPROBE_MULTI=0` in the environment: a perf event per probe on every kernel (to
/// compare the two, or to step around a kernel's fault in these links).
pub const MULTI_ENV: &str = "LEAK_UPROBE_MULTI";

/// The verifier's log for a program it rejects (bytes).
const LOG_SIZE: usize = 1 << 20;

/// `bpf(cmd, attr)`: a new descriptor, or the error.
fn bpf_fd(cmd: aya_obj::generated::bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid, fully initialized `bpf_attr` whose pointers outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| std::io::Error::other("bpf() returned no fd"))?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The map's descriptor, whatever its kind.
fn map_fd(map: &Map) -> RawFd {
    let data = match map {
        Map::Array(d)
        | Map::ArrayOfMaps(d)
        | Map::BloomFilter(d)
        | Map::CgroupArray(d)
        | Map::CgroupStorage(d)
        | Map::CgrpStorage(d)
        | Map::CpuMap(d)
        | Map::DevMap(d)
        | Map::DevMapHash(d)
        | Map::HashMap(d)
        | Map::HashOfMaps(d)
        | Map::InodeStorage(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuCgroupStorage(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerfEventArray(d)
        | Map::ProgramArray(d)
        | Map::Queue(d)
        | Map::ReusePortSockArray(d)
        | Map::RingBuf(d)
        | Map::SockHash(d)
        | Map::SockMap(d)
        | Map::SkStorage(d)
        | Map::Stack(d)
        | Map::StackTraceMap(d)
        | Map::Unsupported(d)
        | Map::XskMap(d) => d,
    };
    data.fd().as_fd().as_raw_fd()
}

/// `BPF_TRACE_UPROBE_SESSION` (6.13), which aya-obj 0.3's bindings predate.
const BPF_TRACE_UPROBE_SESSION: u32 = 57;

/// `src_reg` of a BPF `call` to a kfunc (`imm`: its BTF id).
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;

/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;

/// Where one link's probes go: offsets of one file, each with its attach cookie, for one
/// process.
#[derive(Clone, Copy, Debug)]
pub struct Probes<'a> {
    /// The file (as this process sees it).
    pub path: &'a Path,
    /// Offsets in it.
    pub offsets: &'a [u64],
    /// A cookie per offset.
    pub cookies: &'a [u64],
    /// The process whose calls fire them.
    pub pid: u32,
    /// At the functions' returns (a session ignores it: it is at both).
    pub ret: bool,
}

/// Programs loaded for `uprobe_multi` links, by name.
#[derive(Debug, Default)]
pub struct MultiPrograms {
    fds: HashMap<&'static str, OwnedFd>,
    /// The session programs loaded (6.13+), by name.
    sessions: HashMap<&'static str, OwnedFd>,
    /// The object's BTF, which the programs' `func_info` refers to (kept open while they are).
    btf: Option<OwnedFd>,
}

impl MultiPrograms {
    /// Loads programs `names` of object `bytes` (which `ebpf` was loaded from, its maps
    /// created) for `uprobe_multi` links; `None` if this kernel has no such links, or only
    /// with an unreliable pid filter (before 6.10, fixed by 46ba0e49b642). `sessions`: session
    /// programs to load too where the kernel has uprobe sessions (6.13+), none elsewhere.
    ///
    /// # Errors
    /// The object does not parse or relocate, or the kernel rejects a program (with the
    /// verifier's log).
    pub fn load(
        ebpf: &Ebpf,
        bytes: &[u8],
        names: &[&'static str],
        sessions: &[&'static str],
    ) -> Result<Option<Self>, LoaderError> {
        let since = aya::util::KernelVersion::new(6, 10, 0);
        if aya::util::KernelVersion::current().is_ok_and(|v| v < since) {
            return Ok(None);
        }
        let object_error = |e: &dyn std::fmt::Display| LoaderError::Object(format!("{e}"));
        let mut obj = aya_obj::Object::parse(bytes).map_err(|e| object_error(&e))?;
        let features = aya::features();
        let mut btf_fd = None;
        if let Some(btf_features) = features.btf()
            && let Some(btf) =
                obj.fixup_and_sanitize_btf(btf_features).map_err(|e| object_error(&e))?
        {
            let data = btf.to_bytes();
            // SAFETY: zeroed is a valid bpf_attr.
            let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
            // SAFETY: writing the BTF_LOAD member of the union.
            let u = unsafe { &mut attr.__bindgen_anon_7 };
            u.btf = data.as_ptr() as u64;
            u.btf_size = u32::try_from(data.len()).unwrap_or(u32::MAX);
            btf_fd = Some(bpf_fd(BPF_BTF_LOAD, &mut attr).map_err(|e| {
                LoaderError::Object(format!("loading the object's BTF for uprobe_multi: {e}"))
            })?);
        }
        let kernel_btf = aya_obj::btf::Btf::from_sys_fs().ok();
        if btf_fd.is_some()
            && let Some(kernel_btf) = &kernel_btf
        {
            obj.relocate_btf(kernel_btf).map_err(|e| object_error(&e))?;
        }
        let maps: Vec<(String, RawFd)> =
            ebpf.maps().map(|(name, map)| (name.to_owned(), map_fd(map))).collect();
        let obj_maps = obj.maps.clone();
        let text_sections: HashSet<usize> =
            obj.functions.keys().map(|(section, _)| *section).collect();
        obj.relocate_maps(
            maps.iter()
                .filter_map(|(name, fd)| obj_maps.get(name).map(|m| (name.as_str(), *fd, m))),
            &text_sections,
        )
        .map_err(|e| object_error(&e))?;
        obj.relocate_calls(&text_sections).map_err(|e| object_error(&e))?;
        obj.sanitize_functions(features);
        let mut fds = HashMap::new();
        for &name in names {
            let program = obj
                .programs
                .get(name)
                .ok_or_else(|| LoaderError::Object(format!("no program {name}")))?;
            let function = &obj.functions[&program.function_key()];
            let fd = load_program(
                name,
                program,
                function,
                btf_fd.as_ref(),
                BPF_TRACE_UPROBE_MULTI as u32,
            )?;
            if fds.is_empty() && !makes_links(&fd, BPF_TRACE_UPROBE_MULTI as u32) {
                return Ok(None);
            }
            fds.insert(name, fd);
        }
        let mut loaded = Self { fds, sessions: HashMap::new(), btf: btf_fd };
        // Sessions need the kfunc that tells entry from return, found in the kernel's BTF.
        let is_return = kernel_btf.as_ref().and_then(|b| {
            b.id_by_type_name_kind("bpf_session_is_return", aya_obj::btf::BtfKind::Func).ok()
        });
        let Some(is_return) = is_return else { return Ok(Some(loaded)) };
        for &name in sessions {
            let program = obj
                .programs
                .get(name)
                .ok_or_else(|| LoaderError::Object(format!("no program {name}")))?;
            let mut function = obj.functions[&program.function_key()].clone();
            patch_kfunc_calls(&mut function.instructions, is_return);
            let btf = loaded.btf.as_ref();
            let fd = match load_program(name, program, &function, btf, BPF_TRACE_UPROBE_SESSION) {
                Ok(fd) if !loaded.sessions.is_empty() => fd,
                Ok(fd) if makes_links(&fd, BPF_TRACE_UPROBE_SESSION) => fd,
                // A kernel without sessions (6.12 has the kfunc, for kprobe sessions, but
                // no uprobe session links): uprobe_multi links alone.
                Ok(_) => break,
                Err(e) => {
                    log::debug!("no uprobe sessions: {e}");
                    loaded.sessions.clear();
                    break;
                }
            };
            loaded.sessions.insert(name, fd);
        }
        Ok(Some(loaded))
    }

    /// Attaches program `name` at `at`'s offsets. Closing the link detaches it.
    ///
    /// # Errors
    /// The kernel refused the link.
    pub fn attach(&self, name: &'static str, at: &Probes<'_>) -> std::io::Result<OwnedFd> {
        let (prog, attach_type) = match self.sessions.get(name) {
            Some(prog) => (prog, BPF_TRACE_UPROBE_SESSION),
            None => (
                self.fds.get(name).ok_or_else(|| std::io::Error::other("not loaded"))?,
                BPF_TRACE_UPROBE_MULTI as u32,
            ),
        };
        attach(prog.as_raw_fd(), attach_type, at)
    }

    /// Session programs loaded.
    #[must_use]
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Whether session program `name` is loaded (the kernel has uprobe sessions).
    #[must_use]
    pub fn has_session(&self, name: &str) -> bool {
        self.sessions.contains_key(name)
    }
}

/// Makes every call of the sentinel helper (`SENTINEL_SESSION_IS_RETURN`) a call of the kfunc
/// whose BTF id is `kfunc`. Returns how many.
fn patch_kfunc_calls(insns: &mut [aya_obj::generated::bpf_insn], kfunc: u32) -> usize {
    let mut n = 0;
    for insn in insns {
        if insn.code == CALL
            && insn.src_reg() == 0
            && insn.imm == leak_common::SENTINEL_SESSION_IS_RETURN
        {
            insn.set_src_reg(BPF_PSEUDO_KFUNC_CALL);
            insn.imm = kfunc.cast_signed();
            insn.off = 0;
            n += 1;
        }
    }
    n
}

/// Loads `program` (its relocated `function`) with expected attach type
/// `BPF_TRACE_UPROBE_MULTI`.
fn load_program(
    name: &str,
    program: &aya_obj::Program,
    function: &aya_obj::Function,
    btf: Option<&OwnedFd>,
    attach_type: u32,
) -> Result<OwnedFd, LoaderError> {
    let mut log = vec![0u8; LOG_SIZE];
    let func_info = function.func_info.func_info_bytes();
    let line_info = function.line_info.line_info_bytes();
    // SAFETY: zeroed is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the PROG_LOAD member of the union.
    let u = unsafe { &mut attr.__bindgen_anon_3 };
    u.prog_type = BPF_PROG_TYPE_KPROBE as u32;
    u.expected_attach_type = attach_type;
    u.insns = function.instructions.as_ptr() as u64;
    u.insn_cnt = u32::try_from(function.instructions.len()).unwrap_or(u32::MAX);
    u.license = program.license.as_ptr() as u64;
    let short: Vec<libc::c_char> = name
        .bytes()
        .take(15)
        .map(|b| libc::c_char::from_ne_bytes([b]))
        .chain(std::iter::once(0))
        .collect();
    u.prog_name[..short.len()].copy_from_slice(&short);
    if let Some(btf) = btf {
        u.prog_btf_fd = btf.as_raw_fd().cast_unsigned();
        if function.func_info_rec_size > 0 {
            u.func_info = func_info.as_ptr() as u64;
            u.func_info_cnt = u32::try_from(function.func_info.len()).unwrap_or(0);
            u.func_info_rec_size = u32::try_from(function.func_info_rec_size).unwrap_or(0);
        }
        if function.line_info_rec_size > 0 {
            u.line_info = line_info.as_ptr() as u64;
            u.line_info_cnt = u32::try_from(function.line_info.len()).unwrap_or(0);
            u.line_info_rec_size = u32::try_from(function.line_info_rec_size).unwrap_or(0);
        }
    }
    // The log only when it is wanted: asking for one slows the verifier.
    match bpf_fd(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            // SAFETY: as above.
            let u = unsafe { &mut attr.__bindgen_anon_3 };
            u.log_level = 1;
            u.log_buf = log.as_mut_ptr() as u64;
            u.log_size = u32::try_from(log.len()).unwrap_or(0);
            let again = bpf_fd(BPF_PROG_LOAD, &mut attr);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]).into_owned();
            match again {
                Ok(fd) => Ok(fd),
                Err(_) => Err(LoaderError::Object(format!(
                    "the kernel rejects {name} for uprobe_multi ({first}): {text}"
                ))),
            }
        }
    }
}

/// Whether the kernel makes `uprobe_multi` links, as libbpf asks: a link on "/" fails with
/// `EBADF` (not a regular file) where it does, `EINVAL` (an unknown attach type) where not.
fn makes_links(prog: &OwnedFd, attach_type: u32) -> bool {
    let root = Probes { path: Path::new("/"), offsets: &[0], cookies: &[0], pid: 0, ret: false };
    match attach(prog.as_raw_fd(), attach_type, &root) {
        Err(e) => e.raw_os_error() == Some(libc::EBADF),
        Ok(_) => true,
    }
}

/// `BPF_LINK_CREATE` of a `uprobe_multi` link.
fn attach(prog: RawFd, attach_type: u32, at: &Probes<'_>) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = CString::new(at.path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    if at.cookies.len() != at.offsets.len() {
        return Err(std::io::Error::other("a cookie per offset"));
    }
    // SAFETY: zeroed is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the LINK_CREATE member of the union.
    let l = unsafe { &mut attr.link_create };
    l.__bindgen_anon_1.prog_fd = prog.cast_unsigned();
    l.attach_type = attach_type;
    // SAFETY: writing the uprobe_multi member of the union.
    let m = unsafe { &mut l.__bindgen_anon_3.uprobe_multi };
    m.path = path.as_ptr() as u64;
    m.offsets = at.offsets.as_ptr() as u64;
    m.cookies = at.cookies.as_ptr() as u64;
    m.cnt = u32::try_from(at.offsets.len()).unwrap_or(u32::MAX);
    // A session is one link at the entry (the kernel adds the return).
    m.flags = if at.ret && attach_type != BPF_TRACE_UPROBE_SESSION {
        BPF_F_UPROBE_MULTI_RETURN
    } else {
        0
    };
    m.pid = at.pid;
    bpf_fd(BPF_LINK_CREATE, &mut attr)
}
