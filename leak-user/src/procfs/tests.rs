//! Parsing `/proc` and cgroup files, on texts as the kernel writes them.

use super::*;

#[test]
fn command_lines_name_what_runs() {
    assert_eq!(
        parse_cmdline(b"/usr/bin/python3\0app.py\0--port\08080\0"),
        "/usr/bin/python3 app.py --port 8080"
    );
    assert_eq!(program_of("/usr/bin/python3 app.py"), "python3");
    assert_eq!(program_of("redis-server 127.0.0.1:6379"), "redis-server");
    assert_eq!(program_of(""), "");
    assert_eq!(short_command("/usr/bin/python3 app.py --port 8080"), "python3 app.py --port 8080");
    assert_eq!(short_command("/usr/sbin/nginx"), "nginx");
    // Debian's redis-server is a link to redis-check-rdb; redis rewrites its command line.
    let redis = run_name(
        "/usr/bin/redis-check-rdb",
        "/usr/bin/redis-server 127.0.0.1:6379",
        "redis-server",
    );
    assert_eq!(redis.as_deref(), Some("redis-server"));
    assert_eq!(
        run_name("/usr/bin/redis-server", "/usr/bin/redis-server *:6379", "redis-server"),
        None
    );
    // A name cut at 15 bytes still agrees.
    let long =
        run_name("/opt/a/real-binary", "/opt/bin/my-long-service-name --x", "my-long-service");
    assert_eq!(long.as_deref(), Some("my-long-service-name"));
    // A command line that names another program (rewritten titles): the file's name.
    assert_eq!(run_name("/usr/bin/foo", "worker: idle", "foo"), None);
    let long = parse_cmdline(&[b'x'; 1000]);
    assert_eq!(long.len(), MAX_CMDLINE + 3);
    assert!(cmdline(std::process::id()).is_some_and(|c| !c.is_empty()));
}

#[test]
fn kernel_threads_by_their_stat_flags() {
    // kthreadd and a user process, as 6.18 shows them.
    let kthreadd = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 8 0 0";
    let user = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 120 0 0 0 1 0 0 0 20 0 1 0 900";
    assert!(parse_stat_kernel_thread(kthreadd));
    assert!(!parse_stat_kernel_thread(user));
    assert!(!parse_stat_kernel_thread("garbage"));
    assert!(is_kernel_thread(2) || !pid_exists(2), "kthreadd is pid 2 where it exists");
    assert!(!is_kernel_thread(std::process::id()));
}

const MAPS: &str = "\
55d0c8a00000-55d0c8a01000 r--p 00000000 fe:01 1311 /work/demo
55d0c8a01000-55d0c8a02000 r-xp 00001000 fe:01 1311 /work/demo
55d0c9d6e000-55d0c9d8f000 rw-p 00000000 00:00 0                          [heap]
7f1c2a400000-7f1c2a428000 r--p 00000000 fe:01 2061                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a428000-7f1c2a5bd000 r-xp 00028000 fe:01 2061                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a600000-7f1c2a601000 r-xp 00000000 fe:01 99 /tmp/my lib.so (deleted)
7ffd1e3f0000-7ffd1e3f2000 r-xp 00000000 00:00 0                          [vdso]
";

#[test]
fn parses_maps_lines() {
    let maps = parse_maps(MAPS);
    assert_eq!(maps.len(), 7);
    let libc_text = &maps[4];
    assert_eq!(libc_text.start, 0x7f1c_2a42_8000);
    assert_eq!(libc_text.offset, 0x28000);
    assert_eq!(libc_text.inode, 2061);
    assert!(libc_text.is_exec() && libc_text.is_file());
    assert_eq!(libc_text.path.as_deref(), Some("/usr/lib/x86_64-linux-gnu/libc.so.6"));
    assert!(!maps[2].is_file(), "[heap] is not a file");
    assert!(!maps[6].is_file(), "[vdso] is not a file");
    assert_eq!(maps[5].file_path(), Some("/tmp/my lib.so"));
    assert!(parse_maps("garbage\n\n1-2 r--p zz 00:00 0").is_empty());
}

