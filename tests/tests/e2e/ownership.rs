//! Whose reset it is: `--pid`, sockets opened before start, worker threads, forked children.

use rst_trace_tests::{
    Netns, Peer, Scenario, Tracer, assert_only, cgroup_v2_id, cgroup_v2_path, is_rst, received, s,
    sent,
};

use crate::unread_close_peers;

/// Scenario (c): `--pid` shows one process's resets and hides another's.
#[test]
fn pid_filter_shows_one_process_only() {
    let ns = Netns::new("pidfilter");
    let mut a = Peer::spawn(&ns, "rstt-a", &["wait", "connect=127.0.0.1:20011"]);
    let mut b = Peer::spawn(&ns, "rstt-b", &["wait", "connect=127.0.0.1:20012"]);
    let filtered = Tracer::start(&["--pid", &a.pid().to_string()]);
    let control = Tracer::start(&["--port", "20011", "--port", "20012"]);
    a.go();
    b.go();
    a.expect("errno ECONNREFUSED");
    b.expect("errno ECONNREFUSED");
    let inode = ns.inode();
    // The control tracer sees both refusals, so B's reset really happened.
    for pid in [a.pid(), b.pid()] {
        control.wait_for("control: connection_refused", |v| {
            is_rst(v, "received", "connection_refused") && v["process"]["pid"] == pid
        });
    }
    let ev = filtered.wait_for("filtered: A's connection_refused", |v| {
        is_rst(v, "received", "connection_refused") && v["netns"] == inode
    });
    assert_eq!(s(&ev, "process.pid"), a.pid());
    let (_, events) = filtered.stop();
    for v in &events {
        assert_eq!(s(v, "process.pid"), a.pid(), "--pid let through {v:#}");
    }
    drop(control);
}

/// `--pid` of a thread (a tid from `top -H` or a thread dump) stands for its process, which
/// owns the sockets, and a note says so: the reset the thread makes is shown.
#[test]
fn pid_of_a_thread_stands_for_its_process() {
    let ns = Netns::new("pidthread");
    let bind = "127.0.0.1:20013";
    let mut server = Peer::spawn(
        &ns,
        "rstt-server",
        &[
            &format!("listen={bind}"),
            "thread=rstt-acceptor",
            "say=threaded",
            "wait",
            "accept",
            "wait_unread=10",
            "close",
            "say=closed",
            "hold",
        ],
    );
    server.expect("threaded");
    let tid = std::fs::read_dir(format!("/proc/{}/task", server.pid()))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", server.pid()))
                .is_ok_and(|c| c.trim() == "rstt-acceptor")
        })
        .expect("the server's thread");
    assert_ne!(tid, server.pid());
    let t = Tracer::start(&["--pid", &tid.to_string()]);
    let note = format!(
        "rst-trace: note: {tid} is a thread (rstt-acceptor) of process rstt-server[{}]",
        server.pid()
    );
    assert!(
        t.stderr().iter().any(|l| l.starts_with(&note)),
        "{:?}",
        t.stderr()
    );
    // A thread's name as --comm matches nothing (a reset is its process's): said, with the
    // process's name to give instead.
    let by_name = Tracer::start(&["--comm", "rstt-acceptor", "--duration", "0"]);
    let note = format!(
        "rst-trace: note: --comm rstt-acceptor: no process is named rstt-acceptor, but a thread \
         of rstt-server[{}] is: --comm matches processes' names (ps -o comm), so give --comm \
         rstt-server or --pid {}",
        server.pid(),
        server.pid()
    );
    assert!(by_name.stderr().contains(&note), "{:?}", by_name.stderr());
    assert!(
        t.ready_line().contains(&format!("(pid={};", server.pid())),
        "{}",
        t.ready_line()
    );
    server.go();
    let client = Peer::spawn(
        &ns,
        "rstt-client",
        &[&format!("connect={bind}"), "send=10", "read_err"],
    );
    server.expect("closed");
    let v = sent(&t, &ns, "close_with_unread_data");
    assert_eq!(s(&v, "process.pid"), server.pid(), "{v:#}");
    assert_eq!(s(&v, "process.tid"), tid, "{v:#}");
    drop(client);
}

