//! Resets the TCP tracepoints cannot see: netfilter REJECT on the server host and on a router,
//! a conntrack-expiry middlebox, and an RST injected on the path. Three namespaces (client,
//! router, server) joined by veth; assertions on both the sent `firewall_reject` (where
//! netfilter sent it) and the client's received reset, with its TTL evidence.

mod path;
mod router;
mod server_host;

use rst_trace_tests::{CLIENT_ADDR, Netns, Peer, SERVER_ADDR, Topology, Tracer, Value, s};

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

/// After a REJECT rule is made: rst-trace watches firewall resets from the start where REJECT
/// code was there already, or where its transmit hook is attached from the start anyway (before
/// 6.10, for the resets TCP sends without a socket); else from the moment the rule loaded
/// nf_reject, which it says.
fn wait_firewall_watched(t: &Tracer) {
    let ready = t.ready_line();
    if ready.contains("firewall resets: yes")
        || ready.contains("resets without a socket: on transmit")
    {
        return;
    }
    t.wait_for_stderr("firewall resets watched", 10, |l| {
        l == "rst-trace: firewall resets: yes (nf_reject loaded): watched from now on"
    });
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
