//! The node agent's part of a watch (`leak agent`): the HTTP server for metrics, reports and
//! the page, serving the state the watch publishes after each sample; the pods' names from
//! the Kubernetes API; the start-up check of what the node allows. The watch itself is
//! `watch`'s, the same for `leak watch` and the agent.
use std::{path::Path, sync::Arc};

use tokio::task::JoinHandle;

use crate::{
    config::AgentConfig,
    error::Error,
    fleet::{kubeapi::PodNames, serve::Published, web::WebConfig},
};

/// A running agent: what it serves, and how its reports are reached.
pub struct Agent {
    /// The state published after each sample, as the API serves it.
    pub published: Arc<Published>,
    /// This node's pods, named from the API (empty outside a cluster).
    pub names: PodNames,
    /// The address its reports are at, as a pod's readers reach them (`https://IP:PORT`).
    pub base: String,
    server: JoinHandle<std::io::Result<()>>,
}

impl Agent {
    /// Before the watch's checks: the directory of its reports, made on first start.
    ///
    /// # Errors
    /// It cannot be made.
    pub fn prepare(out_dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(out_dir)
            .map_err(|e| Error::BadInput(format!("cannot create {}: {e}", out_dir.display())))
    }

    /// Starts fetching the pods' names, then serving (the node's start-up check first when
    /// it `escalates`).
    ///
    /// # Errors
    /// Bad TLS or credential files, an address it cannot listen on, or a node that cannot
    /// trace.
    pub async fn start(cfg: &AgentConfig, escalates: bool) -> Result<Self, Error> {
        let published = Arc::new(Published::default());
        // First: the first pod list is fetched while the start-up check runs, so the first
        // sample knows the pods' names (the selection by namespace, pod and container needs
        // them).
        let names = PodNames::start();
        let (server, base) = serve(cfg, &published, escalates).await?;
        Ok(Self { published, names, base, server })
    }

    /// Stops serving.
    pub fn stop(self) {
        self.server.abort();
    }
}

/// Serves `published` over HTTP on `addr` in the background, with the TLS and credentials
/// `cfg` configures; and the address its reports are at as a pod's readers reach them
/// (`https://IP:PORT`: its pod's IP from the downward API, else the address it listens on).
async fn serve(
    cfg: &AgentConfig,
    published: &Arc<Published>,
    escalates: bool,
) -> Result<(JoinHandle<std::io::Result<()>>, String), Error> {
    let addr = cfg.listen;
    let web = WebConfig::load(cfg.web_config.as_deref(), cfg.bearer_token_file.as_deref())
        .map_err(Error::BadInput)?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::BadInput(format!("cannot listen on {addr}: {e}: choose another --listen"))
    })?;
    let bound = listener.local_addr().map_err(Error::io("reading the bound address"))?;
    // Once the input is known good (a bad one gets its one line alone).
    if escalates {
        start_check()?;
    } else {
        eprintln!(
            "leak: --no-trace: processes are judged from their memory samples alone; no probes"
        );
    }
    let scheme = if web.tls.is_some() { "https" } else { "http" };
    let auth = if web.access.is_open() { "" } else { " (credentials required)" };
    eprintln!("leak: serving {scheme}://{bound}/metrics and /api/v1/reports{auth}");
    let handler = crate::fleet::serve::handler(Arc::clone(published));
    let host = std::env::var("POD_IP")
        .ok()
        .filter(|ip| !ip.is_empty())
        .unwrap_or_else(|| bound.ip().to_string());
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let base = format!("{scheme}://{host}:{}", bound.port());
    Ok((tokio::spawn(crate::fleet::http::serve(listener, handler, web)), base))
}

/// The agent's start-up check, printed to its log (the container's): its capabilities (one
/// line naming any that it lacks), then `leak check`'s findings; fails if it cannot trace.
fn start_check() -> Result<(), Error> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let (features, _) = crate::trace::loader::kernel();
    let degraded =
        crate::trace::preflight::agent_capabilities(&status, charges_memlock(&features.release))
            .map_err(Error::BadInput)?;
    for line in degraded {
        eprintln!("leak: warning: {line}");
    }
    let outcome = crate::trace::check::check(false);
    eprint!("{}", outcome.text);
    if !outcome.ok {
        return Err(Error::BadInput(
            "this node cannot trace (see `leak check` above): the agent stops".into(),
        ));
    }
    Ok(())
}

/// Whether kernel `release` charges BPF maps to `RLIMIT_MEMLOCK` (before 5.11, when the
/// memory cgroup took over) and the limit is not lifted yet.
fn charges_memlock(release: &str) -> bool {
    let mut parts = release.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we pass.
    let unlimited = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut lim) } == 0
        && lim.rlim_cur == libc::RLIM_INFINITY;
    version < (5, 11) && !unlimited
}
