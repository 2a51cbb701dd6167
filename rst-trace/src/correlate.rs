//! Correlation between events: received resets are held a moment, linked to the sent reset
//! that caused them when both ends are on this host (the link history), and dropped when they
//! are this host's own abort (the self-abort of data_after_close and fin_wait2_abort).

use std::{collections::VecDeque, net::SocketAddr};

use rst_trace_common::{RstEvent, self_abort_state};

use crate::{
    explain::{self, Condition, Direction, Linked, Report, Sentences, cond},
    hashing::{FastMap, take_if},
    kernel::KernelInfo,
};

/// What userspace remembers between events, bounded.
#[derive(Default)]
pub struct History {
    /// Recent sent resets by (local, remote), to link a received reset to its local sender
    /// (loopback, another namespace); the queue gives the age order for expiry. O(1) per event,
    /// which matters in a reset storm.
    by_tuple: FastMap<(SocketAddr, SocketAddr), Linked>,
    order: VecDeque<(SocketAddr, SocketAddr, u64)>,
}

/// How long a sent reset stays linkable to a received one.
const LINK_WINDOW_NS: u64 = 2_000_000_000;
/// At most this many are kept: a received reset is held [`HOLD_RECEIVED_NS`] for its sender
/// (pipeline.rs releases held ones every 1024 records while it drains), and 16384 sent resets are
/// 65 ms of a 250k/s storm; each costs ~200 bytes.
const LINK_MAX: usize = 16384;

impl History {
    /// Explains `ev` with its link, the one place the link history is read and written: a
    /// received reset gets the sent reset on this host it answers, a sent reset is remembered
    /// for the received ones to come.
    pub fn explain_linked(
        &mut self,
        ev: &RstEvent,
        info: &KernelInfo,
        words: Sentences,
    ) -> Option<Report> {
        let linked = (ev.kind == rst_trace_common::KIND_RECEIVED)
            .then(|| {
                let (local, remote) = explain::endpoints(ev);
                self.find_sender(local, remote, ev.mono_ns)
            })
            .flatten();
        let r = explain::explain(ev, info, words, linked)?;
        if r.direction == Direction::Sent {
            self.remember_sent(&r);
        }
        Some(r)
    }

    pub fn remember_sent(&mut self, r: &Report) {
        while let Some(&(l, rm, t)) = self.order.front() {
            if self.order.len() >= LINK_MAX || r.mono_ns.saturating_sub(t) > LINK_WINDOW_NS {
                self.order.pop_front();
                // Only if no newer reset on the same tuple replaced it.
                take_if(&mut self.by_tuple, (l, rm), |x| x.mono_ns == t);
            } else {
                break;
            }
        }
        self.order.push_back((r.local, r.remote, r.mono_ns));
        self.by_tuple.insert(
            (r.local, r.remote),
            Linked {
                condition: r.condition,
                process: r.process.clone(),
                mono_ns: r.mono_ns,
            },
        );
    }

    pub fn find_sender(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
        mono_ns: u64,
    ) -> Option<Linked> {
        self.by_tuple
            .get(&(remote, local))
            .filter(|s| mono_ns.abs_diff(s.mono_ns) <= LINK_WINDOW_NS)
            .cloned()
    }
}

/// Received resets are held this long before they are explained: on loopback and veth the
/// peer's `tcp_send_reset` fires *after* our `tcp_receive_reset` (the RST is delivered inside
/// the sender's transmit path), and a data_after_close reset fires `tcp_receive_reset` on the
/// sending socket just before its `tcp_send_reset`. Holding lets both be linked or suppressed.
/// The two fire microseconds apart on real hardware, but the CPU that sends can be preempted
/// between them (a vCPU of a busy or emulated host) while userspace reads the first: so 25 ms.
pub const HOLD_RECEIVED_NS: u64 = 25_000_000;

/// A received reset in a state where it may be this host's own abort ([`self_abort_state`]) is
/// held longer: if its socket's sent reset came too late, the host's own abort would be printed
/// as the peer's reset. A vCPU can stall longer than [`HOLD_RECEIVED_NS`] between the two
/// tracepoints (seen on the kernel matrix's emulated guests while the host was busy); the price
/// is that a genuine reset in those states is printed up to 250 ms later.
pub const HOLD_SELF_ABORT_NS: u64 = 250_000_000;

/// How long `ev` is held.
fn hold_ns(ev: &RstEvent) -> u64 {
    if self_abort_state(ev.state) {
        HOLD_SELF_ABORT_NS
    } else {
        HOLD_RECEIVED_NS
    }
}

/// Received resets waiting for the sent reset that may explain or cancel them, oldest first.
#[derive(Default)]
pub struct Held {
    pending: VecDeque<RstEvent>,
}

