//! The event renderer's golden lines and JSON shapes.

use rst_trace_common::{ATTR_OWNER_CURRENT, FACT_PACKET, FACT_TCP_SOCK, KIND_SENT, RstEvent};

use super::*;
use crate::{
    correlate::History,
    explain::{Sentences, explain},
};

fn reasons() -> crate::kernel::KernelInfo {
    crate::kernel::KernelInfo {
        reasons: [(1, "NO_SOCKET"), (11, "TCP_ABORT_ON_CLOSE")]
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect(),
        jiffy_ns: 4_000_000,
    }
}

fn close_event() -> RstEvent {
    let mut e = RstEvent {
        mono_ns: 81_234_567_890_123,
        kind: KIND_SENT,
        reason: 11,
        family: 2,
        skaddr: 0xffff_0000_1111_2222,
        cookie: 862_063,
        state: 7,
        prev_state: 1,
        attribution: ATTR_OWNER_CURRENT,
        facts: FACT_TCP_SOCK,
        unread: 128,
        local_port: 8888,
        remote_port: 43210,
        netns: 4_026_531_840,
        ..Default::default()
    };
    e.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    e.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    e.owner.pid = 1234;
    e.owner.tid = 1234;
    e.owner.comm[..6].copy_from_slice(b"server");
    e
}

// Wall clock so that mono 81234567890123 is 2026-11-24T12:00:01.123456789Z.
fn clock() -> Clock {
    Clock::fixed(1_795_521_601_123_456_789i128 - 81_234_567_890_123)
}

#[test]
fn golden_json() {
    let r = explain(&close_event(), &reasons(), Sentences::Write, None).unwrap();
    let got = render(&r, &clock(), Format::Json);
    let want = r#"{"type":"rst","time":"2026-11-24T12:00:01.123456789Z","mono_ns":81234567890123,"direction":"sent","origin":"tcp","condition":"close_with_unread_data","explanation":"server[1234] closed the socket with 128 unread bytes in its receive queue, so the kernel aborted the connection with RST instead of FIN","kernel_reason":"TCP_ABORT_ON_CLOSE","state":"ESTABLISHED","family":"ipv4","local":{"addr":"127.0.0.1","port":8888},"remote":{"addr":"127.0.0.1","port":43210},"process":{"pid":1234,"tid":1234,"comm":"server","uid":0},"cgroup":null,"container":null,"attribution":"socket_owner","netns":4026531840,"socket_cookie":862063,"detail":{"unread_bytes":128},"inferred":false}"#;
    assert_eq!(got, want);
}

#[test]
fn golden_text() {
    let r = explain(&close_event(), &reasons(), Sentences::Write, None).unwrap();
    let got = render(&r, &clock(), Format::Text { color: false });
    let want = "2026-11-24T12:00:01.123456Z SENT server[1234]             127.0.0.1:8888 > 127.0.0.1:43210              ESTABLISHED  close_with_unread_data      server[1234] closed the socket with 128 unread bytes in its receive queue, so the kernel aborted the connection with RST instead of FIN";
    assert_eq!(got, want);
}

/// The process is named by its thread-group leader; the acting thread's own name is
/// `process.thread` when it differs; the cgroup id rides along.
#[test]
fn worker_thread_and_cgroup() {
    let mut e = close_event();
    e.owner.tid = 1240;
    e.owner.thread[..13].copy_from_slice(b"conn-worker-7");
    e.owner.cgroup = 7_421;
    let r = explain(&e, &reasons(), Sentences::Write, None).unwrap();
    let j = report_json(&r, &clock());
    assert_eq!(j["process"]["comm"], "server");
    assert_eq!(j["process"]["thread"], "conn-worker-7");
    assert_eq!(j["process"]["tid"], 1240);
    assert_eq!(j["cgroup"]["id"], 7_421);
    let text = render(&r, &clock(), Format::Text { color: false });
    assert!(text.contains(" SENT server[1234] "), "{text}");
    // The same name on the thread: no `thread` key.
    e.owner.thread = e.owner.comm;
    let r = explain(&e, &reasons(), Sentences::Write, None).unwrap();
    let j = report_json(&r, &clock());
    assert!(j["process"].get("thread").is_none(), "{j}");
    assert_eq!(j["cgroup"]["id"], 7_421);
    assert_eq!(j["cgroup"]["path"], Value::Null);
    assert_eq!(j["container"], Value::Null);
}

