//! The only place that loads and attaches BPF programs (with `source`, the only aya users).
use std::{num::NonZeroU32, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use aya_log::EbpfLogger;
use leak_common::{
    COOKIE_AFTER_SYSCALL, DEFAULT_MAX_STACKS, GLOBAL_FILTER_TGID, GLOBAL_TRACE, MAP_ALLOCS,
    MAP_STACKS, PROGRAM_ENTRY_STOP, Program,
};
use log::{debug, warn};

use crate::target::AllocatorPlan;

/// The BPF object, built by build.rs from `leak-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leak-ebpf"));

/// Errors loading or attaching.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The object did not load (verifier, permissions, map creation).
    #[error("cannot load the BPF programs: {0}")]
    Load(#[source] Box<aya::EbpfError>),
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
    #[error("cannot attach {program} to {target}+{offset:#x}: {source}")]
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
}

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
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            filter_tgid: 0,
            max_allocs: leak_common::DEFAULT_MAX_ALLOCS,
            max_stacks: DEFAULT_MAX_STACKS,
            trace: false,
        }
    }
}

/// Loaded BPF programs and maps. Dropping it detaches every probe.
pub struct Tracer {
    pub(crate) ebpf: Ebpf,
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    entry_stop: Option<UProbeLinkId>,
    attached: usize,
}

impl Tracer {
    /// Loads the object and every program (so verifier problems surface before attaching).
    ///
    /// # Errors
    /// See [`LoaderError`].
    pub fn load(opts: LoadOptions) -> Result<Self, LoaderError> {
        let trace = u32::from(opts.trace);
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_FILTER_TGID, &opts.filter_tgid, true)
            .override_global(GLOBAL_TRACE, &trace, true)
            .map_max_entries(MAP_ALLOCS, opts.max_allocs)
            .map_max_entries(MAP_STACKS, opts.max_stacks)
            .load(EBPF_OBJECT)
            .map_err(|e| LoaderError::Load(Box::new(e)))?;
        let logger = match EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                debug!("BPF logging unavailable: {e}");
                None
            }
        };
        let names: Vec<&'static str> = Program::ALL
            .iter()
            .map(|p| p.name())
            .chain(std::iter::once(PROGRAM_ENTRY_STOP))
            .collect();
        for name in names {
            let prog = uprobe(&mut ebpf, name)?;
            prog.load().map_err(|e| LoaderError::Program { program: name, source: Box::new(e) })?;
        }
        Ok(Self { ebpf, logger, entry_stop: None, attached: 0 })
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
    ) -> Result<usize, LoaderError> {
        let mut attached = 0;
        for (cookie, hook) in plan.hooks.iter().enumerate() {
            let object = &plan.objects[hook.object];
            let offset = hook.file_offset();
            for &program in hook.spec.kind.programs() {
                let name = program.name();
                let prog = uprobe(&mut self.ebpf, name)?;
                // The cookie tells the shared program which hook fired: the allocation's kind
                // and its hit counter.
                let flags = if hook.placement.after_syscall { COOKIE_AFTER_SYSCALL } else { 0 };
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(offset),
                    cookie: Some(cookie as u64 | flags),
                };
                prog.attach(point, &object.host_path, UProbeScope::OneProcess(pid)).map_err(
                    |e| LoaderError::Attach {
                        program: name,
                        target: format!("{} ({})", object.path, hook.spec.symbol),
                        offset,
                        source: Box::new(e),
                    },
                )?;
                debug!("attached {name} to {} at {}+{offset:#x}", hook.spec.symbol, object.path);
                attached += 1;
            }
        }
        self.attached += attached;
        Ok(attached)
    }

    /// Probes attached by [`Self::attach_allocator`].
    #[must_use]
    pub fn attached(&self) -> usize {
        self.attached
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
    ) -> Result<(), LoaderError> {
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
        self.entry_stop = Some(link);
        Ok(())
    }

    /// Detaches the entry-stop program.
    pub fn detach_entry_stop(&mut self) {
        if let Some(link) = self.entry_stop.take()
            && let Ok(prog) = uprobe(&mut self.ebpf, PROGRAM_ENTRY_STOP)
            && let Err(e) = prog.detach(link)
        {
            warn!("detaching {PROGRAM_ENTRY_STOP}: {e}");
        }
    }

    /// Forwards pending BPF log records to the `log` facade.
    pub fn flush_logs(&mut self) {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, LoaderError> {
    ebpf.program_mut(name)
        .ok_or(LoaderError::Missing(name))?
        .try_into()
        .map_err(|e| LoaderError::Program { program: name, source: Box::new(e) })
}
