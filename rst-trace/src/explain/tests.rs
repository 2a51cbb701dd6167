//! The explainer's rules, case by case, and the property the in-kernel count relies on.

use rst_trace_common::{
    ATTR_NONE, CountKey, FACT_BACKLOG, FACT_IDLE, FACT_LINGER_ZERO, FACT_LISTENER_CLOSING,
    FACT_PACKET, FACT_TCP_SOCK, KIND_RECEIVED, KIND_SENT, REASON_NONE, RstEvent, Task,
};

use super::{
    model::Detail,
    tcp::{ACK, SYN, tcp_flags_names},
    *,
};
use crate::{correlate::History, kernel::KernelInfo};

/// The kernel counts `--summary --quiet` resets under their `CountKey`: the key must
/// explain to the same condition, direction and process as the event itself, for events of
/// every kind, state, reason and fact.
#[test]
fn count_key_keeps_condition_direction_and_process() {
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    let info = all_reasons();
    let mut conditions = std::collections::HashSet::new();
    for _ in 0..50_000 {
        let ev = random_event(&mut next);
        let key = CountKey::of(&ev).event();
        let a = explain(&ev, &info, Sentences::Write, None);
        let b = explain(&key, &info, Sentences::Write, None);
        let (Some(a), Some(b)) = (a, b) else {
            panic!("one of event and key explained, the other not: {ev:?}");
        };
        assert_eq!(a.condition, b.condition, "{ev:?}");
        assert_eq!(a.direction, b.direction, "{ev:?}");
        assert_eq!(
            a.process.as_ref().map(|p| (p.pid, p.comm.clone())),
            b.process.as_ref().map(|p| (p.pid, p.comm.clone())),
            "{ev:?}"
        );
        conditions.insert(a.condition);
    }
    // The generator reaches most conditions, so the check above means something.
    assert!(conditions.len() >= 15, "{conditions:?}");
}

/// All 6.18 reason names, so every reason branch is taken.
fn all_reasons() -> KernelInfo {
    KernelInfo {
        reasons: [
            "NOT_SPECIFIED",
            "NO_SOCKET",
            "TCP_INVALID_ACK_SEQUENCE",
            "TCP_RFC7323_PAWS",
            "TCP_TOO_OLD_ACK",
            "TCP_ACK_UNSENT_DATA",
            "TCP_FLAGS",
            "TCP_OLD_ACK",
            "TCP_ABORT_ON_DATA",
            "TCP_TIMEWAIT_SOCKET",
            "INVALID_SYN",
            "TCP_ABORT_ON_CLOSE",
            "TCP_ABORT_ON_LINGER",
            "TCP_ABORT_ON_MEMORY",
            "TCP_STATE",
            "TCP_KEEPALIVE_TIMEOUT",
            "TCP_DISCONNECT_WITH_DATA",
        ]
        .into_iter()
        .enumerate()
        .map(|(k, v)| (k as u32, v.to_string()))
        .collect(),
        jiffy_ns: 4_000_000,
    }
}

/// An event of any kind, state, reason and facts, with plausible small counts.
fn random_event(next: &mut impl FnMut() -> u64) -> RstEvent {
    let small = [0u32, 1, 2, 3, 100];
    let mut ev = RstEvent {
        mono_ns: next(),
        skaddr: if next().is_multiple_of(4) { 0 } else { next() },
        skbaddr: if next().is_multiple_of(2) { 0 } else { next() },
        cookie: next() % 3,
        kind: 1 + (next() % 2) as u8,
        family: if next().is_multiple_of(2) { 2 } else { 10 },
        state: (next() % 14) as u8,
        prev_state: (next() % 14) as u8,
        reason: if next().is_multiple_of(5) {
            REASON_NONE
        } else {
            (next() % 18) as u32
        },
        tcp_flags: next() as u8,
        ttl: next() as u8,
        peer_ttl: next() as u8,
        attribution: (next() % 4) as u8,
        facts: next() as u32 & 0x1ff,
        unread: small[(next() % 5) as usize],
        unsent: small[(next() % 5) as usize],
        linger2: [-1, 0, 60][(next() % 3) as usize],
        ack_backlog: small[(next() % 5) as usize],
        max_ack_backlog: small[(next() % 5) as usize],
        idle_jiffies: next() as u32,
        recv_idle_jiffies: next() as u32,
        local_port: next() as u16,
        remote_port: next() as u16,
        netns: next() as u32,
        ..Default::default()
    };
    ev.local_addr = (u128::from(next()) << 64 | u128::from(next())).to_ne_bytes();
    ev.remote_addr = (u128::from(next()) << 64 | u128::from(next())).to_ne_bytes();
    ev.owner = task("worker", (next() % 5) as u32 + 1);
    ev.owner.tid = next() as u32;
    ev.owner.cgroup = next();
    // A worker thread of its own name, or the main thread.
    if next() & 1 == 0 {
        ev.owner.thread[..8].copy_from_slice(b"worker-7");
    }
    ev
}

