//! Resets TCP on this host sent, by kernel reason (reported, or inferred before 6.10).

use rst_trace_common::{
    FACT_BACKLOG, FACT_LINGER_ZERO, FACT_LISTENER_CLOSING, FACT_NETFILTER, FACT_PACKET,
    FACT_TCP_SOCK, FACT_XMIT, REASON_NONE, RstEvent,
};

use super::{
    Sentences, infer,
    model::{DetailValue, KernelReason, Origin, Report, cond},
    netfilter,
    tcp::{ACK, SYN, TCP_CLOSE_RAW, TcpState, tcp_flags_names},
    who,
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
    /// The kernel's reason name, "" if it reported none.
    fn reason_str(&self) -> &str {
        self.reported.as_deref().unwrap_or("")
    }

    /// The segment's flags as a detail, when the segment itself was seen.
    fn push_incoming(&self, r: &mut Report) {
        if self.packet && !self.guessed {
            r.detail
                .push(("incoming_flags", DetailValue::Text(self.incoming.clone())));
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

fn no_socket(s: &Sent, r: &mut Report) {
    let (local, remote, incoming, flags) = (r.local, r.remote, &s.incoming, s.flags);
    r.state = None;
    r.socket_cookie = None;
    r.no_process_why = Some("no socket");
    s.push_incoming(r);
    if s.packet && flags & SYN != 0 && flags & ACK == 0 {
        r.condition = cond::PORT_NOT_LISTENING;
        say!(
            s.words,
            r,
            "nothing listens on {local}: the kernel refused the connection attempt (SYN) from {remote} with RST; the client sees ECONNREFUSED"
        );
    } else if s.packet && flags & SYN != 0 {
        r.condition = cond::STALE_SYNACK;
        say!(
            s.words,
            r,
            "a SYN-ACK from {remote} arrived for a connection attempt that no longer exists on {local} (the client gave up, e.g. a connect timeout), so the kernel answered with RST"
        );
    } else {
        r.condition = cond::NO_CONNECTION;
        say!(
            s.words,
            r,
            "a segment ({incoming}) from {remote} arrived for a connection {local} no longer has (closed, or state lost), so the kernel answered with RST; the peer sees ECONNRESET"
        );
    }
}

fn time_wait_segment(s: &Sent, r: &mut Report) {
    let (local, remote, incoming) = (r.local, r.remote, &s.incoming);
    r.condition = cond::TIME_WAIT_SEGMENT;
    r.no_process_why = Some("closed, in TIME_WAIT");
    s.push_incoming(r);
    say!(
        s.words,
        r,
        "a segment ({incoming}) from {remote} hit a connection already closed and waiting in TIME_WAIT on {local}, so the kernel answered with RST"
    );
}

fn accept_queue_overflow(s: &Sent, r: &mut Report) {
    let (local, remote, proc_, ev) = (r.local, r.remote, &s.proc_, s.ev);
    r.condition = cond::ACCEPT_QUEUE_OVERFLOW;
    if ev.facts & FACT_BACKLOG != 0 {
        r.detail
            .push(("accept_queue", DetailValue::Num(u64::from(ev.ack_backlog))));
        r.detail.push((
            "accept_queue_max",
            DetailValue::Num(u64::from(ev.max_ack_backlog)),
        ));
    }
    say!(
        s.words,
        r,
        "{proc_}'s accept queue on {local} was full (it is not calling accept() fast enough) and net.ipv4.tcp_abort_on_overflow=1, so the kernel reset the connection from {remote}"
    );
}

fn unexpected_ack_on_listener(s: &Sent, r: &mut Report) {
    let (local, remote, proc_, incoming) = (r.local, r.remote, &s.proc_, &s.incoming);
    r.condition = cond::UNEXPECTED_ACK_ON_LISTENER;
    say!(
        s.words,
        r,
        "an ACK ({incoming}) from {remote} reached listener {proc_} on {local} for a connection it does not have (handshake state lost, or a stray segment), so the kernel answered with RST"
    );
}

fn invalid_ack_in_syn_sent(s: &Sent, r: &mut Report) {
    let (local, remote) = (r.local, r.remote);
    // tcp_rcv_synsent_state_process() resets both a wrong ACK number and a TSecr
    // failing PAWS through reset_and_undo; only the 6.10+ reason tells them apart.
    r.condition = cond::INVALID_ACK;
    say!(
        s.words,
        r,
        "a SYN-ACK from {remote} failed {local}'s checks in SYN_SENT: it acknowledged a sequence number never sent, or its timestamp failed the PAWS check (this kernel does not say which), so the kernel answered with RST"
    );
}

fn invalid_ack(s: &Sent, r: &mut Report) {
    let (local, remote, state_name) = (r.local, r.remote, &s.state_name);
    r.condition = cond::INVALID_ACK;
    say!(
        s.words,
        r,
        "a segment from {remote} acknowledged data {local} never sent or long acknowledged (state {state_name}), so the kernel answered with RST"
    );
}

fn paws_reject(s: &Sent, r: &mut Report) {
    let (remote, state_name) = (r.remote, &s.state_name);
    r.condition = cond::PAWS_REJECT;
    say!(
        s.words,
        r,
        "a segment from {remote} failed the PAWS timestamp check (RFC 7323) in state {state_name}, so the kernel answered with RST"
    );
}

fn close_with_unread_data(s: &Sent, r: &mut Report) {
    let proc_ = &s.proc_;
    r.condition = cond::CLOSE_WITH_UNREAD_DATA;
    if s.tcp_sock {
        let unread = unread_data(s.ev, s.prev);
        r.detail
            .push(("unread_bytes", DetailValue::Num(u64::from(unread))));
        say!(
            s.words,
            r,
            "{proc_} closed the socket with {unread} unread bytes in its receive queue, so the kernel aborted the connection with RST instead of FIN"
        );
    } else {
        say!(
            s.words,
            r,
            "{proc_} closed the socket with unread data in its receive queue, so the kernel aborted the connection with RST instead of FIN"
        );
    }
}

fn killed(s: &Sent, r: &mut Report) {
    let (local, remote, state_name, reason_str) =
        (r.local, r.remote, &s.state_name, s.reason_str());
    // tcp_abort() (ss -K, SOCK_DESTROY) also says TCP_STATE, but without moving the
    // socket to CLOSE first: not a close() or disconnect() of the application's.
    r.condition = cond::OTHER;
    say!(
        s.words,
        r,
        "the kernel aborted the connection {local} > {remote} in state {state_name} (reason {reason_str}; e.g. `ss -K` or another SOCK_DESTROY)"
    );
}

fn closed_or_disconnected(s: &Sent, r: &mut Report) {
    let (local, remote, proc_, ev, prev) = (r.local, r.remote, &s.proc_, s.ev, s.prev);
    // write_seq counts a FIN that is queued or in flight: it is not data.
    let fin = u32::from(matches!(
        prev,
        Some(TcpState::FinWait1 | TcpState::Closing | TcpState::LastAck)
    ));
    let unsent = ev.unsent.saturating_sub(fin);
    if ev.facts & FACT_LISTENER_CLOSING != 0 || prev == Some(TcpState::Listen) {
        r.condition = cond::LISTENER_CLOSED;
        say!(
            s.words,
            r,
            "{proc_} closed its listening socket on {local} while a connection from {remote} was not yet accepted, so the kernel reset that connection"
        );
    } else if s.key == Some(KernelReason::DisconnectWithData) {
        r.condition = cond::DISCONNECT_WITH_UNSENT_DATA;
        r.detail
            .push(("unsent_bytes", DetailValue::Num(u64::from(unsent))));
        say!(
            s.words,
            r,
            "{proc_} aborted the connection to {remote} with {unsent} bytes not yet acknowledged by the peer, so the kernel sent RST"
        );
    } else if ev.facts & FACT_LINGER_ZERO != 0 {
        r.condition = cond::LINGER_ABORT;
        r.detail
            .push(("unsent_bytes", DetailValue::Num(u64::from(unsent))));
        say!(
            s.words,
            r,
            "{proc_} closed the socket with SO_LINGER set to 0 seconds: an abortive close that discards {unsent} unsent bytes and sends RST to {remote}"
        );
    } else {
        r.condition = cond::DISCONNECT;
        say!(
            s.words,
            r,
            "{proc_} disconnected the socket (connect() with AF_UNSPEC) while connected to {remote}, which aborts the connection with RST"
        );
    }
}

fn abort_on_data(s: &Sent, r: &mut Report) {
    let (remote, proc_) = (r.remote, &s.proc_);
    if s.tcp_sock && s.ev.linger2 < 0 {
        r.condition = cond::FIN_WAIT2_ABORT;
        say!(
            s.words,
            r,
            "{proc_} closed the socket with TCP_LINGER2 < 0, so when {remote} answered the kernel aborted it with RST instead of waiting in FIN_WAIT2"
        );
    } else {
        r.condition = cond::DATA_AFTER_CLOSE;
        say!(
            s.words,
            r,
            "data arrived from {remote} after {proc_} had closed the socket (or shut down reading), so the kernel answered with RST (RFC 1122)"
        );
    }
}

fn abort_on_linger(s: &Sent, r: &mut Report) {
    let proc_ = &s.proc_;
    r.condition = cond::FIN_WAIT2_ABORT;
    say!(
        s.words,
        r,
        "{proc_} closed the socket with TCP_LINGER2 < 0, so the kernel aborted it with RST instead of waiting in FIN_WAIT2"
    );
}

fn orphan_limit(s: &Sent, r: &mut Report) {
    let (local, remote) = (r.local, r.remote);
    r.condition = cond::ORPHAN_LIMIT;
    say!(
        s.words,
        r,
        "too many orphaned sockets or TCP memory pressure: the kernel aborted the closed connection {local} > {remote} with RST (see net.ipv4.tcp_max_orphans, tcp_mem)"
    );
}

fn keepalive_timeout(s: &Sent, r: &mut Report) {
    let (remote, proc_) = (r.remote, &s.proc_);
    r.condition = cond::KEEPALIVE_TIMEOUT;
    say!(
        s.words,
        r,
        "keepalive probes to {remote} went unanswered, so the kernel gave up on {proc_}'s connection and sent RST; the application sees ETIMEDOUT"
    );
}

fn other(s: &Sent, r: &mut Report) {
    let (remote, state_name) = (r.remote, &s.state_name);
    r.condition = cond::OTHER;
    let why = s.reported.as_deref().unwrap_or("no reason reported");
    say!(
        s.words,
        r,
        "the kernel sent RST to {remote} (reason {why}, state {state_name})"
    );
}

/// Bytes the application left unread: `rcv_nxt - copied_seq` counts a received FIN as one.
pub(super) fn unread_data(ev: &RstEvent, prev: Option<TcpState>) -> u32 {
    let fin = u32::from(matches!(
        prev,
        Some(TcpState::CloseWait | TcpState::LastAck | TcpState::Closing | TcpState::TimeWait)
    ));
    ev.unread.saturating_sub(fin)
}
