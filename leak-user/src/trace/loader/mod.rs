//! The only place that loads and attaches BPF programs (with `source`, the only aya users).
use std::{num::NonZeroU32, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        PerfEvent, ProgramError, UProbe,
        perf_event::{
            PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
        },
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use aya_log::EbpfLogger;
use leak_common::{
    COOKIE_AFTER_SYSCALL, COOKIE_CALIBRATION, COOKIE_NOTE_FREE, DEFAULT_MAX_STACKS,
    GLOBAL_FILTER_TGID, GLOBAL_PROBE_FLOOR, GLOBAL_SAMPLE_MEAN, GLOBAL_TRACE, MAP_ALLOCS,
    MAP_SAMPLE_GAPS, MAP_SITES, MAP_STACKS, PROGRAM_ENTRY_STOP, PROGRAM_PAGE_FAULT, Program,
};
use log::{debug, warn};

pub mod budget;
pub mod features;
mod table;
pub use features::{BpfObject, Features};
pub(crate) use table::{AllocTable, SiteTable};

use crate::{trace::hooks::HookKind, trace::target::AllocatorPlan};

/// The full BPF object, built by build.rs from `leak-ebpf` (kernels 5.17+).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leak-ebpf"));
/// The same programs for older kernels (`leak-ebpf/src/compat.rs`).
static EBPF_OBJECT_COMPAT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leak-ebpf-compat"));

/// The ELF bytes of `object`.
#[must_use]
pub fn object_bytes(object: BpfObject) -> &'static [u8] {
    match object {
        BpfObject::Full => EBPF_OBJECT,
        BpfObject::Compat => EBPF_OBJECT_COMPAT,
    }
}

/// Environment variable that chooses the BPF object (`full` or `compat`) instead of the
/// kernel's features: tests run the compatible object on new kernels with it.
pub const BPF_OBJECT_ENV: &str = "LEAK_BPF_OBJECT";

/// The kernel's features and the object to load, probed once per process.
#[must_use]
pub fn kernel() -> &'static (Features, BpfObject) {
    static KERNEL: std::sync::OnceLock<(Features, BpfObject)> = std::sync::OnceLock::new();
    KERNEL.get_or_init(|| {
        let features = Features::probe();
        let object = match std::env::var(BPF_OBJECT_ENV).as_deref() {
            Ok("compat") => BpfObject::Compat,
            Ok("full") => BpfObject::Full,
            _ => features.object(),
        };
        debug!("kernel {}: {features:?}; BPF object {object}", features.release);
        if object == BpfObject::Compat {
            log::info!(
                "kernel {} lacks some BPF features: using the compatible object ({})",
                features.release,
                Features::degradations(object).join("; ")
            );
        }
        (features, object)
    })
}

/// The verifier's reason for rejecting a program: the last line of its log that is not a
/// statistic (`processed N insns`, `stack depth`, ...) nor a bare register state, without
/// the instruction it was found at.
#[must_use]
pub fn verifier_reason(log: &str) -> String {
    const STATS: [&str; 8] = [
        "verification time",
        "stack depth",
        "processed ",
        "max_states_per_insn",
        "mark_read",
        "peak_states",
        "total_states",
        "-- END PROG LOAD LOG --",
    ];
    let line = log
        .lines()
        .map(str::trim)
        .rev()
        .find(|l| {
            // Not a statistic, a state dump (`123: R0=... R1=...`) or a source line
            // (`; foo @ bar.rs:1`).
            let noise = l.is_empty()
                || STATS.iter().any(|s| l.starts_with(s))
                || l.starts_with(';')
                || (l.contains(": R") && l.contains('='));
            !noise
        })
        .unwrap_or("the verifier gave no reason");
    // `R2 max value is outside of the allowed memory range` explains the line before it.
    let register_note =
        line.starts_with('R') && line.chars().nth(1).is_some_and(|c| c.is_ascii_digit());
    if register_note
        && let Some(before) = log
            .lines()
            .map(str::trim)
            .rev()
            .skip_while(|l| *l != line)
            .nth(1)
            .filter(|l| !l.is_empty() && !l.contains(": ("))
    {
        return format!("{before} ({line})");
    }
    // `1376: (7b) *(u64 *)(r2 +0) = r1 invalid access to map value...`: the instruction is
    // noise to a user; keep from the message on.
    let line = match line.split_once(": (") {
        Some((idx, rest)) if idx.chars().all(|c| c.is_ascii_digit()) => {
            rest.split_once(") ").map_or(line, |(_, insn)| insn)
        }
        _ => line,
    };
    line.to_owned()
}

/// Errors loading or attaching.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The object did not load (verifier, permissions, map creation).
    #[error("cannot load the BPF programs: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// The kernel's verifier rejected a program: a kernel leak does not support yet.
    #[error(
        "kernel {kernel} rejected BPF program {program} of leak's {object} object: {reason}. \
         Try --unwind fp, and report the kernel with the output of `leak check -v`"
    )]
    Rejected {
        /// Program name.
        program: &'static str,
        /// The object it is from.
        object: BpfObject,
        /// `uname -r`.
        kernel: String,
        /// The log's last meaningful line ([`verifier_reason`]).
        reason: String,
        /// The whole log (`-v` prints it).
        log: String,
    },
    /// A program was rejected.
    #[error("cannot load BPF program {program}: {source}")]
    Program {
        /// Program name.
        program: &'static str,
        /// Cause.
        #[source]
        source: Box<ProgramError>,
    },
    /// A probe did not attach.
    #[error("cannot attach {program} to {target}+{offset:#x}: {source}{}", attach_hint(source))]
    Attach {
        /// Program name.
        program: &'static str,
        /// File.
        target: String,
        /// File offset.
        offset: u64,
        /// Cause.
        #[source]
        source: Box<ProgramError>,
    },
    /// The object lacks a program (build mismatch).
    #[error("BPF object has no program {0}")]
    Missing(&'static str),
    /// The object could not be prepared (build mismatch).
    #[error("BPF object: {0}")]
    Object(String),
}

