use rst_trace_common::{APP_SO_ERROR, AppErrorEvent, ECONNRESET, ETIMEDOUT, StackIds, Task};

use super::{
    join::{EARLY_WAIT_NS, awaits_app},
    *,
};
use crate::{
    explain::{Direction, Report, TcpState, cond},
    filter::tests_support::report,
};

const S: u64 = 1_000_000_000;

fn event(nr: i64, errno: u32, flags: u32) -> AppErrorEvent {
    AppErrorEvent {
        mono_ns: 0,
        skaddr: 0,
        cookie: 0,
        task: Task::default(),
        stacks: StackIds::default(),
        local_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        remote_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        local_port: 40000,
        remote_port: 8888,
        netns: 1,
        nr: nr as u32,
        errno,
        fd: 3,
        user_timeout_ms: 0,
        flags,
        family: 2,
        state: 7,
        prev_state: 0,
        _pad0: 0,
    }
}

/// A failing call on socket `sk` (cookie 9) at `t`.
fn call(sk: u64, t: u64) -> AppError {
    let mut e = AppError::decode(&event(libc::SYS_read, ECONNRESET, 0));
    e.skaddr = sk;
    e.mono_ns = t;
    e.cookie = Some(9);
    e
}

/// A received peer reset on socket `sk` (cookie 9) at `t`.
fn reset(sk: u64, t: u64) -> Report {
    let mut r = report(Some(10), "client", 40000, 8888, Direction::Received);
    r.skaddr = sk;
    r.mono_ns = t;
    r.socket_cookie = Some(9);
    r.state = Some(TcpState::Established);
    r
}

#[test]
fn calls_and_errnos_have_their_names() {
    let e = AppError::decode(&event(libc::SYS_recvfrom, ECONNRESET, 0));
    assert_eq!(e.call_text(), "recvfrom(fd 3)");
    assert_eq!(e.errno.name(), "ECONNRESET");
    assert_eq!(e.remote.to_string(), "127.0.0.1:8888");
    let e = AppError::decode(&event(libc::SYS_getsockopt, 111, APP_SO_ERROR));
    assert_eq!(e.call.name(), "getsockopt(SO_ERROR)");
    assert_eq!(e.errno.name(), "ECONNREFUSED");
    assert_eq!(Call::from_nr(9999, false).name(), "syscall_9999");
    assert_eq!(Errno::from_raw(5).name(), "E5");
}

#[test]
fn timeouts_alone_say_which_timer() {
    let mut e = AppError::decode(&event(libc::SYS_connect, ETIMEDOUT, 0));
    assert!(
        e.explain_alone().contains("no answer to its SYNs"),
        "{}",
        e.explain_alone()
    );
    e.call = Call::Read;
    e.user_timeout_ms = Some(1000);
    assert!(e.explain_alone().contains("TCP_USER_TIMEOUT (1000 ms)"));
    e.user_timeout_ms = Some(0);
    assert!(e.explain_alone().contains("tcp_retries2"));
}

#[test]
fn a_call_before_the_reset_is_printed_is_attached() {
    let mut n = Noticing::new(true);
    let mut out = Vec::new();
    n.app_error(call(7, 5 * S + 3), 5 * S + 3, &mut out);
    assert!(out.is_empty());
    let mut r = reset(7, 5 * S);
    n.reset_printed(&mut r);
    let a = r.app_notice.expect("attached");
    assert_eq!(a.delay_ns, 3);
    // Nothing left to announce.
    n.tick(100 * S, true, &mut out);
    assert!(out.is_empty(), "{out:?}");
}

