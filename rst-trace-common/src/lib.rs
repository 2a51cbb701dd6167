//! The one definition of the ABI between rst-trace's eBPF programs and its userspace daemon.
//!
//! Everything here is `#[repr(C)]` with explicit-width fields and explicit padding, so both sides
//! (bpfel and x86_64) agree on every byte. No `bool`: flags are bits in integers.
#![no_std]

/// Ring buffer carrying [`RstEvent`]s to userspace.
pub const MAP_EVENTS: &str = "EVENTS";
/// Per-CPU count of events dropped because the ring buffer was full.
pub const MAP_LOST: &str = "LOST";
/// `--summary --quiet`: per-CPU counts of resets, keyed by the event reduced to what decides its
/// process, condition and direction ([`RstEvent::count_key`]), instead of one ring record each.
pub const MAP_COUNTS: &str = "COUNTS";
pub const COUNTS_MAX_ENTRIES: u32 = 4096;
/// Per-CPU count of failed inserts into the socket, TIME_WAIT and closing-listener maps (LRU
/// maps evict rather than fail, so this stays 0 but for a kernel out of memory).
pub const MAP_INSERT_FAILED: &str = "INSERT_FAILED";
/// `--pid` filter: thread group ids to keep (value unused).
pub const MAP_FILTER_PIDS: &str = "FILTER_PIDS";
/// `--port` filter: ports to keep, host byte order (value unused).
pub const MAP_FILTER_PORTS: &str = "FILTER_PORTS";
/// The [`Config`] global, filled in by userspace before load.
pub const GLOBAL_CONFIG: &str = "CONFIG";

/// BTF tracepoints `tcp_send_reset` / `tcp_receive_reset` (the kernel formats no record).
pub const PROG_SEND_RESET_BTF: &str = "tcp_send_reset_btf";
pub const PROG_RECEIVE_RESET_BTF: &str = "tcp_receive_reset_btf";
/// The record-based tracepoints, where the BTF ones cannot be loaded (before 5.12, which lets
/// tracing programs call bpf_get_socket_cookie()).
pub const PROG_SEND_RESET: &str = "tcp_send_reset";
pub const PROG_RECEIVE_RESET: &str = "tcp_receive_reset";
pub const PROG_SET_STATE: &str = "inet_sock_set_state";
pub const PROG_DESTROY_SOCK: &str = "tcp_destroy_sock";
/// Raw-tracepoint versions of the two above, used where the socket's fields can be read.
pub const PROG_SET_STATE_RAW: &str = "inet_sock_set_state_raw";
pub const PROG_DESTROY_SOCK_RAW: &str = "tcp_destroy_sock_raw";
/// Raw tracepoints `sock_send_length` and `sock_recv_length`: owners of sockets in use.
pub const PROG_SOCK_IO: &str = "sock_io";
pub const PROG_EXIT_ACCEPT: &str = "sys_exit_accept";
/// `net:net_dev_queue`: sees RSTs that netfilter's REJECT builds (no TCP tracepoint fires).
pub const PROG_DEV_QUEUE: &str = "net_dev_queue";
/// raw tracepoint `tcp_probe` (every segment tcp_rcv_established() handles): TTL evidence.
pub const PROG_TCP_PROBE: &str = "tcp_probe_ttl";
/// Notes the segment being received, for the socketless resets seen on transmit (before 6.10).
pub const PROG_NETIF_RECEIVE: &str = "netif_receive_skb";
/// Owners of sockets that existed before rst-trace started, keyed by socket cookie (seeded by
/// userspace from sock_diag and /proc/*/fd).
pub const MAP_SEED_OWNERS: &str = "SEED_OWNERS";
pub const SEED_MAX_ENTRIES: u32 = 65536;

/// Default number of sockets remembered in the LRU map from socket address to [`SockInfo`].
pub const SOCKS_MAX_ENTRIES: u32 = 65536;
pub const FILTER_MAX_ENTRIES: u32 = 1024;