pub use crate::analysis::model::ProbeCost;

/// The function [`Tracer::calibrate`] probes. Written in assembly so that it starts, like the
/// allocator functions leak probes, with a `push` the kernel emulates (a compiler might
/// start it with an instruction the kernel must single-step, which costs 15 times more).
const CALIBRATION_SYMBOL: &str = "leak_probe_calibration";

core::arch::global_asm!(
    ".globl leak_probe_calibration",
    ".type leak_probe_calibration, @function",
    "leak_probe_calibration:",
    "push rbp",
    "mov rbp, rsp",
    "pop rbp",
    "ret",
    ".size leak_probe_calibration, . - leak_probe_calibration",
);

unsafe extern "C" {
    fn leak_probe_calibration();
}

/// ns per call of the calibration function: the median of 5 runs of 1000 calls (the machine
/// may be busy).
fn time_calibration_calls() -> f64 {
    const CALLS: u32 = 1000;
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let started = std::time::Instant::now();
            for _ in 0..CALLS {
                // SAFETY: the function only pushes and pops a register.
                unsafe { leak_probe_calibration() };
            }
            started.elapsed().as_secs_f64() * 1e9 / f64::from(CALLS)
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[2]
}

/// A duration in ns, not negative.
#[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "clamped, ns")]
fn ns(x: f64) -> u64 {
    x.max(0.0).round() as u64
}

/// Fills the table the programs draw sampling gaps from (they have no logarithm).
fn fill_sample_gaps(ebpf: &mut Ebpf) -> Result<(), LoaderError> {
    let map = ebpf
        .map_mut(MAP_SAMPLE_GAPS)
        .ok_or_else(|| LoaderError::Object(format!("no map {MAP_SAMPLE_GAPS}")))?;
    let mut gaps: aya::maps::Array<_, u32> = aya::maps::Array::try_from(map)
        .map_err(|e| LoaderError::Object(format!("{MAP_SAMPLE_GAPS}: {e}")))?;
    for (i, entry) in (0u32..).zip(crate::analysis::sampling::gap_table()) {
        gaps.set(i, entry, 0)
            .map_err(|e| LoaderError::Object(format!("{MAP_SAMPLE_GAPS}: {e}")))?;
    }
    Ok(())
}

/// A growth profile's stack map holds this share of `--max-stacks` (preallocated, about 1
/// KiB a stack: 8192 stacks, 8 MiB, by default; growth has far fewer stacks than calls).
const FAULT_STACKS_SHARE: u32 = 8;

/// Load-time options.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Trace only this process (0: any).
    pub filter_tgid: u32,
    /// Capacity of the outstanding-allocation map.
    pub max_allocs: u32,
    /// Capacity of the stack map.
    pub max_stacks: u32,
    /// Per-event BPF logging (debugging).
    pub trace: bool,
    /// Programs return at once (benchmarks: the probes' own cost).
    pub probe_floor: bool,
    /// Mean bytes between samples; 0 records every allocation.
    pub sample_mean: u64,
    /// How stacks are walked (`leak_common::UNWIND_*`).
    pub unwind: u32,
    /// Capacity of the unwind-row array.
    pub unwind_rows: u32,
    /// The BPF object to load (`None`: the one for this kernel, see [`kernel`]).
    pub object: Option<BpfObject>,
    /// A growth profile (the page-fault program) instead of the allocator's probes.
    pub growth: bool,
    /// Capacity of the growth profile's page map.
    pub max_pages: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            filter_tgid: 0,
            max_allocs: leak_common::DEFAULT_MAX_ALLOCS,
            max_stacks: DEFAULT_MAX_STACKS,
            trace: false,
            probe_floor: false,
            sample_mean: 0,
            unwind: leak_common::UNWIND_FP,
            unwind_rows: leak_common::DEFAULT_UNWIND_ROWS,
            object: None,
            growth: false,
            max_pages: leak_common::DEFAULT_MAX_PAGES,
        }
    }
}

/// Loaded BPF programs and maps. Dropping it detaches every probe.
pub struct Tracer {
    pub(crate) ebpf: Ebpf,
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    attached: usize,
    /// The probes of [`Self::calibrate`].
    calibration: Links,
    /// Unwind tables loaded so far (stacks walked with them unless `--unwind fp`).
    unwind: Option<UnwindTables>,
    /// The outstanding allocations' table, mapped.
    pub(crate) table: AllocTable,
    /// The per-site totals' table, mapped.
    pub(crate) sites: SiteTable,
    /// The object loaded.
    object: BpfObject,
    /// A growth profile: snapshots are of resident pages (see `source`).
    pub(crate) growth: bool,
    /// A growth profile: each process's pages resident at the last snapshot, and their
    /// sizes (its final report, once it has exited and its pagemap is gone).
    pub(crate) last_resident:
        std::collections::HashMap<u32, hashbrown::HashMap<leak_common::AllocKey, u64>>,
    /// An empty set of pages.
    pub(crate) no_pages: hashbrown::HashMap<leak_common::AllocKey, u64>,
    /// A growth profile: each profiled process's pages resident when its profile started.
    pub(crate) baseline: std::collections::HashMap<u32, crate::trace::pagemap::Baseline>,
}

