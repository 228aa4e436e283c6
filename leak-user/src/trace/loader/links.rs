//! Attaching and detaching: the allocator's probes of one process, a growth profile's
//! page-fault events, `leak run`'s stop at the entry point. Each returns the [`Links`] that
//! detach it.
use std::{num::NonZeroU32, path::Path};

use aya::programs::{
    ProgramError,
    perf_event::{PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent},
    uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
};
use leak_common::{COOKIE_AFTER_SYSCALL, COOKIE_NOTE_FREE, PROGRAM_ENTRY_STOP, PROGRAM_PAGE_FAULT};
use log::{debug, warn};

use super::{BpfObject, LoaderError, Tracer, map_error, perf_event, uprobe};
use crate::{trace::hooks::HookKind, trace::target::AllocatorPlan};

/// The probes attached for one process, to detach them when it execs or exits (and, for the
/// compatible object, their entries in `HOOK_IPS`).
/// A growth profile's are its page-fault events, one per thread it found.
#[derive(Debug, Default)]
pub struct Links {
    /// Uprobes, with their program's name (to detach them through it).
    pub(super) uprobes: Vec<(&'static str, UProbeLinkId)>,
    /// The compatible object's entries in `HOOK_IPS` (it has no attach cookies).
    pub(super) hook_ips: Vec<leak_common::AllocKey>,
    /// A growth profile's page-fault events, one per thread.
    pub(super) fault_events: Vec<PerfEventLinkId>,
    /// `uprobe_multi` links, with the probes each holds: closing one detaches them all.
    pub(super) multi: Vec<(std::os::fd::OwnedFd, usize)>,
}

impl Links {
    /// Number of probes (or page-fault events).
    #[must_use]
    pub fn len(&self) -> usize {
        self.uprobes.len() + self.fault_events.len() + self.multi.iter().map(|m| m.1).sum::<usize>()
    }

    /// No probes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.uprobes.is_empty() && self.fault_events.is_empty() && self.multi.is_empty()
    }
}

/// The attach cookie of hook `index`: it tells the shared program which hook fired (the
/// allocation's kind and its hit counter), with the hook's flags.
fn cookie(index: usize, hook: &crate::trace::target::Hook) -> u64 {
    let mut flags = if hook.placement.after_syscall { COOKIE_AFTER_SYSCALL } else { 0 };
    if hook.spec.kind == HookKind::Free && hook.spec.symbol != "free" {
        flags |= COOKIE_NOTE_FREE;
    }
    index as u64 | flags
}

impl Tracer {
    /// Attaches every probe of `plan`, firing only in process `pid` (load its unwind tables
    /// first: [`Self::load_unwind_tables`]). Returns the probes attached. At most `leak_common::MAX_HOOKS` hooks (the hit counters' size).
    ///
    /// # Errors
    /// A probe did not attach.
    pub fn attach_allocator(
        &mut self,
        plan: &AllocatorPlan,
        pid: NonZeroU32,
    ) -> Result<Links, LoaderError> {
        let started = std::time::Instant::now();
        let links = if self.multi.is_some() {
            self.attach_allocator_multi(plan, pid)
        } else {
            self.attach_allocator_each(plan, pid)
        }?;
        debug!(
            "pid {pid}: {} probes attached in {:.1?} ({} links)",
            links.len(),
            started.elapsed(),
            links.uprobes.len() + links.multi.len()
        );
        Ok(links)
    }