/// The call's wait for its reset starts when userspace reads it, not at its kernel time: its
/// stacks may take seconds to symbolize on a slow machine while the reset, read before it, is
/// still held for its sender or its container.
#[test]
fn a_call_read_late_still_waits_for_its_reset() {
    let mut n = Noticing::new(true);
    let mut out = Vec::new();
    let read_at = 5 * S + 3 * S;
    n.app_error(call(7, 5 * S + 3), read_at, &mut out);
    n.tick(read_at + EARLY_WAIT_NS - 1, false, &mut out);
    assert!(out.is_empty(), "{out:?}");
    let mut r = reset(7, 5 * S);
    n.reset_printed(&mut r);
    assert_eq!(r.app_notice.expect("attached").delay_ns, 3);
    n.tick(read_at + 2 * EARLY_WAIT_NS, false, &mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_later_call_is_joined_once_with_its_delay() {
    let mut n = Noticing::new(true);
    let mut out = Vec::new();
    let mut r = reset(7, 5 * S);
    n.reset_printed(&mut r);
    assert!(r.app_notice.is_none());
    n.app_error(call(7, 6 * S), 6 * S, &mut out);
    match &out[..] {
        [Outcome::Joined(j)] => {
            assert_eq!(j.delay_ns, S);
            assert_eq!(j.reset.condition, cond::PEER_RESET);
        }
        other => panic!("{other:?}"),
    }
    // The next failing call on it (another socket at the address, say) stands alone.
    out.clear();
    n.app_error(call(7, 7 * S), 7 * S, &mut out);
    n.tick(7 * S + 2 * S, false, &mut out);
    assert!(matches!(&out[..], [Outcome::Alone(_)]), "{out:?}");
}

#[test]
fn calls_never_join_with_a_negative_delay_or_another_socket() {
    let mut n = Noticing::new(true);
    let mut out = Vec::new();
    // A call that failed before the reset is not its consequence.
    n.app_error(call(7, 4 * S), 4 * S, &mut out);
    let mut r = reset(7, 5 * S);
    n.reset_printed(&mut r);
    assert!(r.app_notice.is_none());
    n.tick(6 * S, false, &mut out);
    assert!(
        matches!(&out[..], [Outcome::Alone(e)] if e.mono_ns == 4 * S),
        "{out:?}"
    );
    // A different cookie at the same address: a new socket.
    out.clear();
    let mut other = call(7, 6 * S);
    other.cookie = Some(10);
    n.app_error(other, 6 * S, &mut out);
    assert!(out.is_empty());
    n.tick(8 * S, false, &mut out);
    assert!(matches!(&out[..], [Outcome::Alone(_)]), "{out:?}");
}

#[test]
fn unnoticed_resets_are_announced_once_then_still_joined() {
    let mut n = Noticing::new(true);
    let mut out = Vec::new();
    let mut r = reset(7, S);
    n.reset_printed(&mut r);
    n.tick(S + NOTICE_WINDOW_NS - 1, false, &mut out);
    assert!(out.is_empty());
    n.tick(S + NOTICE_WINDOW_NS, false, &mut out);
    assert!(
        matches!(&out[..], [Outcome::NotNoticed(p, w)] if p.reset_mono_ns == S && *w == NOTICE_WINDOW_NS),
        "{out:?}"
    );
    out.clear();
    n.tick(S + 2 * NOTICE_WINDOW_NS, false, &mut out);
    assert!(out.is_empty(), "announced once: {out:?}");
    n.app_error(call(7, 30 * S), 30 * S, &mut out);
    assert!(
        matches!(&out[..], [Outcome::Joined(j)] if j.delay_ns == 29 * S),
        "{out:?}"
    );
}

#[test]
fn only_resets_that_leave_an_error_wait() {
    let mut r = reset(7, S);
    assert!(awaits_app(&r));
    r.orphan = true;
    assert!(!awaits_app(&r), "closed by its process: nobody will notice");
    r.orphan = false;
    r.state = Some(TcpState::Close);
    assert!(!awaits_app(&r), "tcp_reset() sets no error in CLOSE");
    let mut k = report(Some(10), "client", 40000, 8888, Direction::Sent);
    k.skaddr = 7;
    k.condition = cond::KEEPALIVE_TIMEOUT;
    assert!(awaits_app(&k));
    k.condition = cond::CLOSE_WITH_UNREAD_DATA;
    assert!(!awaits_app(&k));
    // Turned off (--no-app-errors): nothing waits, nothing is announced.
    let mut n = Noticing::new(false);
    let mut r = reset(7, S);
    n.reset_printed(&mut r);
    let mut out = Vec::new();
    n.tick(100 * S, true, &mut out);
    assert!(out.is_empty());
}

/// `--no-syscall-hooks`: a refused connection attempt is noticed by connect() or an `SO_ERROR`
/// read, which are then not seen, so it is never said to be unnoticed; a peer's reset still is.
#[test]
fn without_connects_a_refused_attempt_waits_for_nothing() {
    let mut n = Noticing::new(true).connects_seen(false);
    let mut refused = reset(7, S);
    refused.condition = cond::CONNECTION_REFUSED;
    n.reset_printed(&mut refused);
    let mut peer = reset(8, S);
    n.reset_printed(&mut peer);
    let mut out = Vec::new();
    n.tick(100 * S, true, &mut out);
    assert!(
        matches!(&out[..], [Outcome::NotNoticed(p, _)] if p.condition == cond::PEER_RESET),
        "{out:?}"
    );
    // With them, both wait.
    let mut n = Noticing::new(true);
    n.reset_printed(&mut refused);
    n.reset_printed(&mut peer);
    out.clear();
    n.tick(100 * S, true, &mut out);
    assert_eq!(out.len(), 2, "{out:?}");
}

/// A connection storm reuses a socket's address within microseconds (the slab hands the freed
/// memory to the next socket): each socket's call still joins its own reset, by cookie.
#[test]
fn a_reused_address_keeps_each_sockets_call() {
    let mut n = Noticing::new(true);
    let mut out = Vec::new();
    for cookie in 1..=3u64 {
        let mut e = call(7, cookie * S + 1);
        e.cookie = Some(cookie);
        n.app_error(e, cookie * S + 1, &mut out);
    }
    assert!(out.is_empty(), "{out:?}");
    for cookie in 1..=3u64 {
        let mut r = reset(7, cookie * S);
        r.socket_cookie = Some(cookie);
        n.reset_printed(&mut r);
        let a = r.app_notice.expect("its own call");
        assert_eq!(a.error.cookie, Some(cookie));
        assert_eq!(a.delay_ns, 1);
    }
    n.tick(100 * S, true, &mut out);
    assert!(out.is_empty(), "{out:?}");
}
