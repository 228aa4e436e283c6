//! `leak run`: start a command so that the probes are attached before its `main` runs.
//!
//! The allocator a program uses is only known once the dynamic linker has mapped its
//! libraries, i.e. after `exec`. So: fork; the child waits on a pipe; we put a one-shot uprobe
//! on the program's ELF entry point (which the dynamic linker jumps to after mapping and
//! relocating every library) that SIGSTOPs the child; release the child, which execs and stops
//! at its entry; read its maps, attach the allocator probes, remove the entry probe, SIGCONT.
use std::{
    ffi::{CString, OsStr, OsString},
    fs,
    io::{self, Read as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use crate::{elf::ElfImage, error::Error};

/// Finds `program` like `execvp` would: as given if it contains a `/`, else along `PATH`.
///
/// # Errors
/// [`Error::BadInput`] when not found or not executable.
pub fn resolve_program(program: &OsStr) -> Result<PathBuf, Error> {
    let not_found = || {
        Error::BadInput(format!(
            "command not found: {}: give a path or a program on PATH",
            program.to_string_lossy()
        ))
    };
    if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        return if is_executable(&p) { Ok(p) } else { Err(not_found()) };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
        .ok_or_else(not_found)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The ELF file whose entry point the process reaches first after `exec(program)`, and that
/// entry point's file offset. Follows one `#!` line to the interpreter.
///
/// # Errors
/// [`Error::BadInput`] for files that are neither ELF executables nor scripts.
pub fn entry_point(program: &Path) -> Result<(PathBuf, u64), Error> {
    let mut head = [0u8; 256];
    let n = fs::File::open(program)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| Error::BadInput(format!("cannot read {}: {e}", program.display())))?;
    let head = &head[..n];
    let elf = if let Some(rest) = head.strip_prefix(b"#!") {
        let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
        let interp = line
            .split(u8::is_ascii_whitespace)
            .find(|w| !w.is_empty())
            .ok_or_else(|| Error::BadInput(format!("{}: empty #! line", program.display())))?;
        PathBuf::from(OsStr::from_bytes(interp))
    } else {
        program.to_path_buf()
    };
    let image = ElfImage::open(&elf).map_err(|e| {
        Error::BadInput(format!(
            "cannot run {}: {e}: leak run needs an ELF executable or a script",
            program.display()
        ))
    })?;
    let offset = image.entry_file_offset().ok_or_else(|| {
        Error::BadInput(format!("{}: its entry point is not in a loaded segment", elf.display()))
    })?;
    Ok((elf, offset))
}

/// A forked child waiting to exec.
pub struct PausedChild {
    /// Child pid.
    pub pid: u32,
    go: Option<OwnedFd>,
    exec_err: OwnedFd,
}

/// How the child first changed state after being released.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstStop {
    /// Stopped (at its entry point).
    Stopped,
    /// Exec failed with this errno.
    ExecFailed(i32),
    /// Exited (or was killed) before reaching its entry point: exit code.
    Exited(i32),
}

/// Forks a child that execs `program` with `argv` once [`PausedChild::release`] is called.
///
/// # Errors
/// Invalid arguments (NUL bytes) or fork/pipe failure.
pub fn spawn_paused(program: &Path, argv: &[OsString]) -> Result<PausedChild, Error> {
    let cstr = |s: &OsStr| {
        CString::new(s.as_bytes())
            .map_err(|_| Error::BadInput(format!("argument contains a NUL byte: {}", s.display())))
    };
    let prog = cstr(program.as_os_str())?;
    let c_argv: Vec<CString> = argv.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
    let mut arg_ptrs: Vec<*const libc::c_char> = c_argv.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());

    let (go_r, go_w) = pipe().map_err(Error::io("creating a pipe"))?;
    let (err_r, err_w) = pipe().map_err(Error::io("creating a pipe"))?;
    // SAFETY: the child only calls async-signal-safe functions (read, close, execv, write,
    // _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::io("fork")(io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: child side, see above.
        unsafe {
            // Drop the parent's ends: holding the write end of `go` ourselves would keep the
            // read below from ever seeing EOF.
            libc::close(go_w.as_raw_fd());
            libc::close(err_r.as_raw_fd());
            let mut b = 0u8;
            loop {
                let r = libc::read(go_r.as_raw_fd(), (&raw mut b).cast(), 1);
                if r == 1 {
                    break;
                }
                // 0: the parent went away without releasing us.
                if r == 0 || *libc::__errno_location() != libc::EINTR {
                    libc::_exit(127);
                }
            }
            libc::close(go_r.as_raw_fd());
            libc::execv(prog.as_ptr(), arg_ptrs.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(err_w.as_raw_fd(), (&raw const errno).cast(), 4);
            libc::_exit(127);
        }
    }
    drop(go_r);
    drop(err_w);
    Ok(PausedChild { pid: pid.cast_unsigned(), go: Some(go_w), exec_err: err_r })
}

