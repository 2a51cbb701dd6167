//! Resets TCP on this host sent, by kernel reason (reported, or inferred before 6.10): the
//! facts the rules look at and the choice of rule here; the rules themselves in `answers` (the
//! reset answers a segment that arrived) and `aborts` (the host aborts a connection of its own).

mod aborts;
mod answers;

use rst_trace_common::{
    FACT_BACKLOG, FACT_NETFILTER, FACT_PACKET, FACT_TCP_SOCK, FACT_XMIT, REASON_NONE, RstEvent,
};

use super::{
    Sentences, infer,
    model::{Detail, DetailValue, KernelReason, Origin, Report},
    netfilter,
    tcp::{ACK, SYN, TCP_CLOSE_RAW, TcpState, tcp_flags_names},
    who,
};
use aborts::{
    abort_on_data, abort_on_linger, close_with_unread_data, closed_or_disconnected,
    keepalive_timeout, killed, orphan_limit,
};
use answers::{
    accept_queue_overflow, invalid_ack, invalid_ack_in_syn_sent, no_socket, other, paws_reject,
    time_wait_segment, unexpected_ack_on_listener,
};

/// What the rules for a sent reset look at, worked out once.
struct Sent<'a> {
    ev: &'a RstEvent,
    words: Sentences,
    /// The reason the kernel reported (6.10+).
    reported: Option<KernelReason>,
    /// The reason the rules follow: the reported one, or the one inferred without it.
    key: Option<KernelReason>,
    inferred: bool,
    prev: Option<TcpState>,
    packet: bool,
    /// The provoking segment's flags were inferred from the RST (seen on transmit).
    guessed: bool,
    flags: u8,
    tcp_sock: bool,
    state_name: String,
    proc_: String,
    incoming: String,
}

impl Sent<'_> {
    /// "reason NAME", or what stands for it when the kernel reported none.
    fn reason_words(&self) -> String {
        match self.reported.as_deref() {
            Some(name) => format!("reason {name}"),
            None => "no reason reported".to_owned(),
        }
    }

    /// The segment's flags as a detail, when the segment itself was seen.
    fn push_incoming(&self, r: &mut Report) {
        if self.packet && !self.guessed {
            r.detail.push((
                Detail::IncomingFlags,
                DetailValue::Text(self.incoming.clone()),
            ));
        }
    }
}

pub(super) fn explain_sent(
    ev: &RstEvent,
    reasons: &std::collections::HashMap<u32, String>,
    words: Sentences,
    r: &mut Report,
) {
    if ev.facts & FACT_NETFILTER != 0 {
        netfilter::explain_netfilter(ev, words, r);
        return;
    }
    r.origin = Some(Origin::Tcp);
    let reported = (ev.reason != REASON_NONE).then(|| match reasons.get(&ev.reason) {
        Some(name) => KernelReason::from_name(name),
        None => KernelReason::Unknown(format!("UNKNOWN({})", ev.reason)),
    });
    r.kernel_reason = reported.clone();
    let prev = TcpState::decode(ev.prev_state);
    let mut packet = ev.facts & FACT_PACKET != 0;
    let mut flags = ev.tcp_flags;
    // Seen on transmit (before 6.10) without the segment it answers: what the RST itself says
    // of it (tcp_v4_send_reset(): an RST|ACK answers a segment without ACK, in practice a SYN;
    // a bare RST one with ACK).
    let guessed = ev.facts & FACT_XMIT != 0 && !packet;
    if guessed {
        packet = true;
        flags = if ev.tcp_flags & ACK != 0 { SYN } else { ACK };
    }
    // For aborts the tracepoint says CLOSE; the state the connection was in comes from the
    // preceding inet_sock_set_state X -> CLOSE transition.
    if r.state == Some(TcpState::Close) && prev.is_some() {
        r.state = prev;
    }
    // Without a kernel reason (before 6.10), infer it from what the kernel side saw.
    let inferred = reported.is_none();
    let key = if inferred {
        r.inferred = true;
        infer::infer_reason(ev, prev)
    } else {
        reported.clone()
    };
    let s = Sent {
        ev,
        words,
        reported,
        key,
        inferred,
        prev,
        packet,
        guessed,
        flags,
        tcp_sock: ev.facts & FACT_TCP_SOCK != 0,
        state_name: r
            .state
            .map(TcpState::name)
            .unwrap_or_else(|| "no socket".into()),
        proc_: who(r),
        incoming: tcp_flags_names(flags),
    };
    // Every reset that answers a segment says which one (the rules may add details after).
    s.push_incoming(r);
    apply_rule(&s, r);
    if guessed {
        r.explanation.push_str(
            " (the segment it answers was not seen; its flags are inferred from the RST)",
        );
    }
    if r.inferred {
        r.explanation
            .push_str(" (inferred: this kernel reports no reset reason)");
    }
}

/// The rule for the reason, in order: the guards on the listener and SYN_SENT rules pick the
/// case before the general rule for the same reason.
fn apply_rule(s: &Sent, r: &mut Report) {
    use KernelReason as K;
    let listen = r.state == Some(TcpState::Listen);
    let backlog = s.ev.facts & FACT_BACKLOG != 0;
    let rule: fn(&Sent, &mut Report) = match &s.key {
        Some(K::NoSocket) => no_socket,
        Some(K::TimewaitSocket) => time_wait_segment,
        Some(k @ (K::Flags | K::InvalidSyn))
            if listen
                && ((*k == K::InvalidSyn && !backlog)
                    || (backlog && s.ev.ack_backlog > s.ev.max_ack_backlog)) =>
        {
            accept_queue_overflow
        }
        Some(K::Flags) if listen => unexpected_ack_on_listener,
        Some(K::InvalidAckSequence) if s.inferred && r.state == Some(TcpState::SynSent) => {
            invalid_ack_in_syn_sent
        }
        Some(K::InvalidAckSequence | K::TooOldAck | K::AckUnsentData | K::OldAck) => invalid_ack,
        Some(K::Rfc7323Paws) => paws_reject,
        Some(K::AbortOnClose) => close_with_unread_data,
        Some(K::State | K::DisconnectWithData) if s.ev.state != TCP_CLOSE_RAW => killed,
        Some(K::State | K::DisconnectWithData) => closed_or_disconnected,
        Some(K::AbortOnData) => abort_on_data,
        Some(K::AbortOnLinger) => abort_on_linger,
        Some(K::AbortOnMemory) => orphan_limit,
        Some(K::KeepaliveTimeout) => keepalive_timeout,
        Some(K::Flags | K::InvalidSyn | K::Unknown(_)) | None => other,
    };
    rule(s, r);
}

/// Bytes the application left unread: `rcv_nxt - copied_seq` counts a received FIN as one.
pub(super) fn unread_data(ev: &RstEvent, prev: Option<TcpState>) -> u32 {
    let fin = u32::from(matches!(
        prev,
        Some(TcpState::CloseWait | TcpState::LastAck | TcpState::Closing | TcpState::TimeWait)
    ));
    ev.unread.saturating_sub(fin)
}
