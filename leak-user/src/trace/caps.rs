//! What this process's capabilities allow (`/proc/self/status`), in one place that the
//! preflight, `leak check` and the errors all read, so that what they say agrees. Imports
//! nothing of the crate: the error a command ends with asks it for its advice.
use std::fs;

/// `CAP_DAC_READ_SEARCH`
pub const CAP_DAC_READ_SEARCH: u32 = 2;
/// `CAP_SYS_PTRACE`
pub const CAP_SYS_PTRACE: u32 = 19;
/// `CAP_SYS_ADMIN`
pub const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_SYS_RESOURCE`
pub const CAP_SYS_RESOURCE: u32 = 24;
/// `CAP_PERFMON`
pub const CAP_PERFMON: u32 = 38;
/// `CAP_BPF`
pub const CAP_BPF: u32 = 39;

/// The effective capabilities of a `/proc/PID/status` text (its `CapEff` line).
#[must_use]
pub fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Whether the `CapEff` line of a `/proc/PID/status` text grants loading tracing programs:
/// `CAP_BPF` with `CAP_PERFMON`, or `CAP_SYS_ADMIN`.
#[must_use]
pub fn caps_allow_tracing(status: &str) -> bool {
    privileges_of(status) != Privileges::None
}

/// What the effective capabilities allow, as far as tracing goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privileges {
    /// `CAP_SYS_ADMIN` (root has it): programs and uprobes.
    SysAdmin,
    /// `CAP_BPF` and `CAP_PERFMON` without `CAP_SYS_ADMIN`: the programs load; whether the
    /// kernel opens uprobes for them is the kernel's (6.18 does not: measured).
    BpfPerfmon,
    /// Neither: nothing loads.
    None,
}

/// The privileges a `/proc/PID/status` text's `CapEff` line grants.
#[must_use]
pub fn privileges_of(status: &str) -> Privileges {
    let Some(eff) = effective_caps(status) else { return Privileges::None };
    let has = |cap: u32| eff & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        Privileges::SysAdmin
    } else if has(CAP_BPF) && has(CAP_PERFMON) {
        Privileges::BpfPerfmon
    } else {
        Privileges::None
    }
}

/// Whether this process has capability `cap` (a `CAP_*` number) in effect.
#[must_use]
pub fn has_capability(cap: u32) -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    effective_caps(&status).is_some_and(|eff| eff & (1 << cap) != 0)
}

/// This process's privileges.
#[must_use]
pub fn privileges() -> Privileges {
    privileges_of(&fs::read_to_string("/proc/self/status").unwrap_or_default())
}

/// What leak needs, in the words of every message about privileges (`leak check`, the
/// errors of `attach` and `run`): one statement, so that they agree.
pub const NEEDS: &str = "leak needs root, or CAP_SYS_ADMIN (CAP_BPF and CAP_PERFMON load its \
                         programs, but kernels such as 6.18 open uprobes only with \
                         CAP_SYS_ADMIN)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets() {
        let status = |eff: &str| format!("Name:\tx\nCapInh:\t0\nCapEff:\t{eff}\nCapBnd:\t0\n");
        assert!(caps_allow_tracing(&status("000001ffffffffff")), "root");
        assert!(caps_allow_tracing(&status("0000000000200000")), "CAP_SYS_ADMIN");
        assert!(caps_allow_tracing(&status("000000c000000000")), "CAP_BPF+CAP_PERFMON");
        assert!(!caps_allow_tracing(&status("0000008000000000")), "CAP_BPF alone");
        assert!(!caps_allow_tracing(&status("0000000000000000")), "nobody");
        assert!(!caps_allow_tracing("garbage"));
    }

    #[test]
    fn privileges_by_capability() {
        let status = |eff: &str| format!("Name:\tx\nCapEff:\t{eff}\n");
        assert_eq!(privileges_of(&status("000001ffffffffff")), Privileges::SysAdmin);
        assert_eq!(privileges_of(&status("000000c000000000")), Privileges::BpfPerfmon);
        assert_eq!(privileges_of(&status("0000008000000000")), Privileges::None);
        assert_eq!(privileges_of("garbage"), Privileges::None);
    }
}
