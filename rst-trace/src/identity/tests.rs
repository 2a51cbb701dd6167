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

/// The identity stage: a report waits for its container and keeps its place behind a waiting
/// one; a cached identity passes at once.
#[test]
fn waiting_reports_keep_order() {
    use crate::{explain::Direction, filter::tests_support::report};

    let t = TempRoots::new("wait");
    let path = format!("/system.slice/docker-{DOCKER_ID}.scope");
    let id = t.cgroup(&path);
    t.process(77, &format!("0::{path}\n"));
    t.put(
        &t.roots.docker.join(DOCKER_ID).join("config.v2.json"),
        "docker-config.v2.json",
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut w = Waiting::start(t.roots.clone(), tx);
    let mut out = Vec::new();
    let mut in_container = report(Some(77), "nginx", 80, 4000, Direction::Sent);
    in_container.process.as_mut().unwrap().cgroup = id;
    // No cgroup id: nothing to resolve, but it must not overtake the report before it.
    let unknown = report(Some(78), "curl", 4000, 80, Direction::Received);
    w.submit(in_container.clone(), &mut out);
    w.submit(unknown, &mut out);
    assert!(out.is_empty());
    rx.blocking_recv().unwrap();
    w.answered(&mut out);
    assert_eq!(out.len(), 2);
    let p = out[0].process.as_ref().unwrap();
    let c = p.identity.as_ref().unwrap().container.as_ref().unwrap();
    assert_eq!((c.id.as_str(), c.runtime.as_str()), (DOCKER_ID, "docker"));
    assert_eq!(out[1].process.as_ref().unwrap().pid, 78);
    // Cached now: the next one passes at once.
    out.clear();
    w.submit(in_container, &mut out);
    assert_eq!(out.len(), 1);
    assert!(w.is_empty());
}

/// A cgroup warmed while its process lived (`Waiting::warm`, on the kernel's `CgroupSeen`) still
/// names the container once the process, its cgroup and the runtime's state are gone: on a
/// cgroup v2 host, and on a hybrid one (docker's cgroupfs driver), where the answer is the pid's.
#[test]
fn warmed_identity_outlives_its_process() {
    use crate::{explain::Direction, filter::tests_support::report};

    for hybrid in [false, true] {
        let t = TempRoots::new("warm");
        let (path, cgroup_file) = if hybrid {
            let file = format!(
                "12:pids:/docker/{DOCKER_ID}\n1:name=systemd:/docker/{DOCKER_ID}\n\
                 0::/system.slice/containerd.service\n"
            );
            ("/system.slice/containerd.service".to_owned(), file)
        } else {
            let path = format!("/system.slice/docker-{DOCKER_ID}.scope");
            let file = format!("0::{path}\n");
            (path, file)
        };
        let id = t.cgroup(&path);
        t.process(77, &cgroup_file);
        let config = t.roots.docker.join(DOCKER_ID).join("config.v2.json");
        t.put(&config, "docker-config.v2.json");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut w = Waiting::start(t.roots.clone(), tx);
        w.warm(id, 77);
        rx.blocking_recv().unwrap();
        // The process exits; the runtime removes its cgroup and its state.
        fs::remove_dir_all(t.roots.proc.join("77")).unwrap();
        fs::remove_file(&config).unwrap();
        if !hybrid {
            fs::remove_dir(t.dir.join("cgroup2").join(path.trim_start_matches('/'))).unwrap();
        }
        let mut r = report(Some(77), "web", 80, 4000, Direction::Sent);
        r.process.as_mut().unwrap().cgroup = id;
        let mut out = Vec::new();
        w.submit(r, &mut out);
        assert_eq!(out.len(), 1, "hybrid {hybrid}: the identity was cached");
        let p = out[0].process.as_ref().unwrap();
        let c = p.identity.as_ref().unwrap().container.as_ref().unwrap();
        assert_eq!(
            (c.id.as_str(), c.name.as_deref()),
            (DOCKER_ID, Some("web-1"))
        );
    }
}

/// A storm behind a slow look-up: at most MAX_QUEUED reports wait, the oldest going on (without
/// its identity if it has none yet), and the queue's buffer never grows past that.
#[test]
fn waiting_queue_stays_within_its_bound() {
    use crate::{explain::Direction, filter::tests_support::report};

    let t = TempRoots::new("bound");
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let mut w = Waiting::start(t.roots.clone(), tx);
    let mut out = Vec::new();
    let extra = 10;
    for i in 0..wait::MAX_QUEUED + extra {
        let mut r = report(Some(1000), "storm", 80, 4000, Direction::Sent);
        // A cgroup id no directory has: never in the cache while the queue fills.
        r.process.as_mut().unwrap().cgroup = u64::MAX - i as u64;
        w.submit(r, &mut out);
    }
    // At least the overflow went on (more if the resolver answered meanwhile: its answer for
    // an unknown cgroup is cached too), and no more was held than the bound.
    assert!(out.len() >= extra, "{}", out.len());
    assert!(w.gave_up <= out.len() as u64);
    assert!(w.capacity() <= wait::MAX_QUEUED, "{}", w.capacity());
}

/// `--container` matches a name, the Kubernetes container name or an id prefix; `--pod` a
/// pod, with or without its namespace.
#[test]
fn container_and_pod_filters() {
    use crate::filter::Filter;

    let mut c = Container::new(DOCKER_ID, Runtime::Docker);
    c.name = Some("k8s_web_web-0_shop_uid_0".into());
    c.container_name = Some("web".into());
    c.pod = Some("web-0".into());
    c.namespace = Some("shop".into());
    let identity = Identity {
        container: Some(c),
        ..Identity::default()
    };
    let filter = |containers: &[&str], pods: &[(Option<&str>, &str)]| Filter {
        containers: containers.iter().map(|s| (*s).to_owned()).collect(),
        pods: pods
            .iter()
            .map(|(ns, p)| (ns.map(str::to_owned), (*p).to_owned()))
            .collect(),
        ..Filter::default()
    };
    for yes in [
        &["web"][..],
        &["3f1c9a5e7b2d"],
        &["k8s_web_web-0_shop_uid_0"],
        &["x", "web"],
    ] {
        assert!(
            filter(yes, &[]).identity_matches(Some(&identity)),
            "{yes:?}"
        );
    }
    for no in [&["db"][..], &["3f1"], &["3f1c9a5e7b2e"]] {
        assert!(!filter(no, &[]).identity_matches(Some(&identity)), "{no:?}");
    }
    assert!(filter(&[], &[(None, "web-0")]).identity_matches(Some(&identity)));
    assert!(filter(&[], &[(Some("shop"), "web-0")]).identity_matches(Some(&identity)));
    assert!(!filter(&[], &[(Some("dev"), "web-0")]).identity_matches(Some(&identity)));
    assert!(!filter(&["web"], &[]).identity_matches(Some(&Identity::default())));
    assert!(!filter(&["web"], &[]).identity_matches(None));
    assert!(filter(&[], &[]).identity_matches(None));
}
