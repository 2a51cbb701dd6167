//! rst-trace's kernel side. Small and dumb on purpose: collect facts about each reset, filter
//! early, submit them to a ring buffer. Explaining them is userspace's job.
//!
//! There is no CO-RE for Rust eBPF, so every tracepoint field offset and kernel struct offset
//! comes from userspace (tracefs `format` files and vmlinux BTF) through the `CONFIG` global.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid,
        bpf_get_socket_cookie, bpf_jiffies64, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use rst_trace_common::{
    ATTR_NONE, ATTR_OWNER_CURRENT, ATTR_OWNER_MAP, ATTR_OWNER_SEED, COUNTS_MAX_ENTRIES, Config,
    DESTROYED_GRACE_NS, FACT_BACKLOG, FACT_IDLE, FACT_LINGER_ON, FACT_LINGER_ZERO,
    FACT_LISTENER_CLOSING, FACT_NETFILTER, FACT_PACKET, FACT_RST_TTL, FACT_TCP_SOCK, FACT_XMIT,
    FILTER_MAX_ENTRIES, FILTER_NO_RECEIVED, FILTER_PID, FILTER_PORT, KIND_RECEIVED, KIND_SENT,
    ListenerClose, OFF_NONE, REASON_ARG, REASON_NONE, RstEvent, SEED_MAX_ENTRIES, SKB_HDR_WINDOW,
    SOCK_RESET_SEEN, SOCKS_MAX_ENTRIES, SockInfo, TCP_WINDOW, Task,
};

// Kernel ABI constants that never change (uapi).
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const TCP_RST: u8 = 0x04;
/// `sk_type` (low half) and `sk_protocol` (high half) of the per-CPU TCP control sockets
/// (inet_ctl_sock_create(.., SOCK_RAW, IPPROTO_TCP, ..) in tcp_sk_init()/tcp_v4_init()).
const TCP_CTL_SOCK: u32 = 3 | (6 << 16);
/// `CHECKSUM_PARTIAL` (include/linux/skbuff.h).
const CHECKSUM_PARTIAL: u8 = 3;
/// TCP_TIMEWAIT_LEN (60 s), also the default FIN_WAIT2 timeout of an orphan.
const TIMEWAIT_NS: u64 = 60_000_000_000;
// enum tcp_state (include/net/tcp_states.h), exported to userspace through /proc/net/tcp.
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_FIN_WAIT2: i32 = 5;
const TCP_TIME_WAIT: i32 = 6;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;
const TCP_NEW_SYN_RECV: i32 = 12;

#[unsafe(no_mangle)]
static CONFIG: Global<Config> = Global::new(Config::empty());

/// Reads one field of `CONFIG`. Volatile, so the compiler cannot fold in the compiled-in default
/// (userspace overrides the global at load time); per field, so the whole struct is not copied
/// onto the 512-byte BPF stack.
macro_rules! conf {
    ($field:ident) => {
        // SAFETY: Global is repr(transparent) over an always-initialised Config.
        unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!(
                (*(core::ptr::addr_of!(CONFIG).cast::<Config>())).$field
            ))
        }
    };
}

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Per-CPU: [bpf_ktime_get_ns(), local_port << 16 | remote_port, skb answered] of the last
/// `tcp_send_reset` that answered a segment.
#[map]
static LAST_TCP_RST: PerCpuArray<[u64; 3]> = PerCpuArray::with_max_entries(1, 0);
/// How long after `tcp_send_reset` the RST it announced may reach the transmit hook (it is
/// sent in the same softirq; generous for emulated or overloaded machines).
const ANNOUNCED_NS: u64 = 50_000_000;

/// Per-CPU: [sk, skb] of the segment tcp_rcv_established() is handling (tcp_receive_reset
/// fires inside the same call: tcp_validate_incoming() -> tcp_reset()), then a direct-mapped
/// cache of 64 sockets whose peer TTL this CPU already sampled. One slot, so one lookup per
/// segment.
#[map]
static CUR_SEG: PerCpuArray<[u64; 2 + SAMPLED_SLOTS]> = PerCpuArray::with_max_entries(1, 0);
const SAMPLED_SLOTS: usize = 64;

/// Bumped whenever a socket starts or ends, so that no CPU's sampled cache (which stores
/// `sk ^ generation`) takes a new socket at a reused address for one already sampled.
#[map]
static SOCK_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

#[inline(always)]
fn bump_generation() {
    if let Some(g) = SOCK_GENERATION.get_ptr_mut(0) {
        // SAFETY: a map value pointer; a lost increment under a race only costs a re-sample.
        unsafe { *g = (*g).wrapping_add(1) };
    }
}

/// Per-CPU: [sk, pid] of the last socket I/O seen by `sock_io`.
#[map]
static LAST_IO: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's last destroyed socket and a copy of its entry.
#[repr(C)]
#[derive(Clone, Copy)]
struct Destroyed {
    sk: u64,
    /// local port << 16 | remote port (host order): a new socket at the same address, on the
    /// same CPU, within the window, must not inherit the dead one's owner.
    ports: u64,
    info: SockInfo,
}

#[map]
static LAST_DESTROYED: PerCpuArray<Destroyed> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU: [skb, time] of the last netfilter RST reported.
#[map]
static LAST_REJECT_SKB: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU: the skb the receive path is handling (`netif_receive_skb`). Before 6.10 a reset
/// TCP sends without a full socket is seen only on transmit; tcp_v4_rcv()/tcp_v6_rcv() send it
/// while handling the segment it answers, in the same softirq on the same CPU, so this is that
/// segment (checked: its ports must mirror the RST's).
#[map]
static CUR_RX: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU: [the TCP control socket last seen on transmit, the last other socket], so that a
/// stream of packets from one socket costs a compare, not a read, each.
#[map]
static XMIT_SK: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Before 6.10: connections handed to a TIME_WAIT mini-socket (see `on_destroy`), by flow, with
/// the time. When that mini-socket answers a segment with RST (tcp_timewait_state_process()
/// returns TCP_TW_RST), the transmit hook tells it from a reset for no socket at all.
#[map]
static TIMEWAIT: LruHashMap<Flow, u64> = LruHashMap::with_max_entries(16384, 0);

/// A connection's endpoints in its network namespace (IPv4 addresses in the first 4 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct Flow {
    netns: u32,
    local_port: u16,
    remote_port: u16,
    local: [u64; 2],
    remote: [u64; 2],
}

/// Per-CPU scratch space for the event being built: it does not fit on the BPF stack.
#[map]
static SCRATCH: PerCpuArray<RstEvent> = PerCpuArray::with_max_entries(3, 0);
/// Slots of `SCRATCH` and `WINDOW`, one per program: a softirq may run one program in the middle
/// of another on the same CPU (BTF and raw tracepoints only keep a program from nesting in
/// itself, see __bpf_trace_run()).
const SLOT_SEND: u32 = 0;
const SLOT_RECV: u32 = 1;
const SLOT_TRANSMIT: u32 = 2;

/// Bytes of the start of a socket read in one go: `struct sock_common` holds the addresses,
/// ports, family, state, netns and cookie in its first ~100 bytes on every kernel since 4.x
/// (userspace checks this at start-up, see `SKC_WINDOW` in rst-trace-common).
const SKC_WINDOW: usize = rst_trace_common::SKC_WINDOW;
#[map]
static WINDOW: PerCpuArray<Window> = PerCpuArray::with_max_entries(2, 0);

