//! `./x dist`: the static (musl) release binary in dist/ with the systemd unit and the
//! DaemonSet, checked to run from a clean directory with an empty environment.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{cargo, is_root, root, run, say, setup::setup};

const MUSL: &str = "x86_64-unknown-linux-musl";

pub fn dist() -> Result<()> {
    setup()?;
    say(&format!("building the static binary ({MUSL})"));
    run(cargo().args(["build", "--release", "--target", MUSL, "-p", "rst-trace"]))?;
    let dist = root().join("dist");
    std::fs::create_dir_all(&dist)?;
    let bin = dist.join("rst-trace");
    std::fs::copy(
        root().join(format!("target/{MUSL}/release/rst-trace")),
        &bin,
    )?;
    let strip = ["llvm-strip-22", "strip"].into_iter().find(|s| {
        Command::new(s)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if let Some(strip) = strip {
        run(Command::new(strip).arg(&bin))?;
    }
    for f in [
        "rst-trace.service",
        "daemonset.yaml",
        "prometheus-rules.yaml",
        "grafana-dashboard.json",
    ] {
        std::fs::copy(root().join("deploy").join(f), dist.join(f))?;
    }
    // No program interpreter: nothing to load at run time, no libc needed on the host.
    let elf = std::fs::read(&bin)?;
    if elf.windows(b"/ld-linux".len()).any(|w| w == b"/ld-linux") {
        bail!("{} is dynamically linked", bin.display());
    }
    say(&format!("{} ({} bytes, static)", bin.display(), elf.len()));
    // Run it from an empty directory with an empty environment, as on a host without Rust.
    let clean = std::env::temp_dir().join(format!("rst-trace-dist-{}", std::process::id()));
    std::fs::create_dir_all(&clean)?;
    let copy = clean.join("rst-trace");
    std::fs::copy(&bin, &copy)?;
    let out = Command::new(&copy)
        .arg("--version")
        .env_clear()
        .current_dir(&clean)
        .output()?;
    if !out.status.success() {
        bail!("{} --version failed", copy.display());
    }
    say(&format!(
        "clean run: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    ));
    if is_root() {
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
