//! Many processes at once: `leak watch` and the node agent (`leak agent`).
//!
//! What it holds: the watch loop that samples every selected process's memory (`watch`), the
//! pure list that judges processes and containers alike (`watchlist`), the escalations of the
//! leaking ones to a trace (`escalate`), the OOM kills of watched processes, told (`kills`)
//! and recorded with their post-mortems (`oom`), and the reports (`report`, and the page of
//! `page`); pods and containers from cgroup paths and their memory (`pods`), the Kubernetes
//! API client and selection rules (`kube`, `kubeapi`); the node agent's part (`agent`): its
//! HTTP server for metrics and reports (`serve`, on `http`: hyper, with the TLS and
//! credentials of `web`).
//!
//! What it may import: everything below it (`trace`, `output`, `analysis`) and the shared
//! files at the top; never `cli`.
pub mod agent;
pub mod escalate;
pub mod http;
pub mod kills;
pub mod kube;
pub mod kubeapi;
pub mod oom;
pub mod page;
pub mod pods;
pub mod report;
pub mod serve;
pub mod watch;
pub mod watchlist;
pub mod web;
