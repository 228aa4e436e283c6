//! The root integration tests, one binary with a module per area (as aya's
//! `integration-test`): the real `leak` binary and BPF programs tracing fixture processes on
//! this machine's kernel, as root. The kernel suite that the QEMU guests run on each kernel of
//! the matrix is `tests/kernel.rs`, a binary of its own. Run one area with
//! `cargo test -p leak-tests --test integration -- AREA::`.
mod agent;
mod alerts;
mod attach;
mod bad_input;
mod deploy;
mod faults;
mod gate;
mod growth;
mod growth_profile;
mod html;
mod image;
mod languages;
mod mappings;
mod matrix;
mod namespaces;
mod oom;
mod plain;
mod pprof;
mod processes;
mod run;
mod sampling;
mod unwind;
mod verdict;
mod watch;
mod wrappers;
