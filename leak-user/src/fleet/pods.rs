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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// The workload that runs the pod (`Deployment`, `StatefulSet`, `CronJob`, `Pod` for a
    /// bare pod...), from the API with its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_kind: Option<String>,
    /// See `workload_kind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// The node it runs on, from the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl PodRef {
    /// A pod as its cgroup path names it: no names until the API gives them.
    #[must_use]
    pub fn unnamed(
        pod_uid: String,
        container_id: Option<String>,
        runtime: Option<String>,
        qos: QosClass,
    ) -> Self {
        Self {
            pod_uid,
            container_id,
            runtime,
            qos,
            name: None,
            namespace: None,
            container_name: None,
            workload_kind: None,
            workload: None,
            node: None,
        }
    }

    /// Fills in the names the API gave for this pod (`pods`: by UID).
    pub fn name_from(&mut self, pods: &hashbrown::HashMap<String, crate::fleet::kube::PodMeta>) {
        if let Some(meta) = pods.get(&self.pod_uid) {
            self.name = Some(meta.name.clone());
            self.namespace = Some(meta.namespace.clone());
            self.container_name =
                self.container_id.as_ref().and_then(|id| meta.containers.get(id)).cloned();
            self.workload_kind = Some(meta.workload.kind.clone());
            self.workload = Some(meta.workload.name.clone());
            self.node.clone_from(&meta.node);
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
    // The pod's component names its UID. Seen from another container's cgroup namespace the
    // path is relative to that container and may leave `kubepods` out
    // (`/../../kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/...`), so the
    // pod component is what is searched; it must still be a kubelet's.
    let at = parts.iter().position(|p| uid_of(p).is_some())?;
    let kubelets = parts[..at].iter().any(|p| *p == "kubepods" || *p == "kubepods.slice")
        || parts[at].starts_with("kubepods-")
        || at.checked_sub(1).is_none_or(|i| parts[i] == ".." || qos_of(parts[i]).is_some());
    if !kubelets {
        return None;
    }
    let pod_uid = uid_of(parts[at])?;
    // A QoS level above it; directly under `kubepods`: Guaranteed.
    let qos = at.checked_sub(1).and_then(|i| qos_of(parts[i])).unwrap_or(QosClass::Guaranteed);
    let (container_id, runtime) = match parts.get(at + 1) {
        Some(name) => {
            let (id, runtime) = container_of(name)?;
            (Some(id), runtime.map(str::to_owned))
        }
        None => (None, None),
    };
    Some(PodRef::unnamed(pod_uid, container_id, runtime, qos))
}

/// The cgroup a process's memory is charged to, from its `/proc/PID/cgroup`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemoryCgroup {
    /// cgroup v1: the `memory` controller's path.
    V1(String),
    /// cgroup v2: the unified path.
    V2(String),
}

impl MemoryCgroup {
    /// Its path, as `/proc/PID/cgroup` gives it.
    #[must_use]
    pub fn path(&self) -> &str {
        match self {
            Self::V1(p) | Self::V2(p) => p,
        }
    }
}

/// The memory cgroup in a `/proc/PID/cgroup` text. Where a v1 `memory` hierarchy is mounted
/// it does the accounting (a hybrid system's v2 hierarchy then has no memory controller).
#[must_use]
pub fn memory_cgroup_of(text: &str) -> Option<MemoryCgroup> {
    let mut unified = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            return Some(MemoryCgroup::V1(path.to_owned()));
        }
        if id == "0" && controllers.is_empty() {
            unified = Some(MemoryCgroup::V2(path.to_owned()));
        }
    }
    unified
}

/// Where cgroup `path` may be, relative to its hierarchy's mount point, most likely first:
/// the path itself, then (read from inside a cgroup namespace, whose paths start with `..`
/// or below the host's root) from its kubepods part on.
#[must_use]
pub fn cgroup_dir_candidates(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != "..").collect();
    let mut out = vec![parts.join("/")];
    if let Some(k) = parts.iter().position(|p| *p == "kubepods" || *p == "kubepods.slice") {
        out.push(parts[k..].join("/"));
    } else if let Some(k) = parts.iter().position(|p| p.starts_with("kubepods-")) {
        // systemd driver: the slices above are implied by the name
        // (`kubepods-burstable-pod<uid>.slice` is in `kubepods.slice/kubepods-burstable.slice`).
        let name = parts[k].strip_suffix(".slice").unwrap_or(parts[k]);
        let mut above = vec!["kubepods.slice".to_owned()];
        let levels: Vec<&str> = name.split('-').collect();
        for n in 2..levels.len() {
            above.push(format!("{}.slice", levels[..n].join("-")));
        }
        above.extend(parts[k..].iter().map(|p| (*p).to_owned()));
        out.push(above.join("/"));
    }
    out.dedup();
    out
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

