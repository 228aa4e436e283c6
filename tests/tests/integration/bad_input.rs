//! Bad input ends with one clear line, exit code 2, no panic.
use leak_tests::{Fixture, fixture, leak_bin, require_root, run_leak};

#[test]
fn no_such_pid() {
    require_root();
    // Above any pid_max: never a live process.
    run_leak(&["attach", "--pid", "4194305"]).assert_bad_input("no such process: 4194305");
}

/// A growth profile refuses what only the exact trace can do, saying what to use instead.
#[test]
fn growth_profile_options_that_mean_nothing() {
    require_root();
    let target = Fixture::start("leaker");
    let pid = target.pid().to_string();
    run_leak(&["attach", "--pid", &pid, "--mode", "growth", "--sample"])
        .assert_bad_input("drop --sample, or use --mode exact");
    let leaker = fixture("leaker");
    run_leak(&["run", "--mode", "growth", "--fail-on-leak=exit", "--", leaker.to_str().unwrap()])
        .assert_bad_input("--fail-on-leak=exit judges the blocks left allocated at exit");
}

#[test]
fn not_root() {
    require_root();
    let target = Fixture::start("leaker");
    let pid = target.pid().to_string();
    // Drop to nobody with no capabilities.
    let finished = as_user(&NOBODY, &["attach", "--pid", &pid]);
    finished.assert_bad_input("needs root");
}

#[test]
fn target_without_malloc() {
    require_root();
    let target = Fixture::start("nomalloc");
    let pid = target.pid().to_string();
    run_leak(&["attach", "--pid", &pid]).assert_bad_input("no malloc symbol");
    // --lib naming an object without malloc.
    let lib = fixture("nomalloc");
    run_leak(&["attach", "--pid", &pid, "--lib", lib.to_str().unwrap()])
        .assert_bad_input("does not define malloc");
}

#[test]
fn stripped_static_executable() {
    require_root();
    let target = Fixture::start("leaker-stripped");
    let pid = target.pid().to_string();
    let path = fixture("leaker-stripped");
    let done = run_leak(&["attach", "--pid", &pid]);
    done.assert_bad_input(&format!("{} is stripped (no symbol table)", path.display()));
}

#[test]
fn kernel_without_uprobes_or_btf() {
    require_root();
    let target = Fixture::start("leaker");
    let pid = target.pid().to_string();
    let sys = tempfile::tempdir().unwrap();
    let with_sys = |args: &[&str]| {
        let out = std::process::Command::new(leak_bin())
            .args(args)
            .env(leak_user::trace::preflight::SYSFS_ROOT_ENV, sys.path())
            .output()
            .unwrap();
        leak_tests::Finished {
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).lines().map(str::to_owned).collect(),
            stdout: Vec::new(),
        }
    };
    with_sys(&["attach", "--pid", &pid]).assert_bad_input("no uprobes");
    let uprobe = sys.path().join("bus/event_source/devices/uprobe");
    std::fs::create_dir_all(&uprobe).unwrap();
    std::fs::write(uprobe.join("type"), "8\n").unwrap();
    with_sys(&["attach", "--pid", &pid]).assert_bad_input("no BTF");
}

#[test]
fn unwritable_output_path() {
    require_root();
    let target = Fixture::start("leaker");
    let pid = target.pid().to_string();
    run_leak(&["attach", "--pid", &pid, "--json", "/nonexistent-dir/report.json"])
        .assert_bad_input("cannot write /nonexistent-dir/report.json");
    let dir = tempfile::tempdir().unwrap();
    run_leak(&["attach", "--pid", &pid, "--svg", dir.path().to_str().unwrap()])
        .assert_bad_input("cannot write");
}

