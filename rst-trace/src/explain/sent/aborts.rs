//! The rules for a sent reset that aborts a connection of this host's: a close or disconnect by
//! the application, or the kernel giving up on it (SOCK_DESTROY, orphans, keepalive).

use rst_trace_common::{FACT_LINGER_ZERO, FACT_LISTENER_CLOSING};

use super::{Sent, unread_data};
use crate::explain::{
    model::{Detail, DetailValue, Ep, KernelReason, Report, cond},
    tcp::TcpState,
};

pub(super) fn close_with_unread_data(s: &Sent, r: &mut Report) {
    let proc_ = &s.proc_;
    r.condition = cond::CLOSE_WITH_UNREAD_DATA;
    if s.tcp_sock {
        let unread = unread_data(s.ev, s.prev);
        r.detail
            .push((Detail::UnreadBytes, DetailValue::Num(u64::from(unread))));
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

pub(super) fn killed(s: &Sent, r: &mut Report) {
    let (local, remote, state_name, reason) =
        (Ep(r.local), Ep(r.remote), &s.state_name, s.reason_words());
    // tcp_abort() (ss -K, SOCK_DESTROY) also says TCP_STATE, but without moving the
    // socket to CLOSE first: not a close() or disconnect() of the application's.
    r.condition = cond::OTHER;
    say!(
        s.words,
        r,
        "the kernel aborted the connection {local} > {remote} in state {state_name} ({reason}; e.g. `ss -K` or another SOCK_DESTROY)"
    );
}

pub(super) fn closed_or_disconnected(s: &Sent, r: &mut Report) {
    let (local, remote, proc_, ev, prev) = (Ep(r.local), Ep(r.remote), &s.proc_, s.ev, s.prev);
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
            .push((Detail::UnsentBytes, DetailValue::Num(u64::from(unsent))));
        say!(
            s.words,
            r,
            "{proc_} aborted the connection to {remote} with {unsent} bytes not yet acknowledged by the peer, so the kernel sent RST"
        );
    } else if ev.facts & FACT_LINGER_ZERO != 0 {
        r.condition = cond::LINGER_ABORT;
        r.detail
            .push((Detail::UnsentBytes, DetailValue::Num(u64::from(unsent))));
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

pub(super) fn abort_on_data(s: &Sent, r: &mut Report) {
    let (remote, proc_) = (Ep(r.remote), &s.proc_);
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

pub(super) fn abort_on_linger(s: &Sent, r: &mut Report) {
    let proc_ = &s.proc_;
    r.condition = cond::FIN_WAIT2_ABORT;
    say!(
        s.words,
        r,
        "{proc_} closed the socket with TCP_LINGER2 < 0, so the kernel aborted it with RST instead of waiting in FIN_WAIT2"
    );
}

pub(super) fn orphan_limit(s: &Sent, r: &mut Report) {
    let (local, remote) = (Ep(r.local), Ep(r.remote));
    r.condition = cond::ORPHAN_LIMIT;
    say!(
        s.words,
        r,
        "too many orphaned sockets or TCP memory pressure: the kernel aborted the closed connection {local} > {remote} with RST (see net.ipv4.tcp_max_orphans, tcp_mem)"
    );
}

pub(super) fn keepalive_timeout(s: &Sent, r: &mut Report) {
    let (remote, proc_) = (Ep(r.remote), &s.proc_);
    r.condition = cond::KEEPALIVE_TIMEOUT;
    say!(
        s.words,
        r,
        "keepalive probes to {remote} went unanswered, so the kernel gave up on {proc_}'s connection and sent RST; the application sees ETIMEDOUT"
    );
}
