//! Pure: what the Kubernetes API says of this node's pods (names, namespaces, container
//! names, the workload that runs each: #6, #18), and which processes the agent selects by
//! them; and the Event that tells a pod about an OOM kill, as the JSON body it is posted as.
//! Fetching and posting are left to the caller (`kubeapi`); this module only reads the
//! answers and keeps what it learnt of pods' owners ([`Owners`]).
use hashbrown::HashMap;
use serde::Deserialize;

use crate::analysis::pattern::glob;

/// A pod, as the agent names it in reports and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// Container name by container id (the id without its `containerd://` scheme).
    pub containers: HashMap<String, String>,
    /// The workload that runs it: its controller (a `ReplicaSet`'s Deployment, a Job's
    /// `CronJob`, once [`Owners::apply`] has resolved them), or the pod itself (kind `Pod`).
    pub workload: Workload,
    /// `spec.nodeName`.
    pub node: Option<String>,
}

/// What runs a pod, as a user names it: `Deployment/api`, `StatefulSet/db`, `CronJob/report`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Workload {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `ReplicaSet` (one no Deployment owns),
    /// `Job`, `CronJob`, `Pod` (a bare pod), or another controller's kind.
    pub kind: String,
    /// Its name.
    pub name: String,
}

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    items: Vec<Pod>,
}

#[derive(Deserialize)]
struct Pod {
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
    #[serde(default)]
    status: Status,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    node_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    uid: String,
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    owner_references: Vec<OwnerReference>,
}

#[derive(Deserialize)]
struct OwnerReference {
    kind: String,
    name: String,
    #[serde(default)]
    controller: bool,
}

/// The controller among `refs`, if any. A static (mirror) pod's controller is its node: not
/// a workload (every static pod of a node would be one), so it is a bare pod.
fn controller(refs: Vec<OwnerReference>) -> Option<Workload> {
    refs.into_iter()
        .find(|r| r.controller && r.kind != "Node")
        .map(|r| Workload { kind: r.kind, name: r.name })
}