fn reasons() -> KernelInfo {
    KernelInfo {
        reasons: [
            (1, "NO_SOCKET"),
            (11, "TCP_ABORT_ON_CLOSE"),
            (14, "TCP_STATE"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect(),
        jiffy_ns: 4_000_000,
    }
}

fn task(comm: &str, pid: u32) -> Task {
    let mut t = Task {
        pid,
        tid: pid,
        ..Default::default()
    };
    t.comm[..comm.len()].copy_from_slice(comm.as_bytes());
    t.thread = t.comm;
    t
}

/// An event as a 5.10 kernel reports it: no reason.
fn old_kernel(state: u8, prev: u8, skb: bool) -> RstEvent {
    RstEvent {
        kind: KIND_SENT,
        reason: REASON_NONE,
        family: 2,
        skaddr: 1,
        skbaddr: u64::from(skb),
        state,
        prev_state: prev,
        facts: FACT_TCP_SOCK,
        attribution: rst_trace_common::ATTR_OWNER_CURRENT,
        owner: task("app", 7),
        ..Default::default()
    }
}

#[test]
fn old_kernels_infer_the_condition_and_say_so() {
    let k = KernelInfo::default();
    let mut h = History::default();
    let cases: Vec<(RstEvent, Condition)> = vec![
        (
            RstEvent {
                unread: 5,
                ..old_kernel(7, 1, false)
            },
            cond::CLOSE_WITH_UNREAD_DATA,
        ),
        // A received FIN is not unread data.
        (
            RstEvent {
                unread: 1,
                ..old_kernel(7, 8, false)
            },
            cond::DISCONNECT,
        ),
        (
            RstEvent {
                facts: FACT_TCP_SOCK | FACT_LINGER_ZERO,
                ..old_kernel(7, 1, false)
            },
            cond::LINGER_ABORT,
        ),
        (
            RstEvent {
                facts: FACT_TCP_SOCK | FACT_LISTENER_CLOSING,
                ..old_kernel(7, 1, false)
            },
            cond::LISTENER_CLOSED,
        ),
        (
            RstEvent {
                unsent: 9,
                ..old_kernel(7, 9, false)
            },
            cond::DISCONNECT_WITH_UNSENT_DATA,
        ),
        (
            RstEvent {
                linger2: -1,
                ..old_kernel(7, 5, false)
            },
            cond::FIN_WAIT2_ABORT,
        ),
        (old_kernel(1, 0, false), cond::KEEPALIVE_TIMEOUT),
        (old_kernel(4, 0, false), cond::ORPHAN_LIMIT),
        (old_kernel(6, 0, true), cond::TIME_WAIT_SEGMENT),
        (
            RstEvent {
                tcp_flags: ACK,
                ..old_kernel(10, 0, true)
            },
            cond::UNEXPECTED_ACK_ON_LISTENER,
        ),
        (old_kernel(2, 0, true), cond::INVALID_ACK),
        (old_kernel(7, 4, true), cond::DATA_AFTER_CLOSE),
    ];
    for (ev, want) in cases {
        let r = h.explain_linked(&ev, &k, Sentences::Write).unwrap();
        assert_eq!(r.condition, want, "{ev:?}");
        assert!(r.inferred);
        assert_eq!(r.kernel_reason, None);
        assert!(r.explanation.contains("inferred"), "{}", r.explanation);
    }
}

#[test]
fn listener_reset_with_full_queue_is_overflow() {
    let mut ev = RstEvent {
        kind: KIND_SENT,
        reason: 6,
        state: 10,
        skaddr: 1,
        skbaddr: 1,
        family: 2,
        tcp_flags: ACK,
        facts: FACT_BACKLOG | FACT_PACKET,
        ack_backlog: 2,
        max_ack_backlog: 1,
        ..Default::default()
    };
    let mut k = reasons();
    k.reasons.insert(6, "TCP_FLAGS".into());
    let r = explain(&ev, &k, Sentences::Write, None).unwrap();
    assert_eq!(r.condition, cond::ACCEPT_QUEUE_OVERFLOW);
    ev.ack_backlog = 1;
    let r = explain(&ev, &k, Sentences::Write, None).unwrap();
    assert_eq!(r.condition, cond::UNEXPECTED_ACK_ON_LISTENER);
}

#[test]
fn long_idle_received_reset_is_a_suspicion_not_a_fact() {
    let ev = RstEvent {
        kind: KIND_RECEIVED,
        reason: REASON_NONE,
        state: 1,
        skaddr: 1,
        family: 2,
        facts: FACT_TCP_SOCK | FACT_IDLE,
        // Our write just now (the send clock is fresh); nothing received for 400 s.
        idle_jiffies: 2,
        recv_idle_jiffies: 100_000,
        ..Default::default()
    };
    let r = explain(&ev, &reasons(), Sentences::Write, None).unwrap();
    assert_eq!(r.condition, cond::PEER_RESET);
    assert_eq!(r.detail_num(Detail::IdleMs), Some(8));
    assert_eq!(r.detail_num(Detail::RecvIdleMs), Some(400_000));
    assert!(
        r.explanation.contains("suspicion, not fact"),
        "{}",
        r.explanation
    );
    let short = RstEvent {
        recv_idle_jiffies: 10,
        ..ev
    };
    let r = explain(&short, &reasons(), Sentences::Write, None).unwrap();
    assert!(!r.explanation.contains("suspicion"));
}

#[test]
fn flags_order_is_fixed() {
    assert_eq!(tcp_flags_names(0x18), "PSH|ACK");
    assert_eq!(tcp_flags_names(0x12), "SYN|ACK");
    assert_eq!(tcp_flags_names(0x02), "SYN");
    assert_eq!(tcp_flags_names(0), "none");
}

#[test]
fn unknown_kind_and_state_decode_without_panicking() {
    assert_eq!(Direction::try_from(9), Err(9));
    assert_eq!(TcpState::decode(99), Some(TcpState::Unknown(99)));
    assert_eq!(TcpState::decode(0), None);
    let ev = RstEvent {
        kind: 77,
        ..Default::default()
    };
    assert!(explain(&ev, &reasons(), Sentences::Write, None).is_none());
}

#[test]
fn unknown_reason_value_is_other_with_raw_name() {
    let ev = RstEvent {
        kind: KIND_SENT,
        reason: 200,
        state: 1,
        skaddr: 1,
        family: 2,
        ..Default::default()
    };
    let r = explain(&ev, &reasons(), Sentences::Write, None).unwrap();
    assert_eq!(r.condition, cond::OTHER);
    assert_eq!(r.kernel_reason.as_deref(), Some("UNKNOWN(200)"));
}

#[test]
fn syn_to_closed_port_is_port_not_listening_without_a_process() {
    let ev = RstEvent {
        kind: KIND_SENT,
        reason: 1,
        skbaddr: 1,
        family: 2,
        facts: FACT_PACKET,
        tcp_flags: SYN,
        ..Default::default()
    };
    let r = explain(&ev, &reasons(), Sentences::Write, None).unwrap();
    assert_eq!(r.condition, cond::PORT_NOT_LISTENING);
    assert_eq!(r.process, None);
    assert_eq!(r.state, None);
}

#[test]
fn received_reset_links_to_local_sender() {
    let mut h = History::default();
    let mut sent = RstEvent {
        kind: KIND_SENT,
        reason: 11,
        family: 2,
        skaddr: 5,
        state: 7,
        prev_state: 1,
        attribution: rst_trace_common::ATTR_OWNER_CURRENT,
        owner: task("server", 10),
        facts: FACT_TCP_SOCK,
        unread: 128,
        local_port: 8888,
        remote_port: 40000,
        mono_ns: 100,
        ..Default::default()
    };
    sent.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    sent.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let s = h
        .explain_linked(&sent, &reasons(), Sentences::Write)
        .unwrap();
    assert_eq!(s.condition, cond::CLOSE_WITH_UNREAD_DATA);
    assert_eq!(s.detail_num(Detail::UnreadBytes), Some(128));
    assert_eq!(s.state, Some(TcpState::Established));
    let mut recv = sent;
    recv.kind = KIND_RECEIVED;
    recv.local_port = 40000;
    recv.remote_port = 8888;
    recv.state = 1;
    recv.attribution = ATTR_NONE;
    recv.mono_ns = 200;
    let r = h
        .explain_linked(&recv, &reasons(), Sentences::Write)
        .unwrap();
    assert_eq!(r.condition, cond::PEER_RESET);
    assert_eq!(r.process, None);
    let l = r.linked.unwrap();
    assert_eq!(l.condition, cond::CLOSE_WITH_UNREAD_DATA);
    assert_eq!(&*l.process.unwrap().comm, "server");
}
