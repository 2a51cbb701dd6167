//! End-to-end: the real rst-trace binary and eBPF programs, real sockets in a network namespace
//! of each test's own, real resets; assertions on what rst-trace printed.

use std::process::Command;

use rst_trace_tests::{
    Netns, Peer, Scenario, Tracer, assert_only, assert_reason, cgroup_v2_id, cgroup_v2_path,
    is_rst, kernel_generates_cookies, received, require_root, rst_trace_bin, s, sent,
    spawn_attached,
};

/// Scenario (a): connect to a closed port.
fn refused(family_addr: &str, port: u16, tag: &str) {
    let (ns, tracer) = Scenario::new(tag).port(port).tracer(&[]);
    let target = format!("{family_addr}:{port}");
    let client = Peer::spawn(&ns, "rstt-refused", &[&format!("connect={target}")]);
    let pid = client.pid();
    client.expect("errno ECONNREFUSED");
    let sent = sent(&tracer, &ns, "port_not_listening");
    // The RST is sent by the kernel for a port nobody owns: the connecting client, whose
    // softirq happened to run it, must not be blamed as the sender.
    assert_eq!(sent["process"], serde_json::Value::Null, "{sent:#}");
    assert_eq!(sent["attribution"], "none");
    assert_reason(&sent, "NO_SOCKET");
    assert_eq!(sent["origin"], "tcp");
    assert_eq!(sent["state"], serde_json::Value::Null);
    assert_eq!(s(&sent, "local.port"), port);
    assert_eq!(s(&sent, "detail.incoming_flags"), "SYN");
    let recv = received(&tracer, &ns, "connection_refused");
    assert_eq!(s(&recv, "process.pid"), pid, "{recv:#}");
    assert_eq!(s(&recv, "process.comm"), "rstt-refused");
    assert_eq!(recv["attribution"], "socket_owner");
    assert_eq!(recv["state"], "SYN_SENT");
    assert_eq!(s(&recv, "remote.port"), port);
    assert_eq!(s(&recv, "detail.errno"), "ECONNREFUSED");
    // Both ends of one exchange: the endpoints mirror each other.
    assert_eq!(s(&recv, "local.port"), s(&sent, "remote.port"));
    assert_eq!(s(&recv, "local.addr"), s(&sent, "remote.addr"));
    assert_eq!(s(&recv, "remote.addr"), s(&sent, "local.addr"));
    let expect_family = if family_addr.starts_with('[') {
        "ipv6"
    } else {
        "ipv4"
    };
    assert_eq!(sent["family"], expect_family);
    assert_eq!(recv["family"], expect_family);
    assert_eq!(s(&recv, "linked_sent.condition"), "port_not_listening");
    let (status, _) = tracer.stop();
    assert!(status.success(), "rst-trace exit {status:?}");
}

#[test]
fn closed_port_ipv4() {
    refused("127.0.0.1", 20001, "refused4");
}

#[test]
fn closed_port_ipv6() {
    refused("[::1]", 20002, "refused6");
}

/// Scenario (b): the classic demo. The client sends 256 bytes, the server reads 128 and closes.
fn unread_close(addr: &str, port: u16, tag: &str) {
    unread_close_with(addr, port, tag, &[]);
}

/// rstt-server accepts on `bind` (after `before_accept`, e.g. a step that moves it to a named
/// thread), waits for 256 bytes, reads 128 and closes: the kernel resets the connection of
/// rstt-client, which sent them. Returns (server, client) once the client saw ECONNRESET.
fn unread_close_peers(ns: &Netns, bind: &str, before_accept: &[&str]) -> (Peer, Peer) {
    let listen = format!("listen={bind}");
    let mut steps = vec![listen.as_str(), "say=listening"];
    steps.extend_from_slice(before_accept);
    steps.extend([
        "accept",
        "wait_unread=256",
        "read=128",
        "close",
        "say=closed",
        "hold",
    ]);
    let server = Peer::spawn(ns, "rstt-server", &steps);
    server.expect("listening");
    let connect = format!("connect={bind}");
    let client = Peer::spawn(
        ns,
        "rstt-client",
        &[&connect, "send=256", "say=sent", "read_err"],
    );
    client.expect("sent");
    server.expect("closed");
    client.expect("errno ECONNRESET");
    (server, client)
}