/// [`SKC_WINDOW`] bytes of a socket, and 16 bytes of slack so that a masked offset (see `skc`)
/// is in bounds whatever the field's size.
type Window = [u64; SKC_WINDOW / 8 + 2];

#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The key being built by `deliver`, per CPU and program slot (programs can run nested on one
/// CPU: a softirq in a process-context send).
#[map]
static COUNT_KEY: PerCpuArray<RstEvent> = PerCpuArray::with_max_entries(3, 0);

/// `--summary --quiet`: resets counted here, keyed by [`RstEvent::count_key`], instead of one
/// ring record each (see `deliver`).
#[map]
static COUNTS: PerCpuHashMap<RstEvent, u64> =
    PerCpuHashMap::with_max_entries(COUNTS_MAX_ENTRIES, 0);

#[map]
static SOCKS: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(SOCKS_MAX_ENTRIES, 0);

#[map]
static SEED_OWNERS: HashMap<u64, Task> = HashMap::with_max_entries(SEED_MAX_ENTRIES, 0);

#[map]
static CLOSING_LISTENERS: LruHashMap<u32, ListenerClose> = LruHashMap::with_max_entries(1024, 0);

/// `bpf_ktime_get_ns()` of the last listener close on any CPU: a reset sent from a close() long
/// after it skips the `CLOSING_LISTENERS` look-up.
#[map]
static LAST_LISTENER_CLOSE: Array<u64> = Array::with_max_entries(1, 0);

#[map]
static FILTER_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(FILTER_MAX_ENTRIES, 0);

#[map]
static FILTER_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(FILTER_MAX_ENTRIES, 0);

/// The [`SKB_HDR_WINDOW`] bytes of an skb around its header offsets, per CPU and program slot
/// (a map value, because a variable offset into the stack needs a 5.12+ verifier).
#[map]
static SKB_WINDOW: PerCpuArray<[u64; SKB_HDR_WINDOW / 8]> = PerCpuArray::with_max_entries(4, 0);
const SLOT_PROBE: u32 = 3;

/// Reads a field of the tracepoint record at an offset found in its tracefs `format` file.
#[inline(always)]
fn tp<T>(ctx: &TracePointContext, off: u16) -> Option<T> {
    if off == OFF_NONE {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the access; a bad offset yields an error, not a fault.
    unsafe { ctx.read_at::<T>(usize::from(off)).ok() }
}

/// Reads kernel memory at `base + off`. Pointers are handled as numbers: the verifier rejects
/// arithmetic on typed pointers, and these offsets come from BTF at run time.
#[inline(always)]
fn kread<T>(base: u64, off: u16) -> Option<T> {
    if off == OFF_NONE || base == 0 {
        return None;
    }
    // SAFETY: as above, bpf_probe_read_kernel never faults.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T).ok() }
}

/// Reads kernel memory at an absolute address.
#[inline(always)]
fn kread_at<T>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel never faults.
    unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
}

/// The first [`SKC_WINDOW`] bytes of socket `sk`, read into this program's window slot; all
/// zeros without a socket.
#[inline(always)]
fn sock_window(slot: u32, sk: u64) -> Option<&'static Window> {
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
fn skc<T: Copy + Default>(w: &Window, off: u16) -> T {
    let o = usize::from(off) & (SKC_WINDOW - 1) & !(core::mem::align_of::<T>() - 1);
    // SAFETY: o < SKC_WINDOW and the window has 16 bytes of slack beyond, for any T used here
    // (at most 16 bytes); o is a multiple of T's alignment and the window is 8-aligned.
    unsafe { core::ptr::read(w.as_ptr().cast::<u8>().add(o).cast::<T>()) }
}

/// Family, addresses and ports of a socket, as TP_STORE_ADDR_PORTS does for the tracepoints:
/// local = skc_rcv_saddr:skc_num, remote = skc_daddr:skc_dport.
#[inline(always)]
fn sock_endpoints(w: &Window, sk: u64, ev: &mut RstEvent) {
    let family = skc::<u16>(w, conf!(sk_family));
    ev.family = family as u8;
    // skc_num is host byte order, skc_dport network order (include/net/sock.h). A socket
    // closed just before its reset (tcp_close()) has released its port: skc_num is 0 then, and
    // inet_sport, which the tracepoint itself reports, still holds it.
    ev.local_port = skc::<u16>(w, conf!(sk_num));
    if ev.local_port == 0 {
        ev.local_port = u16::from_be(kread::<u16>(sk, conf!(inet_sport)).unwrap_or(0));
    }
    ev.remote_port = u16::from_be(skc::<u16>(w, conf!(sk_dport)));
    // Addresses stay in network byte order: copied as raw bytes (native-endian round trip).
    if family == AF_INET6 {
        let l = skc::<[u64; 2]>(w, conf!(sk_v6_rcv_saddr));
        let r = skc::<[u64; 2]>(w, conf!(sk_v6_daddr));
        ev.local_addr[..8].copy_from_slice(&l[0].to_ne_bytes());
        ev.local_addr[8..].copy_from_slice(&l[1].to_ne_bytes());
        ev.remote_addr[..8].copy_from_slice(&r[0].to_ne_bytes());
        ev.remote_addr[8..].copy_from_slice(&r[1].to_ne_bytes());
    } else {
        let l = skc::<u32>(w, conf!(sk_rcv_saddr));
        let r = skc::<u32>(w, conf!(sk_daddr));
        ev.local_addr[..4].copy_from_slice(&l.to_ne_bytes());
        ev.remote_addr[..4].copy_from_slice(&r.to_ne_bytes());
    }
}

/// Fills `t` with the current task. The comm goes straight into place: a zeroed `[u8; 16]`
/// first (what `bpf_get_current_comm()` builds) is a call to a byte-by-byte memset loop here.
#[inline(always)]
fn fill_current_task(t: &mut Task) {
    let pid_tgid = bpf_get_current_pid_tgid();
    t.pid = (pid_tgid >> 32) as u32;
    t.tid = pid_tgid as u32;
    t.uid = bpf_get_current_uid_gid() as u32;
    t._pad = 0;
    // SAFETY: a 16-byte buffer the helper fills (NUL-padded; zeroed on error).
    unsafe {
        aya_ebpf::helpers::generated::bpf_get_current_comm(t.comm.as_mut_ptr().cast(), 16);
    }
}

/// Copies a value word by word: a plain assignment between two map values becomes a call to
/// the byte-by-byte `memmove` (the compiler cannot rule out overlap).
///
/// # Safety
/// Both must be valid, 8-aligned, of a type whose size is a multiple of 8 (the ABI structs).
#[inline(always)]
unsafe fn copy_words<T>(dst: *mut T, src: *const T) {
    let (d, s) = (dst.cast::<u64>(), src.cast::<u64>());
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: in bounds, per the contract above.
        unsafe { d.add(i).write_volatile(s.add(i).read_volatile()) };
        i += 1;
    }
}

/// Zeroes a value with 8-byte volatile stores, which the compiler cannot turn into a call to
/// the eBPF target's byte-by-byte `memset` (160 iterations for an event).
///
/// # Safety
/// `p` must be valid for writes, 8-aligned, of a type whose size is a multiple of 8 and for
/// which all-zero bytes are a valid value.
#[inline(always)]
unsafe fn zero_words<T>(p: *mut T) {
    let words = p.cast::<u64>();
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: in bounds, per the contract above.
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
}

