//! `./x check`: rustfmt, clippy with -D warnings, and the eBPF object's mem* calls.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, root, run, say, setup::LLVM_PREFIX};

pub fn check() -> Result<()> {
    say("cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--check"]))?;
    say("cargo clippy --all-targets -- -D warnings");
    run(cargo().args([
        "clippy",
        "--release",
        "--workspace",
        // The eBPF crate only builds for the bpf target (aya-build builds it, with
        // rustc's own lints); on the host its panic handler clashes with std.
        "--exclude",
        "rst-trace-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // What only builds for arm64 (its pt_regs names, its call instructions, its kernel stack
    // names in the tests): the crates the arm64 guests run.
    say("cargo clippy --target aarch64-unknown-linux-musl -p rst-trace -p rst-trace-tests");
    run(cargo().args([
        "clippy",
        "--release",
        "--target",
        crate::vm::ARM64_TARGET,
        "-p",
        "rst-trace",
        "-p",
        "rst-trace-tests",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    no_mem_calls()
}

/// The eBPF object must not call `memset`/`memcpy`/`memmove`: on the bpf target they are
/// byte-by-byte loops (a zeroed 160-byte event cost 800 instructions per reset), so the code
/// zeroes and copies with 8-byte stores instead. This keeps it that way.
fn no_mem_calls() -> Result<()> {
    say("eBPF object: no memset/memcpy/memmove calls");
    let built = root().join("target/release/build");
    let mut objects: Vec<PathBuf> = std::fs::read_dir(&built)?
        .flatten()
        .map(|d| {
            d.path()
                .join("out/aya-build/target/rst-trace-ebpf/bpfel-unknown-none/release/rst-trace")
        })
        .filter(|p| p.is_file())
        .collect();
    objects.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let obj = objects
        .last()
        .context("no built eBPF object under target/release/build (run ./x build)")?;
    let out = Command::new(format!("{LLVM_PREFIX}/bin/llvm-objdump"))
        .arg("-r")
        .arg(obj)
        .output()
        .context("running llvm-objdump")?;
    if !out.status.success() {
        bail!("llvm-objdump -r {} failed", obj.display());
    }
    let calls: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .last()
                .is_some_and(|sym| matches!(sym, "memset" | "memcpy" | "memmove" | "memcmp"))
        })
        .map(str::to_owned)
        .collect();
    if !calls.is_empty() {
        bail!(
            "the eBPF object calls byte-loop mem* functions ({} sites, e.g. {:?}): zero or copy with 8-byte words instead",
            calls.len(),
            calls[0]
        );
    }
    Ok(())
}
