//! Helpers for the root integration tests: start fixtures, run `leak`, read its report.
//!
//! The tests load the real BPF object into the running kernel and trace real processes, so
//! they need root. They do not skip without it: `cargo xtask test` runs them as root.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    thread,
    time::{Duration, Instant},
};

pub use leak_user::analysis::report::{Report, Site};

pub mod browser;
pub mod matrix;
pub mod prometheus;
pub mod truth;

pub use prometheus::Prometheus;

/// How long any single wait in a test may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_mins(1);

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

/// Lines read from a pipe by a background thread.
pub struct Lines {
    rx: Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    /// Reads `reader` (a child's pipe) line by line in a thread.
    #[must_use]
    pub fn spawn(reader: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = channel();
        thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { rx, seen: Vec::new() }
    }

    /// Waits for a line satisfying `pred`; panics on EOF or timeout, showing what was seen.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("timed out waiting for {what}; got: {:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("EOF waiting for {what}; got: {:#?}", self.seen)
                }
            }
        }
    }

    /// The lines that arrived since the last call, without waiting.
    #[must_use]
    pub fn poll(&mut self) -> Vec<String> {
        self.rx.try_iter().collect()
    }

    /// Everything read so far plus the rest until EOF.
    #[must_use]
    pub fn drain(&mut self) -> Vec<String> {
        while let Ok(line) = self.rx.recv_timeout(TIMEOUT) {
            self.seen.push(line);
        }
        std::mem::take(&mut self.seen)
    }
}

/// A running fixture program speaking the ready/go/done protocol.
pub struct Fixture {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its stdout lines.
    pub stdout: Lines,
}

impl Fixture {
    /// Starts `name` and waits for its `ready` line.
    #[must_use]
    pub fn start(name: &str) -> Self {
        Self::start_with(name, &[])
    }

    /// Starts `name` with extra environment variables and waits for its `ready` line.
    #[must_use]
    pub fn start_with(name: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(fixture(name));
        cmd.envs(env.iter().copied());
        Self::start_command(cmd)
    }

    /// Runs `cmd` (a fixture, possibly through a wrapper that execs it, so the pid stays the
    /// same) and waits for its `ready` line.
    #[must_use]
    pub fn start_command(cmd: Command) -> Self {
        Self::start_command_until(cmd, |l| l == "ready")
    }

    /// Runs `cmd` and waits for its first line satisfying `ready` (a program of its own
    /// protocol: once it prints, it runs its own code, with its libraries mapped).
    #[must_use]
    pub fn start_command_until(mut cmd: Command, ready: impl Fn(&str) -> bool) -> Self {
        let name = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start fixture {name}: {e}"));
        let stdin = child.stdin.take();
        let stdout = Lines::spawn(child.stdout.take().expect("stdout"));
        let mut f = Self { child, stdin, stdout };
        f.stdout.wait_for("ready", ready);
        f
    }

    /// Its pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one line on its stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to fixture");
        stdin.flush().expect("flush");
    }

    /// Waits for the line `line` on its stdout.
    pub fn wait_line(&mut self, line: &str) {
        self.stdout.wait_for(line, |l| l == line);
    }

    /// Sends `go` and waits for `done`.
    pub fn go_and_wait_done(&mut self) {
        self.send("go");
        self.stdout.wait_for("done", |l| l == "done");
    }

    /// Its exit status, if it has exited (reaped then).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait fixture")
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait fixture")
    }

    /// Runs its allocations, then has it exit while `leak` (attached, writing `json`) is
    /// still tracing: `leak` must end by itself and report. Returns that report.
    #[must_use]
    pub fn exit_under(&mut self, leak: Leak, json: &Path) -> Report {
        self.go_and_wait_done();
        self.send("exit");
        assert!(self.wait().success());
        let done = leak.wait();
        assert_eq!(done.status.code(), Some(0), "stderr: {:#?}", done.stderr);
        let report = read_report(json);
        assert_eq!(report.end_reason, "target_exited");
        report
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `leak` process.
pub struct Leak {
    child: Child,
    /// Its stderr lines.
    pub stderr: Lines,
    stdout: Lines,
}

/// A finished `leak` process.
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// stderr lines.
    pub stderr: Vec<String>,
    /// stdout lines.
    pub stdout: Vec<String>,
}

