//! The container of a process that dies with its connections: a crash, an OOM kill, a deleted
//! pod. Its cgroup (and the runtime's state) are gone by the time the resets it leaves are read;
//! rst-trace learned them while the process lived, when it first owned a socket there.

use rst_trace_tests::{
    Peer, Tracer, Value, cgroup_v2_id,
    container::{DockerRun, Output},
    is_rst, s,
};

use crate::{
    cri::{CriContainer, CriPod},
    host_client, server_steps, strs,
};

/// The naming tests' server (reads 128 of the 256 bytes it was sent, closes: an RST), without
/// its final hold: it exits at once.
fn close_and_exit(bind: &str) -> Vec<String> {
    let mut steps = server_steps(bind);
    assert_eq!(steps.pop().as_deref(), Some("hold"));
    steps
}

/// The sent reset of process `pid`, whatever its condition.
fn sent_of(t: &Tracer, pid: u32) -> Value {
    t.wait_for(&format!("the sent reset of pid {pid}"), |v| {
        v["type"] == "rst" && v["direction"] == "sent" && s(v, "process.pid") == pid
    })
}

/// What the dead server's container must still be called.
struct Named<'a> {
    id: &'a str,
    name: &'a str,
    pod: &'a str,
    namespace: &'a str,
}

/// The sent reset names the dead server's container and pod, and so does the client's received
/// reset through `linked_sent`.
fn assert_named(t: &Tracer, server_pid: u32, cgroup: u64, client: &Peer, want: &Named) {
    let snt = sent_of(t, server_pid);
    assert_eq!(s(&snt, "cgroup.id"), cgroup, "{snt:#}");
    let c = &snt["container"];
    assert_eq!(c["id"], want.id, "container: {snt:#}");
    assert_eq!(c["name"], want.name, "container: {snt:#}");
    assert_eq!(c["pod"], want.pod, "container: {snt:#}");
    assert_eq!(c["namespace"], want.namespace, "container: {snt:#}");
    let recv = t.wait_for(
        &format!("the received reset of pid {}", client.pid()),
        |v| is_rst(v, "received", "peer_reset") && s(v, "process.pid") == client.pid(),
    );
    let linked = &recv["linked_sent"];
    assert_eq!(linked["process"]["pid"], server_pid, "{recv:#}");
    let c = &linked["container"];
    assert_eq!(c["id"], want.id, "linked_sent.container: {recv:#}");
    assert_eq!(c["name"], want.name, "linked_sent.container: {recv:#}");
    assert_eq!(c["pod"], want.pod, "linked_sent.container: {recv:#}");
    assert_eq!(
        c["namespace"], want.namespace,
        "linked_sent.container: {recv:#}"
    );
}

/// A pod's container under cri-dockerd on docker's bridge (or the host's network) whose server
/// closes with unread data and exits at once: the container is gone before the reset is read.
fn docker_exit_after_abort(port: u16, host: bool) {
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let mut run = DockerRun::new("dying").k8s("web-1", "shop", "web");
    let bind = if host {
        run = run.host_network();
        format!("127.0.0.1:{port}")
    } else {
        format!("0.0.0.0:{port}")
    };
    let web = run.run("rstt-web", &strs(&close_and_exit(&bind)));
    web.expect("listening");
    let cgroup = cgroup_v2_id(web.pid);
    let client = host_client(&[
        &format!("connect={}:{port}", web.ip),
        "send=256",
        "say=sent",
        "read_err",
    ]);
    client.expect("sent");
    web.expect("closed");
    client.expect("errno ECONNRESET");
    let want = Named {
        id: &web.id,
        name: "web",
        pod: "web-1",
        namespace: "shop",
    };
    assert_named(&tracer, web.pid, cgroup, &client, &want);
    let (status, _) = tracer.stop();
    assert!(status.success(), "rst-trace exit {status:?}");
}

#[test]
fn docker_container_exiting_right_after_the_abort_is_named() {
    docker_exit_after_abort(23012, false);
}

#[test]
fn docker_host_network_container_exiting_right_after_the_abort_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    docker_exit_after_abort(port, true);
}

/// `docker kill` while the server holds a connection with unread data: the kernel closes it as
/// the process dies, and the container goes with it.
#[test]
fn docker_container_killed_with_sigkill_is_named() {
    let port = 23013;
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let run = DockerRun::new("killed").k8s("api-2", "shop", "api");
    let bind = format!("0.0.0.0:{port}");
    let api = run.run(
        "rstt-api",
        &[
            &format!("listen={bind}"),
            "say=listening",
            "accept",
            "wait_unread=256",
            "say=unread",
            "hold",
        ],
    );
    api.expect("listening");
    let cgroup = cgroup_v2_id(api.pid);
    let client = host_client(&[
        &format!("connect={}:{port}", api.ip),
        "send=256",
        "say=sent",
        "read_err",
    ]);
    client.expect("sent");
    api.expect("unread");
    let killed = std::process::Command::new("docker")
        .args(["kill", "--signal", "KILL", &api.id])
        .output()
        .expect("docker kill");
    assert!(killed.status.success(), "docker kill: {killed:?}");
    client.expect("errno ECONNRESET");
    let want = Named {
        id: &api.id,
        name: "api",
        pod: "api-2",
        namespace: "shop",
    };
    assert_named(&tracer, api.pid, cgroup, &client, &want);
    let (status, _) = tracer.stop();
    assert!(status.success(), "rst-trace exit {status:?}");
}

/// A pod's container run through containerd's CRI service (runc, cgroupfs driver), whose process
/// exits right after the abort: containerd deletes the task, and runc its cgroup, at once.
#[test]
fn cri_pod_exiting_right_after_the_abort_is_named() {
    let port = 23014;
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let pod = CriPod {
        pod: "cart-7f9c8d6b5-x8k2p",
        namespace: "shop",
        container: "cart",
    };
    let bind = format!("0.0.0.0:{port}");
    let cart = CriContainer::run(&pod, "rstt-cart", &strs(&close_and_exit(&bind)));
    cart.expect("listening");
    let cgroup = cgroup_v2_id(cart.pid);
    let client = host_client(&[
        &format!("connect={}:{port}", cart.ip),
        "send=256",
        "say=sent",
        "read_err",
    ]);
    client.expect("sent");
    cart.expect("closed");
    client.expect("errno ECONNRESET");
    let want = Named {
        id: &cart.id,
        name: "cart",
        pod: pod.pod,
        namespace: pod.namespace,
    };
    assert_named(&tracer, cart.pid, cgroup, &client, &want);
    let (status, _) = tracer.stop();
    assert!(status.success(), "rst-trace exit {status:?}");
}
