//! Real servers under load, traced by each configuration of the churn bench: Debian's
//! `redis-server` (jemalloc) under `redis-benchmark`, and `nginx` (glibc malloc) under `wrk`.
//! Each server runs on loopback in the foreground; the tracer attaches to its pid, the load
//! runs, the tracer detaches, the server stops. Figures are requests per second, medians of
//! interleaved runs, and ratios against the untraced server of the same run.
use std::{
    fs,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{
    measure::{Tracer, children_cpu_s, median, memleak_command, wait_for_line, wait_for_no_leak},
    util::{apt_install, as_root, output},
};

/// Runs of each (server, tracer) pair; the median counts.
const ROUNDS: usize = 3;
/// Requests per redis-benchmark test (SET, then GET).
const REDIS_REQUESTS: u32 = 40_000;
/// Seconds of wrk load on nginx.
const WRK_SECONDS: u32 = 4;
/// Concurrent client connections.
const CLIENTS: u32 = 16;

#[derive(Clone, Copy)]
enum Server {
    Redis,
    /// redis taking new keys: its memory grows by several MiB a second (a leak from the
    /// process's point of view), the growth profile's harder case.
    RedisGrowing,
    Nginx,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Self::Redis => "redis-server (jemalloc) under redis-benchmark SET+GET",
            Self::RedisGrowing => {
                "redis-server (jemalloc) under redis-benchmark SET of new 512-byte values (memory \
                 grows)"
            }
            Self::Nginx => "nginx (glibc malloc) under wrk, a 1 KiB static file",
        }
    }

    fn port(self) -> u16 {
        match self {
            Self::Redis => 6391,
            Self::RedisGrowing => 6392,
            Self::Nginx => 8091,
        }
    }

    /// The object defining the server's allocator, for memleak-bpfcc's `-O` (it probes
    /// libc's by default, which redis never calls: it would trace nothing). memleak also wants
    /// `mmap` from that object, which jemalloc does not define: it then cannot attach at all,
    /// and the table says so.
    fn allocator_object(self) -> Option<String> {
        match self {
            Self::Redis | Self::RedisGrowing => {
                let ldd = output(Command::new("ldd").arg("/usr/bin/redis-server"))?;
                ldd.lines()
                    .filter(|l| l.contains("libjemalloc"))
                    .find_map(|l| Some(l.split_once("=> ")?.1.split(' ').next()?.to_owned()))
            }
            Self::Nginx => None,
        }
    }

    /// Starts the server in the foreground; returns once it accepts connections.
    fn start(self, scratch: &Path) -> Result<Child> {
        let port = self.port().to_string();
        let mut cmd = match self {
            Self::Redis | Self::RedisGrowing => {
                let mut c = Command::new("redis-server");
                c.args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly"])
                    .args(["no", "--daemonize", "no", "--logfile", ""]);
                c
            }
            Self::Nginx => {
                let conf = nginx_conf(scratch, self.port())?;
                let mut c = Command::new("nginx");
                c.arg("-p").arg(conf.parent().unwrap_or(scratch)).arg("-c").arg(&conf);
                c
            }
        };
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.name()))?;
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port())).is_err() {
            if started.elapsed() > Duration::from_secs(10) || child.try_wait()?.is_some() {
                let _ = child.kill();
                bail!("{} did not listen on port {port}", self.name());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(child)
    }

    /// Runs the load; requests per second.
    fn load(self) -> Result<f64> {
        let port = self.port().to_string();
        let clients = CLIENTS.to_string();
        match self {
            Self::Redis => {
                let n = REDIS_REQUESTS.to_string();
                let out = Command::new("redis-benchmark")
                    .args(["-h", "127.0.0.1", "-p", &port, "-q", "-t", "set,get"])
                    .args(["-n", &n, "-c", &clients])
                    .stderr(Stdio::null())
                    .output()
                    .context("running redis-benchmark")?;
                let text = String::from_utf8_lossy(&out.stdout);
                // "SET: 81967.21 requests per second, p50=..." (after \r progress lines).
                let rates: Vec<f64> = text
                    .split(['\r', '\n'])
                    .filter_map(|l| l.split_once(" requests per second")?.0.rsplit(' ').next())
                    .filter_map(|r| r.parse().ok())
                    .collect();
                if rates.len() != 2 {
                    bail!("redis-benchmark printed no rates: {text}");
                }
                // Both tests did n requests: the combined rate is the harmonic mean.
                Ok(2.0 / rates.iter().map(|r| 1.0 / r).sum::<f64>())
            }
            Self::RedisGrowing => {
                // Random keys from a space far larger than the requests: nearly every SET
                // adds a key (about 100 MiB over the run).
                let n = (REDIS_REQUESTS * 4).to_string();
                let out = Command::new("redis-benchmark")
                    .args(["-h", "127.0.0.1", "-p", &port, "-q", "-t", "set", "-d", "512"])
                    .args(["-r", "1000000000", "-n", &n, "-c", &clients])
                    .stderr(Stdio::null())
                    .output()
                    .context("running redis-benchmark")?;
                let text = String::from_utf8_lossy(&out.stdout);
                text.split(['\r', '\n'])
                    .filter_map(|l| l.split_once(" requests per second")?.0.rsplit(' ').next())
                    .find_map(|r| r.parse().ok())
                    .ok_or_else(|| anyhow!("redis-benchmark printed no rate: {text}"))
            }
            Self::Nginx => {
                let url = format!("http://127.0.0.1:{port}/index.html");
                let out = Command::new("wrk")
                    .args(["-t", "1", "-c", &clients, "-d", &format!("{WRK_SECONDS}s"), &url])
                    .stderr(Stdio::null())
                    .output()
                    .context("running wrk")?;
                let text = String::from_utf8_lossy(&out.stdout);
                if text.contains("Non-2xx") || text.contains("Socket errors") {
                    bail!("wrk saw errors: {text}");
                }
                text.lines()
                    .find_map(|l| l.strip_prefix("Requests/sec:")?.trim().parse().ok())
                    .ok_or_else(|| anyhow!("wrk printed no rate: {text}"))
            }
        }
    }
}

