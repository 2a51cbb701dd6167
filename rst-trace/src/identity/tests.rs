//! Resolution end to end, on a temporary host tree, and on this very process.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::Duration,
};

use super::*;

/// A temporary directory laid out like a host (proc, cgroup2 mount, runtimes' state), removed
/// on drop.
pub struct TempRoots {
    pub dir: PathBuf,
    pub roots: Roots,
}

impl TempRoots {
    pub fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "rst-trace-identity-{name}-{}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let roots = Roots {
            proc: dir.join("proc"),
            cgroup2: Some(dir.join("cgroup2")),
            docker: dir.join("var/lib/docker/containers"),
            containerd: vec![dir.join("run/containerd/io.containerd.runtime.v2.task")],
            crio: dir.join("run/containers/storage/overlay-containers"),
            podman: dir.join("var/lib/containers/storage/overlay-containers"),
        };
        Self { dir, roots }
    }

    /// Makes cgroup `path` in the fake hierarchy; returns its id (inode).
    fn cgroup(&self, path: &str) -> u64 {
        let dir = self.dir.join("cgroup2").join(path.trim_start_matches('/'));
        fs::create_dir_all(&dir).unwrap();
        fs::metadata(&dir).unwrap().ino()
    }

    fn process(&self, pid: u32, cgroup_file: &str) {
        let dir = self.roots.proc.join(pid.to_string());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup"), cgroup_file).unwrap();
    }

    fn put(&self, path: &Path, fixture: &str) {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cgroup")
            .join(fixture);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::copy(src, path).unwrap();
    }

    fn resolve(&self, cgroup_id: u64, pid: u32) -> (Identity, bool) {
        let cgroup2 = cgroup2_mount(&self.roots);
        resolve(&self.roots, cgroup2.as_ref(), cgroup_id, pid)
    }
}

