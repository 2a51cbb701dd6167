//! `--otlp`: real resets in a namespace, exported to a real OTLP/HTTP receiver (`collector`):
//! the log records (body, time, severity, attributes, resource) and the metrics it got, and a
//! collector that is down at start and comes up later.

mod collector;

use std::time::{Duration, Instant};

use collector::{Collector, Log};
use rst_trace_tests::{Netns, Peer, Scenario, Value, received, s, sent};
use serde_json::json;

/// RFC 3339 UTC with nanoseconds (`time` in the JSON output) as ns since the epoch.
fn unix_ns(t: &str) -> u64 {
    let n = |a: usize, b: usize| t[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19);
    (secs * 1_000_000_000 + n(20, 29)) as u64
}

/// The record of `json` (stdout) among the collector's: same type, same `mono_ns`.
fn find<'a>(logs: &'a [Log], json: &Value) -> Option<&'a Log> {
    logs.iter().find(|l| {
        l.attrs.get("rst_trace.type") == Some(&json["type"])
            && l.attrs.get("rst_trace.mono_ns") == Some(&json["mono_ns"])
    })
}

fn in_ns(l: &Log, ns: &Netns) -> bool {
    l.attrs.get("rst_trace.netns") == Some(&json!(ns.inode()))
}

/// Records rst-trace prints for `ns` (every type that has a socket).
fn printed_in(events: &[Value], ns: &Netns) -> Vec<Value> {
    events
        .iter()
        .filter(|v| v["netns"] == ns.inode())
        .cloned()
        .collect()
}

#[test]
fn resets_and_failing_calls_reach_the_collector_as_logs_and_metrics() {
    let c = Collector::start(0);
    let port = 25001;
    let (ns, t) = Scenario::new("otlp")
        .port(port)
        .port(port + 2)
        .env("K8S_NODE_NAME", "node-7")
        .tracer(&[
            "--otlp",
            &c.url,
            "--otlp-interval",
            "1",
            "--otlp-header",
            "Authorization=Bearer t0k3n",
        ]);
    let bind = format!("127.0.0.1:{port}");
    let server = Peer::spawn(
        &ns,
        "rstt-server",
        &[
            &format!("listen={bind}"),
            "say=listening",
            "accept",
            "wait_unread=300",
            "close",
            "hold",
        ],
    );
    server.expect("listening");
    let client = Peer::spawn(
        &ns,
        "rstt-client",
        &[&format!("connect={bind}"), "send=300", "read_err", "hold"],
    );
    let v = sent(&t, &ns, "close_with_unread_data");
    let r = received(&t, &ns, "peer_reset");

    assert_sent_log(&c, &ns, &v, port, &server);
    assert_client_side(&c, &t, &ns, &client, &server);
    assert_counts(&c);

    // A refusal right before the end goes out in the flush at exit.
    let last = Peer::spawn(
        &ns,
        "rstt-last",
        &[&format!("connect=127.0.0.1:{}", port + 2)],
    );
    assert!(last.wait().success());
    t.wait_for("the last refusal", |e| {
        e["netns"] == ns.inode() && e["condition"] == "connection_refused"
    });
    // Every record printed for the namespace went out, once.
    let (status, events, _) = t.stop_with_stderr();
    assert!(status.success());
    let logs: Vec<Log> = c.logs().into_iter().filter(|l| in_ns(l, &ns)).collect();
    let printed = printed_in(&events, &ns);
    assert_eq!(logs.len(), printed.len(), "{logs:#?} vs {printed:#?}");
    for e in &printed {
        assert!(find(&logs, e).is_some(), "not exported: {e}");
    }
    let _ = r;
}

