//! The events of the two reset tracepoints: a reset TCP sends, a reset a socket receives.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, programs::tracing::StackIdContext};
use rst_trace_common::{
    ATTR_OWNER_CURRENT, FACT_BACKLOG, FACT_LISTENER_CLOSING, FACT_ORPHAN, FACT_PACKET,
    FACT_RST_TTL, FACT_STACKS, FILTER_NO_RECEIVED, KIND_RECEIVED, KIND_SENT, REASON_NONE, RstEvent,
    TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, TCP_NEW_SYN_RECV, TCP_RST, TCP_SYN_SENT, TCP_TIME_WAIT,
};

use crate::{
    deliver::{claim, deliver, scratch_event, unclaim, wanted},
    headers::{Segment, read_packet},
    maps::{
        CLOSING_LISTENERS, CUR_SEG, LAST_LISTENER_CLOSE, LAST_TCP_RST, SLOT_RECV, SLOT_SEND, Window,
    },
    owners::{fill_current_task, owner_from_map},
    read::kread,
    sock::{
        cookie_or_sock, read_idle, read_tcp_sock, skb_netns, skc, sock_dead, sock_endpoints,
        sock_netns, sock_window,
    },
    stacks,
    timewait::take_timewait,
};

/// How long after a listener's close() the resets of its unaccepted children may come: they are
/// sent from inside that same close() (inet_csk_listen_stop() -> tcp_disconnect() of each
/// child), microseconds apart; a second leaves room for a long accept queue on an emulated or
/// overloaded machine, and the thread and port must match as well.
const LISTENER_CLOSE_NS: u64 = 1_000_000_000;

/// A reset TCP sends: `sk` may be 0 (no socket: closed port), `skb` is 0 for an active reset
/// (tcp_send_active_reset(): close, disconnect, abort, keepalive timeout).
#[inline(always)]
pub fn on_send_reset<C: StackIdContext>(ctx: &C, sk: u64, skb: u64, reason: u32, cookie: u64) {
    if let Some(busy) = claim(SLOT_SEND) {
        send_reset_event(ctx, sk, skb, reason, cookie);
        unclaim(busy);
    }
}

#[inline(always)]
fn send_reset_event<C: StackIdContext>(ctx: &C, sk: u64, skb: u64, reason: u32, cookie: u64) {
    let Some(ev) = scratch_event(SLOT_SEND) else {
        return;
    };
    ev.kind = KIND_SENT;
    ev.skaddr = sk;
    ev.skbaddr = skb;
    ev.reason = reason;
    let Some(w) = sock_window(SLOT_SEND, sk) else {
        return;
    };
    // As the tracepoint reports it: 0 without a socket.
    let state = skc::<u8>(w, conf!(sk_state));
    ev.state = state;
    if skb != 0 {
        // A reply to an incoming segment (tcp_v4_send_reset / tcp_v6_send_reset, softirq): for
        // a LISTEN or absent socket the packet is the only place the real endpoints are.
        read_packet(SLOT_SEND, skb, ev);
        // Announced before it is transmitted: net_dev_queue must not take it for netfilter's.
        if let Some(last) = LAST_TCP_RST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot.
            unsafe {
                *last = [
                    ev.mono_ns,
                    (u64::from(ev.local_port) << 16) | u64::from(ev.remote_port),
                    skb,
                ]
            };
        }
    }
    if ev.facts & FACT_PACKET == 0 && sk != 0 {
        sock_endpoints(w, sk, ev);
    }
    ev.netns = if sk != 0 {
        sock_netns(w)
    } else {
        skb_netns(skb)
    };
    ev.cookie = cookie_or_sock(cookie, w);
    if state == TCP_TIME_WAIT {
        // A mini-socket answering a segment (6.10+, where its reset has this tracepoint): no
        // process ever owned it; the one that closed the connection was noted by flow.
        take_timewait(ev);
    } else {
        owner_from_map(sk, ev);
    }
    if sk != 0 {
        socket_facts(w, sk, state, ev);
    }
    if skb == 0 && sk != 0 && state == TCP_CLOSE {
        closed_by_current(ev);
    }
    if wanted(ev) {
        // Only for an event that goes to userspace: it deletes the ids it reads.
        if ev.attribution == ATTR_OWNER_CURRENT {
            // The call that aborted the connection (close(), shutdown() then close(), exit,
            // connect(AF_UNSPEC)): its stacks are the current task's.
            if let Some(ids) = stacks::capture(ctx) {
                ev.stacks = ids;
                ev.facts |= FACT_STACKS;
            }
        }
        deliver(SLOT_SEND, ev);
    }
}

