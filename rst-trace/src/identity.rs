//! Which cgroup, container, pod or systemd unit a reset's owner runs in, resolved from what the
//! node has (/proc, the cgroup2 mount, the runtimes' state files), without a Kubernetes API.
//!
//! Resolution reads files and may walk the cgroup tree, so it runs on a thread of its own: the
//! event loop asks [`Resolver::get`] (a cache look-up) and, on a miss, [`Resolver::request`],
//! which queues the look-up; the answer comes back through the callback given to
//! [`Resolver::start`] and is cached for the next events.
//!
//! Bounds: the cache holds at most [`CACHE_ENTRIES`] identities (two generations, see `cache`);
//! at most [`QUEUE_LEN`] look-ups wait, more are dropped and counted ([`Resolver::dropped`]);
//! a look-up whose pid is gone walks at most [`MAX_WALK_DIRS`] cgroup directories.

mod cache;
pub mod cgroupfs;
mod meta;
mod path;
#[cfg(test)]
mod tests;
pub mod wait;

use std::{
    fs,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, SyncSender, TrySendError},
    },
    thread,
};

pub use self::wait::{Answer, Waiting};
use self::{cache::Cache, cgroupfs::Cgroup2, path::ProcCgroup};

/// Where a reset's owner runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The cgroup v2 path of the event's cgroup id (`/system.slice/nginx.service`), relative to
    /// rst-trace's cgroup namespace; `None` if the cgroup is gone or cannot be found.
    pub cgroup_path: Option<String>,
    pub container: Option<Container>,
    /// The systemd service of a process outside containers (`nginx.service`).
    pub systemd_unit: Option<String>,
    /// The answer came from the pid's cgroup v1 paths: the cgroup id alone does not tell it
    /// (so the kernel cannot filter by that id).
    pub per_pid: bool,
}

/// A container, from its cgroup's name and its runtime's state files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// The full container id (64 hex digits for every runtime here).
    pub id: String,
    pub runtime: Runtime,
    /// The runtime's name for it: docker's and podman's `--name`, CRI-O's `k8s_...` name.
    pub name: Option<String>,
    /// Kubernetes pod name, namespace and container name, when a kubelet started it.
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub container_name: Option<String>,
    /// Kubernetes pod UID, from the kubepods cgroup path or the runtime's metadata.
    pub pod_uid: Option<String>,
}

impl Container {
    fn new(id: &str, runtime: Runtime) -> Self {
        Self {
            id: id.to_owned(),
            runtime,
            name: None,
            pod: None,
            namespace: None,
            container_name: None,
            pod_uid: None,
        }
    }
}

impl Container {
    /// The name to show: the Kubernetes container name when a kubelet started it, else the
    /// runtime's own name.
    pub fn display_name(&self) -> Option<&str> {
        self.container_name.as_deref().or(self.name.as_deref())
    }

    /// Its label in text, summaries and metrics: the name, else the id's first 12 digits.
    pub fn label(&self) -> String {
        self.display_name()
            .map_or_else(|| self.id.chars().take(12).collect(), str::to_owned)
    }

    /// `NAMESPACE/POD` (or `POD` when the namespace is unknown), for a Kubernetes container.
    pub fn pod_label(&self) -> Option<String> {
        let pod = self.pod.as_deref()?;
        Some(match self.namespace.as_deref() {
            Some(ns) => format!("{ns}/{pod}"),
            None => pod.to_owned(),
        })
    }

    /// Whether `--container WANT` names it: its runtime name, its Kubernetes container name,
    /// or a prefix of its id (hex, as `docker ps` shows 12 digits of it).
    pub fn is_named(&self, want: &str) -> bool {
        self.name.as_deref() == Some(want)
            || self.container_name.as_deref() == Some(want)
            || (want.len() >= MIN_ID_PREFIX && self.id.starts_with(want))
    }

    /// Whether `--pod [NAMESPACE/]NAME` names its pod.
    pub fn in_pod(&self, namespace: Option<&str>, pod: &str) -> bool {
        self.pod.as_deref() == Some(pod)
            && namespace.is_none_or(|ns| self.namespace.as_deref() == Some(ns))
    }
}

