//! The one definition of the ABI between rst-trace's eBPF programs and its userspace daemon.
//!
//! Everything here is `#[repr(C)]` with explicit-width fields and explicit padding, so both sides
//! (bpfel and x86_64) agree on every byte. No `bool`: flags are bits in integers.
#![no_std]
#![warn(unused_crate_dependencies)]

mod app_error;
mod cgroup_seen;
mod config;
mod count;
mod event;
mod kernel;
mod ring;

pub use app_error::*;
pub use cgroup_seen::*;
pub use config::Config;
pub use count::CountKey;
pub use event::*;
pub use kernel::*;
pub use ring::*;

/// Ring buffer carrying [`RstEvent`]s, [`AppErrorEvent`]s and [`CgroupSeen`]s to userspace (told
/// apart by length).
pub const MAP_EVENTS: &str = "EVENTS";
/// Per-CPU count of events dropped because the ring buffer was full.
pub const MAP_LOST: &str = "LOST";
/// Per-CPU count of [`AppErrorEvent`]s dropped because the ring buffer was full.
pub const MAP_APP_LOST: &str = "APP_LOST";
/// `--summary --quiet`: per-CPU counts of resets, keyed by the event reduced to what decides its
/// process, condition and direction ([`CountKey`]), instead of one ring record each.
pub const MAP_COUNTS: &str = "COUNTS";
/// Entries of [`MAP_COUNTS`] with `--summary --quiet` (1 otherwise, set at load: it is never
/// written then, and creating a preallocated per-CPU map of this size is a start-up cost).
pub const COUNTS_MAX_ENTRIES: u32 = 4096;
/// Per-CPU count of failed inserts into the socket, TIME_WAIT and closing-listener maps (LRU
/// maps evict rather than fail, so this stays 0 but for a kernel out of memory).
pub const MAP_INSERT_FAILED: &str = "INSERT_FAILED";
/// `--pid` filter: thread group ids to keep (value unused).
pub const MAP_FILTER_PIDS: &str = "FILTER_PIDS";
/// `--port` filter: ports to keep, host byte order (value unused).
pub const MAP_FILTER_PORTS: &str = "FILTER_PORTS";
/// `--container`/`--pod`: cgroup v2 ids userspace has resolved to a container the filters do
/// not name; their received resets are dropped in the kernel (value unused). Ids not in it
/// (new containers) go to userspace, which resolves them and adds the ones to hide.
pub const MAP_HIDDEN_CGROUPS: &str = "HIDDEN_CGROUPS";
pub const HIDDEN_CGROUPS_MAX_ENTRIES: u32 = 4096;
/// `--stacks`: two `BPF_MAP_TYPE_STACK_TRACE` maps holding the user and kernel stacks of
/// process-context aborts ([`FACT_STACKS`]) and failing calls, by generation: a capture goes
/// to the map of the generation [`MAP_STACK_GENERATION`] holds (even, odd), and its record
/// names that generation ([`StackIds::generation`]). Userspace reads a generation's map only
/// once captures have moved on to the next (reading an entry takes it out of its bucket for a
/// moment, `bpf_stackmap_copy()`), deletes no id one by one, and empties the map of generation
/// g-1 before it starts g+1 in it; a record of an older generation is reported as read too
/// late. So an id names the same stack for as long as its record can be read: no other stack
/// can take its bucket in between (the kernel fills a bucket only when empty, see
/// `__bpf_get_stackid()`).
pub const MAP_STACKS: [&str; 2] = ["STACKS_EVEN", "STACKS_ODD"];
/// `--stacks`: the current stack generation (`Array<u32>`, one entry), written by userspace.
pub const MAP_STACK_GENERATION: &str = "STACK_GENERATION";
/// Entries of each of the [`MAP_STACKS`] with `--stacks` (1 without, set at load). Each entry
/// is preallocated kernel memory of ~1 KiB (127 frames of 8 bytes). The kernel hashes a stack
/// to a bucket (`jhash2(ips, .., 0) & (buckets - 1)`) and fails with `-EEXIST` when another
/// stack holds it, so a map is kept far emptier than its size: it holds one generation's stacks
/// (a generation ends when userspace reads one of its records, or after a second); with k
/// distinct stacks in a generation, a new one collides with probability k/2048 (a storm of one
/// code path's aborts is 2 stacks, shared). Such a stack goes to the generation's spill maps
/// ([`MAP_STACKS_SPILL`]).
pub const STACKS_MAX_ENTRIES: u32 = 2048;
/// `--stacks`: two spill maps per generation's parity (`[parity][level]`), beside
/// [`MAP_STACKS`]. A stack whose bucket holds another one (`-EEXIST`) is captured again into
/// the first, and if its bucket there is taken too, into the second. They hold only the stacks
/// that collided, so they stay nearly empty with fewer buckets. (The kernel picks a bucket from
/// the same hash's lower bits in every map, so three stacks in one bucket of the first map also
/// share one in a smaller spill map: the second takes the third.) A stack is lost only if its
/// bucket is taken in all three. Ids are told apart by [`STACKS_ID_BASE`].
pub const MAP_STACKS_SPILL: [[&str; 2]; 2] = [
    ["STACKS_SPILL_EVEN", "STACKS_SPILL2_EVEN"],
    ["STACKS_SPILL_ODD", "STACKS_SPILL2_ODD"],
];
/// Entries of each of the [`MAP_STACKS_SPILL`] with `--stacks` (1 without).
pub const STACKS_SPILL_ENTRIES: u32 = 512;
/// The first id of each of a generation's maps, in order: its map of [`MAP_STACKS`], then its
/// spill maps; an id is its key in its map plus that map's base.
pub const STACKS_ID_BASE: [u32; 3] = [
    0,
    STACKS_MAX_ENTRIES,
    STACKS_MAX_ENTRIES + STACKS_SPILL_ENTRIES,
];
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
/// Raw tracepoint `sys_exit`: system calls failing with the errors a dead connection leaves.
pub const PROG_SYS_EXIT_APP: &str = "sys_exit_app";
/// The owner hook on `sock_send_length`/`sock_recv_length` that also reports failing calls.
pub const PROG_SOCK_IO_APP: &str = "sock_io_app";
/// `syscalls:sys_exit_connect`, `sys_exit_sendfile64`, `sys_exit_splice`: the failing socket
/// calls the socket layer does not show, where it shows the others.
pub const PROG_SYS_EXIT_SOCK_CALL: &str = "sys_exit_sock_call";
/// `syscalls:sys_enter_getsockopt` / `sys_exit_getsockopt`: a non-blocking connect's outcome
/// read back through `SO_ERROR`.
pub const PROG_ENTER_GETSOCKOPT: &str = "sys_enter_getsockopt";
pub const PROG_EXIT_GETSOCKOPT: &str = "sys_exit_getsockopt";
/// `net:net_dev_queue`: sees RSTs that netfilter's REJECT builds (no TCP tracepoint fires).
pub const PROG_DEV_QUEUE: &str = "net_dev_queue";
/// raw tracepoint `tcp_probe` (every segment tcp_rcv_established() handles): TTL evidence.
pub const PROG_TCP_PROBE: &str = "tcp_probe_ttl";
/// Notes the segment being received, for the socketless resets seen on transmit (before 6.10).
pub const PROG_NETIF_RECEIVE: &str = "netif_receive_skb";
/// Owners of sockets that existed before rst-trace started, keyed by socket cookie (seeded by
/// userspace from sock_diag and /proc/*/fd).
pub const MAP_SEED_OWNERS: &str = "SEED_OWNERS";
/// The seed map's entries in the object; userspace sizes it from the host at load.
pub const SEED_MAX_ENTRIES: u32 = 4096;
/// Connections handed to a TIME_WAIT mini-socket in its FIN_WAIT2 sub-state, by flow
/// ([`TimeWaitInfo`]): the process that closed the connection, for the reset that mini-socket
/// sends; before 6.10 also how the transmit hook tells that reset from one for no socket.
pub const MAP_TIMEWAIT: &str = "TIMEWAIT";
/// Its entries in the object, and the fewest userspace gives it; userspace sizes it from the
/// host's TIME_WAIT count at load.
pub const TIMEWAIT_MAX_ENTRIES: u32 = 16384;