/// An object with only its metadata read (a `ReplicaSet`, a Job).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Owned {
    metadata: OwnedMetadata,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OwnedMetadata {
    #[serde(default)]
    owner_references: Vec<OwnerReference>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
#[expect(clippy::struct_field_names, reason = "the API's own field names")]
struct Status {
    #[serde(default)]
    container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStatus {
    name: String,
    /// `containerd://<id>`, `cri-o://<id>`, `docker://<id>`; absent until it has started.
    /// (The API spells it `containerID`, not camel case.)
    #[serde(default, rename = "containerID")]
    container_id: Option<String>,
}

/// The pods of a `GET /api/v1/pods` answer (a `PodList`), by UID.
///
/// # Errors
/// The body is not a pod list.
pub fn parse_pod_list(body: &[u8]) -> Result<HashMap<String, PodMeta>, String> {
    let list: PodList = serde_json::from_slice(body).map_err(|e| format!("not a pod list: {e}"))?;
    Ok(list
        .items
        .into_iter()
        .map(|p| {
            let s = p.status;
            let containers = s
                .container_statuses
                .into_iter()
                .chain(s.init_container_statuses)
                .chain(s.ephemeral_container_statuses)
                .filter_map(|c| {
                    let id = c.container_id?;
                    let id = id.split_once("://").map_or(id.as_str(), |(_, id)| id).to_owned();
                    Some((id, c.name))
                })
                .collect();
            let m = p.metadata;
            let workload = controller(m.owner_references)
                .unwrap_or_else(|| Workload { kind: "Pod".into(), name: m.name.clone() });
            let node = p.spec.node_name;
            (m.uid, PodMeta { name: m.name, namespace: m.namespace, containers, workload, node })
        })
        .collect())
}

/// Where the owner of a pod's controller is found, for the kinds a user knows by their
/// owner: a `ReplicaSet` (its Deployment's) and a Job (its `CronJob`'s).
#[must_use]
pub fn owner_path(namespace: &str, owned: &Workload) -> Option<String> {
    let (group, plural) = match owned.kind.as_str() {
        "ReplicaSet" => ("apps", "replicasets"),
        "Job" => ("batch", "jobs"),
        _ => return None,
    };
    Some(format!("/apis/{group}/v1/namespaces/{namespace}/{plural}/{}", owned.name))
}

/// The controller of the object in an API answer (`None`: it has none).
///
/// # Errors
/// The body is not an object with metadata.
pub fn parse_owner(body: &[u8]) -> Result<Option<Workload>, String> {
    let o: Owned = serde_json::from_slice(body).map_err(|e| format!("not an object: {e}"))?;
    Ok(controller(o.metadata.owner_references))
}

/// What was learnt of pods' controllers (`ReplicaSets` and Jobs): their owners, kept while a
/// pod refers to them. A `ReplicaSet`'s owner does not change, so each is asked once; one
/// that could not be read is asked again after [`Owners::RETRY`] refreshes.
#[derive(Debug, Default)]
pub struct Owners {
    /// `(namespace, kind, name)` to its owner (`Ok(None)`: it has none), or the refreshes
    /// left before it is asked again.
    known: HashMap<OwnerKey, Result<Option<Workload>, u32>>,
}

/// A pod's controller: `(namespace, kind, name)`.
pub type OwnerKey = (String, String, String);

impl Owners {
    /// Refreshes before a failed lookup is tried again (20 x 15 s: 5 minutes).
    pub const RETRY: u32 = 20;

    /// The API paths to read for `pods`' controllers not known yet, once each.
    pub fn wanted(&mut self, pods: &HashMap<String, PodMeta>) -> Vec<(OwnerKey, String)> {
        let mut paths = Vec::new();
        let mut referred = hashbrown::HashSet::new();
        for p in pods.values() {
            let Some(path) = owner_path(&p.namespace, &p.workload) else { continue };
            let key = (p.namespace.clone(), p.workload.kind.clone(), p.workload.name.clone());
            match self.known.get_mut(&key) {
                Some(Err(0)) | None if !referred.contains(&key) => {
                    paths.push((key.clone(), path));
                }
                Some(Err(left)) if !referred.contains(&key) => *left -= 1,
                _ => {}
            }
            referred.insert(key);
        }
        // Forget the controllers no pod refers to any more (bounded by this node's pods).
        self.known.retain(|k, _| referred.contains(k));
        paths
    }

    /// Records the answer to a lookup [`Self::wanted`] asked for.
    ///
    /// # Errors
    /// The lookup failed, or its answer is not an object (it is asked again later).
    pub fn record(&mut self, key: OwnerKey, answer: Result<&[u8], String>) -> Result<(), String> {
        let owner = answer.and_then(parse_owner);
        let failed = owner.as_ref().err().cloned();
        self.known.insert(key, owner.map_err(|_| Self::RETRY));
        failed.map_or(Ok(()), Err)
    }

    /// Names each pod's workload by its controller's owner, where known.
    pub fn apply(&self, pods: &mut HashMap<String, PodMeta>) {
        for p in pods.values_mut() {
            let key = (p.namespace.clone(), p.workload.kind.clone(), p.workload.name.clone());
            if let Some(Ok(Some(owner))) = self.known.get(&key) {
                p.workload = owner.clone();
            }
        }
    }
}

/// What is known of a process when selecting it: its `comm` always; the rest when it runs in
/// a pod the API described.
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity<'a> {
    /// `comm`.
    pub comm: &'a str,
    /// The program its command line runs (`python3` of `/usr/bin/python3 app.py`), when
    /// read: `comm` is cut at 15 characters and may be renamed by the process.
    pub program: Option<&'a str>,
    /// Pod namespace.
    pub namespace: Option<&'a str>,
    /// Pod name.
    pub pod: Option<&'a str>,
    /// Container name.
    pub container: Option<&'a str>,
}

impl crate::config::Selection {
    /// Whether the process `id` is watched. A list that names what is not known of it (no
    /// pod metadata: the API was not reachable) does not select it.
    #[must_use]
    pub fn selects(&self, id: &Identity<'_>) -> bool {
        let matches = |patterns: &[String], value: Option<&str>| {
            patterns.is_empty() || value.is_some_and(|v| patterns.iter().any(|p| glob(p, v)))
        };
        if let Some(ns) = id.namespace
            && self.exclude_namespaces.iter().any(|p| glob(p, ns))
        {
            return false;
        }
        matches(&self.namespaces, id.namespace)
            && matches(&self.pods, id.pod)
            && matches(&self.containers, id.container)
            && (matches(&self.processes, Some(id.comm))
                || id.program.is_some_and(|p| matches(&self.processes, Some(p))))
    }
}

/// A Kubernetes Event to post about an OOM kill (see `fleet::oom`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The kill's id.
    pub kill: String,
    /// The pod's namespace, name and UID, and the container's name.
    pub namespace: String,
    /// See `namespace`.
    pub pod: String,
    /// See `namespace`.
    pub pod_uid: String,
    /// See `namespace`.
    pub container: Option<String>,
    /// The message (short: `kubectl describe pod` prints it on one line).
    pub message: String,
}