/// How many bytes of the start of a socket (`struct sock_common`) the reset programs read in one
/// go; userspace refuses to start if a field they take from there lies beyond.
pub const SKC_WINDOW: usize = 128;

/// `struct sk_buff` keeps `transport_header`, `network_header`, `mac_header`, `tail`, `end`,
/// `head` and `data` together: the programs read the first three and `head` in one go from a
/// window this large.
pub const SKB_HDR_WINDOW: usize = 32;

/// `struct tcp_sock` keeps `copied_seq`, `write_seq`, `lsndtime`, `rcv_nxt`, `snd_una` and
/// `rcv_tstamp` within a few hundred bytes: the programs read them in one go from a window this
/// large (a power of two), where they fit.
pub const TCP_WINDOW: usize = 512;

/// `enum tcp_state` (include/net/tcp_states.h), exported to userspace through /proc/net/tcp.
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_FIN_WAIT1: u8 = 4;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_TIME_WAIT: u8 = 6;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LAST_ACK: u8 = 9;
pub const TCP_LISTEN: u8 = 10;
pub const TCP_CLOSING: u8 = 11;
pub const TCP_NEW_SYN_RECV: u8 = 12;

/// Address families (uapi `linux/socket.h`), as `sk_family` holds them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP` (uapi `linux/in.h`), as `sk_protocol` holds it.
pub const IPPROTO_TCP: u16 = 6;

/// TCP header flag bits (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;

/// The self-abort rule: whether a reset received in `state` may be this host's own abort rather
/// than the peer's. tcp_rcv_state_process() answers data arriving after close() (or after the
/// receive side was shut down) by calling tcp_reset() on the socket, which fires
/// `tcp_receive_reset`, and then sends the RST (the data_after_close / fin_wait2_abort
/// resets); it does so only in its FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, CLOSING and LAST_ACK cases.
/// ESTABLISHED is handled by tcp_rcv_established(), SYN_SENT by
/// tcp_rcv_synsent_state_process(): never a self-abort there.
pub const fn self_abort_state(state: u8) -> bool {
    matches!(
        state,
        TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSE_WAIT | TCP_CLOSING | TCP_LAST_ACK
    )
}

/// Offset value meaning "this field does not exist on the running kernel".
pub const OFF_NONE: u16 = u16::MAX;
/// `RstEvent::reason` when the tracepoint has no `reason` field (kernels before 6.10).
pub const REASON_NONE: u32 = u32::MAX;

/// `Config::send_reason_arg`: the `tcp_send_reset` tracepoint passes `enum sk_rst_reason` as its
/// third argument (6.10+, commit "tcp: add the reason to tcp_send_reset").
pub const REASON_ARG: u8 = 1;

/// `Config::filters` bits.
pub const FILTER_PID: u32 = 1;
pub const FILTER_PORT: u32 = 2;
/// `--direction sent`: received resets are not needed at all.
pub const FILTER_NO_RECEIVED: u32 = 8;

