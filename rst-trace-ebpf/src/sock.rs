//! A socket's facts: the `sock_common` window (endpoints, state, netns, cookie) and the
//! `tcp_sock` one (sequence numbers, clocks, linger); and the socket behind a file descriptor.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_get_socket_cookie, bpf_jiffies64},
    programs::BtfTracePointContext,
};
use rst_trace_common::{
    AF_INET6, FACT_IDLE, FACT_LINGER_ON, FACT_LINGER_ZERO, FACT_TCP_SOCK, OFF_NONE, RstEvent,
    TCP_WINDOW,
};

use crate::{
    maps::{SKC_WINDOW, SLOT_RECV, SLOT_SEND, TCP_WIN, TcpWindow, WINDOW, Window},
    read::{kread, kread_at, zero_words},
};

/// The first [`SKC_WINDOW`] bytes of socket `sk`, read into this program's window slot; all
/// zeros without a socket.
#[inline(always)]
pub fn sock_window(slot: u32, sk: u64) -> Option<&'static Window> {
    let w = WINDOW.get_ptr_mut(slot)?;
    // SAFETY: per-CPU slot of this program. bpf_probe_read_kernel never faults, and zeroes
    // the destination when it fails.
    unsafe {
        if sk == 0 {
            zero_words(w);
        } else {
            let _ = aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                w.cast(),
                SKC_WINDOW as u32,
                sk as *const c_void,
            );
        }
        Some(&*w)
    }
}

/// A `sock_common` field from the window. Userspace checked that every offset used here is
/// inside the window and aligned (BTF offsets are natural); the masks only make that visible
/// to the verifier without a branch per field, which kept its path count (and load time) down.
#[inline(always)]
pub fn skc<T: Copy + Default>(w: &Window, off: u16) -> T {
    let o = usize::from(off) & (SKC_WINDOW - 1) & !(core::mem::align_of::<T>() - 1);
    // SAFETY: o < SKC_WINDOW and the window has 16 bytes of slack beyond, for any T used here
    // (at most 16 bytes); o is a multiple of T's alignment and the window is 8-aligned.
    unsafe { core::ptr::read(w.as_ptr().cast::<u8>().add(o).cast::<T>()) }
}

/// The cookie a tracepoint gave (`cookie`), else the socket's own (0 if the kernel never
/// generated one).
#[inline(always)]
pub fn cookie_or_sock(cookie: u64, w: &Window) -> u64 {
    if cookie != 0 {
        cookie
    } else {
        skc::<u64>(w, conf!(sk_cookie))
    }
}

/// The socket's cookie, generated if it has none yet (as the record-based tracepoints do with
/// sock_gen_cookie()): the helper needs the argument as the kernel typed it.
#[inline(always)]
pub fn btf_sock_cookie(ctx: &BtfTracePointContext) -> u64 {
    let sk: *mut c_void = ctx.arg(0);
    if sk.is_null() {
        return 0;
    }
    // SAFETY: sk is the tracepoint's own, BTF-typed socket argument.
    unsafe { bpf_get_socket_cookie(sk) }
}

/// A socket's family, addresses (network order, as raw bytes: IPv4 in the first four) and
/// ports (host order).
pub struct Endpoints {
    pub family: u8,
    pub local_port: u16,
    pub remote_port: u16,
    pub local: [u64; 2],
    pub remote: [u64; 2],
}

/// Family, addresses and ports of a socket from its window, as TP_STORE_ADDR_PORTS does for
/// the tracepoints: local = skc_rcv_saddr:skc_num, remote = skc_daddr:skc_dport.
#[inline(always)]
pub fn window_endpoints(w: &Window, sk: u64) -> Endpoints {
    let family = skc::<u16>(w, conf!(sk_family));
    // skc_num is host byte order, skc_dport network order (include/net/sock.h). A socket
    // closed just before its reset (tcp_close()) has released its port: skc_num is 0 then, and
    // inet_sport, which the tracepoint itself reports, still holds it.
    let mut local_port = skc::<u16>(w, conf!(sk_num));
    if local_port == 0 {
        local_port = u16::from_be(kread::<u16>(sk, conf!(inet_sport)).unwrap_or(0));
    }
    let remote_port = u16::from_be(skc::<u16>(w, conf!(sk_dport)));
    // Addresses stay in network byte order: copied as raw bytes (native-endian round trip;
    // an IPv4 address widened to the first word lands in the first four bytes, little-endian).
    let (local, remote) = if family == AF_INET6 {
        (
            skc::<[u64; 2]>(w, conf!(sk_v6_rcv_saddr)),
            skc::<[u64; 2]>(w, conf!(sk_v6_daddr)),
        )
    } else {
        (
            [u64::from(skc::<u32>(w, conf!(sk_rcv_saddr))), 0],
            [u64::from(skc::<u32>(w, conf!(sk_daddr))), 0],
        )
    };
    Endpoints {
        family: family as u8,
        local_port,
        remote_port,
        local,
        remote,
    }
}

