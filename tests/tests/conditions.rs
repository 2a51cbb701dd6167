//! One end-to-end test per reset condition this kernel produces (docs/conditions.md):
//! real processes, real sockets, each test in a network namespace of its own, assertions on what
//! rst-trace printed for both sides.

use rst_trace_tests::{
    Peer, Scenario, Value, assert_only, assert_reason, kernel_has_reasons, received, s, sent,
};

fn assert_process(v: &Value, peer: &Peer, comm: &str) {
    assert_eq!(s(v, "process.pid"), peer.pid(), "process of {v:#}");
    assert_eq!(s(v, "process.comm"), comm, "comm of {v:#}");
    assert_eq!(v["attribution"], "socket_owner", "{v:#}");
}

fn assert_no_process(v: &Value) {
    assert_eq!(v["process"], Value::Null, "no process expected: {v:#}");
    assert_eq!(v["attribution"], "none");
}

/// Server S accepts, then forgets the connection (TCP_REPAIR close): the client's next data or
/// FIN reaches a host with no such connection (causes 2, 3, 4, 5).
fn forgotten(tag: &str, addr: &str, port: u16, keep_listener: bool, client_action: &str) {
    let (ns, t) = Scenario::new(tag).port(port).tracer(&[]);
    let bind = format!("{addr}:{port}");
    let mut steps = vec![
        format!("listen={bind}"),
        "say=listening".into(),
        "accept".into(),
    ];
    if !keep_listener {
        steps.push("close_listener".into());
    }
    steps.extend(["repair_close".into(), "say=gone".into(), "hold".into()]);
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let server = Peer::spawn(&ns, "rstt-forget", &steps);
    server.expect("listening");
    let mut client = Peer::spawn(
        &ns,
        "rstt-client",
        &[
            &format!("connect={bind}"),
            "say=connected",
            "wait",
            client_action,
            "read_err",
        ],
    );
    client.expect("connected");
    server.expect("gone");
    client.go();
    client.expect("errno ECONNRESET");
    let want_flags = if client_action.starts_with("shutdown") {
        "FIN|ACK"
    } else {
        "PSH|ACK"
    };
    let snd = if keep_listener {
        let v = sent(&t, &ns, "unexpected_ack_on_listener");
        // The listener's owner is the process that gets the blame, not the client whose
        // softirq ran the reply; endpoints come from the packet, not the listener's 0.0.0.0:0.
        assert_process(&v, &server, "rstt-forget");
        assert_eq!(v["state"], "LISTEN");
        assert_reason(&v, "TCP_FLAGS");
        v
    } else {
        let v = sent(&t, &ns, "no_connection");
        assert_no_process(&v);
        assert_reason(&v, "NO_SOCKET");
        assert_eq!(s(&v, "detail.incoming_flags"), want_flags);
        v
    };
    assert_eq!(s(&snd, "local.port"), port);
    let rcv = received(&t, &ns, "peer_reset");
    assert_process(&rcv, &client, "rstt-client");
    assert_eq!(s(&rcv, "detail.errno"), "ECONNRESET");
    assert_eq!(s(&rcv, "remote.port"), port);
    assert_eq!(s(&snd, "remote.port"), s(&rcv, "local.port"));
    assert_eq!(s(&snd, "remote.addr"), s(&rcv, "local.addr"));
    assert_eq!(s(&snd, "local.addr"), s(&rcv, "remote.addr"));
    let cond = snd["condition"].as_str().unwrap().to_owned();
    assert_eq!(s(&rcv, "linked_sent.condition"), cond.as_str());
    assert_only(t, &ns, &[("sent", &cond), ("received", "peer_reset")]);
}

#[test]
fn data_to_forgotten_connection() {
    forgotten("nodata", "127.0.0.1", 21001, false, "send=10");
}

#[test]
fn fin_to_forgotten_connection() {
    forgotten("nofin", "127.0.0.1", 21002, false, "shutdown=wr");
}