/// Offsets the eBPF programs need, found by userspace at start-up in the tracefs `format` files
/// and in vmlinux BTF, so one object runs on every kernel layout. [`OFF_NONE`] marks an absent field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    // Tracepoint records, for the record-based fallback programs (kernels where the BTF-typed
    // tracepoints cannot be used). Addresses and ports are read from the socket or the packet
    // either way, as the tracepoints themselves do (TP_STORE_ADDR_PORTS in include/trace/events/tcp.h).
    pub send_skbaddr: u16,
    pub send_skaddr: u16,
    pub send_reason: u16,
    pub recv_skaddr: u16,
    pub recv_cookie: u16,
    // sock:inet_sock_set_state record
    pub ss_skaddr: u16,
    pub ss_oldstate: u16,
    pub ss_newstate: u16,
    pub ss_protocol: u16,
    pub ss_sport: u16,
    // tcp:tcp_destroy_sock record
    pub destroy_skaddr: u16,
    // syscalls:sys_exit_accept4 / sys_exit_accept record
    pub exit_ret: u16,
    // struct sock / sock_common
    /// `skc_daddr`, `skc_rcv_saddr`: IPv4 remote and local address.
    pub sk_daddr: u16,
    pub sk_rcv_saddr: u16,
    /// `skc_v6_daddr`, `skc_v6_rcv_saddr`: IPv6 remote and local address.
    pub sk_v6_daddr: u16,
    pub sk_v6_rcv_saddr: u16,
    pub sk_family: u16,
    pub sk_state: u16,
    pub sk_net: u16,
    pub sk_cookie: u16,
    pub sk_flags: u16,
    pub sk_lingertime: u16,
    pub sk_protocol: u16,
    /// `__sk_common.skc_num`: local port, host byte order.
    pub sk_num: u16,
    /// `__sk_common.skc_dport`: remote port, network byte order.
    pub sk_dport: u16,
    pub sk_ack_backlog: u16,
    pub sk_max_ack_backlog: u16,
    /// `inet_sock.inet_sport`: local port, network byte order; still set after tcp_set_state(
    /// TCP_CLOSE) has released the port (inet_put_port() zeroes skc_num).
    pub inet_sport: u16,
    // struct net
    pub net_inum: u16,
    // struct tcp_sock
    pub tp_rcv_nxt: u16,
    pub tp_copied_seq: u16,
    pub tp_write_seq: u16,
    pub tp_snd_una: u16,
    pub tp_linger2: u16,
    pub tp_lsndtime: u16,
    pub tp_rcv_tstamp: u16,
    pub tp_lrcvtime: u16,
    // struct sk_buff
    pub skb_head: u16,
    pub skb_network_header: u16,
    pub skb_dev: u16,
    pub skb_transport_header: u16,
    pub skb_sk: u16,
    pub skb_iif: u16,
    // struct net_device
    pub dev_nd_net: u16,
    // task_struct -> files_struct -> fdtable -> file -> socket -> sock, to find the socket an
    // accept() returned
    pub task_files: u16,
    pub files_fdt: u16,
    pub fdt_max_fds: u16,
    pub fdt_fd: u16,
    pub file_private_data: u16,
    pub socket_sk: u16,
    /// Bit number of `SOCK_LINGER` in `enum sock_flags`.
    pub sock_linger_bit: u16,
    /// `sock.sk_type`, when `sk_protocol` is the u16 right after it (one read tells a TCP
    /// control socket, `SOCK_RAW`/`IPPROTO_TCP`, from the rest); else [`OFF_NONE`].
    pub sk_type: u16,
    /// `FILTER_*` bits.
    pub filters: u32,
    /// Wake userspace once the ring buffer holds this many bytes (0: on every event).
    pub wake_bytes: u32,
    /// [`REASON_ARG`] or 0.
    pub send_reason_arg: u8,
    /// 1: count the resets that [`RstEvent::countable`] allows in [`MAP_COUNTS`] instead of
    /// sending them (`--summary --quiet`).
    pub count_in_kernel: u8,
    /// Where the [`SKB_HDR_WINDOW`] bytes holding `head`, `network_header` and
    /// `transport_header` start in `struct sk_buff` ([`OFF_NONE`]: read them one by one).
    pub skb_hdr_base: u16,
    /// Where the [`TCP_WINDOW`] bytes holding the `tcp_sock` sequence numbers and clocks start
    /// ([`OFF_NONE`]: read them one by one).
    pub tp_win_base: u16,
    /// Byte of `sk_buff` holding the `ip_summed` bitfield ([`OFF_NONE`]: unknown).
    pub skb_ip_summed: u16,
    /// Bit position of `ip_summed` in that byte.
    pub ip_summed_shift: u8,
    /// 1 where `tcp_send_reset` does not fire for resets sent without a full socket (before
    /// 6.10, commit 19822a980e19): the transmit hook reports those.
    pub xmit_socketless: u8,
    pub _pad2: u16,
}

