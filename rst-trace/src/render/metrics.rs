//! `--metrics ADDR`: Prometheus text format at `/metrics`, served by hyper and written by
//! prometheus-client (the Prometheus project's crate).
//!
//! `rst_trace_resets_total{direction,condition,comm,container,pod}`,
//! `rst_trace_lost_events_total`, `rst_trace_app_errors_total{errno}` and
//! `rst_trace_resets_not_noticed_total`, plus process metrics. Label cardinality stays bounded:
//! at most [`MAX_COMMS`] distinct `comm`, `container` and `pod` values each, the rest fold into
//! `other`; `errno` takes four values.

use std::{
    collections::HashSet,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, prometheus_text},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
    },
    registry::Registry,
};

use crate::{explain::Report, kernel::ProgramCost};

pub const MAX_COMMS: usize = 100;

/// The labels of `rst_trace_resets_total`, in the order they are written. Another label is one
/// more field here and one more [`Bounded`] in [`Metrics`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResetLabels {
    direction: &'static str,
    condition: &'static str,
    comm: String,
    /// The container's name (or short id), `-` outside containers.
    container: String,
    /// `namespace/pod`, `-` outside Kubernetes pods.
    pod: String,
}

/// The label of `rst_trace_app_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrnoLabel {
    errno: String,
}

/// The values one label may take: the first `max` seen, then `other`.
#[derive(Debug)]
struct Bounded {
    seen: HashSet<String>,
    max: usize,
}

impl Bounded {
    fn new(max: usize) -> Self {
        Self {
            seen: HashSet::new(),
            max,
        }
    }

    fn value(&mut self, v: &str) -> String {
        if self.seen.contains(v) {
            v.to_owned()
        } else if self.seen.len() < self.max {
            self.seen.insert(v.to_owned());
            v.to_owned()
        } else {
            "other".to_owned()
        }
    }
}

pub struct Metrics {
    registry: Registry,
    resets: Family<ResetLabels, Counter>,
    comms: Bounded,
    containers: Bounded,
    pods: Bounded,
    lost: Counter,
    /// Failing application calls by errno name (a handful of values), and resets no call
    /// noticed in time.
    app_errors: Family<ErrnoLabel, Counter>,
    not_noticed: Counter,
    /// Each program's runs and run time, as last read (only with the accounting on).
    programs: ProgramMetrics,
}

pub type Shared = Arc<Mutex<Metrics>>;

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let resets = Family::<ResetLabels, Counter>::default();
        let lost = Counter::default();
        // prometheus-client adds the `_total` of a counter and the final period of its help.
        registry.register(
            "rst_trace_resets",
            "TCP resets, by direction, condition id, process name, container and pod",
            resets.clone(),
        );
        registry.register(
            "rst_trace_lost_events",
            "Reset events dropped because the ring buffer was full",
            lost.clone(),
        );
        let app_errors = Family::<ErrnoLabel, Counter>::default();
        let not_noticed = Counter::default();
        registry.register(
            "rst_trace_app_errors",
            "First failing socket calls of applications (ECONNRESET, EPIPE, ECONNREFUSED, ETIMEDOUT), by errno",
            app_errors.clone(),
        );
        registry.register(
            "rst_trace_resets_not_noticed",
            "Resets no application call noticed within 10 s",
            not_noticed.clone(),
        );
        registry.register_collector(Box::new(ProcessMetrics));
        let programs = ProgramMetrics::default();
        registry.register_collector(Box::new(programs.clone()));
        Self {
            programs,
            registry,
            resets,
            comms: Bounded::new(MAX_COMMS),
            containers: Bounded::new(MAX_COMMS),
            pods: Bounded::new(MAX_COMMS),
            lost,
            app_errors,
            not_noticed,
        }
    }
}

impl Metrics {
    pub fn record(&mut self, r: &Report) {
        let comm = r.process.as_ref().map_or("-", |p| p.comm.as_str());
        let container = r
            .process
            .as_ref()
            .and_then(|p| p.identity.as_ref())
            .and_then(|i| i.container.as_ref());
        let name = container.map_or_else(|| "-".to_owned(), |c| c.label());
        let pod = container
            .and_then(|c| c.pod_label())
            .unwrap_or_else(|| "-".to_owned());
        let labels = ResetLabels {
            direction: r.direction.as_str(),
            condition: r.condition.as_str(),
            comm: self.comms.value(comm),
            container: self.containers.value(&name),
            pod: self.pods.value(&pod),
        };
        self.resets.get_or_create(&labels).inc();
    }