#[test]
fn half_open_with_listener_is_unexpected_ack() {
    forgotten("halfopen", "127.0.0.1", 21003, true, "send=10");
}

#[test]
fn data_to_forgotten_connection_ipv6() {
    forgotten("nodata6", "[::1]", 21004, false, "send=10");
}

#[test]
fn segment_to_time_wait() {
    let (ns, t) = Scenario::new("tw").port(21010).tracer(&[]);
    let bind = "127.0.0.1:21010";
    let mut server = Peer::spawn(
        &ns,
        "rstt-server",
        &[
            &format!("listen={bind}"),
            "say=listening",
            "accept",
            "wait_eof",
            "say=eof",
            "wait",
            "send=10",
            "sleep=200",
            "send=10",
            "hold",
        ],
    );
    server.expect("listening");
    // The client closes first; with the server's ACK its orphan becomes a FIN_WAIT2
    // TIME_WAIT mini-socket; the server's later data gets an RST from it.
    let client = Peer::spawn(
        &ns,
        "rstt-client",
        &[&format!("connect={bind}"), "close", "say=closed", "hold"],
    );
    client.expect("closed");
    server.expect("eof");
    std::thread::sleep(std::time::Duration::from_millis(100));
    server.go();
    server.expect("errno EPIPE");
    let v = sent(&t, &ns, "time_wait_segment");
    assert_eq!(v["state"], "TIME_WAIT");
    assert_reason(&v, "TCP_TIMEWAIT_SOCKET");
    assert_eq!(s(&v, "remote.port"), 21010);
    assert_eq!(s(&v, "detail.incoming_flags"), "PSH|ACK");
    let r = received(&t, &ns, "peer_reset");
    assert_process(&r, &server, "rstt-server");
    assert_eq!(r["state"], "CLOSE_WAIT");
    assert_eq!(s(&r, "detail.errno"), "EPIPE");
    assert_only(
        t,
        &ns,
        &[("sent", "time_wait_segment"), ("received", "peer_reset")],
    );
}

/// close() or exit with unread data; variants: SIGKILL, shutdown first.
fn unread(tag: &str, port: u16, server_end: &[&str], prev_state: &str, unread_bytes: u64) {
    let (ns, t) = Scenario::new(tag).port(port).tracer(&[]);
    let bind = format!("127.0.0.1:{port}");
    let mut steps = vec![
        format!("listen={bind}"),
        "say=listening".to_owned(),
        "accept".to_owned(),
    ];
    steps.extend(server_end.iter().map(|s| (*s).to_owned()));
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let server = Peer::spawn(&ns, "rstt-server", &steps);
    server.expect("listening");
    let client = Peer::spawn(
        &ns,
        "rstt-client",
        &[&format!("connect={bind}"), "send=300", "read_err", "hold"],
    );
    let r = received(&t, &ns, "peer_reset");
    assert_process(&r, &client, "rstt-client");
    let v = sent(&t, &ns, "close_with_unread_data");
    assert_process(&v, &server, "rstt-server");
    assert_reason(&v, "TCP_ABORT_ON_CLOSE");
    assert_eq!(v["state"], prev_state);
    assert_eq!(s(&v, "detail.unread_bytes"), unread_bytes);
    assert_eq!(s(&r, "linked_sent.process.pid"), server.pid());
    assert_only(
        t,
        &ns,
        &[
            ("sent", "close_with_unread_data"),
            ("received", "peer_reset"),
        ],
    );
}

#[test]
fn sigkill_with_unread_data() {
    unread(
        "kill",
        21020,
        &["wait_unread=300", "kill"],
        "ESTABLISHED",
        300,
    );
}

#[test]
fn shutdown_then_close_with_unread_data() {
    unread(
        "shutclose",
        21021,
        &[
            "wait_unread=300",
            "shutdown=wr",
            "sleep=100",
            "close",
            "hold",
        ],
        "FIN_WAIT2",
        300,
    );
}

