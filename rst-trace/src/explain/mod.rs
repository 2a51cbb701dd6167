//! Turns the kernel side's facts into a [`Report`]: which condition caused the reset, which
//! process it belongs to, and one sentence saying so. This is the product's judgement; the eBPF
//! side only collects facts.
//!
//! `model` is the vocabulary, `sent` and `received` the rules for each direction, `infer` the
//! kernel reason of kernels before 6.10, which report none.

/// Sets the report's explanation, if explanations are wanted at all.
macro_rules! say {
    ($words:expr, $r:expr, $($fmt:tt)*) => {
        if $words == $crate::explain::Sentences::Write {
            $r.explanation = format!($($fmt)*);
        }
    };
}

mod infer;
mod model;
mod netfilter;
mod received;
mod sent;
mod tcp;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_transmit;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use model::{
    AppNotice, Attribution, Condition, Detail, DetailValue, Linked, Origin, Process, Report,
    comm_bytes, cond, name_text, put_ipv4,
};
use rst_trace_common::{ATTR_NONE, FACT_IDLE, RstEvent};
pub use tcp::{Direction, TcpState};

use crate::kernel::KernelInfo;

/// Whether reports get their explanation sentence: `Skip` with `--quiet`, where nothing prints
/// them: building the sentences is most of the per-event cost in a storm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sentences {
    Write,
    Skip,
}

/// Decodes addresses from the event (IPv4 in the first four bytes).
pub fn endpoint(ipv6: bool, addr: &[u8; 16], port: u16) -> SocketAddr {
    let ip = if ipv6 {
        let v6 = Ipv6Addr::from(*addr);
        // An IPv4-mapped address on a dual-stack socket is really IPv4: show it that way.
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    } else {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    };
    SocketAddr::new(ip, port)
}

/// Explains one event, using the kernel facts (`enum sk_rst_reason` names, jiffy length) and,
/// for a received reset, the sent reset on this host it answers (`linked`, which
/// `correlate::History` finds): a pure function of them.
pub fn explain(
    ev: &RstEvent,
    info: &KernelInfo,
    words: Sentences,
    linked: Option<Linked>,
) -> Option<Report> {
    let direction = Direction::try_from(ev.kind).ok()?;
    let mut r = blank_report(ev, direction);
    let to_ms = |j: u32| u64::from(j) * info.jiffy_ns / 1_000_000;
    let idle_ms = (ev.facts & FACT_IDLE != 0 && info.jiffy_ns > 0)
        .then(|| (to_ms(ev.idle_jiffies), to_ms(ev.recv_idle_jiffies)));
    match direction {
        Direction::Sent => sent::explain_sent(ev, &info.reasons, words, &mut r),
        Direction::Received => received::explain_received(ev, linked, idle_ms, words, &mut r),
    }
    if r.process.is_none() && r.no_process_why.is_none() {
        r.no_process_why = Some(if ev.skaddr == 0 {
            "no socket"
        } else {
            "owner unknown"
        });
    }
    Some(r)
}

/// The event's local and remote endpoints, as its report will have them.
pub fn endpoints(ev: &RstEvent) -> (SocketAddr, SocketAddr) {
    let ipv6 = u16::from(ev.family) == rst_trace_common::AF_INET6;
    (
        endpoint(ipv6, &ev.local_addr, ev.local_port),
        endpoint(ipv6, &ev.remote_addr, ev.remote_port),
    )
}

/// The report before any rule: the event's endpoints, socket and owner, condition `other`.
fn blank_report(ev: &RstEvent, direction: Direction) -> Report {
    let (local, remote) = endpoints(ev);
    let ipv6 = local.is_ipv6();
    let process = (ev.attribution != ATTR_NONE).then(|| Process::from_task(&ev.owner));
    Report {
        mono_ns: ev.mono_ns,
        direction,
        origin: None,
        condition: cond::OTHER,
        explanation: String::new(),
        kernel_reason: None,
        state: TcpState::decode(ev.state),
        ipv6,
        local,
        remote,
        attribution: if process.is_some() {
            Attribution::SocketOwner
        } else {
            Attribution::NoProcess
        },
        no_process_why: None,
        process,
        netns: ev.netns,
        socket_cookie: (ev.cookie != 0).then_some(ev.cookie),
        detail: Vec::new(),
        linked: None,
        inferred: false,
        stacks: None,
        skaddr: ev.skaddr,
        orphan: ev.facts & rst_trace_common::FACT_ORPHAN != 0,
        app_notice: None,
    }
}

fn who(r: &Report) -> String {
    match &r.process {
        Some(p) => p.to_string(),
        None => "the application".into(),
    }
}

/// xorshift64*: a deterministic pseudo-random sequence for property tests, so a failure
/// reproduces.
#[cfg(test)]
pub fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
