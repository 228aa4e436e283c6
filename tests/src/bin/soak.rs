//! The soak (`cargo xtask soak`, #15): `leak agent` and a long `leak attach` over a population
//! that churns as on a busy node, for `--minutes`. Samples leak's own memory, descriptors,
//! threads and BPF maps every few seconds, judges leak's resident memory with leak's own trend
//! code (it must be `stable` or `plateau`), checks that the real leaker is found, that the long
//! trace's bytes are exact, and that nothing of leak's is left in the kernel at the end.
//! Writes `soak.md` (the figures, as `docs/reliability.md` shows them) and `samples.csv` to
//! `--out`; exits 1 with the reasons when a check fails.
//!
//! Needs root; `LEAK_BIN` names the `leak` under test (`cargo xtask soak` builds a release one).
#![expect(clippy::cast_precision_loss, reason = "byte counts shown in MiB, and judged as f64")]
use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use leak_tests::{Fixture, Leak, PodCgroup, fixture, frame0, read_report, systemd_pod_cgroup_of};
use leak_user::analysis::trend::{self, Params, Verdict};

/// Time between samples of leak's own figures.
const SAMPLE: Duration = Duration::from_secs(2);
/// Samples between two readings of the BPF maps (dumping them costs more).
const MAP_EVERY: u64 = 5;
/// A victim (a fast leaker) starts this often, and is killed once the agent has traced it for
/// [`VICTIM_TRACED`].
const VICTIM_EVERY: Duration = Duration::from_mins(1);
const VICTIM_TRACED: Duration = Duration::from_secs(5);
/// The sleeper is stopped (SIGSTOP) for [`STOPPED_FOR`] every [`STOP_EVERY`].
const STOP_EVERY: Duration = Duration::from_mins(2);
const STOPPED_FOR: Duration = Duration::from_secs(40);
/// The hog's memory cgroup limit (it starts again once the OOM killer took it).
const HOG_LIMIT: u64 = 48 << 20;
/// The real leaker's rate, bytes per second (`leak_tick`: a tenth of it every 100 ms).
const LEAKER_RATE: u64 = 20_480;
const MIB: f64 = 1_048_576.0;

fn main() {
    let (minutes, out) = parse_args();
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("soak: run as root (it loads BPF programs and makes cgroups)");
        std::process::exit(2);
    }
    std::fs::create_dir_all(&out).expect("create the output directory");
    let failures = Soak::start(&out).run(Duration::from_secs_f64(minutes * 60.0), &out);
    if failures.is_empty() {
        eprintln!("soak: passed; figures in {}", out.join("soak.md").display());
    } else {
        for f in &failures {
            eprintln!("soak: FAILED: {f}");
        }
        std::process::exit(1);
    }
}

fn parse_args() -> (f64, PathBuf) {
    let mut minutes = 3.0;
    let mut out = PathBuf::from("target/soak");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next().unwrap_or_default();
        match a.as_str() {
            "--minutes" => minutes = value.parse().expect("--minutes takes a number"),
            "--out" => out = PathBuf::from(value),
            _ => {
                eprintln!("usage: soak [--minutes N] [--out DIR]");
                std::process::exit(2);
            }
        }
    }
    (minutes, out)
}

/// A pod of the population: its cgroup and its process.
struct Pod {
    cgroup: PodCgroup,
    args: Vec<String>,
    process: Option<Fixture>,
}

impl Pod {
    fn new(qos: &str, args: &[&str]) -> Self {
        let args = args.iter().map(|&a| a.to_owned()).collect();
        Self { cgroup: systemd_pod_cgroup_of(qos).0, args, process: None }
    }

    /// Starts its process in its cgroup (moved there before `exec`, so all its memory is
    /// charged there).
    fn start(&mut self) -> u32 {
        let script =
            format!("echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"", self.cgroup.dir().display());
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script]).arg(fixture("soaker")).args(&self.args);
        let p = Fixture::start_command(cmd);
        let pid = p.pid();
        self.cgroup.add(pid);
        self.process = Some(p);
        pid
    }

    fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Fixture::pid)
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain syscall on our own child.
            unsafe { libc::kill(pid.cast_signed(), sig) };
        }
    }

    /// The last `stats` line it printed.
    fn stats(&mut self, last: &mut String) {
        if let Some(p) = &mut self.process {
            for l in p.stdout.poll() {
                if let Some(s) = l.strip_prefix("stats ") {
                    s.clone_into(last);
                }
            }
        }
    }
}