/// The objects whose unwind rows are in `UNWIND_ROWS`.
#[derive(Debug, Default)]
struct UnwindTables {
    /// Next free row.
    next: u32,
    /// Capacity of the array.
    capacity: u32,
    /// By (inode, path): its rows (first, count) and loadable segments; `None` when it has
    /// no table or did not fit.
    objects: std::collections::HashMap<(u64, String), Option<ObjectRows>>,
    /// Objects left without rows because the array was full.
    overflowed: usize,
    /// Each process's slot in `UNWIND_MAPPINGS`.
    slots: std::collections::HashMap<u32, u32>,
    /// Mapping sets written so far (each one's generation).
    generations: u64,
    /// Which of its two sets in `UNWIND_MAPPINGS` each process uses now.
    halves: std::collections::HashMap<u32, u32>,
    /// Each process's executable mappings (start, end, inode) when last written.
    written: std::collections::HashMap<u32, Vec<(u64, u64, u64)>>,
}

/// Where one object's rows are, and its loadable segments.
#[derive(Debug)]
struct ObjectRows {
    first: u32,
    count: u32,
    segments: Vec<crate::trace::unwind::Segment>,
}

/// The probes attached for one process, to detach them when it execs or exits (and, for the
/// compatible object, their entries in `HOOK_IPS`).
/// A growth profile's are its page-fault events, one per thread it found.
#[derive(Debug, Default)]
pub struct Links(
    Vec<(&'static str, UProbeLinkId)>,
    Vec<leak_common::AllocKey>,
    Vec<PerfEventLinkId>,
);

impl Links {
    /// Number of probes (or page-fault events).
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len() + self.2.len()
    }

    /// No probes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty() && self.2.is_empty()
    }
}

