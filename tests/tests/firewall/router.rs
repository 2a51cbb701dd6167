//! netfilter REJECT on the router: of the SYN, of established data, and after conntrack expiry.

use rst_trace_tests::{Peer, SERVER_ADDR, Scenario, received, s, sent};

use crate::{assert_netfilter, assert_no_flow_owner, server};

/// REJECT on the router, of the SYN.
#[test]
fn reject_syn_on_router() {
    let port = 22003;
    let (topo, t) = Scenario::new("fwrsyn").port(port).topology_tracer(&[]);
    let _srv = server(&topo, port);
    topo.router.exec(&[
        "iptables",
        "-A",
        "FORWARD",
        "-p",
        "tcp",
        "--dport",
        "22003",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]);
    crate::wait_firewall_watched(&t);
    let client = Peer::spawn(
        &topo.client,
        "rstt-client",
        &[&format!("connect={SERVER_ADDR}:{port}")],
    );
    client.expect("errno ECONNREFUSED");
    let v = sent(&t, &topo.router, "firewall_reject");
    assert_netfilter(&v, port, "SYN");
    assert_no_flow_owner(&v);
    let r = received(&t, &topo.client, "connection_refused");
    assert_eq!(s(&r, "process.pid"), client.pid());
    // Nothing reached the server.
    let (_, events) = t.stop();
    let inode = topo.server.inode();
    assert!(!events.iter().any(|e| e["netns"] == inode), "{events:#?}");
}

/// REJECT on the router, of established data: the RST's TTL (64, made one hop away) differs
/// from the server's segments' (63), so the explanation names a device on the path.
#[test]
fn reject_established_data_on_router() {
    let port = 22004;
    let (topo, t) = Scenario::new("fwrest").port(port).topology_tracer(&[]);
    let srv = server(&topo, port);
    let mut client = Peer::spawn(
        &topo.client,
        "rstt-client",
        &[
            &format!("connect={SERVER_ADDR}:{port}"),
            "send=10",
            "say=connected",
            "wait",
            "send=10",
            "read_err",
            "hold",
        ],
    );
    client.expect("connected");
    srv.expect("accepted");
    // Let the server's ACK of the first data arrive (it is the TTL sample).
    std::thread::sleep(std::time::Duration::from_millis(100));
    topo.router.exec(&[
        "iptables",
        "-A",
        "FORWARD",
        "-p",
        "tcp",
        "--dport",
        "22004",
        "--tcp-flags",
        "PSH",
        "PSH",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]);
    crate::wait_firewall_watched(&t);
    client.go();
    client.expect("errno ECONNRESET");
    let v = sent(&t, &topo.router, "firewall_reject");
    assert_netfilter(&v, port, "ACK");
    assert_no_flow_owner(&v);
    let r = received(&t, &topo.client, "peer_reset");
    assert_eq!(s(&r, "process.pid"), client.pid());
    assert_eq!(s(&r, "detail.ttl"), 64);
    assert_eq!(s(&r, "detail.peer_ttl"), 63);
    // The router is a namespace on this host, so the sender is known, not suspected.
    assert_eq!(s(&r, "linked_sent.condition"), "firewall_reject");
    let e = r["explanation"].as_str().unwrap();
    assert!(e.contains("netfilter"), "{e}");
    assert!(!e.contains("suspicion"), "{e}");
}

/// A middlebox that lost the flow's state (conntrack flushed, loose pickup off) rejects the
/// next segment as INVALID (cause 13).
#[test]
fn conntrack_expiry_on_router() {
    let port = 22005;
    let (topo, t) = Scenario::new("fwct").port(port).topology_tracer(&[]);
    topo.router.exec(&[
        "iptables",
        "-A",
        "FORWARD",
        "-p",
        "tcp",
        "-m",
        "conntrack",
        "--ctstate",
        "INVALID",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]);
    crate::wait_firewall_watched(&t);
    topo.router.exec(&[
        "sysctl",
        "-q",
        "-w",
        "net.netfilter.nf_conntrack_tcp_loose=0",
    ]);
    let srv = server(&topo, port);
    let mut client = Peer::spawn(
        &topo.client,
        "rstt-client",
        &[
            &format!("connect={SERVER_ADDR}:{port}"),
            "send=10",
            "say=connected",
            "wait",
            "send=10",
            "read_err",
            "hold",
        ],
    );
    client.expect("connected");
    srv.expect("accepted");
    std::thread::sleep(std::time::Duration::from_millis(100));
    topo.router.exec(&["conntrack", "-F"]);
    client.go();
    client.expect("errno ECONNRESET");
    let v = sent(&t, &topo.router, "firewall_reject");
    assert_netfilter(&v, port, "ACK");
    assert_no_flow_owner(&v);
    let r = received(&t, &topo.client, "peer_reset");
    assert_eq!(s(&r, "process.pid"), client.pid());
    assert_eq!(s(&r, "detail.ttl"), 64);
    assert_eq!(s(&r, "detail.peer_ttl"), 63);
    assert_eq!(s(&r, "linked_sent.condition"), "firewall_reject");
}