/// A resolved container: `cgroup.path`, `container` and the `@pod` text column.
#[test]
fn container_identity() {
    use std::sync::Arc;

    use crate::identity::{Container, Identity, Runtime};

    let mut e = close_event();
    e.owner.cgroup = 7_421;
    let mut r = explain(&e, &reasons(), Sentences::Write, None).unwrap();
    let id = "3f1c9a5e7b2d4c6a8e0f1b3d5c7e9a1b2c4d6e8f0a1b3c5d7e9f1a2b4c6d8e0f";
    let mut c = Container {
        id: id.into(),
        runtime: Runtime::Docker,
        name: Some("shop-web".into()),
        pod: None,
        namespace: None,
        container_name: None,
        pod_uid: None,
    };
    let with = |c: &Container| {
        Some(Arc::new(Identity {
            cgroup_path: Some(format!("/docker/{id}")),
            container: Some(c.clone()),
            ..Identity::default()
        }))
    };
    r.process.as_mut().unwrap().identity = with(&c);
    let j = report_json(&r, &clock());
    assert_eq!(j["cgroup"]["path"], format!("/docker/{id}"));
    assert_eq!(j["container"]["id"], id);
    assert_eq!(j["container"]["runtime"], "docker");
    assert_eq!(j["container"]["name"], "shop-web");
    assert_eq!(j["container"]["pod"], Value::Null);
    let text = render(&r, &clock(), Format::Text { color: false });
    assert!(text.contains(" SENT server[1234]@shop-web "), "{text}");
    (c.pod, c.namespace, c.container_name) = (
        Some("web-0".into()),
        Some("shop".into()),
        Some("web".into()),
    );
    r.process.as_mut().unwrap().identity = with(&c);
    let j = report_json(&r, &clock());
    assert_eq!(j["container"]["name"], "web");
    assert_eq!(j["container"]["pod"], "web-0");
    assert_eq!(j["container"]["namespace"], "shop");
    let text = render(&r, &clock(), Format::Text { color: false });
    assert!(text.contains(" SENT server[1234]@shop/web-0 "), "{text}");
}

#[test]
fn golden_text_no_socket_ipv6() {
    let mut e = RstEvent {
        mono_ns: 81_234_567_890_123,
        kind: KIND_SENT,
        reason: 1,
        family: 10,
        skbaddr: 1,
        facts: FACT_PACKET,
        tcp_flags: 0x02,
        local_port: 9,
        remote_port: 50000,
        ..Default::default()
    };
    e.local_addr[15] = 1;
    e.remote_addr[15] = 1;
    let r = explain(&e, &reasons(), Sentences::Write, None).unwrap();
    let got = render(&r, &clock(), Format::Text { color: false });
    let want = "2026-11-24T12:00:01.123456Z SENT -(no socket)             [::1]:9 > [::1]:50000                         -            port_not_listening          nothing listens on [::1]:9: the kernel refused the connection attempt (SYN) from [::1]:50000 with RST; the client sees ECONNREFUSED";
    assert_eq!(got, want);
    let j = report_json(&r, &clock());
    assert_eq!(j["process"], Value::Null);
    assert_eq!(j["cgroup"], Value::Null);
    assert_eq!(j["attribution"], "none");
    assert_eq!(j["state"], Value::Null);
    assert_eq!(j["socket_cookie"], Value::Null);
    assert_eq!(j["family"], "ipv6");
    assert_eq!(j["detail"]["incoming_flags"], "SYN");
}

/// Property test: arbitrary ring records, of any length and content, are either rejected
/// by decoding or explained and rendered as valid JSON and text; nothing panics.
#[test]
fn arbitrary_records_never_panic() {
    use rst_trace_common::RST_EVENT_SIZE;
    let mut next = crate::explain::xorshift(0x9e37_79b9_7f4a_7c15);
    let info = reasons();
    let mut history = History::default();
    let (mut rejected, mut explained) = (0, 0);
    for i in 0..20_000 {
        let len = if i % 4 == 0 {
            (next() % (2 * RST_EVENT_SIZE as u64)) as usize
        } else {
            RST_EVENT_SIZE
        };
        let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if len == RST_EVENT_SIZE && i % 2 == 0 {
            // Plausible kinds and families, so explain() goes deep.
            buf[std::mem::offset_of!(RstEvent, kind)] = 1 + (next() % 2) as u8;
            buf[std::mem::offset_of!(RstEvent, family)] =
                if next().is_multiple_of(2) { 2 } else { 10 };
        }
        let Ok(ev) = RstEvent::decode(&buf) else {
            assert_ne!(len, RST_EVENT_SIZE);
            rejected += 1;
            continue;
        };
        let Some(r) = history.explain_linked(&ev, &info, Sentences::Write) else {
            continue;
        };
        explained += 1;
        let j = render(&r, &clock(), Format::Json);
        serde_json::from_str::<Value>(&j).unwrap_or_else(|e| panic!("{e}: {j}"));
        let _ = render(&r, &clock(), Format::Text { color: true });
    }
    assert!(
        rejected > 1000 && explained > 1000,
        "{rejected} {explained}"
    );
}

#[test]
fn lost_record_json() {
    let s = lost(5, 7, &clock(), Format::Json);
    let v: Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["type"], "lost");
    assert_eq!(v["count"], 5);
    assert_eq!(v["total"], 7);
}