/// [`window_endpoints`] into a reset's event.
#[inline(always)]
pub fn sock_endpoints(w: &Window, sk: u64, ev: &mut RstEvent) {
    let e = window_endpoints(w, sk);
    ev.family = e.family;
    ev.local_port = e.local_port;
    ev.remote_port = e.remote_port;
    put16(&mut ev.local_addr, e.local);
    put16(&mut ev.remote_addr, e.remote);
}

/// An address held as two words, stored as its 16 bytes (native order: a raw byte copy).
#[inline(always)]
pub fn put16(dst: &mut [u8; 16], a: [u64; 2]) {
    dst[..8].copy_from_slice(&a[0].to_ne_bytes());
    dst[8..].copy_from_slice(&a[1].to_ne_bytes());
}

/// `sock_net(sk)->ns.inum`
#[inline(always)]
pub fn sock_netns(w: &Window) -> u32 {
    kread::<u32>(skc::<u64>(w, conf!(sk_net)), conf!(net_inum)).unwrap_or(0)
}

/// `dev_net(skb->dev)->ns.inum`, for resets sent with no socket.
#[inline(always)]
pub fn skb_netns(skb: u64) -> u32 {
    kread::<u64>(skb, conf!(skb_dev))
        .and_then(|dev| kread::<u64>(dev, conf!(dev_nd_net)))
        .and_then(|net| kread::<u32>(net, conf!(net_inum)))
        .unwrap_or(0)
}

/// The `tcp_sock` window of `sk` in this program's slot, if the fields fit in one (userspace
/// decides: `tp_win_base`).
#[inline(always)]
fn tcp_window(slot: u32, sk: u64) -> Option<&'static TcpWindow> {
    let base = conf!(tp_win_base);
    if base == OFF_NONE || sk == 0 {
        return None;
    }
    let w = TCP_WIN.get_ptr_mut(slot)?;
    // SAFETY: per-CPU slot of this program; bpf_probe_read_kernel never faults.
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            w.cast(),
            TCP_WINDOW as u32,
            (sk + u64::from(base)) as *const c_void,
        )
    };
    // SAFETY: filled above.
    (rc == 0).then(|| unsafe { &*w })
}

/// A u32 `tcp_sock` field: from the window (masked offset, validated by userspace), else read
/// on its own.
#[inline(always)]
fn tp_u32(w: Option<&TcpWindow>, sk: u64, off: u16) -> Option<u32> {
    match w {
        Some(w) => {
            let o = usize::from(off.wrapping_sub(conf!(tp_win_base))) & (TCP_WINDOW - 1) & !3;
            // SAFETY: o + 4 <= TCP_WINDOW, 4-aligned, inside the 8-aligned window.
            Some(unsafe { *w.as_ptr().cast::<u8>().add(o).cast::<u32>() })
        }
        None => kread(sk, off),
    }
}

/// How long a connection has been idle: jiffies since the last send (lsndtime), ACK
/// (rcv_tstamp) or data (icsk_ack.lrcvtime); all u32 jiffies, so wrapping differences. For
/// received resets only (a sent reset's own write just reset the send clock).
#[inline(always)]
pub fn read_idle(sk: u64, ev: &mut RstEvent) {
    let w = tcp_window(SLOT_RECV, sk);
    // Defaults rather than a tuple of Options: see read_tcp_sock().
    let mut ok = true;
    let mut field = |v: Option<u32>| {
        ok &= v.is_some();
        v.unwrap_or(0)
    };
    let snd = field(tp_u32(w, sk, conf!(tp_lsndtime)));
    let ack = field(tp_u32(w, sk, conf!(tp_rcv_tstamp)));
    let data = field(kread::<u32>(sk, conf!(tp_lrcvtime)));
    if ok {
        // SAFETY: helper without preconditions.
        let now = unsafe { bpf_jiffies64() } as u32;
        let a = now.wrapping_sub(snd);
        let b = now.wrapping_sub(ack);
        let c = now.wrapping_sub(data);
        ev.recv_idle_jiffies = if b < c { b } else { c };
        ev.idle_jiffies = if a < ev.recv_idle_jiffies {
            a
        } else {
            ev.recv_idle_jiffies
        };
        ev.facts |= FACT_IDLE;
    }
}

