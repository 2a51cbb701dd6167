//! Every map of the kernel side, and the per-CPU slots the per-program maps are indexed by.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace},
};
use rst_trace_common::{
    COUNTS_MAX_ENTRIES, CountKey, FILTER_MAX_ENTRIES, HIDDEN_CGROUPS_MAX_ENTRIES, ListenerClose,
    RstEvent, SEED_MAX_ENTRIES, SEEN_CGROUPS_MAX_ENTRIES, SKB_HDR_WINDOW, SOCKS_MAX_ENTRIES,
    STACKS_MAX_ENTRIES, STACKS_SPILL_ENTRIES, SockInfo, TCP_WINDOW, TIMEWAIT_MAX_ENTRIES, Task,
    TimeWaitInfo,
};

/// Slots of the per-program maps (`SCRATCH`, `WINDOW`, `TCP_WIN`, `SKB_WINDOW`, `BUSY`,
/// `COUNT_KEY`), one per program: a softirq may run one program in the middle of another on the
/// same CPU (BTF and raw tracepoints only keep a program from nesting in itself, see
/// __bpf_trace_run()).
pub const SLOT_SEND: u32 = 0;
pub const SLOT_RECV: u32 = 1;
pub const SLOT_TRANSMIT: u32 = 2;
pub const SLOT_PROBE: u32 = 3;
/// How many slots: the size of every per-slot map.
pub const SLOTS: u32 = SLOT_PROBE + 1;

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Per-CPU: [bpf_ktime_get_ns(), local_port << 16 | remote_port, skb answered] of the last
/// `tcp_send_reset` that answered a segment.
#[map]
pub static LAST_TCP_RST: PerCpuArray<[u64; 3]> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU: [sk, skb] of the segment tcp_rcv_established() is handling (tcp_receive_reset
/// fires inside the same call: tcp_validate_incoming() -> tcp_reset()), then a direct-mapped
/// cache of 64 sockets whose peer TTL this CPU already sampled. One slot, so one lookup per
/// segment.
#[map]
pub static CUR_SEG: PerCpuArray<[u64; 2 + SAMPLED_SLOTS]> = PerCpuArray::with_max_entries(1, 0);
pub const SAMPLED_SLOTS: usize = 64;

/// Bumped whenever a socket starts or ends, so that no CPU's sampled cache (which stores
/// `sk ^ generation`) takes a new socket at a reused address for one already sampled.
#[map]
pub static SOCK_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn bump_generation() {
    if let Some(g) = SOCK_GENERATION.get_ptr_mut(0) {
        // SAFETY: a map value pointer; a lost increment under a race only costs a re-sample.
        unsafe { *g = (*g).wrapping_add(1) };
    }
}

/// `--stacks`: user and kernel stacks by id, one map per stack generation's parity (see
/// `stacks::capture` and `MAP_STACKS`). Userspace loads them with 1 entry without `--stacks`,
/// so that nothing is paid then.
#[map]
pub static STACKS_EVEN: StackTrace = StackTrace::with_max_entries(STACKS_MAX_ENTRIES, 0);
#[map]
pub static STACKS_ODD: StackTrace = StackTrace::with_max_entries(STACKS_MAX_ENTRIES, 0);
/// `--stacks`: the stacks whose bucket in the generation's map above holds another one, then
/// those whose bucket in the first spill map is taken too (`MAP_STACKS_SPILL`); 1 entry each
/// without `--stacks`.
#[map]
pub static STACKS_SPILL_EVEN: StackTrace = StackTrace::with_max_entries(STACKS_SPILL_ENTRIES, 0);
#[map]
pub static STACKS_SPILL2_EVEN: StackTrace = StackTrace::with_max_entries(STACKS_SPILL_ENTRIES, 0);
#[map]
pub static STACKS_SPILL_ODD: StackTrace = StackTrace::with_max_entries(STACKS_SPILL_ENTRIES, 0);
#[map]
pub static STACKS_SPILL2_ODD: StackTrace = StackTrace::with_max_entries(STACKS_SPILL_ENTRIES, 0);

/// `--stacks`: the stack generation, which userspace advances (`MAP_STACK_GENERATION`).
#[map]
pub static STACK_GENERATION: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU: [sk, pid] pairs of the sockets `sock_io` saw used lately, direct-mapped by the
/// socket's address: a request/response whose two ends, or a server whose connections, share a
/// CPU finds its socket here rather than in the socket map.
#[map]
pub static LAST_IO: PerCpuArray<[u64; 2 * IO_SLOTS]> = PerCpuArray::with_max_entries(1, 0);
pub const IO_SLOTS: usize = 32;

/// This CPU's last destroyed socket and a copy of its entry.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Destroyed {
    pub sk: u64,
    /// local port << 16 | remote port (host order): a new socket at the same address, on the
    /// same CPU, within the window, must not inherit the dead one's owner.
    pub ports: u64,
    pub info: SockInfo,
}

