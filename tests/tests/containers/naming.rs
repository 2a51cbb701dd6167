//! Which container and pod a reset names: docker on the bridge and the host network, and a
//! pod made through containerd's CRI service.

use rst_trace_tests::{
    Peer, Tracer, Value, cgroup_v2_id,
    container::{DockerRun, Output},
    s,
};

use crate::{
    abort_from,
    cri::{CriContainer, CriPod},
    docker_bridge, host_client, received_by, sent_by, server_steps, strs,
};

/// What a reset's `container` object must hold.
struct Want<'a> {
    id: &'a str,
    runtime: &'a str,
    name: &'a str,
    pod: Option<&'a str>,
    namespace: Option<&'a str>,
}

fn assert_container(v: &Value, want: &Want) {
    let c = &v["container"];
    assert_eq!(c["id"], want.id, "container.id: {v:#}");
    assert_eq!(c["runtime"], want.runtime, "container.runtime: {v:#}");
    assert_eq!(c["name"], want.name, "container.name: {v:#}");
    let opt = |o: Option<&str>| o.map_or(Value::Null, Value::from);
    assert_eq!(c["pod"], opt(want.pod), "container.pod: {v:#}");
    assert_eq!(
        c["namespace"],
        opt(want.namespace),
        "container.namespace: {v:#}"
    );
}

/// The sent reset names the server's container; the host client's received reset has no
/// container of its own, and links the sender's.
fn assert_server_in_container(t: &Tracer, server_pid: u32, client: &Peer, want: &Want) {
    let snt = sent_by(t, server_pid);
    // Learned with the owner, in its own syscalls: the container's cgroup, not the softirq's.
    assert_eq!(s(&snt, "cgroup.id"), cgroup_v2_id(server_pid), "{snt:#}");
    let path = s(&snt, "cgroup.path").as_str().unwrap_or_default();
    assert!(path.contains(want.id), "cgroup.path: {snt:#}");
    assert_container(&snt, want);
    let recv = received_by(t, client.pid());
    assert_eq!(recv["container"], Value::Null, "{recv:#}");
    assert_eq!(
        s(&recv, "linked_sent.process.pid"),
        server_pid,
        "linked_sent: {recv:#}"
    );
    assert_eq!(
        s(&recv, "linked_sent.container.id"),
        want.id,
        "linked_sent.container: {recv:#}"
    );
}

/// A pod's container under cri-dockerd: docker labels name the pod, its namespace and the
/// Kubernetes container name, which is the name reported.
#[test]
fn docker_bridge_container_with_pod_labels() {
    let run = DockerRun::new("web").k8s("web-0", "shop", "web");
    let (tracer, web, client) = docker_bridge(23001, run);
    let want = Want {
        id: &web.id,
        runtime: "docker",
        name: "web",
        pod: Some("web-0"),
        namespace: Some("shop"),
    };
    assert_server_in_container(&tracer, web.pid, &client, &want);
    let (status, _) = tracer.stop();
    assert!(status.success(), "rst-trace exit {status:?}");
}

/// A plain `docker run --name`: docker's name, no pod.
#[test]
fn docker_bridge_container_without_labels() {
    let (tracer, web, client) = docker_bridge(23002, DockerRun::new("web"));
    let want = Want {
        id: &web.id,
        runtime: "docker",
        name: &web.name,
        pod: None,
        namespace: None,
    };
    assert_server_in_container(&tracer, web.pid, &client, &want);
    let (status, _) = tracer.stop();
    assert!(status.success(), "rst-trace exit {status:?}");
}

/// `--network host`: the reset's netns is the host's, only the cgroup tells the container
/// apart; it is still named.
#[test]
fn docker_host_network_container_is_named() {
    // The host's namespace is shared with whatever else runs here: a port free right now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let web = DockerRun::new("webhost").host_network().run(
        "rstt-web",
        &strs(&server_steps(&format!("127.0.0.1:{port}"))),
    );
    let client = abort_from(&web, host_client, &format!("127.0.0.1:{port}"));
    let host_netns = std::fs::metadata("/proc/self/ns/net")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("/proc/self/ns/net");
    let want = Want {
        id: &web.id,
        runtime: "docker",
        name: &web.name,
        pod: None,
        namespace: None,
    };
    let snt = sent_by(&tracer, web.pid);
    assert_eq!(snt["netns"], host_netns, "{snt:#}");
    assert_server_in_container(&tracer, web.pid, &client, &want);
    let (status, _) = tracer.stop();
    assert!(status.success(), "rst-trace exit {status:?}");
}

/// A pod's container as a kubelet has containerd's CRI service run it, with the cgroupfs driver:
/// the cgroup path (`/kubepods/besteffort/pod<uid>/<id>`) does not name the runtime; the OCI
/// bundle containerd wrote in its task directory does, and its annotations name the pod.
#[test]
fn cri_pod_container_is_named_from_containerds_annotations() {
    let port = 23004;
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let pod = CriPod {
        pod: "cart-7f9c8d6b5-z4xkq",
        namespace: "shop",
        container: "cart",
    };
    let bind = format!("0.0.0.0:{port}");
    let cart = CriContainer::run(&pod, "rstt-cart", &strs(&server_steps(&bind)));
    let client = abort_from(&cart, host_client, &format!("{}:{port}", cart.ip));
    // What containerd wrote, outside /run/containerd: the names must come from there.
    let bundle = cart.bundle_config();
    let ann = &bundle["annotations"];
    assert_eq!(ann["io.kubernetes.cri.sandbox-name"], pod.pod, "{ann:#}");
    assert_eq!(
        ann["io.kubernetes.cri.container-name"], pod.container,
        "{ann:#}"
    );
    assert_eq!(bundle["linux"]["cgroupsPath"], cart.cgroup_path.as_str());
    let snt = sent_by(&tracer, cart.pid);
    assert_eq!(s(&snt, "cgroup.path"), cart.cgroup_path.as_str(), "{snt:#}");
    assert!(
        cart.cgroup_path
            .starts_with(&format!("/kubepods/besteffort/pod{}/", cart.pod_uid)),
        "{}",
        cart.cgroup_path
    );
    let want = Want {
        id: &cart.id,
        runtime: "containerd",
        name: "cart",
        pod: Some(pod.pod),
        namespace: Some(pod.namespace),
    };
    assert_server_in_container(&tracer, cart.pid, &client, &want);
    let (status, _) = tracer.stop();
    assert!(status.success(), "rst-trace exit {status:?}");
}

