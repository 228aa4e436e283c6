//! The kernel's OOM kills: which process the OOM killer chose, so that a report says its
//! target was killed for memory (`end_reason: "oom_kill"`) rather than that it exited, and
//! the watch can write the victim's post-mortem.
//!
//! Two sources. The `oom:mark_victim` tracepoint names every victim by pid, whether a
//! cgroup's limit or the whole machine ran out: read from a tracefs instance of our own
//! (tracefs is mounted if it is not), so that nobody else's tracing is touched. Where tracefs
//! cannot be had, counters say that *a* process was killed: `oom_kill` of the process's
//! memory cgroup (v2 `memory.events`, v1 `memory.oom_control`; hierarchical, counted before
//! the victim is signalled) and of `/proc/vmstat` (the whole machine). A process that dies
//! while one of them rises is taken for the victim; under `leak run` its status must be
//! SIGKILL too, which every OOM victim's is.
use std::{
    collections::VecDeque,
    io::{Read as _, Write as _},
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

/// A process the OOM killer chose.
#[derive(Clone, Debug, PartialEq)]
pub struct OomKill {
    /// Its pid (in the initial pid namespace, as `/proc` of the host names it).
    pub pid: u32,
    /// Its `comm`, where the kernel's event carries it (see [`parse_mark_victim`]).
    pub comm: Option<String>,
    /// When the event was read, Unix seconds (within milliseconds of the kill).
    pub at_unix_s: f64,
}

/// The pid and `comm` of an `oom:mark_victim` line of `trace_pipe`; `None` for any other
/// line. Kernels before 6.8 print `pid=N` alone; later ones add `uid=`, `comm=` and the
/// victim's memory (`total-vm=...kB anon-rss=...kB ...`).
#[must_use]
pub fn parse_mark_victim(line: &str) -> Option<(u32, Option<String>)> {
    let (_, event) = line.split_once(" mark_victim: ")?;
    let field =
        |name: &str| event.split_whitespace().find_map(|f| f.strip_prefix(name)).map(str::to_owned);
    let pid = field("pid=")?.parse().ok()?;
    Some((pid, field("comm=")))
}

/// The number of a [`Victims::sync`] marker line, if `line` is one.
fn parse_marker(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once(MARKER)?;
    rest.trim().parse().ok()
}

/// What a sync marker written to `trace_marker` starts with.
const MARKER: &str = "leak-oom-sync-";
/// Victims remembered (a machine killing more than this between two looks is thrashing, and
/// the oldest are the least interesting).
const KEPT: usize = 1024;
/// How long [`Victims::sync`] waits for its marker: it comes back within milliseconds; the
/// wait holds up the caller's loop (the watch's).
const SYNC_WAIT: Duration = Duration::from_millis(500);
/// Set to `counters` to judge by the counters alone, as where tracefs cannot be had (the
/// tests of that path).
pub const SOURCE_ENV: &str = "LEAK_OOM_SOURCE";
/// How often the reader looks at its stop flag when nothing is traced.
const POLL_MS: i32 = 200;

#[derive(Default)]
struct State {
    /// The latest victims (at most [`KEPT`]).
    recent: VecDeque<OomKill>,
    /// Victims not [`Victims::take`]n yet (at most [`KEPT`]).
    new: Vec<OomKill>,
    /// The highest marker read so far.
    synced: u64,
    /// The reader stopped (its error, if any, was logged).
    dead: bool,
}

/// The `oom:mark_victim` events, read by a thread of our own from a tracefs instance made
/// for this process (removed on drop).
pub struct Victims {
    instance: PathBuf,
    shared: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
    next_marker: AtomicU64,
}

impl Victims {
    /// Starts reading the OOM killer's victims.
    ///
    /// # Errors
    /// A one-line reason: no tracefs (not mounted and not mountable), no `oom:mark_victim`
    /// event in this kernel, or the instance could not be made.
    pub fn open() -> Result<Self, String> {
        if std::env::var(SOURCE_ENV).is_ok_and(|v| v == "counters") {
            return Err(format!("{SOURCE_ENV}=counters"));
        }
        let tracefs = tracefs()?;
        let instances = tracefs.join("instances");
        remove_stale(&instances);
        let instance = instances.join(format!("leak-oom-{}", std::process::id()));
        // A previous process of ours under the same pid left it behind.
        let _ = std::fs::remove_dir(&instance);
        std::fs::create_dir(&instance)
            .map_err(|e| format!("cannot make {}: {e}", instance.display()))?;
        let made = Self::configure(&instance);
        if let Err(e) = made {
            let _ = std::fs::remove_dir(&instance);
            return Err(e);
        }
        let pipe = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(instance.join("trace_pipe"))
            .map_err(|e| {
                let _ = std::fs::remove_dir(&instance);
                format!("cannot read {}/trace_pipe: {e}", instance.display())
            })?;
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("leak-oom".into())
                .spawn(move || read_events(pipe, &shared, &stop))
                .map_err(|e| format!("cannot start the OOM reader: {e}"))?
        };
        Ok(Self { instance, shared, stop, reader: Some(reader), next_marker: AtomicU64::new(1) })
    }

    /// A small buffer (the events are rare), the one event on.
    fn configure(instance: &Path) -> Result<(), String> {
        // KiB per CPU: a kill's line is about 200 bytes; the default would be 1.4 MiB per CPU.
        let _ = std::fs::write(instance.join("buffer_size_kb"), "32");
        let enable = instance.join("events/oom/mark_victim/enable");
        std::fs::write(&enable, "1").map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                "this kernel has no oom:mark_victim tracepoint".to_owned()
            } else {
                format!("cannot enable {}: {e}", enable.display())
            }
        })
    }

    /// Waits until every OOM kill that happened before this call has been read: a marker
    /// written now is read after them. A kill's event is committed under the victim's task
    /// lock, which the victim takes again on its way out (to drop its memory), so before
    /// anyone can see it die. False if the marker did not come back.
    #[must_use]
    pub fn sync(&self) -> bool {
        let n = self.next_marker.fetch_add(1, Ordering::Relaxed);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(self.instance.join("trace_marker"))
            .and_then(|mut f| f.write_all(format!("{MARKER}{n}\n").as_bytes()));
        if let Err(e) = written {
            log::debug!("writing an OOM sync marker: {e}");
            return false;
        }
        let (lock, cv) = &*self.shared;
        let state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let (state, _) = cv
            .wait_timeout_while(state, SYNC_WAIT, |s| s.synced < n && !s.dead)
            .unwrap_or_else(PoisonError::into_inner);
        state.synced >= n
    }

    /// Whether `pid` was among the latest victims read.
    #[must_use]
    pub fn killed(&self, pid: u32) -> Option<OomKill> {
        let state = self.shared.0.lock().unwrap_or_else(PoisonError::into_inner);
        state.recent.iter().rev().find(|k| k.pid == pid).cloned()
    }

    /// The victims read since the last call.
    #[must_use]
    pub fn take(&self) -> Vec<OomKill> {
        let mut state = self.shared.0.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut state.new)
    }
}

