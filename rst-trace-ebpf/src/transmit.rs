//! The transmit hook's events: netfilter's REJECT resets, and before 6.10 the resets TCP sends
//! without a full socket.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use rst_trace_common::{
    AF_INET6, FACT_NETFILTER, FACT_PACKET, FACT_XMIT, KIND_SENT, OFF_NONE, REASON_NONE, RstEvent,
    TCP_RST, TCP_TIME_WAIT,
};

use crate::{
    deliver::{claim, deliver, scratch_event, unclaim, wanted},
    headers::{Headers, Segment},
    maps::{CUR_RX, LAST_REJECT_SKB, LAST_TCP_RST, SLOT_TRANSMIT, XMIT_SK},
    read::kread,
    sock::skb_netns,
    timewait::take_timewait,
};

/// `sk_type` (low half) and `sk_protocol` (high half) of the per-CPU TCP control sockets
/// (inet_ctl_sock_create(.., SOCK_RAW, IPPROTO_TCP, ..) in tcp_sk_init()/tcp_v4_init()).
const TCP_CTL_SOCK: u32 = 3 | (6 << 16);
/// `CHECKSUM_PARTIAL` (include/linux/skbuff.h).
const CHECKSUM_PARTIAL: u8 = 3;
/// How long after `tcp_send_reset` the RST it announced may reach the transmit hook (it is
/// sent in the same softirq; generous for emulated or overloaded machines).
const ANNOUNCED_NS: u64 = 50_000_000;
/// How long the same skb queued again counts as one packet crossing stacked devices (bridge ->
/// veth, vlan -> eth): each device queues it in turn from the same transmit call chain,
/// microseconds apart; a millisecond is generous yet far below any retransmission.
const STACKED_DEVICE_NS: u64 = 1_000_000;

/// The body of `net_dev_queue` (see there). Every other packet carries its socket, and one read
/// (two, for a socket not seen last on this CPU, before 6.10) decides.
#[inline(always)]
pub fn on_transmit(skb: u64) {
    let Some(sk) = kread::<u64>(skb, conf!(skb_sk)) else {
        return;
    };
    let tcp_ctl = sk != 0 && tcp_control_sock(sk);
    if sk != 0 && !tcp_ctl {
        return;
    }
    // A forwarded packet (router, bridge to a container) lost its socket but remembers where it
    // came in; an RST built on this host is a new skb with skb_iif 0.
    if !tcp_ctl && kread::<i32>(skb, conf!(skb_iif)) != Some(0) {
        return;
    }
    let Some(rst) = Headers::transmitted(skb) else {
        return;
    };
    if rst.flags() & TCP_RST == 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    // queued_again first: it records this RST, so that its copy on a stacked device is known
    // even when the announcement is used up by the first.
    if queued_again(skb, &rst, now) || announced(&rst, now) {
        return;
    }
    let by_tcp = tcp_ctl || (rst.family() == AF_INET6 && tcp_built_v6(skb, &rst.ip));
    let Some(busy) = claim(SLOT_TRANSMIT) else {
        return;
    };
    if let Some(ev) = scratch_event(SLOT_TRANSMIT) {
        ev.kind = KIND_SENT;
        ev.reason = REASON_NONE;
        ev.skbaddr = skb;
        ev.netns = skb_netns(skb);
        if by_tcp {
            socketless_event(ev, &rst);
        } else {
            ev.facts = FACT_NETFILTER | FACT_PACKET;
            rst.fill(ev, false);
        }
        if wanted(ev) {
            deliver(SLOT_TRANSMIT, ev);
        }
    }
    unclaim(busy);
}

/// tcp_send_reset reported it already (it fires before the reply is built): the same ports,
/// and the segment this CPU is receiving is the one it answered, or it was just now. One
/// announcement covers one RST: it is used up here, so that another RST with the same ports
/// moments later (a segment still in flight to the socket that just aborted, answered without a
/// socket) is reported. (The same RST queued again on a stacked device is `queued_again`'s.)
#[inline(always)]
fn announced(rst: &Headers, now: u64) -> bool {
    let Some(last) = LAST_TCP_RST.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, valid for this program run.
    let last = unsafe { &mut *last };
    let same = last[1] == (u64::from(rst.sport()) << 16) | u64::from(rst.dport())
        && (now.wrapping_sub(last[0]) < ANNOUNCED_NS || CUR_RX.get(0) == Some(&last[2]));
    if same {
        last[1] = 0;
    }
    same
}