fn unread_close_with(addr: &str, port: u16, tag: &str, env: &[(&str, &str)]) {
    let scenario = env
        .iter()
        .fold(Scenario::new(tag).port(port), |sc, (k, v)| sc.env(k, v));
    let (ns, tracer) = scenario.tracer(&[]);
    // The BTF tracepoints unless the record-based ones were asked for.
    let record = env.contains(&("RST_TRACE_RECORD_TRACEPOINTS", "1"))
        || std::env::var("RST_TRACE_RECORD_TRACEPOINTS").as_deref() == Ok("1");
    let ready = tracer.stderr().join("\n");
    // Before 5.12 the BTF tcp_receive_reset cannot generate a cookie: the record-based one does.
    assert!(
        ready.contains(if record {
            "; record tracepoints;"
        } else if kernel_generates_cookies() {
            "; BTF tracepoints;"
        } else {
            "; BTF send/record receive tracepoints;"
        }),
        "{ready}"
    );
    let (server, client) = unread_close_peers(&ns, &format!("{addr}:{port}"), &[]);
    let inode = ns.inode();
    let sent = sent(&tracer, &ns, "close_with_unread_data");
    assert_eq!(s(&sent, "process.pid"), server.pid(), "{sent:#}");
    assert_eq!(s(&sent, "process.comm"), "rstt-server");
    assert_eq!(sent["attribution"], "socket_owner");
    assert_reason(&sent, "TCP_ABORT_ON_CLOSE");
    assert_eq!(sent["state"], "ESTABLISHED");
    assert_eq!(s(&sent, "detail.unread_bytes"), 128);
    assert_eq!(s(&sent, "local.port"), port);
    let recv = received(&tracer, &ns, "peer_reset");
    // The client's socket: never blamed on the server.
    assert_eq!(s(&recv, "process.pid"), client.pid(), "{recv:#}");
    assert_eq!(s(&recv, "process.comm"), "rstt-client");
    assert_eq!(recv["state"], "ESTABLISHED");
    assert_eq!(s(&recv, "remote.port"), port);
    assert_eq!(s(&recv, "detail.errno"), "ECONNRESET");
    assert_eq!(s(&recv, "linked_sent.condition"), "close_with_unread_data");
    assert_eq!(s(&recv, "linked_sent.process.pid"), server.pid());
    assert!(recv["socket_cookie"].as_u64().is_some_and(|c| c > 0));
    if !record && kernel_generates_cookies() {
        // bpf_get_socket_cookie() generates a cookie the server socket never had (5.12+).
        assert!(
            sent["socket_cookie"].as_u64().is_some_and(|c| c > 0),
            "{sent:#}"
        );
    }
    assert!(sent["time"].as_str().unwrap().ends_with('Z'));
    let (status, events) = tracer.stop();
    assert!(status.success());
    // Exactly one reset each way for this connection.
    let ours: Vec<_> = events
        .iter()
        .filter(|v| v["type"] == "rst" && v["netns"] == inode)
        .collect();
    assert_eq!(ours.len(), 2, "{ours:#?}");
}

#[test]
fn classic_demo_ipv4() {
    unread_close("127.0.0.1", 20003, "demo4");
}

#[test]
fn classic_demo_ipv6() {
    unread_close("[::1]", 20004, "demo6");
}

/// The record-based tracepoints (what kernels before 5.12 get) explain the same reset the same
/// way.
#[test]
fn classic_demo_with_record_tracepoints() {
    for (addr, port) in [("127.0.0.1", 20005), ("[::1]", 20006)] {
        unread_close_with(
            addr,
            port,
            "demorec",
            &[("RST_TRACE_RECORD_TRACEPOINTS", "1")],
        );
    }
}

