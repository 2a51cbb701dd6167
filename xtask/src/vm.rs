//! `./x vmtest`: the end-to-end suite inside Debian's and Ubuntu's kernels, booted under qemu
//! with virtme-ng. The guest sees this host's filesystem (read-only over virtiofs, with writable
//! overlays on /tmp, /etc, /var ...), so the binaries cargo built here run there unchanged.
//!
//! Everything is installed and downloaded idempotently: qemu, udev and kmod from Debian,
//! virtme-ng from PyPI, virtiofsd from crates.io (Debian 12 ships only the C one, which vng does
//! not drive), and the kernels from their archives (see [`kernels`]). The arm64 guests boot on a
//! Debian arm64 root of their own instead, with this repository shared in (see [`arm64`]).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, output_ok, root, run, say};

mod arm64;
mod kernels;
mod series;
pub use arm64::{TARGET as ARM64_TARGET, binfmt as arm64_binfmt, guest_root as arm64_root};
pub use kernels::kernel;
pub use series::{Series, TestFiles, select};

const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "udev",
    "kmod",
    // virtme-ng's guest init runs a statically linked busybox from the host.
    "busybox-static",
    "libseccomp-dev",
    "libcap-ng-dev",
];
const VIRTME_NG: &str = "1.42";
const VIRTIOFSD: &str = "1.14.0";
/// Tests left out in the guests, with why. They run on the host's kernel; nothing in them
/// depends on the kernel version.
pub const GUEST_SKIPS: &[(&str, &str)] = &[(
    "hundred_thousand_sockets_churned_memory_stays_bounded",
    "100k connections take minutes under TCG emulation; it measures rst-trace's memory, not the kernel",
)];

/// Test files (`tests/tests/NAME.rs` or `tests/tests/NAME/`) whose binary is not run in the
/// guests, with why. They run on the host's kernel.
pub const GUEST_SKIP_FILES: &[(&str, &str)] = &[
    (
        "containers",
        "the guests have no container runtime: docker and containerd need daemons and state \
         the read-only guest cannot hold; what they test is rst-trace's userspace, not the kernel",
    ),
    (
        "manifests",
        "validating deploy/'s Kubernetes manifests against the API's schemas does not involve \
         the kernel",
    ),
    (
        "prometheus",
        "the dashboard's and alerting rules' queries against a real Prometheus test rst-trace's \
         metrics, not the kernel",
    ),
    (
        "top",
        "the live view in a terminal (tmux) tests rst-trace's userspace, not the kernel",
    ),
    (
        "otlp",
        "the export to an OTLP receiver tests rst-trace's userspace, not the kernel",
    ),
];

/// Per kernel: wall time of the guest run and the test totals it printed.
pub struct Outcome {
    pub kernel: String,
    pub passed: u64,
    pub failed: u64,
    pub wall: Duration,
}

/// qemu, udev, kmod, virtme-ng and virtiofsd; for the arm64 guests qemu-system-arm,
/// qemu-user with binfmt_misc, debootstrap.
pub fn setup_tools() -> Result<()> {
    crate::setup_apt_packages(APT_PACKAGES)?;
    crate::setup_apt_packages(arm64::APT_PACKAGES)?;
    let vng = output_ok(Command::new(vng()).arg("--version")).unwrap_or_default();
    if vng.contains(VIRTME_NG) {
        say(&format!("virtme-ng {VIRTME_NG} present"));
    } else {
        say(&format!("installing virtme-ng {VIRTME_NG} (PyPI)"));
        // Debian's own python3 refuses a system-wide pip install without the flag (PEP 668).
        run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--break-system-packages",
            &format!("virtme-ng=={VIRTME_NG}"),
        ]))?;
    }
    let fsd = output_ok(Command::new("virtiofsd").arg("--version")).unwrap_or_default();
    if fsd.contains(VIRTIOFSD) {
        say(&format!("virtiofsd {VIRTIOFSD} present"));
    } else {
        say(&format!("installing virtiofsd {VIRTIOFSD} (crates.io)"));
        run(Command::new("cargo").current_dir("/").args([
            "install",
            "--locked",
            "virtiofsd",
            "--version",
            VIRTIOFSD,
        ]))?;
    }
    Ok(())
}