/// `sock_net(sk)->ns.inum`
#[inline(always)]
fn sock_netns(w: &Window) -> u32 {
    kread::<u32>(skc::<u64>(w, conf!(sk_net)), conf!(net_inum)).unwrap_or(0)
}

/// `dev_net(skb->dev)->ns.inum`, for resets sent with no socket.
#[inline(always)]
fn skb_netns(skb: u64) -> u32 {
    kread::<u64>(skb, conf!(skb_dev))
        .and_then(|dev| kread::<u64>(dev, conf!(dev_nd_net)))
        .and_then(|net| kread::<u32>(net, conf!(net_inum)))
        .unwrap_or(0)
}

/// [`TCP_WINDOW`] bytes of a `tcp_sock`, per CPU and program slot, with 8 bytes of slack.
type TcpWindow = [u64; TCP_WINDOW / 8 + 1];
#[map]
static TCP_WIN: PerCpuArray<TcpWindow> = PerCpuArray::with_max_entries(2, 0);

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

/// A segment's headers: the IP header (40 bytes: IPv6's fixed header, or IPv4's with room for
/// the addresses) and the first 14 bytes of the TCP header.
struct Headers {
    ip: [u8; 40],
    tcp: [u8; 14],
}

impl Headers {
    fn ip_version(&self) -> u8 {
        self.ip[0] >> 4
    }

    /// TTL (IPv4) or hop limit (IPv6).
    fn ttl(&self) -> u8 {
        if self.ip_version() == 6 {
            self.ip[7]
        } else {
            self.ip[8]
        }
    }
}

/// `skb->head`, `skb->network_header` and `skb->transport_header`: one read where the fields
/// sit together (every kernel so far), else three.
#[inline(always)]
fn skb_header_offsets(slot: u32, skb: u64) -> Option<(u64, u16, u16)> {
    let base = conf!(skb_hdr_base);
    if base == OFF_NONE {
        return Some((
            kread(skb, conf!(skb_head))?,
            kread(skb, conf!(skb_network_header))?,
            kread(skb, conf!(skb_transport_header))?,
        ));
    }
    let w = SKB_WINDOW.get_ptr_mut(slot)?;
    // SAFETY: per-CPU slot of this program, valid for this run.
    let w = unsafe {
        *w = kread::<[u64; SKB_HDR_WINDOW / 8]>(skb, base)?;
        &*w
    };
    // Userspace checked that the three lie inside the window, naturally aligned; the masks make
    // that visible to the verifier.
    let at = |off: u16, align: usize| {
        usize::from(off.wrapping_sub(base)) & (SKB_HDR_WINDOW - 1) & !(align - 1)
    };
    let bytes = w.as_ptr().cast::<u8>();
    let (head_at, nh_at, th_at) = (
        at(conf!(skb_head), 8),
        at(conf!(skb_network_header), 2),
        at(conf!(skb_transport_header), 2),
    );
    // SAFETY: masked offsets inside the window, aligned for their types.
    unsafe {
        Some((
            *bytes.add(head_at).cast::<u64>(),
            *bytes.add(nh_at).cast::<u16>(),
            *bytes.add(th_at).cast::<u16>(),
        ))
    }
}

/// The IP and TCP headers of the segment `skb` carries.
#[inline(always)]
fn read_headers(slot: u32, skb: u64) -> Option<Headers> {
    let (head, nh, th) = skb_header_offsets(slot, skb)?;
    // The TCP header right after a plain IPv4 (20 bytes) or IPv6 (40 bytes) header, the usual
    // case: one read for both, at constant offsets.
    match th.wrapping_sub(nh) {
        20 => packed_headers::<20, 34>(head, nh),
        40 => packed_headers::<40, 54>(head, nh),
        _ => Some(Headers {
            ip: kread(head, nh)?,
            tcp: kread(head, th)?,
        }),
    }
}

/// IP header of `IP` bytes directly followed by the TCP header: `ALL` = `IP` + 14 bytes, one read.
#[inline(always)]
fn packed_headers<const IP: usize, const ALL: usize>(head: u64, nh: u16) -> Option<Headers> {
    let b = kread::<[u8; ALL]>(head, nh)?;
    let mut h = Headers {
        ip: [0; 40],
        tcp: [0; 14],
    };
    copy_bytes(&mut h.ip[..IP], &b[..IP]);
    copy_bytes(&mut h.tcp, &b[IP..]);
    Some(h)
}

/// Byte copy, unrolled by the compiler for these constant lengths (`copy_from_slice` can become
/// a call to the target's byte-loop memcpy).
#[inline(always)]
fn copy_bytes(dst: &mut [u8], src: &[u8]) {
    let mut i = 0;
    while i < dst.len() && i < src.len() {
        dst[i] = src[i];
        i += 1;
    }
}

/// Reads the IP and TCP headers of the segment a reset answers. The reset goes back to the
/// segment's source, so local = its destination. For a LISTEN or absent socket this is the only
/// place the real endpoints are (the tracepoint shows the listener's `0.0.0.0:port`).
#[inline(always)]
fn read_packet(skb: u64, ev: &mut RstEvent) {
    if let Some(h) = read_headers(SLOT_SEND, skb) {
        segment_facts(&h, ev);
    }
}

/// Endpoints, flags and TTL of the segment a reset answers, from its headers.
#[inline(always)]
fn segment_facts(h: &Headers, ev: &mut RstEvent) {
    let ip = &h.ip;
    match h.ip_version() {
        4 => {
            ev.family = AF_INET as u8;
            ev.remote_addr[..4].copy_from_slice(&ip[12..16]);
            ev.local_addr[..4].copy_from_slice(&ip[16..20]);
        }
        6 => {
            ev.family = AF_INET6 as u8;
            ev.remote_addr.copy_from_slice(&ip[8..24]);
            ev.local_addr.copy_from_slice(&ip[24..40]);
        }
        _ => return,
    }
    ev.ttl = h.ttl();
    ev.remote_port = u16::from_be_bytes([h.tcp[0], h.tcp[1]]);
    ev.local_port = u16::from_be_bytes([h.tcp[2], h.tcp[3]]);
    ev.tcp_flags = h.tcp[13];
    ev.facts |= FACT_PACKET;
}

