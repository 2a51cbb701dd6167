//! `cargo xtask bench`: how much rst-trace costs during a reset storm, in one run.
//!
//! A bounded, in-tree reset generator runs inside a network namespace of the bench's own (so
//! nothing else is touched): threads that connect to a closed port (every attempt: one RST sent by
//! the kernel with no socket, one received by the client) or that connect, write one byte and let
//! a server close without reading (a process-context RST, `close_with_unread_data`). Untraced
//! and traced rounds alternate; the table shows the median of each.

mod bpf;
mod healthy;
mod load;
mod measure;
mod receiver;
mod reference;
mod table;

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result};
use rst_trace_tests::Netns;

use self::{bpf::BpfStatsEnabled, load::generate, measure::rss_kib, table::CONFIGS};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// connect() to a closed port.
    Refused,
    /// close() with unread data.
    Unread,
    /// No resets at all: 1-byte request/response on one connection per thread, to show what
    /// the per-packet and per-syscall hooks cost ordinary traffic.
    Echo,
    /// No sockets at all: getppid() in a loop, the cheapest system call, to show what the
    /// `sys_exit` hook (failing application calls) adds to every system call on the host.
    Syscalls,
}

pub struct Opts {
    pub seconds: f64,
    pub rounds: usize,
    pub soak: Option<u64>,
    pub only: Option<String>,
    /// rst-trace's arguments in the healthy-path rows (none: its default flags).
    pub healthy_args: Vec<String>,
}

const PORT: u16 = 39_555;

/// The bench's own network namespace (the end-to-end tests' helper), replacing a stale one of
/// the same name.
fn bench_netns() -> Result<Netns> {
    let name = format!("rstbench-{}", std::process::id());
    let _ = Command::new("ip").args(["netns", "del", &name]).status();
    Netns::create(&name)
        .map_err(|e| anyhow::anyhow!("cannot create network namespace {name} (run as root): {e}"))
}

pub fn run(bin: &Path, opts: &Opts) -> Result<()> {
    let ns = bench_netns()?;
    let _stats = BpfStatsEnabled::save();
    // For `--otlp` rows and `--healthy-args "--otlp ..."`.
    let otlp = receiver::Receiver::start()?;
    if let Some(secs) = opts.soak {
        return soak(bin, &ns, secs);
    }
    if opts
        .only
        .as_deref()
        .is_none_or(|o| healthy::LOADS.iter().any(|(name, ..)| name.contains(o)))
    {
        let args: Vec<&str> = opts.healthy_args.iter().map(String::as_str).collect();
        healthy::run(bin, &ns, opts, &args)?;
        println!();
    }
    table::print_header(opts);
    let mut programs = Vec::new();
    for (name, mode, threads, args) in CONFIGS {
        if opts.only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let row = measure::row(bin, &ns, mode, threads, args, opts)?;
        table::print_row(name, &row);
        let k = row.kernel;
        programs.push((name, "resets", k.generated as f64, k.programs));
    }
    table::print_legend();
    if !programs.is_empty() {
        bpf::print_programs(&programs);
    }
    let (requests, bytes) = otlp.taken();
    println!(
        "OTLP receiver ({}): {requests} requests, {:.1} MB taken",
        receiver::URL,
        bytes as f64 / 1e6
    );
    if opts
        .only
        .as_deref()
        .is_some_and(|o| !"bpftrace reference".contains(o))
    {
    } else {
        reference::references(&ns, opts)?;
    }
    Ok(())
}

/// `--soak SECS`: a moderate storm for SECS seconds; RSS at start and at end.
fn soak(bin: &Path, ns: &Netns, secs: u64) -> Result<()> {
    let mut child = Command::new(bin)
        .args([
            "--port",
            &PORT.to_string(),
            "--json",
            "--quiet",
            "--summary",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut err = BufReader::new(child.stderr.take().context("stderr")?);
    let mut line = String::new();
    while err.read_line(&mut line)? > 0 && !line.starts_with("rst-trace: tracing") {
        line.clear();
    }
    let start = rss_kib(pid);
    let mut total = 0;
    let t0 = Instant::now();
    while t0.elapsed().as_secs() < secs {
        total += generate(ns, Mode::Refused, 1, 1.0)?;
        total += generate(ns, Mode::Unread, 1, 1.0)?;
    }
    let end = rss_kib(pid);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = child.wait()?;
    println!(
        "soak: {secs} s, {total} resets; rst-trace RSS {:.1} MiB at start, {:.1} MiB at end; exit {status}",
        start as f64 / 1024.0,
        end as f64 / 1024.0
    );
    Ok(())
}
