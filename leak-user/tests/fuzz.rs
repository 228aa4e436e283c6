//! Hostile input (#15): every parser the agent runs on what tenants control, fed generated and
//! mutated input. Each property: no panic, and no allocation out of proportion to the input
//! (a counting allocator measures each case's peak on its own thread).
//!
//! Inputs: text from grammars near the real formats and from mutated real samples
//! (`tests/fuzz-corpus/`), ELF files mutated from a real executable (`/usr/bin/true`), and
//! plain random bytes. `cargo test` runs a short round of each (proptest's 256 cases);
//! `cargo xtask fuzz --minutes N` runs each target for N minutes with fresh seeds
//! (`LEAK_FUZZ_CASES` cases a round). A failure is saved under `tests/fuzz.proptest-regressions`
//! and replayed first from then on.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    path::Path,
};

use leak_user::{cli, fleet, procfs, trace};
use proptest::prelude::*;

/// The system allocator, counting this thread's live bytes and their peak.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counters are plain thread-local cells
// (const-initialised: touching them never allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|l| {
            l.set(l.get() + layout.size());
            let _ = PEAK.try_with(|p| p.set(p.get().max(l.get())));
        });
        // SAFETY: the caller's layout, as GlobalAlloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(layout.size())));
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns the peak of the bytes it allocated on top of what was live.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get).saturating_sub(base))
}

/// What a parse of `input_len` bytes may allocate: a small multiple, plus a floor for fixed
/// tables. Anything beyond is the unbounded allocation the agent must never make.
fn budget(input_len: usize) -> usize {
    64 * input_len + (1 << 20)
}