/// How long a connection has been idle: jiffies since the last send (lsndtime), ACK
/// (rcv_tstamp) or data (icsk_ack.lrcvtime); all u32 jiffies, so wrapping differences. For
/// received resets only (a sent reset's own write just reset the send clock).
#[inline(always)]
fn read_idle(sk: u64, ev: &mut RstEvent) {
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
fn read_tcp_sock(w: &Window, sk: u64, ev: &mut RstEvent) {
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
    let bit = conf!(sock_linger_bit);
    // sk_flags sits in sock_common since 6.18 (skc_flags): then the socket window has it.
    let flags = if usize::from(conf!(sk_flags)) + 8 <= SKC_WINDOW {
        Some(skc::<u64>(w, conf!(sk_flags)))
    } else {
        kread::<u64>(sk, conf!(sk_flags))
    };
    if bit < 64
        && let Some(flags) = flags
        && flags & (1u64 << bit) != 0
    {
        ev.facts |= FACT_LINGER_ON;
        if kread::<u64>(sk, conf!(sk_lingertime)) == Some(0) {
            ev.facts |= FACT_LINGER_ZERO;
        }
    }
}

#[inline(always)]
fn owner_from_map(sk: u64, ev: &mut RstEvent) {
    if sk == 0 {
        return;
    }
    // SAFETY: the value is read at once; LRU entries may be recycled concurrently, which at
    // worst yields a stale owner for a pointer the kernel reused (the destroy hook prevents most).
    let info = match SOCKS.get_ptr_mut(&sk) {
        Some(info) => unsafe {
            // Its coming move to CLOSE is this abort, not a hand-over to TIME_WAIT.
            (*info).flags |= SOCK_RESET_SEEN;
            Some(&*info)
        },
        None => recently_destroyed(sk, ev),
    };
    if let Some(info) = info {
        ev.prev_state = info.close_prev_state;
        ev.peer_ttl = info.peer_ttl;
        if info.owner_ns != 0 {
            // SAFETY: Tasks are 8-aligned (repr(align(8))), 32 bytes.
            unsafe { copy_words(&mut ev.owner, &info.owner) };
            ev.owner_ns = info.owner_ns;
            ev.attribution = ATTR_OWNER_MAP;
            return;
        }
    }
    // Sockets that existed before rst-trace started: userspace seeded their owners by cookie.
    if ev.cookie != 0
        && let Some(t) = unsafe { SEED_OWNERS.get(&ev.cookie) }
    {
        // SAFETY: as above.
        unsafe { copy_words(&mut ev.owner, t) };
        ev.attribution = ATTR_OWNER_SEED;
    }
}

/// This CPU's copy of `sk`'s entry if `sk` was the last socket it destroyed, moments ago.
#[inline(always)]
fn recently_destroyed(sk: u64, ev: &RstEvent) -> Option<&'static SockInfo> {
    let d = LAST_DESTROYED.get(0)?;
    // tcp_set_state(TCP_CLOSE) -> inet_put_port() has zeroed skc_num by destroy time: then only
    // the remote port can be compared.
    let lport = (d.ports >> 16) as u16;
    let rport = d.ports as u16;
    (d.sk == sk
        && (lport == 0 || lport == ev.local_port)
        && rport == ev.remote_port
        && ev.mono_ns.wrapping_sub(d.info.destroyed_ns) <= DESTROYED_GRACE_NS)
        .then_some(&d.info)
}

/// Records the current task as `sk`'s owner (called only in the owner's own system calls).
/// A socket passed to another process (fork, SCM_RIGHTS) changes hands at its next use there.
#[inline(always)]
fn learn_owner(sk: u64) {
    if sk == 0 {
        return;
    }
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(info) = SOCKS.get_ptr_mut(&sk) {
        // SAFETY: a map value pointer, valid for this program run.
        unsafe {
            if (*info).owner_ns != 0 && (*info).owner.pid == pid {
                return;
            }
            fill_current_task(&mut (*info).owner);
            (*info).owner_ns = bpf_ktime_get_ns();
        }
        return;
    }
    new_owner(sk);
}

/// Starts a fresh entry for `sk`, owned by the current task (replacing any entry a dead socket
/// at the same address left).
#[inline(always)]
fn new_owner(sk: u64) {
    bump_generation();
    let mut info = core::mem::MaybeUninit::<SockInfo>::uninit();
    // SAFETY: SockInfo is plain integers, 8-aligned, a multiple of 8 bytes; zeroed, then filled.
    let info = unsafe {
        zero_words(info.as_mut_ptr());
        let info = info.assume_init_mut();
        fill_current_task(&mut info.owner);
        info.owner_ns = bpf_ktime_get_ns();
        &*info
    };
    let _ = SOCKS.insert(&sk, info, 0);
}

/// In-kernel filters, so a busy host does not pay for events nobody asked for.
#[inline(always)]
fn wanted(ev: &RstEvent) -> bool {
    // --pid drops received resets here; sent ones go on to userspace, which needs them to
    // explain the received resets they cause (a link to the sender, the data_after_close
    // self-reset) and filters them itself.
    if conf!(filters) & FILTER_PID != 0 && ev.kind == KIND_RECEIVED {
        if ev.attribution == ATTR_NONE {
            return false;
        }
        if FILTER_PIDS.get_ptr(&ev.owner.pid).is_none() {
            return false;
        }
    }
    if conf!(filters) & FILTER_PORT != 0
        && FILTER_PORTS.get_ptr(&ev.local_port).is_none()
        && FILTER_PORTS.get_ptr(&ev.remote_port).is_none()
    {
        return false;
    }
    true
}

/// Per CPU and slot: 1 while a program builds an event in that slot.
#[map]
static BUSY: PerCpuArray<u32> = PerCpuArray::with_max_entries(3, 0);

/// Takes `slot` for this run, or counts the event lost if the run this one interrupted holds it:
/// before 6.1 (commit 05b24ff9b2cf) a BTF or raw tracepoint program could nest in itself, a
/// softirq's reset inside a process-context one on the same CPU, and the two would share the
/// slot. (Since then the kernel skips the inner run and counts it in `recursion_misses`, which
/// userspace reports as lost.) Give the slot back with [`unclaim`].
#[inline(always)]
fn claim(slot: u32) -> Option<*mut u32> {
    let busy = BUSY.get_ptr_mut(slot)?;
    // SAFETY: per-CPU value; an interrupting run finishes before this one continues.
    unsafe {
        if *busy != 0 {
            count_lost();
            return None;
        }
        *busy = 1;
    }
    Some(busy)
}

#[inline(always)]
fn unclaim(busy: *mut u32) {
    // SAFETY: the pointer claim() returned, valid for this run.
    unsafe { *busy = 0 };
}

#[inline(always)]
fn count_lost() {
    if let Some(n) = LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *n += 1 };
    }
}

/// The zeroed per-CPU scratch event, stamped with the current time.
#[inline(always)]
fn scratch_event(slot: u32) -> Option<&'static mut RstEvent> {
    let ev = SCRATCH.get_ptr_mut(slot)?;
    // SAFETY: per-CPU slot, held by this run only (see claim()).
    unsafe {
        zero_words(ev);
        (*ev).mono_ns = bpf_ktime_get_ns();
        Some(&mut *ev)
    }
}

/// Hands the event to userspace: counted in `COUNTS` when only a summary is wanted and the
/// event can be (`RstEvent::countable`), else a ring record. A full count map falls back to the
/// ring, so nothing is lost.
#[inline(always)]
fn deliver(slot: u32, ev: &mut RstEvent) {
    if conf!(count_in_kernel) != 0
        && ev.countable()
        && let Some(key) = COUNT_KEY.get_ptr_mut(slot)
    {
        // SAFETY: per-CPU slot of this program, held by this run (claim()); RstEvent is
        // 8-aligned, 160 bytes, as copy_words() needs.
        let key = unsafe {
            copy_words(key, ev);
            (*key).count_key();
            &*key
        };
        if let Some(n) = COUNTS.get_ptr_mut(key) {
            // SAFETY: this CPU's value; nested runs never use the same key (claim()).
            unsafe { *n += 1 };
            return;
        }
        if COUNTS.insert(key, &1, u64::from(BPF_NOEXIST)).is_ok() {
            return;
        }
        // Another CPU created the key meanwhile (values are per CPU; this one starts at 0).
        if let Some(n) = COUNTS.get_ptr_mut(key) {
            // SAFETY: as above.
            unsafe { *n += 1 };
            return;
        }
        // The map is full: the event itself, unreduced, goes to the ring.
    }
    submit(ev);
}