impl Drop for Victims {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        // Once the pipe is closed: an instance with a reader cannot be removed (EBUSY), nor
        // while a process forked meanwhile holds a copy of the pipe (hence before
        // `Tracer::release_in_background`). Removing it disables its event and frees its
        // buffers.
        if let Err(e) = std::fs::remove_dir(&self.instance) {
            log::debug!("removing {}: {e}", self.instance.display());
        }
    }
}

/// The reader thread: lines of `trace_pipe` until told to stop.
fn read_events(mut pipe: std::fs::File, shared: &(Mutex<State>, Condvar), stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 << 10];
    let mut partial = String::new();
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd { fd: pipe.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; a timeout, so the stop flag is looked at.
        unsafe { libc::poll(&raw mut pfd, 1, POLL_MS) };
        // Everything readable now, before saying which markers were read: an event
        // committed on another CPU just before a marker may sort after it.
        let mut lines = Vec::new();
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    partial.push_str(&String::from_utf8_lossy(&buf[..n]));
                    while let Some(end) = partial.find('\n') {
                        lines.push(partial[..end].to_owned());
                        partial.drain(..=end);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("reading the OOM killer's events stopped: {e}");
                    let (lock, cv) = shared;
                    lock.lock().unwrap_or_else(PoisonError::into_inner).dead = true;
                    cv.notify_all();
                    return;
                }
            }
        }
        if lines.is_empty() {
            continue;
        }
        let now = crate::runtime::now_unix();
        let (lock, cv) = shared;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        for line in &lines {
            if let Some((pid, comm)) = parse_mark_victim(line) {
                log::debug!("OOM victim: {line}");
                let kill = OomKill { pid, comm, at_unix_s: now };
                if state.recent.len() == KEPT {
                    state.recent.pop_front();
                }
                state.recent.push_back(kill.clone());
                if state.new.len() == KEPT {
                    state.new.remove(0);
                }
                state.new.push(kill);
            } else if let Some(n) = parse_marker(line) {
                state.synced = state.synced.max(n);
            }
        }
        cv.notify_all();
    }
}