/// A single-process nginx (no master, no daemon) serving `index.html` on `port`.
fn nginx_conf(scratch: &Path, port: u16) -> Result<PathBuf> {
    let dir = scratch.join("nginx");
    fs::create_dir_all(dir.join("html"))?;
    fs::create_dir_all(dir.join("logs"))?;
    fs::write(dir.join("html/index.html"), "x".repeat(1024))?;
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/logs/error.log;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  server {{\n    listen 127.0.0.1:{port};\n    \
             root {d}/html;\n  }}\n}}\n"
        ),
    )?;
    Ok(conf)
}

/// A tracer attached to a running server.
struct Attached {
    child: Option<Child>,
}

impl Attached {
    /// Attaches `tracer` to `pid` and returns once its probes are in place.
    fn start(env: &ServerEnv, server: Server, tracer: Tracer, pid: u32) -> Result<Self> {
        let pid_s = pid.to_string();
        // The line each tool prints once its probes are in, and on which stream.
        let (mut child, on_stderr, ready) = match tracer {
            Tracer::None => return Ok(Self { child: None }),
            Tracer::ProbeFloor
            | Tracer::LeakFull
            | Tracer::LeakFp
            | Tracer::LeakSampled
            | Tracer::LeakGrowth
            | Tracer::LeakCompat
            | Tracer::LeakBaseline => {
                let mut cmd = tracer.leak_command(
                    &env.leak,
                    env.baseline.as_deref(),
                    &["attach", "--pid", &pid_s, "--interval", "1h"],
                );
                (cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?, true, "attached to PID")
            }
            Tracer::Memleak => {
                let headers =
                    env.kernel_headers.as_deref().ok_or_else(|| anyhow!("no kernel headers"))?;
                // While a finished leak's helper still unregisters its uprobes, the kernel
                // refuses bcc's at the same functions.
                wait_for_no_leak()?;
                let mut cmd = memleak_command();
                if let Some(obj) = server.allocator_object() {
                    cmd.args(["-O", &obj]);
                }
                let child = cmd
                    .env("BCC_KERNEL_SOURCE", headers)
                    // Python buffers a pipe: the first report would come too late.
                    .env("PYTHONUNBUFFERED", "1")
                    .args(["-p", &pid_s, "1"])
                    .stdout(Stdio::piped())
                    .stderr(fs::File::create(env.scratch.join("memleak-server.log"))?)
                    .spawn()
                    .context("starting memleak-bpfcc")?;
                (child, false, "Top ")
            }
            Tracer::Heaptrack => {
                let out = env.scratch.join("heaptrack.server");
                let child = Command::new("heaptrack")
                    .arg("-o")
                    .arg(&out)
                    .args(["-p", &pid_s])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting heaptrack")?;
                (child, false, "injection finished")
            }
        };
        let stream: Box<dyn std::io::Read + Send> = if on_stderr {
            Box::new(child.stderr.take().context("stderr")?)
        } else {
            Box::new(child.stdout.take().context("stdout")?)
        };
        if let Err(e) = wait_for_line(stream, ready, Duration::from_mins(2)) {
            let _ = child.kill();
            let _ = child.wait();
            // memleak's own words, when it wrote any (its last stderr line).
            let said = fs::read_to_string(env.scratch.join("memleak-server.log"))
                .ok()
                .filter(|_| tracer == Tracer::Memleak)
                .and_then(|t| t.lines().last().map(str::to_owned))
                .unwrap_or_default();
            return Err(e.context(format!("{} did not attach {said}", tracer.name())));
        }
        Ok(Self { child: Some(child) })
    }

