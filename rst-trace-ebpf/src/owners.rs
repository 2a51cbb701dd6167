//! Socket owners and state history, learned only in the owner's own system calls, and the
//! peer's TTL samples. (The TIME_WAIT hand-overs `on_destroy` notes live in `timewait`.)

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, generated,
};
use rst_trace_common::{
    ATTR_OWNER_MAP, ATTR_OWNER_SEED, CgroupSeen, DESTROYED_GRACE_NS, IPPROTO_TCP, ListenerClose,
    OFF_NONE, RstEvent, SOCK_REFUSED, SOCK_RESET_SEEN, SockInfo, TCP_CLOSE, TCP_FIN_WAIT2,
    TCP_LISTEN, TCP_RST, TCP_SYN_SENT, Task,
};

use crate::{
    headers::Segment,
    maps::{
        CLOSING_LISTENERS, CUR_SEG, EVENTS, IO_SLOTS, LAST_CGROUP, LAST_DESTROYED, LAST_IO,
        LAST_LISTENER_CLOSE, SAMPLED_SLOTS, SEED_OWNERS, SEEN_CGROUPS, SLOT_PROBE, SOCK_GENERATION,
        SOCKS, bump_generation, count_insert,
    },
    read::{copy_words, kread, zero_words},
    sock::fd_sock,
    timewait::remember_timewait,
};

// The states as `inet_sock_set_state` passes them (int).
const SYN_SENT: i32 = TCP_SYN_SENT as i32;
const LISTEN: i32 = TCP_LISTEN as i32;
const CLOSE: i32 = TCP_CLOSE as i32;

/// Fills `t` with the current task: its process (pid, and name: the thread-group leader's comm),
/// the acting thread (tid, comm), uid and cgroup v2 id. Called only in the owner's own system
/// calls, so neither comes from a softirq's or timer's random current task. The comms go
/// straight into place: a zeroed `[u8; 16]` first (what `bpf_get_current_comm()` builds) is a
/// call to a byte-by-byte memset loop here.
#[inline(always)]
pub fn fill_current_task(t: &mut Task) {
    let pid_tgid = bpf_get_current_pid_tgid();
    t.pid = (pid_tgid >> 32) as u32;
    t.tid = pid_tgid as u32;
    t.uid = aya_ebpf::helpers::bpf_get_current_uid_gid() as u32;
    t._pad = 0;
    // SAFETY: helpers without preconditions; 16-byte buffers the helpers fill (NUL-padded;
    // zeroed on error).
    unsafe {
        t.cgroup = generated::bpf_get_current_cgroup_id();
        generated::bpf_get_current_comm(t.thread.as_mut_ptr().cast(), 16);
    }
    // The thread-group leader is the current task when tid == pid: its comm is the one just read.
    let leader = if t.tid == t.pid {
        0
    } else {
        // SAFETY: helper without preconditions; the result is only used as a number.
        kread::<u64>(unsafe { bpf_get_current_task() }, conf!(task_group_leader)).unwrap_or(0)
    };
    let off = conf!(task_comm);
    // SAFETY: reads 16 bytes of kernel memory into the 16-byte array (zeroed by the helper on
    // error, then overwritten below).
    if leader == 0
        || off == OFF_NONE
        || unsafe {
            generated::bpf_probe_read_kernel(
                t.comm.as_mut_ptr().cast(),
                16,
                (leader + u64::from(off)) as *const _,
            )
        } != 0
    {
        // SAFETY: both 8-aligned 16-byte arrays of one Task (asserted in rst-trace-common).
        unsafe {
            copy_words(
                t.comm.as_mut_ptr().cast::<[u64; 2]>(),
                t.thread.as_ptr().cast::<[u64; 2]>(),
            )
        };
    }
}

/// Whether `sk` is a TCP socket; true where `sk_protocol` cannot be read by offset.
#[inline(always)]
fn tcp_or_unknown(sk: u64) -> bool {
    conf!(sk_protocol) == OFF_NONE || kread::<u16>(sk, conf!(sk_protocol)) == Some(IPPROTO_TCP)
}

#[inline(always)]
pub fn owner_from_map(sk: u64, ev: &mut RstEvent) {
    if sk == 0 {
        return;
    }
    // SAFETY: the value is read at once; LRU entries may be recycled concurrently, which at
    // worst yields a stale owner for a pointer the kernel reused (the destroy hook prevents most).
    let info = match SOCKS.get_ptr_mut(&sk) {
        Some(info) => unsafe {
            // Its coming move to CLOSE is this abort, not a hand-over to TIME_WAIT.
            (*info).flags |= SOCK_RESET_SEEN;
            if ev.state == TCP_SYN_SENT {
                (*info).flags |= SOCK_REFUSED;
            }
            Some(&*info)
        },
        None => recently_destroyed(sk, ev),
    };
    if let Some(info) = info {
        ev.prev_state = info.close_prev_state;
        ev.peer_ttl = info.peer_ttl;
        if info.owned != 0 {
            // SAFETY: Tasks are 8-aligned (repr(align(8))), 56 bytes.
            unsafe { copy_words(&mut ev.owner, &info.owner) };
            ev.attribution = ATTR_OWNER_MAP;
            return;
        }
    }
    seed_owner(ev);
}

