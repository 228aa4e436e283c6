//! Bad input ends with one clear line, exit code 2, no panic.
use leak_tests::{Fixture, fixture, leak_bin, require_root, run_leak};

#[test]
fn no_such_pid() {
    require_root();
    // Above any pid_max: never a live process.
    run_leak(&["attach", "--pid", "4194305"]).assert_bad_input("no such process: 4194305");
}

#[test]
fn not_root() {
    require_root();
    let target = Fixture::start("leaker");
    let pid = target.pid().to_string();
    // Drop to nobody with no capabilities.
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(leak_bin())
        .args(["attach", "--pid", &pid])
        .output()
        .expect("setpriv (util-linux)");
    let finished = leak_tests::Finished {
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).lines().map(str::to_owned).collect(),
        stdout: Vec::new(),
    };
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
