//! The one renderer of events: every record rst-trace prints goes through here, as text or as
//! JSON (NDJSON), per docs/output.md.

use std::{fmt::Write as _, net::SocketAddr};

#[cfg(test)]
use serde_json::Value;
use serde_json::json;

use super::fast::{Clock, Format, json_str, push_ip, push_u64, rfc3339};
use crate::explain::{DetailValue, Origin, Process, Report};

fn json_opt_str(out: &mut String, v: Option<&str>) {
    match v {
        Some(v) => json_str(out, v),
        None => out.push_str("null"),
    }
}

fn json_endpoint(out: &mut String, a: &SocketAddr) {
    // An address never needs escaping.
    out.push_str("{\"addr\":\"");
    push_ip(out, &a.ip());
    out.push_str("\",\"port\":");
    push_u64(out, u64::from(a.port()));
    out.push('}');
}

fn json_process(out: &mut String, p: &Option<Process>) {
    match p {
        Some(p) => {
            out.push_str("{\"pid\":");
            push_u64(out, u64::from(p.pid));
            out.push_str(",\"tid\":");
            push_u64(out, u64::from(p.tid));
            out.push_str(",\"comm\":");
            json_str(out, &p.comm);
            if let Some(t) = &p.thread {
                out.push_str(",\"thread\":");
                json_str(out, t);
            }
            out.push_str(",\"uid\":");
            push_u64(out, u64::from(p.uid));
            out.push('}');
        }
        None => out.push_str("null"),
    }
}

/// Appends one reset as a JSON object (one NDJSON line without the newline). Written directly,
/// not through a `serde_json::Value` tree: in a reset storm this is the hot path.
pub fn report_json_into(out: &mut String, r: &Report, clock: &Clock) {
    out.push_str("{\"type\":\"rst\",\"time\":");
    json_str(out, &rfc3339(clock.wall_ns(r.mono_ns), 9));
    out.push_str(",\"mono_ns\":");
    push_u64(out, r.mono_ns);
    out.push_str(",\"direction\":");
    json_str(out, r.direction.as_str());
    out.push_str(",\"origin\":");
    json_opt_str(out, r.origin.map(Origin::as_str));
    out.push_str(",\"condition\":");
    json_str(out, r.condition.as_str());
    out.push_str(",\"explanation\":");
    json_str(out, &r.explanation);
    out.push_str(",\"kernel_reason\":");
    json_opt_str(out, r.kernel_reason.as_deref());
    out.push_str(",\"state\":");
    json_opt_str(out, r.state.map(|s| s.name()).as_deref());
    out.push_str(",\"family\":");
    json_str(out, if r.ipv6 { "ipv6" } else { "ipv4" });
    out.push_str(",\"local\":");
    json_endpoint(out, &r.local);
    out.push_str(",\"remote\":");
    json_endpoint(out, &r.remote);
    out.push_str(",\"process\":");
    json_process(out, &r.process);
    out.push_str(",\"cgroup\":");
    match r.process.as_ref().map(|p| p.cgroup) {
        Some(id) if id != 0 => {
            out.push_str("{\"id\":");
            push_u64(out, id);
            out.push('}');
        }
        _ => out.push_str("null"),
    }
    out.push_str(",\"attribution\":");
    json_str(out, r.attribution.as_str());
    out.push_str(",\"netns\":");
    push_u64(out, u64::from(r.netns));
    out.push_str(",\"socket_cookie\":");
    match r.socket_cookie {
        Some(c) => push_u64(out, c),
        None => out.push_str("null"),
    }
    out.push_str(",\"detail\":{");
    for (i, (k, v)) in r.detail.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_str(out, k);
        out.push(':');
        match v {
            DetailValue::Num(n) => push_u64(out, *n),
            DetailValue::Text(t) => json_str(out, t),
        }
    }
    let _ = write!(out, "}},\"inferred\":{}", r.inferred);
    if let Some(l) = &r.linked {
        out.push_str(",\"linked_sent\":{\"condition\":");
        json_str(out, l.condition.as_str());
        out.push_str(",\"process\":");
        json_process(out, &l.process);
        let _ = write!(out, ",\"mono_ns\":{}}}", l.mono_ns);
    }
    out.push('}');
}

/// The JSON object as a `serde_json::Value` (tests and tools).
#[cfg(test)]
pub fn report_json(r: &Report, clock: &Clock) -> Value {
    let mut s = String::new();
    report_json_into(&mut s, r, clock);
    serde_json::from_str(&s).expect("valid JSON")
}

fn endpoint_text(a: &SocketAddr) -> String {
    // SocketAddr's Display already brackets IPv6: [::1]:8888
    a.to_string()
}

