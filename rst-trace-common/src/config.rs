//! The [`Config`] global: offsets and switches userspace fills in before load.

use crate::OFF_NONE;

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
    /// `task_struct.group_leader` and `task_struct.comm`: the process's name is its
    /// thread-group leader's comm.
    pub task_group_leader: u16,
    pub task_comm: u16,
    /// Bit number of `SOCK_LINGER` in `enum sock_flags`.
    pub sock_linger_bit: u16,
    /// `sock.sk_type`, when `sk_protocol` is the u16 right after it (one read tells a TCP
    /// control socket, `SOCK_RAW`/`IPPROTO_TCP`, from the rest); else [`OFF_NONE`].
    pub sk_type: u16,
    /// `FILTER_*` bits.
    pub filters: u32,
    /// Wake userspace each time the ring's unread bytes cross a multiple of this many
    /// ([`ring_wake_crossed`](crate::ring_wake_crossed); 0: on every event).
    pub wake_bytes: u32,
    /// [`REASON_ARG`](crate::REASON_ARG) or 0.
    pub send_reason_arg: u8,
    /// 1: count the resets that [`RstEvent::countable`](crate::RstEvent::countable) allows in
    /// [`MAP_COUNTS`](crate::MAP_COUNTS) instead of sending them (`--summary --quiet`).
    pub count_in_kernel: u8,
    /// Where the [`SKB_HDR_WINDOW`](crate::SKB_HDR_WINDOW) bytes holding `head`,
    /// `network_header` and `transport_header` start in `struct sk_buff` ([`OFF_NONE`]: read
    /// them one by one).
    pub skb_hdr_base: u16,
    /// Where the [`TCP_WINDOW`](crate::TCP_WINDOW) bytes holding the `tcp_sock` sequence
    /// numbers and clocks start ([`OFF_NONE`]: read them one by one).
    pub tp_win_base: u16,
    /// Byte of `sk_buff` holding the `ip_summed` bitfield ([`OFF_NONE`]: unknown).
    pub skb_ip_summed: u16,
    /// Bit position of `ip_summed` in that byte.
    pub ip_summed_shift: u8,
    /// 1 where `tcp_send_reset` does not fire for resets sent without a full socket (before
    /// 6.10, commit 19822a980e19): the transmit hook reports those.
    pub xmit_socketless: u8,
    /// 1 with `--stacks`: process-context aborts capture their user and kernel stacks
    /// ([`FACT_STACKS`](crate::FACT_STACKS)).
    pub stacks: u8,
    /// 1 where failing socket calls are seen at the socket layer (`sock_send_length` /
    /// `sock_recv_length` carry the call's return value, 6.3+) rather than at every system
    /// call's exit: the owner hook then also reports them.
    pub app_sock: u8,
    /// `task_struct.stack` ([`OFF_NONE`] where unknown): the kernel stack, whose top holds the
    /// registers of the task's system call entry (`task_pt_regs()`), for the hooks that run
    /// inside a system call without being handed them, and for the caller of a frameless
    /// function ([`StackIds::user_caller`](crate::StackIds::user_caller)).
    pub task_stack: u16,
    /// `sizeof(struct pt_regs)` from BTF: the registers at system call entry end at the top of
    /// the kernel stack (x86_64: or 16 bytes lower, FRED's reserve).
    pub pt_regs_size: u16,
    /// `THREAD_SIZE`: the kernel stack's size (16 KiB on x86_64 and arm64, 32 KiB with KASAN).
    pub thread_size: u32,
    // Failing socket calls: the running architecture's `struct pt_regs` (see `REGS_*`), from
    // BTF: where syscall_get_nr() and syscall_get_arguments() read the call's number (a 32-bit
    // read: arm64's `syscallno` is an s32) and its first four arguments as they were at entry.
    pub regs_nr: u16,
    pub regs_arg0: u16,
    pub regs_arg1: u16,
    pub regs_arg2: u16,
    /// `socket.file`: a socket's back-pointer to its file, which tells a socket's
    /// `file.private_data` from another file's.
    pub socket_file: u16,
    /// `inet_connection_sock.icsk_user_timeout` (`TCP_USER_TIMEOUT`, ms).
    pub icsk_user_timeout: u16,
    /// Bit number of `SOCK_DEAD` in `enum sock_flags`.
    pub sock_dead_bit: u16,
    // syscalls:sys_enter_getsockopt / sys_exit_getsockopt records
    pub gs_fd: u16,
    pub gs_level: u16,
    pub gs_optname: u16,
    pub gs_optval: u16,
    pub gs_ret: u16,
    pub gs_nr: u16,
    /// Syscall numbers whose second (`sendfile`: in_fd) or third (`splice`: fd_out) argument
    /// may be the socket, [`OFF_NONE`] if none.
    pub sys_sendfile: u16,
    pub sys_splice: u16,
    /// connect(): a failed connect has disconnected its socket (tcp_disconnect() zeroes the
    /// ports) by the time it returns; the address it asked for is still its second argument.
    pub sys_connect: u16,
    /// The fourth argument (getsockopt's `optval`; x86_64 `r10`, arm64 `regs[3]`), read at the
    /// call's exit from the registers at entry, so no hook runs at every system call's entry.
    pub regs_arg3: u16,
    /// Which architecture's entry registers these are ([`REGS_X86_64`](crate::REGS_X86_64),
    /// [`REGS_ARM64`](crate::REGS_ARM64), 0: none): how the eBPF side finds them on the kernel
    /// stack and checks they are a 64-bit user task's.
    pub regs_arch: u16,
    /// The register that locates a frameless function's caller: x86_64 `sp` (the return
    /// address is the word it points at), arm64 `regs[30]` (the link register holds it).
    pub regs_caller: u16,
    /// arm64 `pstate`: its mode bits say the registers were saved on entry from 64-bit EL0.
    pub regs_pstate: u16,
    /// One bit per syscall number ([`SOCK_CALLS_BITS`](crate::SOCK_CALLS_BITS)): the calls on
    /// a socket whose first argument is its fd (read, write, send*, recv*, connect, ...),
    /// filled in by userspace from libc's numbers.
    pub sock_calls: [u64; 8],
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
            task_group_leader: OFF_NONE,
            task_comm: OFF_NONE,
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
            stacks: 0,
            app_sock: 0,
            task_stack: OFF_NONE,
            pt_regs_size: OFF_NONE,
            thread_size: 0,
            regs_nr: OFF_NONE,
            regs_arg0: OFF_NONE,
            regs_arg1: OFF_NONE,
            regs_arg2: OFF_NONE,
            socket_file: OFF_NONE,
            icsk_user_timeout: OFF_NONE,
            sock_dead_bit: OFF_NONE,
            gs_fd: OFF_NONE,
            gs_level: OFF_NONE,
            gs_optname: OFF_NONE,
            gs_optval: OFF_NONE,
            gs_ret: OFF_NONE,
            gs_nr: OFF_NONE,
            sys_sendfile: OFF_NONE,
            sys_splice: OFF_NONE,
            sys_connect: OFF_NONE,
            regs_arg3: OFF_NONE,
            regs_arch: 0,
            regs_caller: OFF_NONE,
            regs_pstate: OFF_NONE,
            sock_calls: [0; 8],
        }
    }
}

const _: () = assert!(core::mem::size_of::<Config>() == 240);
const _: () = assert!(core::mem::offset_of!(Config, sock_calls) % 8 == 0);
const _: () = assert!(crate::SOCK_CALLS_BITS == 64 * 8);
