//! Pure: which Kubernetes pod and container a process belongs to, read from its cgroup path
//! (`/proc/PID/cgroup`). The kubelet names a pod's cgroup after its UID and quality-of-service class, and the
//! container runtime names the container's after its id, in one of two layouts:
//!
//! - systemd driver: `/kubepods.slice/kubepods-burstable.slice/`
//!   `kubepods-burstable-pod<uid, '-' as '_'>.slice/cri-containerd-<id>.scope`
//!   (`crio-<id>.scope` for CRI-O, `docker-<id>.scope` for dockershim / cri-dockerd);
//! - cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>`.
//!
//! Guaranteed pods sit directly under `kubepods`, without a quality-of-service level. cgroup v1 repeats the
//! path once per controller (`4:memory:/kubepods/...`); v2 has one line (`0::/kubepods...`).
//! Under a nested runtime (kind, a container's own cgroup namespace) the path may start
//! deeper, so the kubepods part is searched anywhere in it.

use serde::{Deserialize, Serialize};

/// A pod's quality-of-service class, as its cgroup placement says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QosClass {
    /// Requests equal limits for every resource: directly under `kubepods`.
    Guaranteed,
    /// Some requests below limits.
    Burstable,
    /// No requests or limits.
    BestEffort,
}

impl QosClass {
    /// The name Kubernetes uses.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Guaranteed => "Guaranteed",
            Self::Burstable => "Burstable",
            Self::BestEffort => "BestEffort",
        }
    }
}

/// Where a process runs, as far as its cgroup tells.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// The pod's UID (dashed form, as the API server shows it).
    pub pod_uid: String,
    /// The container id (64 hex digits), when the process is in a container's cgroup rather
    /// than the pod's (the pause process, or a pod-level cgroup).
    pub container_id: Option<String>,
    /// The runtime that named the container cgroup: `containerd`, `cri-o` or `docker`
    /// (`None` under the cgroupfs driver, whose names carry no prefix).
    pub runtime: Option<String>,
    /// Quality-of-service class.
    pub qos: QosClass,
    /// Pod name, namespace and container name, from the Kubernetes API when it was reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// See `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// See `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
}

impl PodRef {
    /// Fills in the names the API gave for this pod (`pods`: by UID).
    pub fn name_from(&mut self, pods: &hashbrown::HashMap<String, crate::kube::PodMeta>) {
        if let Some(meta) = pods.get(&self.pod_uid) {
            self.name = Some(meta.name.clone());
            self.namespace = Some(meta.namespace.clone());
            self.container_name =
                self.container_id.as_ref().and_then(|id| meta.containers.get(id)).cloned();
        }
    }
}

/// The pod of a process whose `/proc/PID/cgroup` reads `text`; `None` outside kubepods.
#[must_use]
pub fn pod_of(text: &str) -> Option<PodRef> {
    // cgroup v2's unified line first: one path for every controller.
    let paths = text.lines().filter_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, _controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        Some((id == "0", path))
    });
    let mut found = None;
    for (unified, path) in paths {
        if let Some(pod) = pod_of_path(path) {
            if unified {
                return Some(pod);
            }
            found.get_or_insert(pod);
        }
    }
    found
}

/// The pod of one cgroup path.
#[must_use]
pub fn pod_of_path(path: &str) -> Option<PodRef> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let start = parts.iter().position(|p| *p == "kubepods" || *p == "kubepods.slice")?;
    let rest = &parts[start + 1..];
    let (qos, rest) = match rest.first().map(|p| qos_of(p)) {
        Some(Some(q)) => (q, &rest[1..]),
        _ => (QosClass::Guaranteed, rest),
    };
    let pod_uid = uid_of(rest.first()?)?;
    let (container_id, runtime) = match rest.get(1) {
        Some(name) => {
            let (id, runtime) = container_of(name)?;
            (Some(id), runtime.map(str::to_owned))
        }
        None => (None, None),
    };
    Some(PodRef {
        pod_uid,
        container_id,
        runtime,
        qos,
        name: None,
        namespace: None,
        container_name: None,
    })
}

/// The quality-of-service level of a path component (`burstable`, `kubepods-besteffort.slice`).
fn qos_of(part: &str) -> Option<QosClass> {
    let name = part.strip_prefix("kubepods-").unwrap_or(part);
    let name = name.strip_suffix(".slice").unwrap_or(name);
    match name {
        "burstable" => Some(QosClass::Burstable),
        "besteffort" => Some(QosClass::BestEffort),
        _ => None,
    }
}