impl Leak {
    /// Starts `leak` with `args`, without waiting for anything.
    #[must_use]
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_env(args, &[])
    }

    /// As [`Self::spawn`], with these environment variables set.
    #[must_use]
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(leak_bin());
        cmd.args(args).envs(env.iter().copied());
        Self::spawn_command(cmd)
    }

    /// Starts `cmd` (which runs `leak`, perhaps through a wrapper that execs it), its
    /// output read in the background.
    fn spawn_command(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start leak");
        let stderr = Lines::spawn(child.stderr.take().expect("stderr"));
        let stdout = Lines::spawn(child.stdout.take().expect("stdout"));
        Self { child, stderr, stdout }
    }

    /// As [`Self::spawn_env`], with `leak` in `cgroup` (its v2 hierarchy) and in a cgroup
    /// namespace of its own rooted there: as in a container of a pod. Its pid stays `leak`'s.
    #[must_use]
    pub fn spawn_in_pod(cgroup: &PodCgroup, args: &[&str], env: &[(&str, &str)]) -> Self {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec unshare --cgroup \"$0\" \"$@\"",
            cgroup.dir().display()
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script]).arg(leak_bin()).args(args).envs(env.iter().copied());
        Self::spawn_command(cmd)
    }

    /// Its pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The lines it wrote to stdout since the last call, without waiting.
    #[must_use]
    pub fn poll_stdout(&mut self) -> Vec<String> {
        self.stdout.poll()
    }

    /// `leak attach --pid PID args...`, returned once it says it is attached.
    #[must_use]
    pub fn attach(pid: u32, args: &[&str]) -> Self {
        Self::attach_env(pid, args, &[])
    }

    /// As [`Self::attach`], with these environment variables set.
    #[must_use]
    pub fn attach_env(pid: u32, args: &[&str], env: &[(&str, &str)]) -> Self {
        let pid = pid.to_string();
        let mut all = vec!["attach", "--pid", pid.as_str()];
        all.extend_from_slice(args);
        let mut leak = Self::spawn_env(&all, env);
        let line = leak.stderr.wait_for("the attached line", |l| l.starts_with("attached to PID"));
        assert_eq!(line.split(" (").next(), Some(format!("attached to PID {pid}").as_str()));
        leak
    }

    /// Sends SIGINT (Ctrl-C) and waits for it to finish.
    #[must_use]
    pub fn interrupt(self) -> Finished {
        self.signal(libc::SIGINT)
    }

    /// Sends SIGTERM and waits for it to finish.
    #[must_use]
    pub fn terminate(self) -> Finished {
        self.signal(libc::SIGTERM)
    }

    /// Kills it with SIGKILL (no chance to clean up) and reaps it.
    #[must_use]
    pub fn kill(self) -> Finished {
        self.signal(libc::SIGKILL)
    }

    fn signal(self, sig: libc::c_int) -> Finished {
        // SAFETY: plain syscall.
        unsafe { libc::kill(self.child.id().cast_signed(), sig) };
        self.wait()
    }

    /// Waits for it to finish.
    #[must_use]
    pub fn wait(mut self) -> Finished {
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("leak did not finish in {TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let done = Finished { status, stderr: self.stderr.drain(), stdout: self.stdout.drain() };
        // Every test checks the kernel's per-site totals against the records this way.
        assert!(
            !done.stderr.iter().any(|l| l.contains(leak_user::trace::session::TOTALS_DISAGREE)),
            "{:#?}",
            done.stderr
        );
        done
    }
}