    /// Detaches (SIGINT: leak and memleak end cleanly) and waits; heaptrack ends with the
    /// server. Returns the CPU seconds the tracer's own processes used over their life
    /// (user space: what runs in the target's threads, the probes' programs, is in its rate).
    fn stop(mut self, server: &mut Child) -> f64 {
        if let Some(child) = &self.child {
            // SAFETY: plain kill(2) of our child.
            unsafe { libc::kill(i32::try_from(child.id()).unwrap_or(0), libc::SIGINT) };
        }
        let _ = server.kill();
        let _ = server.wait();
        let before = children_cpu_s();
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        children_cpu_s() - before
    }
}

/// What the server runs need from the bench.
pub struct ServerEnv {
    pub leak: PathBuf,
    /// Another leak binary to trace side by side (`--baseline`).
    pub baseline: Option<PathBuf>,
    pub kernel_headers: Option<PathBuf>,
    pub scratch: PathBuf,
}

/// Runs each server under each of `tracers`, interleaved, and prints a table per server.
pub fn bench_servers(env: &ServerEnv, tracers: &[Tracer]) -> Result<()> {
    apt_install(&["redis-server", "redis-tools", "nginx", "wrk"], "the server benchmarks")?;
    // heaptrack attaches through gdb.
    let tracers: Vec<Tracer> = if tracers.contains(&Tracer::Heaptrack)
        && apt_install(&["gdb"], "gdb (heaptrack -p)").is_err()
    {
        tracers.iter().copied().filter(|&t| t != Tracer::Heaptrack).collect()
    } else {
        tracers.to_vec()
    };
    for server in [Server::Redis, Server::Nginx, Server::RedisGrowing] {
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
        let mut failed: Vec<Option<String>> = vec![None; tracers.len()];
        for round in 1..=ROUNDS {
            eprintln!("bench: {} round {round}/{ROUNDS}", server.name());
            for (i, &tracer) in tracers.iter().enumerate() {
                if failed[i].is_some() {
                    continue;
                }
                match server_once(env, server, tracer) {
                    Ok((r, c)) => {
                        rates[i].push(r);
                        cpu[i].push(c);
                    }
                    Err(e) => {
                        eprintln!("bench: {} left out for {}: {e:#}", tracer.name(), server.name());
                        failed[i] = Some(format!("{e:#}"));
                    }
                }
            }
        }
        print_server(server, &tracers, &mut rates, &mut cpu, &failed);
    }
    Ok(())
}

