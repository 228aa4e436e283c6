//! Pure: what the Kubernetes API says of this node's pods (names, namespaces, container
//! names), and which processes the agent selects by them (#6). Fetching the pod list is left
//! to the caller; this module only reads it.
use hashbrown::HashMap;
use serde::Deserialize;

/// A pod, as the agent names it in reports and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// Container name by container id (the id without its `containerd://` scheme).
    pub containers: HashMap<String, String>,
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
    status: Status,
}

#[derive(Deserialize)]
struct Metadata {
    uid: String,
    name: String,
    #[serde(default)]
    namespace: String,
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
            let meta =
                PodMeta { name: p.metadata.name, namespace: p.metadata.namespace, containers };
            (p.metadata.uid, meta)
        })
        .collect())
}

/// What is known of a process when selecting it: its `comm` always; the rest when it runs in
/// a pod the API described.
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity<'a> {
    /// `comm`.
    pub comm: &'a str,
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
            && matches(&self.processes, Some(id.comm))
    }
}

/// Shell-style matching of the whole of `text`: `*` any run of characters, `?` one.
#[must_use]
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matching with one backtrack point: the last `*` and where it was tried.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` take one more character.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Selection;

    #[test]
    fn globs_match_whole_names() {
        for (p, t) in [
            ("api-*", "api-7d9f8-x2x"),
            ("*", ""),
            ("*", "anything"),
            ("redis", "redis"),
            ("re?is", "redis"),
            ("*-worker-*", "billing-worker-12"),
            ("a*b*c", "aXbYbZc"),
        ] {
            assert!(glob(p, t), "{p} {t}");
        }
        for (p, t) in [("api-*", "web-1"), ("redis", "redis-server"), ("?", ""), ("a*c", "ab")] {
            assert!(!glob(p, t), "{p} {t}");
        }
    }

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
    fn selection_by_namespace_pod_container_and_process() {
        let id = |ns, pod, container, comm| Identity {
            comm,
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
    }
}