impl Drop for Leak {
    /// A test that failed half-way leaves no tracer running into the next tests.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `leak args...` to completion.
#[must_use]
pub fn run_leak(args: &[&str]) -> Finished {
    Leak::spawn(args).wait()
}

/// Runs `leak args...` to completion, with `input` on its (and its command's) stdin.
#[must_use]
pub fn run_leak_with_stdin(args: &[&str], input: &str) -> Finished {
    let mut child = Command::new(leak_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start leak");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin);
    let stderr = Lines::spawn(child.stderr.take().expect("stderr"));
    let stdout = Lines::spawn(child.stdout.take().expect("stdout"));
    Leak { child, stderr, stdout }.wait()
}

impl Finished {
    /// Asserts a bad-input exit: code 2 and exactly one stderr line containing `needle`.
    pub fn assert_bad_input(&self, needle: &str) {
        assert_eq!(self.status.code(), Some(2), "exit code; stderr: {:#?}", self.stderr);
        assert_eq!(self.stderr.len(), 1, "one line of error: {:#?}", self.stderr);
        let line = &self.stderr[0];
        assert!(line.starts_with("leak: "), "{line}");
        assert!(line.contains(needle), "{line:?} should contain {needle:?}");
        assert!(!line.contains("panicked") && !line.contains("backtrace"), "{line}");
    }
}

/// Starts fixture `name`, attaches `leak` (with `--json` and `args`), lets it run its
/// allocations, stops `leak` with SIGINT and returns the report.
#[must_use]
pub fn trace_fixture(name: &str, env: &[(&str, &str)], args: &[&str]) -> Report {
    trace_fixture_env(name, env, args, &[])
}

/// As [`trace_fixture`], with `leak_env` set for `leak`.
#[must_use]
pub fn trace_fixture_env(
    name: &str,
    env: &[(&str, &str)],
    args: &[&str],
    leak_env: &[(&str, &str)],
) -> Report {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let mut fixture = Fixture::start_with(name, env);
    let mut all = vec!["--json", json.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let leak = Leak::attach_env(fixture.pid(), &all, leak_env);
    fixture.go_and_wait_done();
    let done = leak.interrupt();
    assert_eq!(done.status.code(), Some(0), "stderr: {:#?}", done.stderr);
    read_report(&json)
}

/// `leak run OPTIONS --json DIR/report.json -- COMMAND...`: returns how it finished, the
/// directory (kept alive by the caller) and the report path.
#[must_use]
pub fn run_with_report(
    options: &[&str],
    command: &[&str],
) -> (Finished, tempfile::TempDir, PathBuf) {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let mut args = vec!["run"];
    args.extend_from_slice(options);
    args.extend(["--json", json.to_str().expect("utf-8 path"), "--"]);
    args.extend_from_slice(command);
    (run_leak(&args), dir, json)
}

/// Asserts that the site whose frame 0 is `function` holds exactly `(bytes, allocations)`;
/// returns it.
#[track_caller]
#[expect(clippy::must_use_candidate, reason = "an assertion; the site is for more checks")]
pub fn assert_site<'a>(report: &'a Report, function: &str, expected: (u64, u64)) -> &'a Site {
    let s = site(report, function);
    assert_eq!(
        (s.outstanding_bytes, s.outstanding_allocs),
        expected,
        "{function}: {:#?}",
        summary(report)
    );
    s
}

/// Asserts every drop counter is 0: every event was matched.
pub fn assert_no_drops(report: &Report) {
    for (name, count) in &report.drops {
        assert_eq!(*count, 0, "drop counter {name}");
    }
}

/// Reads a JSON report.
#[must_use]
pub fn read_report(path: &Path) -> Report {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}\n{text}", path.display()))
}

/// The site whose frame 0 (the allocator's caller) is `function`; panics if none or several.
#[must_use]
pub fn site<'a>(report: &'a Report, function: &str) -> &'a Site {
    let found: Vec<&Site> = report.sites.iter().filter(|s| frame0(s) == Some(function)).collect();
    assert_eq!(
        found.len(),
        1,
        "sites with frame 0 = {function}: {:#?}; probe hits {:?}; drops {:?}",
        summary(report),
        report.probe_hits.iter().filter(|(_, n)| **n > 0).collect::<Vec<_>>(),
        report.drops.iter().filter(|(_, n)| **n > 0).collect::<Vec<_>>()
    );
    found[0]
}