#[map]
pub static LAST_DESTROYED: PerCpuArray<Destroyed> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU: [skb, time, ports and sequence number] of the last RST the transmit hook saw.
#[map]
pub static LAST_REJECT_SKB: PerCpuArray<[u64; 3]> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU: the skb the receive path is handling (`netif_receive_skb`). Before 6.10 a reset
/// TCP sends without a full socket is seen only on transmit; tcp_v4_rcv()/tcp_v6_rcv() send it
/// while handling the segment it answers, in the same softirq on the same CPU, so this is that
/// segment (checked: its ports must mirror the RST's).
#[map]
pub static CUR_RX: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU: [the TCP control socket last seen on transmit, the last other socket], so that a
/// stream of packets from one socket costs a compare, not a read, each.
#[map]
pub static XMIT_SK: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Connections handed to a TIME_WAIT mini-socket in its FIN_WAIT2 sub-state (see
/// `on_destroy`), by flow, with the time and the process that closed them. When that
/// mini-socket answers a segment with RST (tcp_timewait_state_process() returns TCP_TW_RST),
/// its reset names that process; before 6.10 the transmit hook also tells it from a reset for
/// no socket at all.
#[map]
pub static TIMEWAIT: LruHashMap<Flow, TimeWaitInfo> =
    LruHashMap::with_max_entries(TIMEWAIT_MAX_ENTRIES, 0);

/// A connection's endpoints in its network namespace (IPv4 addresses in the first 4 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Flow {
    pub netns: u32,
    pub local_port: u16,
    pub remote_port: u16,
    pub local: [u64; 2],
    pub remote: [u64; 2],
}

/// Per-CPU scratch space for the event being built: it does not fit on the BPF stack.
#[map]
pub static SCRATCH: PerCpuArray<RstEvent> = PerCpuArray::with_max_entries(SLOTS, 0);

/// Bytes of the start of a socket read in one go: `struct sock_common` holds the addresses,
/// ports, family, state, netns and cookie in its first ~100 bytes on every kernel since 4.x
/// (userspace checks this at start-up, see `SKC_WINDOW` in rst-trace-common).
pub const SKC_WINDOW: usize = rst_trace_common::SKC_WINDOW;
#[map]
pub static WINDOW: PerCpuArray<Window> = PerCpuArray::with_max_entries(SLOTS, 0);

/// [`SKC_WINDOW`] bytes of a socket, and 16 bytes of slack so that a masked offset (see `skc`)
/// is in bounds whatever the field's size.
pub type Window = [u64; SKC_WINDOW / 8 + 2];

/// [`TCP_WINDOW`] bytes of a `tcp_sock`, per CPU and program slot, with 8 bytes of slack.
pub type TcpWindow = [u64; TCP_WINDOW / 8 + 1];
#[map]
pub static TCP_WIN: PerCpuArray<TcpWindow> = PerCpuArray::with_max_entries(SLOTS, 0);

