//! Escalation: a process the watch judges leaking gets the probes for a while, as a `leak
//! attach` child process of its own (isolated: the watch keeps sampling meanwhile), at most
//! so many at once, each process once. Only the latest finished reports are kept: on a node
//! where leaking processes come and go for months, the disk, the memory and `/metrics` stay
//! bounded.
use std::{
    collections::{HashSet, VecDeque},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{
    analysis::report::EndReason,
    analysis::trend::Verdict,
    error::Error,
    fleet::{
        pods::PodRef,
        report::{Escalation, WatchedProcess, per_hour},
    },
    procfs,
    runtime::{self, Signals},
};
use tokio::time::Instant;

/// Runs `leak attach` on flagged processes, at most `max` at a time.
pub struct Escalator {
    duration: Duration,
    out_dir: PathBuf,
    max: usize,
    max_overhead: Option<u32>,
    mode: crate::config::Mode,
    queue: VecDeque<Queued>,
    /// The running `leak attach` children, with their index in `done` and the process's
    /// start time.
    running: Vec<(Child, usize, u64)>,
    seen: HashSet<(u32, u64)>,
    done: Vec<Escalation>,
    keep: usize,
}

/// A process waiting for its turn: pid, start time, `comm`, pod, why.
type Queued = (u32, u64, String, Option<PodRef>, &'static str);

/// Flagged processes remembered before the gone ones are forgotten.
const SEEN_PRUNE: usize = 4096;

impl Escalator {
    /// The escalations so far (done or running), in the order they started.
    #[must_use]
    pub fn done(&self) -> &[Escalation] {
        &self.done
    }

    /// Escalations of `duration` each, reports in `out_dir`, at most `max` at once, each
    /// stopped early past `max_overhead` (basis points of a CPU).
    #[must_use]
    pub fn new(
        duration: Duration,
        out_dir: PathBuf,
        max: usize,
        max_overhead: Option<u32>,
    ) -> Self {
        Self {
            mode: crate::config::Mode::Exact,
            duration,
            out_dir,
            max: max.max(1),
            max_overhead,
            queue: VecDeque::new(),
            running: Vec::new(),
            seen: HashSet::new(),
            done: Vec::new(),
            keep: usize::MAX,
        }
    }

    /// Keeps only the latest `keep` finished reports: older ones are deleted, files and all.
    #[must_use]
    pub fn keeping(mut self, keep: usize) -> Self {
        self.keep = keep.max(1);
        self
    }

    /// Queues the processes judged leaks (each once). A growth profile costs little enough
    /// to be kept on more widely: on processes judged growing too, and on every process of a
    /// container in `near_limit` (its working set past `--profile-above` of its limit), so
    /// that an OOM kill finds its answer ready.
    pub fn flag(&mut self, judged: &[WatchedProcess], near_limit: &HashSet<&str>) {
        if self.seen.len() > SEEN_PRUNE {
            // A process that is gone will not be judged again: forget it.
            self.seen.retain(|&(pid, start)| procfs::start_time(pid) == Some(start));
        }
        let growth = self.mode == crate::config::Mode::Growth;
        // An exited process is kept in the watch for its report; there is nothing to trace.
        for p in judged.iter().filter(|p| !p.exited) {
            let container = p.pod.as_ref().and_then(|pod| pod.container_id.as_deref());
            let reason = match p.trend.verdict {
                Verdict::Leak => "leak",
                Verdict::Growing if growth => "growing",
                _ if growth && container.is_some_and(|c| near_limit.contains(c)) => "near_limit",
                _ => continue,
            };
            if self.seen.insert((p.pid, p.start_time_ticks)) {
                let what = match self.mode {
                    crate::config::Mode::Exact => "attaching the probes",
                    crate::config::Mode::Growth => "profiling its growth",
                };
                let why = match reason {
                    "near_limit" => "is near its container's memory limit".to_owned(),
                    "growing" => format!("grows {}", per_hour(p.trend.rate_bytes_per_h)),
                    _ => format!("leaks {}", per_hour(p.trend.rate_bytes_per_h)),
                };
                eprintln!(
                    "leak: pid {} ({}) {why}: {what} for {:.1} s",
                    p.pid,
                    p.comm,
                    self.duration.as_secs_f64()
                );
                self.queue.push_back((
                    p.pid,
                    p.start_time_ticks,
                    p.comm.clone(),
                    p.pod.clone(),
                    reason,
                ));
            }
        }
    }

    /// The latest trace or profile of process `pid` started at `start` (running, or done).
    #[must_use]
    pub fn latest_of(&self, pid: u32, start: u64) -> Option<&Escalation> {
        self.done.iter().rev().find(|e| e.pid == pid && e.start_time_ticks == start)
    }

    /// Notices finished escalations and starts the next ones.
    ///
    /// # Errors
    /// Waiting for a child or starting the next one failed.
    pub fn poll(&mut self) -> Result<(), Error> {
        let mut still = Vec::with_capacity(self.running.len());
        for (mut child, i, start) in self.running.drain(..) {
            match child.try_wait().map_err(Error::io("waiting for leak attach"))? {
                Some(status) => {
                    let e = &mut self.done[i];
                    e.exit_code = status.code();
                    if status.success() {
                        eprintln!("leak: wrote {}, {} and {}", e.json, e.svg, e.pprof);
                        // A growth profile costs little enough to stay on while the process
                        // is judged leaking: the next sample that says so starts the next
                        // one (a report every --trace-for). Not one --max-overhead stopped:
                        // starting it again would spend what the budget saved.
                        if self.mode == crate::config::Mode::Growth && !over_budget(&e.json) {
                            self.seen.remove(&(e.pid, start));
                        }
                    } else {
                        eprintln!("leak: tracing pid {} failed ({status})", e.pid);
                    }
                }
                None => still.push((child, i, start)),
            }
        }
        self.running = still;
        self.forget_old();
        while self.running.len() < self.max {
            let Some((pid, start, comm, pod, reason)) = self.queue.pop_front() else { break };
            // Gone, or a new process under the same pid: nothing to trace.
            if procfs::start_time(pid) != Some(start) {
                continue;
            }
            self.start(pid, &comm, pod)?;
            if let Some(last) = self.running.last_mut() {
                last.2 = start;
                let e = &mut self.done[last.1];
                e.start_time_ticks = start;
                reason.clone_into(&mut e.reason);
            }
        }
        Ok(())
    }

    /// Deletes the oldest finished reports beyond `keep`, files and all.
    fn forget_old(&mut self) {
        let finished = self.done.iter().filter(|e| e.exit_code.is_some()).count();
        for _ in self.keep..finished {
            let Some(k) = self.done.iter().position(|e| e.exit_code.is_some()) else { break };
            let old = self.done.remove(k);
            for (_, i, _) in &mut self.running {
                if *i > k {
                    *i -= 1;
                }
            }
            for f in [&old.json, &old.svg, &old.pprof, &html_of(&old.json)] {
                match std::fs::remove_file(f) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        eprintln!("leak: cannot delete the old report {f}: {e}");
                    }
                    _ => {}
                }
            }
        }
    }

    /// A report name no kept report has: `leak-COMM-PID`, with `-2`, `-3`... for a pid the
    /// kernel gave again to a process of the same name.
    fn name_for(&self, comm: &str, pid: u32) -> String {
        let base = format!("leak-{}-{pid}", crate::output::file_safe(comm));
        let taken = |name: &str| {
            self.done.iter().any(|e| Path::new(&e.json).file_stem().is_some_and(|s| s == name))
        };
        let mut name = base.clone();
        for n in 2.. {
            if !taken(&name) {
                break;
            }
            name = format!("{base}-{n}");
        }
        name
    }

    /// Starts `leak attach` on `pid` (named `comm`, in `pod`), its report named after both.
    ///
    /// # Errors
    /// The `leak` executable could not be found or started.
    pub fn start(&mut self, pid: u32, comm: &str, pod: Option<PodRef>) -> Result<(), Error> {
        let name = self.name_for(comm, pid);
        let json = self.out_dir.join(format!("{name}.json"));
        let svg = self.out_dir.join(format!("{name}.svg"));
        let pprof = self.out_dir.join(format!("{name}.pb.gz"));
        let ms = |d: Duration| format!("{}ms", d.as_millis().max(1));
        // About 20 samples whatever the duration: enough for a verdict. Only the final
        // report is printed (the interval is longer than the run).
        let sample = (self.duration / 20).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let exe = std::env::current_exe().map_err(Error::io("finding the leak executable"))?;
        let child = Command::new(exe)
            .args(["attach", "--pid", &pid.to_string(), "--duration", &ms(self.duration)])
            .args(["--mode", self.mode.name()])
            .args(["--interval", &ms(self.duration * 2), "--sample-interval", &ms(sample)])
            .arg("--json")
            .arg(&json)
            .arg("--svg")
            .arg(&svg)
            .arg("--pprof")
            .arg(&pprof)
            .arg("--html")
            .arg(html_of(&json.display().to_string()))
            .args(self.max_overhead.map(|bp| format!("--max-overhead={}%", f64::from(bp) / 100.0)))
            .stdin(Stdio::null())
            .spawn()
            .map_err(Error::io("starting leak attach"))?;
        self.done.push(Escalation {
            pid,
            comm: comm.to_owned(),
            start_unix_s: runtime::now_unix(),
            json: json.display().to_string(),
            svg: svg.display().to_string(),
            pprof: pprof.display().to_string(),
            pod,
            exit_code: None,
            reason: "leak".to_owned(),
            start_time_ticks: 0,
        });
        // The start time is set by the caller that knows it (`poll`); 0 otherwise.
        self.running.push((child, self.done.len() - 1, 0));
        Ok(())
    }

    /// Escalations trace `mode` (`leak attach --mode`).
    #[must_use]
    pub fn tracing(mut self, mode: crate::config::Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Pids of the running escalations (not to be watched themselves).
    pub fn children(&self) -> impl Iterator<Item = u32> + '_ {
        self.running.iter().map(|(c, _, _)| c.id())
    }

    /// Ends the escalations: the queued ones are not started (returned), the running one is
    /// told to stop now (SIGINT: `leak attach` writes its report) and waited for; a second
    /// signal, or no exit within [`STOP_GRACE`], kills it.
    ///
    /// # Errors
    /// Waiting for a child failed.
    pub async fn finish(&mut self, signals: &mut Signals) -> Result<Vec<u32>, Error> {
        let pending: Vec<u32> = self.queue.drain(..).map(|q| q.0).collect();
        for pid in &pending {
            eprintln!("leak: pid {pid} not traced: the watch ended first");
        }
        for (child, _, _) in &self.running {
            signal_child(child, libc::SIGINT);
        }
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            self.poll()?;
            if self.running.is_empty() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    if Instant::now() > deadline {
                        self.running.iter().for_each(|(c, _, _)| signal_child(c, libc::SIGKILL));
                    }
                }
                _ = signals.recv() => {
                    self.running.iter().for_each(|(c, _, _)| signal_child(c, libc::SIGKILL));
                }
            }
        }
        Ok(pending)
    }
}

