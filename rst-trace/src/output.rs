//! The one renderer: every record rst-trace prints goes through here, as text or as JSON (NDJSON),
//! per ../shared/spec/output.md.

use std::{fmt::Write as _, net::SocketAddr};

#[cfg(test)]
use serde_json::Value;
use serde_json::json;

use crate::explain::{DetailValue, Process, Report};

/// Converts kernel monotonic timestamps (`bpf_ktime_get_ns`) to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, in ns, measured at start-up.
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; these clocks always exist on Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            offset_ns: real - mono,
        }
    }

    #[cfg(test)]
    pub fn fixed(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn wall_ns(&self, mono_ns: u64) -> i128 {
        self.offset_ns + i128::from(mono_ns)
    }

    pub fn mono_now() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC) as u64
    }
}

/// RFC 3339 UTC with `digits` fractional digits (9 = ns, 6 = µs).
pub fn rfc3339(wall_ns: i128, digits: u32) -> String {
    let secs = wall_ns.div_euclid(1_000_000_000) as i64;
    let nanos = wall_ns.rem_euclid(1_000_000_000) as u64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let frac = nanos / 10u64.pow(9 - digits);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:0width$}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        width = digits as usize
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text { color: bool },
    Json,
}

/// Appends `v` as a JSON string (quotes and escapes as serde_json writes them).
fn json_str(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_opt_str(out: &mut String, v: Option<&str>) {
    match v {
        Some(v) => json_str(out, v),
        None => out.push_str("null"),
    }
}

fn json_endpoint(out: &mut String, a: &SocketAddr) {
    out.push_str("{\"addr\":");
    let ip = a.ip().to_string();
    json_str(out, &ip);
    let _ = write!(out, ",\"port\":{}}}", a.port());
}

fn json_process(out: &mut String, p: &Option<Process>) {
    match p {
        Some(p) => {
            let _ = write!(out, "{{\"pid\":{},\"tid\":{},\"comm\":", p.pid, p.tid);
            json_str(out, &p.comm);
            let _ = write!(out, ",\"uid\":{}}}", p.uid);
        }
        None => out.push_str("null"),
    }
}

/// Appends one reset as a JSON object (one NDJSON line without the newline). Written directly,
/// not through a `serde_json::Value` tree: in a reset storm this is the hot path.
pub fn report_json_into(out: &mut String, r: &Report, clock: &Clock) {
    out.push_str("{\"type\":\"rst\",\"time\":");
    json_str(out, &rfc3339(clock.wall_ns(r.mono_ns), 9));
    let _ = write!(out, ",\"mono_ns\":{},\"direction\":", r.mono_ns);
    json_str(out, r.direction.as_str());
    out.push_str(",\"origin\":");
    json_opt_str(out, r.origin);
    out.push_str(",\"condition\":");
    json_str(out, r.condition);
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
    out.push_str(",\"attribution\":");
    json_str(out, r.attribution);
    let _ = write!(out, ",\"netns\":{},\"socket_cookie\":", r.netns);
    match r.socket_cookie {
        Some(c) => {
            let _ = write!(out, "{c}");
        }
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
            DetailValue::Num(n) => {
                let _ = write!(out, "{n}");
            }
            DetailValue::Text(t) => json_str(out, t),
        }
    }
    let _ = write!(out, "}},\"inferred\":{}", r.inferred);
    if let Some(l) = &r.linked {
        out.push_str(",\"linked_sent\":{\"condition\":");
        json_str(out, l.condition);
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
        cond = r.condition,
        expl = r.explanation
    )
}

pub fn render(r: &Report, clock: &Clock, fmt: Format) -> String {
    match fmt {
        Format::Json => {
            let mut s = String::with_capacity(768);
            report_json_into(&mut s, r, clock);
            s
        }
        Format::Text { color } => report_text(r, clock, color),
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
            "rst-trace: warning: {count} reset events lost (ring buffer full; {total} lost in total): raise --ring-size or filter with --pid/--port"
        ),
    }
}