/// Scenario (c): `--pid` shows one process's resets and hides another's.
#[test]
fn pid_filter_shows_one_process_only() {
    let ns = Netns::new("pidfilter");
    let mut a = Peer::spawn(&ns, "rstt-a", &["wait", "connect=127.0.0.1:20011"]);
    let mut b = Peer::spawn(&ns, "rstt-b", &["wait", "connect=127.0.0.1:20012"]);
    let filtered = Tracer::start(&["--pid", &a.pid().to_string()]);
    let control = Tracer::start(&["--port", "20011", "--port", "20012"]);
    a.go();
    b.go();
    a.expect("errno ECONNREFUSED");
    b.expect("errno ECONNREFUSED");
    let inode = ns.inode();
    // The control tracer sees both refusals, so B's reset really happened.
    for pid in [a.pid(), b.pid()] {
        control.wait_for("control: connection_refused", |v| {
            is_rst(v, "received", "connection_refused") && v["process"]["pid"] == pid
        });
    }
    let ev = filtered.wait_for("filtered: A's connection_refused", |v| {
        is_rst(v, "received", "connection_refused") && v["netns"] == inode
    });
    assert_eq!(s(&ev, "process.pid"), a.pid());
    let (_, events) = filtered.stop();
    for v in &events {
        assert_eq!(s(v, "process.pid"), a.pid(), "--pid let through {v:#}");
    }
    drop(control);
}

/// Scenario (d): an unprivileged user gets exit 1 and the documented message.
#[test]
fn unprivileged_user_is_told_to_use_sudo() {
    require_root();
    let dir = std::env::temp_dir().join(format!("rstt-unpriv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("rst-trace");
    std::fs::copy(rst_trace_bin(), &bin).unwrap();
    Command::new("chmod")
        .args(["755", dir.to_str().unwrap(), bin.to_str().unwrap()])
        .status()
        .unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&bin)
        .output()
        .expect("setpriv");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains("rst-trace needs root"), "stderr: {err}");
    assert!(err.contains("sudo"), "stderr: {err}");
    assert!(out.stdout.is_empty());
}

