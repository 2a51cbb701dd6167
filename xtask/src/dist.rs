//! `./x dist`: the static (musl) release binaries in dist/, x86_64's and arm64's, with the
//! systemd unit and the DaemonSet, each checked to run from a clean directory with an empty
//! environment.

use std::{path::Path, process::Command};

use anyhow::{Result, bail};

use crate::{cargo, is_root, root, run, say, setup::setup};

const MUSL: &str = "x86_64-unknown-linux-musl";
/// arm64 (Graviton, Ampere): linked by the toolchain's own rust-lld (.cargo/config.toml).
const MUSL_AARCH64: &str = "aarch64-unknown-linux-musl";
pub const X86_64_BIN: &str = "dist/rst-trace";
pub const AARCH64_BIN: &str = "dist/rst-trace-aarch64";

pub fn dist() -> Result<()> {
    setup()?;
    let dist = root().join("dist");
    std::fs::create_dir_all(&dist)?;
    for (target, bin) in [(MUSL, X86_64_BIN), (MUSL_AARCH64, AARCH64_BIN)] {
        say(&format!("building the static binary ({target})"));
        run(cargo().args(["build", "--release", "--target", target, "-p", "rst-trace"]))?;
        let bin = root().join(bin);
        std::fs::copy(
            root().join(format!("target/{target}/release/rst-trace")),
            &bin,
        )?;
        strip_and_check_static(&bin)?;
    }
    for f in [
        "rst-trace.service",
        "daemonset.yaml",
        "prometheus-rules.yaml",
        "grafana-dashboard.json",
    ] {
        std::fs::copy(root().join("deploy").join(f), dist.join(f))?;
    }
    clean_run(&root().join(X86_64_BIN), true)?;
    // Here under qemu-user through binfmt_misc: --version only; it attaches in the arm64
    // guests of the kernel matrix (./x vmtest arm64-6.1 arm64-6.12).
    if is_root() {
        crate::setup_apt_packages(&["qemu-user-static", "binfmt-support"])?;
        crate::vm::arm64_binfmt()?;
        clean_run(&root().join(AARCH64_BIN), false)?;
    }
    Ok(())
}

/// Strips `bin` (llvm-strip knows both architectures) and checks it has no program
/// interpreter: nothing to load at run time, no libc needed on the host.
fn strip_and_check_static(bin: &Path) -> Result<()> {
    let strip = ["llvm-strip-22", "strip"].into_iter().find(|s| {
        Command::new(s)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if let Some(strip) = strip {
        run(Command::new(strip).arg(bin))?;
    }
    let elf = std::fs::read(bin)?;
    let has = |needle: &[u8]| elf.windows(needle.len()).any(|w| w == needle);
    if has(b"/ld-linux") || has(b"/ld-musl") {
        bail!("{} is dynamically linked", bin.display());
    }
    say(&format!("{} ({} bytes, static)", bin.display(), elf.len()));
    Ok(())
}

/// Runs `bin` from an empty directory with an empty environment, as on a host without Rust:
/// `--version`, and as root (if `attach`) a one-second trace that must attach.
fn clean_run(bin: &Path, attach: bool) -> Result<()> {
    let clean = std::env::temp_dir().join(format!("rst-trace-dist-{}", std::process::id()));
    std::fs::create_dir_all(&clean)?;
    let copy = clean.join("rst-trace");
    std::fs::copy(bin, &copy)?;
    let out = Command::new(&copy)
        .arg("--version")
        .env_clear()
        .current_dir(&clean)
        .output()?;
    if !out.status.success() {
        bail!("{} --version failed", bin.display());
    }
    say(&format!(
        "clean run of {}: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stdout).trim()
    ));
    if attach && is_root() {
        let out = Command::new(&copy)
            .args(["--duration", "1"])
            .env_clear()
            .current_dir(&clean)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || !err.contains("rst-trace: tracing TCP resets") {
            bail!("the static binary did not attach: {err}");
        }
        say(&format!(
            "clean run as root: {}",
            err.lines().next().unwrap_or_default()
        ));
    }
    let _ = std::fs::remove_dir_all(&clean);
    Ok(())
}
