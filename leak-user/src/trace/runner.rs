//! `leak run`: start a command traced with ptrace, stopped at its `exec`.
//!
//! The allocator a program uses is only known once the dynamic linker has mapped its
//! libraries, after `exec` and before the program's entry point. The child asks to be traced
//! (`PTRACE_TRACEME`) and execs; the kernel stops it right after the exec; the controller then
//! puts a one-shot uprobe on the program's ELF entry point that stops it again there, with its
//! libraries mapped (see `controller`).
use std::{
    ffi::{CString, OsStr, OsString},
    fs, io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use crate::{error::Error, trace::elf::ElfImage};

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

/// File offset of the ELF entry point of `elf` (e.g. `/proc/PID/exe` after an exec).
///
/// # Errors
/// [`Error::BadInput`] if it is not an ELF executable with its entry in a loaded segment.
pub fn entry_offset(elf: &Path) -> Result<u64, Error> {
    let image = ElfImage::open(elf)
        .map_err(|e| Error::BadInput(format!("cannot trace {}: {e}", elf.display())))?;
    image.entry_file_offset().ok_or_else(|| {
        Error::BadInput(format!("{}: its entry point is not in a loaded segment", elf.display()))
    })
}

/// A child started with [`spawn_traced`], not yet known to have exec'd.
pub struct Spawned {
    /// Child pid.
    pub pid: u32,
    exec_err: OwnedFd,
}

/// How the child first changed state.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstStop {
    /// Exec'd, and stopped (traced) before the program's first instruction.
    Exec,
    /// Exec failed with this errno.
    ExecFailed(i32),
    /// Exited (or was killed) before exec: exit code.
    Exited(i32),
}

/// Forks a child that asks to be traced and execs `program` with `argv`.
///
/// # Errors
/// Invalid arguments (NUL bytes) or fork/pipe failure.
pub fn spawn_traced(program: &Path, argv: &[OsString]) -> Result<Spawned, Error> {
    let cstr = |s: &OsStr| {
        CString::new(s.as_bytes())
            .map_err(|_| Error::BadInput(format!("argument contains a NUL byte: {}", s.display())))
    };
    let prog = cstr(program.as_os_str())?;
    let c_argv: Vec<CString> = argv.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
    let mut arg_ptrs: Vec<*const libc::c_char> = c_argv.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());

    let (err_r, err_w) = pipe().map_err(Error::io("creating a pipe"))?;
    // SAFETY: the child only calls async-signal-safe functions (close, ptrace, execv, write,
    // _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::io("fork")(io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: child side, see above.
        unsafe {
            libc::close(err_r.as_raw_fd());
            // The parent becomes the tracer: the exec stops this process until it resumes it.
            libc::ptrace(libc::PTRACE_TRACEME, 0, std::ptr::null_mut::<libc::c_void>(), 0);
            libc::execv(prog.as_ptr(), arg_ptrs.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(err_w.as_raw_fd(), (&raw const errno).cast(), 4);
            libc::_exit(127);
        }
    }
    drop(err_w);
    Ok(Spawned { pid: pid.cast_unsigned(), exec_err: err_r })
}

impl Spawned {
    /// Waits until the child has exec'd (and is stopped) or has exited.
    ///
    /// # Errors
    /// `waitpid` failed.
    pub fn wait_exec(&self) -> Result<FirstStop, Error> {
        let status = waitpid(self.pid, 0).map_err(Error::io("waiting for the child"))?;
        if libc::WIFSTOPPED(status) {
            return Ok(FirstStop::Exec);
        }
        let mut errno = [0u8; 4];
        // SAFETY: reading 4 bytes into a local; the write end is closed (exec or exit).
        let n = unsafe { libc::read(self.exec_err.as_raw_fd(), errno.as_mut_ptr().cast(), 4) };
        if n == 4 {
            return Ok(FirstStop::ExecFailed(i32::from_ne_bytes(errno)));
        }
        Ok(FirstStop::Exited(exit_code(status)))
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
    fn exec_failure_exit_and_exec_stop() {
        let child = spawn_traced(Path::new("/nonexistent/prog"), &["prog".into()]).unwrap();
        assert_eq!(child.wait_exec().unwrap(), FirstStop::ExecFailed(libc::ENOENT));

        // A traced child stops right after its exec; resumed, it runs to its exit.
        let sh = resolve_program(OsStr::new("sh")).unwrap();
        let child = spawn_traced(&sh, &["sh".into(), "-c".into(), "exit 7".into()]).unwrap();
        assert_eq!(child.wait_exec().unwrap(), FirstStop::Exec);
        assert!(entry_offset(Path::new(&format!("/proc/{}/exe", child.pid))).unwrap() > 0);
        crate::trace::tracee::cont(child.pid, 0).unwrap();
        assert_eq!(exit_code(waitpid(child.pid, 0).unwrap()), 7);
    }

    #[test]
    fn non_elf_files_cannot_be_traced() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        fs::write(&f, "plain text").unwrap();
        assert!(entry_offset(&f).is_err());
    }
}