/// Scenario (e): an unknown flag is a usage error, exit 2.
#[test]
fn unknown_flag_is_usage_error() {
    let out = Command::new(rst_trace_bin())
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-such-flag"), "stderr: {err}");
    let out = Command::new(rst_trace_bin())
        .args(["--condition", "bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `--count` ends the program with status 0 after N events.
#[test]
fn count_exits_zero() {
    let ns = Netns::new("count");
    let (t, _errs) = spawn_attached(&[
        "--json",
        "--count",
        "1",
        "--port",
        "20021",
        "--direction",
        "received",
    ]);
    let c = Peer::spawn(&ns, "rstt-count", &["connect=127.0.0.1:20021"]);
    c.expect("errno ECONNREFUSED");
    // A broken --count must fail the test, not hang CI: kill it after 20 s.
    let pid = t.id() as i32;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(20));
        if !flag.load(std::sync::atomic::Ordering::SeqCst) {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let out = t.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["condition"], "connection_refused");
}

/// Sockets opened before rst-trace started are owned too (seeded from sock_diag and /proc).
#[test]
fn socket_opened_before_start_is_owned() {
    let ns = Netns::new("seed");
    let bind = "127.0.0.1:20031";
    let server = Peer::spawn(
        &ns,
        "rstt-old-srv",
        &[
            &format!("listen={bind}"),
            "say=listening",
            "accept",
            "say=accepted",
            "read_err",
            "hold",
        ],
    );
    server.expect("listening");
    let mut client = Peer::spawn(
        &ns,
        "rstt-old-cli",
        &[
            &format!("connect={bind}"),
            "wait",
            "linger0",
            "close",
            "say=closed",
            "hold",
        ],
    );
    server.expect("accepted");
    // Before rst-trace starts (in a guest without cgroup v2 mounted, this mounts it, so that
    // rst-trace finds it when it seeds the owners).
    let server_cgroup = cgroup_v2_id(server.pid());
    let tracer = Tracer::start(&["--port", "20031"]);
    client.go();
    client.expect("closed");
    server.expect("errno ECONNRESET");
    let recv = received(&tracer, &ns, "peer_reset");
    assert_eq!(s(&recv, "process.pid"), server.pid(), "{recv:#}");
    assert_eq!(s(&recv, "process.comm"), "rstt-old-srv");
    assert_eq!(recv["attribution"], "socket_owner");
    assert_eq!(s(&recv, "cgroup.id"), server_cgroup, "{recv:#}");
    let sent = sent(&tracer, &ns, "linger_abort");
    assert_eq!(s(&sent, "process.pid"), client.pid());
    assert!(tracer.ready_line().contains("existing sockets owned"));
}

/// Issue 11: the process, not the thread. A server process named rstt-server whose thread
/// "conn-worker-7" accepts a connection and closes it with unread data: the reset names the
/// process (its thread-group leader's comm), the thread apart, and the cgroup v2 id learned in
/// that thread's own system call; `--comm` matches the process name, not the thread's.
#[test]
fn worker_thread_reset_names_the_process() {
    let port = 20061;
    // Mounts cgroup v2 first where it is not (a bare VM), so that rst-trace finds it.
    cgroup_v2_id(std::process::id());
    let (ns, tracer) = Scenario::new("thread").port(port).tracer(&[]);
    let by_process = Tracer::start(&["--port", "20061", "--comm", "rstt-server"]);
    let by_thread = Tracer::start(&["--port", "20061", "--comm", "conn-worker-7"]);
    let (server, client) =
        unread_close_peers(&ns, &format!("127.0.0.1:{port}"), &["thread=conn-worker-7"]);
    let snt = sent(&tracer, &ns, "close_with_unread_data");
    assert_eq!(s(&snt, "process.pid"), server.pid(), "{snt:#}");
    assert_eq!(s(&snt, "process.comm"), "rstt-server", "{snt:#}");
    assert_eq!(s(&snt, "process.thread"), "conn-worker-7", "{snt:#}");
    assert_ne!(s(&snt, "process.tid"), server.pid(), "{snt:#}");
    let server_cgroup = cgroup_v2_id(server.pid());
    assert_eq!(s(&snt, "cgroup.id"), server_cgroup, "{snt:#}");
    // Resolved in userspace: the path of that cgroup; not a container.
    assert_eq!(
        s(&snt, "cgroup.path"),
        &cgroup_v2_path(server.pid()),
        "{snt:#}"
    );
    assert_eq!(snt["container"], serde_json::Value::Null, "{snt:#}");
    // The client's main thread: no thread name apart; its own cgroup.
    let recv = received(&tracer, &ns, "peer_reset");
    assert_eq!(s(&recv, "process.comm"), "rstt-client", "{recv:#}");
    assert!(recv["process"].get("thread").is_none(), "{recv:#}");
    assert_eq!(
        s(&recv, "cgroup.id"),
        cgroup_v2_id(client.pid()),
        "{recv:#}"
    );
    assert_eq!(s(&recv, "linked_sent.process.thread"), "conn-worker-7");
    // --comm rstt-server shows the sent reset (the client's received one is not its process's);
    // --comm conn-worker-7 shows nothing: a thread's name is not the process's.
    let got = sent(&by_process, &ns, "close_with_unread_data");
    assert_eq!(s(&got, "process.thread"), "conn-worker-7");
    assert_only(by_process, &ns, &[("sent", "close_with_unread_data")]);
    assert_only(by_thread, &ns, &[]);
    let (status, _) = tracer.stop();
    assert!(status.success(), "rst-trace exit {status:?}");
}

/// A connection accepted by a forked child belongs to that child, not to the listener's
/// parent process.
#[test]
fn connection_accepted_by_forked_child_belongs_to_child() {
    let (ns, tracer) = Scenario::new("fork").port(20032).tracer(&[]);
    let bind = "127.0.0.1:20032";
    let server = Peer::spawn(
        &ns,
        "rstt-parent",
        &[
            &format!("listen={bind}"),
            "fork",
            "accept",
            "say=accepted",
            "read_err",
            "hold",
        ],
    );
    let child: u32 = server
        .line()
        .strip_prefix("child ")
        .expect("child line")
        .parse()
        .unwrap();
    let client = Peer::spawn(
        &ns,
        "rstt-client",
        &[
            &format!("connect={bind}"),
            "sleep=100",
            "linger0",
            "close",
            "say=closed",
            "hold",
        ],
    );
    server.expect("accepted");
    client.expect("closed");
    let recv = received(&tracer, &ns, "peer_reset");
    assert_eq!(s(&recv, "process.pid"), child, "{recv:#}");
    assert_ne!(s(&recv, "process.pid"), server.pid());
    assert_eq!(s(&recv, "process.comm"), "rstt-parent");
    // SAFETY: the child is our grandchild process; make sure it does not outlive the test.
    unsafe { libc::kill(child as i32, libc::SIGKILL) };
}

/// `--metrics`: a real HTTP client scrapes the Prometheus text during a scenario.
#[test]
fn metrics_are_served_and_count_resets() {
    let (ns, tracer) =
        Scenario::new("metrics")
            .port(20041)
            .tracer(&["--quiet", "--metrics", "127.0.0.1:0"]);
    let url = tracer
        .stderr()
        .iter()
        .find_map(|l| l.strip_prefix("rst-trace: metrics at ").map(str::to_owned))
        .expect("metrics address line");
    for _ in 0..2 {
        let c = Peer::spawn(&ns, "rstt-metrics", &["connect=127.0.0.1:20041"]);
        c.expect("errno ECONNREFUSED");
    }
    let want = r#"rst_trace_resets_total{direction="received",condition="connection_refused",comm="rstt-metrics",container="-",pod="-"} 2"#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let body = loop {
        let body = ureq::get(&url)
            .call()
            .expect("scrape")
            .body_mut()
            .read_to_string()
            .unwrap();
        if body.contains(want) || std::time::Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(body.contains(want), "{body}");
    assert!(
        body.contains(
            r#"rst_trace_resets_total{direction="sent",condition="port_not_listening",comm="-",container="-",pod="-"} 2"#
        ),
        "{body}"
    );
    assert!(body.contains("# TYPE rst_trace_lost_events_total counter"));
    assert!(body.contains("rst_trace_lost_events_total 0"));
    let not_found = ureq::get(url.replace("/metrics", "/other")).call();
    assert!(matches!(not_found, Err(ureq::Error::StatusCode(404))));
    let (status, events) = tracer.stop();
    assert!(status.success());
    assert!(events.is_empty(), "--quiet printed events: {events:?}");
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
    use std::collections::BTreeMap;
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
    // close() with unread data.
    let server = Peer::spawn(
        &ns,
        "rstt-server",
        &[
            "listen=127.0.0.1:20045",
            "say=listening",
            "accept",
            "wait_unread=64",
            "close",
            "say=closed",
            "hold",
        ],
    );
    server.expect("listening");
    let client = Peer::spawn(
        &ns,
        "rstt-client",
        &["connect=127.0.0.1:20045", "send=64", "read_err"],
    );
    client.expect("errno ECONNRESET");
    drop(server);
    // Data after close: the server's socket aborts itself, then sends the RST.
    let server = Peer::spawn(
        &ns,
        "rstt-server",
        &[
            "listen=127.0.0.1:20045",
            "say=listening",
            "accept",
            "linger2=120",
            "close",
            "say=done",
            "hold",
        ],
    );
    server.expect("listening");
    let mut client = Peer::spawn(
        &ns,
        "rstt-client",
        &["connect=127.0.0.1:20045", "wait", "send=10", "read_err"],
    );
    server.expect("done");
    std::thread::sleep(std::time::Duration::from_millis(100));
    client.go();
    // It reads the server's FIN first ("eof"); the RST answers the data it sent after.
    client.expect("eof");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (status, events) = per_event.stop();
    assert!(status.success());
    let (status, summary) = counted.stop();
    assert!(status.success());
    let inode = ns.inode();
    let mut want: BTreeMap<(String, String, String), u64> = BTreeMap::new();
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
    assert_eq!(summary.len(), 1, "{summary:#?}");
    let got: BTreeMap<(String, String, String), u64> = summary[0]["rows"]
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
        .collect();
    assert_eq!(got, want);
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

/// `rst-trace | head -1`: the closed pipe ends rst-trace quietly with status 0.
#[test]
fn broken_pipe_exits_zero_quietly() {
    use std::io::BufRead as _;
    let ns = Netns::new("pipe");
    let (mut t, errs) = spawn_attached(&["--port", "20043"]);
    let mut out = std::io::BufReader::new(t.stdout.take().unwrap());
    let c = Peer::spawn(&ns, "rstt-pipe", &["connect=127.0.0.1:20043"]);
    c.expect("errno ECONNREFUSED");
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(
        line.contains("port_not_listening") || line.contains("connection_refused"),
        "{line}"
    );
    drop(out); // like `head -1` exiting
    // More resets: the next write hits the closed pipe.
    for _ in 0..3 {
        let c = Peer::spawn(&ns, "rstt-pipe", &["connect=127.0.0.1:20043"]);
        c.expect("errno ECONNREFUSED");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(s) = t.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rst-trace kept running after EPIPE"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = errs.map_while(Result::ok).collect();
    assert!(rest.iter().all(|l| !l.contains("error")), "{rest:?}");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// 100k sockets churned (each refused connect is a socket created and destroyed, and two
/// events): rst-trace's memory stays bounded, and nothing is lost silently.
#[test]
fn hundred_thousand_sockets_churned_memory_stays_bounded() {
    let ns = Netns::new("churn");
    let (t, _errs) = spawn_attached(&["--port", "20051", "--json", "--summary", "--quiet"]);
    let warm = Peer::spawn(&ns, "rstt-churn", &["storm=10000,127.0.0.1:20051"]);
    warm.expect("stormed 10000");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let after_10k = rss_kib(t.id());
    let mut done = 10_000;
    while done < 100_000 {
        let p = Peer::spawn(&ns, "rstt-churn", &["storm=30000,127.0.0.1:20051"]);
        p.expect("stormed 30000");
        done += 30_000;
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let after_100k = rss_kib(t.id());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(t.id() as i32, libc::SIGTERM) };
    let out = t.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        after_100k < after_10k + 8 * 1024,
        "RSS grew from {after_10k} KiB to {after_100k} KiB"
    );
    // Every reset is either counted in the summary or reported lost.
    let text = String::from_utf8(out.stdout).unwrap();
    let mut total = 0;
    let mut lost = 0;
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        match v["type"].as_str() {
            Some("summary") => total = v["total"].as_u64().unwrap(),
            Some("lost") => lost += v["count"].as_u64().unwrap(),
            _ => {}
        }
    }
    assert_eq!(total + lost, 2 * done, "summary {total} + lost {lost}");
}

/// SIGTERM in the middle of a storm: exit 0, every line printed is whole.
#[test]
fn sigterm_mid_storm_exits_zero_with_whole_lines() {
    let ns = Netns::new("sigterm");
    let (t, _errs) = spawn_attached(&["--port", "20052", "--json"]);
    let storm = Peer::spawn(&ns, "rstt-storm", &["storm=200000,127.0.0.1:20052"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(t.id() as i32, libc::SIGTERM) };
    let out = t.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let n = text.lines().count();
    assert!(n > 100, "only {n} lines before SIGTERM");
    for l in text.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
    drop(storm);
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
