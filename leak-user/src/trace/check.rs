//! `leak check`: whether this node can trace, decided by doing what tracing does: the
//! privileges, the kernel's uprobes and BPF features, every program of the BPF object this
//! kernel runs loaded through the verifier in each `--unwind` mode, and a real uprobe opened
//! on leak itself and seen to fire. Like `bpftrace --info`, but it ends with a yes or a no
//! (the exit code), so a `DaemonSet` can run it at start. It says only what it measured:
//! what it could not probe is "unknown", not "no".
use std::{fmt::Write as _, time::Duration};

use crate::{
    config::Unwind,
    error::Error,
    trace::caps::Privileges,
    trace::loader::{self, BpfObject, Features, LoadOptions, Tracer, budget},
};

/// What one run of the check found.
#[derive(Debug)]
pub struct Outcome {
    /// The text to print.
    pub text: String,
    /// Tracing will work.
    pub ok: bool,
}

/// Runs the check. `verbose`: also the stack each program's deepest call chain uses.
///
/// # Errors
/// Never for what it checks (that is the outcome); only for a failure to report.
pub fn run(verbose: bool) -> Result<u8, Error> {
    let outcome = check(verbose);
    print!("{}", outcome.text);
    Ok(if outcome.ok { 0 } else { crate::error::EXIT_FAILURE })
}

/// Checks this node.
#[must_use]
pub fn check(verbose: bool) -> Outcome {
    let mut text = String::new();
    let mut ok = true;
    let line = |text: &mut String, what: &str, value: &str| {
        let _ = writeln!(text, "{what:<28}{value}");
    };
    let caps = crate::trace::caps::privileges();
    let privileged = caps != Privileges::None;
    let (features, object) = loader::kernel().clone();
    line(&mut text, "kernel", &format!("{} ({})", features.release, std::env::consts::ARCH));
    let who = match caps {
        Privileges::SysAdmin if crate::procfs::is_root() => "root".to_owned(),
        Privileges::SysAdmin => "CAP_SYS_ADMIN".to_owned(),
        Privileges::BpfPerfmon => {
            "CAP_BPF and CAP_PERFMON, not CAP_SYS_ADMIN (the uprobe below tells)".to_owned()
        }
        Privileges::None => format!("NO: {}", crate::trace::caps::NEEDS),
    };
    line(&mut text, "privileges", &who);
    ok &= privileged;
    line(
        &mut text,
        "uprobes",
        if features.uprobes { "yes" } else { "NO: the kernel needs CONFIG_UPROBE_EVENTS=y" },
    );
    ok &= features.uprobes;
    line(&mut text, "BTF", if features.btf { "yes" } else { "no (not needed)" });
    for (name, since, has) in features.list() {
        let value = match (privileged, has) {
            // Probing loads a program: without the privileges every probe fails, which says
            // nothing of the kernel.
            (false, _) => "unknown (probing it needs the privileges to load programs)".to_owned(),
            (true, true) => "yes".to_owned(),
            (true, false) => format!("no (kernel {since}+)"),
        };
        line(&mut text, &format!("  {name}"), &value);
    }
    let chosen = if std::env::var_os(loader::BPF_OBJECT_ENV).is_some() {
        format!("{object} (set by {})", loader::BPF_OBJECT_ENV)
    } else if privileged {
        object.to_string()
    } else {
        "unknown (it follows from the features)".to_owned()
    };
    line(&mut text, "BPF object", &chosen);
    if privileged {
        for d in Features::degradations(object) {
            let _ = writeln!(text, "  degraded: {d}");
        }
    }
    if !privileged || !features.uprobes {
        let why = if privileged { "(no uprobes)" } else { "as this user: run leak check as root" };
        let _ = writeln!(text, "FAIL: this node cannot trace {why}");
        return Outcome { text, ok: false };
    }
    for unwind in [Unwind::Fp, Unwind::Dwarf, Unwind::Auto] {
        let (loaded, failures, took) = load_programs(object, unwind);
        let value = match &loaded {
            Ok(n) if failures.is_empty() => format!("{n} of {n} load ({})", secs(took)),
            Ok(n) => format!("{} of {n} load", n - failures.len()),
            Err(e) => format!("NO: {e}"),
        };
        line(&mut text, &format!("programs, --unwind {}", unwind.name()), &value);
        ok &= loaded.is_ok() && failures.is_empty();
        for f in failures {
            let _ = writeln!(text, "  {f}");
        }
    }
    // The programs loading is not tracing: the kernel may still refuse to open a uprobe (6.18
    // does without CAP_SYS_ADMIN). Open one on leak itself, as `attach` does, and fire it.
    let (uprobe, multi) = probe_lines(object);
    ok &= multi.is_some();
    line(&mut text, "a uprobe", &uprobe);
    if let Some(multi) = multi {
        line(&mut text, "uprobe_multi links", &multi);
    }
    if verbose {
        let _ = writeln!(text, "stack of each program's deepest call chain (as 5.10-6.12 count):");
        if let Ok(b) = budget::analyze(loader::object_bytes(object)) {
            for p in &b.programs {
                let chain = b.chain(p);
                let frames: Vec<String> =
                    chain.frames.iter().map(|(f, n)| format!("{} {n}", short(f))).collect();
                let _ = writeln!(
                    text,
                    "  {p:<24}{:>4} of {} bytes: {}",
                    chain.charged,
                    budget::MAX_STACK,
                    frames.join(" > ")
                );
            }
        }
    }
    let _ = writeln!(
        text,
        "{}",
        if ok { "OK: this node can trace" } else { "FAIL: this node cannot trace" }
    );
    Outcome { text, ok }
}