/// What the sending socket's kind tells: a listener's accept queue, a full socket's sequence
/// numbers and linger settings.
#[inline(always)]
fn socket_facts(w: &Window, sk: u64, state: u8, ev: &mut RstEvent) {
    if state == TCP_LISTEN {
        // Listener facts: a full accept queue explains INVALID_SYN / TCP_FLAGS resets.
        if let (Some(q), Some(max)) = (
            kread::<u32>(sk, conf!(sk_ack_backlog)),
            kread::<u32>(sk, conf!(sk_max_ack_backlog)),
        ) {
            ev.ack_backlog = q;
            ev.max_ack_backlog = max;
            ev.facts |= FACT_BACKLOG;
        }
    } else if state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV {
        // A full tcp_sock (TIME_WAIT and request sockets are mini-sockets without these fields).
        read_tcp_sock(w, sk, ev);
    }
}

/// tcp_send_active_reset() on a socket moved to CLOSE right before the reset: tcp_close(),
/// tcp_disconnect() or process exit, all in the owner's own system call (the keepalive timer's
/// reset leaves the state ESTABLISHED). The current task is the one that acted.
#[inline(always)]
fn closed_by_current(ev: &mut RstEvent) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let recent = LAST_LISTENER_CLOSE
        .get(0)
        .is_some_and(|&t| t != 0 && ev.mono_ns.wrapping_sub(t) < LISTENER_CLOSE_NS);
    // SAFETY: value copied out at once.
    if recent
        && let Some(l) = unsafe { CLOSING_LISTENERS.get(&tid) }
        && l.port == ev.local_port
        && ev.mono_ns.wrapping_sub(l.mono_ns) < LISTENER_CLOSE_NS
    {
        ev.facts |= FACT_LISTENER_CLOSING;
    }
    fill_current_task(&mut ev.owner);
    ev.attribution = ATTR_OWNER_CURRENT;
}

/// A reset received on socket `sk` (tcp_reset(), before the socket is moved to CLOSE).
#[inline(always)]
pub fn on_receive_reset(sk: u64, cookie: u64) {
    if conf!(filters) & FILTER_NO_RECEIVED != 0 {
        return;
    }
    if let Some(busy) = claim(SLOT_RECV) {
        receive_reset_event(sk, cookie);
        unclaim(busy);
    }
}

#[inline(always)]
fn receive_reset_event(sk: u64, cookie: u64) {
    let Some(ev) = scratch_event(SLOT_RECV) else {
        return;
    };
    ev.kind = KIND_RECEIVED;
    ev.reason = REASON_NONE;
    ev.skaddr = sk;
    let Some(w) = sock_window(SLOT_RECV, sk) else {
        return;
    };
    sock_endpoints(w, sk, ev);
    // tcp_reset() fires the tracepoint before it moves the socket to CLOSE: this is the state
    // the connection was in when the RST arrived.
    ev.state = skc::<u8>(w, conf!(sk_state));
    ev.cookie = cookie_or_sock(cookie, w);
    ev.netns = sock_netns(w);
    // Idle times explain resets of established connections; a refused connection attempt
    // (SYN_SENT) has none worth reading.
    if ev.state != TCP_SYN_SENT {
        read_idle(sk, ev);
    }
    owner_from_map(sk, ev);
    if sock_dead(w, sk) {
        ev.facts |= FACT_ORPHAN;
    }
    // An established socket handles the RST in tcp_rcv_established(), whose tcp_probe noted
    // the segment just before: its TTL is the RST's. (Other states never pass there, so a stale
    // note for the socket is never read.)
    if ev.state == TCP_ESTABLISHED
        && let Some(cur) = CUR_SEG.get(0)
        && cur[0] == sk
        && let Some((ttl, flags)) = Segment::received(SLOT_RECV, cur[1]).and_then(|s| s.ttl_flags())
        && flags & TCP_RST != 0
    {
        ev.ttl = ttl;
        ev.facts |= FACT_RST_TTL;
    }
    if wanted(ev) {
        deliver(SLOT_RECV, ev);
    }
}
