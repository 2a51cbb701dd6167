//! Reference rows: the tools the goals were set against (bpftrace, perf) on the same load.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use rst_trace_tests::Netns;

use super::{Mode, Opts, load::generate, measure::median};

/// The tools the goals were set against, on the same load: a per-event bpftrace printer, an
/// in-kernel bpftrace count and `perf record` of the two tracepoints (it decodes nothing).
pub(super) fn references(ns: &Netns, opts: &Opts) -> Result<()> {
    const TPS: &str = "tracepoint:tcp:tcp_send_reset, tracepoint:tcp:tcp_receive_reset";
    let tools: [(&str, &str, Vec<String>); 3] = [
        (
            "bpftrace printf per event",
            "bpftrace",
            vec![
                "-e".into(),
                format!("{TPS} {{ printf(\"%d %s\\n\", pid, comm); }}"),
            ],
        ),
        (
            "bpftrace in-kernel count",
            "bpftrace",
            vec!["-e".into(), format!("{TPS} {{ @n = count(); }}")],
        ),
        (
            "perf record of the two tracepoints",
            "perf",
            [
                "record",
                "-a",
                "-e",
                "tcp:tcp_send_reset",
                "-e",
                "tcp:tcp_receive_reset",
                "-o",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .chain([std::env::temp_dir()
                .join(format!("rstbench-perf-{}.data", std::process::id()))
                .display()
                .to_string()])
            .collect(),
        ),
    ];
    for (name, tool, args) in tools {
        if !which(tool) {
            println!("reference: {tool} not installed, no `{name}` row");
            continue;
        }
        for threads in [1, 2] {
            let (mut un, mut tr) = (vec![], vec![]);
            let (mut captured, mut generated_events) = (0u64, 0u64);
            for _ in 0..opts.rounds {
                un.push(generate(ns, Mode::Refused, threads, opts.seconds)? as f64 / opts.seconds);
                let (n, seen) = reference_round(ns, tool, &args, threads, opts.seconds)?;
                tr.push(n as f64 / opts.seconds);
                generated_events += 2 * n;
                captured += seen;
            }
            let (u, t) = (median(&mut un), median(&mut tr));
            println!(
                "reference: {name}, refused, {threads} thread(s): untraced {u:.0}/s, traced {t:.0}/s, ratio {:.3}, events {captured}/{generated_events}",
                t / u
            );
        }
    }
    Ok(())
}

/// One round under a reference tool. Returns (resets generated, events the tool reported:
/// printed lines, the count, or perf's sample count).
fn reference_round(
    ns: &Netns,
    tool: &str,
    args: &[String],
    threads: usize,
    secs: f64,
) -> Result<(u64, u64)> {
    let mut child = Command::new(tool)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {tool}"))?;
    let out = BufReader::new(child.stdout.take().context("stdout")?);
    let err = BufReader::new(child.stderr.take().context("stderr")?);
    let (tx, rx) = std::sync::mpsc::channel();
    let out_t = count_lines(out, tx.clone());
    let err_t = count_lines(err, tx);
    if tool == "perf" {
        // perf says nothing when it is ready.
        std::thread::sleep(Duration::from_secs(1));
    } else if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = child.kill();
        bail!("{tool} did not attach");
    }
    let generated = generate(ns, Mode::Refused, threads, secs)?;
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait()?;
    let (out_lines, out_num) = out_t.join().unwrap_or((0, 0));
    let (_, err_num) = err_t.join().unwrap_or((0, 0));
    let seen = if args.iter().any(|a| a.contains("printf")) {
        out_lines
    } else {
        out_num.max(err_num)
    };
    if tool == "perf" {
        let _ = std::fs::remove_file(args.last().map(String::as_str).unwrap_or_default());
    }
    Ok((generated, seen))
}

/// Reads a tool's output stream: signals readiness (bpftrace's "Attaching" line), counts the
/// other lines, and keeps the last number it saw (bpftrace's "@n: N", perf's "(N samples)").
fn count_lines<R: std::io::Read + Send + 'static>(
    r: BufReader<R>,
    tx: std::sync::mpsc::Sender<()>,
) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let (mut lines, mut last_num) = (0u64, 0u64);
        for l in r.lines().map_while(Result::ok) {
            if l.starts_with("Attaching") {
                let _ = tx.send(());
                continue;
            }
            lines += 1;
            if let Some(n) = l
                .strip_prefix("@n: ")
                .or_else(|| l.split(" (").nth(1)?.strip_suffix(" samples) ]"))
                .and_then(|v| v.trim().parse().ok())
            {
                last_num = n;
            }
        }
        (lines, last_num)
    })
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
