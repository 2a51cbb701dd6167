//! Pods as a kubelet makes them: through the CRI API (k8s-cri's gRPC client over the unix
//! socket) of a real containerd ([`daemon`]). A sandbox with its own network namespace (CNI's
//! bridge), the Kubernetes cgroupfs driver's cgroup parent (`/kubepods/besteffort/pod<uid>`),
//! and one container of the peer's image. containerd writes the bundle, its annotations and the
//! cgroup path itself: the test only reads them back.

mod daemon;
mod log;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{self as cri, runtime_service_client::RuntimeServiceClient};
use rst_trace_tests::container::Output;
use tonic::transport::{Channel, Endpoint, Uri};

/// The tests' containerd, started if need be, with the images imported: before a test's
/// tracer whose `--duration` must not run out while containerd starts.
pub fn ready() {
    daemon::ready();
}

/// A pod: its name and namespace, and its one container's name.
pub struct CriPod<'a> {
    pub pod: &'a str,
    pub namespace: &'a str,
    pub container: &'a str,
}

/// A CRI client on its own single-threaded runtime (the tests are synchronous).
struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl Cri {
    fn connect() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let channel = rt
            .block_on(
                // The URI is not used: every connection is the unix socket. A containerd that
                // hangs fails the test instead of holding it.
                Endpoint::from_static("http://[::]:0")
                    .timeout(Duration::from_secs(60))
                    .connect_with_connector(tower::service_fn(|_: Uri| async {
                        let s = tokio::net::UnixStream::connect(daemon::SOCK).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(s))
                    })),
            )
            .unwrap_or_else(|e| panic!("connecting to the CRI service at {}: {e}", daemon::SOCK));
        Self {
            rt,
            client: RuntimeServiceClient::new(channel),
        }
    }
}

/// Runs one CRI call, panicking with its status and containerd's log unless it succeeds.
macro_rules! call {
    ($cri:expr, $method:ident, $req:expr) => {{
        let c = &mut *$cri;
        c.rt.block_on(c.client.$method($req))
            .unwrap_or_else(|e| {
                panic!(
                    "CRI {}: {e}\ncontainerd's log ends with:\n{}",
                    stringify!($method),
                    daemon::log_tail()
                )
            })
            .into_inner()
    }};
}

/// Pods here create and remove kubepods cgroup parents: one at a time.
static CGROUP_PARENTS: Mutex<()> = Mutex::new(());

/// A pod's container run through CRI, its output read from the log file containerd writes (the
/// kubelet's `kubectl logs` file). Stopped and removed, with its pod, on drop.
pub struct CriContainer {
    /// The container id containerd chose (64 hex digits).
    pub id: String,
    /// The pod UID, with dashes.
    pub pod_uid: String,
    /// `linux.cgroupsPath` of the bundle containerd wrote: `/kubepods/besteffort/pod<uid>/<id>`.
    pub cgroup_path: String,
    /// The peer's pid in the host's pid namespace.
    pub pid: u32,
    /// The pod's address on the CNI bridge.
    pub ip: String,
    sandbox: String,
    cri: Cri,
    logs: PathBuf,
    lines: mpsc::Receiver<String>,
    stop_tail: Arc<AtomicBool>,
}

/// A random UUID, with its dashes (a pod UID).
fn random_uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("/proc/sys/kernel/random/uuid")
        .trim()
        .to_owned()
}

