//! Aborts by the socket's owner: close with unread data, SO_LINGER 0, listener close, disconnect.

use rst_trace_tests::{Peer, Scenario, assert_only, assert_reason, received, s, sent};

use crate::assert_process;

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