/// leak's own figures at one time.
#[derive(Clone, Copy, Default)]
struct Own {
    rss: u64,
    fds: u64,
    threads: u64,
}

impl Own {
    fn of(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            line.split_whitespace().nth(1)?.parse().ok()
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
        Some(Self { rss: field("VmRSS:")? * 1024, fds, threads: field("Threads:")? })
    }
}

/// leak's BPF maps at one time (all of leak's processes together).
#[derive(Clone, Default)]
struct Maps {
    count: u64,
    kernel_bytes: u64,
    /// Per map name: (entries, capacity) of the fullest instance.
    fullest: Vec<(String, u64, u64)>,
}

/// Pids of the running `leak` processes.
fn leak_pids() -> Vec<u32> {
    let out = Command::new("pgrep").args(["-x", "leak"]).output();
    let out = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    out.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Ids of the BPF objects (`map_id`, `prog_id` or `link_id` in `fdinfo`) that leak's
/// processes hold open. (bpftool's `pids` column needs a bpftool built with skeletons, which
/// not every distribution's is.)
fn held_ids(field: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    for pid in leak_pids() {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { continue };
        for fd in fds.flatten() {
            let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
            let id = info.lines().find_map(|l| l.strip_prefix(field)?.trim().parse::<u64>().ok());
            ids.extend(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// `bpftool -j KIND show`: every loaded program, link or map.
fn bpf_objects(kind: &str) -> Vec<serde_json::Value> {
    let out = Command::new("bpftool").args(["-j", kind, "show"]).output().expect("run bpftool");
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    all.as_array().cloned().unwrap_or_default()
}

fn sample_maps(names: &mut Vec<String>) -> Maps {
    let mut m = Maps::default();
    let held = held_ids("map_id:");
    for map in bpf_objects("map") {
        if !map["id"].as_u64().is_some_and(|id| held.contains(&id)) {
            continue;
        }
        if let Some(name) = map["name"].as_str().filter(|n| !names.iter().any(|m| m == n)) {
            names.push(name.to_owned());
        }
        m.count += 1;
        m.kernel_bytes += map["bytes_memlock"].as_u64().unwrap_or(0);
        let kind = map["type"].as_str().unwrap_or("");
        // LRU maps evict by design (they hold calls in flight), and a walk over one that
        // changes thousands of times a second restarts without end: their occupancy says
        // nothing. The others are walked for at most 5 s.
        if !kind.contains("hash") || kind.contains("lru") {
            continue;
        }
        let id = map["id"].to_string();
        let dump =
            Command::new("timeout").args(["5", "bpftool", "-j", "map", "dump", "id", &id]).output();
        let Ok(out) = dump else { continue };
        // Unique keys: a walk over a map that changes meanwhile restarts where a key it stood
        // on was deleted, and meets keys again.
        let mut keys: Vec<String> = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().map(|a| a.iter().map(|e| e["key"].to_string()).collect()))
            .unwrap_or_default();
        keys.sort_unstable();
        keys.dedup();
        let entries = keys.len() as u64;
        let name = map["name"].as_str().unwrap_or("?").to_owned();
        let cap = map["max_entries"].as_u64().unwrap_or(0);
        match m.fullest.iter_mut().find(|f| f.0 == name) {
            Some(f) if f.1 >= entries => {}
            Some(f) => *f = (name, entries, cap),
            None => m.fullest.push((name, entries, cap)),
        }
    }
    m
}

/// `GET path` from the agent: the body, if it answered 200.
fn get(addr: &str, path: &str) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let end = out.windows(4).position(|w| w == b"\r\n\r\n")?;
    out.starts_with(b"HTTP/1.1 200").then(|| out[end + 4..].to_vec())
}

fn reports(addr: &str) -> Vec<serde_json::Value> {
    get(addr, "/api/v1/reports")
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// One row of `samples.csv`.
struct Sample {
    t: f64,
    agent: Own,
    attach: Own,
    escalations: u64,
    maps: Option<Maps>,
}

/// What happened to the population.
#[derive(Default)]
struct Events {
    victims: Vec<(u32, Instant)>,
    victims_killed: u64,
    stops: u64,
    hog_starts: u64,
    churn: String,
    busy: String,
    scrapes: u64,
    failed_scrapes: u64,
    pages: u64,
    failed_pages: u64,
    /// The names of leak's maps, as seen while it ran.
    map_names: Vec<String>,
    /// Every trace of the agent: (id, pid, last status seen).
    traces: Vec<(String, u32, String)>,
    /// The agent's report of the real leaker.
    leaker: Option<leak_tests::Report>,
}

struct Soak {
    churn: Pod,
    busy: Pod,
    leaker: Pod,
    sleeper: Pod,
    victim: Pod,
    hog: Pod,
    agent: Leak,
    agent_addr: String,
    attach: Leak,
    _agent_pod: PodCgroup,
}

impl Soak {
    fn start(out: &Path) -> Self {
        let soaker = fixture("soaker");
        let plugin = fixture("libplugin.so");
        let rate = LEAKER_RATE.to_string();
        let mut churn = Pod::new("besteffort", &["churn", soaker.to_str().unwrap()]);
        let mut busy = Pod::new("burstable", &["busy", plugin.to_str().unwrap()]);
        let mut leaker = Pod::new("burstable", &["leak", &rate]);
        let mut sleeper = Pod::new("burstable", &["leak", "2048"]);
        let victim = Pod::new("burstable", &["leak", "262144"]);
        let mut hog = Pod::new("burstable", &["hog"]);
        hog.cgroup.limit_memory(HOG_LIMIT);
        for p in [&mut churn, &mut busy, &mut leaker, &mut sleeper, &mut hog] {
            p.start();
        }
        let reports = out.join("reports");
        let _ = std::fs::remove_dir_all(&reports);
        let (agent_pod, _, _) = systemd_pod_cgroup_of("besteffort");
        let mut agent = Leak::spawn_in_pod(
            &agent_pod,
            &[
                "agent",
                "--listen",
                "127.0.0.1:0",
                "--sample-interval",
                "1s",
                "--interval",
                "1m",
                "--min-growth",
                "256K",
                "--trace-for",
                "20s",
                "--max-traced",
                "2",
                // Reached in the first minutes: the soak sees the agent's steady state.
                "--keep-reports",
                "10",
                "--out-dir",
                reports.to_str().unwrap(),
            ],
            &[],
        );
        let line = agent.stderr.wait_for("the serving line", |l| l.contains("serving http://"));
        let agent_addr = line.split("http://").nth(1).unwrap().split('/').next().unwrap().into();
        let json = out.join("attach.json");
        let attach = Leak::attach(
            busy.pid().unwrap(),
            &["--interval", "1m", "--sample-interval", "5s", "--json", json.to_str().unwrap()],
        );
        busy.process.as_mut().unwrap().send("go");
        Self {
            churn,
            busy,
            leaker,
            sleeper,
            victim,
            hog,
            agent,
            agent_addr,
            attach,
            _agent_pod: agent_pod,
        }
    }

    fn run(mut self, duration: Duration, out: &Path) -> Vec<String> {
        let start = Instant::now();
        let mut samples = Vec::new();
        let mut events = Events::default();
        let mut n = 0;
        while start.elapsed() < duration {
            let tick = Instant::now();
            self.drive(start.elapsed(), &mut events);
            samples.push(self.sample(start.elapsed(), n % MAP_EVERY == 0, &mut events));
            n += 1;
            if n % 30 == 0 {
                let s = &samples[samples.len() - 1];
                eprintln!(
                    "soak: {:.0} s: agent {:.1} MiB, {} fds; long trace {:.1} MiB; {} traces running",
                    s.t,
                    s.agent.rss as f64 / MIB,
                    s.agent.fds,
                    s.attach.rss as f64 / MIB,
                    s.escalations
                );
            }
            std::thread::sleep(SAMPLE.saturating_sub(tick.elapsed()));
        }
        self.finish(&samples, events, out)
    }

    /// The population's schedule: victims, the sleeper's stops, the hog's restarts.
    fn drive(&mut self, t: Duration, ev: &mut Events) {
        let n_victims = u32::try_from(ev.victims.len()).unwrap_or(u32::MAX);
        if self.victim.process.is_none() && t > VICTIM_EVERY * n_victims + SAMPLE * 5 {
            let pid = self.victim.start();
            ev.victims.push((pid, Instant::now()));
        }
        let list = reports(&self.agent_addr);
        self.note_traces(&list, ev);
        if let Some(pid) = self.victim.pid() {
            let traced = list.iter().any(|r| {
                r["pid"] == pid
                    && r["start_unix_s"].as_f64().is_some_and(|s| {
                        leak_user::runtime::now_unix() - s > VICTIM_TRACED.as_secs_f64()
                    })
            });
            let started = ev.victims.last().map(|v| v.1.elapsed()).unwrap_or_default();
            if traced || started > VICTIM_EVERY {
                // Mid-trace (or never traced): SIGKILL, as the OOM killer or a node drain does.
                self.victim.signal(libc::SIGKILL);
                self.victim.process = None;
                ev.victims_killed += u64::from(traced);
            }
        }
        let in_cycle = Duration::from_secs(t.as_secs() % STOP_EVERY.as_secs());
        let stop_at = STOP_EVERY / 4;
        if in_cycle >= stop_at && in_cycle < stop_at + SAMPLE {
            self.sleeper.signal(libc::SIGSTOP);
            ev.stops += 1;
        } else if in_cycle >= stop_at + STOPPED_FOR && in_cycle < stop_at + STOPPED_FOR + SAMPLE {
            self.sleeper.signal(libc::SIGCONT);
        }
        let hog = self.hog.process.as_mut().map(Fixture::try_wait);
        if let Some(Some(_)) = hog {
            self.hog.process = None;
            self.hog.start();
            ev.hog_starts += 1;
        }
        self.churn.stats(&mut ev.churn);
        self.busy.stats(&mut ev.busy);
        let _ = self.agent.poll_stdout();
        let _ = self.attach.poll_stdout();
    }

    fn sample(&mut self, t: Duration, maps: bool, ev: &mut Events) -> Sample {
        // Prometheus's scrape, and a person opening the node's page (rendered per request).
        ev.scrapes += 1;
        if get(&self.agent_addr, "/metrics").is_none() {
            ev.failed_scrapes += 1;
        }
        // (The page waits for the first judged sample: 503 before.)
        if t >= Duration::from_secs(10) {
            ev.pages += 1;
            if !get(&self.agent_addr, "/").is_some_and(|b| b.ends_with(b"</html>\n")) {
                ev.failed_pages += 1;
            }
        }
        let agent = self.agent.pid();
        Sample {
            t: t.as_secs_f64(),
            agent: Own::of(agent).unwrap_or_default(),
            attach: Own::of(self.attach.pid()).unwrap_or_default(),
            escalations: children_of(agent),
            maps: maps.then(|| sample_maps(&mut ev.map_names)),
        }
    }
}

/// `leak` processes whose parent is `pid` (the agent's `leak attach` children).
fn children_of(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    let mut n = 0;
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let Some((comm, rest)) = stat.split_once(") ") else { continue };
        let parent = rest.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok());
        if comm.ends_with("(leak") && parent == Some(pid) {
            n += 1;
        }
    }
    n
}

/// The end of the soak's run: its checks, in the order they are made.
struct Outcome {
    failures: Vec<String>,
    lines: Vec<String>,
}

impl Outcome {
    fn check(&mut self, ok: bool, what: String) {
        if !ok {
            self.failures.push(what);
        }
    }
}

impl Soak {
    fn finish(mut self, samples: &[Sample], mut ev: Events, out: &Path) -> Vec<String> {
        let mut o = Outcome { failures: Vec::new(), lines: Vec::new() };
        self.churn.stats(&mut ev.churn);
        self.busy.stats(&mut ev.busy);
        self.check_leaker(&mut o, &mut ev);
        // The long trace: the busy process stops leaking and says how much it leaked.
        self.busy.signal(libc::SIGUSR1);
        let said = self
            .busy
            .process
            .as_mut()
            .unwrap()
            .stdout
            .wait_for("busy leaked", |l| l.starts_with("busy leaked "));
        let leaked: u64 = said.rsplit(' ').next().unwrap().parse().unwrap();
        let attach = self.attach.interrupt();
        o.check(attach.status.success(), format!("leak attach ended with {}", attach.status));
        let report = read_report(&out.join("attach.json"));
        let busy = report.sites.iter().find(|s| frame0(s) == Some("busy_leak"));
        let got = busy.map(|s| (s.outstanding_allocs, s.outstanding_bytes));
        o.check(
            got == Some((leaked, leaked * 4096)),
            format!("the long trace has busy_leak at {got:?}, the process leaked {leaked} x 4096"),
        );
        // A free of a block never seen allocated loses nothing: glibc's thread exit flushes
        // the thread's cache by calling free again on every chunk in it.
        let unknown_free = report.drops.get("unknown_free").copied().unwrap_or(0);
        let lost: Vec<(&String, &u64)> =
            report.drops.iter().filter(|(k, n)| *k != "unknown_free" && **n > 0).collect();
        o.check(lost.is_empty(), format!("the long trace lost events: {lost:?}"));
        o.lines.push(format!(
            "| long `leak attach` on the busy process | {:.0} min; busy_leak {leaked} blocks / {} bytes, exactly as leaked; events lost: {}; frees of blocks not seen allocated (glibc's thread-exit cache flush): {unknown_free} |",
            report.duration_s / 60.0,
            leaked * 4096,
            if lost.is_empty() { "none".to_owned() } else { format!("{lost:?}") },
        ));
        let agent = self.agent.terminate();
        o.check(agent.status.success(), format!("the agent ended with {}", agent.status));
        drop(self.churn);
        drop(self.busy);
        drop(self.leaker);
        drop(self.sleeper);
        drop(self.victim);
        let oom_kills = self.hog.cgroup.oom_kills();
        drop(self.hog);
        let _ = write!(ev.churn, " oom_kills={oom_kills}");
        check_nothing_left(&mut o, &ev.map_names);
        judge(&mut o, samples, &ev);
        write_results(out, samples, &o);
        o.failures
    }

    /// The agent found the real leaker, traced it and served an exact report of it.
    /// Remembers each trace's last status, and the leaker's report once it is done (the
    /// agent deletes the oldest reports).
    fn note_traces(&self, list: &[serde_json::Value], ev: &mut Events) {
        for r in list {
            let (Some(id), Some(status)) = (r["id"].as_str(), r["status"].as_str()) else {
                continue;
            };
            let pid = r["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
            match ev.traces.iter_mut().find(|t| t.0 == id) {
                Some(t) => status.clone_into(&mut t.2),
                None => ev.traces.push((id.to_owned(), pid, status.to_owned())),
            }
            if ev.leaker.is_none() && Some(pid) == self.leaker.pid() && status == "done" {
                ev.leaker = get(&self.agent_addr, r["url"].as_str().unwrap_or(""))
                    .and_then(|b| serde_json::from_slice(&b).ok());
            }
        }
    }

    /// The agent's traces ended well, and it found the real leaker, traced it and served an
    /// exact report of it.
    fn check_leaker(&self, o: &mut Outcome, ev: &mut Events) {
        self.note_traces(&reports(&self.agent_addr), ev);
        let count = |status: &str| ev.traces.iter().filter(|t| t.2 == status).count();
        o.lines.push(format!(
            "| the agent's traces | {} done, {} failed, {} still tracing at the end; {} of them on victims SIGKILLed mid-trace |",
            count("done"),
            count("failed"),
            count("tracing"),
            ev.victims_killed
        ));
        for (pid, _) in &ev.victims {
            if let Some(t) = ev.traces.iter().find(|t| t.1 == *pid) {
                o.check(t.2 != "failed", format!("the trace of victim {pid} failed: {t:?}"));
            }
        }
        let report = ev.leaker.as_ref();
        let site = report.and_then(|r| r.sites.iter().find(|s| frame0(s) == Some("leak_tick")));
        match site {
            Some(s) => {
                // The agent escalates to a growth profile by default: whole resident pages;
                // an exact trace counts the leaker's blocks.
                let growth =
                    report.is_some_and(|r| r.mode == leak_user::analysis::report::Mode::Growth);
                if growth {
                    o.check(
                        s.outstanding_bytes > 0
                            && s.outstanding_bytes % 4096 == 0
                            && s.resident_bytes == Some(s.outstanding_bytes),
                        format!("leak_tick's resident bytes are not whole pages: {s:?}"),
                    );
                } else {
                    o.check(
                        s.outstanding_bytes == s.outstanding_allocs * (LEAKER_RATE / 10),
                        format!(
                            "leak_tick's bytes are not its blocks x {}: {s:?}",
                            LEAKER_RATE / 10
                        ),
                    );
                }
                o.lines.push(format!(
                    "| the real leaker ({} B/s) | found and traced: leak_tick, {} blocks / {} bytes in its {:.0} s trace, verdict {} |",
                    LEAKER_RATE,
                    s.outstanding_allocs,
                    s.outstanding_bytes,
                    report.map_or(0.0, |r| r.duration_s),
                    s.trend.verdict.as_str(),
                ));
            }
            None => o.failures.push(format!(
                "the agent has no report of the leaker {:?}: {:?}",
                self.leaker.pid(),
                ev.traces
            )),
        }
    }
}

/// No `leak` process runs on, and none of leak's programs, links or maps stays in the kernel.
fn check_nothing_left(o: &mut Outcome, map_names: &[String]) {
    // Probes are unregistered by a background helper after a trace exits: wait for it.
    let deadline = Instant::now() + Duration::from_mins(1);
    let running =
        || Command::new("pgrep").args(["-x", "leak"]).output().is_ok_and(|o| o.status.success());
    while running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    o.check(!running(), "leak processes are left a minute after the end".into());
    let programs: Vec<&str> = leak_common::Program::ALL.iter().map(|p| p.name()).collect();
    let left: Vec<serde_json::Value> = bpf_objects("prog")
        .into_iter()
        .filter(|p| programs.contains(&p["name"].as_str().unwrap_or("")))
        .chain(
            bpf_objects("map")
                .into_iter()
                .filter(|m| map_names.iter().any(|n| m["name"].as_str() == Some(n.as_str()))),
        )
        .collect();
    o.check(
        !map_names.is_empty() && left.is_empty(),
        format!("leak's BPF programs or maps left after the end: {left:?}"),
    );
    o.lines.push(
        "| left in the kernel at the end (bpftool) | no program, link or map of leak's |".into(),
    );
}

/// Judges leak's own series with leak's trend code, at the agent's default threshold (growth
/// under 1 MiB over the window is not growth).
fn judge(o: &mut Outcome, samples: &[Sample], ev: &Events) {
    let params = Params { min_growth_bytes: f64::from(1u32 << 20), ..Params::default() };
    let fd_params = Params { min_growth_bytes: 16.0, ..Params::default() };
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    for (who, own) in [
        ("agent", &(|s: &Sample| s.agent) as &dyn Fn(&Sample) -> Own),
        ("long `leak attach`", &|s: &Sample| s.attach),
    ] {
        let rss: Vec<(f64, f64)> = samples.iter().map(|s| (s.t, own(s).rss as f64)).collect();
        let fds: Vec<(f64, f64)> = samples.iter().map(|s| (s.t, own(s).fds as f64)).collect();
        let t = trend::classify(&rss, &params);
        let f = trend::classify(&fds, &fd_params);
        let (first, last) = (own(&samples[0]), own(&samples[samples.len() - 1]));
        let max = |g: fn(Own) -> u64| samples.iter().map(|s| g(own(s))).max().unwrap_or(0);
        o.lines.push(format!(
            "| {who}: resident memory | {:.1} MiB at the start, {:.1} MiB at the end, {:.1} MiB at most; verdict **{}** ({:.2}), {:+.2} MiB/h |",
            mib(first.rss),
            mib(last.rss),
            mib(max(|o| o.rss)),
            t.verdict.as_str(),
            t.confidence,
            t.rate_per_hour() / f64::from(1u32 << 20),
        ));
        o.lines.push(format!(
            "| {who}: descriptors, threads | fds {} at the start, {} at the end, {} at most (verdict {}); threads {} at most |",
            first.fds,
            last.fds,
            max(|o| o.fds),
            f.verdict.as_str(),
            max(|o| o.threads),
        ));
        for (series, verdict) in [("resident memory", t.verdict), ("descriptors", f.verdict)] {
            o.check(
                matches!(verdict, Verdict::Stable | Verdict::Plateau),
                format!("the {who}'s {series} is judged {}", verdict.as_str()),
            );
        }
    }
    let maps: Vec<&Maps> = samples.iter().filter_map(|s| s.maps.as_ref()).collect();
    let most_kernel = maps.iter().map(|m| m.kernel_bytes).max().unwrap_or(0);
    let most_maps = maps.iter().map(|m| m.count).max().unwrap_or(0);
    let mut fullest: Vec<(String, u64, u64)> = Vec::new();
    for m in &maps {
        for (name, n, cap) in &m.fullest {
            match fullest.iter_mut().find(|f| &f.0 == name) {
                Some(f) if f.1 >= *n => {}
                Some(f) => *f = (name.clone(), *n, *cap),
                None => fullest.push((name.clone(), *n, *cap)),
            }
        }
    }
    let occupancy: Vec<String> =
        fullest.iter().map(|(name, n, cap)| format!("{name} {n}/{cap}")).collect();
    o.lines.push(format!(
        "| leak's BPF maps (all its processes) | {most_maps} maps and {:.1} MiB of kernel memory at most; fullest hash maps: {} |",
        mib(most_kernel),
        occupancy.join(", ")
    ));
    let most_escalations = samples.iter().map(|s| s.escalations).max().unwrap_or(0);
    o.lines.push(format!(
        "| the population | churn: {}; busy: {}; sleeper stopped {} times for {} s; hog started {} times; at most {most_escalations} traces at once |",
        ev.churn,
        ev.busy,
        ev.stops,
        STOPPED_FOR.as_secs(),
        ev.hog_starts + 1,
    ));
    o.lines.push(format!(
        "| the agent's API | {} scrapes of /metrics, {} failed; {} loads of the node's page (/), {} failed |",
        ev.scrapes, ev.failed_scrapes, ev.pages, ev.failed_pages
    ));
    o.check(ev.failed_scrapes == 0, format!("{} scrapes of /metrics failed", ev.failed_scrapes));
    o.check(ev.failed_pages == 0, format!("{} loads of the node's page failed", ev.failed_pages));
    // The population did what it is there for.
    let churned = ["reused_pids=0", "oom_kills=0"].iter().all(|z| !ev.churn.contains(z));
    o.check(
        churned && ev.victims_killed > 0 && ev.stops > 0 && ev.hog_starts > 0,
        format!(
            "the population did not churn as planned: {}; {} victims killed mid-trace, {} stops",
            ev.churn, ev.victims_killed, ev.stops
        ),
    );
}

fn write_results(out: &Path, samples: &[Sample], o: &Outcome) {
    let minutes = samples.last().map_or(0.0, |s| s.t / 60.0);
    let mut md = format!("Soak of {minutes:.1} minutes.\n\n| what | figures |\n|---|---|\n");
    for l in &o.lines {
        md.push_str(l);
        md.push('\n');
    }
    if !o.failures.is_empty() {
        md.push_str("\nFailed:\n");
        for f in &o.failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    std::fs::write(out.join("soak.md"), &md).expect("write soak.md");
    print!("{md}");
    let mut csv = String::from(
        "t_s,agent_rss,agent_fds,agent_threads,attach_rss,attach_fds,attach_threads,traces,maps,maps_kernel_bytes\n",
    );
    for s in samples {
        let (maps, kernel) = s.maps.as_ref().map_or((String::new(), String::new()), |m| {
            (m.count.to_string(), m.kernel_bytes.to_string())
        });
        let _ = writeln!(
            csv,
            "{:.1},{},{},{},{},{},{},{},{maps},{kernel}",
            s.t,
            s.agent.rss,
            s.agent.fds,
            s.agent.threads,
            s.attach.rss,
            s.attach.fds,
            s.attach.threads,
            s.escalations
        );
    }
    std::fs::write(out.join("samples.csv"), csv).expect("write samples.csv");
}