impl Config {
    /// Every field absent and no filter: what the eBPF object is compiled with.
    pub const fn empty() -> Self {
        Self {
            send_skbaddr: OFF_NONE,
            send_skaddr: OFF_NONE,
            send_reason: OFF_NONE,
            recv_skaddr: OFF_NONE,
            recv_cookie: OFF_NONE,
            ss_skaddr: OFF_NONE,
            ss_oldstate: OFF_NONE,
            ss_newstate: OFF_NONE,
            ss_protocol: OFF_NONE,
            ss_sport: OFF_NONE,
            destroy_skaddr: OFF_NONE,
            exit_ret: OFF_NONE,
            sk_daddr: OFF_NONE,
            sk_rcv_saddr: OFF_NONE,
            sk_v6_daddr: OFF_NONE,
            sk_v6_rcv_saddr: OFF_NONE,
            sk_family: OFF_NONE,
            sk_state: OFF_NONE,
            sk_net: OFF_NONE,
            sk_cookie: OFF_NONE,
            sk_flags: OFF_NONE,
            sk_lingertime: OFF_NONE,
            sk_protocol: OFF_NONE,
            sk_num: OFF_NONE,
            sk_dport: OFF_NONE,
            sk_ack_backlog: OFF_NONE,
            sk_max_ack_backlog: OFF_NONE,
            inet_sport: OFF_NONE,
            net_inum: OFF_NONE,
            tp_rcv_nxt: OFF_NONE,
            tp_copied_seq: OFF_NONE,
            tp_write_seq: OFF_NONE,
            tp_snd_una: OFF_NONE,
            tp_linger2: OFF_NONE,
            tp_lsndtime: OFF_NONE,
            tp_rcv_tstamp: OFF_NONE,
            tp_lrcvtime: OFF_NONE,
            skb_head: OFF_NONE,
            skb_network_header: OFF_NONE,
            skb_dev: OFF_NONE,
            skb_transport_header: OFF_NONE,
            skb_sk: OFF_NONE,
            skb_iif: OFF_NONE,
            dev_nd_net: OFF_NONE,
            task_files: OFF_NONE,
            files_fdt: OFF_NONE,
            fdt_max_fds: OFF_NONE,
            fdt_fd: OFF_NONE,
            file_private_data: OFF_NONE,
            socket_sk: OFF_NONE,
            sock_linger_bit: OFF_NONE,
            sk_type: OFF_NONE,
            filters: 0,
            wake_bytes: 0,
            send_reason_arg: 0,
            count_in_kernel: 0,
            skb_hdr_base: OFF_NONE,
            tp_win_base: OFF_NONE,
            skb_ip_summed: OFF_NONE,
            ip_summed_shift: 0,
            xmit_socketless: 0,
            _pad2: 0,
        }
    }
}

const _: () = assert!(core::mem::size_of::<Config>() == 124);

/// A task as the kernel saw it. 8-aligned (as are the structs below, with integer padding): the
/// eBPF target copies and zeroes such values with plain 8-byte loads and stores, where a byte
/// array or a 4-aligned struct becomes a call to a byte-by-byte `memset`/`memmove` loop.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Task {
    /// Thread group id (what userspace calls the pid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub uid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<Task>() == 32);

/// What the kernel side remembers about a socket, keyed by its `struct sock *`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockInfo {
    /// The process that owns the socket, learned in its own system call.
    pub owner: Task,
    /// `bpf_ktime_get_ns()` when `owner` was recorded; 0: no owner known.
    pub owner_ns: u64,
    /// `bpf_ktime_get_ns()` when `tcp_destroy_sock` fired, in the per-CPU copy the eBPF side
    /// keeps of the last destroyed socket; 0 in the map. An orphaned socket is destroyed just
    /// *before* the reset it provokes is sent (tcp_done() in tcp_rcv_state_process(), then the
    /// caller's send_reset, on the same CPU), so that copy counts for [`DESTROYED_GRACE_NS`].
    pub destroyed_ns: u64,
    /// State the socket left for TCP_CLOSE (from `inet_sock_set_state`), 0 if it has not.
    pub close_prev_state: u8,
    /// TTL / hop limit of the peer's last non-RST segment, 0 if none seen.
    pub peer_ttl: u8,
    /// `SOCK_*` bits.
    pub flags: u16,
    pub _pad1: u32,
}

