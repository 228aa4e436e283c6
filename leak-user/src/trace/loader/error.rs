//! What loading or attaching can fail with, in words that say what to do: the verifier's
//! reason picked from its log, an attach failure's errno explained.
use aya::programs::ProgramError;

use super::BpfObject;

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

#[cfg(test)]
mod tests {
    use super::verifier_reason;

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
