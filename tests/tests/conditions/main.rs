//! One end-to-end test per reset condition this kernel produces (docs/conditions.md):
//! real processes, real sockets, each test in a network namespace of its own, assertions on what
//! rst-trace printed for both sides.

mod after_close;
mod close;
mod handshake;
mod no_connection;

use rst_trace_tests::{Peer, Scenario, Value, assert_only, received, s};

fn assert_process(v: &Value, peer: &Peer, comm: &str) {
    assert_eq!(s(v, "process.pid"), peer.pid(), "process of {v:#}");
    assert_eq!(s(v, "process.comm"), comm, "comm of {v:#}");
    assert_eq!(v["attribution"], "socket_owner", "{v:#}");
}

fn assert_no_process(v: &Value) {
    assert_eq!(v["process"], Value::Null, "no process expected: {v:#}");
    assert_eq!(v["attribution"], "none");
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