    /// The ring buffer's lost-event count, `total` since start-up.
    pub fn set_lost(&mut self, total: u64) {
        self.lost.inc_by(total.saturating_sub(self.lost.get()));
    }

    /// A failing application call (joined to a reset or not).
    pub fn app_error(&mut self, errno: String) {
        self.app_errors.get_or_create(&ErrnoLabel { errno }).inc();
    }

    pub fn not_noticed(&mut self) {
        self.not_noticed.inc();
    }

    /// The programs' cost as the kernel counts it now.
    pub fn set_programs(&mut self, costs: Vec<ProgramCost>) {
        if let Ok(mut p) = self.programs.0.lock() {
            *p = costs;
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut s, &self.registry);
        s
    }
}

/// The standard process metrics, read from /proc/self at each scrape.
#[derive(Debug)]
struct ProcessMetrics;

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
struct ProgramMetrics(Arc<Mutex<Vec<ProgramCost>>>);

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
    let mut family = encoder.encode_descriptor(
        name,
        &help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for c in costs {
        let label = ProgramLabel {
            program: c.name.clone(),
        };
        ConstCounter::new(value(c)).encode(family.encode_family(&label)?)?;
    }
    Ok(())
}

/// `--metrics` value: `ADDR:PORT`, or a bare `PORT` meaning 127.0.0.1:PORT (loopback unless the
/// operator names another address).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| "expected ADDR:PORT (e.g. 127.0.0.1:9464) or PORT".to_owned())
}

/// Binds now (so a busy port is a start-up error) and serves in the background.
pub async fn serve(addr: SocketAddr, shared: Shared) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics: cannot listen on {addr}: pick another address"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let shared = shared.clone();
                    async move {
                        let resp = if req.uri().path() == "/metrics" {
                            let body = shared.lock().map(|m| m.render()).unwrap_or_default();
                            Response::builder()
                                .header("content-type", prometheus_text::CONTENT_TYPE)
                                .body(Full::new(Bytes::from(body)))
                        } else {
                            Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::from("see /metrics\n")))
                        };
                        Ok::<_, Infallible>(resp.expect("static response parts"))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_comms_bounded() {
        let mut m = Metrics::default();
        let mut r = crate::filter::tests_support::report(
            Some(1),
            "a\"b",
            1,
            2,
            crate::explain::Direction::Sent,
        );
        m.record(&r);
        let out = m.render();
        assert!(out.contains(r#"comm="a\"b""#), "{out}");
        for i in 0..(MAX_COMMS + 10) {
            r = crate::filter::tests_support::report(
                Some(1),
                &format!("c{i}"),
                1,
                2,
                crate::explain::Direction::Sent,
            );
            m.record(&r);
        }
        let out = m.render();
        let comms = out
            .lines()
            .filter(|l| l.starts_with("rst_trace_resets_total{"))
            .count();
        assert_eq!(comms, MAX_COMMS + 1, "{out}");
        assert!(
            out.contains(r#"comm="other",container="-",pod="-"} 11"#),
            "{out}"
        );
        assert!(out.contains("rst_trace_lost_events_total 0"));
        assert!(out.contains("process_resident_memory_bytes"));
    }

    /// A container's resets carry its name and pod; containers are bounded like comms.
    #[test]
    fn container_and_pod_labels() {
        use crate::identity::{Container, Identity, Runtime};

        let mut m = Metrics::default();
        for i in 0..(MAX_COMMS + 5) {
            let mut r = crate::filter::tests_support::report(
                Some(1),
                "nginx",
                1,
                2,
                crate::explain::Direction::Sent,
            );
            let mut c = Container {
                id: format!("{i:064x}"),
                runtime: Runtime::Containerd,
                name: None,
                pod: Some(format!("web-{i}")),
                namespace: Some("shop".into()),
                container_name: Some("web".into()),
                pod_uid: None,
            };
            if i > 0 {
                c.container_name = Some(format!("c{i}"));
            }
            r.process.as_mut().unwrap().identity = Some(Arc::new(Identity {
                container: Some(c),
                ..Identity::default()
            }));
            m.record(&r);
        }
        let out = m.render();
        assert!(
            out.contains(r#"comm="nginx",container="web",pod="shop/web-0"} 1"#),
            "{out}"
        );
        assert!(out.contains(r#"container="other",pod="other"} 5"#), "{out}");
    }

    #[test]
    fn address_forms() {
        assert_eq!(
            parse_addr("9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            parse_addr("[::1]:9464").unwrap(),
            "[::1]:9464".parse().unwrap()
        );
        assert!(parse_addr("localhost").is_err());
    }
}
