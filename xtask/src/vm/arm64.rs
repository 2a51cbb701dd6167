//! The arm64 guests: Debian's arm64 cloud kernels booted under qemu's TCG (`vng --arch arm64`),
//! with a Debian arm64 root of their own (the host's x86_64 userland cannot run there). The
//! root is made once with `debootstrap --foreign`, its second stage run under qemu-user through
//! binfmt_misc, and kept under [`ROOT`]; this repository is shared into it read-only at its own
//! path, so the cross-built (aarch64 musl) test binaries run there from where cargo put them.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{root, run, say};

/// Debian packages on the host: qemu for arm64, qemu-user with binfmt_misc for the root's
/// second stage (and to list the cross-built tests' names here), debootstrap.
pub const APT_PACKAGES: &[&str] = &[
    "qemu-system-arm",
    "qemu-user-static",
    "binfmt-support",
    "debootstrap",
];

/// The guest's root filesystem.
pub const ROOT: &str = "/var/cache/rst-trace-vm/arm64/root";
/// The Rust target the arm64 guests' binaries are built for.
pub const TARGET: &str = "aarch64-unknown-linux-musl";

/// What the guest runs besides the test binaries: vng's init (bash, udev: without udev its
/// `--exec` shows nothing, and a static busybox of the guest's architecture), modprobe, and
/// what the tests call (ip, iptables, conntrack, sysctl, scapy, cc for the C clients).
const ROOT_PACKAGES: &[&str] = &[
    "bash",
    "udev",
    "kmod",
    "busybox-static",
    "procps",
    "iproute2",
    "iptables",
    "conntrack",
    "python3-scapy",
    "gcc",
    "libc6-dev",
];

const MIRROR: &str = "http://deb.debian.org/debian";

/// binfmt_misc mounted and qemu-user's aarch64 handler enabled, so that arm64 programs run
/// here (debootstrap's second stage; the cross-built tests' `--list`).
pub fn binfmt() -> Result<()> {
    let dir = Path::new("/proc/sys/fs/binfmt_misc");
    if !dir.join("register").exists() {
        say("mounting binfmt_misc");
        run(Command::new("mount")
            .args(["-t", "binfmt_misc", "binfmt_misc"])
            .arg(dir))?;
    }
    let enabled =
        |p: &Path| std::fs::read_to_string(p).is_ok_and(|s| s.lines().next() == Some("enabled"));
    let handler = dir.join("qemu-aarch64");
    if !enabled(&handler) {
        say("enabling qemu-user's aarch64 binfmt handler");
        run(Command::new("update-binfmts").args(["--enable", "qemu-aarch64"]))?;
    }
    if !enabled(&handler) {
        bail!("{} is not enabled after update-binfmts", handler.display());
    }
    Ok(())
}

/// Names of the packages dpkg lists as installed in the root.
fn installed_packages(root: &Path) -> Vec<String> {
    let status = std::fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap_or_default();
    status
        .split("\n\n")
        .filter(|st| st.lines().any(|l| l == "Status: install ok installed"))
        .filter_map(|st| st.lines().find_map(|l| l.strip_prefix("Package: ")))
        .map(str::to_owned)
        .collect()
}

/// The guest's root with [`ROOT_PACKAGES`] (made the first time, ~3.5 minutes and 650 MB), the
/// kernel `kver`'s modules in its /lib/modules (vng boots the guest with the root's), and a
/// mount point for this repository.
pub fn guest_root(kvers: &[&str]) -> Result<PathBuf> {
    let r = PathBuf::from(ROOT);
    binfmt()?;
    let have = installed_packages(&r);
    let missing: Vec<&str> = ROOT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !have.iter().any(|h| h == p))
        .collect();
    if !r.join("usr/bin/dpkg").is_file() || r.join("debootstrap").exists() {
        bootstrap(&r)?;
    } else if !missing.is_empty() {
        say(&format!("arm64 root: installing {}", missing.join(" ")));
        run(Command::new("chroot")
            .arg(&r)
            .args(["apt-get", "install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    } else {
        say(&format!("arm64 root present: {ROOT}"));
    }
    for kver in kvers {
        modules(&r, kver)?;
    }
    // vng's --rodir needs the directory it shares over to exist inside the root.
    std::fs::create_dir_all(r.join(root().strip_prefix("/").unwrap_or(&root())))?;
    Ok(r)
}

/// debootstrap's two stages: the first unpacks arm64 packages here, the second configures them
/// by running their arm64 scripts (under qemu-user).
fn bootstrap(r: &Path) -> Result<()> {
    say(&format!(
        "arm64 root: debootstrap bookworm into {ROOT} (once)"
    ));
    if r.exists() {
        std::fs::remove_dir_all(r).with_context(|| format!("removing {}", r.display()))?;
    }
    std::fs::create_dir_all(r)?;
    run(Command::new("debootstrap")
        .args([
            "--arch=arm64",
            "--foreign",
            "--variant=minbase",
            &format!("--include={}", ROOT_PACKAGES.join(",")),
            "bookworm",
        ])
        .arg(r)
        .arg(MIRROR))?;
    run(Command::new("chroot")
        .arg(r)
        .args(["/debootstrap/debootstrap", "--second-stage"]))?;
    std::fs::write(
        r.join("etc/apt/sources.list"),
        format!("deb {MIRROR} bookworm main\n"),
    )?;
    Ok(())
}

/// Kernel `kver`'s modules (installed on the host by kernels.rs) in the root, indexed.
fn modules(r: &Path, kver: &str) -> Result<()> {
    let dst = r.join("lib/modules").join(kver);
    if dst.join("modules.dep").is_file() {
        return Ok(());
    }
    say(&format!("arm64 root: modules of {kver}"));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(r.join("lib/modules"))?;
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("/lib/modules/{kver}"))
        .arg(&dst))?;
    run(Command::new("depmod").arg("-b").arg(r).arg(kver))
}