/// Sockets opened before rst-trace started are owned too (seeded from sock_diag and /proc).
#[test]
fn socket_opened_before_start_is_owned() {
    let ns = Netns::new("seed");
    let bind = "127.0.0.1:20031";
    let server = Peer::spawn(
        &ns,
        "rstt-old-srv",
        &[
            &format!("listen={bind}"),
            "say=listening",
            "accept",
            "say=accepted",
            "read_err",
            "hold",
        ],
    );
    server.expect("listening");
    let mut client = Peer::spawn(
        &ns,
        "rstt-old-cli",
        &[
            &format!("connect={bind}"),
            "wait",
            "linger0",
            "close",
            "say=closed",
            "hold",
        ],
    );
    server.expect("accepted");
    // Before rst-trace starts (in a guest without cgroup v2 mounted, this mounts it, so that
    // rst-trace finds it when it seeds the owners).
    let server_cgroup = cgroup_v2_id(server.pid());
    let tracer = Tracer::start(&["--port", "20031"]);
    client.go();
    client.expect("closed");
    server.expect("errno ECONNRESET");
    let recv = received(&tracer, &ns, "peer_reset");
    assert_eq!(s(&recv, "process.pid"), server.pid(), "{recv:#}");
    assert_eq!(s(&recv, "process.comm"), "rstt-old-srv");
    assert_eq!(recv["attribution"], "socket_owner");
    assert_eq!(s(&recv, "cgroup.id"), server_cgroup, "{recv:#}");
    let sent = sent(&tracer, &ns, "linger_abort");
    assert_eq!(s(&sent, "process.pid"), client.pid());
    assert!(tracer.ready_line().contains("existing sockets owned"));
}

/// The keep-alive race on a connection older than rst-trace, idle since: the server closes
/// it after rst-trace started, and the client's next request hits the server's TIME_WAIT
/// mini-socket. No call of the server's ever ran under rst-trace, so no owner was learned; the
/// owner seeded by the socket's cookie names the reset: from 6.10 by the cookie the
/// mini-socket inherits (inet_twsk_alloc() copies it), before 6.10 (where that reset is seen on
/// transmit, without a cookie) taken at the hand-over, with the flow.
#[test]
fn keepalive_race_on_a_connection_older_than_rst_trace() {
    let ns = Netns::new("seedtw");
    let (mut server, mut client) =
        Peer::keepalive_pair(&ns, ("rstt-old-srv", "rstt-old-cli"), "127.0.0.1", 20034);
    let tracer = Tracer::start(&["--port", "20034"]);
    server.go();
    server.expect("closed");
    // The server's FIN is acknowledged at once on loopback: its socket is a FIN_WAIT2
    // mini-socket before the client writes.
    std::thread::sleep(std::time::Duration::from_millis(200));
    client.go();
    client.expect("errno EPIPE");
    let v = sent(&tracer, &ns, "time_wait_segment");
    assert_eq!(s(&v, "process.pid"), server.pid(), "{v:#}");
    assert_eq!(s(&v, "process.comm"), "rstt-old-srv");
    assert_eq!(v["attribution"], "socket_owner");
    let r = received(&tracer, &ns, "peer_reset");
    assert_eq!(s(&r, "process.pid"), client.pid(), "{r:#}");
}

/// Issue 11: the process, not the thread. A server process named rstt-server whose thread
/// "conn-worker-7" accepts a connection and closes it with unread data: the reset names the
/// process (its thread-group leader's comm), the thread apart, and the cgroup v2 id learned in
/// that thread's own system call; `--comm` matches the process name, not the thread's.
#[test]
fn worker_thread_reset_names_the_process() {
    let port = 20061;
    // Mounts cgroup v2 first where it is not (a bare VM), so that rst-trace finds it.
    cgroup_v2_id(std::process::id());
    let (ns, tracer) = Scenario::new("thread").port(port).tracer(&[]);
    let by_process = Tracer::start(&["--port", "20061", "--comm", "rstt-server"]);
    let by_thread = Tracer::start(&["--port", "20061", "--comm", "conn-worker-7"]);
    assert!(
        by_thread.stderr().contains(
            &"rst-trace: note: --comm conn-worker-7: no process is named conn-worker-7 now; its \
              resets will show if one starts"
                .to_owned()
        ),
        "{:?}",
        by_thread.stderr()
    );
    let (server, client) =
        unread_close_peers(&ns, &format!("127.0.0.1:{port}"), &["thread=conn-worker-7"]);
    let snt = sent(&tracer, &ns, "close_with_unread_data");
    assert_eq!(s(&snt, "process.pid"), server.pid(), "{snt:#}");
    assert_eq!(s(&snt, "process.comm"), "rstt-server", "{snt:#}");
    assert_eq!(s(&snt, "process.thread"), "conn-worker-7", "{snt:#}");
    assert_ne!(s(&snt, "process.tid"), server.pid(), "{snt:#}");
    let server_cgroup = cgroup_v2_id(server.pid());
    assert_eq!(s(&snt, "cgroup.id"), server_cgroup, "{snt:#}");
    // Resolved in userspace: the path of that cgroup; not a container.
    assert_eq!(
        s(&snt, "cgroup.path"),
        &cgroup_v2_path(server.pid()),
        "{snt:#}"
    );
    assert_eq!(snt["container"], serde_json::Value::Null, "{snt:#}");
    // The client's main thread: no thread name apart; its own cgroup.
    let recv = received(&tracer, &ns, "peer_reset");
    assert_eq!(s(&recv, "process.comm"), "rstt-client", "{recv:#}");
    assert!(recv["process"].get("thread").is_none(), "{recv:#}");
    assert_eq!(
        s(&recv, "cgroup.id"),
        cgroup_v2_id(client.pid()),
        "{recv:#}"
    );
    assert_eq!(s(&recv, "linked_sent.process.thread"), "conn-worker-7");
    // --comm rstt-server shows the sent reset (the client's received one is not its process's);
    // --comm conn-worker-7 shows nothing: a thread's name is not the process's.
    let got = sent(&by_process, &ns, "close_with_unread_data");
    assert_eq!(s(&got, "process.thread"), "conn-worker-7");
    assert_only(by_process, &ns, &[("sent", "close_with_unread_data")]);
    assert_only(by_thread, &ns, &[]);
    let (status, _) = tracer.stop();
    assert!(status.success(), "rst-trace exit {status:?}");
}

