//! End-to-end: the application's side of a reset. Real C and Python clients make one socket
//! call fail (a read after a reset, a write after one, a refused connect, blocking and not, a
//! keepalive and a retransmission timeout); rst-trace must report that call, joined to the
//! reset (the `app_error` object or record), or alone when no reset is behind it.

use std::time::Duration;

use rst_trace_tests::{
    Netns, Peer, Scenario, Tracer, Value,
    clients::{Failed, Lang, spawn_client},
    is_rst, received, s, sent,
};

/// The call joined to reset `rst`: its `app_error` object (the call came while the reset was
/// still held), else the `app_error` record joined by socket cookie and the reset's time.
fn app_error_of(t: &Tracer, rst: &Value) -> Value {
    if let Some(a) = rst.get("app_error") {
        return a.clone();
    }
    let (mono, cookie) = (rst["mono_ns"].clone(), rst["socket_cookie"].clone());
    let rec = t.wait_for("the app_error record of the reset", |v| {
        v["type"] == "app_error" && v["reset"]["mono_ns"] == mono && v["socket_cookie"] == cookie
    });
    assert_eq!(rec["reset"]["condition"], rst["condition"], "{rec:#}");
    assert_eq!(rec["reset"]["direction"], rst["direction"], "{rec:#}");
    rec
}