/// The Kubernetes pod and container of `pid`, from its cgroup path (`None` outside pods).
#[must_use]
pub fn pod(pid: u32) -> Option<crate::fleet::pods::PodRef> {
    pod_of(&crate::procfs::cgroup_text(pid)?)
}

/// The memory of cgroup `cg`, with the cgroup file systems mounted under `root`
/// (`/sys/fs/cgroup`: v2 there or, next to v1, in `unified/`; v1's memory in `memory/`), and
/// the directory it was read from. `None` when no candidate directory holds the files.
#[must_use]
pub fn cgroup_memory(
    root: &std::path::Path,
    cg: &crate::fleet::pods::MemoryCgroup,
) -> Option<(std::path::PathBuf, crate::analysis::history::CgroupMemory)> {
    use crate::fleet::pods::MemoryCgroup;
    let (hierarchy, [usage_file, limit_file], [anon_keys, inactive_keys]): (_, _, [&[&str]; 2]) =
        match cg {
            MemoryCgroup::V1(_) => (
                root.join("memory"),
                ["memory.usage_in_bytes", "memory.limit_in_bytes"],
                [&["total_rss", "rss"], &["total_inactive_file", "inactive_file"]],
            ),
            MemoryCgroup::V2(_) => {
                let unified = root.join("unified");
                let h = if root.join("cgroup.controllers").exists() {
                    root.to_owned()
                } else {
                    unified
                };
                (h, ["memory.current", "memory.max"], [&["anon"], &["inactive_file"]])
            }
        };
    crate::fleet::pods::cgroup_dir_candidates(cg.path()).into_iter().find_map(|rel| {
        let dir = hierarchy.join(rel);
        let usage: u64 = std::fs::read_to_string(dir.join(usage_file)).ok()?.trim().parse().ok()?;
        let stat = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
        let value =
            |keys: &[&str]| keys.iter().find_map(|k| crate::procfs::memory_stat_value(&stat, k));
        let anon = value(anon_keys)?;
        let inactive = value(inactive_keys).unwrap_or(0);
        let limit = std::fs::read_to_string(dir.join(limit_file))
            .ok()
            .and_then(|t| crate::procfs::parse_limit(&t));
        let working_set = usage.saturating_sub(inactive);
        Some((dir, crate::analysis::history::CgroupMemory { usage, anon, working_set, limit }))
    })
}