#[inline(always)]
fn submit(ev: &RstEvent) {
    // Do not wake userspace for every event (a reset storm would cost a wakeup each): wake it
    // once the ring holds `wake_bytes`; userspace also drains on a short timer, so a lone event
    // still shows promptly.
    //
    // Only the event that makes the ring cross the threshold wakes it: a wakeup is an irq_work,
    // a self-IPI (a VM exit under a hypervisor, ~1.5 us measured here), and while userspace is
    // behind it is awake and draining anyway.
    let wake = u64::from(conf!(wake_bytes));
    let avail = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    let flags =
        if wake == 0 || (avail < wake && avail + core::mem::size_of::<RstEvent>() as u64 >= wake) {
            u64::from(BPF_RB_FORCE_WAKEUP)
        } else {
            u64::from(BPF_RB_NO_WAKEUP)
        };
    if EVENTS.output(ev, flags).is_err() {
        // Never lose an event silently: userspace reports this count.
        count_lost();
    }
}

/// A reset TCP sends: `sk` may be 0 (no socket: closed port), `skb` is 0 for an active reset
/// (tcp_send_active_reset(): close, disconnect, abort, keepalive timeout).
#[inline(always)]
fn on_send_reset(sk: u64, skb: u64, reason: u32, cookie: u64) {
    if let Some(busy) = claim(SLOT_SEND) {
        send_reset_event(sk, skb, reason, cookie);
        unclaim(busy);
    }
}

#[inline(always)]
fn send_reset_event(sk: u64, skb: u64, reason: u32, cookie: u64) {
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
    let state = i32::from(skc::<u8>(w, conf!(sk_state)));
    ev.state = state as u8;
    if skb != 0 {
        // A reply to an incoming segment (tcp_v4_send_reset / tcp_v6_send_reset, softirq): for
        // a LISTEN or absent socket the packet is the only place the real endpoints are.
        read_packet(skb, ev);
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
    ev.cookie = if cookie != 0 {
        cookie
    } else {
        skc::<u64>(w, conf!(sk_cookie))
    };
    owner_from_map(sk, ev);
    if sk != 0 && state == TCP_LISTEN {
        // Listener facts: a full accept queue explains INVALID_SYN / TCP_FLAGS resets.
        if let (Some(q), Some(max)) = (
            kread::<u32>(sk, conf!(sk_ack_backlog)),
            kread::<u32>(sk, conf!(sk_max_ack_backlog)),
        ) {
            ev.ack_backlog = q;
            ev.max_ack_backlog = max;
            ev.facts |= FACT_BACKLOG;
        }
    } else if sk != 0 && state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV {
        // A full tcp_sock (TIME_WAIT and request sockets are mini-sockets without these fields).
        read_tcp_sock(w, sk, ev);
    }
    if skb == 0 && sk != 0 && state == TCP_CLOSE {
        // tcp_send_active_reset() on a socket moved to CLOSE right before the reset:
        // tcp_close(), tcp_disconnect() or process exit, all in the owner's own system call (the
        // keepalive timer's reset leaves the state ESTABLISHED). The current task is the one
        // that acted.
        let tid = bpf_get_current_pid_tgid() as u32;
        let recent = LAST_LISTENER_CLOSE
            .get(0)
            .is_some_and(|&t| t != 0 && ev.mono_ns.wrapping_sub(t) < 1_000_000_000);
        // SAFETY: value copied out at once.
        if recent
            && let Some(l) = unsafe { CLOSING_LISTENERS.get(&tid) }
            && l.port == ev.local_port
            && ev.mono_ns.wrapping_sub(l.mono_ns) < 1_000_000_000
        {
            ev.facts |= FACT_LISTENER_CLOSING;
        }
        fill_current_task(&mut ev.owner);
        ev.owner_ns = ev.mono_ns;
        ev.attribution = ATTR_OWNER_CURRENT;
    }
    if wanted(ev) {
        deliver(SLOT_SEND, ev);
    }
}

/// A reset received on socket `sk` (tcp_reset(), before the socket is moved to CLOSE).
#[inline(always)]
fn on_receive_reset(sk: u64, cookie: u64) {
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
    ev.cookie = if cookie != 0 {
        cookie
    } else {
        skc::<u64>(w, conf!(sk_cookie))
    };
    ev.netns = sock_netns(w);
    // Idle times explain resets of established connections; a refused connection attempt
    // (SYN_SENT) has none worth reading.
    if ev.state != TCP_SYN_SENT as u8 {
        read_idle(sk, ev);
    }
    owner_from_map(sk, ev);
    // An established socket handles the RST in tcp_rcv_established(), whose tcp_probe noted
    // the segment just before: its TTL is the RST's. (Other states never pass there, so a stale
    // note for the socket is never read.)
    if ev.state == TCP_ESTABLISHED as u8
        && let Some(cur) = CUR_SEG.get(0)
        && cur[0] == sk
        && let Some((ttl, flags)) = segment_ttl_flags(SLOT_RECV, cur[1])
        && flags & TCP_RST != 0
    {
        ev.ttl = ttl;
        ev.facts |= FACT_RST_TTL;
    }
    if wanted(ev) {
        deliver(SLOT_RECV, ev);
    }
}

/// The first `N` arguments of a BTF tracepoint as plain numbers, in one read: the verifier
/// types a pointer argument loaded straight from the context and rejects arithmetic on it, and
/// the fields we read sit at offsets only known at run time.
#[inline(always)]
fn btf_args<const N: usize>(ctx: &BtfTracePointContext) -> [u64; N] {
    // SAFETY: bpf_probe_read_kernel never faults; the context is an array of u64 arguments.
    unsafe { bpf_probe_read_kernel(ctx.as_ptr() as *const [u64; N]) }.unwrap_or([0; N])
}

/// The socket's cookie, generated if it has none yet (as the record-based tracepoints do with
/// sock_gen_cookie()): the helper needs the argument as the kernel typed it.
#[inline(always)]
fn btf_sock_cookie(ctx: &BtfTracePointContext) -> u64 {
    let sk: *mut c_void = ctx.arg(0);
    if sk.is_null() {
        return 0;
    }
    // SAFETY: sk is the tracepoint's own, BTF-typed socket argument.
    unsafe { bpf_get_socket_cookie(sk) }
}

/// BTF tracepoint `tcp_send_reset(sk, skb[, reason])`: unlike the record-based tracepoint, the
/// kernel formats no trace record (addresses and all) for us to read back field by field.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset_btf(ctx: BtfTracePointContext) -> i32 {
    // Reading the third slot is harmless where there is none (before 6.10): it is then ignored.
    let [sk, skb, reason] = btf_args::<3>(&ctx);
    let reason = if conf!(send_reason_arg) == REASON_ARG {
        reason as u32
    } else {
        REASON_NONE
    };
    on_send_reset(sk, skb, reason, btf_sock_cookie(&ctx));
    0
}

/// BTF tracepoint `tcp_receive_reset(sk)`.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset_btf(ctx: BtfTracePointContext) -> i32 {
    let [sk] = btf_args::<1>(&ctx);
    on_receive_reset(sk, btf_sock_cookie(&ctx));
    0
}

