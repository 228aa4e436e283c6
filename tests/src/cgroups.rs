//! Cgroups laid out as a kubelet lays them out (cgroupfs and systemd drivers), with a
//! memory limit where a test needs the OOM killer.
use std::path::{Path, PathBuf};

/// A cgroup laid out as a kubelet would, holding test processes; removed on drop (after them).
pub struct PodCgroup {
    /// The hierarchy's mount point, and the cgroup's path under it.
    root: PathBuf,
    rel: PathBuf,
    /// The same path in cgroup v1's memory hierarchy, where one does the accounting.
    memory: Option<Box<PodCgroup>>,
}

impl PodCgroup {
    /// Creates `rel` under the hierarchy mounted at `root`.
    #[must_use]
    pub fn new(root: &Path, rel: &str) -> Self {
        let rel = PathBuf::from(rel);
        std::fs::create_dir_all(root.join(&rel)).unwrap();
        Self { root: root.to_owned(), rel, memory: None }
    }

    /// Has its processes' memory accounted to it, as a node does: in cgroup v1's memory
    /// hierarchy under the same path when there is one (a hybrid host), else by enabling the
    /// memory controller down its v2 path.
    #[must_use]
    pub fn with_memory(mut self) -> Self {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        if v1.join("memory.usage_in_bytes").exists() {
            let rel = self.rel.to_str().unwrap().to_owned();
            self.memory = Some(Box::new(Self::new(v1, &rel)));
        } else {
            let mut dir = self.root.clone();
            for part in self.rel.parent().unwrap().components() {
                std::fs::write(dir.join("cgroup.subtree_control"), "+memory").unwrap();
                dir = dir.join(part);
            }
            std::fs::write(dir.join("cgroup.subtree_control"), "+memory").unwrap();
        }
        self
    }

    /// Its directory.
    #[must_use]
    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.rel)
    }

    /// Limits its memory to `bytes` (swap included where the kernel accounts it), in the
    /// hierarchy that accounts it: past it, the OOM killer takes one of its processes.
    pub fn limit_memory(&self, bytes: u64) {
        if let Some(m) = &self.memory {
            // v1: the limit, then memory+swap (absent without swap accounting).
            std::fs::write(m.dir().join("memory.limit_in_bytes"), bytes.to_string()).unwrap();
            let _ = std::fs::write(m.dir().join("memory.memsw.limit_in_bytes"), bytes.to_string());
        } else {
            std::fs::write(self.dir().join("memory.max"), bytes.to_string()).unwrap();
            let _ = std::fs::write(self.dir().join("memory.swap.max"), "0");
        }
    }

    /// Processes the OOM killer took in it (`oom_kill` of v2's `memory.events`, or of v1's
    /// `memory.oom_control`).
    #[must_use]
    pub fn oom_kills(&self) -> u64 {
        let file = match &self.memory {
            Some(m) => m.dir().join("memory.oom_control"),
            None => self.dir().join("memory.events"),
        };
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A shell command that moves the shell running it into this cgroup (then `exec` what
    /// should run there: only it is charged, and only it can be the OOM killer's victim).
    #[must_use]
    pub fn join_command(&self) -> String {
        let mut files = vec![self.dir().join("cgroup.procs")];
        files.extend(self.memory.as_ref().map(|m| m.dir().join("cgroup.procs")));
        files.iter().map(|f| format!("echo $$ > {}", f.display())).collect::<Vec<_>>().join(" && ")
    }

    /// Moves process `pid` into it.
    pub fn add(&self, pid: u32) {
        std::fs::write(self.dir().join("cgroup.procs"), pid.to_string()).unwrap();
        if let Some(m) = &self.memory {
            m.add(pid);
        }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // Innermost first; a cgroup is removed once its processes have exited.
        let mut rel = Some(self.rel.as_path());
        while let Some(r) = rel.filter(|r| !r.as_os_str().is_empty()) {
            for _ in 0..50 {
                if std::fs::remove_dir(self.root.join(r)).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            rel = r.parent();
        }
    }
}

/// A cgroup of one test's own (not a pod's) whose memory is limited to `limit` bytes: past it,
/// the kernel's OOM killer kills one of its processes.
#[must_use]
pub fn oom_cgroup(limit: u64) -> PodCgroup {
    let (uid, _) = pod_ids();
    let cgroup = PodCgroup::new(&unified_cgroup_root(), &format!("leak-test-oom-{}", &uid[..8]))
        .with_memory();
    cgroup.limit_memory(limit);
    cgroup
}

/// A random pod UID and container id, so that runs never share cgroups.
#[must_use]
pub fn pod_ids() -> (String, String) {
    let hex = |n: usize| -> String {
        let bytes = std::fs::read("/proc/sys/kernel/random/uuid").unwrap();
        let s: String =
            String::from_utf8(bytes).unwrap().chars().filter(char::is_ascii_hexdigit).collect();
        s.repeat(2)[..n].to_owned()
    };
    let u = hex(32);
    let uid = format!("{}-{}-{}-{}-{}", &u[..8], &u[8..12], &u[12..16], &u[16..20], &u[20..]);
    (uid, hex(64))
}

/// The cgroup v2 hierarchy: `/sys/fs/cgroup` alone, or `/sys/fs/cgroup/unified` next to v1.
#[must_use]
pub fn unified_cgroup_root() -> PathBuf {
    let fs = Path::new("/sys/fs/cgroup");
    let unified =
        if fs.join("cgroup.controllers").exists() { fs.to_owned() } else { fs.join("unified") };
    assert!(unified.join("cgroup.controllers").exists(), "no cgroup v2 hierarchy");
    unified
}

/// A containerd container cgroup of a burstable pod, systemd driver, in cgroup v2; with the
/// pod UID and container id.
#[must_use]
pub fn systemd_pod_cgroup() -> (PodCgroup, String, String) {
    systemd_pod_cgroup_of("burstable")
}

/// As [`systemd_pod_cgroup`], in quality-of-service class `qos` (`burstable`, `besteffort`),
/// with its memory accounted (see [`PodCgroup::with_memory`]).
#[must_use]
pub fn systemd_pod_cgroup_of(qos: &str) -> (PodCgroup, String, String) {
    let (uid, cid) = pod_ids();
    let rel = format!(
        "kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{}.slice/\
         cri-containerd-{cid}.scope",
        uid.replace('-', "_")
    );
    (PodCgroup::new(&unified_cgroup_root(), &rel).with_memory(), uid, cid)
}