#[test]
fn finds_the_mapping_of_an_address() {
    let maps = parse_maps(MAPS);
    let m = find_mapping(&maps, 0x7f1c_2a42_8010).unwrap();
    assert_eq!(m.offset + (0x7f1c_2a42_8010 - m.start), 0x28010);
    assert!(find_mapping(&maps, 0x1000).is_none());
    assert!(find_mapping(&maps, 0x55d0_c8a0_2000).is_none(), "end is exclusive");
    assert_eq!(find_mapping(&maps, 0x55d0_c8a0_1fff).unwrap().offset, 0x1000);
}

#[test]
fn status_and_environ_fields() {
    assert_eq!(parse_status_tgid("Name:\tx\nTgid:\t4321\nPid:\t4322\n"), Some(4321));
    assert_eq!(parse_status_tgid("Name:\tx\n"), None);
    let env = b"PATH=/bin\0LD_PRELOAD=/usr/lib/libjemalloc.so.2:libfoo.so libbar.so\0X=1\0";
    assert_eq!(parse_ld_preload(env), ["/usr/lib/libjemalloc.so.2", "libfoo.so", "libbar.so"]);
    assert!(parse_ld_preload(b"PATH=/bin\0").is_empty());
}

#[test]
fn start_time_field() {
    let stat = "1234 (a) b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000";
    assert_eq!(parse_stat_start_time(stat), Some(987_654));
    assert_eq!(parse_stat_start_time("garbage"), None);
    assert!(start_time(std::process::id()).is_some_and(|t| t > 0));
}

#[test]
fn our_own_process() {
    use std::os::unix::fs::MetadataExt as _;

    let me = std::process::id();
    assert_eq!(tgid(me), Some(me));
    assert!(is_running(me));
    assert!(!is_running(u32::MAX - 1));
    let maps = read_maps(me).unwrap();
    let exe = maps.iter().find(|m| m.is_file()).unwrap();
    let via = map_files_path(me, exe);
    assert_eq!(fs::metadata(&via).unwrap().ino(), exe.inode, "{}", via.display());
}

#[test]
fn smaps_rollup_gives_rss_and_private_bytes() {
    let text = "563f04492000-7fff4c2d5000 ---p 00000000 00:00 0    [rollup]
Rss:                1680 kB
Pss:                 707 kB
Shared_Clean:       1460 kB
Private_Clean:       108 kB
Private_Dirty:       112 kB
Private_Hugetlb:       0 kB
";
    assert_eq!(
        parse_smaps_rollup(text),
        Some(ProcessMemory { rss: 1680 * 1024, private: 220 * 1024 })
    );
    assert_eq!(parse_smaps_rollup("Rss: 1 kB\n"), None);
    // Our own process: readable, and private never exceeds resident.
    let me = memory(std::process::id()).unwrap();
    assert!(me.rss > 0 && me.private <= me.rss, "{me:?}");
}

#[test]
fn statm_gives_resident_and_anonymous_bytes() {
    assert_eq!(
        parse_statm("765 418 390 5 0 123 0\n", 4096),
        Some(ProcessMemory { rss: 418 * 4096, private: 28 * 4096 })
    );
    assert_eq!(parse_statm("765\n", 4096), None);
    let me = statm_memory(std::process::id()).unwrap();
    assert!(me.rss > 0 && me.private <= me.rss, "{me:?}");
    assert!(all_pids().contains(&std::process::id()));
}

