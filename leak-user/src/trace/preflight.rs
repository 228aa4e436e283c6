//! Checks made before loading anything, so bad input gets one clear line.
use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::{config::Outputs, error::Error, output};

/// `CAP_SYS_ADMIN`
const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_PERFMON`
const CAP_PERFMON: u32 = 38;
/// `CAP_BPF`
const CAP_BPF: u32 = 39;

/// Environment variable naming another sysfs root (tests use it to stand in for a kernel
/// without uprobes or BTF).
pub const SYSFS_ROOT_ENV: &str = "LEAK_SYSFS_ROOT";

/// Whether the `CapEff` line of a `/proc/PID/status` text grants loading tracing programs:
/// `CAP_BPF` with `CAP_PERFMON`, or `CAP_SYS_ADMIN`.
#[must_use]
pub fn caps_allow_tracing(status: &str) -> bool {
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        return false;
    };
    let has = |cap: u32| eff & (1 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// Fails unless this process may load and attach tracing programs.
///
/// # Errors
/// [`Error::BadInput`] saying to run as root.
pub fn check_privileges() -> Result<(), Error> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    if caps_allow_tracing(&status) {
        return Ok(());
    }
    Err(Error::BadInput(
        "leak needs root (or CAP_BPF and CAP_PERFMON) to load BPF programs: run it with sudo"
            .into(),
    ))
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
