//! End-to-end with real container runtimes: docker (Debian's docker.io) and pods made through
//! the CRI API of a real containerd (Debian's, started by these tests: `cri`). A server in a
//! container reads 128 of the 256 bytes its client sent and closes, so the kernel resets the
//! connection; the tests assert which container (and pod) rst-trace names on the sent reset,
//! that the client's received reset is not blamed on it, and the `--container` and `--pod`
//! filters.
//!
//! They need a running dockerd (`./x test` starts one; it builds the images) and Debian's
//! containerd, runc and CNI plugins, and fail, saying so, without them. The kernel-matrix
//! guests have no container runtime: this test binary is not run there (xtask/src/vm.rs).
//!
//! Ports 23001-23018 (in namespaces of their own), and free ports of the host's.

mod cri;
mod dying;
mod filters;
mod naming;
mod summary;

use rst_trace_tests::{
    Peer, Tracer, Value,
    container::{DockerContainer, DockerRun, Output},
    is_rst, s,
};

/// The server's steps: on `bind`, accept, wait for 256 bytes, read 128, close (the kernel
/// aborts with RST), then hold so that the container stays up.
fn server_steps(bind: &str) -> Vec<String> {
    [
        &format!("listen={bind}"),
        "say=listening",
        "accept",
        "wait_unread=256",
        "read=128",
        "close",
        "say=closed",
        "hold",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A client (`spawn`: on the host, or in a namespace) connects to `addr` and sends 256 bytes;
/// the server closes with 128 unread. Returns the client once it saw ECONNRESET.
fn abort_from(server: &impl Output, spawn: impl FnOnce(&[&str]) -> Peer, addr: &str) -> Peer {
    server.expect("listening");
    let connect = format!("connect={addr}");
    let client = spawn(&[&connect, "send=256", "say=sent", "read_err"]);
    client.expect("sent");
    server.expect("closed");
    client.expect("errno ECONNRESET");
    client
}

fn host_client(steps: &[&str]) -> Peer {
    Peer::spawn_host("rstt-client", steps)
}

/// The sent `close_with_unread_data` reset of process `pid`.
fn sent_by(t: &Tracer, pid: u32) -> Value {
    t.wait_for(&format!("the sent reset of pid {pid}"), |v| {
        is_rst(v, "sent", "close_with_unread_data") && s(v, "process.pid") == pid
    })
}

/// The received `peer_reset` of process `pid`.
fn received_by(t: &Tracer, pid: u32) -> Value {
    t.wait_for(&format!("the received reset of pid {pid}"), |v| {
        is_rst(v, "received", "peer_reset") && s(v, "process.pid") == pid
    })
}

/// A docker server on the bridge, its client on the host connecting to the container's own
/// address (a published port would put docker-proxy in between, which closes normally).
fn docker_bridge(port: u16, run: DockerRun) -> (Tracer, DockerContainer, Peer) {
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let web = run.run("rstt-web", &strs(&server_steps(&format!("0.0.0.0:{port}"))));
    let client = abort_from(&web, host_client, &format!("{}:{port}", web.ip));
    (tracer, web, client)
}