/// The server's sent reset `v` as a log record: body, time, severity, attributes, resource.
fn assert_sent_log(c: &Collector, ns: &Netns, v: &Value, port: u16, server: &Peer) {
    let log = c.wait_log("the sent reset", 10, |l| {
        in_ns(l, ns) && l.attrs["rst_trace.condition"] == "close_with_unread_data"
    });
    assert_eq!(log.body, v["explanation"]);
    assert_eq!(log.time_unix_nano, unix_ns(v["time"].as_str().unwrap()));
    assert_eq!(
        (log.severity_number, log.severity_text.as_str()),
        (13, "WARN")
    );
    assert_eq!(log.event_name, "rst_trace.rst");
    let want = [
        ("rst_trace.type", json!("rst")),
        ("rst_trace.direction", json!("sent")),
        ("rst_trace.origin", json!("tcp")),
        ("rst_trace.state", json!("ESTABLISHED")),
        ("rst_trace.detail.unread_bytes", json!(300)),
        ("rst_trace.socket_cookie", v["socket_cookie"].clone()),
        ("network.transport", json!("tcp")),
        ("network.type", json!("ipv4")),
        ("network.local.address", json!("127.0.0.1")),
        ("network.local.port", json!(port)),
        ("network.peer.address", json!("127.0.0.1")),
        ("network.peer.port", v["remote"]["port"].clone()),
        ("process.pid", json!(server.pid())),
        ("process.executable.name", json!("rstt-server")),
        ("thread.id", v["process"]["tid"].clone()),
        ("thread.name", json!("rstt-server")),
    ];
    for (k, want) in want {
        assert_eq!(log.attrs.get(k), Some(&want), "{k} in {log:#?}");
    }
    if !v["kernel_reason"].is_null() {
        assert_eq!(log.attrs["rst_trace.kernel_reason"], v["kernel_reason"]);
    }
    assert_eq!(log.resource["service.name"], "rst-trace");
    assert_eq!(log.resource["service.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(log.resource["k8s.node.name"], "node-7");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(log.resource["host.name"], host.trim());
}

/// The client's side: its reset, and its failing read (joined to it, or on its own).
fn assert_client_side(
    c: &Collector,
    t: &rst_trace_tests::Tracer,
    ns: &Netns,
    client: &Peer,
    server: &Peer,
) {
    let got = c.wait_log("the received reset", 10, |l| {
        in_ns(l, ns) && l.attrs["rst_trace.condition"] == "peer_reset"
    });
    assert_eq!(got.attrs["process.pid"], json!(client.pid()));
    assert_eq!(
        got.attrs["rst_trace.linked_sent.process.pid"],
        json!(server.pid())
    );
    let call = t.wait_for("the client's failing read", |e| {
        e["netns"] == ns.inode()
            && (e["type"] == "app_error" || e["app_error"].is_object())
            && e["process"]["pid"] == client.pid()
    });
    let call_log = c.wait_log("the failing read", 10, |l| {
        find(std::slice::from_ref(l), &call).is_some()
    });
    assert_eq!(call_log.attrs["error.type"], "ECONNRESET");
    if call["type"] == "app_error" {
        assert_eq!(
            (call_log.severity_number, call_log.severity_text.as_str()),
            (17, "ERROR")
        );
    }
    assert!(c.auth().iter().all(|a| a == "Bearer t0k3n") && !c.auth().is_empty());
}

/// The counts, as cumulative monotonic sums, and the host's sockets against the socket owner
/// map, as gauges.
fn assert_counts(c: &Collector) {
    let p = c.wait_point("rst_trace.resets of the server", 10, |p| {
        p.metric == "rst_trace.resets"
            && p.attrs.get("rst_trace.condition") == Some(&json!("close_with_unread_data"))
            && p.attrs.get("process.executable.name") == Some(&json!("rstt-server"))
    });
    assert!(
        p.monotonic && p.temporality == 2 && p.value >= 1.0,
        "{p:#?}"
    );
    assert_eq!(p.attrs["rst_trace.direction"], "sent");
    let p = c.wait_point("rst_trace.app_errors", 10, |p| {
        p.metric == "rst_trace.app_errors"
            && p.attrs.get("error.type") == Some(&json!("ECONNRESET"))
    });
    assert!(p.value >= 1.0);
    // The host's sockets against the socket owner map, as gauges.
    for name in [
        "rst_trace.host.tcp_sockets",
        "rst_trace.socket_owner_map.capacity",
    ] {
        let p = c.wait_point(name, 10, |p| p.metric == name);
        assert!(!p.monotonic && p.value >= 1.0, "{p:#?}");
    }
}

/// The collector is down at start: the event output goes on, records wait (up to
/// `--otlp-queue`), the rest are counted; once it is up, the waiting records and a `lost` record
/// with the count arrive, and later records too.
#[test]
fn a_collector_down_at_start_blocks_nothing_and_the_gap_is_counted() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let target = 25002;
    let (ns, t) = Scenario::new("otlpdown").port(target).tracer(&[
        "--otlp",
        &url,
        "--otlp-queue",
        "4",
        "--otlp-interval",
        "1",
    ]);
    // Refused connections: a reset sent, a reset received and a failing connect() each.
    let refuse = |n: usize| {
        for _ in 0..n {
            let c = Peer::spawn(
                &ns,
                "rstt-refused",
                &[&format!("connect=127.0.0.1:{target}")],
            );
            assert!(c.wait().success());
        }
    };
    let started = Instant::now();
    refuse(5);
    wait_refusals(&t, &ns, 5, started, "stdout held up");
    t.wait_for_stderr("the collector being down", 10, |l| {
        l.starts_with(&format!(
            "rst-trace: warning: OTLP logs export to {url}/v1/logs failed"
        ))
    });
    let c = Collector::start(port);
    t.wait_for_stderr("the collector being back", 40, |l| {
        l == format!("rst-trace: OTLP logs export to {url}/v1/logs works again")
    });
    refuse(1);
    wait_refusals(&t, &ns, 6, Instant::now(), "no refusal after the outage");
    let later = printed_in(&t.events(), &ns)
        .into_iter()
        .rfind(|e| e["condition"] == "connection_refused")
        .unwrap();
    c.wait_log("the record after the outage", 10, |l| {
        find(std::slice::from_ref(l), &later).is_some()
    });
    let lost = c.wait_log("the count of dropped records", 10, |l| {
        l.attrs.get("rst_trace.cause") == Some(&json!("otlp_queue"))
    });
    assert_eq!(lost.attrs["rst_trace.type"], "lost");
    let (status, events, stderr) = t.stop_with_stderr();
    assert!(status.success());
    // Said once each way.
    let said = |p: &str| stderr.iter().filter(|l| l.contains(p)).count();
    assert_eq!(said("logs export to"), 2, "{stderr:#?}");
    // Exported + dropped = printed.
    let exported = c.logs().iter().filter(|l| in_ns(l, &ns)).count() as u64;
    let dropped: u64 = c
        .logs()
        .iter()
        .filter(|l| l.attrs.get("rst_trace.cause") == Some(&json!("otlp_queue")))
        .map(|l| l.attrs["rst_trace.count"].as_u64().unwrap())
        .sum();
    assert!(dropped > 0);
    let printed = printed_in(&events, &ns).len() as u64;
    assert_eq!(exported + dropped, printed, "{stderr:#?}");
    let _ = s;
}

/// Waits until 10 s after `since` for `n` refused connections of `ns` on rst-trace's stdout
/// (fails with `what` if they are not there).
fn wait_refusals(t: &rst_trace_tests::Tracer, ns: &Netns, n: usize, since: Instant, what: &str) {
    let deadline = since + Duration::from_secs(10);
    loop {
        let printed = printed_in(&t.events(), ns)
            .iter()
            .filter(|e| e["condition"] == "connection_refused")
            .count();
        if printed >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {:?}", t.events());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A collector that never answers: rst-trace still ends at once on SIGINT, within the exit flush's
/// bound, and says what it could not send: the namespace's records, not those of its own
/// refused connections to the collector (traced here too: `--port` names the collector's), only
/// the kernel's answers to them.
#[test]
fn exit_with_the_collector_down_is_bounded_and_said() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let target = 25004;
    let (ns, t) = Scenario::new("otlpexit").port(target).port(port).tracer(&[
        "--otlp",
        &format!("http://127.0.0.1:{port}"),
        "--otlp-interval",
        "1",
    ]);
    let c = Peer::spawn(
        &ns,
        "rstt-refused",
        &[&format!("connect=127.0.0.1:{target}")],
    );
    assert!(c.wait().success());
    t.wait_for("the refusal", |e| {
        e["netns"] == ns.inode() && e["condition"] == "connection_refused"
    });
    let own = t.wait_for("rst-trace's own refused export", |e| {
        e["condition"] == "connection_refused" && e["remote"]["port"] == port
    });
    assert_eq!(own["process"]["comm"], "rst-trace");
    std::thread::sleep(Duration::from_millis(300));
    let stopping = Instant::now();
    let (status, events, stderr) = t.stop_with_stderr();
    let took = stopping.elapsed();
    assert!(status.success(), "{stderr:#?}");
    // 5 s for the records, a request's 3 s, and the metrics' last request: well under 20 s.
    assert!(took < Duration::from_secs(20), "exit took {took:?}");
    let tail = " OTLP log records not sent at exit: the collector did not take them within 5 s";
    let unsent = stderr
        .iter()
        .find_map(|l| l.strip_prefix("rst-trace: warning: ")?.strip_suffix(tail))
        .map(|n| n.parse::<usize>().unwrap())
        .unwrap_or_else(|| panic!("no unsent count at exit: {stderr:#?}"));
    // The kernel's answers to rst-trace's own connections have no process: they are exported.
    let answers = events
        .iter()
        .filter(|e| e["direction"] == "sent" && e["local"]["port"] == port)
        .inspect(|e| assert!(e["process"].is_null(), "{e}"))
        .count();
    assert_eq!(
        unsent,
        printed_in(&events, &ns).len() + answers,
        "{events:#?}"
    );
}

/// With `--quiet --summary --metrics` (no event lines to reuse), the records still go out, and
/// the summary and the Prometheus page count the same resets.
#[test]
fn with_quiet_summary_and_metrics_the_records_still_go_out() {
    let c = Collector::start(0);
    let target = 25006;
    let (ns, t) = Scenario::new("otlpq").port(target).tracer(&[
        "--quiet",
        "--summary",
        "--metrics",
        "127.0.0.1:0",
        "--otlp",
        &c.url,
    ]);
    let p = Peer::spawn(
        &ns,
        "rstt-refused",
        &[&format!("connect=127.0.0.1:{target}")],
    );
    assert!(p.wait().success());
    let log = c.wait_log("the refusal", 10, |l| {
        in_ns(l, &ns) && l.attrs["rst_trace.condition"] == "connection_refused"
    });
    assert!(
        log.body.as_str().unwrap().contains("was refused"),
        "{log:#?}"
    );
    assert_eq!(log.attrs["process.executable.name"], "rstt-refused");
    let (status, events, _) = t.stop_with_stderr();
    assert!(status.success());
    // Only the summary on stdout: the events went to the collector alone.
    assert!(events.iter().all(|e| e["type"] == "summary"), "{events:#?}");
    let rows = events[0]["rows"].as_array().unwrap();
    assert!(
        rows.iter().any(|r| r["condition"] == "connection_refused"),
        "{rows:#?}"
    );
}