/// The other side: a client in a container receives the reset a host server sends. The received
/// event names the client's container; the linked sender (on the host) has none.
#[test]
fn docker_client_container_receives_the_reset() {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .output()
        .expect("ip addr show docker0");
    let text = String::from_utf8_lossy(&out.stdout);
    let gateway = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no IPv4 address on docker0: {text}"))
        .to_owned();
    let port = std::net::TcpListener::bind(format!("{gateway}:0"))
        .and_then(|l| l.local_addr())
        .expect("a free port on docker0")
        .port();
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let server = Peer::spawn_host(
        "rstt-server",
        &strs(&server_steps(&format!("{gateway}:{port}"))),
    );
    server.expect("listening");
    let connect = format!("connect={gateway}:{port}");
    let client = DockerRun::new("client").run(
        "rstt-client",
        &[&connect, "send=256", "say=sent", "read_err", "hold"],
    );
    client.expect("sent");
    server.expect("closed");
    client.expect("errno ECONNRESET");
    let recv = received_by(&tracer, client.pid);
    assert_container(
        &recv,
        &Want {
            id: &client.id,
            runtime: "docker",
            name: &client.name,
            pod: None,
            namespace: None,
        },
    );
    assert_eq!(
        s(&recv, "linked_sent.process.pid"),
        server.pid(),
        "{recv:#}"
    );
    assert_eq!(s(&recv, "linked_sent.container"), &Value::Null, "{recv:#}");
    let snt = sent_by(&tracer, server.pid());
    assert_eq!(snt["container"], Value::Null, "{snt:#}");
    let (status, _) = tracer.stop();
    assert!(status.success(), "rst-trace exit {status:?}");
}

/// A pod's labels are chosen by whoever deploys it: a pod name holding a newline and an escape
/// sequence shows with its control characters made visible in text (one line per event, no raw
/// control byte on stdout), and exactly in JSON.
#[test]
fn hostile_pod_label_is_visible_in_text_and_exact_in_json() {
    const HOSTILE: &str = "web-0\nFAKE\x1b[31m";
    let port = 23015;
    let (mut text, _errs) =
        rst_trace_tests::spawn_attached(&["--port", &port.to_string(), "--duration", "8"]);
    let run = DockerRun::new("hostile").k8s(HOSTILE, "shop", "web");
    let (tracer, web, _client) = docker_bridge(port, run);
    let snt = sent_by(&tracer, web.pid);
    assert_eq!(snt["container"]["pod"], HOSTILE, "{snt:#}");
    let out = rst_trace_tests::visible_text_output(&mut text);
    let sent_line = out
        .lines()
        .find(|l| l.contains("SENT") && l.contains("close_with_unread_data"))
        .unwrap_or_else(|| panic!("no SENT line: {out}"));
    assert!(
        sent_line.contains(&format!("rstt-web[{}]@shop/web-0\\nFAKE\\x1b[31m", web.pid)),
        "{sent_line}"
    );
    let (status, _) = tracer.stop();
    assert!(status.success(), "rst-trace exit {status:?}");
}

/// The same through containerd's CRI: the pod name containerd writes into its bundle's
/// annotations is whatever the pod's deployer chose, newline and escape sequence included.
#[test]
fn hostile_cri_pod_name_is_visible_in_text_and_exact_in_json() {
    const HOSTILE: &str = "cart-0\nFAKE\x1b[31m";
    let port = 23016;
    let p = port.to_string();
    // containerd may have to start first (seconds): not within the text tracer's duration.
    crate::cri::ready();
    let (mut text, _errs) = rst_trace_tests::spawn_attached(&["--port", &p, "--duration", "10"]);
    let tracer = Tracer::start(&["--port", &p]);
    let pod = CriPod {
        pod: HOSTILE,
        namespace: "shop",
        container: "cart",
    };
    let bind = format!("0.0.0.0:{port}");
    let cart = CriContainer::run(&pod, "rstt-cart", &strs(&server_steps(&bind)));
    let _client = abort_from(&cart, host_client, &format!("{}:{port}", cart.ip));
    let snt = sent_by(&tracer, cart.pid);
    assert_eq!(snt["container"]["pod"], HOSTILE, "{snt:#}");
    assert_eq!(snt["container"]["runtime"], "containerd", "{snt:#}");
    let out = rst_trace_tests::visible_text_output(&mut text);
    let sent_line = out
        .lines()
        .find(|l| l.contains("SENT") && l.contains("close_with_unread_data"))
        .unwrap_or_else(|| panic!("no SENT line: {out}"));
    let want = format!("rstt-cart[{}]@shop/cart-0\\nFAKE\\x1b[31m", cart.pid);
    assert!(sent_line.contains(&want), "{sent_line}");
    let (status, _) = tracer.stop();
    assert!(status.success(), "rst-trace exit {status:?}");
}
