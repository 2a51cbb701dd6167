//! `--metrics ADDR`: Prometheus text format at `/metrics`, served by hyper.
//!
//! `rst_trace_resets_total{direction,condition,comm}`, `rst_trace_lost_events_total`,
//! `rst_trace_app_errors_total{errno}` and `rst_trace_resets_not_noticed_total`, plus process
//! metrics. Label cardinality stays bounded: at most [`MAX_COMMS`] distinct `comm`
//! values, the rest fold into `other`.

use std::{
    collections::{BTreeMap, HashSet},
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;

use crate::explain::Report;

pub const MAX_COMMS: usize = 100;

#[derive(Default)]
pub struct Metrics {
    resets: BTreeMap<(&'static str, &'static str, String), u64>,
    comms: HashSet<String>,
    pub lost: u64,
    /// Failing application calls by errno name (a handful of values), and resets no call
    /// noticed in time.
    app_errors: BTreeMap<String, u64>,
    not_noticed: u64,
}

pub type Shared = Arc<Mutex<Metrics>>;

/// Prometheus label value escaping: backslash, double quote, newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn record(&mut self, r: &Report) {
        let comm = r.process.as_ref().map_or("-", |p| p.comm.as_str());
        let comm = if self.comms.contains(comm) {
            comm.to_owned()
        } else if self.comms.len() < MAX_COMMS {
            self.comms.insert(comm.to_owned());
            comm.to_owned()
        } else {
            "other".to_owned()
        };
        *self
            .resets
            .entry((r.direction.as_str(), r.condition.as_str(), comm))
            .or_default() += 1;
    }

    /// A failing application call (joined to a reset or not).
    pub fn app_error(&mut self, errno: String) {
        *self.app_errors.entry(errno).or_default() += 1;
    }

    pub fn not_noticed(&mut self) {
        self.not_noticed += 1;
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP rst_trace_resets_total TCP resets, by direction, condition id and process name.\n");
        s.push_str("# TYPE rst_trace_resets_total counter\n");
        for ((d, c, comm), n) in &self.resets {
            let _ = writeln!(
                s,
                "rst_trace_resets_total{{direction=\"{d}\",condition=\"{c}\",comm=\"{}\"}} {n}",
                escape(comm)
            );
        }
        s.push_str("# HELP rst_trace_lost_events_total Reset events dropped because the ring buffer was full.\n");
        s.push_str("# TYPE rst_trace_lost_events_total counter\n");
        let _ = writeln!(s, "rst_trace_lost_events_total {}", self.lost);
        s.push_str("# HELP rst_trace_app_errors_total First failing socket calls of applications (ECONNRESET, EPIPE, ECONNREFUSED, ETIMEDOUT), by errno.\n");
        s.push_str("# TYPE rst_trace_app_errors_total counter\n");
        for (e, n) in &self.app_errors {
            let _ = writeln!(s, "rst_trace_app_errors_total{{errno=\"{e}\"}} {n}");
        }
        s.push_str("# HELP rst_trace_resets_not_noticed_total Resets no application call noticed within 10 s.\n");
        s.push_str("# TYPE rst_trace_resets_not_noticed_total counter\n");
        let _ = writeln!(s, "rst_trace_resets_not_noticed_total {}", self.not_noticed);
        process_metrics(&mut s);
        s
    }
}

/// The standard process metrics, from /proc/self.
fn process_metrics(s: &mut String) {
    // SAFETY: sysconf has no preconditions.
    let (tck, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
            libc::sysconf(libc::_SC_PAGESIZE).max(1) as u64,
        )
    };
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some(rest) = stat.rsplit(')').next()
    {
        // Fields after the comm: state is field 3, utime 14, stime 15, rss 24.
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let cpu = (num(14) + num(15)) as f64 / tck;
        let _ = writeln!(
            s,
            "# HELP process_cpu_seconds_total User and system CPU time.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}"
        );
        let _ = writeln!(
            s,
            "# HELP process_resident_memory_bytes Resident memory.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}",
            num(24) * page
        );
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
                                .header("content-type", "text/plain; version=0.0.4")
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
        assert!(out.contains(r#"comm="other"} 11"#), "{out}");
        assert!(out.contains("rst_trace_lost_events_total 0"));
        assert!(out.contains("process_resident_memory_bytes"));
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