/// Asserts that `function` appears in no frame of any site.
pub fn assert_absent(report: &Report, function: &str) {
    for s in &report.sites {
        assert!(
            !s.stack.iter().any(|f| f.function.as_deref() == Some(function)),
            "{function} must not hold memory: {:#?}",
            summary(report)
        );
    }
}

/// Outstanding bytes and allocations of the sites with `function` anywhere in their stack.
#[must_use]
pub fn under(report: &Report, function: &str) -> (u64, u64) {
    report
        .sites
        .iter()
        .filter(|s| s.stack.iter().any(|f| f.function.as_deref() == Some(function)))
        .fold((0, 0), |(b, n), s| (b + s.outstanding_bytes, n + s.outstanding_allocs))
}

/// Name of frame 0 of a site.
#[must_use]
pub fn frame0(site: &Site) -> Option<&str> {
    site.stack.first().and_then(|f| f.function.as_deref())
}

/// A growth profile's largest site whose frame 0 is `function` (a function touching memory
/// on two lines is two sites), asserting that the report is a growth profile and the site
/// holds resident pages.
#[track_caller]
#[must_use]
pub fn growth_site<'a>(report: &'a Report, function: &str) -> &'a Site {
    assert_eq!(report.mode, leak_user::analysis::report::Mode::Growth, "a growth profile");
    let s = report
        .sites
        .iter()
        .filter(|s| frame0(s) == Some(function))
        .max_by_key(|s| s.outstanding_bytes)
        .unwrap_or_else(|| panic!("no site at {function}: {:#?}", summary(report)));
    assert!(s.outstanding_allocs > 0);
    assert_eq!(s.resident_bytes, Some(s.outstanding_bytes));
    assert_eq!(s.outstanding_bytes % 4096, 0, "whole pages");
    s
}

/// `(frame 0, bytes, allocs)` of every site, for failure messages.
#[must_use]
pub fn summary(report: &Report) -> Vec<(String, u64, u64)> {
    report
        .sites
        .iter()
        .map(|s| (frame0(s).unwrap_or("?").to_owned(), s.outstanding_bytes, s.outstanding_allocs))
        .collect()
}

/// A cgroup laid out as a kubelet would, holding test processes; removed on drop (after them).
pub struct PodCgroup {
    /// The hierarchy's mount point, and the cgroup's path under it.
    root: PathBuf,
    rel: PathBuf,
    /// The same path in cgroup v1's memory hierarchy, where one does the accounting.
    memory: Option<Box<PodCgroup>>,
}

impl PodCgroup {
    /// Creates `rel` under the hierarchy mounted at `root`.
    #[must_use]
    pub fn new(root: &Path, rel: &str) -> Self {
        let rel = PathBuf::from(rel);
        std::fs::create_dir_all(root.join(&rel)).unwrap();
        Self { root: root.to_owned(), rel, memory: None }
    }

    /// Has its processes' memory accounted to it, as a node does: in cgroup v1's memory
    /// hierarchy under the same path when there is one (a hybrid host), else by enabling the
    /// memory controller down its v2 path.
    #[must_use]
    pub fn with_memory(mut self) -> Self {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        if v1.join("memory.usage_in_bytes").exists() {
            let rel = self.rel.to_str().unwrap().to_owned();
            self.memory = Some(Box::new(Self::new(v1, &rel)));
        } else {
            let mut dir = self.root.clone();
            for part in self.rel.parent().unwrap().components() {
                std::fs::write(dir.join("cgroup.subtree_control"), "+memory").unwrap();
                dir = dir.join(part);
            }
            std::fs::write(dir.join("cgroup.subtree_control"), "+memory").unwrap();
        }
        self
    }

