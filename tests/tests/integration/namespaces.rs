//! A process in its own mount namespace and root, as in a container: its files live on a
//! mount only that namespace sees. The paths `/proc` shows us lead nowhere on the host; the
//! files are reached through `/proc/PID/map_files`, and kept open for after the process exits.
use std::process::Command;

use leak_tests::{Fixture, Leak, assert_site, fixture, require_root};

#[test]
fn process_in_its_own_mount_namespace_exits_and_is_still_symbolized() {
    require_root();
    // Inside a private mount namespace: a tmpfs root holding the fixture and copies of the C
    // library and the dynamic linker, then chroot into it. The shell execs all the way, so
    // the fixture keeps the spawned pid.
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    let libc = "/lib/x86_64-linux-gnu/libc.so.6";
    let ld = "/lib64/ld-linux-x86-64.so.2";
    let script = format!(
        "mount -t tmpfs none {r} && mkdir -p {r}/lib/x86_64-linux-gnu {r}/lib64 && \
         cp {leaker} {r}/leaker && cp {libc} {r}{libc} && cp {ld} {r}{ld} && \
         exec chroot {r} /leaker",
        leaker = fixture("leaker").display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let mut fixture = Fixture::start_command(cmd);
    // From the host, the root directory is empty: the mount is not ours.
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);

    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let leak = Leak::attach(fixture.pid(), &["--interval", "1h", "--json", json.to_str().unwrap()]);
    // Exit before any interval report: everything is symbolized after the process and its
    // mount namespace are gone.
    let report = fixture.exit_under(leak, &json);
    // Probes in the namespace's own copy of libc, under the path /proc showed us.
    assert_eq!(report.allocator.path, format!("{r}{libc}"));
    let s = assert_site(&report, "leak_malloc", (40_960, 10));
    assert_eq!(s.stack[0].module.as_deref(), Some("leaker"));
    assert!(
        s.stack[0].file.as_deref().is_some_and(|f| f.ends_with("leaker.c")),
        "{:?}",
        s.stack[0]
    );
    assert_eq!(s.stack.get(1).and_then(|f| f.function.as_deref()), Some("main"));
    assert_site(&report, "leak_calloc", (1_500, 5));
    leak_tests::assert_no_drops(&report);
}
