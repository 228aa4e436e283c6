//! ptrace, for `leak run`: the kernel stops the command at every `exec` and every new child
//! before it runs a single instruction, so the probes are attached (and a child's inherited
//! records copied) before anything can be allocated. Only these events stop the tracees:
//! `PTRACE_CONT` lets them run freely in between (no syscall or instruction stepping).
use std::io;

/// `PTRACE_EVENT_FORK`
const EVENT_FORK: i32 = 1;
/// `PTRACE_EVENT_VFORK`
const EVENT_VFORK: i32 = 2;
/// `PTRACE_EVENT_CLONE`
const EVENT_CLONE: i32 = 3;
/// `PTRACE_EVENT_EXEC`
const EVENT_EXEC: i32 = 4;

/// How a tracee stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// It exec'd a new program (stopped before the program's first instruction).
    Exec,
    /// It forked (the new child is stopped too, with its own first `SIGSTOP`).
    Fork,
    /// It vforked: the child shares its memory until it execs or exits.
    Vfork,
    /// It cloned: a thread, or a process made with `clone`.
    Clone,
    /// A signal is about to be delivered (or a new tracee's first stop, `SIGSTOP`).
    Signal(i32),
}

/// What `waitpid` reported for one tracee.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Stopped.
    Stopped(u32, Stop),
    /// Exited (shell-style code: status, or 128 + signal).
    Exited(u32, i32),
}

/// Decodes a `waitpid` status of tracee `pid`.
#[must_use]
pub fn decode(pid: u32, status: libc::c_int) -> Event {
    if libc::WIFSTOPPED(status) {
        let sig = libc::WSTOPSIG(status);
        let event = status >> 16;
        let stop = match (sig, event) {
            (libc::SIGTRAP, EVENT_EXEC) => Stop::Exec,
            (libc::SIGTRAP, EVENT_FORK) => Stop::Fork,
            (libc::SIGTRAP, EVENT_VFORK) => Stop::Vfork,
            (libc::SIGTRAP, EVENT_CLONE) => Stop::Clone,
            _ => Stop::Signal(sig),
        };
        return Event::Stopped(pid, stop);
    }
    Event::Exited(pid, crate::trace::runner::exit_code(status))
}

fn ptrace(request: libc::c_uint, pid: u32, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: the requests used here take an integer `data` (or a pointer we own, for
    // GETEVENTMSG) and no `addr`.
    let r = unsafe {
        libc::ptrace(request, pid.cast_signed(), std::ptr::null_mut::<libc::c_void>(), data)
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// Sets the events that stop tracee `pid`: exec always; forks, vforks and clones when
/// following children.
///
/// # Errors
/// The tracee is gone.
pub fn set_options(pid: u32, follow_forks: bool) -> io::Result<()> {
    let mut options = libc::PTRACE_O_TRACEEXEC;
    if follow_forks {
        options |= libc::PTRACE_O_TRACEFORK | libc::PTRACE_O_TRACEVFORK | libc::PTRACE_O_TRACECLONE;
    }
    ptrace(libc::PTRACE_SETOPTIONS, pid, usize::try_from(options).unwrap_or(0)).map(drop)
}

/// Resumes a stopped tracee, delivering `sig` (0: none).
///
/// # Errors
/// The tracee is gone (killed meanwhile): callers usually ignore this.
pub fn cont(pid: u32, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_CONT, pid, usize::try_from(sig).unwrap_or(0)).map(drop)
}

/// The pid of the child a fork, vfork or clone stop is about.
///
/// # Errors
/// The tracee is gone.
pub fn new_child(pid: u32) -> io::Result<u32> {
    let mut msg: libc::c_ulong = 0;
    ptrace(libc::PTRACE_GETEVENTMSG, pid, (&raw mut msg) as usize)?;
    u32::try_from(msg).map_err(io::Error::other)
}

/// Next tracee event, without blocking (`None`: nothing to report now).
///
/// # Errors
/// No children left (`ECHILD`), or another wait failure.
pub fn poll() -> io::Result<Option<Event>> {
    let mut status = 0;
    loop {
        // SAFETY: valid out-pointer. __WALL: threads (clone children) too.
        let r = unsafe { libc::waitpid(-1, &raw mut status, libc::WNOHANG | libc::__WALL) };
        if r > 0 {
            return Ok(Some(decode(r.cast_unsigned(), status)));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stop status as the kernel encodes it: 0x7f | sig << 8 | event << 16.
    fn stopped(sig: i32, event: i32) -> i32 {
        0x7f | (sig << 8) | (event << 16)
    }

    #[test]
    fn decodes_stops_and_exits() {
        assert_eq!(decode(5, stopped(libc::SIGTRAP, EVENT_EXEC)), Event::Stopped(5, Stop::Exec));
        assert_eq!(decode(5, stopped(libc::SIGTRAP, EVENT_FORK)), Event::Stopped(5, Stop::Fork));
        assert_eq!(decode(5, stopped(libc::SIGTRAP, EVENT_VFORK)), Event::Stopped(5, Stop::Vfork));
        assert_eq!(decode(5, stopped(libc::SIGTRAP, EVENT_CLONE)), Event::Stopped(5, Stop::Clone));
        assert_eq!(
            decode(5, stopped(libc::SIGSTOP, 0)),
            Event::Stopped(5, Stop::Signal(libc::SIGSTOP))
        );
        // A plain SIGTRAP (no event) is a signal to deliver.
        assert_eq!(
            decode(5, stopped(libc::SIGTRAP, 0)),
            Event::Stopped(5, Stop::Signal(libc::SIGTRAP))
        );
        assert_eq!(decode(5, 3 << 8), Event::Exited(5, 3));
        assert_eq!(decode(5, libc::SIGKILL), Event::Exited(5, 128 + libc::SIGKILL));
    }
}