#[test]
fn close_with_unread_data_after_partial_read() {
    unread(
        "partial",
        21022,
        &["wait_unread=300", "read=100", "close", "hold"],
        "ESTABLISHED",
        200,
    );
}

#[test]
fn stale_synack_after_connect_timeout() {
    let (ns, t) = Scenario::new("stale").port(21030).tracer(&[]);
    let bind = "127.0.0.1:21030";
    // Drop the server's SYN-ACKs until the client has given up.
    let rule = [
        "-p",
        "tcp",
        "--sport",
        "21030",
        "--tcp-flags",
        "SYN,ACK",
        "SYN,ACK",
        "-j",
        "DROP",
    ];
    let mut add = vec!["iptables", "-A", "OUTPUT"];
    add.extend(rule);
    ns.exec(&add);
    let server = Peer::spawn(
        &ns,
        "rstt-server",
        &[&format!("listen={bind}"), "say=listening", "hold"],
    );
    server.expect("listening");
    let client = Peer::spawn(
        &ns,
        "rstt-client",
        &[&format!("connect_timeout={bind},300"), "say=gaveup", "hold"],
    );
    client.expect("timeout");
    client.expect("gaveup");
    let mut del = vec!["iptables", "-D", "OUTPUT"];
    del.extend(rule);
    ns.exec(&del);
    // The server retransmits its SYN-ACK (after 1 s, then 2 s): the client host answers RST.
    let v = sent(&t, &ns, "stale_synack");
    assert_no_process(&v);
    assert_eq!(s(&v, "detail.incoming_flags"), "SYN|ACK");
    assert_eq!(s(&v, "remote.port"), 21030);
    assert_reason(&v, "NO_SOCKET");
}

fn linger0(tag: &str, addr: &str, port: u16, fill: bool) {
    let (ns, t) = Scenario::new(tag).port(port).tracer(&[]);
    let bind = format!("{addr}:{port}");
    let mut server = Peer::spawn(
        &ns,
        "rstt-server",
        &[
            &format!("listen={bind}"),
            "say=listening",
            "accept",
            "say=accepted",
            "wait",
            "read_err",
            "hold",
        ],
    );
    server.expect("listening");
    let mut steps = vec![format!("connect={bind}")];
    if fill {
        steps.push("fill".into());
    }
    steps.extend([
        "linger0".into(),
        "sleep=50".into(),
        "close".into(),
        "say=closed".into(),
        "hold".into(),
    ]);
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let client = Peer::spawn(&ns, "rstt-linger", &steps);
    server.expect("accepted");
    if fill {
        assert!(client.line().starts_with("filled "));
    }
    client.expect("closed");
    server.go();
    server.expect("errno ECONNRESET");
    let v = sent(&t, &ns, "linger_abort");
    assert_process(&v, &client, "rstt-linger");
    assert_reason(&v, "TCP_STATE");
    assert_eq!(v["state"], "ESTABLISHED");
    let unsent = s(&v, "detail.unsent_bytes").as_u64().expect("unsent_bytes");
    if fill {
        assert!(unsent > 0, "{v:#}");
    } else {
        assert_eq!(unsent, 0);
    }
    let r = received(&t, &ns, "peer_reset");
    // The server's socket came from accept(): its owner is the server.
    assert_process(&r, &server, "rstt-server");
    assert_only(
        t,
        &ns,
        &[("sent", "linger_abort"), ("received", "peer_reset")],
    );
}

#[test]
fn so_linger_zero() {
    linger0("linger", "127.0.0.1", 21040, false);
}

#[test]
fn so_linger_zero_with_unsent_data() {
    linger0("lingerfill", "127.0.0.1", 21041, true);
}

#[test]
fn so_linger_zero_ipv6() {
    linger0("linger6", "[::1]", 21042, false);
}