/// `tcp_send_reset_btf` without `bpf_get_socket_cookie()`, which tracing programs may call only
/// since 5.12 (commit c5dbb89fc2ac, "bpf: Expose bpf_get_socket_cookie to tracing programs"):
/// on 5.5-5.11 the verifier stops at the call ("unknown func"). The cookie then comes from the
/// socket, as with the record-based tracepoint, whose record has no cookie (0 if the kernel
/// never generated one). There is no such variant for `tcp_receive_reset`: its
/// record carries a cookie the kernel generates (sock_gen_cookie()), so the record-based program
/// is the better one there.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset_btf_nocookie(ctx: BtfTracePointContext) -> i32 {
    let [sk, skb, reason] = btf_args::<3>(&ctx);
    let reason = if conf!(send_reason_arg) == REASON_ARG {
        reason as u32
    } else {
        REASON_NONE
    };
    on_send_reset(sk, skb, reason, 0);
    0
}

/// `tcp:tcp_send_reset`, the trace record: where the BTF tracepoint cannot be used.
#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let sk = tp::<u64>(&ctx, conf!(send_skaddr)).unwrap_or(0);
    let skb = tp::<u64>(&ctx, conf!(send_skbaddr)).unwrap_or(0);
    let reason = tp::<u32>(&ctx, conf!(send_reason)).unwrap_or(REASON_NONE);
    on_send_reset(sk, skb, reason, 0);
    0
}

/// `tcp:tcp_receive_reset`, the trace record.
#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let sk = tp::<u64>(&ctx, conf!(recv_skaddr)).unwrap_or(0);
    let cookie = tp::<u64>(&ctx, conf!(recv_cookie)).unwrap_or(0);
    on_receive_reset(sk, cookie);
    0
}

/// Learns socket owners and state history. `connect()` (CLOSE -> SYN_SENT) and `listen()`
/// (-> LISTEN) run in the owner's own system call, so the current task is the owner there.
/// `port` gives the socket's local port (only needed when a listener closes).
#[inline(always)]
fn on_set_state(sk: u64, old: i32, new: i32, port: impl FnOnce() -> u16) {
    if new == TCP_SYN_SENT && old == TCP_CLOSE && sk != 0 {
        // connect() on a new socket: nothing to look up first.
        new_owner(sk);
    } else if new == TCP_SYN_SENT || new == TCP_LISTEN {
        learn_owner(sk);
    } else if new == TCP_CLOSE && old != TCP_SYN_SENT {
        // (A connection attempt that fails or is abandoned sends no reset of its own: nothing
        // to remember. That is every attempt of a refused-connection storm.)
        if old == TCP_LISTEN {
            // tcp_close() of a listener: the resets of its unaccepted children follow, in this
            // same thread (inet_csk_listen_stop()).
            let l = ListenerClose {
                sk,
                mono_ns: unsafe { bpf_ktime_get_ns() },
                port: port(),
                _pad0: 0,
                _pad1: 0,
            };
            let _ = CLOSING_LISTENERS.insert(&(bpf_get_current_pid_tgid() as u32), &l, 0);
            if let Some(t) = LAST_LISTENER_CLOSE.get_ptr_mut(0) {
                // SAFETY: a map value pointer; a lost race only costs a look-up.
                unsafe { *t = l.mono_ns };
            }
        }
        if let Some(info) = SOCKS.get_ptr_mut(&sk) {
            // SAFETY: a map value pointer, valid for this program run.
            unsafe { (*info).close_prev_state = old as u8 };
        } else {
            let mut info = core::mem::MaybeUninit::<SockInfo>::uninit();
            // SAFETY: as in new_owner().
            let info = unsafe {
                zero_words(info.as_mut_ptr());
                let info = info.assume_init_mut();
                info.close_prev_state = old as u8;
                &*info
            };
            let _ = SOCKS.insert(&sk, info, 0);
        }
    }
}

/// `sock:inet_sock_set_state`, the tracepoint record (kernels where `sk_protocol` is a bitfield,
/// before 5.6, and so cannot be read from the socket by offset).
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if tp::<u16>(&ctx, conf!(ss_protocol)) != Some(IPPROTO_TCP) {
        return 0;
    }
    let Some(sk) = tp::<u64>(&ctx, conf!(ss_skaddr)) else {
        return 0;
    };
    let old = tp::<i32>(&ctx, conf!(ss_oldstate)).unwrap_or(0);
    let new = tp::<i32>(&ctx, conf!(ss_newstate)).unwrap_or(0);
    on_set_state(sk, old, new, || {
        tp::<u16>(&ctx, conf!(ss_sport)).unwrap_or(0)
    });
    0
}

/// Raw tracepoint `inet_sock_set_state(sk, oldstate, newstate)`: the same without the kernel
/// formatting a trace record (addresses and all) for every state change of every socket.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_raw(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old = ctx.arg::<u64>(1) as i32;
    let new = ctx.arg::<u64>(2) as i32;
    // The transitions on_set_state() acts on, tested before anything is read: most state
    // changes of ordinary traffic (handshake, FIN exchange) end here.
    if !(new == TCP_SYN_SENT || new == TCP_LISTEN || (new == TCP_CLOSE && old != TCP_SYN_SENT)) {
        return 0;
    }
    if kread::<u16>(sk, conf!(sk_protocol)) != Some(IPPROTO_TCP) {
        return 0;
    }
    // skc_num: the local port in host byte order.
    on_set_state(sk, old, new, || {
        kread::<u16>(sk, conf!(sk_num)).unwrap_or(0)
    });
    0
}

/// The socket is freed after this and its address may be reused: forget it, keeping a per-CPU
/// copy for the reset an orphan's destruction may still send (see `recently_destroyed`). The map
/// stays as small as the set of live sockets, so a connection storm never makes it evict.
#[inline(always)]
fn on_destroy(sk: u64) {
    // SAFETY: the value is copied at once.
    if let Some(info) = unsafe { SOCKS.get(&sk) }.copied() {
        if let Some(d) = LAST_DESTROYED.get_ptr_mut(0) {
            // SAFETY: per-CPU slot.
            // skc_num is host order; skc_dport network order (include/net/sock.h). They are
            // the two halves of skc_portpair: one read where they sit that way (always so far).
            let (lport, rport) = if conf!(sk_num) == conf!(sk_dport).wrapping_add(2) {
                let [dport, num] = kread::<[u16; 2]>(sk, conf!(sk_dport)).unwrap_or([0; 2]);
                (num, u16::from_be(dport))
            } else {
                (
                    kread::<u16>(sk, conf!(sk_num)).unwrap_or(0),
                    u16::from_be(kread::<u16>(sk, conf!(sk_dport)).unwrap_or(0)),
                )
            };
            unsafe {
                (*d).sk = sk;
                (*d).ports = (u64::from(lport) << 16) | u64::from(rport);
                (*d).info = info;
                (*d).info.destroyed_ns = bpf_ktime_get_ns();
            }
        }
        if conf!(xmit_socketless) != 0
            && info.flags & SOCK_RESET_SEEN == 0
            && i32::from(info.close_prev_state) == TCP_FIN_WAIT2
        {
            remember_timewait(sk);
        }
        let _ = SOCKS.remove(&sk);
        bump_generation();
    }
}

