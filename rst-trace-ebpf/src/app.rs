//! Application calls that fail because their connection died: the first socket call that
//! returned (or, for a non-blocking connect, read back through `SO_ERROR`) ECONNRESET, EPIPE,
//! ECONNREFUSED or ETIMEDOUT. Facts only: which call, fd, task, socket; userspace joins it to
//! the reset by socket address and says what it means.
//!
//! These run in the caller's own system call, where (since 6.14) syscall tracepoints may be
//! preempted: so no per-CPU scratch space; the record is built in place in the ring.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    programs::tracing::StackIdContext,
};
use rst_trace_common::{
    AF_INET, AF_INET6, APP_PREV_STATE, APP_SO_ERROR, APP_STACKS, APP_USER_TIMEOUT, AppErrorEvent,
    ETIMEDOUT, FILTER_CGROUP, FILTER_PID, FILTER_PORT, IPPROTO_TCP, OFF_NONE, SKC_WINDOW,
    SOCK_APP_ERROR_SEEN, SOCK_CALLS_BITS, failing_ret,
};

use crate::{
    deliver::{count_app_lost, wake_flags_reserved},
    maps::{EVENTS, FILTER_PIDS, FILTER_PORTS, HIDDEN_CGROUPS, SO_ERROR_CALLS, SOCKS, Window},
    owners::{fill_current_task, insert_fresh},
    read::{kread, zero_words},
    sock::{Endpoints, fd_sock, put16, skc, window_endpoints},
    stacks,
};

/// `SOCK_STREAM` (uapi): with `IPPROTO_TCP` a TCP socket (a raw socket may carry IPPROTO_TCP).
const SOCK_STREAM: u16 = 1;

/// A socket call that failed with `errno`, seen inside the caller's system call without its
/// registers: a send or receive at the socket layer (6.3+: `sock_send_length` /
/// `sock_recv_length` carry the call's result), `sk` its socket; or the `syscalls:sys_exit_*`
/// record of a call that layer does not show (connect, sendfile, splice), `sk` 0. Which call,
/// on which fd, from its registers at entry. With `sk`, only a call whose fd is that socket
/// counts (the kernel's own sends on its sockets have no such call).
#[inline(always)]
pub fn on_failed_call<C: StackIdContext>(ctx: &C, errno: u32, sk: u64) {
    if let Some(regs) = stacks::current_regs() {
        failed_call(ctx, regs, errno, sk);
    }
}

/// Raw `sys_exit(regs, ret)` after `failing_ret(ret)`: which call, on which fd.
#[inline(always)]
pub fn on_failed_syscall<C: StackIdContext>(ctx: &C, regs: u64, errno: u32) {
    failed_call(ctx, regs, errno, 0);
}

/// The failing call in `regs` (its number and arguments at entry) on a TCP socket: `sk` if not
/// 0, else whichever its fd argument names.
#[inline(always)]
fn failed_call<C: StackIdContext>(ctx: &C, regs: u64, errno: u32, want_sk: u64) {
    // The syscall number where syscall_get_nr() reads it (x86_64 orig_ax, arm64 syscallno, an
    // s32: a 32-bit read, -1 for no call), its arguments as at entry (userspace chose them).
    let Some(nr) = kread::<u32>(regs, conf!(regs_nr)) else {
        return;
    };
    let nr = u64::from(nr);
    if !sock_call(nr) {
        return;
    }
    let arg = |off: u16| kread::<u64>(regs, off).map(|v| i64::from(v as i32));
    let Some(fd) = arg(conf!(regs_arg0)) else {
        return;
    };
    // sendfile(out_fd, in_fd, ...) and splice(fd_in, off_in, fd_out, ...) may fail on a socket
    // in another argument.
    let nr16 = nr as u16;
    let other = if nr16 == conf!(sys_sendfile) {
        conf!(regs_arg1)
    } else if nr16 == conf!(sys_splice) {
        conf!(regs_arg2)
    } else {
        OFF_NONE
    };
    // connect(fd, addr, len): the address asked for, read only if the socket forgot it (the
    // error path of __inet_stream_connect() calls tcp_disconnect(), which zeroes inet_dport
    // and releases the local port before the call returns).
    let addr = if nr16 == conf!(sys_connect) {
        kread::<u64>(regs, conf!(regs_arg1)).unwrap_or(0)
    } else {
        0
    };
    let wanted = |sk: u64| want_sk == 0 || sk == want_sk;
    if let Some(sk) = tcp_fd(fd)
        && wanted(sk)
    {
        report(ctx, sk, fd, nr as u32, errno, 0, addr);
    } else if other != OFF_NONE
        && let Some(fd) = arg(other)
        && let Some(sk) = tcp_fd(fd)
        && wanted(sk)
    {
        report(ctx, sk, fd, nr as u32, errno, 0, 0);
    }
}

