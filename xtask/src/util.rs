//! What every task uses: the workspace, commands run and checked, root, Debian packages.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace").to_path_buf()
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn cargo() -> Command {
    let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// Installs the Debian packages of `packages` that are not installed yet.
pub fn apt_install(packages: &[&str], why: &str) -> Result<()> {
    let installed = |p: &str| {
        output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
            .is_some_and(|s| s.contains("install ok installed"))
    };
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages = missing.as_slice();
    let list = packages.join(" ");
    if !Path::new("/etc/debian_version").exists() {
        bail!("{why} is missing: install the equivalent of Debian's `{list}` and rerun");
    }
    if !is_root() {
        bail!(
            "{why} is missing: run `sudo apt-get install -y {list}` (or this task as root) and rerun"
        );
    }
    eprintln!("setup: apt-get install {list}");
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages))
}

pub fn compile_c(src: &Path, out: &Path) -> Result<()> {
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    run(Command::new("cc").args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"]).arg(out).arg(src))
}

/// A command that runs `program` as root: directly when we are root, else through `sudo -E`.
pub fn as_root(program: &Path) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(program);
        c
    }
}
