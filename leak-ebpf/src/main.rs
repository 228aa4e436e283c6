//! leak's BPF programs: uprobes and uretprobes on the allocator that keep, in BPF maps, every
//! outstanding allocation with the user stack that made it.
//!
//! Design constraints:
//! - Every hook is built from three verbs in [`verbs`]: `alloc_enter`, `alloc_exit`,
//!   `free_enter`; realloc is a free plus an allocation. A call's arguments wait in the
//!   thread's stash ([`stash`]) for its return, which records the block with its stack
//!   ([`stack`]); the mmap family's records are [`mappings`]'.
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

mod mappings;
mod maps;
mod probes;
mod regs;
mod runtime;
// Uprobe sessions (6.13+): in the full object only.
mod sessions;
mod sites;
mod stack;
mod stash;
mod table;
mod unwind;
mod verbs;

/// This build is the full object (kernels 5.17+; `compat.rs` builds the other from the same
/// modules). A constant, so each build keeps only its own branches: the compatible object
/// holds no instruction or helper a 5.10 verifier rejects, even in dead code.
const COMPAT: bool = false;