/// Whether syscall `nr` is one whose first argument is a socket's fd (userspace's bitmap).
#[inline(always)]
fn sock_call(nr: u64) -> bool {
    if nr >= SOCK_CALLS_BITS as u64 {
        return false;
    }
    // SAFETY: the global is always initialised; the index is masked into the 8-word array.
    let word = unsafe {
        core::ptr::read_volatile(
            core::ptr::addr_of!(
                (*(core::ptr::addr_of!(crate::CONFIG).cast::<rst_trace_common::Config>()))
                    .sock_calls
            )
            .cast::<u64>()
            .add((nr / 64) as usize & 7),
        )
    };
    (word >> (nr % 64)) & 1 != 0
}

/// The TCP socket behind the caller's `fd`, if it is one.
#[inline(always)]
fn tcp_fd(fd: i64) -> Option<u64> {
    let sk = fd_sock(fd)?;
    let ok = if conf!(sk_type) != OFF_NONE {
        // sk_type and sk_protocol side by side (userspace checked): one read.
        kread::<[u16; 2]>(sk, conf!(sk_type)) == Some([SOCK_STREAM, IPPROTO_TCP])
    } else {
        kread::<u16>(sk, conf!(sk_protocol)) == Some(IPPROTO_TCP)
    };
    ok.then_some(sk)
}

/// getsockopt(fd, `SOL_SOCKET`, `SO_ERROR`, ...): the call that reads a non-blocking connect's
/// outcome (the int arguments, in 8-byte slots).
#[inline(always)]
fn so_error_read(level: u64, optname: u64) -> bool {
    use rst_trace_common::{SO_ERROR, SOL_SOCKET};
    level as u32 as u64 == SOL_SOCKET && optname as u32 as u64 == SO_ERROR
}