impl Tracer {
    /// Loads the object and every program (so verifier problems surface before attaching).
    ///
    /// # Errors
    /// See [`LoaderError`].
    pub fn load(opts: LoadOptions) -> Result<Self, LoaderError> {
        let (mut ebpf, object) = Self::open(&opts)?;
        // A growth profile needs no allocator probe: not verifying them saves the time.
        let names: Vec<&'static str> = if opts.growth {
            vec![PROGRAM_PAGE_FAULT, PROGRAM_ENTRY_STOP]
        } else {
            Program::ALL.iter().map(|p| p.name()).chain([PROGRAM_ENTRY_STOP]).collect()
        };
        for name in names {
            load_program(&mut ebpf, name, object)?;
        }
        Self::finish(ebpf, object, &opts)
    }

    /// Loads the object's maps for `opts` but none of its programs.
    fn open(opts: &LoadOptions) -> Result<(Ebpf, BpfObject), LoaderError> {
        let object = opts.object.unwrap_or_else(|| kernel().1);
        let layout = layout(object, opts);
        debug!("{object} object, allocation table: {layout:?}");
        let mask = layout.buckets - 1;
        let spill = u32::from(layout.spill > 0);
        let site_buckets = site_buckets(object, opts);
        let site_mask = site_buckets - 1;
        let trace = u32::from(opts.trace);
        let floor = u32::from(opts.probe_floor);
        let me = std::process::id();
        let ebpf = EbpfLoader::new()
            .override_global(GLOBAL_FILTER_TGID, &opts.filter_tgid, true)
            .override_global(GLOBAL_TRACE, &trace, true)
            .override_global(GLOBAL_PROBE_FLOOR, &floor, true)
            .override_global(GLOBAL_SAMPLE_MEAN, &opts.sample_mean, true)
            .override_global(leak_common::GLOBAL_UNWIND, &opts.unwind, true)
            .override_global(leak_common::GLOBAL_LEAK_TGID, &me, true)
            // One row is enough when stacks are walked by frame pointers only.
            .map_max_entries(
                leak_common::MAP_UNWIND_ROWS,
                if opts.unwind == leak_common::UNWIND_FP { 1 } else { opts.unwind_rows },
            )
            .override_global(leak_common::GLOBAL_ALLOC_BUCKET_MASK, &mask, true)
            .override_global(leak_common::GLOBAL_ALLOC_SLOTS, &layout.slots, true)
            .override_global(leak_common::GLOBAL_ALLOC_SPILL, &spill, true)
            .override_global(leak_common::GLOBAL_SITE_BUCKET_MASK, &site_mask, true)
            .map_max_entries(leak_common::MAP_SITE_TABLE, site_buckets)
            .map_max_entries(leak_common::MAP_ALLOC_TABLE, layout.buckets)
            .map_max_entries(leak_common::MAP_ALLOC_SPILLS, layout.buckets)
            // A hash map cannot have 0 entries; with `spill` 0 the programs never use it.
            .map_max_entries(MAP_ALLOCS, layout.spill.max(1))
            .map_max_entries(MAP_STACKS, opts.max_stacks)
            // A stack can be a site in a parent and in its forked children.
            .map_max_entries(MAP_SITES, opts.max_stacks.saturating_mul(2))
            // Preallocated (see `leak_common::MAP_PAGES`): one entry unless a profile runs.
            .map_max_entries(
                leak_common::MAP_PAGES,
                if opts.growth { opts.max_pages.max(1) } else { 1 },
            )
            .map_max_entries(
                leak_common::MAP_FAULT_STACKS,
                if opts.growth { (opts.max_stacks / FAULT_STACKS_SHARE).max(1) } else { 1 },
            )
            .load(object_bytes(object))
            .map_err(|e| LoaderError::Load(Box::new(e)))?;
        Ok((ebpf, object))
    }

    /// The tracer around a loaded object.
    fn finish(mut ebpf: Ebpf, object: BpfObject, opts: &LoadOptions) -> Result<Self, LoaderError> {
        let logger = match EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                debug!("BPF logging unavailable: {e}");
                None
            }
        };
        fill_sample_gaps(&mut ebpf)?;
        let unwind = (opts.unwind != leak_common::UNWIND_FP)
            .then(|| UnwindTables { capacity: opts.unwind_rows, ..UnwindTables::default() });
        let table = AllocTable::new(&ebpf, layout(object, opts))
            .map_err(|e| LoaderError::Object(e.to_string()))?;
        let sites = SiteTable::new(&ebpf, site_buckets(object, opts))
            .map_err(|e| LoaderError::Object(e.to_string()))?;
        Ok(Self {
            ebpf,
            logger,
            attached: 0,
            calibration: Links::default(),
            unwind,
            table,
            sites,
            object,
            growth: opts.growth,
            last_resident: std::collections::HashMap::new(),
            no_pages: hashbrown::HashMap::new(),
            baseline: std::collections::HashMap::new(),
        })
    }

    /// Loads each program of the object for `opts` and says which the kernel accepts, without
    /// stopping at the first it rejects (`leak check`). The object's maps are created and
    /// freed again.
    ///
    /// # Errors
    /// The object itself could not be loaded (its maps).
    pub fn check(opts: &LoadOptions) -> Result<(BpfObject, Vec<ProgramCheck>), LoaderError> {
        let (mut ebpf, object) = Self::open(opts)?;
        let checks = program_names()
            .map(|name| {
                let started = std::time::Instant::now();
                let result = load_program(&mut ebpf, name, object);
                ProgramCheck { program: name, result, took: started.elapsed() }
            })
            .collect();
        Ok((object, checks))
    }

    /// The object loaded.
    #[must_use]
    pub fn object(&self) -> BpfObject {
        self.object
    }

    /// Attaches every probe of `plan`, firing only in process `pid`. Returns the number of
    /// probes attached. At most `leak_common::MAX_HOOKS` hooks (the hit counters' size).
    ///
    /// # Errors
    /// A probe did not attach.
    pub fn attach_allocator(
        &mut self,
        plan: &AllocatorPlan,
        pid: NonZeroU32,
    ) -> Result<Links, LoaderError> {
        self.load_unwind_tables(pid.get());
        let mut links = Links::default();
        // The compatible object finds an entry probe's hook by its address instead of a
        // cookie: where each probe lies in the process.
        let addresses =
            (self.object == BpfObject::Compat).then(|| plan.runtime_addresses(pid.get()));
        for (index, hook) in plan.hooks.iter().enumerate() {
            let object = &plan.objects[hook.object];
            let offset = hook.file_offset();
            // The cookie tells the shared program which hook fired: the allocation's kind
            // and its hit counter.
            let mut flags = if hook.placement.after_syscall { COOKIE_AFTER_SYSCALL } else { 0 };
            if hook.spec.kind == HookKind::Free && hook.spec.symbol != "free" {
                flags |= COOKIE_NOTE_FREE;
            }
            let cookie = index as u64 | flags;
            if let Some(addresses) = &addresses {
                match addresses.get(index).copied().flatten() {
                    Some(addr) => {
                        let key = leak_common::AllocKey::new(addr, pid.get());
                        if let Err(e) = self
                            .hook_ips()
                            .and_then(|mut m| m.insert(key, cookie, 0).map_err(map_error))
                        {
                            // Leave nothing half attached.
                            self.detach(links);
                            return Err(e);
                        }
                        links.1.push(key);
                    }
                    None => warn!(
                        "pid {pid}: {} is not mapped yet: its calls will count as unknown_hook \
                         drops (this kernel has no attach cookies)",
                        hook.spec.symbol
                    ),
                }
            }
            for &program in hook.spec.kind.programs() {
                let name = program.name();
                let prog = uprobe(&mut self.ebpf, name)?;
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(offset),
                    cookie: (self.object == BpfObject::Full).then_some(cookie),
                };
                let link = prog
                    .attach(point, &object.host_path, UProbeScope::OneProcess(pid))
                    .map_err(|e| LoaderError::Attach {
                        program: name,
                        target: format!("{} ({})", object.path, hook.spec.symbol),
                        offset,
                        source: Box::new(e),
                    });
                match link {
                    Ok(link) => links.0.push((name, link)),
                    Err(e) => {
                        // Leave nothing half attached.
                        self.detach(links);
                        return Err(e);
                    }
                }
                debug!("attached {name} to {} at {}+{offset:#x}", hook.spec.symbol, object.path);
            }
        }
        self.attached += links.len();
        Ok(links)
    }

    /// Gives the stack walk the unwind tables of process `pid`'s executable mappings (each
    /// object's rows are loaded once, for every process that maps it). Without a table, or
    /// when the row array is full, a mapping's frames fall back to the frame pointer (auto)
    /// or end the stack (dwarf). Failures are logged, never fatal: stacks then lose depth.
    /// Called again as the process runs: nothing is done unless its executable mappings
    /// changed (a library loaded with `dlopen`, or unloaded).
    pub fn load_unwind_tables(&mut self, pid: u32) {
        let Some(tables) = self.unwind.as_mut() else { return };
        let began = std::time::Instant::now();
        let Ok(maps) = crate::procfs::read_maps(pid) else { return };
        let executable: Vec<(u64, u64, u64)> = maps
            .iter()
            .filter(|m| m.is_file() && m.perms.contains('x'))
            .map(|m| (m.start, m.end, m.inode))
            .collect();
        if executable.is_empty() || tables.written.get(&pid) == Some(&executable) {
            return;
        }
        tables.written.insert(pid, executable);
        let root = crate::procfs::RootPath::of(pid);
        let mut entries = Vec::new();
        for m in maps.iter().filter(|m| m.is_file() && m.perms.contains('x')) {
            let key = (m.inode, m.file_path().unwrap_or_default().to_owned());
            if !tables.objects.contains_key(&key) {
                let rows = object_rows(&mut self.ebpf, tables, pid, &root, m);
                tables.objects.insert(key.clone(), rows);
            }
            let Some(Some(obj)) = tables.objects.get(&key) else { continue };
            let exec = m.perms.contains('x');
            let Some(vaddr) = crate::trace::unwind::mapping_vaddr(&obj.segments, m.offset, exec)
            else {
                continue;
            };
            entries.push(leak_common::UnwindMap {
                start: m.start,
                end: m.end,
                bias: m.start.wrapping_sub(vaddr),
                first: obj.first,
                count: obj.count,
            });
        }
        entries.sort_by_key(|e| e.start);
        let max = leak_common::MAX_UNWIND_MAPS as usize;
        if entries.len() > max {
            warn!(
                "pid {pid}: {} executable mappings, unwind tables for the first {max} only",
                entries.len()
            );
            entries.truncate(max);
        }
        let next_slot = u32::try_from(tables.slots.len()).unwrap_or(u32::MAX);
        let slot = *tables.slots.entry(pid).or_insert(next_slot);
        if slot >= leak_common::MAX_UNWIND_PROCESSES {
            warn!("pid {pid}: unwind tables for {slot} processes already: frame pointers only");
            return;
        }
        tables.generations += 1;
        let generation = tables.generations;
        // The set the walk is not reading: it switches with the UNWIND_MAPS entry, at once.
        let half = *tables.halves.entry(pid).and_modify(|h| *h ^= 1).or_insert(0);
        let first = (slot * 2 + half) * leak_common::MAX_UNWIND_MAPS;
        match write_mappings(&mut self.ebpf, pid, (first, generation), &entries) {
            Ok(()) => debug!(
                "pid {pid}: unwind tables for {} mappings, {} rows loaded in all, {:?}",
                entries.len(),
                tables.next,
                began.elapsed()
            ),
            Err(e) => warn!("pid {pid}: cannot load unwind tables ({e}): frame pointers only"),
        }
    }

    /// Detaches the probes of one process.
    ///
    /// Slow: the kernel unregisters each uprobe after an RCU-tasks-trace grace period, one
    /// after another (about 85 ms per probe here; closing them from several threads does not
    /// overlap them). Only what must go now is detached this way; see
    /// [`Self::release_in_background`].
    pub fn detach(&mut self, links: Links) {
        if !links.1.is_empty()
            && let Ok(mut map) = self.hook_ips()
        {
            for key in &links.1 {
                let _ = map.remove(key);
            }
        }
        for id in links.2 {
            self.attached = self.attached.saturating_sub(1);
            if let Ok(prog) = perf_event(&mut self.ebpf, PROGRAM_PAGE_FAULT)
                && let Err(e) = prog.detach(id)
            {
                debug!("detaching {PROGRAM_PAGE_FAULT}: {e}");
            }
        }
        for (name, id) in links.0 {
            self.attached = self.attached.saturating_sub(1);
            if let Ok(prog) = uprobe(&mut self.ebpf, name)
                && let Err(e) = prog.detach(id)
            {
                debug!("detaching {name}: {e}");
            }
        }
    }

    /// Releases every probe, map and program without waiting for the kernel's unregistration
    /// (see [`Self::detach`]): a helper process inherits the descriptors, waits until we have
    /// exited, and exits itself. Our own exit then only drops references; the last ones, and
    /// the slow unregistration, go with the helper. `leak` returns at once.
    pub fn release_in_background(self) {
        let mut fds = [0; 2];
        // SAFETY: valid out-array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return;
        }
        // SAFETY: the child only calls async-signal-safe functions (open, dup2, close, read,
        // _exit).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: child side, see above.
            unsafe {
                libc::close(fds[1]);
                // Not holding the caller's output open (a pipe reader waits for EOF).
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                for fd in 0..3 {
                    libc::dup2(null, fd);
                }
                let mut b = 0u8;
                // EOF: every holder of the write end, i.e. the parent, has exited.
                while libc::read(fds[0], (&raw mut b).cast(), 1) != 0 {}
                libc::_exit(0);
            }
        }
        // SAFETY: our read end; the write end stays open until we exit (deliberately leaked).
        unsafe { libc::close(fds[0]) };
        // Dropping here only drops our references when the fork succeeded.
        drop(self);
    }

    /// The compatible object's map of hooks by address.
    fn hook_ips(
        &mut self,
    ) -> Result<aya::maps::HashMap<&mut aya::maps::MapData, leak_common::AllocKey, u64>, LoaderError>
    {
        let map = self
            .ebpf
            .map_mut(leak_common::MAP_HOOK_IPS)
            .ok_or_else(|| LoaderError::Object(format!("no map {}", leak_common::MAP_HOOK_IPS)))?;
        aya::maps::HashMap::try_from(map).map_err(map_error)
    }

    /// Probes attached by [`Self::attach_allocator`].
    #[must_use]
    pub fn attached(&self) -> usize {
        self.attached
    }

    /// Starts a growth profile of process `pid`: the page-fault program on a software event
    /// of each of its threads, inherited by the threads and children they start. Threads are
    /// listed until a pass finds no new one, so one started meanwhile by a thread not yet
    /// covered is found too. (One event per thread rather than per CPU: a per-CPU event
    /// would run the program for every fault on the machine.)
    ///
    /// # Errors
    /// An event could not be opened or attached.
    pub fn attach_faults(&mut self, pid: NonZeroU32) -> Result<Links, LoaderError> {
        self.load_unwind_tables(pid.get());
        // What is resident already is not the profile's growth (read before the events
        // start: a page faulted in between is then both, and counts as before).
        match crate::trace::pagemap::Baseline::read(pid.get()) {
            Ok(b) => {
                debug!("pid {pid}: {} pages resident before the profile", b.pages());
                self.baseline.insert(pid.get(), b);
            }
            Err(e) => warn!("pid {pid}: cannot read what is resident already ({e})"),
        }
        let mut links = Links::default();
        let mut seen = std::collections::HashSet::new();
        loop {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| {
                    d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            let new: Vec<u32> = tasks.into_iter().filter(|t| seen.insert(*t)).collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                let attached = perf_event(&mut self.ebpf, PROGRAM_PAGE_FAULT)?.attach(
                    PerfEventConfig::Software(SoftwareEvent::PageFaults),
                    PerfEventScope::OneProcess { pid: tid, cpu: None },
                    SamplePolicy::Period(1),
                    true,
                );
                match attached {
                    Ok(link) => links.2.push(link),
                    // The thread ended meanwhile.
                    Err(ProgramError::SyscallError(e))
                        if e.io_error.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => {
                        // `detach` counts them off.
                        self.attached += links.len();
                        self.detach(links);
                        return Err(LoaderError::Attach {
                            program: PROGRAM_PAGE_FAULT,
                            target: format!("page faults of thread {tid} of pid {pid}"),
                            offset: 0,
                            source: Box::new(e),
                        });
                    }
                }
            }
        }
        if links.is_empty() {
            return Err(LoaderError::Object(format!("pid {pid} has no threads left to profile")));
        }
        self.attached += links.len();
        debug!("page-fault events on {} threads of pid {pid}", links.len());
        Ok(links)
    }

    /// Attaches the program that SIGSTOPs process `pid` when it reaches `exe`'s entry point.
    ///
    /// # Errors
    /// The probe did not attach.
    pub fn attach_entry_stop(
        &mut self,
        exe: &Path,
        entry_offset: u64,
        pid: NonZeroU32,
    ) -> Result<Links, LoaderError> {
        let prog = uprobe(&mut self.ebpf, PROGRAM_ENTRY_STOP)?;
        let link = prog
            .attach(
                UProbeAttachLocation::AbsoluteOffset(entry_offset),
                exe,
                UProbeScope::OneProcess(pid),
            )
            .map_err(|e| LoaderError::Attach {
                program: PROGRAM_ENTRY_STOP,
                target: exe.display().to_string(),
                offset: entry_offset,
                source: Box::new(e),
            })?;
        Ok(Links(vec![(PROGRAM_ENTRY_STOP, link)], Vec::new(), Vec::new()))
    }

    /// Measures what a probe hit costs a thread here: the time of a call to a function of our
    /// own, bare, with an entry probe, then with a return probe too. The programs are leak's
    /// (flagged to return after counting the hit), so the trap and the programs' start are
    /// measured; what they do for a real allocation comes on top (see docs/benchmarks.md).
    /// The probes stay attached (they fire only in this process, which never calls the
    /// function again) and go with the others.
    ///
    /// # Errors
    /// A probe did not attach.
    pub fn calibrate(&mut self) -> Result<ProbeCost, LoaderError> {
        let me = NonZeroU32::new(std::process::id()).ok_or(LoaderError::Missing("pid"))?;
        let exe = Path::new("/proc/self/exe");
        let bare = time_calibration_calls();
        let mut costs = [0.0; 2];
        for (i, program) in [Program::AllocEnter, Program::AllocExit].into_iter().enumerate() {
            let name = program.name();
            // The compatible object, without cookies, knows these probes by leak's pid.
            let cookie = u64::from(leak_common::MAX_HOOKS - 1) | COOKIE_CALIBRATION;
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::Symbol(CALIBRATION_SYMBOL),
                cookie: (self.object == BpfObject::Full).then_some(cookie),
            };
            let link = uprobe(&mut self.ebpf, name)?
                .attach(point, exe, UProbeScope::OneProcess(me))
                .map_err(|e| LoaderError::Attach {
                    program: name,
                    target: format!("leak ({CALIBRATION_SYMBOL})"),
                    offset: 0,
                    source: Box::new(e),
                })?;
            self.calibration.0.push((name, link));
            costs[i] = time_calibration_calls();
        }
        let cost = ProbeCost { entry_ns: ns(costs[0] - bare), return_ns: ns(costs[1] - costs[0]) };
        debug!(
            "probe cost here: {} ns an entry hit, {} ns a return hit",
            cost.entry_ns, cost.return_ns
        );
        Ok(cost)
    }

    /// Forwards pending BPF log records to the `log` facade.
    pub fn flush_logs(&mut self) {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }
}

