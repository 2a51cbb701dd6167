//! Counts instead of events: `--metrics`, and `--summary` at exit, in the kernel and per interval.

use std::collections::BTreeMap;

use rst_trace_tests::{Netns, Peer, Scenario, Tracer, Value, scrape_until};

/// `--metrics`: a real HTTP client scrapes the Prometheus text during a scenario.
#[test]
fn metrics_are_served_and_count_resets() {
    let (ns, tracer) =
        Scenario::new("metrics")
            .port(20041)
            .tracer(&["--quiet", "--metrics", "127.0.0.1:0"]);
    let url = tracer.metrics_url();
    for _ in 0..2 {
        let c = Peer::spawn(&ns, "rstt-metrics", &["connect=127.0.0.1:20041"]);
        c.expect("errno ECONNREFUSED");
    }
    let want = r#"rst_trace_resets_total{direction="received",condition="connection_refused",comm="rstt-metrics",container="-",pod="-"} 2"#;
    let body = scrape_until(&url, want);
    assert!(body.contains(want), "{body}");
    assert!(
        body.contains(
            r#"rst_trace_resets_total{direction="sent",condition="port_not_listening",comm="-",container="-",pod="-"} 2"#
        ),
        "{body}"
    );
    assert!(body.contains("# TYPE rst_trace_lost_events_total counter"));
    assert!(body.contains("rst_trace_lost_events_total 0"));
    // Without --self-cost the kernel's accounting stays off: no cost metrics.
    assert!(!body.contains("rst_trace_bpf_program"), "{body}");
    let not_found = ureq::get(url.replace("/metrics", "/other")).call();
    assert!(matches!(not_found, Err(ureq::Error::StatusCode(404))));
    let (status, events) = tracer.stop();
    assert!(status.success());
    assert!(events.is_empty(), "--quiet printed events: {events:?}");
}

/// rst-trace tells its own cost: per program, runs and CPU time from the kernel's accounting,
/// in the metrics, and with `-v` at exit.
#[test]
fn self_cost_in_metrics_and_at_exit() {
    let (ns, tracer) = Scenario::new("selfcost").port(20098).tracer(&[
        "--quiet",
        "--metrics",
        "127.0.0.1:0",
        "--self-cost",
        "-v",
    ]);
    let url = tracer.metrics_url();
    let c = Peer::spawn(&ns, "rstt-selfcost", &["connect=127.0.0.1:20098"]);
    c.expect("errno ECONNREFUSED");
    // The received reset's program: tcp_receive_reset_btf, or the record-based
    // tcp_receive_reset (before 5.12).
    let runs = r#"rst_trace_bpf_program_runs_total{program="tcp_receive_reset"#;
    let body = scrape_until(&url, runs);
    let value = |prefix: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {body}"))
    };
    assert!(value(runs) >= 1.0, "{body}");
    let secs = value(r#"rst_trace_bpf_program_run_seconds_total{program="tcp_receive_reset"#);
    assert!(secs > 0.0 && secs < 1.0, "{body}");
    assert!(body.contains("# TYPE rst_trace_bpf_program_run_seconds_total counter"));
    let (status, _, stderr) = tracer.stop_with_stderr();
    assert!(status.success());
    let total = stderr
        .iter()
        .find(|l| l.starts_with("rst-trace: its eBPF programs took "))
        .unwrap_or_else(|| panic!("no cost line at exit: {stderr:?}"));
    assert!(total.contains(" ms of CPU in "), "{total}");
    assert!(
        stderr
            .iter()
            .any(|l| l.starts_with("rst-trace:   tcp_receive_reset") && l.ends_with(" ns/run")),
        "{stderr:?}"
    );
}

