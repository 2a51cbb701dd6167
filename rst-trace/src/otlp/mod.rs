//! `--otlp URL`: every record (`rst`, `app_error`, `not_noticed`, `lost`) as an OTLP log record
//! and the `--metrics` counts as OTLP metrics, over HTTP with protobuf (`URL/v1/logs`,
//! `URL/v1/metrics`), by the OpenTelemetry project's SDK and exporter.
//!
//! The export never holds up the event loop: the loop hands each record's JSON to a bounded
//! queue without waiting ([`Otlp::send`]) and counts what does not fit; a thread of its own
//! turns the JSON into log records and sends them in batches, retrying with backoff while the
//! collector is down (`logs`). The metrics have their own thread, the SDK's periodic reader
//! (`meters`). Both say on stderr when the collector stops answering and when it is back.

mod logs;
mod map;
mod meters;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

use crate::render::{Clock, metrics};

/// Longest wait for one HTTP request to the collector.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// At exit, how long the queued records may take to go out.
pub const EXIT_FLUSH: Duration = Duration::from_secs(5);

/// What `--otlp`, `--otlp-header`, `--otlp-interval` and `--otlp-queue` ask for.
#[derive(Clone, Debug)]
pub struct Options {
    /// The collector's base URL, without a trailing `/`.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub interval: Duration,
    /// Records that may wait for the collector.
    pub queue: usize,
}

/// The exporter's state the event loop and the export threads share.
struct Shared {
    /// Records waiting: in the channel, or in the batch being sent. At most `--otlp-queue`.
    waiting: AtomicUsize,
    queue: usize,
    /// Records the queue had no room for, since start.
    dropped: AtomicU64,
    /// Set at exit: retries stop at `deadline`.
    closing: AtomicBool,
    deadline: Mutex<Option<Instant>>,
}

impl Shared {
    /// True once the exit deadline has passed.
    fn out_of_time(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
            && self
                .deadline
                .lock()
                .ok()
                .and_then(|d| *d)
                .is_some_and(|d| Instant::now() >= d)
    }
}

/// A collector that stopped answering, said once; and said again when it answers.
struct Health {
    what: String,
    down: bool,
}

impl Health {
    fn new(what: String) -> Self {
        Self { what, down: false }
    }

    fn failed(&mut self, error: &dyn std::fmt::Display, then: &str) {
        if !self.down {
            self.down = true;
            eprintln!("rst-trace: warning: {} failed ({error}); {then}", self.what);
        }
    }

    fn worked(&mut self) {
        if self.down {
            self.down = false;
            eprintln!("rst-trace: {} works again", self.what);
        }
    }
}

/// The running export: the queue's sending end and the two threads.
pub struct Otlp {
    tx: Option<SyncSender<String>>,
    shared: Arc<Shared>,
    logs_done: Receiver<()>,
    meters: meters::Meters,
}

impl Otlp {
    /// Starts both exports; an exporter that cannot be built is an error (a collector that does
    /// not answer is not: that is warned about, and retried).
    pub fn start(opts: &Options, clock: Clock, counts: metrics::Shared) -> Result<Self> {
        let resource = resource();
        let shared = Arc::new(Shared {
            waiting: AtomicUsize::new(0),
            queue: opts.queue,
            dropped: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            deadline: Mutex::new(None),
        });
        let (tx, rx) = mpsc::sync_channel(opts.queue);
        let logs_done = logs::spawn(opts, clock, resource.clone(), rx, shared.clone())?;
        let meters = meters::spawn(opts, resource, counts)?;
        Ok(Self {
            tx: Some(tx),
            shared,
            logs_done,
            meters,
        })
    }

