//! Docker containers of the peer image.

use super::*;

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