/// What an attach failure's errno means here, to follow the kernel's message.
fn attach_hint(e: &ProgramError) -> &'static str {
    let ProgramError::SyscallError(e) = e else { return "" };
    match e.io_error.raw_os_error() {
        Some(libc::ESRCH) => " (the process exited while the probes were being attached)",
        Some(libc::ENOENT) => {
            " (the file is gone: deleted or replaced since the process mapped it)"
        }
        Some(libc::EINVAL) => {
            " (the kernel refused the probe point: an offset that is not an instruction of \
             this file, or a file system without uprobe support)"
        }
        Some(libc::EMFILE) => " (out of file descriptors: raise `ulimit -n`)",
        Some(libc::ENOSPC | libc::ENOMEM) => " (the kernel is out of memory for probes)",
        Some(libc::EOPNOTSUPP) => " (this kernel cannot place uprobes here)",
        _ => "",
    }
}

/// One program's load, as `leak check` shows it.
#[derive(Debug)]
pub struct ProgramCheck {
    /// The program.
    pub program: &'static str,
    /// Loaded, or why not.
    pub result: Result<(), LoaderError>,
    /// How long the kernel took (the verifier's work, mostly).
    pub took: std::time::Duration,
}

/// Every program of the object, in load order.
fn program_names() -> impl Iterator<Item = &'static str> {
    Program::ALL.iter().map(|p| p.name()).chain([PROGRAM_ENTRY_STOP, PROGRAM_PAGE_FAULT])
}

