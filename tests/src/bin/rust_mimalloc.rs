//! The Rust fixture (`fixtures/rust_leaker.rs`, same protocol and leaks) with
//! `#[global_allocator]` set to the mimalloc crate (`mi_malloc_aligned`,
//! `mi_free`, ...): leak must find that allocator in the executable and
//! attribute the same bytes to the same functions.
#![allow(clippy::pedantic, reason = "the shared fixture's code, written to allocate, not to lint")]

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

include!("../../fixtures/rust_leaker.rs");
