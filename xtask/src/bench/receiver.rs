//! A stand-in OTLP/HTTP collector for the `--otlp` rows: it takes every request and answers
//! success at once (an empty protobuf response), so that the rows measure rst-trace's side of
//! the export. The bench prints how much it took.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use anyhow::{Result, anyhow};

/// Where the `--otlp` rows send.
pub(super) const URL: &str = "http://127.0.0.1:39556";
/// A port nothing listens on: the collector-down row.
pub(super) const DOWN_URL: &str = "http://127.0.0.1:39557";

pub(super) struct Receiver {
    server: Arc<tiny_http::Server>,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Receiver {
    pub(super) fn start() -> Result<Self> {
        let server = Arc::new(
            tiny_http::Server::http("127.0.0.1:39556")
                .map_err(|e| anyhow!("the bench's OTLP receiver on 127.0.0.1:39556: {e}"))?,
        );
        let (requests, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (s, r, b) = (server.clone(), requests.clone(), bytes.clone());
        std::thread::spawn(move || {
            for mut req in s.incoming_requests() {
                let n = std::io::copy(req.as_reader(), &mut std::io::sink()).unwrap_or(0);
                r.fetch_add(1, Ordering::Relaxed);
                b.fetch_add(n, Ordering::Relaxed);
                let _ = req.respond(tiny_http::Response::from_data(Vec::new()));
            }
        });
        Ok(Self {
            server,
            requests,
            bytes,
        })
    }

    /// Requests and bytes taken so far.
    pub(super) fn taken(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.unblock();
    }
}