/// One load under `tracer`: requests per second, and the tracer's own CPU seconds.
fn server_once(env: &ServerEnv, server: Server, tracer: Tracer) -> Result<(f64, f64)> {
    let mut child = server.start(&env.scratch)?;
    let attached = match Attached::start(env, server, tracer, child.id()) {
        Ok(a) => a,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let rate = server.load();
    let cpu = attached.stop(&mut child);
    for f in fs::read_dir(&env.scratch)?.flatten() {
        if f.file_name().to_string_lossy().starts_with("heaptrack.server") {
            let _ = fs::remove_file(f.path());
        }
    }
    Ok((rate?, cpu))
}

fn print_server(
    server: Server,
    tracers: &[Tracer],
    rates: &mut [Vec<f64>],
    cpu: &mut [Vec<f64>],
    failed: &[Option<String>],
) {
    println!(
        "\n{}: requests per second, {CLIENTS} connections, median of {ROUNDS} interleaved runs\n",
        server.name()
    );
    let medians: Vec<Option<f64>> =
        rates.iter_mut().map(|r| (!r.is_empty()).then(|| median(r))).collect();
    let at = |t: Tracer| tracers.iter().position(|&c| c == t).and_then(|i| medians[i]);
    let base = at(Tracer::None).unwrap_or(f64::NAN);
    // Added time per request, µs: what the tracer costs each request, end to end.
    let added = |r: f64| 1e6 / r - 1e6 / base;
    let floor = at(Tracer::ProbeFloor).map_or(f64::NAN, added);
    println!(
        "| configuration | requests/s | x untraced | added µs per request | added / probe floor's \
         | tracer's own CPU s per run |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for ((&t, m), c) in tracers.iter().zip(&medians).zip(cpu.iter_mut()) {
        let Some(r) = *m else {
            println!("| {} | could not run | | | | |", t.name());
            continue;
        };
        let vs_floor =
            if t == Tracer::None { "-".to_owned() } else { format!("{:.2}", added(r) / floor) };
        let own = if t == Tracer::None { "-".to_owned() } else { format!("{:.2}", median(c)) };
        println!(
            "| {} | {r:.0} | {:.2} | {:.1} | {vs_floor} | {own} |",
            t.name(),
            r / base,
            added(r)
        );
    }
    for (t, why) in tracers.iter().zip(failed) {
        if let Some(why) = why {
            println!("\n{}: {why}", t.name());
        }
    }
}

/// How long each server runs under a growth profile in [`bench_verdicts`].
const VERDICT_SECONDS: u32 = 120;

/// "No false leak verdict" on real servers: redis (one key, SET+GET) and nginx (one file)
/// under load for [`VERDICT_SECONDS`] each, profiled (`leak attach --mode growth`) the whole
/// time; prints each report's verdict and the sites it judged leaking or growing.
pub fn bench_verdicts(env: &ServerEnv) -> Result<()> {
    apt_install(&["redis-server", "redis-tools", "nginx", "wrk"], "the server benchmarks")?;
    println!(
        "\nsteady servers under load for {VERDICT_SECONDS} s, a growth profile the whole time \
         (leak attach --mode growth): the verdicts\n"
    );
    println!(
        "| server | loads run | report's verdict | sites judged leak or growing | resident bytes at the end | page faults |"
    );
    println!("|---|---:|---|---|---:|---:|");
    for server in [Server::Redis, Server::Nginx] {
        let mut child = server.start(&env.scratch)?;
        let json = env.scratch.join("verdict.json");
        let _ = fs::remove_file(&json);
        let mut leak = as_root(&env.leak)
            .args(["attach", "--pid", &child.id().to_string(), "--mode", "growth"])
            .args(["--duration", &format!("{VERDICT_SECONDS}s"), "--interval", "1h", "--json"])
            .arg(&json)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting leak attach")?;
        let stderr = leak.stderr.take().context("stderr")?;
        if let Err(e) = wait_for_line(stderr, "attached to PID", Duration::from_mins(1)) {
            let _ = leak.kill();
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        let mut loads = 0;
        while leak.try_wait()?.is_none() {
            server.load()?;
            loads += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        let text = fs::read_to_string(&json).with_context(|| format!("{}", json.display()))?;
        let report: serde_json::Value = serde_json::from_str(&text)?;
        let flagged: Vec<String> = report["sites"]
            .as_array()
            .map(|sites| {
                sites
                    .iter()
                    .filter(|s| matches!(s["trend"]["verdict"].as_str(), Some("leak" | "growing")))
                    .map(|s| {
                        let f = s["stack"][0]["function"].as_str().unwrap_or("?");
                        format!("{f} ({})", s["trend"]["verdict"].as_str().unwrap_or("?"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "| {} | {loads} | {} | {} | {} | {} |",
            server.name(),
            report["growth"]["verdict"].as_str().unwrap_or("?"),
            if flagged.is_empty() { "none".to_owned() } else { flagged.join(", ") },
            report["totals"]["outstanding_bytes"],
            report["probe_hits"]["page_fault_enter"],
        );
    }
    Ok(())
}
