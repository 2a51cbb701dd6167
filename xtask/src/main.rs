//! Project tasks: `cargo xtask setup|build|run|test|check` (or `./x ...`, which first installs the
//! pinned stable toolchain that cargo itself needs).
//!
//! Every step is idempotent and prints one line per action, so running it twice is cheap and
//! tells what it found.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

mod bench;
mod docker;
mod vm;
use clap::{Parser, Subcommand};

/// The nightly the eBPF crate builds with: pinned in `rust-toolchain-ebpf` at the repository's
/// root, which rst-trace/build.rs reads too.
const EBPF_TOOLCHAIN: &str = include_str!("../../rust-toolchain-ebpf").trim_ascii();
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
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
];

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install whatever is missing: apt packages, the eBPF nightly + rust-src, bpf-linker.
    Setup,
    /// Set up, then build the release binary (target/release/rst-trace).
    Build,
    /// Set up, build, and run rst-trace with ARGS (as root).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run every test (unit and end-to-end, as root), clippy and rustfmt,
    /// then the end-to-end suite again inside each kernel of the matrix (see `vmtest`).
    Test {
        /// Only this host's kernel: skip the kernel matrix (for quick iterations; CI runs all).
        #[arg(long)]
        host_only: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter, also used in the guests).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the end-to-end suite inside Debian's and Ubuntu's kernels booted under qemu
    /// (virtme-ng; KVM where /dev/kvm works, TCG otherwise), installing and caching what it
    /// needs. `./x vmtest 5.10 6.1 -- closed_port` runs the tests matching closed_port in two
    /// kernels.
    Vmtest {
        /// Kernel series: 5.4 and 5.15 (Ubuntu 20.04's and 22.04's), 5.10, 6.1, 6.12 (Debian's
        /// cloud kernels), or all (the default: the matrix of `./x test`).
        kernels: Vec<String>,
        /// Test name filters, after `--`.
        #[arg(last = true)]
        filter: Vec<String>,
    },
    /// clippy with -D warnings and rustfmt --check only.
    Check,
    /// Install Debian's docker.io and start dockerd unless one answers (as root): what the
    /// container tests need; `./x test` does it too.
    Docker,
    /// Build the static (musl) release binary into dist/, with the systemd unit and the
    /// DaemonSet, and check that it runs from a clean directory with an empty environment.
    Dist,
    /// Measure rst-trace during a reset storm (as root): rates with and without it, events
    /// captured and lost, CPU, memory, start-up time, kernel cost per event.
    Bench {
        /// Seconds per round.
        #[arg(long, default_value = "2")]
        seconds: f64,
        /// Untraced and traced rounds per configuration (alternating).
        #[arg(long, default_value = "3")]
        rounds: usize,
        /// Instead: run a storm for SECS seconds and report RSS at start and end.
        #[arg(long, value_name = "SECS")]
        soak: Option<u64>,
        /// Only the rows whose configuration name contains this text (e.g. "refused").
        #[arg(long, value_name = "TEXT")]
        only: Option<String>,
        /// Measure this rst-trace binary instead of the tree's release build (before/after
        /// comparisons of two versions; it must take the same options).
        #[arg(long, value_name = "PATH")]
        bin: Option<PathBuf>,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn say(s: &str) {
    println!("xtask: {s}");
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn output_ok(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup_apt() -> Result<()> {
    setup_apt_packages(APT_PACKAGES)
}

/// Installs the Debian packages of `packages` that are missing.
fn setup_apt_packages(packages: &[&str]) -> Result<()> {
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

fn setup() -> Result<()> {
    setup_apt()?;
    setup_nightly()?;
    setup_bpf_linker()?;
    // Only root can mount it; rst-trace itself needs root anyway.
    if is_root() {
        setup_tracefs()?;
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root());
    c
}

fn build() -> Result<()> {
    setup()?;
    say("building target/release/rst-trace");
    run(cargo().args(["build", "--release", "-p", "rst-trace"]))
}

fn check() -> Result<()> {
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

/// Test totals read from `test result:` lines.
struct Totals {
    passed: u64,
    failed: u64,
    success: bool,
}

/// Runs `cmd` (stdout piped), echoing its output, and adds up cargo's test result lines.
fn tee_totals(cmd: &mut Command) -> Result<Totals> {
    use std::io::{BufRead as _, BufReader};
    let mut child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
    let errs = child.stderr.take().map(|e| {
        std::thread::spawn(move || {
            for line in BufReader::new(e).lines().map_while(Result::ok) {
                eprintln!("{line}");
            }
        })
    });
    let (mut passed, mut failed) = (0u64, 0u64);
    let out = child.stdout.take().context("child stdout")?;
    for line in BufReader::new(out).lines() {
        let line = line?;
        println!("{line}");
        // "test result: ok. 8 passed; 0 failed; 0 ignored; ..."
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(['.', ';']) {
                let mut w = part.split_whitespace();
                match (w.next().and_then(|n| n.parse::<u64>().ok()), w.next()) {
                    (Some(n), Some("passed")) => passed += n,
                    (Some(n), Some("failed")) => failed += n,
                    _ => {}
                }
            }
        }
    }
    let success = child.wait()?.success();
    if let Some(t) = errs {
        let _ = t.join();
    }
    Ok(Totals {
        passed,
        failed,
        success,
    })
}

/// Runs the tests on this host's kernel, then (unless `host_only`) in each kernel of the matrix,
/// and ends with one `passed, failed` total line.
fn test(args: &[String], host_only: bool) -> Result<()> {
    let host = tee_totals(
        cargo()
            .args([
                "test",
                "--release",
                "--workspace",
                "--exclude",
                "rst-trace-ebpf",
                // Every test binary runs, so one failing binary cannot hide the others'.
                "--no-fail-fast",
            ])
            .args(args)
            .env("RST_TRACE_BIN", root().join("target/release/rst-trace"))
            .stdout(std::process::Stdio::piped()),
    )?;
    let (mut passed, mut failed) = (host.passed, host.failed);
    let mut bad = !host.success;
    if !host_only {
        let filter: Vec<String> = args
            .iter()
            .filter(|a| !a.starts_with('-'))
            .cloned()
            .collect();
        let outcomes = vmtest(&[], &filter)?;
        for o in &outcomes {
            passed += o.passed;
            failed += o.failed;
            bad |= o.failed > 0;
        }
    }
    println!("xtask: {passed} passed, {failed} failed");
    if bad {
        bail!("tests failed");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// The end-to-end suite in each kernel of `kernels` (all when empty), with the static binary
/// `./x dist` builds, so that it is the one checked on every kernel. Prints a table at the end.
fn vmtest(kernels: &[String], filter: &[String]) -> Result<Vec<vm::Outcome>> {
    let series = vm::select(kernels)?;
    vm::setup_tools()?;
    let kvers = series
        .iter()
        .map(|s| vm::kernel(s))
        .collect::<Result<Vec<_>>>()?;
    dist()?;
    let bin = root().join("dist/rst-trace");
    let exes = vm::e2e_executables()?;
    for (t, why) in vm::GUEST_SKIPS {
        say(&format!("in the guests, not run: {t} ({why})"));
    }
    for (f, why) in vm::GUEST_SKIP_FILES {
        say(&format!("in the guests, not run: the {f} tests ({why})"));
    }
    // Per kernel, the executables its series runs.
    let mut runs = Vec::new();
    for (s, kver) in series.iter().zip(&kvers) {
        let mut run = Vec::new();
        for (name, exe) in &exes {
            match s.not_run(name) {
                Some(why) => say(&format!(
                    "in {} ({kver}), not run: the {name} tests ({why})",
                    s.name
                )),
                None => run.push(exe.clone()),
            }
        }
        if let vm::TestFiles::Only(files, _) = s.files {
            for f in files.iter().filter(|f| !exes.iter().any(|(n, _)| n == *f)) {
                say(&format!(
                    "in {} ({kver}): no {f} tests were built to run",
                    s.name
                ));
            }
        }
        runs.push((kver, run));
    }
    let mut outcomes = Vec::new();
    for (kver, run) in &runs {
        say(&format!("booting {kver}"));
        outcomes.push(vm::run_guest(kver, &bin, run, filter)?);
    }
    say("kernel matrix:");
    for o in &outcomes {
        say(&format!(
            "  {:32} {:3} passed, {:2} failed, {:5.0} s",
            o.kernel,
            o.passed,
            o.failed,
            o.wall.as_secs_f64()
        ));
    }
    Ok(outcomes)
}

const MUSL: &str = "x86_64-unknown-linux-musl";

fn dist() -> Result<()> {
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
    for f in ["rst-trace.service", "daemonset.yaml"] {
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

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup(),
        Cmd::Build => build(),
        Cmd::Run { args } => {
            build()?;
            let bin = root().join("target/release/rst-trace");
            let status = Command::new(&bin).args(&args).status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Test { args, host_only } => {
            build()?;
            if !is_root() {
                bail!("the end-to-end tests load eBPF programs: run `./x test` as root");
            }
            // The container tests (tests/tests/containers/) need a real runtime.
            docker::setup()?;
            // Lints first, so the run ends with the test totals.
            check()?;
            say("cargo test --release --workspace --exclude rst-trace-ebpf");
            test(&args, host_only)
        }
        Cmd::Vmtest { kernels, filter } => {
            build()?;
            if !is_root() {
                bail!(
                    "booting kernels and loading eBPF programs needs root: run `./x vmtest` as root"
                );
            }
            let outcomes = vmtest(&kernels, &filter)?;
            let failed: u64 = outcomes.iter().map(|o| o.failed).sum();
            let passed: u64 = outcomes.iter().map(|o| o.passed).sum();
            println!("xtask: {passed} passed, {failed} failed");
            if failed > 0 || passed == 0 {
                bail!("tests failed in the kernel matrix");
            }
            Ok(())
        }
        Cmd::Check => check(),
        Cmd::Docker => {
            if !is_root() {
                bail!(
                    "installing docker.io and starting dockerd needs root: run `./x docker` as root"
                );
            }
            docker::setup()
        }
        Cmd::Dist => dist(),
        Cmd::Bench {
            seconds,
            rounds,
            soak,
            only,
            bin,
        } => {
            build()?;
            if !is_root() {
                bail!("the benchmark loads eBPF programs: run `./x bench` as root");
            }
            bench::run(
                &bin.unwrap_or_else(|| root().join("target/release/rst-trace")),
                &bench::Opts {
                    seconds,
                    rounds,
                    soak,
                    only,
                },
            )
        }
    }
}
