//! The second record type on the ring: an application's socket call that failed with the error a
//! reset (or a timeout) leaves on its socket. Ring records are told apart by their length:
//! [`RST_EVENT_SIZE`](crate::RST_EVENT_SIZE) or [`APP_ERROR_SIZE`] (asserted different).

use crate::{RST_EVENT_SIZE, StackIds, Task};

/// The errors a dead TCP connection leaves for its application (uapi asm-generic/errno.h, the
/// same numbers on x86_64 and arm64): tcp_reset() sets ECONNRESET, EPIPE (in CLOSE_WAIT) or
/// ECONNREFUSED (in SYN_SENT); tcp_write_err() sets ETIMEDOUT (retransmission, user or
/// keepalive timeout); a write after any of them fails with EPIPE.
pub const EPIPE: u32 = 32;
pub const ECONNRESET: u32 = 104;
pub const ETIMEDOUT: u32 = 110;
pub const ECONNREFUSED: u32 = 111;

/// `SOL_SOCKET` and `SO_ERROR` (uapi asm-generic/socket.h): getsockopt(fd, SOL_SOCKET,
/// SO_ERROR, ...) is how a non-blocking connect's outcome is read.
pub const SOL_SOCKET: u64 = 1;
pub const SO_ERROR: u64 = 4;

/// Whether a system call's return value is one of the errors above, negated as the kernel
/// returns it: the first (and on success the only) test the `sys_exit` hook makes.
#[inline(always)]
pub const fn failing_ret(ret: i64) -> bool {
    matches!(ret, -32 | -104 | -110 | -111)
}

const _: () = assert!(EPIPE == 32 && ECONNRESET == 104 && ETIMEDOUT == 110 && ECONNREFUSED == 111);

/// `AppErrorEvent::flags`: the error was read back with getsockopt(SOL_SOCKET, SO_ERROR)
/// (returning 0), not returned by the call.
pub const APP_SO_ERROR: u32 = 1;
/// `user_timeout_ms` holds the socket's `TCP_USER_TIMEOUT` (`icsk_user_timeout`), read for
/// ETIMEDOUT.
pub const APP_USER_TIMEOUT: u32 = 2;
/// `prev_state` came from the socket map (the state the connection left for CLOSE).
pub const APP_PREV_STATE: u32 = 4;

/// `stacks` holds the user and kernel stack ids of the failing call (`--stacks`).
pub const APP_STACKS: u32 = 8;

/// How many syscall numbers `Config::sock_calls` covers (a bit each).
pub const SOCK_CALLS_BITS: usize = 512;

/// One failing socket call, as the kernel side saw it at the system call's exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppErrorEvent {
    /// `bpf_ktime_get_ns()` at the system call's exit.
    pub mono_ns: u64,
    /// The socket (`struct sock *`): what joins the call to the reset's `RstEvent::skaddr`.
    pub skaddr: u64,
    /// `skc_cookie`, 0 if the kernel never generated one.
    pub cookie: u64,
    /// The calling task (process, thread, cgroup).
    pub task: Task,
    /// The failing call's stacks, with [`APP_STACKS`] (`--stacks`), as on a sent `RstEvent`.
    pub stacks: StackIds,
    /// Endpoints as in `RstEvent` (IPv4 in the first 4 bytes, network order).
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// Host byte order.
    pub local_port: u16,
    pub remote_port: u16,
    pub netns: u32,
    /// The system call's number, in the running architecture's numbering (as syscall_get_nr()
    /// reads it: x86_64 `orig_ax`, arm64 `syscallno`).
    pub nr: u32,
    /// Positive errno.
    pub errno: u32,
    /// The socket's file descriptor in the caller.
    pub fd: i32,
    /// `TCP_USER_TIMEOUT` in ms, with [`APP_USER_TIMEOUT`].
    pub user_timeout_ms: u32,
    /// `APP_*` bits.
    pub flags: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// TCP state at the call's exit (CLOSE once the connection is dead).
    pub state: u8,
    /// The state it left for CLOSE, with [`APP_PREV_STATE`].
    pub prev_state: u8,
    pub _pad0: u8,
}

/// Size of one application error record in the ring buffer.
pub const APP_ERROR_SIZE: usize = 160;
const _: () = assert!(core::mem::size_of::<AppErrorEvent>() == APP_ERROR_SIZE);
const _: () = assert!(APP_ERROR_SIZE != RST_EVENT_SIZE);
const _: () = assert!(core::mem::align_of::<AppErrorEvent>() == 8);
const _: () = assert!(core::mem::offset_of!(AppErrorEvent, task) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(AppErrorEvent, local_addr) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(AppErrorEvent, stacks) % 8 == 0);

impl AppErrorEvent {
    /// Decodes one ring record of [`APP_ERROR_SIZE`] bytes (`None` for any other length).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != APP_ERROR_SIZE {
            return None;
        }
        // SAFETY: the length is checked; integers only, every bit pattern is valid;
        // read_unaligned because ring records are only 8-byte aligned by convention.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    /// The record's bytes, as the eBPF side writes them (tests).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: repr(C) integers with explicit padding: no uninitialised bytes.
        unsafe { core::slice::from_raw_parts((self as *const Self).cast::<u8>(), APP_ERROR_SIZE) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_length_dispatch() {
        let mut e = AppErrorEvent {
            mono_ns: 5,
            skaddr: 0xffff_8880_0000_2000,
            cookie: 7,
            task: Task::default(),
            stacks: StackIds {
                user: 1,
                kernel: -14,
                generation: 3,
                user_caller: 0x5500_0000_1234,
            },
            local_addr: [0; 16],
            remote_addr: [0; 16],
            local_port: 1,
            remote_port: 2,
            netns: 3,
            nr: 0,
            errno: ECONNRESET,
            fd: 3,
            user_timeout_ms: 0,
            flags: APP_STACKS,
            family: 2,
            state: 7,
            prev_state: 1,
            _pad0: 0,
        };
        e.task.comm[..6].copy_from_slice(b"client");
        assert_eq!(AppErrorEvent::decode(e.as_bytes()), Some(e));
        assert_eq!(AppErrorEvent::decode(&e.as_bytes()[1..]), None);
        assert!(failing_ret(-104) && failing_ret(-32) && failing_ret(-110) && failing_ret(-111));
        assert!(!failing_ret(0) && !failing_ret(-11) && !failing_ret(104));
    }
}