impl Drop for TempRoots {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

const DOCKER_ID: &str = "3f1c9a5e7b2d4c6a8e0f1b3d5c7e9a1b2c4d6e8f0a1b3c5d7e9f1a2b4c6d8e0f";
const CONTAINERD_ID: &str = "5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c";
const POD: &str = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a9b8c7d_6e5f_4a3b_2c1d_0e9f8a7b6c5d.slice";

#[test]
fn pure_v2_kubernetes() {
    let t = TempRoots::new("v2");
    let path = format!("{POD}/cri-containerd-{CONTAINERD_ID}.scope");
    let id = t.cgroup(&path);
    t.process(4242, &format!("0::{path}\n"));
    let bundle = t.roots.containerd[0]
        .join("k8s.io")
        .join(CONTAINERD_ID)
        .join("config.json");
    t.put(&bundle, "containerd-config.json");

    let (identity, per_pid) = t.resolve(id, 4242);
    assert!(!per_pid);
    assert_eq!(identity.cgroup_path.as_deref(), Some(path.as_str()));
    assert_eq!(identity.systemd_unit, None);
    let c = identity.container.unwrap();
    assert_eq!(
        (c.id.as_str(), &c.runtime),
        (CONTAINERD_ID, &Runtime::Containerd)
    );
    assert_eq!(c.pod.as_deref(), Some("gateway-5c8b7d9f4-qw7zt"));
    assert_eq!(c.namespace.as_deref(), Some("edge"));
    assert_eq!(c.container_name.as_deref(), Some("envoy"));
    assert_eq!(
        c.pod_uid.as_deref(),
        Some("0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d")
    );

    // The pid gone (or moved): the same answer from the walk.
    let (walked, _) = t.resolve(id, 0);
    assert_eq!(walked.cgroup_path.as_deref(), Some(path.as_str()));
    assert_eq!(
        walked.container.unwrap().container_name.as_deref(),
        Some("envoy")
    );
    // A pid now elsewhere: its /proc file is not believed, the walk is.
    t.process(4243, "0::/system.slice/sshd.service\n");
    t.cgroup("/system.slice/sshd.service");
    let (moved, per_pid) = t.resolve(id, 4243);
    assert_eq!(
        (moved.cgroup_path.as_deref(), per_pid),
        (Some(path.as_str()), false)
    );
}

#[test]
fn hybrid_docker_cgroupfs() {
    // Docker's cgroupfs driver on a hybrid host: the unified hierarchy only shows the shim's
    // service; the container is named in the v1 hierarchies.
    let t = TempRoots::new("hybrid");
    let id = t.cgroup("/system.slice/containerd.service");
    let cgroup_file = format!(
        "12:pids:/docker/{DOCKER_ID}\n4:memory:/docker/{DOCKER_ID}\n\
         1:name=systemd:/docker/{DOCKER_ID}\n0::/system.slice/containerd.service\n"
    );
    t.process(77, &cgroup_file);
    t.put(
        &t.roots.docker.join(DOCKER_ID).join("config.v2.json"),
        "docker-config.v2.json",
    );

    let (identity, per_pid) = t.resolve(id, 77);
    assert!(per_pid, "the v2 id does not determine the container");
    assert_eq!(
        identity.cgroup_path.as_deref(),
        Some("/system.slice/containerd.service")
    );
    let c = identity.container.unwrap();
    assert_eq!(
        (c.runtime, c.name.as_deref()),
        (Runtime::Docker, Some("web-1"))
    );
    assert_eq!(identity.systemd_unit, None);
}

#[test]
fn systemd_service() {
    let t = TempRoots::new("unit");
    let id = t.cgroup("/system.slice/nginx.service");
    t.process(
        10,
        "1:name=systemd:/system.slice/nginx.service\n0::/system.slice/nginx.service\n",
    );
    let (identity, per_pid) = t.resolve(id, 10);
    assert_eq!(identity.systemd_unit.as_deref(), Some("nginx.service"));
    assert_eq!((identity.container, per_pid), (None, false));
    // A cgroup that no longer exists: nothing, and no panic.
    let (gone, _) = t.resolve(u64::MAX, 11);
    assert_eq!(gone, Identity::default());
}

/// Not a sample: this test process, its pid and the cgroup v2 id of its own cgroup.
#[test]
fn this_process() {
    let text = fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = ProcCgroup::parse(&text);
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let (Some(v2), Some(mount)) = (own.v2, Cgroup2::from_mountinfo(&mountinfo)) else {
        eprintln!("no cgroup v2 hierarchy here: skipped");
        return;
    };
    let rel = v2.strip_prefix(mount.root.as_str()).unwrap_or(&v2);
    let dir = mount.mount.join(rel.trim_start_matches('/'));
    let cgroup_id = fs::metadata(&dir).unwrap().ino();
    let roots = Roots::default();
    let (identity, _) = resolve(&roots, Some(&mount), cgroup_id, std::process::id());
    assert_eq!(identity.cgroup_path.as_deref(), Some(v2.as_str()));
    // Without the pid, the walk finds the same cgroup (a host with very many cgroups could
    // exceed the walk's bound; then there is nothing to compare).
    let (walked, _) = resolve(&roots, Some(&mount), cgroup_id, 0);
    if let Some(p) = walked.cgroup_path {
        assert_eq!(p.trim_end_matches('/'), v2.trim_end_matches('/'));
    }
}

#[test]
fn resolver_answers_and_caches() {
    let t = TempRoots::new("resolver");
    let id = t.cgroup("/system.slice/nginx.service");
    t.process(10, "0::/system.slice/nginx.service\n");
    let (tx, rx) = mpsc::channel();
    let resolver = Resolver::start(t.roots.clone(), move |cg, pid, identity| {
        let _ = tx.send((cg, pid, identity));
    });
    assert!(resolver.get(id, 10).is_none());
    assert!(resolver.request(id, 10));
    let (cg, pid, identity) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((cg, pid), (id, 10));
    assert_eq!(identity.systemd_unit.as_deref(), Some("nginx.service"));
    // Cached for the cgroup, whatever the pid.
    let hit = resolver.get(id, 99).unwrap();
    assert!(Arc::ptr_eq(&hit, &identity));
    assert_eq!(resolver.dropped(), 0);
}

#[test]
fn full_queue_drops_and_counts() {
    let t = TempRoots::new("queue");
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let (done_tx, done) = mpsc::channel();
    // The first answer blocks the thread until released, so the queue fills deterministically.
    let resolver = Resolver::with_bounds(t.roots.clone(), 8, 2, move |cg, _, _| {
        if cg == 1 {
            entered_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        }
        done_tx.send(cg).unwrap();
    });
    assert!(resolver.request(1, 0));
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(resolver.request(2, 0));
    assert!(resolver.request(3, 0));
    for n in 4..9 {
        assert!(!resolver.request(n, 0), "request {n} should be dropped");
    }
    assert_eq!(resolver.dropped(), 5);
    release.send(()).unwrap();
    let answered: Vec<u64> = (0..3)
        .map(|_| done.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    assert_eq!(answered, [1, 2, 3]);
    assert!(
        resolver.request(9, 0),
        "room again once the thread caught up"
    );
}
