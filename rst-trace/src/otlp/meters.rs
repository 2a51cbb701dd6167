//! The metrics export: the counts `--metrics` serves, as cumulative monotonic OTLP Sums, read
//! from [`metrics::Shared`] when the SDK's periodic reader collects (every `--otlp-interval`,
//! and once at exit). Same series, same label bounds as Prometheus; the names follow
//! OpenTelemetry's conventions (docs/output.md lists both).

use std::{
    sync::{
        Arc, Mutex,
        mpsc::{Receiver, SyncSender},
    },
    time::Duration,
};

use anyhow::Result;
use opentelemetry::{KeyValue, metrics::MeterProvider as _};
use opentelemetry_otlp::{MetricExporter, Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{
        PeriodicReader, SdkMeterProvider, Temporality, data::ResourceMetrics,
        exporter::PushMetricExporter,
    },
};

use super::{Health, Options, REQUEST_TIMEOUT, header_map, on_thread};
use crate::render::metrics::{self, ResetLabels, Snapshot};

/// The running metrics export: a thread that owns the meter provider until told to stop.
pub(super) struct Meters {
    stop: SyncSender<()>,
    done: Receiver<()>,
}

impl Meters {
    /// One last collection and export, waiting at most one request's time for it.
    pub(super) fn shutdown(self) {
        let _ = self.stop.send(());
        if self.done.recv_timeout(REQUEST_TIMEOUT * 2).is_err() {
            eprintln!(
                "rst-trace: warning: the last OTLP metrics were not sent: the collector did not \
                 answer in time"
            );
        }
    }
}

pub(super) fn spawn(opts: &Options, resource: Resource, counts: metrics::Shared) -> Result<Meters> {
    let (stop, stop_rx) = std::sync::mpsc::sync_channel(1);
    let (done_tx, done) = std::sync::mpsc::sync_channel(1);
    let opts = opts.clone();
    on_thread(
        "otlp-metrics",
        move |ready: SyncSender<Result<(), String>>| {
            let exporter = match build(&opts) {
                Ok(e) => e,
                Err(e) => return drop(ready.send(Err(e))),
            };
            let reader = PeriodicReader::builder(exporter)
                .with_interval(opts.interval)
                .build();
            let provider = SdkMeterProvider::builder()
                .with_resource(resource)
                .with_reader(reader)
                .build();
            register(&provider, &counts);
            let _ = ready.send(Ok(()));
            let _ = stop_rx.recv();
            // The reader collects and exports once more, then the provider (and its HTTP client)
            // is dropped here, outside the runtime.
            let _ = provider.shutdown_with_timeout(REQUEST_TIMEOUT);
            drop(provider);
            let _ = done_tx.send(());
        },
    )?;
    Ok(Meters { stop, done })
}

fn build(opts: &Options) -> Result<Watched, String> {
    let inner = MetricExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/metrics", opts.url))
        .with_timeout(REQUEST_TIMEOUT)
        .with_headers(header_map(opts))
        .with_temporality(Temporality::Cumulative)
        .build()
        .map_err(|e| format!("OTLP metric exporter: {e}"))?;
    Ok(Watched {
        inner,
        health: Mutex::new(Health::new(format!(
            "OTLP metrics export to {}/v1/metrics",
            opts.url
        ))),
        then: format!(
            "they are sent again every {} s, cumulative: nothing is lost",
            opts.interval.as_secs()
        ),
    })
}

/// The OTLP exporter, saying on stderr when the collector stops and starts taking metrics
/// (the SDK keeps that to its own internal log, which rst-trace does not build in).
struct Watched {
    inner: MetricExporter,
    health: Mutex<Health>,
    then: String,
}

impl PushMetricExporter for Watched {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let r = self.inner.export(metrics).await;
        if let Ok(mut h) = self.health.lock() {
            match &r {
                Ok(()) => h.worked(),
                Err(e) => h.failed(e, &self.then),
            }
        }
        r
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// The attributes of one `rst_trace.resets` series: Prometheus's labels under their
/// OpenTelemetry names; `-` (none) leaves the attribute out, `other` stays (the bound).
fn reset_attrs(l: &ResetLabels) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new("rst_trace.direction", l.direction),
        KeyValue::new("rst_trace.condition", l.condition),
        KeyValue::new("process.executable.name", l.comm.clone()),
    ];
    if l.container != "-" {
        a.push(KeyValue::new("container.name", l.container.clone()));
    }
    match l.pod.split_once('/') {
        Some((ns, pod)) => {
            a.push(KeyValue::new("k8s.namespace.name", ns.to_owned()));
            a.push(KeyValue::new("k8s.pod.name", pod.to_owned()));
        }
        None if l.pod != "-" => a.push(KeyValue::new("k8s.pod.name", l.pod.clone())),
        None => {}
    }
    a
}

/// One of the label-less totals of a [`Snapshot`].
type Total = fn(&Snapshot) -> u64;