#[test]
fn listener_closed_with_unaccepted_connection() {
    let (ns, t) = Scenario::new("lclose").port(21050).tracer(&[]);
    let bind = "127.0.0.1:21050";
    let mut server = Peer::spawn(
        &ns,
        "rstt-listener",
        &[
            &format!("listen={bind}"),
            "say=listening",
            "wait",
            "close_listener",
            "say=closed",
            "hold",
        ],
    );
    server.expect("listening");
    let client = Peer::spawn(
        &ns,
        "rstt-client",
        &[&format!("connect={bind}"), "say=connected", "read_err"],
    );
    client.expect("connected");
    std::thread::sleep(std::time::Duration::from_millis(50));
    server.go();
    server.expect("closed");
    client.expect("errno ECONNRESET");
    let v = sent(&t, &ns, "listener_closed");
    assert_process(&v, &server, "rstt-listener");
    assert_reason(&v, "TCP_STATE");
    assert_eq!(s(&v, "local.port"), 21050);
    let r = received(&t, &ns, "peer_reset");
    assert_process(&r, &client, "rstt-client");
    assert_only(
        t,
        &ns,
        &[("sent", "listener_closed"), ("received", "peer_reset")],
    );
}

#[test]
fn connect_af_unspec_disconnect() {
    let (ns, t) = Scenario::new("unspec").port(21060).tracer(&[]);
    let bind = "127.0.0.1:21060";
    let server = Peer::spawn(
        &ns,
        "rstt-server",
        &[
            &format!("listen={bind}"),
            "say=listening",
            "accept",
            "read_err",
        ],
    );
    server.expect("listening");
    let client = Peer::spawn(
        &ns,
        "rstt-client",
        &[
            &format!("connect={bind}"),
            "sleep=50",
            "disconnect",
            "say=done",
            "hold",
        ],
    );
    client.expect("done");
    server.expect("errno ECONNRESET");
    let v = sent(&t, &ns, "disconnect");
    assert_process(&v, &client, "rstt-client");
    assert_eq!(v["state"], "ESTABLISHED");
    let r = received(&t, &ns, "peer_reset");
    assert_process(&r, &server, "rstt-server");
    assert_only(
        t,
        &ns,
        &[("sent", "disconnect"), ("received", "peer_reset")],
    );
}

#[test]
fn disconnect_with_unsent_data_in_last_ack() {
    let (ns, t) = Scenario::new("lastack").port(21061).tracer(&[]);
    let bind = "127.0.0.1:21061";
    // The server half-closes and never reads; the client fills the window, half-closes too
    // (LAST_ACK with data queued) and aborts with SO_LINGER 0.
    let server = Peer::spawn(
        &ns,
        "rstt-server",
        &[
            &format!("listen={bind}"),
            "say=listening",
            "accept",
            "shutdown=wr",
            "hold",
        ],
    );
    server.expect("listening");
    let client = Peer::spawn(
        &ns,
        "rstt-client",
        &[
            &format!("connect={bind}"),
            "wait_eof",
            "fill",
            "shutdown=wr",
            "linger0",
            "close",
            "say=closed",
            "hold",
        ],
    );
    assert!(client.line().starts_with("filled "));
    client.expect("closed");
    let v = sent(&t, &ns, "disconnect_with_unsent_data");
    assert_process(&v, &client, "rstt-client");
    assert_reason(&v, "TCP_DISCONNECT_WITH_DATA");
    assert_eq!(v["state"], "LAST_ACK");
    assert!(s(&v, "detail.unsent_bytes").as_u64().unwrap() > 0);
    let r = received(&t, &ns, "peer_reset");
    assert_process(&r, &server, "rstt-server");
    drop(server);
}