    /// Queues one JSON record without waiting; a full queue drops it, counted.
    pub fn send(&self, json: String) {
        let Some(tx) = &self.tx else { return };
        let s = &self.shared;
        // The channel holds `queue` too, but the batch in flight counts against the same bound.
        if s.waiting.fetch_add(1, Ordering::Relaxed) >= s.queue {
            s.waiting.fetch_sub(1, Ordering::Relaxed);
            s.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(json) {
            s.waiting.fetch_sub(1, Ordering::Relaxed);
            s.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped so far (the queue was full).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Sends what is queued and the metrics once more, within [`EXIT_FLUSH`] plus one request
    /// per signal; what could not go out is said on stderr.
    pub fn shutdown(mut self) {
        if let Ok(mut d) = self.shared.deadline.lock() {
            *d = Some(Instant::now() + EXIT_FLUSH);
        }
        self.shared.closing.store(true, Ordering::Relaxed);
        // The thread sees the queue close once it has taken everything in it.
        drop(self.tx.take());
        if self
            .logs_done
            .recv_timeout(EXIT_FLUSH + REQUEST_TIMEOUT)
            .is_err()
        {
            eprintln!(
                "rst-trace: warning: OTLP logs still queued at exit were not sent: the collector \
                 did not answer in time"
            );
        }
        self.meters.shutdown();
    }
}

/// The resource every record and metric carries: this service, this host, and the Kubernetes
/// node from the DaemonSet's downward API (`K8S_NODE_NAME`); `OTEL_RESOURCE_ATTRIBUTES` too.
fn resource() -> Resource {
    let mut attrs = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        attrs.push(KeyValue::new("host.name", host.trim().to_owned()));
    }
    if let Ok(node) = std::env::var("K8S_NODE_NAME")
        && !node.is_empty()
    {
        attrs.push(KeyValue::new("k8s.node.name", node));
    }
    Resource::builder()
        .with_service_name("rst-trace")
        .with_attributes(attrs)
        .build()
}

/// Runs `build` on a thread of its own and waits for its answer: the exporters' blocking HTTP
/// client must be made, used and dropped outside the tokio runtime.
fn on_thread<T: Send + 'static>(
    name: &str,
    build: impl FnOnce(SyncSender<Result<(), String>>) -> T + Send + 'static,
) -> Result<()> {
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || build(ready_tx))
        .with_context(|| format!("starting the {name} thread"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow!("{e}")),
        Err(_) => Err(anyhow!("the {name} thread ended at start")),
    }
}

/// The header pairs as the exporter builders take them.
fn header_map(opts: &Options) -> std::collections::HashMap<String, String> {
    opts.headers.iter().cloned().collect()
}

/// Checks `--otlp URL`: plain HTTP (no TLS is built in), a host; the trailing `/` removed.
pub fn parse_url(s: &str) -> Result<String, String> {
    if s.starts_with("https://") {
        return Err(
            "TLS is not built into rst-trace: send to a collector on the node or in the cluster \
             over http:// (it can forward with TLS)"
                .into(),
        );
    }
    let Some(rest) = s.strip_prefix("http://") else {
        return Err("give the collector's OTLP/HTTP base URL, e.g. http://localhost:4318".into());
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err("the URL has no host: e.g. http://localhost:4318".into());
    }
    if rest.trim_end_matches('/').ends_with("/v1/logs") {
        return Err(
            "give the base URL (http://HOST:4318): /v1/logs and /v1/metrics are added".into(),
        );
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// Checks `--otlp-header K=V`.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err("a header is NAME=VALUE, e.g. Authorization=Bearer abc".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_header, parse_url};

    #[test]
    fn urls_and_headers() {
        assert_eq!(
            parse_url("http://collector:4318/").unwrap(),
            "http://collector:4318"
        );
        assert!(
            parse_url("https://collector:4318")
                .unwrap_err()
                .contains("TLS")
        );
        assert!(parse_url("collector:4318").is_err());
        assert!(parse_url("http:///v1").is_err());
        assert!(parse_url("http://c:4318/v1/logs").is_err());
        assert_eq!(
            parse_header("Authorization=Bearer a=b").unwrap(),
            ("Authorization".into(), "Bearer a=b".into())
        );
        assert!(parse_header("=x").is_err());
        assert!(parse_header("novalue").is_err());
    }
}
