//! `cargo xtask bench`: what tracing costs, side by side with the untraced run and the peers
//! in the same run, reported as ratios (the machine is shared and noisy: only ratios taken in
//! one run compare).
//!
//! Each configuration runs `ROUNDS` times, interleaved with the others, and its median counts.
//! Peer tools are Debian packages, installed here when missing.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{
    demo::build_release,
    measure::{Tracer, children_cpu_s, median, memleak_command, wait_for_line, wait_for_no_leak},
    setup::setup,
    util::{apt_install, as_root, compile_c, output, run, workspace_root},
};

/// Runs of each configuration; the median counts.
const ROUNDS: usize = 5;

struct Env {
    leak: PathBuf,
    /// `--baseline`: another leak binary, traced side by side with this one.
    baseline: Option<PathBuf>,
    churn: PathBuf,
    /// `BCC_KERNEL_SOURCE` for memleak-bpfcc, when it could be set up.
    kernel_headers: Option<PathBuf>,
    heaptrack: bool,
    scratch: PathBuf,
}

/// The parts of the bench, in the order they run.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The malloc/free churn loop under every configuration.
    Churn,
    /// redis and nginx under load, under every configuration.
    Servers,
    /// `--sample`'s estimates against the exact bytes.
    Sampling,
    /// leak's CPU while the target is idle.
    Idle,
    /// A million outstanding allocations at 10,000 stacks.
    Scale,
    /// `leak watch --all`.
    Watch,
    /// Steady redis and nginx under a growth profile for minutes: no false leak verdict.
    Verdicts,
}

pub fn bench(pairs: u64, only: &[Part], baseline: Option<&Path>) -> Result<()> {
    let runs = |p: Part| only.is_empty() || only.contains(&p);
    setup()?;
    build_release()?;
    let root = workspace_root();
    let scratch = root.join("target/bench");
    fs::create_dir_all(&scratch)?;
    let churn = scratch.join("churn");
    // -O2 and frame pointers: the allocation sites' stacks stay walkable under the tracer.
    run(Command::new("cc")
        .args(["-O2", "-fno-omit-frame-pointer", "-o"])
        .arg(&churn)
        .arg(root.join("xtask/programs/churn.c")))?;
    if let Some(b) = baseline
        && !b.is_file()
    {
        bail!(
            "--baseline {}: no such binary (build the code before the change first)",
            b.display()
        );
    }
    let env = Env {
        leak: root.join("target/release/leak"),
        baseline: baseline.map(Path::to_path_buf),
        churn,
        kernel_headers: peer_memleak(&scratch)
            .map_err(|e| eprintln!("bench: memleak-bpfcc left out: {e:#}"))
            .ok(),
        heaptrack: apt_install(&["heaptrack"], "heaptrack")
            .map_err(|e| eprintln!("bench: heaptrack left out: {e:#}"))
            .is_ok(),
        scratch,
    };
    let mut configs = vec![
        Tracer::None,
        Tracer::ProbeFloor,
        Tracer::LeakFull,
        Tracer::LeakFp,
        Tracer::LeakSampled,
        Tracer::LeakGrowth,
    ];
    if env.baseline.is_some() {
        configs.push(Tracer::LeakBaseline);
    }
    // The compatible object's cost is the churn loop's question (the servers keep to the
    // objects of the kernel they run on).
    if runs(Part::Churn) {
        configs.push(Tracer::LeakCompat);
    }
    if env.kernel_headers.is_some() {
        configs.push(Tracer::Memleak);
    }
    if env.heaptrack {
        configs.push(Tracer::Heaptrack);
    }
    if runs(Part::Churn) {
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
        for round in 1..=ROUNDS {
            eprintln!("bench: churn round {round}/{ROUNDS}");
            for (i, &c) in configs.iter().enumerate() {
                samples[i].push(churn_once(&env, c, pairs)?);
            }
        }
        let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
        print_churn(&configs, &medians, pairs);
    }
    if runs(Part::Servers) {
        crate::servers::bench_servers(
            &crate::servers::ServerEnv {
                leak: env.leak.clone(),
                baseline: env.baseline.clone(),
                kernel_headers: env.kernel_headers.clone(),
                scratch: env.scratch.clone(),
            },
            &configs,
        )?;
    }
    if runs(Part::Sampling) {
        bench_sampling_accuracy(&env)?;
    }
    if runs(Part::Idle) {
        bench_idle(&env.leak)?;
    }
    if runs(Part::Scale) {
        bench_scale(&env)?;
    }
    if runs(Part::Watch) {
        bench_watch(&env.leak)?;
    }
    if runs(Part::Verdicts) {
        crate::servers::bench_verdicts(&crate::servers::ServerEnv {
            leak: env.leak.clone(),
            baseline: None,
            kernel_headers: None,
            scratch: env.scratch.clone(),
        })?;
    }
    Ok(())
}