const _: () = assert!(core::mem::size_of::<SockInfo>() == 56);

/// `SockInfo::flags`: the socket sent or received a reset (so its move to CLOSE was an abort,
/// not a hand-over to a TIME_WAIT mini-socket).
pub const SOCK_RESET_SEEN: u16 = 1;

/// How long the copy of a destroyed socket's [`SockInfo`] still counts.
///
/// The reset follows within microseconds on real hardware; the window is wide enough for
/// emulated or overloaded machines, and stays exact because the copy must match the socket
/// address, both ports and the CPU.
pub const DESTROYED_GRACE_NS: u64 = 20_000_000;

/// The listener a thread is closing: its unaccepted connections are reset from inside that
/// `close()` (inet_csk_listen_stop() -> tcp_disconnect() of each child).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerClose {
    pub sk: u64,
    pub mono_ns: u64,
    /// Listening port, host byte order.
    pub port: u16,
    pub _pad0: u16,
    pub _pad1: u32,
}

const _: () = assert!(core::mem::size_of::<ListenerClose>() == 24);

/// `RstEvent::kind`.
pub const KIND_SENT: u8 = 1;
pub const KIND_RECEIVED: u8 = 2;

/// `RstEvent::attribution`.
pub const ATTR_NONE: u8 = 0;
/// `owner` came from the socket map (learned earlier in the owner's own system call).
pub const ATTR_OWNER_MAP: u8 = 1;
/// `owner` is the current task, because the kernel acted inside the owner's system call.
pub const ATTR_OWNER_CURRENT: u8 = 2;
/// `owner` came from [`MAP_SEED_OWNERS`]: the socket existed before rst-trace started.
pub const ATTR_OWNER_SEED: u8 = 3;

/// `RstEvent::facts` bits.
/// The provoking segment's IP and TCP headers were read (`tcp_flags`, `ttl`, endpoints from it).
pub const FACT_PACKET: u32 = 1;
/// `unread`, `unsent` and `linger2` were read from `struct tcp_sock`.
pub const FACT_TCP_SOCK: u32 = 2;
/// The socket has `SO_LINGER` on with a zero timeout.
pub const FACT_LINGER_ZERO: u32 = 4;
/// The socket has `SO_LINGER` on (any timeout).
pub const FACT_LINGER_ON: u32 = 8;
/// The current thread is closing a listener on the reset socket's local port.
pub const FACT_LISTENER_CLOSING: u32 = 16;
/// `ack_backlog`/`max_ack_backlog` were read (the socket is a listener).
pub const FACT_BACKLOG: u32 = 32;
/// `idle_jiffies` was computed.
pub const FACT_IDLE: u32 = 64;
/// The RST was built by netfilter (REJECT --reject-with tcp-reset), seen on transmit; endpoints,
/// `tcp_flags` and `ttl` are the RST's own (local = its source).
pub const FACT_NETFILTER: u32 = 128;
/// Received resets: `ttl` is the RST's own TTL / hop limit.
pub const FACT_RST_TTL: u32 = 256;
/// A reset TCP sent without a full socket, seen on transmit because the kernel (before 6.10)
/// fires no `tcp_send_reset` for it: no socket, or a TIME_WAIT one (`state`). With
/// [`FACT_PACKET`] the segment it answers was found; without, endpoints and `tcp_flags` are the
/// RST's own (local = its source).
pub const FACT_XMIT: u32 = 512;

