//! The metrics read when Prometheus scrapes, not counted as events arrive: the process's own
//! CPU and memory, each eBPF program's cost, and the host's sockets against the kernel side's
//! maps.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use crate::kernel::{MapUse, ProgramCost};

/// The standard process metrics, read from /proc/self at each scrape.
#[derive(Debug)]
pub(super) struct ProcessMetrics;

impl Collector for ProcessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use procfs::WithCurrentSystemInfo as _;
        let Ok(stat) = procfs::process::Process::myself().and_then(|p| p.stat()) else {
            return Ok(());
        };
        let cpu = ConstCounter::new(
            (stat.utime + stat.stime) as f64 / procfs::ticks_per_second().max(1) as f64,
        );
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time.",
            None,
            cpu.metric_type(),
        )?)?;
        let rss = ConstGauge::new(stat.rss_bytes().get());
        rss.encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory.",
            None,
            rss.metric_type(),
        )?)
    }
}

/// The label of the per-program cost metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabel {
    program: String,
}

/// `rst_trace_bpf_program_runs_total{program}` and
/// `rst_trace_bpf_program_run_seconds_total{program}`: rst-trace's own cost, from the kernel's
/// accounting (see `kernel::cost`), as last read.
#[derive(Clone, Debug, Default)]
pub(super) struct ProgramMetrics(pub(super) Arc<Mutex<Vec<ProgramCost>>>);

impl Collector for ProgramMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(costs) = self.0.lock() else {
            return Ok(());
        };
        if costs.is_empty() {
            return Ok(());
        }
        per_program(
            &mut encoder,
            (
                "rst_trace_bpf_program_runs",
                "Runs of each rst-trace eBPF program",
            ),
            &costs,
            |c| c.runs,
        )?;
        per_program(
            &mut encoder,
            (
                "rst_trace_bpf_program_run_seconds",
                "CPU time of each rst-trace eBPF program",
            ),
            &costs,
            |c| c.run_time.as_secs_f64(),
        )?;
        Ok(())
    }
}

/// One counter family, a counter per program, of `value` (runs as integers, seconds as floats).
fn per_program<N: prometheus_client::encoding::EncodeCounterValue>(
    encoder: &mut DescriptorEncoder,
    (name, what): (&str, &str),
    costs: &[ProgramCost],
    value: impl Fn(&ProgramCost) -> N,
) -> Result<(), std::fmt::Error> {
    let help = format!("{what} (kernel accounting, while rst-trace runs).");
    let mut family = encoder.encode_descriptor(name, &help, None, MetricType::Counter)?;
    for c in costs {
        let label = ProgramLabel {
            program: c.name.clone(),
        };
        ConstCounter::new(value(c)).encode(family.encode_family(&label)?)?;
    }
    Ok(())
}

/// The host's sockets against the maps that remember them, as last read (once a second):
/// `rst_trace_host_tcp_sockets` against `rst_trace_socket_owner_map_capacity`, and
/// `rst_trace_host_time_wait_sockets` against `rst_trace_time_wait_map_capacity`. A host over
/// a capacity has its least recently used entries forgotten (see `kernel::capacity`).
#[derive(Clone, Debug, Default)]
pub(super) struct MapMetrics(pub(super) Arc<Mutex<Option<MapUse>>>);

impl Collector for MapMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(m) = self.0.lock().ok().and_then(|m| *m) else {
            return Ok(());
        };
        let (tw, tw_capacity) = m.time_wait;
        let gauges = [
            (
                "rst_trace_host_tcp_sockets",
                "TCP sockets on the host, every network namespace (/proc/net/sockstat alloc)",
                m.tcp_sockets,
            ),
            (
                "rst_trace_socket_owner_map_capacity",
                "Live TCP sockets whose owners the kernel side remembers before it forgets the least recently used",
                m.owner_capacity,
            ),
            (
                "rst_trace_host_time_wait_sockets",
                "TIME_WAIT sockets of every network namespace a process is in (/proc/PID/net/sockstat tw; other namespaces' every 10 s)",
                tw,
            ),
            (
                "rst_trace_time_wait_map_capacity",
                "TIME_WAIT connections the kernel side remembers before it forgets the oldest",
                tw_capacity,
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value as i64);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}