fn print_churn(configs: &[Tracer], ns: &[f64], pairs: u64) {
    let kernel = output(Command::new("uname").arg("-r")).unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                Some(l.split_once("model name")?.1.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    println!(
        "\nchurn loop: malloc+free pairs of 8 mixed sizes (16 B..4000 B), {pairs} pairs traced \
         ({} untraced), median of {ROUNDS} interleaved runs; kernel {}, {cpu}, {} CPUs\n",
        pairs * 50,
        kernel.trim(),
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let at = |t: Tracer| configs.iter().position(|&c| c == t).map(|i| ns[i]);
    let base = at(Tracer::None).unwrap_or(f64::NAN);
    let floor_added = at(Tracer::ProbeFloor).map_or(f64::NAN, |f| f - base);
    println!(
        "| configuration | ns per pair | x untraced | added ns per pair | added / probe floor's |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (&c, &v) in configs.iter().zip(ns) {
        let added = v - base;
        println!(
            "| {} | {v:.1} | {:.0}x | {added:.0} | {} |",
            c.name(),
            v / base,
            if c == Tracer::None { "-".to_owned() } else { format!("{:.2}", added / floor_added) }
        );
    }
    if let (Some(full), Some(memleak)) = (at(Tracer::LeakFull), at(Tracer::Memleak)) {
        println!(
            "\nmemleak-bpfcc adds {:.1}x what leak (full trace) adds per pair",
            (memleak - base) / (full - base)
        );
    }
}

/// One churn run under `tracer`: nanoseconds per malloc+free pair.
fn churn_once(env: &Env, tracer: Tracer, pairs: u64) -> Result<f64> {
    let n = pairs.to_string();
    match tracer {
        Tracer::None => measure(Command::new(&env.churn).arg((pairs * 50).to_string())),
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
                &["run", "--interval", "60s"],
            );
            measure(cmd.arg("--").arg(&env.churn).arg(&n))
        }
        Tracer::Heaptrack => {
            let out = env.scratch.join("heaptrack.churn");
            let result =
                measure(Command::new("heaptrack").arg("-o").arg(&out).arg(&env.churn).arg(&n));
            for f in fs::read_dir(&env.scratch)?.flatten() {
                if f.file_name().to_string_lossy().starts_with("heaptrack.churn") {
                    let _ = fs::remove_file(f.path());
                }
            }
            result
        }
        Tracer::Memleak => {
            let headers = env.kernel_headers.as_deref().ok_or_else(|| anyhow!("no headers"))?;
            // While a finished leak's helper still unregisters its uprobes, the kernel
            // refuses bcc's at the same functions (EINVAL).
            wait_for_no_leak()?;
            memleak_once(&env.churn, &n, headers)
        }
    }
}

/// memleak-bpfcc attaches to a running pid: churn waits until memleak's first report says
/// its probes are in place.
fn memleak_once(churn: &Path, n: &str, headers: &Path) -> Result<f64> {
    let mut target = Command::new(churn)
        .args([n, "wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting churn")?;
    let mut out = BufReader::new(target.stdout.take().context("churn stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    let log = headers.with_file_name("memleak.log");
    let mut memleak = memleak_command();
    let mut memleak = memleak
        .env("BCC_KERNEL_SOURCE", headers)
        // Python buffers a pipe: the line saying the probes are in would come too late.
        .env("PYTHONUNBUFFERED", "1")
        .args(["-p", &target.id().to_string(), "1"])
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&log)?)
        .spawn()
        .context("starting memleak-bpfcc")?;
    let stdout = memleak.stdout.take().context("memleak stdout")?;
    let attached = wait_for_line(stdout, "Top ", Duration::from_mins(2)).map_err(|e| {
        let text = fs::read_to_string(&log).unwrap_or_default();
        anyhow!("memleak-bpfcc: {e}; its stderr ({}): {}", log.display(), text.trim())
    });
    let result = attached.and_then(|()| {
        writeln!(target.stdin.as_mut().context("churn stdin")?, "go")?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut out, &mut text)?;
        parse_ns(&text)
    });
    let _ = target.kill();
    let _ = target.wait();
    // SAFETY: plain kill(2) of our child.
    unsafe { libc::kill(i32::try_from(memleak.id()).unwrap_or(0), libc::SIGINT) };
    let _ = memleak.wait();
    result
}