/// The instruments, each observing the shared counts when the reader collects.
fn register(provider: &SdkMeterProvider, counts: &metrics::Shared) {
    let meter = provider.meter("rst-trace");
    let snap = {
        let counts = counts.clone();
        move || counts.lock().map(|m| m.snapshot()).unwrap_or_default()
    };
    let snap: Arc<dyn Fn() -> Snapshot + Send + Sync> = Arc::new(snap);
    let s = snap.clone();
    meter
        .u64_observable_counter("rst_trace.resets")
        .with_description("TCP resets, by direction, condition, process, container and pod")
        .with_unit("{reset}")
        .with_callback(move |o| {
            for (l, n) in s().resets {
                o.observe(n, &reset_attrs(&l));
            }
        })
        .build();
    let s = snap.clone();
    meter
        .u64_observable_counter("rst_trace.app_errors")
        .with_description("First failing socket calls of applications, by errno")
        .with_unit("{call}")
        .with_callback(move |o| {
            for (errno, n) in s().app_errors {
                o.observe(n, &[KeyValue::new("error.type", errno)]);
            }
        })
        .build();
    let totals: [(&'static str, &'static str, Total); 3] = [
        (
            "rst_trace.resets_not_noticed",
            "Resets no application call noticed within 10 s",
            |s| s.not_noticed,
        ),
        (
            "rst_trace.lost_events",
            "Reset events dropped because the ring buffer was full",
            |s| s.lost,
        ),
        (
            "rst_trace.otlp.dropped_records",
            "Records not exported over OTLP: the queue was full while the collector was down",
            |s| s.otlp_dropped,
        ),
    ];
    for (name, what, value) in totals {
        let s = snap.clone();
        meter
            .u64_observable_counter(name)
            .with_description(what)
            .with_callback(move |o| o.observe(value(&s()), &[]))
            .build();
    }
    register_cost(&meter, &snap);
    register_maps(&meter, &snap);
}

/// The host's sockets against the kernel side's maps, as gauges.
fn register_maps(
    meter: &opentelemetry::metrics::Meter,
    snap: &Arc<dyn Fn() -> Snapshot + Send + Sync>,
) {
    type Read = fn(&crate::kernel::MapUse) -> u64;
    let gauges: [(&'static str, &'static str, Read); 4] = [
        (
            "rst_trace.host.tcp_sockets",
            "TCP sockets on the host, every network namespace",
            |m| m.tcp_sockets,
        ),
        (
            "rst_trace.socket_owner_map.capacity",
            "Live TCP sockets whose owners the kernel side remembers",
            |m| m.owner_capacity,
        ),
        (
            "rst_trace.host.time_wait_sockets",
            "TIME_WAIT sockets of every network namespace a process is in",
            |m| m.time_wait.0,
        ),
        (
            "rst_trace.time_wait_map.capacity",
            "TIME_WAIT connections the kernel side remembers",
            |m| m.time_wait.1,
        ),
    ];
    for (name, what, read) in gauges {
        let s = snap.clone();
        meter
            .u64_observable_gauge(name)
            .with_description(what)
            .with_unit("{socket}")
            .with_callback(move |o| {
                if let Some(v) = s().maps.as_ref().map(read) {
                    o.observe(v, &[]);
                }
            })
            .build();
    }
}

/// `--self-cost`: each eBPF program's runs and CPU time (no series without it).
fn register_cost(
    meter: &opentelemetry::metrics::Meter,
    snap: &Arc<dyn Fn() -> Snapshot + Send + Sync>,
) {
    let s = snap.clone();
    meter
        .u64_observable_counter("rst_trace.bpf_program.runs")
        .with_description("Runs of each rst-trace eBPF program (kernel accounting)")
        .with_unit("{run}")
        .with_callback(move |o| {
            for c in s().programs {
                o.observe(c.runs, &[KeyValue::new("rst_trace.program", c.name)]);
            }
        })
        .build();
    let s = snap.clone();
    meter
        .f64_observable_counter("rst_trace.bpf_program.run_time")
        .with_description("CPU time of each rst-trace eBPF program (kernel accounting)")
        .with_unit("s")
        .with_callback(move |o| {
            for c in s().programs {
                o.observe(
                    c.run_time.as_secs_f64(),
                    &[KeyValue::new("rst_trace.program", c.name)],
                );
            }
        })
        .build();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_labels_under_opentelemetry_names() {
        let l = |container: &str, pod: &str| ResetLabels {
            direction: "sent",
            condition: "close_with_unread_data",
            comm: "nginx".into(),
            container: container.into(),
            pod: pod.into(),
        };
        let keys = |a: Vec<KeyValue>| -> Vec<String> {
            a.iter()
                .map(|kv| format!("{}={}", kv.key, kv.value))
                .collect()
        };
        assert_eq!(
            keys(reset_attrs(&l("web", "shop/web-0"))),
            [
                "rst_trace.direction=sent",
                "rst_trace.condition=close_with_unread_data",
                "process.executable.name=nginx",
                "container.name=web",
                "k8s.namespace.name=shop",
                "k8s.pod.name=web-0"
            ]
        );
        // Outside containers and pods: no attribute; past the bound: `other`.
        assert_eq!(keys(reset_attrs(&l("-", "-"))).len(), 3);
        assert!(keys(reset_attrs(&l("other", "other"))).contains(&"k8s.pod.name=other".into()));
    }
}