/// Records that `sk`'s connection may live on in a TIME_WAIT mini-socket that resets: only one
/// in the FIN_WAIT2 sub-state answers with RST (new data, or a SYN, in
/// tcp_timewait_state_process()), and tcp_time_wait() creates it from FIN_WAIT2 (an orphan's
/// FIN_WAIT2 timeout), then tcp_done() moves the socket to CLOSE. No tracepoint marks the
/// hand-over itself; an abort from FIN_WAIT2 (a reset sent or received) is told apart by
/// `SOCK_RESET_SEEN`.
#[inline(always)]
fn remember_timewait(sk: u64) {
    let mut f = core::mem::MaybeUninit::<Flow>::uninit();
    // SAFETY: Flow is plain integers, 8-aligned, 40 bytes: zeroed with word stores (a literal
    // initialiser becomes a call to the target's byte-loop memset), then filled.
    let f = unsafe {
        zero_words(f.as_mut_ptr());
        f.assume_init_mut()
    };
    f.netns = kread::<u64>(sk, conf!(sk_net))
        .and_then(|net| kread::<u32>(net, conf!(net_inum)))
        .unwrap_or(0);
    // skc_num is 0 once inet_put_port() ran; inet_sport keeps the port (network order).
    f.local_port = u16::from_be(kread::<u16>(sk, conf!(inet_sport)).unwrap_or(0));
    f.remote_port = u16::from_be(kread::<u16>(sk, conf!(sk_dport)).unwrap_or(0));
    if kread::<u16>(sk, conf!(sk_family)) == Some(AF_INET6) {
        if let Some(a) = kread::<[u64; 2]>(sk, conf!(sk_v6_rcv_saddr)) {
            f.local = a;
        }
        if let Some(a) = kread::<[u64; 2]>(sk, conf!(sk_v6_daddr)) {
            f.remote = a;
        }
    } else {
        f.local[0] = u64::from(kread::<u32>(sk, conf!(sk_rcv_saddr)).unwrap_or(0));
        f.remote[0] = u64::from(kread::<u32>(sk, conf!(sk_daddr)).unwrap_or(0));
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = TIMEWAIT.insert(f, &now, 0);
}

#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    if let Some(sk) = tp::<u64>(&ctx, conf!(destroy_skaddr)) {
        on_destroy(sk);
    }
    0
}

/// Raw tracepoint `tcp_destroy_sock(sk)`: no trace record formatted.
#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock_raw(ctx: RawTracePointContext) -> i32 {
    on_destroy(ctx.arg(0));
    0
}

/// Raw tracepoints `sock_send_length` / `sock_recv_length` (6.3+, args: sk, ret, flags):
/// every send and receive runs in the process that uses the socket, which owns it from then on
/// (e.g. a worker that inherited it). Raw, so the kernel does not format a trace record for
/// each call, and a per-CPU memo skips the map for a stream on one socket.
#[raw_tracepoint]
pub fn sock_io(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let pid = bpf_get_current_pid_tgid() >> 32;
    if let Some(last) = LAST_IO.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe {
            if (*last)[0] == sk && (*last)[1] == pid {
                return 0;
            }
            *last = [sk, pid];
        }
    }
    if conf!(sk_protocol) != OFF_NONE && kread::<u16>(sk, conf!(sk_protocol)) != Some(IPPROTO_TCP) {
        return 0;
    }
    learn_owner(sk);
    0
}

/// `syscalls:sys_exit_accept4` / `sys_exit_accept`: the new fd's socket belongs to the caller.
/// current->files->fdt->fd[ret]->private_data (struct socket)->sk.
#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let Some(fd) = tp::<i64>(&ctx, conf!(exit_ret)) else {
        return 0;
    };
    if fd < 0 {
        return 0;
    }
    // SAFETY: helper without preconditions; the result is only used as a number.
    let task = unsafe { bpf_get_current_task() };
    let Some(files) = kread::<u64>(task, conf!(task_files)) else {
        return 0;
    };
    let Some(fdt) = kread::<u64>(files, conf!(files_fdt)) else {
        return 0;
    };
    let Some(max) = kread::<u32>(fdt, conf!(fdt_max_fds)) else {
        return 0;
    };
    if fd as u64 >= u64::from(max) {
        return 0;
    }
    let Some(fds) = kread::<u64>(fdt, conf!(fdt_fd)) else {
        return 0;
    };
    let Some(file) = kread_at::<u64>(fds + (fd as u64) * 8) else {
        return 0;
    };
    let Some(sock) = kread::<u64>(file, conf!(file_private_data)) else {
        return 0;
    };
    let Some(sk) = kread::<u64>(sock, conf!(socket_sk)) else {
        return 0;
    };
    if conf!(sk_protocol) != OFF_NONE && kread::<u16>(sk, conf!(sk_protocol)) != Some(IPPROTO_TCP) {
        return 0;
    }
    learn_owner(sk);
    0
}

/// Raw tracepoint `tcp_probe(sk, skb)`, first thing in tcp_rcv_established(), for every
/// segment of an established connection: so it only notes the segment (per-CPU, no reads), and
/// samples the peer's TTL when the CPU moves to another socket.
#[raw_tracepoint(tracepoint = "tcp_probe")]
pub fn tcp_probe_ttl(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    let Some(cur) = CUR_SEG.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU slot, valid for this program run.
    let cur = unsafe { &mut *cur };
    cur[0] = sk;
    cur[1] = skb;
    // struct sock objects are at least 256-byte aligned slab objects: skip the low bits.
    let slot = 2 + (((sk >> 8) ^ (sk >> 14)) as usize & (SAMPLED_SLOTS - 1));
    let key = sk ^ SOCK_GENERATION.get(0).copied().unwrap_or(0);
    if cur[slot] == key {
        return 0;
    }
    let Some((ttl, flags)) = segment_ttl_flags(SLOT_PROBE, skb) else {
        return 0;
    };
    if flags & TCP_RST != 0 {
        // Not a sample of the peer: it may be the very reset under suspicion.
        return 0;
    }
    if let Some(info) = SOCKS.get_ptr_mut(&sk) {
        // SAFETY: a map value pointer, valid for this program run.
        unsafe { (*info).peer_ttl = ttl };
    }
    cur[slot] = key;
    0
}

/// TTL / hop limit and TCP flags of an skb in the TCP receive path.
#[inline(always)]
fn segment_ttl_flags(slot: u32, skb: u64) -> Option<(u8, u8)> {
    let (head, nh, th) = skb_header_offsets(slot, skb)?;
    let ip = kread::<[u8; 9]>(head, nh)?;
    let ttl = if ip[0] >> 4 == 6 { ip[7] } else { ip[8] };
    Some((ttl, kread_at::<u8>(head + u64::from(th) + 13)?))
}