/// `--summary` prints a table at exit (JSON here), counting by process, condition, direction.
#[test]
fn summary_at_exit() {
    let (ns, tracer) = Scenario::new("summary")
        .port(20042)
        .tracer(&["--quiet", "--summary"]);
    for _ in 0..3 {
        let c = Peer::spawn(&ns, "rstt-summary", &["connect=127.0.0.1:20042"]);
        c.expect("errno ECONNREFUSED");
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (status, events) = tracer.stop();
    assert!(status.success());
    assert_eq!(events.len(), 1, "{events:#?}");
    let sum = &events[0];
    assert_eq!(sum["type"], "summary");
    assert_eq!(sum["total"], 6);
    let rows = sum["rows"].as_array().unwrap();
    // One row per process (comm[pid]): three clients, one refusal each.
    let refused: Vec<_> = rows
        .iter()
        .filter(|r| r["condition"] == "connection_refused")
        .collect();
    assert_eq!(refused.len(), 3, "{rows:#?}");
    for row in refused {
        assert_eq!(row["count"], 1);
        assert_eq!(row["direction"], "received");
        assert!(
            row["process"]
                .as_str()
                .unwrap()
                .starts_with("rstt-summary[")
        );
    }
    let sent = rows
        .iter()
        .find(|r| r["condition"] == "port_not_listening")
        .expect("port_not_listening row");
    assert_eq!(sent["count"], 3);
    assert_eq!(sent["process"], "-");
}

/// `--summary --quiet` counts resets in the kernel where it can; its table must equal what a
/// per-event tracer saw of the same resets: refusals (counted in the kernel), a close with
/// unread data, and a data_after_close abort (whose self-reset on the sender must not be
/// counted as received).
#[test]
fn summary_counted_in_kernel_agrees_with_per_event() {
    let ns = Netns::new("kcount");
    let ports = ["--port", "20045", "--port", "20046"];
    let per_event = Tracer::start(&ports);
    let counted = Tracer::start(&[&ports[..], &["--summary", "--quiet"]].concat());
    let ready = counted.stderr().join("\n");
    assert!(ready.contains("; counting in the kernel;"), "{ready}");
    let ready = per_event.stderr().join("\n");
    assert!(!ready.contains("counting in the kernel"), "{ready}");
    for _ in 0..4 {
        let c = Peer::spawn(&ns, "rstt-kcount", &["connect=127.0.0.1:20046"]);
        c.expect("errno ECONNREFUSED");
    }
    // Held until the tracers have stopped (dropping a Peer kills it).
    let _client = close_with_unread_data(&ns, 20045);
    let _peers = data_after_close(&ns, 20045);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (status, events) = per_event.stop();
    assert!(status.success());
    let (status, summary) = counted.stop();
    assert!(status.success());
    let want = per_event_counts(&events, ns.inode());
    assert_eq!(summary.len(), 1, "{summary:#?}");
    assert_eq!(summary_counts(&summary[0]), want);
    // The scenario really had all three kinds (and no self-reset counted as received).
    let count = |c: &str, d: &str| -> u64 {
        want.iter()
            .filter(|((_, cc, dd), _)| cc == c && dd == d)
            .map(|(_, n)| n)
            .sum()
    };
    assert_eq!(count("connection_refused", "received"), 4, "{want:#?}");
    assert_eq!(count("port_not_listening", "sent"), 4, "{want:#?}");
    assert_eq!(count("close_with_unread_data", "sent"), 1, "{want:#?}");
    assert_eq!(count("data_after_close", "sent"), 1, "{want:#?}");
    assert_eq!(count("peer_reset", "received"), 2, "{want:#?}");
}

/// Reset counts by (process as `comm[pid]` or `-`, condition, direction): the summary's rows.
type Counts = BTreeMap<(String, String, String), u64>;

/// close() with unread data on `port`: the server resets its client. Returns the client; the
/// server is gone (its port is free again).
fn close_with_unread_data(ns: &Netns, port: u16) -> Peer {
    let listen = format!("listen=127.0.0.1:{port}");
    let server = Peer::spawn(
        ns,
        "rstt-server",
        &[
            &listen,
            "say=listening",
            "accept",
            "wait_unread=64",
            "close",
            "say=closed",
            "hold",
        ],
    );
    server.expect("listening");
    let connect = format!("connect=127.0.0.1:{port}");
    let client = Peer::spawn(ns, "rstt-client", &[&connect, "send=64", "read_err"]);
    client.expect("errno ECONNRESET");
    drop(server);
    client
}

/// Data after close on `port`: the server's socket aborts itself, then sends the RST. Returns
/// the server and the client.
fn data_after_close(ns: &Netns, port: u16) -> [Peer; 2] {
    let listen = format!("listen=127.0.0.1:{port}");
    let server = Peer::spawn(
        ns,
        "rstt-server",
        &[
            &listen,
            "say=listening",
            "accept",
            "linger2=120",
            "close",
            "say=done",
            "hold",
        ],
    );
    server.expect("listening");
    let connect = format!("connect=127.0.0.1:{port}");
    let mut client = Peer::spawn(
        ns,
        "rstt-client",
        &[&connect, "wait", "send=10", "read_err"],
    );
    server.expect("done");
    std::thread::sleep(std::time::Duration::from_millis(100));
    client.go();
    // It reads the server's FIN first ("eof"); the RST answers the data it sent after.
    client.expect("eof");
    [server, client]
}

/// What a summary of `events` (the per-event tracer's) in namespace `inode` should count.
fn per_event_counts(events: &[Value], inode: u64) -> Counts {
    let mut want = Counts::new();
    for v in events
        .iter()
        .filter(|v| v["type"] == "rst" && v["netns"] == inode)
    {
        let who = match v["process"].as_object() {
            Some(p) => format!("{}[{}]", p["comm"].as_str().unwrap(), p["pid"]),
            None => "-".to_owned(),
        };
        let key = (
            who,
            v["condition"].as_str().unwrap().to_owned(),
            v["direction"].as_str().unwrap().to_owned(),
        );
        *want.entry(key).or_default() += 1;
    }
    want
}

/// The rows of a summary record.
fn summary_counts(summary: &Value) -> Counts {
    summary["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                (
                    r["process"].as_str().unwrap().to_owned(),
                    r["condition"].as_str().unwrap().to_owned(),
                    r["direction"].as_str().unwrap().to_owned(),
                ),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// `--summary --interval 1` prints the table periodically, not only at exit.
#[test]
fn summary_every_interval() {
    let (ns, tracer) =
        Scenario::new("interval")
            .port(20044)
            .tracer(&["--quiet", "--summary", "--interval", "1"]);
    let c = Peer::spawn(&ns, "rstt-interval", &["connect=127.0.0.1:20044"]);
    c.expect("errno ECONNREFUSED");
    // Two periodic tables arrive while rst-trace keeps running.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let sums: Vec<_> = tracer
            .events()
            .into_iter()
            .filter(|v| v["type"] == "summary")
            .collect();
        if sums.len() >= 2 && sums.last().unwrap()["total"] == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{sums:#?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (status, events) = tracer.stop();
    assert!(status.success());
    assert!(events.iter().all(|v| v["type"] == "summary"), "{events:#?}");
}

/// In text mode the summary table goes to stderr and stdout keeps one line per event
/// (docs/output.md): with `--quiet`, stdout stays empty.
#[test]
fn text_summary_goes_to_stderr() {
    let ns = Netns::new("sumtext");
    let (mut t, errs) = rst_trace_tests::spawn_attached(&[
        "--summary",
        "--quiet",
        "--port",
        "20095",
        "--duration",
        "3",
    ]);
    let c = Peer::spawn(&ns, "rstt-sumtext", &["connect=127.0.0.1:20095"]);
    let pid = c.pid();
    c.expect("errno ECONNREFUSED");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut t.stdout.take().unwrap(), &mut out).unwrap();
    assert!(t.wait().unwrap().success());
    assert_eq!(out, "", "stdout");
    let err: Vec<String> = errs.map_while(Result::ok).collect();
    let head = err
        .iter()
        .position(|l| l.starts_with("--- summary at "))
        .unwrap_or_else(|| panic!("no summary on stderr: {err:#?}"));
    assert!(
        err[head..].iter().any(
            |l| l.contains(&format!("rstt-sumtext[{pid}]")) && l.contains("connection_refused")
        ),
        "{err:#?}"
    );
}
