//! leak's BPF programs for kernels before 5.17 (5.10 is the oldest tested): the modules of
//! `main.rs` built with [`COMPAT`] set. What they do without the newer kernels' features:
//! - no compare-and-swap (5.12): outstanding allocations and site totals live in the hash
//!   maps only (`ALLOCS`, `SITES`), whose updates the kernel makes atomic;
//! - no attach cookies (5.15): an entry probe finds its hook by its address in `HOOK_IPS`,
//!   a return probe its call by the stack pointer the entry saw;
//! - no map iteration (5.13): an unmap that starts inside a recorded mapping is searched by
//!   page-aligned starts, and what the search could not check is counted
//!   (`DropReason::UnmapUnchecked`);
//! - no `bpf_loop` (5.17): the unwind-table walk is a bounded loop in a global function.
//!
//! Design constraints:
//! - Every hook is built from three verbs in [`verbs`]: `alloc_enter`, `alloc_exit`,
//!   `free_enter`; realloc is a free plus an allocation.
//! - Nothing is lost silently: every failure increments a per-CPU counter in `DROPS`.
//! - Never panic: a panic path would be an infinite loop, which the verifier rejects.
#![no_std]
#![no_main]
// `atomic_xadd` for counters (maps.rs): the bpf target exposes no atomic read-modify-write.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core_intrinsics, see maps.rs")]
#![expect(
    clippy::inline_always,
    reason = "BPF: helpers inlined into each program (a call costs a frame on the 512-byte chain)"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's #[uprobe]/#[uretprobe] entry points take their context by value"
)]

// The same modules as main.rs (the full object's), from the same files.
#[path = "mappings.rs"]
mod mappings;
#[path = "maps.rs"]
mod maps;
#[path = "probes/mod.rs"]
mod probes;
#[path = "regs.rs"]
mod regs;
#[path = "runtime.rs"]
mod runtime;
#[path = "sites.rs"]
mod sites;
#[path = "stack.rs"]
mod stack;
#[path = "stash.rs"]
mod stash;
#[path = "table.rs"]
mod table;
#[path = "unwind.rs"]
mod unwind;
#[path = "verbs.rs"]
mod verbs;

/// See the crate's documentation and `main.rs`.
const COMPAT: bool = true;
