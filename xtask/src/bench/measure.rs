//! One traced round, and a configuration's rounds: rate, events, CPU, memory, BPF run time.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::Path,
    process::{ChildStderr, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use rst_trace_tests::Netns;

use super::{
    Mode, Opts, PORT,
    bpf::{BPF_STATS_ENABLED, ProgStats, bpf_stats, diff, prog_stats},
    load::generate,
};

/// Resident memory of process `pid` (KiB).
pub(super) fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A /proc/PID/status memory line in KiB (VmHWM is the peak RSS since exec).
fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

pub(super) struct Traced {
    rst_events: u64,
    lost: u64,
    cpu_s: f64,
    peak_rss_kib: u64,
    /// RSS once attached, and at the end of the storm.
    start_rss_kib: u64,
    end_rss_kib: u64,
    attach_ms: f64,
    /// BPF run time of all programs per captured event, and of a reset program per run; only
    /// measured in rounds with `stats` (the accounting itself costs two clock reads per run).
    pub(super) all_ns_per_event: f64,
    pub(super) reset_ns_per_run: f64,
    /// BPF run time of the `sys_exit` hook per system call (0 when it is off).
    pub(super) app_ns_per_call: f64,
    /// Each program's runs and run time in the round (with `stats` only).
    pub(super) programs: Vec<ProgStats>,
    /// Resets generated in the round.
    pub(super) generated: u64,
}

/// One traced round: start rst-trace, wait until attached, generate, stop it with SIGTERM.
fn traced_round(
    bin: &Path,
    ns: &Netns,
    mode: Mode,
    threads: usize,
    secs: f64,
    args: &[&str],
    stats: bool,
) -> Result<Traced> {
    let out_path = std::env::temp_dir().join(format!("rstbench-{}.out", std::process::id()));
    let out = std::fs::File::create(&out_path)?;
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(["--port", &PORT.to_string()])
        .args(args)
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting rst-trace")?;
    let pid = child.id();
    let mut err = BufReader::new(child.stderr.take().context("stderr")?);
    await_readiness(&mut err)?;
    let attach_ms = started.elapsed().as_secs_f64() * 1000.0;
    let start_rss_kib = rss_kib(pid);
    std::fs::write(BPF_STATS_ENABLED, if stats { "1" } else { "0" })
        .context("setting kernel.bpf_stats_enabled")?;
    let (s0, p0) = (bpf_stats(pid), prog_stats(pid));
    let generated = generate(ns, mode, threads, secs)?;
    // Let the drain timer catch up before stopping.
    std::thread::sleep(Duration::from_millis(300));
    let (s1, p1) = (bpf_stats(pid), prog_stats(pid));
    std::fs::write(BPF_STATS_ENABLED, "0")?;
    let peak_rss_kib = status_kib(pid, "VmHWM:");
    let end_rss_kib = rss_kib(pid);
    let cpu_s = terminate(pid, err)?;
    let (rst_events, lost) = count_events(&out_path, ns)?;
    let runs = |a: u64, b: u64| b.saturating_sub(a);
    Ok(Traced {
        generated,
        rst_events,
        lost,
        cpu_s,
        peak_rss_kib,
        start_rss_kib,
        end_rss_kib,
        attach_ms,
        all_ns_per_event: per(runs(s0.all_ns, s1.all_ns), rst_events),
        reset_ns_per_run: per(
            runs(s0.reset_ns, s1.reset_ns),
            runs(s0.reset_cnt, s1.reset_cnt),
        ),
        app_ns_per_call: per(runs(s0.app_ns, s1.app_ns), runs(s0.app_cnt, s1.app_cnt)),
        programs: if stats { diff(&p0, &p1) } else { Vec::new() },
    })
}

/// Reads rst-trace's stderr up to its readiness line.
pub(super) fn await_readiness(err: &mut BufReader<ChildStderr>) -> Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line)? == 0 {
            bail!("rst-trace exited before attaching");
        }
        if line.starts_with("rst-trace: tracing TCP resets") {
            return Ok(());
        }
    }
}

/// `ns` per run, 0 without a run.
fn per(ns: u64, runs: u64) -> f64 {
    if runs > 0 {
        ns as f64 / runs as f64
    } else {
        0.0
    }
}

