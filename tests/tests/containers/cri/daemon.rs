//! The tests' own containerd with its CRI service, as a kubelet's node runs it: Debian's
//! containerd, with a config, root, state directory and socket of its own (so that it never
//! meets the containerd dockerd runs, nor a node's), runc with the cgroupfs driver (PID 1 here
//! is not systemd), and CNI's bridge plugin for the pods' own network namespaces.
//!
//! Started on first use, in the background, and left running for the next test processes (like
//! `./x`'s dockerd); a running one whose config is not this one's is stopped first. The images
//! are imported into its `k8s.io` namespace from docker (`docker save`): no registry is needed.

use std::{
    fs::OpenOptions,
    io::Write as _,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::Path,
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use rst_trace_tests::{
    container::{DOCKER, output, peer_image},
    require_root,
};

/// Its config, socket, CNI config and state.
const DIR: &str = "/run/rstt-containerd";
/// Its gRPC socket: the CRI service and containerd's own API.
pub const SOCK: &str = "/run/rstt-containerd/containerd.sock";
const CONFIG: &str = "/run/rstt-containerd/config.toml";
const PID_FILE: &str = "/run/rstt-containerd/containerd.pid";
/// Where this containerd keeps its Kubernetes containers' OCI bundles (`<TASKS>/<id>`).
pub const TASKS: &str = "/run/rstt-containerd/state/io.containerd.runtime.v2.task/k8s.io";
/// Where the pods' container logs go (`<DIR>/logs/<pod uid>/<container>.log`).
pub const LOGS: &str = "/run/rstt-containerd/logs";
/// Its images and snapshots: kept across runs (the images are small, and reimported anyway).
const ROOT: &str = "/var/lib/rstt-containerd";
const LOG: &str = "/var/log/rstt-containerd.log";
const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
const CNI_BIN: &str = "/usr/lib/cni";
/// The pods' sandbox ("pause") image: the peer holding still, imported as this name.
const SANDBOX_IMAGE: &str = "rstt-pause:cri";
/// The pods' bridge and subnet: an address on the host's side (the gateway), one per pod.
const BRIDGE: &str = "rstt-cri0";
const SUBNET: &str = "10.231.0.0/24";
/// How long its first start may take (it creates its state).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What this containerd runs with. `state` is not containerd's default (/run/containerd), so
/// rst-trace must find the bundles where this containerd keeps them.
fn config() -> String {
    format!(
        r#"# Written by rst-trace's tests (tests/tests/containers/cri/daemon.rs).
version = 2
root = "{ROOT}"
state = "{DIR}/state"
[grpc]
  address = "{SOCK}"
[ttrpc]
  address = "{SOCK}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/library/{SANDBOX_IMAGE}"
  # A sandbox asks for oom_score_adj -998, which needs CAP_SYS_RESOURCE: where containerd runs
  # without it (this project's machines), not below containerd's own, as rootless nodes do.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{DIR}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "{DIR}/runc"
        SystemdCgroup = false
"#
    )
}

/// The pods' network: a bridge on the host, an address from host-local (its leases in /run).
fn cni_conflist() -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "rstt-cri",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": SUBNET}]],
                    "dataDir": format!("{DIR}/cni-ipam"),
                },
            },
            {"type": "loopback"},
        ],
    })
    .to_string()
}

/// Panics, saying what is missing, unless Debian's containerd, runc and CNI plugins are here.
fn require_binaries() {
    let needs = [
        (CONTAINERD, "containerd"),
        (CTR, "containerd"),
        ("/usr/sbin/runc", "runc"),
        (&format!("{CNI_BIN}/bridge"), "containernetworking-plugins"),
        (
            &format!("{CNI_BIN}/host-local"),
            "containernetworking-plugins",
        ),
        (
            &format!("{CNI_BIN}/loopback"),
            "containernetworking-plugins",
        ),
    ];
    for (bin, package) in needs {
        assert!(
            Path::new(bin).exists(),
            "{bin} not found: the CRI tests need Debian's {package} (`./x test` installs it; \
             `./x docker` does only the container tests' needs)"
        );
    }
}

