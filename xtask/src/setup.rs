//! `./x setup`: the apt packages, the eBPF nightly with rust-src, bpf-linker and tracefs, each
//! installed or mounted only when missing.

use std::{path::Path, process::Command};

use anyhow::Result;

use crate::{is_root, output_ok, root, run, say};

/// The nightly the eBPF crate builds with: pinned in `rust-toolchain-ebpf` at the repository's
/// root, which rst-trace/build.rs reads too.
const EBPF_TOOLCHAIN: &str = include_str!("../../rust-toolchain-ebpf").trim_ascii();
const BPF_LINKER_VERSION: &str = "0.13.0";
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Debian packages: LLVM 22 for bpf-linker; iproute2, iptables, conntrack, scapy and a C
/// compiler (the application-error tests build a real C client with `cc`) for the tests.
const APT_PACKAGES: &[&str] = &[
    "build-essential",
    "llvm-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
    "iptables",
    "conntrack",
    "python3-scapy",
    // tests/tests/stacks.rs builds a C program with frame pointers and debug info (and the Rust
    // toolchain links with cc); libc6-dev is only recommended by gcc, which is not installed.
    "gcc",
    "libc6-dev",
    // The container tests' CRI client (k8s-cri) compiles the CRI protobufs with protoc.
    "protobuf-compiler",
];

fn setup_apt() -> Result<()> {
    setup_apt_packages(APT_PACKAGES)
}

/// Installs the Debian packages of `packages` that are missing.
pub fn setup_apt_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            output_ok(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        say(&format!("apt packages present: {}", packages.join(" ")));
        return Ok(());
    }
    say(&format!("installing apt packages: {}", missing.join(" ")));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn setup_nightly() -> Result<()> {
    let have = output_ok(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|l| l.lines().any(|t| t.starts_with(EBPF_TOOLCHAIN)));
    let has_src = have
        && output_ok(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ]))
        .is_some_and(|l| l.lines().any(|c| c.starts_with("rust-src")));
    if has_src {
        say(&format!("toolchain {EBPF_TOOLCHAIN} with rust-src present"));
        return Ok(());
    }
    say(&format!(
        "installing toolchain {EBPF_TOOLCHAIN} with rust-src"
    ));
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
        "-c",
        "rust-src",
    ]))
}

fn setup_bpf_linker() -> Result<()> {
    let version = output_ok(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        say(&format!("bpf-linker {BPF_LINKER_VERSION} present"));
        return Ok(());
    }
    say(&format!(
        "installing bpf-linker {BPF_LINKER_VERSION} (LLVM 22)"
    ));
    run(Command::new("cargo")
        .current_dir(root())
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX))
}

fn setup_tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        say("tracefs mounted");
        return Ok(());
    }
    say("mounting tracefs at /sys/kernel/tracing");
    run(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
}

pub fn setup() -> Result<()> {
    setup_apt()?;
    setup_nightly()?;
    setup_bpf_linker()?;
    // Only root can mount it; rst-trace itself needs root anyway.
    if is_root() {
        setup_tracefs()?;
    }
    Ok(())
}