#[cfg(test)]
mod tests {
    use rst_trace_common::{ATTR_OWNER_CURRENT, FACT_PACKET, FACT_TCP_SOCK, KIND_SENT, RstEvent};

    use super::*;
    use crate::explain::{History, explain};

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0, 9), "1970-01-01T00:00:00.000000000Z");
        // 2026-11-24T12:00:01.123456789Z
        let t = 1_795_521_601_123_456_789i128;
        assert_eq!(rfc3339(t, 9), "2026-11-24T12:00:01.123456789Z");
        assert_eq!(rfc3339(t, 6), "2026-11-24T12:00:01.123456Z");
        // leap day
        assert_eq!(
            rfc3339(951_782_400_000_000_000, 3),
            "2000-02-29T00:00:00.000Z"
        );
    }

    fn reasons() -> crate::layout::KernelInfo {
        crate::layout::KernelInfo {
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
        let r = explain(&close_event(), &reasons(), &mut History::default()).unwrap();
        let got = render(&r, &clock(), Format::Json);
        let want = r#"{"type":"rst","time":"2026-11-24T12:00:01.123456789Z","mono_ns":81234567890123,"direction":"sent","origin":"tcp","condition":"close_with_unread_data","explanation":"server[1234] closed the socket with 128 unread bytes in its receive queue, so the kernel aborted the connection with RST instead of FIN","kernel_reason":"TCP_ABORT_ON_CLOSE","state":"ESTABLISHED","family":"ipv4","local":{"addr":"127.0.0.1","port":8888},"remote":{"addr":"127.0.0.1","port":43210},"process":{"pid":1234,"tid":1234,"comm":"server","uid":0},"attribution":"socket_owner","netns":4026531840,"socket_cookie":862063,"detail":{"unread_bytes":128},"inferred":false}"#;
        assert_eq!(got, want);
    }

    #[test]
    fn golden_text() {
        let r = explain(&close_event(), &reasons(), &mut History::default()).unwrap();
        let got = render(&r, &clock(), Format::Text { color: false });
        let want = "2026-11-24T12:00:01.123456Z SENT server[1234]             127.0.0.1:8888 > 127.0.0.1:43210              ESTABLISHED  close_with_unread_data      server[1234] closed the socket with 128 unread bytes in its receive queue, so the kernel aborted the connection with RST instead of FIN";
        assert_eq!(got, want);
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
        let r = explain(&e, &reasons(), &mut History::default()).unwrap();
        let got = render(&r, &clock(), Format::Text { color: false });
        let want = "2026-11-24T12:00:01.123456Z SENT -(no socket)             [::1]:9 > [::1]:50000                         -            port_not_listening          nothing listens on [::1]:9: the kernel refused the connection attempt (SYN) from [::1]:50000 with RST; the client sees ECONNREFUSED";
        assert_eq!(got, want);
        let j = report_json(&r, &clock());
        assert_eq!(j["process"], Value::Null);
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
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            // xorshift64*: deterministic, so a failure reproduces.
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
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
                buf[160] = 1 + (next() % 2) as u8;
                buf[161] = if next() % 2 == 0 { 2 } else { 10 };
            }
            let Ok(ev) = RstEvent::decode(&buf) else {
                assert_ne!(len, RST_EVENT_SIZE);
                rejected += 1;
                continue;
            };
            let Some(r) = explain(&ev, &info, &mut history) else {
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
    fn json_strings_escape_like_serde() {
        for v in [
            "plain",
            "q\"uote",
            "back\\slash",
            "nl\n tab\t cr\r",
            "\u{01}\u{08}\u{0c}\u{1f}",
            "émoji ✓",
        ] {
            let mut s = String::new();
            json_str(&mut s, v);
            assert_eq!(s, serde_json::to_string(v).unwrap());
        }
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