/// The shortest container id prefix `--container` accepts as an id: shorter prefixes would
/// match names and ids alike by accident.
pub const MIN_ID_PREFIX: usize = 4;

impl Runtime {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Podman => "podman",
            Self::Unknown(_) => "unknown",
        }
    }
}

/// The container runtime, as the cgroup name tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
    /// A bare id whose path does not name the runtime (Kubernetes' cgroupfs driver), and that
    /// no runtime's state files hold: the cgroup directory holding it.
    Unknown(String),
}

/// Where the node keeps what resolution reads; tests point these at a temporary directory.
#[derive(Clone, Debug)]
pub struct Roots {
    /// procfs: `<proc>/<pid>/cgroup`, `<proc>/self/mountinfo`.
    pub proc: PathBuf,
    /// The cgroup2 mount; `None`: the first cgroup2 mount in `<proc>/self/mountinfo`.
    pub cgroup2: Option<PathBuf>,
    /// Docker's containers: `<docker>/<id>/config.v2.json`.
    pub docker: PathBuf,
    /// containerd's task state, one per containerd (k3s runs its own):
    /// `<root>/<namespace>/<id>/config.json`.
    pub containerd: Vec<PathBuf>,
    /// CRI-O's (and podman's) run root: `<crio>/<id>/userdata/config.json`.
    pub crio: PathBuf,
    /// containers/storage's graph root, whose `containers.json` holds podman's names.
    pub podman: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            proc: "/proc".into(),
            cgroup2: None,
            docker: "/var/lib/docker/containers".into(),
            containerd: vec![
                "/run/containerd/io.containerd.runtime.v2.task".into(),
                "/run/k3s/containerd/io.containerd.runtime.v2.task".into(),
            ],
            crio: "/run/containers/storage/overlay-containers".into(),
            podman: "/var/lib/containers/storage/overlay-containers".into(),
        }
    }
}

/// Identities cached at most (both generations together).
pub const CACHE_ENTRIES: usize = 4096;
/// Look-ups waiting at most; beyond, requests are dropped and counted.
pub const QUEUE_LEN: usize = 256;
/// Cgroup directories one look-up reads at most when it must find a cgroup id by walking.
pub const MAX_WALK_DIRS: usize = 20_000;

/// State shared by the caller and the look-up thread.
struct Shared {
    cache: Mutex<Cache>,
    dropped: AtomicU64,
}

impl Shared {
    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic elsewhere cannot leave the maps half-updated in a way that matters here.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Resolves `(cgroup id, pid)` to an [`Identity`] off the caller's thread, with a bounded cache.
pub struct Resolver {
    shared: Arc<Shared>,
    requests: SyncSender<(u64, u32)>,
}

impl Resolver {
    /// Starts the look-up thread. `on_answer(cgroup_id, pid, identity)` runs on that thread for
    /// every request, cached or not: forward it to the event loop (a tokio channel's sender).
    pub fn start<F>(roots: Roots, on_answer: F) -> Self
    where
        F: FnMut(u64, u32, Arc<Identity>) + Send + 'static,
    {
        Self::with_bounds(roots, CACHE_ENTRIES, QUEUE_LEN, on_answer)
    }

    fn with_bounds<F>(roots: Roots, cache: usize, queue: usize, mut on_answer: F) -> Self
    where
        F: FnMut(u64, u32, Arc<Identity>) + Send + 'static,
    {
        let shared = Arc::new(Shared {
            cache: Mutex::new(Cache::new(cache)),
            dropped: AtomicU64::new(0),
        });
        let (requests, rx) = mpsc::sync_channel::<(u64, u32)>(queue);
        let worker = Arc::clone(&shared);
        // If the thread cannot start, `rx` is dropped with the closure and every request fails.
        let _ = thread::Builder::new()
            .name("rst-identity".into())
            .spawn(move || {
                let cgroup2 = cgroup2_mount(&roots);
                for (cgroup_id, pid) in rx {
                    // Requests queued twice before the first answer resolve once.
                    let cached = worker.cache().get(cgroup_id, pid);
                    let identity = cached.unwrap_or_else(|| {
                        let (identity, per_pid) = resolve(&roots, cgroup2.as_ref(), cgroup_id, pid);
                        let identity = Arc::new(identity);
                        let key = (cgroup_id, per_pid.then_some(pid));
                        worker.cache().insert(key, Arc::clone(&identity));
                        identity
                    });
                    on_answer(cgroup_id, pid, identity);
                }
            });
        Self { shared, requests }
    }