impl Held {
    pub fn hold(&mut self, ev: RstEvent) {
        self.pending.push_back(ev);
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The oldest held reset if it has been held long enough at `now_ns` (or at all, if
    /// `force`), taken out.
    pub fn next_due(&mut self, now_ns: u64, force: bool) -> Option<RstEvent> {
        let ev = self.pending.front()?;
        if !force && now_ns.saturating_sub(ev.mono_ns) < hold_ns(ev) {
            return None;
        }
        self.pending.pop_front()
    }

    /// Drops the held resets that are this host's own abort, given a sent reset `ev` explained
    /// as `condition`.
    pub fn drop_self_abort(&mut self, ev: &RstEvent, condition: Condition) {
        if ev.skbaddr != 0 && matches!(condition, cond::DATA_AFTER_CLOSE | cond::FIN_WAIT2_ABORT) {
            // tcp_rcv_state_process() calls tcp_reset() on the socket before sending the RST:
            // that tcp_receive_reset is this host's own abort, not a received reset.
            // Only in the states that abort happens in (a new socket at a recycled address
            // with a genuine reset must keep it): the same rule the kernel's counting follows
            // (`RstEvent::countable`).
            self.pending.retain(|p| {
                p.skaddr != ev.skaddr
                    || ev.mono_ns.abs_diff(p.mono_ns) > HOLD_SELF_ABORT_NS
                    || !self_abort_state(p.state)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use rst_trace_common::KIND_RECEIVED;

    use super::*;
    use crate::{explain::Direction, filter::tests_support::report};

    const MS: u64 = 1_000_000;

    /// A sent reset from local port `lport` to `rport` at `mono_ns`.
    fn sent(lport: u16, rport: u16, mono_ns: u64, condition: Condition) -> Report {
        let mut r = report(Some(10), "server", lport, rport, Direction::Sent);
        r.mono_ns = mono_ns;
        r.condition = condition;
        r
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Whether a reset received on `lport` from `rport` at `mono_ns` finds its sender.
    fn links(h: &History, lport: u16, rport: u16, mono_ns: u64) -> Option<Condition> {
        h.find_sender(addr(lport), addr(rport), mono_ns)
            .map(|l| l.condition)
    }

    #[test]
    fn links_the_mirrored_tuple_within_the_window_only() {
        let mut h = History::default();
        let t = 10 * LINK_WINDOW_NS;
        h.remember_sent(&sent(8888, 40000, t, cond::CLOSE_WITH_UNREAD_DATA));
        // The receiver's local end is the sender's remote one.
        assert_eq!(
            links(&h, 40000, 8888, t),
            Some(cond::CLOSE_WITH_UNREAD_DATA)
        );
        assert_eq!(links(&h, 8888, 40000, t), None);
        assert_eq!(links(&h, 40001, 8888, t), None);
        // Either side of the sent reset's time (the received one may have been seen first).
        assert!(links(&h, 40000, 8888, t - LINK_WINDOW_NS).is_some());
        assert!(links(&h, 40000, 8888, t + LINK_WINDOW_NS).is_some());
        assert!(links(&h, 40000, 8888, t + LINK_WINDOW_NS + 1).is_none());
        assert!(links(&h, 40000, 8888, t - LINK_WINDOW_NS - 1).is_none());
    }

    #[test]
    fn old_sent_resets_expire_but_a_newer_one_on_the_tuple_stays() {
        let mut h = History::default();
        h.remember_sent(&sent(1, 2, 0, cond::DISCONNECT));
        h.remember_sent(&sent(1, 2, LINK_WINDOW_NS, cond::LINGER_ABORT));
        // Expiring the first entry (older than the window) must not drop its replacement.
        h.remember_sent(&sent(3, 4, LINK_WINDOW_NS + 1, cond::DISCONNECT));
        assert_eq!(h.order.len(), 2);
        assert_eq!(
            links(&h, 2, 1, LINK_WINDOW_NS + 1),
            Some(cond::LINGER_ABORT)
        );
        // Both go once the window has passed for them too.
        h.remember_sent(&sent(5, 6, 3 * LINK_WINDOW_NS, cond::DISCONNECT));
        assert_eq!(h.order.len(), 1);
        assert_eq!(h.by_tuple.len(), 1);
        assert_eq!(links(&h, 2, 1, 2 * LINK_WINDOW_NS), None);
    }

    #[test]
    fn history_keeps_at_most_link_max_sent_resets() {
        let mut h = History::default();
        let n = LINK_MAX as u16 + 10;
        for p in 0..n {
            h.remember_sent(&sent(p, 9, u64::from(p), cond::DISCONNECT));
        }
        assert_eq!(h.order.len(), LINK_MAX);
        assert_eq!(h.by_tuple.len(), LINK_MAX);
        assert_eq!(links(&h, 9, 0, 0), None);
        assert_eq!(links(&h, 9, 9, 9), None);
        assert!(links(&h, 9, 10, 10).is_some());
        assert!(links(&h, 9, n - 1, u64::from(n)).is_some());
    }

    fn received(skaddr: u64, state: u8, mono_ns: u64) -> RstEvent {
        RstEvent {
            kind: KIND_RECEIVED,
            skaddr,
            state,
            mono_ns,
            ..Default::default()
        }
    }

    #[test]
    fn held_resets_wait_the_hold_time_in_order() {
        let mut held = Held::default();
        assert!(held.is_empty());
        held.hold(received(1, 1, 100 * MS));
        held.hold(received(2, 1, 101 * MS));
        assert!(
            held.next_due(100 * MS + HOLD_RECEIVED_NS - 1, false)
                .is_none()
        );
        let first = held.next_due(100 * MS + HOLD_RECEIVED_NS, false).unwrap();
        assert_eq!(first.skaddr, 1);
        assert!(held.next_due(100 * MS + HOLD_RECEIVED_NS, false).is_none());
        // One that may be this host's own abort waits for its sent reset longer, and those
        // behind it wait with it.
        const FIN_WAIT2: u8 = 5;
        held.hold(received(3, FIN_WAIT2, 200 * MS));
        held.hold(received(4, 1, 201 * MS));
        let second = held.next_due(200 * MS + HOLD_SELF_ABORT_NS - 1, false);
        assert_eq!(second.map(|e| e.skaddr), Some(2));
        assert!(
            held.next_due(200 * MS + HOLD_SELF_ABORT_NS - 1, false)
                .is_none()
        );
        let third = held.next_due(200 * MS + HOLD_SELF_ABORT_NS, false);
        assert_eq!(third.map(|e| e.skaddr), Some(3));
        held.hold(received(5, 1, 300 * MS));
        // At the end of the run, all of them.
        assert_eq!(held.next_due(0, true).unwrap().skaddr, 4);
        assert_eq!(held.next_due(0, true).unwrap().skaddr, 5);
        assert!(held.is_empty());
        assert!(held.next_due(u64::MAX, true).is_none());
    }

    #[test]
    fn self_abort_drops_only_the_aborting_sockets_own_reset() {
        const FIN_WAIT1: u8 = 4;
        const ESTABLISHED: u8 = 1;
        const CLOSE_WAIT: u8 = 8;
        let t = 100 * MS;
        let sender = RstEvent {
            kind: rst_trace_common::KIND_SENT,
            skaddr: 7,
            skbaddr: 1,
            mono_ns: t,
            ..Default::default()
        };
        let fill = |held: &mut Held| {
            held.hold(received(7, FIN_WAIT1, t - MS)); // its own abort: dropped
            held.hold(received(7, CLOSE_WAIT, t + HOLD_SELF_ABORT_NS)); // dropped, at the edge
            held.hold(received(7, ESTABLISHED, t)); // a recycled address's genuine reset
            held.hold(received(8, FIN_WAIT1, t)); // another socket
            held.hold(received(7, FIN_WAIT1, t - HOLD_SELF_ABORT_NS - 1)); // too far apart
        };
        let left = |held: &mut Held| {
            let mut v = Vec::new();
            while let Some(ev) = held.next_due(0, true) {
                v.push((ev.skaddr, ev.state, ev.mono_ns));
            }
            v
        };
        for condition in [cond::DATA_AFTER_CLOSE, cond::FIN_WAIT2_ABORT] {
            let mut held = Held::default();
            fill(&mut held);
            held.drop_self_abort(&sender, condition);
            assert_eq!(
                left(&mut held),
                vec![
                    (7, ESTABLISHED, t),
                    (8, FIN_WAIT1, t),
                    (7, FIN_WAIT1, t - HOLD_SELF_ABORT_NS - 1)
                ]
            );
        }
        // Other conditions, and aborts not answering a segment (no skb), drop nothing.
        let mut held = Held::default();
        fill(&mut held);
        held.drop_self_abort(&sender, cond::CLOSE_WITH_UNREAD_DATA);
        assert_eq!(left(&mut held).len(), 5);
        let no_skb = RstEvent {
            skbaddr: 0,
            ..sender
        };
        fill(&mut held);
        held.drop_self_abort(&no_skb, cond::DATA_AFTER_CLOSE);
        assert_eq!(left(&mut held).len(), 5);
    }
}
