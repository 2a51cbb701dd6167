//! Resets after the app let go or the peer went silent: data after close, LINGER2 < 0, keepalive.

use rst_trace_tests::{Peer, Scenario, assert_only, assert_reason, received, s, sent};

use crate::assert_process;

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

/// A reset that reaches a socket its application already closed (an orphan in FIN_WAIT2 here,
/// kept a full socket by TCP_LINGER2): nobody will see an error, and the received event says
/// so, with no `errno`, and no application record follows.
#[test]
fn reset_received_by_an_orphan_is_seen_by_no_call() {
    let (ns, t) = Scenario::new("orphanrx").port(21074).tracer(&[]);
    let bind = "127.0.0.1:21074";
    let mut server = Peer::spawn(
        &ns,
        "rstt-server",
        &[
            &format!("listen={bind}"),
            "say=listening",
            "accept",
            "wait_unread=256",
            "say=unread",
            "wait",
            "close",
            "say=done",
            "hold",
        ],
    );
    server.expect("listening");
    let client = Peer::spawn(
        &ns,
        "rstt-client",
        &[
            &format!("connect={bind}"),
            "send=256",
            "linger2=120",
            "close",
            "say=closed",
            "hold",
        ],
    );
    server.expect("unread");
    client.expect("closed");
    // The client's FIN is acknowledged: its orphan waits in FIN_WAIT2.
    std::thread::sleep(std::time::Duration::from_millis(100));
    server.go();
    server.expect("done");
    let v = sent(&t, &ns, "close_with_unread_data");
    assert_process(&v, &server, "rstt-server");
    let r = received(&t, &ns, "peer_reset");
    assert_process(&r, &client, "rstt-client");
    assert_eq!(r["state"], "FIN_WAIT2", "{r:#}");
    assert_eq!(r["detail"].get("errno"), None, "{r:#}");
    let expl = r["explanation"].as_str().unwrap();
    assert!(
        expl.contains("had already closed the socket, so no call will see the reset"),
        "{expl}"
    );
    assert!(!expl.contains("on its next read or write"), "{expl}");
    // Exactly these two: no app_error, no not_noticed for the orphan.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (status, events) = t.stop();
    assert!(status.success());
    let inode = ns.inode();
    let ours: Vec<_> = events.iter().filter(|v| v["netns"] == inode).collect();
    assert_eq!(ours.len(), 2, "{ours:#?}");
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