/// A connection accepted by a forked child belongs to that child, not to the listener's
/// parent process.
#[test]
fn connection_accepted_by_forked_child_belongs_to_child() {
    let (ns, tracer) = Scenario::new("fork").port(20032).tracer(&[]);
    let bind = "127.0.0.1:20032";
    let server = Peer::spawn(
        &ns,
        "rstt-parent",
        &[
            &format!("listen={bind}"),
            "fork",
            "accept",
            "say=accepted",
            "read_err",
            "hold",
        ],
    );
    let child = server.forked_child();
    let client = Peer::spawn(
        &ns,
        "rstt-client",
        &[
            &format!("connect={bind}"),
            "sleep=100",
            "linger0",
            "close",
            "say=closed",
            "hold",
        ],
    );
    server.expect("accepted");
    client.expect("closed");
    let recv = received(&tracer, &ns, "peer_reset");
    assert_eq!(s(&recv, "process.pid"), child, "{recv:#}");
    assert_ne!(s(&recv, "process.pid"), server.pid());
    assert_eq!(s(&recv, "process.comm"), "rstt-parent");
    // SAFETY: the child is our grandchild process; make sure it does not outlive the test.
    unsafe { libc::kill(child as i32, libc::SIGKILL) };
}

/// A socket handed on: the parent accepts, forks and keeps its copy; the child waits in its
/// first read. The owner the kernel side recorded is the parent (accept()), but the peer's reset
/// is noticed by the child's read, which proves the child holds the socket: the received reset
/// names the child, with its failing read joined to it.
#[test]
fn reset_on_a_socket_handed_to_a_forked_child_names_the_child() {
    let (ns, tracer) = Scenario::new("forkrx").port(20033).tracer(&[]);
    let bind = "127.0.0.1:20033";
    let server = Peer::spawn(
        &ns,
        "rstt-forksrv",
        &[
            &format!("listen={bind}"),
            "say=listening",
            "accept",
            "fork",
            "read_err",
            "hold",
        ],
    );
    // Listening before the client connects (else its connect() may be refused).
    server.expect("listening");
    let mut client = Peer::spawn(
        &ns,
        "rstt-forkcli",
        &[
            &format!("connect={bind}"),
            "say=connected",
            "wait",
            "linger0",
            "close",
            "say=closed",
            "hold",
        ],
    );
    client.expect("connected");
    let child = server.forked_child();
    // The child is in its read() before the reset comes.
    std::thread::sleep(std::time::Duration::from_millis(300));
    client.go();
    client.expect("closed");
    let recv = received(&tracer, &ns, "peer_reset");
    assert_eq!(s(&recv, "process.pid"), child, "{recv:#}");
    assert_eq!(s(&recv, "app_error.process.pid"), child, "{recv:#}");
    assert_eq!(s(&recv, "app_error.errno"), "ECONNRESET", "{recv:#}");
    let why = recv["explanation"].as_str().unwrap();
    assert!(why.contains(&format!("rstt-forksrv[{child}]")), "{why}");
    assert!(!why.contains(&format!("[{}]", server.pid())), "{why}");
    // SAFETY: the child is our grandchild process; make sure it does not outlive the test.
    unsafe { libc::kill(child as i32, libc::SIGKILL) };
}
