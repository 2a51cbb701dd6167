//! The container tests' runtimes: Debian's `docker.io` (dockerd, containerd, runc), installed
//! once, and a running dockerd, started here in the background when none answers (PID 1 need
//! not be systemd: nothing else would start it); the CNI plugins the tests' own containerd (its
//! CRI service, started by the tests themselves: tests/tests/containers/cri/) gives its pods'
//! networks; and PyPI's kubernetes-validate, in a venv, for tests/tests/manifests.rs.
//!
//! The CLI used is Debian's `/usr/bin/docker`: a `docker` earlier on PATH (this project's VMs
//! have an unrelated one in /usr/local/bin) is not asked.

use std::{
    fs::OpenOptions,
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::say;

/// Debian's docker CLI (tests/src/container.rs uses the same path).
pub const DOCKER: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";
/// dockerd's stdout and stderr when started here.
pub const DOCKERD_LOG: &str = "/var/log/rst-trace-dockerd.log";
/// The venv holding kubernetes-validate (tests/tests/manifests.rs runs it from there).
const VALIDATE_VENV: &str = "/opt/rst-trace-kubernetes-validate";
const KUBERNETES_VALIDATE: &str = "1.37.0";
/// How long dockerd may take to answer `docker info` (its first start creates its state).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Whether `docker info` answers.
fn answers() -> bool {
    Command::new(DOCKER)
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs docker.io (and what the CRI tests and the manifest check need) if missing and
/// makes sure a dockerd answers.
pub fn setup() -> Result<()> {
    // containerd and runc come with docker.io; named so that the CRI tests' needs are explicit.
    // The bridge and host-local CNI plugins wire the CRI pods' network namespaces; python3-venv
    // holds kubernetes-validate (Debian's pip refuses system-wide installs).
    crate::setup_apt_packages(&[
        "docker.io",
        "containerd",
        "runc",
        "containernetworking-plugins",
        "python3-venv",
    ])?;
    setup_kubernetes_validate()?;
    if answers() {
        say("dockerd running");
        return Ok(());
    }
    say(&format!(
        "starting dockerd in the background (log: {DOCKERD_LOG})"
    ));
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(DOCKERD_LOG)
        .with_context(|| format!("opening {DOCKERD_LOG}"))?;
    // Its own process group: a ^C on ./x does not stop it, and it outlives this process.
    let mut child = Command::new(DOCKERD)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {DOCKERD}"))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "dockerd exited with {status} before answering; its log, {DOCKERD_LOG}, ends with:\n{}",
                log_tail()
            );
        }
        if answers() {
            say(&format!(
                "dockerd answers (pid {}, {:.1} s)",
                child.id(),
                start.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if start.elapsed() > START_TIMEOUT {
            bail!(
                "dockerd (pid {}) did not answer `{DOCKER} info` within {} s; it is left running; \
                 its log, {DOCKERD_LOG}, ends with:\n{}",
                child.id(),
                START_TIMEOUT.as_secs(),
                log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn log_tail() -> String {
    let text = std::fs::read_to_string(DOCKERD_LOG).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// PyPI's kubernetes-validate (the Kubernetes schemas, offline) in [`VALIDATE_VENV`], unless
/// that version is there.
fn setup_kubernetes_validate() -> Result<()> {
    let venv = std::path::Path::new(VALIDATE_VENV);
    let have = crate::output_ok(Command::new(venv.join("bin/pip")).args([
        "show",
        "--quiet",
        "kubernetes-validate",
    ]));
    let version =
        crate::output_ok(Command::new(venv.join("bin/kubernetes-validate")).arg("--version"));
    if have.is_some() && version.is_some_and(|v| v.contains(KUBERNETES_VALIDATE)) {
        say(&format!(
            "kubernetes-validate {KUBERNETES_VALIDATE} present in {VALIDATE_VENV}"
        ));
        return Ok(());
    }
    say(&format!(
        "installing kubernetes-validate {KUBERNETES_VALIDATE} (PyPI) in {VALIDATE_VENV}"
    ));
    // Debian's python3, not one earlier on PATH: python3-venv is installed for it.
    crate::run(Command::new("/usr/bin/python3").args(["-m", "venv", VALIDATE_VENV]))?;
    crate::run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("kubernetes-validate=={KUBERNETES_VALIDATE}"),
    ]))
}