/// `ctr version` through the socket: whether it answers.
fn answers() -> bool {
    Command::new(CTR)
        .args(["--address", SOCK, "--timeout", "2s", "version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The containerd the tests use, running, with the images imported; returns the CRI image
/// reference of the peer's image. Once per process.
pub fn ready() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        require_root();
        require_binaries();
        std::fs::create_dir_all(format!("{DIR}/cni")).expect("containerd's directory");
        // Other test processes (other checkouts) may start it at the same time.
        let lock = OpenOptions::new()
            .create(true)
            .append(true)
            .open(format!("{DIR}/start.lock"))
            .expect("start.lock");
        // SAFETY: flock on a descriptor we own; released when `lock` closes.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let current = std::fs::read_to_string(CONFIG).is_ok_and(|c| c == config());
        if !(current && answers()) {
            stop_stale();
            start();
        }
        import_images()
    })
}

/// Stops the containerd a previous run started, if its config was another one.
fn stop_stale() {
    let Some(pid) = std::fs::read_to_string(PID_FILE)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "containerd" {
        return;
    }
    // SAFETY: signalling the containerd this file names (checked by its comm just above).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

// containerd is left running on purpose, for the next test processes: it is waited for only
// when it fails to start.
#[allow(clippy::zombie_processes)]
fn start() {
    std::fs::write(CONFIG, config()).expect("writing containerd's config");
    std::fs::write(format!("{DIR}/cni/10-rstt-cri.conflist"), cni_conflist())
        .expect("writing the CNI config");
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(LOG)
        .unwrap_or_else(|e| panic!("{LOG}: {e}"));
    let _ = writeln!(log, "--- started by rst-trace's tests ({CONFIG})");
    // Its own process group: it outlives this test process, and a ^C on the tests.
    let mut child = Command::new(CONTAINERD)
        .args(["--config", CONFIG])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {CONTAINERD}: {e}"));
    std::fs::write(PID_FILE, child.id().to_string()).expect("containerd.pid");
    let started = Instant::now();
    while !answers() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{CONTAINERD} --config {CONFIG} exited ({status}) before answering; {LOG} ends \
                 with:\n{}",
                log_tail()
            );
        }
        assert!(
            started.elapsed() < START_TIMEOUT,
            "{CONTAINERD} --config {CONFIG} did not answer on {SOCK} within {} s; {LOG} ends \
             with:\n{}",
            START_TIMEOUT.as_secs(),
            log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The end of containerd's log, for a failure's message.
pub fn log_tail() -> String {
    let text = std::fs::read_to_string(LOG).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Builds the sandbox image (the peer's image, holding still) in docker and imports both
/// images into containerd's `k8s.io` namespace, where the CRI service looks for them.
fn import_images() -> String {
    let peer = peer_image();
    let dir = std::env::temp_dir().join(format!("rstt-cri-images-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("image dir");
    let dockerfile =
        format!("FROM {peer}\nENTRYPOINT [\"/rstt-peer\", \"--name\", \"rstt-pause\", \"hold\"]\n");
    std::fs::write(dir.join("Dockerfile"), dockerfile).expect("Dockerfile");
    output(
        Command::new(DOCKER)
            .args(["build", "--quiet", "--tag", SANDBOX_IMAGE])
            .arg(&dir)
            .env("DOCKER_BUILDKIT", "0"),
    );
    let tar = dir.join("images.tar");
    output(
        Command::new(DOCKER)
            .args(["save", "--output"])
            .arg(&tar)
            .args([peer.as_str(), SANDBOX_IMAGE]),
    );
    output(
        Command::new(CTR)
            .args([
                "--address",
                SOCK,
                "--namespace",
                "k8s.io",
                "images",
                "import",
            ])
            .arg(&tar),
    );
    let _ = std::fs::remove_dir_all(&dir);
    // docker's short names are docker.io/library/... to containerd.
    format!("docker.io/library/{peer}")
}
