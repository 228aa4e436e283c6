//! Processes a test runs: fixtures (started, told to go, waited for) and `leak` itself
//! (spawned, interrupted, its output read as it comes).
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    thread,
    time::{Duration, Instant},
};

use crate::{PodCgroup, Report, fixture, leak_bin, read_report, timeout};

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
        let deadline = Instant::now() + timeout();
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
        while let Ok(line) = self.rx.recv_timeout(timeout()) {
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
        let deadline = Instant::now() + timeout();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("leak did not finish in {:?}: {:#?}", timeout(), self.stderr.drain());
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