/// The reason of the Events posted (`kubectl get events --field-selector reason=...`).
pub const EVENT_REASON: &str = "LeakOOMKill";

/// The core/v1 Event (type Warning) that tells a pod's readers about an OOM kill: where
/// `kubectl describe pod` and `kubectl get events` show it, next to the kill. Posted to
/// `/api/v1/namespaces/NAMESPACE/events`; `node` is the agent's, `at_unix_s` the kill's.
#[must_use]
pub fn oom_event_body(e: &Event, node: &str, at_unix_s: f64) -> serde_json::Value {
    let at = rfc3339(at_unix_s);
    let mut involved = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": e.namespace,
        "name": e.pod,
        "uid": e.pod_uid,
    });
    if let Some(c) = &e.container {
        involved["fieldPath"] = format!("spec.containers{{{c}}}").into();
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": { "generateName": format!("{}.leak-oom-", e.pod), "namespace": e.namespace },
        "involvedObject": involved,
        "reason": EVENT_REASON,
        "message": e.message,
        "type": "Warning",
        "source": { "component": "leak-agent", "host": node },
        "reportingComponent": "leak-agent",
        "reportingInstance": node,
        "firstTimestamp": at,
        "lastTimestamp": at,
        "count": 1,
    })
}

/// `2026-12-07T07:50:03Z`: Unix seconds as the API's timestamps write them (UTC, whole
/// seconds).
#[must_use]
pub fn rfc3339(unix_s: f64) -> String {
    #[expect(clippy::cast_possible_truncation, reason = "seconds since 1970 fit")]
    let secs = unix_s.max(0.0).floor() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Selection;

    #[test]
    fn a_pod_list_gives_names_namespaces_and_container_names() {
        let body = br#"{"kind":"PodList","items":[
          {"metadata":{"uid":"u1","name":"api-7d9","namespace":"shop"},
           "status":{"containerStatuses":[
              {"name":"api","containerID":"containerd://abc123"},
              {"name":"sidecar","containerID":"cri-o://def456"},
              {"name":"waiting"}],
            "initContainerStatuses":[{"name":"init","containerID":"docker://0011"}]}},
          {"metadata":{"uid":"u2","name":"pending","namespace":"shop"}}]}"#;
        let pods = parse_pod_list(body).unwrap();
        let api = &pods["u1"];
        assert_eq!((api.name.as_str(), api.namespace.as_str()), ("api-7d9", "shop"));
        assert_eq!(api.containers["abc123"], "api");
        assert_eq!(api.containers["def456"], "sidecar");
        assert_eq!(api.containers["0011"], "init");
        assert_eq!(api.containers.len(), 3, "a container that has not started has no id");
        assert!(pods["u2"].containers.is_empty());
        assert!(parse_pod_list(b"{\"kind\":\"Status\",\"code\":403}").unwrap().is_empty());
        assert!(parse_pod_list(b"not json").is_err());
    }

    #[test]
    fn workloads_from_owner_references_resolved_once() {
        let body = br#"{"items":[
          {"metadata":{"uid":"a","name":"api-7d9-x","namespace":"shop","ownerReferences":[
             {"kind":"ReplicaSet","name":"api-7d9","controller":true}]},
           "spec":{"nodeName":"n1"}},
          {"metadata":{"uid":"b","name":"api-7d9-y","namespace":"shop","ownerReferences":[
             {"kind":"ReplicaSet","name":"api-7d9","controller":true}]}},
          {"metadata":{"uid":"c","name":"db-0","namespace":"shop","ownerReferences":[
             {"kind":"Node","name":"n1"},{"kind":"StatefulSet","name":"db","controller":true}]}},
          {"metadata":{"uid":"d","name":"report-29-z","namespace":"ops","ownerReferences":[
             {"kind":"Job","name":"report-29","controller":true}]}},
          {"metadata":{"uid":"e","name":"debug","namespace":"ops"}},
          {"metadata":{"uid":"f","name":"etcd-n1","namespace":"kube-system","ownerReferences":[
             {"kind":"Node","name":"n1","controller":true}]}}]}"#;
        let mut pods = parse_pod_list(body).unwrap();
        let w = |kind: &str, name: &str| Workload { kind: kind.into(), name: name.into() };
        assert_eq!(pods["a"].node.as_deref(), Some("n1"));
        assert_eq!(pods["c"].workload, w("StatefulSet", "db"));
        assert_eq!(pods["e"].workload, w("Pod", "debug"), "a bare pod is its own workload");
        assert_eq!(pods["f"].workload, w("Pod", "etcd-n1"), "a static pod too, not its node");
        let mut owners = Owners::default();
        let mut wanted = owners.wanted(&pods);
        wanted.sort();
        // One lookup per controller, not per pod.
        assert_eq!(
            wanted.iter().map(|w| w.1.as_str()).collect::<Vec<_>>(),
            [
                "/apis/batch/v1/namespaces/ops/jobs/report-29",
                "/apis/apps/v1/namespaces/shop/replicasets/api-7d9"
            ]
        );
        let rs = br#"{"metadata":{"ownerReferences":[{"kind":"Deployment","name":"api","controller":true}]}}"#;
        for (key, _) in wanted {
            let answer = if key.1 == "ReplicaSet" { Ok(&rs[..]) } else { Err("403".to_owned()) };
            let failed = key.1 == "Job";
            assert_eq!(owners.record(key, answer).is_err(), failed);
        }
        owners.apply(&mut pods);
        assert_eq!(pods["a"].workload, w("Deployment", "api"));
        assert_eq!(pods["b"].workload, w("Deployment", "api"));
        assert_eq!(pods["d"].workload, w("Job", "report-29"), "unresolved: its own controller");
        // Known ones are not asked again; the failed one only after RETRY refreshes.
        let mut fresh = parse_pod_list(body).unwrap();
        for _ in 0..Owners::RETRY {
            assert!(owners.wanted(&fresh).is_empty());
        }
        assert_eq!(owners.wanted(&fresh).len(), 1, "the Job, again");
        owners.apply(&mut fresh);
        assert_eq!(fresh["a"].workload, w("Deployment", "api"));
        // Gone pods' controllers are forgotten.
        fresh.retain(|uid, _| uid == "e" || uid == "f");
        assert!(owners.wanted(&fresh).is_empty());
        assert!(owners.known.is_empty());
        assert!(parse_owner(b"[]").is_err());
    }

    #[test]
    fn selection_by_namespace_pod_container_and_process() {
        let id = |ns, pod, container, comm| Identity {
            comm,
            program: None,
            namespace: Some(ns),
            pod: Some(pod),
            container: Some(container),
        };
        let all = Selection::default();
        assert!(all.selects(&id("shop", "api-1", "api", "server")));
        assert!(!all.selects(&id("kube-system", "coredns-1", "coredns", "coredns")));
        // Without metadata only the process name is known.
        assert!(all.selects(&Identity { comm: "server", ..Identity::default() }));
        let some = Selection {
            namespaces: vec!["shop".into(), "bill*".into()],
            pods: vec!["api-*".into()],
            containers: Vec::new(),
            processes: vec!["server".into()],
            ..Selection::default()
        };
        assert!(some.selects(&id("billing", "api-9", "x", "server")));
        assert!(!some.selects(&id("web", "api-9", "x", "server")), "namespace");
        assert!(!some.selects(&id("shop", "web-1", "x", "server")), "pod");
        assert!(!some.selects(&id("shop", "api-1", "x", "nginx")), "process");
        assert!(!some.selects(&Identity { comm: "server", ..Identity::default() }), "unknown");
        // --process matches the command line's program too (comm is cut at 15 characters).
        let named =
            Selection { processes: vec!["my-long-service-name".into()], ..Selection::default() };
        let cut = Identity { comm: "my-long-service", ..Identity::default() };
        assert!(!named.selects(&cut));
        assert!(named.selects(&Identity { program: Some("my-long-service-name"), ..cut }));
    }

    #[test]
    fn an_oom_event_is_a_warning_on_the_pod() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_629_803.7), "2026-12-07T07:50:03Z");
        assert_eq!(rfc3339(951_825_600.0), "2000-02-29T12:00:00Z");
        let e = Event {
            kill: "oom-api-10-1".into(),
            namespace: "shop".into(),
            pod: "shop-api-1".into(),
            pod_uid: "u1".into(),
            container: Some("api".into()),
            message: "OOM-killed after +60.0 MiB".into(),
        };
        let body = oom_event_body(&e, "n1", 0.0);
        assert_eq!(body["type"], "Warning");
        assert_eq!(body["reason"], "LeakOOMKill");
        assert_eq!(body["involvedObject"]["fieldPath"], "spec.containers{api}");
        assert_eq!(body["involvedObject"]["uid"], "u1");
        assert_eq!(body["metadata"]["namespace"], "shop");
        assert_eq!(body["lastTimestamp"], "1970-01-01T00:00:00Z");
    }
}