#[test]
fn agent_config_file_missing_or_wrong() {
    run_leak(&["agent", "--config", "/nonexistent/agent.toml"])
        .assert_bad_input("cannot read /nonexistent/agent.toml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "listen = { host = \"x\" }\n").unwrap();
    run_leak(&["agent", "--config", file.to_str().unwrap()])
        .assert_bad_input("listen: not a value an option takes");
}

/// The agent's web config: unreadable, not a bcrypt hash, a setting leak does not implement,
/// a certificate that does not load: one line each, before anything is served.
#[test]
fn bad_web_configs() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent = |web: &str| {
        let path = dir.path().join("web.yml");
        std::fs::write(&path, web).unwrap();
        let p = path.to_str().unwrap().to_owned();
        run_leak(&["agent", "--listen", "127.0.0.1:0", "--web-config", &p])
    };
    run_leak(&["agent", "--listen", "127.0.0.1:0", "--web-config", "/nonexistent/web.yml"])
        .assert_bad_input("cannot read --web-config /nonexistent/web.yml");
    agent("basic_auth_users:\n  alice: secret\n").assert_bad_input("not a bcrypt hash");
    agent("http_server_config:\n  http2: false\n").assert_bad_input("http_server_config");
    agent("tls_server_config:\n  cert_file: none.crt\n  key_file: none.key\n")
        .assert_bad_input("cert_file");
    run_leak(&["agent", "--listen", "127.0.0.1:0", "--bearer-token-file", "/dev/null"])
        .assert_bad_input("is empty");
}

/// Runs `leak args` as `setpriv setpriv_args`, and how it finished.
fn as_user(setpriv_args: &[&str], args: &[&str]) -> leak_tests::Finished {
    let out = std::process::Command::new("setpriv")
        .args(setpriv_args)
        .arg(leak_bin())
        .args(args)
        .output()
        .expect("setpriv (util-linux)");
    let lines = |b: &[u8]| String::from_utf8_lossy(b).lines().map(str::to_owned).collect();
    leak_tests::Finished {
        status: out.status,
        stderr: lines(&out.stderr),
        stdout: lines(&out.stdout),
    }
}

/// Nobody, no capabilities.
const NOBODY: [&str; 5] =
    ["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"];

/// Nobody with `CAP_BPF` and `CAP_PERFMON` (and `CAP_SYS_PTRACE`, to read the target), which load
/// programs: whether the kernel opens uprobes for them is the kernel's.
const BPF_PERFMON: [&str; 6] = [
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all,+bpf,+perfmon,+sys_ptrace",
    "--ambient-caps=-all,+bpf,+perfmon,+sys_ptrace",
    "--bounding-set=-all,+bpf,+perfmon,+sys_ptrace",
];

/// Without the privileges to probe the kernel's features, `check` says they are unknown (not
/// missing), and no degradation; it fails saying what to do.
#[test]
fn check_without_privileges_says_unknown_not_no() {
    require_root();
    let done = as_user(&NOBODY, &["check"]);
    assert_eq!(done.status.code(), Some(1), "{:#?}", done.stdout);
    let out = done.stdout.join("\n");
    for feature in
        ["bpf_loop", "bpf_get_attach_cookie", "bpf_for_each_map_elem", "compare-and-swap"]
    {
        let line = done.stdout.iter().find(|l| l.contains(feature)).expect(feature);
        assert!(
            line.ends_with("unknown (probing it needs the privileges to load programs)"),
            "{line}"
        );
    }
    assert!(!out.contains("degraded") && !out.contains("(kernel 5."), "{out}");
    assert!(out.contains("BPF object                  unknown"), "{out}");
    assert!(
        out.ends_with("FAIL: this node cannot trace as this user: run leak check as root"),
        "{out}"
    );
}