/// One aligned line per reset.
pub fn report_text(r: &Report, clock: &Clock, color: bool) -> String {
    let time = rfc3339(clock.wall_ns(r.mono_ns), 6);
    let dir = match r.direction {
        crate::explain::Direction::Sent => "SENT",
        crate::explain::Direction::Received => "RECV",
    };
    let process = match (&r.process, r.no_process_why) {
        (Some(p), _) => p.to_string(),
        (None, Some(why)) => format!("-({why})"),
        (None, None) => "-".to_owned(),
    };
    let ends = format!("{} > {}", endpoint_text(&r.local), endpoint_text(&r.remote));
    let state = r.state.map(|s| s.name()).unwrap_or_else(|| "-".into());
    let (c0, c1, b0) = if color {
        (
            if dir == "SENT" {
                "\x1b[31m"
            } else {
                "\x1b[33m"
            },
            "\x1b[0m",
            "\x1b[1m",
        )
    } else {
        ("", "", "")
    };
    format!(
        "{time} {c0}{dir}{c1} {process:<24} {ends:<45} {state:<12} {b0}{cond:<27}{c1} {expl}",
        cond = r.condition.as_str(),
        expl = r.explanation
    )
}

#[cfg(test)]
pub fn render(r: &Report, clock: &Clock, fmt: Format) -> String {
    let mut s = String::new();
    render_into(&mut s, r, clock, fmt);
    s
}

/// `render` into a reused buffer (cleared first): the event loop's path, one allocation less
/// per event.
pub fn render_into(out: &mut String, r: &Report, clock: &Clock, fmt: Format) {
    out.clear();
    match fmt {
        Format::Json => report_json_into(out, r, clock),
        Format::Text { color } => out.push_str(&report_text(r, clock, color)),
    }
}

/// A `lost` record: events the kernel side could not queue (ring buffer full).
pub fn lost(count: u64, total: u64, clock: &Clock, fmt: Format) -> String {
    let now = Clock::mono_now();
    match fmt {
        Format::Json => json!({
            "type": "lost",
            "count": count,
            "total": total,
            "time": rfc3339(clock.wall_ns(now), 9),
            "mono_ns": now,
        })
        .to_string(),
        Format::Text { .. } => format!(
            "rst-trace: warning: {count} reset events lost ({total} in total; ring buffer full, or the kernel skipped a reset program that was already running on that CPU): raise --ring-size or filter with --pid/--port"
        ),
    }
}

#[cfg(test)]
mod tests {
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
        let r = explain(
            &close_event(),
            &reasons(),
            Sentences::Write,
            &mut History::default(),
        )
        .unwrap();
        let got = render(&r, &clock(), Format::Json);
        let want = r#"{"type":"rst","time":"2026-11-24T12:00:01.123456789Z","mono_ns":81234567890123,"direction":"sent","origin":"tcp","condition":"close_with_unread_data","explanation":"server[1234] closed the socket with 128 unread bytes in its receive queue, so the kernel aborted the connection with RST instead of FIN","kernel_reason":"TCP_ABORT_ON_CLOSE","state":"ESTABLISHED","family":"ipv4","local":{"addr":"127.0.0.1","port":8888},"remote":{"addr":"127.0.0.1","port":43210},"process":{"pid":1234,"tid":1234,"comm":"server","uid":0},"cgroup":null,"attribution":"socket_owner","netns":4026531840,"socket_cookie":862063,"detail":{"unread_bytes":128},"inferred":false}"#;
        assert_eq!(got, want);
    }

    #[test]
    fn golden_text() {
        let r = explain(
            &close_event(),
            &reasons(),
            Sentences::Write,
            &mut History::default(),
        )
        .unwrap();
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
        let r = explain(&e, &reasons(), Sentences::Write, &mut History::default()).unwrap();
        let j = report_json(&r, &clock());
        assert_eq!(j["process"]["comm"], "server");
        assert_eq!(j["process"]["thread"], "conn-worker-7");
        assert_eq!(j["process"]["tid"], 1240);
        assert_eq!(j["cgroup"]["id"], 7_421);
        let text = render(&r, &clock(), Format::Text { color: false });
        assert!(text.contains(" SENT server[1234] "), "{text}");
        // The same name on the thread: no `thread` key.
        e.owner.thread = e.owner.comm;
        let r = explain(&e, &reasons(), Sentences::Write, &mut History::default()).unwrap();
        let j = report_json(&r, &clock());
        assert!(j["process"].get("thread").is_none(), "{j}");
        assert_eq!(j["cgroup"]["id"], 7_421);
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
        let r = explain(&e, &reasons(), Sentences::Write, &mut History::default()).unwrap();
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
            let Some(r) = explain(&ev, &info, Sentences::Write, &mut history) else {
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
}
