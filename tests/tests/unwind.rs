//! Unwind tables (#7) against a real stack: a fixture built without frame pointers is stopped
//! with ptrace inside five nested functions, and the reference unwinder walks its stack from
//! the registers with the tables of its mappings, all the way to `_start`.
use leak_tests::{Fixture, require_root};
use leak_user::{
    symbolize::{ProcessSymbolizer, Symbolizer as _},
    unwind::{ProcessTables, Regs, StackEnd, unwind},
};

/// Stops `pid` (ptrace interrupt), returns its registers, and detaches.
fn registers(pid: u32) -> Regs {
    let pid = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: plain ptrace calls on our own child; `regs` is a valid out-pointer.
    unsafe {
        assert_eq!(libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0), 0, "seize");
        assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0), 0, "interrupt");
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &raw mut status, libc::__WALL), pid);
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        assert_eq!(libc::ptrace(libc::PTRACE_GETREGS, pid, 0, &raw mut regs), 0, "getregs");
        assert_eq!(libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0), 0, "detach");
        Regs { ip: regs.rip, sp: regs.rsp, bp: regs.rbp }
    }
}

#[test]
fn tables_walk_a_stack_without_frame_pointers_to_its_start() {
    require_root();
    let mut target = Fixture::start("nofp");
    // It now waits in level5's fgets.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let regs = registers(target.pid());
    let tables = ProcessTables::of(target.pid());
    let mem = std::fs::File::open(format!("/proc/{}/mem", target.pid())).unwrap();
    let read = |addr: u64| {
        let mut b = [0u8; 8];
        std::os::unix::fs::FileExt::read_exact_at(&mem, &mut b, addr).ok()?;
        Some(u64::from_le_bytes(b))
    };
    let (frames, end) = unwind(|a| tables.lookup(a), read, regs, 64);
    let names: Vec<String> = ProcessSymbolizer::new(target.pid())
        .symbolize(&frames)
        .iter()
        .map(|f| f.last().and_then(|f| f.function.as_deref()).unwrap_or("?").to_owned())
        .collect();
    let chain = ["level5", "level4", "level3", "level2", "level1", "main"];
    let at = names.iter().position(|n| n == "level5").unwrap_or_else(|| panic!("{names:?}"));
    assert_eq!(names[at..at + chain.len()], chain, "{names:?}");
    assert_eq!(end, StackEnd::Complete, "{names:?}");
    assert_eq!(names.last().map(String::as_str), Some("_start"), "{names:?}");
    target.go_and_wait_done();
    target.send("exit");
    assert!(target.wait().success());
}