/// The LRU map from socket address to [`SockInfo`]: the owners of sockets seen since start-up.
pub const MAP_SOCKS: &str = "SOCKS";
/// Its entries on a host with few sockets; userspace sizes it from the host at load.
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

/// Offset value meaning "this field does not exist on the running kernel".
pub const OFF_NONE: u16 = u16::MAX;

/// [`Config::regs_arch`]: x86_64's `struct pt_regs` (ends with cs, flags, sp, ss; FRED may
/// reserve 16 bytes above it).
pub const REGS_X86_64: u16 = 1;
/// [`Config::regs_arch`]: arm64's `struct pt_regs` (exactly at the top of the kernel stack:
/// task_pt_regs() in arch/arm64/include/asm/processor.h).
pub const REGS_ARM64: u16 = 2;
/// `RstEvent::reason` when the tracepoint has no `reason` field (kernels before 6.10).
pub const REASON_NONE: u32 = u32::MAX;

/// `Config::send_reason_arg`: the `tcp_send_reset` tracepoint passes `enum sk_rst_reason` as its
/// third argument (6.10+, commit "tcp: add the reason to tcp_send_reset").
pub const REASON_ARG: u8 = 1;

/// `Config::filters` bits.
pub const FILTER_PID: u32 = 1;
pub const FILTER_PORT: u32 = 2;
/// `--container` or `--pod`: see [`MAP_HIDDEN_CGROUPS`].
pub const FILTER_CGROUP: u32 = 16;
/// `--direction sent`: received resets are not needed at all.
pub const FILTER_NO_RECEIVED: u32 = 8;

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
    /// cgroup v2 id of the task (`bpf_get_current_cgroup_id()`: the inode number of its
    /// directory in the unified hierarchy), learned with the owner; 0: unknown.
    pub cgroup: u64,
    /// The process's name: the comm of its thread-group leader (`current->group_leader->comm`),
    /// NUL-padded.
    pub comm: [u8; 16],
    /// The acting thread's own comm (`bpf_get_current_comm()`), NUL-padded: a JVM's
    /// `conn-worker-7` where `comm` says `java`.
    pub thread: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<Task>() == 56);