/// Installs memleak-bpfcc and builds the kernel header tree it compiles against: this kernel
/// ships none, so Debian's newest 6.1 headers (the `-common` and `-amd64` packages merged into
/// one tree) stand in. Returns the tree.
fn peer_memleak(scratch: &Path) -> Result<PathBuf> {
    let search = output(Command::new("apt-cache").args([
        "search",
        "--names-only",
        "^linux-headers-6.1.0-[0-9]+-amd64$",
    ]))
    .unwrap_or_default();
    let newest = search
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|p| p.split('-').nth(4).and_then(|n| n.parse::<u32>().ok()).unwrap_or(0))
        .ok_or_else(|| anyhow!("no linux-headers-6.1.0-*-amd64 package in apt"))?
        .to_owned();
    apt_install(&["bpfcc-tools", &newest], "memleak-bpfcc and kernel headers")?;
    let common = newest.replace("-amd64", "-common");
    let tree = scratch.join("kernel-headers");
    if !tree.join("include/generated").exists() {
        let _ = fs::remove_dir_all(&tree);
        fs::create_dir_all(&tree)?;
        for part in [&common, &newest] {
            let from = Path::new("/usr/src").join(part);
            run(Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(&tree))?;
        }
    }
    Ok(tree)
}

/// Runs the churn program and parses its `<ns> ns per malloc+free pair` line.
fn measure(cmd: &mut Command) -> Result<f64> {
    let out = cmd.stderr(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    parse_ns(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| cmd.get_program().display().to_string())
}

fn parse_ns(text: &str) -> Result<f64> {
    text.lines()
        .filter_map(|l| l.strip_suffix(")").and_then(|l| l.split_once(" ns per malloc+free pair")))
        .find_map(|(ns, _)| ns.trim().parse().ok())
        .ok_or_else(|| anyhow!("no timing in the output: {text}"))
}

/// `leak watch --all`: the CPU it uses against the wall time it watches, sampling every
/// process of the machine ten times a second (ten times the default rate).
fn bench_watch(leak: &Path) -> Result<()> {
    let seconds = 5.0;
    let before = children_cpu_s();
    let started = std::time::Instant::now();
    let out = Command::new(leak)
        .args(["watch", "--all", "--sample-interval", "100ms", "--interval", "1h"])
        .args(["--duration", &format!("{seconds}s")])
        .stderr(Stdio::inherit())
        .output()
        .context("running leak watch")?;
    if !out.status.success() {
        bail!("leak watch failed: {}", out.status);
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = children_cpu_s() - before;
    let text = String::from_utf8_lossy(&out.stdout);
    let procs: f64 = text
        .lines()
        .find_map(|l| l.split_once(": ")?.1.split_once(" process")?.0.parse().ok())
        .unwrap_or(0.0);
    let samples = seconds / 0.1;
    println!(
        "\nleak watch --all, {procs} processes sampled every 100 ms for {wall:.1} s: CPU {cpu:.3} s \
         = {:.2}% of one CPU; {:.0} us per process sample",
        100.0 * cpu / wall,
        1e6 * cpu / (samples * procs.max(1.0))
    );
    Ok(())
}

/// Sites of `tests/fixtures/sampled.c` at scale 1: (function, bytes leaked).
const SAMPLED_TRUTH: [(&str, u64); 3] =
    [("leak_small", 32768 * 64), ("leak_medium", 2048 * 4000), ("leak_large", 64 * 128 * 1024)];
/// Scale of the sampled fixture: 32 MiB leaked by 64-byte blocks (about 64 samples a run at
/// the default mean, so a run is within about 12%, the mean of 10 runs within 4%).
const SAMPLED_SCALE: u64 = 16;
/// Runs whose estimates are averaged.
const SAMPLED_RUNS: usize = 10;

/// `--sample` at its default mean on a fixture that leaks known bytes at three sites of very
/// different block sizes: each site's estimate per run and averaged over runs, against the
/// truth.
fn bench_sampling_accuracy(env: &Env) -> Result<()> {
    let root = workspace_root();
    let fixture = env.scratch.join("sampled");
    compile_c(&root.join("tests/fixtures/sampled.c"), &fixture)?;
    let json = env.scratch.join("sampled.json");
    let mut errors = vec![Vec::new(); SAMPLED_TRUTH.len()];
    for _ in 0..SAMPLED_RUNS {
        let mut cmd = as_root(&env.leak);
        cmd.args(["run", "--sample", "--json"]).arg(&json).arg("--").arg(&fixture);
        cmd.arg(SAMPLED_SCALE.to_string()).stdout(Stdio::null()).stderr(Stdio::null());
        run(&mut cmd)?;
        let text = fs::read_to_string(&json)?;
        for (i, (function, truth)) in SAMPLED_TRUTH.iter().enumerate() {
            let bytes = site_bytes(&text, function).unwrap_or(0);
            #[expect(clippy::cast_precision_loss, reason = "MiB")]
            errors[i].push(bytes as f64 / (truth * SAMPLED_SCALE) as f64 - 1.0);
        }
    }
    println!(
        "
leak --sample (512 KiB) on tests/fixtures/sampled.c x{SAMPLED_SCALE}, {SAMPLED_RUNS} \
         runs: estimated leaked bytes per site against the truth\n"
    );
    println!("| site | block | leaked | mean error over runs | largest error in one run |");
    println!("|---|---:|---:|---:|---:|");
    for ((function, truth), errs) in SAMPLED_TRUTH.iter().zip(&errors) {
        #[expect(clippy::cast_precision_loss, reason = "a handful of runs")]
        let mean = errs.iter().sum::<f64>() / errs.len() as f64;
        let worst = errs.iter().fold(0.0f64, |m, e| m.max(e.abs()));
        let block = match *function {
            "leak_small" => "64 B",
            "leak_medium" => "4000 B",
            _ => "128 KiB",
        };
        #[expect(clippy::cast_precision_loss, reason = "MiB")]
        let mib = (truth * SAMPLED_SCALE) as f64 / f64::from(1u32 << 20);
        println!(
            "| {function} | {block} | {mib:.1} MiB | {:+.1}% | {:.1}% |",
            mean * 100.0,
            worst * 100.0
        );
    }
    Ok(())
}

/// `outstanding_bytes` of the site whose first frame is `function`, from a JSON report.
fn site_bytes(json: &str, function: &str) -> Option<u64> {
    let report: serde_json::Value = serde_json::from_str(json).ok()?;
    report["sites"].as_array()?.iter().find_map(|site| {
        (site["stack"][0]["function"].as_str() == Some(function))
            .then(|| site["outstanding_bytes"].as_u64())
            .flatten()
    })
}

/// leak's own CPU while its target is idle: attached to a sleeping process for 2 s and for
/// 22 s; the difference is 20 s of steady tracing without the start (loading, calibration).
fn bench_idle(leak: &Path) -> Result<()> {
    const WARMUP: Duration = Duration::from_secs(3);
    const WINDOW: Duration = Duration::from_secs(20);
    let mut target = Command::new("sleep").arg("120").spawn().context("starting sleep")?;
    let pid = target.id().to_string();
    let result = (|| -> Result<(f64, f64)> {
        let mut cmd = as_root(leak);
        cmd.args(["attach", "--pid", &pid, "--duration", "30s"]);
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        // leak's own CPU time from /proc (it is our child when we are root, as the bench
        // runs): read after the start, then 20 s later, so the start's cost (the verifier,
        // the preallocated maps) stays out of the figure.
        std::thread::sleep(WARMUP);
        let start = proc_cpu_s(child.id())?;
        std::thread::sleep(WINDOW);
        let end = proc_cpu_s(child.id())?;
        let _ = child.wait();
        Ok((start, end - start))
    })();
    let _ = target.kill();
    let _ = target.wait();
    let (start, idle) = result?;
    println!(
        "\nleak attach on an idle process (defaults: a sample every 1 s, a report every 5 s): \
         {:.2}% of one CPU over {} s of tracing (the start took {start:.2} s CPU)",
        100.0 * idle / WINDOW.as_secs_f64(),
        WINDOW.as_secs()
    );
    Ok(())
}

/// User plus system CPU seconds of process `pid` so far (`/proc/PID/stat`).
fn proc_cpu_s(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(") ").map(|r| r.1).context("/proc/PID/stat")?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    #[expect(clippy::cast_precision_loss, reason = "clock ticks per second")]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// One million outstanding allocations at 10,000 stacks: the time from the target's last
/// allocation to leak's exit (the final snapshot, aggregation, symbolization, the text, JSON
/// and SVG reports), and leak's peak RSS.
fn bench_scale(env: &Env) -> Result<()> {
    let root = workspace_root();
    let program = env.scratch.join("scale");
    compile_c(&root.join("xtask/programs/scale.c"), &program)?;
    let json = env.scratch.join("scale.json");
    let svg = env.scratch.join("scale.svg");
    let mut cmd = as_root(&env.leak);
    cmd.args(["run", "--max-allocs", "2000000", "--json"]).arg(&json).arg("--svg").arg(&svg);
    cmd.arg("--").arg(&program).args(["10000", "100"]);
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut done_at = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if line == "done" {
            done_at = Some(Instant::now());
        }
    }
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, valid out-pointers.
    let pid = unsafe {
        libc::wait4(i32::try_from(child.id()).unwrap_or(-1), &raw mut status, 0, &raw mut usage)
    };
    let ended = Instant::now();
    if pid < 0 || status != 0 {
        bail!("leak run on the scale program failed (status {status})");
    }
    let done_at = done_at.ok_or_else(|| anyhow!("the scale program never said done"))?;
    println!(
        "\n1,000,000 outstanding allocations at 10,000 stacks: final report (snapshot, \
         aggregation, symbolization, text, JSON and SVG) {:.2} s after the last allocation; \
         leak's peak RSS {} MiB",
        (ended - done_at).as_secs_f64(),
        usage.ru_maxrss / 1024
    );
    Ok(())
}
