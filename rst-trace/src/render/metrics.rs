//! `--metrics ADDR`: Prometheus text format at `/metrics`, served by hyper and written by
//! prometheus-client (the Prometheus project's crate).
//!
//! `rst_trace_resets_total{direction,condition,comm,container,pod}`,
//! `rst_trace_lost_events_total`, `rst_trace_app_errors_total{errno}` and
//! `rst_trace_resets_not_noticed_total`, plus process metrics. Label cardinality stays bounded:
//! at most [`MAX_COMMS`] distinct `comm`, `container` and `pod` values each, the rest fold into
//! `other`; `errno` takes four values.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::collectors::{MapMetrics, ProcessMetrics, ProgramMetrics};
use crate::{
    explain::Report,
    kernel::{MapUse, ProgramCost},
};

pub const MAX_COMMS: usize = 100;

/// The labels of `rst_trace_resets_total`, in the order they are written. Another label is one
/// more field here and one more [`Bounded`] in [`Metrics`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResetLabels {
    pub direction: &'static str,
    pub condition: &'static str,
    pub comm: String,
    /// The container's name (or short id), `-` outside containers.
    pub container: String,
    /// `namespace/pod`, `-` outside Kubernetes pods.
    pub pod: String,
}

/// The counts as of now, for `--otlp`'s metrics (prometheus-client's families cannot be
/// walked: [`Metrics`] keeps a handle on each series it creates).
#[derive(Debug, Default)]
pub struct Snapshot {
    pub resets: Vec<(ResetLabels, u64)>,
    pub app_errors: Vec<(String, u64)>,
    pub not_noticed: u64,
    pub lost: u64,
    pub otlp_dropped: u64,
    pub programs: Vec<ProgramCost>,
    /// The host's sockets against the kernel side's maps, as last read.
    pub maps: Option<MapUse>,
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
    /// The same counters as `resets` and `app_errors`, by label (for [`Metrics::snapshot`]).
    series: HashMap<ResetLabels, Counter>,
    errnos: HashMap<String, Counter>,
    /// `--otlp`: records its queue had no room for.
    otlp_dropped: Option<Counter>,
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
    maps: MapMetrics,
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
        let maps = MapMetrics::default();
        registry.register_collector(Box::new(maps.clone()));
        Self {
            programs,
            maps,
            registry,
            resets,
            series: HashMap::new(),
            errnos: HashMap::new(),
            otlp_dropped: None,
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
        let comm = r.process.as_ref().map_or("-", |p| &*p.comm);
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
        if let Some(c) = self.series.get(&labels) {
            c.inc();
        } else {
            let c = self.resets.get_or_create(&labels).clone();
            c.inc();
            self.series.insert(labels, c);
        }
    }

    /// The ring buffer's lost-event count, `total` since start-up.
    pub fn set_lost(&mut self, total: u64) {
        self.lost.inc_by(total.saturating_sub(self.lost.get()));
    }

    /// A failing application call (joined to a reset or not).
    pub fn app_error(&mut self, errno: String) {
        if let Some(c) = self.errnos.get(&errno) {
            c.inc();
        } else {
            let c = self
                .app_errors
                .get_or_create(&ErrnoLabel {
                    errno: errno.clone(),
                })
                .clone();
            c.inc();
            self.errnos.insert(errno, c);
        }
    }

    /// `--otlp`: `rst_trace_otlp_dropped_records_total`, from now on.
    pub fn count_otlp_drops(&mut self) {
        let c = Counter::default();
        self.registry.register(
            "rst_trace_otlp_dropped_records",
            "Records not exported over OTLP: the export queue was full while the collector was down or slow",
            c.clone(),
        );
        self.otlp_dropped = Some(c);
    }

    /// The OTLP queue's drop count, `total` since start-up.
    pub fn set_otlp_dropped(&mut self, total: u64) {
        if let Some(c) = &self.otlp_dropped {
            c.inc_by(total.saturating_sub(c.get()));
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            resets: self
                .series
                .iter()
                .map(|(l, c)| (l.clone(), c.get()))
                .collect(),
            app_errors: self
                .errnos
                .iter()
                .map(|(e, c)| (e.clone(), c.get()))
                .collect(),
            not_noticed: self.not_noticed.get(),
            lost: self.lost.get(),
            otlp_dropped: self.otlp_dropped.as_ref().map_or(0, Counter::get),
            programs: self
                .programs
                .0
                .lock()
                .map(|p| p.clone())
                .unwrap_or_default(),
            maps: self.maps.0.lock().ok().and_then(|m| *m),
        }
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

    /// The host's sockets against the maps, as read now.
    pub fn set_maps(&mut self, m: MapUse) {
        if let Ok(mut maps) = self.maps.0.lock() {
            *maps = Some(m);
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut s, &self.registry);
        s
    }
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
#[path = "metrics_tests.rs"]
mod tests;
