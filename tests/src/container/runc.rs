//! Bare runc containers shaped like containerd's CRI plugin's.

use super::*;

/// 32 random hex digits (a UUID without its dashes).
fn random_hex32() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("/proc/sys/kernel/random/uuid")
        .trim()
        .replace('-', "")
}

/// A pod as containerd's CRI plugin annotates its containers.
pub struct CriPod<'a> {
    pub pod: &'a str,
    pub namespace: &'a str,
    pub container: &'a str,
}

/// runc containers here create and remove kubepods cgroup parents: one at a time.
static CGROUP_PARENTS: Mutex<()> = Mutex::new(());

/// A container run by `runc run` (in the foreground, its stdout piped here) the way
/// containerd's CRI plugin would: the bundle in containerd's k8s.io task directory with the CRI
/// annotations, the Kubernetes cgroupfs driver's cgroup path
/// (`/kubepods/besteffort/pod<uid>/<id>`), and the test's network namespace.
pub struct RuncContainer {
    /// 64 hex digits.
    pub id: String,
    /// The pod UID (with dashes) in the cgroup path and the annotations.
    pub pod_uid: String,
    /// `linux.cgroupsPath`: `/kubepods/besteffort/pod<uid>/<id>`.
    pub cgroup_path: String,
    /// The peer's pid in the host's pid namespace.
    pub pid: u32,
    bundle: PathBuf,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
}

impl RuncContainer {
    /// Starts `rstt-peer --name COMM STEPS...` as the container's process, in `ns`, and reads
    /// its `pid 1` line.
    pub fn run(ns: &Netns, pod: &CriPod, comm: &str, steps: &[&str]) -> Self {
        require_root();
        assert!(
            Path::new(RUNC).exists(),
            "{RUNC} not found: the container tests need Debian's runc (docker.io brings it; \
             `./x test` installs it)"
        );
        let id = format!("{}{}", random_hex32(), random_hex32());
        let pod_uid = random_uuid();
        let cgroup_path = format!("/kubepods/besteffort/pod{pod_uid}/{id}");
        let bundle = Path::new(CONTAINERD_K8S_TASKS).join(&id);
        let args: Vec<String> = ["/rstt-peer", "--name", comm]
            .iter()
            .chain(steps)
            .map(|s| (*s).to_owned())
            .collect();
        let config = oci_config(ns, pod, &args, &pod_uid, &cgroup_path);
        write_bundle(&bundle, &config);
        // Held until the peer runs: `runc run` creates the kubepods parents by then.
        let guard = CGROUP_PARENTS.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = Command::new(RUNC)
            .args(["--root", RUNC_ROOT, "run", "--bundle"])
            .arg(&bundle)
            .arg("--pid-file")
            .arg(bundle.join("pid"))
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning runc");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        let mut c = Self {
            id,
            pod_uid,
            cgroup_path,
            pid: 0,
            bundle,
            child: Some(child),
            lines,
        };
        c.expect("pid 1");
        drop(guard);
        c.pid = read_pid_file(&c.bundle.join("pid"));
        c
    }
}

/// A random UUID, with its dashes (a pod UID).
fn random_uuid() -> String {
    let u = random_hex32();
    format!(
        "{}-{}-{}-{}-{}",
        &u[..8],
        &u[8..12],
        &u[12..16],
        &u[16..20],
        &u[20..]
    )
}

/// The bundle's config.json: the peer's process with `args`, in `ns`, with what containerd's CRI
/// plugin writes for a pod's container (annotations, cgroup path).
fn oci_config(
    ns: &Netns,
    pod: &CriPod,
    args: &[String],
    pod_uid: &str,
    cgroup_path: &str,
) -> serde_json::Value {
    let caps = ["CAP_NET_BIND_SERVICE", "CAP_KILL"];
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": pod.pod,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        ],
        // What containerd's CRI plugin writes for a pod's (non-sandbox) container.
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": pod.container,
            "io.kubernetes.cri.sandbox-id": format!("{}{}", random_hex32(), random_hex32()),
            "io.kubernetes.cri.sandbox-name": pod.pod,
            "io.kubernetes.cri.sandbox-namespace": pod.namespace,
            "io.kubernetes.cri.sandbox-uid": pod_uid,
        },
        "linux": {
            "cgroupsPath": cgroup_path,
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network", "path": format!("/run/netns/{}", ns.name)},
            ],
        },
    })
}

/// Makes the bundle: a rootfs holding only the static peer (and mount points), and `config`.
fn write_bundle(bundle: &Path, config: &serde_json::Value) {
    let rootfs = bundle.join("rootfs");
    for d in ["proc", "dev"] {
        std::fs::create_dir_all(rootfs.join(d))
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", rootfs.display()));
    }
    std::fs::copy(static_peer_bin(), rootfs.join("rstt-peer")).expect("copy rstt-peer");
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(config).expect("config.json"),
    )
    .expect("write config.json");
}

/// The pid in runc's `--pid-file`. `runc run` writes it (atomically) once the process runs:
/// maybe after the peer's first line, so this waits for it.
fn read_pid_file(file: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "runc wrote no pid file {} within 10 s",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Output for RuncContainer {
    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| {
                panic!(
                    "runc container {} printed nothing within 15 s (runc's errors, if any, are above)",
                    self.id
                )
            })
    }
}

impl Drop for RuncContainer {
    fn drop(&mut self) {
        let runc = |args: &[&str]| {
            let _ = Command::new(RUNC)
                .args(["--root", RUNC_ROOT])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        runc(&["kill", &self.id, "KILL"]);
        // `runc run` in the foreground removes the container when its process exits.
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        runc(&["delete", "--force", &self.id]);
        let _ = std::fs::remove_dir_all(&self.bundle);
        // runc removed the container's own cgroups; the kubepods parents it made are ours.
        let _guard = CGROUP_PARENTS.lock().unwrap_or_else(|e| e.into_inner());
        let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .chain([PathBuf::from("/sys/fs/cgroup")]);
        let pod = format!("kubepods/besteffort/pod{}", self.pod_uid);
        for h in hierarchies {
            for rel in [pod.as_str(), "kubepods/besteffort", "kubepods"] {
                // Fails, harmlessly, where another pod is still there.
                let _ = std::fs::remove_dir(h.join(rel));
            }
        }
    }
}
