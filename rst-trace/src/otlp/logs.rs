//! The log export thread: takes JSON records from the queue, sends them as OTLP log records
//! in batches, and keeps a batch the collector refused until it takes it (backoff from 0.5 s to
//! 30 s). Meanwhile the queue fills; what does not fit is counted and, once the collector
//! answers, reported as a `lost` record (`cause`: `otlp_queue`) and on stderr.

use std::{
    sync::{
        Arc,
        atomic::Ordering,
        mpsc::{Receiver, RecvTimeoutError, SyncSender},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use opentelemetry::{
    InstrumentationScope,
    logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _},
};
use opentelemetry_otlp::{LogExporter, Protocol, RetryPolicy, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    Resource,
    logs::{LogBatch, LogExporter as _, SdkLogRecord, SdkLogger, SdkLoggerProvider},
};
use serde_json::json;

use super::{Health, Options, REQUEST_TIMEOUT, Shared, header_map, map, on_thread};
use crate::render::Clock;

/// Records per request.
const MAX_BATCH: usize = 512;
/// How long the first record of a batch waits for others.
const BATCH_DELAY: Duration = Duration::from_millis(200);
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Starts the thread; its receiver says when it has sent (or given up on) the last record.
pub(super) fn spawn(
    opts: &Options,
    clock: Clock,
    resource: Resource,
    rx: Receiver<String>,
    shared: Arc<Shared>,
) -> Result<Receiver<()>> {
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
    let (opts, queue) = (opts.clone(), opts.queue);
    on_thread("otlp-logs", move |ready: SyncSender<Result<(), String>>| {
        let exporter = match build(&opts, &resource) {
            Ok(e) => e,
            Err(e) => return drop(ready.send(Err(e))),
        };
        let _ = ready.send(Ok(()));
        let provider = SdkLoggerProvider::builder().with_resource(resource).build();
        let mut t = Thread {
            exporter,
            logger: provider.logger("rst-trace"),
            scope: InstrumentationScope::builder("rst-trace")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            clock,
            shared,
            health: Health::new(format!("OTLP logs export to {}/v1/logs", opts.url)),
            queue,
            reported: 0,
            unsent: 0,
        };
        t.run(&rx);
        let _ = done_tx.send(());
    })?;
    Ok(done_rx)
}

fn build(opts: &Options, resource: &Resource) -> Result<LogExporter, String> {
    let mut e = LogExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/logs", opts.url))
        .with_timeout(REQUEST_TIMEOUT)
        .with_headers(header_map(opts))
        // This thread retries (with a longer backoff, and keeps the batch meanwhile).
        .with_retry_policy(RetryPolicy::disabled())
        .build()
        .map_err(|e| format!("OTLP log exporter: {e}"))?;
    e.set_resource(resource);
    Ok(e)
}

struct Thread {
    exporter: LogExporter,
    logger: SdkLogger,
    scope: InstrumentationScope,
    clock: Clock,
    shared: Arc<Shared>,
    health: Health,
    queue: usize,
    /// Dropped records already reported.
    reported: u64,
    /// Records the collector had not taken when the exit deadline passed.
    unsent: u64,
}

impl Thread {
    /// Until the queue closes and is empty (or the exit deadline passes).
    fn run(&mut self, rx: &Receiver<String>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            // Idle: once a second, a drop count not yet reported goes out on its own.
            let closed = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(json) => {
                    batch.push(json);
                    fill(rx, &mut batch)
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            self.deliver(&mut batch);
            if closed {
                if self.unsent > 0 {
                    eprintln!(
                        "rst-trace: warning: {} OTLP log records not sent at exit: the \
                         collector did not take them within {} s",
                        self.unsent,
                        super::EXIT_FLUSH.as_secs()
                    );
                }
                return;
            }
        }
    }

    /// Sends the batch (and a `lost` record for new drops) until the collector takes it, or
    /// the exit deadline passes.
    fn deliver(&mut self, batch: &mut Vec<String>) {
        let taken = batch.len();
        let mut records: Vec<SdkLogRecord> =
            batch.drain(..).filter_map(|j| self.record(&j)).collect();
        self.send(&mut records);
        // Sent or given up: room for as many more.
        self.shared.waiting.fetch_sub(taken, Ordering::Relaxed);
    }

    fn send(&mut self, records: &mut Vec<SdkLogRecord>) {
        let dropped = self.shared.dropped.load(Ordering::Relaxed);
        if dropped > self.reported {
            let n = dropped - self.reported;
            eprintln!(
                "rst-trace: warning: {n} records not exported over OTLP ({dropped} in all): the \
                 queue of {} was full while the collector was down or slow",
                self.queue
            );
            let lost = json!({"type": "lost", "cause": "otlp_queue", "count": n,
                "total": dropped, "mono_ns": Clock::mono_now()});
            records.extend(self.record(&lost.to_string()));
            self.reported = dropped;
        }
        if records.is_empty() {
            return;
        }
        if self.shared.out_of_time() {
            self.unsent += records.len() as u64;
            return;
        }
        let mut backoff = BACKOFF_FIRST;
        loop {
            let refs: Vec<_> = records.iter().map(|r| (r, &self.scope)).collect();
            match futures_executor::block_on(self.exporter.export(LogBatch::new(&refs))) {
                Ok(()) => return self.health.worked(),
                Err(e) => self.health.failed(
                    &e,
                    "records wait in the queue and are retried with backoff; event output is \
                     not affected",
                ),
            }
            if !self.wait(backoff) {
                self.unsent += records.len() as u64;
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Sleeps `d` (at most 200 ms at exit); false once the exit deadline has passed.
    fn wait(&self, d: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.shared.out_of_time() {
                return false;
            }
            let limit = if self.shared.closing.load(Ordering::Relaxed) {
                d.min(Duration::from_millis(200))
            } else {
                d
            };
            if start.elapsed() >= limit {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One JSON record as an SDK log record, stamped with the event's own time.
    fn record(&self, json: &str) -> Option<SdkLogRecord> {
        let m = map::map(json)?;
        let mut r = self.logger.create_log_record();
        if let Some(mono) = m.mono_ns {
            let wall = u64::try_from(self.clock.wall_ns(mono)).unwrap_or(0);
            r.set_timestamp(SystemTime::UNIX_EPOCH + Duration::from_nanos(wall));
        }
        r.set_observed_timestamp(SystemTime::now());
        let (severity, text) = m.kind.severity();
        r.set_severity_number(severity);
        r.set_severity_text(text);
        r.set_event_name(m.kind.event_name());
        r.set_body(AnyValue::from(m.body));
        for (k, v) in m.attrs {
            r.add_attribute(k, v);
        }
        Some(r)
    }
}

/// Takes more records for the batch, until it is full or [`BATCH_DELAY`] has passed; true if
/// the queue closed.
fn fill(rx: &Receiver<String>, batch: &mut Vec<String>) -> bool {
    let until = Instant::now() + BATCH_DELAY;
    while batch.len() < MAX_BATCH {
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(json) => batch.push(json),
            Err(RecvTimeoutError::Timeout) => return false,
            Err(RecvTimeoutError::Disconnected) => return true,
        }
    }
    false
}