/// The pod UID of a pod component: `pod<uid>` or `kubepods[-qos]-pod<uid_>.slice`.
fn uid_of(part: &str) -> Option<String> {
    let name = part.strip_suffix(".slice").unwrap_or(part);
    let uid = name.rsplit_once("pod").map(|(_, uid)| uid)?;
    // The systemd driver writes the UID's dashes as underscores ('-' separates slice levels).
    let uid = uid.replace('_', "-");
    let valid = uid.len() == 36
        && uid.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) { c == '-' } else { c.is_ascii_hexdigit() }
        });
    valid.then_some(uid)
}

/// The container id and runtime of a container component: `<runtime>-<id>.scope` or `<id>`.
fn container_of(part: &str) -> Option<(String, Option<&'static str>)> {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    let (runtime, id) = match name.rsplit_once('-') {
        Some(("cri-containerd", id)) => (Some("containerd"), id),
        Some(("crio", id)) => (Some("cri-o"), id),
        Some(("docker", id)) => (Some("docker"), id),
        Some(_) => return None,
        None => (None, name),
    };
    let valid = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| (id.to_owned(), runtime))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8f3a9c2e-1b4d-4e6f-9a7b-0c1d2e3f4a5b";
    const CID: &str = "3f1e2d4c5b6a79881726354433221100ffeeddccbbaa99887766554433221100";

    fn pod(container: bool, runtime: Option<&str>, qos: QosClass) -> PodRef {
        PodRef {
            pod_uid: UID.to_owned(),
            container_id: container.then(|| CID.to_owned()),
            runtime: runtime.map(str::to_owned),
            qos,
            name: None,
            namespace: None,
            container_name: None,
        }
    }

    #[test]
    fn systemd_driver_paths_of_each_runtime() {
        let uid_ = UID.replace('-', "_");
        for (prefix, runtime) in
            [("cri-containerd", "containerd"), ("crio", "cri-o"), ("docker", "docker")]
        {
            let text = format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/\
                 {prefix}-{CID}.scope\n"
            );
            assert_eq!(
                pod_of(&text),
                Some(pod(true, Some(runtime), QosClass::Burstable)),
                "{prefix}"
            );
        }
        // Guaranteed: no QoS level; the pod's own cgroup (no container).
        let text = format!("0::/kubepods.slice/kubepods-pod{uid_}.slice\n");
        assert_eq!(pod_of(&text), Some(pod(false, None, QosClass::Guaranteed)));
        let text = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/\
             cri-containerd-{CID}.scope"
        );
        assert_eq!(pod_of(&text), Some(pod(true, Some("containerd"), QosClass::BestEffort)));
    }

    #[test]
    fn cgroupfs_driver_paths_v1_and_v2() {
        let v2 = format!("0::/kubepods/besteffort/pod{UID}/{CID}\n");
        assert_eq!(pod_of(&v2), Some(pod(true, None, QosClass::BestEffort)));
        let v1 = format!(
            "12:pids:/kubepods/pod{UID}/{CID}\n4:memory:/kubepods/pod{UID}/{CID}\n\
             1:name=systemd:/kubepods/pod{UID}/{CID}\n"
        );
        assert_eq!(pod_of(&v1), Some(pod(true, None, QosClass::Guaranteed)));
    }

    #[test]
    fn nested_paths_and_processes_outside_pods() {
        // kind: the node is itself a container, so the path starts deeper.
        let nested = format!(
            "0::/system.slice/docker-{CID}.scope/kubelet.slice/kubepods.slice/\
             kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(pod_of(&nested), Some(pod(true, Some("containerd"), QosClass::Burstable)));
        for outside in [
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            "0::/system.slice/containerd.service\n",
            "0::/\n",
            "",
            // Not a UID, not a container id: not taken for one.
            "0::/kubepods/burstable/podnot-a-uid/abc\n",
        ] {
            assert_eq!(pod_of(outside), None, "{outside:?}");
        }
        // A malformed container component makes the whole path unrecognised.
        let bad = format!("0::/kubepods/pod{UID}/sandbox-xyz\n");
        assert_eq!(pod_of(&bad), None);
    }
}