/// The OOM kills counted in the memory cgroup at `dir` (v2 `memory.events`, v1
/// `memory.oom_control`: `oom_kill N`, kernels 4.13 and later), and (v2) the times it called
/// the OOM killer for its own limit (`oom N`): one read of the file for both.
#[must_use]
pub fn cgroup_oom_counts(dir: &std::path::Path) -> (Option<u64>, Option<u64>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("memory.events")) {
        let count = |key| crate::procfs::memory_stat_value(&text, key);
        return (count("oom_kill"), count("oom"));
    }
    let text = std::fs::read_to_string(dir.join("memory.oom_control")).unwrap_or_default();
    (crate::procfs::memory_stat_value(&text, "oom_kill"), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8f3a9c2e-1b4d-4e6f-9a7b-0c1d2e3f4a5b";
    const CID: &str = "3f1e2d4c5b6a79881726354433221100ffeeddccbbaa99887766554433221100";

    fn pod(container: bool, runtime: Option<&str>, qos: QosClass) -> PodRef {
        PodRef::unnamed(
            UID.to_owned(),
            container.then(|| CID.to_owned()),
            runtime.map(str::to_owned),
            qos,
        )
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
        // Not under a kubelet's cgroups: a UID alone does not make a pod.
        assert_eq!(pod_of(&format!("0::/user.slice/pod{UID}\n")), None);
        // A malformed container component makes the whole path unrecognised.
        let bad = format!("0::/kubepods/pod{UID}/sandbox-xyz\n");
        assert_eq!(pod_of(&bad), None);
    }

    #[test]
    fn paths_seen_from_another_containers_cgroup_namespace() {
        let uid_ = UID.replace('-', "_");
        // The agent's own container is the namespace's root: kubepods.slice is above both.
        let text = format!(
            "0::/../../../kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/\
             cri-containerd-{CID}.scope\n"
        );
        assert_eq!(pod_of(&text), Some(pod(true, Some("containerd"), QosClass::Burstable)));
        let text = format!("0::/../../burstable/pod{UID}/{CID}\n");
        assert_eq!(pod_of(&text), Some(pod(true, None, QosClass::Burstable)));
        let text = format!("0::/../../pod{UID}/{CID}\n");
        assert_eq!(pod_of(&text), Some(pod(true, None, QosClass::Guaranteed)));
    }

    #[test]
    fn the_memory_cgroup_of_each_layout() {
        let hybrid = "5:memory:/kubepods/pod1/c\n1:name=systemd:/x\n0::/kubepods/pod1/c\n";
        assert_eq!(memory_cgroup_of(hybrid), Some(MemoryCgroup::V1("/kubepods/pod1/c".into())));
        let v1_joint = "4:cpu,memory:/a/b\n";
        assert_eq!(memory_cgroup_of(v1_joint), Some(MemoryCgroup::V1("/a/b".into())));
        assert_eq!(
            memory_cgroup_of("0::/a.slice/b\n"),
            Some(MemoryCgroup::V2("/a.slice/b".into()))
        );
        assert_eq!(memory_cgroup_of("1:name=systemd:/\n"), None);
        assert_eq!(memory_cgroup_of(""), None);
    }

    #[test]
    fn cgroup_directories_to_try() {
        assert_eq!(
            cgroup_dir_candidates("/kubepods/burstable/pod1/c"),
            ["kubepods/burstable/pod1/c"]
        );
        assert_eq!(cgroup_dir_candidates("/"), [""]);
        // Nested (kind): as given, then from kubepods on.
        assert_eq!(
            cgroup_dir_candidates("/docker/abc/kubepods/pod1/c"),
            ["docker/abc/kubepods/pod1/c", "kubepods/pod1/c"]
        );
        assert_eq!(cgroup_dir_candidates("/../../kubepods/pod1/c"), ["kubepods/pod1/c"]);
        // systemd names say which slices they are in.
        assert_eq!(
            cgroup_dir_candidates(
                "/../../kubepods-burstable.slice/kubepods-burstable-pod1.slice/x.scope"
            ),
            [
                "kubepods-burstable.slice/kubepods-burstable-pod1.slice/x.scope",
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/x.scope"
            ]
        );
        assert_eq!(
            cgroup_dir_candidates("/../kubepods-pod1.slice/x.scope"),
            ["kubepods-pod1.slice/x.scope", "kubepods.slice/kubepods-pod1.slice/x.scope"]
        );
    }

    #[test]
    fn cgroup_memory_of_each_hierarchy() {
        use crate::analysis::history::CgroupMemory;
        use std::fs;
        let root = tempfile::tempdir().unwrap();
        let write = |rel: &str, usage_file: &str, usage: &str, stat: &str| {
            let d = root.path().join(rel);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(usage_file), usage).unwrap();
            fs::write(d.join("memory.stat"), stat).unwrap();
            d
        };
        // A hybrid host: v1 memory, an empty unified hierarchy.
        let v1 = write(
            "memory/kubepods/pod1/c",
            "memory.usage_in_bytes",
            "8192\n",
            "cache 4096\nrss 100\ntotal_cache 4096\ntotal_rss 4096\n",
        );
        // No inactive cache counted, no limit (v1's "unlimited" is a huge number).
        fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        let got = cgroup_memory(root.path(), &MemoryCgroup::V1("/../kubepods/pod1/c".into()));
        let mem = CgroupMemory { usage: 8192, anon: 4096, working_set: 8192, limit: None };
        assert_eq!(got, Some((v1.clone(), mem)));
        let v2 = write(
            "unified/k.slice/c.scope",
            "memory.current",
            "300\n",
            "anon 200\nfile 100\ninactive_file 60\n",
        );
        fs::write(v2.join("memory.max"), "1048576\n").unwrap();
        let got = cgroup_memory(root.path(), &MemoryCgroup::V2("/k.slice/c.scope".into()));
        let mem = CgroupMemory { usage: 300, anon: 200, working_set: 240, limit: Some(1 << 20) };
        assert_eq!(got, Some((v2, mem)));
        // Missing: no directory, or no memory controller there.
        assert_eq!(cgroup_memory(root.path(), &MemoryCgroup::V2("/nope".into())), None);
        fs::create_dir_all(root.path().join("unified/bare")).unwrap();
        assert_eq!(cgroup_memory(root.path(), &MemoryCgroup::V2("/bare".into())), None);
    }
}