/// Before anything boots: every program a guest run needs is there, or one error naming each
/// one that is missing and the package that brings it. (A fresh machine once lacked a static
/// busybox, and every guest then failed at once with 0 tests run.)
pub fn preflight() -> Result<()> {
    let on_path = |p: &str| output_ok(Command::new("sh").args(["-c", &format!("command -v {p}")]));
    let mut missing = Vec::new();
    if output_ok(Command::new(vng()).arg("--version")).is_none() {
        missing.push(format!("vng (PyPI's virtme-ng {VIRTME_NG})"));
    }
    for (prog, from) in [
        ("virtiofsd", "crates.io's virtiofsd"),
        ("qemu-system-x86_64", "Debian's qemu-system-x86"),
        ("qemu-system-aarch64", "Debian's qemu-system-arm"),
        ("qemu-aarch64-static", "Debian's qemu-user-static"),
        ("update-binfmts", "Debian's binfmt-support"),
        ("debootstrap", "Debian's debootstrap"),
        ("udevadm", "Debian's udev"),
        ("depmod", "Debian's kmod"),
        ("python3", "Debian's python3"),
    ] {
        if on_path(prog).is_none() {
            missing.push(format!("{prog} ({from})"));
        }
    }
    if !static_busybox() {
        missing.push("a statically linked busybox (Debian's busybox-static)".into());
    }
    if !missing.is_empty() {
        bail!(
            "the kernel matrix cannot boot: missing {}. The install step above should have \
             brought them: install the named packages and retry",
            missing.join(", ")
        );
    }
    say("kernel matrix: every program it runs is present");
    Ok(())
}

/// A busybox on PATH that `ldd` calls not dynamic, as virtme-ng wants it.
fn static_busybox() -> bool {
    ["/bin/busybox", "/usr/bin/busybox"].iter().any(|p| {
        Path::new(p).is_file()
            && Command::new("ldd")
                .arg(p)
                .output()
                .map(|o| {
                    let all = [o.stdout, o.stderr].concat();
                    let text = String::from_utf8_lossy(&all);
                    text.contains("not a dynamic executable") || text.contains("statically linked")
                })
                .unwrap_or(false)
    })
}

/// `vng`: on PATH, or in the scripts directory of the python3 pip installed it for (a
/// version manager's shims may not know a freshly installed script yet).
fn vng() -> PathBuf {
    if output_ok(Command::new("vng").arg("--version")).is_some() {
        return PathBuf::from("vng");
    }
    output_ok(Command::new("python3").args([
        "-c",
        "import sysconfig; print(sysconfig.get_path('scripts'))",
    ]))
    .map(|d| Path::new(d.trim()).join("vng"))
    .filter(|p| p.is_file())
    .unwrap_or_else(|| PathBuf::from("vng"))
}

/// The test executables the guests run, built (for `target`, else the host), with their NAME:
/// the end-to-end ones (tests/tests/NAME.rs or NAME/) but [`GUEST_SKIP_FILES`], and rst-trace's
/// unit tests (`rst-trace`).
pub fn e2e_executables(target: Option<&str>) -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = cargo();
    cmd.arg("test");
    if let Some(t) = target {
        say(&format!("building the tests for {t}"));
        cmd.args(["--target", t]);
    }
    let out = cmd
        .args([
            "--release",
            "-p",
            "rst-trace-tests",
            // rst-trace's unit tests too: some read the running kernel's BTF and tracefs.
            "-p",
            "rst-trace",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the end-to-end tests failed");
    }
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // {"reason":"compiler-artifact","target":{"kind":["test"],"name":"e2e",...},"executable":"/..."}
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let target = &v["target"];
        let is_test = target["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"))
            || (v["profile"]["test"] == true && target["name"] == "rst-trace");
        let skipped = GUEST_SKIP_FILES
            .iter()
            .any(|(name, _)| target["name"] == *name);
        if let (true, false, Some(name), Some(exe)) = (
            is_test,
            skipped,
            target["name"].as_str(),
            v["executable"].as_str(),
        ) {
            exes.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    if exes.is_empty() {
        bail!("cargo built no end-to-end test executable");
    }
    Ok(exes)
}

