//! End-to-end with real container runtimes: docker (Debian's docker.io) and a bare runc
//! container shaped like containerd's CRI plugin's. A server in a container reads 128 of the 256
//! bytes its client sent and closes, so the kernel resets the connection; the tests assert
//! which container (and pod) rst-trace names on the sent reset, that the client's received
//! reset is not blamed on it, and the `--container` and `--pod` filters.
//!
//! They need a running dockerd (`./x test` starts one) and fail, saying so, without it. The
//! kernel-matrix guests have no docker: this file's binary is not run there (xtask/src/vm.rs).
//!
//! Ports 23001-23011 (in namespaces of their own), and a free port of the host's.

use std::time::Duration;

use rst_trace_tests::{
    Netns, Peer, Tracer, Value, cgroup_v2_id,
    container::{CriPod, DockerContainer, DockerRun, Output, RuncContainer},
    is_rst, s, spawn_attached,
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

/// A docker server on the bridge, its client on the host connecting to the container's own
/// address (a published port would put docker-proxy in between, which closes normally).
fn docker_bridge(port: u16, run: DockerRun) -> (Tracer, DockerContainer, Peer) {
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let web = run.run("rstt-web", &strs(&server_steps(&format!("0.0.0.0:{port}"))));
    let client = abort_from(&web, host_client, &format!("{}:{port}", web.ip));
    (tracer, web, client)
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

/// A container as containerd's CRI plugin runs it for a kubelet with the cgroupfs driver: the
/// cgroup path (`/kubepods/besteffort/pod<uid>/<id>`) does not name the runtime; the OCI bundle
/// in containerd's k8s.io task directory does, and its annotations name the pod.
#[test]
fn runc_container_with_cri_annotations() {
    let port = 23004;
    let ns = Netns::new("runc");
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let pod = CriPod {
        pod: "cart-7f9c8d6b5-z4xkq",
        namespace: "shop",
        container: "cart",
    };
    let bind = format!("127.0.0.1:{port}");
    let cart = RuncContainer::run(&ns, &pod, "rstt-cart", &strs(&server_steps(&bind)));
    let client = abort_from(&cart, |st| Peer::spawn(&ns, "rstt-client", st), &bind);
    let snt = sent_by(&tracer, cart.pid);
    assert_eq!(s(&snt, "cgroup.path"), cart.cgroup_path.as_str(), "{snt:#}");
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

/// A host process's reset at the same time as the container's: a server and client in a
/// namespace of the test's own, on 127.0.0.1:`port`. Returns them (and the namespace) once
/// the client saw ECONNRESET.
struct HostPair {
    ns: Netns,
    _server: Peer,
    _client: Peer,
}

fn host_pair_listening(port: u16) -> (Netns, Peer) {
    let ns = Netns::new("hostpair");
    let server = Peer::spawn(
        &ns,
        "rstt-server",
        &strs(&server_steps(&format!("127.0.0.1:{port}"))),
    );
    server.expect("listening");
    (ns, server)
}

/// Both aborts, interleaved: the container's server and the host's server each get their
/// client's 256 bytes before either closes.
fn both_abort(web: &DockerContainer, port: u16, host_port: u16) -> (Peer, HostPair) {
    let (ns, server) = host_pair_listening(host_port);
    web.expect("listening");
    let steps = |addr: String| {
        vec![
            format!("connect={addr}"),
            "send=256".into(),
            "say=sent".into(),
            "read_err".into(),
        ]
    };
    let web_client = host_client(&strs(&steps(format!("{}:{port}", web.ip))));
    let host_client = Peer::spawn(
        &ns,
        "rstt-client",
        &strs(&steps(format!("127.0.0.1:{host_port}"))),
    );
    for (c, srv) in [(&web_client, "container"), (&host_client, "host")] {
        assert_eq!(c.line(), "sent", "{srv} client");
    }
    web.expect("closed");
    server.expect("closed");
    web_client.expect("errno ECONNRESET");
    host_client.expect("errno ECONNRESET");
    (
        web_client,
        HostPair {
            ns,
            _server: server,
            _client: host_client,
        },
    )
}

/// The filtered tracer showed the container's sent reset, and nothing else: no reset of the
/// host pair, no reset outside the container.
fn assert_only_container(tracer: Tracer, web: &DockerContainer, host: &HostPair) {
    let snt = sent_by(&tracer, web.pid);
    assert_eq!(s(&snt, "container.id"), web.id.as_str(), "{snt:#}");
    // Late events of the host pair would arrive by now.
    std::thread::sleep(Duration::from_millis(300));
    let (status, events) = tracer.stop();
    assert!(status.success(), "rst-trace exit {status:?}");
    let inode = host.ns.inode();
    let rsts: Vec<&Value> = events.iter().filter(|v| v["type"] == "rst").collect();
    assert!(
        rsts.iter().all(|v| v["netns"] != inode),
        "the host process's reset was not hidden: {rsts:#?}"
    );
    assert!(
        rsts.iter().all(|v| s(v, "container.id") == web.id.as_str()),
        "a reset outside the container was shown: {rsts:#?}"
    );
}

/// `--container NAME` given before the container exists: it is matched once it starts.
#[test]
fn container_filter_by_name_matches_a_container_started_later() {
    let (port, host_port) = (23005, 23006);
    let run = DockerRun::new("late");
    let tracer = Tracer::start(&["--container", run.name()]);
    let web = run.run("rstt-web", &strs(&server_steps(&format!("0.0.0.0:{port}"))));
    let (_client, host) = both_abort(&web, port, host_port);
    assert_only_container(tracer, &web, &host);
}

/// `--container` with the id's first 12 hex digits (what `docker ps` shows).
#[test]
fn container_filter_by_id_prefix() {
    let (port, host_port) = (23007, 23008);
    let web = DockerRun::new("idprefix")
        .run("rstt-web", &strs(&server_steps(&format!("0.0.0.0:{port}"))));
    let tracer = Tracer::start(&["--container", &web.id[..12]]);
    let (_client, host) = both_abort(&web, port, host_port);
    assert_only_container(tracer, &web, &host);
}

/// `--pod NAMESPACE/NAME` and `--pod NAME` (any namespace).
#[test]
fn pod_filter() {
    let (port, host_port) = (23009, 23010);
    // A pod name of this test's own: other tests' containers run at the same time.
    let web = DockerRun::new("podweb")
        .k8s("web-1", "shop", "web")
        .run("rstt-web", &strs(&server_steps(&format!("0.0.0.0:{port}"))));
    let with_ns = Tracer::start(&["--pod", "shop/web-1"]);
    let bare = Tracer::start(&["--pod", "web-1"]);
    let (_client, host) = both_abort(&web, port, host_port);
    for t in [with_ns, bare] {
        let snt = sent_by(&t, web.pid);
        assert_eq!(s(&snt, "container.pod"), "web-1", "{snt:#}");
        assert_only_container(t, &web, &host);
    }
}

/// `--summary --by container` and `--by pod` count the container's reset under its name and
/// pod, the host client's under `-`; the metrics label it; the text line shows
/// `comm[pid]@namespace/pod`.
#[test]
fn summary_metrics_and_text_by_container_and_pod() {
    let port = 23011;
    let p = port.to_string();
    let by_container = Tracer::start(&["--port", &p, "--quiet", "--summary", "--by", "container"]);
    let by_pod = Tracer::start(&["--port", &p, "--quiet", "--summary", "--by", "pod"]);
    let (text, _) = spawn_attached(&["--port", &p]);
    let metrics = Tracer::start(&["--port", &p, "--quiet", "--metrics", "127.0.0.1:0"]);
    let url = metrics
        .stderr()
        .iter()
        .find_map(|l| l.strip_prefix("rst-trace: metrics at ").map(str::to_owned))
        .expect("metrics address line");
    let (tracer, web, client) =
        docker_bridge(port, DockerRun::new("sum").k8s("sum-0", "shop", "api"));
    // The per-event tracer saw both resets, so the summaries must count them.
    sent_by(&tracer, web.pid);
    received_by(&tracer, client.pid());
    let table = |t: Tracer| {
        let (status, events) = t.stop();
        assert!(status.success(), "rst-trace exit {status:?}");
        events
            .into_iter()
            .find(|v| v["type"] == "summary")
            .expect("a summary record")
    };
    let rows = |v: &Value, key: &str| -> Vec<(String, String, u64)> {
        let mut r: Vec<_> = v["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                (
                    r[key].as_str().unwrap_or_default().to_owned(),
                    r["condition"].as_str().unwrap_or_default().to_owned(),
                    r["count"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        r.sort();
        r
    };
    let c = table(by_container);
    assert_eq!(
        rows(&c, "container"),
        [
            ("-".to_owned(), "peer_reset".to_owned(), 1),
            ("api".to_owned(), "close_with_unread_data".to_owned(), 1)
        ],
        "{c:#}"
    );
    let p = table(by_pod);
    assert_eq!(
        rows(&p, "pod"),
        [
            ("-".to_owned(), "peer_reset".to_owned(), 1),
            (
                "shop/sum-0".to_owned(),
                "close_with_unread_data".to_owned(),
                1
            )
        ],
        "{p:#}"
    );
    // Metrics: the container and pod labels.
    let want = r#"rst_trace_resets_total{direction="sent",condition="close_with_unread_data",comm="rstt-web",container="api",pod="shop/sum-0"} 1"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = ureq::get(&url)
            .call()
            .expect("scrape")
            .body_mut()
            .read_to_string()
            .unwrap();
        if body.contains(want) || std::time::Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.contains(want), "{want} not in:\n{body}");
    drop(metrics);
    // The text line: the container's process with its pod.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(text.id() as i32, libc::SIGINT) };
    let out = text.wait_with_output().expect("rst-trace text output");
    let out = String::from_utf8_lossy(&out.stdout);
    let want = format!(" SENT rstt-web[{}]@shop/sum-0 ", web.pid);
    assert!(out.contains(&want), "{want:?} not in:\n{out}");
    drop(tracer);
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