fn config() -> ProptestConfig {
    let cases = std::env::var("LEAK_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256);
    ProptestConfig {
        cases,
        max_shrink_iters: 2000,
        // Kept in the repository: every failure found is replayed first from then on.
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
            "tests/fuzz.proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

fn corpus(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `seed` with `edits` applied: (position, byte) overwrites, a cut, an insertion.
fn mutate(seed: &[u8], edits: &[(usize, u8)], cut: Option<usize>, insert: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for &(at, byte) in edits {
        if !out.is_empty() {
            let i = at % out.len();
            out[i] = byte;
        }
    }
    if let Some(at) = cut {
        out.truncate(at % (seed.len() + 1));
    }
    let at = edits.first().map_or(0, |e| e.0) % (out.len() + 1);
    out.splice(at..at, insert.iter().copied());
    out
}

/// Text: a corpus sample mutated, or anything.
fn text_from(seed: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        (
            prop::collection::vec((any::<usize>(), any::<u8>()), 0..16),
            prop::option::of(any::<usize>()),
            prop::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(move |(edits, cut, insert)| {
                String::from_utf8_lossy(&mutate(corpus(seed).as_bytes(), &edits, cut, &insert))
                    .into_owned()
            }),
        ".{0,512}",
        prop::collection::vec("[ -~\t\n]{0,80}", 0..32).prop_map(|l| l.join("\n")),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn proc_maps(text in prop_oneof![
        text_from("maps"),
        prop::collection::vec(
            "[0-9a-f]{1,17}-[0-9a-f]{1,17} [rwxps-]{4} [0-9a-f]{1,17} [0-9a-f]{2}:[0-9a-f]{2} [0-9]{1,21}( +[ -~]{0,40})?",
            0..64,
        ).prop_map(|l| l.join("\n")),
    ]) {
        let (maps, peak) = peak_of(|| procfs::parse_maps(&text));
        prop_assert!(maps.len() <= text.lines().count());
        prop_assert!(peak <= budget(text.len()), "{peak} bytes for {} of input", text.len());
        for m in &maps {
            let _ = procfs::find_mapping(&maps, m.start);
        }
    }

    #[test]
    fn proc_memory_files(
        rollup in text_from("smaps_rollup"),
        statm in prop_oneof![text_from("statm"), "[0-9 ]{0,120}"],
        page in prop_oneof![Just(4096u64), any::<u64>()],
        status in text_from("status"),
        stat in prop_oneof![text_from("stat"), ".{0,300}"],
        environ in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let ((), peak) = peak_of(|| {
            let _ = procfs::parse_smaps_rollup(&rollup);
            let _ = procfs::parse_statm(&statm, page);
            let _ = procfs::parse_status_tgid(&status);
            let _ = procfs::parse_stat_start_time(&stat);
            let _ = procfs::parse_ld_preload(&environ);
            let _ = procfs::memory_stat_value(&rollup, "anon");
        });
        let len = rollup.len() + statm.len() + status.len() + stat.len() + environ.len();
        prop_assert!(peak <= budget(len));
    }

    #[test]
    fn cgroup_paths(text in prop_oneof![
        text_from("cgroup-systemd"),
        text_from("cgroup-cgroupfs"),
        prop::collection::vec(
            "[0-9]{1,3}:[a-z_,=]{0,30}:(/[a-zA-Z0-9_.:-]{0,70}){0,8}",
            0..8,
        ).prop_map(|l| l.join("\n")),
    ]) {
        let ((), peak) = peak_of(|| {
            let _ = fleet::pods::pod_of(&text);
            let _ = fleet::pods::memory_cgroup_of(&text);
            let _ = procfs::parse_cgroup_memory_path(&text);
        });
        prop_assert!(peak <= budget(text.len()));
    }

    #[test]
    fn kubernetes_pod_lists(body in prop_oneof![
        text_from("podlist.json"),
        "\\{\"kind\":\"PodList\",\"items\":\\[(\\{\"metadata\":\\{\"uid\":\"[a-z0-9-]{0,40}\"(,\"name\":\"[ -~]{0,20}\")?\\}(,\"status\":\\{\"containerStatuses\":\\[\\{\"name\":\"[a-z]{0,8}\",\"containerID\":\"[a-z]{0,12}://[0-9a-f]{0,64}\"\\}\\]\\})?\\},?){0,6}\\]\\}",
    ]) {
        let (_, peak) = peak_of(|| fleet::kube::parse_pod_list(body.as_bytes()));
        prop_assert!(peak <= budget(body.len()));
    }

    #[test]
    fn agent_config_files(
        toml in text_from("agent.toml"),
        web in text_from("web.yml"),
        authorization in prop_oneof![
            "(Basic|Bearer|basic|Digest) [A-Za-z0-9+/=:. -]{0,80}",
            ".{0,120}",
        ],
    ) {
        let ((), peak) = peak_of(|| {
            let _ = cli::config_flags(&toml);
            let _ = fleet::web::WebConfigFile::parse(&web);
            let _ = fleet::web::parse_authorization(&authorization);
        });
        prop_assert!(peak <= budget(toml.len() + web.len() + authorization.len()));
    }

    #[test]
    fn elf_and_unwind_tables(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..24),
        cut in prop::option::of(any::<usize>()),
        insert in prop::collection::vec(any::<u8>(), 0..32),
        random in prop::collection::vec(any::<u8>(), 0..256),
        use_random in any::<bool>(),
    ) {
        let seed = std::fs::read("/usr/bin/true").expect("/usr/bin/true");
        let data = if use_random { random } else { mutate(&seed, &edits, cut, &insert) };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("elf");
        std::fs::write(&path, &data).unwrap();
        let ((), peak) = peak_of(|| {
            if let Ok(table) = trace::unwind::build(&data) {
                let _ = table.find(0x1000);
            }
            let segments = trace::unwind::load_segments(&data);
            let _ = trace::unwind::mapping_vaddr(&segments, 0x1000, true);
            if let Ok(image) = trace::elf::ElfImage::open(&path) {
                let _ = image.function("malloc");
                let _ = image.debug_layout();
                let _ = image.dynamic_deps();
                let _ = image.entry_file_offset();
                let _ = image.has_symbols();
            }
        });
        prop_assert!(peak <= budget(data.len()), "{peak} bytes for {} of ELF", data.len());
    }
}
