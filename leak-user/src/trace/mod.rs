//! The live trace of one process: what runs while probes are attached.
//!
//! What it holds: the checks before loading (`preflight`, `caps`: what the privileges allow,
//! and `check`, the `leak check` command), the BPF loader and the kernel's features (`loader`, the only aya user with
//! `source`), the allocator's hooks and where their probes sit (`target`, `hooks`,
//! `placement`, `elf`), unwind tables (`unwind`), reading the maps (`source`), which of a
//! growth profile's pages are resident and the process's own (`pagemap`),
//! symbolization (`symbolize`, the only blazesym user, and `debuginfo`, where symbols are),
//! one process's session that samples and reports (`session`), the loops that drive
//! sessions: `leak attach`'s (`attach`) and `leak run`'s process control (`controller`,
//! `runner`, `tracee`: ptrace); what stops them: `--max-overhead` (`overhead`) and the OOM
//! killer (`oom`); and `--fail-on-leak` over a run (`gate`).
//!
//! What it may import: `analysis`, `output` and the shared files at the top (`config`,
//! `error`, `procfs`, `runtime`); never `fleet` or `cli`.
pub mod attach;
pub mod caps;
pub mod check;
pub mod controller;
pub mod debuginfo;
pub mod elf;
pub mod gate;
pub mod hooks;
pub mod loader;
pub mod oom;
pub mod overhead;
pub mod pagemap;
pub mod placement;
pub mod preflight;
pub mod runner;
pub mod session;
pub mod source;
pub mod symbolize;
pub mod target;
pub mod tracee;
pub mod unwind;
