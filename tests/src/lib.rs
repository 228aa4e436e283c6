//! Helpers for the root integration tests: start fixtures, run `leak`, read its report.
//! By family: processes (`process`), reports and their assertions (`reports`), kubelet-style
//! cgroups (`cgroups`), the agent in a stand-in cluster (`cluster`), Prometheus
//! (`prometheus`), Chromium (`browser`), fixtures' ground truth (`truth`) and the build
//! matrix (`matrix`); the common ones are re-exported here.
//!
//! The tests load the real BPF object into the running kernel and trace real processes, so
//! they need root. They do not skip without it: `cargo xtask test` runs them as root.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

pub use leak_user::analysis::report::{Report, Site};

pub mod browser;
pub mod cgroups;
pub mod cluster;
pub mod matrix;
pub mod process;
pub mod prometheus;
pub mod reports;
pub mod truth;

pub use cgroups::*;
pub use cluster::*;
pub use process::*;
pub use prometheus::Prometheus;
pub use reports::*;

/// How long any single wait in a test may take before the test fails: a minute, or
/// `$LEAK_TEST_TIMEOUT` seconds. The kernel suite's machines emulate their CPU (`cargo xtask
/// vm` sets it): there a fixture that counts its work in ticks runs several times slower, and
/// the 7.2 guest's growth profile of `grower 10 64` once took longer than a minute.
#[must_use]
pub fn timeout() -> Duration {
    std::env::var("LEAK_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_mins(1), Duration::from_secs)
}

/// Path of a compiled fixture program.
#[must_use]
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("FIXTURES_DIR")).join(name)
}

/// Path of the `leak` binary: `$LEAK_BIN`, else next to the test executable's directory
/// (target/<profile>/leak, which `cargo xtask test` builds first).
#[must_use]
pub fn leak_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LEAK_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/leak
    let bin = exe.parent().and_then(Path::parent).expect("target dir").join("leak");
    assert!(bin.exists(), "{} not built: run `cargo xtask test`", bin.display());
    bin
}

/// Fails the test unless running as root.
pub fn require_root() {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the integration tests load BPF programs: run them as root (`cargo xtask test`)"
    );
}
