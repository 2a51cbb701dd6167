//! Connections handed to a TIME_WAIT mini-socket, with the process that closed them: such a
//! socket has no process of its own, so the reset it sends is named by the flow's last owner.

use aya_ebpf::helpers::{bpf_ktime_get_ns, generated};
use rst_trace_common::{ATTR_NONE, ATTR_OWNER_MAP, RstEvent, SockInfo, TimeWaitInfo};

use crate::{
    maps::{Flow, SEED_OWNERS, SKC_WINDOW, TIMEWAIT, Window, count_insert},
    owners::seed_owner,
    read::{copy_words, zero_words},
    sock::{cookie_or_sock, sock_netns, window_endpoints},
};

/// Records that `sk`'s connection may live on in a TIME_WAIT mini-socket that resets: only one
/// in the FIN_WAIT2 sub-state answers with RST (new data, or a SYN, in
/// tcp_timewait_state_process()), and tcp_time_wait() creates it from FIN_WAIT2 (an orphan's
/// FIN_WAIT2 timeout), then tcp_done() moves the socket to CLOSE. No tracepoint marks the
/// hand-over itself; an abort from FIN_WAIT2 (a reset sent or received) is told apart by
/// `SOCK_RESET_SEEN`.
#[inline(never)]
pub fn remember_timewait(sk: u64, info: &SockInfo) {
    // The socket's `sock_common` window in one read (a raw copy on the stack; this runs at the
    // end of every connection this host closes first), as the reset programs read it.
    let mut w = core::mem::MaybeUninit::<Window>::uninit();
    // SAFETY: bpf_probe_read_kernel never faults and zeroes the destination when it fails;
    // the slack words after the window are zeroed, so every byte is written.
    let w = unsafe {
        let p = w.as_mut_ptr();
        let _ = generated::bpf_probe_read_kernel(p.cast(), SKC_WINDOW as u32, sk as *const _);
        zero_words(p.cast::<u64>().add(SKC_WINDOW / 8).cast::<[u64; 2]>());
        w.assume_init_ref()
    };
    // skc_num is 0 once inet_put_port() ran: window_endpoints() then reads inet_sport.
    let e = window_endpoints(w, sk);
    let mut f = core::mem::MaybeUninit::<Flow>::uninit();
    // SAFETY: Flow is plain integers, 8-aligned, 40 bytes: zeroed with word stores (a literal
    // initialiser becomes a call to the target's byte-loop memset), then filled.
    let f = unsafe {
        zero_words(f.as_mut_ptr());
        f.assume_init_mut()
    };
    f.netns = sock_netns(w);
    f.local_port = e.local_port;
    f.remote_port = e.remote_port;
    f.local = unmapped(e.local);
    f.remote = unmapped(e.remote);
    let mut tw = core::mem::MaybeUninit::<TimeWaitInfo>::uninit();
    // SAFETY: TimeWaitInfo is plain integers, 8-aligned, 72 bytes: filled in words (the owner
    // copied from the map value; a literal initialiser becomes a byte-loop memset).
    let tw = unsafe {
        let tw = tw.as_mut_ptr();
        // SAFETY: helper without preconditions.
        (*tw).since = bpf_ktime_get_ns();
        copy_words(&mut (*tw).owner, &info.owner);
        (*tw).owned = info.owned;
        // A connection older than rst-trace whose process made no call since: no owner was
        // learned, but one was seeded by the socket's cookie. Taken now, as before 6.10 the
        // mini-socket's reset is seen on transmit, with no cookie to look it up by.
        let cookie = cookie_or_sock(0, w);
        if info.owned == 0
            && cookie != 0
            && let Some(t) = SEED_OWNERS.get(&cookie)
        {
            copy_words(&mut (*tw).owner, t);
            (*tw).owned = 1;
        }
        &*tw
    };
    count_insert(TIMEWAIT.insert(f, tw, 0));
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, held as two little-endian words) as the
/// IPv4 address it maps: a dual-stack listener's IPv4 connections are AF_INET6 sockets, but
/// their mini-socket's reset is an IPv4 packet, whose endpoints the look-up uses.
#[inline(always)]
fn unmapped(a: [u64; 2]) -> [u64; 2] {
    if a[0] == 0 && a[1] as u32 == 0xffff_0000 {
        [a[1] >> 32, 0]
    } else {
        a
    }
}

/// How long a TIME_WAIT mini-socket lives: TCP_TIMEWAIT_LEN (60 s), also the longest an
/// orphan's FIN_WAIT2 sub-state lasts (tcp_fin_time() is capped by it for a mini-socket).
const TIMEWAIT_NS: u64 = 60_000_000_000;

/// The reset `ev` (its endpoints and netns filled in) comes from a TIME_WAIT mini-socket that
/// `remember_timewait` noted, not older than such a socket lives: the entry is taken (the
/// mini-socket is killed after answering with RST, inet_twsk_deschedule_put()), and the
/// process that closed the connection becomes the event's owner; without one, a socket older
/// than rst-trace is named by the cookie the mini-socket inherited (inet_twsk_alloc()).
/// Inlined: as a call of its own, its frame and the caller's would each be rounded up to 32
/// bytes, which leaves the `tcp_send_reset` programs less of the 512-byte stack.
#[inline(always)]
pub fn take_timewait(ev: &mut RstEvent) -> bool {
    // SAFETY: 8-aligned [u8; 16] arrays (asserted in rst-trace-common), read as two words.
    let (local, remote) = unsafe {
        (
            core::ptr::read(ev.local_addr.as_ptr().cast::<[u64; 2]>()),
            core::ptr::read(ev.remote_addr.as_ptr().cast::<[u64; 2]>()),
        )
    };
    let flow = Flow {
        netns: ev.netns,
        local_port: ev.local_port,
        remote_port: ev.remote_port,
        local,
        remote,
    };
    let mut fresh = false;
    if let Some(tw) = TIMEWAIT.get_ptr(&flow) {
        // SAFETY: a map value pointer, valid for this program run; read before the removal.
        unsafe {
            fresh = ev.mono_ns.wrapping_sub((*tw).since) < TIMEWAIT_NS;
            if fresh && (*tw).owned != 0 {
                copy_words(&mut ev.owner, &(*tw).owner);
                ev.attribution = ATTR_OWNER_MAP;
            }
        }
        let _ = TIMEWAIT.remove(&flow);
    }
    if ev.attribution == ATTR_NONE {
        seed_owner(ev);
    }
    fresh
}