/// Loads `object` with small maps and attaches an entry and a return probe to a function of
/// leak's own, timing calls through them: what a trace's start does. The error is the one
/// line `attach` would end with.
/// The "a uprobe" line, and the "`uprobe_multi` links" line if the uprobe opened.
fn probe_lines(object: BpfObject) -> (String, Option<String>) {
    match open_uprobe(object) {
        Ok((cost, probes)) => (
            format!(
                "yes: opened on leak itself and fired ({} ns an entry, {} ns a return)",
                cost.entry_ns, cost.return_ns
            ),
            Some(multi_links(object, probes)),
        ),
        Err(e) => (format!("NO: {e}"), None),
    }
}

/// Whether a process's probes are `uprobe_multi` links here, else why not.
fn multi_links(object: BpfObject, probes: &str) -> String {
    if probes == "uprobe_session" {
        "yes: a process's probes of one program in one file are one link; with sessions \
         (6.13+), so --sample skips the return of each call it leaves out"
            .to_owned()
    } else if probes == "uprobe_multi" {
        "yes: a process's probes of one program in one file are one link; no sessions \
         (6.13+), so --sample pays each call's return"
            .to_owned()
    } else if std::env::var_os(loader::multi::MULTI_ENV).is_some_and(|v| v == "0") {
        format!("no: off ({}=0), a perf event per probe", loader::multi::MULTI_ENV)
    } else if object == BpfObject::Compat {
        "no: the compatible object attaches a perf event per probe".to_owned()
    } else {
        "no (kernel 6.10+): a perf event per probe".to_owned()
    }
}

/// Also how a process's probes would be attached (`loader::probes_attached`, for a sampled
/// trace, which uses sessions where there are).
fn open_uprobe(
    object: BpfObject,
) -> Result<(crate::analysis::model::ProbeCost, &'static str), String> {
    let opts = LoadOptions {
        sample_mean: 16 << 10,
        filter_tgid: std::process::id(),
        unwind_rows: 1024,
        max_allocs: 1024,
        max_stacks: 1024,
        object: Some(object),
        ..LoadOptions::default()
    };
    let mut tracer = Tracer::load(opts).map_err(|e| Error::from(e).message())?;
    let cost = tracer.calibrate().map_err(|e| Error::from(e).message())?;
    Ok((cost, loader::probes_attached()))
}

/// Loads every program of `object` with `unwind`: how many there are, the ones rejected
/// (one line each), and the time the kernel took.
fn load_programs(
    object: BpfObject,
    unwind: Unwind,
) -> (Result<usize, String>, Vec<String>, Duration) {
    // Small maps: the check loads programs, it keeps nothing.
    let opts = LoadOptions {
        unwind: unwind.bpf(),
        unwind_rows: 1024,
        max_allocs: 1024,
        max_stacks: 1024,
        object: Some(object),
        ..LoadOptions::default()
    };
    match Tracer::check(&opts) {
        Ok((_, checks)) => {
            let took = checks.iter().map(|c| c.took).sum();
            let failures = checks
                .iter()
                .filter_map(|c| c.result.as_ref().err().map(|e| format!("{}: {e}", c.program)))
                .collect();
            (Ok(checks.len()), failures, took)
        }
        Err(e) => (Err(e.to_string()), Vec::new(), Duration::ZERO),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// A symbol without its Rust mangling noise (`_RNvNtCs..6unwind4step` -> `step`).
fn short(symbol: &str) -> &str {
    if !symbol.starts_with("_R") {
        return symbol;
    }
    // The last identifier of a v0-mangled path: digits then the name, at the end.
    let trimmed = symbol.trim_end_matches(|c: char| c == '_' || c.is_ascii_uppercase());
    let digits_end =
        trimmed.char_indices().rev().find(|(_, c)| c.is_ascii_digit()).map_or(0, |(i, _)| i + 1);
    let name = &trimmed[digits_end..];
    if name.is_empty() { symbol } else { name }
}

#[cfg(test)]
mod tests {
    use super::short;

    #[test]
    fn mangled_names_are_shortened() {
        assert_eq!(short("_RNvNtCs5mLNqaZEktD_9leak_ebpf6unwind4step"), "step");
        assert_eq!(short("leak_find_row"), "leak_find_row");
    }
}