/// Whether the report at `json` ended because its probes cost more than `--max-overhead`.
fn over_budget(json: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct End {
        end_reason: EndReason,
    }
    let end = std::fs::read(json).ok().and_then(|t| serde_json::from_slice::<End>(&t).ok());
    end.is_some_and(|e| e.end_reason == EndReason::OverheadBudget)
}

/// How long a stopped escalation may take to write its report.
const STOP_GRACE: Duration = Duration::from_secs(30);

fn signal_child(child: &Child, sig: i32) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain syscall on our own, not yet reaped child.
        unsafe { libc::kill(pid, sig) };
    }
}

impl Drop for Escalator {
    /// On an error path: do not leave a tracer running, nor a zombie.
    fn drop(&mut self) {
        for (child, _, _) in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The HTML report next to a JSON report (`leak-COMM-PID.html`).
#[must_use]
pub fn html_of(json: &str) -> String {
    Path::new(json).with_extension("html").display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finished (or, with `None`, running) escalation of `pid` whose files are in `dir`.
    fn escalation(dir: &Path, name: &str, pid: u32, exit_code: Option<i32>) -> Escalation {
        let file = |ext: &str| {
            let p = dir.join(format!("{name}.{ext}"));
            std::fs::write(&p, "x").unwrap();
            p.display().to_string()
        };
        Escalation {
            pid,
            comm: "srv".into(),
            start_unix_s: 0.0,
            json: file("json"),
            svg: file("svg"),
            pprof: file("pb.gz"),
            pod: None,
            exit_code,
            reason: "leak".into(),
            start_time_ticks: 0,
        }
    }

    #[test]
    fn keeps_only_the_latest_finished_reports() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Escalator::new(Duration::from_secs(1), dir.path().into(), 1, None).keeping(2);
        for (i, code) in [Some(0), Some(1), None, Some(0), Some(0)].into_iter().enumerate() {
            let pid = u32::try_from(i).unwrap() + 100;
            e.done.push(escalation(dir.path(), &format!("leak-srv-{pid}"), pid, code));
        }
        // The running one (index 2) is tracked by index: it must follow the removals.
        let child = Command::new("true").spawn().unwrap();
        e.running.push((child, 2, 0));
        e.forget_old();
        let pids: Vec<u32> = e.done.iter().map(|e| e.pid).collect();
        assert_eq!(pids, [102, 103, 104], "the running one and the two latest finished");
        assert_eq!(e.running[0].1, 0);
        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files.len(), 9, "{files:?}");
        assert_eq!(html_of("/r/leak-srv-1.json"), "/r/leak-srv-1.html");
        assert!(
            !files.iter().any(|f| f.starts_with("leak-srv-100.") || f.starts_with("leak-srv-101."))
        );
        // A pid given again to a process of the same name gets a report of its own.
        assert_eq!(e.name_for("srv", 103), "leak-srv-103-2");
        assert_eq!(e.name_for("srv", 100), "leak-srv-100");
        e.running[0].0.wait().unwrap();
        e.running.clear();
    }

