//! netfilter REJECT on the server's own host: of the SYN, of established data, and over IPv6.

use rst_trace_tests::{Peer, SERVER_ADDR, Scenario, received, s, sent};

use crate::{assert_netfilter, assert_no_flow_owner, assert_no_other_firewall, server};

/// REJECT of the SYN, on the server host (cause 6).
#[test]
fn reject_syn_on_server_host() {
    let port = 22001;
    let (topo, t) = Scenario::new("fwsyn").port(port).topology_tracer(&[]);
    topo.server.exec(&[
        "iptables",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "22001",
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
    let v = sent(&t, &topo.server, "firewall_reject");
    assert_netfilter(&v, port, "SYN");
    assert_no_flow_owner(&v);
    assert_eq!(s(&v, "detail.ttl"), 64);
    let r = received(&t, &topo.client, "connection_refused");
    assert_eq!(s(&r, "process.pid"), client.pid());
    assert_eq!(s(&r, "process.comm"), "rstt-client");
    assert_eq!(s(&r, "linked_sent.condition"), "firewall_reject");
    assert!(
        r["explanation"]
            .as_str()
            .unwrap()
            .contains("firewall_reject")
    );
}

/// REJECT of data on an established connection, on the server host: the RST comes from the
/// server's address with the server's TTL, so no middlebox suspicion.
#[test]
fn reject_established_data_on_server_host() {
    let port = 22002;
    let (topo, t) = Scenario::new("fwest").port(port).topology_tracer(&[]);
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
    topo.server.exec(&[
        "iptables",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "22002",
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
    let v = sent(&t, &topo.server, "firewall_reject");
    assert_netfilter(&v, port, "ACK");
    // The flow's local socket is the server's accepted connection: its owner is named.
    assert_eq!(s(&v, "process.pid"), srv.pid(), "{v:#}");
    assert_eq!(s(&v, "process.comm"), "rstt-server");
    assert_eq!(v["attribution"], "socket_owner");
    let r = received(&t, &topo.client, "peer_reset");
    assert_eq!(s(&r, "process.pid"), client.pid());
    assert_eq!(s(&r, "detail.errno"), "ECONNRESET");
    // One hop: both the server's segments and the RST arrive with TTL 63.
    assert_eq!(s(&r, "detail.ttl"), 63);
    assert_eq!(s(&r, "detail.peer_ttl"), 63);
    assert_eq!(s(&r, "linked_sent.condition"), "firewall_reject");
    assert!(!r["explanation"].as_str().unwrap().contains("suspicion"));
    assert_no_other_firewall(t, &topo, Some(&topo.server));
}

/// IPv6 on one host: an ip6tables REJECT of a SYN and, on the next port, a SYN to a closed port.
/// Both RSTs leave without a socket; before 6.10 no TCP tracepoint shows either, and the
/// transmit hook must still tell netfilter's from TCP's (the checksum TCP leaves to the device).
#[test]
fn ipv6_reject_and_closed_port_told_apart() {
    let (ns, t) = Scenario::new("fw6").port(22101).port(22102).tracer(&[]);
    ns.exec(&[
        "ip6tables",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "22101",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]);
    crate::wait_firewall_watched(&t);
    let server = Peer::spawn(
        &ns,
        "rstt-server",
        &["listen=[::1]:22101", "say=listening", "hold"],
    );
    server.expect("listening");
    let rejected = Peer::spawn(&ns, "rstt-client", &["connect=[::1]:22101"]);
    rejected.expect("errno ECONNREFUSED");
    let closed = Peer::spawn(&ns, "rstt-closed", &["connect=[::1]:22102"]);
    closed.expect("errno ECONNREFUSED");
    let v = sent(&t, &ns, "firewall_reject");
    assert_eq!(v["origin"], "netfilter", "{v:#}");
    assert_eq!(v["family"], "ipv6");
    assert_eq!(s(&v, "local.port"), 22101);
    assert_eq!(s(&v, "detail.rejected"), "SYN");
    let c = sent(&t, &ns, "port_not_listening");
    assert_eq!(c["origin"], "tcp", "{c:#}");
    assert_eq!(c["family"], "ipv6");
    assert_eq!(s(&c, "local.port"), 22102);
    assert_eq!(s(&c, "detail.incoming_flags"), "SYN");
    let r = received(&t, &ns, "connection_refused");
    assert_eq!(s(&r, "process.pid"), rejected.pid());
    assert_eq!(s(&r, "linked_sent.condition"), "firewall_reject");
    // Exactly one sent reset per port: neither RST is reported twice or under the other origin.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (status, events) = t.stop();
    assert!(status.success());
    let inode = ns.inode();
    let sent: Vec<_> = events
        .iter()
        .filter(|e| e["netns"] == inode && e["direction"] == "sent")
        .collect();
    assert_eq!(sent.len(), 2, "{sent:#?}");
}