/// `net:net_dev_queue`: every transmitted packet, so it must stay cheap. It reports the RSTs no
/// TCP tracepoint shows:
/// - netfilter's REJECT (nf_send_reset(), nf_send_reset6()), built with no socket;
/// - before 6.10, TCP's own resets sent without a full socket (no socket, or a TIME_WAIT one):
///   tcp_v4_send_reset() sends with the per-CPU TCP control socket, tcp_v6_send_response() with
///   none (ip6_xmit() does not attach its control socket to the skb).
///
/// Every other packet carries its socket, and one read (two, for a socket not seen last on this
/// CPU, before 6.10) decides. Raw (arg: skb), so the kernel formats no trace record per packet.
#[raw_tracepoint(tracepoint = "net_dev_queue")]
pub fn net_dev_queue(ctx: RawTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let Some(sk) = kread::<u64>(skb, conf!(skb_sk)) else {
        return 0;
    };
    let tcp_ctl = sk != 0 && tcp_control_sock(sk);
    if sk != 0 && !tcp_ctl {
        return 0;
    }
    // A forwarded packet (router, bridge to a container) lost its socket but remembers where it
    // came in; an RST built on this host is a new skb with skb_iif 0.
    if !tcp_ctl && kread::<i32>(skb, conf!(skb_iif)) != Some(0) {
        return 0;
    }
    let Some(rst) = xmit_headers(skb) else {
        return 0;
    };
    if rst.tcp[13] & TCP_RST == 0 {
        return 0;
    }
    let (sport, dport) = (rst.sport(), rst.dport());
    let now = unsafe { bpf_ktime_get_ns() };
    // tcp_send_reset reported it already (it fires before the reply is built): the same ports,
    // and the segment this CPU is receiving is the one it answered, or it was just now.
    if let Some(last) = LAST_TCP_RST.get(0)
        && last[1] == (u64::from(sport) << 16) | u64::from(dport)
        && (now.wrapping_sub(last[0]) < ANNOUNCED_NS || CUR_RX.get(0) == Some(&last[2]))
    {
        return 0;
    }
    // A packet crossing stacked devices (bridge -> veth, vlan -> eth) is queued once per device:
    // report it once.
    if let Some(last) = LAST_REJECT_SKB.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe {
            if (*last)[0] == skb && now.wrapping_sub((*last)[1]) < 1_000_000 {
                return 0;
            }
            *last = [skb, now];
        }
    }
    let by_tcp = tcp_ctl || (rst.family == AF_INET6 && tcp_built_v6(skb, &rst.ip));
    let Some(busy) = claim(SLOT_TRANSMIT) else {
        return 0;
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
            rst_facts(ev, &rst);
        }
        if wanted(ev) {
            deliver(SLOT_TRANSMIT, ev);
        }
    }
    unclaim(busy);
    0
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

/// A transmitted TCP segment: the IP header (40 bytes), the first 14 bytes of the TCP header.
struct Xmit {
    ip: [u8; 40],
    tcp: [u8; 14],
    family: u16,
}

impl Xmit {
    fn sport(&self) -> u16 {
        u16::from_be_bytes([self.tcp[0], self.tcp[1]])
    }

    fn dport(&self) -> u16 {
        u16::from_be_bytes([self.tcp[2], self.tcp[3]])
    }
}

/// The headers of a transmitted packet; None unless it is TCP.
#[inline(always)]
fn xmit_headers(skb: u64) -> Option<Xmit> {
    let head = kread::<u64>(skb, conf!(skb_head))?;
    let nh = kread::<u16>(skb, conf!(skb_network_header))?;
    let ip_addr = head + u64::from(nh);
    let ip = kread_at::<[u8; 40]>(ip_addr)?;
    let (proto, l4, family) = match ip[0] >> 4 {
        4 => (ip[9], u64::from(ip[0] & 0x0f) * 4, AF_INET),
        6 => (ip[6], 40, AF_INET6),
        _ => return None,
    };
    if u16::from(proto) != IPPROTO_TCP {
        return None;
    }
    Some(Xmit {
        ip,
        tcp: kread_at::<[u8; 14]>(ip_addr + l4)?,
        family,
    })
}

/// Endpoints, flags and TTL of a transmitted RST (local = its source).
#[inline(always)]
fn rst_facts(ev: &mut RstEvent, rst: &Xmit) {
    let ip = &rst.ip;
    ev.family = rst.family as u8;
    ev.tcp_flags = rst.tcp[13];
    ev.local_port = rst.sport();
    ev.remote_port = rst.dport();
    if rst.family == AF_INET {
        ev.ttl = ip[8];
        ev.local_addr[..4].copy_from_slice(&ip[12..16]);
        ev.remote_addr[..4].copy_from_slice(&ip[16..20]);
    } else {
        ev.ttl = ip[7];
        ev.local_addr.copy_from_slice(&ip[8..24]);
        ev.remote_addr.copy_from_slice(&ip[24..40]);
    }
}

/// A reset TCP sent without a full socket, before 6.10 (see `net_dev_queue`): the facts
/// `tcp_send_reset` would have given, from the segment it answers (noted by `netif_receive_skb`
/// on this CPU) and from the TIME_WAIT hand-overs `on_destroy` recorded.
#[inline(always)]
fn socketless_event(ev: &mut RstEvent, rst: &Xmit) {
    ev.facts = FACT_XMIT;
    if !answered_segment(ev, rst) {
        rst_facts(ev, rst);
    }
    timewait_state(ev);
}

/// Fills in the segment `rst` answers, if this CPU's receive path is handling it. Calls of their
/// own (bpf-to-bpf, 4.16+), this and the next: inlined, their locals and the transmit hook's
/// exceed the 512-byte stack.
#[inline(never)]
fn answered_segment(ev: &mut RstEvent, rst: &Xmit) -> bool {
    let Some(rx) = CUR_RX.get(0).copied() else {
        return false;
    };
    let Some((head, nh, th)) = skb_header_offsets(SLOT_TRANSMIT, rx) else {
        return false;
    };
    let (ip, tcp) = (head + u64::from(nh), head + u64::from(th));
    // Its source port is the RST's destination port and vice versa, in the same IP version.
    if kread_at::<[u8; 4]>(tcp) != Some([rst.tcp[2], rst.tcp[3], rst.tcp[0], rst.tcp[1]])
        || kread_at::<u8>(ip).map(|b| b >> 4) != Some(rst.ip[0] >> 4)
    {
        return false;
    }
    ev.family = rst.family as u8;
    ev.remote_port = rst.dport();
    ev.local_port = rst.sport();
    ev.tcp_flags = kread_at::<u8>(tcp + 13).unwrap_or(0);
    // Addresses straight into the event (a map value): this runs on top of the transmit hook's
    // stack frame. The reply goes back to the segment's source: local = its destination.
    let (ttl_at, src_at, len) = if rst.family == AF_INET {
        (8, 12, 4)
    } else {
        (7, 8, 16)
    };
    ev.ttl = kread_at::<u8>(ip + ttl_at).unwrap_or(0);
    // SAFETY: bpf_probe_read_kernel never faults; both arrays are 16 bytes, len <= 16.
    unsafe {
        let read = aya_ebpf::helpers::generated::bpf_probe_read_kernel;
        read(
            ev.remote_addr.as_mut_ptr().cast(),
            len,
            (ip + src_at) as *const c_void,
        );
        read(
            ev.local_addr.as_mut_ptr().cast(),
            len,
            (ip + src_at + u64::from(len)) as *const c_void,
        );
    }
    ev.facts |= FACT_PACKET;
    true
}

/// TIME_WAIT if the flow was handed to a TIME_WAIT mini-socket (`remember_timewait`).
#[inline(never)]
fn timewait_state(ev: &mut RstEvent) {
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
    // SAFETY: copied out at once.
    if let Some(&since) = unsafe { TIMEWAIT.get(&flow) } {
        // The mini-socket is killed after answering with RST (inet_twsk_deschedule_put()).
        let _ = TIMEWAIT.remove(&flow);
        if ev.mono_ns.wrapping_sub(since) < TIMEWAIT_NS {
            ev.state = TCP_TIME_WAIT as u8;
        }
    }
}

/// Raw tracepoint `netif_receive_skb(skb)` (before 6.10, with the transmit hook): notes the
/// segment this CPU's receive path handles, for `socketless_event`. One store per packet.
#[raw_tracepoint(tracepoint = "netif_receive_skb")]
pub fn netif_receive_skb(ctx: RawTracePointContext) -> i32 {
    if let Some(cur) = CUR_RX.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *cur = ctx.arg(0) };
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
