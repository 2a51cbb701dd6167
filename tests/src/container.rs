//! Real containers for the container tests (tests/tests/containers.rs): a docker image built
//! here `FROM scratch` holding the static (musl) test peer, docker containers running it, and
//! bare `runc` containers shaped like those containerd's CRI plugin starts for a kubelet (CRI
//! annotations in the bundle's config.json, a kubepods cgroupfs path).
//!
//! No registry is needed: the image is built locally (`DOCKER_BUILDKIT=0`), once per peer
//! binary (its tag is the binary's hash), and reused. Containers are removed on drop.
//!
//! Docker must answer (`./x test` installs Debian's docker.io and starts dockerd; `./x docker`
//! does only that). Without it the tests fail, saying why: they never skip.

use std::{
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock, atomic::Ordering, mpsc},
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{Netns, SEQ, peer_bin, require_root};

/// Debian's docker CLI: a `docker` earlier on PATH may be another one (this project's VMs have
/// an unrelated one in /usr/local/bin).
pub const DOCKER: &str = "/usr/bin/docker";
/// Debian's runc (docker.io depends on it).
pub const RUNC: &str = "/usr/sbin/runc";
/// Where `./x` logs the dockerd it starts (xtask/src/docker.rs).
const DOCKERD_LOG: &str = "/var/log/rst-trace-dockerd.log";
/// runc's state for the containers made here, apart from docker's.
const RUNC_ROOT: &str = "/run/rstt-runc";
/// containerd's task directory for the Kubernetes namespace: where containerd keeps each
/// container's OCI bundle, and where rst-trace looks for its annotations.
pub const CONTAINERD_K8S_TASKS: &str = "/run/containerd/io.containerd.runtime.v2.task/k8s.io";
const MUSL: &str = "x86_64-unknown-linux-musl";

/// Runs a command, returning its trimmed stdout; panics with its stderr unless it succeeds.
fn output(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn docker(args: &[&str]) -> String {
    output(Command::new(DOCKER).args(args))
}

/// Panics, saying why and what to do, unless dockerd answers `docker info`.
pub fn require_docker() {
    require_root();
    static OK: OnceLock<Result<(), String>> = OnceLock::new();
    let ok = OK.get_or_init(|| {
        if !Path::new(DOCKER).exists() {
            return Err(format!(
                "{DOCKER} not found: the container tests need Debian's docker.io \
                 (`./x test` installs it and starts dockerd; `./x docker` does only that)"
            ));
        }
        let out = Command::new(DOCKER)
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {DOCKER} info: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        // `docker info`'s own error is a template's; `docker version` says what is wrong.
        let why = Command::new(DOCKER)
            .args(["version", "--format", "{{.Server.Version}}"])
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
            .unwrap_or_default();
        Err(format!(
            "dockerd does not answer `{DOCKER} info` ({why}): the container tests need a \
             running dockerd (`./x docker` starts one; its log is {DOCKERD_LOG})"
        ))
    });
    if let Err(why) = ok {
        panic!("{why}");
    }
}

/// A name unique to this test process and call: `rstt-TAG-PID-N`.
pub fn unique_name(tag: &str) -> String {
    format!(
        "rstt-{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The static (musl) build of the test peer, for images without a libc: `RSTT_PEER_STATIC` if
/// set, else built here with cargo (once per process; a no-op when it is up to date).
pub fn static_peer_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("RSTT_PEER_STATIC") {
            return PathBuf::from(p);
        }
        // target/release/rstt-peer -> target
        let target = peer_bin()
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        output(
            Command::new(cargo)
                .current_dir(workspace)
                .args(["build", "--quiet", "--release", "--target", MUSL])
                .args([
                    "-p",
                    "rst-trace-tests",
                    "--bin",
                    "rstt-peer",
                    "--target-dir",
                ])
                .arg(&target),
        );
        let bin = target.join(MUSL).join("release/rstt-peer");
        assert!(bin.is_file(), "{} not built", bin.display());
        bin
    })
    .clone()
}

/// FNV-1a: the image tag names the binary it holds, so that concurrent runs of other
/// checkouts never swap it under each other.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

const DOCKERFILE: &str = "FROM scratch\nCOPY rstt-peer /rstt-peer\nENTRYPOINT [\"/rstt-peer\"]\n";

/// The image `rstt-peer:<hash>`: `FROM scratch`, `/rstt-peer` as its entrypoint. Built once
/// per binary (docker keeps it), checked once per process.
pub fn peer_image() -> String {
    require_docker();
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let bin = static_peer_bin();
            let bytes = std::fs::read(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
            let tag = format!(
                "rstt-peer:{:016x}",
                fnv1a(DOCKERFILE.as_bytes()) ^ fnv1a(&bytes)
            );
            let have = Command::new(DOCKER)
                .args(["image", "inspect", "--format", "{{.Id}}", &tag])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if have {
                return tag;
            }
            let ctx = std::env::temp_dir().join(format!("rstt-image-{}", std::process::id()));
            std::fs::create_dir_all(&ctx).expect("image context dir");
            std::fs::write(ctx.join("rstt-peer"), &bytes).expect("copy rstt-peer");
            std::fs::set_permissions(
                ctx.join("rstt-peer"),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .expect("chmod rstt-peer");
            std::fs::write(ctx.join("Dockerfile"), DOCKERFILE).expect("Dockerfile");
            output(
                Command::new(DOCKER)
                    .args(["build", "--quiet", "--tag", &tag])
                    .arg(&ctx)
                    // No registry is reachable: the classic builder needs none for FROM scratch.
                    .env("DOCKER_BUILDKIT", "0"),
            );
            let _ = std::fs::remove_dir_all(&ctx);
            tag
        })
        .clone()
}