/// With `CAP_BPF` and `CAP_PERFMON` only, `check` opens a real uprobe, and says what `attach`
/// then does, in the same words: on a kernel that refuses, both fail naming `CAP_SYS_ADMIN`;
/// on one that accepts, both succeed.
#[test]
fn check_with_bpf_and_perfmon_agrees_with_attach() {
    require_root();
    let check = as_user(&BPF_PERFMON, &["check"]);
    let out = check.stdout.join("\n");
    assert!(
        out.contains("privileges                  CAP_BPF and CAP_PERFMON, not CAP_SYS_ADMIN"),
        "{out}"
    );
    let uprobe = check.stdout.iter().find(|l| l.starts_with("a uprobe ")).expect("uprobe line");
    let mut target = Fixture::start("leaker");
    let attach =
        as_user(&BPF_PERFMON, &["attach", "--pid", &target.pid().to_string(), "--duration", "1s"]);
    if uprobe.contains(" NO: ") {
        assert_eq!(check.status.code(), Some(1), "{out}");
        assert!(out.ends_with("FAIL: this node cannot trace"), "{out}");
        attach.assert_bad_input(
            "this kernel opens uprobes only with CAP_SYS_ADMIN: add it, or run leak as root",
        );
        assert!(uprobe.contains("this kernel opens uprobes only with CAP_SYS_ADMIN"), "{uprobe}");
    } else {
        assert_eq!(check.status.code(), Some(0), "{out}");
        assert_eq!(attach.status.code(), Some(0), "check said yes: {:#?}", attach.stderr);
    }
    target.go_and_wait_done();
}

/// Root is never told to run as root: a process whose memory map the kernel refuses even to
/// root (here the sandbox's pid 1, of a parent user namespace) is said to be protected.
/// (Which processes are protected depends on the host; `maps_hint`'s unit test covers every
/// case, this one the case as a user meets it where it exists.)
#[test]
fn root_is_not_told_to_run_as_root() {
    require_root();
    let protected = (1..=64u32).find(|pid| {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
    });
    let Some(pid) = protected else {
        // A host whose every process root may read: the unit test covers the words.
        eprintln!("no process here refuses its memory map to root");
        return;
    };
    let done = run_leak(&["attach", "--pid", &pid.to_string()]);
    done.assert_bad_input("although leak runs as root");
    assert!(!done.stderr[0].contains("run leak as root"), "{}", done.stderr[0]);
}

/// A kernel thread has no user memory: `attach` and `watch` say so (watch used to watch
/// nothing and exit 0).
#[test]
fn a_kernel_thread_is_named_as_one() {
    require_root();
    // kthreadd: pid 2 on every Linux that has one.
    let comm = std::fs::read_to_string("/proc/2/comm").unwrap_or_default();
    assert_eq!(comm.trim(), "kthreadd", "pid 2 is kthreadd here");
    run_leak(&["attach", "--pid", "2"]).assert_bad_input(
        "process 2 (kthreadd) is a kernel thread: it has no user memory or allocator to trace",
    );
    run_leak(&["watch", "--pid", "2", "--duration", "1s"]).assert_bad_input(
        "process 2 (kthreadd) is a kernel thread: it has no memory of its own to watch",
    );
}

/// A Go program's heap is not malloc's: the error says what leak can do for it instead of
/// suggesting --lib.
#[test]
fn a_go_program_is_told_what_leak_can_do_for_it() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("main.go");
    std::fs::write(
        &src,
        "package main\nimport (\"fmt\"; \"time\")\nfunc main() { fmt.Println(\"ready\"); time.Sleep(time.Hour) }\n",
    )
    .unwrap();
    let bin = dir.path().join("goprog");
    let built = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(&src)
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", dir.path().join("cache"))
        .env("GOPATH", dir.path().join("gopath"))
        .output()
        .expect("go (cargo xtask setup installs it)");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let target = Fixture::start_command(std::process::Command::new(&bin));
    let pid = target.pid().to_string();
    let done = run_leak(&["attach", "--pid", &pid]);
    done.assert_bad_input("is a Go program: its heap is the Go runtime's, not malloc's");
    assert!(done.stderr[0].contains(&format!("leak watch --pid {pid}")), "{}", done.stderr[0]);
    assert!(!done.stderr[0].contains("--lib"), "{}", done.stderr[0]);
}