    #[test]
    fn a_growth_profile_is_kept_on_growth_and_near_a_limit() {
        use crate::{
            analysis::report::TrendView,
            config::Mode::{Exact, Growth},
            fleet::{pods::QosClass, report::WatchSeries},
        };
        let pid = std::process::id();
        let start = procfs::start_time(pid).unwrap();
        let process = |verdict, container: char| WatchedProcess {
            pid,
            comm: "srv".into(),
            cmdline: String::new(),
            start_time_ticks: start,
            rss_bytes: 0,
            anon_bytes: 0,
            watched_s: 10.0,
            first_seen_s: 0.0,
            exited: false,
            trend: TrendView { verdict, ..TrendView::default() },
            series: WatchSeries::default(),
            pod: Some(PodRef::unnamed(
                "u".into(),
                Some(container.to_string().repeat(64)),
                None,
                QosClass::Burstable,
            )),
        };
        let near_a = "a".repeat(64);
        let near: HashSet<&str> = [near_a.as_str()].into();
        let queued = |mode, p: &WatchedProcess| {
            let dir = tempfile::tempdir().unwrap();
            let mut e =
                Escalator::new(Duration::from_secs(1), dir.path().into(), 1, None).tracing(mode);
            e.flag(std::slice::from_ref(p), &near);
            e.queue.front().map(|q| q.4)
        };
        // A leak, whatever the mode.
        assert_eq!(queued(Exact, &process(Verdict::Leak, 'b')), Some("leak"));
        // Growing, or near its container's limit: a growth profile only (cheap enough).
        assert_eq!(queued(Growth, &process(Verdict::Growing, 'b')), Some("growing"));
        assert_eq!(queued(Exact, &process(Verdict::Growing, 'b')), None);
        assert_eq!(queued(Growth, &process(Verdict::Stable, 'a')), Some("near_limit"));
        assert_eq!(queued(Exact, &process(Verdict::Stable, 'a')), None);
        assert_eq!(queued(Growth, &process(Verdict::Plateau, 'b')), None);
    }
}
