//! The OOM killer's victims among a watch's processes: told by the kernel's event where it
//! can be read (`trace::oom`), else by their containers' counters (the watch list's);
//! recorded in the ledger (`fleet::oom`) with the profile that was on, and, by the agent in
//! a cluster, told to the pod as a Kubernetes Event, posted from a thread of its own.
use crate::{
    analysis::trend::Params,
    fleet::{
        escalate::Escalator,
        kube::oom_event_body,
        kubeapi::{ApiConfig, post_event},
        oom::OomKills,
        watchlist::{Observation, WatchList},
    },
    procfs, runtime,
    trace::oom::Victims,
};

/// A kill's id, and whether its Event was posted.
type Posted = (String, bool);

/// The OOM killer's victims among the watched processes: told by the kernel's event where
/// it can be read, else by their containers' counters; recorded with their profiles, and
/// (the agent, in a cluster) told to the pod as a Kubernetes Event.
pub struct Kills {
    /// The kernel's events, where they can be read.
    pub victims: Option<Victims>,
    /// Every kill recorded.
    pub ledger: OomKills,
    /// Where Events go (the agent in a cluster only).
    events: Option<EventSink>,
    posted: (std::sync::mpsc::Sender<Posted>, std::sync::mpsc::Receiver<Posted>),
}

/// Where the Events about kills go, and what they say of their origin.
struct EventSink {
    /// The cluster's API.
    api: ApiConfig,
    /// This node's name (the Events' source).
    node: String,
    /// The address the agent's reports are served at (the Events link the post-mortem).
    base: String,
}

impl Kills {
    /// Reads the victims if it can. The agent (serving its reports at `base`) posts Events
    /// about the kills when it runs in a cluster.
    #[must_use]
    pub fn start(base: Option<&str>) -> Self {
        let events = base.and_then(|base| {
            let api = ApiConfig::in_cluster()?;
            let node = api.node.clone().unwrap_or_default();
            Some(EventSink { api, node, base: base.to_owned() })
        });
        let victims = match Victims::open() {
            Ok(v) => Some(v),
            Err(why) => {
                log::info!("OOM kills are told by the containers' counters ({why})");
                None
            }
        };
        Self { victims, ledger: OomKills::default(), events, posted: std::sync::mpsc::channel() }
    }

    /// Before `seen` is recorded in `list`: the victims read so far marked, all of them if a
    /// watched process vanished (the kernel's event comes before the death it causes).
    pub fn mark(&self, list: &mut WatchList, seen: &[Observation], start_unix: f64) {
        let Some(v) = &self.victims else { return };
        if list.vanished(seen) && !v.sync() {
            log::debug!("the OOM killer's events did not come back in time");
        }
        for k in v.take() {
            if list.mark_oom_killed(k.pid, k.at_unix_s - start_unix, "tracepoint") {
                log::debug!("pid {} was OOM-killed", k.pid);
            }
        }
    }

    /// After a sample: the victims gone since, recorded; the post-mortems written since,
    /// read; the Events due, posted.
    pub fn record(
        &mut self,
        list: &mut WatchList,
        params: &Params,
        escalator: Option<&Escalator>,
        start_unix: f64,
    ) {
        for mut k in list.take_killed(params) {
            // The last sample may be seconds before the kill: its cgroup says whether the kill
            // was for its limit (while it is there: the runtime removes it soon after).
            if let Some(l) = &mut k.limit
                && let Some(dir) = &l.dir
                && procfs::cgroup_limit_reached(&dir.path, l.limit, dir.limit_ooms)
            {
                l.working_set = l.limit;
            }
            let p = &k.process;
            let profile = escalator.and_then(|e| e.latest_of(p.pid, p.start_time_ticks)).cloned();
            let (pid, comm, at) = (p.pid, p.comm.clone(), start_unix + k.at);
            self.ledger.record(k, at, profile);
            if let Some(r) = self.ledger.reports().last() {
                eprintln!("leak: pid {pid} ({comm}): {}", r.triage);
            }
        }
        if let Some(e) = escalator {
            self.ledger.refresh(e.done());
        }
        while let Ok((id, ok)) = self.posted.1.try_recv() {
            self.ledger.posted(&id, ok, runtime::now_unix());
        }
        let Some(EventSink { api, node, base }) = &self.events else { return };
        let url = |id: &str| format!("{base}/api/v1/reports/{id}/report.html");
        for event in self.ledger.events_due(runtime::now_unix(), &url) {
            let at = self
                .ledger
                .reports()
                .iter()
                .find(|r| r.id == event.kill)
                .map_or(0.0, |r| r.at_unix_s);
            let body = oom_event_body(&event, node, at);
            let (api, tx) = (api.clone(), self.posted.0.clone());
            std::thread::spawn(move || {
                let sent = post_event(&api, &event.namespace, &body);
                if let Err(e) = &sent {
                    log::warn!(
                        "cannot post the Event on pod {}/{} ({e}): RBAC needs create on events",
                        event.namespace,
                        event.pod
                    );
                }
                let _ = tx.send((event.kill, sent.is_ok()));
            });
        }
    }
}
