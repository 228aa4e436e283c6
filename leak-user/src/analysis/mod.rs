//! The analysis: pure functions from snapshots to verdicts and the report model.
//!
//! What it holds: the data model of a snapshot (`model`), sums by site (`aggregate`), the
//! growth history of sites and processes (`history`), the trend fit and verdicts (`trend`),
//! the growth summary (`growth`), the CI gate's rules (`gate`), the allocation plumbing
//! folded off stacks (`plumbing`), sampling's estimates (`sampling`), shell-style patterns
//! (`pattern`), the report model (`report`, the JSON contract), the report built from all of
//! these (`build`) and numbers for people (`units`).
//!
//! What it may import: nothing of this crate outside `analysis`, and no aya, tokio,
//! blazesym or clock: every input, time included, is passed in as data, so it is all
//! unit-tested without root or a kernel (the `layers` test checks it).
pub mod aggregate;
pub mod build;
pub mod gate;
pub mod growth;
pub mod history;
pub mod model;
pub mod pattern;
pub mod plumbing;
pub mod report;
pub mod sampling;
pub mod trend;
pub mod units;
