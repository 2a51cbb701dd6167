//! End-to-end: the real rst-trace binary and eBPF programs, real sockets in a network namespace
//! of each test's own, real resets; assertions on what rst-trace printed.

mod capacity;
mod cli;
mod demo;
mod load;
mod ownership;
mod summary;

use rst_trace_tests::{Netns, Peer};

/// rstt-server accepts on `bind` (after `before_accept`, e.g. a step that moves it to a named
/// thread), waits for 256 bytes, reads 128 and closes: the kernel resets the connection of
/// rstt-client, which sent them. Returns (server, client) once the client saw ECONNRESET.
fn unread_close_peers(ns: &Netns, bind: &str, before_accept: &[&str]) -> (Peer, Peer) {
    let listen = format!("listen={bind}");
    let mut steps = vec![listen.as_str(), "say=listening"];
    steps.extend_from_slice(before_accept);
    steps.extend([
        "accept",
        "wait_unread=256",
        "read=128",
        "close",
        "say=closed",
        "hold",
    ]);
    let server = Peer::spawn(ns, "rstt-server", &steps);
    server.expect("listening");
    let connect = format!("connect={bind}");
    let client = Peer::spawn(
        ns,
        "rstt-client",
        &[&connect, "send=256", "say=sent", "read_err"],
    );
    client.expect("sent");
    server.expect("closed");
    client.expect("errno ECONNRESET");
    (server, client)
}