/// Loads program `name`; a verifier rejection becomes [`LoaderError::Rejected`], its log
/// printed line by line at `-v`.
fn load_program(ebpf: &mut Ebpf, name: &'static str, object: BpfObject) -> Result<(), LoaderError> {
    let loaded = if name == PROGRAM_PAGE_FAULT {
        perf_event(ebpf, name)?.load()
    } else {
        uprobe(ebpf, name)?.load()
    };
    match loaded {
        Ok(()) => Ok(()),
        // EACCES with a log is the verifier saying no (EPERM is the privilege check).
        Err(ProgramError::LoadError { io_error, verifier_log })
            if io_error.raw_os_error() == Some(libc::EACCES)
                || io_error.raw_os_error() == Some(libc::EINVAL)
                    && !verifier_log.to_string().trim().is_empty() =>
        {
            let log = verifier_log.to_string();
            let kernel = kernel().0.release.clone();
            log::info!("the verifier of kernel {kernel} on {name} ({object} object):");
            for line in log.lines() {
                log::info!("  {line}");
            }
            Err(LoaderError::Rejected {
                program: name,
                object,
                kernel,
                reason: verifier_reason(&log),
                log,
            })
        }
        Err(e) => Err(LoaderError::Program { program: name, source: Box::new(e) }),
    }
}