/// A packet crossing stacked devices (bridge -> veth, vlan -> eth) is queued once per device:
/// report it once. The same skb address is not enough: a freed skb's address comes back for
/// the next one at once (curl to `localhost` refused on ::1, then on 127.0.0.1, or a storm), so
/// the RST's ports and sequence number must be the same too.
#[inline(always)]
fn queued_again(skb: u64, rst: &Headers, now: u64) -> bool {
    let t = &rst.tcp;
    let id = u64::from_ne_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]);
    if let Some(last) = LAST_REJECT_SKB.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe {
            if (*last)[0] == skb
                && (*last)[2] == id
                && now.wrapping_sub((*last)[1]) < STACKED_DEVICE_NS
            {
                return true;
            }
            *last = [skb, now, id];
        }
    }
    false
}

/// Whether `sk` is a TCP control socket (before 6.10 only: after, tcp_send_reset shows every
/// reset TCP sends). A per-CPU memo of the last control socket and the last other socket.
#[inline(always)]
fn tcp_control_sock(sk: u64) -> bool {
    if conf!(xmit_socketless) == 0 || conf!(sk_type) == OFF_NONE {
        return false;
    }
    let Some(memo) = XMIT_SK.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot; a nested run at worst costs the next packet a read.
    unsafe {
        if (*memo)[0] == sk {
            return true;
        }
        if (*memo)[1] == sk {
            return false;
        }
    }
    let ctl = kread::<u32>(sk, conf!(sk_type)) == Some(TCP_CTL_SOCK);
    // SAFETY: as above.
    unsafe { (*memo)[usize::from(!ctl)] = sk };
    ctl
}

/// Before 6.10, whether an IPv6 RST without a socket is TCP's (tcp_v6_send_response()) rather
/// than netfilter's: TCP leaves its checksum to the device (CHECKSUM_PARTIAL, until
/// validate_xmit_skb(), after this hook), nf_send_reset6() computes it in full; and TCP's reply
/// carries a flow label (auto_flowlabels), netfilter's none (ip6_flow_hdr(ip6h, 0, 0)).
#[inline(always)]
fn tcp_built_v6(skb: u64, ip: &[u8; 40]) -> bool {
    if conf!(xmit_socketless) == 0 {
        return false;
    }
    if conf!(skb_ip_summed) != OFF_NONE {
        let b = kread::<u8>(skb, conf!(skb_ip_summed)).unwrap_or(0);
        return (b >> (conf!(ip_summed_shift) & 7)) & 3 == CHECKSUM_PARTIAL;
    }
    ip[1] & 0x0f != 0 || ip[2] != 0 || ip[3] != 0
}

/// A reset TCP sent without a full socket, before 6.10 (see `net_dev_queue`): the facts
/// `tcp_send_reset` would have given, from the segment it answers (noted by `netif_receive_skb`
/// on this CPU) and from the TIME_WAIT hand-overs `on_destroy` recorded.
#[inline(always)]
fn socketless_event(ev: &mut RstEvent, rst: &Headers) {
    ev.facts = FACT_XMIT;
    if !answered_segment(ev, rst) {
        rst.fill(ev, false);
    }
    if take_timewait(ev) {
        ev.state = TCP_TIME_WAIT;
    }
}

/// Fills in the segment `rst` answers, if this CPU's receive path is handling it. A call of its
/// own (bpf-to-bpf, 4.16+): inlined, its locals and the transmit hook's exceed the 512-byte
/// stack.
#[inline(never)]
fn answered_segment(ev: &mut RstEvent, rst: &Headers) -> bool {
    let Some(rx) = CUR_RX.get(0).copied() else {
        return false;
    };
    let Some(seg) = Segment::received(SLOT_TRANSMIT, rx) else {
        return false;
    };
    // Its source port is the RST's destination port and vice versa, in the same IP version.
    let version = rst.ip_version();
    if seg.ports() != Some([rst.tcp[2], rst.tcp[3], rst.tcp[0], rst.tcp[1]])
        || seg.version() != Some(version)
    {
        return false;
    }
    ev.family = rst.family() as u8;
    ev.remote_port = rst.dport();
    ev.local_port = rst.sport();
    ev.tcp_flags = seg.flags().unwrap_or(0);
    ev.ttl = seg.ttl_of(version).unwrap_or(0);
    // Addresses straight into the event (a map value): this runs on top of the transmit hook's
    // stack frame. The reply goes back to the segment's source: local = its destination.
    seg.read_addrs(version, &mut ev.remote_addr, &mut ev.local_addr);
    ev.facts |= FACT_PACKET;
    true
}
