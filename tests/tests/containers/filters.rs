//! The `--container` and `--pod` filters: the container's reset shown, a host process's hidden.

use std::time::Duration;

use rst_trace_tests::{
    Netns, Peer, Tracer, Value,
    container::{DockerRun, Output},
    s,
};

use crate::{
    cri::{CriContainer, CriPod},
    host_client, sent_by, server_steps, strs,
};

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

/// Both aborts, interleaved: the container's server (at `ip`) and the host's server each get
/// their client's 256 bytes before either closes.
fn both_abort(web: &impl Output, ip: &str, port: u16, host_port: u16) -> (Peer, HostPair) {
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
    let web_client = host_client(&strs(&steps(format!("{ip}:{port}"))));
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

/// The filtered tracer showed the sent reset of the container `id`'s process `pid`, and nothing
/// else: no reset of the host pair, no reset outside the container.
fn assert_only_container(tracer: Tracer, (pid, id): (u32, &str), host: &HostPair) {
    let snt = sent_by(&tracer, pid);
    assert_eq!(s(&snt, "container.id"), id, "{snt:#}");
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
        rsts.iter().all(|v| s(v, "container.id") == id),
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
    let (_client, host) = both_abort(&web, &web.ip, port, host_port);
    assert_only_container(tracer, (web.pid, &web.id), &host);
}

/// `--container` with the id's first 12 hex digits (what `docker ps` shows).
#[test]
fn container_filter_by_id_prefix() {
    let (port, host_port) = (23007, 23008);
    let web = DockerRun::new("idprefix")
        .run("rstt-web", &strs(&server_steps(&format!("0.0.0.0:{port}"))));
    let tracer = Tracer::start(&["--container", &web.id[..12]]);
    let (_client, host) = both_abort(&web, &web.ip, port, host_port);
    assert_only_container(tracer, (web.pid, &web.id), &host);
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
    let (_client, host) = both_abort(&web, &web.ip, port, host_port);
    for t in [with_ns, bare] {
        let snt = sent_by(&t, web.pid);
        assert_eq!(s(&snt, "container.pod"), "web-1", "{snt:#}");
        assert_only_container(t, (web.pid, &web.id), &host);
    }
}

/// `--pod NAMESPACE/NAME` and `--container NAME` of a pod made through containerd's CRI: the
/// names containerd wrote into the bundle are the ones matched.
#[test]
fn pod_and_container_filters_match_a_cri_pod() {
    let (port, host_port) = (23017, 23018);
    // Names of this test's own: other tests' pods run at the same time.
    let pod = CriPod {
        pod: "cart-filter-0",
        namespace: "shop",
        container: "cart-filter",
    };
    let by_pod = Tracer::start(&["--pod", "shop/cart-filter-0"]);
    let by_container = Tracer::start(&["--container", "cart-filter"]);
    let bind = format!("0.0.0.0:{port}");
    let cart = CriContainer::run(&pod, "rstt-cart", &strs(&server_steps(&bind)));
    let (_client, host) = both_abort(&cart, &cart.ip, port, host_port);
    for t in [by_pod, by_container] {
        let snt = sent_by(&t, cart.pid);
        assert_eq!(s(&snt, "container.pod"), pod.pod, "{snt:#}");
        assert_eq!(s(&snt, "container.name"), pod.container, "{snt:#}");
        assert_only_container(t, (cart.pid, &cart.id), &host);
    }
}