impl PausedChild {
    /// Lets the child exec.
    ///
    /// # Errors
    /// The pipe write failed (the child died).
    pub fn release(&mut self) -> Result<(), Error> {
        if let Some(go) = self.go.take() {
            let b = 1u8;
            // SAFETY: one byte from a local.
            let r = unsafe { libc::write(go.as_raw_fd(), (&raw const b).cast(), 1) };
            if r != 1 {
                return Err(Error::io("releasing the child")(io::Error::last_os_error()));
            }
        }
        Ok(())
    }

    /// Waits until the child stops or exits.
    ///
    /// # Errors
    /// `waitpid` failed.
    pub fn wait_first_stop(&self, entry_elf: &Path) -> Result<FirstStop, Error> {
        let status = loop {
            let status =
                waitpid(self.pid, libc::WUNTRACED).map_err(Error::io("waiting for the child"))?;
            if !libc::WIFSTOPPED(status) {
                break status;
            }
            // Ours is a SIGSTOP after exec. Any other stop (a SIGTSTP, or a stop before the
            // exec) is not the entry point: let it run on.
            if libc::WSTOPSIG(status) == libc::SIGSTOP && self.runs(entry_elf) {
                return Ok(FirstStop::Stopped);
            }
            kill(self.pid, libc::SIGCONT);
        };
        let mut errno = [0u8; 4];
        // SAFETY: reading 4 bytes into a local; the write end is closed (exec or exit).
        let n = unsafe { libc::read(self.exec_err.as_raw_fd(), errno.as_mut_ptr().cast(), 4) };
        if n == 4 {
            return Ok(FirstStop::ExecFailed(i32::from_ne_bytes(errno)));
        }
        Ok(FirstStop::Exited(exit_code(status)))
    }
}

impl PausedChild {
    /// Whether the child's executable is `elf` (same inode: it has exec'd it).
    fn runs(&self, elf: &Path) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        match (fs::metadata(format!("/proc/{}/exe", self.pid)), fs::metadata(elf)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
}

impl Drop for PausedChild {
    fn drop(&mut self) {
        // Never leave a child blocked on the pipe: closing `go` makes it exit.
        self.go.take();
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: valid out-array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `waitpid` retrying on EINTR; returns the raw status.
///
/// # Errors
/// ECHILD and the like.
pub fn waitpid(pid: u32, flags: libc::c_int) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: valid out-pointer.
        let r = unsafe { libc::waitpid(pid.cast_signed(), &raw mut status, flags) };
        if r >= 0 {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Shell-style exit code of a wait status: the exit status, or 128 + the signal.
#[must_use]
pub fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    }
}

/// Sends `sig` to `pid`.
pub fn kill(pid: u32, sig: libc::c_int) {
    // SAFETY: plain syscall.
    unsafe { libc::kill(pid.cast_signed(), sig) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_programs_on_path() {
        let sh = resolve_program(OsStr::new("sh")).unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"));
        assert!(resolve_program(OsStr::new("no-such-program-xyz")).is_err());
        assert!(resolve_program(OsStr::new("./no/such")).is_err());
    }

    #[test]
    fn scripts_resolve_to_their_interpreter() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s");
        fs::write(&script, "#!/bin/sh -e\necho hi\n").unwrap();
        let (elf, off) = entry_point(&script).unwrap();
        assert_eq!(elf, Path::new("/bin/sh"));
        assert!(off > 0);
        fs::write(&script, "plain text").unwrap();
        assert!(entry_point(&script).is_err());
    }

    #[test]
    fn exec_failure_and_exit_codes_are_reported() {
        let mut child = spawn_paused(Path::new("/nonexistent/prog"), &["prog".into()]).unwrap();
        child.release().unwrap();
        let elf = Path::new("/nonexistent/prog");
        assert_eq!(child.wait_first_stop(elf).unwrap(), FirstStop::ExecFailed(libc::ENOENT));

        let sh = resolve_program(OsStr::new("sh")).unwrap();
        let mut child = spawn_paused(&sh, &["sh".into(), "-c".into(), "exit 7".into()]).unwrap();
        child.release().unwrap();
        assert_eq!(child.wait_first_stop(&sh).unwrap(), FirstStop::Exited(7));
    }

    #[test]
    fn a_stop_before_exec_is_not_the_entry_stop() {
        let sh = resolve_program(OsStr::new("sh")).unwrap();
        let mut child = spawn_paused(&sh, &["sh".into(), "-c".into(), "exit 5".into()]).unwrap();
        // Stopped while still waiting to exec: its executable is not sh yet.
        kill(child.pid, libc::SIGSTOP);
        child.release().unwrap();
        assert_eq!(child.wait_first_stop(&sh).unwrap(), FirstStop::Exited(5));
    }

    #[test]
    fn a_child_never_released_exits() {
        let sh = resolve_program(OsStr::new("sh")).unwrap();
        let child = spawn_paused(&sh, &["sh".into()]).unwrap();
        let pid = child.pid;
        drop(child);
        let status = waitpid(pid, 0).unwrap();
        assert_eq!(exit_code(status), 127);
    }
}
