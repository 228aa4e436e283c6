//! What a probe hit costs a thread on this machine, measured at start on a function of our
//! own (`--max-overhead` and the reports' probe time rest on it).
use std::{num::NonZeroU32, path::Path};

use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope};
use leak_common::{COOKIE_CALIBRATION, Program};
use log::debug;

use super::{BpfObject, LoaderError, Tracer, uprobe};
use crate::analysis::model::ProbeCost;

/// The function [`Tracer::calibrate`] probes. Written in assembly so that it starts, like the
/// allocator functions leak probes, with an instruction the kernel emulates (a compiler might
/// start it with one the kernel must single-step, which costs 15 times more on x86-64).
const CALIBRATION_SYMBOL: &str = "leak_probe_calibration";

// x86-64: a `push`, emulated.
#[cfg(target_arch = "x86_64")]
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

// arm64: a branch, which every kernel simulates (its `stp x29, x30, [sp, #-16]!` would be
// stepped out of line), leaving x30 alone for the return probe at the same address.
#[cfg(target_arch = "aarch64")]
core::arch::global_asm!(
    ".globl leak_probe_calibration",
    ".type leak_probe_calibration, %function",
    "leak_probe_calibration:",
    "b 1f",
    "1:",
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

impl Tracer {
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
            // Probes as the allocator's are attached: through a `uprobe_multi` link where
            // they are (which some kernels allow without CAP_SYS_ADMIN, unlike a perf event).
            if let Some(multi) = &self.multi {
                let offset = crate::trace::elf::ElfImage::open(exe)
                    .ok()
                    .and_then(|elf| elf.function(CALIBRATION_SYMBOL))
                    .map(|f| f.file_offset)
                    .ok_or(LoaderError::Missing("leak's calibration function"))?;
                let at = super::multi::Probes {
                    path: exe,
                    offsets: &[offset],
                    cookies: &[cookie],
                    pid: me.get(),
                    ret: program.is_return(),
                };
                let link = multi.attach(name, &at).map_err(|e| LoaderError::Attach {
                    program: name,
                    target: format!("leak ({CALIBRATION_SYMBOL})"),
                    offset,
                    source: Box::new(aya::programs::ProgramError::IOError(e)),
                })?;
                self.calibration.multi.push((link, 1));
            } else {
                let link = uprobe(&mut self.ebpf, name)?
                    .attach(point, exe, UProbeScope::OneProcess(me))
                    .map_err(|e| LoaderError::Attach {
                        program: name,
                        target: format!("leak ({CALIBRATION_SYMBOL})"),
                        offset: 0,
                        source: Box::new(e),
                    })?;
                self.calibration.uprobes.push((name, link));
            }
            costs[i] = time_calibration_calls();
        }
        let cost = ProbeCost { entry_ns: ns(costs[0] - bare), return_ns: ns(costs[1] - costs[0]) };
        debug!(
            "probe cost here: {} ns an entry hit, {} ns a return hit",
            cost.entry_ns, cost.return_ns
        );
        Ok(cost)
    }
}
