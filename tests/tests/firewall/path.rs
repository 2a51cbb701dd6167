//! Resets that are no firewall's: one injected on the path, a server's abort the router forwards.

use rst_trace_tests::{Peer, SERVER_ADDR, Scenario, Value, received, s, sent};

use crate::assert_no_other_firewall;

/// An RST injected on the path (raw socket on the router) with the exact expected sequence
/// number (RFC 5961 accepts only that one): no host sent it through TCP or netfilter, so there is
/// no sent event; the TTL gives it away (cause 12).
#[test]
fn injected_rst_from_router() {
    use std::io::BufRead as _;
    let port = 22006;
    let (topo, t) = Scenario::new("fwinj").port(port).topology_tracer(&[]);
    let srv = Peer::spawn(
        &topo.server,
        "rstt-server",
        &[
            &format!("listen={SERVER_ADDR}:{port}"),
            "say=listening",
            "accept",
            "say=accepted",
            "wait",
            "send=10",
            "hold",
        ],
    );
    srv.expect("listening");
    let client = Peer::spawn(
        &topo.client,
        "rstt-client",
        &[&format!("connect={SERVER_ADDR}:{port}"), "read_err", "hold"],
    );
    srv.expect("accepted");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/inject_rst.py");
    let mut injector = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.router.name,
            "/usr/bin/python3",
            script,
            &port.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the scapy injector (python3-scapy)");
    let mut lines = std::io::BufReader::new(injector.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let mut srv = srv;
    srv.go();
    assert_eq!(lines.next().unwrap().unwrap(), "injected");
    client.expect("errno ECONNRESET");
    let r = received(&t, &topo.client, "peer_reset");
    assert_eq!(s(&r, "process.pid"), client.pid());
    assert_eq!(s(&r, "detail.ttl"), 64);
    assert_eq!(s(&r, "detail.peer_ttl"), 63);
    assert_eq!(r["linked_sent"], Value::Null);
    assert!(
        r["explanation"]
            .as_str()
            .unwrap()
            .contains("suspicion, not fact")
    );
    let _ = injector.wait();
    let (_, events) = t.stop();
    assert!(
        !events.iter().any(|e| e["direction"] == "sent"),
        "no host sent this RST: {events:#?}"
    );
}

/// An abortive close by the server, forwarded by the router: an ordinary TCP reset, not a
/// firewall's, even though the forwarded RST leaves the router without a socket.
#[test]
fn forwarded_tcp_reset_is_not_a_firewall_reset() {
    let port = 22007;
    let (topo, t) = Scenario::new("fwfwd").port(port).topology_tracer(&[]);
    let srv = Peer::spawn(
        &topo.server,
        "rstt-server",
        &[
            &format!("listen={SERVER_ADDR}:{port}"),
            "say=listening",
            "accept",
            "wait_unread=50",
            "close",
            "say=closed",
            "hold",
        ],
    );
    srv.expect("listening");
    let client = Peer::spawn(
        &topo.client,
        "rstt-client",
        &[
            &format!("connect={SERVER_ADDR}:{port}"),
            "send=50",
            "read_err",
            "hold",
        ],
    );
    srv.expect("closed");
    client.expect("errno ECONNRESET");
    let v = sent(&t, &topo.server, "close_with_unread_data");
    assert_eq!(s(&v, "process.pid"), srv.pid());
    let r = received(&t, &topo.client, "peer_reset");
    assert_eq!(s(&r, "linked_sent.condition"), "close_with_unread_data");
    assert_eq!(s(&r, "detail.ttl"), 63);
    assert_no_other_firewall(t, &topo, None);
}
