//! Many processes at once: `leak watch` and the node agent (`leak agent`).
//!
//! What it holds: the watcher that samples every selected process's memory and judges it
//! (`watch`), escalates the leaking ones to a trace (`escalate`), records the OOM kills of watched
//! processes with their post-mortems (`oom`), and reports (`report`,
//! and the page of `page`); pods and containers from cgroup paths and their
//! memory (`pods`), the Kubernetes API client and selection rules (`kube`, `kubeapi`), and
//! the agent's HTTP server for metrics and reports (`serve`, on `http`: hyper, with the
//! TLS and credentials of `web`).
//!
//! What it may import: everything below it (`trace`, `output`, `analysis`) and the shared
//! files at the top; never `cli`.
pub mod escalate;
pub mod http;
pub mod kube;
pub mod kubeapi;
pub mod oom;
pub mod page;
pub mod pods;
pub mod report;
pub mod serve;
pub mod watch;
pub mod web;