    /// [`Self::attach_allocator`] with a perf event per probe.
    fn attach_allocator_each(
        &mut self,
        plan: &AllocatorPlan,
        pid: NonZeroU32,
    ) -> Result<Links, LoaderError> {
        let mut links = Links::default();
        // The compatible object finds an entry probe's hook by its address instead of a
        // cookie: where each probe lies in the process.
        let addresses =
            (self.object == BpfObject::Compat).then(|| plan.runtime_addresses(pid.get()));
        for (index, hook) in plan.hooks.iter().enumerate() {
            let object = &plan.objects[hook.object];
            let offset = hook.file_offset();
            let cookie = cookie(index, hook);
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
                        links.hook_ips.push(key);
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
                    Ok(link) => links.uprobes.push((name, link)),
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

    /// [`Self::attach_allocator`] through `uprobe_multi` links: one per program and file.
    fn attach_allocator_multi(
        &mut self,
        plan: &AllocatorPlan,
        pid: NonZeroU32,
    ) -> Result<Links, LoaderError> {
        let Some(multi) = &self.multi else { return Ok(Links::default()) };
        // (program, object) -> (offsets, cookies)
        let mut groups: std::collections::BTreeMap<_, (Vec<u64>, Vec<u64>)> =
            std::collections::BTreeMap::new();
        for (index, hook) in plan.hooks.iter().enumerate() {
            let session = hook.spec.kind.session().filter(|p| multi.has_session(p.name()));
            let programs = match &session {
                Some(session) => std::slice::from_ref(session),
                None => hook.spec.kind.programs(),
            };
            for &program in programs {
                let group = groups.entry((program, hook.object)).or_default();
                group.0.push(hook.file_offset());
                group.1.push(cookie(index, hook));
            }
        }
        let mut links = Links::default();
        for ((program, object), (offsets, cookies)) in groups {
            let object = &plan.objects[object];
            let name = program.name();
            let at = super::multi::Probes {
                path: &object.host_path,
                offsets: &offsets,
                cookies: &cookies,
                pid: pid.get(),
                ret: program.is_return(),
            };
            match multi.attach(name, &at) {
                Ok(fd) => {
                    debug!(
                        "attached {name} to {} offsets of {} as one link",
                        offsets.len(),
                        object.path
                    );
                    links.multi.push((fd, offsets.len()));
                }
                Err(e) => {
                    self.detach(links);
                    return Err(LoaderError::Attach {
                        program: name,
                        target: format!(
                            "{} (uprobe_multi, {} offsets)",
                            object.path,
                            offsets.len()
                        ),
                        offset: offsets.first().copied().unwrap_or(0),
                        source: Box::new(ProgramError::IOError(e)),
                    });
                }
            }
        }
        self.attached += links.len();
        Ok(links)
    }

    /// Starts a growth profile of process `pid`: the page-fault program on a software event
    /// of each of its threads, inherited by the threads and children they start. Threads are
    /// listed until a pass finds no new one, so one started meanwhile by a thread not yet
    /// covered is found too. (One event per thread rather than per CPU: a per-CPU event
    /// would run the program for every fault on the machine.) Its unwind tables are the
    /// caller's to load first, as for [`Self::attach_allocator`]; the pages resident already
    /// are read here, as they must be just before the events start.
    ///
    /// # Errors
    /// An event could not be opened or attached.
    pub fn attach_faults(&mut self, pid: NonZeroU32) -> Result<Links, LoaderError> {
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
                    Ok(link) => links.fault_events.push(link),
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
        Ok(Links { uprobes: vec![(PROGRAM_ENTRY_STOP, link)], ..Links::default() })
    }

    /// Detaches the probes of one process.
    ///
    /// Slow: the kernel unregisters each uprobe after an RCU-tasks-trace grace period, one
    /// after another (about 85 ms per probe here; closing them from several threads does not
    /// overlap them). Only what must go now is detached this way; see
    /// [`Self::release_in_background`].
    pub fn detach(&mut self, links: Links) {
        let started = std::time::Instant::now();
        let (probes, count) = (links.len(), links.uprobes.len() + links.multi.len());
        if !links.hook_ips.is_empty()
            && let Ok(mut map) = self.hook_ips()
        {
            for key in &links.hook_ips {
                let _ = map.remove(key);
            }
        }
        for id in links.fault_events {
            self.attached = self.attached.saturating_sub(1);
            if let Ok(prog) = perf_event(&mut self.ebpf, PROGRAM_PAGE_FAULT)
                && let Err(e) = prog.detach(id)
            {
                debug!("detaching {PROGRAM_PAGE_FAULT}: {e}");
            }
        }
        // Each link's release waits for its own grace period; closed from a thread each,
        // the waits overlap.
        std::thread::scope(|scope| {
            for (link, probes) in links.multi {
                self.attached = self.attached.saturating_sub(probes);
                scope.spawn(move || drop(link));
            }
        });
        for (name, id) in links.uprobes {
            self.attached = self.attached.saturating_sub(1);
            if let Ok(prog) = uprobe(&mut self.ebpf, name)
                && let Err(e) = prog.detach(id)
            {
                debug!("detaching {name}: {e}");
            }
        }
        if probes > 0 {
            debug!("{probes} probes detached in {:.1?} ({count} links)", started.elapsed());
        }
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
}