/// Boots `kver` and runs the test executables in it; `bin` is the rst-trace binary under test.
/// `arm64_root`: an arm64 guest, with that root filesystem.
pub fn run_guest(
    kver: &str,
    arm64_root: Option<&Path>,
    bin: &Path,
    exes: &[PathBuf],
    filter: &[String],
) -> Result<Outcome> {
    // Under target/, which every guest sees (the arm64 ones have a root of their own, with this
    // repository shared in at its path).
    let script = root()
        .join("target")
        .join(format!("rst-trace-vm-{}.sh", std::process::id()));
    let mut s = String::from("set -u\nuname -r\nrc=0\n");
    // The guest's /tmp is an overlay on the host's (virtiofs), where a directory's inode from
    // stat() is not the one readdir() lists: the cgroup walk's unit tests, which stand a
    // directory tree in for the cgroup2 hierarchy, need a plain filesystem (cgroupfs agrees).
    s.push_str(
        "mkdir -p /run/rstt-tmp && mount -t tmpfs rstt-tmp /run/rstt-tmp && export TMPDIR=/run/rstt-tmp\n",
    );
    s.push_str(&format!(
        "cd {}\nexport RST_TRACE_BIN={}\n",
        root().display(),
        bin.display()
    ));
    s.push_str(&format!(
        "{} --duration 1 2>&1 | head -n 3 | sed 's/^/vmtest: /'\n",
        bin.display()
    ));
    let skips: String = GUEST_SKIPS
        .iter()
        .map(|(t, _)| format!(" --skip {t}"))
        .collect();
    for exe in exes {
        s.push_str(&format!(
            "{} --test-threads=1{skips} {} || rc=1\n",
            exe.display(),
            filter.join(" ")
        ));
    }
    s.push_str("exit $rc\n");
    std::fs::write(&script, s)?;
    let mut cmd = vng_command(kver, arm64_root);
    cmd.arg("--exec").arg(format!("bash {}", script.display()));
    let start = Instant::now();
    // Both piped: qemu reopens the guest's console streams as /proc/self/fd/1 and 2, and
    // reopening a file there truncates it (a log the caller redirected into).
    let out = crate::tee_totals(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()))?;
    let _ = std::fs::remove_file(&script);
    // A guest that failed without a failing test (boot, virtiofs, a crashed test binary), or
    // that ran no test at all, counts as one failure: never as a silent pass.
    let broken = (!out.success && out.failed == 0) || out.passed == 0;
    if broken {
        say(&format!(
            "{kver}: the guest run {} (exit ok: {})",
            if out.passed == 0 {
                "ran no test"
            } else {
                "failed outside the tests"
            },
            out.success
        ));
    }
    Ok(Outcome {
        kernel: kver.to_owned(),
        passed: out.passed,
        failed: out.failed + u64::from(broken),
        wall: start.elapsed(),
    })
}

/// KVM where the CPU has virtualisation extensions and /dev/kvm opens. (On this project's VMs
/// /dev/kvm exists once qemu is installed, but without vmx/svm the guest dies with "emulation
/// failure".) `RST_TRACE_VM_ACCEL=tcg|kvm` overrides.
fn kvm_usable() -> bool {
    match std::env::var("RST_TRACE_VM_ACCEL").as_deref() {
        Ok("tcg") => return false,
        Ok("kvm") => return true,
        _ => {}
    }
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let virt = flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    virt && std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// vng booting `kver` with 2 vCPUs and 2 GiB: an x86_64 guest on this host's filesystem (KVM
/// where usable), or an arm64 one on `arm64_root` with this repository shared in (TCG).
fn vng_command(kver: &str, arm64_root: Option<&Path>) -> Command {
    let mut cmd = Command::new(vng());
    cmd.args(["--run", kver, "--cpus", "2", "--memory", "2G"]);
    if let Some(r) = arm64_root {
        say(&format!("{kver}: arm64 under TCG, root {}", r.display()));
        // Cortex-A72 (Graviton 1's core; `-cpu max` boots 4x slower here). Multi-threaded TCG
        // is qemu's default for an arm64 guest on an x86_64 host.
        cmd.args([
            "--arch",
            "arm64",
            "--disable-kvm",
            "--qemu-opts=-cpu cortex-a72",
        ])
        .arg("--root")
        .arg(r)
        .arg(format!("--rodir={0}={0}", root().display()));
        return cmd;
    }
    let kvm = kvm_usable();
    say(&format!(
        "{kver}: {}",
        if kvm {
            "KVM"
        } else {
            "TCG, one thread (no vmx/svm, or no /dev/kvm)"
        }
    ));
    if !kvm {
        // Multi-threaded TCG crashed 6.12 here; one thread for both vCPUs did not.
        cmd.args(["--disable-kvm", "--qemu-opts=-accel tcg,thread=single"]);
    }
    cmd
}