/// Data arriving after the application closed or shut down its socket.
fn data_after(tag: &str, port: u16, server_end: &[&str], condition: &str, reason: &str) {
    let (ns, t) = Scenario::new(tag).port(port).tracer(&[]);
    let bind = format!("127.0.0.1:{port}");
    let mut steps = vec![
        format!("listen={bind}"),
        "say=listening".to_owned(),
        "accept".to_owned(),
    ];
    steps.extend(server_end.iter().map(|s| (*s).to_owned()));
    steps.extend(["say=done".to_owned(), "hold".to_owned()]);
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let server = Peer::spawn(&ns, "rstt-server", &steps);
    server.expect("listening");
    let mut client = Peer::spawn(
        &ns,
        "rstt-client",
        &[&format!("connect={bind}"), "wait", "send=10", "read_err"],
    );
    server.expect("done");
    std::thread::sleep(std::time::Duration::from_millis(100));
    client.go();
    let v = sent(&t, &ns, condition);
    // Decided in softirq while the client's segment was processed: still the server's reset.
    assert_process(&v, &server, "rstt-server");
    assert_reason(&v, reason);
    let r = received(&t, &ns, "peer_reset");
    assert_process(&r, &client, "rstt-client");
    // No "received" event for the server's own socket (tcp_reset() on the sender is not a
    // received reset).
    assert_only(t, &ns, &[("sent", condition), ("received", "peer_reset")]);
}

#[test]
fn data_after_shutdown() {
    data_after(
        "dashut",
        21070,
        &["shutdown=rdwr"],
        "data_after_close",
        "TCP_ABORT_ON_DATA",
    );
}

#[test]
fn data_after_close() {
    // TCP_LINGER2 of 120 s keeps the closed socket a full FIN_WAIT2 socket (not TIME_WAIT).
    data_after(
        "daclose",
        21071,
        &["linger2=120", "close"],
        "data_after_close",
        "TCP_ABORT_ON_DATA",
    );
}

#[test]
fn tcp_linger2_negative_close() {
    // close() on an established socket with TCP_LINGER2 < 0: aborted when the peer ACKs the FIN.
    let (ns, t) = Scenario::new("linger2").port(21072).tracer(&[]);
    let bind = "127.0.0.1:21072";
    let server = Peer::spawn(
        &ns,
        "rstt-server",
        &[
            &format!("listen={bind}"),
            "say=listening",
            "accept",
            "linger2=-1",
            "close",
            "say=done",
            "hold",
        ],
    );
    server.expect("listening");
    let client = Peer::spawn(
        &ns,
        "rstt-client",
        // Hold the socket open after EOF: a client that exits sends its own FIN, which can reach
        // the listener after the abort and draw a second, real, RST (unexpected_ack_on_listener).
        &[&format!("connect={bind}"), "read_err", "hold"],
    );
    server.expect("done");
    let v = sent(&t, &ns, "fin_wait2_abort");
    assert_process(&v, &server, "rstt-server");
    let r = received(&t, &ns, "peer_reset");
    assert_process(&r, &client, "rstt-client");
    assert_only(
        t,
        &ns,
        &[("sent", "fin_wait2_abort"), ("received", "peer_reset")],
    );
}

#[test]
fn tcp_linger2_negative_close_in_fin_wait2() {
    let (ns, t) = Scenario::new("linger2fw2").port(21073).tracer(&[]);
    let bind = "127.0.0.1:21073";
    let server = Peer::spawn(
        &ns,
        "rstt-server",
        &[
            &format!("listen={bind}"),
            "say=listening",
            "accept",
            "linger2=-1",
            "shutdown=wr",
            "sleep=100",
            "close",
            "say=done",
            "hold",
        ],
    );
    server.expect("listening");
    let client = Peer::spawn(
        &ns,
        "rstt-client",
        &[&format!("connect={bind}"), "read_err", "hold"],
    );
    server.expect("done");
    let v = sent(&t, &ns, "fin_wait2_abort");
    assert_process(&v, &server, "rstt-server");
    assert_reason(&v, "TCP_ABORT_ON_LINGER");
    assert_eq!(v["state"], "FIN_WAIT2");
    let r = received(&t, &ns, "peer_reset");
    assert_process(&r, &client, "rstt-client");
    drop(client);
}