/// The sandbox config a kubelet sends for a best-effort pod with the cgroupfs driver: its own
/// network namespace, the pod's name, namespace and UID.
fn sandbox_config(pod: &CriPod, uid: &str, logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: pod.pod.to_owned(),
            uid: uid.to_owned(),
            namespace: pod.namespace.to_owned(),
            attempt: 0,
        }),
        hostname: "rstt-pod".to_owned(),
        labels: [(PID_LABEL.to_owned(), std::process::id().to_string())].into(),
        log_directory: logs.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl CriContainer {
    /// Creates the pod and starts `rstt-peer --name COMM STEPS...` as its container, then reads
    /// its `pid 1` line.
    pub fn run(pod: &CriPod, comm: &str, steps: &[&str]) -> Self {
        let image = daemon::ready();
        let mut cri = Cri::connect();
        remove_orphans(&mut cri);
        let pod_uid = random_uuid();
        let logs = Path::new(daemon::LOGS).join(&pod_uid);
        std::fs::create_dir_all(&logs).expect("the pod's log directory");
        let config = sandbox_config(pod, &pod_uid, &logs);
        // Made first, so that its drop removes whatever part of the pod exists if a step fails
        // (a failed RunPodSandbox may leave the pod's cgroups).
        let mut c = Self {
            id: String::new(),
            pod_uid,
            cgroup_path: String::new(),
            pid: 0,
            ip: String::new(),
            sandbox: String::new(),
            cri,
            logs,
            lines: mpsc::channel().1,
            stop_tail: Arc::new(AtomicBool::new(false)),
        };
        // Held until the container runs (runc creates the kubepods parents by then); dropped
        // before `c` if a step panics, as `c`'s drop takes it too.
        let guard = CGROUP_PARENTS.lock().unwrap_or_else(|e| e.into_inner());
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        c.sandbox = call!(&mut c.cri, run_pod_sandbox, req).pod_sandbox_id;
        c.create_and_start(config, pod.container, image, comm, steps);
        drop(guard);
        c.read_status();
        c.expect("pid 1");
        c
    }

    fn create_and_start(
        &mut self,
        sandbox_config: cri::PodSandboxConfig,
        name: &str,
        image: &str,
        comm: &str,
        steps: &[&str],
    ) {
        let head = ["--name", comm];
        let args = head.iter().chain(steps);
        let log_path = format!("{name}.log");
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.to_owned(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            // The image's entrypoint (/rstt-peer) with these arguments.
            args: args.map(|s| (*s).to_owned()).collect(),
            log_path: log_path.clone(),
            // As a kubelet does without shareProcessNamespace: the pod's network and IPC, a pid
            // namespace of the container's own.
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: sandbox_config
                        .linux
                        .as_ref()
                        .and_then(|l| l.security_context.as_ref())
                        .and_then(|s| s.namespace_options.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: self.sandbox.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        self.id = call!(&mut self.cri, create_container, req).container_id;
        (self.lines, self.stop_tail) = log::follow(self.logs.join(log_path));
        let req = cri::StartContainerRequest {
            container_id: self.id.clone(),
        };
        call!(&mut self.cri, start_container, req);
    }

    /// The pid and cgroup path from containerd's verbose status (its own record of the task and
    /// of the OCI spec it wrote), and the pod's address.
    fn read_status(&mut self) {
        let req = cri::ContainerStatusRequest {
            container_id: self.id.clone(),
            verbose: true,
        };
        let status = call!(&mut self.cri, container_status, req);
        let info: serde_json::Value = status
            .info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or_else(|| panic!("no verbose info in ContainerStatus: {:?}", status.info));
        self.pid = info["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or_else(|| panic!("no pid in ContainerStatus info: {info:#}"));
        self.cgroup_path = info["runtimeSpec"]["linux"]["cgroupsPath"]
            .as_str()
            .unwrap_or_else(|| panic!("no cgroupsPath in ContainerStatus info: {info:#}"))
            .to_owned();
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: self.sandbox.clone(),
            verbose: false,
        };
        let status = call!(&mut self.cri, pod_sandbox_status, req);
        self.ip = status
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty())
            .unwrap_or_else(|| panic!("pod sandbox {} has no IP address", self.sandbox));
    }
}

impl CriContainer {
    /// The OCI bundle's config.json containerd wrote for the container: what rst-trace reads.
    pub fn bundle_config(&self) -> serde_json::Value {
        let file = Path::new(daemon::TASKS).join(&self.id).join("config.json");
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("containerd's bundle {}: {e}", file.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    }
}

impl Output for CriContainer {
    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| {
                panic!(
                    "CRI container {} printed nothing within 15 s (its log: {}); containerd's \
                     log ends with:\n{}",
                    self.id,
                    self.logs.display(),
                    daemon::log_tail()
                )
            })
    }
}

impl Drop for CriContainer {
    fn drop(&mut self) {
        self.stop_tail.store(true, Ordering::Relaxed);
        let (cri, sandbox, id) = (&mut self.cri, self.sandbox.clone(), self.id.clone());
        // Errors are ignored: the pod may be half made, and a failed test must still clean up.
        if !id.is_empty() {
            let req = cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: 0,
            };
            let _ = cri.rt.block_on(cri.client.stop_container(req));
            let req = cri::RemoveContainerRequest { container_id: id };
            let _ = cri.rt.block_on(cri.client.remove_container(req));
        }
        remove_pod(cri, &sandbox, &self.pod_uid);
    }
}

/// Stops and removes a pod sandbox (with whatever containers are left in it), its logs and its
/// kubepods cgroups. Errors are ignored: it may be half made, or gone already.
fn remove_pod(cri: &mut Cri, sandbox: &str, pod_uid: &str) {
    if !sandbox.is_empty() {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: sandbox.to_owned(),
        };
        let _ = cri.rt.block_on(cri.client.stop_pod_sandbox(req));
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox.to_owned(),
        };
        let _ = cri.rt.block_on(cri.client.remove_pod_sandbox(req));
    }
    let _ = std::fs::remove_dir_all(Path::new(daemon::LOGS).join(pod_uid));
    remove_kubepods_parents(pod_uid);
}

/// The label naming the test process that made a pod.
const PID_LABEL: &str = "rstt-test-pid";

/// Removes, once per process, the pods of test processes that are gone (killed before their
/// drop ran), so that the containerd kept across runs does not collect them, nor run out of
/// the bridge's addresses.
fn remove_orphans(cri: &mut Cri) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let req = cri::ListPodSandboxRequest { filter: None };
        for pod in call!(cri, list_pod_sandbox, req).items {
            let Some(pid) = pod.labels.get(PID_LABEL) else {
                continue;
            };
            if Path::new("/proc").join(pid).exists() {
                continue;
            }
            let uid = pod.metadata.map(|m| m.uid).unwrap_or_default();
            remove_pod(cri, &pod.id, &uid);
        }
    });
}

/// runc removed the pod's containers' cgroups; the kubepods parents (a kubelet's, on a node) are
/// ours to remove, where no other pod is left in them.
fn remove_kubepods_parents(pod_uid: &str) {
    let _guard = CGROUP_PARENTS.lock().unwrap_or_else(|e| e.into_inner());
    let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain([PathBuf::from("/sys/fs/cgroup")]);
    let pod = format!("kubepods/besteffort/pod{pod_uid}");
    let deadline = Instant::now() + Duration::from_secs(5);
    for h in hierarchies {
        for rel in [pod.as_str(), "kubepods/besteffort", "kubepods"] {
            // Fails, harmlessly, where another pod is still there. The pod's own cgroup may
            // take a moment to empty after its sandbox is removed.
            while std::fs::remove_dir(h.join(rel)).is_err_and(|e| e.raw_os_error() == Some(16))
                && rel == pod
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