    /// Its directory.
    #[must_use]
    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.rel)
    }

    /// Limits its memory to `bytes` (swap included where the kernel accounts it), in the
    /// hierarchy that accounts it: past it, the OOM killer takes one of its processes.
    pub fn limit_memory(&self, bytes: u64) {
        if let Some(m) = &self.memory {
            // v1: the limit, then memory+swap (absent without swap accounting).
            std::fs::write(m.dir().join("memory.limit_in_bytes"), bytes.to_string()).unwrap();
            let _ = std::fs::write(m.dir().join("memory.memsw.limit_in_bytes"), bytes.to_string());
        } else {
            std::fs::write(self.dir().join("memory.max"), bytes.to_string()).unwrap();
            let _ = std::fs::write(self.dir().join("memory.swap.max"), "0");
        }
    }

    /// Processes the OOM killer took in it (`oom_kill` of v2's `memory.events`, or of v1's
    /// `memory.oom_control`).
    #[must_use]
    pub fn oom_kills(&self) -> u64 {
        let file = match &self.memory {
            Some(m) => m.dir().join("memory.oom_control"),
            None => self.dir().join("memory.events"),
        };
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A shell command that moves the shell running it into this cgroup (then `exec` what
    /// should run there: only it is charged, and only it can be the OOM killer's victim).
    #[must_use]
    pub fn join_command(&self) -> String {
        let mut files = vec![self.dir().join("cgroup.procs")];
        files.extend(self.memory.as_ref().map(|m| m.dir().join("cgroup.procs")));
        files.iter().map(|f| format!("echo $$ > {}", f.display())).collect::<Vec<_>>().join(" && ")
    }

    /// Moves process `pid` into it.
    pub fn add(&self, pid: u32) {
        std::fs::write(self.dir().join("cgroup.procs"), pid.to_string()).unwrap();
        if let Some(m) = &self.memory {
            m.add(pid);
        }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // Innermost first; a cgroup is removed once its processes have exited.
        let mut rel = Some(self.rel.as_path());
        while let Some(r) = rel.filter(|r| !r.as_os_str().is_empty()) {
            for _ in 0..50 {
                if std::fs::remove_dir(self.root.join(r)).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            rel = r.parent();
        }
    }
}

/// A cgroup of one test's own (not a pod's) whose memory is limited to `limit` bytes: past it,
/// the kernel's OOM killer kills one of its processes.
#[must_use]
pub fn oom_cgroup(limit: u64) -> PodCgroup {
    let (uid, _) = pod_ids();
    let cgroup = PodCgroup::new(&unified_cgroup_root(), &format!("leak-test-oom-{}", &uid[..8]))
        .with_memory();
    cgroup.limit_memory(limit);
    cgroup
}

/// A random pod UID and container id, so that runs never share cgroups.
#[must_use]
pub fn pod_ids() -> (String, String) {
    let hex = |n: usize| -> String {
        let bytes = std::fs::read("/proc/sys/kernel/random/uuid").unwrap();
        let s: String =
            String::from_utf8(bytes).unwrap().chars().filter(char::is_ascii_hexdigit).collect();
        s.repeat(2)[..n].to_owned()
    };
    let u = hex(32);
    let uid = format!("{}-{}-{}-{}-{}", &u[..8], &u[8..12], &u[12..16], &u[16..20], &u[20..]);
    (uid, hex(64))
}

/// The cgroup v2 hierarchy: `/sys/fs/cgroup` alone, or `/sys/fs/cgroup/unified` next to v1.
#[must_use]
pub fn unified_cgroup_root() -> PathBuf {
    let fs = Path::new("/sys/fs/cgroup");
    let unified =
        if fs.join("cgroup.controllers").exists() { fs.to_owned() } else { fs.join("unified") };
    assert!(unified.join("cgroup.controllers").exists(), "no cgroup v2 hierarchy");
    unified
}

/// A containerd container cgroup of a burstable pod, systemd driver, in cgroup v2; with the
/// pod UID and container id.
#[must_use]
pub fn systemd_pod_cgroup() -> (PodCgroup, String, String) {
    systemd_pod_cgroup_of("burstable")
}

/// As [`systemd_pod_cgroup`], in quality-of-service class `qos` (`burstable`, `besteffort`),
/// with its memory accounted (see [`PodCgroup::with_memory`]).
#[must_use]
pub fn systemd_pod_cgroup_of(qos: &str) -> (PodCgroup, String, String) {
    let (uid, cid) = pod_ids();
    let rel = format!(
        "kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{}.slice/\
         cri-containerd-{cid}.scope",
        uid.replace('-', "_")
    );
    (PodCgroup::new(&unified_cgroup_root(), &rel).with_memory(), uid, cid)
}

/// `go tool pprof -raw`'s samples: innermost function of each stack -> (count, bytes).
#[must_use]
pub fn go_pprof_samples(
    profile: &Path,
    scratch: &Path,
) -> std::collections::HashMap<String, (u64, u64)> {
    let out = Command::new("go")
        .args(["tool", "pprof", "-raw"])
        .arg(profile)
        // Go wants a writable cache and home, which a CI shell may not have.
        .env("GOCACHE", scratch.join("gocache"))
        .env("HOME", scratch)
        .output()
        .expect("run go tool pprof (cargo xtask test installs golang-go)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{text}", String::from_utf8_lossy(&out.stderr));
    // "Locations" lines: "     4: 0x55.. M=1 leak_fn /src/cacher.c:23 s=0".
    let functions: std::collections::HashMap<String, String> = text
        .split_once("\nLocations\n")
        .expect("a Locations section")
        .1
        .lines()
        .take_while(|l| !l.starts_with("Mappings"))
        .filter_map(|l| {
            let (id, rest) = l.trim().split_once(": ")?;
            Some((id.to_owned(), rest.split_whitespace().nth(2)?.to_owned()))
        })
        .collect();
    // Sample lines: "         40      40960: 4 5 3 ".
    text.split_once("\nSamples:\n")
        .expect("a Samples section")
        .1
        .lines()
        .take_while(|l| !l.starts_with("Locations"))
        .filter_map(|l| {
            let (values, ids) = l.split_once(": ")?;
            let mut v = values.split_whitespace().map(str::parse::<u64>);
            let (count, bytes) = (v.next()?.ok()?, v.next()?.ok()?);
            let innermost = ids.split_whitespace().next()?;
            Some((functions[innermost].clone(), (count, bytes)))
        })
        .collect()
}

/// A stand-in Kubernetes API server (`tests/support/fake_kube_api.py`) serving one pod: the
/// environment `leak agent` needs to reach it, and the process (killed on drop).
pub struct FakeKubeApi {
    child: Child,
    /// `KUBERNETES_SERVICE_HOST` and the rest, for [`Leak::spawn_env`].
    pub env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl FakeKubeApi {
    /// Serves a pod `namespace/name` with UID `uid` whose container `container` has id `cid`,
    /// on node `test-node`, to the bearer of a token it makes up; the pod is run by
    /// Deployment `name` less its last `-` part, through a `ReplicaSet`.
    #[must_use]
    pub fn start(uid: &str, namespace: &str, name: &str, container: &str, cid: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
        // Self-signed for 127.0.0.1, not a CA: the agent trusts it as its cluster's CA bundle.
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-keyout", &p("key.pem"), "-out", &p("cert.pem")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run openssl");
        assert!(made.success(), "openssl could not make a certificate");
        std::fs::write(p("token"), "test-token\n").unwrap();
        // The pod belongs to ReplicaSet NAME-5d8f7 (ends at the last '-') of Deployment NAME.
        let deployment = name.rsplit_once('-').map_or(name, |(d, _)| d);
        let pods = format!(
            r#"{{"kind":"PodList","items":[{{"metadata":{{"uid":"{uid}","name":"{name}","namespace":"{namespace}","ownerReferences":[{{"kind":"ReplicaSet","name":"{deployment}-5d8f7","controller":true}}]}},"spec":{{"nodeName":"test-node"}},"status":{{"containerStatuses":[{{"name":"{container}","containerID":"containerd://{cid}"}}]}}}}]}}"#
        );
        std::fs::write(p("pods.json"), pods).unwrap();
        let rs = dir.path().join(format!("apis/apps/v1/namespaces/{namespace}/replicasets"));
        std::fs::create_dir_all(&rs).unwrap();
        let owner = format!(
            r#"{{"kind":"ReplicaSet","metadata":{{"name":"{deployment}-5d8f7","ownerReferences":[{{"kind":"Deployment","name":"{deployment}","controller":true}}]}}}}"#
        );
        std::fs::write(rs.join(format!("{deployment}-5d8f7.json")), owner).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/fake_kube_api.py");
        let child = Command::new("python3")
            .arg(script)
            .args([p("cert.pem"), p("key.pem"), "test-token".into(), "test-node".into()])
            .args([dir.path().to_string_lossy().into_owned(), p("port")])
            .spawn()
            .expect("start the fake API server");
        let deadline = Instant::now() + TIMEOUT;
        let port = loop {
            if let Ok(port) = std::fs::read_to_string(p("port")) {
                break port;
            }
            assert!(Instant::now() < deadline, "the fake API server did not start");
            thread::sleep(Duration::from_millis(50));
        };
        let env = [
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1".to_owned()),
            ("KUBERNETES_SERVICE_PORT", port),
            ("LEAK_KUBE_TOKEN_FILE", p("token")),
            ("LEAK_KUBE_CA_FILE", p("cert.pem")),
            ("NODE_NAME", "test-node".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Self { child, env, dir }
    }

    /// The Events posted to it so far, in order.
    #[must_use]
    pub fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("an Event"))
            .collect()
    }

    /// The environment as [`Leak::spawn_env`] takes it.
    #[must_use]
    pub fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `leak agent` as the agent tests run it, against `api`: in a pod of its own, in its own
/// cgroup namespace (other pods' cgroup paths are relative to it there until it enters the
/// host's), on a free loopback port, sampling every 250 ms, judging growth from 64 KiB, its
/// reports in `reports`, with `extra` options. Returns it, the address it serves at, and its
/// pod's cgroup (to outlive it).
#[must_use]
pub fn agent_in_pod(
    api: &FakeKubeApi,
    reports: &Path,
    extra: &[&str],
) -> (Leak, String, PodCgroup) {
    let (cgroup, _, _) = systemd_pod_cgroup_of("besteffort");
    let mut args = vec!["agent", "--listen", "127.0.0.1:0", "--sample-interval", "250ms"];
    args.extend(["--interval", "1h", "--min-growth", "64K"]);
    args.extend(["--out-dir", reports.to_str().expect("a UTF-8 path")]);
    args.extend_from_slice(extra);
    let mut agent = Leak::spawn_in_pod(&cgroup, &args, &api.env());
    let addr = serving_addr(&mut agent);
    (agent, addr, cgroup)
}

/// A finished `leak watch --json`'s report: its text, and parsed.
#[must_use]
pub fn watch_report(
    done: &Finished,
    json: &Path,
) -> (String, leak_user::fleet::report::WatchReport) {
    assert_eq!(done.status.code(), Some(0), "stderr: {:#?}", done.stderr);
    let text = std::fs::read_to_string(json).expect("the watch report");
    let report = serde_json::from_str(&text).expect("a watch report");
    (text, report)
}

/// `GET path` from the agent serving on `addr`: the status and the body.
#[must_use]
pub fn http_get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the agent");
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read the response");
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    (status, out[end + 4..].to_vec())
}

/// `GET path`'s body, which must come with status 200.
#[must_use]
pub fn http_get_text(addr: &str, path: &str) -> String {
    let (status, body) = http_get(addr, path);
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    String::from_utf8(body).expect("UTF-8")
}

/// The address a starting `leak agent` says it serves on.
pub fn serving_addr(agent: &mut Leak) -> String {
    let line = agent.stderr.wait_for("the serving line", |l| l.contains("serving http://"));
    line.split("http://").nth(1).and_then(|a| a.split('/').next()).expect("an address").to_owned()
}