/// One reset, as the kernel side saw it. Explaining it is userspace's job.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RstEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub mono_ns: u64,
    pub skaddr: u64,
    pub skbaddr: u64,
    /// Socket cookie, 0 if the kernel has not generated one.
    pub cookie: u64,
    /// The process the socket belongs to, see `attribution`.
    pub owner: Task,
    pub owner_ns: u64,
    /// Local and remote address from this host's point of view; IPv4 in the first 4 bytes.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// Host byte order.
    pub local_port: u16,
    pub remote_port: u16,
    /// Network namespace inode, 0 if unknown.
    pub netns: u32,
    /// Raw `enum sk_rst_reason`, or [`REASON_NONE`].
    pub reason: u32,
    /// `rcv_nxt - copied_seq`: bytes received but not read by the application.
    pub unread: u32,
    /// `write_seq - snd_una`: bytes written but not acknowledged by the peer.
    pub unsent: u32,
    /// `tcp_sock.linger2` (`TCP_LINGER2`), valid with [`FACT_TCP_SOCK`].
    pub linger2: i32,
    /// [`KIND_SENT`] or [`KIND_RECEIVED`].
    pub kind: u8,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u8,
    /// TCP state the kernel reported (`enum tcp_state` numbering, 0 = no socket).
    pub state: u8,
    /// State before the socket was moved to CLOSE, 0 if unknown.
    pub prev_state: u8,
    /// TCP flags byte of the segment that provoked the reset (with [`FACT_PACKET`]).
    pub tcp_flags: u8,
    /// TTL / hop limit of that segment (with [`FACT_PACKET`]).
    pub ttl: u8,
    /// `ATTR_*`.
    pub attribution: u8,
    /// Received resets: TTL / hop limit of the peer's ordinary segments, 0 if unknown.
    pub peer_ttl: u8,
    /// `FACT_*` bits.
    pub facts: u32,
    /// Jiffies since the connection last sent or received (`lsndtime`, `rcv_tstamp`,
    /// `icsk_ack.lrcvtime`), with [`FACT_IDLE`].
    pub idle_jiffies: u32,
    /// A listener's accept queue length and limit, with [`FACT_BACKLOG`].
    pub ack_backlog: u32,
    pub max_ack_backlog: u32,
    /// Jiffies since the connection last received anything (`rcv_tstamp`, `lrcvtime`), with
    /// [`FACT_IDLE`]: what a middlebox's idle timer counts (our own write resets `lsndtime`).
    pub recv_idle_jiffies: u32,
    pub _pad1: u32,
}

const _: () = assert!(!self_abort_state(TCP_ESTABLISHED) && !self_abort_state(TCP_SYN_SENT));

const _: () = assert!(core::mem::offset_of!(RstEvent, local_addr) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(RstEvent, remote_addr) % 8 == 0);
const _: () = assert!(core::mem::align_of::<RstEvent>() == 8);

/// Size of one record in the ring buffer.
pub const RST_EVENT_SIZE: usize = 160;
const _: () = assert!(core::mem::size_of::<RstEvent>() == RST_EVENT_SIZE);

#[cfg(feature = "user")]
mod user {
    // SAFETY: all these are repr(C), made only of integers and integer arrays, with explicit padding.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Task {}
    unsafe impl aya::Pod for super::SockInfo {}
    unsafe impl aya::Pod for super::RstEvent {}
    unsafe impl aya::Pod for super::ListenerClose {}
}

/// Why a ring buffer record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is not [`RST_EVENT_SIZE`] bytes long.
    Size(usize),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Size(n) => write!(f, "ring record of {n} bytes, expected {RST_EVENT_SIZE}"),
        }
    }
}

impl RstEvent {
    /// Whether this reset can be counted in the kernel without changing what userspace would
    /// count from its record: not a firewall reset (userspace looks up the rejected flow's
    /// owner), not a reset sent in answer to a segment on a live socket (userspace matches it
    /// with the socket's own preceding "received" reset, the data_after_close self-abort, and
    /// hides that one), and a received reset only in states where no such self-abort happens
    /// (ESTABLISHED is handled by tcp_rcv_established(), SYN_SENT by tcp_rcv_synsent_state_process();
    /// the abort is in tcp_rcv_state_process()'s FIN_WAIT/CLOSE_WAIT/CLOSING/LAST_ACK cases).
    pub fn countable(&self) -> bool {
        match self.kind {
            KIND_SENT => {
                self.facts & FACT_NETFILTER == 0 && !(self.skaddr != 0 && self.skbaddr != 0)
            }
            // Only the two states handled outside tcp_rcv_state_process(), which
            // [`self_abort_state`] rules out (asserted below); other states (SYN_RECV, CLOSE...)
            // go to userspace as well.
            KIND_RECEIVED => {
                !self_abort_state(self.state)
                    && (self.state == TCP_ESTABLISHED || self.state == TCP_SYN_SENT)
            }
            _ => false,
        }
    }

