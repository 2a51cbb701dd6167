//! Kernels before 6.10 give no reset reason: the reason the same facts would carry on a newer
//! kernel, inferred from what the eBPF side saw.

use rst_trace_common::{FACT_LISTENER_CLOSING, FACT_TCP_SOCK, RstEvent};

use super::{
    model::KernelReason,
    sent::unread_data,
    tcp::{ACK, SYN, TcpState},
};

/// Kernels before 6.10 give no reason: infer the kernel reason the same facts would carry on a
/// newer kernel, following the decisions of tcp_close(), tcp_disconnect(), tcp_keepalive_timer()
/// and tcp_rcv_state_process(). `None` where no rule applies (the reset is `other`).
pub(super) fn infer_reason(ev: &RstEvent, prev: Option<TcpState>) -> Option<KernelReason> {
    let state = TcpState::decode(ev.state);
    if ev.skbaddr == 0 {
        // tcp_send_active_reset(): an abort decided on this host.
        return match state {
            Some(TcpState::Close) => Some(active_close_reason(ev, prev)),
            // The keepalive timer resets without changing the state first.
            Some(TcpState::Established) => Some(KernelReason::KeepaliveTimeout),
            // Orphans aborted by tcp_out_of_resources() (too many orphans, memory pressure).
            Some(_) => Some(KernelReason::AbortOnMemory),
            None => None,
        };
    }
    match state {
        Some(TcpState::TimeWait) => Some(KernelReason::TimewaitSocket),
        Some(TcpState::Listen) if ev.tcp_flags & SYN == 0 && ev.tcp_flags & ACK != 0 => {
            Some(KernelReason::Flags)
        }
        Some(TcpState::SynSent) => Some(KernelReason::InvalidAckSequence),
        Some(TcpState::Close) => Some(KernelReason::AbortOnData),
        None => Some(KernelReason::NoSocket),
        _ => None,
    }
}

/// An abort of a socket the application closed (or disconnected): tcp_close() and
/// tcp_disconnect() pick the reason from what the socket still held.
fn active_close_reason(ev: &RstEvent, prev: Option<TcpState>) -> KernelReason {
    let tcp_sock = ev.facts & FACT_TCP_SOCK != 0;
    if ev.facts & FACT_LISTENER_CLOSING != 0 || prev == Some(TcpState::Listen) {
        KernelReason::State
    } else if tcp_sock && unread_data(ev, prev) > 0 {
        KernelReason::AbortOnClose
    } else if tcp_sock
        && ev.unsent > 0
        && matches!(prev, Some(TcpState::LastAck | TcpState::Closing))
    {
        KernelReason::DisconnectWithData
    } else if tcp_sock && ev.linger2 < 0 && prev == Some(TcpState::FinWait2) {
        KernelReason::AbortOnLinger
    } else {
        KernelReason::State
    }
}
