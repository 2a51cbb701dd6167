//! rst-trace's own cost: each of its programs' runs and run time, from the kernel's accounting.
//!
//! The accounting is on only while rst-trace holds the file descriptor `BPF_ENABLE_STATS` gave
//! it (Linux 5.8+), so the host's `kernel.bpf_stats_enabled` sysctl is left alone; and only when
//! the cost is asked for (`--self-cost`, `-v`), since while it is on every BPF program on the
//! host reads the clock twice more per run (`./x bench` measures what that costs).

use std::{os::fd::OwnedFd, time::Duration};

use anyhow::{Context as _, Result};
use aya::Ebpf;

/// The accounting, on for as long as this lives.
pub struct SelfCost {
    _stats: OwnedFd,
}

impl SelfCost {
    pub fn enable() -> Result<Self> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("BPF_ENABLE_STATS (Linux 5.8+) failed")?;
        Ok(Self { _stats: fd })
    }
}

/// One program's runs and run time since the accounting went on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramCost {
    pub name: String,
    pub runs: u64,
    pub run_time: Duration,
}

/// Every loaded program that has run, by name.
pub fn program_costs(ebpf: &Ebpf) -> Vec<ProgramCost> {
    let mut out: Vec<ProgramCost> = ebpf
        .programs()
        .filter_map(|(name, p)| {
            let info = p.info().ok()?;
            (info.run_count() > 0).then(|| ProgramCost {
                name: name.to_owned(),
                runs: info.run_count(),
                run_time: info.run_time(),
            })
        })
        .collect();
    out.sort_by(|a, b| b.run_time.cmp(&a.run_time).then(a.name.cmp(&b.name)));
    out
}

/// `-v`'s lines at exit: the CPU time the programs took in all, then each program's share.
pub fn cost_lines(costs: &[ProgramCost], elapsed: Duration) -> Vec<String> {
    let total: Duration = costs.iter().map(|c| c.run_time).sum();
    let mut lines = vec![format!(
        "rst-trace: its eBPF programs took {:.3} ms of CPU in {:.1} s ({:.4}% of one CPU)",
        total.as_secs_f64() * 1e3,
        elapsed.as_secs_f64(),
        100.0 * total.as_secs_f64() / elapsed.as_secs_f64().max(1e-9)
    )];
    for c in costs {
        lines.push(format!(
            "rst-trace:   {:<28} {:>12} runs {:>10.3} ms {:>8.1} ns/run",
            c.name,
            c.runs,
            c.run_time.as_secs_f64() * 1e3,
            c.run_time.as_nanos() as f64 / c.runs.max(1) as f64
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_lines_total_and_per_program() {
        let costs = [
            ProgramCost {
                name: "sock_io".into(),
                runs: 4000,
                run_time: Duration::from_micros(400),
            },
            ProgramCost {
                name: "tcp_send_reset_btf".into(),
                runs: 10,
                run_time: Duration::from_micros(3),
            },
        ];
        let lines = cost_lines(&costs, Duration::from_secs(2));
        assert_eq!(
            lines[0],
            "rst-trace: its eBPF programs took 0.403 ms of CPU in 2.0 s (0.0201% of one CPU)"
        );
        assert!(lines[1].contains("sock_io") && lines[1].ends_with("100.0 ns/run"));
        assert!(lines[2].ends_with("300.0 ns/run"), "{}", lines[2]);
    }
}