/// Stops rst-trace (`pid`) with SIGTERM; returns the CPU seconds it used, unless it did not
/// exit 0 (then what it printed on `err` says why).
fn terminate(pid: u32, mut err: BufReader<ChildStderr>) -> Result<f64> {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, with valid out-pointers.
    unsafe { libc::wait4(pid as i32, &mut status, 0, &mut ru) };
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("rst-trace did not exit 0 on SIGTERM (status {status}): {rest}");
    }
    let cpu_s = ru.ru_utime.tv_sec as f64
        + ru.ru_utime.tv_usec as f64 / 1e6
        + ru.ru_stime.tv_sec as f64
        + ru.ru_stime.tv_usec as f64 / 1e6;
    Ok(cpu_s)
}

/// The reset events in this bench's namespace and the events reported lost, in rst-trace's
/// output file (removed).
fn count_events(out_path: &Path, ns: &Netns) -> Result<(u64, u64)> {
    let (mut rst_events, mut lost) = (0u64, 0u64);
    let text = std::fs::read_to_string(out_path)?;
    let _ = std::fs::remove_file(out_path);
    let netns = ns.inode();
    for l in text.lines() {
        // A line cut short (rst-trace stopped mid-write) is no record.
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        match v["type"].as_str() {
            // Only this bench's namespace: another checkout's bench may run on the same port.
            Some("rst") if v["netns"] == netns => rst_events += 1,
            Some("lost") => lost += v["count"].as_u64().unwrap_or(0),
            // --summary --quiet: the events counted in the kernel.
            Some("summary") => rst_events = v["total"].as_u64().unwrap_or(0),
            _ => {}
        }
    }
    Ok((rst_events, lost))
}

/// A configuration's row: medians of its rounds, their totals, and the kernel cost measured in
/// a round of its own.
pub(super) struct Row {
    /// Resets (or echoes, or calls) per second, untraced and traced.
    pub(super) untraced: f64,
    pub(super) traced: f64,
    pub(super) captured: u64,
    pub(super) generated_events: u64,
    pub(super) lost: u64,
    /// rst-trace's CPU seconds per million captured events.
    pub(super) cpu_per_m: f64,
    /// The largest RSS once attached, after the storm, and at the peak (KiB).
    pub(super) rss0: u64,
    pub(super) rss1: u64,
    pub(super) peak: u64,
    pub(super) attach_ms: f64,
    pub(super) kernel: Traced,
}

/// Untraced and traced rounds of one configuration, alternating, then its kernel-cost round.
pub(super) fn row(
    bin: &Path,
    ns: &Netns,
    mode: Mode,
    threads: usize,
    args: &[&str],
    opts: &Opts,
) -> Result<Row> {
    let (mut un, mut tr, mut cpu, mut att) = (vec![], vec![], vec![], vec![]);
    let (mut captured, mut generated_events, mut lost) = (0u64, 0u64, 0u64);
    let (mut rss0, mut rss1, mut peak) = (0u64, 0u64, 0u64);
    for _ in 0..opts.rounds {
        let n = generate(ns, mode, threads, opts.seconds)?;
        un.push(n as f64 / opts.seconds);
        let t = traced_round(bin, ns, mode, threads, opts.seconds, args, false)?;
        tr.push(t.generated as f64 / opts.seconds);
        // Each reset is seen twice: sent by one socket (or none), received by another.
        if !matches!(mode, Mode::Echo | Mode::Syscalls) {
            generated_events += 2 * t.generated;
        }
        captured += t.rst_events;
        lost += t.lost;
        rss0 = rss0.max(t.start_rss_kib);
        rss1 = rss1.max(t.end_rss_kib);
        peak = peak.max(t.peak_rss_kib);
        cpu.push(t.cpu_s / (t.rst_events.max(1) as f64) * 1e6);
        att.push(t.attach_ms);
    }
    // The kernel cost, in a round of its own: with the run-time accounting on, every
    // program run also reads the clock twice, which would slow the rounds above.
    let k = traced_round(bin, ns, mode, threads, opts.seconds, args, true)?;
    Ok(Row {
        untraced: median(&mut un),
        traced: median(&mut tr),
        captured,
        generated_events,
        lost,
        cpu_per_m: median(&mut cpu),
        rss0,
        rss1,
        peak,
        attach_ms: median(&mut att),
        kernel: k,
    })
}

/// The middle value (the upper one of an even count; 0 of none).
pub(super) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}