/// The allocation table's layout for `object`.
fn layout(object: BpfObject, opts: &LoadOptions) -> leak_common::AllocLayout {
    match object {
        BpfObject::Full => leak_common::alloc_layout(opts.max_allocs),
        BpfObject::Compat => leak_common::compat_alloc_layout(opts.max_allocs),
    }
}

/// Buckets of the site table for `object` (the compatible object uses the hash map only).
fn site_buckets(object: BpfObject, opts: &LoadOptions) -> u32 {
    match object {
        BpfObject::Full => leak_common::site_buckets(opts.max_stacks),
        BpfObject::Compat => 1,
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, LoaderError> {
    ebpf.program_mut(name)
        .ok_or(LoaderError::Missing(name))?
        .try_into()
        .map_err(|e| LoaderError::Program { program: name, source: Box::new(e) })
}

fn perf_event<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut PerfEvent, LoaderError> {
    ebpf.program_mut(name)
        .ok_or(LoaderError::Missing(name))?
        .try_into()
        .map_err(|e| LoaderError::Program { program: name, source: Box::new(e) })
}

#[expect(clippy::needless_pass_by_value, reason = "used as `map_err(map_error)`")]
fn map_error(e: aya::maps::MapError) -> LoaderError {
    LoaderError::Object(e.to_string())
}

/// Builds the unwind table of mapping `m`'s object and appends its rows to `UNWIND_ROWS`.
fn object_rows(
    ebpf: &mut Ebpf,
    tables: &mut UnwindTables,
    pid: u32,
    root: &crate::procfs::RootPath,
    m: &crate::procfs::MapEntry,
) -> Option<ObjectRows> {
    let name = m.file_path().unwrap_or_default();
    let path = crate::procfs::locate(pid, root, m)?;
    let data = std::fs::read(&path).map_err(|e| debug!("reading {name}: {e}")).ok()?;
    let table = crate::trace::unwind::build(&data).map_err(|e| debug!("{name}: {e}")).ok()?;
    let count = u32::try_from(table.rows.len()).ok()?;
    if count == 0 {
        debug!("{name}: no call frame information");
        return None;
    }
    let first = tables.next;
    if tables.capacity.saturating_sub(first) < count {
        tables.overflowed += 1;
        warn!(
            "{name}: no room for its {count} unwind rows ({} of {} used): raise --unwind-rows",
            first, tables.capacity
        );
        return None;
    }
    let map = ebpf.map_mut(leak_common::MAP_UNWIND_ROWS)?;
    let mut array = aya::maps::Array::<_, leak_common::UnwindRow>::try_from(map).ok()?;
    for (i, row) in (first..).zip(&table.rows) {
        if let Err(e) = array.set(i, row, 0) {
            warn!("{name}: writing its unwind rows: {e}");
            return None;
        }
    }
    tables.next = first + count;
    Some(ObjectRows { first, count, segments: crate::trace::unwind::load_segments(&data) })
}

/// Writes process `pid`'s mappings at `first` in `UNWIND_MAPPINGS`, then points its
/// `UNWIND_MAPS` entry at them.
fn write_mappings(
    ebpf: &mut Ebpf,
    pid: u32,
    (first, generation): (u32, u64),
    entries: &[leak_common::UnwindMap],
) -> Result<(), aya::maps::MapError> {
    let missing = |name: &str| aya::maps::MapError::InvalidName { name: name.into() };
    let map = ebpf
        .map_mut(leak_common::MAP_UNWIND_MAPPINGS)
        .ok_or_else(|| missing(leak_common::MAP_UNWIND_MAPPINGS))?;
    let mut array = aya::maps::Array::<_, leak_common::UnwindMap>::try_from(map)?;
    for (i, e) in (first..).zip(entries) {
        array.set(i, e, 0)?;
    }
    let n = u32::try_from(entries.len()).unwrap_or(0);
    let map = ebpf
        .map_mut(leak_common::MAP_UNWIND_MAPS)
        .ok_or_else(|| missing(leak_common::MAP_UNWIND_MAPS))?;
    aya::maps::HashMap::<_, u32, leak_common::ProcessMaps>::try_from(map)?.insert(
        pid,
        leak_common::ProcessMaps { first, n, generation },
        0,
    )?;
    // After the switch: a walk that sees this generation sees the new set (see
    // `leak_common::MAP_UNWIND_GENERATION`).
    let map = ebpf
        .map_mut(leak_common::MAP_UNWIND_GENERATION)
        .ok_or_else(|| missing(leak_common::MAP_UNWIND_GENERATION))?;
    aya::maps::Array::<_, u64>::try_from(map)?.set(0, generation, 0)
}

#[cfg(test)]
mod tests {
    use super::{BpfObject, budget, object_bytes, verifier_reason};

    /// Every program of both objects fits the 512-byte stack as 5.10-6.12 verifiers count it,
    /// whatever the kernel the tests run on allows (6.13+ may give subprograms private
    /// stacks).
    #[test]
    fn every_program_fits_the_classic_stack_limit() {
        for object in [BpfObject::Full, BpfObject::Compat] {
            let b = budget::analyze(object_bytes(object)).expect("the BPF object");
            assert!(b.programs.len() >= 16, "{object}: programs: {:?}", b.programs);
            let over: Vec<_> = b
                .programs
                .iter()
                .map(|p| b.chain(p))
                .inspect(|c| {
                    eprintln!("{object} {}: {} bytes: {:?}", c.program, c.charged, c.frames);
                })
                .filter(|c| c.charged > budget::MAX_STACK || c.unresolved > 0)
                .collect();
            assert!(over.is_empty(), "{object}: over the 512-byte stack: {over:#?}");
        }
    }

    /// The compatible object holds no helper or instruction a 5.10 verifier rejects, even
    /// in code it would never reach (5.10 checks some instructions before following paths).
    #[test]
    fn the_compatible_object_uses_nothing_newer_than_5_10() {
        let b = budget::analyze(object_bytes(BpfObject::Compat)).expect("the BPF object");
        for p in &b.programs {
            assert_eq!(b.late_features(p), std::collections::BTreeSet::new(), "{p}");
        }
        // The full object does use them (the check sees them).
        let full = budget::analyze(object_bytes(BpfObject::Full)).expect("the BPF object");
        let late = full.late_features("alloc_exit");
        assert!(late.iter().any(|f| f.starts_with("bpf_loop")), "{late:?}");
        assert!(late.iter().any(|f| f.starts_with("bpf_get_attach_cookie")), "{late:?}");
        assert!(late.iter().any(|f| f.starts_with("atomic")), "{late:?}");
    }

    #[test]
    fn an_attach_failure_says_what_its_errno_means() {
        let e = |errno| super::LoaderError::Attach {
            program: "alloc_enter",
            target: "/usr/lib/libc.so.6 (malloc)".into(),
            offset: 0x1234,
            source: Box::new(aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
                call: "perf_event_open",
                io_error: std::io::Error::from_raw_os_error(errno),
            })),
        };
        let text = e(libc::ESRCH).to_string();
        assert!(
            text.starts_with("cannot attach alloc_enter to /usr/lib/libc.so.6 (malloc)+0x1234")
        );
        assert!(text.contains("perf_event_open"), "{text}");
        assert!(
            text.ends_with("(the process exited while the probes were being attached)"),
            "{text}"
        );
        assert!(e(libc::ENOENT).to_string().contains("the file is gone"));
        assert!(!e(libc::EBUSY).to_string().contains(" (the"));
    }

    #[test]
    fn the_verifier_reason_is_its_last_meaningful_line() {
        let log = "Func#4 ('leak_find_row') is safe for any args that match its prototype\n\
                   combined stack size of 3 calls is 528. Too large\n\
                   verification time 2392597 usec\n\
                   stack depth 312+144+0+64+24+0\n\
                   processed 287415 insns (limit 1000000) max_states_per_insn 16 total_states \
                   18542 peak_states 31610 mark_read 0\n";
        assert_eq!(verifier_reason(log), "combined stack size of 3 calls is 528. Too large");
        let log = "1375: (79) r1 = *(u64 *)(r7 +216)     ; R1=scalar() R7=map_value(map=PENDING)\n\
                   1376: (7b) *(u64 *)(r2 +0) = r1\n\
                   invalid access to map value, value_size=1016 off=1016 size=8\n\
                   R2 max value is outside of the allowed memory range\n\
                   processed 32247 insns (limit 1000000)\n";
        assert_eq!(
            verifier_reason(log),
            "invalid access to map value, value_size=1016 off=1016 size=8 (R2 max value is \
             outside of the allowed memory range)"
        );
        assert_eq!(
            verifier_reason("12: (85) call bpf_loop#181\nunknown func bpf_loop#181\n"),
            "unknown func bpf_loop#181"
        );
        assert_eq!(verifier_reason(""), "the verifier gave no reason");
    }
}
