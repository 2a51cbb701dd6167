//! Resets seen on transmit before 6.10 (`FACT_XMIT`): TCP's resets without a full socket, and
//! netfilter's, which those kernels tell apart only there.

use rst_trace_common::{
    FACT_NETFILTER, FACT_PACKET, FACT_XMIT, KIND_SENT, REASON_NONE, RstEvent, TCP_ACK, TCP_PSH,
    TCP_RST, TCP_SYN, TCP_TIME_WAIT,
};

use super::model::Detail;
use super::*;
use crate::kernel::KernelInfo;

/// A kernel before 6.10: no reason names at all.
fn old() -> KernelInfo {
    KernelInfo::default()
}

fn xmit(facts: u32, flags: u8, state: u8) -> RstEvent {
    RstEvent {
        kind: KIND_SENT,
        reason: REASON_NONE,
        skbaddr: 1,
        family: 2,
        facts: FACT_XMIT | facts,
        tcp_flags: flags,
        state,
        ..Default::default()
    }
}

fn report(ev: &RstEvent) -> Report {
    explain(ev, &old(), Sentences::Write, None).expect("explained")
}

fn incoming(r: &Report) -> Option<String> {
    r.detail.iter().find_map(|(k, v)| match (k, v) {
        (Detail::IncomingFlags, DetailValue::Text(t)) => Some(t.clone()),
        _ => None,
    })
}

#[test]
fn answered_syn_is_port_not_listening_from_tcp() {
    let r = report(&xmit(FACT_PACKET, TCP_SYN, 0));
    assert_eq!(r.condition, cond::PORT_NOT_LISTENING);
    assert_eq!(r.origin, Some(Origin::Tcp));
    assert_eq!(r.state, None);
    assert_eq!(r.process, None);
    assert!(r.inferred);
    assert_eq!(incoming(&r).as_deref(), Some("SYN"));
    assert!(!r.explanation.contains("not seen"), "{}", r.explanation);
}

/// Without the segment it answers, the RST's own flags say what it had: RST|ACK answers one
/// without ACK (in practice a SYN), a bare RST one with ACK. No incoming flags are claimed.
#[test]
fn unseen_segment_is_inferred_from_the_rst_and_says_so() {
    let r = report(&xmit(0, TCP_RST | TCP_ACK, 0));
    assert_eq!(r.condition, cond::PORT_NOT_LISTENING);
    assert_eq!(incoming(&r), None);
    assert!(r.explanation.contains("not seen"), "{}", r.explanation);
    let r = report(&xmit(0, TCP_RST, 0));
    assert_eq!(r.condition, cond::NO_CONNECTION);
    assert_eq!(incoming(&r), None);
}

#[test]
fn timewait_handover_is_time_wait_segment() {
    let r = report(&xmit(FACT_PACKET, TCP_PSH | TCP_ACK, TCP_TIME_WAIT));
    assert_eq!(r.condition, cond::TIME_WAIT_SEGMENT);
    assert_eq!(r.state, Some(TcpState::TimeWait));
    assert_eq!(incoming(&r).as_deref(), Some("PSH|ACK"));
    assert!(r.inferred);
    assert_eq!(r.process, None);
    assert!(
        r.explanation.contains("left when the process closed it"),
        "{}",
        r.explanation
    );
    // With the owner the kernel side remembered for the flow: the process that closed it.
    let mut ev = xmit(FACT_PACKET, TCP_PSH | TCP_ACK, TCP_TIME_WAIT);
    ev.attribution = rst_trace_common::ATTR_OWNER_MAP;
    ev.owner.pid = 4242;
    ev.owner.tid = 4242;
    ev.owner.comm[..5].copy_from_slice(b"nginx");
    let r = report(&ev);
    assert_eq!(r.condition, cond::TIME_WAIT_SEGMENT);
    assert_eq!(r.process.as_ref().map(|p| p.pid), Some(4242));
    assert!(
        r.explanation.contains("left when nginx[4242] closed it"),
        "{}",
        r.explanation
    );
}

/// Before 6.10 an IPv6 RST without a socket used to be reported as "netfilter or TCP": the
/// transmit hook now tells them apart, so a netfilter one says netfilter.
#[test]
fn ipv6_netfilter_reset_before_6_10_is_netfilter() {
    let ev = RstEvent {
        kind: KIND_SENT,
        reason: REASON_NONE,
        skbaddr: 1,
        family: 10,
        facts: FACT_NETFILTER | FACT_PACKET,
        tcp_flags: TCP_RST | TCP_ACK,
        ..Default::default()
    };
    let r = report(&ev);
    assert_eq!(r.origin, Some(Origin::Netfilter));
    assert_eq!(r.condition, cond::FIREWALL_REJECT);
}