#[test]
fn cgroup_paths_and_limits() {
    let hybrid = "9:name=systemd:/\n4:memory:/pods/a\n1:cpu:/\n0::/\n";
    assert_eq!(parse_cgroup_memory_path(hybrid), Some((false, "/pods/a".into())));
    assert_eq!(parse_cgroup_memory_path("0::/kubepods/x\n"), Some((true, "/kubepods/x".into())));
    assert_eq!(parse_cgroup_memory_path("1:cpu:/\n"), None);
    assert_eq!(parse_limit("max\n"), None);
    assert_eq!(parse_limit("9223372036854771712\n"), None);
    assert_eq!(parse_limit("536870912\n"), Some(512 << 20));
}

#[test]
fn the_tightest_limit_of_the_cgroup_and_its_ancestors_wins() {
    let me = std::process::id();
    let text = fs::read_to_string(format!("/proc/{me}/cgroup")).unwrap();
    let (v2, path) = parse_cgroup_memory_path(&text).unwrap();
    let dir = std::env::temp_dir().join(format!("leak-cgroup-test-{me}"));
    let root = if v2 { dir.clone() } else { dir.join("memory") };
    let (max, cur) = if v2 {
        ("memory.max", "memory.current")
    } else {
        ("memory.limit_in_bytes", "memory.usage_in_bytes")
    };
    let own = root.join(path.trim_start_matches('/'));
    fs::create_dir_all(&own).unwrap();
    fs::write(own.join(max), "max\n").unwrap();
    fs::write(own.join(cur), "100\n").unwrap();
    // No limit anywhere.
    assert_eq!(cgroup_memory_limit(me, &dir), None);
    // A limit at the root of the hierarchy applies to everything below it.
    fs::write(root.join(max), "1048576\n").unwrap();
    fs::write(root.join(cur), "4096\n").unwrap();
    assert_eq!(cgroup_memory_limit(me, &dir), Some((1 << 20, 4096)));
    // Less headroom on the process's own cgroup wins (a no-op when that is the root).
    fs::write(own.join(max), "65536\n").unwrap();
    let expect = if own == root { (65536, 4096) } else { (65536, 100) };
    assert_eq!(cgroup_memory_limit(me, &dir), Some(expect));
    if own != root {
        // A larger limit with less headroom (the parent's usage is shared) wins.
        fs::write(root.join(cur), "1040000\n").unwrap();
        assert_eq!(cgroup_memory_limit(me, &dir), Some((1 << 20, 1_040_000)));
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn memory_stat_values_by_key() {
    assert_eq!(memory_stat_value("anon_thp 5\nanon 7\n", "anon"), Some(7));
    assert_eq!(memory_stat_value("file 1\n", "anon"), None);
}

#[test]
fn a_dying_process_is_told_by_its_state_flags_or_pending_sigkill() {
    // Fields 3 (state) to 9 (flags) of /proc/PID/stat; comm with ") " in it.
    let stat = |state: &str, flags: u64| {
        format!("42 (a) b) {state} 1 42 42 0 -1 {flags} 100 0 0 0 5 3 0 0 20 0 1 0 900 0 0")
    };
    let status = |shd: &str, sig: &str| format!("Name:\ta\nSigPnd:\t{sig}\nShdPnd:\t{shd}\n");
    let quiet = status("0000000000000000", "0000000000000000");
    assert!(!parse_dying(&stat("S", 0x0040_0100), &quiet));
    assert!(!parse_dying(&stat("R", 0x0040_0000), &quiet));
    assert!(parse_dying(&stat("Z", 0x0040_0000), &quiet));
    // PF_EXITING: on its way out, its memory being freed.
    assert!(parse_dying(&stat("D", 0x0040_0104), &quiet));
    // SIGKILL (bit 8) pending for the process or a thread; SIGTERM (bit 14) is not dying.
    assert!(parse_dying(&stat("R", 0), &status("0000000000000100", "0000000000000000")));
    assert!(parse_dying(&stat("R", 0), &status("0000000000000000", "0000000000000100")));
    assert!(!parse_dying(&stat("R", 0), &status("0000000000004000", "0000000000000000")));
    // This process is not dying.
    assert!(!is_dying(std::process::id()));
    assert!(is_dying(u32::MAX));
}