#[test]
fn keepalive_timeout_with_busy_bystander() {
    let (ns, t) = Scenario::new("keepalive").port(21080).tracer(&[]);
    let bind = "127.0.0.1:21080";
    let server = Peer::spawn(
        &ns,
        "rstt-server",
        &[&format!("listen={bind}"), "say=listening", "accept", "hold"],
    );
    server.expect("listening");
    let client = Peer::spawn(
        &ns,
        "rstt-client",
        &[
            &format!("connect={bind}"),
            "keepalive=1,1,2",
            "say=ready",
            "read_err",
        ],
    );
    client.expect("ready");
    // The server stops answering: drop everything it sends.
    ns.exec(&[
        "iptables", "-A", "INPUT", "-p", "tcp", "--sport", "21080", "-j", "DROP",
    ]);
    // Busy bystanders whose time slices the keepalive timer will interrupt.
    let busy: Vec<Peer> = (0..2)
        .map(|_| Peer::spawn(&ns, "rstt-busy", &["busy=6000"]))
        .collect();
    client.expect("errno ETIMEDOUT");
    let v = sent(&t, &ns, "keepalive_timeout");
    assert_process(&v, &client, "rstt-client");
    assert_eq!(v["state"], "ESTABLISHED");
    assert_reason(&v, "TCP_KEEPALIVE_TIMEOUT");
    for b in &busy {
        assert_ne!(s(&v, "process.pid"), b.pid());
    }
    drop(server);
}

