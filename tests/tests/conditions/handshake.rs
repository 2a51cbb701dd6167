//! Handshakes the kernel refuses: an accept queue overflow, crafted SYN-ACKs the client rejects.

use rst_trace_tests::{
    Netns, Peer, Scenario, assert_reason, kernel_has_reasons, received, s, sent,
};

use crate::assert_process;

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
    let mut clients = held_clients(&ns, bind);
    for c in &mut clients {
        c.go();
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let v = sent(&t, &ns, "accept_queue_overflow");
    assert_process(&v, &server, "rstt-server");
    assert_eq!(v["state"], "LISTEN");
    // It answers the client's ACK (the handshake's last segment, or its data).
    assert!(
        s(&v, "detail.incoming_flags")
            .as_str()
            .is_some_and(|f| f.contains("ACK")),
        "{v:#}"
    );
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

/// Two clients of `bind` connected as far as their side knows, their handshake ACKs held back
/// by a rule in `ns` until both waited in the listener's SYN_RECV; each sends when told (`go`).
fn held_clients(ns: &Netns, bind: &str) -> Vec<Peer> {
    let port = bind.rsplit(':').next().expect("ADDR:PORT").to_owned();
    // Hold back the next clients' handshake ACKs, so that both wait in SYN_RECV while the
    // queue still has room (a SYN is dropped once it is full), then let their first data
    // through: the first completes the queue, the second overflows it.
    let rule = [
        "-p",
        "tcp",
        "--dport",
        port.as_str(),
        "--tcp-flags",
        "SYN,ACK,RST,PSH,FIN",
        "ACK",
        "-j",
        "DROP",
    ];
    let mut add = vec!["iptables", "-A", "OUTPUT"];
    add.extend(rule);
    ns.exec(&add);
    let clients: Vec<Peer> = (0..2)
        .map(|_| {
            Peer::spawn(
                ns,
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
    clients
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
    // It answers the crafted SYN-ACK, and says so.
    assert_eq!(s(&v, "detail.incoming_flags"), "SYN|ACK", "{v:#}");
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
