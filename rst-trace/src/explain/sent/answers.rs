//! The rules for a sent reset that answers a segment that arrived: for no socket, a closed one,
//! a listener, or one whose checks the segment failed.

use rst_trace_common::FACT_BACKLOG;

use super::Sent;
use crate::explain::{
    model::{Detail, DetailValue, Ep, Report, cond},
    tcp::{ACK, SYN},
};

pub(super) fn no_socket(s: &Sent, r: &mut Report) {
    let (local, remote, incoming, flags) = (Ep(r.local), Ep(r.remote), &s.incoming, s.flags);
    r.state = None;
    r.socket_cookie = None;
    r.no_process_why = Some("no socket");
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

/// Only a TIME_WAIT mini-socket in its FIN_WAIT2 sub-state answers with RST (new data, or a
/// SYN in the window: tcp_timewait_state_process(); the true TIME_WAIT sub-state answers with
/// ACKs), so this side had closed and the peer had not: the sentence says so, as `ss` and
/// /proc/net/tcp show that mini-socket as FIN-WAIT-2. The process is the one that closed the
/// connection, where the kernel side knew the full socket's owner (`take_timewait`).
pub(super) fn time_wait_segment(s: &Sent, r: &mut Report) {
    let (local, remote, incoming) = (Ep(r.local), Ep(r.remote), &s.incoming);
    r.condition = cond::TIME_WAIT_SEGMENT;
    r.no_process_why = Some("closed, in TIME_WAIT");
    let closer = if r.process.is_some() {
        s.proc_.as_str()
    } else {
        "the process"
    };
    // tcp_reset(): the old connection's peer is in CLOSE_WAIT (it had this side's FIN); a SYN
    // in the window is a new attempt on the same ports, in SYN_SENT.
    let peer_sees = if s.flags & SYN != 0 {
        "the connecting peer sees ECONNREFUSED"
    } else {
        "the peer, which had this side's FIN (CLOSE_WAIT), sees EPIPE on its next write and the end of the stream on a read"
    };
    say!(
        s.words,
        r,
        "a segment ({incoming}) from {remote} hit a connection {local} had already closed: a TIME_WAIT mini-socket in its FIN_WAIT2 sub-state (ss: FIN-WAIT-2), left when {closer} closed it while the peer had not closed its side (as when a server's keep-alive timeout closes an idle connection and the client then sends a request on it), so the kernel answered with RST; {peer_sees}"
    );
}

pub(super) fn accept_queue_overflow(s: &Sent, r: &mut Report) {
    let (local, remote, proc_, ev) = (Ep(r.local), Ep(r.remote), &s.proc_, s.ev);
    r.condition = cond::ACCEPT_QUEUE_OVERFLOW;
    if ev.facts & FACT_BACKLOG != 0 {
        r.detail.push((
            Detail::AcceptQueue,
            DetailValue::Num(u64::from(ev.ack_backlog)),
        ));
        r.detail.push((
            Detail::AcceptQueueMax,
            DetailValue::Num(u64::from(ev.max_ack_backlog)),
        ));
    }
    say!(
        s.words,
        r,
        "{proc_}'s accept queue on {local} was full (it is not calling accept() fast enough) and net.ipv4.tcp_abort_on_overflow=1, so the kernel reset the connection from {remote}"
    );
}

pub(super) fn unexpected_ack_on_listener(s: &Sent, r: &mut Report) {
    let (local, remote, proc_, incoming) = (Ep(r.local), Ep(r.remote), &s.proc_, &s.incoming);
    r.condition = cond::UNEXPECTED_ACK_ON_LISTENER;
    say!(
        s.words,
        r,
        "an ACK ({incoming}) from {remote} reached listener {proc_} on {local} for a connection it does not have (handshake state lost, or a stray segment), so the kernel answered with RST"
    );
}

pub(super) fn invalid_ack_in_syn_sent(s: &Sent, r: &mut Report) {
    let (local, remote) = (Ep(r.local), Ep(r.remote));
    // tcp_rcv_synsent_state_process() resets both a wrong ACK number and a TSecr
    // failing PAWS through reset_and_undo; only the 6.10+ reason tells them apart.
    r.condition = cond::INVALID_ACK;
    say!(
        s.words,
        r,
        "a SYN-ACK from {remote} failed {local}'s checks in SYN_SENT: it acknowledged a sequence number never sent, or its timestamp failed the PAWS check (this kernel does not say which), so the kernel answered with RST"
    );
}

pub(super) fn invalid_ack(s: &Sent, r: &mut Report) {
    let (local, remote, state_name) = (Ep(r.local), Ep(r.remote), &s.state_name);
    r.condition = cond::INVALID_ACK;
    say!(
        s.words,
        r,
        "a segment from {remote} acknowledged data {local} never sent or long acknowledged (state {state_name}), so the kernel answered with RST"
    );
}

pub(super) fn paws_reject(s: &Sent, r: &mut Report) {
    let (remote, state_name) = (Ep(r.remote), &s.state_name);
    r.condition = cond::PAWS_REJECT;
    say!(
        s.words,
        r,
        "a segment from {remote} failed the PAWS timestamp check (RFC 7323) in state {state_name}, so the kernel answered with RST"
    );
}

pub(super) fn other(s: &Sent, r: &mut Report) {
    let (remote, state_name) = (Ep(r.remote), &s.state_name);
    r.condition = cond::OTHER;
    let why = s.reason_words();
    say!(
        s.words,
        r,
        "the kernel sent RST to {remote} ({why}, state {state_name})"
    );
}