#[test]
fn accept_queue_overflow() {
    let (ns, t) = Scenario::new("overflow").port(21090).tracer(&[]);
    let bind = "127.0.0.1:21090";
    ns.exec(&["sysctl", "-q", "-w", "net.ipv4.tcp_abort_on_overflow=1"]);
    // Backlog 1: the accept queue is full with two connections waiting (ack_backlog > 1).
    let server = Peer::spawn(
        &ns,
        "rstt-server",
        &[&format!("listen={bind},1"), "say=listening", "hold"],
    );
    server.expect("listening");
    let first = Peer::spawn(
        &ns,
        "rstt-first",
        &[&format!("connect={bind}"), "say=connected", "hold"],
    );
    first.expect("connected");
    // Hold back the next clients' handshake ACKs, so that both wait in SYN_RECV while the
    // queue still has room (a SYN is dropped once it is full), then let their first data
    // through: the first completes the queue, the second overflows it.
    let rule = [
        "-p",
        "tcp",
        "--dport",
        "21090",
        "--tcp-flags",
        "SYN,ACK,RST,PSH,FIN",
        "ACK",
        "-j",
        "DROP",
    ];
    let mut add = vec!["iptables", "-A", "OUTPUT"];
    add.extend(rule);
    ns.exec(&add);
    let mut clients: Vec<Peer> = (0..2)
        .map(|_| {
            Peer::spawn(
                &ns,
                "rstt-client",
                &[
                    &format!("connect={bind}"),
                    "say=connected",
                    "wait",
                    "send=10",
                    "read_err",
                    "hold",
                ],
            )
        })
        .collect();
    for c in &clients {
        c.expect("connected");
    }
    let mut del = vec!["iptables", "-D", "OUTPUT"];
    del.extend(rule);
    ns.exec(&del);
    for c in &mut clients {
        c.go();
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let v = sent(&t, &ns, "accept_queue_overflow");
    assert_process(&v, &server, "rstt-server");
    assert_eq!(v["state"], "LISTEN");
    assert_eq!(s(&v, "local.port"), 21090);
    // Endpoints come from the client's segment, not the listener's 0.0.0.0:0.
    assert_ne!(s(&v, "remote.port"), 0);
    assert_eq!(s(&v, "remote.addr"), "127.0.0.1");
    let r = received(&t, &ns, "peer_reset");
    // Which of the two held clients overflowed depends on which segment arrived second.
    let reset = clients
        .iter()
        .find(|c| r["process"]["pid"] == c.pid())
        .unwrap_or_else(|| panic!("peer_reset must belong to a held client: {r:#}"));
    assert_process(&r, reset, "rstt-client");
    assert_eq!(s(&r, "local.port"), s(&v, "remote.port"));
    assert_eq!(s(&r, "linked_sent.condition"), "accept_queue_overflow");
}

/// A crafted SYN-ACK (scapy, tests/scripts/synack.py) that the connecting client must reject.
fn crafted_synack(tag: &str, port: u16, mode: &str, condition: &str, reason: &str) {
    use std::io::BufRead as _;
    let (ns, t) = Scenario::new(tag).port(port).tracer(&[]);
    let p = port.to_string();
    // Drop the client's SYN before this host's TCP answers it: the script answers instead.
    ns.exec(&[
        "iptables",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        &p,
        "--tcp-flags",
        "SYN,ACK,RST",
        "SYN",
        "-j",
        "DROP",
    ]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/synack.py");
    let mut responder = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "/usr/bin/python3",
            script,
            &p,
            mode,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the scapy responder (is python3-scapy installed? ./x setup installs it)");
    let mut lines = std::io::BufReader::new(responder.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let client = Peer::spawn(
        &ns,
        "rstt-client",
        &[&format!("connect_timeout=127.0.0.1:{port},3000"), "hold"],
    );
    assert_eq!(lines.next().unwrap().unwrap(), "sent");
    // Before 6.10 the kernel gives no reason, and a PAWS failure takes the same path as a wrong
    // ACK number (tcp_rcv_synsent_state_process(): reset_and_undo): rst-trace says it cannot
    // tell which (README: supported kernels).
    let condition = if kernel_has_reasons() {
        condition
    } else {
        "invalid_ack"
    };
    let v = sent(&t, &ns, condition);
    // Decided in softirq while the SYN-ACK was processed: the connecting client's socket.
    assert_process(&v, &client, "rstt-client");
    assert_eq!(v["state"], "SYN_SENT");
    assert_reason(&v, reason);
    assert_eq!(s(&v, "remote.port"), port);
    let _ = responder.wait();
}

#[test]
fn synack_with_wrong_ack_number() {
    crafted_synack(
        "badack",
        21100,
        "bad_ack",
        "invalid_ack",
        "TCP_INVALID_ACK_SEQUENCE",
    );
}

#[test]
fn synack_failing_paws() {
    crafted_synack(
        "paws",
        21101,
        "bad_tsecr",
        "paws_reject",
        "TCP_RFC7323_PAWS",
    );
}

/// With `--direction received`, the server's own tcp_reset() on a data_after_close socket is
/// still recognised and hidden (it needs the sent event, which the kernel side keeps), and the
/// client's reset is still linked to the sender.
#[test]
fn direction_received_keeps_linking_and_self_reset_hidden() {
    let port = 21110;
    let (ns, t) = Scenario::new("dirrecv")
        .port(port)
        .tracer(&["--direction", "received"]);
    let bind = format!("127.0.0.1:{port}");
    let server = Peer::spawn(
        &ns,
        "rstt-server",
        &[
            &format!("listen={bind}"),
            "say=listening",
            "accept",
            "shutdown=rdwr",
            "say=done",
            "hold",
        ],
    );
    server.expect("listening");
    let mut client = Peer::spawn(
        &ns,
        "rstt-client",
        &[
            &format!("connect={bind}"),
            "wait",
            "send=10",
            "read_err",
            "hold",
        ],
    );
    server.expect("done");
    std::thread::sleep(std::time::Duration::from_millis(100));
    client.go();
    let r = received(&t, &ns, "peer_reset");
    assert_process(&r, &client, "rstt-client");
    assert_eq!(s(&r, "linked_sent.condition"), "data_after_close");
    assert_only(t, &ns, &[("received", "peer_reset")]);
}