/// The reported call is the client's: call name, fd, process, thread, tid, errno, and a delay
/// after the reset that is never negative.
fn assert_call(a: &Value, lang: Lang, client: &Peer, call: &str, failed: &Failed) {
    assert_eq!(a["call"], call, "{a:#}");
    assert_eq!(a["fd"], failed.fd, "{a:#}");
    assert_eq!(a["errno"], failed.errno.as_str(), "{a:#}");
    assert_eq!(s(a, "process.pid"), client.pid(), "{a:#}");
    assert_eq!(s(a, "process.tid"), failed.tid, "{a:#}");
    assert_eq!(s(a, "process.comm"), lang.comm(), "{a:#}");
    match lang.thread() {
        Some(t) => {
            assert_eq!(s(a, "process.thread"), t, "{a:#}");
            assert_ne!(
                failed.tid,
                u64::from(client.pid()),
                "a worker thread's call"
            );
        }
        None => assert!(a["process"].get("thread").is_none(), "{a:#}"),
    }
    if a["type"] == "app_error" && a["reset"].is_null() {
        // On its own: no reset, no delay.
        assert_eq!(a["delay_ns"], Value::Null, "{a:#}");
    } else {
        assert!(a["delay_ns"].as_u64().is_some(), "delay_ns: {a:#}");
    }
    assert!(
        a["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{a:#}"
    );
}

/// The client's failing-call line.
fn failed(client: &Peer, errno: &str) -> Failed {
    let f = Failed::parse(&client.line());
    assert_eq!(f.errno, errno, "{f:?}");
    f
}

/// ECONNRESET on a read after the peer closed with unread data. `late`: the client reads only
/// after the reset was printed (an `app_error` record), else at once (usually the object).
fn read_after_reset(lang: Lang, port: u16, tag: &str, late: bool) {
    let call = if lang == Lang::C { "read" } else { "recvfrom" };
    fail_after_reset(lang, "recv", call, port, tag, late);
}

/// The client (`mode`: `recv` or `splice`) makes `call` fail with ECONNRESET after the peer
/// closed with unread data.
fn fail_after_reset(lang: Lang, mode: &str, call: &str, port: u16, tag: &str, late: bool) {
    let (ns, t) = Scenario::new(tag).port(port).tracer(&[]);
    let bind = format!("127.0.0.1:{port}");
    let server = Peer::spawn(
        &ns,
        "rstt-server",
        &[
            &format!("listen={bind}"),
            "say=listening",
            "accept",
            "wait_unread=256",
            "read=128",
            "close",
            "say=closed",
            "hold",
        ],
    );
    server.expect("listening");
    let mut client = spawn_client(&ns, lang, mode, "127.0.0.1", port);
    client.expect("sent");
    server.expect("closed");
    let rst = received(&t, &ns, "peer_reset");
    if late {
        std::thread::sleep(Duration::from_millis(300));
    }
    client.go();
    let f = failed(&client, "ECONNRESET");
    let a = app_error_of(&t, &rst);
    assert_call(&a, lang, &client, call, &f);
    if late {
        assert_eq!(a["type"], "app_error", "{a:#}");
        assert!(a["delay_ns"].as_u64().unwrap() >= 300_000_000, "{a:#}");
        assert_eq!(s(&a, "remote.port"), port, "{a:#}");
    }
    let (status, events) = t.stop();
    assert!(status.success());
    // Only the first failing call, once.
    let inode = ns.inode();
    let n = events
        .iter()
        .filter(|v| {
            (v["type"] == "app_error" && v["netns"] == inode) || v.get("app_error").is_some()
        })
        .count();
    assert_eq!(n, 1, "{events:#?}");
}

#[test]
fn apperr_c_read_after_reset_econnreset() {
    read_after_reset(Lang::C, 24001, "aerc", false);
}

#[test]
fn apperr_python_read_after_reset_econnreset_noticed_later() {
    read_after_reset(Lang::Python, 24002, "aerpy", true);
}

/// splice(pipe, NULL, socket, ...): the socket is the third argument.
#[test]
fn apperr_python_splice_into_reset_socket() {
    fail_after_reset(Lang::Python, "splice", "splice", 24005, "aespl", false);
}

/// EPIPE on a write: the peer sent FIN (the client read EOF: CLOSE_WAIT), then reset the
/// connection (SO_LINGER 0 close); tcp_reset() leaves EPIPE in CLOSE_WAIT.
fn write_after_reset(lang: Lang, port: u16, tag: &str) {
    let (ns, t) = Scenario::new(tag).port(port).tracer(&[]);
    let bind = format!("127.0.0.1:{port}");
    let mut server = Peer::spawn(
        &ns,
        "rstt-server",
        &[
            &format!("listen={bind}"),
            "say=listening",
            "accept",
            "shutdown=wr",
            "wait",
            "linger0",
            "close",
            "say=closed",
            "hold",
        ],
    );
    server.expect("listening");
    let mut client = spawn_client(&ns, lang, "write", "127.0.0.1", port);
    client.expect("eof");
    server.go();
    server.expect("closed");
    let rst = received(&t, &ns, "peer_reset");
    assert_eq!(rst["state"], "CLOSE_WAIT", "{rst:#}");
    assert_eq!(s(&rst, "detail.errno"), "EPIPE");
    client.go();
    let f = failed(&client, "EPIPE");
    let a = app_error_of(&t, &rst);
    assert_call(&a, lang, &client, "sendto", &f);
}

#[test]
fn apperr_c_write_after_reset_epipe() {
    write_after_reset(Lang::C, 24003, "aewc");
}

#[test]
fn apperr_python_write_after_reset_epipe() {
    write_after_reset(Lang::Python, 24004, "aewpy");
}

/// ECONNREFUSED: a blocking connect fails with it; a non-blocking one reads it back through
/// getsockopt(SO_ERROR), which returns 0.
#[test]
fn apperr_connect_refused_blocking_and_nonblocking() {
    let cases = [
        (Lang::C, "connect", "connect", "127.0.0.1", 24011),
        (
            Lang::C,
            "nbconnect",
            "getsockopt(SO_ERROR)",
            "127.0.0.1",
            24012,
        ),
        (Lang::Python, "connect", "connect", "::1", 24013),
        (
            Lang::Python,
            "nbconnect",
            "getsockopt(SO_ERROR)",
            "127.0.0.1",
            24014,
        ),
    ];
    let ports: Vec<String> = cases.iter().map(|c| c.4.to_string()).collect();
    let mut args = Vec::new();
    for p in &ports {
        args.extend(["--port", p.as_str()]);
    }
    let (ns, t) = Scenario::new("aeref").tracer(&args);
    for (lang, mode, call, addr, port) in cases {
        let client = spawn_client(&ns, lang, mode, addr, port);
        let f = failed(&client, "ECONNREFUSED");
        let inode = ns.inode();
        let rst = t.wait_for("connection_refused", |v| {
            v["type"] == "rst"
                && v["condition"] == "connection_refused"
                && v["netns"] == inode
                && v["remote"]["port"] == port
        });
        assert_eq!(s(&rst, "process.pid"), client.pid());
        let a = app_error_of(&t, &rst);
        assert_call(&a, lang, &client, call, &f);
    }
}

/// Keepalive: the kernel resets the connection (keepalive_timeout, sent) and leaves ETIMEDOUT;
/// the application reads only a second later.
#[test]
fn apperr_keepalive_timeout_noticed_later() {
    let (ns, t) = Scenario::new("aeka").port(24021).tracer(&[]);
    let bind = "127.0.0.1:24021";
    let server = Peer::spawn(
        &ns,
        "rstt-server",
        &[&format!("listen={bind}"), "say=listening", "accept", "hold"],
    );
    server.expect("listening");
    let mut client = spawn_client(&ns, Lang::Python, "keepalive", "127.0.0.1", 24021);
    client.expect("ready");
    // The server stops answering.
    ns.exec(&[
        "iptables", "-A", "INPUT", "-p", "tcp", "--sport", "24021", "-j", "DROP",
    ]);
    let rst = sent(&t, &ns, "keepalive_timeout");
    assert_eq!(s(&rst, "process.pid"), client.pid(), "{rst:#}");
    std::thread::sleep(Duration::from_secs(1));
    client.go();
    let f = failed(&client, "ETIMEDOUT");
    let a = app_error_of(&t, &rst);
    assert_eq!(
        a["type"], "app_error",
        "noticed after the reset was printed: {a:#}"
    );
    assert_call(&a, Lang::Python, &client, "recvfrom", &f);
    assert!(a["delay_ns"].as_u64().unwrap() >= 1_000_000_000, "{a:#}");
}

/// A retransmission timeout (TCP_USER_TIMEOUT 1 s, the peer's ACKs dropped): ETIMEDOUT with no
/// reset at all, reported alone, with its endpoints, process and why.
#[test]
fn apperr_retransmission_timeout_without_reset() {
    let (ns, t) = Scenario::new("aerto").port(24031).tracer(&[]);
    let bind = "127.0.0.1:24031";
    let server = Peer::spawn(
        &ns,
        "rstt-server",
        &[&format!("listen={bind}"), "say=listening", "accept", "hold"],
    );
    server.expect("listening");
    let mut client = spawn_client(&ns, Lang::Python, "usertimeout", "127.0.0.1", 24031);
    client.expect("ready");
    ns.exec(&[
        "iptables", "-A", "INPUT", "-p", "tcp", "--sport", "24031", "-j", "DROP",
    ]);
    client.go();
    let f = failed(&client, "ETIMEDOUT");
    let inode = ns.inode();
    let a = t.wait_for("the ETIMEDOUT app_error", |v| {
        v["type"] == "app_error" && v["netns"] == inode
    });
    assert_call(&a, Lang::Python, &client, "recvfrom", &f);
    assert_eq!(a["reset"], Value::Null, "{a:#}");
    assert_eq!(a["delay_ns"], Value::Null, "{a:#}");
    assert_eq!(s(&a, "remote.port"), 24031, "{a:#}");
    assert_eq!(s(&a, "remote.addr"), "127.0.0.1", "{a:#}");
    let why = a["explanation"].as_str().unwrap();
    assert!(why.contains("TCP_USER_TIMEOUT (1000 ms)"), "{why}");
    assert!(why.contains("no reset was sent or received"), "{why}");
    std::thread::sleep(Duration::from_millis(200));
    let (status, events) = t.stop();
    assert!(status.success());
    let resets: Vec<_> = events
        .iter()
        .filter(|v| v["type"] == "rst" && v["netns"] == inode)
        .collect();
    assert!(resets.is_empty(), "no reset behind it: {resets:#?}");
    drop(server);
}

/// A reset nobody notices within the window is said so (`not_noticed`) and counted by
/// `--summary`; a call after that is still joined to it, with its delay.
#[test]
fn apperr_reset_not_noticed_is_said_and_counted() {
    let (ns, t) = Scenario::new("aenn").port(24041).tracer(&["--summary"]);
    let bind = "127.0.0.1:24041";
    let server = Peer::spawn(
        &ns,
        "rstt-server",
        &[
            &format!("listen={bind}"),
            "say=listening",
            "accept",
            "wait_unread=256",
            "read=128",
            "close",
            "say=closed",
            "hold",
        ],
    );
    server.expect("listening");
    let mut client = spawn_client(&ns, Lang::C, "recv", "127.0.0.1", 24041);
    client.expect("sent");
    server.expect("closed");
    let rst = received(&t, &ns, "peer_reset");
    let nn = t.wait_for_within("not_noticed", 15, |v| v["type"] == "not_noticed");
    assert_eq!(nn["reset"]["mono_ns"], rst["mono_ns"], "{nn:#}");
    assert_eq!(nn["socket_cookie"], rst["socket_cookie"], "{nn:#}");
    assert_eq!(s(&nn, "process.pid"), client.pid(), "{nn:#}");
    assert!(
        nn["waited_ns"].as_u64().unwrap() >= 10_000_000_000,
        "{nn:#}"
    );
    client.go();
    let f = failed(&client, "ECONNRESET");
    let a = app_error_of(&t, &rst);
    assert_call(&a, Lang::C, &client, "read", &f);
    assert!(a["delay_ns"].as_u64().unwrap() >= 10_000_000_000, "{a:#}");
    let (status, events) = t.stop();
    assert!(status.success());
    let summary = events
        .iter()
        .find(|v| v["type"] == "summary")
        .expect("summary");
    assert_eq!(summary["not_noticed"], 1, "{summary:#}");
    drop(server);
}

/// `--no-app-errors` turns the hook off, and the readiness line says so.
#[test]
fn apperr_no_app_errors_flag() {
    let t = Tracer::start(&["--port", "24051", "--no-app-errors"]);
    assert!(
        t.ready_line()
            .contains("application errors: off (--no-app-errors)"),
        "{}",
        t.ready_line()
    );
    let ns = Netns::new("aeoff");
    let client = spawn_client(&ns, Lang::C, "connect", "127.0.0.1", 24051);
    failed(&client, "ECONNREFUSED");
    let inode = ns.inode();
    let rst = t.wait_for("connection_refused", |v| {
        v["type"] == "rst" && v["netns"] == inode
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(rst.get("app_error").is_none(), "{rst:#}");
    let (_, events) = t.stop();
    assert!(
        !events
            .iter()
            .any(|v| v["type"] == "app_error" || v["type"] == "not_noticed"),
        "{events:#?}"
    );
}

/// A server in `ns` on `port` that accepts (and with `read`, reads one byte), and a client that
/// sends a byte and aborts (SO_LINGER 0): the server's received reset.
fn served(t: &Tracer, ns: &Netns, port: u16, read: bool) -> (Peer, Peer, Value) {
    let bind = format!("127.0.0.1:{port}");
    let mut steps = vec![
        format!("listen={bind}"),
        "say=listening".into(),
        "accept".into(),
    ];
    if read {
        steps.push("read=1".into());
    }
    steps.extend(["say=ready".into(), "hold".into()]);
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let server = Peer::spawn(ns, "rstt-nshsrv", &steps);
    // Listening before the client connects (else its connect() may be refused).
    server.expect("listening");
    let mut client = Peer::spawn(
        ns,
        "rstt-nshcli",
        &[
            &format!("connect={bind}"),
            "send=1",
            "wait",
            "linger0",
            "close",
            "say=closed",
            "hold",
        ],
    );
    server.expect("ready");
    client.go();
    client.expect("closed");
    let rst = t.wait_for("peer_reset", |v| {
        is_rst(v, "received", "peer_reset")
            && v["netns"] == ns.inode()
            && v["local"]["port"] == port
    });
    (server, client, rst)
}

/// `--no-syscall-hooks`: no program on any system call, and the readiness line says what that
/// leaves out. A refused connect() is then not reported as a failing call, nor its reset as
/// unnoticed. An accepted socket is owned from its first receive (no accept() hook): the reset
/// that comes after it names the server; one that comes before any send or receive names no
/// process.
#[test]
fn apperr_no_syscall_hooks_flag() {
    let t = Tracer::start(&[
        "--port",
        "24061",
        "--port",
        "24062",
        "--port",
        "24063",
        "--no-syscall-hooks",
    ]);
    let ready = t.ready_line();
    assert!(
        ready.contains(
            "; no system call hooks (accepted sockets owned from their first send or receive);"
        ),
        "{ready}"
    );
    assert!(
        ready.contains(
            "application errors: yes (socket layer; not connect() or SO_ERROR: --no-syscall-hooks)"
        ) || ready.contains("application errors: no (--no-syscall-hooks: before Linux 6.3"),
        "{ready}"
    );
    let ns = Netns::new("aensh");
    let inode = ns.inode();

    let client = spawn_client(&ns, Lang::C, "connect", "127.0.0.1", 24061);
    failed(&client, "ECONNREFUSED");
    let refused = t.wait_for("connection_refused", |v| {
        v["type"] == "rst" && v["condition"] == "connection_refused" && v["netns"] == inode
    });
    assert_eq!(s(&refused, "process.pid"), client.pid(), "{refused:#}");

    // Owned at its first receive.
    let (server, _client, after_read) = served(&t, &ns, 24062, true);
    assert_eq!(
        s(&after_read, "process.pid"),
        server.pid(),
        "{after_read:#}"
    );
    // Not owned yet: no accept() hook, no send or receive.
    let (server, _client, before_io) = served(&t, &ns, 24063, false);
    assert_ne!(before_io["process"]["pid"], server.pid(), "{before_io:#}");

    std::thread::sleep(Duration::from_millis(300));
    let (_, events) = t.stop();
    assert!(
        !events.iter().any(|v| v["type"] == "app_error"
            && v["call"] == "connect"
            && v["process"]["pid"] == client.pid()),
        "{events:#?}"
    );
    assert!(refused.get("app_error").is_none(), "{refused:#}");
    // connect() noticed it, unseen: never said to be unnoticed (at exit, what still waits is).
    assert!(
        !events
            .iter()
            .any(|v| v["type"] == "not_noticed" && v["reset"]["mono_ns"] == refused["mono_ns"]),
        "{events:#?}"
    );
}
