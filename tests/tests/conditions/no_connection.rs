//! Segments that find no connection (forgotten, TIME_WAIT, given up): the kernel answers RST.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use rst_trace_tests::{Netns, Peer, Scenario, assert_only, assert_reason, received, s, sent};

use crate::{assert_no_process, assert_process};

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
        // Every sent reset that answers a segment says which.
        assert_eq!(s(&v, "detail.incoming_flags"), want_flags, "{v:#}");
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
    // The client finishes first: its FIN, the server's ACK (FIN_WAIT2), then close(), which
    // turns the FIN_WAIT2 socket into a TIME_WAIT mini-socket; the server's later data gets an
    // RST from it. Not close() alone: an ACK of its FIN that waits in the socket's backlog
    // until close() releases it leaves a full FIN_WAIT2 orphan for tcp_fin_timeout
    // (tcp_rcv_state_process(): "th->fin || sock_owned_by_user(sk)"), and the data then gets
    // an RST from that (data_after_close; seen once under TCG, where the ACK came late).
    let mut client = Peer::spawn(
        &ns,
        "rstt-client",
        &[
            &format!("connect={bind}"),
            "shutdown=wr",
            "say=shut",
            "wait",
            "close",
            "say=closed",
            "hold",
        ],
    );
    client.expect("shut");
    server.expect("eof");
    wait_tcp(&ns, "in FIN_WAIT2 with its fd open", held_fin_wait2);
    client.go();
    client.expect("closed");
    wait_tcp(&ns, "in TIME_WAIT", time_wait);
    server.go();
    server.expect("errno EPIPE");
    let v = sent(&t, &ns, "time_wait_segment");
    assert_eq!(v["state"], "TIME_WAIT");
    // The mini-socket left by the client's close() in FIN_WAIT2 (what /proc/net/tcp shows).
    let why = v["explanation"].as_str().unwrap();
    assert!(why.contains("FIN_WAIT2 sub-state"), "{why}");
    assert_reason(&v, "TCP_TIMEWAIT_SOCKET");
    assert_eq!(s(&v, "remote.port"), 21010);
    assert_eq!(s(&v, "detail.incoming_flags"), "PSH|ACK");
    // The mini-socket has no process; the one that closed the connection is named, in the
    // record and in the sentence.
    assert_process(&v, &client, "rstt-client");
    assert!(
        why.contains(&format!(
            "left when rstt-client[{}] closed it",
            client.pid()
        )),
        "{why}"
    );
    let r = received(&t, &ns, "peer_reset");
    assert_process(&r, &server, "rstt-server");
    assert_eq!(s(&r, "linked_sent.process.pid"), client.pid());
    assert_eq!(r["state"], "CLOSE_WAIT");
    assert_eq!(s(&r, "detail.errno"), "EPIPE");
    assert_only(
        t,
        &ns,
        &[("sent", "time_wait_segment"), ("received", "peer_reset")],
    );
}

/// The keep-alive race: a server closes an idle connection it accepted (its keep-alive
/// timeout), and the client, which has not noticed, sends its next request. The server's
/// TIME_WAIT mini-socket answers with RST; it has no process, but the server that closed the
/// connection is named (remembered by flow at the hand-over, from the accepted socket's
/// owner), in the sent reset and in the client's received one.
#[test]
fn keepalive_race_names_the_server_that_closed() {
    keepalive_race("karace", 21011, "127.0.0.1");
}

/// The same on a dual-stack listener (`[::]`, as Go's and Java's default listeners are): its
/// IPv4 connections are AF_INET6 sockets with IPv4-mapped addresses, while the mini-socket's
/// reset is an IPv4 packet.
#[test]
fn keepalive_race_on_a_dual_stack_listener_names_the_server() {
    keepalive_race("karace6", 21012, "[::]");
}

fn keepalive_race(name: &str, port: u16, listen: &str) {
    let (ns, t) = Scenario::new(name).port(port).tracer(&[]);
    let (mut server, mut client) =
        Peer::keepalive_pair(&ns, ("rstt-server", "rstt-client"), listen, port);
    server.go();
    server.expect("closed");
    wait_tcp(&ns, "in TIME_WAIT", time_wait);
    client.go();
    client.expect("errno EPIPE");
    let v = sent(&t, &ns, "time_wait_segment");
    assert_eq!(v["state"], "TIME_WAIT");
    assert_eq!(s(&v, "local.port"), u64::from(port));
    assert_eq!(s(&v, "local.addr"), "127.0.0.1");
    assert_process(&v, &server, "rstt-server");
    let why = v["explanation"].as_str().unwrap();
    assert!(
        why.contains(&format!(
            "left when rstt-server[{}] closed it",
            server.pid()
        )),
        "{why}"
    );
    let r = received(&t, &ns, "peer_reset");
    assert_process(&r, &client, "rstt-client");
    assert_eq!(r["state"], "CLOSE_WAIT");
    assert_eq!(s(&r, "linked_sent.condition"), "time_wait_segment");
    assert_eq!(s(&r, "linked_sent.process.pid"), server.pid());
    assert_only(
        t,
        &ns,
        &[("sent", "time_wait_segment"), ("received", "peer_reset")],
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

/// A full socket in FIN_WAIT2 (`st` 05, include/net/tcp_states.h) that a process still holds
/// (an inode), in a /proc/net/tcp line split on whitespace.
fn held_fin_wait2(f: &[&str]) -> bool {
    f.get(3) == Some(&"05") && f.get(9).is_some_and(|inode| *inode != "0")
}

/// A TIME_WAIT mini-socket: get_timewait4_sock() prints timer 3 (and its substate as `st`,
/// FIN_WAIT2 for one made by tcp_close() from FIN_WAIT2).
fn time_wait(f: &[&str]) -> bool {
    f.get(5).is_some_and(|tr| tr.starts_with("03:"))
}

/// Waits until a TCP socket of `ns` is `what`, as `test` tells from its /proc/net/tcp (or tcp6,
/// which has the same columns) line; fails after 10 s with what the tables held.
fn wait_tcp(ns: &Netns, what: &str, test: fn(&[&str]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "cat",
                "/proc/net/tcp",
                "/proc/net/tcp6",
            ])
            .output()
            .expect("ip netns exec cat /proc/net/tcp /proc/net/tcp6");
        let table = String::from_utf8_lossy(&out.stdout);
        if table.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            test(&f)
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no TCP socket {what} in {} after 10 s:\n{table}",
            ns.name
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
