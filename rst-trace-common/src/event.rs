//! The ring buffer record, [`RstEvent`], with its bits and the in-kernel count's reduction.

use crate::{TCP_ESTABLISHED, TCP_SYN_SENT, Task, self_abort_state};

/// `RstEvent::kind`.
pub const KIND_SENT: u8 = 1;
pub const KIND_RECEIVED: u8 = 2;

/// `RstEvent::attribution`.
pub const ATTR_NONE: u8 = 0;
/// `owner` came from the socket map (learned earlier in the owner's own system call).
pub const ATTR_OWNER_MAP: u8 = 1;
/// `owner` is the current task, because the kernel acted inside the owner's system call.
pub const ATTR_OWNER_CURRENT: u8 = 2;
/// `owner` came from [`MAP_SEED_OWNERS`](crate::MAP_SEED_OWNERS): the socket existed before
/// rst-trace started.
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
/// `--stacks`: the reset was sent in its owner's own system call (a process-context abort,
/// [`ATTR_OWNER_CURRENT`]) and `stacks.user`/`stacks.kernel` hold what `bpf_get_stackid()`
/// returned for it: an id in [`MAP_STACKS`](crate::MAP_STACKS), or `-errno`, and its generation.
pub const FACT_STACKS: u32 = 1024;
/// Received resets: the socket was already orphaned (`SOCK_DEAD`: its process closed it), so no
/// application call will ever fail because of this reset.
pub const FACT_ORPHAN: u32 = 2048;

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
    /// Local and remote address from this host's point of view; IPv4 in the first 4 bytes.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// Host byte order.
    pub local_port: u16,
    pub remote_port: u16,
    /// Network namespace inode, 0 if unknown.
    pub netns: u32,
    /// Raw `enum sk_rst_reason`, or [`REASON_NONE`](crate::REASON_NONE).
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
    /// With [`FACT_STACKS`]: the stacks of the system call that made the reset.
    pub stacks: StackIds,
}

/// `--stacks`: the user and kernel stacks of the current task's system call, as the eBPF side's
/// `stacks::capture()` takes them. Any record can carry one; userspace's `StackReader` resolves
/// it from the generation's map of [`MAP_STACKS`](crate::MAP_STACKS).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackIds {
    /// The user stack's id in the generation's map of [`MAP_STACKS`](crate::MAP_STACKS), or
    /// `-errno` (e.g. `-EFAULT`: no user stack, as in a process's exit; `-EEXIST`: another
    /// stack holds the id's bucket in every map). Ids below
    /// [`STACKS_MAX_ENTRIES`](crate::STACKS_MAX_ENTRIES) are in that map, the others in a spill
    /// map of [`MAP_STACKS_SPILL`](crate::MAP_STACKS_SPILL), offset by its
    /// [`STACKS_ID_BASE`](crate::STACKS_ID_BASE).
    pub user: i16,
    /// The kernel stack's id, or `-errno`.
    pub kernel: i16,
    /// The stack generation the ids belong to (see [`MAP_STACKS`](crate::MAP_STACKS)): its
    /// low bit picks the map.
    pub generation: u32,
    /// The return address of the function that made the system call, as the entry registers
    /// hold it, 0 if unknown: x86_64, the word at the user stack pointer; arm64, the link
    /// register (x30). A frame-pointer walk misses the caller of a function that keeps no frame,
    /// as libc's system call wrappers (close()) do: this is it.
    pub user_caller: u64,
}

const _: () = assert!(crate::STACKS_MAX_ENTRIES + crate::STACKS_SPILL_ENTRIES <= i16::MAX as u32);
const _: () = assert!(core::mem::size_of::<StackIds>() == 16);
const _: () = assert!(core::mem::offset_of!(RstEvent, stacks) % 8 == 0);

const _: () = assert!(!self_abort_state(TCP_ESTABLISHED) && !self_abort_state(TCP_SYN_SENT));

const _: () = assert!(core::mem::offset_of!(RstEvent, local_addr) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(RstEvent, remote_addr) % 8 == 0);
const _: () = assert!(core::mem::align_of::<RstEvent>() == 8);

/// Size of one record in the ring buffer.
pub const RST_EVENT_SIZE: usize = 192;
const _: () = assert!(core::mem::size_of::<RstEvent>() == RST_EVENT_SIZE);

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
            // [`self_abort_state`] rules out (asserted above); other states (SYN_RECV, CLOSE...)
            // go to userspace as well.
            KIND_RECEIVED => {
                !self_abort_state(self.state)
                    && (self.state == TCP_ESTABLISHED || self.state == TCP_SYN_SENT)
            }
            _ => false,
        }
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
        e.owner.thread[..8].copy_from_slice(b"worker-1");
        e.owner.cgroup = 4242;
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