/// Instances of processes that are gone (killed before they could remove theirs).
fn remove_stale(instances: &Path) {
    let Ok(dir) = std::fs::read_dir(instances) else { return };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.strip_prefix("leak-oom-")?.parse::<u32>().ok());
        if let Some(pid) = pid
            && !crate::procfs::pid_exists(pid)
        {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// Where tracefs is: mounted already (`/sys/kernel/tracing`, or under debugfs), or mounted
/// now at `/sys/kernel/tracing`.
fn tracefs() -> Result<PathBuf, String> {
    let sys = crate::trace::preflight::sysfs_root();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mounted = mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "tracefs").then(|| PathBuf::from(at))
    });
    let candidates = mounted.into_iter().chain([sys.join("kernel/tracing")]);
    for dir in candidates.chain([sys.join("kernel/debug/tracing")]) {
        if dir.join("instances").is_dir() {
            return Ok(dir);
        }
    }
    let at = sys.join("kernel/tracing");
    let path = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())
        .map_err(|e| format!("{}: {e}", at.display()))?;
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let rc = unsafe {
        libc::mount(c"tracefs".as_ptr(), path.as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null())
    };
    if rc != 0 {
        return Err(format!(
            "tracefs is not mounted and cannot be mounted at {}: {}",
            at.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(at)
}

/// An `oom_kill` counter, and its value as of the sample before the last (a kill counted
/// just before a sample, its death noticed just after, still counts).
#[derive(Clone, Debug)]
struct Counter {
    file: PathBuf,
    base: u64,
    last: u64,
}

impl Counter {
    fn read(file: PathBuf) -> Option<Self> {
        let base = read_oom_kills(&file)?;
        Some(Self { file, base, last: base })
    }

    /// A sample: the value now becomes the next base but one.
    fn refresh(&mut self) {
        if let Some(now) = read_oom_kills(&self.file) {
            self.base = self.last;
            self.last = now;
        }
    }

    fn rose(&self) -> bool {
        read_oom_kills(&self.file).is_some_and(|n| n > self.base)
    }
}

/// The `oom_kill` line of `memory.events`, `memory.oom_control` or `/proc/vmstat`.
fn read_oom_kills(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    crate::procfs::memory_stat_value(&text, "oom_kill")
}

/// The file that counts the OOM kills in the memory cgroup of the process whose
/// `/proc/PID/cgroup` is `cgroup_text`, with cgroupfs at `cgroupfs`.
#[must_use]
pub fn memcg_oom_file(cgroup_text: &str, cgroupfs: &Path) -> Option<PathBuf> {
    let (v2, path) = crate::procfs::parse_cgroup_memory_path(cgroup_text)?;
    let rel = path.trim_start_matches('/');
    Some(if v2 {
        // Alone, or next to v1 hierarchies (a hybrid host).
        let unified = if cgroupfs.join("cgroup.controllers").exists() {
            cgroupfs.to_owned()
        } else {
            cgroupfs.join("unified")
        };
        unified.join(rel).join("memory.events")
    } else {
        cgroupfs.join("memory").join(rel).join("memory.oom_control")
    })
}

/// How one process's death is judged an OOM kill, or not: set up while it lives.
pub struct OomWatch {
    pid: u32,
    victims: Option<Victims>,
    /// Its memory cgroup's `oom_kill` count (every kill of a process of the cgroup, for its
    /// limit or the machine's), else the machine's: as of the last [`Self::refresh`].
    counter: Option<Counter>,
}

impl OomWatch {
    /// Watches for the OOM kill of `pid` (and, under `leak run`, of its children: they share
    /// its cgroup unless moved).
    #[must_use]
    pub fn process(pid: u32) -> Self {
        let victims = Victims::open()
            .inspect_err(|why| {
                log::info!("OOM kills are judged from counters, not by the victim's pid: {why}");
            })
            .ok();
        let counter = Self::memcg_of(pid)
            .and_then(Counter::read)
            .or_else(|| Counter::read(PathBuf::from("/proc/vmstat")));
        Self { pid, victims, counter }
    }

    /// The file counting the OOM kills of `pid`'s memory cgroup.
    fn memcg_of(pid: u32) -> Option<PathBuf> {
        let cgroupfs = crate::trace::preflight::sysfs_root().join("fs/cgroup");
        crate::procfs::cgroup_text(pid).and_then(|t| memcg_oom_file(&t, &cgroupfs))
    }

    /// Takes the counter's value now as its base: a kill counted before (another process's,
    /// long ago) is not taken for the death of the one watched. Called at each sample.
    /// A process that moved to another cgroup (`leak run -- sh -c 'echo $$ >
    /// .../cgroup.procs; exec server'`) is counted in its new one from then on.
    pub fn refresh(&mut self) {
        // Once chosen, a victim takes a while to die (its memory is freed as it exits): a
        // sample then would take the kill into the base and the death for a plain exit (seen
        // in CI: two 250 ms samples between the kill and the death noticed).
        if crate::procfs::is_dying(self.pid) {
            return;
        }
        if let Some(file) = Self::memcg_of(self.pid)
            && self.counter.as_ref().is_none_or(|c| c.file != file)
            && let Some(moved) = Counter::read(file)
        {
            self.counter = Some(moved);
            return;
        }
        if let Some(c) = &mut self.counter {
            c.refresh();
        }
    }

    /// Whether `pid`, which has just died, was killed by the OOM killer: named by the
    /// kernel's event, or (without it) its cgroup's count rose since the last sample.
    #[must_use]
    pub fn killed(&self, pid: u32) -> bool {
        if let Some(v) = &self.victims {
            if v.sync() {
                return v.killed(pid).is_some();
            }
            log::warn!("the OOM killer's events did not come back in time: judging by counters");
        }
        self.counter.as_ref().is_some_and(Counter::rose)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_victims_of_every_kernels_event() {
        // 5.10 to 6.7.
        let old = "          grower-4242    [001] d..1.  1234.567890: mark_victim: pid=4242";
        assert_eq!(parse_mark_victim(old), Some((4242, None)));
        // 6.8 and later.
        let new = "   kworker/u4:1-77      [000] ...1.   99.000001: mark_victim: pid=4243 uid=0 \
                   comm=grower total-vm=123456kB anon-rss=65000kB file-rss:1200kB \
                   shmem-rss:0kB pgtables=200kB oom_score_adj=0";
        assert_eq!(parse_mark_victim(new), Some((4243, Some("grower".into()))));
        // Not a kill: a marker, another event, a torn line.
        let marker = "           leak-9     [001] ..... 12.5: tracing_mark_write: leak-oom-sync-7";
        assert_eq!(parse_mark_victim(marker), None);
        assert_eq!(parse_marker(marker), Some(7));
        assert_eq!(parse_mark_victim("x-1 [000] 1.0: mark_victim: pid="), None);
    }

    #[test]
    fn finds_the_counter_of_each_cgroup_layout() {
        let dir = tempfile::tempdir().unwrap();
        let fs = dir.path();
        // Hybrid: the memory controller on v1.
        let v1 = "12:memory:/kubepods/pod1/c1\n0::/kubepods/pod1/c1\n";
        assert_eq!(
            memcg_oom_file(v1, fs),
            Some(fs.join("memory/kubepods/pod1/c1/memory.oom_control"))
        );
        // v2 next to v1 hierarchies, then alone.
        let v2 = "0::/kubepods.slice/c1.scope\n";
        assert_eq!(
            memcg_oom_file(v2, fs),
            Some(fs.join("unified/kubepods.slice/c1.scope/memory.events"))
        );
        std::fs::write(fs.join("cgroup.controllers"), "memory\n").unwrap();
        assert_eq!(memcg_oom_file(v2, fs), Some(fs.join("kubepods.slice/c1.scope/memory.events")));
        let events = fs.join("kubepods.slice/c1.scope");
        std::fs::create_dir_all(&events).unwrap();
        std::fs::write(events.join("memory.events"), "low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\n")
            .unwrap();
        let file = events.join("memory.events");
        let mut c = Counter::read(file.clone()).unwrap();
        assert!(!c.rose());
        std::fs::write(&file, "oom 3\noom_kill 2\noom_group_kill 0\n").unwrap();
        assert!(c.rose());
        // A sample after the kill: still counted (its death may be noticed just after).
        c.refresh();
        assert!(c.rose());
        // Two samples after: an old kill, not taken for a later death.
        c.refresh();
        assert!(!c.rose());
    }
}