/// Sockets that existed before rst-trace started: userspace seeded their owners by cookie.
#[inline(always)]
pub fn seed_owner(ev: &mut RstEvent) {
    // SAFETY: the value is copied out at once.
    if ev.cookie != 0
        && let Some(t) = unsafe { SEED_OWNERS.get(&ev.cookie) }
    {
        // SAFETY: Tasks are 8-aligned (repr(align(8))), 56 bytes.
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
pub fn learn_owner(sk: u64) {
    if sk == 0 {
        return;
    }
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(info) = SOCKS.get_ptr_mut(&sk) {
        // SAFETY: a map value pointer, valid for this program run.
        let cgroup = unsafe {
            if (*info).owned != 0 && (*info).owner.pid == pid {
                return;
            }
            fill_current_task(&mut (*info).owner);
            (*info).owned = 1;
            (*info).owner.cgroup
        };
        note_cgroup(cgroup);
        return;
    }
    new_owner(sk);
}

/// Starts a fresh entry for `sk`, owned by the current task (replacing any entry a dead socket
/// at the same address left).
#[inline(always)]
fn new_owner(sk: u64) {
    bump_generation();
    let mut cgroup = 0;
    insert_fresh(sk, |info| {
        fill_current_task(&mut info.owner);
        info.owned = 1;
        cgroup = info.owner.cgroup;
    });
    note_cgroup(cgroup);
}

/// The first time an owner is learned in a cgroup, userspace is told (a [`CgroupSeen`]
/// record), so that it resolves the cgroup's container while its processes live: one that dies
/// with its connections takes its cgroup and the runtime's state along before the resets it
/// leaves are read. One LRU look-up per new owner; nothing per send or receive. `id`: the
/// current task's cgroup, as the owner just filled in holds it.
#[inline(always)]
fn note_cgroup(id: u64) {
    let last = LAST_CGROUP.get_ptr_mut(0);
    // SAFETY: per-CPU slot, valid for this program run.
    if id == 0 || last.is_some_and(|l| unsafe { *l } == id) {
        return;
    }
    // SAFETY: the value is not used.
    if unsafe { SEEN_CGROUPS.get(&id) }.is_some() {
        if let Some(l) = last {
            // SAFETY: as above.
            unsafe { *l = id };
        }
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<CgroupSeen>(0) else {
        // Not marked seen: the next owner in that cgroup tries again.
        return;
    };
    let _ = SEEN_CGROUPS.insert(&id, &0, 0);
    // SAFETY: an exclusive reservation of the record's size, written whole.
    unsafe {
        entry.as_mut_ptr().write(CgroupSeen {
            cgroup: id,
            pid: (bpf_get_current_pid_tgid() >> 32) as u32,
            _pad: 0,
        });
    }
    entry.submit(0);
}

/// Inserts a zeroed entry for `sk`, filled in by `fill`.
#[inline(always)]
pub fn insert_fresh(sk: u64, fill: impl FnOnce(&mut SockInfo)) {
    let mut info = core::mem::MaybeUninit::<SockInfo>::uninit();
    // SAFETY: SockInfo is plain integers, 8-aligned, a multiple of 8 bytes; zeroed, then filled.
    let info = unsafe {
        zero_words(info.as_mut_ptr());
        info.assume_init_mut()
    };
    fill(info);
    count_insert(SOCKS.insert(&sk, info, 0));
}

/// The transitions [`on_set_state`] acts on, tested before anything is read: most state
/// changes of ordinary traffic (handshake, FIN exchange) end here.
#[inline(always)]
pub fn acts_on(old: i32, new: i32) -> bool {
    new == SYN_SENT || new == LISTEN || (new == CLOSE && old != SYN_SENT)
}

/// Learns socket owners and state history. `connect()` (CLOSE -> SYN_SENT) and `listen()`
/// (-> LISTEN) run in the owner's own system call, so the current task is the owner there.
/// `port` gives the socket's local port (only needed when a listener closes).
#[inline(always)]
pub fn on_set_state(sk: u64, old: i32, new: i32, port: impl FnOnce() -> u16) {
    if new == SYN_SENT && old == CLOSE && sk != 0 {
        // connect() on a new socket: nothing to look up first.
        new_owner(sk);
    } else if new == SYN_SENT || new == LISTEN {
        learn_owner(sk);
    } else if new == CLOSE && old != SYN_SENT {
        // (A connection attempt that fails or is abandoned sends no reset of its own: nothing
        // to remember. That is every attempt of a refused-connection storm.)
        if old == LISTEN {
            listener_closing(sk, port());
        }
        if let Some(info) = SOCKS.get_ptr_mut(&sk) {
            // SAFETY: a map value pointer, valid for this program run.
            unsafe { (*info).close_prev_state = old as u8 };
        } else {
            insert_fresh(sk, |info| info.close_prev_state = old as u8);
        }
    }
}

/// tcp_close() of a listener: the resets of its unaccepted children follow, in this same thread
/// (inet_csk_listen_stop()).
#[inline(always)]
fn listener_closing(sk: u64, port: u16) {
    let l = ListenerClose {
        sk,
        mono_ns: unsafe { bpf_ktime_get_ns() },
        port,
        _pad0: 0,
        _pad1: 0,
    };
    count_insert(CLOSING_LISTENERS.insert(&(bpf_get_current_pid_tgid() as u32), &l, 0));
    if let Some(t) = LAST_LISTENER_CLOSE.get_ptr_mut(0) {
        // SAFETY: a map value pointer; a lost race only costs a look-up.
        unsafe { *t = l.mono_ns };
    }
}

/// The socket is freed after this and its address may be reused: forget it, keeping a per-CPU
/// copy for the reset an orphan's destruction may still send (see `recently_destroyed`). The map
/// stays as small as the set of live sockets, so a connection storm never makes it evict.
/// A refused connection attempt keeps no copy: it sends no reset, and a refused storm destroys
/// a socket per attempt. (Not every socket that saw a reset: an orphan that gets data after
/// its close() passes through tcp_reset(), which fires `tcp_receive_reset`, before the reset
/// it sends; tcp_rcv_state_process().)
#[inline(always)]
pub fn on_destroy(sk: u64) {
    // SAFETY: the value is read at once, then the entry removed.
    if let Some(info) = unsafe { SOCKS.get(&sk) } {
        if info.flags & SOCK_REFUSED == 0
            && let Some(d) = LAST_DESTROYED.get_ptr_mut(0)
        {
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
            // SAFETY: per-CPU slot; SockInfo is 8-aligned, a multiple of 8 bytes: copied
            // from the map value in words, not through a copy on the stack.
            unsafe {
                (*d).sk = sk;
                (*d).ports = (u64::from(lport) << 16) | u64::from(rport);
                copy_words(&mut (*d).info, info);
                (*d).info.destroyed_ns = bpf_ktime_get_ns();
            }
        }
        // Also without a known owner: the entry then replaces any an earlier connection of the
        // same flow left (the transmit hook before 6.10 needs the flow either way).
        if info.flags & SOCK_RESET_SEEN == 0 && info.close_prev_state == TCP_FIN_WAIT2 {
            remember_timewait(sk, info);
        }
        let _ = SOCKS.remove(&sk);
        bump_generation();
    }
}

/// A send or receive on `sk` by the current process, which owns it from then on; a per-CPU
/// memo of the sockets used lately skips the map while a socket stays with its process. (As
/// with any memo by address, a socket freed and another allocated at its address, used by the
/// same process before anything else takes the slot, is not learned here: connect(), listen()
/// and accept() learn it.)
#[inline(always)]
pub fn on_sock_io(sk: u64) {
    let pid = bpf_get_current_pid_tgid() >> 32;
    if let Some(memo) = LAST_IO.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, valid for this program run.
        let memo = unsafe { &mut *memo };
        // struct sock objects are at least 256-byte aligned slab objects: skip the low bits.
        let slot = 2 * (((sk >> 8) ^ (sk >> 14)) as usize & (IO_SLOTS - 1));
        if memo[slot] == sk && memo[slot + 1] == pid {
            return;
        }
        memo[slot] = sk;
        memo[slot + 1] = pid;
    }
    if !tcp_or_unknown(sk) {
        return;
    }
    learn_owner(sk);
}

/// `accept()` returned `fd`: its socket belongs to the caller.
#[inline(always)]
pub fn on_accept(fd: i64) {
    if let Some(sk) = fd_sock(fd)
        && tcp_or_unknown(sk)
    {
        learn_owner(sk);
    }
}

/// `tcp_probe(sk, skb)`: notes the segment (per-CPU, no reads), and samples the peer's TTL when
/// the CPU moves to another socket.
#[inline(always)]
pub fn note_segment(sk: u64, skb: u64) {
    let Some(cur) = CUR_SEG.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, valid for this program run.
    let cur = unsafe { &mut *cur };
    cur[0] = sk;
    cur[1] = skb;
    // struct sock objects are at least 256-byte aligned slab objects: skip the low bits.
    let slot = 2 + (((sk >> 8) ^ (sk >> 14)) as usize & (SAMPLED_SLOTS - 1));
    let key = sk ^ SOCK_GENERATION.get(0).copied().unwrap_or(0);
    if cur[slot] == key {
        return;
    }
    let Some((ttl, flags)) = Segment::received(SLOT_PROBE, skb).and_then(|s| s.ttl_flags()) else {
        return;
    };
    if flags & TCP_RST != 0 {
        // Not a sample of the peer: it may be the very reset under suspicion.
        return;
    }
    if let Some(info) = SOCKS.get_ptr_mut(&sk) {
        // SAFETY: a map value pointer, valid for this program run.
        unsafe { (*info).peer_ttl = ttl };
    }
    cur[slot] = key;
}
