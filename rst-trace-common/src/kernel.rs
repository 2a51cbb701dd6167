//! Kernel ABI numbers that never change (uapi), and the self-abort rule built on them.

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