/// The application's failing call: an `app_error` object at the end of the reset's JSON (with
/// its delay), a follow-up `APP` line in text.
/// A sent reset whose call (`read(fd 3)` on thread `worker`) noticed it 1.5 ms later.
fn noticed_report() -> crate::explain::Report {
    use crate::{apperr::AppError, explain::AppNotice};
    let mut r = explain(&close_event(), &reasons(), Sentences::Write, None).unwrap();
    let mut ev = rst_trace_common::AppErrorEvent {
        mono_ns: r.mono_ns + 1_500_000,
        skaddr: r.skaddr,
        cookie: 862_063,
        task: rst_trace_common::Task::default(),
        stacks: rst_trace_common::StackIds::default(),
        local_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        remote_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        local_port: 43210,
        remote_port: 8888,
        netns: 1,
        nr: libc::SYS_read as u32,
        errno: rst_trace_common::ECONNRESET,
        fd: 3,
        user_timeout_ms: 0,
        flags: 0,
        family: 2,
        state: 7,
        prev_state: 0,
        _pad0: 0,
    };
    ev.task.pid = 10;
    ev.task.tid = 11;
    ev.task.comm[..6].copy_from_slice(b"client");
    ev.task.thread[..6].copy_from_slice(b"worker");
    r.app_notice = Some(Box::new(AppNotice {
        error: AppError::decode(&ev),
        delay_ns: 1_500_000,
    }));
    r
}

#[test]
fn app_error_object_and_follow_up_line() {
    let r = noticed_report();
    let clock = Clock::fixed(0);
    let v = report_json(&r, &clock);
    let a = &v["app_error"];
    assert_eq!(a["call"], "read");
    assert_eq!(a["fd"], 3);
    assert_eq!(a["errno"], "ECONNRESET");
    assert_eq!(a["process"]["tid"], 11);
    assert_eq!(a["process"]["thread"], "worker");
    assert_eq!(a["delay_ns"], 1_500_000);
    // Last key of the object: fields are only ever added.
    let json = render(&r, &clock, Format::Json);
    assert!(json.ends_with("\"delay_ns\":1500000}}"), "{json}");
    let text = render(&r, &clock, Format::Text { color: false });
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[1].contains(" APP  client[10] "), "{text}");
    assert!(
        lines[1].contains("thread worker (tid 11) noticed the reset (close_with_unread_data): read(fd 3) failed with ECONNRESET 1.500 ms after it"),
        "{text}"
    );
}

/// `--stacks`: the failing call's stacks, in the `app_error` object (last), after the `APP` line,
/// and in the `app_error` record (last).
#[test]
fn app_error_stacks() {
    use crate::{
        apperr::Outcome,
        stacks::{Frame, Stack, Stacks},
    };
    let mut r = noticed_report();
    let frame = Frame {
        addr: 0x5500_0000_1234,
        function: Some("read_after_reset".into()),
        file: Some("/src/client.c".into()),
        line: Some(44),
        module: Some("/usr/bin/client".into()),
        offset: None,
    };
    let stacks = Stacks {
        user: Stack {
            frames: vec![frame],
            error: None,
        },
        kernel: Stack {
            frames: Vec::new(),
            error: Some("EEXIST: taken".into()),
        },
    };
    let n = r.app_notice.as_mut().unwrap();
    n.error.stacks = Some(Box::new(stacks));
    let clock = Clock::fixed(0);
    let v = report_json(&r, &clock);
    let st = &v["app_error"]["stacks"];
    assert_eq!(st["user"][0]["function"], "read_after_reset", "{v:#}");
    assert_eq!(st["user"][0]["line"], 44, "{v:#}");
    assert_eq!(st["kernel_error"], "EEXIST: taken", "{v:#}");
    let text = render(&r, &clock, Format::Text { color: false });
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[1].contains(" APP  client[10] "), "{text}");
    assert_eq!(lines[2], "    user stack:", "{text}");
    assert!(
        lines[3].ends_with("read_after_reset (/src/client.c:44) [/usr/bin/client]"),
        "{text}"
    );
    assert_eq!(lines[4], "    kernel stack: none (EEXIST: taken)", "{text}");
    assert_eq!(lines.len(), 5, "{text}");
    // The record, once the reset is printed: stacks last, text lines after the APP line.
    let e = r.app_notice.unwrap().error;
    let o = Outcome::Alone(e);
    let rec: serde_json::Value =
        serde_json::from_str(&crate::render::app::outcome(&o, &clock, Format::Json)).expect("JSON");
    assert_eq!(rec["type"], "app_error");
    assert_eq!(rec["stacks"]["user"][0]["function"], "read_after_reset");
    let text = crate::render::app::outcome(&o, &clock, Format::Text { color: false });
    assert_eq!(text.lines().nth(1), Some("    user stack:"), "{text}");
}

/// A process that names itself with a newline and an escape sequence gets one line, its name
/// made visible, in text; the exact name in JSON.
#[test]
fn hostile_comm_is_visible_in_text_and_exact_in_json() {
    let mut e = close_event();
    let name = b"a\nFAKE\x1b[31m";
    e.owner.comm = [0; 16];
    e.owner.comm[..name.len()].copy_from_slice(name);
    let r = explain(&e, &reasons(), Sentences::Write, None).unwrap();
    let text = render(&r, &clock(), Format::Text { color: false });
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(!text.bytes().any(|b| b < 0x20 || b == 0x7f), "{text:?}");
    assert!(text.contains("a\\nFAKE\\x1b[31m[1234]"), "{text}");
    let v = report_json(&r, &clock());
    assert_eq!(v["process"]["comm"], "a\nFAKE\x1b[31m");
}
