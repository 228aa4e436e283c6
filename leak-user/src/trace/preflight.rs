//! Checks made before loading anything, so bad input gets one clear line.
use std::path::{Path, PathBuf};

use crate::{
    config::Outputs,
    error::Error,
    output,
    trace::caps::{
        CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_SYS_RESOURCE, NEEDS, Privileges,
        effective_caps, privileges,
    },
};

/// Environment variable naming another sysfs root (tests use it to stand in for a kernel
/// without uprobes or BTF).
pub const SYSFS_ROOT_ENV: &str = "LEAK_SYSFS_ROOT";

/// What the node agent's capabilities let it do, judged from a `/proc/PID/status` text: the
/// one line naming the first capability it cannot work without, or the lines naming those
/// whose absence only degrades it. `old_memlock`: the kernel charges BPF maps to
/// `RLIMIT_MEMLOCK` (before 5.11) and the limit is not unlimited yet.
///
/// # Errors
/// The line naming the missing capability, what it is for, and where to add it.
pub fn agent_capabilities(status: &str, old_memlock: bool) -> Result<Vec<String>, String> {
    let eff = effective_caps(status).unwrap_or(0);
    let has = |cap: u32| eff & (1 << cap) != 0;
    let add = "add it to the container's securityContext.capabilities (deploy/daemonset.yaml)";
    // CAP_SYS_ADMIN covers CAP_BPF and CAP_PERFMON (the kernel's bpf_capable() and
    // perfmon_capable() accept either); it is needed anyway.
    let required = [
        (
            has(CAP_SYS_ADMIN),
            "SYS_ADMIN",
            "to open uprobe perf events (6.18 refuses them with CAP_PERFMON alone), enter the \
             host's cgroup namespace and read /proc/PID/map_files",
        ),
        (has(CAP_SYS_PTRACE), "SYS_PTRACE", "to read other users' /proc/PID/maps and memory"),
        (
            has(CAP_SYS_RESOURCE) || !old_memlock,
            "SYS_RESOURCE",
            "to lift RLIMIT_MEMLOCK, which this kernel (before 5.11) charges BPF maps to",
        ),
    ];
    if let Some((_, name, why)) = required.iter().find(|r| !r.0) {
        return Err(format!("the agent lacks CAP_{name}, which it needs {why}: {add}"));
    }
    let mut degraded = Vec::new();
    if !has(CAP_DAC_READ_SEARCH) {
        degraded.push(format!(
            "the agent lacks CAP_DAC_READ_SEARCH: files of other users that root may not read \
             (in 0700 directories) cannot be symbolized; {add}"
        ));
    }
    Ok(degraded)
}

/// Fails unless this process may load and attach tracing programs.
///
/// # Errors
/// [`Error::BadInput`] saying to run as root.
pub fn check_privileges() -> Result<(), Error> {
    if privileges() != Privileges::None {
        return Ok(());
    }
    Err(Error::BadInput(format!("{NEEDS}: run it with sudo")))
}

/// The sysfs root to inspect.
#[must_use]
pub fn sysfs_root() -> PathBuf {
    std::env::var_os(SYSFS_ROOT_ENV).map_or_else(|| PathBuf::from("/sys"), PathBuf::from)
}

/// Fails unless the kernel under `sys` has the uprobe PMU and BTF.
///
/// # Errors
/// [`Error::BadInput`] naming the missing feature.
pub fn check_kernel(sys: &Path) -> Result<(), Error> {
    if !sys.join("bus/event_source/devices/uprobe/type").exists() {
        return Err(Error::BadInput(
            "this kernel has no uprobes (no uprobe PMU in /sys/bus/event_source/devices): \
             leak needs a kernel built with CONFIG_UPROBE_EVENTS=y"
                .into(),
        ));
    }
    if !sys.join("kernel/btf/vmlinux").exists() {
        return Err(Error::BadInput(
            "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): \
             leak needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
                .into(),
        ));
    }
    Ok(())
}

/// Fails unless every output file can be written.
///
/// # Errors
/// [`Error::BadInput`] naming the path.
pub fn check_outputs(outputs: &Outputs) -> Result<(), Error> {
    for p in outputs.paths() {
        output::check_writable(p).map_err(|e| {
            Error::BadInput(format!(
                "cannot write {}: {e}: choose a path in a writable directory",
                p.display()
            ))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn agent_capability_sets() {
        let status = |eff: u64| format!("Name:\tx\nCapEff:\t{eff:016x}\n");
        let manifest = [2, 19, 21, 24, 38, 39].iter().fold(0u64, |m, b| m | 1 << b);
        assert_eq!(agent_capabilities(&status(manifest), true), Ok(vec![]));
        for (bit, name) in [(21, "SYS_ADMIN"), (19, "SYS_PTRACE"), (24, "SYS_RESOURCE")] {
            let err = agent_capabilities(&status(manifest & !(1 << bit)), true).unwrap_err();
            assert!(err.starts_with(&format!("the agent lacks CAP_{name}, ")), "{err}");
            assert!(err.contains("deploy/daemonset.yaml") && !err.contains('\n'), "{err}");
        }
        // Memory accounted by the memory cgroup (5.11 on): no RLIMIT_MEMLOCK to lift.
        assert_eq!(agent_capabilities(&status(manifest & !(1 << 24)), false), Ok(vec![]));
        // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON.
        let no_bpf = manifest & !(1 << 38) & !(1 << 39);
        assert_eq!(agent_capabilities(&status(no_bpf), true), Ok(vec![]));
        let degraded = agent_capabilities(&status(manifest & !(1 << 2)), true).unwrap();
        assert!(degraded[0].starts_with("the agent lacks CAP_DAC_READ_SEARCH: "), "{degraded:?}");
        assert!(agent_capabilities("garbage", false).is_err());
    }

    #[test]
    fn kernel_features() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_kernel(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no uprobes"), "{err}");
        let uprobe = dir.path().join("bus/event_source/devices/uprobe");
        fs::create_dir_all(&uprobe).unwrap();
        fs::write(uprobe.join("type"), "7\n").unwrap();
        let err = check_kernel(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no BTF"), "{err}");
        fs::create_dir_all(dir.path().join("kernel/btf")).unwrap();
        fs::write(dir.path().join("kernel/btf/vmlinux"), "").unwrap();
        assert!(check_kernel(dir.path()).is_ok());
    }

    #[test]
    fn outputs() {
        let dir = tempfile::tempdir().unwrap();
        let ok = Outputs { json: Some(dir.path().join("r.json")), ..Outputs::default() };
        assert!(check_outputs(&ok).is_ok());
        let bad = Outputs { svg: Some(dir.path().join("no/such/dir.svg")), ..Outputs::default() };
        let err = check_outputs(&bad).unwrap_err().to_string();
        assert!(err.starts_with("cannot write") && err.contains("dir.svg"), "{err}");
    }
}
