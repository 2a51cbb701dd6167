//! Project tasks: `cargo xtask setup|build|run|test|check` (or `./x ...`, which first installs the
//! pinned stable toolchain that cargo itself needs).
//!
//! Every step is idempotent and prints one line per action, so running it twice is cheap and
//! tells what it found.
//!
//! Here: the command line and the helpers every task uses; one module per task: `setup`,
//! `check`, `test` (with `vm`, the kernel matrix), `dist`, `docker`, `bench`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

mod bench;
mod check;
mod dist;
mod docker;
mod setup;
mod test;
mod vm;
use clap::{Parser, Subcommand};

// vm.rs and docker.rs call these by their crate-root paths.
use self::{setup::setup_apt_packages, test::tee_totals};

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
    /// (virtme-ng; KVM where /dev/kvm works, TCG otherwise; arm64 ones under TCG), installing
    /// and caching what it needs. `./x vmtest 5.10 6.1 -- closed_port` runs the tests matching closed_port in two
    /// kernels.
    Vmtest {
        /// Kernel series: 5.4 and 5.15 (Ubuntu 20.04's and 22.04's), 5.10, 6.1, 6.12 (Debian's
        /// cloud kernels), arm64-6.1 and arm64-6.12 (Debian's arm64 cloud kernels, under TCG
        /// with dist/rst-trace-aarch64), or all (the default: the matrix of `./x test`).
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
    /// Build the static (musl) release binaries into dist/ (rst-trace for x86_64,
    /// rst-trace-aarch64 for arm64), with the systemd unit and the DaemonSet, and check that
    /// they run from a clean directory with an empty environment.
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
        /// rst-trace's arguments in the healthy-path rows, as one string (default: none, its
        /// default flags), e.g. "--no-app-errors".
        #[arg(
            long,
            value_name = "ARGS",
            default_value = "",
            allow_hyphen_values = true
        )]
        healthy_args: String,
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

/// xtask's own messages go to stderr, like rst-trace's: `./x run -- --json > events.ndjson`
/// must get events only on stdout.
fn say(s: &str) {
    eprintln!("xtask: {s}");
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
    setup::setup()?;
    say("building target/release/rst-trace");
    run(cargo().args(["build", "--release", "-p", "rst-trace"]))
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::setup(),
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
            // The container tests (tests/tests/containers/) need a real runtime, and
            // tests/tests/prometheus.rs a real Prometheus (with promtool).
            docker::setup()?;
            // tests/tests/top.rs drives `rst-trace top` in a real terminal.
            setup_apt_packages(&["prometheus", "tmux"])?;
            // Lints first, so the run ends with the test totals.
            check::check()?;
            say("cargo test --release --workspace --exclude rst-trace-ebpf");
            test::test(&args, host_only)
        }
        Cmd::Vmtest { kernels, filter } => {
            build()?;
            if !is_root() {
                bail!(
                    "booting kernels and loading eBPF programs needs root: run `./x vmtest` as root"
                );
            }
            test::vmtest_command(&kernels, &filter)
        }
        Cmd::Check => check::check(),
        Cmd::Docker => {
            if !is_root() {
                bail!(
                    "installing docker.io and starting dockerd needs root: run `./x docker` as root"
                );
            }
            docker::setup()
        }
        Cmd::Dist => dist::dist(),
        Cmd::Bench {
            seconds,
            rounds,
            soak,
            only,
            bin,
            healthy_args,
        } => {
            build()?;
            if !is_root() {
                bail!("the benchmark loads eBPF programs: run `./x bench` as root");
            }
            // The healthy-path loads and the reference tools.
            setup_apt_packages(&["nginx-light", "wrk", "bpftrace", "linux-perf"])?;
            bench::run(
                &bin.unwrap_or_else(|| root().join("target/release/rst-trace")),
                &bench::Opts {
                    seconds,
                    rounds,
                    soak,
                    only,
                    healthy_args: healthy_args.split_whitespace().map(str::to_owned).collect(),
                },
            )
        }
    }
}