    /// The cached identity of `(cgroup_id, pid)`, if resolved already. Never blocks on I/O.
    pub fn get(&self, cgroup_id: u64, pid: u32) -> Option<Arc<Identity>> {
        self.shared.cache().get(cgroup_id, pid)
    }

    /// Queues a look-up. False if the queue is full (the request is dropped and counted) or
    /// the look-up thread is gone.
    pub fn request(&self, cgroup_id: u64, pid: u32) -> bool {
        match self.requests.try_send((cgroup_id, pid)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Requests dropped because the queue was full, since the start (they end in
    /// `Waiting::gave_up`, which is reported).
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// The cgroup2 mount resolution reads: `roots.cgroup2`, else the first in mountinfo.
fn cgroup2_mount(roots: &Roots) -> Option<Cgroup2> {
    match &roots.cgroup2 {
        Some(mount) => Some(Cgroup2::at(mount.clone())),
        None => {
            let text = fs::read_to_string(roots.proc.join("self/mountinfo")).ok()?;
            Cgroup2::from_mountinfo(&text)
        }
    }
}

/// Resolves one `(cgroup id, pid)`; pid 0 means unknown. Also says whether the answer depends
/// on the pid (it used the pid's cgroup v1 hierarchies) and must be cached under it.
///
/// The cgroup v2 path comes from /proc/PID/cgroup when that cgroup's inode is the id (the pid
/// is still in the cgroup of the event), else from a walk of the hierarchy. The container comes
/// from the v2 path, else, on cgroup v1/hybrid hosts where runtimes (docker's cgroupfs driver)
/// only create v1 cgroups, from the pid's v1 paths.
fn resolve(roots: &Roots, cgroup2: Option<&Cgroup2>, cgroup_id: u64, pid: u32) -> (Identity, bool) {
    let proc = (pid != 0)
        .then(|| fs::read_to_string(roots.proc.join(pid.to_string()).join("cgroup")).ok())
        .flatten()
        .map(|text| ProcCgroup::parse(&text));
    // Without a cgroup2 mount (a v1-only host) the id cannot be checked: trust the live pid.
    let pid_in_cgroup = proc.as_ref().is_some_and(|p| match (cgroup2, &p.v2) {
        (Some(c), Some(v2)) => c.matches(v2, cgroup_id),
        (Some(_), None) => false,
        (None, _) => true,
    });
    let cgroup_path = match (&proc, cgroup2) {
        (Some(p), Some(_)) if pid_in_cgroup => p.v2.clone(),
        (_, Some(c)) => c.find(cgroup_id, MAX_WALK_DIRS),
        (_, None) => None,
    };
    let v1 = proc
        .as_ref()
        .filter(|_| pid_in_cgroup)
        .map(ProcCgroup::v1_paths);
    let v1: Vec<&str> = v1.into_iter().flatten().collect();

    let mut per_pid = false;
    let mut container = cgroup_path.as_deref().and_then(path::container);
    if container.is_none() {
        container = v1.iter().find_map(|p| path::container(p));
        per_pid = container.is_some();
    }
    let mut systemd_unit = None;
    if container.is_none() {
        systemd_unit = cgroup_path.as_deref().and_then(path::systemd_unit);
        if systemd_unit.is_none() {
            // The v1 paths list name=systemd first: its tree is the one systemd names.
            systemd_unit = v1.first().and_then(|p| path::systemd_unit(p));
            per_pid = systemd_unit.is_some();
        }
    }
    if let Some(c) = container.as_mut() {
        meta::fill(roots, c);
    }
    let identity = Identity {
        cgroup_path,
        container,
        systemd_unit,
        per_pid,
    };
    (identity, per_pid)
}
