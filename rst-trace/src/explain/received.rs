//! Resets a local socket received: refused connections and peer resets, with the local sender
//! when there is one, and the evidence (TTL, idle time) when a middlebox may have sent it.

use rst_trace_common::{FACT_RST_TTL, RstEvent};

use super::{
    Sentences,
    model::{Detail, DetailValue, Ep, Linked, Report, cond},
    tcp::TcpState,
    who,
};

/// Idle time past which a received reset suggests a middlebox (NAT, load balancer, mobile
/// carrier) expired the flow: common idle timeouts are 4 to 5 minutes (e.g. 350 s on AWS NLB,
/// 4 min on Azure LB, about 5 min on mobile networks).
const MIDDLEBOX_IDLE_MS: u64 = 240_000;

/// `idle_ms` is (since the connection last sent or received, since it last received); `linked`
/// the sent reset on this host this one answers, if any.
pub(super) fn explain_received(
    ev: &RstEvent,
    linked: Option<Linked>,
    idle_ms: Option<(u64, u64)>,
    words: Sentences,
    r: &mut Report,
) {
    let proc_ = who(r);
    let remote = Ep(r.remote);
    let state_name = r
        .state
        .map(TcpState::name)
        .unwrap_or_else(|| "unknown".into());
    let by = sent_by(linked.as_ref());
    if r.state == Some(TcpState::SynSent) {
        r.condition = cond::CONNECTION_REFUSED;
        r.detail
            .push((Detail::Errno, DetailValue::Text("ECONNREFUSED".into())));
        say!(
            words,
            r,
            "{proc_}'s connection attempt to {remote} was refused: the peer answered the SYN with RST{by}; connect() fails with ECONNREFUSED"
        );
    } else {
        r.condition = cond::PEER_RESET;
        // tcp_reset() picks the error the application will see from the state. An orphan
        // (SOCK_DEAD: its process already closed it, e.g. in FIN_WAIT1) has no file left, so
        // no call can see any error.
        let errno = match r.state {
            _ if r.orphan => None,
            Some(TcpState::CloseWait) => Some("EPIPE"),
            Some(TcpState::Close) => None,
            _ => Some("ECONNRESET"),
        };
        if let Some(e) = errno {
            r.detail.push((Detail::Errno, DetailValue::Text(e.into())));
        }
        let sees = match errno {
            Some(e) => format!("; {proc_} sees {e} on its next read or write"),
            None if r.orphan => {
                format!("; {proc_} had already closed the socket, so no call will see the reset")
            }
            None => String::new(),
        };
        let suspicion = evidence(ev, linked.is_some(), idle_ms, r);
        say!(
            words,
            r,
            "{remote} reset the connection while it was {state_name}{by}{sees}{suspicion}"
        );
    }
    r.linked = linked;
}

/// "; it was sent by ... on this host (...)" for a linked reset.
fn sent_by(linked: Option<&Linked>) -> String {
    match linked {
        Some(l) if l.condition == cond::FIREWALL_REJECT => {
            "; it was sent by a netfilter REJECT rule on this host (firewall_reject)".to_owned()
        }
        Some(l) => format!(
            "; it was sent by {} on this host ({})",
            l.process
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "the kernel, no process".into()),
            l.condition
        ),
        None => String::new(),
    }
}

/// The idle and TTL details of a peer reset, and the suspicion they raise (empty if none).
fn evidence(ev: &RstEvent, linked: bool, idle_ms: Option<(u64, u64)>, r: &mut Report) -> String {
    let remote = Ep(r.remote);
    if let Some((ms, recv_ms)) = idle_ms {
        r.detail.push((Detail::IdleMs, DetailValue::Num(ms)));
        r.detail
            .push((Detail::RecvIdleMs, DetailValue::Num(recv_ms)));
    }
    let rst_ttl = (ev.facts & FACT_RST_TTL != 0).then_some(ev.ttl);
    let peer_ttl = (ev.peer_ttl != 0).then_some(ev.peer_ttl);
    if let Some(t) = rst_ttl {
        r.detail.push((Detail::Ttl, DetailValue::Num(u64::from(t))));
    }
    if let Some(t) = peer_ttl {
        r.detail
            .push((Detail::PeerTtl, DetailValue::Num(u64::from(t))));
    }
    // Evidence, never a verdict. An RST whose TTL differs from the peer's segments was
    // built by a different host than the peer (a firewall, load balancer or injector on the
    // path); a long idle connection reset by a "peer" is what a NAT, load balancer or mobile
    // network that expired the flow produces.
    let mut suspicions = Vec::new();
    if !linked
        && let (Some(t), Some(p)) = (rst_ttl, peer_ttl)
        && t != p
    {
        suspicions.push(format!(
            "the RST arrived with TTL {t} while {remote}'s segments arrive with TTL {p}, so a device on the path (firewall, load balancer, NAT or injector), not the peer itself, likely sent it"
        ));
    }
    // Time since the peer was last heard from: the write that provoked the RST just reset
    // the send clock.
    if let Some((_, ms)) = idle_ms
        && !linked
        && ms >= MIDDLEBOX_IDLE_MS
    {
        suspicions.push(format!(
            "nothing had arrived on the connection for {} s, longer than common NAT, load-balancer and mobile idle timeouts, so a middlebox that expired the flow may have sent it",
            ms / 1000
        ));
    }
    if suspicions.is_empty() {
        String::new()
    } else {
        format!(" (suspicion, not fact: {})", suspicions.join("; "))
    }
}
