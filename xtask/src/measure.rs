//! What the bench and the servers' bench measure with: the tracer configurations, the peers'
//! commands, waiting for a line or for leak to be gone, CPU time and medians.
use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};

use crate::util::{as_root, output};

/// How a churn run is traced.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tracer {
    None,
    /// Empty BPF programs at exactly the points leak uses.
    ProbeFloor,
    /// The default: stacks walked with unwind tables (`--unwind auto`).
    LeakFull,
    /// Stacks walked by frame pointers only (`--unwind fp`).
    LeakFp,
    /// `--sample` at its default mean (512 KiB).
    LeakSampled,
    /// A growth profile (`--mode growth`): page faults, not allocator calls.
    LeakGrowth,
    /// The full trace with the compatible BPF object (what kernels before 5.17 run).
    LeakCompat,
    /// The full trace by another `leak` binary (`--baseline`: the code before a change), in
    /// the same run.
    LeakBaseline,
    /// bcc's memleak (full trace, its defaults).
    Memleak,
    /// heaptrack (`LD_PRELOAD`; in-process, writes a trace file).
    Heaptrack,
}

impl Tracer {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "no tracer",
            Self::ProbeFloor => "probe floor (empty programs)",
            Self::LeakFull => "leak (full trace, unwind tables)",
            Self::LeakFp => "leak --unwind fp",
            Self::LeakSampled => "leak --sample (512 KiB)",
            Self::LeakGrowth => "leak --mode growth (page faults)",
            Self::LeakCompat => "leak, compatible object (kernels < 5.17)",
            Self::LeakBaseline => "leak (full trace), --baseline binary",
            Self::Memleak => "memleak-bpfcc",
            Self::Heaptrack => "heaptrack",
        }
    }
}

impl Tracer {
    /// `leak VERB_ARGS...` as root, configured as this configuration runs it (the baseline
    /// binary for [`Tracer::LeakBaseline`]).
    pub fn leak_command(self, leak: &Path, baseline: Option<&Path>, verb_args: &[&str]) -> Command {
        let bin = match (self, baseline) {
            (Tracer::LeakBaseline, Some(b)) => b,
            _ => leak,
        };
        let mut cmd = as_root(bin);
        cmd.args(verb_args);
        match self {
            Self::LeakGrowth => drop(cmd.args(["--mode", "growth"])),
            Self::LeakCompat => drop(cmd.env("LEAK_BPF_OBJECT", "compat")),
            Self::ProbeFloor => drop(cmd.arg("--probe-floor")),
            Self::LeakSampled => drop(cmd.arg("--sample")),
            Self::LeakFp => drop(cmd.args(["--unwind", "fp"])),
            _ => {}
        }
        cmd
    }
}

/// `memleak-bpfcc`, which stops on SIGINT: a bench started in the background by a
/// non-interactive shell has SIGINT ignored, and the child would inherit that and never stop.
pub fn memleak_command() -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Command::new("memleak-bpfcc");
    // SAFETY: signal(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd
}

/// Waits until no `leak` process is left (see the memleak case above).
pub fn wait_for_no_leak() -> Result<()> {
    let started = Instant::now();
    while output(Command::new("pgrep").args(["-x", "leak"])).is_some() {
        if started.elapsed() > Duration::from_mins(1) {
            bail!("a leak process is still running after a minute");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Reads `stream` (a child's pipe) until a line contains `needle`, in a thread (the pipe must
/// keep being drained afterwards, or the child blocks on a full pipe).
pub fn wait_for_line(
    stream: impl std::io::Read + Send + 'static,
    needle: &'static str,
    limit: Duration,
) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if !sent && line.contains(needle) {
                let _ = tx.send(());
                sent = true;
            }
        }
    });
    let started = Instant::now();
    rx.recv_timeout(limit)
        .map_err(|_| anyhow!("no {needle:?} line after {:.0} s", started.elapsed().as_secs_f64()))
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { v[n / 2] } else { f64::midpoint(v[n / 2 - 1], v[n / 2]) }
}

/// User + system CPU seconds of the waited-for children so far.
pub fn children_cpu_s() -> f64 {
    // SAFETY: zeroed rusage is a valid out-value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &raw mut ru) };
    #[expect(clippy::cast_precision_loss, reason = "CPU seconds: far below 2^52")]
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
