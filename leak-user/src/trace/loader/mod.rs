//! The only place that loads and attaches BPF programs (with `source`, the only aya users).
//!
//! Here: choosing and loading the object ([`Tracer::load`], `leak check`'s [`Tracer::check`]),
//! its maps sized for the options. Beside it: attaching and detaching (`links`), the unwind
//! tables handed to the stack walk (`unwind_rows`), the probe cost measured at start
//! (`calibrate`), what can fail and why (`error`), the kernel's features (`features`), the
//! mapped allocation and site tables (`table`), and the stack budget of every program
//! (`budget`).
use aya::{
    Ebpf, EbpfLoader,
    programs::{PerfEvent, ProgramError, UProbe},
};
use aya_log::EbpfLogger;
use leak_common::{
    DEFAULT_MAX_STACKS, GLOBAL_FILTER_TGID, GLOBAL_PROBE_FLOOR, GLOBAL_SAMPLE_MEAN, GLOBAL_TRACE,
    MAP_ALLOCS, MAP_SAMPLE_GAPS, MAP_SITES, MAP_STACKS, PROGRAM_ENTRY_STOP, PROGRAM_PAGE_FAULT,
    Program,
};
use log::debug;

pub mod budget;
mod calibrate;
mod error;
pub mod features;
mod links;
pub mod multi;
mod table;
mod unwind_rows;
pub use error::{LoaderError, verifier_reason};
pub use features::{BpfObject, Features};
pub use links::Links;
pub(crate) use table::{AllocTable, SiteTable};
use unwind_rows::UnwindTables;

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

pub use crate::analysis::model::ProbeCost;

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
    /// The allocator's programs loaded again for `uprobe_multi` links, when they are used.
    multi: Option<multi::MultiPrograms>,
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
    /// A growth profile: each process's pages at the last snapshot that read them (its
    /// final report, once it has exited and its pagemap is gone).
    pub(crate) last_look: std::collections::HashMap<u32, crate::trace::pagemap::LastLook>,
    /// A look at no pages.
    pub(crate) no_look: crate::trace::pagemap::LastLook,
    /// A growth profile: each profiled process's pages resident when its profile started.
    pub(crate) baseline: std::collections::HashMap<u32, crate::trace::pagemap::Baseline>,
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
        let ra_mask = crate::trace::unwind::return_address_mask();
        let ebpf = EbpfLoader::new()
            .override_global(GLOBAL_FILTER_TGID, &opts.filter_tgid, true)
            .override_global(GLOBAL_TRACE, &trace, true)
            .override_global(GLOBAL_PROBE_FLOOR, &floor, true)
            .override_global(GLOBAL_SAMPLE_MEAN, &opts.sample_mean, true)
            .override_global(leak_common::GLOBAL_UNWIND, &opts.unwind, true)
            .override_global(leak_common::GLOBAL_RA_MASK, &ra_mask, true)
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

    /// The allocator's programs for `uprobe_multi` links (see `multi`): with the full object,
    /// on kernels that make them with a reliable pid filter (6.10+), each process's probes of
    /// one program in one file are one link. Elsewhere, if they do not load (said), or with
    /// `LEAK_UPROBE_MULTI=0`, a perf event per probe, as before 6.10.
    fn multi_programs(
        ebpf: &Ebpf,
        object: BpfObject,
        opts: &LoadOptions,
    ) -> Option<multi::MultiPrograms> {
        if opts.growth
            || object != BpfObject::Full
            || std::env::var_os(multi::MULTI_ENV).is_some_and(|v| v == "0")
        {
            return None;
        }
        let names: Vec<&'static str> = Program::ALL.iter().map(|p| p.name()).collect();
        // Sessions skip the return of a call sampling leaves out: only for `--sample`, and
        // not under the probe floor, whose every call is to pay both traps.
        let sessions: Vec<&'static str> = if opts.sample_mean > 0 && !opts.probe_floor {
            Program::SESSIONS.iter().map(|p| p.name()).collect()
        } else {
            Vec::new()
        };
        match multi::MultiPrograms::load(ebpf, object_bytes(object), &names, &sessions) {
            Ok(Some(m)) => {
                debug!(
                    "allocator programs loaded for uprobe_multi links{}",
                    if m.sessions() > 0 { ", with sessions" } else { "" }
                );
                Some(m)
            }
            Ok(None) => {
                debug!("no uprobe_multi links here (6.10+): a perf event per probe");
                None
            }
            Err(e) => {
                log::warn!("uprobe_multi links unavailable, a perf event per probe instead: {e}");
                None
            }
        }
    }

    /// The tracer around a loaded object.
    fn finish(mut ebpf: Ebpf, object: BpfObject, opts: &LoadOptions) -> Result<Self, LoaderError> {
        // Before the logger takes its map out of `ebpf`: the second copy needs every map.
        let multi = Self::multi_programs(&ebpf, object, opts);
        let probes = match &multi {
            _ if opts.growth => 3,
            Some(m) if m.sessions() > 0 => 2,
            Some(_) => 1,
            None => 0,
        };
        PROBES.store(probes, std::sync::atomic::Ordering::Relaxed);
        let logger = match EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                debug!("BPF logging unavailable: {e}");
                None
            }
        };
        fill_sample_gaps(&mut ebpf)?;
        let unwind =
            (opts.unwind != leak_common::UNWIND_FP).then(|| UnwindTables::new(opts.unwind_rows));
        let table = AllocTable::new(&ebpf, layout(object, opts))
            .map_err(|e| LoaderError::Object(e.to_string()))?;
        let sites = SiteTable::new(&ebpf, site_buckets(object, opts))
            .map_err(|e| LoaderError::Object(e.to_string()))?;
        Ok(Self {
            ebpf,
            multi,
            logger,
            attached: 0,
            calibration: Links::default(),
            unwind,
            table,
            sites,
            object,
            growth: opts.growth,
            last_look: std::collections::HashMap::new(),
            no_look: crate::trace::pagemap::LastLook::default(),
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

    /// Forwards pending BPF log records to the `log` facade.
    pub fn flush_logs(&mut self) {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
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

/// How the last tracer loaded attaches its probes (see [`probes_attached`]).
static PROBES: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// How the probes of the tracer loaded last are attached, as the report names it:
/// `perf_event`, `uprobe_multi`, `uprobe_session` or `page_faults`.
#[must_use]
pub fn probes_attached() -> &'static str {
    match PROBES.load(std::sync::atomic::Ordering::Relaxed) {
        1 => "uprobe_multi",
        2 => "uprobe_session",
        3 => "page_faults",
        _ => "perf_event",
    }
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

#[cfg(test)]
mod tests {
    use super::{BpfObject, budget, object_bytes};

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
}