/// Lines a child prints, as they come.
fn lines_of(out: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// What a containerised peer printed, line by line (like [`crate::Peer`]'s).
pub trait Output {
    /// The next line the peer printed (15 s at most).
    fn line(&self) -> String;

    /// Asserts the next line.
    fn expect(&self, want: &str) {
        assert_eq!(self.line(), want, "containerised peer's output");
    }
}

/// `docker run -d` options: `DockerRun::new("web").label(k, v).host_network().run(comm, steps)`.
pub struct DockerRun {
    name: String,
    labels: Vec<(String, String)>,
    host_network: bool,
}

impl DockerRun {
    /// A container named `rstt-TAG-<unique>` on docker's default bridge.
    pub fn new(tag: &str) -> Self {
        Self {
            name: unique_name(tag),
            labels: Vec::new(),
            host_network: false,
        }
    }

    /// The name it will run under (known before it runs, for `--container NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The labels cri-dockerd sets on a Kubernetes pod's container.
    pub fn k8s(self, pod: &str, namespace: &str, container: &str) -> Self {
        self.label("io.kubernetes.pod.name", pod)
            .label("io.kubernetes.pod.namespace", namespace)
            .label("io.kubernetes.container.name", container)
    }

    /// `--network host`: the host's network namespace (the container's cgroup still tells it
    /// apart).
    pub fn host_network(mut self) -> Self {
        self.host_network = true;
        self
    }

    /// Starts `rstt-peer --name COMM STEPS...` in the container and reads its `pid 1` line.
    pub fn run(self, comm: &str, steps: &[&str]) -> DockerContainer {
        let image = peer_image();
        let mut cmd = Command::new(DOCKER);
        cmd.args(["run", "--detach", "--name", &self.name]);
        for (k, v) in &self.labels {
            cmd.arg("--label").arg(format!("{k}={v}"));
        }
        if self.host_network {
            cmd.args(["--network", "host"]);
        }
        cmd.arg(&image).args(["--name", comm]).args(steps);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        if !out.status.success() {
            // It may have been created and failed to start: leave nothing behind.
            let _ = Command::new(DOCKER)
                .args(["rm", "--force", &self.name])
                .output();
            panic!(
                "{cmd:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        // From here on the container exists: remove it even if the rest fails.
        let mut c = DockerContainer {
            id,
            name: self.name,
            ip: String::new(),
            pid: 0,
            logs: None,
            lines: mpsc::channel().1,
        };
        assert!(
            c.id.len() == 64 && c.id.bytes().all(|b| b.is_ascii_hexdigit()),
            "docker run printed {:?}, not a container id",
            c.id
        );
        let inspect = docker(&[
            "inspect",
            "--format",
            "{{.State.Pid}} {{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &c.id,
        ]);
        let mut f = inspect.split_whitespace();
        c.pid = f
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("docker inspect {}: {inspect:?}", c.name));
        c.ip = match f.next() {
            Some(ip) if !self.host_network => ip.to_owned(),
            _ if self.host_network => "127.0.0.1".to_owned(),
            _ => panic!("container {} has no IP address: {inspect:?}", c.name),
        };
        let mut logs = Command::new(DOCKER)
            .args(["logs", "--follow", &c.id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning docker logs");
        c.lines = lines_of(logs.stdout.take().expect("stdout"));
        c.logs = Some(logs);
        // The peer's own pid, in the container's pid namespace.
        c.expect("pid 1");
        c
    }
}

/// A running docker container (of [`peer_image`]), removed on drop.
pub struct DockerContainer {
    /// The full container id (64 hex digits).
    pub id: String,
    pub name: String,
    /// Its address on docker's bridge (127.0.0.1 with `--network host`).
    pub ip: String,
    /// The peer's pid in the host's pid namespace (`State.Pid`).
    pub pid: u32,
    logs: Option<Child>,
    lines: mpsc::Receiver<String>,
}

impl Output for DockerContainer {
    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| {
                let state = Command::new(DOCKER)
                    .args(["inspect", "--format", "{{json .State}}", &self.id])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                panic!(
                    "container {} printed nothing within 15 s; state: {state}",
                    self.name
                )
            })
    }
}

impl Drop for DockerContainer {
    fn drop(&mut self) {
        let _ = Command::new(DOCKER)
            .args(["rm", "--force", "--volumes", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut l) = self.logs.take() {
            let _ = l.kill();
            let _ = l.wait();
        }
    }
}

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
        let u = random_hex32();
        let pod_uid = format!(
            "{}-{}-{}-{}-{}",
            &u[..8],
            &u[8..12],
            &u[12..16],
            &u[16..20],
            &u[20..]
        );
        let cgroup_path = format!("/kubepods/besteffort/pod{pod_uid}/{id}");
        let bundle = Path::new(CONTAINERD_K8S_TASKS).join(&id);
        let rootfs = bundle.join("rootfs");
        for d in ["proc", "dev"] {
            std::fs::create_dir_all(rootfs.join(d))
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", rootfs.display()));
        }
        std::fs::copy(static_peer_bin(), rootfs.join("rstt-peer")).expect("copy rstt-peer");
        let args: Vec<String> = ["/rstt-peer", "--name", comm]
            .iter()
            .chain(steps)
            .map(|s| (*s).to_owned())
            .collect();
        let caps = ["CAP_NET_BIND_SERVICE", "CAP_KILL"];
        let config = json!({
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
        });
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&config).expect("config.json"),
        )
        .expect("write config.json");
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
        // `runc run` writes its pid file (atomically) once the process runs: maybe after the
        // peer's first line.
        let file = c.bundle.join("pid");
        let deadline = Instant::now() + Duration::from_secs(10);
        c.pid = loop {
            if let Some(pid) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "runc wrote no pid file {} within 10 s",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        c
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
