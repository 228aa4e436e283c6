//! The Rust fixture (`fixtures/rust_leaker.rs`, same protocol and leaks) with
//! `#[global_allocator]` set to tikv-jemallocator (jemalloc built with
//! the `_rjem_` prefix): leak must find that allocator in the executable and
//! attribute the same bytes to the same functions.
#![allow(clippy::pedantic, reason = "the shared fixture's code, written to allocate, not to lint")]

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

include!("../../fixtures/rust_leaker.rs");