    /// Reduces the event, in place, to what decides its process, condition and direction, so
    /// that resets alike share one key: times, addresses, ports, cookie, netns, TTLs and idle
    /// times go; pointers, byte counts and the accept queue become the comparisons userspace
    /// makes of them. (A unit test in rst-trace checks that the explanation's condition,
    /// process and direction survive this.)
    pub fn count_key(&mut self) {
        self.mono_ns = 0;
        self.skaddr = u64::from(self.skaddr != 0);
        self.skbaddr = u64::from(self.skbaddr != 0);
        self.cookie = 0;
        self.owner.tid = 0;
        self.owner_ns = 0;
        // Word by word: the eBPF target turns a [u8; 16] store into a byte-loop memset call.
        for a in [&mut self.local_addr, &mut self.remote_addr] {
            let w = a.as_mut_ptr().cast::<u64>();
            // SAFETY: 16 bytes in place; RstEvent is 8-aligned and both arrays sit at 8-aligned
            // offsets (72 and 88, asserted below).
            unsafe {
                w.write_volatile(0);
                w.add(1).write_volatile(0);
            }
        }
        self.local_port = 0;
        self.remote_port = 0;
        self.netns = 0;
        // "More than the FIN it may count" is all userspace asks of these.
        self.unread = self.unread.min(2);
        self.unsent = self.unsent.min(2);
        self.linger2 = if self.linger2 < 0 { -1 } else { 0 };
        self.ttl = 0;
        self.peer_ttl = 0;
        self.idle_jiffies = 0;
        self.recv_idle_jiffies = 0;
        self.facts &= !(FACT_IDLE | FACT_RST_TTL);
        let full = self.ack_backlog > self.max_ack_backlog;
        self.ack_backlog = u32::from(full);
        self.max_ack_backlog = 0;
        self._pad1 = 0;
    }

    /// Decodes one ring buffer record. Records of the wrong size are rejected, never guessed at.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != RST_EVENT_SIZE {
            return Err(DecodeError::Size(bytes.len()));
        }
        // SAFETY: the length is checked above; every bit pattern is a valid RstEvent (integers only);
        // read_unaligned because ring buffer records are only 8-byte aligned by convention.
        Ok(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    /// The record's bytes, as the eBPF side writes them (used by tests and the benchmark).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: repr(C) plain integers with explicit padding fields, so no uninitialised bytes.
        unsafe { core::slice::from_raw_parts((self as *const Self).cast::<u8>(), RST_EVENT_SIZE) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut e = RstEvent {
            mono_ns: 1,
            skaddr: 0xffff_8880_0000_1000,
            kind: KIND_SENT,
            reason: 11,
            local_port: 8888,
            ..Default::default()
        };
        e.owner.comm[..6].copy_from_slice(b"server");
        let d = RstEvent::decode(e.as_bytes()).unwrap();
        assert_eq!(d, e);
    }

    #[test]
    fn short_and_long_buffers_are_rejected() {
        let e = RstEvent::default();
        let b = e.as_bytes();
        assert_eq!(
            RstEvent::decode(&b[..RST_EVENT_SIZE - 1]),
            Err(DecodeError::Size(RST_EVENT_SIZE - 1))
        );
        assert_eq!(RstEvent::decode(&[]), Err(DecodeError::Size(0)));
        let mut long = [0u8; RST_EVENT_SIZE + 8];
        long[..RST_EVENT_SIZE].copy_from_slice(b);
        assert_eq!(
            RstEvent::decode(&long),
            Err(DecodeError::Size(RST_EVENT_SIZE + 8))
        );
    }
}