/// The [`SKB_HDR_WINDOW`] bytes of an skb around its header offsets, per CPU and program slot
/// (a map value, because a variable offset into the stack needs a 5.12+ verifier).
#[map]
pub static SKB_WINDOW: PerCpuArray<[u64; SKB_HDR_WINDOW / 8]> =
    PerCpuArray::with_max_entries(SLOTS, 0);

#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU count of application error records the ring had no room for.
#[map]
pub static APP_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// getsockopt(SOL_SOCKET, SO_ERROR) calls in progress, by thread id: [fd, optval], from the
/// call's entry to its exit. LRU: a thread that dies inside the call leaves an entry to evict.
#[map]
pub static SO_ERROR_CALLS: LruHashMap<u32, [u64; 2]> = LruHashMap::with_max_entries(4096, 0);

/// Per-CPU count of failed inserts into `SOCKS`, `TIMEWAIT` and `CLOSING_LISTENERS` (see
/// [`count_insert`]); userspace reads it as `MAP_INSERT_FAILED`.
#[map]
pub static INSERT_FAILED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Counts a failed insert into one of the owner maps. They are LRU maps, which evict rather than
/// fail, so this should stay 0; a failure there would silently cost an owner or a TIME_WAIT.
#[inline(always)]
pub fn count_insert<E>(r: Result<(), E>) {
    if r.is_err()
        && let Some(n) = INSERT_FAILED.get_ptr_mut(0)
    {
        // SAFETY: per-CPU slot.
        unsafe { *n += 1 };
    }
}

/// The key being built by `deliver`, per CPU and program slot (programs can run nested on one
/// CPU: a softirq in a process-context send).
#[map]
pub static COUNT_KEY: PerCpuArray<CountKey> = PerCpuArray::with_max_entries(SLOTS, 0);

/// `--summary --quiet`: resets counted here, keyed by [`CountKey`], instead of one ring record
/// each (see `deliver`).
#[map]
pub static COUNTS: PerCpuHashMap<CountKey, u64> =
    PerCpuHashMap::with_max_entries(COUNTS_MAX_ENTRIES, 0);

/// Per CPU and slot: 1 while a program builds an event in that slot.
#[map]
pub static BUSY: PerCpuArray<u32> = PerCpuArray::with_max_entries(SLOTS, 0);

#[map]
pub static SOCKS: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(SOCKS_MAX_ENTRIES, 0);

#[map]
pub static SEED_OWNERS: HashMap<u64, Task> = HashMap::with_max_entries(SEED_MAX_ENTRIES, 0);

#[map]
pub static CLOSING_LISTENERS: LruHashMap<u32, ListenerClose> =
    LruHashMap::with_max_entries(1024, 0);

/// `bpf_ktime_get_ns()` of the last listener close on any CPU: a reset sent from a close() long
/// after it skips the `CLOSING_LISTENERS` look-up.
#[map]
pub static LAST_LISTENER_CLOSE: Array<u64> = Array::with_max_entries(1, 0);

#[map]
pub static FILTER_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(FILTER_MAX_ENTRIES, 0);

#[map]
pub static FILTER_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(FILTER_MAX_ENTRIES, 0);

/// LRU: an evicted id only costs its resets a trip to userspace, which adds it back.
#[map]
pub static HIDDEN_CGROUPS: LruHashMap<u64, u8> =
    LruHashMap::with_max_entries(HIDDEN_CGROUPS_MAX_ENTRIES, 0);

/// Per-CPU: the cgroup id `owners::note_cgroup` last found told, which spares it the LRU
/// look-up while one service keeps making connections.
#[map]
pub static LAST_CGROUP: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The cgroup ids userspace has been told of (see `owners::note_cgroup`).
#[map]
pub static SEEN_CGROUPS: LruHashMap<u64, u8> =
    LruHashMap::with_max_entries(SEEN_CGROUPS_MAX_ENTRIES, 0);