/// `syscalls:sys_enter_getsockopt`: remembers a `SO_ERROR` read for its exit (by thread).
#[inline(always)]
pub fn on_enter_getsockopt(fd: u64, level: u64, optname: u64, optval: u64) {
    if !so_error_read(level, optname) {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    // An LRU map: a thread killed inside the call leaves an entry that ages out.
    let _ = SO_ERROR_CALLS.insert(&tid, &[fd, optval], 0);
}

/// `syscalls:sys_exit_getsockopt`: a `SO_ERROR` read that returned one of the errors. Its
/// arguments come from the registers at the call's entry where they can be found (fd, level,
/// optname, optval: x86_64 di, si, dx, r10; arm64 orig_x0, x1, x2, x3), else from what the
/// entry hook noted.
#[inline(always)]
pub fn on_exit_getsockopt<C: StackIdContext>(ctx: &C, nr: u32, ret: i64) {
    let (fd, optval) = if conf!(regs_arg3) != OFF_NONE {
        if ret != 0 {
            return;
        }
        let Some(regs) = stacks::current_regs() else {
            return;
        };
        let arg = |off: u16| kread::<u64>(regs, off).unwrap_or(u64::MAX);
        if !so_error_read(arg(conf!(regs_arg1)), arg(conf!(regs_arg2))) {
            return;
        }
        (arg(conf!(regs_arg0)), arg(conf!(regs_arg3)))
    } else {
        let tid = bpf_get_current_pid_tgid() as u32;
        // SAFETY: the value is copied out at once.
        let Some(&[fd, optval]) = (unsafe { SO_ERROR_CALLS.get(&tid) }) else {
            return;
        };
        let _ = SO_ERROR_CALLS.remove(&tid);
        if ret != 0 {
            return;
        }
        (fd, optval)
    };
    // SAFETY: the helper checks the user address; a fault is an error, not a crash.
    let Ok(err) = (unsafe { bpf_probe_read_user(optval as *const i32) }) else {
        return;
    };
    if !failing_ret(-i64::from(err)) {
        return;
    }
    let fd = i64::from(fd as i32);
    if let Some(sk) = tcp_fd(fd) {
        report(ctx, sk, fd, nr, err as u32, APP_SO_ERROR, 0);
    }
}

/// Reports the first failing call on `sk` (a socket map flag makes it the only one: a loop of
/// failing writes must not flood the ring). `connect_addr`: connect()'s user sockaddr, or 0.
/// With `--stacks`, the call's stacks (taken at its exit, in its own task).
#[inline(always)]
fn report<C: StackIdContext>(
    ctx: &C,
    sk: u64,
    fd: i64,
    nr: u32,
    errno: u32,
    flags: u32,
    connect_addr: u64,
) {
    if !caller_wanted() {
        return;
    }
    let Some(prev_state) = first_failure(sk) else {
        return;
    };
    let Some(mut entry) = EVENTS.reserve::<AppErrorEvent>(0) else {
        count_app_lost();
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: an exclusive, 8-aligned reservation of the record's size, which holds a window
    // (asserted below); then zeroed (every field is an integer) and filled.
    let facts = unsafe { socket_facts(ev.cast::<Window>(), sk) };
    // SAFETY: as above.
    let ev = unsafe {
        zero_words(ev);
        &mut *ev
    };
    // SAFETY: helper without preconditions.
    ev.mono_ns = unsafe { bpf_ktime_get_ns() };
    ev.skaddr = sk;
    ev.nr = nr;
    ev.errno = errno;
    ev.fd = fd as i32;
    ev.flags = flags;
    fill_current_task(&mut ev.task);
    ev.family = facts.ends.family;
    (ev.local_port, ev.remote_port) = (facts.ends.local_port, facts.ends.remote_port);
    put16(&mut ev.local_addr, facts.ends.local);
    put16(&mut ev.remote_addr, facts.ends.remote);
    ev.state = facts.state;
    ev.cookie = facts.cookie;
    ev.netns = kread::<u32>(facts.net, conf!(net_inum)).unwrap_or(0);
    if ev.errno == ETIMEDOUT
        && let Some(ms) = kread::<u32>(sk, conf!(icsk_user_timeout))
    {
        ev.user_timeout_ms = ms;
        ev.flags |= APP_USER_TIMEOUT;
    }
    if prev_state != 0 {
        ev.prev_state = prev_state;
        ev.flags |= APP_PREV_STATE;
    }
    if ev.remote_port == 0 && connect_addr != 0 {
        asked_address(connect_addr, ev);
    }
    // --port: a socket that has forgotten both ports goes to userspace, which joins it to its
    // reset (and filters it alone).
    let ports = (ev.local_port, ev.remote_port);
    if conf!(filters) & FILTER_PORT != 0
        && ports != (0, 0)
        && FILTER_PORTS.get_ptr(&ports.0).is_none()
        && FILTER_PORTS.get_ptr(&ports.1).is_none()
    {
        entry.discard(0);
        return;
    }
    // Only for a record that goes to userspace: it deletes the ids it reads.
    if let Some(ids) = stacks::capture(ctx) {
        ev.stacks = ids;
        ev.flags |= APP_STACKS;
    }
    entry.submit(wake_flags_reserved(
        core::mem::size_of::<AppErrorEvent>() as u64
    ));
}

/// The remote endpoint from connect()'s `struct sockaddr_in`/`sockaddr_in6` (family, port in
/// network order, then the IPv4 address at 4 or the IPv6 one at 8).
#[inline(always)]
fn asked_address(uaddr: u64, ev: &mut AppErrorEvent) {
    // SAFETY: the helper checks the user address.
    let Ok(w) = (unsafe { bpf_probe_read_user(uaddr as *const [u64; 3]) }) else {
        return;
    };
    let family = w[0] as u16;
    ev.remote_port = u16::from_be((w[0] >> 16) as u16);
    if family == AF_INET6 {
        ev.family = family as u8;
        put16(&mut ev.remote_addr, [w[1], w[2]]);
    } else if family == AF_INET {
        ev.family = family as u8;
        ev.remote_addr[..4].copy_from_slice(&((w[0] >> 32) as u32).to_ne_bytes());
    }
}

/// Marks `sk` as having had its failure reported: `None` if it already had, else the state
/// the socket left for CLOSE (0 if not known), read from the same map entry.
#[inline(always)]
fn first_failure(sk: u64) -> Option<u8> {
    match SOCKS.get_ptr_mut(&sk) {
        // SAFETY: a map value pointer, valid for this program run.
        Some(info) => unsafe {
            if (*info).flags & SOCK_APP_ERROR_SEEN != 0 {
                return None;
            }
            (*info).flags |= SOCK_APP_ERROR_SEEN;
            Some((*info).close_prev_state)
        },
        None => {
            insert_fresh(sk, |info| info.flags = SOCK_APP_ERROR_SEEN);
            Some(0)
        }
    }
}

/// The in-kernel filters on the caller (`--pid`: its process; `--container`/`--pod`: its
/// cgroup, when userspace found it hidden).
#[inline(always)]
fn caller_wanted() -> bool {
    let filters = conf!(filters);
    if filters & FILTER_PID != 0 {
        let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if FILTER_PIDS.get_ptr(&pid).is_none() {
            return false;
        }
    }
    if filters & FILTER_CGROUP != 0 {
        // SAFETY: helper without preconditions.
        let cg = unsafe { aya_ebpf::helpers::generated::bpf_get_current_cgroup_id() };
        if HIDDEN_CGROUPS.get_ptr(&cg).is_some() {
            return false;
        }
    }
    true
}

/// What the record takes from the socket's `sock_common`.
struct SockFacts {
    ends: Endpoints,
    state: u8,
    cookie: u64,
    net: u64,
}

// The window is read into the reserved record before the record is filled.
const _: () = assert!(core::mem::size_of::<Window>() <= core::mem::size_of::<AppErrorEvent>());

/// Endpoints, state, cookie and netns of `sk`, from one read of its `sock_common` window into
/// `w` (one copy instead of a read per field; no per-CPU slot: this may run preempted).
///
/// # Safety
/// `w` must be valid for writes of a [`Window`], 8-aligned, and not used meanwhile.
#[inline(always)]
unsafe fn socket_facts(w: *mut Window, sk: u64) -> SockFacts {
    // SAFETY: as the caller promises; bpf_probe_read_kernel never faults, and zeroes the
    // destination when it fails.
    let w = unsafe {
        let _ = aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            w.cast(),
            SKC_WINDOW as u32,
            sk as *const core::ffi::c_void,
        );
        &*w
    };
    SockFacts {
        ends: window_endpoints(w, sk),
        state: skc::<u8>(w, conf!(sk_state)),
        cookie: skc::<u64>(w, conf!(sk_cookie)),
        net: skc::<u64>(w, conf!(sk_net)),
    }
}