const _: () = assert!(core::mem::offset_of!(Task, comm) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(Task, thread) % 8 == 0);

/// What the kernel side remembers about a socket, keyed by its `struct sock *`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockInfo {
    /// The process that owns the socket, learned in its own system call.
    pub owner: Task,
    /// 1 when `owner` is known, 0 when not (an entry made for its state history only). Not a
    /// time: nothing reads when an owner was learned, and a clock read at every `connect()`,
    /// `listen()` and `accept()` costs.
    pub owned: u64,
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

const _: () = assert!(core::mem::size_of::<SockInfo>() == 80);

/// What the kernel side remembers of a connection handed to a TIME_WAIT mini-socket in its
/// FIN_WAIT2 sub-state (the `TIMEWAIT` map's value): when, and who had closed it. The
/// mini-socket (`struct inet_timewait_sock`) keeps no trace of its process, and it is the one
/// that answers the peer's next segment with RST (tcp_timewait_state_process(): the keep-alive
/// race, where a client sends a request on a connection the server's idle timeout closed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeWaitInfo {
    /// `bpf_ktime_get_ns()` at the hand-over (`tcp_destroy_sock` of the full socket).
    pub since: u64,
    /// The full socket's owner ([`SockInfo::owner`]).
    pub owner: Task,
    /// [`SockInfo::owned`]: 1 when `owner` is known.
    pub owned: u64,
}

const _: () = assert!(core::mem::size_of::<TimeWaitInfo>() == 72);
const _: () = assert!(core::mem::offset_of!(TimeWaitInfo, owner) % 8 == 0);

/// `SockInfo::flags`: the socket sent or received a reset (so its move to CLOSE was an abort,
/// not a hand-over to a TIME_WAIT mini-socket).
pub const SOCK_RESET_SEEN: u16 = 1;
/// `SockInfo::flags`: an application call on the socket already failed and was reported (only
/// the first one is: a loop of failing writes must not flood the ring).
pub const SOCK_APP_ERROR_SEEN: u16 = 2;
/// `SockInfo::flags`: a reset in SYN_SENT, a connection attempt refused (or one that answered
/// a bad SYN-ACK with RST). Such a socket sends no reset after its destruction, so that keeps
/// no copy of its entry for one.
pub const SOCK_REFUSED: u16 = 4;

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

#[cfg(feature = "user")]
mod user {
    // SAFETY: all these are repr(C), made only of integers and integer arrays, with explicit padding.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Task {}
    unsafe impl aya::Pod for super::SockInfo {}
    unsafe impl aya::Pod for super::RstEvent {}
    unsafe impl aya::Pod for super::CountKey {}
    unsafe impl aya::Pod for super::ListenerClose {}
    unsafe impl aya::Pod for super::StackIds {}
    unsafe impl aya::Pod for super::AppErrorEvent {}
}