/// Facts only a full `struct tcp_sock` has, for explaining a sent reset. Callers make sure
/// `sk` is one (not a request or TIME_WAIT mini-socket).
#[inline(always)]
pub fn read_tcp_sock(w: &Window, sk: u64, ev: &mut RstEvent) {
    let tw = tcp_window(SLOT_SEND, sk);
    // Each read defaults to 0 and the differences are computed either way: with a tuple of
    // Options matched at once, LLVM spills a value only on the path where its read succeeded
    // and reloads the slot on every path, a read of uninitialised stack that verifiers before
    // 6.3 reject (commit 6715df8d5d24 made it legal for privileged programs only then).
    let mut ok = true;
    let mut field = |off: u16| {
        let v = tp_u32(tw, sk, off);
        ok &= v.is_some();
        v.unwrap_or(0)
    };
    let (rcv_nxt, copied_seq) = (field(conf!(tp_rcv_nxt)), field(conf!(tp_copied_seq)));
    let (write_seq, snd_una) = (field(conf!(tp_write_seq)), field(conf!(tp_snd_una)));
    // Sequence numbers wrap: the differences are what tcp_close() and tcp_disconnect() look at.
    ev.unread = rcv_nxt.wrapping_sub(copied_seq);
    ev.unsent = write_seq.wrapping_sub(snd_una);
    if !ok {
        ev.unread = 0;
        ev.unsent = 0;
        return;
    }
    ev.linger2 = kread::<i32>(sk, conf!(tp_linger2)).unwrap_or(0);
    ev.facts |= FACT_TCP_SOCK;
    read_linger(w, sk, ev);
}

/// `SO_LINGER` and whether its timeout is zero.
#[inline(always)]
fn read_linger(w: &Window, sk: u64, ev: &mut RstEvent) {
    let bit = conf!(sock_linger_bit);
    if bit < 64
        && let Some(flags) = sk_flags(w, sk)
        && flags & (1u64 << bit) != 0
    {
        ev.facts |= FACT_LINGER_ON;
        if kread::<u64>(sk, conf!(sk_lingertime)) == Some(0) {
            ev.facts |= FACT_LINGER_ZERO;
        }
    }
}

/// `sk_flags` (`enum sock_flags` bits).
#[inline(always)]
fn sk_flags(w: &Window, sk: u64) -> Option<u64> {
    // sk_flags sits in sock_common since 6.18 (skc_flags): then the socket window has it.
    if usize::from(conf!(sk_flags)) + 8 <= SKC_WINDOW {
        Some(skc::<u64>(w, conf!(sk_flags)))
    } else {
        kread::<u64>(sk, conf!(sk_flags))
    }
}

/// Whether the socket is orphaned (`SOCK_DEAD`, set by sock_orphan() when its process closed
/// it): no application call can fail on it any more.
#[inline(always)]
pub fn sock_dead(w: &Window, sk: u64) -> bool {
    let bit = conf!(sock_dead_bit);
    bit < 64 && sk_flags(w, sk).is_some_and(|f| f & (1u64 << bit) != 0)
}

/// The socket of the current task's file descriptor `fd`:
/// current->files->fdt->fd[fd]->private_data (struct socket)->sk, if `fd` is a socket: a
/// socket's `file` points back at its file (sock_alloc_file()); another file's private_data
/// (a pipe's pipe_inode_info, ...) holds something else there.
#[inline(always)]
pub fn fd_sock(fd: i64) -> Option<u64> {
    if fd < 0 {
        return None;
    }
    // SAFETY: helper without preconditions; the result is only used as a number.
    let task = unsafe { bpf_get_current_task() };
    let files = kread::<u64>(task, conf!(task_files))?;
    let fdt = kread::<u64>(files, conf!(files_fdt))?;
    // fdtable { max_fds; fd; } and socket { ...; file; sk; } side by side, as in every
    // kernel so far: one read each (this runs at every accept()'s exit). The unsigned int
    // max_fds is the low half of its word: the eBPF target is little-endian (bpfel).
    let (max, fds) = if conf!(fdt_fd) == conf!(fdt_max_fds).wrapping_add(8) {
        let [max, fds] = kread::<[u64; 2]>(fdt, conf!(fdt_max_fds))?;
        (max as u32, fds)
    } else {
        (
            kread::<u32>(fdt, conf!(fdt_max_fds))?,
            kread::<u64>(fdt, conf!(fdt_fd))?,
        )
    };
    if fd as u64 >= u64::from(max) {
        return None;
    }
    let file = kread_at::<u64>(fds + (fd as u64) * 8)?;
    let sock = kread::<u64>(file, conf!(file_private_data))?;
    let (back, sk) = if conf!(socket_sk) == conf!(socket_file).wrapping_add(8) {
        let [back, sk] = kread::<[u64; 2]>(sock, conf!(socket_file))?;
        (back, sk)
    } else {
        (
            kread::<u64>(sock, conf!(socket_file))?,
            kread::<u64>(sock, conf!(socket_sk))?,
        )
    };
    (back == file).then_some(sk)
}
