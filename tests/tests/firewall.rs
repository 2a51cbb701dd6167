//! Resets the TCP tracepoints cannot see: netfilter REJECT on the server host and on a router,
//! a conntrack-expiry middlebox, and an RST injected on the path. Three namespaces (client,
//! router, server) joined by veth; assertions on both the sent `firewall_reject` (where
//! netfilter sent it) and the client's received reset, with its TTL evidence.

use rst_trace_tests::{
    CLIENT_ADDR, Netns, Peer, SERVER_ADDR, Scenario, Topology, Tracer, Value, received, s, sent,
};

fn server(topo: &Topology, port: u16) -> Peer {
    let p = Peer::spawn(
        &topo.server,
        "rstt-server",
        &[
            &format!("listen={SERVER_ADDR}:{port}"),
            "say=listening",
            "accept",
            "say=accepted",
            "hold",
        ],
    );
    p.expect("listening");
    p
}

/// No firewall_reject anywhere but `except` (forwarded RSTs must not look like REJECTs).
fn assert_no_other_firewall(t: Tracer, topo: &Topology, except: Option<&Netns>) {
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (status, events) = t.stop();
    assert!(status.success());
    let allowed = except.map(Netns::inode);
    for e in &events {
        if e["condition"] == "firewall_reject" {
            assert_eq!(Some(e["netns"].as_u64().unwrap()), allowed, "stray: {e:#}");
        }
    }
    let ours = [
        topo.client.inode(),
        topo.router.inode(),
        topo.server.inode(),
    ];
    assert!(events.iter().any(|e| ours.iter().any(|i| e["netns"] == *i)));
}

fn assert_netfilter(v: &Value, port: u16, rejected: &str) {
    assert_eq!(v["origin"], "netfilter", "{v:#}");
    assert_eq!(v["kernel_reason"], Value::Null);
    assert_eq!(v["state"], Value::Null);
    // The RST claims to come from the server, to the client.
    assert_eq!(s(v, "local.addr"), SERVER_ADDR);
    assert_eq!(s(v, "local.port"), port);
    assert_eq!(s(v, "remote.addr"), CLIENT_ADDR);
    assert_eq!(s(v, "detail.rejected"), rejected);
}

/// A netfilter RST whose flow has no socket on the rejecting host (a router, or a SYN).
fn assert_no_flow_owner(v: &Value) {
    assert_eq!(v["process"], Value::Null, "{v:#}");
    assert_eq!(v["attribution"], "none");
}

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
